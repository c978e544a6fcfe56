"""Fuzzing the loaders with mutated valid files (issue 5, section 4).

Each test takes small valid files (.npy, .npz, safetensors, torch zip and legacy pickles, state
snapshots), damages them the ways files get damaged (bit flips, overwritten bytes, truncation,
inserted and deleted bytes, rewritten header fields, mutated pickle opcodes) and calls the library
loaders in-process:

    lstmscope.sequences.load_sequences   (then reads the data, as a run would)
    lstmscope.readers.torch.read_checkpoint (then Checkpoint.parameters on every module)
    lstmscope.snapshot.read_state_file

The only acceptable outcomes are a correct load or an ``LstmscopeError`` with exit code 2 that
names the file. Anything else (another exception, a warning, which pyproject's
``filterwarnings = ["error"]`` turns into one, a hang, an allocation the file cannot back) fails.

Example counts come from the hypothesis profile registered in conftest.py: "ci" by default,
``pytest --hypothesis-profile=long tests/test_fuzz.py`` for the long run.
"""

from __future__ import annotations

import contextlib
import io
import json
import resource
import signal
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest
import safetensors.numpy
import torch
from hypothesis import event, given
from hypothesis.control import currently_in_test_context
from hypothesis import strategies as st
from torch import nn

from lstmscope.readers import read_checkpoint
from lstmscope.errors import EXIT_BAD_INPUT, LstmscopeError
from lstmscope.sequences import load_sequences
from lstmscope.snapshot import read_state_file

HANG_SECONDS = 10  # one example taking this long is a hang, not a slow machine
MEMORY_HEADROOM = 4 * 1024**3  # address space an example may add before allocation fails loudly


# --- seeds: small valid files ------------------------------------------------------------------------

def _npy(arr, version=None) -> bytes:
    buf = io.BytesIO()
    if version is None:
        np.save(buf, arr)
    else:
        np.lib.format.write_array(buf, np.asanyarray(arr), version=version)
    return buf.getvalue()


def _npz(compressed=False, **arrays) -> bytes:
    buf = io.BytesIO()
    (np.savez_compressed if compressed else np.savez)(buf, **arrays)
    return buf.getvalue()


def _torch(obj, legacy=False, protocol=2) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf, _use_new_zipfile_serialization=not legacy, pickle_protocol=protocol)
    return buf.getvalue()


def _rng(seed=0):
    return np.random.default_rng(seed)


def _lstm_state_dict(**kw) -> dict:
    torch.manual_seed(0)
    return dict(nn.LSTM(3, 2, **kw).state_dict())


X = _rng().standard_normal((2, 3, 4)).astype(np.float32)

NPY_SEEDS = [
    _npy(X),
    _npy(X[0].astype(np.float64)),
    _npy(X.astype(">f4")),
    _npy(np.asfortranarray(X)),
    _npy(X.astype(np.float16), version=(2, 0)),
    _npy(X, version=(3, 0)),
]
NPZ_SEEDS = [
    _npz(x=X, lengths=np.array([3, 1])),
    _npz(compressed=True, x=X, lengths=np.array([3, 1])),
    _npz(inputs=X[0]),
    _npz(a=X, b=np.arange(3)),
]
LENGTHS_SEEDS = [
    _npy(np.array([3, 1], dtype=np.int64)),
    _npy(np.array([3.0, 1.0])),
    _npz(lengths=np.array([2, 3], dtype=np.int32)),
]
SAFETENSORS_CKPT_SEEDS = [
    safetensors.numpy.save({k: v.numpy() for k, v in _lstm_state_dict().items()}),
    safetensors.numpy.save({f"enc.rnn.{k}": v.numpy() for k, v in _lstm_state_dict(num_layers=2, proj_size=1).items()}
                           | {"head.weight": np.zeros((2, 2), np.float32)}, metadata={"format": "pt"}),
]
TORCH_ZIP_SEEDS = [
    _torch(_lstm_state_dict()),
    _torch({"epoch": 1, "model_state_dict": {f"lstm.{k}": v for k, v in _lstm_state_dict(bidirectional=True).items()}}),
    _torch({"state_dict": _lstm_state_dict(proj_size=1)}, protocol=4),  # FRAME opcodes: lstmscope's own unpickler
]
TORCH_LEGACY_SEEDS = [_torch(_lstm_state_dict(), legacy=True), _torch(_lstm_state_dict(), legacy=True, protocol=5)]
_H = _rng(1).standard_normal((1, 2, 2)).astype(np.float32)
_META = {"format_version": 1, "num_layers": 1, "num_directions": 1, "hidden_size": 2, "proj_size": 0, "input_size": 3,
         "batch_size": 2, "dtype": "float32"}
