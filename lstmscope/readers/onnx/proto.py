"""The ONNX protobuf and its tensors: a bounded parse, tensor listings without data, tensor values with every
declared size checked against the bytes behind it, and external data read only from the model's own folder."""

from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from lstmscope.errors import clean_message

PROTOBUF_MAX = (2 << 30) - 1  # protobuf messages are at most 2 GiB; larger models keep weights in external data

# TensorProto.DataType -> (numpy dtype name as lstmscope shows it, the typed field that may hold the values)
_DTYPES = {
    1: ("float32", "float_data"), 2: ("uint8", "int32_data"), 3: ("int8", "int32_data"), 4: ("uint16", "int32_data"),
    5: ("int16", "int32_data"), 6: ("int32", "int32_data"), 7: ("int64", "int64_data"), 9: ("bool", "int32_data"),
    10: ("float16", "int32_data"), 11: ("float64", "double_data"), 12: ("uint32", "uint64_data"),
    13: ("uint64", "uint64_data"), 16: ("bfloat16", "int32_data"),
}
FLOAT_TYPES = ("float32", "float64", "float16", "bfloat16")
_ITEMSIZE = {"float32": 4, "uint8": 1, "int8": 1, "uint16": 2, "int16": 2, "int32": 4, "int64": 8, "bool": 1,
             "float16": 2, "float64": 8, "uint32": 4, "uint64": 8, "bfloat16": 2}
_EXTERNAL = 1  # TensorProto.DataLocation.EXTERNAL


class _Refused(Exception):
    """Raised inside the reader with a message; read() adds the file's path."""


def _fail(message: str):
    raise _Refused(message)


def load_model(path: Path) -> Any:
    """The file's ModelProto, parsed by protobuf without touching external data."""
    import onnx
    from google.protobuf.message import DecodeError

    size = path.stat().st_size
    if size > PROTOBUF_MAX:
        _fail(f"the file is {size} bytes; an ONNX protobuf holds at most 2 GiB (larger models keep their weights in "
              "external data files next to a small .onnx)")
    model = onnx.ModelProto()
    try:
        model.ParseFromString(path.read_bytes())
    except (DecodeError, RuntimeError, ValueError) as e:  # upb: DecodeError; nesting past protobuf's limit too
        _fail(f"cannot parse it as an ONNX model ({clean_message(e) or type(e).__name__}); it is truncated, damaged "
              "or nested too deeply")
    if not model.HasField("graph"):
        _fail("an ONNX model without a graph (the file is truncated or not a model)")
    return model


def dtype_name(data_type: int) -> str:
    known = _DTYPES.get(int(data_type))
    if known:
        return known[0]
    import onnx

    try:
        return onnx.TensorProto.DataType.Name(int(data_type)).lower()
    except ValueError:
        return f"unknown-type-{int(data_type)}"


def tensor_shape(t: Any, what: str) -> tuple[int, ...]:
    dims = tuple(int(d) for d in t.dims)
    if any(d < 0 for d in dims):
        _fail(f"{what} declares negative dimensions {dims}")
    return dims


def is_external(t: Any) -> bool:
    return int(t.data_location) == _EXTERNAL


def check_tensor(t: Any, what: str, base_dir: Path) -> tuple[tuple[int, ...], str]:
    """(shape, dtype) of a stored tensor, after checking that the bytes behind it are as many as it declares
    (external data: the location, the file, offset and length; nothing is read)."""
    shape = tensor_shape(t, what)
    dtype = dtype_name(t.data_type)
    if is_external(t):
        _external_span(t, what, base_dir, _nbytes(shape, dtype, what))
    elif dtype in _ITEMSIZE:
        _stored_count(t, shape, dtype, what)
    return shape, dtype


