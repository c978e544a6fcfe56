"""ONNX modules in ONNX's own terms: Y [T, D, B, H] in input order, Y_h/Y_c [D, B, H], and snapshots written as the
deployed graph's own state feeds (the "onnx" layout). onnxruntime is the oracle: a state lstmscope exports is fed
to the graph with the next chunk, and what the graph computes must equal the whole sequence run at once.
``onnx`` is imported inside the tests only (see tests/test_onnx_reader.py)."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from conftest import real_checkpoints_dir
from test_onnx_reader import helper, one_node_model, ort, ort_run, save_model, weights  # noqa: F401 (ort: fixture)
from test_onnx_reader import lstm_node

TOL = 1e-5
I, H, B = 3, 5, 2


def _ok(result):
    assert result.exit_code == 0, result.stdout + result.stderr
    return result


@pytest.fixture(scope="session")
def torch_onnx(tmp_path_factory) -> dict[str, Path]:
    """nn.LSTM stacks exported with torch.onnx.export(dynamo=False), h0/c0 as graph inputs ([L*D, 2, H])."""
    import torch

    out = {}
    for name, bi in (("uni2", False), ("bi1", True)):
        torch.manual_seed(3)
        lstm = torch.nn.LSTM(I, H, num_layers=2 if not bi else 1, bidirectional=bi)

        class Wrap(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.lstm = lstm

            def forward(self, x, h0, c0):
                return self.lstm(x, (h0, c0))

        ld = (2 if bi else 1) * lstm.num_layers
        args = (torch.zeros(4, B, I), torch.zeros(ld, B, H), torch.zeros(ld, B, H))
        path = tmp_path_factory.mktemp("onnx") / f"{name}.onnx"
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the legacy (TorchScript) exporter warns that it is legacy
            torch.onnx.export(Wrap(), args, str(path), dynamo=False, input_names=["x", "h0", "c0"],
                              output_names=["y", "hn", "cn"], dynamic_axes={"x": {0: "T"}, "y": {0: "T"}},
                              opset_version=14)
        out[name] = path
    return out


def _x(t: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((B, t, I)).astype(np.float32)  # (batch, time, features)


def _session_run(ort, path: Path, x_bt: np.ndarray, states: dict | None, ld: int) -> dict:
    import onnx

    feeds = {"x": np.ascontiguousarray(x_bt.transpose(1, 0, 2))}  # (time, batch, features)
    feeds.update(states or {"h0": np.zeros((ld, B, H), np.float32), "c0": np.zeros((ld, B, H), np.float32)})
    return ort_run(ort, onnx.load(str(path)), feeds)


@pytest.mark.parametrize("name,ld", [("uni2", 2), ("bi1", 2)])
def test_exported_state_feeds_the_next_chunk(ort, invoke, tmp_path, torch_onnx, name, ld):
    """export-state's tensors are the graph's h0/c0; fed with the next chunk they give what the whole sequence gives
    (for the bidirectional model only the forward half can continue: its backward half needs the future)."""
    path, x = torch_onnx[name], _x(7)
    whole = _session_run(ort, path, x, None, ld)
    np.save(tmp_path / "a.npy", x[:, :4])
    doc = json.loads(_ok(invoke("export-state", path, tmp_path / "a.npy", "-o", tmp_path / "s.safetensors",
                                "--json")).stdout)
    assert doc["metadata"]["layout"] == "onnx"
    snap = load_file(tmp_path / "s.safetensors")
    assert {k: v.shape for k, v in snap.items()} == {"h0": (ld, B, H), "c0": (ld, B, H)}
    first = _session_run(ort, path, x[:, :4], None, ld)
    np.testing.assert_allclose(snap["h0"], first["hn"], atol=TOL)
    np.testing.assert_allclose(snap["c0"], first["cn"], atol=TOL)
    rest = _session_run(ort, path, x[:, 4:], dict(snap), ld)
    if name == "uni2":
        np.testing.assert_allclose(rest["hn"], whole["hn"], atol=TOL)
        np.testing.assert_allclose(rest["cn"], whole["cn"], atol=TOL)
        np.testing.assert_allclose(rest["y"], whole["y"][4:], atol=TOL)
    else:  # forward direction continues
        np.testing.assert_allclose(rest["hn"][0], whole["hn"][0], atol=TOL)
        np.testing.assert_allclose(rest["y"][..., :H], whole["y"][4:, :, :H], atol=TOL)  # nn.LSTM's (T, B, 2H)
    # run --initial-state with that file equals onnxruntime seeded with it
    np.save(tmp_path / "b.npy", x[:, 4:])
    _ok(invoke("run", path, tmp_path / "b.npy", "--initial-state", tmp_path / "s.safetensors", "--json"))
    _ok(invoke("export-state", path, tmp_path / "b.npy", "--initial-state", tmp_path / "s.safetensors",
               "-o", tmp_path / "s2.safetensors", "--layout", "torch", "--quiet"))
    got = load_file(tmp_path / "s2.safetensors")
    np.testing.assert_allclose(got["h_n"], rest["hn"], atol=TOL)
    np.testing.assert_allclose(got["c_n"], rest["cn"], atol=TOL)


def test_diff_rows_name_onnx_feed_slices(invoke, tmp_path, torch_onnx):
    """diff-states speaks ONNX for ONNX-layout snapshots: each h/c row is the place in the graph's state feed
    it was read from (h0[1]: [L*D, B, H] feeds; H0[:, 1]: a layout-1 node's [B, D, H]), and its figures are that
    place's, read from the files with numpy."""
    from helpers import assert_rows_name_their_slices

    d = 2
    node = lstm_node(inputs=("X", "W", "R", "B", "", "H0", "C0"), hidden_size=H, direction="bidirectional", layout=1)
    layout1 = save_model(one_node_model(node, weights(I, H, d=d, seed=9), i=I, h=H, d=d, states=True, layout=1),
                         tmp_path / "l1.onnx")
    node = lstm_node(inputs=("X", "W", "R", "B", "", "H0", "C0"), hidden_size=H)
    uni = save_model(one_node_model(node, weights(I, H, d=1, seed=4), i=I, h=H, d=1, states=True), tmp_path / "u.onnx")
    for model, names in ((torch_onnx["bi1"], {"h0[0]", "h0[1]", "c0[0]", "c0[1]"}),
                         (layout1, {"H0[:, 0]", "H0[:, 1]", "C0[:, 0]", "C0[:, 1]"}),
                         (uni, {"H0[0]", "C0[0]"})):  # [1, B, H]: the one direction is still H0[0]
        files = []
        for seed in (0, 1):  # two inputs: states that differ
            np.save(tmp_path / "x.npy", _x(4, seed=seed))
            files.append(tmp_path / f"{model.stem}-{seed}.safetensors")
            _ok(invoke("export-state", model, tmp_path / "x.npy", "-o", files[-1], "--quiet"))
        r = invoke("diff-states", *files, "--json")
        assert r.exit_code == 1, r.stderr
        assert_rows_name_their_slices(json.loads(r.stdout), *files, names)
    torch_layout = tmp_path / "t.safetensors"  # the same state in PyTorch's layout: rows say whose name it is
    _ok(invoke("export-state", uni, tmp_path / "x.npy", "-o", torch_layout, "--layout", "torch", "--quiet"))
    doc = json.loads(invoke("diff-states", files[-1], torch_layout, "--json").stdout)
    assert [r["stored_as"] for r in doc["rows"] if r["tensor"] in ("h_n", "c_n")] == ["H0[0] (A)", "C0[0] (A)"]


def test_import_state_between_layouts(invoke, tmp_path, torch_onnx):
    path = torch_onnx["uni2"]
    rng = np.random.default_rng(5)
    h, c = (rng.standard_normal((2, B, H)).astype(np.float32) for _ in range(2))
    np.savez(tmp_path / "torch.npz", h_n=h, c_n=c)
    _ok(invoke("import-state", tmp_path / "torch.npz", "-o", tmp_path / "o.safetensors", "--checkpoint", path))
    as_onnx = load_file(tmp_path / "o.safetensors")
    assert set(as_onnx) == {"h0", "c0"}
    np.testing.assert_array_equal(as_onnx["h0"], h)
    np.testing.assert_array_equal(as_onnx["c0"], c)
    _ok(invoke("import-state", tmp_path / "o.safetensors", "-o", tmp_path / "t.safetensors", "--checkpoint", path,
               "--layout", "torch"))
    back = load_file(tmp_path / "t.safetensors")
    np.testing.assert_array_equal(back["h_n"], h)
    np.testing.assert_array_equal(back["c_n"], c)
    shown = json.loads(_ok(invoke("show-state", tmp_path / "o.safetensors", "--json")).stdout)
    assert [s["h_label"] for s in shown["states"]] == [f"{n} Y_h[0]" for n in shown["metadata"]["spec"]["names"]]
    diff = invoke("diff-states", tmp_path / "o.safetensors", tmp_path / "t.safetensors")
    assert diff.exit_code == 0, diff.stdout + diff.stderr


def test_run_json_speaks_onnx(invoke, tmp_path, torch_onnx):
    path = torch_onnx["bi1"]
    np.save(tmp_path / "x.npy", _x(6))
    np.save(tmp_path / "len.npy", np.array([6, 4]))
    doc = json.loads(_ok(invoke("run", path, tmp_path / "x.npy", "--lengths", tmp_path / "len.npy",
                                "--json")).stdout)
    node = doc["model"]["names"][0] if "names" in doc["model"] else None
    (shapes,) = doc["shapes"]["onnx"]["nodes"]
    assert shapes["Y"] == [6, 2, B, H] and shapes["Y_h"] == [2, B, H] and shapes["Y_c"] == [2, B, H]
    pos = {c["direction"]: c["output_position"] for c in doc["checks"]}
    assert pos == {"forward": "Y[len[b]-1, 0, b, :]", "backward": "Y[0, 1, b, :]"}
    assert [c["output_time_index"] for c in doc["checks"]] == [[5, 3], [0, 0]]
    assert all(c["ok"] for c in doc["checks"])
    assert [s["h_label"] for s in doc["states"]] == [f"{shapes['name']} Y_h[0]", f"{shapes['name']} Y_h[1]"]
    assert node in (None, shapes["name"])
    text = _ok(invoke("run", path, tmp_path / "x.npy", "--lengths", tmp_path / "len.npy")).stdout
    assert "Where each Y_h lives in Y" in text and "Y[0, 1, b, :]" in text


@pytest.fixture
def reverse_model(tmp_path):
    node = lstm_node(inputs=("X", "W", "R", "B", "L", "H0", "C0"), hidden_size=H, direction="reverse")
    return save_model(one_node_model(node, weights(I, H, seed=7), i=I, h=H, lengths=True, states=True),
                      tmp_path / "rev.onnx")


def test_reverse_node_output_is_onnx_y(ort, invoke, tmp_path, reverse_model):
    """A reverse node's Y is in input order: export-state --include-output writes ONNX's Y, and Y_h == Y[0]."""
    import onnx

    x, lens = _x(6, seed=2), np.array([6, 3])
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "len.npy", lens)
    z = np.zeros((1, B, H), np.float32)
    want = ort_run(ort, onnx.load(str(reverse_model)), {"X": np.ascontiguousarray(x.transpose(1, 0, 2)),
                                                         "L": lens.astype(np.int32), "H0": z, "C0": z})
    doc = json.loads(_ok(invoke("run", reverse_model, tmp_path / "x.npy", "--lengths", tmp_path / "len.npy",
                                "--json")).stdout)
    (check,) = doc["checks"]
    assert check["ok"] and check["output_position"] == "Y[0, 0, b, :]" and check["output_time_index"] == [0, 0]
    for chunk in ("0", "2"):
        out = tmp_path / f"s{chunk}.safetensors"
        _ok(invoke("export-state", reverse_model, tmp_path / "x.npy", "--lengths", tmp_path / "len.npy",
                   "--include-output", "-o", out, "--chunk-size", chunk, "--quiet"))
        snap = load_file(out)
        assert snap["H0"].shape == (1, B, H)  # named after the graph's inputs
        np.testing.assert_allclose(snap["H0"], want["Y_h"], atol=TOL)
        np.testing.assert_allclose(snap["C0"], want["Y_c"], atol=TOL)
        y = want["Y"][:, 0].transpose(1, 0, 2)  # (batch, time, hidden), zero past each length
        np.testing.assert_allclose(snap["output"], y, atol=TOL)
    # trace, in input order: step t is the state after reading x[t], i.e. ONNX's Y[t]
    _ok(invoke("trace", reverse_model, tmp_path / "x.npy", "--lengths", tmp_path / "len.npy", "-o",
               tmp_path / "t.safetensors", "--quiet"))
    tr = load_file(tmp_path / "t.safetensors")
    for b, n in enumerate(lens):
        np.testing.assert_allclose(tr["layer0/forward/h"][b, :n], want["Y"][:n, 0, b], atol=TOL)