STATE_SEEDS = [
    safetensors.numpy.save({"h_n": _H, "c_n": _H * 2, "lengths": np.array([3, 1]), "output": X[:, :, :2]},
                           metadata={"lstmscope.state": json.dumps(_META)}),
    safetensors.numpy.save({"h0": _H, "c0": _H}),
    _npz(h_n=_H, c_n=_H, lengths=np.array([3, 1])),
    _torch((torch.from_numpy(_H), torch.from_numpy(_H))),
    _torch({"h_n": torch.from_numpy(_H), "c_n": torch.from_numpy(_H)}, legacy=True),
]


# --- mutations -----------------------------------------------------------------------------------------

INTERESTING = [0, 1, 2, 3, 4, 7, 8, 16, 63, 64, 127, 128, 255, 256, 0x7FFF, 0xFFFF, 0x10000, 0x7FFFFFFF, 0xFFFFFFFF,
               2**32, 2**62, 2**63 - 1, 2**64 - 1]
_PACK = {1: "B", 2: "H", 4: "I", 8: "Q"}


def _packed(value: int, width: int, endian: str) -> bytes:
    return struct.pack(endian + _PACK[width], value % (1 << (8 * width)))


@st.composite
def _position(draw, data: bytearray) -> int:
    """Anywhere in the file, more often in its first 256 bytes, where headers live."""
    top = max(len(data) - 1, 0)
    return draw(st.one_of(st.integers(0, min(top, 255)), st.integers(0, top)))


@st.composite
def _byte_mutation(draw, data: bytearray) -> bytearray:
    if not data:
        return bytearray(draw(st.binary(min_size=1, max_size=16)))
    op = draw(st.sampled_from(["flip", "overwrite", "int", "truncate", "insert", "delete", "copy"]))
    pos = draw(_position(data))
    if op == "flip":
        data[pos] ^= 1 << draw(st.integers(0, 7))
    elif op == "overwrite":
        chunk = draw(st.binary(min_size=1, max_size=8))
        data[pos:pos + len(chunk)] = chunk
    elif op == "int":
        width = draw(st.sampled_from([1, 2, 4, 8]))
        chunk = _packed(draw(st.sampled_from(INTERESTING)), width, draw(st.sampled_from("<>")))
        data[pos:pos + width] = chunk
    elif op == "truncate":
        del data[pos:]
    elif op == "insert":
        data[pos:pos] = draw(st.binary(min_size=1, max_size=16))
    elif op == "delete":
        del data[pos:pos + draw(st.integers(1, 16))]
    else:  # copy a run of bytes over another place (duplicated headers, shifted fields)
        src = draw(_position(data))
        n = draw(st.integers(1, 32))
        data[pos:pos + n] = data[src:src + n]
    return data


# Structural mutations: rewrite a field the format parses, keeping the rest valid.

_SHAPE_DIMS = st.one_of(st.integers(0, 8), st.sampled_from([-1, 2**31, 2**32 + 3, 10**6, 2**62, 2**63, 2**64 + 1, 10**30]))
_NPY_DESCRS = ["<f4", ">f4", "<f8", "<f2", "|b1", "<i8", "|u1", "<c8", "|O", "<U2", "|S3", "|V8", "<M8[s]", "<m8",
               "f4", "<f16", "xyz", ""]


