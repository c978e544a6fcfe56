"""Compare two state files (per (layer, direction) for h_n / c_n, whole tensors otherwise) or two traces (per
(layer, direction, quantity), with the max difference per time step). numpy only.

B is the reference: an element passes when ``|a - b| <= atol + rtol * |b|`` (torch.testing's rule).
Everything is computed in float64, in fixed-size blocks read straight from the files (a snapshot's
tensors are DiskArrays), so big snapshots compare in flat memory: a few buffers of one block each.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lstmscope.errors import StateError, UsageError
from lstmscope.arrays import DiskArray
from lstmscope.report import DIRECTIONS
from lstmscope.snapshot import ARCHITECTURE_FIELDS, PROVENANCE_FIELDS, StateFile
from lstmscope.tracefile import TraceFile

DEFAULT_RTOL = 1.3e-6  # torch.testing.assert_close defaults for float32
DEFAULT_ATOL = 1e-5
BLOCK = 1 << 17  # elements per block: 1 MiB per float64 buffer, which stays in cache


@dataclass
class DiffRow:
    tensor: str  # "h_n", "c_n", "output", ...
    layer: int | None
    direction: str | None
    shape: list[int]  # of what was compared (the (batch, width) slice for h_n/c_n rows)
    shape_b: list[int] | None = None  # set when the shapes differ (then nothing else is)
    max_abs_diff: float = 0.0
    max_abs_diff_at: list[int] | None = None  # index within the compared slice
    max_rel_diff: float = 0.0
    mismatched: int = 0
    total: int = 0
    cosine: float | None = None
    passed: bool = True
    # Trace rows only (diff_traces); None for snapshot rows. Per-step arrays are numpy (float64 / bool,
    # (time,)): 8 bytes a step, not a Python float each, so a million-step trace stays small.
    quantity: str | None = None  # "h", "c", "i", "f", "g", "o"
    first_step_over: int | None = None  # the first step holding an element over tolerance
    per_step_max_abs_diff: np.ndarray | None = None  # (time,) max |a - b| per step; NaN where every sequence is padding
    per_step_over: np.ndarray | None = None  # (time,) bool: the step holds an element over tolerance

    @property
    def mismatched_pct(self) -> float:
        return 100.0 * self.mismatched / self.total if self.total else 0.0

    @property
    def label(self) -> str:
        if self.quantity is not None:
            return self.tensor
        if self.layer is None:
            return self.tensor
        return f"{self.tensor} layer {self.layer} {self.direction}"


@dataclass
class DiffResult:
    a: str
    b: str
    atol: float
    rtol: float
    equal_nan: bool
    rows: list[DiffRow] = field(default_factory=list)
    only_in_a: list[str] = field(default_factory=list)
    only_in_b: list[str] = field(default_factory=list)
    architecture: dict[str, list[Any]] = field(default_factory=dict)  # field -> [a, b], differing
    provenance: dict[str, list[Any]] = field(default_factory=dict)
    kind: str = "state"  # "state" (two snapshots) or "trace" (two traces: rows per layer, direction, quantity)

    @property
    def comparable(self) -> bool:
        return not self.architecture

    @property
    def equal(self) -> bool:
        return self.comparable and not self.only_in_a and not self.only_in_b and all(r.passed for r in self.rows)


def compare_arrays(a: "np.ndarray | DiskArray", b: "np.ndarray | DiskArray", *, atol: float, rtol: float,
                   equal_nan: bool, tensor: str, layer: int | None = None, direction: str | None = None) -> DiffRow:
    """One row: max abs/rel difference (and where), mismatches, cosine; in float64 blocks.

    ``a`` and ``b`` are arrays or DiskArrays. They are read BLOCK elements at a time into buffers
    allocated once, and every float64 intermediate lives in a buffer of one block (``out=``), so
    memory stays flat however big the tensors are.
    """
    if a.shape != b.shape:
        return DiffRow(tensor, layer, direction, list(a.shape), list(b.shape), passed=False,
                       max_abs_diff=float("nan"), max_rel_diff=float("nan"))
    shape = tuple(a.shape)
    n = int(np.prod(shape, dtype=np.int64))
    fa, fb = (v if isinstance(v, DiskArray) else np.asarray(v).reshape(-1) for v in (a, b))
    best, best_at, best_rel, bad, nonfinite = -1.0, 0, 0.0, 0, False
    cos = _Cosine()
    scanner = _Scanner(fa, fb, n, atol, rtol, equal_nan)
    try:
        for s in range(0, n, BLOCK):
            st = scanner.scan(s)
            bad += st.bad
            if st.max_abs > best:
                best, best_at = st.max_abs, s + st.at
            best_rel = max(best_rel, st.max_rel)
            nonfinite = nonfinite or st.nonfinite
            cos.fold(*st.sums)
    finally:
        scanner.close()
    at = [int(v) for v in np.unravel_index(best_at, shape)] if n else None
    return DiffRow(tensor, layer, direction, list(shape), None, max(best, 0.0), at, best_rel, bad, n,
                   float("nan") if nonfinite else cos.value(), bad == 0)  # cosine undefined with NaN/Inf (JSON null)


@dataclass
class _BlockStats:
    bad: int  # elements out of tolerance
    at: int  # index in the block of the (first) largest |a - b|
    max_abs: float  # inf where NaN/Inf differ
    max_rel: float
    nonfinite: bool  # NaN/Inf in a or b: the cosine is undefined
    sums: tuple[float, float, float, float, float]  # (qa, qb, qd, sx, sy): x.x = qa sx², y.y = qb sy², x.y = qd sx sy


class _Side:
    """One operand, a block at a time: a slice of a flat array, or a positioned read of a DiskArray into a buffer."""

    def __init__(self, arr: "np.ndarray | DiskArray", m: int):
        self.arr = arr
        self.file = arr.open() if isinstance(arr, DiskArray) else None
        self.raw = np.empty(m, dtype=arr.dtype) if self.file is not None else None

    def read(self, s: int, c: int) -> np.ndarray:
        if self.file is None:
            return self.arr[s:s + c]
        return self.arr.read_flat(self.file, s, self.raw[:c])

    def close(self) -> None:
        if self.file is not None:
            self.file.close()


class _Scanner:
    """The statistics of one block of a and b at a time, from the operands' open files and buffers of one block."""

    def __init__(self, a, b, n: int, atol: float, rtol: float, equal_nan: bool):
        self.n, self.atol, self.rtol, self.equal_nan = n, atol, rtol, equal_nan
        m = min(n, BLOCK)
        self.sides = []
        try:
            for v in (a, b):
                self.sides.append(_Side(v, m))
        except BaseException:
            self.close()
            raise
        self.x, self.y, self.d, self.t, self.e = (np.empty(m) for _ in range(5))  # x, y as float64, |x - y|, |y|, scratch
        self.mask = np.empty(m, dtype=bool)

    def close(self) -> None:
        for side in self.sides:
            side.close()

    def scan(self, s: int) -> _BlockStats:
        c = min(BLOCK, self.n - s)
        atol, rtol = self.atol, self.rtol
        x = _as_f64(self.sides[0].read(s, c), self.x[:c])
        y = _as_f64(self.sides[1].read(s, c), self.y[:c])
        d, t, e, mask = self.d[:c], self.t[:c], self.e[:c], self.mask[:c]
        with np.errstate(all="ignore"):
            np.subtract(x, y, out=d)
            np.abs(d, out=d)
            i = int(np.argmax(d))  # the first NaN, if any
            dmax = float(d[i])
            if not math.isfinite(dmax):  # NaN or Inf in x or y (or x - y overflows)
                return _nonfinite_block(x, y, atol, rtol, self.equal_nan)
            np.abs(y, out=t)
            ymin = float(t.min())
            bad, bound = 0, atol + rtol * ymin  # the smallest tolerance in the block
            if dmax > bound:  # only elements above it can fail
                np.greater(d, bound, out=mask)
                idx = np.flatnonzero(mask)
                if idx.size * 8 <= c:  # a few: check just those
                    bad = idx.size - int(np.count_nonzero(d[idx] <= atol + rtol * t[idx]))
                else:
                    np.multiply(t, rtol, out=e)
                    np.add(e, atol, out=e)
                    np.less_equal(d, e, out=mask)
                    bad = c - int(np.count_nonzero(mask))
            rel = 0.0
            if dmax > 0:
                np.divide(d, t, out=e)  # d / 0 is inf; 0 / 0 is NaN, which fmax skips (rel 0)
                rel = float(e.max() if ymin > 0 else np.fmax.reduce(e))
                rel = 0.0 if math.isnan(rel) else rel
            return _BlockStats(bad, i, dmax, rel, False, _cosine_sums(x, y))


