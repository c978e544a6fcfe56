"""Arrays on disk (.npy, .npz members, safetensors tensors), read a slice at a time with positioned reads.
numpy only: the one on-disk array type.

``np.load`` reads a whole array, and one long-lived ``np.load(mmap_mode="r")`` map keeps every page
it has touched in the process's resident set (measured: 1.49x the small run's peak RSS over a long
stream). A :class:`DiskArray` instead knows where its bytes are and reads just the rows asked for
into a fresh buffer, so streaming a million steps holds one chunk at a time.

The .npy header is parsed here (``ast.literal_eval``, never pickle) and checked against the file's
size before anything is allocated, so a header that claims terabytes is refused at once.
"""

from __future__ import annotations

import math
import os
import warnings
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import numpy as np

from lstmscope.errors import LstmscopeError

if TYPE_CHECKING:
    import zipfile

NPY_MAGIC = b"\x93NUMPY"
MAX_NPY_HEADER = 1 << 16  # numpy itself refuses headers over 10,000 bytes by default


@dataclass(eq=False)
class DiskArray:
    """An array stored at ``offset`` in ``path`` (an .npy file, a stored .npz member, a safetensors tensor),
    read only when indexed or converted.

    ``np.asarray(a)`` reads it whole; ``a[key]`` with ints, slices and integer arrays on the leading axes
    reads only the rows the key selects (other keys read it whole, then index); ``read_axis0/1`` read time
    chunks for streaming and ``read_flat`` fixed blocks for diffs. A file that turns out shorter than
    promised raises ``error``.
    """

    path: Path
    offset: int  # first data byte in the file
    shape: tuple[int, ...]
    dtype: np.dtype  # as stored (may be big-endian)
    fortran_order: bool = False
    error: type[LstmscopeError] = LstmscopeError  # raised when the file turns out shorter than promised

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize  # Python ints: no overflow for lying headers

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    @property
    def itemsize(self) -> int:
        return self.dtype.itemsize


    def read(self) -> np.ndarray:
        """The whole array, native byte order."""
        buf = np.empty(self.shape[::-1] if self.fortran_order else self.shape, dtype=self.dtype)
        with open(self.path, "rb") as f:
            _read_exact(f, self.offset, memoryview(buf.reshape(-1)).cast("B"), self.path, self.error)
        if self.fortran_order:
            buf = buf.T
        return _native(buf)

    def read_axis1(self, start: int, stop: int) -> np.ndarray:
        """``a[:, start:stop]`` of a 3-D C-ordered array, as a new native-order array (one read per row)."""
        if self.fortran_order or self.ndim != 3:
            raise ValueError("read_axis1 needs a 3-D C-ordered array")
        n0, n1, n2 = self.shape
        out = np.empty((n0, stop - start, n2), dtype=self.dtype)
        row = n1 * n2 * self.dtype.itemsize
        with open(self.path, "rb") as f:
            if start == 0 and stop == n1:
                _read_exact(f, self.offset, memoryview(out.reshape(-1)).cast("B"), self.path, self.error)
            else:
                for i in range(n0):
                    at = self.offset + i * row + start * n2 * self.dtype.itemsize
                    _read_exact(f, at, memoryview(out[i].reshape(-1)).cast("B"), self.path, self.error)
        return _native(out)

    def read_axis0(self, start: int, stop: int) -> np.ndarray:
        """``a[start:stop]`` of a C-ordered array: one contiguous read."""
        if self.fortran_order:
            raise ValueError("read_axis0 needs a C-ordered array")
        inner = int(np.prod(self.shape[1:], dtype=np.int64))
        out = np.empty((stop - start, *self.shape[1:]), dtype=self.dtype)
        with open(self.path, "rb") as f:
            _read_exact(f, self.offset + start * inner * self.dtype.itemsize, memoryview(out.reshape(-1)).cast("B"),
                        self.path, self.error)
        return _native(out)

    def __len__(self) -> int:
        if not self.shape:
            raise TypeError("len() of a 0-d array")
        return self.shape[0]

    def open(self) -> BinaryIO:
        try:
            return open(self.path, "rb", buffering=0)
        except OSError as e:
            raise self.error(f"{self.path}: cannot read ({e.strerror})") from None

    def read_flat(self, f: BinaryIO, start: int, out: np.ndarray) -> np.ndarray:
        """Elements ``start .. start + out.size`` (flat, C order) into the contiguous 1-D ``out`` of this dtype."""
        view = memoryview(out).cast("B")
        at = self.offset + start * self.itemsize
        got = 0
        try:
            while got < len(view):
                n = os.preadv(f.fileno(), [view[got:]], at + got) if hasattr(os, "preadv") else _seek_read(f, at + got, view[got:])
                if not n:
                    raise self.error(f"{self.path} is truncated: expected {len(view)} bytes at offset {at}, found {got} "
                                     "(did the file change while it was read?)")
                got += n
        except OSError as e:
            raise self.error(f"{self.path}: cannot read ({e.strerror})") from None
        return out

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        if copy is False:
            raise ValueError("a DiskArray cannot be viewed as an array without reading (copying) it")
        out = self.read()
        return out if dtype is None else out.astype(dtype, copy=False)

    def __getitem__(self, key: Any) -> Any:
        key = key if isinstance(key, tuple) else (key,)
        if self.fortran_order or self.dtype.byteorder == ">":  # rows are not contiguous (or need swapping): read it all
            return self.read()[key]
        simple = all(isinstance(k, (int, np.integer, slice)) or _int_array(k) for k in key)
        if not simple or not key or len(key) > self.ndim:
            return np.asarray(self)[key]  # Ellipsis, None, boolean masks: read it all
        if len(key) == self.ndim:  # the last axis too: read rows, then index within them (basic keys only)
            if not all(isinstance(k, (int, np.integer, slice)) for k in key):
                return np.asarray(self)[key]
            rows = self._rows(key[:-1], len(key) - 1)
            return rows[(slice(None),) * (rows.ndim - 1) + (key[-1],)]
        return self._rows(key, len(key))

    def _rows(self, key: tuple, k: int) -> np.ndarray:
        """``self[key]`` for a key on the first ``k`` axes: whole rows of the remaining axes."""
        lead = np.arange(int(np.prod(self.shape[:k], dtype=np.int64))).reshape(self.shape[:k])[key]
        inner = self.shape[k:]
        out = np.empty(np.shape(lead) + inner, dtype=self.dtype)
        rows = np.asarray(lead).reshape(-1)
        flat = out.reshape(-1)
        width = int(np.prod(inner, dtype=np.int64))
        if rows.size and width:
            with self.open() as f:
                for s, e in consecutive_runs(rows):  # runs of consecutive rows: one read each
                    self.read_flat(f, int(rows[s]) * width, flat[s * width:e * width])
        return out


