"""engine.trace.trace_lstm (and StepwiseLSTM's per-step capture) against independent truth: every gate, c and h
against the float64 numpy reference written from the LSTM equations (tests/reference_cells.py), and the last
layer's h and the final states against torch.nn.LSTM run directly."""

from __future__ import annotations

import warnings
from dataclasses import replace

import numpy as np
import pytest
import torch

from lstmscope.engine import stepwise
from lstmscope.engine.trace import QUANTITIES, stream_trace, trace_lstm
from lstmscope.errors import InputError, StateError, UsageError
from lstmscope.spec import KERAS2_HARD_SIGMOID, Activation, LSTMSpec
from reference_cells import lstm_reference_trace

TOL = {"float32": 1e-5, "float64": 1e-12}
I, H, B, T = 3, 5, 4, 7
LENGTHS = [3, 6, 1, 5]  # unsorted, a length-1 sequence, and none reaches T: steps 6.. are padding for all


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(params=[None, 3, 1], ids=["one_block", "blocks_of_3", "blocks_of_1"])
def block_steps(request, monkeypatch):
    """The stepwise engine's block of steps (its capture hands over one block at a time): all steps at once,
    3 (a block boundary inside every sequence) or 1."""
    if request.param is not None:
        monkeypatch.setattr(stepwise, "MAX_BLOCK_STEPS", request.param)
    return request.param


def make(dtype: str, *, num_layers=1, bidirectional=False, proj_size=0, bias=True, seed=0, **cell):
    """(spec, numpy params, the nn.LSTM holding them) for a tiny LSTM."""
    torch.manual_seed(seed)
    lstm = torch.nn.LSTM(I, H, num_layers=num_layers, bidirectional=bidirectional, proj_size=proj_size, bias=bias,
                         batch_first=True).to(getattr(torch, dtype)).eval()
    params = {k: v.detach().numpy().copy() for k, v in lstm.state_dict().items()}
    spec = LSTMSpec(input_size=I, hidden_size=H, proj_size=proj_size, num_layers=num_layers,
                    bidirectional=bidirectional, bias=bias, dtype=dtype, **cell)
    return spec, params, lstm


def inputs(dtype: str, seed=1):
    return np.random.default_rng(seed).standard_normal((B, T, I)).astype(dtype)  # (batch, time, features)


def initial_state(spec: LSTMSpec, seed=2):
    rng = np.random.default_rng(seed)
    n = spec.num_layers * spec.num_directions
    h0 = rng.standard_normal((n, B, spec.output_size)).astype(spec.dtype)  # (L * D, batch, P)
    c0 = rng.standard_normal((n, B, H)).astype(spec.dtype)  # (L * D, batch, hidden)
    return h0, c0


def reference(spec: LSTMSpec, params, x, **kw):
    return lstm_reference_trace(params, x, num_layers=spec.num_layers, bidirectional=spec.bidirectional,
                                proj_size=spec.proj_size, gate_activation=spec.gate_activation,
                                cell_activation=spec.cell_activation, **kw)


def assert_traces_equal(got: dict, want: dict, tol: float) -> None:
    assert set(got) == set(want)
    for key, w in want.items():
        g = got[key]
        assert g.shape == w.shape, key
        np.testing.assert_array_equal(np.isnan(g), np.isnan(w), err_msg=f"padding of {key}")
        np.testing.assert_allclose(g.astype(np.float64), w, rtol=tol, atol=tol, err_msg=str(key))


CASES = {
    "standard_1_layer": dict(num_layers=1),
    "standard_2_layers": dict(num_layers=2),
    "proj_size": dict(num_layers=2, proj_size=3),
    "proj_size_bidirectional_no_bias": dict(num_layers=2, bidirectional=True, proj_size=2, bias=False),
    "bidirectional": dict(num_layers=2, bidirectional=True),
    "keras_hard_sigmoid_relu": dict(num_layers=2, bidirectional=True, gate_activation=KERAS2_HARD_SIGMOID,
                                    cell_activation=Activation("relu")),
}


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("with_lengths", [False, True], ids=["full", "lengths"])
@pytest.mark.parametrize("with_state", [False, True], ids=["zero_state", "initial_state"])
def test_every_step_equals_the_reference(dtype, case, with_lengths, with_state, block_steps):
    spec, params, _ = make(dtype, **CASES[case])
    x = inputs(dtype)
    lengths = np.array(LENGTHS) if with_lengths else None
    h0, c0 = initial_state(spec) if with_state else (None, None)
    got = trace_lstm(spec, params, x, lengths=lengths, h0=h0, c0=c0)
    want = reference(spec, params, x, lengths=lengths, h0=h0, c0=c0)
    assert_traces_equal(got, want, TOL[dtype])
    for (layer, direction, q), a in got.items():
        assert a.dtype == np.dtype(dtype)
        assert a.shape == (B, T, spec.output_size if q == "h" else H)
        if with_lengths:  # padding past each length, and only there
            for b, n in enumerate(LENGTHS):
                assert np.isnan(a[b, n:]).all() and not np.isnan(a[b, :n]).any()


