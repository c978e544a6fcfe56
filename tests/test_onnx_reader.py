"""The ONNX reader (lstmscope.readers.onnx) against independent truth.

Truth: ``torch.onnx.export`` of an nn.LSTM must give back the nn.LSTM's own state_dict, exactly (the round
trip fixes the gate order and the bias split); onnxruntime runs every ONNX graph built here (``onnx.helper``
nodes with each attribute) and its ``Y_h``/``Y_c`` must equal what ``lstmscope export-state`` writes, to 1e-5;
the listings are checked against the attributes the tests wrote. onnxruntime is imported once per session.
"""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path

import importlib
import importlib.util

import numpy as np
import pytest

from helpers import assert_one_error_line
from lstmscope.readers import read_checkpoint
from lstmscope.sniff import ONNX, sniff

if importlib.util.find_spec("onnx") is None:
    pytest.skip("the onnx package is not installed (pip install -e '.[dev]')", allow_module_level=True)


class _Lazy:
    """``onnx`` and its parts, imported when a test first uses them, not when pytest collects this file:
    ``import onnx`` loads ml_dtypes, which gives numpy a bfloat16 dtype and so changes how the tests that
    run before these (alphabetically) read bfloat16 safetensors files."""

    def __init__(self, module: str, attr: str | None = None):
        self._module, self._attr = module, attr

    def __getattr__(self, name: str):
        if name.startswith("_") or name[:1].islower() and name.startswith(("pytest", "compat")):
            raise AttributeError(name)  # pytest's collection probes module globals for markers and fixtures
        obj = importlib.import_module(self._module)
        return getattr(getattr(obj, self._attr) if self._attr else obj, name)


onnx = _Lazy("onnx")
helper = _Lazy("onnx.helper")
numpy_helper = _Lazy("onnx.numpy_helper")
TensorProto = _Lazy("onnx", "TensorProto")

TOL = 1e-5
OPSET = 14


# --- shared helpers (test_onnx_real.py and test_onnx_fuzz.py import these) ----------------------------------

@pytest.fixture(scope="session")
def ort():
    """onnxruntime, imported once per test session."""
    return pytest.importorskip("onnxruntime")


def ort_run(ort, model, feeds: dict) -> dict:
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.intra_op_num_threads = 1
    data = model if isinstance(model, bytes) else model.SerializeToString()
    sess = ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(None, feeds)))


def lstm_node(name="lstm", inputs=("X", "W", "R", "B"), outputs=("Y", "Y_h", "Y_c"), **attrs):
    return helper.make_node("LSTM", list(inputs), list(outputs), name=name, **attrs)


def weights(i: int, h: int, d: int = 1, seed: int = 0, bias: bool = True, peephole: bool = False,
            scale: float = 0.5) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out = {"W": rng.standard_normal((d, 4 * h, i)), "R": rng.standard_normal((d, 4 * h, h))}
    if bias:
        out["B"] = rng.standard_normal((d, 8 * h))
    if peephole:
        out["P"] = rng.standard_normal((d, 3 * h))
    return {k: (v * scale).astype(np.float32) for k, v in out.items()}


def one_node_model(node, w: dict[str, np.ndarray], *, i: int, h: int, d: int = 1, lengths: bool = False,
                   states: bool = False, layout: int = 0, opset: int = OPSET):
    """A model of one LSTM node: X (and sequence_lens, initial_h, initial_c) as graph inputs, weights as
    initializers, Y, Y_h and Y_c as outputs."""
    x_shape = ["T", "B", i] if layout == 0 else ["B", "T", i]
    inputs = [helper.make_tensor_value_info("X", TensorProto.FLOAT, x_shape)]
    if lengths:
        inputs.append(helper.make_tensor_value_info("L", TensorProto.INT32, ["B"]))
    if states:
        s = [d, "B", h] if layout == 0 else ["B", d, h]
        inputs += [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n in ("H0", "C0")]
    outs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in node.output if n]
    inits = [numpy_helper.from_array(v, k) for k, v in w.items()]
    graph = helper.make_graph([node], "g", inputs, outs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)


def save_model(model, path: Path) -> Path:
    path.write_bytes(model.SerializeToString())
    return path


