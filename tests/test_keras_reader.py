"""The Keras reader (lstmscope.readers.keras) against independent truth.

Three truths: real Keras 3 (torch backend, imported once per session) running each layer with
``return_sequences=True, return_state=True``; Keras's own equations, written below in float64 from Keras's
formulas, on the weights the h5py builders of tests/keras_files.py wrote (Keras cannot write Keras 1/2 files);
and the outputs real Keras/tf.keras computed for the shared real files (keras_oracle.npz). lstmscope's side is
always the parameters ``Checkpoint.parameters`` hands over (nn.LSTM's layout) run through the nn.LSTM equations
with the spec's activations, also written below; nothing lstmscope computes is fed back as an expectation.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest

import keras_files as kf
from conftest import real_checkpoints_dir, real_manifest
from helpers import assert_one_error_line
from lstmscope.errors import CheckpointError, UsageError
from lstmscope.readers import read_checkpoint
from lstmscope.readers.keras import with_activations

ATOL = 1e-5


# --- Keras's equations (float64), from Keras's documentation -------------------------------------------------------

def _sigmoid(z):
    return 0.5 * (1.0 + np.tanh(0.5 * z))


_KERAS_ACTS = {
    "sigmoid": lambda z, major: _sigmoid(z),
    # Keras 1/2 and tf.keras: clip(0.2 x + 0.5, 0, 1); Keras 3: relu6(x + 3) / 6
    "hard_sigmoid": lambda z, major: np.clip(z / 6 + 0.5, 0, 1) if major >= 3 else np.clip(0.2 * z + 0.5, 0, 1),
    "tanh": lambda z, major: np.tanh(z),
    "relu": lambda z, major: np.maximum(z, 0),
    "linear": lambda z, major: z,
    "softsign": lambda z, major: z / (1 + np.abs(z)),
}


def keras_act(name: str, major: int):
    return lambda z: _KERAS_ACTS[name](z, major)


def keras_direction(x: np.ndarray, d: kf.Direction, act, rec) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Keras's LSTM cell (gates i, f, c, o in kernel column blocks): z = x K + h R + b; c = f c + i act(z_c);
    h = o act(c). go_backwards reads the input last step first; y comes back in that processing order."""
    x = np.asarray(x, np.float64)[:, ::-1] if d.go_backwards else np.asarray(x, np.float64)
    k, r = d.kernel.astype(np.float64), d.recurrent_kernel.astype(np.float64)
    b = 0.0 if d.bias is None else d.bias.astype(np.float64)
    units = r.shape[0]
    h = np.zeros((x.shape[0], units))
    c = np.zeros((x.shape[0], units))
    ys = []
    for t in range(x.shape[1]):
        z = x[:, t] @ k + h @ r + b
        zi, zf, zc, zo = (z[:, n * units:(n + 1) * units] for n in range(4))
        c = rec(zf) * c + rec(zi) * act(zc)
        h = rec(zo) * act(c)
        ys.append(h)
    return np.stack(ys, axis=1), h, c


# --- lstmscope's side: nn.LSTM's equations on the handed-over parameters, with the spec's activations ----------------

def spec_fn(a):
    """The activation an lstmscope Activation names (spec.ACTIVATION_PARAMS' formulas)."""
    if a.name == "hard_sigmoid":
        return lambda z: np.clip(a.alpha * z + a.beta, 0, 1)
    if a.name == "leaky_relu":
        return lambda z: np.where(z >= 0, z, a.alpha * z)
    if a.name == "elu":
        return lambda z: np.where(z > 0, z, a.alpha * (np.exp(np.minimum(z, 0)) - 1))
    return {"sigmoid": _sigmoid, "tanh": np.tanh, "relu": lambda z: np.maximum(z, 0), "linear": lambda z: z,
            "softsign": lambda z: z / (1 + np.abs(z))}[a.name]


def lstmscope_direction(params: dict, spec, x: np.ndarray, layer: int, direction: int):
    """One layer and direction of the module in nn.LSTM's layout: gates = x W_ih^T + h W_hh^T + b_ih + b_hh,
    (i, f, g, o) row blocks. The backward direction of a Bidirectional, and a go_backwards layer, read the input
    last step first; y is returned in processing order (as Keras returns it per direction)."""
    sfx = f"l{layer}" + ("_reverse" if direction else "")
    w_ih = params[f"weight_ih_{sfx}"].astype(np.float64)
    w_hh = params[f"weight_hh_{sfx}"].astype(np.float64)
    b = sum(params[f"{n}_{sfx}"].astype(np.float64) for n in ("bias_ih", "bias_hh") if f"{n}_{sfx}" in params)
    gate, cell = spec_fn(spec.gate_activation), spec_fn(spec.cell_activation)
    x = np.asarray(x, np.float64)
    if direction or spec.go_backwards:
        x = x[:, ::-1]
    hidden = w_hh.shape[1]
    h = np.zeros((x.shape[0], hidden))
    c = np.zeros((x.shape[0], hidden))
    ys = []
    for t in range(x.shape[1]):
        z = x[:, t] @ w_ih.T + h @ w_hh.T + b
        i, f, g, o = (z[:, n * hidden:(n + 1) * hidden] for n in range(4))
        c = gate(f) * c + gate(i) * cell(g)
        h = gate(o) * cell(c)
        ys.append(h)
    return np.stack(ys, axis=1), h, c


