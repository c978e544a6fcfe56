"""Masked steps (lstmscope.masking, --mask-value) against independent truth.

The truth is computed here: a naive per-step float64 LSTM loop that *skips* masked steps (the state carries
through unchanged; the output at a masked step is the previous output again, zeros before the first step read
("repeat", plain LSTMs, Keras semantics), or zeros ("zero", bidirectional)), and go_backwards as Keras runs it
(t = T-1..0, the output in that processing order); and torch.nn.LSTM run directly on each sequence's valid steps
alone. lstmscope is never compared with itself, except where a streamed run must equal the whole run.

What is checked:
* StepMask.expand of a compacted run equals the naive loop (random masks: front padding, end padding, holes,
  all-valid and all-masked rows; both fills; backwards_in_place True/False); compact_reader over a random
  chunking equals compact sliced; expanding_sink fed compacted chunks of random sizes equals expand;
* mask_from_rule: "value" (NaN never equal), "zero_id", "pre" with lengths, and a rule with end lengths;
* export-state --mask-value 0 (uni- and bidirectional, 2 layers): h_n/c_n equal nn.LSTM on each sequence's
  valid steps, output the naive loop's expansion; streamed (--chunk-size 1, 3, 5) equals the whole run;
* trace --mask-value 0: NaN at masked steps, h/c at valid steps the naive loop's; streamed equals whole;
  --order processing refused; show-state --json summary means; diff-states against itself and --no-mask;
* a wholly masked row: the warning, the initial state (zeros, or --initial-state), zero output, run --json;
* show-state on a masked export: checks ok and the metadata's mask (last_valid).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors import safe_open
from safetensors.numpy import load_file

from lstmscope.errors import InputError
from lstmscope.masking import MaskRule, StepMask, mask_from_rule

F, H = 3, 4
B, T = 5, 8
TOL = 1e-6
UNIT = settings(max_examples=max(50, settings.default.max_examples // 3), deadline=None)  # ci: 166


# ---------------------------------------------------------------------------------------------------------------
# the naive float64 loop (independent of lstmscope)


def _sig(z):
    return 1.0 / (1.0 + np.exp(-z))


def naive_direction(w_ih, w_hh, bias, x, valid, *, reverse=False, fill="repeat", h0=None, c0=None,
                    in_place_backwards=False):
    """One LSTM direction over (B, T, F) float64, skipping masked steps. Returns (out (B, T, H) with masked steps
    filled, hs and cs (B, T, H) in input order with NaN at masked steps, h_n (B, H), c_n (B, H)).
    ``reverse``: read t = T-1..0. ``in_place_backwards``: the output in processing order (Keras go_backwards)."""
    batch, time, _ = x.shape
    hid = w_hh.shape[1]
    out = np.zeros((batch, time, hid))
    hs = np.full((batch, time, hid), np.nan)
    cs = np.full((batch, time, hid), np.nan)
    h_n = np.zeros((batch, hid))
    c_n = np.zeros((batch, hid))
    for b in range(batch):
        h = np.zeros(hid) if h0 is None else np.array(h0[b], dtype=np.float64)
        c = np.zeros(hid) if c0 is None else np.array(c0[b], dtype=np.float64)
        last_out = None
        order = range(time - 1, -1, -1) if reverse else range(time)
        for j, t in enumerate(order):
            place = j if in_place_backwards else t
            if valid[b, t]:
                z = w_ih @ x[b, t] + w_hh @ h + bias
                i, f, g, o = _sig(z[:hid]), _sig(z[hid:2 * hid]), np.tanh(z[2 * hid:3 * hid]), _sig(z[3 * hid:])
                c = f * c + i * g
                h = o * np.tanh(c)
                out[b, place] = h
                hs[b, t], cs[b, t] = h, c
                last_out = h
            elif fill == "repeat" and last_out is not None:
                out[b, place] = last_out
            # else: zeros
        h_n[b], c_n[b] = h, c
    return out, hs, cs, h_n, c_n


def naive_lstm(params, x, valid, *, num_layers, bidirectional, fill, h0=None, c0=None):
    """A stacked (bi)LSTM from nn.LSTM's state_dict, masked steps skipped in every layer (Keras propagates the
    mask). Returns output (B, T, D*H), h_n, c_n (L*D, B, H), and {(layer, d): (hs, cs)} in input order."""
    x = np.asarray(x, dtype=np.float64)
    d_n = 2 if bidirectional else 1
    hn, cn, per = [], [], {}
    layer_in = x
    for layer in range(num_layers):
        outs = []
        for d in range(d_n):
            sfx = f"_l{layer}" + ("_reverse" if d else "")
            w_ih = params["weight_ih" + sfx].astype(np.float64)
            w_hh = params["weight_hh" + sfx].astype(np.float64)
            bias = params["bias_ih" + sfx].astype(np.float64) + params["bias_hh" + sfx].astype(np.float64)
            k = layer * d_n + d
            out, hs, cs, h, c = naive_direction(w_ih, w_hh, bias, layer_in, valid, reverse=bool(d), fill=fill,
                                                h0=None if h0 is None else h0[k], c0=None if c0 is None else c0[k])
            outs.append(out)
            per[(layer, d)] = (hs, cs)
            hn.append(h)
            cn.append(c)
        layer_in = np.concatenate(outs, axis=2)
    return layer_in, np.stack(hn), np.stack(cn), per


# ---------------------------------------------------------------------------------------------------------------
# 1. StepMask units


@st.composite
def masks(draw, max_b=5, max_t=12):
    """(B, T) bool masks whose rows are all valid, all masked, front-padded, end-padded, holed, or random."""
    batch = draw(st.integers(1, max_b))
    time = draw(st.integers(1, max_t))
    rows = []
    for _ in range(batch):
        kind = draw(st.sampled_from(["all", "none", "front", "end", "holes", "random"]))
        row = np.ones(time, dtype=bool)
        if kind == "none":
            row[:] = False
        elif kind == "front":
            row[: draw(st.integers(0, time))] = False
        elif kind == "end":
            row[time - draw(st.integers(0, time)):] = False
        elif kind in ("holes", "random"):
            bits = draw(st.lists(st.booleans(), min_size=time, max_size=time))
            row[:] = bits
            if kind == "holes":
                row[0] = row[-1] = True
        rows.append(row)
    return np.array(rows, dtype=bool).reshape(batch, time)


def _cell(seed: int, f: int = 2, h: int = 3):
    rng = np.random.default_rng(seed)
    return rng.uniform(-1, 1, (4 * h, f)), rng.uniform(-1, 1, (4 * h, h)), rng.uniform(-1, 1, 4 * h)


def compact_by_hand(x, valid):
    """Each sequence's valid steps first, in order (independent of StepMask.compact), and their counts."""
    batch = x.shape[0]
    counts = valid.sum(axis=1)
    n = max(1, int(counts.max()))
    out = np.zeros((batch, n, x.shape[2]))
    for b in range(batch):
        out[b, : counts[b]] = x[b, valid[b]]
    return out, counts


