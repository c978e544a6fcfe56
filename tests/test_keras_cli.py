"""Keras checkpoints through the command line, end to end, against what real Keras computed.

Truth: the ``keras_oracle.npz`` files beside the real Keras checkpoints in ../shared/real_checkpoints
(``<layer>::x``, ``::y``, ``::h``, ``::c``, computed by Keras itself; a Bidirectional layer's directions
as ``<layer>/forward`` and ``<layer>/backward``, each run alone, the backward y in processing order),
and the manifest's description of each file. Nothing here is computed by lstmscope's own code.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from safetensors.numpy import load_file

from conftest import real_checkpoints_dir, real_manifest

MANIFEST = real_manifest()
if not MANIFEST:
    pytest.skip("no real checkpoints (set LSTMSCOPE_REAL_CHECKPOINTS or add ../shared/real_checkpoints)",
                allow_module_level=True)

ROOT = real_checkpoints_dir()
KERAS = [e for e in MANIFEST if e["framework"] == "keras"]
TOL = 1e-5


def _oracle_names(entry) -> list[str]:
    """The oracle's layer names (Keras config names), in file order. The manifest lists the same layers in
    the same order, some under their weight-group names (gabriel: config lstm_2/lstm_3, stored as lstm/lstm_1)."""
    with np.load(ROOT / entry["keras_oracle"]["file"]) as z:
        names = [k.split("::")[0].removesuffix("/forward").removesuffix("/backward") for k in z.files]
    return list(dict.fromkeys(names))


ORACLE_LAYERS = [(e, layer | {"layer": name}) for e in KERAS if "keras_oracle" in e
                 for layer, name in zip(e["keras_lstm_layers"], _oracle_names(e))]


def _oracle(entry) -> dict[str, np.ndarray]:
    with np.load(ROOT / entry["keras_oracle"]["file"]) as z:
        return {k: z[k] for k in z.files}


def _ids(pair):
    return f"{pair[0]['file']}:{pair[1]['layer']}"


@pytest.mark.parametrize("pair", ORACLE_LAYERS, ids=_ids)
def test_export_state_equals_real_keras(invoke, tmp_path, pair):
    """export-state --module LAYER --include-output writes y, h, c as Keras computed them (1e-5)."""
    entry, layer = pair
    name, units = layer["layer"], layer["hidden_size"]
    oracle = _oracle(entry)
    x = oracle[f"{name}::x"] if f"{name}::x" in oracle else oracle[f"{name}/forward::x"]
    np.save(tmp_path / "x.npy", x)
    out = tmp_path / "s.safetensors"
    result = invoke("export-state", ROOT / entry["file"], tmp_path / "x.npy", "-o", out, "--module", name,
                    "--include-output", "--json")
    assert result.exit_code == 0, result.stdout + result.stderr
    doc = json.loads(result.stdout)
    assert doc["metadata"]["layout"] == "keras" and doc["ok"] is True
    s = load_file(out)
    if not layer["bidirectional"]:
        np.testing.assert_allclose(s[f"{name}/h"], oracle[f"{name}::h"], atol=TOL, rtol=0)
        np.testing.assert_allclose(s[f"{name}/c"], oracle[f"{name}::c"], atol=TOL, rtol=0)
        np.testing.assert_allclose(s["output"], oracle[f"{name}::y"], atol=TOL, rtol=0)
        assert s[f"{name}/h"].shape == (x.shape[0], units)  # (batch, units), as Keras returns it
        return
    fwd, bwd = f"{name}/forward", f"{name}/backward"
    np.testing.assert_allclose(s[f"{name}/h_f"], oracle[f"{fwd}::h"], atol=TOL, rtol=0)
    np.testing.assert_allclose(s[f"{name}/c_f"], oracle[f"{fwd}::c"], atol=TOL, rtol=0)
    np.testing.assert_allclose(s[f"{name}/h_b"], oracle[f"{bwd}::h"], atol=TOL, rtol=0)
    np.testing.assert_allclose(s[f"{name}/c_b"], oracle[f"{bwd}::c"], atol=TOL, rtol=0)
    # Bidirectional concat: the backward half is re-reversed to input order; the oracle's is in processing order
    np.testing.assert_allclose(s["output"][..., :units], oracle[f"{fwd}::y"], atol=TOL, rtol=0)
    np.testing.assert_allclose(s["output"][..., units:], oracle[f"{bwd}::y"][:, ::-1], atol=TOL, rtol=0)


@pytest.mark.parametrize("pair", ORACLE_LAYERS, ids=_ids)
def test_trace_equals_real_keras(invoke, tmp_path, pair):
    """trace --module LAYER: every step's h is the y real Keras returned, and the last step's h and c its final
    states (1e-5); a Bidirectional's backward direction, stored in input-time order, is Keras's backward y (in
    processing order) reversed, and its final state sits at step 0."""
    entry, layer = pair
    name = layer["layer"]
    oracle = _oracle(entry)
    dirs = [("forward", name)] if not layer["bidirectional"] else [("forward", f"{name}/forward"),
                                                                   ("backward", f"{name}/backward")]
    x = oracle[f"{dirs[0][1]}::x"]
    np.save(tmp_path / "x.npy", x)
    out = tmp_path / "t.safetensors"
    result = invoke("trace", ROOT / entry["file"], tmp_path / "x.npy", "-o", out, "--module", name,
                    "--quantities", "h,c")
    assert result.exit_code == 0, result.stdout + result.stderr
    t = load_file(out)
    for direction, key in dirs:
        h, c = t[f"{name}/{direction}/h"], t[f"{name}/{direction}/c"]
        last = -1 if direction == "forward" else 0
        y = oracle[f"{key}::y"] if direction == "forward" else oracle[f"{key}::y"][:, ::-1]
        np.testing.assert_allclose(h, y, atol=TOL, rtol=0)
        np.testing.assert_allclose(h[:, last], oracle[f"{key}::h"], atol=TOL, rtol=0)
        np.testing.assert_allclose(c[:, last], oracle[f"{key}::c"], atol=TOL, rtol=0)


@pytest.mark.parametrize("entry", KERAS, ids=lambda e: e["file"])
def test_inspect_lists_every_keras_lstm_layer(invoke, entry):
    """Every LSTM layer of the manifest is listed (alone, or as a layer of a stacked module) with its input
    size, units and direction count."""
    result = invoke("inspect", ROOT / entry["file"], "--json")
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    found = {}  # every layer once, in file order: name -> (input size, units, bidirectional)
    for m in doc["modules"]:
        assert m["framework"] == "keras"
        for k, name in enumerate(m["names"]):
            found[name] = (m["input_size"] if k == 0 else m["hidden_size"] * m["num_directions"], m["hidden_size"],
                           m["bidirectional"])
    want = [(layer["input_size"], layer["hidden_size"], layer["bidirectional"]) for layer in entry["keras_lstm_layers"]]
    assert list(found.values()) == want, found
    assert {n for m in doc["single_layers"] for n in m["names"]} <= set(found)


@pytest.mark.parametrize("entry", KERAS, ids=lambda e: e["file"])
def test_run_every_keras_file(invoke, tmp_path, entry):
    """run on every layer of every real Keras file: exit 0, every h equals its place in y, (batch, units) states."""
    result = invoke("inspect", ROOT / entry["file"], "--json")
    modules = json.loads(result.stdout)["modules"]
    for m in modules:
        x = np.random.default_rng(1).standard_normal((2, 6, m["input_size"])).astype(np.float32)
        np.save(tmp_path / "x.npy", x)
        result = invoke("run", ROOT / entry["file"], tmp_path / "x.npy", "--module", m["name"], "--all-layers", "--json")
        assert result.exit_code == 0, result.stdout + result.stderr
        doc = json.loads(result.stdout)
        assert doc["ok"] is True and len(doc["checks"]) == m["num_layers"] * m["num_directions"]
        assert doc["engine"] == ("fused" if (m["gate_activation"]["name"], m["cell_activation"]["name"]) ==
                                 ("sigmoid", "tanh") else "stepwise")
        labels = [r["h_label"] for r in doc["states"]]
        assert all(label.split()[0] in m["names"] for label in labels), labels
