"""Every bad input gets exit 2 and one clear line (issue 5, section 2): the complete matrix.

Each case runs the CLI in-process on a file made here and asserts, through ``assert_one_error_line``:
exit code 2, nothing on stdout, exactly one ``Error: `` line on stderr that names the file and says
what is wrong or what was expected, and no traceback. Some cases repeat ones in test_inputs.py,
test_checkpoints.py or test_snapshots.py on purpose: this file is the one list the issue asks for.

The truth for "what is wrong" is how each file is built here (its shape, dtype, the tensor deleted
from it), never a message lstmscope printed before.
"""

from __future__ import annotations

import io
import json
import os
import struct
import zipfile

import numpy as np
import pytest
import safetensors.numpy
import torch
from torch import nn

from conftest import SAMPLES
from helpers import assert_one_error_line

# sample_checkpoints/uni_1layer.pt is nn.LSTM(4, 8, num_layers=1): input_size 4, hidden 8.
UNI = SAMPLES / "uni_1layer.pt"
F, HID = 4, 8
B, T = 3, 10


def rand(*shape, dtype=np.float32, seed=1):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def npy_bytes(arr, allow_pickle=False) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=allow_pickle)
    return buf.getvalue()


@pytest.fixture
def good_x(tmp_path):
    path = tmp_path / "x.npy"
    np.save(path, rand(B, T, F))
    return path


# --- input arrays (run) ----------------------------------------------------------------------------

def _npy(arr, allow_pickle=False):
    return lambda p: p.write_bytes(npy_bytes(arr, allow_pickle))


def _raw(data: bytes):
    return lambda p: p.write_bytes(data)


def _npz(**arrays):
    return lambda p: np.savez(p, **arrays)


