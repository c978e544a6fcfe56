"""Read checkpoint files of every supported format and find the LSTMs in them.

The format is sniffed from the file's bytes, not its name. safetensors headers are parsed here
without torch, so ``inspect`` on a ``.safetensors`` file never imports it; torch files import
torch only when they are read. Torch files are always read with ``weights_only=True``.
"""

from __future__ import annotations

import io
import json
import os
import pickletools
import struct
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from lstmscope.errors import CheckpointError, clean_message
from lstmscope.fileio import check_source, file_sha256
from lstmscope.spec import LSTMModule, TensorInfo, find_lstm_modules, select_module

SAFETENSORS_DTYPES = {
    "F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16",
    "I64": "int64", "I32": "int32", "I16": "int16", "I8": "int8",
    "U64": "uint64", "U32": "uint32", "U16": "uint16", "U8": "uint8", "BOOL": "bool",
    "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2", "C64": "complex64", "F8_E8M0": "float8_e8m0fnu",
}
_ITEMSIZE = {"float64": 8, "float32": 4, "float16": 2, "bfloat16": 2, "int64": 8, "int32": 4, "int16": 2,
             "int8": 1, "uint64": 8, "uint32": 4, "uint16": 2, "uint8": 1, "bool": 1,
             "float8_e4m3fn": 1, "float8_e5m2": 1, "complex64": 8, "float8_e8m0fnu": 1}
MAX_SAFETENSORS_HEADER = 100 * 1024 * 1024  # the safetensors library's own limit

FORMAT_SAFETENSORS = "safetensors"
FORMAT_TORCH_ZIP = "torch-zip"
FORMAT_TORCH_LEGACY = "torch-legacy"


@dataclass
class Checkpoint:
    """A checkpoint file, its tensor listing and the LSTMs found in it."""

    path: Path
    format: str  # "safetensors", "torch-zip" or "torch-legacy"
    sha256: str
    tensors: dict[str, TensorInfo]  # flattened key ("state_dict.model.lstm.weight_ih_l0") -> info
    modules: list[LSTMModule]
    _load: Callable[[list[str]], dict[str, Any]] = field(repr=False)
    other_recurrent: list[str] = field(default_factory=list)  # GRU/RNN prefixes, skipped

    def module(self, wanted: str | None) -> LSTMModule:
        return select_module(self.modules, wanted, self.path.name, self.other_recurrent)

    def load_tensors(self, keys: list[str]) -> dict[str, Any]:
        """torch tensors on CPU for the given flattened keys (imports torch)."""
        return self._load(keys)

    def module_parameters(self, module: LSTMModule) -> dict[str, Any]:
        """nn.LSTM parameter name -> torch tensor, ready for ``load_state_dict``."""
        keys = module.keys()
        loaded = self._load(list(keys.values()))
        return {name: loaded[key] for name, key in keys.items()}