def _as_f64(raw: np.ndarray, buf: np.ndarray) -> np.ndarray:
    """``raw`` as float64: itself when it already is (native order), else converted into ``buf``."""
    if raw.dtype == np.float64:
        return raw
    np.copyto(buf, raw, casting="unsafe")
    return buf


def _nonfinite_block(x: np.ndarray, y: np.ndarray, atol: float, rtol: float, equal_nan: bool) -> _BlockStats:
    """A block holding NaN/Inf: NaN on one side, or Inf against anything but the same Inf, differs by
    inf; NaN on both sides by inf, or by 0 with ``equal_nan``."""
    d = np.abs(x - y)
    both_nan = np.isnan(x) & np.isnan(y)
    d[both_nan] = 0.0 if equal_nan else np.inf
    d[np.isnan(d)] = np.inf  # NaN on one side, or inf - inf
    inf_y = np.isinf(y)
    d[np.isinf(x) & (x == y)] = 0.0  # the same infinity on both sides
    ok = d <= atol + rtol * np.where(inf_y, 0.0, np.abs(y))  # an infinite reference admits only itself
    ok[inf_y] = x[inf_y] == y[inf_y]
    if equal_nan:
        ok |= both_nan
    i = int(np.argmax(d))
    ay = np.abs(y)
    rel = np.where(ay > 0, d / np.where(ay > 0, ay, 1.0), np.where(d > 0, np.inf, 0.0))
    rel[np.isinf(d)] = np.inf  # also against an infinite reference (inf / inf), so no NaN hides the block's maximum
    fin = np.isfinite(x) & np.isfinite(y)
    return _BlockStats(int(d.size - np.count_nonzero(ok)), i, float(d[i]), float(rel.max()), not bool(fin.all()),
                       _cosine_sums(x[fin], y[fin]))


