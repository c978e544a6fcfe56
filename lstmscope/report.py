"""Turn a run's arrays into the facts lstmscope shows: per-(layer, direction) statistics, where each
h_n slice lives in ``output``, the measured identity checks, and selected values. numpy only.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from lstmscope.errors import UsageError
from lstmscope.spec import LSTMSpec

CHECK_TOLERANCE = 1e-6  # a check is ok when max |h_n slice - output slice| <= this
DIRECTIONS = ("forward", "backward")


@dataclass
class SliceStats:
    """Summary of one (batch, width) slice of h_n or c_n, computed in float64."""

    shape: tuple[int, int]
    mean: float
    std: float
    min: float
    max: float
    norm: float  # L2 norm of the whole slice
    nonfinite: int  # count of NaN/Inf values


@dataclass
class StateRow:
    layer: int
    direction: str  # "forward" or "backward"
    index: int  # position in PyTorch's native h_n: layer * num_directions + direction
    h_n: SliceStats
    c_n: SliceStats


@dataclass
class Check:
    """h_n[layer, direction] against the place in that layer's output sequence that must equal it."""

    layer: int
    direction: str
    output_time_index: list[int]  # per sequence: len_b - 1 (forward) or 0 (backward)
    columns: tuple[int, int]  # output[..., start:stop]
    max_abs_diff: float  # NaN on both sides counts as equal; NaN on one side is +inf
    ok: bool


@dataclass
class ValueRow:
    """Values for one (layer, direction) at one batch index, for ``--batch-index``/``--units``."""

    layer: int
    direction: str
    units: list[int]
    h_n: list[float | None]  # None where the unit is beyond h's width (proj_size < hidden)
    c_n: list[float | None]
    output: list[float | None] | None  # None when this layer's output is not available
    output_position: str | None


@dataclass
class StateView:
    """Everything ``run`` and ``show-state`` print about a set of final states."""

    spec: LSTMSpec
    h_n: np.ndarray  # (num_layers * num_directions, batch, out)
    c_n: np.ndarray  # (num_layers * num_directions, batch, hidden)
    last_steps: np.ndarray  # (batch,) each sequence's last step
    layout: str  # input layout: "batch_first", "time_major" or "single"
    time: int
    rows: list[StateRow] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)
    values: list[ValueRow] = field(default_factory=list)
    value_batch: int | None = None
    first_steps: np.ndarray | None = None  # (batch,) where a backward reader's final state sits: 0, or the first
    #                                         valid step under a mask; -1 for a sequence a mask skips wholly
    masked: bool = False  # a mask skipped steps: positions are each sequence's last/first valid step
    valid: np.ndarray | None = None  # (batch, time) the steps a mask let the LSTM read, when known
    graph_layout: int = 0  # ONNX modules: the nodes' layout attribute (0: Y [T, D, B, H]; 1: Y [B, T, D, H])

    @property
    def batch(self) -> int:
        return self.h_n.shape[1]

    @property
    def all_ok(self) -> bool:
        return all(c.ok for c in self.checks)

    def output_shape(self, width: int) -> list[int]:
        """The shape nn.LSTM gives ``output`` for this input layout (batch_first unless time-major)."""
        if self.layout == "time_major":
            return [self.time, self.batch, width]
        return [self.batch, self.time, width]

    def output_position(self, direction: str, b: int | None = None, units: tuple[int, int] | None = None,
                        layer: int | None = None) -> str:
        """Where h_n[layer, direction] lives in that layer's output, as an indexing expression in the
        input's layout: ``output[b, len[b]-1, 0:H]`` forward, ``output[b, 0, H:2H]`` backward.
        With ``b`` given, for that one sequence. For a Keras layer below the last, whose own y is meant,
        the expression is prefixed with the layer's name (``encoder: y[b, 9, 0:6]``). ONNX modules: in ONNX's
        terms, ``Y[len[b]-1, 0, b, :]`` (forward), ``Y[0, 1, b, :]`` (a bidirectional node's backward half),
        ``Y[0, 0, b, :]`` (a reverse node), batch-first with layout 1, prefixed with the node's name below the
        last."""
        if self.onnx:
            return self._onnx_position(direction, b, units, layer)
        p = self.spec.output_size
        d = DIRECTIONS.index(direction)
        lo, hi = units or (0, p)
        cols = f"{d * p + lo}:{d * p + hi}"
        t = self._last_step(direction == "backward", b)
        bs = "0" if self.layout == "single" else "b" if b is None else str(b)
        name = self.output_name
        if self.keras and layer is not None and layer != self.spec.num_layers - 1:
            name = f"{self.layer_name(layer)}: y"
        if self.layout == "time_major":
            return f"{name}[{t}, {bs}, {cols}]"
        return f"{name}[{bs}, {t}, {cols}]"

    def _last_step(self, backward: bool, b: int | None) -> str:
        """The output step where a direction's final state sits: 0 for one that reads backward, else each
        sequence's last step (a number when it is the same for all, ``len[b]-1`` when it is not)."""
        steps = self.first_steps if backward and self.first_steps is not None else self.last_steps
        if backward and self.first_steps is None:
            return "0"
        if b is not None:
            return str(int(steps[b]))
        if len(set(steps.tolist())) == 1:
            return str(int(steps[0]))
        if backward:
            return "first[b]"
        return "last[b]" if self.masked else "len[b]-1"

    def _onnx_position(self, direction: str, b: int | None, units: tuple[int, int] | None, layer: int | None) -> str:
        d = DIRECTIONS.index(direction)
        t = self._last_step(d == 1 or self.spec.go_backwards, b)  # in Y's input order, a backward reader ends at Y[0]
        bs = "0" if self.layout == "single" else "b" if b is None else str(b)
        cols = ":" if units is None or tuple(units) == (0, self.spec.output_size) else f"{units[0]}:{units[1]}"
        idx = f"{bs}, {t}, {d}, {cols}" if self.graph_layout == 1 else f"{t}, {d}, {bs}, {cols}"
        name = "Y"
        if layer is not None and layer != self.spec.num_layers - 1:
            name = f"{self.layer_name(layer)}: Y"
        return f"{name}[{idx}]"

    @property
    def keras(self) -> bool:
        return self.spec.framework == "keras"

    @property
    def onnx(self) -> bool:
        return self.spec.framework == "onnx"

    @property
    def output_name(self) -> str:
        """What the framework calls the output sequence: ``output`` (PyTorch), ``y`` (Keras), ``Y`` (ONNX)."""
        return "y" if self.keras else "Y" if self.onnx else "output"

    def layer_name(self, layer: int) -> str:
        """A layer as the framework names it: its index (PyTorch), its layer name (Keras), its node (ONNX)."""
        names = self.spec.names
        return names[layer] if layer < len(names) else str(layer)

    def state_label(self, row: "StateRow", which: str = "h") -> str:
        """How the framework names one slice: ``h_n[3]`` (PyTorch), ``lstm_1 h`` or ``bidirectional h_b`` (Keras,
        in the order ``layer(x, return_state=True)`` returns them), ``LSTM_1 Y_h[1]`` (ONNX: the node's Y_h, by
        direction)."""
        if self.onnx:
            d = DIRECTIONS.index(row.direction)
            return f"{self.layer_name(row.layer)} Y_{which}[{d}]"
        if not self.keras:
            return f"{which}_n[{row.index}]"
        suffix = ("_f" if row.direction == "forward" else "_b") if self.spec.bidirectional else ""
        return f"{self.layer_name(row.layer)} {which}{suffix}"


