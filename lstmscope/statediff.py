"""Compare two state files (per (layer, direction) for h_n / c_n, whole tensors otherwise) or, through
lstmscope.tracediff, two traces (per (layer, direction, quantity), with the max difference per time step). numpy only.

B is the reference: an element passes when ``|a - b| <= atol + rtol * |b|`` (torch.testing's rule).
Every figure is the float64 one, computed in fixed-size blocks read straight from the files (a snapshot's
tensors are DiskArrays), so big snapshots compare in flat memory: a few buffers of one block each. Two
float32 operands are scanned in float32 first, and only the few elements that decide a figure are
computed again in float64 (_F32Block): the same results, in about half the passes over memory.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from lstmscope.fileio import given
from lstmscope.errors import StateError, UsageError
from lstmscope.arrays import DiskArray

if TYPE_CHECKING:
    from lstmscope.snapshot import StateFile

# Imports are kept to numpy and what a diff reads with (arrays), so that `diff-states` starts fast: the
# snapshot and trace modules are imported where they are used, and report (Rich-free, but with the LSTMSpec
# machinery) not at all.
DIRECTIONS = ("forward", "backward")  # the order of directions in h_n / c_n, as lstmscope.report.DIRECTIONS

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
    # h_n/c_n rows of keras- or onnx-layout files: where the file keeps the slice ("encoder/h_f",
    # "/lstm/LSTM/initial_h[1]"; "A's vs B's" when the two files name it differently)
    stored_as: str | None = None

    @property
    def mismatched_pct(self) -> float:
        return 100.0 * self.mismatched / self.total if self.total else 0.0


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
    """One row: max abs/rel difference (and where), mismatches, cosine; float64 figures, computed in blocks.

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
    for s, st in _blocks(fa, fb, n, atol, rtol, equal_nan):
        bad += st.bad
        if st.max_abs > best:
            best, best_at = st.max_abs, s + st.at
        best_rel = max(best_rel, st.max_rel)
        nonfinite = nonfinite or st.nonfinite
        cos.fold(*st.sums)
    at = [int(v) for v in np.unravel_index(best_at, shape)] if n else None
    return DiffRow(tensor, layer, direction, list(shape), None, max(best, 0.0), at, best_rel, bad, n,
                   float("nan") if nonfinite else cos.value(), bad == 0)  # cosine undefined with NaN/Inf (JSON null)


def _blocks(fa, fb, n: int, atol: float, rtol: float, equal_nan: bool):
    """(start, _BlockStats) for each block of BLOCK elements of the flat operands, in order.

    Two float32 operands take the float32 path (_F32Block); any other pair the float64 path (_Scanner). (A
    reader thread that overlapped the reads and the cosine's sums with the rest was tried: on this project's
    2 shared cores it was slower, 0.85 s against 0.73 s in process for two 1 GiB files.)
    """
    if n == 0:
        return
    if not (fa.dtype == _F32 and fb.dtype == _F32):  # native float32 only (a big-endian file takes _Scanner)
        scanner = _Scanner(fa, fb, n, atol, rtol, equal_nan)
        try:
            for s in range(0, n, BLOCK):
                yield s, scanner.scan(s)
        finally:
            scanner.close()
        return
    blk = _F32Block(min(n, BLOCK), atol, rtol, equal_nan)
    sides, rel_floor = [], -1.0
    try:
        for v in (fa, fb):
            sides.append(_Side(v, min(n, BLOCK)))
        for s in range(0, n, BLOCK):
            c = min(BLOCK, n - s)
            st = blk.stats(sides[0].read(s, c), sides[1].read(s, c), rel_floor)
            rel_floor = max(rel_floor, st.max_rel)
            yield s, st
    finally:
        for side in sides:
            side.close()


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
        x = _as_f64(self.sides[0].read(s, c), self.x[:c])
        y = _as_f64(self.sides[1].read(s, c), self.y[:c])
        return _f64_block(x, y, self.d[:c], self.t[:c], self.e[:c], self.mask[:c], self.atol, self.rtol,
                          self.equal_nan)


def _f64_block(x: np.ndarray, y: np.ndarray, d: np.ndarray, t: np.ndarray, e: np.ndarray, mask: np.ndarray,
               atol: float, rtol: float, equal_nan: bool) -> _BlockStats:
    """One block's statistics from float64 ``x`` and ``y``, with d, t, e (float64) and mask (bool) as scratch
    buffers of the block's length: the reference computation, which the float32 path (_F32Block) falls back to."""
    c = x.size
    with np.errstate(all="ignore"):
        np.subtract(x, y, out=d)
        np.abs(d, out=d)
        i = int(np.argmax(d))  # the first NaN, if any
        dmax = float(d[i])
        if not math.isfinite(dmax):  # NaN or Inf in x or y (or x - y overflows)
            return _nonfinite_block(x, y, atol, rtol, equal_nan)
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