def test_reverse_node_seeded_from_exported_state(ort, invoke, tmp_path, reverse_model):
    import onnx

    x = _x(5, seed=4)
    rng = np.random.default_rng(1)
    h0, c0 = (rng.standard_normal((1, B, H)).astype(np.float32) for _ in range(2))
    np.savez(tmp_path / "seed.npz", h_n=h0, c_n=c0)
    _ok(invoke("import-state", tmp_path / "seed.npz", "-o", tmp_path / "seed.safetensors", "--checkpoint",
               reverse_model))
    seed = load_file(tmp_path / "seed.safetensors")
    assert set(seed) == {"H0", "C0"}
    np.save(tmp_path / "x.npy", x)
    _ok(invoke("export-state", reverse_model, tmp_path / "x.npy", "--initial-state", tmp_path / "seed.safetensors",
               "-o", tmp_path / "out.safetensors", "--quiet"))
    got = load_file(tmp_path / "out.safetensors")
    want = ort_run(ort, onnx.load(str(reverse_model)), {"X": np.ascontiguousarray(x.transpose(1, 0, 2)),
                                                         "L": np.array([5, 5], np.int32), **seed})
    np.testing.assert_allclose(got["H0"], want["Y_h"], atol=TOL)
    np.testing.assert_allclose(got["C0"], want["Y_c"], atol=TOL)