def test_backward_step_t_is_the_state_after_reading_x_t():
    """A one-step sequence's backward state equals the forward state of the same cell run on x[t] alone."""
    spec, params, _ = make("float64", bidirectional=True)
    x = inputs("float64")
    got = trace_lstm(spec, params, x, lengths=np.array(LENGTHS))
    b = LENGTHS.index(1)
    one = reference(replace(spec, bidirectional=False),
                    {k.removesuffix("_reverse"): v for k, v in params.items() if k.endswith("_reverse")},
                    x[b:b + 1, :1])
    for q in QUANTITIES:
        np.testing.assert_allclose(got[(0, 1, q)][b, 0], one[(0, 0, q)][0, 0], rtol=1e-12, atol=1e-12)


def run_nn_lstm(lstm, x, lengths, hx):
    """torch.nn.LSTM as a user runs it: (output (B, T, D * P) with zeros as padding, h_n, c_n)."""
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

    xt = torch.from_numpy(x)
    hx = None if hx[0] is None else tuple(torch.from_numpy(t) for t in hx)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*not supported with oneDNN.*")  # projections: torch falls back
        if lengths is None:
            out, (h_n, c_n) = lstm(xt, hx)
        else:
            packed = pack_padded_sequence(xt, torch.from_numpy(lengths), batch_first=True, enforce_sorted=False)
            out, (h_n, c_n) = lstm(packed, hx)
            out, _ = pad_packed_sequence(out, batch_first=True, total_length=T)
    return out.numpy(), h_n.numpy(), c_n.numpy()


@pytest.mark.parametrize("kw", [dict(num_layers=2, bidirectional=True), dict(num_layers=2, proj_size=3),
                                dict(num_layers=3, bidirectional=True, proj_size=2)], ids=["bi", "proj", "bi_proj"])
@pytest.mark.parametrize("with_lengths", [False, True], ids=["full", "lengths"])
@pytest.mark.parametrize("with_state", [False, True], ids=["zero_state", "initial_state"])
def test_trace_equals_nn_lstm_output_and_final_states(kw, with_lengths, with_state, block_steps):
    spec, params, lstm = make("float32", **kw)
    x = inputs("float32")
    lengths = np.array(LENGTHS) if with_lengths else None
    lens = lengths if with_lengths else np.full(B, T)
    h0, c0 = initial_state(spec) if with_state else (None, None)
    out, h_n, c_n = run_nn_lstm(lstm, x, lengths, (h0, c0))
    got = trace_lstm(spec, params, x, lengths=lengths, h0=h0, c0=c0)
    last, d, p = spec.num_layers - 1, spec.num_directions, spec.output_size
    valid = np.arange(T)[None, :] < lens[:, None]  # (batch, time)
    for direction in range(d):
        h = got[(last, direction, "h")]
        np.testing.assert_allclose(h[valid], out[..., direction * p:(direction + 1) * p][valid], rtol=1e-6, atol=1e-6)
    rows = np.arange(B)
    for layer in range(spec.num_layers):
        for direction in range(d):
            step = lens - 1 if direction == 0 else np.zeros(B, dtype=int)  # forward: the last valid step; backward: 0
            k = layer * d + direction
            np.testing.assert_allclose(got[(layer, direction, "h")][rows, step], h_n[k], rtol=1e-6, atol=1e-6)
            np.testing.assert_allclose(got[(layer, direction, "c")][rows, step], c_n[k], rtol=1e-6, atol=1e-6)