def sniff_format(path: Path) -> str:
    with open(path, "rb") as f:
        head = f.read(16)
    if zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as z:
                names = z.namelist()
        except (zipfile.BadZipFile, OSError) as e:
            raise CheckpointError(f"{path}: damaged zip archive ({clean_message(e)})") from None
        if any(n.endswith("data.pkl") for n in names):
            return FORMAT_TORCH_ZIP
        if "model.weights.h5" in names or "config.json" in names:
            raise CheckpointError(f"{path} is a Keras 3 (.keras) archive; lstmscope reads PyTorch (.pt/.pth/.bin/.ckpt) and .safetensors checkpoints")
        raise CheckpointError(f"{path} is a zip archive without data.pkl, so not a PyTorch checkpoint")
    if head[:2] == b"PK":
        raise CheckpointError(f"{path} is a damaged or truncated zip archive (an interrupted download?); "
                              "a PyTorch checkpoint cannot be read from it")
    if len(head) >= 9 and head[8:9] == b"{":
        return FORMAT_SAFETENSORS
    if head[:2] in (b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05"):
        return FORMAT_TORCH_LEGACY
    if head.startswith(b"\x89HDF"):
        raise CheckpointError(f"{path} is an HDF5 (Keras .h5) file; lstmscope reads PyTorch (.pt/.pth/.bin/.ckpt) and .safetensors checkpoints")
    raise CheckpointError(
        f"{path} is not a checkpoint lstmscope can read; expected a PyTorch file (.pt/.pth/.bin/.ckpt) or .safetensors"
    )


def read_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Open a checkpoint, list its tensors and find its LSTMs."""
    path = Path(path)
    check_source(path, "checkpoint", CheckpointError)
    fmt = sniff_format(path)
    if fmt == FORMAT_SAFETENSORS:
        tensors = read_safetensors_header(path)
        load = _safetensors_loader(path)
    else:
        flat = _torch_load_flat(path, fmt)
        tensors = {k: TensorInfo(tuple(t.shape), str(t.dtype).removeprefix("torch.")) for k, t in flat.items()}
        load = lambda keys: {k: flat[k] for k in keys}  # noqa: E731
    others: list[str] = []
    modules = find_lstm_modules(tensors, path.name, others)
    return Checkpoint(path=path, format=fmt, sha256=file_sha256(path), tensors=tensors, modules=modules, _load=load,
                      other_recurrent=others)


# --- safetensors --------------------------------------------------------------------------------

def read_safetensors_header(path: Path) -> dict[str, TensorInfo]:
    """Parse and validate a safetensors header without reading tensor data (torch-free)."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) < 8:
            raise CheckpointError(f"{path}: truncated safetensors file ({size} bytes, shorter than its 8-byte header length)")
        (n,) = struct.unpack("<Q", raw)
        if n > MAX_SAFETENSORS_HEADER or n > size - 8:
            raise CheckpointError(f"{path}: safetensors header claims {n} bytes but the file holds {size - 8}; the file is truncated or corrupt")
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise CheckpointError(f"{path}: safetensors header is not valid JSON ({clean_message(e)})") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: safetensors header is not a JSON object")
    body = size - 8 - n
    out: dict[str, TensorInfo] = {}
    for key, entry in header.items():
        if key == "__metadata__":
            continue
        try:
            dtype = SAFETENSORS_DTYPES.get(entry["dtype"]) or str(entry["dtype"]).lower()
            shape = tuple(int(d) for d in entry["shape"])
            begin, end = (int(o) for o in entry["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise CheckpointError(f"{path}: safetensors entry {key!r} is malformed (needs dtype, shape, data_offsets)") from None
        count = 1
        for d in shape:
            if d < 0:
                raise CheckpointError(f"{path}: safetensors tensor {key!r} has a negative dimension {shape}")
            count *= d
        size_ok = dtype not in _ITEMSIZE or end - begin == count * _ITEMSIZE[dtype]  # unknown dtypes: no size check
        if not (0 <= begin <= end <= body) or not size_ok:
            raise CheckpointError(
                f"{path}: safetensors tensor {key!r} claims bytes {begin}..{end} for {dtype} {shape}, "
                f"but the data section holds {body} bytes; the file is truncated or corrupt"
            )
        out[key] = TensorInfo(shape, dtype)
    return out


def _safetensors_loader(path: Path) -> Callable[[list[str]], dict[str, Any]]:
    def load(keys: list[str]) -> dict[str, Any]:
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt", device="cpu") as f:
                return {k: f.get_tensor(k) for k in keys}
        except Exception as e:  # safetensors raises its own SafetensorError and OSError
            raise CheckpointError(f"{path}: cannot read safetensors tensors ({clean_message(e)})") from None

    return load


# --- torch files ----------------------------------------------------------------------------------

def _torch_load_flat(path: Path, fmt: str) -> dict[str, Any]:
    import torch

    obj = torch_load(path, fmt)
    flat: dict[str, Any] = {}
    _flatten(obj, "", flat, torch.Tensor, depth=0)
    return flat


def torch_load(path: Path, fmt: str | None = None) -> Any:
    """``torch.load`` with ``weights_only=True`` to CPU; every failure is one clear CheckpointError."""
    import torch

    fmt = fmt or sniff_format(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. "Detected pickle protocol N": not the user's concern
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=(fmt == FORMAT_TORCH_ZIP))
    except Exception as e:
        text = clean_message(e)
        needed = pickle_globals(path, fmt) if "weights_only" in text or "Weights only" in text else []
        if needed:
            raise CheckpointError(
                f"{path} is a full-module pickle (torch.save(model)); reading it would run code from the file, "
                f"which lstmscope never does. It needs: {', '.join(needed)}. Save model.state_dict() instead"
            ) from None
        if "Unsupported operand" in text:
            raise CheckpointError(
                f"{path} uses pickle opcodes torch's weights-only loader cannot read (pickle protocol 4 or 5?); "
                "re-save it with torch.save(obj, path) and the default protocol"
            ) from None
        raise CheckpointError(f"{path}: cannot read PyTorch checkpoint ({text})") from None
    return obj


def _flatten(obj: Any, prefix: str, out: dict[str, Any], tensor_type: type, depth: int) -> None:
    if depth > 64:
        return
    if isinstance(obj, tensor_type):
        out[prefix.rstrip(".")] = obj
    elif isinstance(obj, Mapping):
        for k, v in obj.items():
            _flatten(v, f"{prefix}{k}.", out, tensor_type, depth + 1)
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            _flatten(v, f"{prefix}{i}.", out, tensor_type, depth + 1)


_STRING_OPS = {"SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE", "SHORT_BINSTRING", "BINSTRING", "STRING"}


def pickle_globals(path: Path, fmt: str) -> list[str]:
    """The ``module.name`` globals a torch pickle refers to, found by reading opcodes (nothing runs).

    Torch's own rebuild helpers and storages are left out: what remains is what weights-only
    loading refuses.
    """
    try:
        if fmt == FORMAT_TORCH_ZIP:
            with zipfile.ZipFile(path) as z:
                name = next(n for n in z.namelist() if n.endswith("data.pkl"))
                streams = [io.BytesIO(z.read(name))]
                count = 1
        else:
            streams = [open(path, "rb")]
            count = 4  # magic number, protocol, sys info, then the object
        found: list[str] = []
        for stream in streams:
            with stream:
                for _ in range(count):
                    found.extend(_scan_one_pickle(stream))
    except Exception:
        return []
    plumbing = {"collections.OrderedDict", "builtins.set", "builtins.frozenset", "__builtin__.set",
                "__builtin__.frozenset", "copyreg._reconstructor", "_codecs.encode", "builtins.object"}
    seen: list[str] = []
    for g in found:
        if g.startswith("torch.nn.") or not (g.startswith("torch.") or g in plumbing):
            if g not in seen:
                seen.append(g)
    return seen


def _scan_one_pickle(stream) -> list[str]:
    """Globals named by one pickle. ``recent`` mirrors what each opcode pushed (None: not a string)."""
    out: list[str] = []
    recent: list[Any] = []
    memo: dict[Any, Any] = {}
    for op, arg, _pos in pickletools.genops(stream):
        name = op.name
        top = recent[-1] if recent else None
        if name in ("GLOBAL", "INST"):
            out.append(arg.replace(" ", "."))
            recent.append(None)
        elif name in _STRING_OPS:
            recent.append(arg)
        elif name == "MEMOIZE":
            memo[len(memo)] = top
        elif name in ("BINPUT", "LONG_BINPUT", "PUT"):
            memo[arg] = top
        elif name in ("BINGET", "LONG_BINGET", "GET"):
            recent.append(memo.get(arg))
        elif name == "STACK_GLOBAL":
            if len(recent) >= 2 and isinstance(recent[-2], str) and isinstance(recent[-1], str):
                out.append(f"{recent[-2]}.{recent[-1]}")
            recent.append(None)
        elif name not in ("PROTO", "FRAME"):
            recent.append(None)
    return out