def assert_close(got, want, what=""):
    for name, g, w in zip("yhc", got, want):
        np.testing.assert_allclose(g, w, atol=ATOL, rtol=0, err_msg=f"{what} {name}")


def check_against_truth(ck, module, truths: list[kf.Truth], seed: int = 0) -> None:
    """Every layer and direction of ``module`` equals Keras's equations on the builder's weights."""
    params = ck.parameters(module)
    assert module.spec.num_layers == len(truths)
    for k, truth in enumerate(truths):
        x = np.random.default_rng(seed + k).standard_normal((2, 6, truth.input_size))
        act = keras_act(truth.activation, truth.keras_major)
        rec = keras_act(truth.recurrent_activation, truth.keras_major)
        for d, direction in enumerate(truth.dirs):
            assert_close(lstmscope_direction(params, module.spec, x, k, d), keras_direction(x, direction, act, rec),
                         f"{module.name} layer {k} direction {d}")


def modules_by_name(ck) -> dict:
    return {m.name: m for m in ck.modules + ck.single_layers}


def check_built(built: kf.Built, *, seed: int = 0):
    ck = read_checkpoint(built.path)
    assert [m.name for m in ck.modules] == built.modules
    for m in ck.modules + ck.single_layers:
        check_against_truth(ck, m, [built.layers[n] for n in m.name.split("+")], seed)
    return ck


# --- legacy HDF5 (Keras 1, Keras 2, tf.keras) written with h5py --------------------------------------------------------

@pytest.mark.parametrize("style,version", [("k2", "2.2.4"), ("tf2", "2.3.0-tf"), ("k3", "3.1.0")])
def test_keras2_full_model(tmp_path, style, version):
    """Masking -> LSTM -> Dropout -> LSTM -> Dense: one stacked module (through the Dropout), masked."""
    spec = [("masking", "masking_1"), ("lstm", "lstm_1", 4), ("dropout", "dropout_1"),
            ("lstm", "lstm_2", 4, {"return_sequences": False}), ("dense", "dense_1", 2)]
    built = kf.keras2_model(tmp_path / "model.h5", spec, version=version, style=style, list_config=style == "k2",
                            split=style == "tf2")
    built.modules = ["lstm_1+lstm_2"]
    ck = check_built(built)
    assert ck.format == "keras-h5" and ck.framework_version == version
    assert [m.name for m in ck.single_layers] == ["lstm_1", "lstm_2"]
    m = ck.modules[0]
    s = m.spec
    assert (s.input_size, s.hidden_size, s.num_layers, s.bidirectional, s.bias, s.dtype) == (3, 4, 2, False, True, "float32")
    assert (s.framework, s.bias_layout, s.names, s.go_backwards) == ("keras", "single", ("lstm_1", "lstm_2"), False)
    assert s.gate_activation.name == "hard_sigmoid"
    assert s.gate_activation.alpha == pytest.approx(1 / 6 if version.startswith("3") else 0.2)
    assert m.return_sequences == (True, False)
    assert m.mask is not None and (m.mask.kind, m.mask.value) == ("value", 0.0) and "masking_1 (Masking" in m.mask.source
    assert m.source["weight_ih_l1"].endswith("kernel" + ("" if style == "k3" else ":0"))
    assert m.source["bias_hh_l0"].startswith("(zeros")
    assert set(ck.tensors) == {v for v in m.source.values() if not v.startswith("(")}
    assert all(not p.startswith("optimizer") for p in ck.tensors)


def test_keras2_file_named_keras_is_read_by_content(tmp_path):
    built = kf.keras2_model(tmp_path / "model.keras", [("lstm", "lstm_1", 3, {"activation": "relu"})])
    built.modules = ["lstm_1"]
    ck = check_built(built)
    assert ck.format == "keras-h5" and ck.modules[0].spec.cell_activation.name == "relu"


def test_units_that_differ_stay_apart_and_say_why(tmp_path):
    built = kf.keras2_model(tmp_path / "m.h5", [("lstm", "lstm_1", 4), ("lstm", "lstm_2", 3)])
    built.modules = ["lstm_1", "lstm_2"]
    ck = check_built(built)
    first, second = ck.modules
    assert ck.single_layers == []
    assert any("not stacked with lstm_2" in n and "units 4 vs 3" in n for n in first.notes)
    assert any("not stacked with lstm_1" in n and "units 4 vs 3" in n for n in second.notes)


@pytest.mark.parametrize("over,why", [({"activation": "relu"}, "activation"), ({"use_bias": False}, "use_bias"),
                                      ({"go_backwards": True}, "go_backwards")])
