"""Proves tests/reference.py (pure numpy) matches torch.nn.LSTM run directly, in float64."""

import itertools
import pathlib
import sys

import numpy as np
import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from reference import lstm_reference  # noqa: E402

ATOL = 1e-10
B, T, F, H, P = 4, 7, 5, 6, 3

# Lengths include T, 1 and values in between; enforce_sorted=False exercises unsorted batches.
LENGTHS_SETS = {
    "full": None,
    "mixed": [5, T, 1, 3],
    "all_short": [2, 4, 1, 6],  # max < T: pad_packed_sequence(total_length=T) pads the tail
}


def _make_lstm(num_layers, bidirectional, proj_size, bias, seed):
    torch.manual_seed(seed)
    lstm = torch.nn.LSTM(
        input_size=F,
        hidden_size=H,
        num_layers=num_layers,
        bias=bias,
        batch_first=True,
        bidirectional=bidirectional,
        proj_size=proj_size,
    ).double()
    # Widen the weight range a bit so gates are not all near 0.5 (default init is +-1/sqrt(H)).
    with torch.no_grad():
        for p in lstm.parameters():
            p.uniform_(-0.8, 0.8)
    return lstm


def _run_torch(lstm, x, lengths, hx):
    with torch.no_grad():
        if lengths is None:
            out, (h_n, c_n) = lstm(x, hx)
        else:
            packed = pack_padded_sequence(x, torch.tensor(lengths), batch_first=True, enforce_sorted=False)
            out_p, (h_n, c_n) = lstm(packed, hx)
            out, _ = pad_packed_sequence(out_p, batch_first=True, total_length=x.shape[1])
    return out.numpy(), h_n.numpy(), c_n.numpy()


def _single_layer_clone(lstm, layer, input_size):
    """A 1-layer torch LSTM holding layer `layer` of `lstm` (to check per-layer outputs)."""
    one = torch.nn.LSTM(
        input_size=input_size,
        hidden_size=lstm.hidden_size,
        num_layers=1,
        bias=lstm.bias,
        batch_first=True,
        bidirectional=lstm.bidirectional,
        proj_size=lstm.proj_size,
    ).double()
    sd = {}
    for name, v in lstm.state_dict().items():
        for sfx in ("", "_reverse"):
            tail = f"_l{layer}{sfx}"
            if name.endswith(tail):
                sd[name[: -len(tail)] + f"_l0{sfx}"] = v
    one.load_state_dict(sd)
    return one


CASES = list(
    itertools.product(
        [1, 2, 3],  # num_layers
        [False, True],  # bidirectional
        [0, P],  # proj_size
        [True, False],  # bias
        list(LENGTHS_SETS),  # lengths
        [False, True],  # random h0/c0
    )
)


