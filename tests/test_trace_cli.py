"""`lstmscope trace` end to end: the file's tensors against independent truth (torch.nn.LSTM run directly, and
the float64 numpy reference of tests/reference_cells.py), names, metadata, determinism and the output rules."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.numpy import load_file

from conftest import SAMPLES
from helpers import assert_one_error_line
from reference_cells import lstm_reference_trace

I, H, B, T = 3, 5, 4, 7
LENGTHS = np.array([3, 7, 1, 5], dtype=np.int64)  # unsorted, one full, one of length 1


def make_checkpoint(tmp_path, *, num_layers=2, bidirectional=True, proj_size=0, dtype=torch.float32, seed=0):
    """A saved nn.LSTM state_dict, its module and numpy params; plus an input and lengths file."""
    torch.manual_seed(seed)
    lstm = torch.nn.LSTM(I, H, num_layers=num_layers, bidirectional=bidirectional, proj_size=proj_size,
                         batch_first=True).to(dtype).eval()
    ck = tmp_path / "model.pt"
    torch.save(lstm.state_dict(), ck)
    x = np.random.default_rng(1).standard_normal((B, T, I)).astype(str(dtype).removeprefix("torch."))  # (B, T, I)
    inp = tmp_path / "x.npy"
    np.save(inp, x)
    lens = tmp_path / "lengths.npy"
    np.save(lens, LENGTHS)
    params = {k: v.detach().numpy().copy() for k, v in lstm.state_dict().items()}
    return lstm, params, ck, inp, lens, x


def ok(result):
    assert result.exit_code == 0, (result.exit_code, result.stdout, result.stderr)
    assert result.stderr == ""
    return result


def assert_error_no_file(result, out, *fragments):
    """Exit 2, nothing on stdout, one Error: line holding every fragment, and no OUT (nor a temporary) left."""
    assert result.exit_code == 2, (result.exit_code, result.stdout, result.stderr)
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    assert "internal error" not in lines[0]
    for frag in fragments:
        assert frag in lines[0], (frag, lines[0])
    if out.parent.is_dir():
        assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]


def test_last_layer_h_and_final_states_equal_nn_lstm(tmp_path, invoke):
    lstm, _, ck, inp, lens, x = make_checkpoint(tmp_path)
    out = tmp_path / "trace.safetensors"
    ok(invoke("trace", ck, inp, "--lengths", lens, "-o", out, "--threads", "1"))
    got = load_file(out)
    with torch.inference_mode():
        packed = torch.nn.utils.rnn.pack_padded_sequence(torch.from_numpy(x), torch.from_numpy(LENGTHS),
                                                         batch_first=True, enforce_sorted=False)
        y, (h_n, c_n) = lstm(packed)
        output, _ = torch.nn.utils.rnn.pad_packed_sequence(y, batch_first=True, total_length=T)  # (B, T, 2H)
    output, h_n, c_n = output.numpy(), h_n.numpy(), c_n.numpy()
    valid = np.arange(T)[None, :] < LENGTHS[:, None]  # (B, T)
    for d, name in enumerate(("forward", "backward")):
        h = got[f"layer1/{name}/h"]
        assert h.shape == (B, T, H) and h.dtype == np.float32
        np.testing.assert_allclose(h[valid], output[:, :, d * H:(d + 1) * H][valid], atol=1e-6, rtol=0)
        assert np.isnan(h[~valid]).all()
        for layer in range(2):
            k = layer * 2 + d
            hq, cq = got[f"layer{layer}/{name}/h"], got[f"layer{layer}/{name}/c"]
            for b, n in enumerate(LENGTHS):
                last = n - 1 if d == 0 else 0  # the backward direction ends at step 0 in input-time order
                np.testing.assert_allclose(hq[b, last], h_n[k, b], atol=1e-6, rtol=0)
                np.testing.assert_allclose(cq[b, last], c_n[k, b], atol=1e-6, rtol=0)
    np.testing.assert_array_equal(got["lengths"], LENGTHS)
    assert got["lengths"].dtype == np.int64
    assert len(got) == 2 * 2 * 6 + 1


@pytest.mark.parametrize("dtype,tol", [("float32", 1e-5), ("float64", 1e-12)])
def test_every_gate_equals_float64_reference(tmp_path, invoke, dtype, tol):
    _, params, ck, inp, lens, x = make_checkpoint(tmp_path, num_layers=2, bidirectional=True)
    out = tmp_path / "trace.safetensors"
    ok(invoke("trace", ck, inp, "--lengths", lens, "-o", out, "--dtype", dtype))
    got = load_file(out)
    ref = lstm_reference_trace(params, x, num_layers=2, bidirectional=True, lengths=LENGTHS)
    for (layer, d, q), want in ref.items():
        a = got[f"layer{layer}/{('forward', 'backward')[d]}/{q}"]
        assert a.dtype == np.dtype(dtype)
        np.testing.assert_allclose(a, want, atol=tol, rtol=0, equal_nan=True)


def test_projected_widths_and_reference(tmp_path, invoke):
    _, params, ck, inp, _, x = make_checkpoint(tmp_path, num_layers=1, bidirectional=False, proj_size=2)
    out = tmp_path / "trace.safetensors"
    ok(invoke("trace", ck, inp, "-o", out))
    got = load_file(out)
    assert got["layer0/forward/h"].shape == (B, T, 2)
    assert all(got[f"layer0/forward/{q}"].shape == (B, T, H) for q in "cifgo")
    assert "lengths" not in got
    ref = lstm_reference_trace(params, x, num_layers=1, bidirectional=False, proj_size=2)
    for (layer, d, q), want in ref.items():
        np.testing.assert_allclose(got[f"layer{layer}/forward/{q}"], want, atol=1e-5, rtol=0)


def test_processing_order_reverses_backward_steps(tmp_path, invoke):
    _, params, ck, inp, lens, x = make_checkpoint(tmp_path, num_layers=1, bidirectional=True)
    out = tmp_path / "trace.safetensors"
    ok(invoke("trace", ck, inp, "--lengths", lens, "-o", out, "--order", "processing"))
    got = load_file(out)
    ref = lstm_reference_trace(params, x, num_layers=1, bidirectional=True, lengths=LENGTHS)
    for q in "hcifgo":
        np.testing.assert_allclose(got[f"layer0/forward/{q}"], ref[(0, 0, q)], atol=1e-5, equal_nan=True)
        want = np.full_like(ref[(0, 1, q)], np.nan)
        for b, n in enumerate(LENGTHS):
            for k in range(n):  # k-th step the backward direction ran reads x[n - 1 - k]
                want[b, k] = ref[(0, 1, q)][b, n - 1 - k]
        np.testing.assert_allclose(got[f"layer0/backward/{q}"], want, atol=1e-5, equal_nan=True)
    with safe_open(out, "np") as f:
        assert json.loads(f.metadata()["lstmscope.trace"])["time_order"] == "processing"


def test_keras_sample_names_and_metadata(tmp_path, invoke):
    out = tmp_path / "k.safetensors"
    ckpt, inp = SAMPLES / "forecaster.keras", SAMPLES / "batch.npy"
    r = ok(invoke("trace", ckpt, inp, "-o", out, "--json"))
    doc = json.loads(r.stdout)
    assert doc["schema"] == "lstmscope.trace/1" and doc["summary"]["thresholds"]["sigmoid_low"] == 0.05
    x = np.load(inp)
    names = {f"{layer}/forward/{q}" for layer in ("encoder", "decoder") for q in "hcifgo"}
    assert set(doc["tensors"]) == names
    assert doc["tensors"]["encoder/forward/h"] == [x.shape[0], x.shape[1], 6]
    assert doc["bytes"] == out.stat().st_size
    import hashlib

    assert doc["sha256"] == hashlib.sha256(out.read_bytes()).hexdigest()
    got = load_file(out)
    assert set(got) == names and all(np.isfinite(a).all() for a in got.values())
    with safe_open(out, "np") as f:
        meta_raw = f.metadata()
    assert set(meta_raw) == {"lstmscope.trace"}
    meta = json.loads(meta_raw["lstmscope.trace"])
    assert meta == doc["metadata"]
    assert meta_raw["lstmscope.trace"] == json.dumps(meta, sort_keys=True, separators=(",", ":"))  # canonical
    assert meta["format_version"] == 1 and meta["module"] == "encoder+decoder" and meta["time_order"] == "input"
    assert meta["spec"]["names"] == ["encoder", "decoder"] and meta["quantities"] == list("hcifgo")
    assert meta["checkpoint_sha256"] == hashlib.sha256(ckpt.read_bytes()).hexdigest()
    assert meta["input_sha256"] == hashlib.sha256(inp.read_bytes()).hexdigest()
    assert meta["lengths_sha256"] is None and meta["initial_state_sha256"] is None and meta["dtype"] == "float32"
    assert meta["padding"] == "NaN past each sequence's length"


def test_byte_deterministic_and_force(tmp_path, invoke):
    _, _, ck, inp, lens, _ = make_checkpoint(tmp_path)
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    ok(invoke("trace", ck, inp, "--lengths", lens, "-o", a, "--threads", "1"))
    ok(invoke("trace", ck, inp, "--lengths", lens, "-o", b, "--threads", "2"))
    assert a.read_bytes() == b.read_bytes()
    before = a.read_bytes()
    r = invoke("trace", ck, inp, "-o", a)
    assert_one_error_line(r, a, "already exists", "--force")
    assert a.read_bytes() == before
    ok(invoke("trace", ck, inp, "-o", a, "--force", "--quantities", "h"))
    assert set(load_file(a)) == {f"layer{l}/{d}/h" for l in range(2) for d in ("forward", "backward")}


def test_quantities_pick_tensors(tmp_path, invoke):
    _, _, ck, inp, _, _ = make_checkpoint(tmp_path, num_layers=1, bidirectional=False)
    out = tmp_path / "t.safetensors"
    r = ok(invoke("trace", ck, inp, "-o", out, "--quantities", "h,f"))
    assert "layer0/forward" in r.stdout
    assert set(load_file(out)) == {"layer0/forward/h", "layer0/forward/f"}
    with safe_open(out, "np") as f:
        assert json.loads(f.metadata()["lstmscope.trace"])["quantities"] == ["h", "f"]


@pytest.mark.parametrize("args,fragments", [
    (["--quantities", "h,x"], ["'x'", "h,c,i,f,g,o"]),
    (["--quantities", ","], ["no quantity"]),
    (["--order", "sideways"], ["--order sideways", "input or processing"]),
])
def test_bad_options_exit_2_no_file(tmp_path, invoke, args, fragments):
    _, _, ck, inp, _, _ = make_checkpoint(tmp_path, num_layers=1, bidirectional=False)
    out = tmp_path / "t.safetensors"
    assert_error_no_file(invoke("trace", ck, inp, "-o", out, *args), out, *fragments)
    assert not out.exists()


def test_output_that_is_an_input_is_refused(tmp_path, invoke):
    _, _, ck, inp, lens, _ = make_checkpoint(tmp_path, num_layers=1, bidirectional=False)
    for src in (ck, inp, lens):
        before = src.read_bytes()
        extra = ["--lengths", lens] if src == lens else []
        for force in ([], ["--force"]):
            r = invoke("trace", ck, inp, *extra, "-o", src, *force)
            assert_one_error_line(r, src)
            assert "also an input of this command" in r.stderr  # not "pass --force", which could not help
            assert src.read_bytes() == before


def test_unwritable_output(tmp_path, invoke):
    _, _, ck, inp, _, _ = make_checkpoint(tmp_path, num_layers=1, bidirectional=False)
    missing = tmp_path / "no" / "t.safetensors"
    assert_one_error_line(invoke("trace", ck, inp, "-o", missing), missing, "does not exist")
    assert not missing.exists()
    folder = tmp_path / "folder"
    folder.mkdir()
    assert_one_error_line(invoke("trace", ck, inp, "-o", folder), folder, "is a directory")
    if os.geteuid() == 0:
        return  # root writes into a read-only folder
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        out = ro / "t.safetensors"
        r = invoke("trace", ck, inp, "-o", out)
        assert_one_error_line(r, out, "not writable")
        assert list(ro.iterdir()) == []
    finally:
        ro.chmod(0o755)


def test_error_during_run_leaves_nothing(tmp_path, invoke):
    _, _, ck, inp, _, _ = make_checkpoint(tmp_path, num_layers=1, bidirectional=False)
    bad = tmp_path / "bad.npy"
    np.save(bad, np.zeros((2, 4, I + 1), np.float32))  # one feature too many
    out = tmp_path / "t.safetensors"
    r = invoke("trace", ck, bad, "-o", out)
    assert r.exit_code == 2 and r.stderr.startswith("Error: ") and len(r.stderr.splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["model.pt", "x.npy", "lengths.npy", "bad.npy"])


@pytest.mark.parametrize("order", ["input", "processing"])
def test_keras_go_backwards_time_order(tmp_path, invoke, order):
    """A go_backwards layer equals the same weights reading each sequence reversed: in input-time order its step t
    is the state after reading x[t]; in processing order, the k-th step it ran (after reading x[len - 1 - k])."""
    import keras_files as kf

    fw = kf.keras2_model(tmp_path / "fw.h5", [("lstm", "lstm_1", 4)]).path
    gb = kf.keras2_model(tmp_path / "gb.h5", [("lstm", "lstm_1", 4, {"go_backwards": True})]).path
    x = np.random.default_rng(3).standard_normal((B, T, 3)).astype(np.float32)  # (B, T, 3)
    rev = x.copy()
    for b, n in enumerate(LENGTHS):
        rev[b, :n] = x[b, :n][::-1]
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "rev.npy", rev)
    np.save(tmp_path / "lengths.npy", LENGTHS)
    ok(invoke("trace", gb, tmp_path / "x.npy", "--lengths", tmp_path / "lengths.npy", "-o", tmp_path / "gb.st",
              "--order", order))
    ok(invoke("trace", fw, tmp_path / "rev.npy", "--lengths", tmp_path / "lengths.npy", "-o", tmp_path / "fw.st"))
    got, ran = load_file(tmp_path / "gb.st"), load_file(tmp_path / "fw.st")
    for q in "hcifgo":
        want = ran[f"lstm_1/forward/{q}"].copy()
        if order == "input":
            for b, n in enumerate(LENGTHS):
                want[b, :n] = want[b, :n][::-1]
        np.testing.assert_allclose(got[f"lstm_1/forward/{q}"], want, atol=1e-6, equal_nan=True)


def test_summary_figures_equal_numpy_on_the_written_trace(invoke, tmp_path):
    """The --json summary against numpy run on the file's own arrays (padding is NaN and left out)."""
    import json as _json

    from safetensors.numpy import load_file as _load

    from conftest import SAMPLES as _SAMPLES

    out = tmp_path / "t.safetensors"
    result = invoke("trace", _SAMPLES / "bi_2layer.pt", _SAMPLES / "varlen.npz", "-o", out, "--json")
    assert result.exit_code == 0, result.stdout + result.stderr
    summary = _json.loads(result.stdout)["summary"]
    t = _load(out)
    for d in summary["directions"]:
        key = f"layer{d['layer']}/{d['direction']}"
        f = t[f"{key}/f"].astype(np.float64)
        np.testing.assert_allclose(d["forget_mean"], np.nanmean(f), rtol=1e-9)
        np.testing.assert_allclose(d["memory_length"], 1 / (1 - np.nanmean(f)), rtol=1e-9)
        np.testing.assert_allclose(d["max_abs_c"], np.nanmax(np.abs(t[f"{key}/c"])), rtol=1e-7)
    for r in summary["rows"]:
        a = t[f"layer{r['layer']}/{r['direction']}/{r['quantity']}"].astype(np.float64)
        np.testing.assert_allclose(r["mean"], np.nanmean(a), rtol=1e-9, atol=1e-12)
        if r["quantity"] in ("i", "f", "o"):
            valid = a[~np.isnan(a)]
            np.testing.assert_allclose(r["saturated_share"], np.mean((valid < 0.05) | (valid > 0.95)), rtol=1e-9)