def test_layers_that_differ_in_the_cell_do_not_stack(tmp_path, over, why):
    built = kf.keras2_model(tmp_path / "m.h5", [("lstm", "lstm_1", 4), ("lstm", "lstm_2", 4, over)])
    built.modules = ["lstm_1", "lstm_2"]
    ck = check_built(built)
    assert any(why in n for n in ck.modules[0].notes)
    if over.get("go_backwards"):
        assert ck.modules[1].spec.go_backwards and not ck.modules[0].spec.go_backwards
    if "use_bias" in over:
        assert not ck.modules[1].spec.bias and "bias_ih_l0" not in ck.parameters(ck.modules[1])


@pytest.mark.parametrize("version,expected", [("2.2.4", "hard_sigmoid"), ("2.3.0", "sigmoid"), ("1.2.2", "hard_sigmoid")])
def test_weights_only_file_defaults_and_says_so(tmp_path, version, expected):
    built = kf.keras2_model(tmp_path / "w.h5", [("lstm", "lstm_1", 4), ("dropout", "dropout_1"), ("lstm", "lstm_2", 4)],
                            version=version, weights_only=True, split=True, hard_sigmoid=expected)
    built.modules = ["lstm_1", "lstm_2"]  # no config: return_sequences unknown, nothing stacks
    ck = check_built(built)
    assert ck.format == "keras-weights-h5" and ck.framework_version == version
    m = ck.modules[0]
    assert m.spec.gate_activation.name == expected and m.return_sequences == ()
    note = next(n for n in m.notes if "recurrent_activation" in n)
    assert expected in note and version in note and "--recurrent-activation" in note
    assert any("activation tanh assumed" in n for n in m.notes) and any("go_backwards=False" in n for n in m.notes)


def test_with_activations_overrides_and_follows_the_version(tmp_path):
    built = kf.keras2_model(tmp_path / "w.h5", [("lstm", "lstm_1", 4)], version="2.2.4", weights_only=True)
    ck = read_checkpoint(built.path)
    m = with_activations(ck.modules[0], activation="relu", recurrent_activation="sigmoid", keras_version="2.2.4")
    assert (m.spec.cell_activation.name, m.spec.gate_activation.name) == ("relu", "sigmoid")
    assert not any("activation" in n and "assumed" in n for n in m.notes)
    assert any("--recurrent-activation" in n and "sigmoid" in n for n in m.notes)
    truth = built.layers["lstm_1"]
    truth.activation, truth.recurrent_activation = "relu", "sigmoid"
    check_against_truth(ck, m, [truth])
    k2 = with_activations(ck.modules[0], activation=None, recurrent_activation="hard_sigmoid", keras_version="2.2.4")
    k3 = with_activations(ck.modules[0], activation=None, recurrent_activation="hard_sigmoid", keras_version="3.4.1")
    assert (k2.spec.gate_activation.alpha, k3.spec.gate_activation.alpha) == (0.2, pytest.approx(1 / 6))
    assert k2.spec.cell_activation == ck.modules[0].spec.cell_activation
    assert with_activations(ck.modules[0], activation=None, recurrent_activation=None, keras_version=None) == ck.modules[0]
    with pytest.raises(UsageError, match="'mish'.*choose one of"):
        with_activations(ck.modules[0], activation="mish", recurrent_activation=None, keras_version="2.2.4")


@pytest.mark.parametrize("backward_config", [True, False])
def test_bidirectional_merge_modes(tmp_path, backward_config):
    """tf.keras Bidirectional (with and without backward_layer in the config): concat layers stack, sum does not."""
    spec = [("bidirectional", "bidirectional_1", "lstm_1", 4, "concat"),
            ("bidirectional", "bidirectional_2", "lstm_2", 4, "concat"),
            ("bidirectional", "bidirectional_3", "lstm_3", 4, "sum", {"activation": "relu"})]
    built = kf.keras2_model(tmp_path / "bi.h5", spec, version="2.2.4-tf", style="tf2", list_config=False,
                            backward_config=backward_config)
    built.modules = ["bidirectional_1+bidirectional_2", "bidirectional_3"]
    ck = check_built(built)
    stack, summed = ck.modules
    assert stack.spec.bidirectional and stack.spec.num_layers == 2 and stack.spec.input_size == 3
    assert "bias_hh_l1_reverse" in stack.source and "backward_lstm_2" in stack.source["weight_ih_l1_reverse"]
    assert any("merge_mode='sum'" in n for n in summed.notes)
    assert any("not stacked with bidirectional_2" in n and "activation tanh vs relu" in n for n in summed.notes)


