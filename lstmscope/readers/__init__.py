"""Checkpoint readers, one module per file family, behind one protocol (lstmscope.readers.base).

``read_checkpoint(path)`` sniffs the file by its bytes (lstmscope.sniff) and hands it to the reader of
its format. Readers are imported only when a file of theirs is read (h5py, onnx, torch stay unloaded otherwise).
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path

from lstmscope import sniff as _sniff
from lstmscope.errors import CheckpointError
from lstmscope.fileio import check_source, spool
from lstmscope.readers.base import Checkpoint, LSTMModule, TensorInfo, select_module  # noqa: F401

# format -> reader module (each has FORMATS and read(path, fmt) -> Checkpoint)
READERS = {
    _sniff.TORCH_ZIP: "lstmscope.readers.torch",
    _sniff.TORCH_LEGACY: "lstmscope.readers.torch",
    _sniff.TORCHSCRIPT: "lstmscope.readers.torch",
    _sniff.SAFETENSORS: "lstmscope.readers.safetensors",
    _sniff.KERAS_ZIP: "lstmscope.readers.keras",
    _sniff.HDF5: "lstmscope.readers.keras",
    _sniff.ONNX: "lstmscope.readers.onnx",
}
KNOWN = "PyTorch (.pt/.pth/.bin/.ckpt), .safetensors, Keras (.keras/.h5/.weights.h5) checkpoints and ONNX models"


def read_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Open a checkpoint, list its tensors and find its LSTMs, without loading tensor data."""
    path = spool(Path(path), "checkpoint", CheckpointError)  # a pipe or - : its bytes, in a file
    check_source(path, "checkpoint", CheckpointError)
    found = _sniff.sniff(path)
    module = READERS.get(found.format)
    if module is None:
        raise CheckpointError(_not_a_checkpoint(path, found))
    return importlib.import_module(module).read(path, found.format)


def _not_a_checkpoint(path: Path, found: _sniff.Sniffed) -> str:
    if found.format == _sniff.SNAPSHOT:
        return f"{path} is an lstmscope state snapshot, not a checkpoint; use lstmscope show-state {path}"
    if found.format in (_sniff.NPY, _sniff.NPZ):
        return f"{path} is {found.description}, not a checkpoint (input sequences go in the INPUT argument)"
    if found.format == _sniff.DAMAGED_ZIP:
        detail = f" ({found.detail})" if found.detail else ""
        return f"{path} is {found.description}{detail}; a checkpoint cannot be read from it"
    if found.format == _sniff.UNKNOWN_ZIP:
        return f"{path} is a zip archive without data.pkl or config.json, so neither a PyTorch nor a Keras checkpoint"
    return f"{path} is {found.description}, not a checkpoint; lstmscope reads {KNOWN}"