def export_states(invoke, path: Path, x_bt: np.ndarray, tmp_path: Path, module: str | None = None,
                  lengths: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """h_n, c_n (layers * directions, batch, hidden) as ``lstmscope export-state`` writes them; also checks
    that ``run --json`` succeeds on the same input with an empty stderr."""
    from safetensors.numpy import load_file

    x_path = tmp_path / "x.npy"
    np.save(x_path, x_bt)
    extra = ["--module", module] if module is not None else []
    if lengths is not None:
        np.save(tmp_path / "len.npy", lengths.astype(np.int64))
        extra += ["--lengths", tmp_path / "len.npy"]
    out = tmp_path / "state.safetensors"
    r = invoke("export-state", path, x_path, "-o", out, "--force", "--quiet", "--layout", "torch", *extra)
    assert r.exit_code == 0, r.stderr
    run = invoke("run", path, x_path, "--json", *extra)
    assert run.exit_code == 0, run.stderr
    doc = json.loads(run.stdout)
    assert doc["checkpoint"]["format"] == ONNX and doc["model"]["framework"] == "onnx"
    state = load_file(str(out))
    return state["h_n"], state["c_n"]


def export_torch(module, x, path: Path, dynamo: bool = False) -> Path:
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (x,), str(path), dynamo=dynamo, input_names=["x"],
                          output_names=["y", "h", "c"], opset_version=OPSET if not dynamo else None)
    return path


# --- the round trip through torch.onnx.export -------------------------------------------------------------

TORCH_CASES = {
    "1layer": {}, "2layers": {"num_layers": 2}, "bidirectional": {"bidirectional": True},
    "bi_2layers": {"num_layers": 2, "bidirectional": True}, "batch_first": {"batch_first": True, "num_layers": 2},
    "no_bias": {"bias": False, "num_layers": 2},
}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(path, nn.LSTM, x as exported) for every TORCH_CASES entry."""
    import torch

    d = tmp_path_factory.mktemp("onnx_export")
    out = {}
    for k, (case, kw) in enumerate(TORCH_CASES.items()):
        torch.manual_seed(k)
        lstm = torch.nn.LSTM(3, 5, **kw).eval()
        x = torch.randn(2, 4, 3) if kw.get("batch_first") else torch.randn(4, 2, 3)
        out[case] = (export_torch(lstm, x, d / f"{case}.onnx"), lstm, x)
    return out


@pytest.mark.parametrize("case", list(TORCH_CASES))
def test_round_trip_gives_back_the_state_dict(exported, case):
    path, lstm, _ = exported[case]
    ck = read_checkpoint(path)
    assert ck.format == ONNX
    assert len(ck.modules) == 1
    m = ck.modules[0]
    assert (m.spec.num_layers, m.spec.bidirectional, m.spec.bias) == (lstm.num_layers, lstm.bidirectional, lstm.bias)
    assert (m.spec.input_size, m.spec.hidden_size, m.spec.framework, m.spec.go_backwards) == (3, 5, "onnx", False)
    assert m.spec.standard_cell
    params = ck.parameters(m)
    sd = lstm.state_dict()
    assert set(params) == set(sd)
    for k, v in sd.items():
        assert np.array_equal(params[k], v.numpy()), k
    if lstm.num_layers > 1:  # each node of the stack runs alone too
        assert [s.spec.num_layers for s in ck.single_layers] == [1] * lstm.num_layers
        assert m.name == "+".join(s.name for s in ck.single_layers) and m.spec.names == tuple(
            s.name for s in ck.single_layers)


@pytest.mark.parametrize("case", list(TORCH_CASES))
def test_cli_on_exported_files_equals_onnxruntime(invoke, ort, exported, tmp_path, case):
    path, lstm, x = exported[case]
    doc = invoke("inspect", path, "--json")
    assert doc.exit_code == 0 and doc.stderr == ""
    listed = json.loads(doc.stdout)
    assert listed["checkpoint"]["format"] == "onnx"
    assert [m["num_layers"] for m in listed["modules"]] == [lstm.num_layers]
    want = ort_run(ort, path.read_bytes(), {"x": x.numpy()})
    x_bt = x.numpy() if lstm.batch_first else x.numpy().transpose(1, 0, 2)
    h, c = export_states(invoke, path, np.ascontiguousarray(x_bt), tmp_path)
    np.testing.assert_allclose(h, want["h"], rtol=0, atol=TOL)
    np.testing.assert_allclose(c, want["c"], rtol=0, atol=TOL)


def test_default_exporter_round_trip(tmp_path):
    """torch's default (torch.export-based) exporter needs onnxscript; where it runs, the round trip holds."""
    import torch

    pytest.importorskip("onnxscript", reason="torch.onnx.export(dynamo=True) needs onnxscript, not installed")
    torch.manual_seed(3)
    lstm = torch.nn.LSTM(3, 5, num_layers=2, bidirectional=True).eval()
    path = export_torch(lstm, torch.randn(4, 2, 3), tmp_path / "dynamo.onnx", dynamo=True)
    ck = read_checkpoint(path)
    params = ck.parameters(ck.modules[0])
    for k, v in lstm.state_dict().items():
        assert np.array_equal(params[k], v.numpy()), k


