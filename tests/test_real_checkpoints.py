"""Real LSTM checkpoints from public repositories (../shared/real_checkpoints, described by its
manifest.json), read in place and never copied.

Truth here is the manifest (architecture and sha256, verified when it was written) and
torch.nn.LSTM loaded with the file's own tensors (strict=True) and run in the test.
"""

from __future__ import annotations

import json
import types
import warnings

import numpy as np
import pytest
import safetensors.torch
import torch

from conftest import real_checkpoints_dir, real_manifest

MANIFEST = real_manifest()
if not MANIFEST:
    pytest.skip("no real checkpoints (set LSTMSCOPE_REAL_CHECKPOINTS or add ../shared/real_checkpoints)",
                allow_module_level=True)

ROOT = real_checkpoints_dir()
TORCH_OK = [e for e in MANIFEST if e["framework"] == "pytorch" and e["loads_with_weights_only"]]
PICKLED = [e for e in MANIFEST if e["framework"] == "pytorch" and not e["loads_with_weights_only"]]
KERAS = [e for e in MANIFEST if e["framework"] == "keras"]
MODULES = [(e, mod) for e in TORCH_OK for mod in e["lstm_modules"]]
SPEC_FIELDS = ("input_size", "hidden_size", "num_layers", "bidirectional", "proj_size", "bias", "dtype")
TOL = 1e-6


def _path(entry):
    return ROOT / entry["file"]


def _module_id(pair):
    entry, mod = pair
    return f"{entry['file']}:{mod['prefix'].rstrip('.')}"


@pytest.fixture(scope="module")
def input_files(tmp_path_factory):
    """input_size -> a random (2, 5, input_size) float32 .npy and its array."""
    root = tmp_path_factory.mktemp("real_inputs")
    rng = np.random.default_rng(7)
    out = {}
    for size in sorted({mod["input_size"] for _, mod in MODULES} | {mod["input_size"] for e in PICKLED
                                                                   for mod in e["lstm_modules"]}):
        x = rng.standard_normal((2, 5, size)).astype(np.float32)
        path = root / f"x_{size}.npy"
        np.save(path, x)
        out[size] = (path, x)
    return out


def _flatten(obj, prefix, out):
    """Nested dicts/lists of tensors -> {"a.b.c": tensor}, as the manifest's prefixes are written."""
    if isinstance(obj, torch.Tensor):
        out[prefix[:-1]] = obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            _flatten(v, f"{prefix}{k}.", out)
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            _flatten(v, f"{prefix}{i}.", out)


def _torch_run(entry, mod, x):
    """Load the module's tensors ourselves into an nn.LSTM of the manifest's architecture, run x."""
    if _path(entry).suffix == ".safetensors":
        obj = safetensors.torch.load_file(str(_path(entry)), device="cpu")
    else:
        obj = torch.load(_path(entry), weights_only=True, map_location="cpu")
    flat = {}
    _flatten(obj, "", flat)
    prefix = mod["prefix"]
    sd = {k[len(prefix):]: v for k, v in flat.items() if k.startswith(prefix) and "." not in k[len(prefix):]}
    lstm = torch.nn.LSTM(
        input_size=mod["input_size"], hidden_size=mod["hidden_size"], num_layers=mod["num_layers"],
        bidirectional=mod["bidirectional"], proj_size=mod["proj_size"], bias=mod["bias"], batch_first=True,
    )
    lstm.load_state_dict(sd, strict=True)
    lstm.eval()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*not supported with oneDNN.*")
        out, (h, c) = lstm(torch.from_numpy(x))
    return out.numpy(), h.numpy(), c.numpy()


def _assert_one_error_line(result, *needles):
    assert result.exit_code == 2, result.stdout + result.stderr
    assert result.stdout == ""
    err = result.stderr
    assert err.startswith("Error: ")
    assert err.endswith("\n") and err.count("\n") == 1, err
    assert "Traceback" not in err
    for n in needles:
        assert n in err, (n, err)
    return err


# --- PyTorch checkpoints that load with weights_only ----------------------------------------------

@pytest.mark.parametrize("entry", TORCH_OK, ids=lambda e: e["file"])
def test_inspect_matches_manifest(invoke, entry):
    result = invoke("inspect", _path(entry), "--json")
    assert result.exit_code == 0, result.stdout + result.stderr
    assert result.stderr == ""
    doc = json.loads(result.stdout)
    assert doc["schema"] == "lstmscope.inspect/1"
    assert doc["checkpoint"]["sha256"] == entry["sha256"]
    got = {m["prefix"]: {k: m[k] for k in SPEC_FIELDS} for m in doc["modules"]}
    want = {m["prefix"].rstrip("."): {k: m[k] for k in SPEC_FIELDS} for m in entry["lstm_modules"]}
    assert len(doc["modules"]) == len(entry["lstm_modules"])
    assert got == want


@pytest.mark.parametrize("all_layers", [False, True], ids=["fused", "all-layers"])
@pytest.mark.parametrize("pair", MODULES, ids=_module_id)
def test_run_cli_checks_ok(invoke, input_files, pair, all_layers):
    entry, mod = pair
    path, _ = input_files[mod["input_size"]]
    args = ["run", _path(entry), path, "--module", mod["prefix"].rstrip("."), "--json"]
    if all_layers:
        args.append("--all-layers")
    result = invoke(*args)
    assert result.exit_code == 0, result.stdout + result.stderr
    assert result.stderr == ""
    doc = json.loads(result.stdout)
    assert doc["schema"] == "lstmscope.run/1"
    assert doc["ok"] is True
    d = 2 if mod["bidirectional"] else 1
    n_checks = mod["num_layers"] * d if all_layers else d
    assert len(doc["checks"]) == n_checks
    assert all(c["ok"] for c in doc["checks"])
    out_w = mod["proj_size"] or mod["hidden_size"]
    assert doc["shapes"] == {"output": [2, 5, d * out_w], "h_n": [mod["num_layers"] * d, 2, out_w],
                             "c_n": [mod["num_layers"] * d, 2, mod["hidden_size"]]}
    assert doc["checkpoint"]["sha256"] == entry["sha256"]


