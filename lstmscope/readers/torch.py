"""Read checkpoint files of every supported format and find the LSTMs in them.

The format is sniffed from the file's bytes, not its name. safetensors headers are parsed here
without torch, and torch files are listed without torch by lstmscope.readers.torch_listing (which hands
anything it does not model back to torch), so ``inspect`` imports torch only for such files; ``run``
imports it when it needs tensor values. Torch files are read with ``weights_only=True``; when that refuses
a file (a full-module pickle, pickle protocol 4 or 5), lstmscope.readers.safe_pickle reads it again
without running code from it: other classes become inert stubs and calls are refused.
"""

from __future__ import annotations

import json
import os
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
    # torch files weights-only loading refused, read by lstmscope.readers.safe_pickle ("module.name", first seen first):
    stubbed_globals: list[str] = field(default_factory=list)  # classes kept as inert stubs, never imported
    refused_calls: list[str] = field(default_factory=list)  # callables the file asked to call; never called

    def module(self, wanted: str | None) -> LSTMModule:
        try:
            return select_module(self.modules, wanted, self.path.name, self.other_recurrent)
        except CheckpointError as e:
            if self.modules or not self.refused_calls:
                raise
            raise CheckpointError(f"{e.message}; the file also asked to run code ({', '.join(self.refused_calls)}), "
                                  "which lstmscope refused") from None

    def reading_note(self) -> str | None:
        """One line for stderr when the file was read without running code from it, else None."""
        if not (self.stubbed_globals or self.refused_calls):
            return None
        parts = [f"note: {self.path.name} was read without running code from it"]
        if self.stubbed_globals:
            parts.append(f"stubbed: {', '.join(self.stubbed_globals)}")
        if self.refused_calls:
            parts.append(f"refused to call: {', '.join(self.refused_calls)}")
        return "; ".join(parts)

    def load_tensors(self, keys: list[str]) -> dict[str, Any]:
        """torch tensors on CPU for the given flattened keys (imports torch)."""
        return self._load(keys)

    def module_parameters(self, module: LSTMModule) -> dict[str, Any]:
        """nn.LSTM parameter name -> torch tensor, ready for ``load_state_dict``."""
        keys = module.keys()
        loaded = self._load(list(keys.values()))
        return {name: loaded[key] for name, key in keys.items()}


_OTHER_FORMATS = (
    (b"\x89PNG\r\n\x1a\n", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"\x93NUMPY", "a NumPy .npy array (input sequences go in the INPUT argument)"),
    (b"\x1f\x8b", "gzip-compressed (decompress it first)"),
)
_TEXT_BYTES = frozenset(range(0x20, 0x7F)) | {0x09, 0x0A, 0x0D}


def _looks_like_text(head: bytes) -> bool:
    """Printable ASCII only. A safetensors length prefix never is: that would claim over 2**61 header bytes."""
    return bool(head) and all(b in _TEXT_BYTES for b in head)


# The legacy format's first pickle, torch's magic number, as pickle protocols 0 and 1 write it (a text
# LONG opcode, then STOP). Protocols 2-5 start with PROTO, b"\x80\x02" and up.
_LEGACY_TEXT_MAGIC = b"L119547037146038801333356L\n."


def _starts_with(path: Path, prefix: bytes) -> bool:
    with open(path, "rb") as f:
        return f.read(len(prefix)) == prefix


