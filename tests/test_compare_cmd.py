"""``lstmscope compare`` against independent truth.

Truth: torch.nn.LSTM run directly (in float32 and float64), its own torch.onnx.export, onnxruntime, a Keras 2 file
whose weights the test converts to nn.LSTM's layout by hand (kernel.T; Keras's single bias as bias_ih), and numpy
over two traces written by ``lstmscope trace``. onnxruntime is imported once per session (test_onnx_reader's
``ort`` fixture).
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from conftest import real_checkpoints_dir, real_manifest
from helpers import assert_one_error_line

if importlib.util.find_spec("onnx") is None:
    pytest.skip("the onnx package is not installed (pip install -e '.[dev]')", allow_module_level=True)

from test_onnx_reader import export_torch, lstm_node, one_node_model, ort, save_model, weights  # noqa: E402,F401

H, I, B, T = 5, 3, 2, 7


def _ok(r) -> dict:
    assert r.exit_code == 0, (r.exit_code, r.stdout, r.stderr)
    return json.loads(r.stdout)


def _rows(doc: dict) -> dict[str, dict]:
    return {(r["tensor"], r["layer"], r["direction"]): r for r in doc["rows"]}


@pytest.fixture(scope="module")
def torch_pair(tmp_path_factory):
    """A 2-layer bidirectional nn.LSTM as model.pt and its torch.onnx.export as model.onnx, an input x.npy,
    lengths, and the module itself."""
    import torch

    d = tmp_path_factory.mktemp("compare")
    torch.manual_seed(0)
    lstm = torch.nn.LSTM(I, H, num_layers=2, bidirectional=True, batch_first=True).eval()
    torch.save(lstm.state_dict(), d / "model.pt")
    x = torch.randn(B, T, I)
    export_torch(lstm, x, d / "model.onnx")
    np.save(d / "x.npy", x.numpy())
    np.save(d / "len.npy", np.array([T, 4], dtype=np.int64))
    return d, lstm


def test_pt_against_its_onnx_export(invoke, torch_pair, one_torch_thread):
    d, _ = torch_pair
    doc = _ok(invoke("compare", d / "model.pt", d / "model.onnx", d / "x.npy", "--json"))
    assert doc["schema"] == "lstmscope.compare/1" and doc["equal"] and doc["comparable"]
    assert doc["sides"]["a"]["format"] == "torch-zip" and doc["sides"]["b"]["format"] == "onnx"
    assert len(doc["rows"]) == 2 * 4 + 1  # h_n, c_n per (layer, direction), then output
    assert max(r["max_abs_diff"] for r in doc["rows"]) < 1e-6
    lens = _ok(invoke("compare", d / "model.pt", d / "model.onnx", d / "x.npy", "--lengths", d / "len.npy", "--json"))
    assert lens["equal"] and lens["input"]["lengths"] == [T, 4]


def test_perturbed_onnx_weight_fails_on_its_layer(invoke, torch_pair, tmp_path, one_torch_thread):
    import onnx
    from onnx import numpy_helper

    d, _ = torch_pair
    model = onnx.load(str(d / "model.onnx"))
    lstms = [n for n in model.graph.node if n.op_type == "LSTM"]
    r_name = lstms[1].input[2]  # layer 1's R [D, 4H, H]
    t = next(t for t in model.graph.initializer if t.name == r_name)
    r = numpy_helper.to_array(t).copy()
    r[1, 0, 0] += 0.5  # backward direction, input gate
    t.CopyFrom(numpy_helper.from_array(r, r_name))
    bad = tmp_path / "bad.onnx"
    onnx.save(model, str(bad))
    res = invoke("compare", d / "model.pt", bad, d / "x.npy", "--json")
    assert res.exit_code == 1, res.stderr
    doc = json.loads(res.stdout)
    assert not doc["equal"] and doc["comparable"]
    failed = {(r["tensor"], r["layer"], r["direction"]) for r in doc["rows"] if not r["pass"]}
    assert ("h_n", 1, "backward") in failed and ("c_n", 1, "backward") in failed
    assert all(layer == 1 and direction == "backward" for t_, layer, direction in failed if t_ != "output")
    table = invoke("compare", d / "model.pt", bad, d / "x.npy")
    assert table.exit_code == 1 and "h_n 1 bwd" in table.stdout and "FAIL" in table.stdout


def test_b_dtype_float64_equals_torch_in_both_dtypes(invoke, torch_pair, one_torch_thread):
    import torch

    d, lstm = torch_pair
    doc = _ok(invoke("compare", d / "model.pt", d / "x.npy", "--b-dtype", "float64", "--json"))
    assert doc["sides"]["a"]["dtype"] == "float32" and doc["sides"]["b"]["dtype"] == "float64"
    x = torch.from_numpy(np.load(d / "x.npy"))
    with torch.inference_mode():
        _, (h32, c32) = lstm(x)
        _, (h64, c64) = lstm.double()(x.double())
    lstm.float()
    rows = _rows(doc)
    for k in range(4):
        want_h = np.abs(h32[k].numpy().astype(np.float64) - h64[k].numpy()).max()
        want_c = np.abs(c32[k].numpy().astype(np.float64) - c64[k].numpy()).max()
        key = (k // 2, ("forward", "backward")[k % 2])
        assert rows[("h_n", *key)]["max_abs_diff"] == pytest.approx(want_h, abs=1e-7)
        assert rows[("c_n", *key)]["max_abs_diff"] == pytest.approx(want_c, abs=1e-7)


def test_b_engine_stepwise_matches_fused(invoke, torch_pair, one_torch_thread):
    d, _ = torch_pair
    doc = _ok(invoke("compare", d / "model.pt", d / "x.npy", "--b-engine", "stepwise", "--all-layers",
                     "--lengths", d / "len.npy", "--json"))
    assert doc["sides"]["a"]["engine"] == "fused" and doc["sides"]["b"]["engine"] == "stepwise"
    assert {r["tensor"] for r in doc["rows"]} == {"h_n", "c_n", "output", "output layer 0"}


def test_b_runtime_onnxruntime_on_an_export(invoke, ort, torch_pair, one_torch_thread):
    d, _ = torch_pair
    doc = _ok(invoke("compare", d / "model.onnx", d / "x.npy", "--b-runtime", "onnxruntime", "--lengths",
                     d / "len.npy", "--all-layers", "--json"))
    assert doc["sides"]["b"]["runtime"] == "onnxruntime" and doc["sides"]["b"]["engine"] is None
    assert len(doc["rows"]) == 8 + 2
    # a PyTorch file against the ONNX file run by onnxruntime
    _ok(invoke("compare", d / "model.pt", d / "model.onnx", d / "x.npy", "--b-runtime", "onnxruntime", "--json"))


@pytest.mark.parametrize("attrs,peephole,d", [
    ({"clip": 0.7, "direction": "forward"}, True, 1),
    ({"clip": 1.5, "direction": "bidirectional", "input_forget": 1}, True, 2),
    ({"direction": "reverse"}, False, 1),
])
def test_b_runtime_onnxruntime_on_built_nodes(invoke, ort, tmp_path, attrs, peephole, d, one_torch_thread):
    inputs = ("X", "W", "R", "B", "", "", "", "P") if peephole else ("X", "W", "R", "B")
    node = lstm_node(inputs=inputs, hidden_size=H, **attrs)
    path = save_model(one_node_model(node, weights(I, H, d=d, peephole=peephole), i=I, h=H, d=d),
                      tmp_path / "node.onnx")
    x = np.random.default_rng(1).standard_normal((B, T, I)).astype(np.float32) * 2
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "len.npy", np.array([T, 3], dtype=np.int64))
    doc = _ok(invoke("compare", path, tmp_path / "x.npy", "--b-runtime", "onnxruntime", "--lengths",
                     tmp_path / "len.npy", "--per-step", "--json"))
    assert doc["equal"] and doc["sides"]["a"]["engine"] == ("stepwise" if peephole else "fused")
    assert doc["per_step"]["equal"] and {r["quantity"] for r in doc["per_step"]["rows"]} == {"h"}


def test_keras_against_its_pytorch_port(invoke, tmp_path, one_torch_thread):
    import torch
    from keras_files import keras2_model

    built = keras2_model(tmp_path / "k.h5", [("lstm", "lstm_1", H, {"recurrent_activation": "sigmoid"})],
                         input_size=I)
    w = built.layers["lstm_1"].dirs[0]
    sd = {"weight_ih_l0": w.kernel.T, "weight_hh_l0": w.recurrent_kernel.T, "bias_ih_l0": w.bias,
          "bias_hh_l0": np.zeros_like(w.bias)}  # Keras gates i, f, c, o = nn.LSTM's i, f, g, o
    torch.save({k: torch.from_numpy(np.ascontiguousarray(v, dtype=np.float32)) for k, v in sd.items()},
               tmp_path / "port.pt")
    np.save(tmp_path / "x.npy", np.random.default_rng(2).standard_normal((B, T, I)).astype(np.float32))
    doc = _ok(invoke("compare", tmp_path / "k.h5", tmp_path / "port.pt", tmp_path / "x.npy", "--json"))
    assert doc["sides"]["a"]["framework"] == "keras" and doc["sides"]["b"]["framework"] == "pytorch"
    assert max(r["max_abs_diff"] for r in doc["rows"]) < 1e-5
    # a hard_sigmoid Keras cell against the sigmoid port: same shapes, different states, and the cell is named
    hard = keras2_model(tmp_path / "hard.h5", [("lstm", "lstm_1", H, {})], input_size=I)
    assert hard.layers["lstm_1"].recurrent_activation == "hard_sigmoid"
    r = invoke("compare", tmp_path / "hard.h5", tmp_path / "port.pt", tmp_path / "x.npy", "--json")
    assert r.exit_code == 1
    diffs = json.loads(r.stdout)["metadata_differences"]
    assert "spec.gate_activation" in diffs["provenance"] and not diffs["architecture"]


def test_architecture_mismatch_names_the_fields(invoke, torch_pair, tmp_path):
    import torch

    d, _ = torch_pair
    other = torch.nn.LSTM(I, H + 1, num_layers=1, bidirectional=True, batch_first=True)
    torch.save(other.state_dict(), tmp_path / "other.pt")
    r = invoke("compare", d / "model.pt", tmp_path / "other.pt", d / "x.npy", "--json")
    assert r.exit_code == 1, r.stderr
    doc = json.loads(r.stdout)
    assert not doc["comparable"] and doc["rows"] == []
    assert doc["metadata_differences"]["architecture"] == {"hidden_size": [H, H + 1], "num_layers": [2, 1]}
    table = invoke("compare", d / "model.pt", tmp_path / "other.pt", d / "x.npy")
    assert table.exit_code == 1 and "hidden_size" in table.stdout and "num_layers" in table.stdout


def test_bad_input_is_one_error_line(invoke, torch_pair, tmp_path):
    d, _ = torch_pair
    one = invoke("compare", d / "model.pt")
    assert one.exit_code == 2 and one.stderr.count("Error: ") == 1 and "A B INPUT" in one.stderr
    nothing = invoke("compare", d / "model.pt", d / "x.npy")
    assert nothing.exit_code == 2 and nothing.stderr.startswith("Error: nothing to compare") and not nothing.stdout
    assert len(nothing.stderr.splitlines()) == 1
    missing = tmp_path / "missing.pt"
    assert_one_error_line(invoke("compare", missing, d / "model.onnx", d / "x.npy"), missing)
    r = invoke("compare", d / "model.pt", d / "model.onnx")  # the input forgotten: B is not input sequences
    assert_one_error_line(r, d / "model.onnx")
    assert "is a checkpoint, not input sequences" in r.stderr
    assert_one_error_line(invoke("compare", d / "model.pt", d / "x.npy", "--b-runtime", "onnxruntime"),
                          d / "model.pt", "ONNX")
    assert_one_error_line(invoke("compare", d / "model.pt", d / "x.npy", "--b-engine", "warp"), Path("--b-engine"),
                          "stepwise")


def test_b_device_without_cuda_is_one_error_line(invoke, torch_pair):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    d, _ = torch_pair
    r = invoke("compare", d / "model.pt", d / "x.npy", "--b-device", "cuda")
    assert r.exit_code == 2 and r.stdout == "" and r.stderr.startswith("Error: --b-device cuda")
    assert len(r.stderr.splitlines()) == 1


def test_b_device_cuda_matches_cpu(invoke, torch_pair):
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    d, _ = torch_pair
    doc = _ok(invoke("compare", d / "model.pt", d / "x.npy", "--b-device", "cuda", "--json"))
    assert doc["sides"]["b"]["device"] == "cuda"


def test_missing_onnxruntime_is_one_error_line(invoke, torch_pair, monkeypatch):
    import builtins

    d, _ = torch_pair
    real = builtins.__import__

    def no_ort(name, *a, **kw):
        if name == "onnxruntime":
            raise ImportError(name)
        return real(name, *a, **kw)

    monkeypatch.setattr(builtins, "__import__", no_ort)
    r = invoke("compare", d / "model.onnx", d / "x.npy", "--b-runtime", "onnxruntime")
    assert r.exit_code == 2 and r.stderr == ("Error: --b-runtime onnxruntime needs onnxruntime: "
                                             "pip install 'lstmscope[onnx]'\n")


def test_per_step_first_step_over_equals_numpy_on_two_traces(invoke, tmp_path, one_torch_thread):
    """float32 against float64 over 300 steps: compare --per-step's first step over a tight atol equals numpy's,
    over two traces written by lstmscope trace; its h rows equal nn.LSTM's own outputs in both dtypes."""
    import torch
    from safetensors.numpy import load_file

    torch.manual_seed(3)
    lstm = torch.nn.LSTM(I, H, batch_first=True).eval()
    torch.save(lstm.state_dict(), tmp_path / "m.pt")
    x = torch.randn(B, 300, I) * 2
    np.save(tmp_path / "x.npy", x.numpy())
    atol, rtol = 3e-8, 0.0
    r = invoke("compare", tmp_path / "m.pt", tmp_path / "x.npy", "--b-dtype", "float64", "--per-step",
               "--atol", atol, "--rtol", rtol, "--json")
    assert r.exit_code == 1, r.stderr  # float32 parts from float64 beyond 3e-8
    doc = json.loads(r.stdout)
    for dtype in ("float32", "float64"):
        t = invoke("trace", tmp_path / "m.pt", tmp_path / "x.npy", "--dtype", dtype, "--quantities", "h,c",
                   "-o", tmp_path / f"{dtype}.safetensors", "--quiet")
        assert t.exit_code == 0, t.stderr
    a, b = (load_file(str(tmp_path / f"{dt}.safetensors")) for dt in ("float32", "float64"))
    steps = {(r_["layer"], r_["direction"], r_["quantity"]): r_ for r_ in doc["per_step"]["rows"]}
    firsts = []
    for q in ("h", "c"):
        name = f"layer0/forward/{q}"
        over = np.abs(a[name].astype(np.float64) - b[name]) > atol + rtol * np.abs(b[name])  # (batch, time, width)
        hits = np.flatnonzero(over.any(axis=(0, 2)))
        want = int(hits[0]) if hits.size else None
        firsts += [want] if want is not None else []
        row = steps[(0, "forward", q)]
        assert row["first_step_over_tolerance"] == want
        assert np.allclose(row["per_step_max_abs_diff"],
                           np.abs(a[name].astype(np.float64) - b[name]).max(axis=(0, 2)), rtol=0, atol=1e-12)
    assert firsts and doc["per_step"]["first_step_over_tolerance"] == min(firsts)
    with torch.inference_mode():  # nn.LSTM itself: its per-step h in both dtypes
        y32, _ = lstm(x)
        y64, _ = lstm.double()(x.double())
    torch_steps = np.abs(y32.numpy().astype(np.float64) - y64.numpy()).max(axis=(0, 2))
    assert np.allclose(steps[(0, "forward", "h")]["per_step_max_abs_diff"], torch_steps, rtol=0, atol=1e-6)
    table = invoke("compare", tmp_path / "m.pt", tmp_path / "x.npy", "--b-dtype", "float64", "--per-step",
                   "--atol", atol, "--rtol", rtol)
    assert table.exit_code == 1 and "1st over" in table.stdout


REAL_ONNX = [e for e in real_manifest() if e["framework"] == "onnx"]


@pytest.mark.skipif(not REAL_ONNX, reason="no real ONNX files (set LSTMSCOPE_REAL_CHECKPOINTS)")
def test_real_onnx_files_equal_onnxruntime(invoke, ort, tmp_path, one_torch_thread):
    """Every module of the shared real ONNX files whose weights are in the file compares equal with onnxruntime."""
    checked = 0
    for e in REAL_ONNX:
        path = real_checkpoints_dir() / e["file"]
        listing = _ok(invoke("inspect", path, "--json"))
        for m in listing["modules"] + listing["single_layers"]:
            if any("run refused" in n for n in m["notes"]):
                continue
            x = np.random.default_rng(0).standard_normal((2, 6, m["input_size"])).astype(np.float32)
            np.save(tmp_path / "x.npy", x)
            r = invoke("compare", path, tmp_path / "x.npy", "--module-a", m["name"], "--b-runtime", "onnxruntime",
                       "--json")
            assert r.exit_code == 0, (e["file"], m["name"], r.stdout[-2000:], r.stderr)
            checked += 1
    assert checked
