"""Tensors of a safetensors file, read on demand. numpy only.

``safetensors_layout`` returns where each tensor's bytes are (without reading them), and a
:class:`LazyArray` stands for one tensor: shape and dtype up front, data only when asked for, by
positioned reads into a caller's (reusable) buffer. There is no memory map: every page that one
long-lived map has touched counts in the process's resident set, so a diff through maps would end
up holding both files, while with positioned reads it holds a few blocks.

``diff-states`` reads two tensors block by block (``read_flat``); ``show-state`` indexes a few rows
of ``output`` (``out[rows, steps]``, ``out[:, 0]``), which reads just those rows.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from lstmscope.errors import StateError

# safetensors dtype -> numpy dtype (safetensors is little-endian). Others (BF16, F8_*, C64) are not read lazily.
LAZY_DTYPES = {
    "F64": "<f8", "F32": "<f4", "F16": "<f2", "I64": "<i8", "I32": "<i4", "I16": "<i2", "I8": "i1",
    "U64": "<u8", "U32": "<u4", "U16": "<u2", "U8": "u1", "BOOL": "?",
}


def safetensors_layout(path: Path) -> tuple[dict[str, str] | None, dict[str, tuple[str, tuple[int, ...], int, int]]]:
    """(metadata, name -> (safetensors dtype, shape, first byte, end byte)) with absolute file offsets.

    Checks what the safetensors library checks before it hands out tensors: the spans tile the data
    section exactly (no gap, no overlap, nothing after the last), and a known dtype's span is exactly
    ``prod(shape) * itemsize`` bytes. Call ``checkpoint.read_safetensors_header`` first for the
    friendlier messages about lengths and JSON; this repeats the checks it relies on.
    """
    size = path.stat().st_size
    with open(path, "rb") as f:
        raw = f.read(8)
        n = struct.unpack("<Q", raw)[0] if len(raw) == 8 else size
        if n > size - 8:
            raise StateError(f"{path}: safetensors header claims {n} bytes but the file holds {max(size - 8, 0)}; "
                             "the file is truncated or corrupt")
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
            raise StateError(f"{path}: safetensors header is not valid JSON") from None
    if not isinstance(header, dict):
        raise StateError(f"{path}: safetensors header is not a JSON object")
    meta = header.pop("__metadata__", None)
    if meta is not None and not (isinstance(meta, dict) and all(isinstance(v, str) for v in meta.values())):
        raise StateError(f"{path}: safetensors __metadata__ is malformed (must map names to strings)")
    data_start, body = 8 + n, size - 8 - n
    out: dict[str, tuple[str, tuple[int, ...], int, int]] = {}
    for key, entry in header.items():
        try:
            dtype, shape, (begin, end) = entry["dtype"], tuple(entry["shape"]), entry["data_offsets"]
            if not (isinstance(dtype, str) and all(type(v) is int and v >= 0 for v in (*shape, begin, end))):
                raise TypeError
        except (KeyError, TypeError, ValueError):
            raise StateError(f"{path}: safetensors entry {key!r} is malformed (needs dtype, shape, data_offsets)") from None
        want = int(np.prod(shape, dtype=object)) * np.dtype(LAZY_DTYPES[dtype]).itemsize if dtype in LAZY_DTYPES else None
        if not begin <= end <= body or (want is not None and end - begin != want):
            raise StateError(f"{path}: safetensors tensor {key!r} claims bytes {begin}..{end} for {dtype} {list(shape)}, "
                             f"but the data section holds {body} bytes; the file is truncated or corrupt")
        out[key] = (dtype, shape, data_start + begin, data_start + end)
    at = data_start
    for key, (_, _, begin, end) in sorted(out.items(), key=lambda kv: (kv[1][2], kv[1][3])):
        if begin != at:
            raise StateError(f"{path}: safetensors tensor {key!r} starts at byte {begin - data_start}, expected "
                             f"{at - data_start} (tensors must tile the data section); the file is corrupt")
        at = end
    if at != size:
        raise StateError(f"{path}: {size - at} bytes after the last tensor that no tensor claims; the file is corrupt")
    return meta, out


class LazyArray:
    """A C-ordered array at byte ``offset`` of ``path``, read only when indexed or converted.

    ``np.asarray(a)`` reads it whole; ``a[key]`` with ints, slices and integer arrays on the leading
    axes reads only the rows the key selects (other keys read it whole, then index). A file that
    turns out shorter than promised raises StateError.
    """

    def __init__(self, path: Path, offset: int, dtype: np.dtype | str, shape: tuple[int, ...]):
        self.path = Path(path)
        self.offset = offset
        self.dtype = np.dtype(dtype)
        self.shape = tuple(int(d) for d in shape)

    ndim = property(lambda self: len(self.shape))
    size = property(lambda self: int(np.prod(self.shape, dtype=np.int64)))
    itemsize = property(lambda self: self.dtype.itemsize)
    nbytes = property(lambda self: self.size * self.dtype.itemsize)

    def __len__(self) -> int:
        if not self.shape:
            raise TypeError("len() of a 0-d array")
        return self.shape[0]

    def __repr__(self) -> str:
        return f"LazyArray({str(self.path)!r}, offset={self.offset}, dtype={self.dtype}, shape={self.shape})"

    def open(self) -> BinaryIO:
        try:
            return open(self.path, "rb", buffering=0)
        except OSError as e:
            raise StateError(f"{self.path}: cannot read ({e.strerror})") from None

    def read_flat(self, f: BinaryIO, start: int, out: np.ndarray) -> np.ndarray:
        """Elements ``start .. start + out.size`` (flat, C order) into the contiguous 1-D ``out`` of this dtype."""
        view = memoryview(out).cast("B")
        at = self.offset + start * self.itemsize
        got = 0
        try:
            while got < len(view):
                n = os.preadv(f.fileno(), [view[got:]], at + got) if hasattr(os, "preadv") else _seek_read(f, at + got, view[got:])
                if not n:
                    raise StateError(f"{self.path} is truncated: expected {len(view)} bytes at offset {at}, found {got} "
                                     "(did the file change while it was read?)")
                got += n
        except OSError as e:
            raise StateError(f"{self.path}: cannot read ({e.strerror})") from None
        return out

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        if copy is False:
            raise ValueError("a LazyArray cannot be viewed as an array without reading (copying) it")
        out = np.empty(self.shape, dtype=self.dtype)
        if out.size:
            with self.open() as f:
                self.read_flat(f, 0, out.reshape(-1))
        return out if dtype is None else out.astype(dtype, copy=False)

    def __getitem__(self, key: Any) -> Any:
        key = key if isinstance(key, tuple) else (key,)
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
            breaks = np.flatnonzero(np.diff(rows) != 1) + 1  # runs of consecutive rows: one read each
            with self.open() as f:
                for s, e in zip([0, *breaks.tolist()], [*breaks.tolist(), rows.size]):
                    self.read_flat(f, int(rows[s]) * width, flat[s * width:e * width])
        return out


def _int_array(k: Any) -> bool:
    return isinstance(k, (list, np.ndarray)) and np.asarray(k).dtype.kind in "iu"


def _seek_read(f: BinaryIO, at: int, view: memoryview) -> int:
    f.seek(at)
    return f.readinto(view) or 0
