"""Fuzzing the Keras reader like tests/test_fuzz.py fuzzes the torch ones.

Small valid Keras files (a Keras 2 full model, Keras 1, a weights-only Bidirectional, a nested Keras 3 legacy
.h5, Keras 3 .keras and .weights.h5, the Windows layout) are damaged the ways files get damaged (test_fuzz's
byte mutations: bit flips, overwritten bytes and integers, truncation, insertion, deletion; zip fields and
re-zipped members for .keras) and their configs are rewritten by hypothesis (model_config and config.json:
values replaced, keys dropped, layers duplicated or swapped, classes renamed). Then
``read_checkpoint`` and ``Checkpoint.parameters`` run on every module and single layer.

The only acceptable outcomes are a correct load or a CheckpointError (exit 2) naming the file; another
exception, a warning (pyproject turns warnings into errors), a hang, or an allocation the file cannot back
fails. The HDF5 library itself crashes or loops on some damaged files; lstmscope reads HDF5 in a child process
(lstmscope.readers.keras._isolated), so those must come back as clean errors too.
"""

from __future__ import annotations

import copy
import io
import json
import tempfile
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import keras_files as kf
from lstmscope.errors import CheckpointError
from lstmscope.readers import keras as keras_reader
from lstmscope.readers import read_checkpoint
from test_fuzz import _zip_field, _zip_member, memory_cap, mutated, only_clean_errors, write  # noqa: F401 (fixture)


# --- seeds ---------------------------------------------------------------------------------------------------------

def _seeds() -> tuple[list[bytes], list[bytes]]:
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        h5 = [
            kf.keras2_model(d / "a.h5", [("masking", "masking_1"), ("lstm", "lstm_1", 3), ("dropout", "dropout_1"),
                                          ("lstm", "lstm_2", 3, {"return_sequences": False}), ("dense", "dense_1", 1)],
                            input_size=2).path,
            kf.keras1_model(d / "b.h5", input_size=2, units=2).path,
            kf.keras2_model(d / "c.h5", [("bidirectional", "bidirectional_1", "lstm_1", 2, "concat"),
                                          ("cudnn", "cu_dnnlstm_1", 2)], input_size=2, style="tf2", version="2.3.0-tf",
                            weights_only=True, split=True).path,
            kf.nested_legacy(d / "d.h5", "k3").path,
            kf.keras3_stack(d / "e.weights.h5", as_zip=False, windows=True).path,
        ]
        keras = [kf.keras3_stack(d / "f.keras", names=True, version="3.6.0").path,
                 kf.keras3_stack(d / "g.keras", windows=True).path]
        return [p.read_bytes() for p in h5], [p.read_bytes() for p in keras]