_F32 = np.dtype(np.float32)
_REL_FLOOR_MIN = 1e-30  # a block's float32 ratios decide against the running max rel only above this (normal range)


def _below32(v: float) -> np.float32:
    """The largest float32 at most ``v * (1 - 2**-16)`` (v >= 0): a threshold below every float32 rounding of
    a float64 value >= v, so that a float32 filter never drops an element the float64 rule would pick."""
    v *= 1.0 - 2.0 ** -16
    f = np.float32(v)
    return np.nextafter(f, np.float32(0)) if float(f) > v else f


class _F32Block:
    """The statistics of one block of two float32 operands, bit for bit those of _f64_block, in about half
    the passes over memory.

    Every |a - b| and |a - b| / |b| is first computed in float32, which orders the elements as float64 does
    up to rounding (both round the exact value, monotonically, with relative errors below 2**-23 in the
    normal range); float32 filters with a margin of 2**-16 then pick the few elements that can be over
    tolerance or hold the maximum, and those few are computed again in float64 (mismatches, the max
    |diff| and its first place, the max rel). A block where the float32 view is not conclusive (NaN/Inf,
    an overflowing difference or ratio, more than one element in eight picked) is computed by _f64_block
    itself. The cosine's sums are _cosine_sums of the float64 values, as before. The max rel of a block is
    computed again in float64 only when its float32 maximum can beat the blocks before.
    """

    def __init__(self, m: int, atol: float, rtol: float, equal_nan: bool):
        self.atol, self.rtol, self.equal_nan = atol, rtol, equal_nan
        self.lo_atol = _below32(atol)  # d > lo_atol for every element over tolerance (atol + rtol |b| >= atol)
        self.d, self.t = np.empty(m, dtype=np.float32), np.empty(m, dtype=np.float32)
        self.x64, self.y64 = np.empty(m), np.empty(m)
        self.scratch: tuple[np.ndarray, ...] | None = None  # float64 buffers for _f64_block, made on first use

    def exact(self, x: np.ndarray, y: np.ndarray) -> _BlockStats:
        c = x.size
        if self.scratch is None:
            m = self.x64.size
            self.scratch = (np.empty(m), np.empty(m), np.empty(m), np.empty(m, dtype=bool))
        x64, y64 = self.x64[:c], self.y64[:c]
        np.copyto(x64, x)
        np.copyto(y64, y)
        d, t, e, mask = (b[:c] for b in self.scratch)
        return _f64_block(x64, y64, d, t, e, mask, self.atol, self.rtol, self.equal_nan)

    def cosine_sums(self, x: np.ndarray, y: np.ndarray) -> tuple[float, float, float, float, float]:
        c = x.size
        x64, y64 = self.x64[:c], self.y64[:c]
        np.copyto(x64, x)
        np.copyto(y64, y)
        return _cosine_sums(x64, y64)

    def stats(self, x: np.ndarray, y: np.ndarray, rel_floor: float = -1.0) -> _BlockStats:
        """``rel_floor``: the largest max rel of the blocks before; this block's is needed only above it
        (its max_rel is 0.0 when it cannot be)."""
        c = x.size
        d, t = self.d[:c], self.t[:c]
        atol, rtol = self.atol, self.rtol
        with np.errstate(all="ignore"):
            np.subtract(x, y, out=d)
            np.abs(d, out=d)
            i = int(d.argmax())  # the first NaN, if any
            dm = d[i]
            if not np.isfinite(dm):  # NaN/Inf in a or b, or a difference beyond float32's range
                return self.exact(x, y)
            if dm == 0:  # equal blocks: every figure is 0, as _f64_block finds
                return _BlockStats(0, 0, 0.0, 0.0, False, self.cosine_sums(x, y))
            idx = np.flatnonzero(d > min(self.lo_atol, _below32(float(dm))))  # over tolerance, or near the max
            if idx.size * 8 > c:
                return self.exact(x, y)
            xs, ys = x[idx].astype(np.float64), y[idx].astype(np.float64)
            dd, tt = np.abs(xs - ys), np.abs(ys)
            bad = idx.size - int(np.count_nonzero(dd <= atol + rtol * tt))  # outside idx: d <= atol, they pass
            k = int(dd.argmax())
            at, dmax = int(idx[k]), float(dd[k])
            if rel_floor == math.inf:
                return _BlockStats(bad, at, dmax, 0.0, False, self.cosine_sums(x, y))
            np.divide(d, y, out=t)  # |a - b| / b: d / 0 is inf; 0 / 0 is NaN
            np.abs(t, out=t)
            top = t.max()
            if np.isnan(top):
                top = np.fmax.reduce(t)
            if np.isinf(top):
                if not np.any((y == 0) & (d > 0)):  # an overflowing ratio, not a division by 0
                    return self.exact(x, y)
                rel = math.inf
            elif rel_floor > _REL_FLOOR_MIN and float(top) < rel_floor * (1.0 - 2.0 ** -16):
                rel = 0.0  # every float64 ratio here is within 2**-22 of its float32 one, so below the floor
            else:
                ridx = np.flatnonzero(t >= _below32(float(top)))
                xr, yr = x[ridx].astype(np.float64), y[ridx].astype(np.float64)
                rel = float((np.abs(xr - yr) / np.abs(yr)).max())
        return _BlockStats(bad, at, dmax, rel, False, self.cosine_sums(x, y))


