"""Loading checkpoints of every supported format and finding the LSTMs in them.

The truth is always the ``torch.nn.LSTM`` built here: its constructor arguments and its
``parameters()`` say what ``inspect --json`` must report. Nothing lstmscope prints is fed back
as an expectation.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from helpers import assert_one_error_line

# --- helpers ---------------------------------------------------------------------------------------

DEFAULT = dict(input_size=3, hidden_size=5, num_layers=1, bias=True, bidirectional=False, proj_size=0)


def make_lstm(seed: int = 0, dtype: torch.dtype = torch.float32, **overrides) -> tuple[nn.LSTM, dict]:
    """A fresh nn.LSTM and the configuration it was built with (the truth for the tests)."""
    cfg = {**DEFAULT, **overrides}
    torch.manual_seed(seed)
    lstm = nn.LSTM(batch_first=True, **cfg).to(dtype)
    return lstm, cfg


def expected_fields(lstm: nn.LSTM, cfg: dict, dtype: torch.dtype) -> dict:
    """What inspect must say about ``lstm``: from its constructor args and its own parameters."""
    return {
        "input_size": cfg["input_size"],
        "hidden_size": cfg["hidden_size"],
        "proj_size": cfg["proj_size"],
        "num_layers": cfg["num_layers"],
        "bidirectional": cfg["bidirectional"],
        "num_directions": 2 if cfg["bidirectional"] else 1,
        "bias": cfg["bias"],
        "dtype": str(dtype).removeprefix("torch."),
        # nn.LSTM's cell, in PyTorch's terms
        "gate_activation": {"name": "sigmoid", "alpha": None, "beta": None},
        "cell_activation": {"name": "tanh", "alpha": None, "beta": None},
        "go_backwards": False,
        "bias_layout": "ih+hh",
        "framework": "pytorch",
        "names": [],
        "parameters": sum(p.numel() for p in lstm.parameters()),
    }


def sha256_of(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def prefixed(state: dict, prefix: str) -> dict:
    return {f"{prefix}{k}": v for k, v in state.items()}


def inspect_json(invoke, path) -> dict:
    result = invoke("inspect", path, "--json")
    assert result.exit_code == 0, result.stderr
    assert result.stderr == ""
    return json.loads(result.stdout)


def small_input(tmp_path, features: int = 3):
    x = np.random.default_rng(0).standard_normal((2, 4, features)).astype(np.float32)
    path = tmp_path / "x.npy"
    np.save(path, x)
    return path


class Encoder(nn.Module):
    """A model with an LSTM nested inside other layers (used for full-module pickles too)."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Linear(4, 3)
        self.lstm = nn.LSTM(input_size=3, hidden_size=5, num_layers=2, batch_first=True)
        self.head = nn.Linear(5, 2)


