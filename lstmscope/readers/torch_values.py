"""Tensor values read straight from a torch file's storage bytes, as numpy, without torch. Torch-free.

lstmscope.readers.torch_listing lists a file's tensors as :class:`TensorRecord` (shape, dtype, storage,
offset and stride, all checked against the storage's size); this module reads the bytes the record
names and lays them out as the tensor (``np.ndarray`` over the storage's buffer with the record's
strides, then copied). It serves the files torch cannot or must not read: TorchScript archives
(lstmscope.readers.torchscript; ``torch.load`` would hand them to ``torch.jit.load``) and legacy-format
files whose tensors sit on untyped storages (uint16, uint32, uint64, float8 dtypes: torch's legacy
loader fails on them).
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any, Callable

import numpy as np

from lstmscope.dtypes import ITEMSIZE, NUMPY, widen_bfloat16
from lstmscope.errors import CheckpointError, clean_message
from lstmscope.readers.torch_listing import TensorRecord

Loader = Callable[[list[str]], dict[str, np.ndarray]]


def record_array(record: TensorRecord, raw: bytes, key: str, source: Path, big_endian: bool = False) -> np.ndarray:
    """The tensor ``record`` describes, from its storage's bytes ``raw``: a new array; bfloat16 widened to
    float32, exactly. A dtype numpy cannot hold (float8, complex32, ...) is one CheckpointError naming it."""
    if record.dtype == "bfloat16":
        dtype = np.dtype("<u2")
    elif record.dtype in NUMPY:
        dtype = NUMPY[record.dtype]
    else:
        raise CheckpointError(f"{source}: tensor {key!r} is {record.dtype}, which lstmscope cannot read (numpy has no "
                              "such type); lstmscope reads float16, bfloat16, float32 and float64 weights")
    if big_endian:
        dtype = dtype.newbyteorder(">")
    size = ITEMSIZE[record.dtype]
    if not all(record.shape):
        return np.zeros(record.shape, dtype.newbyteorder("=")) if record.dtype != "bfloat16" else \
            np.zeros(record.shape, np.float32)
    extent = record.offset + 1 + sum((n - 1) * s for n, s in zip(record.shape, record.stride))
    if extent * size > len(raw):  # torch_listing checked it against the record's size: a changed file
        raise CheckpointError(f"{source}: tensor {key!r} runs past the end of its storage (did the file change?)")
    view = np.ndarray(record.shape, dtype, buffer=raw, offset=record.offset * size,
                      strides=tuple(s * size for s in record.stride))
    out = view.astype(dtype.newbyteorder("="), copy=True)
    return widen_bfloat16(out) if record.dtype == "bfloat16" else out


def zip_loader(path: Path, records: dict[str, TensorRecord], big_endian: bool = False) -> Loader:
    """Reads listed tensors of a zip archive (TorchScript's ``data/`` and ``constants/`` records) by key."""

    def load(keys: list[str]) -> dict[str, np.ndarray]:
        out = {}
        try:
            with zipfile.ZipFile(path) as z:
                for key in keys:
                    record = records[key]
                    out[key] = record_array(record, z.read(record.storage.where), key, path, big_endian)
        except CheckpointError:
            raise
        except Exception as e:  # a file changed or damaged since it was listed
            raise CheckpointError(f"{path}: cannot read tensor data ({clean_message(e)})") from None
        return out

    return load


def legacy_loader(path: Path, records: dict[str, Any]) -> Loader:
    """Reads listed tensors of a legacy-format (pre-1.6) torch file by key, from the storage offsets the
    listing found."""

    def load(keys: list[str]) -> dict[str, np.ndarray]:
        out = {}
        try:
            with open(path, "rb") as f:
                for key in keys:
                    record = records[key]
                    storage = record.storage
                    f.seek(storage.where)
                    raw = f.read(storage.nbytes)
                    out[key] = record_array(record, raw, key, path)
        except CheckpointError:
            raise
        except Exception as e:
            raise CheckpointError(f"{path}: cannot read tensor data ({clean_message(e)})") from None
        return out

    return load