@st.composite
def _npy_header(draw, data: bytearray) -> bytearray:
    """Replace the .npy header with one that lies about shape, dtype or order (data kept)."""
    size_fmt, at = ("<H", 8) if data[6:7] == b"\x01" else ("<I", 8)
    if data[:6] != b"\x93NUMPY" or len(data) < at + struct.calcsize(size_fmt):
        return data
    (hlen,) = struct.unpack_from(size_fmt, data, at)
    body = data[at + struct.calcsize(size_fmt) + hlen:]
    shape = tuple(draw(st.lists(_SHAPE_DIMS, max_size=4)))
    descr = draw(st.one_of(st.sampled_from(_NPY_DESCRS), st.just([("a", "<f4")])))
    fortran = draw(st.sampled_from([False, True, 0, "no"]))
    text = draw(st.sampled_from([
        "{'descr': %r, 'fortran_order': %r, 'shape': %r, }" % (descr, fortran, shape),
        "{'descr': %r, 'shape': %r, }" % (descr, shape),
        "{'descr': %r, 'fortran_order': %r, 'shape': %r, 'extra': 1}" % (descr, fortran, shape),
        "[%r, %r]" % (descr, shape),
        "{'descr': %r, 'fortran_order': %r, 'shape': (%s" % (descr, fortran, "(" * 200),
    ]))
    text += " " * (-(at + struct.calcsize(size_fmt) + len(text) + 1) % 64) + "\n"
    raw = text.encode("latin1")
    claimed = len(raw) if draw(st.booleans()) else draw(st.sampled_from(INTERESTING))
    return bytearray(data[:at] + _packed(claimed, struct.calcsize(size_fmt), "<") + raw + body)


_JSON_VALUES = st.one_of(
    st.sampled_from(INTERESTING + [-1, -(2**63), 2**70]),
    st.floats(allow_nan=False), st.booleans(), st.none(), st.text(max_size=5),
    st.lists(st.integers(-3, 2**40), max_size=4),
    st.sampled_from(["F32", "F64", "F16", "BF16", "I64", "BOOL", "U8", "C64", "F8_E4M3", "F4", "f32", ""]),
    st.just({"a": "b"}), st.just([[1, 2], 3]), st.just(1e308),
)


@st.composite
def _safetensors_header(draw, data: bytearray) -> bytearray:
    """Rewrite one field of a safetensors header (dtype, shape, data_offsets, __metadata__)."""
    if len(data) < 8:
        return data
    (n,) = struct.unpack_from("<Q", data)
    try:
        header = json.loads(bytes(data[8:8 + n]))
    except (ValueError, RecursionError):
        return data
    if not isinstance(header, dict) or not header:
        return data
    key = draw(st.sampled_from(sorted(header)))
    action = draw(st.sampled_from(["field", "delete_field", "delete_entry", "entry", "metadata", "swap_offsets",
                                   "rename"]))
    entry = header[key]
    if action == "rename":  # other layers, directions, prefixes: weight_ih_l0 -> weight_ih_l99999999999
        new = draw(st.sampled_from([key.replace("_l0", "_l1"), key.replace("_l0", "_l99999999999"),
                                    key.replace("_l1", "_l0"), key + "_reverse", key.replace("weight_hh", "weight_hr"),
                                    key.replace("bias_ih", "weight_ih"), "x." + key, key.replace("_l0", "_l٣")]))
        header[new] = header.pop(key)
    elif action == "field" and isinstance(entry, dict):
        entry[draw(st.sampled_from(["dtype", "shape", "data_offsets", "extra"]))] = draw(_JSON_VALUES)
    elif action == "delete_field" and isinstance(entry, dict) and entry:
        del entry[draw(st.sampled_from(sorted(entry)))]
    elif action == "delete_entry":
        del header[key]
    elif action == "entry":
        header[key] = draw(_JSON_VALUES)
    elif action == "metadata":
        header["__metadata__"] = draw(st.one_of(_JSON_VALUES, st.dictionaries(st.text(max_size=3), _JSON_VALUES, max_size=2)))
    elif isinstance(entry, dict) and isinstance(entry.get("data_offsets"), list):
        entry["data_offsets"] = entry["data_offsets"][::-1]
    raw = json.dumps(header).encode()
    length = len(raw) if draw(st.booleans()) else draw(st.sampled_from(INTERESTING))
    return bytearray(struct.pack("<Q", length % 2**64) + raw + data[8 + n:])