DOT_ROW = 8192  # see _dot


def _dot(x: np.ndarray, y: np.ndarray) -> float:
    """x . y for contiguous 1-D float64 arrays, as a sum of dot products of DOT_ROW elements each.

    One BLAS ddot over a whole block is split across threads (OpenBLAS does so above 10,000
    elements), which on a busy machine, with a core taken by another process, made it 10x slower
    (measured); rows of DOT_ROW stay on this thread, and matmul loops over them in C.
    """
    k = x.size - x.size % DOT_ROW
    rows = np.matmul(x[:k].reshape(-1, 1, DOT_ROW), y[:k].reshape(-1, DOT_ROW, 1)).sum() if k else 0.0
    return float(rows) + float(np.dot(x[k:], y[k:]))


def _cosine_sums(x: np.ndarray, y: np.ndarray) -> tuple[float, float, float, float, float]:
    """(qa, qb, qd, sx, sy) with x.x = qa sx², y.y = qb sy², x.y = qd sx sy, for finite float64 x and y.
    The sums are taken directly when they are comfortably inside float64's range, else from values
    scaled by the block's largest |value| (so that they neither overflow nor underflow)."""
    pa, pb = _dot(x, x), _dot(y, y)
    if _Cosine.TINY < pa < _Cosine.HUGE and _Cosine.TINY < pb < _Cosine.HUGE:
        sx, sy = math.sqrt(pa), math.sqrt(pb)
        return 1.0, 1.0, _dot(x, y) / sx / sy, sx, sy
    if not x.size:
        return 0.0, 0.0, 0.0, 0.0, 0.0
    sx, sy = float(np.max(np.abs(x))), float(np.max(np.abs(y)))
    xs, ys = (x / sx if sx else x), (y / sy if sy else y)
    return _dot(xs, xs), _dot(ys, ys), _dot(xs, ys), sx, sy


class _Cosine:
    """dot(x, y) / (|x| |y|) from blocks' sums, kept as multiples of sx * sy, sx**2 and sy**2 where sx
    and sy are the largest block scales so far: neither overflows for huge states nor underflows
    for tiny ones."""

    TINY, HUGE = 1e-250, 1e250

    def __init__(self) -> None:
        self.sx = self.sy = self.na = self.nb = self.dot = 0.0

    def fold(self, qa: float, qb: float, qd: float, sx: float, sy: float) -> None:
        """Add a block whose sums are qa * sx**2, qb * sy**2 and qd * sx * sy."""
        if sx > self.sx:
            r = self.sx / sx
            self.na, self.dot, self.sx = self.na * r * r, self.dot * r, sx
        if sy > self.sy:
            r = self.sy / sy
            self.nb, self.dot, self.sy = self.nb * r * r, self.dot * r, sy
        rx = sx / self.sx if sx else 0.0
        ry = sy / self.sy if sy else 0.0
        self.na += qa * rx * rx
        self.nb += qb * ry * ry
        self.dot += qd * rx * ry

    def value(self) -> float:
        if self.na == 0.0 and self.nb == 0.0:
            return 1.0
        if self.na == 0.0 or self.nb == 0.0:
            return 0.0
        return min(1.0, max(-1.0, self.dot / (math.sqrt(self.na) * math.sqrt(self.nb))))


