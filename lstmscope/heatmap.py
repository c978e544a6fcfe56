"""Heatmaps of a trace: one (layer, direction, sequence, quantity) as units by time. numpy only.

Two steps, so that bad options are refused before anything runs:

1. :class:`HeatmapRequest` holds the options as typed (``--heatmap``, ``--layer``, ``--direction``,
   ``--batch-index``, ``--units``, ``--steps``) and :meth:`HeatmapRequest.resolve` checks them against
   the module's spec, the batch, the number of steps and the traced quantities (all known once the
   checkpoint and input are read), giving a :class:`Selection` or a UsageError naming the valid range.
2. :func:`heatmap_grid` reads that selection from a written trace and mean-pools it into a
   :class:`Grid` of at most ``max_rows`` by ``max_cols`` cells.

Choices:

- **Defaults**: the last layer, the forward direction, sequence 0, every unit, every step. ``--layer``
  takes an index (negative counts from the end) or, for Keras modules, a layer name; ``--direction``
  takes forward/backward (fwd/bwd) or 0/1; ``--batch-index`` counts from the end when negative.
- **Ranges** ``A:B`` are Python slices (B exclusive, either side may be left out, negative counts from
  the end) or one index ``A``; unlike a Python slice, a range that reaches outside the quantity or is
  empty is an error, never silently clipped. h is ``output_size`` wide (proj_size on a projected LSTM),
  c and the gates ``hidden_size`` wide.
- **Reading**: only the selected sequence is read (its rows are contiguous in the file), in blocks of
  about :data:`BLOCK_BYTES`, accumulating float64 sums and counts per cell, so memory stays flat however
  long the trace is. Steps past the sequence's length are padding and are not read at all.
- **Pooling**: a cell is the mean of the values it covers (NaN padding left out). Steps are pooled by
  ``ceil(steps / max_cols)`` per column, units by ``ceil(units / max_rows)`` per row; the last column
  (row) covers what is left and may be narrower. A cell with no value at all (padding only) is NaN.
- **Scale** (the colour range): a quantity whose activation bounds it gets that fixed range, so
  pictures of different layers and runs compare: i, f, o with sigmoid or hard_sigmoid gates 0..1; g
  with a tanh or softsign cell -1..1, and h likewise when it is o * act(c) with such gates (not on a
  projected LSTM: W_hr makes h unbounded). Anything else (c, relu cells, projected h) takes the cells
  drawn: symmetric ±max|cell| when any cell is negative, else 0..max; 0..1 when every cell is NaN or 0.
  Values outside the scale (only possible for unusual cells) are drawn at its ends.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from lstmscope.errors import UsageError
from lstmscope.report import resolve_span
from lstmscope.spec import LSTMSpec
from lstmscope.tracefile import DIRECTIONS, QUANTITIES, layer_name, quantity_width

BLOCK_BYTES = 1 << 20  # one read of the selected sequence holds about this much (float64 temporaries: a few times it)
QUANTITY_WORDS = {"h": "hidden state h_t", "c": "cell state c_t", "i": "input gate i_t", "f": "forget gate f_t",
                  "g": "candidate g_t", "o": "output gate o_t"}
UNIT_RANGE = ("sigmoid", "hard_sigmoid")  # activations whose values lie in [0, 1]
SIGNED_UNIT_RANGE = ("tanh", "softsign")  # activations whose values lie in [-1, 1]
SEQUENTIAL_CMAP = "viridis"  # matplotlib colormap names (plot.py uses them; render.py approximates them)
DIVERGING_CMAP = "RdBu_r"
NARROWING = ("--layer", "--direction", "--batch-index", "--units", "--steps")


@dataclass(frozen=True)
class Selection:
    """One heatmap's data: which tensor, which sequence, which units and steps (stop exclusive)."""

    quantity: str  # one of QUANTITIES
    layer: int  # 0 .. num_layers - 1
    direction: int  # 0 forward, 1 backward
    batch_index: int  # 0 .. batch - 1
    units: tuple[int, int]  # (start, stop) within the quantity's width
    steps: tuple[int, int]  # (start, stop) within the trace's time

    @property
    def direction_name(self) -> str:
        return DIRECTIONS[self.direction]