@pytest.mark.parametrize("order", ["input", "processing"])
def test_streamed_trace_equals_the_whole_one_and_the_reference(tmp_path, invoke, order):
    """--chunk-size streams the trace (layer by layer, temporary files in --tmp-dir, removed afterwards): the
    same tensors to float32 rounding as the whole run, every gate equal to the float64 reference, and the
    same summary."""
    _, params, ck, inp, lens, x = make_checkpoint(tmp_path, num_layers=2, bidirectional=True)
    whole, chunked, tmp = tmp_path / "whole.safetensors", tmp_path / "chunked.safetensors", tmp_path / "tmp"
    tmp.mkdir()
    a = ok(invoke("trace", ck, inp, "--lengths", lens, "-o", whole, "--order", order, "--json"))
    b = ok(invoke("trace", ck, inp, "--lengths", lens, "-o", chunked, "--order", order, "--json",
                  "--chunk-size", "2", "--tmp-dir", tmp))
    assert list(tmp.iterdir()) == []
    ta, tb = load_file(whole), load_file(chunked)
    assert ta.keys() == tb.keys()
    for k in ta:
        np.testing.assert_allclose(tb[k], ta[k], atol=1e-6, rtol=0, equal_nan=True)
    ref = lstm_reference_trace(params, x, num_layers=2, bidirectional=True, lengths=LENGTHS)
    for (layer, d, q), want in ref.items():
        got = tb[f"layer{layer}/{('forward', 'backward')[d]}/{q}"]
        if order == "processing" and d == 1:
            got = got.copy()
            for i, n in enumerate(LENGTHS):
                got[i, :n] = got[i, :n][::-1].copy()
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=0, equal_nan=True)
    sa, sb = json.loads(a.stdout)["summary"], json.loads(b.stdout)["summary"]
    for ra, rb in zip(sa["rows"] + sa["directions"], sb["rows"] + sb["directions"]):
        assert ra.keys() == rb.keys()
        for key in ra:
            if isinstance(ra[key], float):
                assert rb[key] == pytest.approx(ra[key], rel=1e-5, abs=1e-6), key
            elif key != "dead_unit_indices":
                assert rb[key] == ra[key], key