def _half(data: bytes) -> bytes:
    return data[: len(data) // 2]


BAD_ARRAYS = {
    # name: (file name, writer, fragments the line must hold besides the file's name)
    "wrong_width": ("x.npy", _npy(rand(B, T, F + 1)), [f"{F + 1} features", f"expects {F}"]),
    "one_d": ("x.npy", _npy(rand(F)), ["1-D", "(T, F)", "(B, T, F)"]),
    "four_d": ("x.npy", _npy(rand(1, B, T, F)), ["4-D", "(B, T, F)"]),
    "zero_time": ("x.npy", _npy(rand(B, 0, F)), ["zero time steps"]),
    "zero_time_2d": ("x.npy", _npy(rand(0, F)), ["zero time steps"]),
    "zero_batch": ("x.npy", _npy(rand(0, T, F)), ["batch"]),
    "object_pickled": ("x.npy", _npy(np.array([[[1.0] * F] * T] * B, dtype=object), allow_pickle=True), ["object"]),
    "complex": ("x.npy", _npy(rand(B, T, F) + 1j * rand(B, T, F)), ["complex"]),
    "strings": ("x.npy", _npy(np.full((B, T, F), "ab")), ["string", "float32"]),
    "bytes": ("x.npy", _npy(np.full((B, T, F), b"ab")), ["string", "float32"]),
    "bool": ("x.npy", _npy(np.ones((B, T, F), dtype=bool)), ["bool", "token ids"]),
    "int64": ("x.npy", _npy(np.ones((B, T, F), dtype=np.int64)), ["int64", "token ids are"]),
    "token_ids_2d": ("x.npy", _npy(np.arange(B * T).reshape(B, T)), ["embedding"]),
    "truncated": ("x.npy", _raw(_half(npy_bytes(rand(B, 50, F)))), ["truncated"]),
    "truncated_header": ("x.npy", _raw(npy_bytes(rand(B, T, F))[:40]), []),
    "text_named_npy": ("x.npy", _raw(b"0.1,0.2,0.3,0.4\n0.5,0.6,0.7,0.8\n"), ["NumPy header"]),
    "npz_only_lengths": ("x.npz", _npz(lengths=np.array([1, 2, 3])), ["no input array", "lengths"]),
    "npz_only_token_ids": ("x.npz", _npz(tokens=np.ones((B, T), dtype=np.int64)), ["tokens", "embedding"]),
    "npz_several": ("x.npz", _npz(alpha=rand(B, T, F), beta=rand(B, T, F, seed=2)), ["alpha", "beta", "--key"]),
    "npz_truncated": ("x.npz", lambda p: p.write_bytes(_half(_npz_bytes(x=rand(B, 50, F)))), ["truncated"]),
}


def _npz_bytes(**arrays) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


@pytest.mark.parametrize("kind", list(BAD_ARRAYS))
def test_bad_input_array(invoke, tmp_path, kind):
    name, write, fragments = BAD_ARRAYS[kind]
    path = tmp_path / f"bad_{kind}_{name}"
    write(path)
    line = assert_one_error_line(invoke("run", UNI, path), path, *fragments)
    if kind == "text_named_npy":
        assert "pickle" not in line


def test_truncated_npy_names_the_shape_it_expected(invoke, tmp_path):
    path = tmp_path / "cut.npy"
    path.write_bytes(npy_bytes(rand(B, T, F))[:-10])
    assert_one_error_line(invoke("run", UNI, path), path, str((B, T, F)))


@pytest.mark.parametrize("kind", ["missing", "directory"])
@pytest.mark.parametrize("what", ["input", "lengths"])
def test_missing_or_directory(invoke, tmp_path, good_x, kind, what):
    path = tmp_path / f"{what}_{kind}.npy"
    if kind == "directory":
        path.mkdir()
    args = ("run", UNI, path) if what == "input" else ("run", UNI, good_x, "--lengths", path)
    assert_one_error_line(invoke(*args), path, "directory" if kind == "directory" else "no such")


# --- lengths ---------------------------------------------------------------------------------------

BAD_LENGTHS = {
    "longer_than_t": (np.array([2, T + 1, 3]), [str(T + 1), f"only {T} time steps"]),
    "zero": (np.array([2, 0, 3]), ["is 0", "at least 1"]),
    "negative": (np.array([2, 3, -1]), ["is -1", "at least 1"]),
    "too_few": (np.array([2, 3]), ["2 lengths", f"{B} sequences"]),
    "too_many": (np.array([2, 3, 4, 5]), ["4 lengths", f"{B} sequences"]),
    "not_whole": (np.array([2.5, 3.0, 1.0]), ["2.5", "whole number"]),
    "two_d": (np.array([[2], [3], [4]]), ["2-D", "1-D"]),
}


@pytest.mark.parametrize("kind", list(BAD_LENGTHS))
def test_bad_lengths_file(invoke, tmp_path, good_x, kind):
    lengths, fragments = BAD_LENGTHS[kind]
    lp = tmp_path / f"lens_{kind}.npy"
    np.save(lp, lengths)
    assert_one_error_line(invoke("run", UNI, good_x, "--lengths", lp), lp, *fragments)


@pytest.mark.parametrize("kind", list(BAD_LENGTHS))
def test_bad_lengths_inside_npz(invoke, tmp_path, kind):
    lengths, fragments = BAD_LENGTHS[kind]
    path = tmp_path / f"in_{kind}.npz"
    np.savez(path, x=rand(B, T, F), lengths=lengths)
    assert_one_error_line(invoke("run", UNI, path), path, "lengths", *fragments)


def _run_states(invoke, *args) -> list:
    result = invoke("run", *args, "--json")
    assert result.exit_code == 0, result.stderr
    assert result.stderr == ""
    return json.loads(result.stdout)["states"]


@pytest.mark.parametrize("dtype", [np.int32, np.uint16, np.float32, np.float64])
@pytest.mark.parametrize("where", ["file", "npz"])
def test_whole_number_lengths_of_any_numeric_dtype_are_fine(invoke, tmp_path, dtype, where):
    """[10, 7, 1] as int32 or as float 10.0, 7.0, 1.0 runs exactly like int64 lengths."""
    x = rand(B, T, F)
    ref_x, ref_l = tmp_path / "x.npy", tmp_path / "ref_lens.npy"
    np.save(ref_x, x)
    np.save(ref_l, np.array([10, 7, 1], dtype=np.int64))
    want = _run_states(invoke, UNI, ref_x, "--lengths", ref_l)
    if where == "file":
        lp = tmp_path / "lens.npy"
        np.save(lp, np.array([10, 7, 1], dtype=dtype))
        got = _run_states(invoke, UNI, ref_x, "--lengths", lp)
    else:
        path = tmp_path / "x.npz"
        np.savez(path, x=x, lengths=np.array([10, 7, 1], dtype=dtype))
        got = _run_states(invoke, UNI, path)
    assert got == want
    # and the lengths matter: without them the states differ
    assert _run_states(invoke, UNI, ref_x) != want


# --- checkpoints (inspect and run) -----------------------------------------------------------------

def _lstm_sd(num_layers=2, seed=0, **kw) -> dict:
    torch.manual_seed(seed)
    return dict(nn.LSTM(F, 5, num_layers=num_layers, **kw).state_dict())


def _pt_bytes(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def _without(sd, key):
    return {k: v for k, v in sd.items() if k != key}


def _mixed_dtypes(sd):
    return {k: (v.double() if k.endswith("_l1") else v) for k, v in sd.items()}


def _png() -> bytes:
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", 1, 1, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00\x00")) + chunk(b"IEND", b"")


