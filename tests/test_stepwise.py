"""engine.stepwise.StepwiseLSTM against independent truth: torch.nn.LSTM run directly (standard cell) and
the float64 numpy references (tests/reference.py, tests/reference_cells.py) for every activation."""

from __future__ import annotations

import itertools
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from lstmscope.engine import stepwise
from lstmscope.engine.stepwise import StepwiseLSTM, activation_fn
from lstmscope.spec import ACTIVATION_PARAMS, KERAS2_HARD_SIGMOID, KERAS3_HARD_SIGMOID, SIGMOID, TANH, Activation
from reference import lstm_reference
from reference_cells import activation, lstm_reference_cells

TOL = {torch.float32: 1e-5, torch.float64: 1e-12}
I, H, B, T = 3, 5, 4, 7
LENGTHS = [3, 7, 1, 5]  # unsorted, with a length-1 and a full-length sequence


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def make_lstm(dtype, *, seed=0, **kw) -> torch.nn.LSTM:
    torch.manual_seed(seed)
    return torch.nn.LSTM(I, H, **kw).to(dtype).eval()


def stepwise_like(ref: torch.nn.LSTM, **kw) -> StepwiseLSTM:
    """A StepwiseLSTM made on the meta device and given ``ref``'s parameters, as engine.fused builds modules."""
    with torch.device("meta"):
        m = StepwiseLSTM(ref.input_size, ref.hidden_size, num_layers=ref.num_layers, bias=ref.bias,
                         batch_first=ref.batch_first, bidirectional=ref.bidirectional, proj_size=ref.proj_size, **kw)
    m.load_state_dict(ref.state_dict(), strict=True, assign=True)
    return m


def initial_state(num_layers, d, out, dtype, seed=2):
    g = torch.Generator().manual_seed(seed)
    h0 = torch.randn(num_layers * d, B, out, generator=g, dtype=dtype)  # (L * D, batch, out)
    c0 = torch.randn(num_layers * d, B, H, generator=g, dtype=dtype)  # (L * D, batch, hidden)
    return h0, c0


def run_ref(ref, inp, hx):
    with torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*not supported with oneDNN.*")  # projections: torch falls back
        return ref(inp, hx)


def close(a: torch.Tensor, b: torch.Tensor, tol: float, what: str) -> None:
    np.testing.assert_allclose(a.double().numpy(), b.double().numpy(), rtol=tol, atol=tol, err_msg=what)


# ----------------------------------------------------------------------------------------------------------
# the standard cell equals nn.LSTM


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("num_layers,bidirectional,proj_size,bias",
                         [(1, False, 0, True), (1, True, 0, True), (2, True, 0, False), (3, True, 2, True),
                          (2, False, 3, True), (2, True, 3, False), (3, False, 0, True)])
@pytest.mark.parametrize("batch_first", [False, True], ids=["time_major", "batch_first"])
def test_standard_cell_equals_nn_lstm(dtype, num_layers, bidirectional, proj_size, bias, batch_first):
    ref = make_lstm(dtype, num_layers=num_layers, bidirectional=bidirectional, proj_size=proj_size, bias=bias,
                    batch_first=batch_first)
    m = stepwise_like(ref)
    tol = TOL[dtype]
    x = torch.randn(B, T, I, dtype=dtype, generator=torch.Generator().manual_seed(1))  # (batch, time, features)
    if not batch_first:
        x = x.transpose(0, 1).contiguous()  # (time, batch, features)
    d = 2 if bidirectional else 1
    for hx in (None, initial_state(num_layers, d, proj_size or H, dtype)):
        hx_copy = None if hx is None else tuple(t.clone() for t in hx)
        # full-length batch
        want_out, (want_h, want_c) = run_ref(ref, x, hx)
        out, (h_n, c_n) = m(x, hx)
        assert out.shape == want_out.shape and h_n.shape == want_h.shape and c_n.shape == want_c.shape
        assert out.dtype == dtype
        for name, a, b in (("output", out, want_out), ("h_n", h_n, want_h), ("c_n", c_n, want_c)):
            close(a, b, tol, f"{name}, full length, hx given: {hx is not None}")
        # packed, unsorted lengths
        packed = pack_padded_sequence(x, torch.tensor(LENGTHS), batch_first=batch_first, enforce_sorted=False)
        want_out, (want_h, want_c) = run_ref(ref, packed, hx)
        out, (h_n, c_n) = m(packed, hx)
        assert torch.equal(out.batch_sizes, want_out.batch_sizes)
        assert torch.equal(out.sorted_indices, want_out.sorted_indices)
        assert torch.equal(out.unsorted_indices, want_out.unsorted_indices)
        for name, a, b in (("output", out.data, want_out.data), ("h_n", h_n, want_h), ("c_n", c_n, want_c)):
            close(a, b, tol, f"{name}, packed, hx given: {hx is not None}")
        if hx is not None:  # the caller's state is left alone (streaming hands in views of its own)
            assert all(torch.equal(a, b) for a, b in zip(hx, hx_copy))


