"""Tensors of a safetensors file, read on demand. numpy only.

``lstmscope.readers.safetensors.read_header`` says where each tensor's bytes are (without reading
them), and a :class:`LazyArray` stands for one tensor: shape and dtype up front, data only when asked for, by
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
