"""Checkpoints cannot run code: hostile pickles, full-module pickles and the restricted reader.

Truth here is independent of lstmscope: each payload is first shown to be live (plain ``pickle``
runs it and the marker file appears), ``torch.nn.LSTM`` run in the test says what the LSTM's
outputs must be, and full-module pickles are written by a separate Python process whose
``__main__`` classes this process cannot import.
"""

from __future__ import annotations

import builtins
import copyreg
import io
import json
import os
import pickle
import struct
import subprocess
import sys
import textwrap
import types
from collections import OrderedDict

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from helpers import assert_one_error_line

# --- payloads ----------------------------------------------------------------------------------------


class Call:
    """Pickles as ``func(*args)``: unpickling it calls ``func``. ``func`` may itself be a Call (a REDUCE chain)."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return (self.func, self.args)

    def __call__(self, *args):  # pickle wants a callable ``func``; never called here
        raise AssertionError("not to be called")


def _touch_code(marker) -> str:
    return f"open({str(marker)!r}, 'w').close()"


PAYLOADS = {
    # name -> (payload that creates ``marker`` when unpickled, the calls lstmscope must report refused)
    "os.system": (lambda m: Call(os.system, f"touch '{m}'"), {f"{os.system.__module__}.system"}),
    "subprocess.Popen": (lambda m: Call(subprocess.Popen, ["touch", str(m)]), {"subprocess.Popen"}),
    "builtins.exec": (lambda m: Call(builtins.exec, _touch_code(m)), {"builtins.exec"}),
    "builtins.eval": (lambda m: Call(builtins.eval, _touch_code(m)), {"builtins.eval"}),
    # __import__('os').system('touch ...') as a REDUCE chain through builtins.getattr
    "__import__": (lambda m: Call(Call(getattr, Call(__import__, "os"), "system"), f"touch '{m}'"),
                   {"builtins.__import__", "builtins.getattr"}),
}


@pytest.mark.parametrize("kind", sorted(PAYLOADS))
def test_payloads_are_live(tmp_path, kind):
    """The payloads really run code when plain pickle reads them (else the tests below prove nothing)."""
    marker = tmp_path / "LIVE"
    result = pickle.loads(pickle.dumps(PAYLOADS[kind][0](marker), protocol=2))
    if isinstance(result, subprocess.Popen):
        result.wait()
    assert marker.exists()


# --- helpers ------------------------------------------------------------------------------------------

CFG = dict(input_size=3, hidden_size=5, num_layers=2, bidirectional=True)


def make_lstm(seed: int = 0) -> nn.LSTM:
    torch.manual_seed(seed)
    return nn.LSTM(batch_first=True, **CFG)


def torch_run(lstm: nn.LSTM, x: np.ndarray):
    with torch.no_grad():
        out, (h, c) = lstm(torch.from_numpy(x))
    return out.numpy(), h.numpy(), c.numpy()


def write_input(tmp_path, features: int = 3, batch: int = 2, time: int = 4):
    x = np.random.default_rng(1).standard_normal((batch, time, features)).astype(np.float32)
    path = tmp_path / "x.npy"
    np.save(path, x)
    return path, x


def assert_matches_lstm(checkpoint, module, x_path, x, lstm):
    """lstmscope's run on ``checkpoint`` equals ``lstm`` run directly."""
    from lstmscope.runner import RunOptions, execute_run

    res = execute_run(RunOptions(checkpoint=checkpoint, input=x_path, module=module)).result
    out, h, c = torch_run(lstm, x)
    np.testing.assert_allclose(res.h_n, h, rtol=0, atol=1e-6)
    np.testing.assert_allclose(res.c_n, c, rtol=0, atol=1e-6)
    np.testing.assert_allclose(res.output, out, rtol=0, atol=1e-6)


def inspect_doc(invoke, path) -> dict:
    result = invoke("inspect", path, "--json")
    assert result.exit_code == 0, result.stdout + result.stderr
    assert result.stderr == ""
    return json.loads(result.stdout)


def save(obj, path, fmt: str, protocol: int) -> None:
    torch.save(obj, path, pickle_protocol=protocol, _use_new_zipfile_serialization=(fmt == "zip"))


def lightning_style(lstm: nn.LSTM, payload) -> dict:
    return {"epoch": 3, "state_dict": {f"model.lstm.{k}": v for k, v in lstm.state_dict().items()},
            "hyper_parameters": payload, "pytorch-lightning_version": "2.1.0", "blob": b"\x00\xff",
            "seen": {1, 2}, "frozen": frozenset({3})}


