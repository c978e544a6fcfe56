"""Trace files: every time step of every layer and direction, as safetensors. numpy only.

A trace file holds one tensor per (layer, direction, quantity), each (batch, time, width):

- PyTorch modules: ``layer{L}/{forward|backward}/{q}``, e.g. ``layer0/forward/h``, ``layer1/backward/f``
  (L counts from 0, as in ``weight_ih_l{L}``).
- Keras modules: ``{layer name}/{forward|backward}/{q}``, e.g. ``encoder/forward/h`` (the name is the Keras
  layer's own; a plain LSTM layer has only ``forward``, a Bidirectional both).

``q`` is one of h, c, i, f, g, o: h_t, c_t and the gates after their activations (input, forget, the
candidate g (Keras's c~), output). h is proj_size wide on a projected LSTM, everything else hidden_size.
``lengths`` (int64, (batch,)) is stored too when the input has lengths; past each sequence's length
every value is NaN. Steps are in input-time order (step t is the state after reading x[t], the backward
direction included) unless the metadata's ``time_order`` says ``processing`` (each direction in the order it
ran: the backward direction's valid steps reversed per sequence).

Exactly one metadata entry, ``lstmscope.trace``, holds canonical JSON (see ``trace_metadata``). The bytes
are a pure function of the content, as for snapshots (snapshot.encode_header), and the file is written in
pieces: the header first, then each block at its place, atomically.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lstmscope import __version__
from lstmscope.arrays import DiskArray
from lstmscope.errors import StateError, UsageError
from lstmscope.snapshot import SnapshotWriter, array_sha256
from lstmscope.spec import LSTMSpec

FORMAT_VERSION = 1
METADATA_KEY = "lstmscope.trace"
SCHEMA = "lstmscope.trace/1"
QUANTITIES = ("h", "c", "i", "f", "g", "o")  # as engine.trace.QUANTITIES (kept here so this module needs no torch)
DIRECTIONS = ("forward", "backward")
ORDERS = ("input", "processing")
PADDING = "NaN past each sequence's length"


def parse_quantities(text: str | None) -> tuple[str, ...]:
    """``"h,c,f"`` -> ("h", "c", "f"), in the order given, once each; None: all. UsageError for a bad name."""
    if text is None:
        return QUANTITIES
    picked = tuple(dict.fromkeys(q.strip() for q in text.split(",") if q.strip()))
    bad = [q for q in picked if q not in QUANTITIES]
    if bad or not picked:
        what = (f"--quantities {text}: {', '.join(map(repr, bad))} is not a quantity lstmscope traces" if bad
                else f"--quantities {text!r} names no quantity")
        raise UsageError(f"{what}; pick from {','.join(QUANTITIES)} (e.g. --quantities h,c,f)")
    return picked


def check_order(order: str) -> str:
    if order not in ORDERS:
        raise UsageError(f"--order {order}: choose input or processing")
    return order


def layer_name(spec: LSTMSpec, layer: int) -> str:
    if spec.framework == "keras" and layer < len(spec.names):
        return spec.names[layer]
    return f"layer{layer}"


def tensor_name(spec: LSTMSpec, layer: int, direction: int, quantity: str) -> str:
    """``layer{L}/{forward|backward}/{q}`` (PyTorch) or ``{keras layer name}/{forward|backward}/{q}`` (Keras)."""
    return f"{layer_name(spec, layer)}/{DIRECTIONS[direction]}/{quantity}"


def quantity_width(spec: LSTMSpec, quantity: str) -> int:
    """h is proj_size wide on a projected LSTM; c and the gates are hidden_size wide."""
    return spec.output_size if quantity == "h" else spec.hidden_size


def trace_layout(spec: LSTMSpec, batch: int, time: int, dtype: str, quantities: tuple[str, ...],
                 with_lengths: bool) -> dict[str, tuple[str, tuple[int, ...]]]:
    """Every tensor a trace of ``spec`` holds: name -> (numpy dtype name, shape)."""
    out: dict[str, tuple[str, tuple[int, ...]]] = {}
    for layer in range(spec.num_layers):
        for d in range(spec.num_directions):
            for q in quantities:
                out[tensor_name(spec, layer, d, q)] = (dtype, (batch, time, quantity_width(spec, q)))  # (B, T, W)
    if with_lengths:
        out["lengths"] = ("int64", (batch,))
    return out


def trace_metadata(spec: LSTMSpec, *, dtype: str, module: str, checkpoint_sha256: str | None,
                   input_sha256: str | None, lengths: np.ndarray | None, initial_state_sha256: str | None,
                   time_order: str, quantities: tuple[str, ...]) -> dict[str, Any]:
    """The ``lstmscope.trace`` entry."""
    return {
        "format_version": FORMAT_VERSION,
        "module": module,
        "spec": spec.to_dict(),
        "dtype": dtype,
        "checkpoint_sha256": checkpoint_sha256,
        "input_sha256": input_sha256,
        "lengths_sha256": None if lengths is None else array_sha256(np.asarray(lengths, dtype=np.int64)),
        "initial_state_sha256": initial_state_sha256,
        "time_order": time_order,
        "quantities": list(quantities),
        "padding": PADDING,
        "lstmscope_version": __version__,
    }


class TraceWriter(SnapshotWriter):
    """SnapshotWriter's machinery (header fixed first, atomic, deterministic) under the ``lstmscope.trace``
    metadata key (``put_reversed_steps`` writes blocks stored reversed per sequence)."""

    def __init__(self, path: str | os.PathLike, layout: dict[str, tuple[str, tuple[int, ...]]],
                 meta: dict[str, Any], *, force: bool = False):
        super().__init__(path, layout, meta, force=force, metadata_key=METADATA_KEY)


def trace_document(path: Path | None, sha256: str | None, size: int | None, meta: dict[str, Any],
                   layout: dict[str, tuple[str, tuple[int, ...]]], summary=None, *, chunk_size: int | None = None,
                   threads: int | None = None) -> dict[str, Any]:
    """The ``--json`` document of ``lstmscope trace``; ``summary`` is a tracestats.TraceStats (its to_dict());
    ``chunk_size``: steps per chunk when the trace was streamed (None: one whole run). ``path``, ``sha256`` and
    ``size`` are None when the trace was not kept (no -o)."""
    return {
        "schema": SCHEMA,
        "path": None if path is None else str(path),
        "sha256": sha256,
        "bytes": size,
        "chunk_size": chunk_size,
        "threads": threads,
        "metadata": meta,
        "tensors": {name: list(shape) for name, (_, shape) in sorted(layout.items())},
        "summary": None if summary is None else summary.to_dict(),
    }


@dataclass
class TraceFile:
    """A trace read from disk: its metadata and its tensors, none of them read yet."""

    path: Path
    meta: dict[str, Any]  # the lstmscope.trace entry (see trace_metadata)
    spec: LSTMSpec
    tensors: dict[str, DiskArray]  # name -> (batch, time, width), as trace_layout names them
    lengths: np.ndarray | None  # (batch,) int64, when the input had lengths
    valid: np.ndarray | None = None  # (batch, time) bool, when a mask skipped steps (they hold NaN)

    @property
    def batch(self) -> int:
        return next(iter(self.tensors.values())).shape[0]

    @property
    def time(self) -> int:
        return next(iter(self.tensors.values())).shape[1]

    @property
    def quantities(self) -> tuple[str, ...]:
        return tuple(self.meta["quantities"])

    @property
    def time_order(self) -> str:
        return self.meta["time_order"]

    def name(self, layer: int, direction: int, quantity: str) -> str:
        return tensor_name(self.spec, layer, direction, quantity)

    def keys(self) -> list[tuple[int, int, str]]:
        """Every (layer, direction, quantity) the file holds, in layer, direction, quantity order."""
        return [(layer, d, q) for layer in range(self.spec.num_layers) for d in range(self.spec.num_directions)
                for q in self.quantities]


def trace_meta(raw: dict[str, str] | None) -> dict[str, Any] | None:
    """The parsed ``lstmscope.trace`` entry of a safetensors header's metadata, or None when it has none."""
    if not raw or METADATA_KEY not in raw:
        return None
    try:
        meta = json.loads(raw[METADATA_KEY])
    except json.JSONDecodeError:
        raise StateError(f"metadata '{METADATA_KEY}' is not valid JSON") from None
    if not isinstance(meta, dict) or meta.get("format_version") != FORMAT_VERSION:
        got = meta.get("format_version") if isinstance(meta, dict) else meta
        raise StateError(f"unsupported lstmscope trace format_version {got!r}; this lstmscope reads {FORMAT_VERSION}")
    return meta


