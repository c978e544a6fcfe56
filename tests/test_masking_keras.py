"""Keras masking (Masking layers, Embedding(mask_zero=True)) and token-id inputs, end to end through the CLI.

Truth is what Keras 3 itself computes (torch backend): every model is built and called by Keras on the same
batch, and lstmscope, reading the file Keras saved, must give the same y, h, c to 1e-5 (float32). The real
Keras 2.2 file (Masking(0.0) -> LSTM(32, hard_sigmoid)) is checked against a float64 numpy LSTM written here
from the equations, with the weights read by h5py. Nothing is compared with lstmscope's own output.

The batches hold front padding, end padding, holes in the middle and one full sequence. Keras is imported
once per test session; models are built once per module.
"""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from safetensors.numpy import load_file

from conftest import real_checkpoints_dir

TOL = 1e-5
VOCAB, EMB, UNITS, FEATURES = 9, 3, 5, 3

# token ids, 0 = padding: front padding, end padding, holes, a full sequence, front + hole + end
IDS = np.array([[0, 0, 3, 4, 5, 6, 7],
                [1, 2, 3, 4, 0, 0, 0],
                [1, 0, 0, 2, 3, 0, 4],
                [8, 2, 3, 4, 5, 6, 7],
                [0, 5, 0, 6, 7, 0, 0]], dtype=np.int64)
VALID = IDS != 0
LAST = [int(np.nonzero(row)[0].max()) for row in VALID]  # each sequence's last unmasked step: [6, 3, 6, 6, 4]
# a batch whose sequence 3 is wholly masked
IDS_EMPTY = np.array([[0, 0, 3, 4, 5, 6, 7],
                      [1, 2, 3, 4, 0, 0, 0],
                      [1, 0, 0, 2, 3, 0, 4],
                      [0, 0, 0, 0, 0, 0, 0]], dtype=np.int64)


def _np(keras, out):
    return [keras.ops.convert_to_numpy(t) for t in (out if isinstance(out, (list, tuple)) else [out])]


def _randomize(model, seed):
    """Weights large enough (and biases non-zero) that a wrong step or gate shows well above 1e-5."""
    rng = np.random.default_rng(seed)
    for w in model.weights:
        w.assign(rng.uniform(-0.8, 0.8, w.shape).astype("float32"))


def _features(valid, value, seed=11, features=FEATURES):
    """A float batch for ``valid`` whose masked steps are all ``value`` (the Masking layer's mask_value)."""
    x = np.random.default_rng(seed).standard_normal((*valid.shape, features)).astype(np.float32)
    x[~valid] = value
    return x


def _export(invoke, ckpt, x, tmp_path, *args, name="s"):
    np.save(tmp_path / f"{name}_x.npy", x)
    out = tmp_path / f"{name}.safetensors"
    result = invoke("export-state", ckpt, tmp_path / f"{name}_x.npy", "-o", out, "--include-output", "--force",
                    *args)
    assert result.exit_code == 0, result.stdout + result.stderr
    return load_file(out), result


def _close(got, want, what=""):
    np.testing.assert_allclose(got, want, atol=TOL, rtol=0, err_msg=what)


# --- models, built and saved once --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def emb_lstm(keras, tmp_path_factory):
    """Embedding(mask_zero=True) -> LSTM(return_sequences, return_state), saved as .keras and legacy .h5; Keras's
    [y, h, c] on IDS and on IDS_EMPTY."""
    d = tmp_path_factory.mktemp("emb_lstm")
    keras.utils.set_random_seed(1)
    inp = keras.Input((None,), dtype="int32")
    emb = keras.layers.Embedding(VOCAB, EMB, mask_zero=True, name="emb")
    lstm = keras.layers.LSTM(UNITS, return_sequences=True, return_state=True, name="lstm")
    model = keras.Model(inp, lstm(emb(inp)))
    _randomize(model, 2)
    model.save(d / "m.keras")
    model.save(d / "m.h5")
    return {"dir": d, "model": model, "emb": emb, "lstm": lstm, "paths": {".keras": d / "m.keras", ".h5": d / "m.h5"},
            "want": _np(keras, model(IDS)), "want_empty": _np(keras, model(IDS_EMPTY))}