def sniff_format(path: Path) -> str:
    with open(path, "rb") as f:
        head = f.read(16)
    try:
        is_zip = zipfile.is_zipfile(path)
    except Exception as e:  # e.g. BadZipFile "zipfiles that span multiple disks are not supported"
        raise CheckpointError(f"{path}: damaged zip archive ({clean_message(e)})") from None
    if is_zip:
        try:
            with zipfile.ZipFile(path) as z:
                names = z.namelist()
        except Exception as e:  # zipfile also raises UnicodeDecodeError (names), EOFError, NotImplementedError
            raise CheckpointError(f"{path}: damaged zip archive ({clean_message(e)})") from None
        if any(n.endswith("data.pkl") for n in names):
            return FORMAT_TORCH_ZIP
        if "model.weights.h5" in names or "config.json" in names:
            raise CheckpointError(f"{path} is a Keras 3 (.keras) archive; lstmscope reads PyTorch (.pt/.pth/.bin/.ckpt) and .safetensors checkpoints")
        raise CheckpointError(f"{path} is a zip archive without data.pkl, so not a PyTorch checkpoint")
    if head[:2] == b"PK":
        raise CheckpointError(f"{path} is a damaged or truncated zip archive (an interrupted download?); "
                              "a PyTorch checkpoint cannot be read from it")
    if head.startswith(_LEGACY_TEXT_MAGIC[:16]) and _starts_with(path, _LEGACY_TEXT_MAGIC):
        return FORMAT_TORCH_LEGACY  # written with pickle protocol 0 or 1: printable, but a torch file
    if _looks_like_text(head):  # before the safetensors test: '{' can sit at byte 8 of a JSON file too
        kind = "a JSON file" if head.lstrip()[:1] in (b"{", b"[") else "a text file"
        raise CheckpointError(f"{path} is {kind}, not a checkpoint; lstmscope reads PyTorch (.pt/.pth/.bin/.ckpt) "
                              "and .safetensors checkpoints")
    if len(head) >= 9 and head[8:9] == b"{":
        return FORMAT_SAFETENSORS
    if head[:2] in (b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05"):
        return FORMAT_TORCH_LEGACY
    if head.startswith(b"\x89HDF"):
        raise CheckpointError(f"{path} is an HDF5 (Keras .h5) file; lstmscope reads PyTorch (.pt/.pth/.bin/.ckpt) and .safetensors checkpoints")
    for magic, kind in _OTHER_FORMATS:
        if head.startswith(magic):
            raise CheckpointError(f"{path} is {kind}, not a checkpoint; lstmscope reads PyTorch (.pt/.pth/.bin/.ckpt) "
                                  "and .safetensors checkpoints")
    raise CheckpointError(
        f"{path} is not a checkpoint lstmscope can read; expected a PyTorch file (.pt/.pth/.bin/.ckpt) or .safetensors"
    )


def read_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Open a checkpoint, list its tensors and find its LSTMs."""
    path = Path(path)
    check_source(path, "checkpoint", CheckpointError)
    fmt = sniff_format(path)
    stubbed: list[str] = []
    refused: list[str] = []
    if fmt == FORMAT_SAFETENSORS:
        tensors = read_safetensors_header(path)
        load = _safetensors_loader(path)
    else:
        listed = _list_torch_free(path, fmt)
        if listed is not None:  # names, shapes and dtypes without torch; values are loaded when asked for
            tensors, report = listed
            load = _lazy_torch_loader(path, fmt, tensors)
        else:
            flat, report = _torch_load_flat(path, fmt)
            tensors = {k: TensorInfo(tuple(t.shape), str(t.dtype).removeprefix("torch.")) for k, t in flat.items()}
            load = lambda keys: {k: flat[k] for k in keys}  # noqa: E731
        if report is not None:
            stubbed, refused = report.stubbed_only(), list(report.refused_calls)
    others: list[str] = []
    modules = find_lstm_modules(tensors, path.name, others)
    return Checkpoint(path=path, format=fmt, sha256=file_sha256(path), tensors=tensors, modules=modules, _load=load,
                      other_recurrent=others, stubbed_globals=stubbed, refused_calls=refused)


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
        except RecursionError:  # "[[[[...": nested deeper than Python's JSON parser goes
            raise CheckpointError(f"{path}: safetensors header is not valid JSON (nested too deeply)") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: safetensors header is not a JSON object")
    meta = header.get("__metadata__")
    if meta is not None and not (isinstance(meta, dict) and all(isinstance(v, str) for v in meta.values())):
        raise CheckpointError(f"{path}: safetensors __metadata__ is malformed (must map names to strings)")
    body = size - 8 - n
    out: dict[str, TensorInfo] = {}
    for key, entry in header.items():
        if key == "__metadata__":
            continue
        try:
            if not isinstance(entry["dtype"], str):
                raise TypeError
            dtype = SAFETENSORS_DTYPES.get(entry["dtype"]) or entry["dtype"].lower()
            shape = tuple(_json_int(d) for d in entry["shape"])
            begin, end = (_json_int(o) for o in entry["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise CheckpointError(f"{path}: safetensors entry {key!r} is malformed (needs dtype, shape, data_offsets "
                                  "as a string and lists of whole numbers)") from None
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


def _json_int(v: Any) -> int:
    """A whole number from a JSON header; 2.0, true, "3" and 1e400 are not."""
    if isinstance(v, bool) or not isinstance(v, int):
        raise TypeError(v)
    return v


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

# Internal, for tests and debugging: "1" lists torch files with torch, as the tensor loader reads them.
LIST_WITH_TORCH_ENV = "LSTMSCOPE_LIST_WITH_TORCH"


def _list_torch_free(path: Path, fmt: str) -> tuple[dict[str, TensorInfo], Any] | None:
    """Tensor infos and the safe_pickle report of a torch file, read by lstmscope.readers.torch_listing without
    torch; None when that reader cannot vouch for giving what torch would (torch then reads the file,
    and gives its own errors)."""
    if os.environ.get(LIST_WITH_TORCH_ENV) == "1":
        return None
    from lstmscope.readers.torch_listing import TensorRecord, list_torch_file

    try:
        obj, report = list_torch_file(path, legacy=fmt == FORMAT_TORCH_LEGACY)
        flat: dict[str, Any] = {}
        _flatten(obj, "", flat, TensorRecord, depth=0, budget=[_FLATTEN_BUDGET])
    except Exception:  # Unsupported, a damaged file, too many objects: all for the torch path to judge
        return None
    return {k: TensorInfo(t.shape, t.dtype) for k, t in flat.items()}, report


def _lazy_torch_loader(path: Path, fmt: str, listed: dict[str, TensorInfo]) -> Callable[[list[str]], dict[str, Any]]:
    """Loads the file with torch on first use (as read_checkpoint's torch path does) and checks the
    tensors against the torch-free listing the LSTMs were found in."""
    flat: dict[str, Any] = {}
    loaded: list[bool] = []

    def load(keys: list[str]) -> dict[str, Any]:
        if not loaded:
            flat.update(_torch_load_flat(path, fmt)[0])
            loaded.append(True)
        out = {}
        for k in keys:
            t = flat.get(k)
            if t is None or TensorInfo(tuple(t.shape), str(t.dtype).removeprefix("torch.")) != listed[k]:
                raise CheckpointError(f"{path}: tensor {k!r} is not what the file listed when it was opened "
                                      "(did the file change?); run again")
            out[k] = t
        return out

    return load


def _torch_load_flat(path: Path, fmt: str) -> tuple[dict[str, Any], Any]:
    """Flattened tensors of a torch file, and the safe_pickle report (None when weights-only loading read it)."""
    import torch

    obj, report = load_torch_file(path, fmt)
    flat: dict[str, Any] = {}
    try:
        _flatten(obj, "", flat, torch.Tensor, depth=0, budget=[_FLATTEN_BUDGET])
    except _TooManyObjects:
        raise CheckpointError(f"{path} holds more than {_FLATTEN_BUDGET:,} nested objects; lstmscope stops "
                              "looking for tensors there (a damaged or hostile file?)") from None
    return flat, report


def torch_load(path: Path, fmt: str | None = None) -> Any:
    """The object in a torch file, on CPU, read without running code (see :func:`load_torch_file`)."""
    return load_torch_file(path, fmt)[0]


def load_torch_file(path: Path, fmt: str | None = None) -> tuple[Any, Any]:
    """(object, report): every failure is one clear CheckpointError.

    ``torch.load(weights_only=True)`` always goes first; the report is then None. Only when it
    refuses the file (a global outside its allowlist, as in ``torch.save(model)``, or an opcode it
    lacks, as in pickle protocols 4 and 5: an UnpicklingError) is the file read again by
    :func:`lstmscope.readers.safe_pickle.restricted_torch_load`, which never imports or calls what the file
    names; its :class:`~lstmscope.readers.safe_pickle.PickleReport` says what it stubbed and refused.
    Zip files are memory-mapped either way, so untouched tensors are never read.
    """
    import pickle

    import torch

    fmt = fmt or sniff_format(path)
    mmap = fmt == FORMAT_TORCH_ZIP
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. "Detected pickle protocol N": not the user's concern
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap), None
    except pickle.UnpicklingError:
        pass  # weights-only refused it: read it again below, without running code
    except Exception as e:
        raise CheckpointError(f"{path}: cannot read PyTorch checkpoint ({clean_message(e)})") from None
    from lstmscope.readers.safe_pickle import restricted_torch_load

    try:
        return restricted_torch_load(path, mmap=mmap)
    except Exception as e:
        raise CheckpointError(f"{path}: cannot read PyTorch checkpoint ({clean_message(e)}); "
                              "lstmscope read it without running code from it") from None


_FLATTEN_BUDGET = 1_000_000  # objects visited; shared references could otherwise multiply the walk
_MODULE_STATE = ("_parameters", "_buffers", "_modules")


class _TooManyObjects(Exception):
    pass


def _flatten(obj: Any, prefix: str, out: dict[str, Any], tensor_type: type, depth: int,
             budget: list[int] | None = None) -> None:
    """Tensors in nested containers -> ``out["a.b.c"]``.

    Inert objects from lstmscope.readers.safe_pickle are containers too. A stubbed ``nn.Module`` (its state
    has ``_parameters``/``_buffers``/``_modules``) is named as ``state_dict()`` names it: parameters
    and persistent buffers at its prefix, children at prefix + name + "."; other attributes are
    skipped. Any other stub gives its attributes, items and elements; a refused call's arguments
    are never looked at.
    """
    from lstmscope.readers.safe_pickle import Inert

    if depth > 64:
        return
    if budget is not None:
        budget[0] -= 1
        if budget[0] < 0:
            raise _TooManyObjects
    if isinstance(obj, tensor_type):
        out[prefix.rstrip(".")] = obj
    elif isinstance(obj, Mapping):
        for k, v in obj.items():
            _flatten(v, f"{prefix}{k}.", out, tensor_type, depth + 1, budget)
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            _flatten(v, f"{prefix}{i}.", out, tensor_type, depth + 1, budget)
    elif isinstance(obj, Inert):
        state = obj.state
        if any(isinstance(state.get(k), Mapping) for k in _MODULE_STATE):
            transient = state.get("_non_persistent_buffers_set")
            transient = transient if isinstance(transient, (set, frozenset)) else set()
            for group in ("_parameters", "_buffers"):
                entries = state.get(group)
                if isinstance(entries, Mapping):
                    for k, v in entries.items():
                        if isinstance(v, tensor_type) and not (group == "_buffers" and k in transient):
                            out[f"{prefix}{k}"] = v
            children = state.get("_modules")
            if isinstance(children, Mapping):
                for k, v in children.items():
                    _flatten(v, f"{prefix}{k}.", out, tensor_type, depth + 1, budget)
        else:
            _flatten(state, prefix, out, tensor_type, depth + 1, budget)
            for k, v in obj.items:
                _flatten(v, f"{prefix}{k}.", out, tensor_type, depth + 1, budget)
            _flatten(obj.elements, prefix, out, tensor_type, depth + 1, budget)
            _flatten(obj.raw_state, prefix, out, tensor_type, depth + 1, budget)