class RunsCodeWhenUnpickled:
    """Unpickling this runs a shell command that creates ``marker``. Only ever pickled here."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch '{self.marker}'",))


# --- formats ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("suffix", [".pt", ".pth", ".bin", ".ckpt"])
def test_torch_zip_state_dict_any_suffix(invoke, tmp_path, suffix):
    lstm, cfg = make_lstm(num_layers=2, hidden_size=4)
    path = tmp_path / f"model{suffix}"
    torch.save(lstm.state_dict(), path)
    doc = inspect_json(invoke, path)
    assert doc["checkpoint"]["format"] == "torch-zip"
    assert doc["checkpoint"]["sha256"] == sha256_of(path)
    assert len(doc["modules"]) == 1
    mod = doc["modules"][0]
    assert mod["prefix"] == ""
    assert {k: mod[k] for k in expected_fields(lstm, cfg, torch.float32)} == expected_fields(lstm, cfg, torch.float32)


def test_legacy_pre_1_6_format(invoke, tmp_path):
    lstm, cfg = make_lstm(num_layers=2, bidirectional=True)
    path = tmp_path / "legacy.pt"
    torch.save(lstm.state_dict(), path, _use_new_zipfile_serialization=False)
    assert not zipfile.is_zipfile(path)  # really the old format
    doc = inspect_json(invoke, path)
    assert doc["checkpoint"]["format"] == "torch-legacy"
    assert doc["checkpoint"]["sha256"] == sha256_of(path)
    (mod,) = doc["modules"]
    assert mod["prefix"] == ""
    assert {k: mod[k] for k in expected_fields(lstm, cfg, torch.float32)} == expected_fields(lstm, cfg, torch.float32)


def test_legacy_format_runs(invoke, tmp_path):
    lstm, _ = make_lstm()
    path = tmp_path / "legacy.pt"
    torch.save({"state_dict": lstm.state_dict()}, path, _use_new_zipfile_serialization=False)
    result = invoke("run", path, small_input(tmp_path), "--json")
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["checkpoint"]["format"] == "torch-legacy"
    assert doc["checkpoint"]["module"] == "state_dict"
    assert doc["ok"] is True


def _wrap(kind: str, lstm: nn.LSTM):
    """(object to save, prefix the LSTM must be found under)."""
    sd = lstm.state_dict()
    if kind == "plain":
        return sd, ""
    if kind == "state_dict":
        return {"state_dict": sd, "epoch": 3}, "state_dict"
    if kind == "model_state_dict":
        return {"model_state_dict": sd, "epoch": 3, "loss": 0.25}, "model_state_dict"
    if kind == "model":
        return {"model": sd, "args": {"lr": 0.01}}, "model"
    if kind == "nested":
        return {"a": {"b": {"state_dict": sd}}}, "a.b.state_dict"
    if kind == "dotted_keys":
        return {"state_dict": prefixed(sd, "model.lstm.")}, "state_dict.model.lstm"
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["plain", "state_dict", "model_state_dict", "model", "nested", "dotted_keys"])
def test_wrapped_state_dicts(invoke, tmp_path, kind):
    lstm, cfg = make_lstm(seed=1, hidden_size=6, num_layers=2)
    obj, prefix = _wrap(kind, lstm)
    path = tmp_path / "wrapped.pt"
    torch.save(obj, path)
    doc = inspect_json(invoke, path)
    assert doc["checkpoint"]["format"] == "torch-zip"
    assert doc["checkpoint"]["sha256"] == sha256_of(path)
    (mod,) = doc["modules"]
    assert mod["prefix"] == prefix
    assert not mod["prefix"].endswith(".")
    assert {k: mod[k] for k in expected_fields(lstm, cfg, torch.float32)} == expected_fields(lstm, cfg, torch.float32)


def _adam_state(lstm: nn.LSTM) -> dict:
    """Optimizer state the way torch.optim.Adam.state_dict() lays it out: moments shaped like the weights."""
    return {
        "state": {
            i: {"step": torch.tensor(10.0), "exp_avg": torch.randn_like(p), "exp_avg_sq": torch.rand_like(p)}
            for i, p in enumerate(lstm.parameters())
        },
        "param_groups": [{
            "lr": 0.001, "betas": (0.9, 0.999), "eps": 1e-08, "weight_decay": 0.0, "amsgrad": False,
            "params": list(range(len(list(lstm.parameters())))),
        }],
    }


def test_lightning_style_checkpoint_finds_exactly_one_module(invoke, tmp_path):
    lstm, cfg = make_lstm(seed=2, hidden_size=4, num_layers=2, bidirectional=True)
    ckpt = {
        "epoch": 7,
        "global_step": 700,
        "pytorch-lightning_version": "2.4.0",
        "state_dict": prefixed(lstm.state_dict(), "model.lstm."),
        "optimizer_states": [_adam_state(lstm)],
        "lr_schedulers": [],
    }
    path = tmp_path / "epoch=7-step=700.ckpt"
    torch.save(ckpt, path)
    doc = inspect_json(invoke, path)
    assert [m["prefix"] for m in doc["modules"]] == ["state_dict.model.lstm"]
    mod = doc["modules"][0]
    assert {k: mod[k] for k in expected_fields(lstm, cfg, torch.float32)} == expected_fields(lstm, cfg, torch.float32)
    # and it runs without --module: the optimizer moments are not a second LSTM
    result = invoke("run", path, small_input(tmp_path), "--json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["checkpoint"]["module"] == "state_dict.model.lstm"


@pytest.mark.parametrize(
    "optimizer",
    [
        # moments keyed by parameter name (some trainers save this)
        lambda sd: {"state": {f"lstm.{k}": {"exp_avg": torch.randn_like(v)} for k, v in sd.items()}},
        # moments stored directly under the parameter names
        lambda sd: {"state": {f"lstm.{k}": torch.randn_like(v) for k, v in sd.items()}},
        # one dict of moments per kind, each keyed like a state_dict
        lambda sd: {"exp_avg": {f"lstm.{k}": torch.randn_like(v) for k, v in sd.items()}},
    ],
    ids=["state-name-exp_avg", "state-name-tensor", "exp_avg-dict"],
)
def test_optimizer_state_keyed_by_param_names_is_not_an_lstm(invoke, tmp_path, optimizer):
    lstm, cfg = make_lstm(seed=3)
    sd = lstm.state_dict()
    path = tmp_path / "train.pt"
    torch.save({"model": prefixed(sd, "lstm."), "optimizer": optimizer(sd)}, path)
    doc = inspect_json(invoke, path)
    assert [m["prefix"] for m in doc["modules"]] == ["model.lstm"]
    mod = doc["modules"][0]
    assert {k: mod[k] for k in expected_fields(lstm, cfg, torch.float32)} == expected_fields(lstm, cfg, torch.float32)


def test_safetensors_bare_lstm(invoke, tmp_path):
    lstm, cfg = make_lstm(seed=4, num_layers=3, bidirectional=True, hidden_size=4)
    path = tmp_path / "lstm.safetensors"
    save_file(lstm.state_dict(), str(path))
    doc = inspect_json(invoke, path)
    assert doc["checkpoint"]["format"] == "safetensors"
    assert doc["checkpoint"]["sha256"] == sha256_of(path)
    (mod,) = doc["modules"]
    assert mod["prefix"] == ""
    assert {k: mod[k] for k in expected_fields(lstm, cfg, torch.float32)} == expected_fields(lstm, cfg, torch.float32)


def test_safetensors_lstm_nested_in_a_bigger_model(invoke, tmp_path):
    torch.manual_seed(5)
    model = Encoder()
    path = tmp_path / "model.safetensors"
    save_file(model.state_dict(), str(path), metadata={"format": "pt"})
    doc = inspect_json(invoke, path)
    assert doc["checkpoint"]["format"] == "safetensors"
    assert doc["checkpoint"]["sha256"] == sha256_of(path)
    (mod,) = doc["modules"]
    assert mod["prefix"] == "lstm"
    cfg = dict(DEFAULT, input_size=3, hidden_size=5, num_layers=2)
    assert {k: mod[k] for k in expected_fields(model.lstm, cfg, torch.float32)} == expected_fields(model.lstm, cfg, torch.float32)
    result = invoke("run", path, small_input(tmp_path), "--json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["ok"] is True


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("fmt", ["pt", "safetensors"])
def test_parameter_dtype_is_reported(invoke, tmp_path, dtype, fmt):
    lstm, cfg = make_lstm(seed=6, dtype=dtype, num_layers=2)
    path = tmp_path / f"m.{fmt}"
    if fmt == "pt":
        torch.save(lstm.state_dict(), path)
    else:
        save_file(lstm.state_dict(), str(path))
    doc = inspect_json(invoke, path)
    (mod,) = doc["modules"]
    assert {k: mod[k] for k in expected_fields(lstm, cfg, dtype)} == expected_fields(lstm, cfg, dtype)


@pytest.mark.parametrize("bidirectional", [False, True])
def test_proj_size_hidden_comes_from_weight_ih(invoke, tmp_path, bidirectional):
    # hidden 6, proj 2: weight_hh is (24, 2), so its width is proj_size, not hidden_size
    lstm, cfg = make_lstm(seed=7, hidden_size=6, proj_size=2, num_layers=2, bidirectional=bidirectional)
    assert lstm.weight_hh_l0.shape == (24, 2)
    path = tmp_path / "proj.pt"
    torch.save(lstm.state_dict(), path)
    (mod,) = inspect_json(invoke, path)["modules"]
    assert {k: mod[k] for k in expected_fields(lstm, cfg, torch.float32)} == expected_fields(lstm, cfg, torch.float32)
    assert mod["hidden_size"] == 6 and mod["proj_size"] == 2


def test_bias_false(invoke, tmp_path):
    lstm, cfg = make_lstm(seed=8, bias=False, num_layers=2)
    assert not any(k.startswith("bias") for k in lstm.state_dict())
    path = tmp_path / "nobias.pt"
    torch.save(lstm.state_dict(), path)
    (mod,) = inspect_json(invoke, path)["modules"]
    assert {k: mod[k] for k in expected_fields(lstm, cfg, torch.float32)} == expected_fields(lstm, cfg, torch.float32)
    assert mod["bias"] is False


def test_three_layers_bidirectional(invoke, tmp_path):
    lstm, cfg = make_lstm(seed=9, input_size=7, hidden_size=5, num_layers=3, bidirectional=True)
    path = tmp_path / "deep.pth"
    torch.save({"model_state_dict": prefixed(lstm.state_dict(), "rnn.")}, path)
    (mod,) = inspect_json(invoke, path)["modules"]
    assert mod["prefix"] == "model_state_dict.rnn"
    assert {k: mod[k] for k in expected_fields(lstm, cfg, torch.float32)} == expected_fields(lstm, cfg, torch.float32)


def test_every_configuration_combination(invoke, tmp_path):
    """One file with many differently configured LSTMs: each is reported with its own config."""
    truth = {}
    state = {}
    i = 0
    for layers in (1, 2, 3):
        for bidir in (False, True):
            for proj in (0, 2):
                for bias in (True, False):
                    lstm, cfg = make_lstm(seed=i, input_size=2 + i % 3, hidden_size=3 + i % 4, num_layers=layers,
                                          bidirectional=bidir, proj_size=proj, bias=bias)
                    name = f"m{i}"
                    state.update(prefixed(lstm.state_dict(), f"{name}."))
                    truth[name] = expected_fields(lstm, cfg, torch.float32)
                    i += 1
    path = tmp_path / "zoo.pt"
    torch.save(state, path)
    doc = inspect_json(invoke, path)
    got = {m["prefix"]: {k: m[k] for k in truth["m0"]} for m in doc["modules"]}
    assert got == truth


# --- several LSTMs in one file ---------------------------------------------------------------------

def _two_lstm_file(tmp_path):
    enc, enc_cfg = make_lstm(seed=10, input_size=3, hidden_size=4)
    dec, dec_cfg = make_lstm(seed=11, input_size=3, hidden_size=6, num_layers=2)
    path = tmp_path / "seq2seq.pt"
    torch.save({**prefixed(enc.state_dict(), "encoder.rnn."), **prefixed(dec.state_dict(), "decoder.rnn.")}, path)
    return path, {"encoder.rnn": (enc, enc_cfg), "decoder.rnn": (dec, dec_cfg)}


def test_inspect_lists_every_lstm(invoke, tmp_path):
    path, truth = _two_lstm_file(tmp_path)
    doc = inspect_json(invoke, path)
    got = {m["prefix"]: m for m in doc["modules"]}
    assert set(got) == set(truth)
    for prefix, (lstm, cfg) in truth.items():
        exp = expected_fields(lstm, cfg, torch.float32)
        assert {k: got[prefix][k] for k in exp} == exp


def test_run_without_module_is_ambiguous(invoke, tmp_path):
    path, _ = _two_lstm_file(tmp_path)
    result = invoke("run", path, small_input(tmp_path))
    assert_one_error_line(result, path, "encoder.rnn", "decoder.rnn", "--module")


@pytest.mark.parametrize("name", ["decoder.rnn", "decoder.rnn.", "encoder.rnn", "encoder.rnn."])
def test_run_with_module_selects_it(invoke, tmp_path, name):
    path, truth = _two_lstm_file(tmp_path)
    result = invoke("run", path, small_input(tmp_path), "--module", name, "--json")
    assert result.exit_code == 0, result.stderr
    assert result.stderr == ""
    doc = json.loads(result.stdout)
    want = name.rstrip(".")
    assert doc["checkpoint"]["module"] == want
    lstm, cfg = truth[want]
    exp = expected_fields(lstm, cfg, torch.float32)
    exp.pop("parameters")
    assert doc["model"] == exp
    assert doc["shapes"]["h_n"] == [cfg["num_layers"], 2, cfg["hidden_size"]]


def test_run_with_unknown_module_lists_choices(invoke, tmp_path):
    path, _ = _two_lstm_file(tmp_path)
    result = invoke("run", path, small_input(tmp_path), "--module", "encoder")
    assert_one_error_line(result, path, "'encoder'", "encoder.rnn", "decoder.rnn", "--module")


def test_unknown_module_on_single_lstm_file(invoke, tmp_path):
    lstm, _ = make_lstm()
    path = tmp_path / "one.pt"
    torch.save({"model": prefixed(lstm.state_dict(), "lstm.")}, path)
    result = invoke("run", path, small_input(tmp_path), "--module", "lstm")
    assert_one_error_line(result, path, "'lstm'", "model.lstm")


# --- checkpoints saved from a GPU ------------------------------------------------------------------

@pytest.mark.parametrize("legacy", [False, True])
def test_cuda_saved_checkpoint_loads_on_cpu(invoke, tmp_path, monkeypatch, legacy):
    """A checkpoint whose storages are tagged "cuda:0" loads without a GPU.

    torch.save records a storage's device only through ``torch.serialization.location_tag``;
    making it answer "cuda:0" writes the bytes a GPU save writes. Plain ``torch.load`` (no
    map_location) refusing the file on a CPU-only machine proves the tag is really there.
    """
    import torch.serialization as ser

    lstm, cfg = make_lstm(seed=12, num_layers=2)
    path = tmp_path / "gpu.pt"
    with monkeypatch.context() as m:
        m.setattr(ser, "location_tag", lambda storage: "cuda:0")
        torch.save({"state_dict": lstm.state_dict()}, path, _use_new_zipfile_serialization=not legacy)
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="(?i)cuda"):
            torch.load(path, weights_only=True)
    (mod,) = inspect_json(invoke, path)["modules"]
    assert {k: mod[k] for k in expected_fields(lstm, cfg, torch.float32)} == expected_fields(lstm, cfg, torch.float32)
    result = invoke("run", path, small_input(tmp_path), "--json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["ok"] is True


# --- inconsistent tensors --------------------------------------------------------------------------

def test_missing_layer_tensor_names_it_and_its_shape(invoke, tmp_path):
    lstm, cfg = make_lstm(hidden_size=5, num_layers=2)
    sd = dict(lstm.state_dict())
    del sd["weight_hh_l1"]
    path = tmp_path / "broken.pt"
    torch.save(sd, path)
    result = invoke("inspect", path, "--json")
    assert_one_error_line(result, path, "'weight_hh_l1'", str((20, 5)))


def test_wrong_shaped_bias_names_it_and_expected_shape(invoke, tmp_path):
    lstm, _ = make_lstm(hidden_size=5)
    sd = dict(lstm.state_dict())
    sd["bias_ih_l0"] = torch.zeros(19)
    path = tmp_path / "badbias.pt"
    torch.save(sd, path)
    result = invoke("inspect", path, "--json")
    assert_one_error_line(result, path, "bias_ih_l0", str((20,)), "(19,)")


def test_mixed_dtypes_across_layers(invoke, tmp_path):
    lstm, _ = make_lstm(num_layers=2)
    sd = dict(lstm.state_dict())
    sd["weight_hh_l1"] = sd["weight_hh_l1"].double()
    path = tmp_path / "mixed.pt"
    torch.save(sd, path)
    result = invoke("inspect", path, "--json")
    assert_one_error_line(result, path, "weight_hh_l1", "float64")


def test_weight_hh_without_weight_ih_l0(invoke, tmp_path):
    lstm, _ = make_lstm()
    sd = {k: v for k, v in lstm.state_dict().items() if k != "weight_ih_l0"}
    path = tmp_path / "noih.pt"
    torch.save(prefixed(sd, "rnn."), path)
    for args in (("inspect", path, "--json"), ("run", path, small_input(tmp_path))):
        assert_one_error_line(invoke(*args), path, "weight_ih_l0")


# --- full-module pickles and code in pickles -------------------------------------------------------

def _torch_h_n(lstm: nn.LSTM, x_path) -> np.ndarray:
    with torch.no_grad():
        _, (h, _) = lstm(torch.from_numpy(np.load(x_path)))
    return h.numpy()


@pytest.mark.parametrize("legacy", [False, True])
def test_full_module_pickle_is_read_without_running_code(invoke, tmp_path, legacy):
    from lstmscope.runner import RunOptions, execute_run

    torch.manual_seed(13)
    model = Encoder()
    path = tmp_path / "fullmodel.pt"
    torch.save(model, path, _use_new_zipfile_serialization=not legacy)
    qualname = f"{Encoder.__module__}.{Encoder.__qualname__}"
    doc = inspect_json(invoke, path)
    (mod,) = doc["modules"]
    assert mod["prefix"] == "lstm"
    cfg = dict(DEFAULT, input_size=3, hidden_size=5, num_layers=2)
    assert {k: mod[k] for k in expected_fields(model.lstm, cfg, torch.float32)} == expected_fields(model.lstm, cfg, torch.float32)
    assert {qualname, "torch.nn.modules.rnn.LSTM"} <= set(doc["checkpoint"]["stubbed_globals"])
    assert doc["checkpoint"]["refused_calls"] == []
    table = invoke("inspect", path)
    assert table.exit_code == 0 and "read without running code" in table.stdout and qualname in table.stdout
    x = small_input(tmp_path)
    result = invoke("run", path, x, "--json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["ok"] is True
    assert "without running code" in result.stderr and len(result.stderr.splitlines()) == 1
    h_n = execute_run(RunOptions(checkpoint=path, input=x)).result.h_n
    np.testing.assert_allclose(h_n, _torch_h_n(model.lstm, x), rtol=0, atol=1e-6)


@pytest.mark.parametrize("legacy", [False, True])
def test_pickled_code_is_never_executed(invoke, tmp_path, legacy):
    marker = tmp_path / "MARKER"
    lstm, _ = make_lstm()
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": lstm.state_dict(), "extra": RunsCodeWhenUnpickled(marker)}, path,
               _use_new_zipfile_serialization=not legacy)
    assert not marker.exists()
    doc = inspect_json(invoke, path)
    assert not marker.exists()
    assert [m["prefix"] for m in doc["modules"]] == ["state_dict"]
    assert doc["checkpoint"]["refused_calls"] == [f"{os.system.__module__}.system"]  # posix.system
    result = invoke("run", path, small_input(tmp_path), "--json")
    assert not marker.exists()
    assert result.exit_code == 0, result.stderr
    assert "refused to call" in result.stderr and "system" in result.stderr


# --- files that are not checkpoints ----------------------------------------------------------------

def _valid_pt_bytes(tmp_path) -> bytes:
    lstm, _ = make_lstm(hidden_size=16)
    p = tmp_path / "valid.pt"
    torch.save(lstm.state_dict(), p)
    return p.read_bytes()


NOT_CHECKPOINTS = {
    "empty": lambda tmp: b"",
    "random": lambda tmp: np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8).tobytes(),
    "text": lambda tmp: b"epoch,loss\n1,0.5\n2,0.25\n",
    "truncated_zip": lambda tmp: (lambda b: b[: len(b) // 2])(_valid_pt_bytes(tmp)),
    "hdf5": lambda tmp: b"\x89HDF\r\n\x1a\n" + bytes(range(256)) * 4,
    "truncated_safetensors": lambda tmp: b'\x40\x00\x00\x00\x00\x00\x00\x00{"w": {"dtype": "F32"',
}


@pytest.mark.parametrize("kind", list(NOT_CHECKPOINTS))
@pytest.mark.parametrize("command", ["inspect", "run"])
def test_not_a_checkpoint(invoke, tmp_path, kind, command):
    path = tmp_path / f"{kind}.pt"
    path.write_bytes(NOT_CHECKPOINTS[kind](tmp_path))
    args = ("inspect", path, "--json") if command == "inspect" else ("run", path, small_input(tmp_path))
    assert_one_error_line(invoke(*args), path)


@pytest.mark.parametrize("command", ["inspect", "run"])
def test_directory_and_missing_path(invoke, tmp_path, command):
    d = tmp_path / "a_directory.pt"
    d.mkdir()
    missing = tmp_path / "missing.pt"
    for path in (d, missing):
        args = ("inspect", path) if command == "inspect" else ("run", path, small_input(tmp_path))
        assert_one_error_line(invoke(*args), path)


def test_file_without_lstm(invoke, tmp_path):
    path = tmp_path / "linear.pt"
    torch.save(nn.Linear(3, 4).state_dict(), path)
    for args in (("inspect", path), ("inspect", path, "--json"), ("run", path, small_input(tmp_path))):
        line = assert_one_error_line(invoke(*args), path)
        assert "no LSTM" in line


def test_safetensors_without_lstm(invoke, tmp_path):
    path = tmp_path / "linear.safetensors"
    save_file(nn.Linear(3, 4).state_dict(), str(path))
    assert "no LSTM" in assert_one_error_line(invoke("inspect", path), path)


# --- torch is imported lazily ----------------------------------------------------------------------

def _python(code: str, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "LSTMSCOPE_DEBUG"}
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, timeout=60)


_RUN_APP = """
import sys
argv = sys.argv[1:]
sys.argv = ["lstmscope", *argv]
from lstmscope.cli import app
try:
    app()