# --- 1. Embedding(mask_zero=True) -> LSTM -------------------------------------------------------------------------


@pytest.mark.parametrize("fmt,chunk", [(".keras", None), (".h5", None), (".keras", "2")])
def test_embedding_mask_zero_equals_keras(emb_lstm, invoke, tmp_path, fmt, chunk):
    """Integer ids (B, T) are looked up in the model's Embedding; id 0 steps are skipped wherever they are;
    output, h and c are Keras's [y, h, c] (also streamed 2 steps at a time)."""
    y, h, c = emb_lstm["want"]
    s, _ = _export(invoke, emb_lstm["paths"][fmt], IDS, tmp_path, *(["--chunk-size", chunk] if chunk else []))
    assert s["output"].shape == (IDS.shape[0], IDS.shape[1], UNITS)
    assert s["lstm/h"].shape == (IDS.shape[0], UNITS)
    _close(s["output"], y, "output")
    _close(s["lstm/h"], h, "h")
    _close(s["lstm/c"], c, "c")
    # Keras's own rule, seen in its output: zeros before the first valid step, the previous output repeated after
    assert np.all(y[0, :2] == 0) and np.all(y[1, 4:] == y[1, 3]) and np.all(y[2, 1:3] == y[2, 0])


def test_one_sequence_of_token_ids(emb_lstm, invoke, tmp_path):
    """A (T,) integer file is one sequence of token ids (the batch's holed row here)."""
    y, h, c = emb_lstm["want"]
    s, _ = _export(invoke, emb_lstm["paths"][".keras"], IDS[2], tmp_path)
    _close(s["lstm/h"].reshape(-1), h[2], "h")
    _close(s["lstm/c"].reshape(-1), c[2], "c")
    _close(s["output"].reshape(IDS.shape[1], UNITS), y[2], "output")


# --- 2. Masking(mask_value) -> LSTM ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def masking_models(keras, tmp_path_factory):
    d = tmp_path_factory.mktemp("masking")
    built = {}
    for k, value in enumerate((0.0, -1.0)):
        keras.utils.set_random_seed(3 + k)
        lstm = keras.layers.LSTM(UNITS, return_sequences=True, return_state=True, name="lstm")
        inp = keras.Input((None, FEATURES))
        model = keras.Model(inp, lstm(keras.layers.Masking(mask_value=value, name="masking")(inp)))
        _randomize(model, 4 + k)
        path = d / f"masking_{k}.keras"
        model.save(path)
        x = _features(VALID, value, seed=20 + k)
        built[value] = (path, x, _np(keras, model(x)))
    return built


@pytest.mark.parametrize("value", [0.0, -1.0])
def test_masking_layer_equals_keras(masking_models, invoke, tmp_path, value):
    """Masking(mask_value): a step whose features all equal the value is skipped (front, end, holes)."""
    path, x, (y, h, c) = masking_models[value]
    s, _ = _export(invoke, path, x, tmp_path)
    _close(s["output"], y, "output")
    _close(s["lstm/h"], h, "h")
    _close(s["lstm/c"], c, "c")


def test_masking_needs_every_feature(keras, masking_models, invoke, tmp_path):
    """A step where only some features equal the mask value is read, as Keras reads it."""
    path, x, _ = masking_models[-1.0]
    x = x.copy()
    x[3, 2, 0] = -1.0  # one feature only: not masked
    x[0, 4, :2] = -1.0
    model = keras.saving.load_model(path)
    y, h, c = _np(keras, model(x))
    s, _ = _export(invoke, path, x, tmp_path)
    _close(s["output"], y, "output")
    _close(s["lstm/h"], h, "h")
    _close(s["lstm/c"], c, "c")


