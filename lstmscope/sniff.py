"""What a file is, by its bytes, never by its name: the one sniffer every command uses. Torch-free.

``sniff(path)`` answers with a format name (what a reader, the snapshot reader or the input reader
takes) or, for files lstmscope reads in no role, a description to put in an error message.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path

# Checkpoints
TORCH_ZIP = "torch-zip"  # torch.save, zip format (torch >= 1.6)
TORCH_LEGACY = "torch-legacy"  # torch.save, legacy pickle stream
TORCHSCRIPT = "torchscript"  # torch.jit.save archive (read from its data, never loaded: readers.torchscript)
SAFETENSORS = "safetensors"  # safetensors without lstmscope snapshot metadata
KERAS_ZIP = "keras-zip"  # Keras 3 .keras: config.json + model.weights.h5 in a zip
HDF5 = "hdf5"  # Keras .h5 / .weights.h5 (and .keras files that are really HDF5)
ONNX = "onnx"  # an ONNX ModelProto (protobuf)
# State snapshots and inputs
SNAPSHOT = "lstmscope-snapshot"  # safetensors with an lstmscope.state metadata entry
NPY = "npy"
NPZ = "npz"  # a zip of .npy members
# Neither: what the error messages say
UNKNOWN_ZIP = "zip"
DAMAGED_ZIP = "damaged-zip"
OTHER = "other"

CHECKPOINT_FORMATS = (TORCH_ZIP, TORCH_LEGACY, TORCHSCRIPT, SAFETENSORS, KERAS_ZIP, HDF5, ONNX)  # what readers read

SNAPSHOT_METADATA_KEY = "lstmscope.state"
_PEEK_HEADER = 1 << 20  # a snapshot's metadata sits in its header; headers past this are not snapshots we wrote

_OTHER_MAGIC = (
    (b"\x89PNG\r\n\x1a\n", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"\x1f\x8b", "gzip-compressed (decompress it first)"),
)
_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
_TEXT_BYTES = frozenset(range(0x20, 0x7F)) | {0x09, 0x0A, 0x0D}
# The legacy torch format's first pickle, torch's magic number, as pickle protocols 0 and 1 write it (a text
# LONG opcode, then STOP). Protocols 2-5 start with PROTO, b"\x80\x02" and up.
_LEGACY_TEXT_MAGIC = b"L119547037146038801333356L\n."


@dataclass(frozen=True)
class Sniffed:
    format: str  # one of the names above
    description: str  # what it is, in words, for messages ("a Keras 3 .keras archive", "a PNG image")
    detail: str = ""  # why it is damaged, for DAMAGED_ZIP


def _looks_like_text(head: bytes) -> bool:
    """Printable ASCII only. A safetensors length prefix never is: that would claim over 2**61 header bytes."""
    return bool(head) and all(b in _TEXT_BYTES for b in head)


def sniff(path: Path) -> Sniffed:
    """What ``path`` holds. Reads a few bytes (and a zip's directory, or a safetensors header's length)."""
    with open(path, "rb") as f:
        head = f.read(32)
    if head.startswith(b"\x93NUMPY"):
        return Sniffed(NPY, "a NumPy .npy array")
    if head[:2] == b"PK":
        return _sniff_zip(path)
    if head.startswith(_LEGACY_TEXT_MAGIC[:16]):
        with open(path, "rb") as f:
            if f.read(len(_LEGACY_TEXT_MAGIC)) == _LEGACY_TEXT_MAGIC:
                return Sniffed(TORCH_LEGACY, "a PyTorch checkpoint (legacy format)")
    if head.startswith(_HDF5_MAGIC):
        return Sniffed(HDF5, "an HDF5 file")
    if _looks_like_text(head[:16]):  # before the safetensors test: '{' can sit at byte 8 of a JSON file too
        kind = "a JSON file" if head.lstrip()[:1] in (b"{", b"[") else "a text file"
        return Sniffed(OTHER, kind)
    if _looks_like_onnx(path, head):  # before the safetensors test: a protobuf can hold '{' at byte 8
        return Sniffed(ONNX, "an ONNX model")
    if len(head) >= 9 and head[8:9] == b"{":
        if _is_snapshot(path):
            return Sniffed(SNAPSHOT, "an lstmscope state snapshot")
        return Sniffed(SAFETENSORS, "a safetensors file")
    if head[:2] in (b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05"):
        return Sniffed(TORCH_LEGACY, "a PyTorch checkpoint (legacy format) or another Python pickle")
    for magic, kind in _OTHER_MAGIC:
        if head.startswith(magic):
            return Sniffed(OTHER, kind)
    if not head:
        return Sniffed(OTHER, "an empty file")
    return Sniffed(OTHER, "not a file lstmscope knows")


# ONNX ModelProto fields: number -> protobuf wire type (0 varint, 2 length-delimited): ir_version 1,
# producer_name 2, producer_version 3, domain 4, model_version 5, doc_string 6, graph 7, opset_import 8,
# metadata_props 14, training_info 20, functions 25, configuration 26
_MODEL_FIELDS = {1: 0, 2: 2, 3: 2, 4: 2, 5: 0, 6: 2, 7: 2, 8: 2, 14: 2, 20: 2, 25: 2, 26: 2}
_ONNX_PEEK = 1 << 16


def _varint(buf: bytes, i: int) -> tuple[int, int] | None:
    value = shift = 0
    while i < len(buf) and shift < 64:
        b = buf[i]
        value |= (b & 0x7F) << shift
        i += 1
        if not b & 0x80:
            return value, i
        shift += 7
    return None


def _looks_like_onnx(path: Path, head: bytes) -> bool:
    """A protobuf whose first field is a ModelProto's ir_version (1-99; writers put field 1 first) and whose
    next fields, read by their tags only, are ModelProto fields of the right wire type. A truncated model
    still counts (its reader says it is truncated)."""
    if len(head) < 2 or head[0] != 0x08 or not 0 < head[1] < 100:
        return False
    with open(path, "rb") as f:
        buf = f.read(_ONNX_PEEK)
    size = path.stat().st_size
    i, fields = 2, 1
    while i < len(buf) and fields < 16:
        tag = _varint(buf, i)
        if tag is None or _MODEL_FIELDS.get(tag[0] >> 3) != (tag[0] & 7):
            return False
        i, fields = tag[1], fields + 1
        n = _varint(buf, i)
        if n is None:  # cut inside a varint
            return fields >= 2
        i = n[1] + (n[0] if tag[0] & 7 == 2 else 0)
        if i > size:
            return fields >= 2  # a field that runs past the end: a truncated model
    return fields >= 2


def _sniff_zip(path: Path) -> Sniffed:
    import zipfile  # here: only a file that starts like a zip needs it

    try:
        if not zipfile.is_zipfile(path):
            return Sniffed(DAMAGED_ZIP, "a damaged or truncated zip archive (an interrupted download?)")
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
    except Exception as e:  # BadZipFile, UnicodeDecodeError (names), EOFError, NotImplementedError, OSError
        from lstmscope.errors import clean_message

        return Sniffed(DAMAGED_ZIP, "a damaged zip archive", clean_message(e))
    if any(n.endswith("data.pkl") for n in names):
        roots = {n[: -len("data.pkl")] for n in names if n.endswith("data.pkl")}
        if any(r + "constants.pkl" in names or any(n.startswith(r + "code/") for n in names) for r in roots):
            return Sniffed(TORCHSCRIPT, "a TorchScript archive (torch.jit.save)")
        return Sniffed(TORCH_ZIP, "a PyTorch checkpoint")
    if "config.json" in names or "model.weights.h5" in names or "metadata.json" in names:
        return Sniffed(KERAS_ZIP, "a Keras 3 .keras archive")
    if names and all(n.endswith(".npy") for n in names):
        return Sniffed(NPZ, "a NumPy .npz archive (a zip of .npy arrays)")
    return Sniffed(UNKNOWN_ZIP, "a zip archive that is neither a checkpoint nor an .npz")


def _is_snapshot(path: Path) -> bool:
    """True when a safetensors header's metadata holds lstmscope's entry (the header is validated later,
    by whoever reads the file)."""
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) < 8:
            return False
        (n,) = struct.unpack("<Q", raw)
        if n > _PEEK_HEADER:
            return False
        try:
            header = json.loads(f.read(n))
        except (ValueError, RecursionError):
            return False
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    return isinstance(meta, dict) and SNAPSHOT_METADATA_KEY in meta