def is_trace(path: str | Path) -> bool:
    """True when ``path`` is a safetensors file carrying an ``lstmscope.trace`` metadata entry (by content)."""
    from lstmscope import sniff as sn
    from lstmscope.safetensors_header import read_header

    from lstmscope.fileio import spool

    path = spool(Path(path), "state", StateError)
    try:
        if not path.is_file() or sn.sniff(path).format != sn.SAFETENSORS:
            return False
    except OSError:
        return False  # the state reader says what is wrong with it
    _, raw = read_header(path, StateError)
    return bool(raw) and METADATA_KEY in raw


def read_trace(path: str | os.PathLike) -> TraceFile:
    """A trace file lstmscope wrote (``lstmscope trace -o``), checked against its own metadata; StateError
    for anything else, saying what it is."""
    from lstmscope.dtypes import NUMPY
    from lstmscope.fileio import check_source, spool
    from lstmscope.safetensors_header import read_header

    path = spool(Path(path), "trace", StateError)
    check_source(path, "trace (.safetensors)", StateError)
    layout, raw = read_header(path, StateError)
    try:
        meta = trace_meta(raw)
    except StateError as e:
        raise StateError(f"{path}: {e.message}") from None
    if meta is None:
        raise StateError(f"{path} is not an lstmscope trace (no '{METADATA_KEY}' metadata); write one with "
                         "lstmscope trace CHECKPOINT INPUT -o TRACE.safetensors")
    try:
        spec = LSTMSpec.from_dict(meta["spec"])
        quantities = parse_quantities(",".join(meta["quantities"]))
        check_order(meta["time_order"])
    except (KeyError, TypeError, ValueError, UsageError) as e:
        raise StateError(f"{path}: the trace metadata is incomplete or invalid ({e})") from None
    tensors: dict[str, DiskArray] = {}
    lengths = valid = None
    for name, (dtype, shape, begin, _) in layout.items():
        if dtype not in NUMPY:
            raise StateError(f"{path}: tensor {name} is {dtype}; a trace holds float16/32/64 tensors")
        a = DiskArray(path, begin, tuple(shape), NUMPY[dtype], error=StateError)
        if name == "lengths":
            lengths = a.read().astype(np.int64).reshape(-1)
        elif name == "valid":  # (batch, time) 1 where the LSTM read the step, 0 where a mask skipped it
            valid = a.read().astype(bool)
        else:
            tensors[name] = a
    expected = {tensor_name(spec, layer, d, q) for layer in range(spec.num_layers)
                for d in range(spec.num_directions) for q in quantities}
    if set(tensors) != expected:
        missing, extra = sorted(expected - set(tensors)), sorted(set(tensors) - expected)
        raise StateError(f"{path}: the tensors do not match the trace metadata (missing: {', '.join(missing) or '-'}; "
                         f"unexpected: {', '.join(extra) or '-'})")
    shapes = {a.shape[:2] for a in tensors.values()}
    if len(shapes) != 1 or any(a.ndim != 3 or a.shape[2] != quantity_width(spec, name.rsplit("/", 1)[1])
                               for name, a in tensors.items()):
        raise StateError(f"{path}: the trace tensors disagree on (batch, time) or have the wrong width for the spec")
    batch, time = shapes.pop()
    if lengths is not None and (lengths.shape != (batch,) or lengths.min(initial=1) < 1 or lengths.max(initial=1) > time):
        raise StateError(f"{path}: lengths {lengths.tolist()} do not fit (batch {batch}, time {time})")
    if valid is not None and valid.shape != (batch, time):
        raise StateError(f"{path}: valid {valid.shape} does not fit (batch {batch}, time {time})")
    return TraceFile(path, meta, spec, tensors, lengths, valid)