def test_capture_changes_nothing_and_hands_over_blocks(monkeypatch):
    """forward with capture returns bit for bit what it returns without; the blocks tile (time) once per
    layer and direction, in input-time order, with rows in the batch's own order."""
    monkeypatch.setattr(stepwise, "MAX_BLOCK_STEPS", 3)
    spec, params, lstm = make("float32", num_layers=2, bidirectional=True, proj_size=2)
    with torch.device("meta"):
        m = stepwise.StepwiseLSTM(I, H, num_layers=2, bidirectional=True, proj_size=2, batch_first=True)
    m.load_state_dict(lstm.state_dict(), strict=True, assign=True)
    from torch.nn.utils.rnn import pack_padded_sequence

    packed = pack_padded_sequence(torch.from_numpy(inputs("float32")), torch.tensor(LENGTHS), batch_first=True,
                                  enforce_sorted=False)
    blocks = []
    plain = m(packed)
    captured = m(packed, capture=lambda b: blocks.append((b.layer, b.direction, b.start, b.h.shape[0],
                                                          b.h.clone(), b.c.shape, b.i.shape)))
    for a, b in zip((plain[0].data, *plain[1]), (captured[0].data, *captured[1])):
        assert torch.equal(a, b)
    steps = max(LENGTHS)  # a packed run stops at the longest sequence
    for layer in range(2):
        for direction in range(2):
            mine = [bl for bl in blocks if bl[:2] == (layer, direction)]
            starts = [bl[2] for bl in mine]
            assert starts == (sorted(starts) if direction == 0 else sorted(starts, reverse=True))
            assert sorted((s, s + n) for _, _, s, n, *_ in mine) == [(s, min(s + 3, steps)) for s in range(0, steps, 3)]
            for *_, h, c_shape, i_shape in mine:
                assert h.shape[1:] == (B, 2) and c_shape[1:] == (B, H) and i_shape[1:] == (B, H)
    # the last layer's forward h, rows in the batch's own order, equals output (time, batch) at valid steps
    out, _ = torch.nn.utils.rnn.pad_packed_sequence(captured[0], batch_first=True)
    h = torch.cat([bl[4] for bl in sorted((bl for bl in blocks if bl[:2] == (1, 0)), key=lambda bl: bl[2])])
    for b, n in enumerate(LENGTHS):
        assert torch.equal(h[:n, b], out[b, :n, :2])


def test_sink_gets_every_step_once_and_the_same_numbers(monkeypatch):
    monkeypatch.setattr(stepwise, "MAX_BLOCK_STEPS", 2)
    spec, params, _ = make("float64", num_layers=2, bidirectional=True)
    x, lengths = inputs("float64"), np.array(LENGTHS)
    whole = trace_lstm(spec, params, x, lengths=lengths, quantities=("f", "h"))
    assert set(whole) == {(layer, d, q) for layer in range(2) for d in range(2) for q in ("f", "h")}
    seen: dict = {}

    def sink(layer, direction, quantity, start, block, flipped):
        assert not flipped  # the whole run hands over input-time blocks (go_backwards aside)
        assert block.flags.c_contiguous and block.flags.writeable
        arr = seen.setdefault((layer, direction, quantity), np.full((B, T, block.shape[2]), -1.0))
        assert (arr[:, start:start + block.shape[1]] == -1.0).all()  # not handed over before
        arr[:, start:start + block.shape[1]] = block
        block[:] = 7.0  # the sink owns the block: writing to it must not touch the run

    assert trace_lstm(spec, params, x, lengths=lengths, quantities=("f", "h"), sink=sink) is None
    assert set(seen) == set(whole)
    for key, arr in seen.items():
        np.testing.assert_array_equal(arr, whole[key])


def test_go_backwards_traces_in_processing_order():
    """Keras go_backwards: each sequence's own steps read last first; the trace is in that order (as y)."""
    spec, params, _ = make("float64", num_layers=2, go_backwards=True)
    x, lengths = inputs("float64"), np.array(LENGTHS)
    x_rev = x.copy()
    for b, n in enumerate(LENGTHS):
        x_rev[b, :n] = x[b, :n][::-1]
    got = trace_lstm(spec, params, x, lengths=lengths)
    assert_traces_equal(got, reference(spec, params, x_rev, lengths=lengths), 1e-12)