def test_initial_state_with_mask_equals_keras(keras, masking_models, invoke, tmp_path):
    """--initial-state with a mask: Keras's layer called with the mask and the initial state; a wholly masked
    sequence keeps its initial state, and its output is zeros."""
    path, x, _ = masking_models[-1.0]
    x = x.copy()
    x[4] = -1.0  # sequence 4: every step masked
    rng = np.random.default_rng(17)
    h0, c0 = (rng.standard_normal((x.shape[0], UNITS)).astype(np.float32) for _ in range(2))
    np.savez(tmp_path / "state.npz", h=h0, c=c0)
    layer = keras.saving.load_model(path).get_layer("lstm")
    y, h, c = _np(keras, layer(x, mask=~np.all(x == -1.0, axis=-1), initial_state=[h0, c0]))
    np.testing.assert_array_equal(h[4], h0[4])  # Keras: the initial state carries through
    s, result = _export(invoke, path, x, tmp_path, "--initial-state", tmp_path / "state.npz")
    assert "sequence 4" in result.stderr, result.stderr
    _close(s["output"], y, "output")
    _close(s["lstm/h"], h, "h")
    _close(s["lstm/c"], c, "c")


# --- 3. Bidirectional ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bidirectional(keras, tmp_path_factory):
    d = tmp_path_factory.mktemp("bi")
    keras.utils.set_random_seed(5)
    inp = keras.Input((None,), dtype="int32")
    bi = keras.layers.Bidirectional(keras.layers.LSTM(UNITS, return_sequences=True, return_state=True), name="bi")
    model = keras.Model(inp, bi(keras.layers.Embedding(VOCAB, EMB, mask_zero=True, name="emb")(inp)))
    _randomize(model, 6)
    model.save(d / "bi.keras")
    model.save(d / "bi.h5")
    return {".keras": d / "bi.keras", ".h5": d / "bi.h5"}, _np(keras, model(IDS))


@pytest.mark.parametrize("fmt,chunk", [(".keras", None), (".h5", None), (".keras", "3")])
def test_bidirectional_after_embedding_equals_keras(bidirectional, invoke, tmp_path, fmt, chunk):
    """Embedding(mask_zero) -> Bidirectional(LSTM): Keras's [y, h_f, c_f, h_b, c_b]; y is zero at masked steps."""
    paths, (y, hf, cf, hb, cb) = bidirectional
    assert np.all(y[~VALID] == 0)  # Keras's rule inside Bidirectional
    s, _ = _export(invoke, paths[fmt], IDS, tmp_path, *(["--chunk-size", chunk] if chunk else []))
    assert s["output"].shape == (IDS.shape[0], IDS.shape[1], 2 * UNITS)
    _close(s["output"], y, "output")
    assert np.all(s["output"][~VALID] == 0)
    for k, v in (("h_f", hf), ("c_f", cf), ("h_b", hb), ("c_b", cb)):
        _close(s[f"bi/{k}"], v, k)


def test_trace_of_masked_bidirectional_equals_keras(bidirectional, invoke, tmp_path):
    """trace: both directions' h at valid steps (input-time order) are Keras's y halves there; NaN elsewhere; the
    backward direction's final state sits at each sequence's first valid step."""
    paths, (y, hf, cf, hb, cb) = bidirectional
    np.save(tmp_path / "ids.npy", IDS)
    out = tmp_path / "t.safetensors"
    result = invoke("trace", paths[".keras"], tmp_path / "ids.npy", "-o", out)
    assert result.exit_code == 0, result.stdout + result.stderr
    t = load_file(out)
    np.testing.assert_array_equal(t["valid"], VALID.astype(np.uint8))
    _close(t["bi/forward/h"][VALID], y[..., :UNITS][VALID], "forward h")
    _close(t["bi/backward/h"][VALID], y[..., UNITS:][VALID], "backward h")
    assert np.all(np.isnan(t["bi/forward/h"][~VALID])) and np.all(np.isnan(t["bi/backward/h"][~VALID]))
    rows, first = np.arange(IDS.shape[0]), VALID.argmax(axis=1)
    _close(t["bi/backward/h"][rows, first], hb, "backward final h")
    _close(t["bi/backward/c"][rows, first], cb, "backward final c")
    _close(t["bi/forward/c"][rows, LAST], cf, "forward final c")


