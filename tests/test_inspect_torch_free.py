"""inspect lists torch files without importing torch (lstmscope.readers.torch_listing).

Truth is independent of lstmscope: the tensors a test saved (shapes and dtypes of the real torch
tensors), ``torch.load(weights_only=True)`` run here, a model's own ``state_dict()`` in the process
that saved it, and ``torch.nn.LSTM`` run directly. The torch path (forced with the internal
``LSTMSCOPE_LIST_WITH_TORCH=1``) must give the same listing, report and inspect output, and the
torch-free reader must hand every file it cannot vouch for to that path.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import pickle
import subprocess
import sys
import textwrap
import warnings
import zipfile
from collections import OrderedDict
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch import nn

import lstmscope.readers.torch as checkpoint
from conftest import SAMPLES, real_checkpoints_dir, real_manifest
from helpers import assert_one_error_line
from lstmscope.readers import read_checkpoint
from lstmscope.sniff import TORCH_LEGACY, sniff
from lstmscope.readers.torch_listing import Unsupported, list_torch_file

TORCH_ENV = checkpoint.LIST_WITH_TORCH_ENV


# --- helpers ------------------------------------------------------------------------------------------

def flat_truth(obj, prefix: str = "", out: dict | None = None) -> dict:
    """{"a.b.0": (shape, dtype)} for the tensors in nested dicts, lists and tuples, from the tensors themselves."""
    out = {} if out is None else out
    if isinstance(obj, torch.Tensor):
        out[prefix[:-1]] = (tuple(obj.shape), str(obj.dtype).removeprefix("torch."))
    elif isinstance(obj, dict):
        for k, v in obj.items():
            flat_truth(v, f"{prefix}{k}.", out)
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            flat_truth(v, f"{prefix}{i}.", out)
    return out


def weights_only_truth(path) -> dict:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return flat_truth(torch.load(path, map_location="cpu", weights_only=True))


def _refuse_torch(*args, **kwargs):
    raise AssertionError("the torch path was taken")


def read_torch_free(path):
    """read_checkpoint, failing if it reads the file with torch (a fallback)."""
    with mock.patch.object(checkpoint, "load_torch_file", _refuse_torch), mock.patch.dict(os.environ):
        os.environ.pop(TORCH_ENV, None)
        return read_checkpoint(path)


def read_with_torch(path):
    with mock.patch.dict(os.environ, {TORCH_ENV: "1"}):
        return read_checkpoint(path)


def listing(ck) -> dict:
    return {k: (tuple(t.shape), t.dtype) for k, t in ck.tensors.items()}


def summary(ck) -> tuple:
    return (ck.format, ck.sha256, list(ck.tensors.items()), ck.modules, ck.other_recurrent, ck.stubbed_globals,
            ck.refused_calls)


def cli_both_ways(invoke, *args) -> tuple:
    """(exit code, stdout, stderr) of the CLI on the torch-free path and on the torch path."""
    with mock.patch.dict(os.environ):
        os.environ.pop(TORCH_ENV, None)
        free = invoke(*args)
        os.environ[TORCH_ENV] = "1"
        with_torch = invoke(*args)
    return (free.exit_code, free.stdout, free.stderr), (with_torch.exit_code, with_torch.stdout, with_torch.stderr)


def assert_same_cli(invoke, path, *, ok: bool = True) -> None:
    for args in (("inspect", path, "--json"), ("inspect", path)):
        free, with_torch = cli_both_ways(invoke, *args)
        assert free == with_torch
        assert (free[0] == 0) == ok, free


def save(obj, path, fmt: str, protocol: int) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.save(obj, path, pickle_protocol=protocol, _use_new_zipfile_serialization=fmt == "zip")
    return path


def make_lstm(seed: int = 0, dtype=torch.float32, **kw) -> nn.LSTM:
    torch.manual_seed(seed)
    return nn.LSTM(batch_first=True, **{"input_size": 3, "hidden_size": 5, **kw}).to(dtype)


def run_matches_lstm(path, module, lstm: nn.LSTM, tmp_path, atol: float = 1e-6) -> None:
    """lstmscope's run on ``path`` equals ``lstm`` run directly (in the LSTM's dtype)."""
    from lstmscope.runner import RunOptions, execute_run

    dtype = next(lstm.parameters()).dtype
    x = np.random.default_rng(1).standard_normal((2, 4, lstm.input_size)).astype(np.float32)
    x_path = tmp_path / "x.npy"
    np.save(x_path, x)
    res = execute_run(RunOptions(checkpoint=path, input=x_path, module=module)).result
    with torch.no_grad():
        out, (h, c) = lstm(torch.from_numpy(x).to(dtype))
    for got, want in ((res.h_n, h), (res.c_n, c), (res.output, out)):
        np.testing.assert_allclose(np.asarray(got, dtype=np.float64), want.double().numpy(), rtol=0, atol=atol)


# --- checkpoints made here ----------------------------------------------------------------------------

def _optimizer_state(lstm: nn.LSTM) -> dict:
    opt = torch.optim.Adam(lstm.parameters())
    lstm(torch.zeros(1, 2, lstm.input_size))[0].sum().backward()
    opt.step()
    opt.zero_grad()
    return opt.state_dict()


def _views(lstm: nn.LSTM) -> dict:
    """The LSTM's weights as views into one flat storage, at offsets, next to strided and expanded views."""
    sd = lstm.state_dict()
    flat = torch.zeros(7 + sum(v.numel() for v in sd.values()))
    views, offset = {}, 7
    for k, v in sd.items():
        views[k] = flat[offset:offset + v.numel()].view_as(v)
        views[k].copy_(v)
        offset += v.numel()
    return {"lstm": views, "flat": flat, "every_third": flat[::3], "one": flat[9], "window": flat[3:11].view(2, 4),
            "transposed": torch.randn(4, 6).t(), "expanded": torch.randn(3, 1).expand(3, 4)}