H5_SEEDS, KERAS_SEEDS = _seeds()
# An eighth of the profile's examples (conftest.py: "ci" 500, "long" 5000): every read forks a child for HDF5
# (about 20 ms in a test process that has torch and Keras loaded), and a read here is one listing and up to
# four parameter loads. No per-example deadline: an example that hangs the HDF5 library takes the child's 4 s
# timeout by design; test_fuzz's hang guard still bounds each one
FUZZ = settings(max_examples=max(25, settings.default.max_examples // 8), deadline=None)
_BASE_CONFIG = json.loads(zipfile.ZipFile(io.BytesIO(KERAS_SEEDS[0])).read("config.json"))
_BASE_WEIGHTS = zipfile.ZipFile(io.BytesIO(KERAS_SEEDS[0])).read("model.weights.h5")


@pytest.fixture(scope="module", autouse=True)
def quick_hdf5_timeout():
    """A child stuck in the HDF5 library is given up on well before test_fuzz's 10 s hang guard."""
    old = keras_reader.HDF5_TIMEOUT
    keras_reader.HDF5_TIMEOUT = 4.0
    yield
    keras_reader.HDF5_TIMEOUT = old


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("keras_fuzz")


def _load(path: Path):
    ck = read_checkpoint(path)
    for module in ck.modules + ck.single_layers:
        params = ck.parameters(module)
        expected = module.spec.expected_shapes()
        assert set(params) == set(expected), module.name
        for name, array in params.items():
            assert tuple(array.shape) == expected[name] and str(array.dtype) == module.spec.dtype, name
            assert array.dtype.isnative
    if not ck.modules:
        ck.module(None)  # the "holds no LSTM" error, as inspect raises it
    return ck


# --- configs rewritten by hypothesis -----------------------------------------------------------------------------------

_CLASSES = ["LSTM", "GRU", "Bidirectional", "TimeDistributed", "Sequential", "Functional", "Dropout", "Masking",
            "InputLayer", "RNN", "CuDNNLSTM", "SimpleRNN", "ConvLSTM2D", "Lambda", "Dense", "MyLSTM", "Custom>X", ""]
_VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(-3, 2**40), st.sampled_from([2**63, -(2**63), 1e308, 0.5, float("inf")]),
    st.text(max_size=6), st.sampled_from(_CLASSES + ["tanh", "relu", "hard_sigmoid", "mish", "concat", "sum", "keras",
                                                     "keras.layers", "__main__", "layers", "vars"]),
    st.lists(st.integers(-1, 5), max_size=3), st.just({}), st.just([]), st.just({"class_name": "function", "config": "x"}),
    st.just([[["lstm", 0, 0, {}]]]), st.just([{"args": [{"class_name": "__keras_tensor__",
                                                          "config": {"keras_history": ["enc_a", 0, 0]}}]}]),
)


def _nodes(obj, at=()):
    """Every (path, value) in a JSON document."""
    yield at, obj
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _nodes(v, at + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _nodes(v, at + (i,))


def _at(doc, path):
    for p in path:
        doc = doc[p]
    return doc


@st.composite
def mutated_config(draw, base: dict) -> dict:
    """``base`` with 1-4 edits: a value replaced, a key dropped, a list item duplicated, removed or moved, a
    class renamed, or the whole thing nested deeply."""
    doc = copy.deepcopy(base)
    for _ in range(draw(st.integers(1, 4))):
        nodes = list(_nodes(doc))
        path, value = draw(st.sampled_from(nodes))
        op = draw(st.sampled_from(["replace", "drop", "duplicate", "remove", "swap", "class", "nest"]))
        parent = _at(doc, path[:-1]) if path else None
        if op == "replace" and path:
            parent[path[-1]] = copy.deepcopy(draw(_VALUES))  # st.just() hands out one shared object
        elif op == "drop" and isinstance(value, dict) and value:
            del value[draw(st.sampled_from(sorted(value)))]
        elif op in ("duplicate", "remove", "swap") and isinstance(value, list) and value:
            i, j = draw(st.integers(0, len(value) - 1)), draw(st.integers(0, len(value) - 1))
            if op == "duplicate":
                value.insert(j, copy.deepcopy(value[i]))
            elif op == "remove":
                del value[i]
            else:
                value[i], value[j] = value[j], value[i]
        elif op == "class":
            holders = [v for _, v in nodes if isinstance(v, dict) and "class_name" in v]
            if holders:
                draw(st.sampled_from(holders))["class_name"] = draw(st.sampled_from(_CLASSES))
        elif op == "nest" and path:
            parent[path[-1]] = {"class_name": "Sequential", "config": {"name": "s", "layers": [value] * 2}}
    if draw(st.booleans()) and draw(st.booleans()):
        deep: object = doc
        for _ in range(draw(st.sampled_from([40, 200]))):
            deep = {"class_name": "Sequential", "module": "keras", "config": {"name": "s", "layers": [deep]}}
        doc = deep
    return doc


# --- the tests ---------------------------------------------------------------------------------------------------------

@given(data=mutated(H5_SEEDS))
@FUZZ
def test_fuzz_keras_hdf5(workdir, data):
    path = write(workdir, "model.h5", data)
    only_clean_errors(path, lambda: _load(path))


@given(data=mutated(KERAS_SEEDS, structural=[_zip_field, _zip_member]))
@FUZZ
def test_fuzz_keras_zip(workdir, data):
    path = write(workdir, "model.keras", data)
    only_clean_errors(path, lambda: _load(path))


@given(config=mutated_config(_BASE_CONFIG), version=st.sampled_from(["3.6.0", "3.1.0", "2.13.1", "", "x"]))
@FUZZ
def test_fuzz_keras_config_json(workdir, config, version):
    path = workdir / "config.keras"
    kf.write_keras_zip(path, json.dumps(config), _BASE_WEIGHTS, version=version)
    only_clean_errors(path, lambda: _load(path))


_LEGACY_CONFIG = json.loads(h5py.File(io.BytesIO(H5_SEEDS[0]), "r").attrs["model_config"])


@given(config=mutated_config(_LEGACY_CONFIG), version=st.sampled_from(["2.2.4", "1.2.2", "3.1.0", "garbage"]))
@FUZZ
def test_fuzz_legacy_model_config(workdir, config, version):
    path = write(workdir, "legacy.h5", H5_SEEDS[0])
    with h5py.File(path, "a") as f:
        f.attrs["model_config"] = json.dumps(config).encode()
        f.attrs["keras_version"] = version.encode()
    only_clean_errors(path, lambda: _load(path))


def test_seeds_load(workdir):
    """The premise: every seed is a valid file lstmscope reads (so mutations start from real layouts)."""
    for i, data in enumerate(H5_SEEDS + KERAS_SEEDS):
        path = write(workdir, f"seed{i}", data)
        assert _load(path).modules, i


# --- what fuzzing found: each must stay one clean error ----------------------------------------------------------------

def _vlen_attribute_type() -> bytes:
    """The HDF5 library crashes (SIGSEGV) reading a non-string variable-length attribute; the reader checks an
    attribute's type before reading it."""
    buf = io.BytesIO()
    with h5py.File(buf, "w") as f:
        vlen = h5py.vlen_dtype(np.dtype("int32"))
        value = np.empty((1,), dtype=vlen)
        value[0] = np.arange(3, dtype=np.int32)
        f.attrs.create("keras_version", value, dtype=vlen)
        f.attrs["model_config"] = "{}"
    return buf.getvalue()


def test_vlen_attribute_is_refused_without_reading_it(workdir):
    path = write(workdir, "vlen.h5", _vlen_attribute_type())
    with pytest.raises(CheckpointError, match="'keras_version'.*is not text"):
        read_checkpoint(path)


def test_a_crash_or_hang_in_hdf5_is_one_clean_error(workdir, monkeypatch):
    """What the child process turns a crashed or stuck HDF5 library into (simulated: a segfault and a loop)."""
    import os
    import signal

    if not keras_reader.ISOLATE:
        pytest.skip("no fork on this platform")
    import faulthandler

    def segfault(self, fmt):
        faulthandler.disable()  # pytest's faulthandler would print the child's stack
        os.kill(os.getpid(), signal.SIGSEGV)

    path = write(workdir, "seed.h5", H5_SEEDS[0])
    monkeypatch.setattr(keras_reader._Reader, "listing", segfault)
    with pytest.raises(CheckpointError, match="HDF5 library crashed reading it .SIGSEGV."):
        read_checkpoint(path)
    monkeypatch.setattr(keras_reader, "HDF5_TIMEOUT", 0.5)
    monkeypatch.setattr(keras_reader._Reader, "listing", lambda self, fmt: __import__("time").sleep(30))
    with pytest.raises(CheckpointError, match="took over 0.5 s"):
        read_checkpoint(path)
