"""State snapshots: the lstmscope v1 safetensors format, and foreign state files. numpy only.

A v1 snapshot holds ``h_n`` (num_layers * num_directions, batch, proj_size or hidden_size) and
``c_n`` (num_layers * num_directions, batch, hidden_size) in PyTorch's native layout, optionally
``output`` (batch, time, num_directions * out; always batch-first) and ``lengths`` (int64), and exactly
one metadata entry, ``lstmscope.state``, whose value is canonical JSON (sorted keys, no spaces).

The file is written by this module (not by safetensors.save) so that the bytes are a pure function
of the content: header keys sorted, tensors in name order, header padded to 8 bytes.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lstmscope import __version__
from lstmscope.dtypes import SAFETENSORS_CODES, SNAPSHOT_NAMES
from lstmscope.errors import LstmscopeError, StateError, clean_message
from lstmscope.fileio import atomic_writer, check_source
from lstmscope.arrays import DiskArray
from lstmscope.spec import LSTMSpec

FORMAT_VERSION = 1
METADATA_KEY = "lstmscope.state"
ARCHITECTURE_FIELDS = ("num_layers", "num_directions", "hidden_size", "proj_size", "input_size", "batch_size")
PROVENANCE_FIELDS = ("dtype", "module", "checkpoint_sha256", "input_sha256", "lengths_sha256",
                     "initial_state_sha256", "lstmscope_version", "format_version", "layout")
LAYOUTS = ("torch", "keras", "onnx")  # how h and c are stored: PyTorch's h_n/c_n, Keras's per-layer initial_state,
#                                       or the ONNX graph's own state feeds (see onnx_feed)
STATE_NAMES = (("h_n", "c_n"), ("h0", "c0"))


@dataclass
class StateFile:
    """A state read from disk: a v1 snapshot (``meta`` set) or a foreign file (``meta`` None)."""

    path: Path
    h_n: np.ndarray  # (num_layers * num_directions, batch, out)
    c_n: np.ndarray  # (num_layers * num_directions, batch, hidden)
    output: np.ndarray | DiskArray | None  # (batch, time, num_directions * out); lazy from safetensors
    lengths: np.ndarray | None  # (batch,) int64
    meta: dict[str, Any] | None
    kind: str  # "lstmscope snapshot v1", "safetensors", "npz", "torch"
    extra: dict[str, np.ndarray | DiskArray]  # any other tensors in the file (lazy from safetensors)
    layout: str = "torch"  # how the file stores h and c: "torch" (h_n, c_n), "keras" (per layer h, c) or "onnx"
    stored: dict[str, tuple[int, ...]] = field(default_factory=dict)  # every tensor as the file names it, its shape
    # ("h" or "c", index in h_n/c_n) -> where the file keeps that slice, for the keras and onnx layouts
    # ("encoder/h_f", "/lstm/LSTM/initial_h[1]"); empty for the torch layout, whose names are h_n and c_n
    slice_names: dict[tuple[str, int], str] = field(default_factory=dict)

    @property
    def layout_directions(self) -> int | None:
        """How many directions the file's own names say (a Keras-layout file without metadata: h_f/h_b are 2,
        h alone 1); None when they say nothing."""
        if self.layout != "keras" or not self.slice_names:
            return None
        return 2 if any(n.endswith(("_f", "_b")) for n in self.slice_names.values()) else 1

    def tensors(self) -> dict[str, np.ndarray | DiskArray]:
        out = {"h_n": self.h_n, "c_n": self.c_n}
        if self.output is not None:
            out["output"] = self.output
        if self.lengths is not None:
            out["lengths"] = self.lengths
        out.update(self.extra)
        return out


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False)


def array_sha256(a: np.ndarray) -> str:
    import hashlib

    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()


def keras_state_names(spec: LSTMSpec) -> list[tuple[int, str, str]]:
    """(index in h_n, h name, c name) per layer and direction, in the order Keras's ``initial_state`` takes
    them: ``[h, c]`` per LSTM layer, ``[h_f, c_f, h_b, c_b]`` per Bidirectional layer; named ``<layer>/h``,
    ``<layer>/c`` or ``<layer>/h_f``, ``<layer>/c_f``, ``<layer>/h_b``, ``<layer>/c_b``."""
    out = []
    for layer in range(spec.num_layers):
        name = spec.names[layer] if layer < len(spec.names) else f"layer{layer}"
        for d in range(spec.num_directions):
            suffix = ("_f", "_b")[d] if spec.bidirectional else ""
            out.append((layer * spec.num_directions + d, f"{name}/h{suffix}", f"{name}/c{suffix}"))
    return out


def default_layout(spec: LSTMSpec) -> str:
    """The layout a module's snapshots take unless asked otherwise: its own framework's."""
    return spec.framework if spec.framework in ("keras", "onnx") else "torch"


def check_layout(layout: str, spec: LSTMSpec) -> str:
    if layout not in LAYOUTS:  # the onnx layout is offered to ONNX modules only
        raise StateError(f"--layout {layout}: choose "
                         + ("torch, keras or onnx" if spec.framework == "onnx" else "torch or keras"))
    if layout == "onnx" and spec.framework != "onnx":
        raise StateError("--layout onnx: the ONNX layout is the state feeds of an ONNX graph; this module is not "
                         "from an ONNX model (choose torch or keras)")
    if layout == "keras" and spec.proj_size:
        raise StateError("--layout keras: a Keras LSTM has no proj_size; this module's h and c differ in width")
    return layout


def state_layout(spec: LSTMSpec, batch: int, dtype: str, layout: str,
                 feed: dict | None = None) -> dict[str, tuple[str, tuple[int, ...]]]:
    """The h/c tensors a snapshot of ``spec`` holds in ``layout``: name -> (numpy dtype name, shape). The "onnx"
    layout needs ``feed`` (the module's ``graph.state_feed(batch)``)."""
    ld = spec.num_layers * spec.num_directions
    if layout == "onnx":
        return {name: (dtype, tuple(shape)) for name, shape in _need_feed(feed)["tensors"].items()}
    if layout == "torch":
        return {"h_n": (dtype, (ld, batch, spec.output_size)),  # (num_layers * num_directions, batch, out)
                "c_n": (dtype, (ld, batch, spec.hidden_size))}  # (num_layers * num_directions, batch, hidden)
    out = {}
    for _, h, c in keras_state_names(spec):
        out[h] = (dtype, (batch, spec.output_size))  # (batch, units)
        out[c] = (dtype, (batch, spec.hidden_size))  # (batch, units)
    return out


def state_tensors(spec: LSTMSpec, h_n: np.ndarray, c_n: np.ndarray, layout: str,
                  feed: dict | None = None) -> dict[str, np.ndarray]:
    """h_n/c_n (PyTorch layout) as the tensors ``layout`` stores ("onnx": the graph's feeds, ``feed``; parts of a
    graph input that the module does not read are zeros)."""
    if layout == "onnx":
        feed = _need_feed(feed)
        out = {name: np.zeros(shape, dtype=h_n.dtype) for name, shape in feed["tensors"].items()}
        for sl in feed["slices"]:
            src = (h_n if sl["which"] == "h" else c_n)[sl["index"]]  # (batch, width)
            out[sl["tensor"]].reshape(-1)[_flat(sl, src.shape)] = src
        return out
    if layout == "torch":
        return {"h_n": h_n, "c_n": c_n}
    out = {}
    for i, h, c in keras_state_names(spec):
        out[h], out[c] = h_n[i], c_n[i]
    return out


def _need_feed(feed: dict | None) -> dict:
    if not feed or "tensors" not in feed or "slices" not in feed:
        raise StateError("the ONNX layout needs the module's state feeds (an ONNX module's graph.state_feed)")
    return feed


def _flat(sl: dict, shape: tuple[int, ...]) -> np.ndarray:
    """(batch, width) flat indexes of one ONNX feed slice into its tensor: offset + b * stride_b + h * stride_h."""
    sb, sh = sl["strides"]
    return sl["offset"] + np.arange(shape[0])[:, None] * sb + np.arange(shape[1])[None, :] * sh


def snapshot_metadata(spec: LSTMSpec, *, batch_size: int, dtype: str, module: str, checkpoint_sha256: str | None,
                      input_sha256: str | None, lengths: np.ndarray | None = None,
                      initial_state_sha256: str | None = None, layout: str = "torch",
                      feed: dict | None = None, mask: dict | None = None, embedding=None) -> dict[str, Any]:
    """The ``lstmscope.state`` entry. ``spec`` is the module's whole configuration (LSTMSpec.to_dict());
    the flat architecture fields repeat what v1 readers compare. The "onnx" layout keeps ``feed`` (tensor names,
    shapes and where each (layer, direction) slice lies in them) as ``onnx``, so the file reads back without onnx."""
    extra = {"onnx": {k: feed[k] for k in ("tensors", "slices", "layout", "nodes")}} if layout == "onnx" else {}
    if mask is not None:  # the steps the run read (StepMask.to_meta): show-state checks output where h landed
        extra["mask"] = mask
    if embedding is not None:  # token ids went through this embedding (tokens.EmbeddingRef)
        extra["embedding"] = embedding.to_dict()
    return {
        **extra,
        "layout": layout,
        "spec": spec.to_dict(),
        "format_version": FORMAT_VERSION,
        "num_layers": spec.num_layers,
        "num_directions": spec.num_directions,
        "hidden_size": spec.hidden_size,
        "proj_size": spec.proj_size,
        "input_size": spec.input_size,
        "batch_size": batch_size,
        "dtype": dtype,
        "module": module,
        "checkpoint_sha256": checkpoint_sha256,
        "input_sha256": input_sha256,
        "lengths_sha256": None if lengths is None else array_sha256(np.asarray(lengths, dtype=np.int64)),
        "initial_state_sha256": initial_state_sha256,
        "lstmscope_version": __version__,
    }


def encode_header(tensors: dict[str, tuple[str, tuple[int, ...]]], metadata: dict[str, str]) -> tuple[bytes, list[str]]:
    """The safetensors header for tensors given as name -> (numpy dtype name, shape), in name order."""
    header: dict[str, Any] = {"__metadata__": metadata}
    offset = 0
    order = sorted(tensors)
    for name in order:
        dtype, shape = tensors[name]
        nbytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
        header[name] = {"dtype": SAFETENSORS_CODES[dtype], "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    raw = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw, order


def write_snapshot(path: str | os.PathLike, tensors: dict[str, np.ndarray], meta: dict[str, Any], *,
                   force: bool = False) -> Path:
    """Write a v1 snapshot atomically. ``tensors`` must include h_n and c_n."""
    arrays = {k: np.asarray(v) for k, v in tensors.items() if v is not None}
    with SnapshotWriter(path, {k: (v.dtype.name, v.shape) for k, v in arrays.items()}, meta, force=force) as w:
        for name, a in arrays.items():
            w.put(name, a)
    return Path(path)


class SnapshotWriter:
    """A v1 snapshot written in pieces, for runs too long to hold their output: the header (so the
    layout) is fixed first, then each tensor is filled in, the output a time chunk at a time at its
    place in the file. The bytes equal what ``write_snapshot`` writes for the same content. Used as
    a context manager: the file appears (atomically) only when the block ends without an error."""

    def __init__(self, path: str | os.PathLike, layout: dict[str, tuple[str, tuple[int, ...]]],
                 meta: dict[str, Any], *, force: bool = False, metadata_key: str = METADATA_KEY):
        self.path, self.force = Path(path), force
        for k, (dtype, _) in layout.items():
            if dtype not in SNAPSHOT_NAMES:
                raise StateError(f"cannot store {k} of dtype {dtype} in a snapshot")
        self.layout = layout
        self.head, order = encode_header(layout, {metadata_key: canonical_json(meta)})
        self.offsets, at = {}, len(self.head)
        for name in order:
            dtype, shape = layout[name]
            self.offsets[name] = at
            at += int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
        self.size = at

    def __enter__(self) -> "SnapshotWriter":
        self._ctx = atomic_writer(self.path, self.force)
        self.f = self._ctx.__enter__()
        self.f.write(self.head)
        self.f.truncate(self.size)
        return self

    def __exit__(self, *exc) -> bool | None:
        return self._ctx.__exit__(*exc)

    def _bytes(self, name: str, a: np.ndarray) -> memoryview:
        a = np.ascontiguousarray(a, dtype=np.dtype(self.layout[name][0]).newbyteorder("<"))
        return memoryview(a).cast("B")

    def put(self, name: str, a: np.ndarray) -> None:
        """A whole tensor."""
        if tuple(a.shape) != tuple(self.layout[name][1]):
            raise ValueError(f"{name}: shape {a.shape} is not {self.layout[name][1]}")
        self.f.seek(self.offsets[name])
        self.f.write(self._bytes(name, a))

    def put_steps(self, name: str, start: int, chunk: np.ndarray) -> None:
        """Time steps start.. of a (batch, time, width) tensor, given as (batch, n, width)."""
        _, (batch, time, width) = self.layout[name]
        itemsize = np.dtype(self.layout[name][0]).itemsize
        for b in range(batch):
            self.f.seek(self.offsets[name] + ((b * time + start) * width) * itemsize)
            self.f.write(self._bytes(name, chunk[b]))

    def put_row_steps(self, name: str, b: int, start: int, rows: np.ndarray) -> None:
        """Steps start.. of sequence b of a (batch, time, width) tensor, given as (n, width)."""
        _, (batch, time, width) = self.layout[name]
        itemsize = np.dtype(self.layout[name][0]).itemsize
        self.f.seek(self.offsets[name] + ((b * time + start) * width) * itemsize)
        self.f.write(self._bytes(name, rows))

    def put_reversed_steps(self, name: str, start: int, chunk: np.ndarray, lengths: np.ndarray) -> None:
        """Steps start.. (``chunk`` (batch, n, width)) written with each sequence's own valid steps reversed:
        step t < lengths[b] goes to lengths[b] - 1 - t; padding steps stay where they are."""
        _, (batch, time, width) = self.layout[name]
        itemsize = np.dtype(self.layout[name][0]).itemsize
        from lstmscope.sequences import unflip_pieces

        for b in range(batch):
            row = self.offsets[name] + b * time * width * itemsize
            for lo, hi, at, rev in unflip_pieces(lengths[b], start, chunk.shape[1]):
                self.f.seek(row + at * width * itemsize)
                self.f.write(self._bytes(name, chunk[b, lo:hi][::-1] if rev else chunk[b, lo:hi]))


def _sniff(path: Path) -> str:
    """"safetensors", "npz" or "torch" (by content, lstmscope.sniff), or one StateError saying what it is."""
    from lstmscope import sniff as sn

    check_source(path, "state (.safetensors or .npz)", StateError)
    found = sn.sniff(path)
    kind = {sn.SNAPSHOT: "safetensors", sn.SAFETENSORS: "safetensors", sn.NPZ: "npz", sn.TORCH_ZIP: "torch",
            sn.TORCH_LEGACY: "torch"}.get(found.format)
    if kind is not None:
        return kind
    expected = "expected a state file (.safetensors or .npz with h_n and c_n, or Keras's h and c)"
    if found.format == sn.DAMAGED_ZIP:
        raise StateError(f"{path} is {found.description}{f' ({found.detail})' if found.detail else ''}; {expected}")
    if found.format == sn.UNKNOWN_ZIP:
        raise StateError(f"{path} is a zip archive but neither an .npz nor a torch file; {expected}")
    if found.format in sn.CHECKPOINT_FORMATS or found.format == sn.TORCHSCRIPT:
        raise StateError(f"{path} is {found.description}, a checkpoint, not a state file; give it as CHECKPOINT "
                         "(lstmscope inspect / run / export-state)")
    raise StateError(f"{path} is not a state file ({found.description}): {expected}")


def read_state_file(path: str | os.PathLike, *, allow_torch: bool = False) -> StateFile:
    """Read a v1 snapshot or a foreign state file. torch files only when ``allow_torch``. A pipe or ``-`` is
    read as a stream (lstmscope.fileio.spool)."""
    from lstmscope.fileio import spool

    path = spool(Path(path), "state", StateError)
    kind = _sniff(path)
    meta = None
    if kind == "safetensors":
        arrays, raw_meta = _read_safetensors(path)
        if raw_meta and METADATA_KEY in raw_meta:
            try:
                meta = json.loads(raw_meta[METADATA_KEY])
            except json.JSONDecodeError:
                raise StateError(f"{path}: metadata '{METADATA_KEY}' is not valid JSON") from None
            if not isinstance(meta, dict) or meta.get("format_version") != FORMAT_VERSION:
                raise StateError(f"{path}: unsupported lstmscope snapshot format_version "
                                 f"{meta.get('format_version') if isinstance(meta, dict) else meta!r}; this lstmscope reads {FORMAT_VERSION}")
            kind = "lstmscope snapshot v1"
    elif kind == "npz":
        arrays = _read_npz(path)
    else:
        if not allow_torch:
            raise StateError(f"{path} is a torch file; diff-states and show-state read safetensors/.npz only "
                             f"(torch-free). Convert it first: lstmscope import-state {path} -o state.safetensors --checkpoint CKPT")
        arrays = _read_torch_state(path)
    return _assemble(path, arrays, meta, kind)


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    """Every member, each checked against its size before anything is allocated (never pickles)."""
    import zipfile

    from lstmscope.arrays import DiskArray, npz_member

    try:
        with zipfile.ZipFile(path) as z:
            out = {}
            for info in z.infolist():
                name = info.filename[:-4]
                a = npz_member(path, z, info, f"{path.name}[{name}]", StateError)
                out[name] = a.read() if isinstance(a, DiskArray) else a
            return out
    except StateError:
        raise
    except Exception as e:  # zipfile and numpy raise many kinds
        raise StateError(f"{path}: cannot read .npz ({clean_message(e)})") from None


def _read_safetensors(path: Path) -> tuple[dict[str, np.ndarray | DiskArray], dict[str, str] | None]:
    """Tensors as DiskArrays (nothing is read yet), after the header has been checked against the file.
    A dtype numpy lacks (BF16, F8_*) is refused, whatever numpy extensions happen to be loaded (ml_dtypes,
    which onnx and Keras bring, would otherwise let the safetensors library hand such tensors over)."""
    from lstmscope.dtypes import NUMPY
    from lstmscope.safetensors_header import read_header

    layout, meta = read_header(path, StateError)
    odd = {k: dtype for k, (dtype, _, _, _) in layout.items() if dtype not in NUMPY}
    if odd:
        what = ", ".join(f"{k} is {dtype}" for k, dtype in sorted(odd.items()))
        raise StateError(f"{path}: cannot read safetensors tensors of this dtype ({what}); lstmscope reads "
                         "float16/32/64 states: save them as float32 (e.g. tensor.float())")
    return {k: DiskArray(path, begin, shape, NUMPY[dtype], error=StateError)
            for k, (dtype, shape, begin, _) in layout.items()}, meta


def _read_torch_state(path: Path) -> dict[str, np.ndarray]:
    import torch

    from lstmscope.readers.torch import torch_load
    from lstmscope.errors import CheckpointError

    try:
        obj = torch_load(path)
    except CheckpointError as e:
        raise StateError(e.message) from None
    if isinstance(obj, (tuple, list)) and len(obj) == 2 and all(isinstance(t, torch.Tensor) for t in obj):
        obj = {"h_n": obj[0], "c_n": obj[1]}
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise StateError(f"{path}: a torch state file must hold an (h, c) tuple or a dict of tensors with h_n and c_n")
    return {str(k): v.detach().float().numpy() if v.dtype == torch.bfloat16 else v.detach().numpy() for k, v in obj.items()}


def _from_keras_layout(path: Path, arrays: dict, meta: dict | None) -> dict[tuple[str, int], str]:
    """Turn Keras-layout tensors into h_n/c_n in place: a snapshot's (by its metadata), or what a Keras user
    saved by hand (``np.savez(p, h=h, c=c)``, or h_f, c_f, h_b, c_b for a Bidirectional layer). Returns each
    slice's name in the file (StateFile.slice_names); nothing when the file is not in that layout."""
    if meta and meta.get("layout") == "keras":
        try:
            spec = LSTMSpec.from_dict(meta["spec"])
        except (KeyError, TypeError, ValueError):
            raise StateError(f"{path}: a Keras-layout snapshot needs its module's spec in the metadata") from None
        names = keras_state_names(spec)
    elif "h" in arrays and "c" in arrays:
        names = [(0, "h", "c")]
    elif all(k in arrays for k in ("h_f", "c_f", "h_b", "c_b")):
        names = [(0, "h_f", "c_f"), (1, "h_b", "c_b")]
    else:
        return {}
    hs, cs = [], []
    for _, h, c in names:
        for k in (h, c):
            if k not in arrays:
                raise StateError(f"{path} lacks {k}; a Keras-layout state holds {', '.join(n for _, a, b in names for n in (a, b))}")
            if np.ndim(arrays[k]) != 2:
                raise StateError(f"{path}: {k} has shape {tuple(np.shape(arrays[k]))}; Keras states are (batch, units)")
        hs.append(np.asarray(arrays.pop(h)))
        cs.append(np.asarray(arrays.pop(c)))
    if len({a.shape[0] for a in hs + cs}) != 1:
        raise StateError(f"{path}: the Keras states disagree on the batch size "
                         f"({', '.join(str(a.shape) for a in hs + cs)})")
    try:
        arrays["h_n"], arrays["c_n"] = np.stack(hs), np.stack(cs)
    except ValueError:
        raise StateError(f"{path}: the Keras states of different layers differ in width; lstmscope reads stacks of "
                         "equal units") from None
    return {key: name for i, h, c in names for key, name in ((("h", i), h), (("c", i), c))}


def _from_onnx_layout(path: Path, arrays: dict, meta: dict) -> dict[tuple[str, int], str]:
    """Turn an ONNX-layout snapshot's graph feeds into h_n/c_n in place, by the slices its metadata lists.
    Returns each slice's place in the file (_slice_place): ``initial_h[1]``, ``initial_h[:, 1]``, or the bare name."""
    try:
        spec = LSTMSpec.from_dict(meta["spec"])
        feed = _need_feed(meta.get("onnx"))
        batch = int(meta["batch_size"])
    except (KeyError, TypeError, ValueError, StateError):
        raise StateError(f"{path}: an ONNX-layout snapshot needs its module's spec and state feeds in the "
                         "metadata") from None
    for name, shape in feed["tensors"].items():
        if name not in arrays:
            raise StateError(f"{path} lacks {name}; this ONNX-layout snapshot holds {', '.join(feed['tensors'])}")
        if tuple(np.shape(arrays[name])) != tuple(shape):
            raise StateError(f"{path}: {name} has shape {tuple(np.shape(arrays[name]))}; its metadata says {tuple(shape)}")
    flat = {name: np.asarray(arrays[name]).reshape(-1) for name in feed["tensors"]}
    ld = spec.num_layers * spec.num_directions
    dtype = next(iter(flat.values())).dtype
    h = np.zeros((ld, batch, spec.output_size), dtype=dtype)  # (num_layers * num_directions, batch, out)
    c = np.zeros((ld, batch, spec.hidden_size), dtype=dtype)  # (num_layers * num_directions, batch, hidden)
    try:
        for sl in feed["slices"]:
            dst = h if sl["which"] == "h" else c
            dst[sl["index"]] = flat[sl["tensor"]][_flat(sl, dst.shape[1:])]
    except (KeyError, IndexError, TypeError, ValueError):
        raise StateError(f"{path}: the ONNX state feeds in its metadata do not match its tensors") from None
    for name in feed["tensors"]:
        arrays.pop(name)
    arrays["h_n"], arrays["c_n"] = h, c
    return {(sl["which"], sl["index"]): _slice_place(sl, feed["tensors"][sl["tensor"]], (h if sl["which"] == "h" else c).shape[1:])
            for sl in feed["slices"]}


def _slice_place(sl: dict, shape, dims: tuple[int, int]) -> str:
    """Where one slice of ``dims`` (batch, width) lies in its feed, in numpy's terms: ``initial_h`` when it is
    the whole tensor, ``initial_h[1]`` for (directions, batch, hidden), ``initial_h[:, 1]`` for (batch,
    directions, hidden); the bare name when that cannot be told."""
    shape = [int(v) for v in shape]
    steps = [int(np.prod(shape[k + 1:], dtype=np.int64)) for k in range(len(shape))]  # row-major strides
    left = list(range(len(shape)))
    for size, stride in zip(dims[::-1], sl["strides"][::-1]):  # width's axis, then batch's
        match = [k for k in left if shape[k] == size and (steps[k] == stride or size == 1)]
        if not match:
            return sl["tensor"]
        left.remove(match[-1] if size == 1 else match[0])
    free = [k for k in left if shape[k] > 1] or left[-1:]  # one direction: (1, batch, hidden) is name[0]
    if len(free) != 1:
        return sl["tensor"]
    k = free[0]
    return f"{sl['tensor']}[{':, ' * k}{(sl['offset'] // steps[k]) % shape[k]}]"


def _assemble(path: Path, arrays: dict[str, np.ndarray], meta, kind: str) -> StateFile:
    stored = {k: tuple(np.shape(v)) for k, v in arrays.items()}
    layout, slice_names = "torch", {}
    if meta and meta.get("layout") == "onnx":
        slice_names = _from_onnx_layout(path, arrays, meta)
        layout = "onnx"
    elif "h_n" not in arrays and "h0" not in arrays:
        slice_names = _from_keras_layout(path, arrays, meta)
        layout = "keras" if "h_n" in arrays else "torch"
    for h_key, c_key in STATE_NAMES:
        if h_key in arrays and c_key in arrays:
            break
    else:
        raise StateError(_not_a_state(path, stored))
    h, c = np.asarray(arrays.pop(h_key)), np.asarray(arrays.pop(c_key))  # small: (layers * directions, batch, width)
    for name, a in ((h_key, h), (c_key, c)):
        if a.ndim != 3:
            raise StateError(f"{path}: {name} has shape {tuple(a.shape)}; expected 3-D (num_layers * num_directions, batch, hidden)")
        if a.dtype.kind != "f":
            raise StateError(f"{path}: {name} is {a.dtype}; expected floating point")
    if h.shape[:2] != c.shape[:2]:
        raise StateError(f"{path}: {h_key} {tuple(h.shape)} and {c_key} {tuple(c.shape)} disagree on "
                         "(num_layers * num_directions, batch)")
    output = arrays.pop("output", None)
    lengths = arrays.pop("lengths", None)
    if lengths is not None:
        lengths = np.asarray(lengths)
        whole = lengths.dtype.kind in "iu" or (lengths.dtype.kind == "f" and bool(np.all(np.isfinite(lengths)))
                                              and bool(np.all(lengths == np.round(lengths))))
        if lengths.ndim != 1 or not whole or (lengths.size and (lengths.min() < 1 or lengths.max() > 2**62)):
            raise StateError(f"{path}: lengths must be a 1-D array of whole numbers >= 1, found {lengths.dtype} "
                             f"{tuple(lengths.shape)}")
        lengths = lengths.astype(np.int64)
    return StateFile(path, h, c, output, lengths, meta, kind, arrays, layout, stored, slice_names)


def _not_a_state(path: Path, stored: dict[str, tuple[int, ...]]) -> str:
    """Why a file with no h/c pair is not a state file: a checkpoint's weights, said as such, or what it holds
    (the first few names)."""
    from lstmscope.readers.base import TensorInfo
    from lstmscope.readers.state_dict_names import find_lstm_modules

    try:
        found = find_lstm_modules({k: TensorInfo(v, "float32") for k, v in stored.items()}, path.name)
    except LstmscopeError:
        found = []
    if found:
        names = ", ".join(m.display_name for m in found[:3])
        return (f"{path} holds an LSTM's weights ({names}): it is a checkpoint, not a state file; give it as "
                f"CHECKPOINT (lstmscope inspect {path.name})")
    names = sorted(stored)
    shown = ", ".join(names[:6]) + (f" and {len(names) - 6} more" if len(names) > 6 else "")
    return (f"{path} holds {shown or 'no tensors'}, no h/c pair; a state file needs h_n and c_n (or h0 and c0) in "
            "PyTorch's layout (num_layers * num_directions, batch, hidden), or Keras's h and c (batch, units)")


def fit_state(state: StateFile, module: str, spec: LSTMSpec, batch: int, *, broadcast: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(h0, c0) for a run of ``spec`` on ``batch`` sequences, or one StateError listing every mismatch."""
    problems = []
    ld = spec.num_layers * spec.num_directions
    p, hdim = spec.output_size, spec.hidden_size
    m = state.meta or {}
    keras = state.layout == "keras" or spec.framework == "keras"  # say it in Keras's terms
    width_name = "units" if spec.framework == "keras" else "proj_size" if spec.proj_size else "hidden_size"
    for field_name, want in (("num_layers", spec.num_layers), ("num_directions", spec.num_directions),
                             ("hidden_size", hdim), ("proj_size", spec.proj_size), ("input_size", spec.input_size)):
        if field_name in m and m[field_name] != want:
            problems.append(f"{field_name} is {m[field_name]}, the model has {want}")
    if state.h_n.shape[0] != ld:
        have = state.h_n.shape[0]
        if keras:
            problems.append(f"the state holds {have} [h, c] pair{'s' if have != 1 else ''}, the module needs {ld} "
                            f"({_count(spec.num_layers, 'layer')} x {_count(spec.num_directions, 'direction')})")
            if have == spec.num_directions and spec.num_layers > 1 and spec.names:
                problems.append("a one-layer state seeds one layer: pass --module "
                                + " or --module ".join(spec.names))
        else:
            problems.append(f"h_n has {have} (layer, direction) slice{'s' if have != 1 else ''}, the model needs {ld} "
                            f"({_count(spec.num_layers, 'layer')} x {_count(spec.num_directions, 'direction')})")
    h_name, c_name = ("h", "c") if keras else ("h_n", "c_n")
    if state.h_n.shape[2] != p:
        problems.append(f"{h_name} is {state.h_n.shape[2]} wide, the model needs {p} ({width_name})")
    if state.c_n.shape[2] != hdim:
        problems.append(f"{c_name} is {state.c_n.shape[2]} wide, the model needs "
                        f"{'units' if spec.framework == 'keras' else 'hidden_size'} {hdim}")
    sb = state.h_n.shape[1]
    if sb != batch and not (sb == 1 and broadcast):
        hint = " (pass --broadcast-state to use one state for every sequence)" if sb == 1 else ""
        problems.append(f"the state has batch {sb}, the input has {batch} sequences{hint}")
    if problems:
        raise StateError(f"{state.path} does not fit module '{module}': "
                         + "; ".join(problems))
    for name, a in (("h_n", state.h_n), ("c_n", state.c_n)):
        if not np.all(np.isfinite(a)):
            raise StateError(f"{state.path}: {name} holds {int(a.size - np.count_nonzero(np.isfinite(a)))} NaN/Inf values; "
                             "refusing to seed a run with them")
    h0, c0 = state.h_n, state.c_n
    if sb != batch:
        h0 = np.broadcast_to(h0, (ld, batch, p))
        c0 = np.broadcast_to(c0, (ld, batch, hdim))
    return h0, c0


def _count(n: int, word: str) -> str:
    return f"{n} {word}{'s' if n != 1 else ''}"


def spec_from_state(state: StateFile, num_directions: int | None = None) -> LSTMSpec:
    """The LSTM shape a state file describes: from its metadata, else from its tensors' shapes
    (then ``input_size`` is unknown, 0, and directions come from ``num_directions`` or default to 1)."""
    m = state.meta
    if m:
        if isinstance(m.get("spec"), dict):
            try:
                return LSTMSpec.from_dict(m["spec"])
            except (KeyError, TypeError, ValueError):
                pass  # a hand-edited spec: the flat v1 fields below still describe the shapes
        return LSTMSpec(m["input_size"], m["hidden_size"], m["proj_size"], m["num_layers"], m["num_directions"] == 2,
                        True, m.get("dtype", str(state.h_n.dtype)))
    d = num_directions or 1
    ld, _, p = state.h_n.shape
    if d not in (1, 2) or ld % d:
        raise StateError(f"{state.path}: h_n has {ld} layer*direction slices, which --num-directions {d} does not divide")
    h = state.c_n.shape[2]
    return LSTMSpec(0, h, 0 if p == h else p, ld // d, d == 2, True, str(state.h_n.dtype))


def state_view(state: StateFile, *, num_directions: int | None = None, batch_index: int | None = None,
               units: tuple | None = None):
    """The per-(layer, direction) view ``show-state`` prints; the last layer is checked against
    ``output`` when the file holds it (at each sequence's last step, from ``lengths``)."""
    from lstmscope.report import build_view

    spec = spec_from_state(state, num_directions)
    batch = state.h_n.shape[1]
    time = 0
    last = np.zeros(batch, dtype=np.int64)
    layer_outputs = None
    first = None
    mask = (state.meta or {}).get("mask")
    if state.output is not None:
        time = state.output.shape[1]
        last = state.lengths - 1 if state.lengths is not None else np.full(batch, time - 1, dtype=np.int64)
        layer_outputs = {spec.num_layers - 1: state.output}
        if isinstance(mask, dict) and len(mask.get("last_valid") or ()) == batch:
            # a masked run: each direction's state is where its last step read landed (lstmscope.masking)
            last = np.asarray(mask["last_valid"], dtype=np.int64)
            first = np.asarray(mask["first_valid"], dtype=np.int64)
            if spec.go_backwards and spec.framework == "keras":  # y in processing order over the reversed axis
                last = np.where(first >= 0, time - 1 - first, -1)
    view = build_view(spec, state.h_n, state.c_n, last_steps=last, layout="batch_first", time=time,
                      layer_outputs=layer_outputs, batch_index=batch_index, units=units, first_steps=first)
    view.masked = first is not None
    onnx = (state.meta or {}).get("onnx")
    if isinstance(onnx, dict) and onnx.get("layout") in (0, 1):
        view.graph_layout = onnx["layout"]
    return view


@dataclass
class ImportResult:
    """What ``import-state`` wrote."""

    path: Path
    source: str
    source_kind: str  # the state file's kind ("npz", "safetensors", "torch", "lstmscope snapshot v1")
    module: str  # the module's display name
    tensors: dict[str, tuple[int, ...]]  # the state tensors written -> shape
    meta: dict[str, Any]
    notes: list[str] = field(default_factory=list)  # one-line remarks for stderr


def import_state(file: str | os.PathLike, output: str | os.PathLike, checkpoint: str | os.PathLike, *,
                 module: str | None = None, layout: str | None = None, force: bool = False) -> ImportResult:
    """A foreign state file (PyTorch's or Keras's layout, or a snapshot of any layout) as an lstmscope v1 snapshot
    of ``checkpoint``'s module, in ``layout`` (default: the module's framework's)."""
    from lstmscope.fileio import check_safetensors_name, check_target, refuse_overwriting_sources
    from lstmscope.readers import read_checkpoint

    output = Path(output)
    refuse_overwriting_sources(output, file, checkpoint)
    name_note = check_safetensors_name(output)
    check_target(output, force)
    ck = read_checkpoint(checkpoint)
    mod = ck.module(module)
    state = read_state_file(file, allow_torch=True)
    batch = state.h_n.shape[1]
    h0, c0 = fit_state(state, mod.display_name, mod.spec, batch)
    kind = check_layout(layout or default_layout(mod.spec), mod.spec)
    feed = mod.graph.state_feed(batch) if kind == "onnx" else None
    meta = snapshot_metadata(mod.spec, batch_size=batch, dtype=str(h0.dtype), module=mod.prefix,
                             checkpoint_sha256=ck.sha256, input_sha256=None, lengths=state.lengths, layout=kind,
                             feed=feed)
    states = state_tensors(mod.spec, h0, c0, kind, feed)
    write_snapshot(output, {**states, "output": state.output, "lengths": state.lengths}, meta, force=force)
    return ImportResult(output, str(file), state.kind, mod.display_name,
                        {k: tuple(np.shape(v)) for k, v in states.items()}, meta, [name_note] if name_note else [])
