"""Fuzzing the ONNX reader like tests/test_fuzz.py fuzzes the others, and the hostile files the reader must
refuse: truncated and flipped protobufs, tensors that declare more than they hold, external data out of the
model's folder or missing, a cycle, thousands of nested If subgraphs.

The only acceptable outcomes are a correct load or a CheckpointError (exit 2, one ``Error:`` line naming the
file); another exception, a warning, a hang (test_fuzz's guard) or an allocation the file cannot back
(test_fuzz's memory cap) fails.
"""

from __future__ import annotations

import functools
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers import assert_one_error_line
from lstmscope.readers import read_checkpoint
from lstmscope.sniff import ONNX, sniff
from test_fuzz import memory_cap, mutated, only_clean_errors, write  # noqa: F401  (memory_cap: a fixture)
from test_onnx_reader import (I, OPSET, TensorProto, _nested_model, helper, lstm_node, numpy_helper, one_node_model,
                              onnx, weights)

H = 3
BOUND_S = 10.0  # seconds any one hostile file may take to be refused
FUZZ = settings(max_examples=max(50, settings.default.max_examples // 2), deadline=None)


@functools.cache
def _seeds() -> list[bytes]:
    w2 = weights(I, H, 2, peephole=True)
    bi = lstm_node("bi", ["X", "W", "R", "B", "", "", "", "P"], hidden_size=H, direction="bidirectional", clip=3.0,
                   activations=["HardSigmoid", "Tanh", "Relu"] * 2, activation_alpha=[0.3, 0.3],
                   activation_beta=[0.4, 0.4])
    folded = [helper.make_node("Constant", [], ["B"], value=numpy_helper.from_array(weights(I, H)["B"], "b")),
              helper.make_node("Transpose", ["w_t"], ["w2"], perm=[1, 0]),
              helper.make_node("Unsqueeze", ["w2", "ax"], ["W"]),
              lstm_node("f", ["X", "W", "R", "B"], hidden_size=H)]
    g = helper.make_graph(folded, "g", [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["T", "B", I])],
                          [helper.make_tensor_value_info("Y_h", TensorProto.FLOAT, None)],
                          [numpy_helper.from_array(np.ascontiguousarray(weights(I, H)["W"][0].T), "w_t"),
                           numpy_helper.from_array(weights(I, H)["R"], "R"), numpy_helper.from_array(np.array([0]), "ax")])
    models = [one_node_model(bi, w2, i=I, h=H, d=2),
              helper.make_model(g, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=8),
              _nested_model(*(weights(I, H, seed=s) for s in (1, 2, 3)))]
    return [m.SerializeToString() for m in models]


def _load(path: Path):
    ck = read_checkpoint(path)
    for module in ck.modules + ck.single_layers:
        params = ck.parameters(module)  # a refusal to run is a CheckpointError, which only_clean_errors takes
        expected = module.spec.expected_shapes()
        assert set(params) == set(expected), module.name
        for name, a in params.items():
            assert tuple(a.shape) == expected[name] and a.dtype.kind == "f", name
    if not ck.modules:
        ck.module(None)
    return ck


@FUZZ
@given(data=st.deferred(lambda: mutated(_seeds())))  # seeds made when the test runs (see test_onnx_reader._Lazy)
def test_fuzz_onnx_model(workdir, data):
    path = write(workdir, "model.onnx", data)
    only_clean_errors(path, lambda: _load(path))


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("onnx_fuzz")


def test_every_truncation_is_clean(workdir):
    data = _seeds()[0]
    for cut in range(1, len(data), max(1, len(data) // 200)):
        path = write(workdir, "cut.onnx", data[:cut])
        only_clean_errors(path, lambda: _load(path))


def _refused(invoke, path: Path, *fragments) -> str:
    start = time.monotonic()
    line = assert_one_error_line(invoke("inspect", path), path, *fragments)
    assert time.monotonic() - start < BOUND_S
    return line


def _model_with(tensor, tmp_path: Path, name="m.onnx") -> Path:
    node = lstm_node("l", ["X", "W", "R"], hidden_size=H)
    w = weights(I, H)
    g = helper.make_graph([node], "g", [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["T", "B", I])],
                          [helper.make_tensor_value_info("Y_h", TensorProto.FLOAT, None)],
                          [tensor, numpy_helper.from_array(w["R"], "R")])
    path = tmp_path / name
    path.write_bytes(helper.make_model(g, opset_imports=[helper.make_opsetid("", OPSET)]).SerializeToString())
    return path


def test_tensor_declaring_more_than_it_holds(invoke, tmp_path):
    t = numpy_helper.from_array(weights(I, H)["W"], "W")
    t.dims[1] = 1 << 40  # raw_data stays 48 floats
    _refused(invoke, _model_with(t, tmp_path), "declares shape", "holds")
    t2 = onnx.TensorProto()
    t2.name, t2.data_type = "W", TensorProto.FLOAT
    t2.dims.extend([1, 4 * H, I])
    t2.float_data.extend([0.0] * 5)
    _refused(invoke, _model_with(t2, tmp_path, "few.onnx"), "holds 5 values")


def _external(location: str, offset: int = 0, length: int | None = None):
    t = onnx.TensorProto()
    t.name = "W"
    t.data_type = TensorProto.FLOAT
    t.dims.extend([1, 4 * H, I])
    t.data_location = TensorProto.EXTERNAL
    entries = {"location": location, "offset": str(offset), "length": str(4 * 4 * H * I if length is None else length)}
    for k, v in entries.items():
        e = t.external_data.add()
        e.key, e.value = k, v
    return t


def test_external_data_only_from_the_models_folder(invoke, tmp_path):
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    outside = tmp_path / "secret.bin"
    outside.write_bytes(weights(I, H)["W"].tobytes())
    (model_dir / "w.bin").write_bytes(weights(I, H)["W"].tobytes())
    (model_dir / "link.bin").symlink_to(outside)
    ok = _model_with(_external("w.bin"), model_dir, "ok.onnx")
    ck = read_checkpoint(ok)
    assert ck.parameters(ck.modules[0])["weight_ih_l0"].shape == (4 * H, I)
    cases = [("../secret.bin", "'..'"), (str(outside), "absolute path"), ("link.bin", "symlink out"),
             ("gone.bin", "missing")]
    for k, (location, words) in enumerate(cases):
        _refused(invoke, _model_with(_external(location), model_dir, f"bad{k}.onnx"), words)
    _refused(invoke, _model_with(_external("w.bin", offset=8), model_dir, "past.onnx"), "past the end")
    _refused(invoke, _model_with(_external("w.bin", length=8), model_dir, "short.onnx"), "declares")


def test_a_cycle_is_refused(invoke, tmp_path):
    w = weights(I, H)
    nodes = [helper.make_node("Identity", ["w_b"], ["W"], name="a"), helper.make_node("Identity", ["W"], ["w_b"], name="b"),
             lstm_node("l", ["X", "W", "R"], hidden_size=H)]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["T", "B", I])],
                          [helper.make_tensor_value_info("Y_h", TensorProto.FLOAT, None)],
                          [numpy_helper.from_array(w["R"], "R")])
    path = tmp_path / "cycle.onnx"
    path.write_bytes(helper.make_model(g, opset_imports=[helper.make_opsetid("", OPSET)]).SerializeToString())
    _refused(invoke, path, "cycle")


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _nested_ifs(levels: int) -> bytes:
    """A ModelProto whose graph holds an If whose then_branch holds an If ... ``levels`` deep, written by hand
    (protobuf's own serializer refuses to nest that deep)."""
    lstm = onnx.helper.make_node("LSTM", ["X", "W", "R"], ["Y"], hidden_size=H).SerializeToString()
    graph = _field(1, lstm)
    for _ in range(levels):
        attr = _field(1, b"then_branch") + _varint(20 << 3) + _varint(5) + _field(6, graph)
        node = _field(1, b"c") + _field(4, b"If") + _field(5, attr)
        graph = _field(1, node)
    opset = _varint(2 << 3) + _varint(OPSET)
    return _varint(1 << 3) + _varint(8) + _field(7, graph) + _field(8, opset)


def test_nested_if_subgraphs(invoke, tmp_path):
    """A few levels: the LSTM is found and named by its path (its W and R exist nowhere: run refused)."""
    path = tmp_path / "nested8.onnx"
    path.write_bytes(_nested_ifs(8))
    (m,) = read_checkpoint(path).modules
    assert m.name == "If@0/then_branch/" * 8 + "LSTM@0"  # unnamed nodes: op@index
    assert any("run refused" in n for n in m.notes)


def test_thousands_of_nested_subgraphs(invoke, tmp_path):
    path = tmp_path / "nested3000.onnx"
    path.write_bytes(_nested_ifs(3000))
    assert sniff(path).format == ONNX
    _refused(invoke, path, "nested too deeply")


def test_random_protobuf_like_bytes(workdir):
    rng = np.random.default_rng(0)
    for k in range(200):
        data = b"\x08\x08\x3a" + bytes(rng.integers(0, 256, int(rng.integers(1, 400)), dtype=np.uint8))
        path = write(workdir, "random.onnx", data)
        only_clean_errors(path, lambda: _load(path))