def test_cudnn_lstm(tmp_path):
    built = kf.keras2_model(tmp_path / "cudnn.h5", [("cudnn", "cu_dnnlstm_1", 4), ("cudnn", "cu_dnnlstm_2", 4)])
    built.modules = ["cu_dnnlstm_1+cu_dnnlstm_2"]
    ck = check_built(built)
    m = ck.modules[0]
    assert m.spec.bias_layout == "ih+hh" and m.spec.gate_activation.name == "sigmoid"
    assert m.source["bias_ih_l0"].endswith("[:16]") and m.source["bias_hh_l0"].endswith("[16:]")
    params = ck.parameters(ck.single_layers[0])
    # the same stored arrays read as an ordinary LSTM kernel (bias summed) compute something else entirely
    import h5py

    with h5py.File(built.path) as f:
        g = f["model_weights/cu_dnnlstm_1/cu_dnnlstm_1"]
        raw = [g["kernel:0"][()], g["recurrent_kernel:0"][()], g["bias:0"][()]]
    plain = kf.keras2_model(tmp_path / "plain.h5", [("lstm", "lstm_1", 4, {"recurrent_activation": "sigmoid"})])
    with h5py.File(plain.path, "a") as f:
        g = f["model_weights/lstm_1/lstm_1"]
        g["kernel:0"][...] = raw[0]
        g["recurrent_kernel:0"][...] = raw[1]
        g["bias:0"][...] = np.sum(np.split(raw[2], 2), axis=0)
    wrong = read_checkpoint(plain.path)
    x = np.random.default_rng(0).standard_normal((2, 6, 3))
    truth = built.layers["cu_dnnlstm_1"]
    want = keras_direction(x, truth.dirs[0], np.tanh, _sigmoid)
    assert_close(lstmscope_direction(params, ck.single_layers[0].spec, x, 0, 0), want)
    got = lstmscope_direction(wrong.parameters(wrong.modules[0]), wrong.modules[0].spec, x, 0, 0)
    assert np.abs(got[0] - want[0]).max() > 0.05
    h = 4
    assert np.array_equal(params["weight_ih_l0"][:h], raw[0][:, :h].reshape(h, 3))  # the raw cuDNN block, no transpose
    assert np.array_equal(params["weight_hh_l0"][h:2 * h], raw[1][:, h:2 * h])


@pytest.mark.parametrize("gpu", [False, True])
def test_keras1(tmp_path, gpu):
    built = kf.keras1_model(tmp_path / "k1.h5", gpu=gpu)
    ck = check_built(built)
    m = ck.modules[0]
    assert ck.framework_version == "1.2.2" and m.spec.gate_activation.alpha == 0.2
    assert m.return_sequences == (True, True)
    if not gpu:
        assert m.source["weight_ih_l0"].split(", ")[1].endswith("lstm_1_W_f")  # i, f, c, o from i, c, f, o


@pytest.mark.parametrize("style", ["tf2", "k3"])
def test_nested_models_with_the_same_layer_name(tmp_path, style):
    built = kf.nested_legacy(tmp_path / "nested.h5", style)
    ck = check_built(built)
    assert [m.spec.names for m in ck.modules] == [("lstm_1",), ("lstm_1",)]
    assert ck.modules[0].spec.input_size == 3 and ck.modules[1].spec.input_size == 4


# --- Keras 3 files written with h5py (Windows backslashes, the vars name cross-check) ---------------------------------

@pytest.mark.parametrize("windows", [False, True])
@pytest.mark.parametrize("as_zip", [True, False])
def test_keras3_group_names(tmp_path, windows, as_zip):
    built = kf.keras3_stack(tmp_path / ("m.keras" if as_zip else "m.weights.h5"), windows=windows, as_zip=as_zip)
    if not as_zip:
        built.layers = {g: built.layers[n] for g, n in (("lstm", "enc_a"), ("lstm_1", "enc_b"), ("lstm_2", "narrow"))}
        for t in built.layers.values():
            t.recurrent_activation = "sigmoid"  # no config: the Keras 3 default
    ck = check_built(built)
    assert ck.format == ("keras-zip" if as_zip else "keras3-weights-h5")
    assert all("\\" not in p for p in ck.tensors) and "layers/lstm_1/cell/vars/1" in ck.tensors
    if as_zip:
        assert ck.framework_version == "3.1.0"
        assert ck.modules[1].spec.gate_activation.alpha == pytest.approx(1 / 6)  # Keras 3's hard_sigmoid


def test_keras3_vars_names_name_weights_only_modules(tmp_path):
    built = kf.keras3_stack(tmp_path / "m.weights.h5", as_zip=False, names=True, version="3.6.0")
    for t in built.layers.values():
        t.recurrent_activation = "sigmoid"
    check_built(built)


def test_keras3_vars_name_mismatch_is_refused(tmp_path):
    built = kf.keras3_stack(tmp_path / "m.keras", names=True, version="3.6.0")
    with zipfile.ZipFile(built.path) as z:
        members = {n: z.read(n) for n in z.namelist()}
    config = json.loads(members["config.json"])
    layers = config["config"]["layers"]
    layers[1], layers[3] = layers[3], layers[1]  # enc_b listed first: its weights would be taken from enc_a's group
    bad = kf.write_keras_zip(tmp_path / "swapped.keras", config, members["model.weights.h5"], version="3.6.0")
    with pytest.raises(CheckpointError, match="belongs to layer 'enc_a' but config.json puts layer 'enc_b' there"):
        read_checkpoint(bad)


# --- real Keras 3 -------------------------------------------------------------------------------------------------------

