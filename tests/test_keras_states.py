"""Keras models through the command line, checked against Keras itself (Keras 3 on the torch backend).

Truth is what Keras computes: each LSTM layer is rebuilt alone from its own config with
``return_sequences=True, return_state=True`` and the saved weights, and called by Keras on the same
input (``[y, h, c]``, or ``[y, h_f, c_f, h_b, c_b]`` for Bidirectional). lstmscope reads the files
Keras saved, without Keras, through ``export-state --include-output``; the snapshot's Keras-layout
tensors and ``output`` must equal Keras's to 1e-5. Keras is imported once per test session.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

TOL = 1e-5
SAMPLE = __import__("conftest").SAMPLES / "forecaster.keras"


def _standalone(keras, layer):
    """``layer`` (an LSTM or Bidirectional(LSTM)) rebuilt alone to return every step and its states."""
    if isinstance(layer, keras.layers.Bidirectional):
        inner = layer.forward_layer.get_config() | {"return_sequences": True, "return_state": True}
        inner.pop("go_backwards", None)
        alone = keras.layers.Bidirectional(keras.layers.LSTM.from_config(inner), merge_mode="concat")
    else:
        alone = keras.layers.LSTM.from_config(layer.get_config() | {"return_sequences": True, "return_state": True})
    return alone


def _keras_says(keras, layer, x, initial_state=None):
    alone = _standalone(keras, layer)
    alone.build(x.shape)
    alone.set_weights(layer.get_weights())
    out = alone(x, initial_state=initial_state) if initial_state is not None else alone(x)
    return [keras.ops.convert_to_numpy(t) for t in out]


def _export(invoke, ckpt, x, tmp_path, *args, name="s", output=True):
    np.save(tmp_path / f"{name}_x.npy", x)
    out = tmp_path / f"{name}.safetensors"
    more = ["--include-output"] if output else []
    result = invoke("export-state", ckpt, tmp_path / f"{name}_x.npy", "-o", out, *more, "--json", *args)
    assert result.exit_code == 0, result.stdout + result.stderr
    return load_file(out), json.loads(result.stdout)


MODELS = {
    # name: (layer factory, input features)
    "plain": (lambda k: k.layers.LSTM(5, return_sequences=True, name="lstm_a"), 3),
    "no_bias": (lambda k: k.layers.LSTM(4, use_bias=False, name="lstm_nb"), 3),
    "go_backwards": (lambda k: k.layers.LSTM(4, go_backwards=True, return_sequences=True, name="lstm_gb"), 3),
    "relu_hard_sigmoid": (lambda k: k.layers.LSTM(4, activation="relu", recurrent_activation="hard_sigmoid",
                                                  name="lstm_rh"), 2),
    "bidirectional": (lambda k: k.layers.Bidirectional(k.layers.LSTM(3, return_sequences=True, name="inner"),
                                                       name="bi"), 2),
    "bidirectional_sum": (lambda k: k.layers.Bidirectional(k.layers.LSTM(3, return_sequences=True), merge_mode="sum",
                                                           name="bi_sum"), 2),
}


@pytest.mark.parametrize("case", list(MODELS))
@pytest.mark.parametrize("fmt", [".keras", ".h5"])
def test_export_state_equals_keras(keras, invoke, tmp_path, case, fmt):
    make, features = MODELS[case]
    keras.utils.set_random_seed(3)
    layer = make(keras)
    model = keras.Sequential([keras.Input((None, features)), layer, keras.layers.Dense(1)])
    rng = np.random.default_rng(5)
    for w in model.weights:  # non-zero biases too, so a bias read wrongly shows
        w.assign(rng.uniform(-0.6, 0.6, w.shape).astype("float32"))
    path = tmp_path / f"m{fmt}"
    model.save(path)
    x = rng.standard_normal((2, 6, features)).astype(np.float32)
    want = _keras_says(keras, layer, x)
    s, doc = _export(invoke, path, x, tmp_path)
    assert doc["ok"] is True and doc["metadata"]["layout"] == "keras"
    name = layer.name
    if len(want) == 3:
        y, h, c = want
        np.testing.assert_allclose(s[f"{name}/h"], h, atol=TOL, rtol=0)
        np.testing.assert_allclose(s[f"{name}/c"], c, atol=TOL, rtol=0)
        np.testing.assert_allclose(s["output"], y, atol=TOL, rtol=0)  # go_backwards: processing order, as Keras
    else:
        y, hf, cf, hb, cb = want
        for k, v in (("h_f", hf), ("c_f", cf), ("h_b", hb), ("c_b", cb)):
            np.testing.assert_allclose(s[f"{name}/{k}"], v, atol=TOL, rtol=0)
        np.testing.assert_allclose(s["output"], y, atol=TOL, rtol=0)


def test_sample_stack_continuity_and_layouts(keras, invoke, tmp_path):
    """The shipped Keras sample: a chunked run seeded with the exported Keras-layout state equals the whole
    run; a PyTorch-layout snapshot of the same run diffs equal to the Keras-layout one; and the README's
    lines feed the state back to Keras itself."""
    x = np.load(SAMPLE.parent / "batch.npy")
    whole, _ = _export(invoke, SAMPLE, x, tmp_path, name="whole", output=False)
    first, _ = _export(invoke, SAMPLE, x[:, :4], tmp_path, name="first", output=False)
    second, _ = _export(invoke, SAMPLE, x[:, 4:], tmp_path, "--initial-state", tmp_path / "first.safetensors",
                        name="second", output=False)
    for k in ("encoder/h", "encoder/c", "decoder/h", "decoder/c"):
        np.testing.assert_allclose(second[k], whole[k], atol=1e-6, rtol=0)
    result = invoke("diff-states", tmp_path / "second.safetensors", tmp_path / "whole.safetensors", "--json")
    assert result.exit_code == 0, result.stdout
    assert {(r["tensor"], r["layer"]) for r in json.loads(result.stdout)["rows"]} >= {("h_n", 0), ("h_n", 1)}

    _export(invoke, SAMPLE, x, tmp_path, "--layout", "torch", name="torch_layout", output=False)
    torch_layout = load_file(tmp_path / "torch_layout.safetensors")
    np.testing.assert_array_equal(torch_layout["h_n"][1], whole["decoder/h"])
    result = invoke("diff-states", tmp_path / "whole.safetensors", tmp_path / "torch_layout.safetensors", "--json")
    assert result.exit_code == 0, result.stdout
    assert json.loads(result.stdout)["metadata_differences"]["provenance"]["layout"] == ["keras", "torch"]

    # README: three lines that load the snapshot and call the layer with it, in Keras itself
    model = keras.saving.load_model(SAMPLE)
    encoder = model.get_layer("encoder")
    s = load_file(tmp_path / "first.safetensors")
    y, h, c = _keras_says(keras, encoder, x[:, 4:], initial_state=[s["encoder/h"], s["encoder/c"]])
    np.testing.assert_allclose(h, whole["encoder/h"], atol=TOL, rtol=0)
    np.testing.assert_allclose(c, whole["encoder/c"], atol=TOL, rtol=0)


def test_hand_saved_keras_state_imports_and_seeds(keras, invoke, tmp_path):
    """np.savez(p, h=h, c=c), as a Keras user saves a layer's state, becomes a snapshot (import-state) and
    seeds a run (--initial-state) for a one-layer module, in both layouts."""
    x = np.load(SAMPLE.parent / "batch.npy")
    model = keras.saving.load_model(SAMPLE)
    encoder = model.get_layer("encoder")
    _, h, c = _keras_says(keras, encoder, x[:, :4])
    np.savez(tmp_path / "state.npz", h=h, c=c)
    for layout in ("keras", "torch"):
        out = tmp_path / f"imported_{layout}.safetensors"
        result = invoke("import-state", tmp_path / "state.npz", "-o", out, "--checkpoint", SAMPLE, "--module",
                        "encoder", "--layout", layout)
        assert result.exit_code == 0, result.stdout + result.stderr
    np.testing.assert_array_equal(load_file(tmp_path / "imported_keras.safetensors")["encoder/h"], h)
    np.testing.assert_array_equal(load_file(tmp_path / "imported_torch.safetensors")["h_n"][0], h)
    seeded, _ = _export(invoke, SAMPLE, x[:, 4:], tmp_path, "--module", "encoder", "--initial-state",
                        tmp_path / "state.npz", name="seeded")
    _, h2, c2 = _keras_says(keras, encoder, x[:, 4:], initial_state=[h, c])
    np.testing.assert_allclose(seeded["encoder/h"], h2, atol=TOL, rtol=0)
    np.testing.assert_allclose(seeded["encoder/c"], c2, atol=TOL, rtol=0)


def test_diff_rows_name_keras_slices_as_stored(invoke, tmp_path):
    """diff-states speaks Keras for Keras-layout files: each h/c row is named as the file stores it (a snapshot's
    <layer>/h, a hand-saved Bidirectional state's h_f ... c_b), and its figures are that tensor's."""
    from helpers import assert_rows_name_their_slices

    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    for path, dtype in ((a, "float32"), (b, "float64")):  # the same run in two dtypes: small differences
        r = invoke("export-state", SAMPLE, SAMPLE.parent / "batch.npy", "-o", path, "--dtype", dtype, "-q")
        assert r.exit_code == 0, r.stderr
    r = invoke("diff-states", a, b, "--json")
    assert r.exit_code == 0, r.stderr
    assert_rows_name_their_slices(json.loads(r.stdout), a, b, {"encoder/h", "encoder/c", "decoder/h", "decoder/c"})
    assert "encoder/h" in invoke("diff-states", a, b).stdout  # the table names them too
    rng = np.random.default_rng(5)
    hand = {k: rng.standard_normal((3, 4)).astype(np.float32) for k in ("h_f", "c_f", "h_b", "c_b")}
    np.savez(tmp_path / "s1.npz", **hand)
    np.savez(tmp_path / "s2.npz", **{k: v + np.float32(1e-3) * rng.standard_normal(v.shape).astype(np.float32)
                                     for k, v in hand.items()})
    r = invoke("diff-states", tmp_path / "s1.npz", tmp_path / "s2.npz", "--json")
    assert r.exit_code == 1, r.stderr
    assert_rows_name_their_slices(json.loads(r.stdout), tmp_path / "s1.npz", tmp_path / "s2.npz",
                                  {"h_f", "c_f", "h_b", "c_b"})


def test_show_state_speaks_keras(invoke, tmp_path):
    x = np.load(SAMPLE.parent / "batch.npy")
    _export(invoke, SAMPLE, x, tmp_path)
    result = invoke("show-state", tmp_path / "s.safetensors", "--json")
    assert result.exit_code == 0, result.stdout + result.stderr
    doc = json.loads(result.stdout)
    assert [r["h_label"] for r in doc["states"]] == ["encoder h", "decoder h"]
    assert doc["checks"][0]["output_position"].startswith("y[")
    result = invoke("show-state", tmp_path / "s.safetensors")
    assert "returns [y, h, c]" in result.stdout and "decoder h" in result.stdout


def test_bad_keras_state_files(invoke, tmp_path):
    """A Keras-layout state that does not fit: one error line each."""
    from helpers import assert_one_error_line

    x = np.load(SAMPLE.parent / "batch.npy")
    np.save(tmp_path / "x.npy", x)
    bad = tmp_path / "h_only.npz"
    np.savez(bad, h=np.zeros((3, 6), np.float32))
    assert_one_error_line(invoke("run", SAMPLE, tmp_path / "x.npy", "--initial-state", bad), bad, "h_n and c_n")
    wide = tmp_path / "wide.npz"
    np.savez(wide, h=np.zeros((3, 7), np.float32), c=np.zeros((3, 7), np.float32))
    assert_one_error_line(invoke("run", SAMPLE, tmp_path / "x.npy", "--module", "encoder", "--initial-state", wide),
                          wide, "wide")
    flat = tmp_path / "flat.safetensors"
    save_file({"h": np.zeros(6, np.float32), "c": np.zeros(6, np.float32)}, str(flat))
    assert_one_error_line(invoke("show-state", flat), flat, "(batch, units)")
    out = tmp_path / "o.safetensors"
    result = invoke("export-state", SAMPLE, tmp_path / "x.npy", "-o", out, "--layout", "tf")
    assert result.exit_code == 2 and result.stderr == "Error: --layout tf: choose torch or keras\n"
    assert not out.exists()


STREAMED = {
    "go_backwards_hard_sigmoid": lambda k: k.layers.LSTM(4, go_backwards=True, recurrent_activation="hard_sigmoid",
                                                         return_sequences=True, name="gb"),
    "bidirectional_relu": lambda k: k.layers.Bidirectional(k.layers.LSTM(3, activation="relu", return_sequences=True),
                                                           name="bi"),
    "stack": None,  # the shipped sample
}


@pytest.mark.parametrize("case", list(STREAMED))
@pytest.mark.parametrize("lengths", [False, True])
def test_streamed_equals_whole(keras, invoke, tmp_path, case, lengths):
    """Keras cells (go_backwards, stepwise activations, Bidirectional) streamed 3 steps at a time, with and
    without lengths, give the whole run's states and output (1e-6)."""
    if STREAMED[case] is None:
        path, features = SAMPLE, 4
    else:
        keras.utils.set_random_seed(4)
        model = keras.Sequential([keras.Input((None, 2)), STREAMED[case](keras)])
        path, features = tmp_path / "m.keras", 2
        model.save(path)
    rng = np.random.default_rng(6)
    x = rng.standard_normal((3, 11, features)).astype(np.float32)
    args = []
    if lengths:
        np.save(tmp_path / "len.npy", np.array([11, 4, 7], dtype=np.int64))
        args = ["--lengths", tmp_path / "len.npy"]
    whole, _ = _export(invoke, path, x, tmp_path, "--chunk-size", "0", *args, name="whole")
    parts, _ = _export(invoke, path, x, tmp_path, "--chunk-size", "3", *args, name="parts")
    assert whole.keys() == parts.keys()
    for k in whole:
        np.testing.assert_allclose(parts[k], whole[k], atol=1e-6, rtol=0, err_msg=k)
    if case == "go_backwards_hard_sigmoid" and lengths:  # each sequence's own steps, last first (processing order)
        layer = keras.saving.load_model(path).layers[0]
        for b, n in enumerate([11, 4, 7]):
            y, h, c = _keras_says(keras, layer, x[b:b + 1, :n])
            np.testing.assert_allclose(whole["output"][b, :n], y[0], atol=TOL, rtol=0)
            np.testing.assert_allclose(whole["gb/h"][b], h[0], atol=TOL, rtol=0)


def test_one_layer_state_on_a_stack_says_which_module(invoke, tmp_path):
    """A Keras user's one-layer [h, c] given to the two-layer sample: the error speaks Keras and names the layers."""
    from helpers import assert_one_error_line

    np.save(tmp_path / "x.npy", np.load(SAMPLE.parent / "batch.npy"))
    state = tmp_path / "hc.npz"
    np.savez(state, h=np.zeros((3, 6), np.float32), c=np.zeros((3, 6), np.float32))
    line = assert_one_error_line(invoke("run", SAMPLE, tmp_path / "x.npy", "--initial-state", state), state,
                                 "1 [h, c] pair", "2 layers x 1 direction", "--module encoder or --module decoder")
    assert "h_n" not in line


def test_show_state_lists_tensors_as_stored(invoke, tmp_path):
    x = np.load(SAMPLE.parent / "batch.npy")
    _export(invoke, SAMPLE, x, tmp_path)
    doc = json.loads(invoke("show-state", tmp_path / "s.safetensors", "--json").stdout)
    assert doc["shapes"] == {"encoder/h": [3, 6], "encoder/c": [3, 6], "decoder/h": [3, 6], "decoder/c": [3, 6],
                             "output": [3, 10, 6]}


def test_weights_only_file_with_recurrent_activation_override(keras, invoke, tmp_path):
    """A .weights.h5 carries no config: lstmscope assumes sigmoid gates (and says so); --recurrent-activation
    hard_sigmoid gives what Keras computes for the layer that saved it. On a PyTorch checkpoint the option
    is refused in one line."""
    from helpers import assert_one_error_line

    keras.utils.set_random_seed(7)
    layer = keras.layers.LSTM(4, recurrent_activation="hard_sigmoid", return_sequences=True, name="lstm")
    model = keras.Sequential([keras.Input((None, 3)), layer])
    path = tmp_path / "w.weights.h5"
    model.save_weights(path)
    x = np.random.default_rng(8).standard_normal((2, 5, 3)).astype(np.float32)
    y, h, c = _keras_says(keras, layer, x)
    assumed, _ = _export(invoke, path, x, tmp_path, name="assumed")
    assert np.abs(assumed["output"] - y).max() > 1e-3  # sigmoid gates are not the layer's
    told, _ = _export(invoke, path, x, tmp_path, "--recurrent-activation", "hard_sigmoid", name="told")
    np.testing.assert_allclose(told["output"], y, atol=TOL, rtol=0)
    np.testing.assert_allclose(told[f"{told_name(told)}/h"], h, atol=TOL, rtol=0)
    np.save(tmp_path / "x.npy", x)
    result = invoke("run", path, tmp_path / "x.npy", "--json")
    assert any("recurrent_activation" in n for n in json.loads(result.stdout)["notes"])
    uni = SAMPLE.parent / "uni_1layer.pt"
    np.save(tmp_path / "x4.npy", np.load(SAMPLE.parent / "batch.npy"))
    assert_one_error_line(invoke("run", uni, tmp_path / "x4.npy", "--activation", "relu"), uni, "Keras modules")


def told_name(snapshot: dict) -> str:
    """The one layer name in a one-layer Keras-layout snapshot."""
    (name,) = {k.split("/")[0] for k in snapshot if "/" in k}
    return name
