"""Summary figures of a trace, computed block by block in O(width) memory. numpy only.

A trace holds, per (layer, direction, quantity), an array ``(batch, time, width)`` with NaN at the
padding steps past each sequence's length. ``TraceSummary`` receives it in blocks
``(batch, steps, width)``, in any order and of any size (the backward direction arrives last steps
first), and keeps per key a few float64 / int64 vectors of length ``width``: never the trace itself.
``result()`` turns them into ``TraceStats``: one ``QuantityStats`` row per (layer, direction, quantity)
and one ``DirectionStats`` row per (layer, direction). The figures do not depend on the order or the
size of the blocks (means up to float rounding; everything else exactly).

Valid values: NaN is padding and is skipped. ±Inf in a step is a valid step that overflowed: it is
counted in ``non_finite`` and left out of every other figure. When ``lengths`` are given, the valid
steps are known, so NaN in a valid step is counted as non-finite too, and anything past a length is
ignored.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from lstmscope.jsonout import jsonable
from lstmscope.report import DIRECTIONS
from lstmscope.tracefile import QUANTITIES  # noqa: F401 (re-exported: the order of every report)
SIGMOID_GATES = ("i", "f", "o")  # saturated below SIGMOID_LOW or above SIGMOID_HIGH
TANH_LIKE = ("g", "h")  # saturated beyond ±TANH_LIMIT
SIGMOID_LOW = 0.05
SIGMOID_HIGH = 0.95
TANH_LIMIT = 0.95
UNIT_SATURATED_SHARE = 0.95  # a unit is "saturated" when saturated in more than this share of its values
DEAD_INDEX_CAP = 32  # dead unit indices listed per row (the count is always complete)

# One line per figure, for the CLI to print under the summary table.
FIGURE_NOTES: tuple[tuple[str, str], ...] = (
    ("mean", "mean over all valid steps, sequences and units (padding and non-finite values left out)"),
    ("saturated", f"share of values saturated: i, f, o below {SIGMOID_LOW} or above {SIGMOID_HIGH}; "
                  f"g, h beyond ±{TANH_LIMIT}; c is unbounded (-)"),
    ("sat units", f"units saturated in more than {UNIT_SATURATED_SHARE:.0%} of their valid steps"),
    ("dead units", "units whose value never changes over all valid steps and sequences (min == max)"),
    ("values", "valid values counted (padding steps excluded)"),
    ("non-finite", "Inf (or NaN at a step within the lengths) in valid steps: counted here, excluded elsewhere"),
    ("forget mean", "mean of the forget gate f over the layer and direction"),
    ("memory", "effective memory length 1 / (1 - forget mean) in steps (inf when forget mean is 1)"),
    ("max |c|", "largest |c_t| in the layer and direction, at (sequence, step, unit); the step is in input time (the step after reading x[step])"),
)


@dataclass
class QuantityStats:
    """Figures of one (layer, direction, quantity); see FIGURE_NOTES."""

    layer: int
    direction: str
    quantity: str  # one of QUANTITIES
    batch: int
    width: int
    steps: int  # time steps received (every step once: the trace's length)
    values: int  # finite values in valid steps: what every figure below is computed from
    non_finite: int  # ±Inf (and NaN within the lengths, when they are known) in valid steps
    mean: float | None  # over all values; None when there are none
    min: float | None
    max: float | None
    saturated_share: float | None  # share of values saturated; None for c (unbounded) or no values
    saturated_units: int | None  # units saturated in > UNIT_SATURATED_SHARE of their values; None for c
    dead_units: int  # units with at least one value, all equal (min == max)
    dead_unit_indices: list[int] = field(default_factory=list)  # the first DEAD_INDEX_CAP of them


@dataclass
class DirectionStats:
    """Figures of one (layer, direction) drawn from f and c; None where that quantity was not traced."""

    layer: int
    direction: str
    forget_mean: float | None  # mean of f over all its values
    memory_length: float | None  # 1 / (1 - forget_mean) steps; inf when forget_mean >= 1
    max_abs_c: float | None  # largest |c| over all values
    max_abs_c_at: tuple[int, int, int] | None  # (batch, step, unit) of it; the first such in that order


@dataclass
class TraceStats:
    rows: list[QuantityStats] = field(default_factory=list)  # sorted by layer, direction, QUANTITIES order
    directions: list[DirectionStats] = field(default_factory=list)

    def row(self, layer: int, direction: str, quantity: str) -> QuantityStats:
        for r in self.rows:
            if (r.layer, r.direction, r.quantity) == (layer, direction, quantity):
                return r
        raise KeyError((layer, direction, quantity))

    def direction(self, layer: int, direction: str) -> DirectionStats:
        for d in self.directions:
            if (d.layer, d.direction) == (layer, direction):
                return d
        raise KeyError((layer, direction))

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types; NaN and ±Inf become None (an infinite memory length too)."""
        return jsonable({
            "thresholds": {"sigmoid_low": SIGMOID_LOW, "sigmoid_high": SIGMOID_HIGH, "tanh_limit": TANH_LIMIT,
                           "unit_saturated_share": UNIT_SATURATED_SHARE},
            "rows": [asdict(r) for r in self.rows],
            "directions": [asdict(d) for d in self.directions],
        })


