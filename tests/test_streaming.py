"""Streamed (chunked) runs against the whole run and against torch.nn.LSTM run directly in the test.

What is checked:
* h_n, c_n, the identity checks and the output written with --include-output equal nn.LSTM's
  (within 1e-6) for chunk sizes that split the input anywhere, with lengths that end inside a chunk,
  at a chunk's edge and before a chunk, uni- and bidirectional, with proj_size, fused and --all-layers;
* `--json` is identical with and without chunking where the CPU kernels are chunk-invariant
  (full-length input, no proj_size: bit-identical), and equal within 1e-6 elsewhere;
* a streamed run never reads the whole input, and leaves no temporary file behind, also on Ctrl-C;
* progress goes to stderr only, and only to a terminal;
* the meta-device loading path equals the plain nn.LSTM + load_state_dict path;
* --threads and --device are validated and do not change results.
"""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file

B, T, F, H, P = 6, 12, 3, 5, 2
# Chunks of 4 split T=12 at 4 and 8: 12 runs to the end, 9 ends inside the last chunk, 8 ends exactly at
# a chunk's edge, 4 at the first edge, 2 inside the first chunk, 1 at the very first step.
LENGTHS = np.array([12, 9, 8, 4, 2, 1], dtype=np.int64)
TOL = 1e-6
CONFIGS = {
    "uni2": dict(num_layers=2, bidirectional=False, proj_size=0),
    "uni2-proj": dict(num_layers=2, bidirectional=False, proj_size=P),
    "bi1": dict(num_layers=1, bidirectional=True, proj_size=0),
    "bi2": dict(num_layers=2, bidirectional=True, proj_size=0),
    "bi3-proj": dict(num_layers=3, bidirectional=True, proj_size=P),
}


def _lstm(cfg: dict, seed: int) -> torch.nn.LSTM:
    torch.manual_seed(seed)
    lstm = torch.nn.LSTM(F, H, batch_first=True, **cfg)
    with torch.no_grad():
        for p in lstm.parameters():
            p.uniform_(-0.8, 0.8)
    return lstm.eval()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("stream")
    rng = np.random.default_rng(7)
    x = rng.standard_normal((B, T, F)).astype(np.float32)
    np.save(root / "x.npy", x)
    np.save(root / "x_tm.npy", np.ascontiguousarray(x.transpose(1, 0, 2)))
    np.savez(root / "x_len.npz", x=x, lengths=LENGTHS)
    np.savez_compressed(root / "x_len_z.npz", x=x, lengths=LENGTHS)
    models = {}
    for seed, (name, cfg) in enumerate(CONFIGS.items()):
        lstm = _lstm(cfg, seed)
        path = root / f"{name}.pt"
        torch.save(lstm.state_dict(), path)
        models[name] = (lstm, path)
    return root, x, models


def torch_truth(lstm: torch.nn.LSTM, x: np.ndarray, lengths=None):
    """output (B, T, D*out), h_n, c_n from nn.LSTM itself (packed when lengths are given)."""
    with torch.no_grad():
        xt = torch.from_numpy(x)
        if lengths is None:
            out, (h, c) = lstm(xt)
        else:
            packed = torch.nn.utils.rnn.pack_padded_sequence(xt, torch.from_numpy(lengths), batch_first=True,
                                                             enforce_sorted=False)
            out, (h, c) = lstm(packed)
            out, _ = torch.nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])
    return out.numpy(), h.numpy(), c.numpy()


def run_json(invoke, *args) -> dict:
    r = invoke("run", *args, "--json")
    assert r.exit_code == 0, r.stdout + r.stderr
    assert r.stderr == ""
    return json.loads(r.stdout)


def assert_docs_close(a, b, tol=TOL, path="doc"):
    """Same structure and non-float values; floats within tol."""
    if isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for k in a:
            assert_docs_close(a[k], b[k], tol, f"{path}.{k}")
    elif isinstance(a, list):
        assert len(a) == len(b), path
        for i, (u, v) in enumerate(zip(a, b)):
            assert_docs_close(u, v, tol, f"{path}[{i}]")
    elif isinstance(a, float) and isinstance(b, float):
        assert abs(a - b) <= tol, (path, a, b)
    else:
        assert a == b, (path, a, b)