def run_compacted(w_ih, w_hh, bias, xc, counts, *, backwards):
    """A plain (unmasked) loop over each sequence's first counts[b] compacted steps (reversed when
    ``backwards``); the steps past the count hold garbage, which expand must never pick."""
    batch, n, _ = xc.shape
    hid = w_hh.shape[1]
    out = np.full((batch, n, hid), 999.0)
    for b in range(batch):
        k = int(counts[b])
        seq = xc[b, :k][::-1] if backwards else xc[b, :k]
        o, _, _, _, _ = naive_direction(w_ih, w_hh, bias, seq[None], np.ones((1, k), dtype=bool))
        out[b, :k] = o[0]
    return out


@UNIT
@given(valid=masks(), fill=st.sampled_from(["repeat", "zero"]), backwards=st.booleans(), seed=st.integers(0, 99),
       override=st.booleans())
def test_expand_of_compacted_run_equals_naive_loop(valid, fill, backwards, seed, override):
    batch, time = valid.shape
    w_ih, w_hh, bias = _cell(seed)
    x = np.random.default_rng(seed).standard_normal((batch, time, 2))
    want, _, _, want_h, _ = naive_direction(w_ih, w_hh, bias, x, valid, reverse=backwards, fill=fill,
                                            in_place_backwards=backwards)
    other = "zero" if fill == "repeat" else "repeat"
    mask = StepMask(valid, other if override else fill, "test")
    # what StepMask says about the mask, against its definition
    np.testing.assert_array_equal(mask.counts, valid.sum(axis=1))
    for b in range(batch):
        idx = np.flatnonzero(valid[b])
        assert mask.first[b] == (idx[0] if idx.size else -1)
        assert mask.last[b] == (idx[-1] if idx.size else -1)
        np.testing.assert_array_equal(mask.positions[b, : idx.size], idx)
    assert mask.empty == [b for b in range(batch) if not valid[b].any()]
    xc, counts = compact_by_hand(x, valid)
    compacted = mask.compact(x)
    for b in range(batch):
        np.testing.assert_array_equal(compacted[b, : counts[b]], xc[b, : counts[b]])
    out = run_compacted(w_ih, w_hh, bias, xc, counts, backwards=backwards)
    got = mask.expand(out, backwards_in_place=backwards, fill=fill if override else None)
    assert got.shape == (batch, time, w_hh.shape[1])
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)
    # the final state sits where output_steps says (the last step read, in the output's own order)
    fwd, _ = mask.output_steps(backwards)
    for b in range(batch):
        if counts[b]:
            np.testing.assert_allclose(got[b, fwd[b]], want_h[b], rtol=0, atol=1e-12)
        else:
            assert fwd[b] == -1


@UNIT
@given(valid=masks(), data=st.data())
def test_compact_reader_over_random_chunks_equals_compact(valid, data):
    batch, time = valid.shape
    x = np.random.default_rng(int(valid.sum())).standard_normal((batch, time, 3)).astype(np.float32)
    mask = StepMask(valid, "repeat", "test")
    whole = mask.compact(x)
    assert whole.shape == (batch, mask.run_time, 3)
    reads = []

    def read_steps(lo, hi):
        assert 0 <= lo < hi <= time
        reads.append((lo, hi))
        return x[:, lo:hi]

    reader = mask.compact_reader(read_steps)
    n = mask.run_time
    cuts = sorted(set(data.draw(st.lists(st.integers(1, max(1, n - 1)), max_size=5)) if n > 1 else []))
    edges = [0, *[c for c in cuts if 0 < c < n], n]
    for a, z in zip(edges[:-1], edges[1:]):
        got = reader(a, z)
        assert got.dtype == x.dtype
        np.testing.assert_array_equal(got, whole[:, a:z])
    # and the valid part is each sequence's valid steps in order (truth by hand)
    for b in range(batch):
        k = int(valid[b].sum())
        np.testing.assert_array_equal(whole[b, :k], x[b, valid[b]])


@UNIT
@given(valid=masks(), fill=st.sampled_from(["repeat", "zero"]), backwards=st.booleans(), data=st.data())
def test_expanding_sink_over_random_chunks_equals_expand(valid, fill, backwards, data):
    batch, time = valid.shape
    mask = StepMask(valid, fill, "test")
    n = mask.run_time
    rng = np.random.default_rng(int(valid.sum()) + n)
    out = rng.standard_normal((batch, n, 2))
    out[np.arange(n)[None, :] >= mask.counts[:, None]] = 999.0  # past each count: never read
    want = mask.expand(out, backwards_in_place=backwards)
    dst = np.zeros((batch, time, 2))
    written = np.zeros((batch, time), dtype=int)

    def put_row(b, t0, rows):
        rows = np.asarray(rows)
        assert rows.ndim == 2 and rows.shape[1] == 2
        assert 0 <= t0 and t0 + rows.shape[0] <= time, (b, t0, rows.shape)
        dst[b, t0:t0 + rows.shape[0]] = rows
        written[b, t0:t0 + rows.shape[0]] += 1

    sink = mask.expanding_sink(put_row, backwards_in_place=backwards)
    start = 0
    while start < n:
        size = data.draw(st.integers(1, n - start))
        sink(start, out[:, start:start + size])
        start += size
    sink.finish()
    np.testing.assert_array_equal(dst, want)
    assert written.max(initial=0) <= 1  # every step written at most once
    assert not (dst == 999.0).any()


# ---------------------------------------------------------------------------------------------------------------
# 2. mask_from_rule


def _reader(a):
    calls = []

    def read(lo, hi):
        calls.append((lo, hi))
        return a[:, lo:hi]

    return read, calls


