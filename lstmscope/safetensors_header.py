"""The safetensors header, parsed and checked without reading tensor data. numpy-free and torch-free: the
snapshot, trace and checkpoint readers all start here, and the torch-free commands (show-state, diff-states)
import nothing heavier to read one."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

from lstmscope.dtypes import ITEMSIZE, SAFETENSORS_NAMES
from lstmscope.errors import CheckpointError, LstmscopeError, clean_message

MAX_SAFETENSORS_HEADER = 100 * 1024 * 1024  # the safetensors library's own limit

Layout = dict[str, tuple[str, tuple[int, ...], int, int]]  # name -> (dtype name, shape, first byte, end byte)


def read_header(path: Path, error: type[LstmscopeError] = CheckpointError) -> tuple[Layout, dict[str, str] | None]:
    """Parse and validate a safetensors header without reading tensor data.

    Returns (name -> (dtype name, shape, absolute first byte, absolute end byte), metadata). Checks what
    the safetensors library checks before it hands out tensors: whole-number shapes and offsets, spans
    inside the data section, a known dtype's span exactly ``prod(shape) * itemsize`` bytes, and spans that
    tile the data section (no gap, no overlap, nothing after the last).
    """
    size = path.stat().st_size
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) < 8:
            raise error(f"{path}: truncated safetensors file ({size} bytes, shorter than its 8-byte header length)")
        (n,) = struct.unpack("<Q", raw)
        if n > MAX_SAFETENSORS_HEADER or n > size - 8:
            raise error(f"{path}: safetensors header claims {n} bytes but the file holds {max(size - 8, 0)}; "
                        "the file is truncated or corrupt")
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise error(f"{path}: safetensors header is not valid JSON ({clean_message(e)})") from None
        except RecursionError:  # "[[[[...": nested deeper than Python's JSON parser goes
            raise error(f"{path}: safetensors header is not valid JSON (nested too deeply)") from None
    if not isinstance(header, dict):
        raise error(f"{path}: safetensors header is not a JSON object")
    meta = header.pop("__metadata__", None)
    if meta is not None and not (isinstance(meta, dict) and all(isinstance(v, str) for v in meta.values())):
        raise error(f"{path}: safetensors __metadata__ is malformed (must map names to strings)")
    data_start, body = 8 + n, size - 8 - n
    out: Layout = {}
    for key, entry in header.items():
        try:
            if not isinstance(entry["dtype"], str):
                raise TypeError
            dtype = SAFETENSORS_NAMES.get(entry["dtype"]) or entry["dtype"].lower()
            shape = tuple(_json_int(d) for d in entry["shape"])
            begin, end = (_json_int(o) for o in entry["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise error(f"{path}: safetensors entry {key!r} is malformed (needs dtype, shape, data_offsets "
                        "as a string and lists of whole numbers)") from None
        count = 1
        for d in shape:
            if d < 0:
                raise error(f"{path}: safetensors tensor {key!r} has a negative dimension {shape}")
            count *= d
        size_ok = dtype not in ITEMSIZE or end - begin == count * ITEMSIZE[dtype]  # unknown dtypes: no size check
        if not (0 <= begin <= end <= body) or not size_ok:
            raise error(
                f"{path}: safetensors tensor {key!r} claims bytes {begin}..{end} for {dtype} {shape}, "
                f"but the data section holds {body} bytes; the file is truncated or corrupt"
            )
        out[key] = (dtype, shape, data_start + begin, data_start + end)
    at = data_start
    for key, (_, _, begin, end) in sorted(out.items(), key=lambda kv: (kv[1][2], kv[1][3])):
        if begin != at:
            raise error(f"{path}: safetensors tensor {key!r} starts at byte {begin - data_start}, expected "
                        f"{at - data_start} (tensors must tile the data section); the file is corrupt")
        at = end
    if at != size:
        raise error(f"{path}: {size - at} bytes after the last tensor that no tensor claims; the file is corrupt")
    return out, meta


def _json_int(v: Any) -> int:
    """A whole number from a JSON header; 2.0, true, "3" and 1e400 are not."""
    if isinstance(v, bool) or not isinstance(v, int):
        raise TypeError(v)
    return v