BAD_CHECKPOINTS = {
    # name: (file name, bytes, fragments)
    "empty": ("m.pt", lambda: b"", ["empty", "0 bytes"]),
    "random_bytes": ("m.pt", lambda: np.random.default_rng(3).bytes(4096), ["not a checkpoint"]),
    "truncated_zip": ("m.pt", lambda: _half(_pt_bytes(_lstm_sd())), ["truncated"]),
    "no_lstm": ("m.pt", lambda: _pt_bytes(nn.Linear(3, 4).state_dict()), ["no LSTM"]),
    "missing_layer_tensor": ("m.pt", lambda: _pt_bytes(_without(_lstm_sd(), "weight_hh_l1")),
                             ["missing", "'weight_hh_l1'", "(20, 5)"]),
    "inconsistent_shape": ("m.pt", lambda: _pt_bytes({**_lstm_sd(), "weight_ih_l1": torch.zeros(20, 6)}),
                           ["'weight_ih_l1'", "(20, 6)", "expected (20, 5)"]),
    "mixed_dtypes": ("m.pt", lambda: _pt_bytes(_mixed_dtypes(_lstm_sd())), ["weight_ih_l1", "float64", "float32"]),
    "layer_gap": ("m.pt", lambda: _pt_bytes({k: v for k, v in _lstm_sd(num_layers=3).items() if not k.endswith("_l1")}),
                  ["layer 2", "'weight_ih_l1'"]),
    "huge_layer_number": ("m.pt", lambda: _pt_bytes({**_lstm_sd(num_layers=1), "weight_ih_l99999999999": torch.zeros(20, 5)}),
                          ["layer 99999999999", "'weight_ih_l1'"]),
    "proj_not_below_hidden": ("m.pt", lambda: _pt_bytes({"weight_ih_l0": torch.zeros(8, F), "weight_hh_l0": torch.zeros(8, 2),
                                                          "weight_hr_l0": torch.zeros(2, 2)}), ["weight_hr_l0", "proj_size"]),
    "zero_input_size": ("m.pt", lambda: _pt_bytes({"weight_ih_l0": torch.zeros(8, 0), "weight_hh_l0": torch.zeros(8, 2)}),
                        ["weight_ih_l0", "(8, 0)"]),
    "png": ("m.png", _png, ["PNG"]),
    "json": ("m.json", lambda: json.dumps({"model": {"weight_ih_l0": [[0.1] * 4] * 20}}).encode(), ["JSON"]),
    "json_brace_at_8": ("m.pt", lambda: b'{"lstm":{"weight_ih_l0": [1, 2]}}\n', ["JSON"]),
    "csv_text": ("m.ckpt", lambda: b"epoch,loss\n1,0.5\n", ["text"]),
    "zip_not_torch": ("m.pt", lambda: _npz_bytes(x=rand(2, 2)), ["npz", "not a checkpoint", "INPUT"]),
}


@pytest.mark.parametrize("kind", list(BAD_CHECKPOINTS))
@pytest.mark.parametrize("command", ["inspect", "run"])
def test_bad_checkpoint(invoke, tmp_path, good_x, kind, command):
    name, make, fragments = BAD_CHECKPOINTS[kind]
    path = tmp_path / f"bad_{kind}_{name}"
    path.write_bytes(make())
    args = ("inspect", path) if command == "inspect" else ("run", path, good_x)
    assert_one_error_line(invoke(*args), path, *fragments)