@pytest.mark.parametrize("block", [1, 3, 4096])
def test_value_rule_all_features_equal_nan_never_equal(block):
    x = np.array([[[0, 0], [0, 1], [np.nan, 0], [0, 0], [np.nan, np.nan], [2, 2], [-0.0, 0.0]],
                  [[2, 2], [2, np.nan], [1, 1], [2, 2], [0, 0], [2, 2.0000001], [2, 2]]], dtype=np.float64)
    read, calls = _reader(x)
    got = mask_from_rule(MaskRule("value", 0.0), read, 2, 7, block=block)
    want = np.array([[False, True, True, False, True, True, False],
                     [True, True, True, True, False, True, True]])
    np.testing.assert_array_equal(got, want)
    assert sorted(calls) == calls and calls[0][0] == 0 and calls[-1][1] == 7
    got2 = mask_from_rule(MaskRule("value", 2.0), read, 2, 7, block=block)
    want2 = np.array([[True, True, True, True, True, False, True],
                      [False, True, True, False, True, True, False]])
    np.testing.assert_array_equal(got2, want2)
    # NaN as the value: NaN never equals NaN, so nothing is masked
    np.testing.assert_array_equal(mask_from_rule(MaskRule("value", float("nan")), read, 2, 7, block=block),
                                  np.ones((2, 7), dtype=bool))


def test_value_rule_float32_input():
    x = np.zeros((1, 3, 2), dtype=np.float32)
    x[0, 1] = [0.1, 0.1]
    read, _ = _reader(x)
    got = mask_from_rule(MaskRule("value", 0.1), read, 1, 3)
    np.testing.assert_array_equal(got, [[True, False, True]])  # 0.1 compared in the input's dtype


@pytest.mark.parametrize("block", [2, 4096])
def test_zero_id_rule(block):
    ids = np.array([[0, 0, 5, 1, 0], [3, 0, 0, 0, 7], [0, 0, 0, 0, 0]], dtype=np.int64)
    read_ids, _ = _reader(ids)
    got = mask_from_rule(MaskRule("zero_id"), lambda lo, hi: pytest.fail("zero_id reads ids, not features"),
                         3, 5, read_ids=read_ids, block=block)
    np.testing.assert_array_equal(got, ids != 0)
    with pytest.raises(InputError):
        mask_from_rule(MaskRule("zero_id"), lambda lo, hi: ids[:, lo:hi, None], 3, 5)


def test_pre_rule_masks_the_first_t_minus_len_steps():
    lengths = np.array([5, 3, 1, 0], dtype=np.int64)
    got = mask_from_rule(MaskRule("pre"), lambda lo, hi: pytest.fail("pre needs no data"), 4, 5, lengths=lengths)
    want = np.array([[1, 1, 1, 1, 1], [0, 0, 1, 1, 1], [0, 0, 0, 0, 1], [0, 0, 0, 0, 0]], dtype=bool)
    np.testing.assert_array_equal(got, want)
    with pytest.raises(InputError):
        mask_from_rule(MaskRule("pre"), lambda lo, hi: None, 4, 5)


@pytest.mark.parametrize("block", [1, 4096])
def test_value_rule_with_end_lengths(block):
    x = np.ones((2, 6, 2))
    x[0, 1] = 0  # a hole inside the length
    x[0, 4] = 0  # past the length anyway
    x[1, 0] = 0
    lengths = np.array([4, 6], dtype=np.int64)
    read, _ = _reader(x)
    got = mask_from_rule(MaskRule("value", 0.0), read, 2, 6, lengths=lengths, block=block)
    want = np.array([[1, 0, 1, 1, 0, 0], [0, 1, 1, 1, 1, 1]], dtype=bool)
    np.testing.assert_array_equal(got, want)
    ids = np.array([[1, 0, 2, 2, 2, 2], [0, 1, 1, 1, 1, 0]])
    read_ids, _ = _reader(ids)
    got = mask_from_rule(MaskRule("zero_id"), read, 2, 6, read_ids=read_ids, lengths=lengths, block=block)
    np.testing.assert_array_equal(got, [[1, 0, 1, 1, 0, 0], [0, 1, 1, 1, 1, 0]])


# ---------------------------------------------------------------------------------------------------------------
# 3-7. end to end through the CLI


def _masked_input(rng) -> tuple[np.ndarray, np.ndarray]:
    """(B, T, F) float32 with all-zero steps: front padding, holes, end padding, none, a mix; and the valid mask."""
    x = rng.standard_normal((B, T, F)).astype(np.float32)
    valid = np.ones((B, T), dtype=bool)
    valid[0, :3] = False  # front padding
    valid[1, [2, 5]] = False  # holes
    valid[2, 6:] = False  # end padding
    # row 3: every step valid
    valid[4, [0, 3, 7]] = False  # front, hole and end
    x[~valid] = 0.0
    x[3, 4, 0] = 0.0  # one zero feature is not a masked step
    return x, valid


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("masking")
    rng = np.random.default_rng(11)
    x, valid = _masked_input(rng)
    np.save(root / "x.npy", x)
    xe = x.copy()
    xe[2] = 0.0  # a row whose every step is masked
    ve = valid.copy()
    ve[2] = False
    np.save(root / "x_empty.npy", xe)
    models = {}
    for seed, bi in enumerate((False, True)):
        torch.manual_seed(seed)
        lstm = torch.nn.LSTM(F, H, num_layers=2, bidirectional=bi, batch_first=True)
        with torch.no_grad():
            for p in lstm.parameters():
                p.uniform_(-0.8, 0.8)
        lstm.eval()
        name = "bi" if bi else "uni"
        torch.save(lstm.state_dict(), root / f"{name}.pt")
        params = {k: v.detach().numpy().copy() for k, v in lstm.state_dict().items()}
        models[name] = (lstm, root / f"{name}.pt", params, bi)
    return dict(root=root, x=x, valid=valid, xe=xe, ve=ve, models=models)


def _ok(r):
    assert r.exit_code == 0, (r.exit_code, r.stdout, r.stderr)
    assert "internal error" not in r.stderr and "Traceback" not in r.stderr
    return r


def torch_on_valid_steps(lstm, x, valid, h0=None, c0=None):
    """h_n, c_n (L*D, B, H) from nn.LSTM run on each sequence's valid steps alone (None rows: no valid step)."""
    hs, cs = [], []
    with torch.no_grad():
        for b in range(x.shape[0]):
            if not valid[b].any():
                hs.append(None)
                cs.append(None)
                continue
            seq = torch.from_numpy(np.ascontiguousarray(x[b, valid[b]][None]))
            state = None
            if h0 is not None:
                state = (torch.from_numpy(np.ascontiguousarray(h0[:, b:b + 1])),
                         torch.from_numpy(np.ascontiguousarray(c0[:, b:b + 1])))
            _, (h, c) = lstm(seq, state)
            hs.append(h[:, 0].numpy())
            cs.append(c[:, 0].numpy())
    return hs, cs


