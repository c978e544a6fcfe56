"""Real ONNX files from ../shared/real_checkpoints (LSTMSCOPE_REAL_CHECKPOINTS), read in place, never copied.

Truth: the manifest's description of each LSTM node (hidden size, direction, activations), and onnxruntime
running each node with its weights, extracted into a one-node model (X, sequence_lens, initial_h and
initial_c as graph inputs), on a fixed random input; ``lstmscope export-state`` must give its Y_h and Y_c.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import real_checkpoints_dir, real_manifest

from test_onnx_reader import TOL, TensorProto, export_states, helper, numpy_helper, onnx, ort, ort_run  # noqa: F401

ONNX_FILES = [e for e in real_manifest() if e["framework"] == "onnx"]
if not ONNX_FILES:
    pytest.skip("no real ONNX files (set LSTMSCOPE_REAL_CHECKPOINTS or add ../shared/real_checkpoints)",
                allow_module_level=True)
NODES = [(e, n) for e in ONNX_FILES for n in e["lstm_nodes_or_layers"]]
WEIGHTS = ("W", "R", "B", "P")


def _listed_name(node: dict) -> str:
    """The name lstmscope gives a node: its name, or ``LSTM@<index>`` when it has none (main graph)."""
    return node["node_name"] or f"LSTM@{node['node_index']}"


def _in_file(node: dict) -> bool:
    return all(node["inputs"].get(k, {}).get("source") in ("initializer", "absent", None) for k in WEIGHTS)


@pytest.fixture(scope="module")
def listings(invoke_module):
    out = {}
    for e in ONNX_FILES:
        r = invoke_module("inspect", real_checkpoints_dir() / e["file"], "--json")
        assert r.exit_code == 0, (e["file"], r.stderr)
        assert r.stderr == ""
        doc = json.loads(r.stdout)
        assert doc["checkpoint"]["sha256"] == e["sha256"] and doc["checkpoint"]["format"] == "onnx"
        out[e["file"]] = {m["name"]: m for m in doc["modules"] + doc["single_layers"]}
    return out


@pytest.fixture(scope="module")
def invoke_module():
    from typer.testing import CliRunner

    from lstmscope.cli import app

    runner = CliRunner()
    return lambda *args: runner.invoke(app, [str(a) for a in args])


@pytest.mark.parametrize("entry,node", NODES, ids=lambda v: v["file"] if "file" in v else _listed_name(v))
def test_inspect_lists_the_manifest_nodes(listings, entry, node):
    listed = listings[entry["file"]]
    name = _listed_name(node)
    assert name in listed, (name, sorted(listed))
    m = listed[name]
    attrs = node["attributes"]
    assert m["hidden_size"] == attrs["hidden_size"]
    direction = attrs.get("direction", "forward")
    assert (m["bidirectional"], m["go_backwards"]) == (direction == "bidirectional", direction == "reverse")
    acts = attrs.get("activations", ["Sigmoid", "Tanh", "Tanh"])
    assert m["gate_activation"]["name"] == acts[0].lower() and m["cell_activation"]["name"] == acts[1].lower()
    hidden = m.get("hidden_activation")  # written only when set
    assert hidden is None if acts[2] == acts[1] else hidden["name"] == acts[2].lower()
    assert m.get("peephole", False) == (node["inputs"].get("P", {}).get("source", "absent") != "absent")
    w = node["inputs"]["W"].get("shape")
    if w and isinstance(w[2], int):
        assert m["input_size"] == w[2]
    if not _in_file(node):
        assert any("run refused" in n for n in m["notes"]), m["notes"]


def _one_node(path, node: dict):
    """The node with its weights (from the file's initializers) in a model of its own."""
    model = onnx.load(str(path), load_external_data=False)
    proto = next(n for i, n in enumerate(model.graph.node) if n.op_type == "LSTM" and i == node["node_index"])
    inits = {t.name: t for t in model.graph.initializer}
    names = list(proto.input) + [""] * (8 - len(proto.input))
    direction = node["attributes"].get("direction", "forward")
    d, h = (2 if direction == "bidirectional" else 1), node["attributes"]["hidden_size"]
    i = int(numpy_helper.to_array(inits[names[1]]).shape[2])
    feeds_inputs = [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["T", "B", i]),
                    helper.make_tensor_value_info("L", TensorProto.INT32, ["B"]),
                    helper.make_tensor_value_info("H0", TensorProto.FLOAT, [d, "B", h]),
                    helper.make_tensor_value_info("C0", TensorProto.FLOAT, [d, "B", h])]
    weights = {k: names[j] for k, j in (("W", 1), ("R", 2), ("B", 3), ("P", 7)) if names[j]}
    new = helper.make_node("LSTM", ["X", "W", "R", "B" if "B" in weights else "", "L", "H0", "C0",
                                    "P" if "P" in weights else ""], ["Y", "Y_h", "Y_c"])
    new.attribute.extend(proto.attribute)
    tensors = []
    for k, name in weights.items():
        t = onnx.TensorProto()
        t.CopyFrom(inits[name])
        t.name = k
        tensors.append(t)
    graph = helper.make_graph([new], "one", feeds_inputs,
                              [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("Y_h", "Y_c")],
                              tensors)
    opsets = [o for o in model.opset_import if o.domain in ("", "ai.onnx")]
    return helper.make_model(graph, opset_imports=opsets, ir_version=min(model.ir_version, 8)), i, d, h