class _KeyState:
    """Running figures of one (layer, direction, quantity): vectors of length width."""

    def __init__(self, batch: int, width: int, quantity: str):
        self.batch = batch
        self.width = width
        self.quantity = quantity
        self.steps = 0
        self.count = np.zeros(width, np.int64)  # (width,) finite values per unit
        self.non_finite = np.zeros(width, np.int64)
        self.total = np.zeros(width, np.float64)  # (width,) sums per unit
        self.sat = np.zeros(width, np.int64)  # (width,) saturated values per unit
        self.lo = np.full(width, np.inf)  # (width,) min per unit
        self.hi = np.full(width, -np.inf)  # (width,) max per unit
        self.max_abs = -1.0  # c only: largest |c| and its (batch, step, unit)
        self.max_abs_at: tuple[int, int, int] | None = None


class TraceSummary:
    """Accumulate summary figures of a trace fed block by block.

    ``lengths`` (optional, one per sequence): the valid steps are ``t < lengths[b]``; then NaN within
    them counts as non-finite, and values past them are ignored. Without lengths, NaN is padding.
    """

    def __init__(self, lengths: "np.ndarray | list[int] | None" = None, valid: np.ndarray | None = None):
        self._lengths = None if lengths is None else np.asarray(lengths, dtype=np.int64).reshape(-1)
        self._valid = None if valid is None else np.asarray(valid, dtype=bool)  # (batch, time): a mask's steps
        self._keys: dict[tuple[int, str, str], _KeyState] = {}

    def add(self, layer: int, direction: str, quantity: str, start: int, block: np.ndarray, *,
            flipped: bool = False) -> None:
        """Take steps ``start .. start + steps - 1`` of one key: ``block`` is (batch, steps, width). ``flipped``:
        the block holds each sequence's own steps reversed (a processing-order block of a backward direction:
        row s of sequence b is input step ``lengths[b] - 1 - (start + s)`` while that is >= 0); the figures are
        the same either way, except where the largest |c| is, which is reported in input steps."""
        if quantity not in QUANTITIES:
            raise ValueError(f"unknown quantity {quantity!r}: expected one of {', '.join(QUANTITIES)}")
        block = np.asarray(block)
        if block.ndim != 3:
            raise ValueError(f"a trace block is (batch, steps, width), got shape {block.shape}")
        batch, steps, width = block.shape
        if start < 0:
            raise ValueError(f"block start {start} is negative")
        key = (int(layer), str(direction), quantity)
        st = self._keys.get(key)
        if st is None:
            st = self._keys[key] = _KeyState(batch, width, quantity)
        elif (st.batch, st.width) != (batch, width):
            raise ValueError(f"{quantity} layer {layer} {direction}: a block of (batch, width) "
                             f"{(batch, width)} after blocks of {(st.batch, st.width)}")
        if self._lengths is not None and self._lengths.shape[0] != batch:
            raise ValueError(f"{len(self._lengths)} lengths for a batch of {batch}")
        if flipped and self._lengths is None:
            raise ValueError("a flipped block needs the lengths (give every sequence's, the full time included)")
        st.steps += steps
        if steps == 0 or batch == 0 or width == 0:
            return

        finite = np.isfinite(block)  # (batch, steps, width)
        if self._lengths is None:
            valid = ~np.isnan(block)
        else:
            t = start + np.arange(steps)
            in_time = t[None, :] < self._lengths[:, None]  # (batch, steps)
            if self._valid is not None and not flipped:
                in_time = in_time & self._valid[:, start:start + steps]
            valid = np.broadcast_to(in_time[:, :, None], block.shape)
            finite &= valid
        st.non_finite += (valid & ~finite).sum(axis=(0, 1))
        st.count += finite.sum(axis=(0, 1))
        vals = np.where(finite, block, 0).astype(np.float64, copy=False)  # (batch, steps, width)
        st.total += vals.sum(axis=(0, 1))
        np.minimum(st.lo, np.where(finite, vals, np.inf).min(axis=(0, 1)), out=st.lo)
        np.maximum(st.hi, np.where(finite, vals, -np.inf).max(axis=(0, 1)), out=st.hi)

        if quantity in SIGMOID_GATES:
            st.sat += (finite & ((vals < SIGMOID_LOW) | (vals > SIGMOID_HIGH))).sum(axis=(0, 1))
        elif quantity in TANH_LIKE:
            st.sat += (finite & (np.abs(vals) > TANH_LIMIT)).sum(axis=(0, 1))
        else:  # c: the largest |c|; ties go to the first (batch, step, unit), whatever the block order
            mag = np.where(finite, np.abs(vals), -1.0)
            flat = int(np.argmax(mag))  # first maximum in C order = first (batch, step, unit) in the block
            m = float(mag.reshape(-1)[flat])
            if m >= 0:
                b, s, u = np.unravel_index(flat, mag.shape)
                at = (int(b), int(start + s), int(u))
                if flipped:  # the first in input order among the maxima, each at its input step
                    bs, ss, us = np.nonzero(mag == m)
                    total = self._lengths[bs]
                    ts = np.where(start + ss < total, total - 1 - (start + ss), start + ss)
                    at = min(zip(bs.tolist(), ts.tolist(), us.tolist()))
                if m > st.max_abs or (m == st.max_abs and (st.max_abs_at is None or at < st.max_abs_at)):
                    st.max_abs, st.max_abs_at = m, at

    def result(self) -> TraceStats:
        """The figures of everything added so far."""
        def order(key: tuple[int, str, str]) -> tuple:
            layer, direction, quantity = key
            d = DIRECTIONS.index(direction) if direction in DIRECTIONS else len(DIRECTIONS)
            return (layer, d, direction, QUANTITIES.index(quantity))

        out = TraceStats()
        for key in sorted(self._keys, key=order):
            out.rows.append(_row(key, self._keys[key]))
        pairs = sorted({(k[0], k[1]) for k in self._keys}, key=lambda p: order((p[0], p[1], "h")))
        for layer, direction in pairs:
            f = self._keys.get((layer, direction, "f"))
            c = self._keys.get((layer, direction, "c"))
            forget = _mean(f) if f is not None else None
            memory = None
            if forget is not None:
                memory = math.inf if forget >= 1.0 else 1.0 / (1.0 - forget)
            out.directions.append(DirectionStats(
                layer=layer, direction=direction, forget_mean=forget, memory_length=memory,
                max_abs_c=c.max_abs if c is not None and c.max_abs_at is not None else None,
                max_abs_c_at=c.max_abs_at if c is not None else None))
        return out