def _as_f64(raw: np.ndarray, buf: np.ndarray) -> np.ndarray:
    """``raw`` as float64: itself when it already is (native order), else converted into ``buf``."""
    if raw.dtype == np.float64:
        return raw
    np.copyto(buf, raw, casting="unsafe")
    return buf


def nonfinite_diff(x: np.ndarray, y: np.ndarray, atol: float, rtol: float,
                   equal_nan: bool) -> tuple[np.ndarray, np.ndarray]:
    """|x - y| and the pass mask where NaN/Inf may occur (the one rule, for snapshots and traces): NaN on one
    side, or Inf against anything but the same Inf, differs by inf; NaN on both sides by inf, or by 0 with
    ``equal_nan``; an infinite reference admits only itself."""
    d = np.abs(x - y)
    both_nan = np.isnan(x) & np.isnan(y)
    d[both_nan] = 0.0 if equal_nan else np.inf
    d[np.isnan(d)] = np.inf  # NaN on one side, or inf - inf
    inf_y = np.isinf(y)
    d[np.isinf(x) & (x == y)] = 0.0  # the same infinity on both sides
    ok = d <= atol + rtol * np.where(inf_y, 0.0, np.abs(y))
    ok[inf_y] = x[inf_y] == y[inf_y]
    if equal_nan:
        ok |= both_nan
    return d, ok


def _nonfinite_block(x: np.ndarray, y: np.ndarray, atol: float, rtol: float, equal_nan: bool) -> _BlockStats:
    """A block holding NaN/Inf (nonfinite_diff's rule)."""
    d, ok = nonfinite_diff(x, y, atol, rtol, equal_nan)
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
    from lstmscope.snapshot import ARCHITECTURE_FIELDS, PROVENANCE_FIELDS

    res = DiffResult(given(a.path), given(b.path), atol, rtol, equal_nan)
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
    dirs = num_directions or ma.get("num_directions") or mb.get("num_directions") or a.layout_directions \
        or b.layout_directions
    for name in sorted(set(ta) & set(tb), key=lambda k: ({"h_n": 0, "c_n": 1}.get(k, 2), k)):
        x, y = ta[name], tb[name]
        if name in ("h_n", "c_n") and dirs and x.shape[0] % dirs:
            raise UsageError(f"{name} has {x.shape[0]} layer*direction slices, which {dirs} directions do not divide")
        if name in ("h_n", "c_n") and dirs and x.shape == y.shape:
            for i in range(x.shape[0]):
                row = compare_arrays(x[i], y[i], atol=atol, rtol=rtol, equal_nan=equal_nan, tensor=name,
                                     layer=i // dirs, direction=DIRECTIONS[i % dirs])
                row.stored_as = _stored_as(a, b, name[0], i)
                res.rows.append(row)
        else:
            res.rows.append(compare_arrays(x, y, atol=atol, rtol=rtol, equal_nan=equal_nan, tensor=name))
    return res


def _stored_as(a: StateFile, b: StateFile, which: str, i: int) -> str | None:
    """Where the files keep slice ``i`` of h_n or c_n (``which``: "h" or "c"), when either is not in the torch
    layout: the name both give it, both names when they differ, or one side's, marked (A) or (B)."""
    na, nb = a.slice_names.get((which, i)), b.slice_names.get((which, i))
    if na and nb:
        return na if na == nb else f"{na} vs {nb}"
    if na or nb:
        return f"{na} (A)" if na else f"{nb} (B)"
    return None


def diff_files(path_a: str | Path, path_b: str | Path, *, atol: float = DEFAULT_ATOL, rtol: float = DEFAULT_RTOL,
               equal_nan: bool = False, num_directions: int | None = None) -> DiffResult:
    """``diff-states A B``: two traces (diff_traces) or two state files (diff_states), told apart by content."""
    from lstmscope.snapshot import read_state_file
    from lstmscope.tracefile import is_trace, read_trace

    ta, tb = is_trace(path_a), is_trace(path_b)
    if ta and tb:
        from lstmscope.tracediff import diff_traces

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