@pytest.mark.parametrize("pair", MODULES, ids=_module_id)
def test_run_matches_torch(input_files, pair):
    from lstmscope.runner import RunOptions, execute_run

    entry, mod = pair
    path, x = input_files[mod["input_size"]]
    out_t, h_t, c_t = _torch_run(entry, mod, x)
    for all_layers in (False, True):
        res = execute_run(RunOptions(checkpoint=_path(entry), input=path, module=mod["prefix"],
                                     all_layers=all_layers)).result
        assert res.h_n.shape == h_t.shape and res.c_n.shape == c_t.shape and res.output.shape == out_t.shape
        np.testing.assert_allclose(res.h_n, h_t, rtol=0, atol=TOL, err_msg=f"h_n all_layers={all_layers}")
        np.testing.assert_allclose(res.c_n, c_t, rtol=0, atol=TOL, err_msg=f"c_n all_layers={all_layers}")
        np.testing.assert_allclose(res.output, out_t, rtol=0, atol=TOL, err_msg=f"output all_layers={all_layers}")


# --- full-module pickles: read without running code ---------------------------------------------

@pytest.mark.parametrize("entry", PICKLED, ids=lambda e: e["file"])
def test_full_module_pickle_is_read_without_running_code(invoke, input_files, entry):
    from lstmscope.runner import RunOptions, execute_run

    result = invoke("inspect", _path(entry), "--json")
    assert result.exit_code == 0, result.stdout + result.stderr
    assert result.stderr == ""
    doc = json.loads(result.stdout)
    assert doc["checkpoint"]["sha256"] == entry["sha256"]
    got = {m["prefix"]: {k: m[k] for k in SPEC_FIELDS} for m in doc["modules"]}
    want = {m["prefix"].rstrip("."): {k: m[k] for k in SPEC_FIELDS} for m in entry["lstm_modules"]}
    assert got == want
    assert "torch.nn.modules.rnn.LSTM" in doc["checkpoint"]["stubbed_globals"]
    assert doc["checkpoint"]["refused_calls"] == []
    table = invoke("inspect", _path(entry))
    assert table.exit_code == 0 and "read without running code" in table.stdout
    for mod in entry["lstm_modules"]:
        path, x = input_files[mod["input_size"]]
        result = invoke("run", _path(entry), path, "--module", mod["prefix"].rstrip("."), "--json")
        assert result.exit_code == 0, result.stdout + result.stderr
        assert json.loads(result.stdout)["ok"] is True
        assert "without running code" in result.stderr and len(result.stderr.splitlines()) == 1
        # truth: the file's LSTM tensors, found by the test itself in a stubbed-out read, run by nn.LSTM
        res = execute_run(RunOptions(checkpoint=_path(entry), input=path, module=mod["prefix"].rstrip("."))).result
        out_t, h_t, c_t = _torch_run_params(mod, _stubbed_lstm_params(_path(entry), mod["prefix"]), x)
        np.testing.assert_allclose(res.h_n, h_t, rtol=0, atol=TOL)
        np.testing.assert_allclose(res.c_n, c_t, rtol=0, atol=TOL)
        np.testing.assert_allclose(res.output, out_t, rtol=0, atol=TOL)


def test_flinus_full_module_checkpoint(invoke):
    entry = next((e for e in PICKLED if e["file"] == "flinus_gas_fullmodule_ckpt/lstm_model.ckpt"), None)
    if entry is None or not _path(entry).is_file():
        pytest.skip("flinus full-module checkpoint absent")
    doc = json.loads(invoke("inspect", _path(entry), "--json").stdout)
    (mod,) = doc["modules"]
    assert (mod["prefix"], mod["input_size"], mod["hidden_size"]) == ("lstm", 1, 32)
    assert "__main__.LSTM" in doc["checkpoint"]["stubbed_globals"]


class _Anything:
    """Stands for any class a pickle names; keeps the state it is given (the test's own stub)."""

    def __setstate__(self, state):
        self.__dict__.update(state)


def _stubbed_lstm_params(path, prefix):
    """The nn.LSTM's parameters, read by plain pickle with every non-torch class replaced by _Anything."""
    import pickle

    class Unpickler(pickle.Unpickler):
        def find_class(self, module, name):
            if module == "torch._utils" and name.startswith("_rebuild_") or (module, name) in (
                    ("collections", "OrderedDict"), ("__builtin__", "set"), ("builtins", "set")):
                return super().find_class(module, name)
            return _Anything  # (storage types never get here: torch maps them first)

    stub = types.SimpleNamespace(__name__="pickle", Unpickler=Unpickler, load=pickle.load)
    obj = torch.load(path, map_location="cpu", weights_only=False, pickle_module=stub)
    for part in prefix.rstrip(".").split("."):
        obj = obj._modules[part]
    return dict(obj._parameters)


def _torch_run_params(mod, params, x):
    lstm = torch.nn.LSTM(
        input_size=mod["input_size"], hidden_size=mod["hidden_size"], num_layers=mod["num_layers"],
        bidirectional=mod["bidirectional"], proj_size=mod["proj_size"], bias=mod["bias"], batch_first=True,
    )
    lstm.load_state_dict(params, strict=True)
    lstm.eval()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*not supported with oneDNN.*")
        out, (h, c) = lstm(torch.from_numpy(x))
    return out.numpy(), h.numpy(), c.numpy()