def test_long_inputs_stream_by_themselves(tmp_path, invoke, monkeypatch):
    """Past the automatic threshold (made tiny here) the trace streams without being asked, as run does."""
    from lstmscope import runner

    monkeypatch.setattr(runner, "AUTO_STREAM_BYTES", 64)
    monkeypatch.setattr(runner, "MIN_AUTO_CHUNK", 2)
    monkeypatch.setattr(runner, "AUTO_CHUNK_BYTES", 300)
    _, params, ck, inp, _, x = make_checkpoint(tmp_path, num_layers=1, bidirectional=True)
    out = tmp_path / "t.safetensors"
    doc = json.loads(ok(invoke("trace", ck, inp, "-o", out, "--json")).stdout)
    assert doc["chunk_size"] is not None and 2 <= doc["chunk_size"] < T
    ref = lstm_reference_trace(params, x, num_layers=1, bidirectional=True)
    got = load_file(out)
    for (layer, d, q), want in ref.items():
        np.testing.assert_allclose(got[f"layer0/{('forward', 'backward')[d]}/{q}"], want, atol=1e-5, rtol=0)


def test_bad_chunk_size(tmp_path, invoke):
    _, _, ck, inp, _, _ = make_checkpoint(tmp_path)
    out = tmp_path / "t.safetensors"
    assert_error_no_file(invoke("trace", ck, inp, "-o", out, "--chunk-size", "-3"), out, "--chunk-size -3")
    assert not out.exists()