def _export(invoke, ck, inp, out, *args):
    return _ok(invoke("export-state", ck, inp, "-o", out, "--include-output", "--mask-value", 0, "--quiet", *args))


@pytest.mark.parametrize("name", ["uni", "bi"])
def test_export_state_masked_equals_nn_lstm_on_valid_steps(invoke, files, tmp_path, name, one_torch_thread):
    lstm, ck, params, bi = files["models"][name]
    x, valid = files["x"], files["valid"]
    out = tmp_path / "s.safetensors"
    _export(invoke, ck, files["root"] / "x.npy", out, "--chunk-size", 0)
    got = load_file(str(out))
    assert got["h_n"].shape == (2 * (2 if bi else 1), B, H)
    hs, cs = torch_on_valid_steps(lstm, x, valid)
    for b in range(B):
        np.testing.assert_allclose(got["h_n"][:, b], hs[b], rtol=0, atol=TOL, err_msg=f"h_n row {b}")
        np.testing.assert_allclose(got["c_n"][:, b], cs[b], rtol=0, atol=TOL, err_msg=f"c_n row {b}")
    want_out, want_h, want_c, _ = naive_lstm(params, x, valid, num_layers=2, bidirectional=bi,
                                             fill="zero" if bi else "repeat")
    # the naive loop agrees with torch (so it is a fair judge of the output)
    np.testing.assert_allclose(want_h, np.stack(hs, axis=1), rtol=0, atol=TOL)
    np.testing.assert_allclose(want_c, np.stack(cs, axis=1), rtol=0, atol=TOL)
    assert got["output"].shape == (B, T, (2 if bi else 1) * H)
    np.testing.assert_allclose(got["output"], want_out, rtol=0, atol=TOL)
    if bi:
        assert (got["output"][~valid] == 0).all()
    else:  # repeat: the end padding of row 2 repeats step 5, the front padding of row 0 is zeros
        np.testing.assert_array_equal(got["output"][2, 6], got["output"][2, 5])
        np.testing.assert_array_equal(got["output"][2, 7], got["output"][2, 5])
        assert (got["output"][0, :3] == 0).all()
        np.testing.assert_array_equal(got["output"][1, 2], got["output"][1, 1])


@pytest.mark.parametrize("name", ["uni", "bi"])
@pytest.mark.parametrize("chunk", [1, 3, 5])
def test_streamed_masked_export_equals_whole_run(invoke, files, tmp_path, name, chunk, one_torch_thread):
    _, ck, params, bi = files["models"][name]
    inp = files["root"] / "x.npy"
    whole, streamed = tmp_path / "whole.safetensors", tmp_path / "streamed.safetensors"
    _export(invoke, ck, inp, whole, "--chunk-size", 0)
    _export(invoke, ck, inp, streamed, "--chunk-size", chunk)
    a, b = load_file(str(whole)), load_file(str(streamed))
    assert a.keys() == b.keys() == {"h_n", "c_n", "output"}
    for k in a:
        np.testing.assert_allclose(b[k], a[k], rtol=0, atol=TOL, err_msg=k)
    want_out, _, _, _ = naive_lstm(params, files["x"], files["valid"], num_layers=2, bidirectional=bi,
                                   fill="zero" if bi else "repeat")
    np.testing.assert_allclose(b["output"], want_out, rtol=0, atol=TOL)


def _trace(invoke, ck, inp, out, *args):
    return _ok(invoke("trace", ck, inp, "-o", out, "--quiet", *args))


def _tname(layer, d, q):
    return f"layer{layer}/{('forward', 'backward')[d]}/{q}"


@pytest.mark.parametrize("name", ["uni", "bi"])
def test_masked_trace_nan_at_masked_steps_and_naive_values(invoke, files, tmp_path, name, one_torch_thread):
    _, ck, params, bi = files["models"][name]
    x, valid = files["x"], files["valid"]
    inp = files["root"] / "x.npy"
    whole, streamed = tmp_path / "t.safetensors", tmp_path / "t2.safetensors"
    _trace(invoke, ck, inp, whole, "--mask-value", 0, "--chunk-size", 0)
    got = load_file(str(whole))
    np.testing.assert_array_equal(got["valid"].astype(bool), valid)
    _, _, _, per = naive_lstm(params, x, valid, num_layers=2, bidirectional=bi, fill="zero" if bi else "repeat")
    for (layer, d), (hs, cs) in per.items():
        for q, want in (("h", hs), ("c", cs)):
            a = got[_tname(layer, d, q)]
            assert a.shape == (B, T, H)
            assert np.isnan(a[~valid]).all(), (layer, d, q)
            assert np.isfinite(a[valid]).all(), (layer, d, q)
            np.testing.assert_allclose(a[valid], want[valid], rtol=0, atol=TOL, err_msg=f"{layer} {d} {q}")
        for q in "ifgo":
            assert np.isnan(got[_tname(layer, d, q)][~valid]).all()
    # streamed equals whole
    _trace(invoke, ck, inp, streamed, "--mask-value", 0, "--chunk-size", 2)
    got2 = load_file(str(streamed))
    assert got2.keys() == got.keys()
    for k in got:
        np.testing.assert_allclose(got2[k], got[k], rtol=0, atol=TOL, equal_nan=True, err_msg=k)


def test_masked_trace_refuses_processing_order(invoke, files, tmp_path):
    _, ck, _, _ = files["models"]["bi"]
    out = tmp_path / "t.safetensors"
    r = invoke("trace", ck, files["root"] / "x.npy", "-o", out, "--mask-value", 0, "--order", "processing")
    assert r.exit_code == 2, (r.exit_code, r.stdout, r.stderr)
    assert r.stdout == ""
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), r.stderr
    assert "internal error" not in lines[0]
    assert "--order processing" in lines[0] and "mask" in lines[0]
    assert not out.exists()