def test_stacked_bidirectional_with_mask_equals_keras(keras, invoke, tmp_path):
    """Embedding(mask_zero) -> Bidirectional -> Bidirectional, saved as legacy .h5: the second layer's states and
    output are Keras's, and run --all-layers checks every layer and direction ok."""
    keras.utils.set_random_seed(15)
    inp = keras.Input((None,), dtype="int32")
    b1 = keras.layers.Bidirectional(keras.layers.LSTM(4, return_sequences=True), name="b1")
    b2 = keras.layers.Bidirectional(keras.layers.LSTM(4, return_sequences=True, return_state=True), name="b2")
    model = keras.Model(inp, b2(b1(keras.layers.Embedding(VOCAB, 8, mask_zero=True, name="emb")(inp))))
    _randomize(model, 16)
    model.save(tmp_path / "bb.h5")
    y, hf, cf, hb, cb = _np(keras, model(IDS))
    s, _ = _export(invoke, tmp_path / "bb.h5", IDS, tmp_path)
    _close(s["output"], y, "output")
    for k, v in (("h_f", hf), ("c_f", cf), ("h_b", hb), ("c_b", cb)):
        _close(s[f"b2/{k}"], v, k)
    result = invoke("run", tmp_path / "bb.h5", tmp_path / "s_x.npy", "--all-layers", "--json")
    assert result.exit_code == 0, result.stdout + result.stderr
    doc = json.loads(result.stdout)
    assert doc["ok"] is True and len(doc["checks"]) == 4 and all(ch["ok"] for ch in doc["checks"])


# --- 4. go_backwards ----------------------------------------------------------------------------------------------


def test_go_backwards_with_mask_equals_keras(keras, invoke, tmp_path):
    """go_backwards reverses the whole time axis, mask included; the output is in processing order, as Keras's."""
    keras.utils.set_random_seed(7)
    valid = np.array([[0, 0, 1, 1, 1, 1, 1],   # front padded
                      [1, 0, 0, 1, 1, 0, 1],   # holed
                      [1, 1, 1, 1, 0, 0, 0],   # end padded
                      [1, 1, 1, 1, 1, 1, 1]], dtype=bool)
    inp = keras.Input((None, FEATURES))
    lstm = keras.layers.LSTM(UNITS, go_backwards=True, return_sequences=True, return_state=True, name="gb")
    model = keras.Model(inp, lstm(keras.layers.Masking(0.0, name="masking")(inp)))
    _randomize(model, 8)
    model.save(tmp_path / "gb.keras")
    x = _features(valid, 0.0, seed=9)
    y, h, c = _np(keras, model(x))
    s, _ = _export(invoke, tmp_path / "gb.keras", x, tmp_path)
    _close(s["output"], y, "output (processing order)")
    _close(s["gb/h"], h, "h")
    _close(s["gb/c"], c, "c")
    # run: h sits in y at the last valid step in processing order (the mask reversed), where Keras puts it
    result = invoke("run", tmp_path / "gb.keras", tmp_path / "s_x.npy", "--json")
    assert result.exit_code == 0, result.stdout + result.stderr
    doc = json.loads(result.stdout)
    assert doc["ok"] is True
    where = doc["checks"][0]["output_time_index"]
    assert where == [int(np.nonzero(row)[0].max()) for row in valid[:, ::-1]]
    _close(y[np.arange(len(where)), where], h, "Keras's h at the named step")


# --- 5. two stacked masked layers ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def stacked(keras, tmp_path_factory):
    d = tmp_path_factory.mktemp("stacked")
    keras.utils.set_random_seed(9)
    inp = keras.Input((None,), dtype="int32")
    first = keras.layers.LSTM(UNITS, return_sequences=True, name="first")
    second = keras.layers.LSTM(UNITS, return_sequences=True, return_state=True, name="second")
    ya = first(keras.layers.Embedding(VOCAB, EMB, mask_zero=True, name="emb")(inp))
    yb, hb, cb = second(ya)
    model = keras.Model(inp, [ya, yb, hb, cb])
    _randomize(model, 10)
    model.save(d / "stack.keras")
    return d / "stack.keras", _np(keras, model(IDS))