@pytest.mark.parametrize("block_steps", [1, 3, 256])
@pytest.mark.parametrize("lengths", [[3, 7, 1, 5], [7, 7, 7, 7], [1, 1, 1, 1], [2, 6, 6, 4]])
def test_blocks_and_lengths_match_reference(monkeypatch, block_steps, lengths):
    """The input projection in blocks of 1, 3 (not dividing T) and all steps; packed batches with equal
    lengths, all length 1, and ties; checked against the float64 numpy reference."""
    monkeypatch.setattr(stepwise, "MAX_BLOCK_STEPS", block_steps)
    ref = make_lstm(torch.float64, num_layers=2, bidirectional=True, batch_first=True)
    m = stepwise_like(ref)
    x = torch.randn(B, T, I, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    h0, c0 = initial_state(2, 2, H, torch.float64)
    want_out, want_h, want_c, _ = lstm_reference(ref.state_dict(), x.numpy(), num_layers=2, bidirectional=True,
                                                 lengths=lengths, h0=h0.numpy(), c0=c0.numpy())
    packed = pack_padded_sequence(x, torch.tensor(lengths), batch_first=True, enforce_sorted=False)
    out, (h_n, c_n) = m(packed, (h0, c0))
    out, _ = pad_packed_sequence(out, batch_first=True, total_length=T)
    np.testing.assert_allclose(out.numpy(), want_out, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(h_n.numpy(), want_h, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(c_n.numpy(), want_c, rtol=1e-12, atol=1e-12)


@settings(max_examples=60)
@given(data=st.data(), num_layers=st.integers(1, 3), bidirectional=st.booleans(), proj=st.booleans(),
       bias=st.booleans(), batch_first=st.booleans(), batch=st.integers(1, 5), steps=st.integers(1, 6),
       with_hx=st.booleans(), seed=st.integers(0, 2**16))
def test_random_configurations_equal_nn_lstm(data, num_layers, bidirectional, proj, bias, batch_first, batch, steps,
                                             with_hx, seed):
    """Any shape of stack and batch, packed with any lengths (ties, all equal, length 1, batch of 1), float64."""
    torch.manual_seed(seed)
    proj_size = 2 if proj else 0
    ref = torch.nn.LSTM(I, H, num_layers=num_layers, bidirectional=bidirectional, proj_size=proj_size, bias=bias,
                        batch_first=batch_first).double()
    m = stepwise_like(ref)
    lengths = data.draw(st.lists(st.integers(1, steps), min_size=batch, max_size=batch))
    x = torch.randn((batch, steps, I) if batch_first else (steps, batch, I), dtype=torch.float64)
    d = 2 if bidirectional else 1
    hx = (torch.randn(num_layers * d, batch, proj_size or H, dtype=torch.float64),
          torch.randn(num_layers * d, batch, H, dtype=torch.float64)) if with_hx else None
    for inp in (x, pack_padded_sequence(x, torch.tensor(lengths), batch_first=batch_first, enforce_sorted=False)):
        want_out, (want_h, want_c) = run_ref(ref, inp, hx)
        out, (h_n, c_n) = m(inp, hx)
        packed = not isinstance(inp, torch.Tensor)
        close(out.data if packed else out, want_out.data if packed else want_out, 1e-12, f"output, packed {packed}")
        close(h_n, want_h, 1e-12, f"h_n, packed {packed}")
        close(c_n, want_c, 1e-12, f"c_n, packed {packed}")


def test_chunks_carry_state():
    """As engine.streaming runs it: time-major chunks, (h, c) handed from one call to the next."""
    ref = make_lstm(torch.float64, num_layers=2, proj_size=2)
    m = stepwise_like(ref, gate_activation=KERAS3_HARD_SIGMOID, cell_activation=Activation("relu"))
    x = torch.randn(T, B, I, dtype=torch.float64)  # (time, batch, features)
    whole, (h_n, c_n) = m(x)
    first, hx = m(x[:3])
    second, (h2, c2) = m(x[3:], hx)
    close(torch.cat([first, second]), whole, 1e-12, "output")
    close(h2, h_n, 1e-12, "h_n")
    close(c2, c_n, 1e-12, "c_n")


def test_unbatched_input_like_nn_lstm():
    ref = make_lstm(torch.float64, num_layers=2, bidirectional=True, proj_size=2)
    m = stepwise_like(ref)
    x = torch.randn(T, I, dtype=torch.float64)  # (time, features)
    hx = (torch.randn(4, 2, dtype=torch.float64), torch.randn(4, H, dtype=torch.float64))
    want_out, (want_h, want_c) = run_ref(ref, x, hx)
    out, (h_n, c_n) = m(x, hx)
    for a, b in ((out, want_out), (h_n, want_h), (c_n, want_c)):
        assert a.shape == b.shape
        close(a, b, 1e-12, "unbatched")


# ----------------------------------------------------------------------------------------------------------
# construction: nn.LSTM's parameters, the meta device


@pytest.mark.parametrize("kw", [dict(num_layers=1), dict(num_layers=3, bidirectional=True, proj_size=2),
                                dict(num_layers=2, bias=False)])
def test_parameters_named_and_shaped_like_nn_lstm(kw):
    ref = torch.nn.LSTM(I, H, **kw)
    m = StepwiseLSTM(I, H, **kw)
    assert {k: tuple(v.shape) for k, v in m.state_dict().items()} == \
           {k: tuple(v.shape) for k, v in ref.state_dict().items()}
    for attr in ("input_size", "hidden_size", "num_layers", "bias", "batch_first", "bidirectional", "proj_size"):
        assert getattr(m, attr) == getattr(ref, attr), attr


def test_meta_device_and_assign():
    ref = make_lstm(torch.float32, num_layers=2, bidirectional=True)
    with torch.device("meta"):
        m = StepwiseLSTM(I, H, num_layers=2, bidirectional=True, gate_activation=KERAS2_HARD_SIGMOID)
    assert all(p.is_meta for p in m.parameters())
    state = ref.state_dict()
    m.load_state_dict(state, strict=True, assign=True)
    assert all(p.device.type == "cpu" for p in m.parameters())
    assert m.weight_hh_l1_reverse.data_ptr() == state["weight_hh_l1_reverse"].data_ptr()  # no copy
    out, (h_n, c_n) = m(torch.randn(T, B, I))
    assert out.shape == (T, B, 2 * H) and h_n.shape == (4, B, H) and c_n.shape == (4, B, H)
    with pytest.raises(RuntimeError, match="Missing key"):
        StepwiseLSTM(I, H, num_layers=3).load_state_dict(state, strict=True)


def test_bad_arguments():
    with pytest.raises(ValueError, match="not one StepwiseLSTM knows"):
        StepwiseLSTM(I, H, gate_activation=Activation("hard_swish"))
    with pytest.raises(ValueError, match="hard_sigmoid needs alpha and beta"):
        StepwiseLSTM(I, H, gate_activation=Activation("hard_sigmoid"))
    with pytest.raises(ValueError, match="proj_size"):
        StepwiseLSTM(I, H, proj_size=H)
    m = StepwiseLSTM(I, H)
    with pytest.raises(ValueError, match="4 features per step but the LSTM expects 3"):
        m(torch.randn(T, B, 4))
    with pytest.raises(ValueError, match="h0 has shape"):
        m(torch.randn(T, B, I), (torch.zeros(1, B + 1, H), torch.zeros(1, B, H)))


# ----------------------------------------------------------------------------------------------------------
# every activation


def _with_params(name: str) -> Activation:
    """``name`` with parameters where it takes them (values off the usual defaults, to catch mix-ups)."""
    return {"hard_sigmoid": KERAS2_HARD_SIGMOID, "elu": Activation("elu", 0.7), "leaky_relu": Activation("leaky_relu", 0.3),
            "thresholded_relu": Activation("thresholded_relu", 0.1), "scaled_tanh": Activation("scaled_tanh", 1.5, 0.7),
            "affine": Activation("affine", 0.8, 0.1)}.get(name, Activation(name))


ALL = [_with_params(n) for n in ACTIVATION_PARAMS]


def test_every_activation_is_covered():
    assert set(stepwise.ACTIVATIONS) == set(ACTIVATION_PARAMS)
    assert all(set(ACTIVATION_PARAMS[a.name]) <= {k for k in ("alpha", "beta") if getattr(a, k) is not None}
               for a in ALL)


@pytest.mark.parametrize("act", ALL + [KERAS3_HARD_SIGMOID], ids=str)
@pytest.mark.parametrize("in_place", [False, True], ids=["out", "in_place"])
def test_activation_values(act, in_place):
    """Each function of the table against the reference's formula, on both sides of every kink and far out
    (softplus past torch's cut-off at 20)."""
    x = torch.tensor([-40.0, -25.0, -6.5, -3.0, -1.0, -0.3, -1e-3, 0.0, 1e-3, 0.05, 0.1, 0.3, 1.0, 2.5, 3.0,
                      6.0, 6.5, 25.0, 40.0], dtype=torch.float64)
    if act.name == "exponential":
        x = x.clamp(max=30.0)
    want = activation(act.name, act.alpha, act.beta)(x.numpy())
    src = x.clone()
    out = src if in_place else torch.full_like(x, float("nan"))
    activation_fn(act)(src, out)
    np.testing.assert_allclose(out.numpy(), want, rtol=1e-15, atol=1e-15)


CELLS = ([(a, TANH) for a in ALL] + [(SIGMOID, a) for a in ALL if a != TANH]
         + [(KERAS2_HARD_SIGMOID, Activation("relu")), (KERAS3_HARD_SIGMOID, TANH), (KERAS3_HARD_SIGMOID, Activation("relu")),
            (Activation("scaled_tanh", 1.5, 0.7), Activation("affine", 0.8, 0.1))])


def scaled(lstm: torch.nn.LSTM, factor: float = 0.5) -> dict[str, torch.Tensor]:
    """``lstm``'s parameters times ``factor``: keeps cells like exp(c) from overflowing over 7 steps."""
    return {k: v * factor for k, v in lstm.state_dict().items()}


@pytest.mark.parametrize("gate,cell", CELLS, ids=[f"{g}-{c}" for g, c in CELLS])
def test_activations_match_reference(gate, cell):
    """Bidirectional, two layers, projection, packed unsorted lengths and an initial state; then one
    unidirectional layer at full length, time-major, from zeros. float32 and float64."""
    factor = 0.25 if cell.name == "exponential" else 0.5  # h = o * exp(c): float32 loses e^c's digits fast
    spread = 1.0 if cell.name == "exponential" else 6.0  # wide inputs, so clipped activations reach their bounds
    ref = make_lstm(torch.float64, num_layers=2, bidirectional=True, proj_size=3, batch_first=True)
    params = scaled(ref, factor)
    x = spread * torch.randn(B, T, I, dtype=torch.float64, generator=torch.Generator().manual_seed(4))  # (batch, time, features)
    h0, c0 = (t * factor for t in initial_state(2, 2, 3, torch.float64))
    want = lstm_reference_cells(params, x.numpy(), num_layers=2, bidirectional=True, proj_size=3, lengths=LENGTHS,
                                h0=h0.numpy(), c0=c0.numpy(), gate_activation=gate, cell_activation=cell)[:3]
    uni = make_lstm(torch.float64, seed=5)
    uni_params = scaled(uni, factor)
    uni_want = lstm_reference_cells(uni_params, x.numpy(), num_layers=1, bidirectional=False,
                                    gate_activation=gate, cell_activation=cell)[:3]
    for dtype, tol in TOL.items():
        m = stepwise_like(ref, gate_activation=gate, cell_activation=cell)
        m.load_state_dict({k: v.to(dtype) for k, v in params.items()}, assign=True)
        packed = pack_padded_sequence(x.to(dtype), torch.tensor(LENGTHS), batch_first=True, enforce_sorted=False)
        out, (h_n, c_n) = m(packed, (h0.to(dtype), c0.to(dtype)))
        out, _ = pad_packed_sequence(out, batch_first=True, total_length=T)
        for name, got, w in zip(("output", "h_n", "c_n"), (out, h_n, c_n), want):
            np.testing.assert_allclose(got.double().numpy(), w, rtol=tol, atol=tol, err_msg=f"{name} {dtype}")
        m1 = stepwise_like(uni, gate_activation=gate, cell_activation=cell)
        m1.load_state_dict({k: v.to(dtype) for k, v in uni_params.items()}, assign=True)
        out, (h_n, c_n) = m1(x.to(dtype).transpose(0, 1))  # time-major
        for name, got, w in zip(("output", "h_n", "c_n"), (out.transpose(0, 1), h_n, c_n), uni_want):
            np.testing.assert_allclose(got.double().numpy(), w, rtol=tol, atol=tol, err_msg=f"uni {name} {dtype}")


def test_reference_cells_agrees_with_reference():
    """The two numpy references agree on the standard cell (a check on the new one)."""
    ref = make_lstm(torch.float64, num_layers=2, bidirectional=True, proj_size=2)
    x = np.random.default_rng(6).standard_normal((B, T, I))
    h0, c0 = (t.numpy() for t in initial_state(2, 2, 2, torch.float64))
    kw = dict(num_layers=2, bidirectional=True, proj_size=2, lengths=LENGTHS, h0=h0, c0=c0)
    a = lstm_reference(ref.state_dict(), x, **kw)
    b = lstm_reference_cells(ref.state_dict(), x, **kw, gate_activation=SIGMOID, cell_activation=TANH)
    for u, v in itertools.zip_longest(a[:3], b[:3]):
        np.testing.assert_allclose(u, v, rtol=1e-14, atol=1e-14)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["f16", "bf16"])
def test_half_precision_runs(dtype):
    ref = make_lstm(torch.float64, num_layers=2, bidirectional=True)
    m = stepwise_like(ref, gate_activation=KERAS2_HARD_SIGMOID).to(dtype)
    x = torch.randn(B, T, I, dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    want_out, _, _, _ = lstm_reference_cells(ref.state_dict(), x.numpy(), num_layers=2, bidirectional=True,
                                             lengths=LENGTHS, gate_activation=KERAS2_HARD_SIGMOID)
    out, (h_n, c_n) = m(pack_padded_sequence(x.to(dtype), torch.tensor(LENGTHS), batch_first=True, enforce_sorted=False))
    assert out.data.dtype == h_n.dtype == c_n.dtype == dtype
    out, _ = pad_packed_sequence(out, batch_first=True, total_length=T)
    np.testing.assert_allclose(out.double().numpy(), want_out, atol=3e-2)
