"""Compare two traces per (layer, direction, quantity), step by step: the figures of statediff.py's rows plus, per
row, the max |a - b| at every step and the first step over tolerance. numpy only.

B is the reference (statediff.py's rule: ``|a - b| <= atol + rtol * |b|``, the same NaN/Inf rules). Steps past
a sequence's length are padding and count nowhere. Files are read a block of steps at a time.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lstmscope.fileio import given
from lstmscope.arrays import DiskArray
from lstmscope.statediff import DEFAULT_ATOL, DEFAULT_RTOL, DiffResult, DiffRow, _Cosine, _cosine_sums, nonfinite_diff
from lstmscope.report import DIRECTIONS
from lstmscope.snapshot import PROVENANCE_FIELDS
from lstmscope.tracefile import TraceFile

TRACE_ARCHITECTURE = ("num_layers", "num_directions", "hidden_size", "proj_size", "input_size")  # of the spec
STEP_BLOCK = 1 << 17  # elements per time block of a trace diff: all batch rows, as many steps as fit


def diff_traces(a: TraceFile, b: TraceFile, *, atol: float = DEFAULT_ATOL, rtol: float = DEFAULT_RTOL,
                equal_nan: bool = False) -> DiffResult:
    """Two traces per (layer, direction, quantity) present in both, B the reference: each row's figures over the
    valid steps, plus per step the max |a - b| and whether an element is over tolerance, and the first such step.

    Steps past a sequence's length (padding) count nowhere. Different LSTM shapes, batch, time, lengths or time
    orders make the traces not comparable (``architecture`` set, no rows); the rest of the metadata that differs
    (dtype, module, checksums, cell, version) is listed as provenance. Reads time blocks of STEP_BLOCK elements,
    so memory is flat but for the per-step arrays (time,).
    """
    res = DiffResult(given(a.path), given(b.path), atol, rtol, equal_nan, kind="trace")
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
    valid = _meaningful(a, b, res)
    for key, name in na.items():
        if key in nb:
            layer, d, q = key
            res.rows.append(compare_steps(a.tensors[name], b.tensors[nb[key]], lengths=lengths, atol=atol, rtol=rtol,
                                          equal_nan=equal_nan, tensor=name, layer=layer, direction=DIRECTIONS[d],
                                          quantity=q, valid=valid))
    return res


def _meaningful(a: TraceFile, b: TraceFile, res: DiffResult) -> np.ndarray | None:
    """(batch, time) the steps both traces read, when a mask skipped any in either (None: every step up to the
    lengths); skipped steps count nowhere. Masks that differ are listed as provenance."""
    va, vb = a.valid, b.valid
    if va is None and vb is None:
        return None
    if va is not None and vb is not None and not np.array_equal(va, vb):
        res.provenance["mask"] = [f"{int(va.sum())} steps read", f"{int(vb.sum())} steps read (compared: the "
                                  f"{int((va & vb).sum())} both read)"]
    elif va is None or vb is None:
        res.provenance["mask"] = ["none" if va is None else f"{int(va.sum())} steps read",
                                  "none" if vb is None else f"{int(vb.sum())} steps read"]
    return va if vb is None else vb if va is None else va & vb


def _lengths(t: TraceFile) -> np.ndarray:
    """Each sequence's valid steps: the file's lengths, or every step when it has none."""
    return np.full(t.batch, t.time, dtype=np.int64) if t.lengths is None else t.lengths


def compare_steps(x: "DiskArray | np.ndarray", y: "DiskArray | np.ndarray", *, lengths: np.ndarray | None,
                  atol: float, rtol: float, equal_nan: bool, tensor: str, layer: int | None = None,
                  direction: str | None = None, quantity: str | None = None,
                  valid: np.ndarray | None = None) -> DiffRow:
    """One trace row: ``x`` and ``y`` (batch, time, width), compared a block of steps at a time (all batch rows).
    Elements at steps >= lengths[b] are padding and count nowhere, nor do steps ``valid`` (batch, time) marks
    False (a mask skipped them); ``max_abs_diff_at`` is (batch, step, unit)."""
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
        ok_steps = None if lengths is None else np.arange(s, e)[None, :] < lengths[:, None]  # (batch, n)
        if valid is not None:
            ok_steps = valid[:, s:e] if ok_steps is None else ok_steps & valid[:, s:e]
        blk = _step_block(xb, yb, ok_steps, atol, rtol, equal_nan)
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
    """The figures of one block of steps; NaN/Inf follow compare.nonfinite_diff's rule."""
    with np.errstate(all="ignore"):
        d = np.abs(x - y)
        ay = np.abs(y)
        finite = bool(np.isfinite(d).all())
        if finite:
            ok = d <= atol + rtol * ay
        else:
            d, ok = nonfinite_diff(x, y, atol, rtol, equal_nan)
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