@st.composite
def _zip_field(draw, data: bytearray) -> bytearray:
    """Overwrite a field of a zip record (local header, central directory, end record) with an odd value:
    sizes, offsets, name lengths, compression method, flags, CRC."""
    sigs = [i for sig in (b"PK\x03\x04", b"PK\x01\x02", b"PK\x05\x06") for i in _find_all(data, sig)]
    if not sigs:
        return data
    at = draw(st.sampled_from(sigs)) + draw(st.integers(4, 44))
    width = draw(st.sampled_from([2, 4]))
    data[at:at + width] = _packed(draw(st.sampled_from(INTERESTING)), width, "<")
    return data


def _find_all(data: bytes, sig: bytes) -> list[int]:
    out, i = [], data.find(sig)
    while i >= 0:
        out.append(i)
        i = data.find(sig, i + 1)
    return out


@st.composite
def _zip_member(draw, data: bytearray) -> bytearray:
    """Damage the bytes of one member (data.pkl, an .npy, a storage) and re-zip, so the CRC and sizes
    are right and the damage reaches the parser behind the zip."""
    try:
        with zipfile.ZipFile(io.BytesIO(bytes(data))) as z:
            members = [(i.filename, z.read(i), i.compress_type) for i in z.infolist()]
    except Exception:
        return data
    if not members:
        return data
    idx = draw(st.integers(0, len(members) - 1))
    name, content, method = members[idx]
    content = bytearray(content)
    for _ in range(draw(st.integers(1, 3))):
        content = draw(_byte_mutation(content))
    members[idx] = (name, bytes(content), method)
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as z:
        for name, content, method in members:
            z.writestr(zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0)), content, compress_type=method)
    return bytearray(out.getvalue())


@st.composite
def mutated(draw, seeds: list[bytes], structural=()) -> bytes:
    """A seed file with 1-4 mutations: byte-level ones, or the format's structural ones."""
    data = bytearray(draw(st.sampled_from(seeds)))
    kinds = [_byte_mutation, *structural]
    for _ in range(draw(st.integers(1, 4))):
        data = draw(draw(st.sampled_from(kinds))(data))
    return bytes(data[: 1 << 16])


_MAGICS = [b"", b"\x93NUMPY\x01\x00", b"\x93NUMPY\x02\x00", b"PK\x03\x04", b"PK\x05\x06", b"\x80\x02", b"\x80\x05",
           b"\x10\x00\x00\x00\x00\x00\x00\x00{", b"\x89HDF\r\n\x1a\n", b"{", b"\xef\xbb\xbf"]
RANDOM_FILES = st.builds(lambda magic, rest: magic + rest, st.sampled_from(_MAGICS), st.binary(max_size=2048))


# --- guards ----------------------------------------------------------------------------------------------

class Hang(BaseException):
    """Not an Exception: loaders that catch Exception must not swallow it."""


@contextlib.contextmanager
def hang_guard(seconds: float = HANG_SECONDS):
    def on_alarm(signum, frame):
        raise Hang(f"one example ran over {seconds} s")

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def _address_space() -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmSize:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


@pytest.fixture(scope="module", autouse=True)
def memory_cap():
    """Cap the address space a little above what the process uses now, so a loader that allocates what a
    lying header claims fails with MemoryError instead of swapping or being killed."""
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    used = _address_space()
    if used is None:
        yield
        return
    cap = used + MEMORY_HEADROOM
    if hard != resource.RLIM_INFINITY:
        cap = min(cap, hard)
    resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


def write(workdir: Path, name: str, data: bytes) -> Path:
    path = workdir / name
    path.write_bytes(data)
    return path


def only_clean_errors(path: Path, load) -> object | None:
    """Run ``load``; a correct load returns its result, an LstmscopeError returns None after checking it
    is exit-2 class and names the file. Any other exception propagates and fails the example."""
    try:
        with hang_guard():
            result = load()
    except LstmscopeError as e:
        assert e.exit_code == EXIT_BAD_INPUT, (type(e).__name__, e.exit_code, e.message)
        assert e.message.strip(), type(e).__name__
        assert path.name in e.message, e.message
        _event(f"refused: {type(e).__name__}")
        return None
    _event("loaded")
    return result


def _event(label: str) -> None:
    """Outcome counts for ``pytest --hypothesis-show-statistics``."""
    if currently_in_test_context():
        event(label)


# --- the loaders -----------------------------------------------------------------------------------------