def _model(keras):
    """One functional model with every case: a stack through Dropout, different widths, relu/hard_sigmoid,
    Bidirectional stack (concat) and every other merge_mode, go_backwards, use_bias=False, a nested Sequential
    whose LSTM repeats an outer name, TimeDistributed(LSTM), a masked input."""
    L = keras.layers
    x = keras.Input((6, 3), name="x")
    xt = keras.Input((2, 6, 3), name="xt")
    a = L.LSTM(4, return_sequences=True, name="enc_a")(x)
    a = L.Dropout(0.3)(a)
    a = L.LSTM(4, return_sequences=True, name="enc_b")(a)
    n = L.LSTM(3, return_sequences=True, activation="relu", recurrent_activation="hard_sigmoid", name="narrow")(a)
    b = L.Bidirectional(L.LSTM(3, return_sequences=True), name="bi_a")(n)
    outs = [L.Bidirectional(L.LSTM(3, return_sequences=True), name="bi_b")(b)]
    for mode in ("sum", "ave", "mul", None):
        o = L.Bidirectional(L.LSTM(2, return_sequences=True), merge_mode=mode, name=f"bi_{mode or 'none'}")(x)
        outs += list(o) if mode is None else [o]
    outs.append(L.LSTM(3, go_backwards=True, name="back")(x))
    outs.append(L.LSTM(3, use_bias=False, return_sequences=True, name="nobias")(x))
    inner = keras.Sequential([keras.Input((6, 3)), L.LSTM(2, return_sequences=True, name="enc_a")], name="inner")
    outs.append(inner(x))
    outs.append(L.TimeDistributed(L.LSTM(2, name="td_lstm"), name="td")(xt))
    outs.append(L.LSTM(2, name="masked")(L.Masking()(x)))
    model = keras.Model([x, xt], outs)
    rng = np.random.default_rng(7)
    for w in model.weights:
        w.assign(rng.uniform(-0.7, 0.7, tuple(w.shape)).astype("float32"))
    lstm = {"enc_a": model.get_layer("enc_a"), "enc_b": model.get_layer("enc_b"), "narrow": model.get_layer("narrow"),
            "back": model.get_layer("back"), "nobias": model.get_layer("nobias"), "masked": model.get_layer("masked"),
            "inner/enc_a": inner.get_layer("enc_a"), "td_lstm": model.get_layer("td").layer}
    bidi = {name: model.get_layer(name) for name in ("bi_a", "bi_b", "bi_sum", "bi_ave", "bi_mul", "bi_none")}
    return model, lstm, bidi


@pytest.fixture(scope="module")
def saved(keras, tmp_path_factory):
    d = tmp_path_factory.mktemp("keras3")
    model, lstm, bidi = _model(keras)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.save(d / "m.keras")
        model.save_weights(d / "m.weights.h5")
        model.save(d / "m.h5")
    return d, lstm, bidi


def keras_run(keras, layer, x) -> tuple[np.ndarray, ...]:
    """What Keras returns for ``layer`` (an LSTM) run alone with return_sequences=True, return_state=True."""
    cfg = {**layer.get_config(), "return_sequences": True, "return_state": True, "name": f"{layer.name}_alone"}
    twin = keras.layers.LSTM.from_config(cfg)
    twin.build((None, *x.shape[1:]))
    twin.set_weights(layer.get_weights())
    return tuple(keras.ops.convert_to_numpy(t).astype(np.float64) for t in twin(x.astype("float32")))


EXPECTED = ["enc_a+enc_b", "narrow", "bi_a+bi_b", "bi_sum", "bi_ave", "bi_mul", "bi_none", "back", "nobias",
            "inner/enc_a", "td_lstm", "masked"]


@pytest.mark.parametrize("name", ["m.keras", "m.h5"])
def test_real_keras3_listing(keras, saved, name):
    d, _, _ = saved
    ck = read_checkpoint(d / name)
    assert ck.format == ("keras-zip" if name.endswith(".keras") else "keras-h5")
    assert ck.framework_version == keras.__version__
    mods = {m.name: m for m in ck.modules}
    assert sorted(mods) == sorted(EXPECTED)
    assert sorted(m.name for m in ck.single_layers) == ["bi_a", "bi_b", "enc_a", "enc_b"]
    s = mods["enc_a+enc_b"].spec
    assert (s.num_layers, s.input_size, s.hidden_size, s.names) == (2, 3, 4, ("enc_a", "enc_b"))
    assert any("units 4 vs 3" in n for n in mods["narrow"].notes)
    narrow = mods["narrow"].spec
    assert (narrow.cell_activation.name, narrow.gate_activation.name) == ("relu", "hard_sigmoid")
    assert narrow.gate_activation.alpha == pytest.approx(1 / 6)
    assert mods["bi_a+bi_b"].spec.bidirectional and mods["bi_a+bi_b"].spec.num_layers == 2
    for mode, word in (("sum", "adds"), ("ave", "averages"), ("mul", "multiplies"), ("none", "list")):
        assert any(word in n for n in mods[f"bi_{mode}"].notes), mode
    assert mods["back"].spec.go_backwards and mods["back"].return_sequences == (False,)
    assert not mods["nobias"].spec.bias
    assert mods["inner/enc_a"].spec.names == ("enc_a",)
    assert any("TimeDistributed 'td'" in n for n in mods["td_lstm"].notes)
    assert mods["masked"].mask is not None and mods["masked"].mask.source.startswith("masking")
    assert not any("masked" in n for n in mods["enc_a+enc_b"].notes)