def test_proj_size_is_refused_by_the_exporter(tmp_path):
    """torch.onnx.export refuses nn.LSTM(proj_size>0): ONNX's LSTM has no projection, so such a model
    never reaches an ONNX file as an LSTM node."""
    import torch

    with pytest.raises(Exception, match="projections"):
        export_torch(torch.nn.LSTM(3, 5, proj_size=2), torch.randn(4, 2, 3), tmp_path / "proj.onnx")


# --- nodes built with onnx.helper: every attribute, against onnxruntime -------------------------------------

def _act(name, alpha=None, beta=None):
    return (name, alpha, beta)


NODE_CASES = {
    # id: (attributes, d, peephole, bias, listed gate, cell, hidden activation names)
    "forward": ({}, 1, False, True, ("sigmoid", "tanh", None)),
    "reverse": ({"direction": "reverse"}, 1, False, True, ("sigmoid", "tanh", None)),
    "bidirectional": ({"direction": "bidirectional"}, 2, False, True, ("sigmoid", "tanh", None)),
    "no_bias": ({}, 1, False, False, ("sigmoid", "tanh", None)),
    "peepholes": ({}, 1, True, True, ("sigmoid", "tanh", None)),
    "peepholes_bidirectional": ({"direction": "bidirectional"}, 2, True, True, ("sigmoid", "tanh", None)),
    "clip": ({"clip": 0.7}, 1, False, True, ("sigmoid", "tanh", None)),
    "input_forget": ({"input_forget": 1}, 1, False, True, ("sigmoid", "tanh", None)),
    "layout1": ({"layout": 1}, 1, False, True, ("sigmoid", "tanh", None)),
    "layout1_bidirectional": ({"layout": 1, "direction": "bidirectional"}, 2, False, True, ("sigmoid", "tanh", None)),
    "hardsigmoid_elu_softsign": ({"activations": ["HardSigmoid", "Elu", "Softsign"], "activation_alpha": [0.3, 0.9],
                                  "activation_beta": [0.4]}, 1, False, True, ("hard_sigmoid", "elu", "softsign")),
    "hardsigmoid_defaults": ({"activations": ["HardSigmoid", "Tanh", "Relu"]}, 1, False, True,
                             ("hard_sigmoid", "tanh", "relu")),
    "leaky_scaledtanh_affine": ({"activations": ["Sigmoid", "ScaledTanh", "Affine"], "activation_alpha": [1.5, 0.8],
                                 "activation_beta": [0.6, 0.1]}, 1, False, True, ("sigmoid", "scaled_tanh", "affine")),
    "leakyrelu_softplus": ({"activations": ["Sigmoid", "LeakyRelu", "Softplus"], "activation_alpha": [0.05]}, 1,
                           False, True, ("sigmoid", "leaky_relu", "softplus")),
    "thresholded_relu": ({"activations": ["Sigmoid", "ThresholdedRelu", "Tanh"], "activation_alpha": [0.2]}, 1,
                         False, True, ("sigmoid", "thresholded_relu", "tanh")),
    "same_activations_both_directions": ({"direction": "bidirectional", "activations": ["HardSigmoid", "Tanh", "Relu"] * 2},
                                         2, False, True, ("hard_sigmoid", "tanh", "relu")),
    "everything": ({"direction": "bidirectional", "clip": 2.0, "input_forget": 1, "layout": 1,
                    "activations": ["HardSigmoid", "Tanh", "Softsign"] * 2}, 2, True, True,
                   ("hard_sigmoid", "tanh", "softsign")),
}
I, H, T, B = 3, 4, 5, 3