def diff_states(a: StateFile, b: StateFile, *, atol: float = DEFAULT_ATOL, rtol: float = DEFAULT_RTOL,
                equal_nan: bool = False, num_directions: int | None = None) -> DiffResult:
    res = DiffResult(str(a.path), str(b.path), atol, rtol, equal_nan)
    ma, mb = a.meta or {}, b.meta or {}
    for f in ARCHITECTURE_FIELDS:
        if f in ma and f in mb and ma[f] != mb[f]:
            res.architecture[f] = [ma[f], mb[f]]
    for f in PROVENANCE_FIELDS:
        if (f in ma or f in mb) and ma.get(f) != mb.get(f):
            res.provenance[f] = [ma.get(f), mb.get(f)]
    ta, tb = a.tensors(), b.tensors()
    res.only_in_a = sorted(set(ta) - set(tb))
    res.only_in_b = sorted(set(tb) - set(ta))
    if not res.comparable:
        return res
    if num_directions is not None and num_directions not in (1, 2):
        raise UsageError(f"--num-directions {num_directions}: an LSTM has 1 or 2 directions")
    dirs = num_directions or ma.get("num_directions") or mb.get("num_directions")
    for name in sorted(set(ta) & set(tb), key=lambda k: ({"h_n": 0, "c_n": 1}.get(k, 2), k)):
        x, y = ta[name], tb[name]
        if name in ("h_n", "c_n") and dirs and x.shape[0] % dirs:
            raise UsageError(f"{name} has {x.shape[0]} layer*direction slices, which {dirs} directions do not divide")
        if name in ("h_n", "c_n") and dirs and x.shape == y.shape:
            for i in range(x.shape[0]):
                res.rows.append(compare_arrays(x[i], y[i], atol=atol, rtol=rtol, equal_nan=equal_nan, tensor=name,
                                               layer=i // dirs, direction=DIRECTIONS[i % dirs]))
        else:
            res.rows.append(compare_arrays(x, y, atol=atol, rtol=rtol, equal_nan=equal_nan, tensor=name))
    return res


# Traces ---------------------------------------------------------------------------------------------------

TRACE_ARCHITECTURE = ("num_layers", "num_directions", "hidden_size", "proj_size", "input_size")  # of the spec
STEP_BLOCK = 1 << 17  # elements per time block of a trace diff: all batch rows, as many steps as fit


def is_trace(path: str | Path) -> bool:
    """True when ``path`` is a safetensors file carrying an ``lstmscope.trace`` metadata entry (by content)."""
    from lstmscope import sniff as sn
    from lstmscope.readers.safetensors import read_header
    from lstmscope.tracefile import METADATA_KEY

    path = Path(path)
    try:
        if not path.is_file() or sn.sniff(path).format != sn.SAFETENSORS:
            return False
    except OSError:
        return False  # the state reader says what is wrong with it
    _, raw = read_header(path, StateError)
    return bool(raw) and METADATA_KEY in raw


def diff_files(path_a: str | Path, path_b: str | Path, *, atol: float = DEFAULT_ATOL, rtol: float = DEFAULT_RTOL,
               equal_nan: bool = False, num_directions: int | None = None) -> DiffResult:
    """``diff-states A B``: two traces (diff_traces) or two state files (diff_states), told apart by content."""
    from lstmscope.snapshot import read_state_file
    from lstmscope.tracefile import read_trace

    ta, tb = is_trace(path_a), is_trace(path_b)
    if ta and tb:
        if num_directions is not None:
            raise UsageError("--num-directions is for state files without lstmscope metadata; "
                             f"the traces {path_a} and {path_b} name every layer and direction")
        return diff_traces(read_trace(path_a), read_trace(path_b), atol=atol, rtol=rtol, equal_nan=equal_nan)
    if ta or tb:
        read_state_file(path_b if ta else path_a)  # a file that is neither says so first
        what = ("a trace", "a state snapshot") if ta else ("a state snapshot", "a trace")
        raise StateError(f"{path_a} is {what[0]} and {path_b} {what[1]}; diff-states compares two snapshots or "
                         "two traces (lstmscope trace CHECKPOINT INPUT -o B.safetensors writes the other trace)")
    return diff_states(read_state_file(path_a), read_state_file(path_b), atol=atol, rtol=rtol, equal_nan=equal_nan,
                       num_directions=num_directions)


def diff_traces(a: TraceFile, b: TraceFile, *, atol: float = DEFAULT_ATOL, rtol: float = DEFAULT_RTOL,
                equal_nan: bool = False) -> DiffResult:
    """Two traces per (layer, direction, quantity) present in both, B the reference: each row's figures over the
    valid steps, plus per step the max |a - b| and whether an element is over tolerance, and the first such step.

    Steps past a sequence's length (padding) count nowhere. Different LSTM shapes, batch, time, lengths or time
    orders make the traces not comparable (``architecture`` set, no rows); the rest of the metadata that differs
    (dtype, module, checksums, cell, version) is listed as provenance. Reads time blocks of STEP_BLOCK elements,
    so memory is flat but for the per-step arrays (time,).
    """
    res = DiffResult(str(a.path), str(b.path), atol, rtol, equal_nan, kind="trace")
    sa, sb = a.spec.to_dict(), b.spec.to_dict()
    if a.time_order != b.time_order:  # first: the message for it is the one to read
        res.architecture["time_order"] = [a.time_order, b.time_order]
    for f in TRACE_ARCHITECTURE:
        if sa[f] != sb[f]:
            res.architecture[f] = [sa[f], sb[f]]
    for f, va, vb in (("batch_size", a.batch, b.batch), ("time", a.time, b.time)):
        if va != vb:
            res.architecture[f] = [va, vb]
    if a.batch == b.batch and a.time == b.time and not np.array_equal(_lengths(a), _lengths(b)):
        res.architecture["lengths"] = [None if t.lengths is None else t.lengths.tolist() for t in (a, b)]
    ma, mb = a.meta, b.meta
    for f in PROVENANCE_FIELDS:
        if (f in ma or f in mb) and ma.get(f) != mb.get(f):
            res.provenance[f] = [ma.get(f), mb.get(f)]
    for f in sa:  # the cell and names: same shapes, other semantics
        if f not in TRACE_ARCHITECTURE and f != "bidirectional" and sa[f] != sb.get(f):
            res.provenance[f"spec.{f}"] = [sa[f], sb.get(f)]
    na, nb = {k: a.name(*k) for k in a.keys()}, {k: b.name(*k) for k in b.keys()}
    res.only_in_a = sorted(na[k] for k in na if k not in nb)
    res.only_in_b = sorted(nb[k] for k in nb if k not in na)
    if not res.comparable:
        return res
    lengths = a.lengths if a.lengths is not None else b.lengths
    for key, name in na.items():
        if key in nb:
            layer, d, q = key
            res.rows.append(compare_steps(a.tensors[name], b.tensors[nb[key]], lengths=lengths, atol=atol, rtol=rtol,
                                          equal_nan=equal_nan, tensor=name, layer=layer, direction=DIRECTIONS[d],
                                          quantity=q))
    return res


def _lengths(t: TraceFile) -> np.ndarray:
    """Each sequence's valid steps: the file's lengths, or every step when it has none."""
    return np.full(t.batch, t.time, dtype=np.int64) if t.lengths is None else t.lengths


def compare_steps(x: "DiskArray | np.ndarray", y: "DiskArray | np.ndarray", *, lengths: np.ndarray | None,
                  atol: float, rtol: float, equal_nan: bool, tensor: str, layer: int | None = None,
                  direction: str | None = None, quantity: str | None = None) -> DiffRow:
    """One trace row: ``x`` and ``y`` (batch, time, width), compared a block of steps at a time (all batch rows).
    Elements at steps >= lengths[b] are padding and count nowhere; ``max_abs_diff_at`` is (batch, step, unit)."""
    batch, time, width = x.shape  # (batch, time, width)
    per_step = np.full(time, np.nan)  # (time,) NaN: every sequence is padding there
    over = np.zeros(time, dtype=bool)  # (time,)
    step = max(1, STEP_BLOCK // max(batch * width, 1))
    best, best_at, best_rel, bad, total, nonfinite = -1.0, None, 0.0, 0, 0, False
    cos = _Cosine()
    for s in range(0, time, step):
        e = min(time, s + step)
        xb = _read_steps(x, s, e)  # (batch, n, width) float64
        yb = _read_steps(y, s, e)
        valid = None if lengths is None else np.arange(s, e)[None, :] < lengths[:, None]  # (batch, n)
        blk = _step_block(xb, yb, valid, atol, rtol, equal_nan)
        d = blk.d
        step_max = d.max(axis=(0, 2))  # (n,), -1 where the step is padding everywhere
        per_step[s:e] = np.where(step_max < 0, np.nan, step_max)
        over[s:e] = ~blk.ok.all(axis=(0, 2))
        bad += int(d.size - np.count_nonzero(blk.ok))
        total += blk.valid_count
        i = int(np.argmax(d))
        if d.flat[i] > best:
            best = float(d.flat[i])
            b_, t_, u_ = np.unravel_index(i, d.shape)
            best_at = [int(b_), s + int(t_), int(u_)]
        best_rel = max(best_rel, blk.max_rel)
        nonfinite = nonfinite or blk.nonfinite
        cos.fold(*blk.sums)
    hits = np.flatnonzero(over)
    return DiffRow(tensor, layer, direction, [batch, time, width], None, max(best, 0.0), best_at, best_rel, bad, total,
                   float("nan") if nonfinite else cos.value(), bad == 0, quantity,
                   int(hits[0]) if hits.size else None, per_step, over)


def _read_steps(a: "DiskArray | np.ndarray", s: int, e: int) -> np.ndarray:
    raw = a.read_axis1(s, e) if isinstance(a, DiskArray) else np.asarray(a[:, s:e])
    return np.ascontiguousarray(raw, dtype=np.float64)


@dataclass
class _StepBlock:
    d: np.ndarray  # (batch, n, width) |a - b| (inf where NaN/Inf differ); -1 at padding
    ok: np.ndarray  # (batch, n, width) within tolerance; True at padding
    valid_count: int  # elements that are not padding
    max_rel: float
    nonfinite: bool  # NaN/Inf in a valid element of a or b: the cosine is undefined
    sums: tuple[float, float, float, float, float]  # see _cosine_sums


def _step_block(x: np.ndarray, y: np.ndarray, valid: np.ndarray | None, atol: float, rtol: float,
                equal_nan: bool) -> _StepBlock:
    """The figures of one block of steps; the NaN/Inf rules are _nonfinite_block's."""
    with np.errstate(all="ignore"):
        d = np.abs(x - y)
        ay = np.abs(y)
        finite = bool(np.isfinite(d).all())
        if finite:
            ok = d <= atol + rtol * ay
        else:
            both_nan = np.isnan(x) & np.isnan(y)
            d[both_nan] = 0.0 if equal_nan else np.inf
            d[np.isnan(d)] = np.inf  # NaN on one side, or inf - inf
            d[np.isinf(x) & (x == y)] = 0.0  # the same infinity on both sides
            inf_y = np.isinf(y)
            ok = d <= atol + rtol * np.where(inf_y, 0.0, ay)  # an infinite reference admits only itself
            ok[inf_y] = x[inf_y] == y[inf_y]
            if equal_nan:
                ok |= both_nan
        rel = np.where(ay > 0, d / np.where(ay > 0, ay, 1.0), np.where(d > 0, np.inf, 0.0))
        rel[np.isinf(d)] = np.inf
        if valid is None:
            count = d.size
            fin = None if finite else np.isfinite(x) & np.isfinite(y)  # d is finite only where x and y are
        else:
            pad = ~np.broadcast_to(valid[:, :, None], d.shape)
            d[pad] = -1.0
            ok |= pad
            rel[pad] = 0.0
            count = int(np.count_nonzero(valid)) * d.shape[2]
            fin = np.isfinite(x) & np.isfinite(y) & ~pad
        nonfinite = fin is not None and int(np.count_nonzero(fin)) < count
        sums = _cosine_sums(x.reshape(-1), y.reshape(-1)) if fin is None else _cosine_sums(x[fin], y[fin])
        return _StepBlock(d, ok, count, float(rel.max()) if rel.size else 0.0, nonfinite, sums)
