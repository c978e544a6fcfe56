"""Trace summary figures (lstmscope.tracestats) against numpy computed on the whole arrays here.

The reference below sees each (batch, time, width) trace at once and uses np.nanmean-style whole-array
operations; the code under test sees it in blocks of random sizes, fed in random order.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from lstmscope.tracestats import DEAD_INDEX_CAP, FIGURE_NOTES, QUANTITIES, TraceSummary

LOW, HIGH, TANH = 0.05, 0.95, 0.95  # the thresholds of issue 10, written out again


# ----------------------------------------------------------------------------- the reference

def ref_row(x: np.ndarray, quantity: str, lengths: np.ndarray | None = None) -> dict:
    """Every figure of one (batch, time, width) trace, from the whole array."""
    x = np.asarray(x, dtype=np.float64)
    if lengths is None:
        valid = ~np.isnan(x)
    else:
        valid = np.broadcast_to((np.arange(x.shape[1])[None, :] < lengths[:, None])[:, :, None], x.shape)
    finite = np.isfinite(x) & valid
    xm = np.where(finite, x, np.nan)  # NaN wherever the value does not count
    out = {"values": int(finite.sum()), "non_finite": int((valid & ~np.isfinite(x)).sum())}
    out["mean"] = float(np.mean(x[finite])) if finite.any() else None
    has = finite.any(axis=(0, 1))
    if has.any():
        lo, hi = np.nanmin(xm[:, :, has], axis=(0, 1)), np.nanmax(xm[:, :, has], axis=(0, 1))
        dead = np.flatnonzero(has)[lo == hi]
    else:
        dead = np.array([], dtype=int)
    out["dead"] = dead.tolist()
    if quantity in "ifo":
        sat = (xm < LOW) | (xm > HIGH)
    elif quantity in "gh":
        sat = np.abs(xm) > TANH
    else:
        sat = None
    if sat is None:
        out["saturated_share"] = out["saturated_units"] = None
    else:
        out["saturated_share"] = float(sat[finite].mean()) if finite.any() else None
        n_u = finite.sum(axis=(0, 1))
        share_u = np.divide(sat.sum(axis=(0, 1)), n_u, out=np.zeros(n_u.shape), where=n_u > 0)
        out["saturated_units"] = int(((share_u > 0.95) & (n_u > 0)).sum())
    if quantity == "c" and finite.any():
        a = np.abs(xm)
        m = np.nanmax(a)
        out["max_abs_c"] = float(m)
        out["max_abs_c_at"] = tuple(int(v) for v in np.argwhere(a == m)[0])  # first in (batch, step, unit)
    return out


# ----------------------------------------------------------------------------- traces and feeding

def make_trace(rng: np.random.Generator, batch: int, time: int, width: int, lengths: np.ndarray,
               dtype=np.float64) -> dict[str, np.ndarray]:
    """Plausible values per quantity, NaN past each length, planted dead and saturated units."""
    pre = rng.normal(0, 3, size=(4, batch, time, width))
    sig = 1 / (1 + np.exp(-pre))
    tr = {"i": sig[0], "f": sig[1], "o": sig[3], "g": np.tanh(pre[2])}
    tr["c"] = np.cumsum(tr["f"] * tr["g"], axis=1) * rng.uniform(0.5, 20)
    tr["h"] = tr["o"] * np.tanh(tr["c"])
    for q, x in tr.items():
        if width >= 2:
            x[:, :, 0] = 0.3  # dead: never changes
            x[:, :, 1] = 0.99 if q != "h" else -0.99  # saturated everywhere (c: just constant)
    pad = np.arange(time)[None, :] >= lengths[:, None]  # (batch, time)
    return {q: np.where(pad[:, :, None], np.nan, x).astype(dtype) for q, x in tr.items()}


def cuts(rng: np.random.Generator, time: int) -> list[tuple[int, int]]:
    """Random block boundaries over 0..time, in random order."""
    inner = sorted(rng.choice(np.arange(1, time), size=rng.integers(0, time), replace=False)) if time > 1 else []
    edges = [0, *map(int, inner), time]
    blocks = list(zip(edges[:-1], edges[1:]))
    rng.shuffle(blocks)
    return blocks


def feed(summary: TraceSummary, traces: dict, rng: np.random.Generator | None) -> None:
    """traces: {(layer, direction, quantity): array}; rng None feeds each key as one block."""
    items = []
    for (layer, direction, q), x in traces.items():
        parts = [(0, x.shape[1])] if rng is None else cuts(rng, x.shape[1])
        if direction == "backward" and rng is not None:
            parts = sorted(parts, reverse=True)  # last steps first, as the engine sends them
        items += [(layer, direction, q, a, x[:, a:b]) for a, b in parts]
    if rng is not None:  # interleave keys, keeping each backward key last-first among itself
        order = rng.permutation(len(items))
        per_key: dict = {}
        for it in items:
            per_key.setdefault(it[:3], []).append(it)
        queue = {k: list(v) for k, v in per_key.items()}
        keys = [items[i][:3] for i in order]
        items = [queue[k].pop(0) for k in keys]
    for it in items:
        summary.add(*it)


def check_against_reference(res, traces: dict, lengths=None) -> None:
    for (layer, direction, q), x in traces.items():
        row, ref = res.row(layer, direction, q), ref_row(x, q, lengths)
        assert (row.batch, row.steps, row.width) == x.shape
        assert row.values == ref["values"]
        assert row.non_finite == ref["non_finite"]
        assert row.mean == (None if ref["mean"] is None else pytest.approx(ref["mean"], rel=1e-12, abs=1e-12))
        assert row.saturated_share == (None if ref["saturated_share"] is None
                                       else pytest.approx(ref["saturated_share"], rel=1e-12))
        assert row.saturated_units == ref["saturated_units"]
        assert row.dead_units == len(ref["dead"])
        assert row.dead_unit_indices == ref["dead"][:DEAD_INDEX_CAP]
        d = res.direction(layer, direction)
        if q == "c":
            assert d.max_abs_c == ref.get("max_abs_c")
            assert d.max_abs_c_at == ref.get("max_abs_c_at")
        if q == "f":
            assert d.forget_mean == (None if ref["mean"] is None else pytest.approx(ref["mean"], rel=1e-12))
            if ref["mean"] is not None:
                expect = math.inf if ref["mean"] >= 1 else 1 / (1 - ref["mean"])
                assert d.memory_length == pytest.approx(expect, rel=1e-9)


def close(a, b) -> None:
    assert (a is None) == (b is None)
    if a is not None:
        assert a == pytest.approx(b, rel=1e-9, abs=1e-12)


def bidirectional_traces(rng, batch, time, width, lengths, dtype=np.float64, layers=2):
    out = {}
    for layer in range(layers):
        for direction in ("forward", "backward"):
            for q, x in make_trace(rng, batch, time, width, lengths, dtype).items():
                out[(layer, direction, q)] = x
    return out


# ----------------------------------------------------------------------------- tests

@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), batch=st.integers(1, 4), time=st.integers(1, 12),
       width=st.integers(1, 6), float32=st.booleans())
def test_figures_match_whole_array_numpy_in_any_block_order(seed, batch, time, width, float32):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(0, time + 1, size=batch)  # unsorted, zeros allowed
    lengths[rng.integers(batch)] = rng.integers(1, time + 1)  # at least one real step
    traces = bidirectional_traces(rng, batch, time, width, lengths, np.float32 if float32 else np.float64)
    if rng.random() < 0.5:  # an overflowing run: Inf at a valid step
        b = int(np.argmax(lengths))
        traces[(0, "forward", "c")][b, rng.integers(lengths[b]), rng.integers(width)] = -np.inf
    whole = TraceSummary()
    feed(whole, traces, None)
    blocks = TraceSummary()
    feed(blocks, traces, rng)
    check_against_reference(blocks.result(), traces)
    check_against_reference(whole.result(), traces)
    a, b = whole.result().to_dict(), blocks.result().to_dict()
    for ra, rb in zip(a["rows"], b["rows"]):
        close(ra.pop("mean"), rb.pop("mean"))
        assert ra == rb
    for da, db in zip(a["directions"], b["directions"]):
        for k in ("forget_mean", "memory_length"):
            close(da.pop(k), db.pop(k))
        assert da == db


def test_planted_dead_saturated_and_inf():
    rng = np.random.default_rng(0)
    lengths = np.array([5, 9, 2])
    traces = bidirectional_traces(rng, 3, 9, 8, lengths, layers=1)
    traces[(0, "forward", "c")][1, 7, 4] = np.inf
    traces[(0, "forward", "c")][2, 1, 3] = -1e6  # the largest finite |c|
    s = TraceSummary()
    feed(s, traces, rng)
    res = s.result()
    check_against_reference(res, traces)
    c = res.row(0, "forward", "c")
    assert c.non_finite == 1 and c.values == 16 * 8 - 1
    assert c.saturated_share is None and c.saturated_units is None
    assert res.direction(0, "forward").max_abs_c == 1e6
    assert res.direction(0, "forward").max_abs_c_at == (2, 1, 3)
    for q in QUANTITIES:
        row = res.row(0, "forward", q)
        assert 0 in row.dead_unit_indices
        if q != "c":
            assert row.saturated_units >= 1  # unit 1 sits at ±0.99
            assert 1 in row.dead_unit_indices  # constant too
    assert [r.quantity for r in res.rows[:6]] == list(QUANTITIES)
    assert [(d.layer, d.direction) for d in res.directions] == [(0, "forward"), (0, "backward")]


def test_forget_all_ones_memory_is_infinite_and_json_has_null():
    x = np.ones((2, 5, 3))
    x[1, 3:] = np.nan
    s = TraceSummary()
    s.add(0, "forward", "f", 2, x[:, 2:])
    s.add(0, "forward", "f", 0, x[:, :2])
    res = s.result()
    d = res.direction(0, "forward")
    assert d.forget_mean == 1.0 and d.memory_length == math.inf
    assert d.max_abs_c is None and d.max_abs_c_at is None
    f = res.row(0, "forward", "f")
    assert f.saturated_share == 1.0 and f.saturated_units == 3 and f.dead_units == 3
    doc = res.to_dict()
    json.dumps(doc, allow_nan=False)
    assert doc["directions"][0]["memory_length"] is None


def test_unit_saturated_share_is_strictly_above_95_percent():
    x = np.full((1, 20, 2), 0.5)
    x[0, :19, 0] = 0.99  # 95% exactly: not counted
    x[0, :, 1] = 0.01  # 100%
    x[0, 19, 1] = 0.02
    s = TraceSummary()
    s.add(0, "forward", "i", 0, x)
    row = s.result().row(0, "forward", "i")
    assert row.saturated_units == 1 == ref_row(x, "i")["saturated_units"]
    assert row.dead_units == 0


def test_dead_indices_are_capped_but_counted():
    s = TraceSummary()
    s.add(1, "backward", "g", 0, np.zeros((2, 3, DEAD_INDEX_CAP + 8)))
    row = s.result().row(1, "backward", "g")
    assert row.dead_units == DEAD_INDEX_CAP + 8
    assert row.dead_unit_indices == list(range(DEAD_INDEX_CAP))


def test_all_padding_gives_none_not_nan():
    s = TraceSummary()
    s.add(0, "forward", "c", 0, np.full((2, 4, 3), np.nan))
    s.add(0, "forward", "f", 0, np.full((2, 4, 3), np.nan))
    res = s.result()
    row = res.row(0, "forward", "c")
    assert (row.values, row.mean, row.min, row.dead_units) == (0, None, None, 0)
    d = res.direction(0, "forward")
    assert (d.forget_mean, d.memory_length, d.max_abs_c, d.max_abs_c_at) == (None, None, None, None)
    json.dumps(res.to_dict(), allow_nan=False)


def test_with_lengths_nan_in_a_valid_step_is_non_finite():
    rng = np.random.default_rng(3)
    lengths = np.array([4, 1, 6])
    traces = bidirectional_traces(rng, 3, 6, 5, lengths, layers=1)
    traces[(0, "backward", "h")][0, 2, 3] = np.nan  # within length 4: an overflow, not padding
    traces[(0, "backward", "h")][1, 4, 0] = 7.0  # past length 1: ignored
    s = TraceSummary(lengths=lengths)
    feed(s, traces, rng)
    res = s.result()
    check_against_reference(res, traces, lengths)
    assert res.row(0, "backward", "h").non_finite == 1


def test_bad_blocks_are_refused():
    s = TraceSummary()
    s.add(0, "forward", "h", 0, np.zeros((2, 3, 4)))
    with pytest.raises(ValueError, match="batch, width"):
        s.add(0, "forward", "h", 3, np.zeros((2, 3, 5)))
    with pytest.raises(ValueError, match="unknown quantity"):
        s.add(0, "forward", "x", 0, np.zeros((2, 3, 4)))
    with pytest.raises(ValueError, match="steps, width"):
        s.add(0, "forward", "h", 0, np.zeros((2, 3)))


def test_figure_notes_name_every_figure_on_one_line():
    assert all("\n" not in text for _, text in FIGURE_NOTES)
    assert {name for name, _ in FIGURE_NOTES} >= {"mean", "saturated", "dead units", "memory", "max |c|"}


def test_module_is_torch_and_rich_free():
    code = ("import sys, lstmscope.tracestats; "
            "bad = [m for m in ('torch', 'rich', 'typer') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**32 - 1))
def test_max_abs_c_ties_go_to_the_first_position_whatever_the_order(seed):
    rng = np.random.default_rng(seed)
    x = np.where(rng.random((3, 7, 4)) < 0.5, 2.0, -2.0)
    x[0] = np.nan  # sequence 0 is all padding
    x[1, :, 0] = 1.0
    s = TraceSummary()
    for a, b in cuts(rng, 7):
        s.add(0, "backward", "c", a, x[:, a:b])
    d = s.result().direction(0, "backward")
    assert (d.max_abs_c, d.max_abs_c_at) == (2.0, (1, 0, 1))


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), batch=st.integers(1, 4), time=st.integers(1, 10), width=st.integers(1, 4))
def test_flipped_blocks_give_the_same_figures_and_the_input_step_of_max_c(seed, batch, time, width):
    """Blocks in a backward direction's processing order (each sequence's own steps reversed) give the figures
    of the input-order trace, the place of the largest |c| included (ties: the first in input order)."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, time + 1, size=batch)
    c = rng.standard_normal((batch, time, width)).round(1)  # rounding makes ties likely
    c[np.arange(time)[None, :] >= lengths[:, None]] = np.nan
    flipped = c.copy()
    for b, n in enumerate(lengths):
        flipped[b, :n] = c[b, :n][::-1]
    plain, rev = TraceSummary(lengths=lengths), TraceSummary(lengths=lengths)
    plain.add(0, "backward", "c", 0, c)
    start = 0
    while start < time:
        n = int(rng.integers(1, time - start + 1))
        rev.add(0, "backward", "c", start, flipped[:, start:start + n], flipped=True)
        start += n
    a, r = plain.result().to_dict(), rev.result().to_dict()
    close(a["rows"][0].pop("mean"), r["rows"][0].pop("mean"))  # sums in another order
    assert a == r
    mag = np.where(np.isnan(c), -1, np.abs(c))
    b, t, u = np.unravel_index(int(np.argmax(mag)), mag.shape)  # first maximum in (batch, step, unit) order
    assert tuple(rev.result().directions[0].max_abs_c_at) == (int(b), int(t), int(u))


def test_flipped_blocks_need_lengths():
    with pytest.raises(ValueError, match="lengths"):
        TraceSummary().add(0, "backward", "c", 0, np.zeros((1, 2, 1)), flipped=True)