@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("chunk", [1, 4, 5])
@pytest.mark.parametrize("with_lengths", [False, True], ids=["full", "lengths"])
def test_streamed_snapshot_equals_nn_lstm(invoke, files, tmp_path, name, chunk, with_lengths):
    root, x, models = files
    lstm, ckpt = models[name]
    inp = root / ("x_len.npz" if with_lengths else "x.npy")
    out = tmp_path / "s.safetensors"
    r = invoke("export-state", ckpt, inp, "-o", out, "--include-output", "--chunk-size", chunk, "--json")
    assert r.exit_code == 0, r.stdout + r.stderr
    doc = json.loads(r.stdout)
    assert doc["ok"] is True and all(c["max_abs_diff"] <= TOL for c in doc["checks"])
    want_out, want_h, want_c = torch_truth(lstm, x, LENGTHS if with_lengths else None)
    got = load_file(str(out))
    np.testing.assert_allclose(got["h_n"], want_h, rtol=0, atol=TOL)
    np.testing.assert_allclose(got["c_n"], want_c, rtol=0, atol=TOL)
    np.testing.assert_allclose(got["output"], want_out, rtol=0, atol=TOL)  # zeros past each length, as nn.LSTM
    if with_lengths:
        np.testing.assert_array_equal(got["lengths"], LENGTHS)


@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("chunk", [1, 4, 7])
@pytest.mark.parametrize("with_lengths", [False, True], ids=["full", "lengths"])
@pytest.mark.parametrize("all_layers", [False, True], ids=["fused", "all-layers"])
def test_json_identical_with_and_without_chunking(invoke, files, name, chunk, with_lengths, all_layers):
    root, x, models = files
    _, ckpt = models[name]
    args = [ckpt, root / ("x_len.npz" if with_lengths else "x.npy"), "--batch-index", 1]
    if all_layers:
        args.append("--all-layers")
    whole = run_json(invoke, *args, "--chunk-size", 0)
    streamed = run_json(invoke, *args, "--chunk-size", chunk)
    if not with_lengths and not CONFIGS[name]["proj_size"]:
        assert streamed == whole  # bit-identical: the CPU kernels give the same bits chunk by chunk
    else:
        assert_docs_close(streamed, whole)  # packed batches and proj_size: GEMM row blocking may move the last bit
    assert len(whole["checks"]) == (CONFIGS[name]["num_layers"] if all_layers else 1) * (
        2 if CONFIGS[name]["bidirectional"] else 1)


def test_time_major_and_compressed_npz_stream_the_same(invoke, files):
    root, x, models = files
    _, ckpt = models["bi2"]
    a = run_json(invoke, ckpt, root / "x.npy", "--chunk-size", 0)
    b = run_json(invoke, ckpt, root / "x_tm.npy", "--time-major", "--chunk-size", 5)
    assert b["input"]["layout"] == "time_major"
    assert b["states"] == a["states"] and b["checks"][0]["max_abs_diff"] <= TOL
    c = run_json(invoke, ckpt, root / "x_len.npz", "--chunk-size", 0)
    d = run_json(invoke, ckpt, root / "x_len_z.npz", "--chunk-size", 3)
    for k in ("states", "checks"):
        assert_docs_close(d[k], c[k])


def test_streamed_run_never_reads_the_whole_input(files, monkeypatch):
    from lstmscope.runner import RunOptions, execute_run
    from lstmscope.sequences import Sequences

    root, x, models = files

    def refuse(self):
        raise AssertionError("a streamed run read the whole input")

    monkeypatch.setattr(Sequences, "data", property(refuse))
    out = execute_run(RunOptions(models["bi2"][1], root / "x_len.npz", chunk_size=4))
    assert out.chunk_size == 4 and out.view.all_ok
    _, want_h, _ = torch_truth(models["bi2"][0], x, LENGTHS)
    np.testing.assert_allclose(out.result.h_n, want_h, rtol=0, atol=TOL)