def _built(case: str, tmp_path: Path, lengths: bool = False, states: bool = False):
    attrs, d, peephole, bias, _ = NODE_CASES[case]
    w = weights(I, H, d, seed=len(case), bias=bias, peephole=peephole)
    inputs = ["X", "W", "R", "B" if bias else "", "L" if lengths else "", "H0" if states else "",
              "C0" if states else "", "P" if peephole else ""]
    while inputs[-1] == "":
        inputs.pop()
    node = lstm_node("cell", inputs, hidden_size=H, **attrs)
    model = one_node_model(node, w, i=I, h=H, d=d, lengths=lengths, states=states, layout=attrs.get("layout", 0))
    return save_model(model, tmp_path / f"{case}.onnx"), w, attrs.get("layout", 0), d


@pytest.mark.parametrize("case", list(NODE_CASES))
def test_built_node_listing(tmp_path, case):
    path, w, layout, d = _built(case, tmp_path)
    attrs, _, peephole, bias, (gate, cell, hidden) = NODE_CASES[case]
    (m,) = read_checkpoint(path).modules
    s = m.spec
    assert m.name == "cell" and s.names == ("cell",)
    assert (s.input_size, s.hidden_size, s.num_layers, s.proj_size) == (I, H, 1, 0)
    assert s.bidirectional == (d == 2) and s.go_backwards == (attrs.get("direction") == "reverse")
    clip = None if "clip" not in attrs else float(np.float32(attrs["clip"]))  # ONNX keeps float32 attributes
    assert (s.bias, s.peephole, s.clip, s.input_forget) == (bias, peephole, clip, bool(attrs.get("input_forget")))
    assert (s.gate_activation.name, s.cell_activation.name) == (gate, cell)
    assert (s.hidden_activation.name if s.hidden_activation else None) == hidden
    if case == "hardsigmoid_elu_softsign":
        assert (s.gate_activation.alpha, s.gate_activation.beta, s.cell_activation.alpha) == pytest.approx((0.3, 0.4, 0.9))
    if case == "hardsigmoid_defaults":
        assert (s.gate_activation.alpha, s.gate_activation.beta) == pytest.approx((0.2, 0.5))
    if case == "leaky_scaledtanh_affine":
        assert (s.cell_activation.alpha, s.cell_activation.beta) == pytest.approx((1.5, 0.6))
        assert (s.hidden_activation.alpha, s.hidden_activation.beta) == pytest.approx((0.8, 0.1))
    if layout == 1:
        assert any("layout 1" in n for n in m.notes)
    assert set(read_checkpoint(path).parameters(m)) == set(s.expected_shapes())


def _time_major_twin(path: Path) -> bytes:
    """The same model with layout 0: onnxruntime refuses layout 1 ("batchwise recurrent operations"), and
    ONNX defines layout 1 as layout 0 with X, Y, Y_h, Y_c (and the initial states) batch-first."""
    model = onnx.load(str(path))
    node = next(n for n in model.graph.node if n.op_type == "LSTM")
    kept = [a for a in node.attribute if a.name != "layout"]
    del node.attribute[:]
    node.attribute.extend(kept)
    return model.SerializeToString()


def _ort_states(ort, path, x_bt, layout, lengths=None):
    """onnxruntime's Y_h, Y_c as (D, B, H)."""
    feeds = {"X": np.ascontiguousarray(x_bt.transpose(1, 0, 2))}
    if lengths is not None:
        feeds["L"] = lengths.astype(np.int32)
    got = ort_run(ort, _time_major_twin(path) if layout == 1 else path.read_bytes(), feeds)
    return got["Y_h"], got["Y_c"]


def test_layout_1_as_onnx_reference_runs_it(invoke, tmp_path):
    """onnx.reference runs layout 1 (with nn.LSTM's cell; it ignores activations, clip and sequence_lens)."""
    from onnx.reference import ReferenceEvaluator

    for case in ("layout1", "layout1_bidirectional"):
        path, _, _, _ = _built(case, tmp_path)
        x = np.random.default_rng(5).standard_normal((B, T, I)).astype(np.float32)
        y_h = ReferenceEvaluator(str(path)).run(["Y_h"], {"X": x})[0]  # (B, D, H)
        h, _ = export_states(invoke, path, x, tmp_path)
        np.testing.assert_allclose(h, y_h.transpose(1, 0, 2), rtol=0, atol=TOL)


