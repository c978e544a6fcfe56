"""TorchScript archives (torch.jit.save) are read from their data, never loaded: no code runs, torch.jit is never
called. Truth is independent of lstmscope: the modules scripted here, run directly in torch, and for the real
Silero VAD archive ``torch.jit.load(path).state_dict()`` (the test may load TorchScript; lstmscope may not) fed to
an ``nn.LSTMCell`` stepped in a Python loop.
"""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
import zipfile
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file
from torch import nn

from conftest import ROOT, real_checkpoints_dir, real_manifest
from helpers import assert_one_error_line
from test_safe_pickle import PAYLOADS

SILERO = "silero_vad_v5_torchscript/silero_vad.jit"
B, T = 2, 9


def silero_entry() -> dict:
    entry = next((e for e in real_manifest() if e["file"] == SILERO), None)
    if entry is None or not (real_checkpoints_dir() / SILERO).is_file():
        pytest.skip("the real checkpoints folder (Silero VAD TorchScript archive) is absent")
    return entry


def cell_loop(cell: nn.LSTMCell, x: np.ndarray) -> dict[str, np.ndarray]:
    """The truth for one cell: ``h, c = cell(x[:, t], (h, c))`` for every t."""
    xt = torch.from_numpy(x)
    h = torch.zeros(x.shape[0], cell.hidden_size, dtype=xt.dtype)
    c = torch.zeros_like(h)
    outs = []
    with torch.no_grad():
        for t in range(x.shape[1]):
            h, c = cell(xt[:, t], (h, c))
            outs.append(h)
    return {"h_n": h[None].numpy(), "c_n": c[None].numpy(), "output": torch.stack(outs, 1).numpy()}


def lstm_truth(lstm: nn.LSTM, x: np.ndarray) -> dict[str, np.ndarray]:
    with torch.no_grad():
        out, (h, c) = lstm(torch.from_numpy(x))
    return {"h_n": h.numpy(), "c_n": c.numpy(), "output": out.numpy()}


def export(invoke, tmp_path, ck, x: np.ndarray, *args) -> dict[str, np.ndarray]:
    xp, out = tmp_path / "x.npy", tmp_path / "s.safetensors"
    np.save(xp, x)
    r = invoke("export-state", ck, xp, "-o", out, "--include-output", "--force", *args)
    assert r.exit_code == 0, r.stdout + r.stderr
    return load_file(out)


def assert_matches(got, want, tol):
    for k in ("h_n", "c_n", "output"):
        assert got[k].shape == want[k].shape, k
        np.testing.assert_allclose(got[k], want[k], atol=tol, rtol=0, err_msg=k)


def inspect_json(invoke, path) -> dict:
    r = invoke("inspect", path, "--json")
    assert r.exit_code == 0, r.stdout + r.stderr
    assert r.stderr == ""
    return json.loads(r.stdout)


def no_torchscript_loading():
    """Every way torch would load TorchScript (or a torch file) raises, so a test sees lstmscope never asks."""
    def refuse(*_a, **_k):
        raise AssertionError("lstmscope loaded TorchScript or called torch.load")

    return [mock.patch("torch.jit.load", refuse), mock.patch("torch.jit._serialization.load", refuse),
            mock.patch("torch.load", refuse), mock.patch("torch._C.import_ir_module", refuse)]


# --- the real Silero VAD v5 archive -----------------------------------------------------------------------