@dataclass(frozen=True)
class HeatmapRequest:
    """The heatmap options as given on the command line (None: not given)."""

    quantity: str | None = None  # --heatmap
    layer: str | None = None  # --layer: an index or a Keras layer name
    direction: str | None = None  # --direction
    batch_index: int | None = None  # --batch-index
    units: tuple | None = None  # --units A:B, as lstmscope.options.parse_span gives it
    steps: tuple | None = None  # --steps A:B, likewise

    @property
    def narrowing(self) -> list[str]:
        """The options given that narrow a picture, by their flag."""
        given = (self.layer, self.direction, self.batch_index, self.units, self.steps)
        return [flag for flag, v in zip(NARROWING, given) if v is not None]

    def check_used(self, png: bool) -> None:
        """Narrowing options need something to narrow: --heatmap or --png."""
        if self.quantity is None and not png and self.narrowing:
            verb = "narrows" if len(self.narrowing) == 1 else "narrow"
            raise UsageError(f"{', '.join(self.narrowing)} only {verb} a picture; add --heatmap h|c|i|f|g|o "
                             "(a terminal heatmap) or --png FILE")

    def resolve(self, spec: LSTMSpec, batch: int, time: int, quantities: tuple[str, ...]) -> Selection:
        """The selection these options make in a trace of ``spec`` (batch, time, ``quantities`` traced);
        UsageError naming the valid range for anything outside it."""
        q = self.quantity
        if q is None:  # --png alone: h when traced, else the first quantity traced
            q = "h" if "h" in quantities else quantities[0]
        elif q not in QUANTITIES:
            raise UsageError(f"--heatmap {q} is not a quantity lstmscope traces; pick one of {', '.join(QUANTITIES)} "
                             f"({', '.join(f'{k} {w}' for k, w in QUANTITY_WORDS.items())})")
        elif q not in quantities:
            raise UsageError(f"--heatmap {q}: {q} is not in this trace (--quantities {','.join(quantities)}); "
                             f"add it to --quantities or pick one of {', '.join(quantities)}")
        layer = _layer(self.layer, spec)
        direction = _direction(self.direction, spec)
        b = 0 if self.batch_index is None else self.batch_index
        if not -batch <= b < batch:
            raise UsageError(f"--batch-index {b} is out of range; the input has {batch} sequence"
                             f"{'s' if batch != 1 else ''}: give 0..{batch - 1} (negative counts from the end)")
        width = quantity_width(spec, q)
        if q == "h" and spec.proj_size:
            what = f"h of this module is {width} wide (proj_size)"
        else:
            size = "units" if spec.framework == "keras" else "hidden_size"
            what = f"this module has {width} units ({size})" + ("" if q == "h" else f" in {q}")
        units = resolve_span(self.units, width, "--units", what)
        steps = resolve_span(self.steps, time, "--steps", f"the input has {time} step{'s' if time != 1 else ''}")
        return Selection(q, layer, direction, b % batch, units, steps)


def _layer(text: str | None, spec: LSTMSpec) -> int:
    n = spec.num_layers
    if text is None:
        return n - 1
    names = [layer_name(spec, i) for i in range(n)] if spec.framework == "keras" else []
    if text in names:
        return names.index(text)
    try:
        layer = int(text)
    except ValueError:
        layer = None
    if layer is None or not -n <= layer < n:
        also = f", or a layer name: {', '.join(names)}" if names else ""
        raise UsageError(f"--layer {text}: this module has {n} layer{'s' if n != 1 else ''}; give 0..{n - 1} "
                         f"(negative counts from the end{also})")
    return layer % n


