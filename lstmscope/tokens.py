"""Token ids through a model's own embedding: which matrix, and the ids checked and looked up. numpy only.

Where the embedding comes from is the reader's business (a Keras graph's Embedding layer, an ONNX Gather of an
initializer, or a state_dict tensor named by ``--embedding`` or by its name); here it is a reference
(``EmbeddingRef``) and, once read, a (vocab, width) matrix.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from lstmscope.errors import InputError

EMBEDDING_NAME = re.compile(r"emb", re.IGNORECASE)  # a tensor whose name says embedding: embedding, embed, emb


@dataclass(frozen=True)
class EmbeddingRef:
    """An embedding matrix in a checkpoint: what the framework calls it and its shape."""

    name: str  # Keras: the Embedding layer's name; PyTorch: the tensor's key; ONNX: the initializer's name
    source: str  # where the file keeps the matrix (a dataset path, a key, an initializer)
    vocab: int
    width: int
    dtype: str
    mask_zero: bool = False  # Keras Embedding(mask_zero=True): id 0 masks its step
    how: str = "the model's graph"  # how it was picked, for the header: "the model's graph", "--embedding", ...

    def describe(self) -> str:
        return f"{self.name} (vocabulary {self.vocab:,}, width {self.width})"

    def to_dict(self) -> dict:
        return {"name": self.name, "source": self.source, "vocab": self.vocab, "width": self.width,
                "dtype": self.dtype, "mask_zero": self.mask_zero, "how": self.how}


def check_ids(ids: np.ndarray, vocab: int, where: str, start: int = 0, time_major: bool = False,
              single: bool = False) -> None:
    """InputError naming the first id outside [0, vocab) and its position in the file (``ids`` is (B, n), steps
    ``start``..)."""
    bad = (ids < 0) | (ids >= vocab)
    if not bad.any():
        return
    b, t = (int(v) for v in np.argwhere(bad)[0])  # the first in (sequence, step) order
    value = int(ids[b, t])
    step = start + t
    at = f"[{step}]" if single else f"[{step}, {b}]" if time_major else f"[{b}, {step}]"
    raise InputError(f"{where}{at} is token id {value}, outside the embedding's vocabulary 0..{vocab - 1} "
                     f"(sequence {b}, step {step}); ids index rows of the (vocab, width) matrix")


def lookup(matrix: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """(B, n) ids -> (B, n, width) rows of ``matrix`` (ids already checked)."""
    return np.take(matrix, ids.astype(np.intp, copy=False), axis=0)


def candidates(tensors: dict, input_size: int, exclude: set[str] = frozenset()) -> list[str]:
    """Listed tensors that could be a (vocab, input_size) embedding: 2-D floating point, width input_size."""
    out = []
    for key, info in tensors.items():
        if key in exclude or len(info.shape) != 2 or info.shape[1] != input_size:
            continue
        if not (info.dtype.startswith("float") or info.dtype.startswith("bfloat")):
            continue
        out.append(key)
    return out


def named_like_embedding(keys: list[str]) -> list[str]:
    return [k for k in keys if EMBEDDING_NAME.search(k)]