@pytest.mark.parametrize("name", ["uni", "bi"])
def test_show_state_on_masked_trace_means_are_nanmeans_of_valid_steps(invoke, files, tmp_path, name):
    _, ck, _, bi = files["models"][name]
    valid = files["valid"]
    out = tmp_path / "t.safetensors"
    r = _ok(invoke("trace", ck, files["root"] / "x.npy", "-o", out, "--mask-value", 0, "--json"))
    written = json.loads(r.stdout)
    r = _ok(invoke("show-state", out, "--json"))
    doc = json.loads(r.stdout)
    got = load_file(str(out))
    rows = {(row["layer"], row["direction"], row["quantity"]): row for row in doc["summary"]["rows"]}
    assert len(rows) == 2 * (2 if bi else 1) * 6
    for (layer, direction, q), row in rows.items():
        a = got[f"layer{layer}/{direction}/{q}"].astype(np.float64)
        vals = a[valid]  # (valid steps, width)
        assert row["values"] == vals.size, (layer, direction, q)
        assert abs(row["mean"] - float(np.nanmean(a))) <= 1e-9
        assert abs(row["mean"] - float(vals.mean())) <= 1e-9
        assert row["min"] == pytest.approx(float(vals.min()), abs=1e-9)
        assert row["max"] == pytest.approx(float(vals.max()), abs=1e-9)
        assert row["non_finite"] == 0
    # what trace printed when it wrote the file is what show-state computes again from it
    wrows = {(row["layer"], row["direction"], row["quantity"]): row for row in written["summary"]["rows"]}
    for key, row in rows.items():
        assert wrows[key]["values"] == row["values"], key
        assert abs(wrows[key]["mean"] - row["mean"]) <= 1e-9, key


def test_diff_states_masked_traces(invoke, files, tmp_path):
    _, ck, _, _ = files["models"]["uni"]
    valid = files["valid"]
    inp = files["root"] / "x.npy"
    masked, plain = tmp_path / "m.safetensors", tmp_path / "p.safetensors"
    _trace(invoke, ck, inp, masked, "--mask-value", 0, "--quantities", "h,c")
    _trace(invoke, ck, inp, plain, "--no-mask", "--quantities", "h,c")
    r = invoke("diff-states", masked, masked, "--json")
    assert r.exit_code == 0, (r.stdout, r.stderr)
    same = json.loads(r.stdout)
    assert same["equal"] is True
    assert "mask" not in same["metadata_differences"]["provenance"]
    r = invoke("diff-states", masked, plain, "--json")
    assert r.exit_code in (0, 1), (r.exit_code, r.stdout, r.stderr)
    doc = json.loads(r.stdout)
    assert "mask" in doc["metadata_differences"]["provenance"], doc["metadata_differences"]
    a, b = load_file(str(masked)), load_file(str(plain))
    assert not np.isnan(b["layer0/forward/h"]).any()
    for row in doc["rows"]:
        x, y = a[row["tensor"]].astype(np.float64), b[row["tensor"]].astype(np.float64)
        assert row["total"] == int(valid.sum()) * x.shape[2], row["tensor"]  # only the steps both read
        d = np.abs(x - y)[valid]
        assert row["max_abs_diff"] == pytest.approx(float(d.max()), abs=1e-12), row["tensor"]
        per_step = row["per_step_max_abs_diff"]
        for t in range(T):
            if valid[:, t].any():
                want = float(np.abs(x[:, t] - y[:, t])[valid[:, t]].max())
                assert per_step[t] == pytest.approx(want, abs=1e-12), (row["tensor"], t)
    # row 3 reads every step and nothing before differs: it agrees; row 0 does not (padding read by --no-mask)
    h_a, h_b = a["layer1/forward/h"], b["layer1/forward/h"]
    np.testing.assert_allclose(h_a[3], h_b[3], rtol=0, atol=1e-6)
    assert np.abs(h_a[0, 3:] - h_b[0, 3:]).max() > 1e-4
    assert r.exit_code == (0 if doc["equal"] else 1)
    assert doc["equal"] is False


@pytest.mark.parametrize("name", ["uni", "bi"])
@pytest.mark.parametrize("chunk", [0, 3])
def test_wholly_masked_row(invoke, files, tmp_path, name, chunk, one_torch_thread):
    lstm, ck, params, bi = files["models"][name]
    xe, ve = files["xe"], files["ve"]
    inp = files["root"] / "x_empty.npy"
    out = tmp_path / "s.safetensors"
    r = invoke("export-state", ck, inp, "-o", out, "--include-output", "--mask-value", 0, "--chunk-size", chunk)
    _ok(r)
    warn = [ln for ln in r.stderr.splitlines() if ln.startswith("warning: sequence 2")]
    assert len(warn) == 1, r.stderr
    got = load_file(str(out))
    assert (got["h_n"][:, 2] == 0).all() and (got["c_n"][:, 2] == 0).all()
    assert (got["output"][2] == 0).all()
    hs, cs = torch_on_valid_steps(lstm, xe, ve)
    for b in range(B):
        if b != 2:
            np.testing.assert_allclose(got["h_n"][:, b], hs[b], rtol=0, atol=TOL)
            np.testing.assert_allclose(got["c_n"][:, b], cs[b], rtol=0, atol=TOL)
    want_out, _, _, _ = naive_lstm(params, xe, ve, num_layers=2, bidirectional=bi, fill="zero" if bi else "repeat")
    np.testing.assert_allclose(got["output"], want_out, rtol=0, atol=TOL)

    # with an initial state: the empty row's final state is that state, the others start from it
    # the initial state: a snapshot lstmscope wrote of another (unmasked) input
    np.save(tmp_path / "warm.npy", np.random.default_rng(5).standard_normal((B, 4, F)).astype(np.float32))
    init = tmp_path / "h0.safetensors"
    _ok(invoke("export-state", ck, tmp_path / "warm.npy", "-o", init, "--quiet"))
    snap = load_file(str(init))
    h0, c0 = snap["h_n"], snap["c_n"]
    assert (h0[:, 2] != 0).any() and (c0[:, 2] != 0).any()
    out2 = tmp_path / "s2.safetensors"
    r = invoke("export-state", ck, inp, "-o", out2, "--include-output", "--mask-value", 0, "--chunk-size", chunk,
               "--initial-state", init)
    _ok(r)
    assert any(ln.startswith("warning: sequence 2") for ln in r.stderr.splitlines()), r.stderr
    got = load_file(str(out2))
    np.testing.assert_array_equal(got["h_n"][:, 2], h0[:, 2])
    np.testing.assert_array_equal(got["c_n"][:, 2], c0[:, 2])
    assert (got["output"][2] == 0).all()
    hs, cs = torch_on_valid_steps(lstm, xe, ve, h0, c0)
    for b in range(B):
        if b != 2:
            np.testing.assert_allclose(got["h_n"][:, b], hs[b], rtol=0, atol=TOL)
            np.testing.assert_allclose(got["c_n"][:, b], cs[b], rtol=0, atol=TOL)
    want_out, _, _, _ = naive_lstm(params, xe, ve, num_layers=2, bidirectional=bi, fill="zero" if bi else "repeat",
                                   h0=h0, c0=c0)
    np.testing.assert_allclose(got["output"], want_out, rtol=0, atol=TOL)

    r = invoke("run", ck, inp, "--mask-value", 0, "--chunk-size", chunk, "--json")
    _ok(r)
    doc = json.loads(r.stdout)
    assert any(w.startswith("sequence 2 ") for w in doc["warnings"]), doc["warnings"]
    assert doc["ok"] is True and doc["checks"] and all(c["ok"] for c in doc["checks"])