def _non_contiguous(lstm: nn.LSTM) -> dict:
    """Each weight saved from a non-contiguous view: transposed twice (2-D) or every other element (1-D)."""
    out = OrderedDict()
    for k, v in lstm.state_dict().items():
        out[k] = v.t().contiguous().t() if v.dim() == 2 else torch.stack([v, -v], 1)[:, 0]
        assert not out[k].is_contiguous() and torch.equal(out[k], v)
    return out


def _build(case: str):
    """(object to save, the LSTM in it or None, its module prefix)."""
    if case in ("f32", "f64", "f16", "bf16"):
        lstm = make_lstm(1, {"f32": torch.float32, "f64": torch.float64, "f16": torch.float16,
                             "bf16": torch.bfloat16}[case], num_layers=2)
        return lstm.state_dict(), lstm, None
    if case == "proj":
        lstm = make_lstm(2, hidden_size=6, proj_size=2, num_layers=2)
        return {"model": lstm.state_dict()}, lstm, "model"
    if case == "bidirectional":
        lstm = make_lstm(3, num_layers=3, bidirectional=True)
        return {"rnn": lstm.state_dict()}, lstm, "rnn"
    if case == "nested":
        lstm = make_lstm(4)
        obj = {"epoch": 3, "model": {"encoder": {"rnn": lstm.state_dict()}}, "optimizer": _optimizer_state(lstm),
               "extras": [torch.arange(4), (torch.zeros(2, dtype=torch.bool), torch.tensor(1.5))],
               "empty": torch.empty(0, 5), "ints": {"i8": torch.ones(3, dtype=torch.int8),
                                                    "u8": torch.ones(3, dtype=torch.uint8),
                                                    "i16": torch.ones(1, dtype=torch.int16),
                                                    "i32": torch.ones(2, 2, dtype=torch.int32)},
               "grad": torch.randn(3, requires_grad=True), "complex": torch.zeros(2, dtype=torch.complex64),
               "half_scalar": torch.tensor(1.5).half()}
        return obj, lstm, "model.encoder.rnn"
    if case == "new_dtypes":  # saved through _rebuild_tensor_v3 and an UntypedStorage
        lstm = make_lstm(10)
        return {"sd": lstm.state_dict(), **{name: torch.zeros(2, 3, dtype=getattr(torch, name)) for name in (
            "uint16", "uint32", "uint64", "float8_e4m3fn", "float8_e5m2") if hasattr(torch, name)}}, lstm, "sd"
    if case == "parameters":
        lstm = make_lstm(5, bidirectional=True)
        return {"named": dict(lstm.named_parameters()), "listed": list(lstm.parameters()),
                "frozen": nn.Parameter(torch.randn(2, 2), requires_grad=False)}, lstm, "named"
    if case == "views":
        lstm = make_lstm(6, num_layers=2)
        return _views(lstm), lstm, "lstm"
    if case == "non_contiguous":
        lstm = make_lstm(7, proj_size=3, hidden_size=4)
        return _non_contiguous(lstm), lstm, None
    if case == "lightning":
        lstm = make_lstm(8)
        return {"epoch": 2, "global_step": 40, "pytorch-lightning_version": "2.1.0",
                "state_dict": OrderedDict((f"model.lstm.{k}", v) for k, v in lstm.state_dict().items()),
                "optimizer_states": [_optimizer_state(lstm)], "lr_schedulers": [],
                "hyper_parameters": {"lr": 1e-3, "dims": [3, 5], "name": "tagger", "seen": {1, 2}},
                "callbacks": {"EarlyStopping": {"wait_count": 0, "best_score": torch.tensor(0.25)}}}, lstm, \
            "state_dict.model.lstm"
    if case == "numpy_inside":  # weights-only loading refuses numpy: the restricted reader stubs it, both ways
        lstm = make_lstm(9)
        return {"sd": lstm.state_dict(), "mean": np.arange(3.0), "step": np.int64(7)}, lstm, "sd"
    raise AssertionError(case)