@pytest.mark.parametrize("case", list(NODE_CASES))
def test_built_node_runs_like_onnxruntime(invoke, ort, tmp_path, case):
    path, _, layout, _ = _built(case, tmp_path)
    x = np.random.default_rng(7).standard_normal((B, T, I)).astype(np.float32)
    want_h, want_c = _ort_states(ort, path, x, layout)
    h, c = export_states(invoke, path, x, tmp_path)
    np.testing.assert_allclose(h, want_h, rtol=0, atol=TOL)
    np.testing.assert_allclose(c, want_c, rtol=0, atol=TOL)


@pytest.mark.parametrize("case", ["forward", "reverse", "bidirectional", "peepholes", "everything"])
def test_sequence_lens_run_like_onnxruntime(invoke, ort, tmp_path, case):
    path, _, layout, _ = _built(case, tmp_path, lengths=True)
    (m,) = read_checkpoint(path).modules
    assert any("sequence_lens" in n for n in m.notes)
    x = np.random.default_rng(8).standard_normal((B, T, I)).astype(np.float32)
    lengths = np.array([T, 2, 4])
    want_h, want_c = _ort_states(ort, path, x, layout, lengths)
    h, c = export_states(invoke, path, x, tmp_path, lengths=lengths)
    np.testing.assert_allclose(h, want_h, rtol=0, atol=TOL)
    np.testing.assert_allclose(c, want_c, rtol=0, atol=TOL)


def test_reverse_y_is_in_input_order(ort, tmp_path):
    """What the reverse note says: ONNX's Y_h is Y[0] for a reverse node (Y in input order)."""
    path, _, _, _ = _built("reverse", tmp_path)
    x = np.random.default_rng(9).standard_normal((T, B, I)).astype(np.float32)
    got = ort_run(ort, path.read_bytes(), {"X": x})
    np.testing.assert_array_equal(got["Y"][0], got["Y_h"])
    (m,) = read_checkpoint(path).modules
    assert any("input order" in n for n in m.notes)


def test_directions_with_different_activations_are_listed_and_refused(invoke, tmp_path):
    w = weights(I, H, 2)
    node = lstm_node("mixed", hidden_size=H, direction="bidirectional",
                     activations=["Sigmoid", "Tanh", "Tanh", "HardSigmoid", "Tanh", "Tanh"])
    path = save_model(one_node_model(node, w, i=I, h=H, d=2), tmp_path / "mixed.onnx")
    doc = invoke("inspect", path, "--json")
    assert doc.exit_code == 0
    (m,) = json.loads(doc.stdout)["modules"]
    assert any("different activations" in n for n in m["notes"])
    x = tmp_path / "x.npy"
    np.save(x, np.zeros((1, 2, I), np.float32))
    assert_one_error_line(invoke("run", path, x), path, "different activations")


# --- where weights come from -----------------------------------------------------------------------------

def _reference_params(ort, invoke, tmp_path, w, name="ref"):
    """lstmscope's parameters of the plain one-node model with the same weights (as initializers)."""
    path = save_model(one_node_model(lstm_node("plain", hidden_size=H), w, i=I, h=H), tmp_path / f"{name}.onnx")
    ck = read_checkpoint(path)
    return path, ck.parameters(ck.modules[0])


def test_weights_from_constant_nodes_and_folded_subgraphs(invoke, ort, tmp_path):
    w = weights(I, H, seed=11)
    plain, want = _reference_params(ort, invoke, tmp_path, w)
    big = np.concatenate([w["R"][0], np.ones((2, H), np.float32)])  # (4H + 2, H): R is its first 4H rows
    nodes = [
        helper.make_node("Constant", [], ["B"], name="const_b", value=numpy_helper.from_array(w["B"], "b")),
        # W: stored transposed and without its direction axis
        helper.make_node("Transpose", ["w_t"], ["w_2d"], name="tr", perm=[1, 0]),
        helper.make_node("Unsqueeze", ["w_2d", "axis0"], ["W"], name="unsq"),
        # R: two slices of a larger initializer, concatenated, then given its direction axis
        helper.make_node("Slice", ["big", "s0", "e0", "ax0"], ["r_a"], name="slice_a"),
        helper.make_node("Slice", ["big", "e0", "e1", "ax0"], ["r_b"], name="slice_b"),
        helper.make_node("Concat", ["r_a", "r_b"], ["r_2d"], name="cat", axis=0),
        helper.make_node("Unsqueeze", ["r_2d", "axis0"], ["R"], name="unsq_r"),
        lstm_node("lstm", ["X", "W", "R", "B"], hidden_size=H),
    ]
    inits = {"w_t": np.ascontiguousarray(w["W"][0].T), "big": big, "axis0": np.array([0]),
             "s0": np.array([0]), "e0": np.array([2 * H]), "e1": np.array([4 * H]), "ax0": np.array([0])}
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["T", "B", I])],
                              [helper.make_tensor_value_info("Y_h", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(v, k) for k, v in inits.items()])
    path = save_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=8),
                      tmp_path / "folded.onnx")
    ck = read_checkpoint(path)
    (m,) = ck.modules
    got = ck.parameters(m)
    for k, v in want.items():
        assert np.array_equal(got[k], v), k
    assert "Constant node 'const_b'" in m.source["bias_ih_l0"]
    assert "folded" in m.source["weight_ih_l0"] and "'w_t'" in m.source["weight_ih_l0"]
    assert "Concat" in m.source["weight_hh_l0"] and "'big'" in m.source["weight_hh_l0"]
    x = np.random.default_rng(2).standard_normal((B, T, I)).astype(np.float32)
    h, _ = export_states(invoke, path, x, tmp_path)
    want_h = ort_run(ort, path.read_bytes(), {"X": np.ascontiguousarray(x.transpose(1, 0, 2))})["Y_h"]
    np.testing.assert_allclose(h, want_h, rtol=0, atol=TOL)