@pytest.mark.parametrize("name", ["uni", "bi"])
@pytest.mark.parametrize("inp_name", ["x.npy", "x_empty.npy"])
def test_show_state_on_masked_export(invoke, files, tmp_path, name, inp_name):
    _, ck, _, _ = files["models"][name]
    valid = files["valid"] if inp_name == "x.npy" else files["ve"]
    out = tmp_path / "s.safetensors"
    _export(invoke, ck, files["root"] / inp_name, out)
    r = invoke("show-state", out, "--json")
    assert r.exit_code == 0, (r.exit_code, r.stdout, r.stderr)
    doc = json.loads(r.stdout)
    assert doc["checks"] and all(c["ok"] for c in doc["checks"]), doc["checks"]
    with safe_open(str(out), "np") as f:
        meta = json.loads(f.metadata()["lstmscope.state"])
    mask = meta["mask"]
    last = [int(np.flatnonzero(v)[-1]) if v.any() else -1 for v in valid]
    first = [int(np.flatnonzero(v)[0]) if v.any() else -1 for v in valid]
    assert mask["last_valid"] == last
    assert mask["first_valid"] == first
    assert mask["valid_steps"] == valid.sum(axis=1).tolist()
    assert mask["fill"] == ("zero" if name == "bi" else "repeat")


@pytest.mark.parametrize("name", ["uni", "bi"])
@pytest.mark.parametrize("chunk", [0, 3])
def test_mask_value_with_end_lengths(invoke, files, tmp_path, name, chunk, one_torch_thread):
    """--lengths with --mask-value: the steps read are the valid ones before each length."""
    lstm, ck, params, bi = files["models"][name]
    x, valid = files["x"], files["valid"]
    lengths = np.array([8, 4, 7, 5, 2], dtype=np.int64)
    np.save(tmp_path / "len.npy", lengths)
    out = tmp_path / "s.safetensors"
    _ok(invoke("export-state", ck, files["root"] / "x.npy", "-o", out, "--mask-value", 0, "--lengths",
               tmp_path / "len.npy", "--chunk-size", chunk, "--quiet"))
    got = load_file(str(out))
    read = valid & (np.arange(T)[None, :] < lengths[:, None])
    hs, cs = torch_on_valid_steps(lstm, x, read)
    for b in range(B):
        np.testing.assert_allclose(got["h_n"][:, b], hs[b], rtol=0, atol=TOL, err_msg=f"h_n row {b}")
        np.testing.assert_allclose(got["c_n"][:, b], cs[b], rtol=0, atol=TOL, err_msg=f"c_n row {b}")
    np.testing.assert_array_equal(got["lengths"], lengths)
    with safe_open(str(out), "np") as f:
        meta = json.loads(f.metadata()["lstmscope.state"])
    assert meta["mask"]["valid_steps"] == read.sum(axis=1).tolist()
    assert meta["mask"]["last_valid"] == [int(np.flatnonzero(r)[-1]) for r in read]


@pytest.mark.parametrize("name", ["uni", "bi"])
@pytest.mark.parametrize("chunk", [0, 2])
def test_padding_pre_skips_the_front(invoke, files, tmp_path, name, chunk, one_torch_thread):
    """--padding pre with --lengths: each sequence's first T - len steps are skipped; output zeros there."""
    lstm, ck, params, bi = files["models"][name]
    x = np.random.default_rng(3).standard_normal((B, T, F)).astype(np.float32)  # padding need not be zeros
    np.save(tmp_path / "x.npy", x)
    lengths = np.array([8, 5, 1, 3, 6], dtype=np.int64)
    np.save(tmp_path / "len.npy", lengths)
    read = np.arange(T)[None, :] >= (T - lengths)[:, None]
    out = tmp_path / "s.safetensors"
    _ok(invoke("export-state", ck, tmp_path / "x.npy", "-o", out, "--padding", "pre", "--lengths",
               tmp_path / "len.npy", "--include-output", "--chunk-size", chunk, "--quiet"))
    got = load_file(str(out))
    hs, cs = torch_on_valid_steps(lstm, x, read)
    for b in range(B):
        np.testing.assert_allclose(got["h_n"][:, b], hs[b], rtol=0, atol=TOL, err_msg=f"h_n row {b}")
        np.testing.assert_allclose(got["c_n"][:, b], cs[b], rtol=0, atol=TOL, err_msg=f"c_n row {b}")
    want_out, _, _, _ = naive_lstm(params, x, read, num_layers=2, bidirectional=bi, fill="zero")
    np.testing.assert_allclose(got["output"], want_out, rtol=0, atol=TOL)
    assert (got["output"][~read] == 0).all()


@pytest.mark.parametrize("chunk", [0, 1, 3])
def test_keras_go_backwards_masked_output_in_processing_order(invoke, tmp_path, chunk, one_torch_thread):
    """A Keras Masking + LSTM(go_backwards=True): the state after reading the valid steps from the last to the
    first, and the output in that processing order with masked steps repeating the previous output."""
    built, x, valid = _keras_masked(tmp_path, ("lstm", "enc", H, {"go_backwards": True,
                                                                   "recurrent_activation": "sigmoid"}))
    out = tmp_path / "s.safetensors"
    _ok(invoke("export-state", tmp_path / "m.h5", tmp_path / "x.npy", "-o", out, "--include-output", "--layout",
               "torch", "--chunk-size", chunk, "--quiet"))
    got = load_file(str(out))
    want_out, _, _, want_h, want_c = naive_direction(*_keras_dir(built.layers["enc"].dirs[0]), x.astype(np.float64),
                                                     valid, reverse=True, fill="repeat", in_place_backwards=True)
    np.testing.assert_allclose(got["h_n"][0], want_h, rtol=0, atol=TOL)
    np.testing.assert_allclose(got["c_n"][0], want_c, rtol=0, atol=TOL)
    np.testing.assert_allclose(got["output"], want_out, rtol=0, atol=TOL)
    r = invoke("show-state", out, "--json")
    assert r.exit_code == 0, (r.stdout, r.stderr)