CASES = ["f32", "f64", "f16", "bf16", "proj", "bidirectional", "nested", "new_dtypes", "parameters", "views",
         "non_contiguous", "lightning", "numpy_inside"]
FORMATS = [("zip", 2), ("legacy", 2), ("zip", 4), ("legacy", 5), ("legacy", 1)]
RUNNABLE = ["f32", "f64", "proj", "bidirectional", "parameters", "views", "non_contiguous", "lightning"]


def _fmt_params(formats):
    return [pytest.param(f, p, id=f"{f}-p{p}") for f, p in formats]


@pytest.mark.parametrize("fmt,protocol", _fmt_params(FORMATS))
@pytest.mark.parametrize("case", CASES)
def test_listing_is_torchs(invoke, tmp_path, case, fmt, protocol):
    obj, _, _ = _build(case)
    path = save(obj, tmp_path / f"{case}.pt", fmt, protocol)
    if case == "new_dtypes" and fmt == "legacy":  # torch cannot read these back from a legacy file; lstmscope can
        free = read_torch_free(path)
        assert listing(free) == flat_truth(obj) and [m.prefix for m in free.modules] == ["sd"]
        (code, _, _), (tcode, _, terr) = cli_both_ways(invoke, "inspect", path)
        assert code == 0 and tcode == 2 and "legacy-format" in terr
        return
    truth = flat_truth(obj)
    if protocol == 2 and case != "numpy_inside":
        assert weights_only_truth(path) == truth  # torch itself reads back what was saved
    free = read_torch_free(path)
    assert listing(free) == truth
    assert list(free.tensors) == list(truth)  # same order: find_lstm_modules sees the same listing
    assert summary(free) == summary(read_with_torch(path))
    if case == "numpy_inside":
        assert free.refused_calls and any(g.startswith("numpy") for g in free.stubbed_globals + free.refused_calls)
    else:
        assert free.stubbed_globals == [] and free.refused_calls == []
    assert_same_cli(invoke, path)


@pytest.mark.parametrize("fmt,protocol", _fmt_params([("zip", 2), ("legacy", 5), ("legacy", 1)]))
@pytest.mark.parametrize("case", RUNNABLE)
def test_run_after_torch_free_listing(tmp_path, case, fmt, protocol):
    obj, lstm, prefix = _build(case)
    path = save(obj, tmp_path / f"{case}.pt", fmt, protocol)
    ck = read_torch_free(path)
    assert [m.prefix for m in ck.modules][:1] == [prefix or ""]
    params = ck.parameters(ck.modules[0])  # torch loads the values now, handed over as numpy
    for name, want in lstm.state_dict().items():
        assert torch.equal(torch.from_numpy(params[name]), want), name
    run_matches_lstm(path, prefix, lstm, tmp_path, atol=1e-12 if case == "f64" else 1e-6)