def test_real_keras3_weights_only(saved):
    d, _, _ = saved
    ck = read_checkpoint(d / "m.weights.h5")
    full = read_checkpoint(d / "m.keras")
    assert ck.format == "keras3-weights-h5"
    names = {m.name for m in ck.modules}
    assert names == {n for m in EXPECTED for n in m.split("+")}
    singles = modules_by_name(full)
    for m in ck.modules:  # the same numbers as the full model's, whatever the config said
        got, want = ck.parameters(m), full.parameters(singles[m.name])
        assert got.keys() == want.keys() and all(np.array_equal(got[k], want[k]) for k in got), m.name
        assert any(n.startswith("no config: ") for n in m.notes)


@pytest.mark.parametrize("name", ["m.keras", "m.h5", "m.weights.h5"])
def test_real_keras3_numbers(keras, saved, name):
    """Every layer and direction equals Keras's own layer(x, return_sequences=True, return_state=True)."""
    d, lstm, bidi = saved
    ck = read_checkpoint(d / name)
    mods = modules_by_name(ck)
    for layer_name, layer in lstm.items():
        m = mods[layer_name]
        if name.endswith("weights.h5") and layer_name == "back":  # no config: go_backwards is not known
            assert not m.spec.go_backwards and any("go_backwards=False assumed" in n for n in m.notes)
            continue
        if name.endswith("weights.h5") and layer_name == "narrow":
            m = with_activations(m, activation="relu", recurrent_activation="hard_sigmoid",
                                 keras_version=ck.framework_version)
        x = np.random.default_rng(1).standard_normal((2, 5, m.spec.input_size))
        assert_close(lstmscope_direction(ck.parameters(m), m.spec, x, 0, 0), keras_run(keras, layer, x), layer_name)
    for layer_name, layer in bidi.items():
        m = mods[layer_name]
        x = np.random.default_rng(2).standard_normal((2, 5, m.spec.input_size))
        params = ck.parameters(m)
        for direction, keras_layer in enumerate((layer.forward_layer, layer.backward_layer)):
            assert_close(lstmscope_direction(params, m.spec, x, 0, direction), keras_run(keras, keras_layer, x),
                         f"{layer_name} direction {direction}")
    if not name.endswith("weights.h5"):  # a stack hands over its layers' parameters, renumbered
        stack, first, second = mods["enc_a+enc_b"], mods["enc_a"], mods["enc_b"]
        p, p0, p1 = ck.parameters(stack), ck.parameters(first), ck.parameters(second)
        assert all(np.array_equal(p[k], p0[k]) for k in p0)
        assert all(np.array_equal(p[k.replace("_l0", "_l1")], p1[k]) for k in p1)


# --- the shared real files ---------------------------------------------------------------------------------------------

KERAS_REAL = [e for e in real_manifest() if e["framework"] == "keras"]


def _layers(ck) -> list:
    """Every single layer, in order (a stack's layers in place of the stack)."""
    singles = {m.name: m for m in ck.single_layers}
    out = []
    for m in ck.modules:
        out += [singles[n] for n in m.name.split("+")] if m.spec.num_layers > 1 else [m]
    return out


@pytest.mark.parametrize("entry", KERAS_REAL, ids=lambda e: e["file"])
def test_real_keras_file(entry):
    path = real_checkpoints_dir() / entry["file"]
    ck = read_checkpoint(path)
    assert ck.sha256 == entry["sha256"]
    layers = _layers(ck)
    want = [(e["input_size"], e["hidden_size"], e["bidirectional"]) for e in entry["keras_lstm_layers"]]
    assert [(m.spec.input_size, m.spec.hidden_size, m.spec.bidirectional) for m in layers] == want
    for m, e in zip(layers, entry["keras_lstm_layers"]):
        if "activation" in e:
            assert m.spec.cell_activation.name == e["activation"]
        if "recurrent_activation" in e:
            assert m.spec.gate_activation.name == e["recurrent_activation"].split()[0]
            if "0.2x" in e["recurrent_activation"]:
                assert m.spec.gate_activation.alpha == 0.2
        if "masked_by" in e:
            assert m.mask is not None and m.mask.source.startswith(e["masked_by"].split()[0])
    oracle = entry.get("keras_oracle")
    if not oracle:
        assert [m.name for m in layers] == [e["layer"] for e in entry["keras_lstm_layers"]]
        return
    z = np.load(real_checkpoints_dir() / oracle["file"])
    names = sorted({k.split("::")[0].split("/")[0] for k in z.files})
    assert sorted(m.name for m in layers) == names  # config names (gabriel's groups are lstm, lstm_1; its layers not)
    for m in layers:
        params = ck.parameters(m)
        for direction, key in enumerate([f"{m.name}/forward", f"{m.name}/backward"] if m.spec.bidirectional else [m.name]):
            got = lstmscope_direction(params, m.spec, z[f"{key}::x"], 0, direction)
            assert_close(got, [z[f"{key}::{v}"] for v in "yhc"], key)