REAL = real_checkpoints_dir()


@pytest.mark.parametrize("rel,declared", [
    ("silero_vad_v3_2021/silero_vad.onnx", {"h0": (2, 1, 64), "c0": (2, 1, 64)}),
    ("dtln_keras2onnx/model_1.onnx", {"input_3": (1, 2, 128, 2)}),
])
def test_real_graph_state_inputs(ort, invoke, tmp_path, rel, declared):
    path = REAL / rel
    if not path.is_file():
        pytest.skip("the shared real checkpoints are absent")
    import onnx

    model = onnx.load(str(path))
    graph_inputs = {i.name: tuple(d.dim_value for d in i.type.tensor_type.shape.dim) for i in model.graph.input}
    doc = json.loads(_ok(invoke("inspect", path, "--json")).stdout)
    module = doc["modules"][0]
    x = np.random.default_rng(0).standard_normal((1, 4, module["model"]["input_size"]
                                                  if "model" in module else module["input_size"])).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    _ok(invoke("export-state", path, tmp_path / "x.npy", "--module", module["name"], "-o", tmp_path / "s.safetensors",
               "--quiet"))
    snap = load_file(tmp_path / "s.safetensors")
    assert {k: v.shape for k, v in snap.items()} == declared
    assert all(graph_inputs[k] == v for k, v in declared.items())
    # and it reads back: show-state, and a seeded run
    _ok(invoke("show-state", tmp_path / "s.safetensors", "--json"))
    _ok(invoke("run", path, tmp_path / "x.npy", "--module", module["name"], "--initial-state",
               tmp_path / "s.safetensors", "--json"))