def test_stacked_masked_layers_equal_keras(stacked, invoke, tmp_path):
    """Embedding(mask_zero) -> LSTM -> LSTM: the mask reaches both layers; the last layer's y, h, c are Keras's,
    and the first layer's h is Keras's first-layer y at the last step (masked steps repeat the output)."""
    path, (ya, yb, hb, cb) = stacked
    s, _ = _export(invoke, path, IDS, tmp_path)
    _close(s["output"], yb, "output")
    _close(s["second/h"], hb, "second h")
    _close(s["second/c"], cb, "second c")
    _close(s["first/h"], ya[:, -1], "first h")


def test_stacked_is_one_module_and_run_all_layers_ok(stacked, invoke, tmp_path):
    path, _ = stacked
    result = invoke("inspect", path, "--json")
    assert result.exit_code == 0, result.stdout + result.stderr
    names = [m["name"] for m in json.loads(result.stdout)["modules"]]
    assert "first+second" in names, names
    np.save(tmp_path / "ids.npy", IDS)
    result = invoke("run", path, tmp_path / "ids.npy", "--all-layers", "--json")
    assert result.exit_code == 0, result.stdout + result.stderr
    doc = json.loads(result.stdout)
    assert doc["ok"] is True and len(doc["checks"]) == 2
    assert all(ch["ok"] for ch in doc["checks"]), doc["checks"]
    assert all(ch["output_time_index"] == LAST for ch in doc["checks"]), doc["checks"]


# --- 6. trace -----------------------------------------------------------------------------------------------------


def test_trace_of_masked_model_equals_keras(emb_lstm, invoke, tmp_path):
    """trace: h at valid steps is Keras's y there, NaN at masked steps; valid is the mask; the last valid step's
    h and c are Keras's final states."""
    y, h, c = emb_lstm["want"]
    np.save(tmp_path / "ids.npy", IDS)
    out = tmp_path / "t.safetensors"
    result = invoke("trace", emb_lstm["paths"][".keras"], tmp_path / "ids.npy", "-o", out)
    assert result.exit_code == 0, result.stdout + result.stderr
    t = load_file(out)
    assert t["valid"].dtype == np.uint8 and t["valid"].shape == IDS.shape
    np.testing.assert_array_equal(t["valid"], VALID.astype(np.uint8))
    th, tc = t["lstm/forward/h"], t["lstm/forward/c"]
    assert th.shape == (IDS.shape[0], IDS.shape[1], UNITS)
    _close(th[VALID], y[VALID], "h at valid steps")
    assert np.all(np.isnan(th[~VALID])) and np.all(np.isnan(tc[~VALID]))
    rows = np.arange(IDS.shape[0])
    _close(th[rows, LAST], h, "h at the last valid step")
    _close(tc[rows, LAST], c, "c at the last valid step")


# --- 7. run: checks and notes ---------------------------------------------------------------------------------------


def test_run_json_ok_and_text_names_last_valid_steps(emb_lstm, invoke, tmp_path):
    np.save(tmp_path / "ids.npy", IDS)
    ckpt = emb_lstm["paths"][".keras"]
    result = invoke("run", ckpt, tmp_path / "ids.npy", "--json")
    assert result.exit_code == 0, result.stdout + result.stderr
    doc = json.loads(result.stdout)
    assert doc["ok"] is True and doc["checks"] and all(ch["ok"] for ch in doc["checks"])
    assert doc["checks"][0]["output_time_index"] == LAST
    # Keras's h is its y at each sequence's last unmasked step: the JSON's position, checked against Keras
    y, h, _ = emb_lstm["want"]
    _close(y[np.arange(len(LAST)), doc["checks"][0]["output_time_index"]], h)

    result = invoke("run", ckpt, tmp_path / "ids.npy")
    assert result.exit_code == 0, result.stdout + result.stderr
    assert _named_last_steps(result.stdout) == LAST, result.stdout