def _mean(st: _KeyState) -> float | None:
    n = int(st.count.sum())
    return float(st.total.sum() / n) if n else None


def _row(key: tuple[int, str, str], st: _KeyState) -> QuantityStats:
    layer, direction, quantity = key
    n = int(st.count.sum())
    has = st.count > 0  # (width,)
    dead = np.flatnonzero(has & (st.lo == st.hi))
    bounded = quantity != "c"
    share = float(st.sat.sum() / n) if bounded and n else None
    units = int((has & (st.sat > UNIT_SATURATED_SHARE * st.count)).sum()) if bounded else None
    return QuantityStats(
        layer=layer, direction=direction, quantity=quantity, batch=st.batch, width=st.width, steps=st.steps,
        values=n, non_finite=int(st.non_finite.sum()), mean=_mean(st),
        min=float(st.lo.min()) if n else None, max=float(st.hi.max()) if n else None,
        saturated_share=share, saturated_units=units,
        dead_units=int(dead.size), dead_unit_indices=[int(u) for u in dead[:DEAD_INDEX_CAP]])


def summarize_trace(trace, block_bytes: int = 1 << 24) -> TraceStats:
    """The figures of a trace read back from its file (a tracefile.TraceFile), a block of steps at a time (all
    sequences, about ``block_bytes`` per read), so memory stays flat however long it is. A trace stored in
    processing order is placed back in input time (the place of the largest |c| is an input step)."""
    spec = trace.spec
    lengths = trace.lengths if trace.lengths is not None else np.full(trace.batch, trace.time, dtype=np.int64)
    summary = TraceSummary(lengths=lengths, valid=getattr(trace, "valid", None))
    for layer, direction, quantity in trace.keys():
        a = trace.tensors[trace.name(layer, direction, quantity)]  # (batch, time, width)
        flipped = trace.time_order == "processing" and ((direction == 1) != spec.go_backwards)
        step = max(1, block_bytes // max(1, a.shape[0] * a.shape[2] * a.dtype.itemsize))
        for start in range(0, trace.time, step):
            block = a.read_axis1(start, min(trace.time, start + step))
            summary.add(layer, ("forward", "backward")[direction], quantity, start, block, flipped=flipped)
    return summary.result()