def test_weights_as_graph_inputs_are_listed_and_refused_on_run(invoke, tmp_path):
    node = lstm_node("fed", ["X", "W", "R"], hidden_size=H)
    graph = helper.make_graph([node], "g", [
        helper.make_tensor_value_info("X", TensorProto.FLOAT, ["T", "B", I]),
        helper.make_tensor_value_info("W", TensorProto.FLOAT, [1, 4 * H, I]),
        helper.make_tensor_value_info("R", TensorProto.FLOAT, [1, 4 * H, H])],
        [helper.make_tensor_value_info("Y_h", TensorProto.FLOAT, None)])
    path = save_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)]), tmp_path / "fed.onnx")
    doc = invoke("inspect", path, "--json")
    assert doc.exit_code == 0, doc.stderr
    (m,) = json.loads(doc.stdout)["modules"]
    assert (m["input_size"], m["hidden_size"], m["bias"]) == (I, H, False)
    assert any("graph inputs" in n for n in m["notes"])
    x = tmp_path / "x.npy"
    np.save(x, np.zeros((1, 2, I), np.float32))
    assert_one_error_line(invoke("run", path, x), path, "graph inputs", "fed at run time")


# --- subgraphs ----------------------------------------------------------------------------------------------

def _sub_lstm(name, w_prefix, out_prefix):
    return lstm_node(name, ["X", f"{w_prefix}W", f"{w_prefix}R", f"{w_prefix}B"],
                     [f"{out_prefix}Y", f"{out_prefix}Y_h", f"{out_prefix}Y_c"], hidden_size=H)


def _nested_model(w_a, w_b, w_c):
    """An If whose then-branch holds an LSTM on the outer graph's initializers and whose else-branch nests a
    Loop whose body holds an LSTM on the branch's own initializers; and an LSTM in the main graph."""
    out = lambda n: helper.make_tensor_value_info(n, TensorProto.FLOAT, None)  # noqa: E731
    then_g = helper.make_graph([_sub_lstm("lstm_then", "a_", "t_")], "then", [], [out("t_Y_h")])
    body = helper.make_graph(
        [_sub_lstm("lstm_body", "c_", "l_"), helper.make_node("Identity", ["cond_in"], ["cond_out"])], "body",
        [helper.make_tensor_value_info("iter", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []), out("l_Y_h")],
        [numpy_helper.from_array(v, f"c_{k}") for k, v in w_c.items()])
    else_g = helper.make_graph([helper.make_node("Loop", ["trip", ""], ["loop_out"], name="loop", body=body)],
                               "else", [], [out("loop_out")],
                               [numpy_helper.from_array(np.array(1, np.int64), "trip")])
    nodes = [helper.make_node("If", ["flag"], ["if_out"], name="branch", then_branch=then_g, else_branch=else_g),
             _sub_lstm("lstm_main", "b_", "m_")]
    inits = [numpy_helper.from_array(v, f"a_{k}") for k, v in w_a.items()]
    inits += [numpy_helper.from_array(v, f"b_{k}") for k, v in w_b.items()]
    graph = helper.make_graph(nodes, "main", [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["T", "B", I]),
                                              helper.make_tensor_value_info("flag", TensorProto.BOOL, [])],
                              [out("if_out"), out("m_Y_h")], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=8)