except SystemExit as e:
    code = e.code
else:
    code = 0
print(f"@@ exit={code} torch={'torch' in sys.modules}", file=sys.stderr)
"""


def _status(proc) -> str:
    return [ln for ln in proc.stderr.splitlines() if ln.startswith("@@ ")][-1]


def test_inspect_safetensors_does_not_import_torch(tmp_path):
    torch.manual_seed(14)
    model = Encoder()
    path = tmp_path / "model.safetensors"
    save_file(model.state_dict(), str(path))
    proc = _python(_RUN_APP, "inspect", str(path), "--json")
    assert _status(proc) == "@@ exit=0 torch=False", proc.stderr
    doc = json.loads(proc.stdout)
    assert [m["prefix"] for m in doc["modules"]] == ["lstm"]
    assert doc["checkpoint"]["sha256"] == sha256_of(path)
    # the table output path too
    proc = _python(_RUN_APP, "inspect", str(path))
    assert _status(proc) == "@@ exit=0 torch=False", proc.stderr


@pytest.mark.parametrize("argv", [["--help"], ["inspect", "--help"], ["run", "--help"], ["--version"]])
def test_help_does_not_import_torch(argv):
    proc = _python(_RUN_APP, *argv)
    assert _status(proc) == "@@ exit=0 torch=False", proc.stderr
    assert proc.stdout.strip()


def test_python_m_lstmscope_help():
    proc = subprocess.run([sys.executable, "-m", "lstmscope", "--help"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("Usage: lstmscope ")
    commands = proc.stdout.split("Commands:", 1)[1]
    listed = {line.split()[0] for line in commands.splitlines() if line.strip()}
    assert {"inspect", "run"} <= listed
    assert proc.stderr == ""


# --- other recurrent layers share the LSTM's parameter names ---------------------------------------

def _lstm_and_other_rnn(tmp_path, other: str):
    lstm, cfg = make_lstm(seed=15, hidden_size=5)
    rnn = {"gru": nn.GRU(3, 4), "rnn": nn.RNN(3, 8)}[other]  # 3*4 and 8 rows: both divisible by 4
    path = tmp_path / f"lstm_and_{other}.pt"
    torch.save({**prefixed(lstm.state_dict(), "encoder."), **prefixed(rnn.state_dict(), "decoder.")}, path)
    return path, lstm, cfg



@pytest.mark.parametrize("other", ["gru", "rnn"])
def test_run_selected_lstm_next_to_gru(invoke, tmp_path, other):
    path, lstm, cfg = _lstm_and_other_rnn(tmp_path, other)
    result = invoke("run", path, small_input(tmp_path), "--module", "encoder", "--json")
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["checkpoint"]["module"] == "encoder"
    exp = expected_fields(lstm, cfg, torch.float32)
    exp.pop("parameters")
    assert doc["model"] == exp


@pytest.mark.parametrize("other", ["gru", "rnn"])
def test_inspect_lists_lstm_next_to_gru(invoke, tmp_path, other):
    path, _, _ = _lstm_and_other_rnn(tmp_path, other)
    result = invoke("inspect", path, "--json")
    assert result.exit_code == 0, result.stderr
    assert "encoder" in [m["prefix"] for m in json.loads(result.stdout)["modules"]]


@pytest.mark.parametrize("other", ["gru", "rnn"])
def test_gru_only_file_holds_no_lstm(invoke, tmp_path, other):
    path = tmp_path / f"{other}.pt"
    torch.save({"gru": nn.GRU(3, 4), "rnn": nn.RNN(3, 8)}[other].state_dict(), path)
    assert "no LSTM" in assert_one_error_line(invoke("inspect", path), path)


# --- safetensors dtypes lstmscope does not list ----------------------------------------------------

@pytest.mark.parametrize("extra_dtype", ["complex64", "float8_e8m0fnu"])
def test_safetensors_with_unlisted_dtype_elsewhere(invoke, tmp_path, extra_dtype):
    if not hasattr(torch, extra_dtype):
        pytest.skip(f"torch has no {extra_dtype}")
    lstm, cfg = make_lstm(seed=16)
    path = tmp_path / "with_buffer.safetensors"
    save_file({**prefixed(lstm.state_dict(), "lstm."), "freqs": torch.zeros(4, dtype=getattr(torch, extra_dtype))}, str(path))
    (mod,) = inspect_json(invoke, path)["modules"]
    assert {k: mod[k] for k in expected_fields(lstm, cfg, torch.float32)} == expected_fields(lstm, cfg, torch.float32)


def test_truncated_zip_says_truncated(invoke, tmp_path):
    path = tmp_path / "partial.pt"
    data = _valid_pt_bytes(tmp_path)
    path.write_bytes(data[: len(data) // 2])
    line = assert_one_error_line(invoke("inspect", path), path)
    assert any(w in line for w in ("truncated", "damaged", "corrupt", "incomplete")), line


# --- pickle protocols (torch.save(..., pickle_protocol=N)) -----------------------------------------
# Run in a subprocess: under pytest's filterwarnings=error, torch's "Detected pickle protocol"
# UserWarning would turn into an exception and hide what a user sees.

_RUN_MANY = """
import contextlib, io, json, sys, warnings
from lstmscope.cli import app
out = []
for argv in json.loads(sys.argv[1]):
    o, e = io.StringIO(), io.StringIO()
    # catch_warnings keeps the default filters but forgets which warnings were shown: each run is as fresh as a new process
    with warnings.catch_warnings(), contextlib.redirect_stdout(o), contextlib.redirect_stderr(e):
        try:
            app(argv, prog_name="lstmscope")
            code = 0
        except SystemExit as ex:
            code = ex.code
    out.append({"code": code, "stdout": o.getvalue(), "stderr": e.getvalue()})