def test_bad_arguments():
    spec, params, _ = make("float32")
    x = inputs("float32")
    with pytest.raises(UsageError, match="'q' is not a quantity"):
        trace_lstm(spec, params, x, quantities=("h", "q"))
    with pytest.raises(InputError, match="lengths"):
        trace_lstm(spec, params, x, lengths=np.array([0, 1, 2, 3]))
    with pytest.raises(InputError, match="expects"):
        trace_lstm(spec, params, x[..., :2])
    h0, c0 = initial_state(spec)
    with pytest.raises(StateError, match="h0 has shape"):
        trace_lstm(spec, params, x, h0=h0[:, :2], c0=c0)


def streamed(spec, params, x, chunk, **kw) -> dict:
    """stream_trace's blocks put together in input-time order by the test itself (not by the code under test)."""
    batch, time = x.shape[:2]
    lengths = kw.get("lengths")
    full = np.full(batch, time) if lengths is None else np.asarray(lengths)
    out: dict = {}
    handed: dict = {}

    def sink(layer, direction, quantity, start, block, flipped):
        key = (layer, direction, quantity)
        arr = out.setdefault(key, np.full((batch, time, block.shape[2]), -7.0))
        seen = handed.setdefault(key, np.zeros((batch, time), bool))
        for b in range(batch):
            for s in range(block.shape[1]):
                t = start + s
                if flipped and t < full[b]:
                    t = full[b] - 1 - t  # each sequence's own steps, reversed
                assert not seen[b, t], (key, b, t)
                seen[b, t] = True
                arr[b, t] = block[b, s]

    stream_trace(spec, params, lambda a, e: x[:, a:e], batch=batch, time=time, chunk_size=chunk, sink=sink, **kw)
    assert all(seen.all() for seen in handed.values())  # every step of every key exactly once
    return out


@pytest.mark.parametrize("chunk", [1, 3, 100], ids=["chunks_of_1", "chunks_of_3", "one_chunk"])
@pytest.mark.parametrize("case", ["standard_2_layers", "proj_size_bidirectional_no_bias", "bidirectional",
                                  "keras_hard_sigmoid_relu"])
@pytest.mark.parametrize("with_lengths", [False, True], ids=["full", "lengths"])
def test_streamed_trace_equals_the_reference(case, chunk, with_lengths, tmp_path):
    """A trace streamed chunk by chunk (layer by layer, the backward direction over reversed chunks, through
    temporary files) gives every step of every key once, equal to the reference, with NaN padding."""
    spec, params, _ = make("float64", **CASES[case])
    x = inputs("float64")
    lengths = np.array(LENGTHS) if with_lengths else None
    h0, c0 = initial_state(spec)
    got = streamed(spec, params, x, chunk, lengths=lengths, h0=h0, c0=c0, tmp_dir=str(tmp_path))
    assert_traces_equal(got, reference(spec, params, x, lengths=lengths, h0=h0, c0=c0), TOL["float64"])
    assert list(tmp_path.iterdir()) == []  # the temporary files are gone


def test_streamed_go_backwards_is_the_reversed_sequence():
    spec, params, _ = make("float64", num_layers=2, go_backwards=True)
    x, lengths = inputs("float64"), np.array(LENGTHS)
    x_rev = x.copy()
    for b, n in enumerate(LENGTHS):
        x_rev[b, :n] = x[b, :n][::-1]
    want = reference(spec, params, x_rev, lengths=lengths)  # in processing order: turn it to input order
    for key, w in want.items():
        for b, n in enumerate(LENGTHS):
            w[b, :n] = w[b, :n][::-1].copy()
    assert_traces_equal(streamed(spec, params, x, 2, lengths=lengths), want, TOL["float64"])


def test_streamed_float32_within_rounding_of_the_whole_run():
    spec, params, _ = make("float32", num_layers=2, bidirectional=True)
    x, lengths = inputs("float32"), np.array(LENGTHS)
    whole = trace_lstm(spec, params, x, lengths=lengths)
    assert_traces_equal(streamed(spec, params, x, 2, lengths=lengths),
                        {k: v.astype(np.float64) for k, v in whole.items()}, 1e-6)


def test_streamed_temporary_files_go_on_failure(tmp_path):
    spec, params, _ = make("float64", num_layers=2, bidirectional=True)
    x = inputs("float64")
    calls = []

    def sink(layer, direction, quantity, start, block, flipped):
        calls.append(layer)
        if layer == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        stream_trace(spec, params, lambda a, e: x[:, a:e], batch=B, time=T, chunk_size=2, sink=sink,
                     tmp_dir=str(tmp_path))
    assert 0 in calls and list(tmp_path.iterdir()) == []