def keras_gates(x: np.ndarray, d, act, rec, lengths) -> dict[str, np.ndarray]:
    """Keras's LSTM cell in Keras's own layout (kernel columns i, f, c, o), float64, each sequence over its own
    steps (a go_backwards direction reads them last first), stored at the input step each one read:
    {q: (batch, time, units)}, NaN past each length. Written from Keras's documented equations, independent of
    lstmscope's reader and engine."""
    k, r = d.kernel.astype(np.float64), d.recurrent_kernel.astype(np.float64)
    bias = 0.0 if d.bias is None else d.bias.astype(np.float64)
    units = r.shape[0]
    out = {q: np.full((x.shape[0], x.shape[1], units), np.nan) for q in "hcifgo"}
    for b, n in enumerate(lengths):
        h, c = np.zeros(units), np.zeros(units)
        for t in (range(n - 1, -1, -1) if d.go_backwards else range(n)):
            z = x[b, t].astype(np.float64) @ k + h @ r + bias
            i, f, g, o = rec(z[:units]), rec(z[units:2 * units]), act(z[2 * units:3 * units]), rec(z[3 * units:])
            c = f * c + i * g
            h = o * act(c)
            for q, v in zip("hcifgo", (h, c, i, f, g, o)):
                out[q][b, t] = v
    return out