def test_lazy_loader_notices_a_changed_file(tmp_path):
    path = save(make_lstm(10).state_dict(), tmp_path / "m.pt", "zip", 2)
    ck = read_torch_free(path)
    save(make_lstm(10, hidden_size=6).state_dict(), path, "zip", 2)
    with pytest.raises(checkpoint.CheckpointError, match="did the file change"):
        ck.parameters(ck.modules[0])


# --- full-module pickles from another process ----------------------------------------------------------

_SAVE_MODELS = textwrap.dedent("""
    import json, sys
    import torch
    from torch import nn
    from safetensors.torch import save_file

    class Tagger(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(10, 3)
            self.encoder = nn.Sequential(nn.LSTM(3, 5, num_layers=2, bidirectional=True, batch_first=True))
            self.head = nn.Linear(10, 4).double()
            self.register_buffer("scratch", torch.zeros(2), persistent=False)
            self.register_buffer("counts", torch.zeros(3, dtype=torch.int64))
            self.device = torch.device("cpu")
            self.dtype = torch.float32

    out = sys.argv[1]
    torch.manual_seed(11)
    model = Tagger()
    save_file({k: v.contiguous() for k, v in model.encoder[0].state_dict().items()}, f"{out}/truth.safetensors")
    truth = {k: [list(v.shape), str(v.dtype).removeprefix("torch.")] for k, v in model.state_dict().items()}
    json.dump(truth, open(f"{out}/truth.json", "w"))
    for fmt, protocol in [("zip", 1), ("zip", 2), ("legacy", 1), ("legacy", 2), ("zip", 4), ("legacy", 5)]:
        torch.save(model, f"{out}/{fmt}_p{protocol}.pt", pickle_protocol=protocol,
                   _use_new_zipfile_serialization=(fmt == "zip"))
""")
FULL_CASES = ["zip_p1", "zip_p2", "legacy_p1", "legacy_p2", "zip_p4", "legacy_p5"]