def test_silero_inspect_lists_its_lstm_cells(invoke):
    entry = silero_entry()
    path = real_checkpoints_dir() / SILERO
    doc = inspect_json(invoke, path)
    assert doc["checkpoint"]["format"] == "torchscript"
    assert doc["checkpoint"]["sha256"] == entry["sha256"]
    assert doc["checkpoint"]["refused_calls"] == []
    assert "__torch__.torch.nn.modules.rnn.LSTMCell" in doc["checkpoint"]["stubbed_globals"]
    mods = {m["prefix"]: m for m in doc["modules"]}
    assert "_model.decoder.rnn" in mods
    shapes = {e["key"]: tuple(e["shape"]) for e in entry["lstm_nodes_or_layers"]}
    for prefix, m in mods.items():
        w_ih = shapes[f"{prefix}.weight_ih"]
        assert shapes[f"{prefix}.weight_hh"] == (w_ih[0], w_ih[0] // 4)
        assert shapes[f"{prefix}.bias_ih"] == shapes[f"{prefix}.bias_hh"] == (w_ih[0],)
        assert (m["input_size"], m["hidden_size"], m["num_layers"], m["bidirectional"], m["bias"], m["dtype"]) == \
            (w_ih[1], w_ih[0] // 4, 1, False, True, "float32")
        assert any("nn.LSTMCell" in n for n in m["notes"]) and any("TorchScript" in n for n in m["notes"])
    assert set(mods) == {k.rsplit(".", 1)[0] for k in shapes}  # _model and _model_8k: no more, no less
    text = invoke("inspect", path)
    assert text.exit_code == 0 and "_model.decoder.rnn" in text.stdout and "read without running code" in text.stdout


@pytest.mark.parametrize("dtype,tol", [("float64", 1e-9), ("float32", 1e-5)])
def test_silero_run_equals_a_torch_cell_loop(invoke, tmp_path, dtype, tol):
    silero_entry()
    path = real_checkpoints_dir() / SILERO
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sd = torch.jit.load(str(path), map_location="cpu").state_dict()  # the oracle only; lstmscope never does this
    cell = nn.LSTMCell(128, 128)
    cell.load_state_dict({k.rsplit(".", 1)[1]: v for k, v in sd.items() if k.startswith("_model.decoder.rnn.")})
    cell = cell.to(getattr(torch, dtype))
    x = np.random.default_rng(3).standard_normal((B, T, 128)).astype(np.float32)
    # float32 here: lstmscope's fused nn.LSTM and the cell loop sum 128 products in different orders (~1.5e-6)
    got = export(invoke, tmp_path, path, x, "--module", "_model.decoder.rnn", "--dtype", dtype)
    assert_matches(got, cell_loop(cell, x.astype(dtype)), tol)
    r = invoke("run", path, tmp_path / "x.npy", "--module", "_model.decoder.rnn", "--json")
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["ok"] is True
    assert "read without running code" in r.stderr and "Error" not in r.stderr


def test_silero_is_read_without_torch_or_torchscript(tmp_path):
    silero_entry()
    code = f"""
import sys
from lstmscope.readers import read_checkpoint
ck = read_checkpoint({str(real_checkpoints_dir() / SILERO)!r})
p = ck.parameters(ck.module("_model.decoder.rnn"))
assert p["weight_ih_l0"].shape == (512, 128), p["weight_ih_l0"].shape
print("torch" in sys.modules)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


# --- archives scripted and traced here ----------------------------------------------------------------------

class Seq2Seq(nn.Module):
    """An nn.LSTM encoder, an nn.LSTMCell decoder stepped by hand, and a ModuleList stack of two cells."""

    def __init__(self):
        super().__init__()
        self.encoder = nn.LSTM(4, 6, num_layers=2, batch_first=True)
        self.decoder = nn.ModuleDict({"rnn": nn.LSTMCell(6, 5)})
        self.cells = nn.ModuleList([nn.LSTMCell(4, 3), nn.LSTMCell(3, 3)])
        self.head = nn.Linear(5, 2)
        self.scale = 2.5

    def forward(self, x):
        y, _ = self.encoder(x)
        h = torch.zeros(x.shape[0], 5)
        c = torch.zeros(x.shape[0], 5)
        for t in range(y.shape[1]):
            h, c = self.decoder["rnn"](y[:, t] * self.scale, (h, c))
        return self.head(h)


@pytest.fixture(scope="module")
def seq2seq():
    torch.manual_seed(7)
    return Seq2Seq().eval()


def _save(module, path: Path, how: str) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit.script / trace are deprecated
        if how == "script":
            scripted = torch.jit.script(module)
        else:
            scripted = torch.jit.trace(module, torch.randn(2, 5, 4))
        torch.jit.save(scripted, str(path))
    return path


@pytest.mark.parametrize("how", ["script", "trace"])
def test_scripted_archive_finds_lstm_and_cells(invoke, tmp_path, seq2seq, how):
    path = _save(seq2seq, tmp_path / f"{how}.pt", how)
    doc = inspect_json(invoke, path)
    mods = {m["prefix"]: m for m in doc["modules"]}
    assert list(mods) == ["encoder", "decoder.rnn", "cells"]
    assert (mods["encoder"]["num_layers"], mods["encoder"]["hidden_size"]) == (2, 6)
    assert (mods["decoder.rnn"]["input_size"], mods["decoder.rnn"]["hidden_size"]) == (6, 5)
    assert (mods["cells"]["num_layers"], mods["cells"]["input_size"], mods["cells"]["hidden_size"]) == (2, 4, 3)
    assert doc["checkpoint"]["format"] == "torchscript" and doc["checkpoint"]["refused_calls"] == []
    x4 = np.random.default_rng(0).standard_normal((B, T, 4)).astype(np.float32)
    x6 = np.random.default_rng(1).standard_normal((B, T, 6)).astype(np.float32)
    patches = no_torchscript_loading()
    for p in patches:
        p.start()
    try:
        enc = export(invoke, tmp_path, path, x4, "--module", "encoder")
        dec = export(invoke, tmp_path, path, x6, "--module", "decoder.rnn")
        cells = export(invoke, tmp_path, path, x4, "--module", "cells")
    finally:
        for p in patches:
            p.stop()
    assert_matches(enc, lstm_truth(seq2seq.encoder, x4), 1e-6)
    assert_matches(dec, cell_loop(seq2seq.decoder["rnn"], x6), 1e-6)
    first = cell_loop(seq2seq.cells[0], x4)
    second = cell_loop(seq2seq.cells[1], first["output"])
    want = {"h_n": np.concatenate([first["h_n"], second["h_n"]]), "c_n": np.concatenate([first["c_n"], second["c_n"]]),
            "output": second["output"]}
    assert_matches(cells, want, 1e-6)


def test_scripted_archive_keeps_listing_torch_free(tmp_path, seq2seq):
    path = _save(seq2seq, tmp_path / "s.pt", "script")
    from lstmscope.readers import read_checkpoint

    ck = read_checkpoint(path)
    assert ck.notes and "code/" in ck.notes[0]  # what was not read
    assert "encoder._flat_weights.0" not in ck.tensors  # TorchScript's aliases of the weights are listed once
    assert ck.tensors["encoder.weight_ih_l0"].shape == (24, 4)
    assert any(g.endswith("rnn.LSTMCell") for g in ck.stubbed_globals)


def test_gru_only_archive_holds_no_lstm(invoke, tmp_path):
    class Gru(nn.Module):
        def __init__(self):
            super().__init__()
            self.cell = nn.GRUCell(3, 4)

        def forward(self, x, h):
            return self.cell(x, h)

    path = _save_script(Gru(), tmp_path / "gru.pt")
    assert_one_error_line(invoke("inspect", path), path, "holds no LSTM", "'cell'", "an nn.GRUCell")


def _save_script(module, path: Path) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.script(module), str(path))
    return path


# --- hostile and damaged archives ---------------------------------------------------------------------------

def _rewrite(src: Path, dst: Path, data_pkl=None, drop: tuple[str, ...] = ()) -> Path:
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as zout:
        for info in zin.infolist():
            if drop and info.filename.endswith(drop):
                continue
            data = zin.read(info)
            if data_pkl is not None and info.filename.endswith("/data.pkl"):
                data = data_pkl(data)
            zout.writestr(info, data)
    return dst


@pytest.mark.parametrize("kind", sorted(PAYLOADS))
@pytest.mark.parametrize("around", [False, True])
def test_hostile_archive_runs_nothing(invoke, tmp_path, seq2seq, kind, around):
    """data.pkl asks for os.system & co. (alone, or in a tuple next to the real module tree): nothing runs."""
    import pickle

    marker = tmp_path / "PWNED"
    payload, refused = PAYLOADS[kind]
    body = pickle.dumps(payload(marker), protocol=2)[2:-1]  # without PROTO and STOP
    good = _save(seq2seq, tmp_path / "good.pt", "script")

    def hostile(original: bytes) -> bytes:
        if not around:
            return b"\x80\x02" + body + b"."
        return b"\x80\x02(" + body + original[2:-1] + b"t."  # (payload result, the module tree)

    path = _rewrite(good, tmp_path / "evil.pt", hostile)
    x = np.random.default_rng(0).standard_normal((B, T, 6)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    if around:
        doc = inspect_json(invoke, path)
        assert set(doc["checkpoint"]["refused_calls"]) >= refused
        assert [m["prefix"] for m in doc["modules"]] == ["1.encoder", "1.decoder.rnn", "1.cells"]
        got = export(invoke, tmp_path, path, x, "--module", "1.decoder.rnn")
        assert_matches(got, cell_loop(seq2seq.decoder["rnn"], x), 1e-6)
    else:
        assert_one_error_line(invoke("inspect", path), path, "holds no LSTM", "asked to run code", "refused")
        assert_one_error_line(invoke("run", path, tmp_path / "x.npy"), path, "refused")
    assert not marker.exists()


@pytest.mark.parametrize("damage", ["no_storage", "short_storage", "truncated_pickle", "no_data_pkl"])
def test_damaged_archive_is_one_error_line(invoke, tmp_path, seq2seq, damage):
    good = _save(seq2seq, tmp_path / "good.pt", "script")
    bad = tmp_path / "bad.pt"
    if damage == "no_storage":
        _rewrite(good, bad, drop=("/data/0",))
    elif damage == "short_storage":
        with zipfile.ZipFile(good) as zin, zipfile.ZipFile(bad, "w", zipfile.ZIP_STORED) as zout:
            for info in zin.infolist():
                data = zin.read(info)
                zout.writestr(info, data[:-4] if info.filename.endswith("/data/1") else data)
    elif damage == "truncated_pickle":
        _rewrite(good, bad, lambda d: d[: len(d) // 2])
    else:
        _rewrite(good, bad, drop=("/data.pkl",))
    r = invoke("inspect", bad)
    assert_one_error_line(r, bad)


# --- legacy-format torch files torch's loader cannot read (untyped storages) -----------------------------------
# torch.save(_use_new_zipfile_serialization=False) keeps uint16/uint32/uint64 and float8 tensors as untyped bytes,
# and torch's legacy loader fails on them; lstmscope lists such files and reads their tensors itself.

NEW_DTYPES = [d for d in ("uint16", "uint32", "uint64", "float8_e4m3fn", "float8_e5m2") if hasattr(torch, d)]


def _save_legacy(obj, path: Path) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.save(obj, path, _use_new_zipfile_serialization=False)
    return path


def test_legacy_file_with_untyped_tensors_lists_and_runs(invoke, tmp_path):
    torch.manual_seed(11)
    lstm = nn.LSTM(3, 5, num_layers=2, batch_first=True)
    extras = {d: torch.arange(6).reshape(2, 3).to(getattr(torch, d)) for d in NEW_DTYPES}
    path = _save_legacy({"model": lstm.state_dict(), "extras": extras}, tmp_path / "legacy.pt")
    with pytest.raises(Exception):  # torch itself cannot read it back
        torch.load(path, weights_only=True)
    from lstmscope.readers import read_checkpoint

    ck = read_checkpoint(path)
    assert {k: (t.shape, t.dtype) for k, t in ck.tensors.items() if k.startswith("extras.")} == \
        {f"extras.{d}": ((2, 3), d) for d in NEW_DTYPES}
    assert [m.prefix for m in ck.modules] == ["model"]
    x = np.random.default_rng(4).standard_normal((B, T, 3)).astype(np.float32)
    assert_matches(export(invoke, tmp_path, path, x), lstm_truth(lstm, x), 1e-6)
    assert ck._tensor("extras.uint16").tolist() == [[0, 1, 2], [3, 4, 5]]


def test_legacy_bfloat16_cell_next_to_untyped_tensors(invoke, tmp_path):
    torch.manual_seed(12)
    cell = nn.LSTMCell(3, 4).to(torch.bfloat16)
    path = _save_legacy({"cell": cell.state_dict(), "steps": torch.zeros(3, dtype=torch.uint16)}, tmp_path / "bf.pt")
    x = np.random.default_rng(5).standard_normal((B, T, 3)).astype(np.float32)
    got = export(invoke, tmp_path, path, x, "--dtype", "float64")
    assert_matches(got, cell_loop(cell.double(), x.astype(np.float64)), 1e-9)  # bfloat16 weights, widened exactly


@pytest.mark.parametrize("dtype", ["uint16", "float8_e4m3fn"])
def test_legacy_lstm_weights_of_a_dtype_lstmscope_cannot_run(invoke, tmp_path, dtype):
    if not hasattr(torch, dtype):
        pytest.skip(f"torch has no {dtype}")
    sd = {k: v.to(getattr(torch, dtype)) for k, v in nn.LSTM(3, 5).state_dict().items()}
    path = _save_legacy(sd, tmp_path / "w.pt")
    assert_one_error_line(invoke("inspect", path), path, "'weight_ih_l0'", dtype)


def test_legacy_untyped_read_by_torch_is_one_error_line(invoke, tmp_path, monkeypatch):
    path = _save_legacy({"lstm": nn.LSTM(3, 5).state_dict(), "ids": torch.zeros(4, dtype=torch.uint16)},
                        tmp_path / "u.pt")
    monkeypatch.setenv("LSTMSCOPE_LIST_WITH_TORCH", "1")  # the torch path, where torch's loader gives the error
    assert_one_error_line(invoke("inspect", path), path, "tensor 'ids' (uint16)", "legacy", "zip")


# --- fuzz: damaged archives give a correct read or one LstmscopeError ------------------------------------------

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_SEED: dict[str, bytes] = {}


def _seed_archive() -> bytes:
    if not _SEED:
        import tempfile

        with tempfile.TemporaryDirectory() as d:
            torch.manual_seed(9)
            path = _save(Seq2Seq().eval(), Path(d) / "seed.pt", "script")
            _SEED["archive"] = path.read_bytes()
            with zipfile.ZipFile(path) as z:
                _SEED["pkl"] = next(z.read(n) for n in z.namelist() if n.endswith("/data.pkl"))
    return _SEED["archive"]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(where=st.sampled_from(["archive", "data.pkl"]), data=st.data())
def test_fuzzed_archives_read_or_refuse(tmp_path, where, data):
    from lstmscope.errors import EXIT_BAD_INPUT, LstmscopeError
    from lstmscope.readers import read_checkpoint

    seed = _seed_archive()
    raw = bytearray(seed if where == "archive" else _SEED["pkl"])
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(raw) - 1))
        action = data.draw(st.sampled_from(["flip", "cut", "insert"]))
        if action == "flip":
            raw[i] ^= data.draw(st.integers(1, 255))
        elif action == "cut":
            del raw[i:i + data.draw(st.integers(1, 16))]
        else:
            raw[i:i] = bytes(data.draw(st.binary(min_size=1, max_size=8)))
    path = tmp_path / "fuzzed.pt"
    if where == "archive":
        path.write_bytes(bytes(raw))
    else:
        src = tmp_path / "seed.pt"
        src.write_bytes(seed)
        _rewrite(src, path, lambda _d: bytes(raw))
    try:
        ck = read_checkpoint(path)
        for module in ck.modules:
            params = ck.parameters(module)
            assert {k: v.shape for k, v in params.items()} == module.spec.expected_shapes()
    except LstmscopeError as e:
        assert e.exit_code == EXIT_BAD_INPUT and path.name in e.message, e.message