def tensor_values(t: Any, what: str, base_dir: Path) -> np.ndarray:
    """A stored tensor as a numpy array (bfloat16 widened to float32, exactly), every size checked first."""
    from onnx import numpy_helper

    shape = tensor_shape(t, what)
    dtype = dtype_name(t.data_type)
    if dtype not in _ITEMSIZE:
        _fail(f"{what} is a {dtype} tensor; lstmscope reads numbers only")
    if is_external(t):
        import onnx

        real, offset, length = _external_span(t, what, base_dir, _nbytes(shape, dtype, what))
        with open(real, "rb") as f:
            f.seek(offset)
            raw = f.read(length)
        if len(raw) != length:
            _fail(f"{what}: its external data file ended early (the file changed while it was read)")
        plain = onnx.TensorProto()
        plain.dims.extend(shape)
        plain.data_type = t.data_type
        plain.raw_data = raw
        t = plain
    else:
        _stored_count(t, shape, dtype, what)
    try:
        a = numpy_helper.to_array(t)
    except (ValueError, TypeError, KeyError) as e:
        _fail(f"{what} cannot be read ({clean_message(e)})")
    if dtype == "bfloat16":
        a = a.astype(np.float32)
    return np.ascontiguousarray(a.reshape(shape))


def _nbytes(shape: tuple[int, ...], dtype: str, what: str) -> int:
    if dtype not in _ITEMSIZE:
        _fail(f"{what} is a {dtype} tensor; lstmscope reads numbers only")
    return math.prod(shape) * _ITEMSIZE[dtype]


def _stored_count(t: Any, shape: tuple[int, ...], dtype: str, what: str) -> None:
    """The values a tensor stored in the protobuf holds must be exactly as many as its dims declare."""
    count = math.prod(shape)
    if t.raw_data:
        held, want = len(t.raw_data), count * _ITEMSIZE[dtype]
        unit = "bytes"
    else:
        field = _DTYPES[int(t.data_type)][1]
        held, want, unit = len(getattr(t, field)), count, "values"
    if held != want:
        _fail(f"{what} declares shape {shape} ({dtype}: {want} {unit}) but holds {held} {unit}; the file is "
              "damaged")


_DRIVE = re.compile(r"^[A-Za-z]:")


def _external_span(t: Any, what: str, base_dir: Path, nbytes: int) -> tuple[str, int, int]:
    """(real path, offset, length) of a tensor's external data, refused unless it lies inside the model's
    folder and the file holds the bytes the tensor declares."""
    info: dict[str, str] = {}
    for entry in t.external_data:
        info[entry.key] = entry.value
    location = info.get("location", "")
    if not location:
        _fail(f"{what} says its data is external but names no location")
    shown = location.replace("\\", "/")
    if shown.startswith("/") or _DRIVE.match(shown) or os.path.isabs(location):
        _fail(f"{what}: external data location {location!r} is an absolute path; lstmscope reads external data "
              "only from the model's own folder")
    if ".." in shown.split("/"):
        _fail(f"{what}: external data location {location!r} leads out of the model's folder ('..'); refused")
    if "\x00" in location:
        _fail(f"{what}: external data location {location!r} is not a file name")
    folder = os.path.realpath(base_dir)
    real = os.path.realpath(os.path.join(folder, *[p for p in shown.split("/") if p]))
    if os.path.commonpath([folder, real]) != folder or real == folder:
        _fail(f"{what}: external data location {location!r} is a symlink out of the model's folder; refused")
    if not os.path.exists(real):
        _fail(f"{what}: its external data file {location!r} is missing (it must sit next to the model, in "
              f"{base_dir})")
    if not os.path.isfile(real):
        _fail(f"{what}: its external data location {location!r} is not a file")
    try:
        offset = int(info.get("offset", "0"))
        length = int(info.get("length", str(nbytes)))
    except ValueError:
        _fail(f"{what}: external data offset/length {info.get('offset')!r}/{info.get('length')!r} are not numbers")
    size = os.path.getsize(real)
    if offset < 0 or length < 0 or offset + length > size:
        _fail(f"{what}: external data at offset {offset}, length {length} lies past the end of {location!r} "
              f"({size} bytes)")
    if length != nbytes:
        _fail(f"{what} declares {nbytes} bytes but its external data is {length} bytes long")
    return real, offset, length