@dataclass
class LayerEnds:
    """The two rows of one layer's output that h_n must equal: each sequence's last step (where the
    forward direction ends) and step 0 (where the backward direction ends). A streamed run keeps
    only these instead of the whole output sequence."""

    at_last: np.ndarray  # (batch, num_directions * out): output[b, last_steps[b]]
    at_first: np.ndarray  # (batch, num_directions * out): output[b, 0]

    @classmethod
    def of(cls, output: np.ndarray, last_steps: np.ndarray, first_steps: np.ndarray | None = None) -> "LayerEnds":
        """From a whole (batch, time, D * out) output; reads only the two rows per sequence (``first_steps``:
        where the backward direction ends, step 0 unless a mask says otherwise)."""
        rows = np.arange(output.shape[0])
        first = np.asarray(output[:, 0]) if first_steps is None else np.asarray(output[rows, np.asarray(first_steps)])
        return cls(np.asarray(output[rows, np.asarray(last_steps)]), first)


def slice_stats(a: np.ndarray) -> SliceStats:
    x = np.asarray(a, dtype=np.float64)
    finite = np.isfinite(x)
    n_bad = int(x.size - np.count_nonzero(finite))
    v = x[finite] if n_bad else x
    if v.size == 0:
        nan = float("nan")
        return SliceStats(tuple(x.shape), nan, nan, nan, nan, nan, n_bad)
    return SliceStats(
        shape=tuple(x.shape),
        mean=float(v.mean()),
        std=float(v.std()),
        min=float(v.min()),
        max=float(v.max()),
        norm=float(np.sqrt(np.dot(v.ravel(), v.ravel()))),
        nonfinite=n_bad,
    )