@pytest.mark.parametrize("num_layers,bidirectional,proj_size,bias,lengths_key,init_state", CASES)
def test_reference_matches_torch(num_layers, bidirectional, proj_size, bias, lengths_key, init_state):
    seed = CASES.index((num_layers, bidirectional, proj_size, bias, lengths_key, init_state))  # deterministic
    lstm = _make_lstm(num_layers, bidirectional, proj_size, bias, seed)
    D = 2 if bidirectional else 1
    H_out = proj_size or H
    lengths = LENGTHS_SETS[lengths_key]

    g = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(B, T, F, dtype=torch.float64, generator=g) * 1.5
    if init_state:
        h0 = torch.randn(num_layers * D, B, H_out, dtype=torch.float64, generator=g)
        c0 = torch.randn(num_layers * D, B, H, dtype=torch.float64, generator=g)
        hx = (h0, c0)
    else:
        h0 = c0 = None
        hx = None

    t_out, t_h, t_c = _run_torch(lstm, x, lengths, hx)

    params = {k: v.numpy() for k, v in lstm.state_dict().items()}
    if not bias:
        assert not any(k.startswith("bias") for k in params)
    if proj_size:
        assert any(k.startswith("weight_hr") for k in params)
    out, h_n, c_n, layer_outputs = lstm_reference(
        params,
        x.numpy(),
        num_layers=num_layers,
        bidirectional=bidirectional,
        proj_size=proj_size,
        lengths=lengths,
        h0=None if h0 is None else h0.numpy(),
        c0=None if c0 is None else c0.numpy(),
    )

    assert out.dtype == h_n.dtype == c_n.dtype == np.float64
    assert out.shape == (B, T, D * H_out) == t_out.shape
    assert h_n.shape == (num_layers * D, B, H_out) == t_h.shape
    assert c_n.shape == (num_layers * D, B, H) == t_c.shape
    assert len(layer_outputs) == num_layers
    np.testing.assert_allclose(out, t_out, rtol=0, atol=ATOL)
    np.testing.assert_allclose(h_n, t_h, rtol=0, atol=ATOL)
    np.testing.assert_allclose(c_n, t_c, rtol=0, atol=ATOL)
    np.testing.assert_array_equal(layer_outputs[-1], out)

    if lengths is not None:
        for b, n in enumerate(lengths):
            assert np.all(out[b, n:] == 0.0)

    # Each intermediate layer's output: run that layer alone in torch on the previous torch layer's output.
    prev = x
    for layer in range(num_layers):
        assert layer_outputs[layer].shape == (B, T, D * H_out)
        one = _single_layer_clone(lstm, layer, prev.shape[2])
        hx_l = None if hx is None else (h0[layer * D : (layer + 1) * D], c0[layer * D : (layer + 1) * D])
        o_l, h_l, c_l = _run_torch(one, prev, lengths, hx_l)
        np.testing.assert_allclose(layer_outputs[layer], o_l, rtol=0, atol=ATOL)
        np.testing.assert_allclose(h_n[layer * D : (layer + 1) * D], h_l, rtol=0, atol=ATOL)
        np.testing.assert_allclose(c_n[layer * D : (layer + 1) * D], c_l, rtol=0, atol=ATOL)
        prev = torch.from_numpy(o_l)


def test_float32_params_are_cast_to_float64():
    lstm = _make_lstm(2, True, 0, True, seed=123)
    params64 = {k: v.numpy() for k, v in lstm.state_dict().items()}
    params32 = {k: v.astype(np.float32) for k, v in params64.items()}
    x = np.random.default_rng(0).standard_normal((2, 5, F)).astype(np.float32)
    res32 = lstm_reference(params32, x, num_layers=2, bidirectional=True)
    res64 = lstm_reference(
        {k: v.astype(np.float64) for k, v in params32.items()}, x.astype(np.float64), num_layers=2, bidirectional=True
    )
    for a, b in zip(res32[:3], res64[:3]):
        assert a.dtype == np.float64
        np.testing.assert_array_equal(a, b)


def test_backward_initial_state_enters_at_last_valid_step():
    """With lengths, the reverse direction's h0/c0 is consumed at step lengths[b]-1 (not T-1)."""
    lstm = _make_lstm(1, True, 0, True, seed=7)
    params = {k: v.numpy() for k, v in lstm.state_dict().items()}
    rng = np.random.default_rng(1)
    x = rng.standard_normal((1, T, F))
    h0 = rng.standard_normal((2, 1, H))
    c0 = rng.standard_normal((2, 1, H))
    n = 3
    full = lstm_reference(params, x[:, :n], num_layers=1, bidirectional=True, h0=h0, c0=c0)
    packed = lstm_reference(params, x, num_layers=1, bidirectional=True, lengths=[n], h0=h0, c0=c0)
    np.testing.assert_allclose(packed[0][:, :n], full[0], rtol=0, atol=1e-14)
    np.testing.assert_array_equal(packed[0][:, n:], 0.0)
    np.testing.assert_allclose(packed[1], full[1], rtol=0, atol=1e-14)
    np.testing.assert_allclose(packed[2], full[2], rtol=0, atol=1e-14)