@pytest.mark.parametrize("name", ["uni", "bi"])
@pytest.mark.parametrize("chunk", [0, 2, 3])
def test_masked_trace_with_empty_row_and_summary(invoke, files, tmp_path, name, chunk, one_torch_thread):
    """A wholly masked row in a trace: NaN everywhere in it; the other rows the naive loop's; the summary written
    (from the compacted run) and the one show-state computes from the file agree with numpy on the file."""
    _, ck, params, bi = files["models"][name]
    xe, ve = files["xe"], files["ve"]
    out = tmp_path / "t.safetensors"
    r = _ok(invoke("trace", ck, files["root"] / "x_empty.npy", "-o", out, "--mask-value", 0, "--chunk-size", chunk,
                   "--json"))
    assert "sequence 2 of x_empty.npy: every step is masked" in r.stderr, r.stderr  # the prefix: see below
    written = json.loads(r.stdout)
    got = load_file(str(out))
    _, _, _, per = naive_lstm(params, xe, ve, num_layers=2, bidirectional=bi, fill="zero" if bi else "repeat")
    for (layer, d), (hs, cs) in per.items():
        for q, want in (("h", hs), ("c", cs)):
            a = got[_tname(layer, d, q)]
            assert np.isnan(a[2]).all()
            assert np.isnan(a[~ve]).all() and np.isfinite(a[ve]).all()
            np.testing.assert_allclose(a[ve], want[ve], rtol=0, atol=TOL, err_msg=f"{layer} {d} {q}")
    shown = json.loads(_ok(invoke("show-state", out, "--json")).stdout)
    for doc in (written, shown):
        rows = {(row["layer"], row["direction"], row["quantity"]): row for row in doc["summary"]["rows"]}
        for (layer, direction, q), row in rows.items():
            a = got[f"layer{layer}/{direction}/{q}"].astype(np.float64)
            assert row["values"] == int(ve.sum()) * a.shape[2], (layer, direction, q)
            assert row["mean"] == pytest.approx(float(np.nanmean(a)), abs=1e-9), (layer, direction, q)
        for dstat in doc["summary"]["directions"]:
            c = np.abs(got[f"layer{dstat['layer']}/{dstat['direction']}/c"].astype(np.float64))
            m = float(np.nanmax(c))
            assert dstat["max_abs_c"] == pytest.approx(m, abs=0), dstat
            b, t, u = dstat["max_abs_c_at"]
            assert ve[b, t], dstat
            assert float(c[b, t, u]) == m, (dstat, float(c[b, t, u]), m)
            first = tuple(int(i) for i in np.argwhere(c == m)[0])  # ties: the first (batch, step, unit)
            assert (b, t, u) == first, (dstat, first)
            f = got[f"layer{dstat['layer']}/{dstat['direction']}/f"].astype(np.float64)
            assert dstat["forget_mean"] == pytest.approx(float(np.nanmean(f)), abs=1e-9)


def test_trace_warns_about_a_wholly_masked_row_like_run(invoke, files, tmp_path):
    """trace's warning about a sequence with no valid step is a "warning: " line, as run's and export-state's."""
    _, ck, _, _ = files["models"]["uni"]
    inp = files["root"] / "x_empty.npy"
    r = _ok(invoke("run", ck, inp, "--mask-value", 0, "--quiet"))
    run_lines = [ln for ln in r.stderr.splitlines() if "sequence 2" in ln]
    assert run_lines and run_lines[0].startswith("warning: sequence 2 "), r.stderr
    r = _ok(invoke("trace", ck, inp, "-o", tmp_path / "t.safetensors", "--mask-value", 0, "--quiet"))
    lines = [ln for ln in r.stderr.splitlines() if "sequence 2" in ln]
    assert lines == run_lines, r.stderr


@pytest.mark.parametrize("name", ["uni", "bi"])
@pytest.mark.parametrize("chunk", [0, 3])
def test_every_step_of_every_row_masked(invoke, tmp_path, files, name, chunk, one_torch_thread):
    _, ck, _, bi = files["models"][name]
    np.save(tmp_path / "z.npy", np.zeros((2, 6, F), dtype=np.float32))
    out = tmp_path / "z.safetensors"
    r = _ok(invoke("export-state", ck, tmp_path / "z.npy", "-o", out, "--include-output", "--mask-value", 0,
                   "--chunk-size", chunk))
    assert [ln.split(" of ")[0] for ln in r.stderr.splitlines() if ln.startswith("warning: ")] == \
        ["warning: sequence 0", "warning: sequence 1"], r.stderr
    got = load_file(str(out))
    assert got["output"].shape == (2, 6, (2 if bi else 1) * H)
    for k, a in got.items():
        assert (a == 0).all(), k
    tr = tmp_path / "zt.safetensors"
    _ok(invoke("trace", ck, tmp_path / "z.npy", "-o", tr, "--mask-value", 0, "--chunk-size", chunk, "--quiet"))
    got = load_file(str(tr))
    assert (got["valid"] == 0).all()
    assert all(np.isnan(a).all() for k, a in got.items() if k != "valid")
    doc = json.loads(_ok(invoke("show-state", tr, "--json")).stdout)
    assert all(row["values"] == 0 and row["mean"] is None for row in doc["summary"]["rows"])


@pytest.mark.parametrize("name", ["uni", "bi"])
@pytest.mark.parametrize("chunk", [0, 6, 7])
def test_float64_masked_run_and_trace_equal_naive_loop(invoke, tmp_path, files, name, chunk, one_torch_thread):
    """--dtype float64: the run and trace equal the float64 loop to 1e-12; chunks longer than the compacted run
    (5 steps read at most) but shorter than the input (8) included."""
    _, ck, params, bi = files["models"][name]
    x = np.random.default_rng(1).standard_normal((3, 8, F)).astype(np.float32)
    x[:, 5:] = 0
    x[1, :2] = 0
    x[2, 3] = 0
    valid = np.any(x != 0, axis=-1)
    np.save(tmp_path / "y.npy", x)
    out, tr = tmp_path / "y.safetensors", tmp_path / "yt.safetensors"
    _ok(invoke("export-state", ck, tmp_path / "y.npy", "-o", out, "--include-output", "--mask-value", 0,
               "--chunk-size", chunk, "--dtype", "float64", "--quiet"))
    want_out, want_h, want_c, per = naive_lstm(params, x, valid, num_layers=2, bidirectional=bi,
                                               fill="zero" if bi else "repeat")
    got = load_file(str(out))
    assert got["output"].dtype == np.float64
    np.testing.assert_allclose(got["output"], want_out, rtol=0, atol=1e-12)
    np.testing.assert_allclose(got["h_n"], want_h, rtol=0, atol=1e-12)
    np.testing.assert_allclose(got["c_n"], want_c, rtol=0, atol=1e-12)
    _ok(invoke("trace", ck, tmp_path / "y.npy", "-o", tr, "--mask-value", 0, "--chunk-size", chunk, "--dtype",
               "float64", "--quiet"))
    got = load_file(str(tr))
    for (layer, d), (hs, cs) in per.items():
        np.testing.assert_allclose(got[_tname(layer, d, "h")], hs, rtol=0, atol=1e-12, equal_nan=True)
        np.testing.assert_allclose(got[_tname(layer, d, "c")], cs, rtol=0, atol=1e-12, equal_nan=True)