def max_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    """max |a - b| in float64; positions where both are NaN count as equal, NaN on one side as inf."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    both_nan = np.isnan(a) & np.isnan(b)
    with np.errstate(invalid="ignore"):
        d = np.abs(a - b)
    d[both_nan] = 0.0
    d[np.isnan(d)] = np.inf
    return float(d.max()) if d.size else 0.0


def build_view(
    spec: LSTMSpec,
    h_n: np.ndarray,
    c_n: np.ndarray,
    *,
    last_steps: np.ndarray,
    layout: str,
    time: int,
    layer_outputs: dict[int, "np.ndarray | LayerEnds"] | None = None,
    batch_index: int | None = None,
    units: tuple | None = None,  # a Span (lstmscope.options.parse_span)
    tolerance: float = CHECK_TOLERANCE,
    first_steps: np.ndarray | None = None,
) -> StateView:
    """Statistics per (layer, direction), identity checks against every layer output given
    (``{layer: (batch, time, D * out) array or its LayerEnds}``), and the values asked for. ``first_steps``: where
    a backward reader ends per sequence (default step 0); a position of -1 (a sequence a mask skipped wholly,
    whose state is its initial state) is left out of the check."""
    view = StateView(spec, h_n, c_n, np.asarray(last_steps), layout, time)
    first = np.zeros(h_n.shape[1], dtype=np.int64) if first_steps is None else np.asarray(first_steps)
    if first_steps is not None and np.any(first != 0):
        view.first_steps = first
    d = spec.num_directions
    p = spec.output_size
    layer_outputs = {layer: out if isinstance(out, LayerEnds) else LayerEnds.of(out, view.last_steps, first)
                     for layer, out in (layer_outputs or {}).items()}
    batch = h_n.shape[1]
    for layer in range(spec.num_layers):
        for di in range(d):
            idx = layer * d + di
            direction = DIRECTIONS[di]
            view.rows.append(StateRow(layer, direction, idx, slice_stats(h_n[idx]), slice_stats(c_n[idx])))
            out = layer_outputs.get(layer)
            if out is None:
                continue
            # the forward direction ends at each sequence's last step, the backward one at step 0; so does an ONNX
            # reverse node, whose Y is in input order (a Keras go_backwards layer's y is in processing order)
            at_first = di == 1 or (spec.framework == "onnx" and spec.go_backwards)
            t = first if at_first else view.last_steps
            at = (out.at_first if at_first else out.at_last)[:, di * p:(di + 1) * p]  # (batch, out)
            read = t >= 0  # a sequence with no step read has no output step to hold its state
            diff = max_abs_diff(h_n[idx][read], at[read])
            view.checks.append(Check(layer, direction, [int(v) for v in t], (di * p, (di + 1) * p), diff, diff <= tolerance))
    if batch_index is not None or units is not None:
        b = 0 if batch_index is None else batch_index
        if not -batch <= b < batch:
            raise UsageError(f"--batch-index {b} is out of range; the batch has {batch} sequence"
                             f"{'s' if batch != 1 else ''} ({-batch}..{batch - 1}, negative counts from the end)")
        b %= batch
        view.value_batch = b
        lo, hi = resolve_units(units, spec.hidden_size, "units" if spec.framework == "keras" else "hidden_size")
        for row in view.rows:
            out = layer_outputs.get(row.layer)
            di = DIRECTIONS.index(row.direction)
            us = list(range(lo, hi))
            hv = [float(h_n[row.index, b, u]) if u < p else None for u in us]
            cv = [float(c_n[row.index, b, u]) for u in us]
            ov = pos = None
            if out is not None:
                at_first = di == 1 or (spec.framework == "onnx" and spec.go_backwards)
                row_at = out.at_first[b] if at_first else out.at_last[b]
                ov = [float(row_at[di * p + u]) if u < p else None for u in us]
                pos = view.output_position(row.direction, b, units=(lo, min(hi, p)) if lo < p else (0, 0),
                                           layer=row.layer)
            view.values.append(ValueRow(row.layer, row.direction, us, hv, cv, ov, pos))
    return view


def resolve_span(span, size: int, flag: str, what: str) -> tuple[int, int]:
    """A Span (lstmscope.options.parse_span: (start, stop, text), Python slice bounds, None for an open side)
    within ``0:size`` -> (start, stop); None -> (0, size). ``what`` says where ``size`` comes from in the error."""
    if span is None:
        return 0, size
    a, b, text = span
    lo = 0 if a is None else a
    hi = size if b is None else b
    raw = (lo, hi)
    lo, hi = (lo + size if lo < 0 else lo), (hi + size if hi < 0 else hi)
    if not (0 <= lo <= size and 0 <= hi <= size):
        raise UsageError(f"{flag} {text}: {what}; give A:B within 0:{size}")
    if lo >= hi:
        raise UsageError(f"{flag} {text} is empty ({raw[0]} is not before {raw[1]}); give A:B with A < B within 0:{size}")
    return lo, hi


def resolve_units(span, width: int, width_name: str = "hidden_size") -> tuple[int, int]:
    """``--units`` (a Span, or None: the first 8) -> (start, stop) within 0:width (the heatmap's --units rule)."""
    if span is None:
        return 0, min(8, width)
    return resolve_span(span, width, "--units", f"{width_name} is {width}")