@pytest.fixture(scope="module")
def full_modules(tmp_path_factory):
    out = tmp_path_factory.mktemp("full_modules")
    proc = subprocess.run([sys.executable, "-c", _SAVE_MODELS, str(out)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lstm = nn.LSTM(3, 5, num_layers=2, bidirectional=True, batch_first=True)
    lstm.load_state_dict(load_file(str(out / "truth.safetensors")), strict=True)
    truth = {k: (tuple(shape), dtype) for k, (shape, dtype) in json.loads((out / "truth.json").read_text()).items()}
    return out, lstm, truth


@pytest.mark.parametrize("case", FULL_CASES)
def test_full_module_pickle(invoke, tmp_path, full_modules, case):
    out, lstm, truth = full_modules
    path = out / f"{case}.pt"
    free = read_torch_free(path)
    assert listing(free) == truth  # the model's own state_dict() in the process that saved it
    assert summary(free) == summary(read_with_torch(path))
    assert {"__main__.Tagger", "torch.nn.modules.rnn.LSTM", "torch.nn.modules.container.Sequential"} <= set(
        free.stubbed_globals)
    assert free.refused_calls == []
    assert_same_cli(invoke, path)
    run_matches_lstm(path, "encoder.0", lstm, tmp_path)


# --- hostile files ------------------------------------------------------------------------------------

class Call:
    """Pickles as ``func(*args)``: plain pickle calls ``func`` when it reads this."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return (self.func, self.args)

    def __call__(self, *args):  # never called here
        raise AssertionError("not to be called")


PAYLOADS = {
    "os.system": (lambda m: Call(os.system, f"touch '{m}'"), [f"{os.system.__module__}.system"]),
    "builtins.exec": (lambda m: Call(exec, f"open({str(m)!r}, 'w').close()"), ["builtins.exec"]),
    "__import__": (lambda m: Call(Call(getattr, Call(__import__, "os"), "system"), f"touch '{m}'"),
                   ["builtins.__import__", "builtins.getattr"]),
}


@pytest.mark.parametrize("fmt,protocol", _fmt_params([("zip", 2), ("legacy", 2), ("zip", 5), ("legacy", 1)]))
@pytest.mark.parametrize("kind", sorted(PAYLOADS))
def test_payload_is_refused_without_torch(invoke, tmp_path, kind, fmt, protocol):
    marker = tmp_path / "MARKER"
    make, refused = PAYLOADS[kind]
    live = tmp_path / "LIVE"
    pickle.loads(pickle.dumps(make(live), protocol=2))
    assert live.exists()  # the payload runs when plain pickle reads it
    lstm = make_lstm(12)
    obj = {"state_dict": {f"model.lstm.{k}": v for k, v in lstm.state_dict().items()}, "hook": make(marker)}
    path = save(obj, tmp_path / "evil.pt", fmt, protocol)
    free = read_torch_free(path)
    assert not marker.exists()
    assert sorted(free.refused_calls) == sorted(refused)
    assert [m.prefix for m in free.modules] == ["state_dict.model.lstm"]
    assert listing(free) == flat_truth(lstm.state_dict(), "state_dict.model.lstm.")
    assert summary(free) == summary(read_with_torch(path))
    assert_same_cli(invoke, path)
    run_matches_lstm(path, None, lstm, tmp_path)
    assert not marker.exists()


def test_payload_without_lstm_is_the_same_error(invoke, tmp_path):
    marker = tmp_path / "MARKER"
    path = save({"config": {"lr": 0.1}, "hook": PAYLOADS["os.system"][0](marker)}, tmp_path / "evil.pt", "zip", 2)
    free, with_torch = cli_both_ways(invoke, "inspect", path)
    assert free == with_torch and free[0] == 2 and "refused" in free[2]
    assert not marker.exists()


# --- files the torch-free reader leaves to torch -------------------------------------------------------

def _tensor_with_attribute():
    t = torch.randn(2)
    t.note = "calibrated"  # Python state: saved through torch._tensor._rebuild_from_type_v2
    return t


def _leftover(name: str) -> dict:
    """An LSTM next to a tensor torch.save writes in a way the torch-free reader does not model."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # quantized tensors are deprecated
        other = {"attribute": _tensor_with_attribute,
                 "quantized": lambda: torch.quantize_per_tensor(torch.randn(4), 0.1, 0, torch.qint8),
                 "sparse": lambda: torch.eye(3).to_sparse()}[name]()
    return {"sd": make_lstm(13).state_dict(), "other": other}


@pytest.mark.parametrize("fmt", ["zip", "legacy"])
@pytest.mark.parametrize("name", ["attribute", "quantized", "sparse"])
def test_unmodelled_tensors_fall_back_to_torch(invoke, tmp_path, name, fmt):
    path = save(_leftover(name), tmp_path / f"{name}.pt", fmt, 2)
    with pytest.raises(Unsupported):
        list_torch_file(path, legacy=fmt == "legacy")
    ck = read_checkpoint(path)
    assert summary(ck) == summary(read_with_torch(path))
    assert [m.prefix for m in ck.modules] == ["sd"]
    assert_same_cli(invoke, path)


def test_torchscript_archive_is_torchs_to_judge(invoke, tmp_path):
    path = tmp_path / "scripted.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit.script is deprecated
        torch.jit.save(torch.jit.script(nn.LSTM(3, 5)), str(path))
    with pytest.raises(Unsupported, match="TorchScript"):
        list_torch_file(path, legacy=False)
    free, with_torch = cli_both_ways(invoke, "inspect", path)
    assert free == with_torch


def _rewrite_zip(src: Path, dst: Path, drop=(), replace=None) -> Path:
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as zout:
        for info in zin.infolist():
            if drop and info.filename.endswith(drop):
                continue
            data = zin.read(info)
            if replace:
                data = replace(info.filename, data)
            zout.writestr(info, data)
    return dst


@pytest.mark.parametrize("damage", ["missing_record", "short_record", "compressed"])
def test_damaged_storages_give_torchs_result(invoke, tmp_path, damage):
    good = save(make_lstm(14).state_dict(), tmp_path / "good.pt", "zip", 2)
    bad = tmp_path / "bad.pt"
    if damage == "missing_record":
        _rewrite_zip(good, bad, drop=("data/0",))
    elif damage == "short_record":
        _rewrite_zip(good, bad, replace=lambda n, d: d[:-4] if n.endswith("data/1") else d)
    else:
        with zipfile.ZipFile(good) as zin, zipfile.ZipFile(bad, "w", zipfile.ZIP_DEFLATED) as zout:
            for info in zin.infolist():
                zout.writestr(info.filename, zin.read(info))
    with pytest.raises(Unsupported):
        list_torch_file(bad, legacy=False)
    free, with_torch = cli_both_ways(invoke, "inspect", bad, "--json")
    assert free == with_torch


@pytest.mark.parametrize("cut", [8, 100, 700])
def test_truncated_legacy_file_gives_torchs_result(invoke, tmp_path, cut):
    good = save({"sd": make_lstm(15).state_dict()}, tmp_path / "good.pt", "legacy", 2)
    bad = tmp_path / "bad.pt"
    bad.write_bytes(good.read_bytes()[:-cut])
    free, with_torch = cli_both_ways(invoke, "inspect", bad)
    assert free == with_torch
    assert free[0] == 2, free


# --- legacy files written with pickle protocol 0 or 1 --------------------------------------------------

def test_legacy_protocol_0_and_1_are_torch_files(invoke, tmp_path):
    p1 = save({"sd": make_lstm(16).state_dict()}, tmp_path / "p1.pt", "legacy", 1)
    assert sniff(p1).format == TORCH_LEGACY
    assert [m.prefix for m in read_torch_free(p1).modules] == ["sd"]
    p0 = save({"config": {"lr": 0.1}}, tmp_path / "p0.pt", "legacy", 0)  # torch can save no tensors with protocol 0
    assert sniff(p0).format == TORCH_LEGACY
    assert "no LSTM" in assert_one_error_line(invoke("inspect", p0), p0)
    text = tmp_path / "numbers.txt"
    text.write_text("L119547037146038801333356 is a long number\n")
    assert "a text file" in assert_one_error_line(invoke("inspect", text), text)


# --- what the reader copies from torch ---------------------------------------------------------------

def test_no_global_torch_allows_is_ever_stubbed():
    from torch import _weights_only_unpickler

    from lstmscope.readers.safe_pickle import PickleReport
    from lstmscope.readers.torch_listing import ListingUnpickler, _ZipStorages

    reader = ListingUnpickler(io.BytesIO(b""), report=PickleReport(), storages=_ZipStorages({}, "a/"))
    reader.proto = 4
    for key in _weights_only_unpickler._get_allowed_globals():
        module, name = key.rsplit(".", 1)
        with contextlib.suppress(Unsupported):
            reader.find_class(module, name)
    assert reader.report.stubbed_globals == []
    with contextlib.suppress(Unsupported):
        reader.find_class("torch.nn.modules.rnn", "LSTM")
    assert reader.report.stubbed_globals == ["torch.nn.modules.rnn.LSTM"]  # not on torch's list: stubbed


def test_dtype_tables_are_torchs():
    from lstmscope.readers.torch_listing import _QUANTIZED_STORAGES, DTYPE_NAMES, ITEMSIZE, STORAGE_DTYPES

    for name, size in ITEMSIZE.items():
        if hasattr(torch, name):
            assert torch._utils._element_size(getattr(torch, name)) == size, name
    for dtype, storage in torch.storage._dtype_to_storage_type_map().items():
        assert STORAGE_DTYPES.get(storage, "quantized") == (
            "quantized" if storage in _QUANTIZED_STORAGES else str(dtype).removeprefix("torch.")), storage
    for name in DTYPE_NAMES:
        if hasattr(torch, name):
            assert str(getattr(torch, name)) == f"torch.{name}"


# --- real checkpoints ---------------------------------------------------------------------------------

REAL = [e for e in real_manifest() if e["framework"] == "pytorch" and not e["file"].endswith(".safetensors")]


@pytest.mark.parametrize("entry", REAL, ids=lambda e: e["file"])
def test_real_checkpoint(invoke, tmp_path, entry):
    path = real_checkpoints_dir() / entry["file"]
    free = read_torch_free(path)
    if entry["loads_with_weights_only"]:
        assert listing(free) == weights_only_truth(path)
        assert free.stubbed_globals == [] and free.refused_calls == []
    assert summary(free) == summary(read_with_torch(path))
    assert free.sha256 == entry["sha256"]
    assert sorted(m.prefix for m in free.modules) == sorted(m["prefix"].rstrip(".") for m in entry["lstm_modules"])
    assert_same_cli(invoke, path)
    if entry["loads_with_weights_only"]:  # the values torch loads afterwards are the file's own
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            direct = torch.load(path, map_location="cpu", weights_only=True)
        flat = {}
        checkpoint._flatten(direct, "", flat, torch.Tensor, depth=0)
        for module in free.modules:
            for name, array in free.parameters(module).items():
                want = flat[module.keys()[name]]
                want = want.float() if want.dtype == torch.bfloat16 else want
                assert torch.equal(torch.from_numpy(array), want)


# --- startup: torch is never imported -----------------------------------------------------------------

_RUN_MANY = """
import contextlib, io, json, sys
from lstmscope.cli import app
out = []
for argv in json.loads(sys.argv[1]):
    o, e = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(o), contextlib.redirect_stderr(e):
        try:
            app(argv, prog_name="lstmscope")
            code = 0
        except SystemExit as ex:
            code = ex.code
    out.append([code, o.getvalue(), e.getvalue()])
print(json.dumps({"runs": out, "torch": "torch" in sys.modules}))
"""


def _torchless_env(tmp_path: Path) -> dict:
    stub = tmp_path / "stub"
    (stub / "torch").mkdir(parents=True)
    (stub / "torch" / "__init__.py").write_text('raise ImportError("torch must not be imported")\n')
    env = {k: v for k, v in os.environ.items() if k not in ("LSTMSCOPE_DEBUG", TORCH_ENV)}
    env["PYTHONPATH"] = os.pathsep.join([str(stub), *filter(None, [env.get("PYTHONPATH")])])
    return env


def test_inspect_torch_files_without_importing_torch(invoke, tmp_path, full_modules):
    marker = tmp_path / "MARKER"
    lstm = make_lstm(17)
    files = [
        SAMPLES / "bi_2layer.pt",
        full_modules[0] / "zip_p2.pt",
        full_modules[0] / "legacy_p5.pt",
        save(_build("lightning")[0], tmp_path / "lightning.ckpt", "zip", 2),
        save(_build("nested")[0], tmp_path / "legacy.pt", "legacy", 2),
        save({"sd": lstm.state_dict(), "hook": PAYLOADS["__import__"][0](marker)}, tmp_path / "evil.pt", "zip", 4),
    ]
    argvs = [["inspect", str(f), *flag] for f in files for flag in (["--json"], [])]
    env = _torchless_env(tmp_path)
    probe = subprocess.run([sys.executable, "-c", "import torch"], env=env, capture_output=True, text=True)
    assert probe.returncode != 0 and "torch must not be imported" in probe.stderr  # the stub is in effect
    proc = subprocess.run([sys.executable, "-c", _RUN_MANY, json.dumps(argvs)], capture_output=True, text=True,
                          env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["torch"] is False
    for argv, (code, out, err) in zip(argvs, doc["runs"]):
        assert code == 0, (argv, err)
        assert err == "" and "torch must not" not in out
        with mock.patch.dict(os.environ, {TORCH_ENV: "1"}):
            expected = invoke(*argv)
        assert out == expected.stdout, argv  # as the torch path prints it
    evil = json.loads(doc["runs"][-2][1])["checkpoint"]
    assert evil["refused_calls"] == ["builtins.__import__", "builtins.getattr"]
    assert not marker.exists()


def test_python_m_lstmscope_inspect_without_torch(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "lstmscope", "inspect", str(SAMPLES / "bi_2layer.pt"), "--json"],
                          env=_torchless_env(tmp_path), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    assert [m["prefix"] for m in json.loads(proc.stdout)["modules"]] == ["model_state_dict.lstm"]