def _check_sequences(seqs, time_major: bool):
    b, t, f = seqs.shape
    data = seqs.data
    assert data.shape == (b, t, f) and min(b, t, f) >= 1
    assert data.dtype in (np.float16, np.float32, np.float64) and data.dtype.isnative
    assert np.array_equal(seqs.read_steps(0, 1), data[:, :1], equal_nan=True)
    if seqs.lengths is not None:
        assert seqs.lengths.dtype == np.int64 and seqs.lengths.shape == (b,)
        assert seqs.lengths.min() >= 1 and seqs.lengths.max() <= t


def _load_input(path: Path, time_major: bool):
    seqs = load_sequences(path, time_major=time_major)
    _check_sequences(seqs, time_major)
    return seqs


@given(data=mutated(NPY_SEEDS, structural=[_npy_header]), time_major=st.booleans())
def test_fuzz_npy_input(workdir, data, time_major):
    path = write(workdir, "input.npy", data)
    only_clean_errors(path, lambda: _load_input(path, time_major))


@given(data=mutated(NPZ_SEEDS, structural=[_zip_field, _zip_member]), time_major=st.booleans())
def test_fuzz_npz_input(workdir, data, time_major):
    path = write(workdir, "input.npz", data)
    only_clean_errors(path, lambda: _load_input(path, time_major))


@given(data=mutated(LENGTHS_SEEDS, structural=[_npy_header, _zip_field, _zip_member]))
def test_fuzz_lengths_file(workdir, data):
    good = workdir / "good_x.npy"
    if not good.exists():
        good.write_bytes(NPY_SEEDS[0])
    path = write(workdir, "lengths.npy", data)

    def load():
        seqs = load_sequences(good, lengths_path=path)
        _check_sequences(seqs, False)
        return seqs

    only_clean_errors(path, load)


def _load_checkpoint(path: Path):
    ck = read_checkpoint(path)
    for module in ck.modules:
        params = ck.parameters(module)
        expected = module.spec.expected_shapes()
        assert set(params) == set(expected)
        for name, tensor in params.items():
            assert tuple(tensor.shape) == expected[name], (name, tuple(tensor.shape), expected[name])
            want = "float32" if module.spec.dtype == "bfloat16" else module.spec.dtype  # numpy has no bfloat16
            assert str(tensor.dtype) == want
    return ck


@given(data=mutated(SAFETENSORS_CKPT_SEEDS, structural=[_safetensors_header]))
def test_fuzz_safetensors_checkpoint(workdir, data):
    path = write(workdir, "model.safetensors", data)
    only_clean_errors(path, lambda: _load_checkpoint(path))


@given(data=mutated(TORCH_ZIP_SEEDS, structural=[_zip_field, _zip_member]))
def test_fuzz_torch_zip_checkpoint(workdir, data):
    path = write(workdir, "model.pt", data)
    only_clean_errors(path, lambda: _load_checkpoint(path))


@given(data=mutated(TORCH_LEGACY_SEEDS))
def test_fuzz_torch_legacy_checkpoint(workdir, data):
    path = write(workdir, "legacy.pt", data)
    only_clean_errors(path, lambda: _load_checkpoint(path))


def _load_state(path: Path):
    state = read_state_file(path, allow_torch=True)
    assert state.h_n.ndim == 3 and state.c_n.ndim == 3
    assert state.h_n.shape[:2] == state.c_n.shape[:2]
    assert state.h_n.dtype.kind == "f" and state.c_n.dtype.kind == "f"
    if state.lengths is not None:
        assert state.lengths.dtype == np.int64
    return state


@given(data=mutated(STATE_SEEDS, structural=[_safetensors_header, _zip_field, _zip_member]))
def test_fuzz_state_file(workdir, data):
    path = write(workdir, "state.safetensors", data)
    only_clean_errors(path, lambda: _load_state(path))


@given(data=RANDOM_FILES)
def test_fuzz_random_bytes_every_loader(workdir, data):
    path = write(workdir, "random.bin", data)
    only_clean_errors(path, lambda: _load_input(path, False))
    only_clean_errors(path, lambda: _load_checkpoint(path))
    only_clean_errors(path, lambda: _load_state(path))