def _keras_masked(tmp_path, layer):
    from pathlib import Path

    from keras_files import keras2_model

    built = keras2_model(Path(tmp_path / "m.h5"), [("masking", "mask"), layer], input_size=F)
    x = np.random.default_rng(4).standard_normal((4, 7, F)).astype(np.float32)
    valid = np.ones((4, 7), dtype=bool)
    valid[0, :2] = False
    valid[1, [3, 6]] = False
    valid[2, 5:] = False
    x[~valid] = 0
    np.save(tmp_path / "x.npy", x)
    return built, x, valid


def _keras_dir(d):
    return d.kernel.T.astype(np.float64), d.recurrent_kernel.T.astype(np.float64), d.bias.astype(np.float64)


@pytest.mark.parametrize("chunk", [0, 2])
def test_keras_go_backwards_masked_trace(invoke, tmp_path, chunk, one_torch_thread):
    """A masked go_backwards layer's trace: each step at the input step it read, the state after reading the valid
    steps from the last one back to it; NaN at the masked steps."""
    built, x, valid = _keras_masked(tmp_path, ("lstm", "enc", H, {"go_backwards": True,
                                                                   "recurrent_activation": "sigmoid"}))
    _, hs, cs, _, _ = naive_direction(*_keras_dir(built.layers["enc"].dirs[0]), x.astype(np.float64), valid,
                                      reverse=True, in_place_backwards=True)
    tr = tmp_path / "t.safetensors"
    _ok(invoke("trace", tmp_path / "m.h5", tmp_path / "x.npy", "-o", tr, "--chunk-size", chunk, "--quiet"))
    got = load_file(str(tr))
    np.testing.assert_array_equal(got["valid"].astype(bool), valid)
    np.testing.assert_allclose(got["enc/forward/h"], hs, rtol=0, atol=TOL, equal_nan=True)
    np.testing.assert_allclose(got["enc/forward/c"], cs, rtol=0, atol=TOL, equal_nan=True)


@pytest.mark.parametrize("chunk", [0, 3])
def test_keras_bidirectional_masked_zero_fill(invoke, tmp_path, chunk, one_torch_thread):
    """Masking + Bidirectional(LSTM): masked steps skipped by both directions, the output zeros there (Keras's
    zero_output_for_mask), the backward output back in input order."""
    built, x, valid = _keras_masked(tmp_path, ("bidirectional", "bi", "inner", H, "concat",
                                               {"recurrent_activation": "sigmoid"}))
    fw, bw = built.layers["bi"].dirs
    xf = x.astype(np.float64)
    of, _, _, hf, cf = naive_direction(*_keras_dir(fw), xf, valid, fill="zero")
    ob, _, _, hb, cb = naive_direction(*_keras_dir(bw), xf, valid, reverse=True, fill="zero")
    out = tmp_path / "s.safetensors"
    _ok(invoke("export-state", tmp_path / "m.h5", tmp_path / "x.npy", "-o", out, "--include-output", "--layout",
               "torch", "--chunk-size", chunk, "--quiet"))
    got = load_file(str(out))
    np.testing.assert_allclose(got["h_n"], np.stack([hf, hb]), rtol=0, atol=TOL)
    np.testing.assert_allclose(got["c_n"], np.stack([cf, cb]), rtol=0, atol=TOL)
    np.testing.assert_allclose(got["output"], np.concatenate([of, ob], axis=2), rtol=0, atol=TOL)
    assert (got["output"][~valid] == 0).all()
    assert _ok(invoke("show-state", out, "--json")).exit_code == 0


@pytest.mark.parametrize("chunk", [0, 2])
def test_masked_trace_with_end_lengths(invoke, files, tmp_path, chunk, one_torch_thread):
    """--mask-value with --lengths in a trace: NaN at masked steps and past each length; the rest the naive
    loop's; the summaries count exactly the steps read; diff-states of the file against itself is equal."""
    _, ck, params, bi = files["models"]["bi"]
    x, valid = files["x"], files["valid"]
    lengths = np.array([8, 4, 7, 5, 2], dtype=np.int64)
    np.save(tmp_path / "len.npy", lengths)
    read = valid & (np.arange(T)[None, :] < lengths[:, None])
    tr = tmp_path / "t.safetensors"
    r = _ok(invoke("trace", ck, files["root"] / "x.npy", "-o", tr, "--mask-value", 0, "--lengths",
                   tmp_path / "len.npy", "--chunk-size", chunk, "--json"))
    written = json.loads(r.stdout)
    got = load_file(str(tr))
    np.testing.assert_array_equal(got["lengths"], lengths)
    _, _, _, per = naive_lstm(params, x, read, num_layers=2, bidirectional=True, fill="zero")
    for (layer, d), (hs, cs) in per.items():
        np.testing.assert_allclose(got[_tname(layer, d, "h")], hs, rtol=0, atol=TOL, equal_nan=True)
        np.testing.assert_allclose(got[_tname(layer, d, "c")], cs, rtol=0, atol=TOL, equal_nan=True)
    shown = json.loads(_ok(invoke("show-state", tr, "--json")).stdout)
    for doc in (written, shown):
        for row in doc["summary"]["rows"]:
            a = got[f"layer{row['layer']}/{row['direction']}/{row['quantity']}"].astype(np.float64)
            assert row["values"] == int(read.sum()) * a.shape[2], row
            assert row["non_finite"] == 0, row
            assert row["mean"] == pytest.approx(float(a[read].mean()), abs=1e-9), row
    r = invoke("diff-states", tr, tr, "--json")
    assert r.exit_code == 0, (r.stdout, r.stderr)
    assert all(row["total"] == int(read.sum()) * H for row in json.loads(r.stdout)["rows"])