def _named_last_steps(text: str) -> list[int]:
    """The last valid step per sequence as the text output names it: a ``last[b] = [...]`` note, or the
    per-sequence table's ``y[b, t, ...]`` (one row per sequence)."""
    found = re.search(r"last\[b\] = \[([0-9, ]*)\]", " ".join(text.split()))
    if found:
        return [int(v) for v in found.group(1).split(",")]
    assert "Per sequence" in text, text
    table = text[text.index("Per sequence"):]
    rows = {int(b): int(t) for b, t in re.findall(r"y\[(\d+), (\d+), \d+:\d+\]", table)}
    assert sorted(rows) == list(range(len(rows))), rows
    return [rows[b] for b in range(len(rows))]


# --- 8. --no-mask ---------------------------------------------------------------------------------------------------


def test_no_mask_equals_keras_without_mask(keras, emb_lstm, invoke, tmp_path):
    """--no-mask runs every step (id 0 embedded like any other): Keras's Embedding(mask_zero=False) with the same
    weights; a note on stderr says Keras would skip the padding."""
    inp = keras.Input((None,), dtype="int32")
    emb = keras.layers.Embedding(VOCAB, EMB, mask_zero=False)
    lstm = keras.layers.LSTM(UNITS, return_sequences=True, return_state=True)
    model = keras.Model(inp, lstm(emb(inp)))
    emb.set_weights(emb_lstm["emb"].get_weights())
    lstm.set_weights(emb_lstm["lstm"].get_weights())
    y, h, c = _np(keras, model(IDS))
    assert np.abs(h - emb_lstm["want"][1]).max() > 1e-3  # the mask matters on this batch
    s, result = _export(invoke, emb_lstm["paths"][".keras"], IDS, tmp_path, "--no-mask")
    _close(s["output"], y, "output")
    _close(s["lstm/h"], h, "h")
    _close(s["lstm/c"], c, "c")
    assert "Keras" in result.stderr, result.stderr
    assert "--no-mask" in result.stderr, result.stderr


# --- 9. --mask-value on a model without a Masking layer -------------------------------------------------------------


def test_mask_value_option_equals_keras_masking_layer(keras, invoke, tmp_path):
    keras.utils.set_random_seed(12)
    plain = keras.layers.LSTM(UNITS, return_sequences=True, name="lstm")
    model = keras.Sequential([keras.Input((None, FEATURES)), plain])
    _randomize(model, 13)
    model.save(tmp_path / "plain.keras")
    value = 0.5
    inp = keras.Input((None, FEATURES))
    masked_lstm = keras.layers.LSTM(UNITS, return_sequences=True, return_state=True)
    oracle = keras.Model(inp, masked_lstm(keras.layers.Masking(mask_value=value)(inp)))
    masked_lstm.set_weights(plain.get_weights())
    x = _features(VALID, value, seed=14)
    y, h, c = _np(keras, oracle(x))
    s, _ = _export(invoke, tmp_path / "plain.keras", x, tmp_path, "--mask-value", value)
    _close(s["output"], y, "output")
    _close(s["lstm/h"], h, "h")
    _close(s["lstm/c"], c, "c")
    unmasked, _ = _export(invoke, tmp_path / "plain.keras", x, tmp_path, name="unmasked")
    assert np.abs(unmasked["lstm/h"] - h).max() > 1e-3  # without the option, the padding is read


# --- 10. a wholly masked sequence -----------------------------------------------------------------------------------


def test_wholly_masked_sequence_keeps_initial_state(emb_lstm, invoke, tmp_path):
    y, h, c = emb_lstm["want_empty"]
    assert np.all(h[3] == 0) and np.all(c[3] == 0) and np.all(y[3] == 0)  # Keras: the zero initial state
    s, result = _export(invoke, emb_lstm["paths"][".keras"], IDS_EMPTY, tmp_path)
    assert "sequence 3" in result.stderr and "warning" in result.stderr.lower(), result.stderr
    _close(s["output"], y, "output")
    _close(s["lstm/h"], h, "h")
    _close(s["lstm/c"], c, "c")
    assert np.all(s["lstm/h"][3] == 0) and np.all(s["lstm/c"][3] == 0)