def nested_in_state_dict(lstm: nn.LSTM, payload) -> OrderedDict:
    sd = OrderedDict(lstm.state_dict())
    sd["extra"] = payload
    return sd


CONTAINERS = {"state_dict": (nested_in_state_dict, ""), "lightning": (lightning_style, "state_dict.model.lstm")}


# --- hostile checkpoints: inspect and run never run the payload -----------------------------------

@pytest.mark.parametrize("fmt,protocol", [("zip", 2), ("legacy", 4)])
@pytest.mark.parametrize("container", sorted(CONTAINERS))
@pytest.mark.parametrize("kind", sorted(PAYLOADS))
def test_payload_around_lstm_is_refused_and_lstm_found(invoke, tmp_path, kind, container, fmt, protocol):
    marker = tmp_path / "MARKER"
    make_payload, refused = PAYLOADS[kind]
    build, prefix = CONTAINERS[container]
    lstm = make_lstm(seed=4)
    path = tmp_path / "evil.pt"
    save(build(lstm, make_payload(marker)), path, fmt, protocol)
    x_path, x = write_input(tmp_path)

    doc = inspect_doc(invoke, path)
    assert [m["prefix"] for m in doc["modules"]] == [prefix]
    assert set(doc["checkpoint"]["refused_calls"]) == refused
    table = invoke("inspect", path)
    assert table.exit_code == 0 and "refused to call" in table.stdout
    result = invoke("run", path, x_path, "--json")
    assert result.exit_code == 0, result.stdout + result.stderr
    assert json.loads(result.stdout)["ok"] is True
    (note,) = result.stderr.splitlines()
    assert "refused to call" in note and all(name in note for name in refused)
    assert_matches_lstm(path, None, x_path, x, lstm)
    assert not marker.exists()


# Legacy (non-zip) files need protocol >= 2: sniff_format knows them by their PROTO opcode.
PROTOCOL_CASES = [("zip", p) for p in (1, 2, 3, 4, 5)] + [("legacy", p) for p in (2, 3, 4, 5)]


@pytest.mark.parametrize("fmt,protocol", PROTOCOL_CASES)
def test_every_pickle_protocol(invoke, tmp_path, fmt, protocol):
    marker = tmp_path / "MARKER"
    lstm = make_lstm(seed=5)
    path = tmp_path / "evil.pt"
    save(lightning_style(lstm, PAYLOADS["os.system"][0](marker)), path, fmt, protocol)
    x_path, x = write_input(tmp_path)
    doc = inspect_doc(invoke, path)
    assert [m["prefix"] for m in doc["modules"]] == ["state_dict.model.lstm"]
    assert doc["checkpoint"]["refused_calls"] == [f"{os.system.__module__}.system"]
    assert_matches_lstm(path, None, x_path, x, lstm)
    assert not marker.exists()


@pytest.mark.parametrize("fmt,protocol", [("zip", 0), ("zip", 1), ("legacy", 2), ("zip", 5)])
@pytest.mark.parametrize("kind", ["os.system", "__import__"])
def test_payload_without_lstm_is_one_error_line(invoke, tmp_path, kind, protocol, fmt):
    """Protocol 0 too (torch can only save tensor-free objects with it)."""
    marker = tmp_path / "MARKER"
    make_payload, refused = PAYLOADS[kind]
    path = tmp_path / "evil.pt"
    save({"config": {"lr": 0.1}, "hook": make_payload(marker)}, path, fmt, protocol)
    x_path, _ = write_input(tmp_path)
    for args in (("inspect", path), ("inspect", path, "--json"), ("run", path, x_path)):
        line = assert_one_error_line(invoke(*args), path, "no LSTM", "refused", *refused)
        assert "\x1b[" not in line
    assert not marker.exists()


def test_plain_state_dict_has_empty_lists(invoke, tmp_path):
    path = tmp_path / "clean.pt"
    torch.save(make_lstm().state_dict(), path)
    doc = inspect_doc(invoke, path)
    assert doc["checkpoint"]["stubbed_globals"] == [] and doc["checkpoint"]["refused_calls"] == []
    x_path, _ = write_input(tmp_path)
    result = invoke("run", path, x_path, "--json")
    assert result.exit_code == 0 and result.stderr == ""


# --- full-module pickles from another process (classes this process cannot import) ---------------