def _direction(text: str | None, spec: LSTMSpec) -> int:
    if text is None:
        return 0
    words = {"forward": 0, "fwd": 0, "0": 0, "backward": 1, "bwd": 1, "1": 1}
    d = words.get(text.strip().lower())
    if d is None:
        raise UsageError(f"--direction {text}: choose forward or backward (or 0 or 1)")
    if d >= spec.num_directions:
        raise UsageError(f"--direction {text}: this module is unidirectional; it has only the forward direction")
    return d


@dataclass(frozen=True)
class Scale:
    """The value range colours span. ``lo < hi``; ``signed`` scales are symmetric about 0."""

    lo: float
    hi: float
    fixed: bool  # True: set by the activation's range; False: by the cells drawn
    reason: str  # a few words: "sigmoid range", "±max|c| of the cells drawn", ...

    @property
    def signed(self) -> bool:
        return self.lo < 0

    @property
    def cmap(self) -> str:
        """The matplotlib colormap name: diverging for signed scales, sequential otherwise."""
        return DIVERGING_CMAP if self.signed else SEQUENTIAL_CMAP

    def position(self, values: np.ndarray) -> np.ndarray:
        """Values mapped to 0..1 on the scale (clipped); NaN stays NaN."""
        with np.errstate(invalid="ignore"):
            return np.clip((np.asarray(values, dtype=np.float64) - self.lo) / (self.hi - self.lo), 0.0, 1.0)


def fixed_scale(spec: LSTMSpec, quantity: str) -> Scale | None:
    """The activation's own range for ``quantity``, or None when it is unbounded (see the module docstring)."""
    gate, cell, out = spec.gate_activation.name, spec.cell_activation.name, spec.output_activation.name
    if quantity in ("i", "f", "o"):
        return Scale(0.0, 1.0, True, f"{gate} range") if gate in UNIT_RANGE else None
    if quantity == "g":
        return Scale(-1.0, 1.0, True, f"{cell} range") if cell in SIGNED_UNIT_RANGE else None
    if quantity == "h" and not spec.proj_size and out in SIGNED_UNIT_RANGE and gate in UNIT_RANGE:
        return Scale(-1.0, 1.0, True, f"o * {out}(c) range")
    return None


def data_scale(cells: np.ndarray, quantity: str) -> Scale:
    """±max|cell| when any cell is negative, else 0..max (0..1 when there is nothing to scale by)."""
    finite = cells[np.isfinite(cells)]
    top = float(np.abs(finite).max()) if finite.size else 0.0
    if top == 0.0:
        return Scale(0.0, 1.0, False, "no nonzero values drawn")
    if finite.min() < 0:
        return Scale(-top, top, False, f"±max|{quantity}| of the cells drawn")
    return Scale(0.0, top, False, f"0..max {quantity} of the cells drawn")


@dataclass
class Grid:
    """A pooled heatmap: ``values[r, c]`` is the mean over units ``unit_edges[r]:unit_edges[r+1]`` and steps
    ``step_edges[c]:step_edges[c+1]``; NaN where those hold only padding."""

    selection: Selection
    values: np.ndarray  # (rows, cols) float64
    unit_edges: np.ndarray  # (rows + 1,) int64: row r covers units unit_edges[r] .. unit_edges[r+1] - 1
    step_edges: np.ndarray  # (cols + 1,) int64: column c covers steps step_edges[c] .. step_edges[c+1] - 1
    units_per_row: int  # pooling factor over units (the last row may cover fewer)
    steps_per_col: int  # pooling factor over time (the last column may cover fewer)
    scale: Scale
    layer_name: str  # as the trace names the layer: layer1, or the Keras layer's name
    length: int  # valid steps of the selected sequence (the trace's time when it has no lengths)
    time: int  # steps in the trace
    width: int  # the quantity's width (units)
    time_order: str  # "input" or "processing"
    value_range: tuple[float, float] | None = None  # finite min and max of the raw values read (None: none)
    batch: int = 1  # sequences in the trace
    notes: list[str] = field(default_factory=list)

    @property
    def rows(self) -> int:
        return self.values.shape[0]

    @property
    def cols(self) -> int:
        return self.values.shape[1]

    @property
    def has_padding(self) -> bool:
        """Whether any cell is padding only (drawn blank)."""
        return bool(np.isnan(self.values).any())

    @property
    def quantity_words(self) -> str:
        return QUANTITY_WORDS[self.selection.quantity]