def consecutive_runs(values: np.ndarray) -> list[tuple[int, int]]:
    """(start, stop) positions in a 1-D ``values`` of its stretches of consecutive integers (``[3, 4, 5, 9]`` ->
    ``[(0, 3), (3, 4)]``): one read, write or label per stretch."""
    if values.size == 0:
        return []
    breaks = (np.flatnonzero(np.diff(values) != 1) + 1).tolist()
    return list(zip([0, *breaks], [*breaks, int(values.size)]))


def _native(a: np.ndarray) -> np.ndarray:
    if a.dtype.byteorder not in ("=", "|") and a.dtype != a.dtype.newbyteorder("="):
        return a.astype(a.dtype.newbyteorder("="))
    return a


def _read_exact(f: BinaryIO, offset: int, view: memoryview, path: Path, error: type[LstmscopeError]) -> None:
    f.seek(offset)
    _fill(f, view, lambda got: error(f"{path} is truncated: expected {len(view)} bytes at offset {offset}, found {got}"))


def _fill(f: BinaryIO, view: memoryview, short) -> None:
    """Read exactly len(view) bytes into view; ``short(got)`` makes the error for a stream that ends early."""
    got = 0
    while got < len(view):
        n = f.readinto(view[got:])
        if not n:
            raise short(got)
        got += n