_SAVE_MODELS = textwrap.dedent("""
    import sys
    import torch
    from torch import nn
    from safetensors.torch import save_file

    class Tagger(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(10, 3)
            self.encoder = nn.Sequential(nn.LSTM(3, 5, num_layers=2, bidirectional=True, batch_first=True))
            self.head = nn.Linear(10, 4)
            self.register_buffer("scratch", torch.zeros(2), persistent=False)

    out = sys.argv[1]
    torch.manual_seed(11)
    model = Tagger()
    save_file({k: v.contiguous() for k, v in model.encoder[0].state_dict().items()}, f"{out}/truth.safetensors")
    for fmt, protocol in [("zip", 1), ("zip", 2), ("legacy", 2), ("zip", 4), ("legacy", 5)]:
        torch.save(model, f"{out}/{fmt}_p{protocol}.pt", pickle_protocol=protocol,
                   _use_new_zipfile_serialization=(fmt == "zip"))
""")
FULL_CASES = ["zip_p1", "zip_p2", "legacy_p2", "zip_p4", "legacy_p5"]


@pytest.fixture(scope="module")
def full_modules(tmp_path_factory):
    out = tmp_path_factory.mktemp("full_modules")
    proc = subprocess.run([sys.executable, "-c", _SAVE_MODELS, str(out)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lstm = nn.LSTM(3, 5, num_layers=2, bidirectional=True, batch_first=True)
    lstm.load_state_dict(load_file(str(out / "truth.safetensors")), strict=True)
    return out, lstm


def test_full_module_classes_are_really_unimportable_here(full_modules):
    out, _ = full_modules
    with pytest.raises(AttributeError, match="Tagger"):
        torch.load(out / "zip_p2.pt", weights_only=False)


@pytest.mark.parametrize("case", FULL_CASES)
def test_full_module_pickle_from_main(invoke, tmp_path, full_modules, case):
    out, lstm = full_modules
    path = out / f"{case}.pt"
    doc = inspect_doc(invoke, path)
    (mod,) = doc["modules"]
    assert mod["prefix"] == "encoder.0"
    assert {k: mod[k] for k in ("input_size", "hidden_size", "num_layers", "bidirectional", "proj_size", "bias")} == {
        "input_size": 3, "hidden_size": 5, "num_layers": 2, "bidirectional": True, "proj_size": 0, "bias": True}
    assert mod["parameters"] == sum(p.numel() for p in lstm.parameters())
    stubbed = doc["checkpoint"]["stubbed_globals"]
    assert {"__main__.Tagger", "torch.nn.modules.rnn.LSTM", "torch.nn.modules.container.Sequential"} <= set(stubbed)
    assert doc["checkpoint"]["refused_calls"] == []
    table = invoke("inspect", path)
    assert table.exit_code == 0 and "read without running code" in table.stdout and "__main__.Tagger" in table.stdout
    x_path, x = write_input(tmp_path)
    result = invoke("run", path, x_path)
    assert result.exit_code == 0, result.stdout + result.stderr
    (note,) = result.stderr.splitlines()
    assert "without running code" in note and "__main__.Tagger" in note and "refused" not in note
    assert_matches_lstm(path, "encoder.0", x_path, x, lstm)


# --- the restricted reader itself ----------------------------------------------------------------

def _restricted_load(data: bytes):
    from lstmscope.readers.safe_pickle import PickleReport, RestrictedUnpickler

    report = PickleReport()
    return RestrictedUnpickler(io.BytesIO(data), report=report).load(), report


SYSTEM = f"{os.system.__module__}.system"
_P4_BODY = b"\x8c\x02os\x94\x8c\x06system\x94\x93\x94\x8c\x0ctouch MARKER\x94\x85\x94R\x94."


@pytest.mark.parametrize("data", [
    pytest.param(b"(S'touch MARKER'\nios\nsystem\n.", id="INST"),
    pytest.param(b"(cos\nsystem\nS'touch MARKER'\no.", id="OBJ"),
    pytest.param(b"cos\nsystem\n(S'touch MARKER'\ntR.", id="protocol0-GLOBAL-REDUCE"),
    pytest.param(b"\x80\x04\x95" + struct.pack("<Q", len(_P4_BODY)) + _P4_BODY, id="protocol4-FRAME-STACK_GLOBAL"),
])
def test_hand_made_opcodes_are_refused(tmp_path, monkeypatch, data):
    from lstmscope.readers.safe_pickle import RefusedCall

    monkeypatch.chdir(tmp_path)
    assert pickle.loads(data.replace(b"touch MARKER", b"touch LIVE!!")) == 0 and (tmp_path / "LIVE!!").exists()
    obj, report = _restricted_load(data)
    assert isinstance(obj, RefusedCall) and obj.origin == "os.system" and obj.args == ("touch MARKER",)
    assert report.refused_calls == ["os.system"]
    assert not (tmp_path / "MARKER").exists()


def test_extension_codes_resolve_only_through_the_allowlist(tmp_path):
    from lstmscope.readers.safe_pickle import RefusedCall

    marker = tmp_path / "MARKER"
    code = 0xF1
    copyreg.add_extension(os.system.__module__, "system", code)
    try:
        data = pickle.dumps(PAYLOADS["os.system"][0](marker), protocol=2)
        assert pickle.EXT1 + bytes([code]) in data
        obj, report = _restricted_load(data)
        assert isinstance(obj, RefusedCall) and report.refused_calls == [SYSTEM]
    finally:
        copyreg.remove_extension(os.system.__module__, "system", code)
    with pytest.raises(pickle.UnpicklingError, match="unregistered extension code"):
        _restricted_load(data)
    assert not marker.exists()


class LoudState:
    """Unpickling with plain pickle calls __setstate__, which creates ``marker``."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __setstate__(self, state):
        open(state["marker"], "w").close()


@pytest.mark.parametrize("protocol", [0, 1, 2, 4])
def test_build_stores_state_and_never_calls_setstate(tmp_path, protocol):
    from lstmscope.readers.safe_pickle import StubObject

    marker = tmp_path / "MARKER"
    data = pickle.dumps(LoudState(marker), protocol=protocol)
    live = tmp_path / "LIVE"
    pickle.loads(pickle.dumps(LoudState(live), protocol=protocol))
    assert live.exists()
    obj, report = _restricted_load(data)
    assert isinstance(obj, StubObject) and obj.origin == f"{__name__}.LoudState"
    assert obj.state == {"marker": str(marker)}
    assert report.stubbed_globals == [f"{__name__}.LoudState"] and report.refused_calls == []
    assert not marker.exists()


class KeywordNew(LoudState):
    def __getnewargs_ex__(self):
        return (), {"flavour": "kw"}


def test_newobj_ex_makes_a_stub(tmp_path):
    from lstmscope.readers.safe_pickle import StubObject

    marker = tmp_path / "MARKER"
    data = pickle.dumps(KeywordNew(marker), protocol=4)
    assert pickle.NEWOBJ_EX in data
    obj, report = _restricted_load(data)
    assert isinstance(obj, StubObject) and obj.state == {"marker": str(marker)}
    assert report.stubbed_globals == [f"{__name__}.KeywordNew"]
    assert not marker.exists()


def test_torch_load_named_in_a_pickle_is_refused(tmp_path):
    """torch's own functions are not on the allowlist: a pickle cannot make lstmscope call torch.load."""
    marker = tmp_path / "MARKER"
    inner = tmp_path / "inner.pt"
    torch.save({"x": PAYLOADS["os.system"][0](marker)}, inner)
    _, report = _restricted_load(pickle.dumps(Call(torch.load, str(inner)), protocol=2))
    assert report.refused_calls == ["torch.serialization.load"]
    assert not marker.exists()


@pytest.mark.parametrize("data", [
    pytest.param(b"\x80\x02}}b.", id="BUILD-on-dict"),
    pytest.param(b"\x80\x02)K\x01a.", id="APPEND-to-tuple"),
    pytest.param(b"\x80\x02})R.", id="REDUCE-on-dict"),
    pytest.param(b"\x80\x02]K\x01K\x02s.", id="SETITEM-on-list"),
    pytest.param(b"c_codecs\nencode\n(Vabc\nVrot13\ntR.", id="codecs-encode-other-codec"),
    pytest.param(b"\x80\x02ccollections\nOrderedDict\n)R}X\x05\x00\x00\x00itemsK\x01sb.", id="BUILD-shadowing-items"),
])
def test_real_objects_only_take_plain_operations(data):
    """As in torch's weights-only reader: BUILD, APPEND, SETITEM and calls on real objects are limited."""
    with pytest.raises(pickle.UnpicklingError):
        _restricted_load(data)


# --- never imports a module ------------------------------------------------------------------------

CANARY = "lstmscope_canary_xyz"


@pytest.fixture
def canary(tmp_path, monkeypatch):
    """A torch file naming a class and a function of CANARY around an LSTM, and CANARY on sys.path,
    whose import would create a marker file. Saved through a stand-in module this process drops again."""
    marker = tmp_path / "IMPORTED"
    pkg = tmp_path / "canary_path"
    pkg.mkdir()
    (pkg / f"{CANARY}.py").write_text(f"open({str(marker)!r}, 'w').close()\n"
                                      "class Thing:\n    pass\n"
                                      "def boom(*args):\n    raise SystemExit('boom')\n")
    fake = types.ModuleType(CANARY)

    class Thing:
        pass

    def boom(*args):
        raise AssertionError("never called")

    for obj, name in ((Thing, "Thing"), (boom, "boom")):
        obj.__module__, obj.__qualname__ = CANARY, name
        setattr(fake, name, obj)
    lstm = make_lstm(seed=8)
    path = tmp_path / "canary.pt"
    monkeypatch.setitem(sys.modules, CANARY, fake)
    thing = Thing()
    thing.size = 3
    torch.save({"model": lstm.state_dict(), "thing": thing, "call": Call(boom, 1)}, path)
    monkeypatch.delitem(sys.modules, CANARY)
    monkeypatch.syspath_prepend(str(pkg))
    return path, lstm, marker, pkg


def test_restricted_reader_never_imports_a_module(invoke, tmp_path, canary):
    import importlib.util

    path, lstm, marker, _ = canary
    assert importlib.util.find_spec(CANARY) is not None and CANARY not in sys.modules and not marker.exists()
    doc = inspect_doc(invoke, path)
    assert [m["prefix"] for m in doc["modules"]] == ["model"]
    assert doc["checkpoint"]["stubbed_globals"] == [f"{CANARY}.Thing"]
    assert doc["checkpoint"]["refused_calls"] == [f"{CANARY}.boom"]
    x_path, x = write_input(tmp_path)
    result = invoke("run", path, x_path, "--json")
    assert result.exit_code == 0, result.stderr
    assert_matches_lstm(path, None, x_path, x, lstm)
    assert CANARY not in sys.modules
    assert not marker.exists()


def test_subprocess_cli_runs_no_code(tmp_path, canary):
    """The installed entry point, in a fresh process with the canary importable and a live payload file."""
    path, _, canary_marker, pkg = canary
    marker = tmp_path / "MARKER"
    evil = tmp_path / "evil.pt"
    save(lightning_style(make_lstm(seed=9), PAYLOADS["__import__"][0](marker)), evil, "legacy", 5)
    x_path, _ = write_input(tmp_path)
    env = {k: v for k, v in os.environ.items() if k != "LSTMSCOPE_DEBUG"}
    env["PYTHONPATH"] = os.pathsep.join([str(pkg), env.get("PYTHONPATH", "")])
    for argv in (["inspect", str(path), "--json"], ["run", str(evil), str(x_path)]):
        proc = subprocess.run([sys.executable, "-m", "lstmscope", *argv], capture_output=True, text=True,
                              env=env, timeout=120)
        assert proc.returncode == 0, proc.stderr
        if argv[0] == "run":
            (note,) = proc.stderr.splitlines()
            assert "refused to call" in note and "builtins.__import__" in note
        else:
            assert json.loads(proc.stdout)["checkpoint"]["refused_calls"] == [f"{CANARY}.boom"]
    assert not marker.exists() and not canary_marker.exists()


# --- memory: zip files are mapped, not read -------------------------------------------------------

_PEAK_RSS = textwrap.dedent("""
    import resource, subprocess, sys
    proc = subprocess.run([sys.executable, "-m", "lstmscope", "inspect", sys.argv[1], "--json"],
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    assert proc.returncode == 0, proc.stderr
    print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)  # KiB on Linux
""")


class WithTable(nn.Module):
    def __init__(self, n):
        super().__init__()
        self.lstm = nn.LSTM(3, 5)
        self.register_buffer("table", torch.ones(n))  # (n,): not an LSTM tensor


@pytest.mark.skipif(sys.platform != "linux", reason="ru_maxrss units differ")
def test_inspect_memory_does_not_grow_with_other_tensors(tmp_path):
    """A full-module pickle (the restricted path) with a 256 MiB non-LSTM buffer: inspect's peak RSS stays
    close to that of the same model without it."""
    peaks = {}
    for name, n in (("small", 16), ("big", 64 * 2**20)):
        path = tmp_path / f"{name}.pt"
        torch.save(WithTable(n), path)
        proc = subprocess.run([sys.executable, "-c", _PEAK_RSS, str(path)], capture_output=True, text=True,
                              timeout=120)
        assert proc.returncode == 0, proc.stderr
        peaks[name] = int(proc.stdout) * 1024
        path.unlink()
    assert peaks["big"] - peaks["small"] < 64 * 2**20, peaks