# --- files lstmscope refuses: one clean error naming the file -------------------------------------------------------

def _k2(tmp):
    return kf.keras2_model(tmp / "model.h5", [("lstm", "lstm_1", 4), ("dense", "dense_1", 2)]).path


def _zip(tmp, layers, datasets=None, name="model.keras", **kw):
    weights = kf.h5_bytes(datasets if datasets is not None else {}, empty=("layers",) if not datasets else ())
    return kf.write_keras_zip(tmp / name, kf.keras3_sequential(layers), weights, **kw)


def _lstm_vars(group="layers/lstm", inputs=3, units=2):
    return {f"{group}/cell/vars/{i}": a for i, a in enumerate(kf.rng_arrays(0, inputs, units))}


def _drop_group(tmp):
    import h5py

    path = _k2(tmp)
    with h5py.File(path, "a") as f:
        del f["model_weights/lstm_1"]
    return path


def _no_model_weights(tmp):
    import h5py

    path = _k2(tmp)
    with h5py.File(path, "a") as f:
        del f["model_weights"]
    return path


def _not_keras(tmp):
    import h5py

    with h5py.File(tmp / "data.h5", "w") as f:
        f["x"] = np.zeros(3)
    return tmp / "data.h5"


def _custom_cell(tmp):
    cell = {"module": None, "class_name": "MyCell", "config": {"name": "my_cell", "units": 2},
            "registered_name": "Custom>MyCell"}
    return _zip(tmp, [kf.keras3_layer("RNN", "rnn_1", cell=cell, return_sequences=False)],
                {"layers/rnn/cell/vars/0": np.zeros((3, 2), np.float32)})


def _custom_layer(tmp):
    layer = kf.keras3_lstm("my_lstm", 2)
    layer.update(module="my_package.layers", class_name="MyLSTM", registered_name="my_package>MyLSTM")
    return _zip(tmp, [layer], {f"layers/my_lstm/cell/vars/{i}": a for i, a in enumerate(kf.rng_arrays(0, 3, 2))})


def _bad_activation(tmp):
    return _zip(tmp, [kf.keras3_lstm("lstm", 2, activation="mish")], _lstm_vars())


def _set_attr(path: Path, name: str, value) -> Path:
    import h5py

    with h5py.File(path, "a") as f:
        f.attrs[name] = value
    return path


def _truncated(tmp):
    path = _k2(tmp)
    path.write_bytes(path.read_bytes()[:3000])
    return path


BAD = {
    "external_link": (lambda tmp: kf.replace_kernel(_k2(tmp), "external_link", tmp), ["external link", kf.KERNEL]),
    "soft_link": (lambda tmp: kf.replace_kernel(_k2(tmp), "soft_link", tmp), ["SoftLink", kf.KERNEL]),
    "virtual_dataset": (lambda tmp: kf.replace_kernel(_k2(tmp), "virtual", tmp), ["virtual dataset", kf.KERNEL]),
    "external_storage": (lambda tmp: kf.replace_kernel(_k2(tmp), "external_storage", tmp), ["external file", kf.KERNEL]),
    "zip_bomb": (lambda tmp: kf.zip_bomb(tmp / "bomb.keras"), ["zip bomb"]),
    "lying_zip_sizes": (lambda tmp: kf.lying_sizes(_zip(tmp, [kf.keras3_lstm("lstm", 2)], _lstm_vars())), ["zip bomb"]),
    "config_not_json": (lambda tmp: kf.write_keras_zip(tmp / "m.keras", "{'layers': [", kf.h5_bytes(_lstm_vars())),
                        ["config.json is not valid JSON"]),
    "no_config": (lambda tmp: kf.write_keras_zip(tmp / "m.keras", None, kf.h5_bytes(_lstm_vars())),
                  ["without config.json"]),
    "no_weights_member": (lambda tmp: kf.write_keras_zip(tmp / "m.keras", kf.keras3_sequential([kf.keras3_lstm("lstm", 2)]),
                                                         None), ["lacks model.weights.h5"]),
    "weights_member_not_hdf5": (lambda tmp: kf.write_keras_zip(tmp / "m.keras", kf.keras3_sequential([]), b"PK junk"),
                                ["not an HDF5 file"]),
    "config_without_its_weights": (lambda tmp: _zip(tmp, [kf.keras3_lstm("enc", 2)], {}), ["'enc'", "no weights for it"]),
    "legacy_without_model_weights": (_no_model_weights, ["weights are missing"]),
    "legacy_without_the_layer_group": (_drop_group, ["'lstm_1'", "weights are missing"]),
    "gru_only_legacy": (lambda tmp: kf.keras2_model(tmp / "gru.h5", [("gru", "gru_1", 4)]).path,
                        ["no LSTM", "layer 'gru_1' is a GRU, not an LSTM"]),
    "gru_only_keras3": (lambda tmp: _zip(tmp, [kf.keras3_layer("GRU", "gru_1", units=2)],
                                         {f"layers/gru/cell/vars/{i}": a for i, a in enumerate(kf.rng_arrays(0, 3, 2, 3))}),
                        ["layer 'gru_1' is a GRU, not an LSTM"]),
    "conv_lstm_and_simple_rnn": (lambda tmp: _zip(tmp, [kf.keras3_layer("ConvLSTM2D", "conv_lstm2d", filters=2),
                                                        kf.keras3_layer("SimpleRNN", "simple_rnn", units=2)],
                                                  {"layers/conv_lstm2d/cell/vars/0": np.zeros((3, 3, 1, 8), np.float32)}),
                                 ["'conv_lstm2d' is a ConvLSTM2D, not an LSTM", "'simple_rnn' is a SimpleRNN"]),
    "custom_cell": (_custom_cell, ["'rnn_1'", "custom class 'MyCell'", "never imports"]),
    "custom_layer_class": (_custom_layer, ["custom class 'MyLSTM'", "my_package.layers"]),
    "unknown_activation": (_bad_activation, ["'lstm'", "activation 'mish'"]),
    "truncated_hdf5": (_truncated, ["truncated"]),
    "hdf5_not_keras": (_not_keras, ["not a Keras model"]),
    "model_config_not_json": (lambda tmp: _set_attr(_k2(tmp), "model_config", b"{nope"),
                              ["model_config", "not valid JSON"]),
}