RUNNABLE = [(e, n) for e, n in NODES if _in_file(n)]


@pytest.mark.parametrize("entry,node", RUNNABLE, ids=lambda v: v["file"] if "file" in v else _listed_name(v))
def test_run_equals_onnxruntime_on_the_extracted_node(invoke, ort, tmp_path, entry, node):
    path = real_checkpoints_dir() / entry["file"]
    model, i, d, h = _one_node(path, node)
    b, t = 2, 6
    x = np.random.default_rng(0).standard_normal((b, t, i)).astype(np.float32)
    zeros = np.zeros((d, b, h), np.float32)
    want = ort_run(ort, model, {"X": np.ascontiguousarray(x.transpose(1, 0, 2)), "L": np.full(b, t, np.int32),
                                "H0": zeros, "C0": zeros})
    got_h, got_c = export_states(invoke, path, x, tmp_path, module=_listed_name(node))
    np.testing.assert_allclose(got_h, want["Y_h"], rtol=0, atol=TOL)
    np.testing.assert_allclose(got_c, want["Y_c"], rtol=0, atol=TOL)


def test_stacks_run_like_their_nodes_in_turn(invoke, ort, tmp_path):
    """A stacked module (consecutive nodes the exporter chained) equals its nodes run one after the other."""
    checked = 0
    for e in ONNX_FILES:
        nodes = [n for n in e["lstm_nodes_or_layers"] if _in_file(n)]
        path = real_checkpoints_dir() / e["file"]
        stacked = "+".join(_listed_name(n) for n in nodes)
        r = invoke("inspect", path, "--json")
        if len(nodes) < 2 or stacked not in {m["name"] for m in json.loads(r.stdout)["modules"]}:
            continue
        b, t = 2, 5
        x = np.random.default_rng(1).standard_normal((b, t, nodes[0]["inputs"]["W"]["shape"][2])).astype(np.float32)
        seq, hs, cs = np.ascontiguousarray(x.transpose(1, 0, 2)), [], []
        for n in nodes:
            model, _, d, h = _one_node(path, n)
            zeros = np.zeros((d, b, h), np.float32)
            model.graph.output.insert(0, helper.make_tensor_value_info("Y", TensorProto.FLOAT, None))
            got = ort_run(ort, model, {"X": seq, "L": np.full(b, t, np.int32), "H0": zeros, "C0": zeros})
            seq = np.ascontiguousarray(got["Y"].transpose(0, 2, 1, 3).reshape(t, b, d * h))
            hs.append(got["Y_h"])
            cs.append(got["Y_c"])
        got_h, got_c = export_states(invoke, path, x, tmp_path, module=stacked)
        np.testing.assert_allclose(got_h, np.concatenate(hs), rtol=0, atol=TOL)
        np.testing.assert_allclose(got_c, np.concatenate(cs), rtol=0, atol=TOL)
        checked += 1
    assert checked, "no stacked module among the real ONNX files"