@pytest.mark.parametrize("command", ["inspect", "run"])
def test_missing_or_directory_checkpoint(invoke, tmp_path, good_x, command):
    d = tmp_path / "ckpt_dir.pt"
    d.mkdir()
    for path, frag in ((d, "directory"), (tmp_path / "nope.pt", "no such")):
        args = ("inspect", path) if command == "inspect" else ("run", path, good_x)
        assert_one_error_line(invoke(*args), path, frag)


# --- safetensors: as a checkpoint and as a state file ---------------------------------------------

def _st(header: dict, body: bytes, *, length: int | None = None, raw_header: bytes | None = None) -> bytes:
    head = raw_header if raw_header is not None else json.dumps(header).encode()
    return struct.pack("<Q", len(head) if length is None else length) + head + body


def _lstm_st() -> bytes:
    buf = safetensors.numpy.save({k: v.numpy() for k, v in _lstm_sd(num_layers=1).items()})
    return buf


def _state_st() -> bytes:
    return safetensors.numpy.save({"h_n": rand(1, B, HID), "c_n": rand(1, B, HID, seed=2)})


def _lying_offsets(data: bytes) -> bytes:
    """The header says the first tensor ends 4096 bytes past the end of the file."""
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    body = data[8 + n:]
    key = next(k for k in header if k != "__metadata__")
    begin, end = header[key]["data_offsets"]
    header[key]["data_offsets"] = [begin, end + 4096]
    header[key]["shape"] = [(end + 4096 - begin) // 4]
    return _st(header, body)


def _shape_offsets_disagree(data: bytes) -> bytes:
    """Offsets inside the file, but the shape needs more bytes than they span."""
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    key = next(k for k in header if k != "__metadata__")
    header[key]["shape"] = [int(d) * 2 for d in header[key]["shape"]]
    return _st(header, data[8 + n:])


SAFETENSORS_DAMAGE = {
    # name: (damage, fragments)
    "offsets_past_end": (_lying_offsets, ["claims bytes", "truncated or corrupt"]),
    "shape_vs_offsets": (_shape_offsets_disagree, ["claims bytes"]),
    "huge_header_length": (lambda d: struct.pack("<Q", 2**62) + d[8:], [str(2**62)]),
    "header_longer_than_file": (lambda d: struct.pack("<Q", len(d)) + d[8:], ["header claims", "truncated"]),
    "truncated_body": (lambda d: d[:-7], ["truncated or corrupt"]),
    "non_json_header": (lambda d: _st({}, d[8:], raw_header=b"{this is not json}"), ["not valid JSON"]),
    "entry_missing_offsets": (lambda d: _st({"w": {"dtype": "F32", "shape": [1]}}, bytes(4)), ["'w'", "malformed"]),
}


@pytest.mark.parametrize("damage", list(SAFETENSORS_DAMAGE))
@pytest.mark.parametrize("command", ["inspect", "run"])
def test_damaged_safetensors_checkpoint(invoke, tmp_path, good_x, damage, command):
    fn, fragments = SAFETENSORS_DAMAGE[damage]
    path = tmp_path / f"{damage}.safetensors"
    path.write_bytes(fn(_lstm_st()))
    args = ("inspect", path) if command == "inspect" else ("run", path, good_x)
    assert_one_error_line(invoke(*args), path, *fragments)


@pytest.mark.parametrize("damage", list(SAFETENSORS_DAMAGE))
@pytest.mark.parametrize("command", ["show-state", "diff-states", "diff-states-b", "initial-state"])
def test_damaged_safetensors_state(invoke, tmp_path, good_x, damage, command):
    fn, fragments = SAFETENSORS_DAMAGE[damage]
    good = tmp_path / "good.safetensors"
    good.write_bytes(_state_st())
    path = tmp_path / f"{damage}.safetensors"
    path.write_bytes(fn(_state_st()))
    args = {
        "show-state": ("show-state", path),
        "diff-states": ("diff-states", path, good),
        "diff-states-b": ("diff-states", good, path),
        "initial-state": ("run", UNI, good_x, "--initial-state", path),
    }[command]
    assert_one_error_line(invoke(*args), path, *fragments)


def test_huge_header_length_is_refused_without_reading(tmp_path, monkeypatch):
    """2**62 header bytes are refused from the 8-byte prefix: nothing past it is read."""
    from lstmscope.readers.safetensors import read_header as read_safetensors_header
    from lstmscope.errors import CheckpointError

    path = tmp_path / "huge.safetensors"
    path.write_bytes(struct.pack("<Q", 2**62) + b"{" + bytes(64))
    reads = []
    real_open = open

    class Spy:
        def __init__(self, f):
            self.f = f

        def read(self, n=-1):
            reads.append(n)
            return self.f.read(n)

        def __getattr__(self, name):
            return getattr(self.f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    monkeypatch.setattr("builtins.open", lambda *a, **k: Spy(real_open(*a, **k)))
    with pytest.raises(CheckpointError, match=str(2**62)):
        read_safetensors_header(path)
    assert reads == [8]


# --- state files -----------------------------------------------------------------------------------

def test_state_that_does_not_fit_lists_every_field(invoke, tmp_path):
    """A 2-layer bidirectional, proj 2, hidden 6, input 5, batch 2 snapshot against uni_1layer (1 layer,
    1 direction, hidden 8, no proj, input 4) on a batch of 3: one line naming every difference."""
    meta = {"format_version": 1, "num_layers": 2, "num_directions": 2, "hidden_size": 6, "proj_size": 2,
            "input_size": 5, "batch_size": 2, "dtype": "float32"}
    path = tmp_path / "other_model.safetensors"
    safetensors.numpy.save_file({"h_n": rand(4, 2, 2), "c_n": rand(4, 2, 6)}, str(path),
                                metadata={"lstmscope.state": json.dumps(meta)})
    x = tmp_path / "x.npy"
    np.save(x, rand(B, T, F))
    line = assert_one_error_line(invoke("run", UNI, x, "--initial-state", path), path)
    for field, have, want in (("num_layers", 2, 1), ("num_directions", 2, 1), ("hidden_size", 6, HID),
                              ("proj_size", 2, 0), ("input_size", 5, F)):
        assert f"{field} is {have}, the model has {want}" in line, (field, line)
    assert "h_n has 4 (layer, direction) slices" in line
    assert "h_n is 2 wide" in line
    assert "c_n is 6 wide" in line
    assert f"batch 2, the input has {B}" in line


def test_foreign_state_that_does_not_fit_lists_every_tensor_problem(invoke, tmp_path, good_x):
    path = tmp_path / "foreign.npz"
    np.savez(path, h_n=rand(2, 1, 3), c_n=rand(2, 1, 5))
    line = assert_one_error_line(invoke("run", UNI, good_x, "--initial-state", path), path)
    assert "2 (layer, direction) slices" in line and "h_n is 3 wide" in line and "c_n is 5 wide" in line
    assert "batch 1" in line and "--broadcast-state" in line


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nan_state_as_initial_state(invoke, tmp_path, good_x, bad):
    h = rand(1, B, HID)
    h[0, 1, 2] = bad
    path = tmp_path / "nan_state.safetensors"
    safetensors.numpy.save_file({"h_n": h, "c_n": rand(1, B, HID)}, str(path))
    assert_one_error_line(invoke("run", UNI, good_x, "--initial-state", path), path, "h_n", "1 NaN/Inf")


# --- output (export-state -o) ----------------------------------------------------------------------

def test_output_in_unwritable_directory(invoke, tmp_path, good_x):
    d = tmp_path / "readonly"
    d.mkdir()
    d.chmod(0o500)
    try:
        if os.geteuid() == 0:
            probe = d / "probe"
            try:
                probe.write_bytes(b"")
            except OSError:
                pass
            else:
                probe.unlink()
                pytest.skip("running as root: a 0o500 directory is still writable")
        out = d / "s.safetensors"
        assert_one_error_line(invoke("export-state", UNI, good_x, "-o", out), out, "not writable")
        assert os.listdir(d) == []
    finally:
        d.chmod(0o700)


def test_output_is_a_directory(invoke, tmp_path, good_x):
    d = tmp_path / "out.safetensors"
    d.mkdir()
    for force in ((), ("--force",)):
        assert_one_error_line(invoke("export-state", UNI, good_x, "-o", d, *force), d, "is a directory")
        assert d.is_dir() and os.listdir(d) == []


def test_existing_output_without_force_is_untouched(invoke, tmp_path, good_x):
    out = tmp_path / "s.safetensors"
    out.write_bytes(b"precious bytes")
    os.utime(out, ns=(1_000_000_000_000_000_000, 1_000_000_000_000_000_000))
    before = out.stat()
    assert_one_error_line(invoke("export-state", UNI, good_x, "-o", out), out, "already exists", "--force")
    after = out.stat()
    assert out.read_bytes() == b"precious bytes"
    assert after.st_mtime_ns == before.st_mtime_ns and after.st_ino == before.st_ino
    assert sorted(os.listdir(tmp_path)) == ["s.safetensors", "x.npy"]


# --- limits (issue 5, section 5): headers that claim more than the file holds ----------------------

_LIMITED = r"""
import resource, sys
cap = 2 * 1024 ** 3
resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
from lstmscope.errors import LstmscopeError
from lstmscope.{module} import {func}
try:
    {func}(sys.argv[1])
except LstmscopeError as e:
    print("LSTMSCOPE_ERROR", e.message)
    sys.exit(0)
except BaseException as e:
    print("OTHER", type(e).__name__, e)
    sys.exit(1)
print("LOADED")
sys.exit(1)
"""


def _npy_claiming(shape, data: bytes = bytes(100)) -> bytes:
    """A .npy header claiming float32 ``shape`` followed by ``data`` (far less than it claims)."""
    header = "{'descr': '<f4', 'fortran_order': False, 'shape': %r, }" % (shape,)
    header += " " * (-(10 + len(header) + 1) % 64) + "\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header.encode() + data


def _run_capped(module: str, func: str, path) -> tuple[int, str, float]:
    import subprocess
    import sys
    import time

    code = _LIMITED.replace("{module}", module).replace("{func}", func)
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=120)
    return proc.returncode, proc.stdout + proc.stderr, time.monotonic() - start


@pytest.mark.parametrize("suffix", [".npy", ".npz"])
def test_npy_header_claiming_more_than_the_file_is_refused_before_allocating(tmp_path, suffix):
    """Shape (10**6, 10**6, 4) float32 is 16 TB; the file holds 100 bytes. Under a 2 GB address-space
    cap an attempt to allocate would fail loudly (MemoryError), so a clean LstmscopeError shows the
    size was checked against the file first."""
    raw = _npy_claiming((10**6, 10**6, 4))
    path = tmp_path / f"liar{suffix}"
    if suffix == ".npy":
        path.write_bytes(raw)
    else:
        with zipfile.ZipFile(path, "w") as z:
            z.writestr("x.npy", raw)
    rc, out, seconds = _run_capped("sequences", "load_sequences", path)
    assert rc == 0 and "LSTMSCOPE_ERROR" in out, out
    assert path.name in out
    assert seconds < 30


def test_safetensors_header_claiming_more_than_the_file_is_refused_before_allocating(tmp_path):
    n = 10**6 * 10**6 * 4
    header = {"weight_ih_l0": {"dtype": "F32", "shape": [10**6, 10**6, 4], "data_offsets": [0, n]}}
    path = tmp_path / "liar.safetensors"
    path.write_bytes(_st(header, bytes(100)))
    for module, func in (("readers", "read_checkpoint"), ("snapshot", "read_state_file")):
        rc, out, seconds = _run_capped(module, func, path)
        assert rc == 0 and "LSTMSCOPE_ERROR" in out, out
        assert path.name in out and seconds < 30


def test_npz_state_claiming_more_than_the_file_is_refused_before_allocating(tmp_path):
    raw = _npy_claiming((10**6, 10**6, 4))
    path = tmp_path / "liar_state.npz"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("h_n.npy", raw)
        z.writestr("c_n.npy", raw)
    rc, out, seconds = _run_capped("snapshot", "read_state_file", path)
    assert rc == 0 and "LSTMSCOPE_ERROR" in out, out
    assert path.name in out and seconds < 30
    assert "allocate" not in out, out