@pytest.mark.parametrize("cell", [{"activation": "relu"}, {"activation": "tanh"}], ids=["relu_cell", "tanh_cell"])
def test_keras_hard_sigmoid_cells_every_gate_equals_keras_equations(tmp_path, invoke, cell):
    """A Keras 2 Bidirectional LSTM with hard_sigmoid gates (0.2 x + 0.5, Keras 2's default) and a relu or tanh
    cell, with lengths: every gate, c and h of both directions against Keras's equations (1e-5 in float32)."""
    import keras_files as kf

    built = kf.keras2_model(tmp_path / "k.h5", [("bidirectional", "bi", "lstm", 4, "concat", cell)])
    truth = built.layers["bi"]
    assert truth.recurrent_activation == "hard_sigmoid" and truth.keras_major == 2
    act = {"relu": lambda z: np.maximum(z, 0), "tanh": np.tanh}[truth.activation]
    rec = lambda z: np.clip(0.2 * z + 0.5, 0, 1)  # noqa: E731  Keras 2's hard_sigmoid
    x = np.random.default_rng(4).standard_normal((B, T, 3)).astype(np.float32)  # (B, T, 3)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "lengths.npy", LENGTHS)
    out = tmp_path / "t.safetensors"
    ok(invoke("trace", built.path, tmp_path / "x.npy", "--lengths", tmp_path / "lengths.npy", "-o", out))
    got = load_file(out)
    for name, d in zip(("forward", "backward"), truth.dirs):
        want = keras_gates(x, d, act, rec, LENGTHS)
        for q in "hcifgo":
            np.testing.assert_allclose(got[f"bi/{name}/{q}"], want[q], atol=1e-5, rtol=0, equal_nan=True,
                                       err_msg=f"{name} {q}")