def parse_npy_header(f: BinaryIO, where: str, error: type[LstmscopeError]) -> tuple[tuple[int, ...], np.dtype, bool, int]:
    """(shape, dtype, fortran_order, header_length) of the .npy stream at ``f``'s position."""
    start = f.tell()
    head = f.read(8)
    if len(head) < 8 or head[:6] != NPY_MAGIC:
        raise error(f"{where} is not a .npy file (no NumPy header)")
    major = head[6]
    if major == 1:
        raw = f.read(2)
        size = struct.unpack("<H", raw)[0] if len(raw) == 2 else -1
    elif major in (2, 3):
        raw = f.read(4)
        size = struct.unpack("<I", raw)[0] if len(raw) == 4 else -1
    else:
        raise error(f"{where}: unsupported .npy format version {major}.{head[7]}")
    if size < 0 or size > MAX_NPY_HEADER:
        raise error(f"{where}: .npy header length {size} is invalid; the file is corrupt")
    text = f.read(size)
    if len(text) < size:
        raise error(f"{where} is truncated inside its .npy header")
    try:
        import ast  # here, not at import: only .npy headers need it

        header = ast.literal_eval(text.decode("utf8" if major == 3 else "latin1"))
    except (ValueError, SyntaxError, UnicodeDecodeError, MemoryError, RecursionError):
        raise error(f"{where}: the .npy header is not readable; the file is corrupt") from None
    if not isinstance(header, dict) or set(header) != {"descr", "fortran_order", "shape"}:
        raise error(f"{where}: the .npy header lacks descr/fortran_order/shape; the file is corrupt")
    shape, descr, fortran = header["shape"], header["descr"], header["fortran_order"]
    if not isinstance(shape, tuple) or not all(isinstance(d, int) and not isinstance(d, bool) and 0 <= d < 2**62
                                               for d in shape) or len(shape) > 32:
        raise error(f"{where}: the .npy header has an invalid shape {shape!r}")
    if not isinstance(fortran, bool):
        raise error(f"{where}: the .npy header has an invalid fortran_order {fortran!r}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # a deprecated spelling is as unreadable as a wrong one
            dtype = np.dtype(descr) if isinstance(descr, str) else None
    except Exception:  # numpy's dtype parser raises TypeError, ValueError, SyntaxError, warnings...
        dtype = None
    if dtype is None:
        if isinstance(descr, list):
            raise error(f"{where} holds a structured (record) array; expected a float array")
        raise error(f"{where}: the .npy header has an unknown dtype {descr!r}")
    return shape, dtype, fortran, f.tell() - start


def open_npy(path: Path, where: str, error: type[LstmscopeError], *, offset: int = 0,
             available: int | None = None) -> DiskArray:
    """A DiskArray for the .npy at ``offset`` in ``path``; refused before any allocation when the header
    claims more bytes than the file (or the ``available`` bytes of a stored zip member) holds."""
    with open(path, "rb") as f:
        f.seek(offset)
        shape, dtype, fortran, hlen = parse_npy_header(f, where, error)
    if dtype.hasobject:
        raise error(f"{where} holds Python objects (a pickled object array); save numeric arrays with np.save")
    arr = DiskArray(path, offset + hlen, tuple(shape), dtype, fortran, error)
    have = (os.path.getsize(path) - offset if available is None else available) - hlen
    if arr.nbytes > have:
        raise error(f"{where} is truncated: its header promises {dtype} {tuple(shape)} ({arr.nbytes:,} bytes) "
                    f"but the file holds {max(have, 0):,} bytes of data")
    return arr


def npz_member(path: Path, zf: zipfile.ZipFile, info: zipfile.ZipInfo, where: str,
               error: type[LstmscopeError]) -> DiskArray | np.ndarray:
    """An .npz member: a DiskArray when it is stored uncompressed (``np.savez``: positioned reads
    straight from the archive), else the decompressed array (``np.savez_compressed``)."""
    import zipfile
    import zlib

    if info.flag_bits & 0x1:
        raise error(f"{where} is encrypted; lstmscope reads plain .npz archives (np.savez)")
    if info.compress_type == zipfile.ZIP_STORED:
        with open(path, "rb") as f:
            f.seek(info.header_offset)
            local = f.read(30)
            if len(local) < 30 or local[:4] != b"PK\x03\x04":
                raise error(f"{where}: damaged .npz member header")
            name_len, extra_len = struct.unpack("<HH", local[26:30])
        data_at = info.header_offset + 30 + name_len + extra_len
        return open_npy(path, where, error, offset=data_at, available=info.file_size)
    try:
        return _inflate(zf, info, where, error)
    except (zlib.error, zipfile.BadZipFile, EOFError, NotImplementedError, RuntimeError, OSError) as e:
        raise error(f"{where}: damaged compressed .npz member ({e})") from None


def _inflate(zf: zipfile.ZipFile, info: zipfile.ZipInfo, where: str, error: type[LstmscopeError]) -> np.ndarray:
    with zf.open(info) as src:
        shape, dtype, fortran, _ = parse_npy_header(src, where, error)
        if dtype.hasobject:
            raise error(f"{where} holds Python objects (a pickled object array); save numeric arrays with np.save")
        nbytes = math.prod(shape) * dtype.itemsize
        if nbytes > info.file_size:
            raise error(f"{where} is truncated: its header promises {dtype} {tuple(shape)} ({nbytes:,} bytes) "
                        f"but the member holds {info.file_size:,} bytes")
        buf = np.empty(shape[::-1] if fortran else shape, dtype=dtype)
        view = memoryview(buf.reshape(-1)).cast("B")
        _fill(src, view, lambda got: error(f"{where} is truncated: expected {len(view)} bytes of data, found {got}"))
    return _native(buf.T if fortran else buf)


def _int_array(k: Any) -> bool:
    return isinstance(k, (list, np.ndarray)) and np.asarray(k).dtype.kind in "iu"


def _seek_read(f: BinaryIO, at: int, view: memoryview) -> int:
    f.seek(at)
    return f.readinto(view) or 0