def test_automatic_chunking_for_long_inputs(tmp_path, monkeypatch):
    import lstmscope.runner as runner
    from lstmscope.runner import RunOptions, execute_run

    # The real thresholds (256 MiB runs, 16 MiB chunks) scaled down so the test stays small.
    monkeypatch.setattr(runner, "AUTO_STREAM_BYTES", 200_000)
    monkeypatch.setattr(runner, "AUTO_CHUNK_BYTES", 20_000)
    monkeypatch.setattr(runner, "MIN_AUTO_CHUNK", 16)
    lstm = _lstm(dict(num_layers=1, bidirectional=True, proj_size=0), 3)
    torch.save(lstm.state_dict(), tmp_path / "m.pt")
    per_step = 1 * (F + 2 * 4 * H + 2 * H) * 4
    steps = 200_000 // per_step + 10  # just over the automatic threshold
    x = np.random.default_rng(0).standard_normal((1, steps, F)).astype(np.float32)
    np.save(tmp_path / "long.npy", x)
    out = execute_run(RunOptions(tmp_path / "m.pt", tmp_path / "long.npy"))
    assert out.chunk_size == 20_000 // per_step
    _, want_h, want_c = torch_truth(lstm, x)
    np.testing.assert_allclose(out.result.h_n, want_h, rtol=0, atol=TOL)
    np.testing.assert_allclose(out.result.c_n, want_c, rtol=0, atol=TOL)
    never = execute_run(RunOptions(tmp_path / "m.pt", tmp_path / "long.npy", chunk_size=0))
    assert never.chunk_size is None
    np.save(tmp_path / "short.npy", x[:, :steps - 20])  # under the threshold: one whole run
    assert execute_run(RunOptions(tmp_path / "m.pt", tmp_path / "short.npy")).chunk_size is None


@pytest.mark.parametrize("fail_at", ["layer-write", "output-write"])
def test_failure_mid_stream_leaves_no_temporary_or_partial_file(invoke, files, tmp_path, monkeypatch, fail_at):
    import lstmscope.snapshot as snapshot
    import lstmscope.engine.streaming as streaming

    root, x, models = files
    calls = []
    if fail_at == "layer-write":
        real = streaming._TempSeq.write

        def write(self, start, a):
            calls.append(start)
            if len(calls) == 3:
                raise KeyboardInterrupt
            return real(self, start, a)

        monkeypatch.setattr(streaming._TempSeq, "write", write)
    else:
        real = snapshot.SnapshotWriter.put_steps

        def put_steps(self, name, start, chunk):
            calls.append(start)
            if len(calls) == 2:
                raise KeyboardInterrupt
            return real(self, name, start, chunk)

        monkeypatch.setattr(snapshot.SnapshotWriter, "put_steps", put_steps)
    tmp_dir = tmp_path / "scratch"
    tmp_dir.mkdir()
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    r = invoke("export-state", models["bi2"][1], root / "x_len.npz", "-o", out_dir / "s.safetensors",
               "--include-output", "--chunk-size", 4, "--tmp-dir", tmp_dir)
    assert r.exit_code == 130, r.stdout + r.stderr
    assert r.stderr.strip() == "Error: interrupted"
    assert calls, "the injected failure never ran"
    assert list(tmp_dir.iterdir()) == []
    assert list(out_dir.iterdir()) == []


def test_bidirectional_stream_keeps_its_layer_files_in_tmp_dir_until_done(files, tmp_path, monkeypatch):
    import lstmscope.engine.streaming as streaming
    from lstmscope.runner import RunOptions, execute_run

    root, _, models = files
    seen = []
    real = streaming._TempSeq.__init__

    def init(self, directory, *a, **kw):
        seen.append(directory)
        real(self, directory, *a, **kw)

    monkeypatch.setattr(streaming._TempSeq, "__init__", init)
    execute_run(RunOptions(models["bi3-proj"][1], root / "x.npy", chunk_size=5, tmp_dir=str(tmp_path)))
    assert seen and all(Path(d).parent == tmp_path for d in seen)
    assert list(tmp_path.iterdir()) == []


def _pty_run(args, env=None):
    """Run lstmscope with stderr on a pseudo-terminal and stdout on a pipe."""
    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "lstmscope", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=slave, env={**os.environ, "COLUMNS": "80", **(env or {})})
    os.close(slave)
    err = b""
    while True:
        try:
            chunk = os.read(master, 4096)
        except OSError:
            break
        if not chunk:
            break
        err += chunk
    out = proc.stdout.read()
    proc.stdout.close()
    proc.wait()
    os.close(master)
    return proc.returncode, out.decode(), err.decode(errors="replace")


