"""The one table of element types: safetensors codes, names, sizes and how numpy reads them. Torch-free.

Names are numpy's where numpy has the type, torch's otherwise (bfloat16, float8_*).
"""

from __future__ import annotations

import numpy as np

# safetensors code -> (name, bytes per element, little-endian numpy dtype or None where numpy has none)
_TABLE: dict[str, tuple[str, int, str | None]] = {
    "F64": ("float64", 8, "<f8"), "F32": ("float32", 4, "<f4"), "F16": ("float16", 2, "<f2"),
    "BF16": ("bfloat16", 2, None), "I64": ("int64", 8, "<i8"), "I32": ("int32", 4, "<i4"), "I16": ("int16", 2, "<i2"),
    "I8": ("int8", 1, "i1"), "U64": ("uint64", 8, "<u8"), "U32": ("uint32", 4, "<u4"), "U16": ("uint16", 2, "<u2"),
    "U8": ("uint8", 1, "u1"), "BOOL": ("bool", 1, "?"), "F8_E4M3": ("float8_e4m3fn", 1, None),
    "F8_E5M2": ("float8_e5m2", 1, None), "F8_E8M0": ("float8_e8m0fnu", 1, None), "C64": ("complex64", 8, "<c8"),
}
SAFETENSORS_NAMES = {code: name for code, (name, _, _) in _TABLE.items()}  # "F32" -> "float32"
SAFETENSORS_CODES = {name: code for code, name in SAFETENSORS_NAMES.items()}  # "float32" -> "F32"
# Bytes per element of every dtype a file may name, torch's included (as torch._utils._element_size gives them;
# quantized, bits and sub-byte dtypes are left to torch).
ITEMSIZE = {name: size for name, size, _ in _TABLE.values()} | {
    "complex128": 16, "complex32": 4, "float8_e5m2fnuz": 1, "float8_e4m3fnuz": 1, "float4_e2m1fn_x2": 1,
}
NUMPY = {name: np.dtype(np_) for name, _, np_ in _TABLE.values() if np_ is not None}  # numpy can read these as they are
FLOAT_NAMES = ("float16", "bfloat16", "float32", "float64")  # what an LSTM can run in
SNAPSHOT_NAMES = ("float64", "float32", "float16", "int64", "int32", "uint8")  # what lstmscope writes into snapshots


def widen_bfloat16(raw: np.ndarray) -> np.ndarray:
    """bfloat16 bits (uint16, any shape) as float32, exactly: bfloat16 is float32's upper half."""
    return (raw.astype("<u4") << 16).view("<f4")
