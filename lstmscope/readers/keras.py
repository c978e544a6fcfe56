"""Keras checkpoints (placeholder until the Keras reader lands)."""

from __future__ import annotations

from pathlib import Path

from lstmscope.errors import CheckpointError
from lstmscope.sniff import HDF5, KERAS_ZIP

FORMATS = (KERAS_ZIP, HDF5)


def read(path: Path, fmt: str):
    kind = "a Keras 3 (.keras) archive" if fmt == KERAS_ZIP else "an HDF5 (Keras .h5) file"
    raise CheckpointError(f"{path} is {kind}; lstmscope reads PyTorch (.pt/.pth/.bin/.ckpt) and .safetensors checkpoints")