@pytest.mark.parametrize("kind", list(BAD))
def test_bad_keras_file(invoke, tmp_path, kind):
    build, fragments = BAD[kind]
    path = build(tmp_path)
    with pytest.raises(CheckpointError) as err:
        ck = read_checkpoint(path)
        for m in ck.modules:
            ck.parameters(m)
        ck.module(None)
    assert path.name in err.value.message
    line = assert_one_error_line(invoke("inspect", path), path, *fragments)
    assert_one_error_line(invoke("inspect", path, "--json"), path, *fragments)
    assert "\n" not in err.value.message and line


def test_lambda_layers_stay_json(invoke, tmp_path):
    """A Lambda's marshalled function is never unmarshalled, let alone run."""
    marker = tmp_path / "MARKER"
    path = _zip(tmp_path, [kf.lambda_payload(marker), kf.keras3_lstm("lstm", 2)], _lstm_vars())
    ck = read_checkpoint(path)
    assert [m.name for m in ck.modules] == ["lstm"]
    assert invoke("inspect", path, "--json").exit_code == 0
    assert not marker.exists()


# --- inspect stays torch-free ------------------------------------------------------------------------------------------

def test_inspect_keras_without_importing_torch(tmp_path):
    built = kf.keras3_stack(tmp_path / "model.keras")
    stub = tmp_path / "stub"
    (stub / "torch").mkdir(parents=True)
    (stub / "torch" / "__init__.py").write_text('raise ImportError("torch must not be imported")\n')
    env = {k: v for k, v in os.environ.items() if k != "LSTMSCOPE_DEBUG"}
    env["PYTHONPATH"] = os.pathsep.join([str(stub), *filter(None, [env.get("PYTHONPATH")])])
    code = ("import json, sys\nfrom lstmscope.cli import app\n"
            "try:\n    app(['inspect', sys.argv[1], '--json'], prog_name='lstmscope')\nexcept SystemExit as e:\n"
            "    assert not e.code, e.code\n"
            "sys.stderr.write(json.dumps(sorted(m for m in ('torch', 'h5py', 'keras', 'tensorflow') if m in sys.modules)))")
    proc = subprocess.run([sys.executable, "-c", code, str(built.path)], env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stderr) == ["h5py"]
    doc = json.loads(proc.stdout)
    assert [m["name"] for m in doc["modules"]] == ["enc_a+enc_b", "narrow"]


def test_modules_name_the_dataset_each_parameter_comes_from(tmp_path):
    ck = read_checkpoint(kf.keras3_stack(tmp_path / "m.keras").path)
    m = ck.modules[0]
    assert m.source["weight_ih_l0"] == "layers/lstm/cell/vars/0"
    assert m.source["weight_hh_l1"] == "layers/lstm_1/cell/vars/1"
    assert m.source["bias_ih_l1"] == "layers/lstm_1/cell/vars/2"
    assert ck.tensors["layers/lstm/cell/vars/0"].shape == (3, 16)
    assert math.isclose(ck.modules[1].spec.gate_activation.alpha, 1 / 6)


@pytest.mark.parametrize("value,want", [("selu", ("selu", None)), (None, ("linear", None)),
                                        ({"class_name": "function", "config": "softsign"}, ("softsign", None)),
                                        ({"class_name": "LeakyReLU", "config": {"negative_slope": 0.1}}, ("leaky_relu", 0.1)),
                                        ({"class_name": "ELU", "config": {"alpha": 0.5}}, ("elu", 0.5))])
def test_activations_as_configs_write_them(tmp_path, value, want):
    ck = read_checkpoint(_zip(tmp_path, [kf.keras3_lstm("lstm", 2, activation=value)], _lstm_vars()))
    act = ck.modules[0].spec.cell_activation
    assert (act.name, act.alpha) == want