def test_lstm_nodes_inside_if_and_loop_subgraphs(invoke, ort, tmp_path):
    w_a, w_b, w_c = (weights(I, H, seed=s) for s in (21, 22, 23))
    path = save_model(_nested_model(w_a, w_b, w_c), tmp_path / "nested.onnx")
    ck = read_checkpoint(path)
    names = sorted(m.name for m in ck.modules)
    assert names == ["branch/else_branch/loop/body/lstm_body", "branch/then_branch/lstm_then", "lstm_main"]
    x = np.random.default_rng(3).standard_normal((B, T, I)).astype(np.float32)
    x_tb = np.ascontiguousarray(x.transpose(1, 0, 2))
    then_h = ort_run(ort, path.read_bytes(), {"X": x_tb, "flag": np.array(True)})["if_out"]
    else_h = ort_run(ort, path.read_bytes(), {"X": x_tb, "flag": np.array(False)})["if_out"]
    for name, want in (("branch/then_branch/lstm_then", then_h), ("branch/else_branch/loop/body/lstm_body", else_h)):
        h, _ = export_states(invoke, path, x, tmp_path, module=name)
        np.testing.assert_allclose(h, want.reshape(h.shape), rtol=0, atol=TOL)


# --- bad input -------------------------------------------------------------------------------------------------

def test_no_lstm_names_the_recurrent_ops(invoke, tmp_path):
    h = 3
    gru = helper.make_node("GRU", ["X", "W", "R"], ["Y", "Y_h"], name="my_gru", hidden_size=h)
    w = {"W": np.zeros((1, 3 * h, I), np.float32), "R": np.zeros((1, 3 * h, h), np.float32)}
    path = save_model(one_node_model(gru, w, i=I, h=h), tmp_path / "gru.onnx")
    assert_one_error_line(invoke("inspect", path), path, "no LSTM", "GRU node 'my_gru'")
    relu = helper.make_node("Relu", ["X"], ["Y"], name="r")
    path2 = save_model(one_node_model(relu, {}, i=I, h=h), tmp_path / "relu.onnx")
    assert_one_error_line(invoke("inspect", path2), path2, "no LSTM node", "Relu")


def test_opset_1_lstm_is_refused(invoke, tmp_path):
    model = one_node_model(lstm_node("old", hidden_size=H), weights(I, H), i=I, h=H, opset=6)
    path = save_model(model, tmp_path / "old.onnx")
    assert_one_error_line(invoke("inspect", path), path, "LSTM-1", "opset 6")


def test_truncated_protobuf_is_one_error_line(invoke, exported, tmp_path):
    data = exported["2layers"][0].read_bytes()
    for cut in (len(data) // 2, len(data) - 3):
        path = tmp_path / f"cut{cut}.onnx"
        path.write_bytes(data[:cut])
        assert sniff(path).format == ONNX
        assert_one_error_line(invoke("inspect", path), path)


def test_sniffed_by_content_not_by_name(exported, tmp_path):
    src = exported["1layer"][0]
    renamed = tmp_path / "weights.bin"
    renamed.write_bytes(src.read_bytes())
    assert sniff(renamed).format == ONNX
    assert read_checkpoint(renamed).modules[0].spec.hidden_size == 5
    fake = tmp_path / "fake.onnx"
    np.save(tmp_path / "a.npy", np.zeros(3))
    fake.write_bytes((tmp_path / "a.npy").read_bytes())
    assert sniff(fake).format != ONNX


def test_inspect_onnx_without_importing_torch(tmp_path, exported):
    from test_inspect_torch_free import _RUN_MANY, _torchless_env

    nested = save_model(_nested_model(*(weights(I, H, seed=s) for s in (1, 2, 3))), tmp_path / "nested.onnx")
    argvs = [["inspect", str(f), *flag] for f in (exported["bi_2layers"][0], nested) for flag in (["--json"], [])]
    proc = subprocess.run([sys.executable, "-c", _RUN_MANY, json.dumps(argvs)], capture_output=True, text=True,
                          env=_torchless_env(tmp_path), timeout=120)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["torch"] is False
    for argv, (code, out, err) in zip(argvs, doc["runs"]):
        assert code == 0 and err == "", (argv, err)