print(json.dumps(out))
"""

PROTOCOL_CASES = [(proto, legacy) for proto in (2, 3, 4, 5) for legacy in (False, True)]


@pytest.fixture(scope="module")
def protocol_runs(tmp_path_factory):
    """{case: (exit code, stdout, stderr)} for inspect --json on files saved with each pickle protocol."""
    tmp = tmp_path_factory.mktemp("protocols")
    lstm, cfg = make_lstm(seed=17, num_layers=2)
    argvs, names = [], []
    for proto, legacy in PROTOCOL_CASES:
        path = tmp / f"p{proto}{'_legacy' if legacy else ''}.pt"
        torch.save({"state_dict": lstm.state_dict()}, path, pickle_protocol=proto,
                   _use_new_zipfile_serialization=not legacy)
        argvs.append(["inspect", str(path), "--json"])
        names.append((proto, legacy))
    torch.manual_seed(18)
    full = tmp / "full_p4.pt"
    torch.save(Encoder(), full, pickle_protocol=4)
    argvs.append(["inspect", str(full)])
    names.append("full_p4")
    env = {k: v for k, v in os.environ.items() if k not in ("LSTMSCOPE_DEBUG", "PYTHONWARNINGS")}
    proc = subprocess.run([sys.executable, "-c", _RUN_MANY, json.dumps(argvs)], capture_output=True, text=True,
                          env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    results = json.loads(proc.stdout)
    return {name: r for name, r in zip(names, results)}, expected_fields(lstm, cfg, torch.float32), full


@pytest.mark.parametrize(
    "proto,legacy",
    [
        pytest.param(p, lg, id=f"protocol{p}-{'legacy' if lg else 'zip'}")
        for p, lg in PROTOCOL_CASES
    ],
)
def test_state_dict_saved_with_any_pickle_protocol(protocol_runs, proto, legacy):
    runs, expected, _ = protocol_runs
    r = runs[(proto, legacy)]
    assert r["code"] == 0, r["stderr"]
    (mod,) = json.loads(r["stdout"])["modules"]
    assert mod["prefix"] == "state_dict"
    assert {k: mod[k] for k in expected} == expected
    assert r["stderr"] == ""


@pytest.mark.parametrize("legacy", [False, True])
def test_pickle_protocol_3_loads(protocol_runs, legacy):
    """Protocol 3 loads."""
    runs, expected, _ = protocol_runs
    r = runs[(3, legacy)]
    assert r["code"] == 0, r["stderr"]
    (mod,) = json.loads(r["stdout"])["modules"]
    assert {k: mod[k] for k in expected} == expected


@pytest.mark.parametrize("proto", [4, 5])
def test_pickle_protocol_4_state_dict_is_not_called_a_full_module_pickle(protocol_runs, proto):
    r = protocol_runs[0][(proto, False)]
    assert r["code"] == 0 or "full-module" not in r["stderr"], r["stderr"]


def test_full_module_pickle_protocol_4_is_read_without_running_code(protocol_runs):
    """torch's weights-only loader refuses both the classes and the FRAME opcode; the restricted reader takes both."""
    r = protocol_runs[0]["full_p4"]
    assert r["code"] == 0, r["stderr"]
    assert r["stderr"] == ""
    assert "read without running code" in r["stdout"] and "lstm" in r["stdout"]
