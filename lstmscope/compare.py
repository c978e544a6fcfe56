"""Compare two state files: per (layer, direction) for h_n / c_n, whole tensors otherwise. numpy only.

B is the reference: an element passes when ``|a - b| <= atol + rtol * |b|`` (torch.testing's rule).
Everything is computed in float64, in fixed-size blocks, so big snapshots compare in flat memory.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lstmscope.errors import UsageError
from lstmscope.report import DIRECTIONS
from lstmscope.snapshot import ARCHITECTURE_FIELDS, PROVENANCE_FIELDS, StateFile

DEFAULT_RTOL = 1.3e-6  # torch.testing.assert_close defaults for float32
DEFAULT_ATOL = 1e-5
BLOCK = 1 << 20  # elements per block


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

    @property
    def mismatched_pct(self) -> float:
        return 100.0 * self.mismatched / self.total if self.total else 0.0

    @property
    def label(self) -> str:
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

    @property
    def comparable(self) -> bool:
        return not self.architecture

    @property
    def equal(self) -> bool:
        return self.comparable and not self.only_in_a and not self.only_in_b and all(r.passed for r in self.rows)


def compare_arrays(a: np.ndarray, b: np.ndarray, *, atol: float, rtol: float, equal_nan: bool,
                   tensor: str, layer: int | None = None, direction: str | None = None) -> DiffRow:
    """One row: max abs/rel difference (and where), mismatches, cosine; in float64 blocks."""
    if a.shape != b.shape:
        return DiffRow(tensor, layer, direction, list(a.shape), list(b.shape), passed=False,
                       max_abs_diff=float("nan"), max_rel_diff=float("nan"))
    fa, fb = a.reshape(-1), b.reshape(-1)
    n = fa.size
    best, best_at, best_rel, bad = -1.0, 0, 0.0, 0
    dot = na = nb = sx = sy = 0.0
    nonfinite = False
    for s in range(0, n, BLOCK):
        x = np.asarray(fa[s:s + BLOCK], dtype=np.float64)
        y = np.asarray(fb[s:s + BLOCK], dtype=np.float64)
        with np.errstate(invalid="ignore", over="ignore"):
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
            bad += int(d.size - np.count_nonzero(ok))
            i = int(np.argmax(d))
            if d[i] > best:
                best, best_at = float(d[i]), s + i
            ay = np.abs(y)
            rel = np.where(ay > 0, d / np.where(ay > 0, ay, 1.0), np.where(d > 0, np.inf, 0.0))
            best_rel = max(best_rel, float(rel.max()))
            fin = np.isfinite(x) & np.isfinite(y)
            nonfinite = nonfinite or not bool(fin.all())
            xf, yf = x[fin], y[fin]
            # Sums of squares of x/sx and y/sy, with sx, sy the largest |value| so far: neither
            # overflows for huge states nor underflows for tiny ones.
            if xf.size:
                bx, by = float(np.abs(xf).max()), float(np.abs(yf).max())
                if bx > sx:
                    na, dot, sx = na * (sx / bx) ** 2, dot * (sx / bx), bx
                if by > sy:
                    nb, dot, sy = nb * (sy / by) ** 2, dot * (sy / by), by
                if sx > 0 and sy > 0:
                    xs, ys = xf / sx, yf / sy
                    dot += float(np.dot(xs, ys))
                    na += float(np.dot(xs, xs))
                    nb += float(np.dot(ys, ys))
    if nonfinite:
        cos = float("nan")  # undefined where either side holds NaN/Inf (JSON null)
    elif na == 0.0 and nb == 0.0:
        cos = 1.0
    elif na == 0.0 or nb == 0.0:
        cos = 0.0
    else:
        cos = min(1.0, max(-1.0, dot / (np.sqrt(na) * np.sqrt(nb))))
    at = [int(v) for v in np.unravel_index(best_at, a.shape)] if n else None
    return DiffRow(tensor, layer, direction, list(a.shape), None, max(best, 0.0), at, best_rel, bad, n,
                   float(cos), bad == 0)


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