def edges(start: int, stop: int, factor: int) -> np.ndarray:
    """Pooling edges: start, start + factor, ..., stop."""
    return np.append(np.arange(start, stop, factor, dtype=np.int64), np.int64(stop))


def pooling(n: int, most: int) -> int:
    """The smallest factor that puts ``n`` items into at most ``most`` cells."""
    return max(1, math.ceil(n / max(1, most)))


def heatmap_grid(trace, selection: Selection, max_cols: int, max_rows: int) -> Grid:
    """Read ``selection`` from ``trace`` (a tracefile.TraceFile) and mean-pool it to at most ``max_rows`` by
    ``max_cols`` cells. Reads only the selected sequence, in blocks of about BLOCK_BYTES."""
    sel = selection
    spec = trace.spec
    arr = trace.tensors[trace.name(sel.layer, sel.direction, sel.quantity)]  # DiskArray (batch, time, width)
    _, time, width = arr.shape
    (u0, u1), (s0, s1) = sel.units, sel.steps
    length = int(trace.lengths[sel.batch_index]) if trace.lengths is not None else time
    uf, sf = pooling(u1 - u0, max_rows), pooling(s1 - s0, max_cols)
    uedges, sedges = edges(u0, u1, uf), edges(s0, s1, sf)
    rows, cols = len(uedges) - 1, len(sedges) - 1
    sums = np.zeros((cols, rows), np.float64)  # (cols, rows): accumulated by column as blocks arrive
    counts = np.zeros((cols, rows), np.int64)
    lo, hi = math.inf, -math.inf
    read_stop = min(s1, length)  # past the length is padding: nothing to read
    per_block = max(1, BLOCK_BYTES // max(1, width * arr.itemsize))
    ustarts = (uedges[:-1] - u0).astype(np.intp)
    buf = np.empty(min(per_block, max(read_stop - s0, 0)) * width, dtype=arr.dtype)
    with arr.open() as f:
        for start in range(s0, read_stop, per_block):
            n = min(per_block, read_stop - start)
            block = arr.read_flat(f, (sel.batch_index * time + start) * width, buf[:n * width])
            x = block.reshape(n, width)[:, u0:u1].astype(np.float64)  # (n, units)
            valid = ~np.isnan(x)
            if not valid.any():
                continue
            finite = x[np.isfinite(x)]
            if finite.size:
                lo, hi = min(lo, float(finite.min())), max(hi, float(finite.max()))
            v = np.where(valid, x, 0.0)
            v = np.add.reduceat(v, ustarts, axis=1)  # (n, rows): pooled over units
            c = np.add.reduceat(valid.astype(np.int64), ustarts, axis=1)
            col = (start + np.arange(n) - s0) // sf  # (n,) column of each step, non-decreasing
            runs = np.flatnonzero(np.diff(col, prepend=-1))  # first step of each column in the block
            sums[col[runs]] += np.add.reduceat(v, runs, axis=0)
            counts[col[runs]] += np.add.reduceat(c, runs, axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        values = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan).T  # (rows, cols)
    scale = fixed_scale(spec, sel.quantity) or data_scale(values, sel.quantity)
    return Grid(sel, values, uedges, sedges, uf, sf, scale, layer_name(spec, sel.layer), length, time, width,
                trace.time_order, None if lo > hi else (lo, hi), trace.batch)