def test_progress_goes_to_the_terminal_on_stderr_never_to_stdout(files):
    root, _, models = files
    args = ["run", models["bi2"][1], root / "x_len.npz", "--chunk-size", 1]
    env = {"LSTMSCOPE_PROGRESS_DELAY": "0"}
    code, out, err = _pty_run(args, env)
    assert code == 0, err
    assert "steps" in err  # the bar was drawn on the terminal
    plain = subprocess.run([sys.executable, "-m", "lstmscope", *map(str, args)], capture_output=True, text=True,
                           env={**os.environ, "COLUMNS": "80", **env})
    assert plain.returncode == 0
    assert plain.stderr == ""  # stderr not a terminal: no bar
    assert out == plain.stdout  # stdout is the same table, nothing of the bar in it
    for quiet in (["--json"], ["--quiet"]):
        code, out, err = _pty_run(args + quiet, env)
        assert code == 0 and err == "", err
    assert json.loads(_pty_run(args + ["--json"], env)[1])["ok"] is True


def test_meta_device_loading_equals_plain_load_state_dict(files):
    from lstmscope.engine.fused import build_lstm
    from lstmscope.spec import LSTMSpec

    root, x, models = files
    for name, (lstm, _) in models.items():
        cfg = CONFIGS[name]
        plain = torch.nn.LSTM(F, H, batch_first=True, **cfg)
        plain.load_state_dict(lstm.state_dict())
        spec = LSTMSpec(F, H, cfg["proj_size"], cfg["num_layers"], cfg["bidirectional"], True, "float32")
        meta = build_lstm(spec, {k: v.detach() for k, v in lstm.state_dict().items()}, torch.float32)
        assert all(p.device.type == "cpu" for p in meta.parameters())
        with torch.no_grad():
            a = plain.eval()(torch.from_numpy(x))
            b = meta(torch.from_numpy(x))
        assert torch.equal(a[0], b[0]) and torch.equal(a[1][0], b[1][0]) and torch.equal(a[1][1], b[1][1])


def test_threads_do_not_change_results_and_are_validated(invoke, files):
    root, _, models = files
    ckpt = models["bi2"][1]
    one = run_json(invoke, ckpt, root / "x.npy", "--threads", 1)
    two = run_json(invoke, ckpt, root / "x.npy", "--threads", 2)
    assert_docs_close(one, two)
    r = invoke("run", ckpt, root / "x.npy", "--threads", 0)
    assert r.exit_code == 2 and r.stderr.startswith("Error: --threads 0") and r.stdout == ""


def test_default_threads_rule(monkeypatch):
    from lstmscope.engine.fused import default_threads
    from lstmscope.spec import LSTMSpec

    small = LSTMSpec(32, 64, 0, 1, False, True, "float32")
    big = LSTMSpec(64, 256, 0, 2, True, True, "float32")
    assert default_threads(small, 1) == 1
    cores = len(os.sched_getaffinity(0))
    for busy, want in ((0, min(cores, 8)), (cores - 1, 1), (cores + 5, 1)):
        monkeypatch.setattr("lstmscope.engine.fused.busy_cores", lambda busy=busy: busy)
        assert default_threads(big, 32) == max(1, want)


def test_device_is_validated_and_cpu_works(invoke, files):
    root, _, models = files
    ckpt = models["uni2"][1]
    assert run_json(invoke, ckpt, root / "x.npy", "--device", "cpu")["ok"] is True
    for bad in ("tpu", "cuda:x", "cpu:1"):
        r = invoke("run", ckpt, root / "x.npy", "--device", bad)
        assert r.exit_code == 2 and r.stdout == "" and r.stderr.startswith(f"Error: --device {bad} is not a device")
    if not torch.cuda.is_available():
        r = invoke("run", ckpt, root / "x.npy", "--device", "cuda")
        assert r.exit_code == 2 and r.stdout == "" and len(r.stderr.splitlines()) == 1
        assert "no CUDA device" in r.stderr
    else:  # on a GPU machine: same states as the CPU within float32 tolerance
        a = run_json(invoke, ckpt, root / "x.npy")
        b = run_json(invoke, ckpt, root / "x.npy", "--device", "cuda", "--chunk-size", 5)
        assert_docs_close(a["states"], b["states"], tol=1e-5)


def test_chunk_size_is_validated(invoke, files):
    root, _, models = files
    r = invoke("run", models["uni2"][1], root / "x.npy", "--chunk-size", -3)
    assert r.exit_code == 2 and r.stdout == "" and r.stderr.startswith("Error: --chunk-size -3")