def test_safetensors_checkpoint_module_inside_a_model(tmp_path, invoke):
    """The shipped tagger.safetensors (an LSTM at encoder.rnn inside a bigger model): its trace against the
    float64 reference run on the tensors read straight from the file with the safetensors library."""
    ck = SAMPLES / "tagger.safetensors"
    x = np.load(SAMPLES / "tagger_input.npy")  # (2, 6, 8)
    out = tmp_path / "t.safetensors"
    ok(invoke("trace", ck, SAMPLES / "tagger_input.npy", "-o", out, "--dtype", "float64"))
    params = {k.removeprefix("encoder.rnn."): v for k, v in load_file(ck).items() if k.startswith("encoder.rnn.")}
    want = lstm_reference_trace(params, x, num_layers=2, bidirectional=False)
    got = load_file(out)
    for (layer, _, q), w in want.items():
        np.testing.assert_allclose(got[f"layer{layer}/forward/{q}"], w, atol=1e-12, rtol=0)


def test_without_output_the_trace_is_summarised_and_not_kept(tmp_path, invoke):
    """No -o: the summary (and heatmap) come from a temporary trace in --tmp-dir, removed afterwards; the JSON
    says path, sha256 and bytes are null, and the figures equal those of a kept trace."""
    _, _, ck, inp, lens, _ = make_checkpoint(tmp_path)
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    kept = json.loads(ok(invoke("trace", ck, inp, "--lengths", lens, "-o", tmp_path / "k.st", "--json")).stdout)
    doc = json.loads(ok(invoke("trace", ck, inp, "--lengths", lens, "--json", "--tmp-dir", tmp)).stdout)
    assert (doc["path"], doc["sha256"], doc["bytes"]) == (None, None, None)
    assert doc["summary"] == kept["summary"] and doc["tensors"] == kept["tensors"]
    text = ok(invoke("trace", ck, inp, "--lengths", lens, "--heatmap", "f", "--tmp-dir", tmp)).stdout
    assert "not kept: give -o FILE" in text and "Heatmap: f (forget gate f_t)" in text
    assert list(tmp.iterdir()) == []


@pytest.mark.parametrize("order", ["input", "processing"])
def test_summary_from_the_file_equals_the_run_summary(tmp_path, invoke, order):
    """tracestats.summarize_trace on a written trace (read back in small blocks) gives the figures trace printed."""
    from lstmscope.tracefile import read_trace
    from lstmscope.tracestats import summarize_trace

    _, _, ck, inp, lens, _ = make_checkpoint(tmp_path)
    out = tmp_path / "t.safetensors"
    doc = json.loads(ok(invoke("trace", ck, inp, "--lengths", lens, "-o", out, "--order", order, "--json")).stdout)
    again = summarize_trace(read_trace(out), block_bytes=64).to_dict()
    for a, b in zip(doc["summary"]["rows"] + doc["summary"]["directions"], again["rows"] + again["directions"]):
        for key in a:
            if isinstance(a[key], float):
                assert b[key] == pytest.approx(a[key], rel=1e-9), key
            else:
                assert b[key] == a[key], key