def test_seeds_load(workdir):
    """The premise: every seed is a valid file each loader reads (so mutations start from real files)."""
    for i, data in enumerate(NPY_SEEDS + NPZ_SEEDS):
        path = write(workdir, f"seed{i}.npz", data)
        assert only_clean_errors(path, lambda: _load_input(path, False)) is not None, i
    good = write(workdir, "seed_x.npy", NPY_SEEDS[0])
    for i, data in enumerate(LENGTHS_SEEDS):
        path = write(workdir, f"seed_lengths{i}", data)
        assert load_sequences(good, lengths_path=path).lengths is not None
    for i, data in enumerate(SAFETENSORS_CKPT_SEEDS + TORCH_ZIP_SEEDS + TORCH_LEGACY_SEEDS):
        path = write(workdir, f"seed_ckpt{i}", data)
        assert only_clean_errors(path, lambda: _load_checkpoint(path)).modules
    for i, data in enumerate(STATE_SEEDS):
        path = write(workdir, f"seed_state{i}", data)
        assert only_clean_errors(path, lambda: _load_state(path)) is not None, i


# --- regressions: inputs fuzzing once found escaping as other exceptions; each is one clean error now ---

def _corrupt_deflate() -> bytes:
    raw = bytearray(_npz(compressed=True, x=X))
    name_len, extra_len = struct.unpack_from("<HH", raw, 26)
    raw[30 + name_len + extra_len] ^= 0x55  # the first byte of the member's deflate stream
    return bytes(raw)


def _encrypted_flag() -> bytes:
    raw = bytearray(_npz(x=X))
    raw[raw.find(b"PK\x01\x02") + 8] |= 1  # central directory: "encrypted"
    return bytes(raw)


def _npy_descr(descr: str, shape=(2, 3, 4)) -> bytes:
    header = "{'descr': %r, 'fortran_order': False, 'shape': %r, }" % (descr, shape)
    header += " " * (-(10 + len(header) + 1) % 64) + "\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header.encode() + bytes(96)


_H3 = np.zeros((1, 2, 3), np.float32)
KNOWN_BUG_REPRODUCERS = {
    # name: (file bytes, loader); each once failed with a non-LstmscopeError
    "state_zip_end_record_only": (b"PK\x05\x06" + bytes(11) + b"\x01" + bytes(6), read_state_file),  # BadZipFile
    "state_npz_string_lengths": (_npz(h_n=_H3, c_n=_H3, lengths=np.array([b"ab", b"cd"])), read_state_file),
    "state_npz_nan_lengths": (_npz(h_n=_H3, c_n=_H3, lengths=np.array([np.nan, 1.0])), read_state_file),
    "state_npz_complex_lengths": (_npz(h_n=_H3, c_n=_H3, lengths=np.array([1 + 1j, 1])), read_state_file),
    "npz_corrupt_deflate_stream": (_corrupt_deflate(), load_sequences),  # zlib.error
    "npy_descr_syntax_error": (_npy_descr(",f4"), load_sequences),  # SyntaxError from np.dtype(",f4")
    "npy_descr_deprecated": (_npy_descr("a"), load_sequences),  # DeprecationWarning from np.dtype("a")
    "npz_encrypted_flag": (_encrypted_flag(), load_sequences),  # RuntimeError: password required
    "npy_shape_past_int64": (_npy_descr("<f4", (10**30, 10**30, 4)), load_sequences),  # OverflowError
    "npy_dim_2_63": (_npy_descr("<f4", (0, 2**63)), load_sequences),  # RuntimeWarning: invalid value in reduce
    "npy_size_wraps_int64": (_npy_descr("<f4", (2**31, 2**31, 4)), lambda p: load_sequences(p).data),  # ValueError
}


@pytest.mark.parametrize("name", list(KNOWN_BUG_REPRODUCERS))
def test_known_bug_reproducers(workdir, name, monkeypatch):
    """Inputs fuzzing found that once escaped as other exceptions; each must now be one clean error."""
    data, load = KNOWN_BUG_REPRODUCERS[name]
    path = write(workdir, f"known_{name}", data)
    with pytest.raises(LstmscopeError) as info:
        with hang_guard():
            load(path)
    assert path.name in info.value.message