def test_nonfinite_input_is_a_warning_with_counts_per_layer_and_direction(invoke, files, tmp_path):
    root, x, models = files
    lstm, ckpt = models["bi2"]
    bad = x.copy()
    bad[2, 5, 1] = np.nan  # sequence 2 only; both directions of every layer see it
    bad[4, 0, 0] = np.inf
    np.save(tmp_path / "bad.npy", bad)
    _, want_h, want_c = torch_truth(lstm, bad)
    for chunk in (0, 4):
        r = invoke("run", ckpt, tmp_path / "bad.npy", "--json", "--chunk-size", chunk)
        assert r.exit_code in (0, 1), r.stderr
        lines = r.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("warning: bad.npy holds 2 NaN/Inf values"), r.stderr
        doc = json.loads(r.stdout)
        assert doc["nonfinite"]["input"] == 2
        want = [{"layer": i // 2, "direction": ("forward", "backward")[i % 2],
                 "h_n": int((~np.isfinite(want_h[i])).sum()), "c_n": int((~np.isfinite(want_c[i])).sum())}
                for i in range(want_h.shape[0]) if (~np.isfinite(want_h[i])).any() or (~np.isfinite(want_c[i])).any()]
        assert want and doc["nonfinite"]["states"] == want
        assert doc["warnings"] == [lines[0].removeprefix("warning: ")]
    clean = run_json(invoke, ckpt, root / "x.npy")
    assert clean["nonfinite"] == {"input": 0, "states": []} and clean["warnings"] == []


def test_fortran_ordered_input_is_read_correctly(invoke, files, tmp_path):
    root, x, models = files
    np.save(tmp_path / "f.npy", np.asfortranarray(x))
    a = run_json(invoke, models["uni2"][1], root / "x.npy")
    for chunk in (0, 5):
        b = run_json(invoke, models["uni2"][1], tmp_path / "f.npy", "--chunk-size", chunk)
        assert b["states"] == a["states"]


@pytest.mark.parametrize("name", ["uni2-proj", "bi2"])
def test_streamed_run_from_an_initial_state_equals_nn_lstm(invoke, files, tmp_path, name):
    from safetensors.numpy import save_file

    root, x, models = files
    lstm, ckpt = models[name]
    cfg = CONFIGS[name]
    d = 2 if cfg["bidirectional"] else 1
    rng = np.random.default_rng(11)
    h0 = rng.standard_normal((cfg["num_layers"] * d, B, cfg["proj_size"] or H)).astype(np.float32)
    c0 = rng.standard_normal((cfg["num_layers"] * d, B, H)).astype(np.float32)
    save_file({"h_n": h0, "c_n": c0}, str(tmp_path / "init.safetensors"))
    with torch.no_grad():
        packed = torch.nn.utils.rnn.pack_padded_sequence(torch.from_numpy(x), torch.from_numpy(LENGTHS),
                                                         batch_first=True, enforce_sorted=False)
        _, (h, c) = lstm(packed, (torch.from_numpy(h0), torch.from_numpy(c0)))
    out = tmp_path / "s.safetensors"
    r = invoke("export-state", ckpt, root / "x_len.npz", "-o", out, "--initial-state", tmp_path / "init.safetensors",
               "--chunk-size", 5)
    assert r.exit_code == 0, r.stdout + r.stderr
    got = load_file(str(out))
    np.testing.assert_allclose(got["h_n"], h.numpy(), rtol=0, atol=TOL)
    np.testing.assert_allclose(got["c_n"], c.numpy(), rtol=0, atol=TOL)


@pytest.mark.parametrize("lengths", [None, [11, 3, 7, 1]])
@pytest.mark.parametrize("chunk", [1, 2, 3, 5, 11])
def test_go_backwards_order_whole_and_chunked(lengths, chunk):
    """Keras go_backwards reads each sequence's own steps last first, padding left in place: the whole-array
    reversal and the chunked reader both equal a per-sequence loop written here."""
    from lstmscope.sequences import reverse_steps, reversed_reader

    x = np.random.default_rng(0).standard_normal((4, 11, 3))
    lens = None if lengths is None else np.array(lengths)
    want = x.copy()
    for b in range(4):
        n = 11 if lens is None else lens[b]
        want[b, :n] = x[b, :n][::-1]
    np.testing.assert_array_equal(reverse_steps(x, lens), want)
    read = reversed_reader(lambda s, e: x[:, s:e], lens, 11, 4)
    got = np.concatenate([read(s, min(s + chunk, 11)) for s in range(0, 11, chunk)], axis=1)
    np.testing.assert_array_equal(got, want)