# --- 11. the real Keras 2.2 Masking(0.0) file, against float64 numpy ----------------------------------------------


REAL = real_checkpoints_dir() / "dl4j_keras2_masking_zero_lstm" / "masking_zero_lstm.h5"


def _hard_sigmoid(z):  # Keras 1/2
    return np.clip(0.2 * z + 0.5, 0.0, 1.0)


def _numpy_masked_lstm(x, kernel, recurrent, bias, mask_value=0.0):
    """Keras 2 LSTM (gates i, f, c, o; hard_sigmoid gates, tanh cell) in float64, skipping a step whose features
    all equal ``mask_value``: the state carries through, the output repeats the previous (zeros before the first)."""
    x, kernel, recurrent, bias = (np.asarray(a, np.float64) for a in (x, kernel, recurrent, bias))
    b, t, _ = x.shape
    n = recurrent.shape[0]
    h, c = np.zeros((b, n)), np.zeros((b, n))
    y = np.zeros((b, t, n))
    for s in range(t):
        keep = ~np.all(x[:, s] == mask_value, axis=-1)
        z = x[:, s] @ kernel + h @ recurrent + bias
        i, f = _hard_sigmoid(z[:, :n]), _hard_sigmoid(z[:, n:2 * n])
        g, o = np.tanh(z[:, 2 * n:3 * n]), _hard_sigmoid(z[:, 3 * n:])
        c_new = f * c + i * g
        h_new = o * np.tanh(c_new)
        c = np.where(keep[:, None], c_new, c)
        h = np.where(keep[:, None], h_new, h)
        y[:, s] = h
    return y, h, c


@pytest.mark.skipif(not REAL.is_file(), reason="real checkpoints absent (set LSTMSCOPE_REAL_CHECKPOINTS)")
def test_real_keras2_masking_file_equals_numpy(invoke, tmp_path):
    h5py = pytest.importorskip("h5py")
    with h5py.File(REAL, "r") as f:
        config = json.loads(f.attrs["model_config"])
        layers = config["config"] if isinstance(config["config"], list) else config["config"]["layers"]
        (masking,) = [la for la in layers if la["class_name"] == "Masking"]
        (lstm,) = [la for la in layers if la["class_name"] == "LSTM"]
        assert masking["config"]["mask_value"] == 0.0
        assert lstm["config"]["recurrent_activation"] == "hard_sigmoid" and lstm["config"]["activation"] == "tanh"
        name = lstm["config"]["name"]
        group = f["model_weights"][name][name]
        kernel, recurrent, bias = (group[k][()] for k in ("kernel:0", "recurrent_kernel:0", "bias:0"))
        time, features = masking["config"]["batch_input_shape"][1:]
    units = recurrent.shape[0]
    assert kernel.shape == (features, 4 * units) and bias.shape == (4 * units,)
    valid = np.ones((5, time), dtype=bool)
    valid[0, :3] = False          # front padded
    valid[1, -4:] = False         # end padded
    valid[2, [2, 3, 6]] = False   # holes
    valid[4, [0, 4, time - 1]] = False  # front + hole + end; row 3 is full
    x = _features(valid, 0.0, seed=15, features=features)
    y, h, c = _numpy_masked_lstm(x, kernel, recurrent, bias)
    assert np.all(y[0, :3] == 0) and np.all(y[1, -4:] == y[1, -5])
    s, _ = _export(invoke, REAL, x, tmp_path)
    _close(s["output"], y, "output")
    _close(s[f"{name}/h"], h, "h")
    _close(s[f"{name}/c"], c, "c")
    no_mask, _ = _export(invoke, REAL, x, tmp_path, "--no-mask", name="no_mask")
    assert np.abs(no_mask[f"{name}/h"] - h).max() > 1e-4  # the mask matters on this batch