@pytest.mark.parametrize("direction", ["forward", "bidirectional"])
def test_layout1_node_states_are_batch_major(ort, invoke, tmp_path, direction):
    """layout=1: the graph takes initial_h/initial_c as [B, D, H]; the exported feed is that. onnxruntime runs no
    layout-1 LSTM, so the oracle is the same node with layout 0, its inputs and outputs transposed as ONNX's
    layout attribute defines."""
    import onnx

    d = 2 if direction == "bidirectional" else 1
    w = weights(I, H, d=d, seed=9)
    node = lstm_node(inputs=("X", "W", "R", "B", "", "H0", "C0"), hidden_size=H, direction=direction, layout=1)
    path = save_model(one_node_model(node, w, i=I, h=H, d=d, states=True, layout=1), tmp_path / "l1.onnx")
    node0 = lstm_node(inputs=("X", "W", "R", "B", "", "H0", "C0"), hidden_size=H, direction=direction)
    model0 = one_node_model(node0, w, i=I, h=H, d=d, states=True)
    x = _x(6, seed=3)

    def oracle(xb, h0_bdh, c0_bdh):  # layout-1 terms in, layout-1 terms out
        got = ort_run(ort, model0, {"X": np.ascontiguousarray(xb.transpose(1, 0, 2)),
                                    "H0": np.ascontiguousarray(h0_bdh.transpose(1, 0, 2)),
                                    "C0": np.ascontiguousarray(c0_bdh.transpose(1, 0, 2))})
        return {k: got[k].transpose(1, 0, 2) for k in ("Y_h", "Y_c")}

    z = np.zeros((B, d, H), np.float32)
    whole = oracle(x, z, z)
    np.save(tmp_path / "a.npy", x[:, :4])
    doc = json.loads(_ok(invoke("run", path, tmp_path / "a.npy", "--json")).stdout)
    assert doc["shapes"]["onnx"]["nodes"][0]["Y"] == [B, 4, d, H] and all(c["ok"] for c in doc["checks"])
    assert doc["checks"][0]["output_position"] == "Y[b, 3, 0, :]"
    _ok(invoke("export-state", path, tmp_path / "a.npy", "-o", tmp_path / "s.safetensors", "--quiet"))
    snap = load_file(tmp_path / "s.safetensors")
    first = oracle(x[:, :4], z, z)
    assert snap["H0"].shape == (B, d, H)
    np.testing.assert_allclose(snap["H0"], first["Y_h"], atol=TOL)
    np.testing.assert_allclose(snap["C0"], first["Y_c"], atol=TOL)
    rest = oracle(x[:, 4:], snap["H0"], snap["C0"])
    np.testing.assert_allclose(rest["Y_h"][:, 0], whole["Y_h"][:, 0], atol=TOL)