def test_show_state_on_a_trace_shows_it_again(tmp_path, invoke):
    """show-state TRACE: the same JSON document as trace wrote (summary computed again from the file), the same
    heatmap text, and a PNG, without running anything; heatmap options on a state file are refused."""
    pytest.importorskip("matplotlib")
    _, _, ck, inp, lens, _ = make_checkpoint(tmp_path)
    out = tmp_path / "t.safetensors"
    ran = json.loads(ok(invoke("trace", ck, inp, "--lengths", lens, "-o", out, "--json")).stdout)
    shown = json.loads(ok(invoke("show-state", out, "--json")).stdout)
    for key in ("schema", "path", "sha256", "bytes", "metadata", "tensors"):
        assert shown[key] == ran[key], key
    for a, b in zip(ran["summary"]["rows"] + ran["summary"]["directions"],
                    shown["summary"]["rows"] + shown["summary"]["directions"]):
        assert a.keys() == b.keys()
        for key in a:
            assert b[key] == (pytest.approx(a[key], rel=1e-9) if isinstance(a[key], float) else a[key]), key
    args = ["--heatmap", "f", "--layer", "0", "--direction", "backward", "-b", "1", "--units", "1:4"]
    drawn = ok(invoke("trace", ck, inp, "--lengths", lens, *args)).stdout
    again = ok(invoke("show-state", out, *args)).stdout
    assert drawn[drawn.index("Heatmap:"):] == again[again.index("Heatmap:"):]
    ok(invoke("show-state", out, "--png", tmp_path / "p.png"))
    assert (tmp_path / "p.png").stat().st_size > 0
    np.savez(tmp_path / "s.npz", h_n=np.zeros((1, 1, 2)), c_n=np.zeros((1, 1, 2)))
    r = invoke("show-state", tmp_path / "s.npz", "--heatmap", "f")
    assert_error_no_file(r, tmp_path / "s.npz", "--heatmap is for traces")
    r = invoke("show-state", out, "--units", "0:99", "--heatmap", "h")
    assert_error_no_file(r, out, "--units 0:99")


def test_onnx_peephole_clip_node_traces_like_onnxruntime(tmp_path, invoke):
    """An ONNX LSTM node with peepholes and clip (built with onnx.helper): the traced h of every step is
    onnxruntime's Y, and the last step's c its Y_c."""
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    i, h, t, b = 3, 4, 7, 2
    w = (rng.standard_normal((1, 4 * h, i)) * 0.5).astype(np.float32)  # ONNX's gate order i, o, f, c
    r = (rng.standard_normal((1, 4 * h, h)) * 0.5).astype(np.float32)
    bias = (rng.standard_normal((1, 8 * h)) * 0.1).astype(np.float32)
    p = (rng.standard_normal((1, 3 * h)) * 0.5).astype(np.float32)
    node = helper.make_node("LSTM", ["X", "W", "R", "B", "", "", "", "P"], ["Y", "Y_h", "Y_c"], hidden_size=h,
                            clip=2.0, name="lstm")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("X", TensorProto.FLOAT, [t, b, i])],
                              [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("Y", "Y_h", "Y_c")],
                              [numpy_helper.from_array(a, n) for a, n in ((w, "W"), (r, "R"), (bias, "B"), (p, "P"))])
    path = tmp_path / "peep.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)]), str(path))
    x = rng.standard_normal((b, t, i)).astype(np.float32)  # (B, T, I)
    np.save(tmp_path / "x.npy", x)
    y, _, y_c = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(
        None, {"X": x.transpose(1, 0, 2)})
    out = tmp_path / "t.safetensors"
    ok(invoke("trace", path, tmp_path / "x.npy", "-o", out))
    got = load_file(out)
    np.testing.assert_allclose(got["layer0/forward/h"], y[:, 0].transpose(1, 0, 2), atol=1e-5, rtol=0)
    np.testing.assert_allclose(got["layer0/forward/c"][:, -1], y_c[0], atol=1e-5, rtol=0)
