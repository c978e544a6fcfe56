"""safetensors checkpoints: the header (lstmscope.safetensors_header, the one parser), and parameters read by
positioned reads. Torch-free."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lstmscope.dtypes import NUMPY, widen_bfloat16
from lstmscope.errors import CheckpointError
from lstmscope.readers.base import Checkpoint, LSTMModule, TensorInfo
from lstmscope.safetensors_header import read_header
from lstmscope.readers.state_dict_names import find_lstm_modules, other_recurrent_hint
from lstmscope.sniff import SAFETENSORS, SNAPSHOT

FORMATS = (SAFETENSORS, SNAPSHOT)


def read(path: Path, fmt: str) -> Checkpoint:
    header, _ = read_header(path)
    tensors = {k: TensorInfo(shape, dtype) for k, (dtype, shape, _, _) in header.items()}
    others: list[str] = []
    kinds: dict[str, str] = {}
    singles: list[LSTMModule] = []
    modules = find_lstm_modules(tensors, path.name, others, kinds=kinds, single_layers=singles)

    def parameters(module: LSTMModule) -> dict[str, np.ndarray]:
        return {name: read_tensor(path, header[key], key) for name, key in module.source.items()}

    return Checkpoint(path=path, format=SAFETENSORS, tensors=tensors, modules=modules,
                      _parameters=parameters, other_recurrent=others, no_lstm_hint=other_recurrent_hint(kinds),
                      single_layers=singles, _tensor=lambda key: read_tensor(path, header[key], key))


def read_tensor(path: Path, entry: tuple[str, tuple[int, ...], int, int], key: str) -> np.ndarray:
    """One whole tensor as a numpy array (bfloat16 widened to float32, exactly)."""
    dtype, shape, begin, end = entry
    if dtype == "bfloat16":
        np_dtype = np.dtype("<u2")
    elif dtype in NUMPY:
        np_dtype = NUMPY[dtype]
    else:
        raise CheckpointError(f"{path}: tensor {key!r} is {dtype}, which lstmscope cannot read as an LSTM parameter")
    out = np.empty(shape, dtype=np_dtype)
    with open(path, "rb") as f:
        f.seek(begin)
        if f.readinto(memoryview(out.reshape(-1)).cast("B")) != end - begin:
            raise CheckpointError(f"{path}: tensor {key!r} is cut short (did the file change?)")
    return widen_bfloat16(out) if dtype == "bfloat16" else out.astype(np_dtype.newbyteorder("="), copy=False)
