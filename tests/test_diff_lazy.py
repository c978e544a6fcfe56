"""diff-states and show-state on big snapshots: tensors read lazily, compared in fixed-size blocks.

The truth is numpy in float64 over whole arrays, computed here from what the safetensors library
reads back (and the README's rule ``|a - b| <= atol + rtol * |b|``, B the reference). compare.BLOCK is
made small so that tensors span many blocks; peak memory is the child process's own VmHWM.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import safetensors.numpy
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import array_shapes, arrays
from safetensors import safe_open

import lstmscope.statediff as compare
from helpers import assert_one_error_line
from lstmscope.statediff import compare_arrays, diff_states
from lstmscope.errors import StateError
from lstmscope.snapshot import read_state_file

ROOT = Path(__file__).resolve().parents[1]
ATOL, RTOL = 1e-5, 1.3e-6


def expected(a: np.ndarray, b: np.ndarray, atol: float = ATOL, rtol: float = RTOL, equal_nan: bool = False) -> dict:
    """A row computed over the whole arrays in float64: NaN on one side, or an infinity against anything
    but itself, differs by inf; NaN on both sides differs by inf, or by 0 with ``equal_nan``."""
    x, y = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    nan_x, nan_y = np.isnan(x), np.isnan(y)
    with np.errstate(invalid="ignore", over="ignore"):
        d = np.abs(x - y)
    d[nan_x | nan_y] = np.inf
    same_inf = np.isinf(x) & (x == y)
    d[same_inf] = 0.0
    if equal_nan:
        d[nan_x & nan_y] = 0.0
    ok = np.zeros(x.size, dtype=bool)
    fin_y = np.isfinite(y)
    ok[fin_y] = d[fin_y] <= atol + rtol * np.abs(y[fin_y])
    ok[np.isinf(y)] = same_inf[np.isinf(y)]
    if equal_nan:
        ok |= nan_x & nan_y
    rel = np.zeros(x.size)
    ay = np.abs(y)
    pos = ay > 0
    with np.errstate(invalid="ignore"):
        rel[pos] = d[pos] / ay[pos]
    rel[~pos & (d > 0)] = np.inf
    rel[np.isinf(d)] = np.inf
    fin = np.isfinite(x) & np.isfinite(y)
    if not fin.all():
        cos = None
    else:
        # math.fsum of float64 products, each vector first scaled by its largest |value| (the cosine does not
        # change), so that tiny or huge values neither underflow nor overflow: x = [0], y = [1e-246] has one
        # zero vector (cosine 0), not two (y * y alone would underflow to 0)
        sx, sy = float(np.abs(x).max(initial=0.0)), float(np.abs(y).max(initial=0.0))
        x, y = (x / sx if sx else x), (y / sy if sy else y)
        na, nb, dot = math.fsum(x * x), math.fsum(y * y), math.fsum(x * y)
        cos = 1.0 if na == nb == 0 else 0.0 if na == 0 or nb == 0 else dot / math.sqrt(na * nb)
    i = int(np.argmax(d))
    return {"max_abs_diff": float(d[i]), "at": [int(v) for v in np.unravel_index(i, np.shape(a))],
            "max_rel_diff": float(rel.max()), "mismatched": int(x.size - ok.sum()), "total": x.size, "cosine": cos,
            "passed": bool(ok.all())}


def assert_row(row, want: dict) -> None:
    assert row.max_abs_diff == want["max_abs_diff"]
    assert row.max_abs_diff_at == want["at"]
    assert row.max_rel_diff == want["max_rel_diff"]
    assert (row.mismatched, row.total, row.passed) == (want["mismatched"], want["total"], want["passed"])
    if want["cosine"] is None:
        assert math.isnan(row.cosine)
    else:
        assert row.cosine == pytest.approx(want["cosine"], rel=1e-12, abs=1e-12)


@pytest.fixture(params=[1 << 17, 64, 1000], ids=["one-block", "blocks", "odd-blocks"])
def blocks(request, monkeypatch):
    """Elements per block: one block per tensor; many blocks; blocks that do not divide the rows."""
    monkeypatch.setattr(compare, "BLOCK", request.param)
    return request.param


def perturbed(a: np.ndarray, seed: int) -> np.ndarray:
    """``a`` moved within tolerance almost everywhere, beyond it at a few places, with some exact zeros."""
    rng = np.random.default_rng(seed)
    b = (a + (a * 4e-7 * rng.standard_normal(a.shape))).astype(a.dtype)
    flat = b.reshape(-1)
    flat[rng.choice(flat.size, 7, replace=False)] += 1e-3
    flat[rng.choice(flat.size, 5, replace=False)] = 0.0  # |b| = 0: rel inf where a differs
    return b


def _pair(tmp_path, dtype, seed=0, shape=(3, 97, 40)):
    rng = np.random.default_rng(seed)
    out_a = rng.standard_normal(shape).astype(dtype)  # (batch, time, 2 * hidden)
    out_b = perturbed(out_a, seed + 1)
    h = rng.standard_normal((4, shape[0], shape[2] // 2)).astype(dtype)
    c = rng.standard_normal((4, shape[0], shape[2] // 2)).astype(dtype)
    pa, pb = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    safetensors.numpy.save_file({"h_n": h, "c_n": c, "output": out_a}, str(pa))
    safetensors.numpy.save_file({"h_n": perturbed(h, seed + 2), "c_n": c, "output": out_b}, str(pb))
    return pa, pb


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
def test_lazy_diff_equals_whole_array_numpy(tmp_path, blocks, dtype):
    pa, pb = _pair(tmp_path, dtype)
    sa, sb = read_state_file(pa), read_state_file(pb)
    assert not isinstance(sa.output, np.ndarray)  # not read yet
    ta, tb = safetensors.numpy.load_file(str(pa)), safetensors.numpy.load_file(str(pb))
    res = diff_states(sa, sb, num_directions=2)
    assert [(r.tensor, r.layer, r.direction) for r in res.rows] == [
        (t, i // 2, ("forward", "backward")[i % 2]) for t in ("h_n", "c_n") for i in range(4)] + [("output", None, None)]
    for row in res.rows:
        a = ta[row.tensor] if row.layer is None else ta[row.tensor][2 * row.layer + (row.direction == "backward")]
        b = tb[row.tensor] if row.layer is None else tb[row.tensor][2 * row.layer + (row.direction == "backward")]
        assert_row(row, expected(a, b))
    out = res.rows[-1]
    assert out.mismatched >= 7 and not out.passed and out.max_rel_diff == math.inf  # the premise


def test_results_do_not_depend_on_the_block_size(tmp_path, monkeypatch):
    pa, pb = _pair(tmp_path, np.float32, seed=5, shape=(4, 100, 33))
    rows = []
    for block in [1 << 17, 97, 50, 13200]:
        monkeypatch.setattr(compare, "BLOCK", block)
        res = diff_states(read_state_file(pa), read_state_file(pb))
        rows.append([(r.max_abs_diff, r.max_abs_diff_at, r.max_rel_diff, r.mismatched, r.passed) for r in res.rows])
        rows[-1].append([pytest.approx(r.cosine, rel=1e-13) for r in res.rows])
    assert all(r == rows[0] for r in rows[1:])


@pytest.mark.parametrize("equal_nan", [False, True])
def test_nan_and_inf_in_some_blocks(blocks, equal_nan):
    rng = np.random.default_rng(7)
    a = rng.standard_normal((5, 200))
    b = a + 1e-7 * rng.standard_normal(a.shape)
    fa, fb = a.reshape(-1), b.reshape(-1)
    fa[[3, 400]] = np.nan  # NaN on both sides at 3 and 400, on one side at 401 and 402
    fb[[3, 400, 401]] = np.nan
    fa[402] = np.nan
    fa[[10, 700]] = np.inf  # the same infinity: equal; opposite ones and inf vs finite: not
    fb[[10, 700]] = np.inf
    fa[701], fb[701] = -np.inf, np.inf
    fb[950] = np.inf
    fa[999] = 1e308  # x - y overflows to inf (finite values)
    fb[999] = -1e308
    row = compare_arrays(a, b, atol=ATOL, rtol=RTOL, equal_nan=equal_nan, tensor="t")
    want = expected(a, b, equal_nan=equal_nan)
    assert_row(row, want)
    assert want["mismatched"] == (2 if equal_nan else 4) + 3  # the premise: NaN at 3, 400-402; 701, 950, 999
    # all finite except an overflowing difference: the cosine is still defined
    c, e = np.full(700, 0.5), np.full(700, 0.5)
    c[650], e[650] = 1e308, -1e308
    row = compare_arrays(c, e, atol=ATOL, rtol=RTOL, equal_nan=False, tensor="t")
    assert (row.mismatched, row.max_abs_diff, row.max_abs_diff_at) == (1, math.inf, [650])
    assert row.cosine == pytest.approx(expected(c / 1e300, e / 1e300)["cosine"], rel=1e-9)


@st.composite
def pair_with_specials(draw):
    """(a, b) float32/float64 of up to 3 dims: b near a, equal, or unrelated, with NaN/Inf sprinkled in."""
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    shape = draw(array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=9))
    values = st.one_of(st.floats(-1e3, 1e3, width=32), st.sampled_from([0.0, np.nan, np.inf, -np.inf]))
    a = draw(arrays(dtype, shape, elements=values))
    how = draw(st.sampled_from(["same", "near", "other"]))
    if how == "other":
        b = draw(arrays(dtype, shape, elements=values))
    else:
        noise = draw(arrays(np.float64, shape, elements=st.floats(-1, 1))) * (0.0 if how == "same" else 1e-5)
        with np.errstate(invalid="ignore"):
            b = (a.astype(np.float64) + noise).astype(dtype)
    return a, b


@settings(max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(pair=pair_with_specials(), block=st.integers(1, 40), equal_nan=st.booleans(),
       atol=st.sampled_from([0.0, 1e-8, 1e-5]), rtol=st.sampled_from([0.0, 1.3e-6, 1e-3]))
def test_prop_blocks_equal_whole_arrays(pair, block, equal_nan, atol, rtol):
    a, b = pair
    saved = compare.BLOCK
    compare.BLOCK = block
    try:
        row = compare_arrays(a, b, atol=atol, rtol=rtol, equal_nan=equal_nan, tensor="t")
    finally:
        compare.BLOCK = saved
    assert_row(row, expected(a, b, atol, rtol, equal_nan))


@pytest.mark.parametrize("v", [1e-160, 1e160, 1e-300])
def test_cosine_of_extreme_values_across_blocks(blocks, v):
    rng = np.random.default_rng(1)
    a = rng.uniform(0.5, 1.0, (4, 300)) * v
    b = a * (1 + 1e-3 * rng.standard_normal(a.shape))
    a[:, :40] *= 1e-20  # tiny next to huge in the same tensor
    row = compare_arrays(a, b, atol=0.0, rtol=0.0, equal_nan=False, tensor="t")
    s = 1 / v
    assert row.cosine == pytest.approx(expected(a * s, b * s)["cosine"], rel=1e-12)
    assert compare_arrays(a, a.copy(), atol=0.0, rtol=0.0, equal_nan=False, tensor="t").cosine == pytest.approx(1.0)


def test_zeros_and_empty(blocks):
    z = np.zeros((3, 500), np.float32)
    row = compare_arrays(z, z.copy(), atol=ATOL, rtol=RTOL, equal_nan=False, tensor="t")
    assert (row.passed, row.cosine, row.max_rel_diff, row.max_abs_diff_at) == (True, 1.0, 0.0, [0, 0])
    one = z.copy()
    one[2, 499] = 1.0
    row = compare_arrays(z, one, atol=ATOL, rtol=RTOL, equal_nan=False, tensor="t")
    assert (row.mismatched, row.cosine, row.max_abs_diff_at) == (1, 0.0, [2, 499])
    empty = np.zeros((2, 0, 3))
    row = compare_arrays(empty, empty, atol=ATOL, rtol=RTOL, equal_nan=False, tensor="t")
    assert (row.passed, row.total, row.max_abs_diff_at) == (True, 0, None)


def test_lazy_array_indexing_reads_what_numpy_would(tmp_path):
    from lstmscope.arrays import DiskArray

    arr = np.arange(3 * 7 * 5, dtype=np.float32).reshape(3, 7, 5)
    safetensors.numpy.save_file({"h_n": arr[:1], "c_n": arr[:1], "output": arr}, str(tmp_path / "s.safetensors"))
    out = read_state_file(tmp_path / "s.safetensors").output
    assert isinstance(out, DiskArray) and (out.shape, out.dtype, len(out)) == (arr.shape, arr.dtype, 3)
    rows, steps = np.arange(3), np.array([6, 0, 3])
    for key in [(rows, steps), (slice(None), 0), 1, -1, (1, 2), (1, 2, 3), (-1, slice(None, None, 2)),
                (np.array([2, 0]), slice(1, 3)), (Ellipsis, 0), (slice(None), slice(None), 4), (0, [1, 1, 0]),
                (slice(1, 1),), np.array([True, False, True])]:
        got = out[key]
        np.testing.assert_array_equal(got, arr[key], err_msg=repr(key))
        assert np.shape(got) == np.shape(arr[key])
    np.testing.assert_array_equal(np.asarray(out), arr)
    np.testing.assert_array_equal(np.asarray(out, dtype=np.float64), arr.astype(np.float64))
    with pytest.raises(IndexError):
        out[3]


def test_show_state_reads_two_rows_of_a_lazy_output(tmp_path, invoke):
    """show-state's identity checks against a lazily read output, with lengths: the same document as
    for the same state in an .npz (read whole)."""
    b, t, hid = 3, 9, 4
    rng = np.random.default_rng(2)
    out = rng.standard_normal((b, t, 2 * hid)).astype(np.float32)
    lengths = np.array([9, 4, 1], dtype=np.int64)
    h = rng.standard_normal((2, b, hid)).astype(np.float32)
    h[0] = out[np.arange(b), lengths - 1, :hid]
    h[1] = out[:, 0, hid:]
    tensors = {"h_n": h, "c_n": h.copy(), "output": out, "lengths": lengths}
    safetensors.numpy.save_file(tensors, str(tmp_path / "s.safetensors"))
    np.savez(tmp_path / "s.npz", **tensors)
    docs = []
    for name in ("s.safetensors", "s.npz"):
        r = invoke("show-state", tmp_path / name, "--json", "--num-directions", "2", "-b", "1")
        assert r.exit_code == 0 and r.stderr == "", r.stderr
        doc = json.loads(r.stdout)
        assert all(c["ok"] for c in doc["checks"]) and len(doc["checks"]) == 2
        docs.append({k: v for k, v in doc.items() if k not in ("path", "kind")})
    assert docs[0] == docs[1]


# --- damaged files -------------------------------------------------------------------------------------


def _raw(header: dict, body: bytes) -> bytes:
    import struct

    head = json.dumps(header).encode()
    return struct.pack("<Q", len(head)) + head + body


@pytest.mark.parametrize("damage", ["gap", "overlap", "trailing", "bad_metadata"])
def test_lying_layout_is_one_error(invoke, tmp_path, damage):
    """Spans that do not tile the data section, as the safetensors library would refuse them."""
    f32 = {"dtype": "F32", "shape": [1, 1, 1]}
    header = {"h_n": {**f32, "data_offsets": [0, 4]}, "c_n": {**f32, "data_offsets": [4, 8]}}
    body = bytes(8)
    if damage == "gap":
        header["c_n"]["data_offsets"] = [8, 12]
        body = bytes(12)
    elif damage == "overlap":
        header["c_n"]["data_offsets"] = [0, 4]
    elif damage == "trailing":
        body = bytes(16)
    else:
        header["__metadata__"] = {"lstmscope.state": 1}
    p = tmp_path / f"{damage}.safetensors"
    p.write_bytes(_raw(header, body))
    safetensors.numpy.save_file({"h_n": np.ones((1, 1, 1), np.float32), "c_n": np.ones((1, 1, 1), np.float32)},
                                str(tmp_path / "good.safetensors"))
    for args in (("diff-states", p, tmp_path / "good.safetensors"), ("show-state", p)):
        assert_one_error_line(invoke(*args), p)


def test_bf16_state_is_still_refused(invoke, tmp_path):
    p = tmp_path / "bf16.safetensors"
    bf = {"dtype": "BF16", "shape": [1, 1, 2]}
    p.write_bytes(_raw({"h_n": {**bf, "data_offsets": [0, 4]}, "c_n": {**bf, "data_offsets": [4, 8]}}, bytes(8)))
    assert_one_error_line(invoke("diff-states", p, p), p, "cannot read safetensors")


def test_file_truncated_after_it_was_opened(tmp_path, blocks):
    """The header is checked when the file is opened; a file cut short before its tensors are read
    (changed underneath) is a StateError naming it, not a crash or garbage."""
    pa, pb = _pair(tmp_path, np.float32)
    sa, sb = read_state_file(pa), read_state_file(pb)
    with open(pb, "r+b") as f:
        f.truncate(pb.stat().st_size - 100)
    with pytest.raises(StateError, match="truncated") as e:
        diff_states(sa, sb)
    assert str(pb) in str(e.value)


# --- memory -----------------------------------------------------------------------------------------------


def test_big_snapshots_in_flat_memory(tmp_path):
    """diff-states on two ~256 MB snapshots and show-state on one keep the process's peak RSS well under
    one file's size (a whole-array diff would need several times it)."""
    sys.path.insert(0, str(ROOT))
    from benchmarks.diff_big import make_pair, measure

    a, b = make_pair(tmp_path, 256 << 20)
    size = a.stat().st_size
    r = measure("diff-states", a, b, "--json")
    assert r["exit"] == 1 and r["stderr"] == "", r["stderr"]
    doc = json.loads(r["stdout"])
    out = doc["rows"][-1]
    with safe_open(str(a), framework="np") as f:
        assert out["tensor"] == "output" and out["shape"] == f.get_slice("output").get_shape()
    assert out["mismatched"] > 0 and out["pass"] is False
    assert r["rss_bytes"] < 0.5 * size, (r["rss_bytes"] >> 20, size >> 20)
    r = measure("show-state", b, "--json")
    assert r["exit"] == 0 and json.loads(r["stdout"])["ok"] is True, r["stderr"]
    assert r["rss_bytes"] < 0.5 * size, (r["rss_bytes"] >> 20, size >> 20)


# --- The float32 path (compare._F32Block): float32 filters, float64 for the few elements they pick ---------------


def _planted_f32(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """float32 a, b of n values: b near a, beyond tolerance at a few places, exact zeros in b, NaN/Inf on
    either side, an overflowing float32 difference and ratio, and a float32 tie that float64 breaks."""
    rng = np.random.default_rng(seed)
    a = rng.standard_normal(n).astype(np.float32)
    b = (a + a * np.float32(3e-7) * rng.standard_normal(n).astype(np.float32)).astype(np.float32)
    pick = rng.choice(n, 40, replace=False)
    b[pick[:8]] += np.float32(1e-3)  # over tolerance
    b[pick[8:12]] = 0.0  # |b| = 0: rel inf where a differs
    a[pick[12]], b[pick[12]] = np.nan, np.nan
    a[pick[13]] = np.nan
    b[pick[14]] = np.inf
    a[pick[15]], b[pick[15]] = -np.inf, -np.inf
    a[pick[16]], b[pick[16]] = np.float32(3e38), np.float32(-3e38)  # a - b overflows float32, not float64
    a[pick[17]], b[pick[17]] = np.float32(1.0), np.float32(1e-45)  # |a - b| / |b| overflows float32
    # float32 gives both differences the same value; float64 makes the second larger: the max is there
    a[100], b[100] = np.float32(1 + 2**-21), np.float32(2**-30 * (1 + 2**-22))
    a[101], b[101] = np.float32(1 + 2**-21), np.float32(2**-30)
    return a, b


@pytest.mark.parametrize("block", [1 << 17, 4099, 1000, 7], ids=["one-block", "4099", "1000", "7"])
@pytest.mark.parametrize("plant", ["finite", "ties", "specials"])
@pytest.mark.parametrize("atol,rtol", [(ATOL, RTOL), (0.0, 1e-6), (0.0, 0.0), (1e-2, 0.0)])
def test_f32_path_equals_float64_numpy(tmp_path, monkeypatch, block, plant, atol, rtol):
    """Float32 files through the float32 path, blocks that split the data unevenly (the last block short),
    against plain float64 numpy over the whole arrays: every figure equal, the cosine to 1e-12."""
    monkeypatch.setattr(compare, "BLOCK", block)
    a, b = _planted_f32(12_345, seed=len(plant) + block % 97)
    rng = np.random.default_rng(3)
    if plant == "finite":  # no NaN/Inf and nothing overflowing: blocks take the float32 path throughout
        bad = ~(np.isfinite(a) & np.isfinite(b)) | (np.abs(a) > 1e30) | (np.abs(b) < 1e-30)
        a[bad], b[bad] = 1.0, 1.0
    elif plant == "ties":  # float32 differences that tie in every block, which float64 tells apart
        a[:] = np.float32(1 + 2**-23 * 4)
        b[:] = np.float32(2**-30) * (1 + np.float32(2**-23) * rng.integers(0, 3, a.size)).astype(np.float32)
    pa, pb = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    h = np.ones((1, 3, 5), np.float32)  # (layers * directions, batch, hidden): a state file needs h_n and c_n
    safetensors.numpy.save_file({"h_n": h, "c_n": h, "output": a.reshape(3, -1, 5)}, str(pa))
    safetensors.numpy.save_file({"h_n": h, "c_n": h, "output": b.reshape(3, -1, 5)}, str(pb))
    row = diff_states(read_state_file(pa), read_state_file(pb), atol=atol, rtol=rtol).rows[-1]
    assert row.tensor == "output" and not isinstance(read_state_file(pa).output, np.ndarray)  # read in blocks
    assert_row(row, expected(a.reshape(3, -1, 5), b.reshape(3, -1, 5), atol, rtol))
    row = compare_arrays(a, b, atol=atol, rtol=rtol, equal_nan=True, tensor="t")  # in memory, --equal-nan
    assert_row(row, expected(a, b, atol, rtol, equal_nan=True))


def test_f32_path_many_mismatches_and_subnormals(monkeypatch):
    """Blocks where most elements are over tolerance (the float64 fallback) next to blocks that pass, and
    subnormal float32 values, where float32 rounding is no longer relative."""
    monkeypatch.setattr(compare, "BLOCK", 1000)
    rng = np.random.default_rng(11)
    a = rng.standard_normal(5500).astype(np.float32)
    b = a.copy()
    b[:2000] += np.float32(1e-2)  # two blocks all over tolerance
    b[3000:3100] = (rng.integers(1, 50, 100) * np.float32(1e-45)).astype(np.float32)  # subnormal references
    a[3100:3200] = (rng.integers(1, 50, 100) * np.float32(1e-45)).astype(np.float32)
    b[3100:3200] = (rng.integers(1, 50, 100) * np.float32(1e-45)).astype(np.float32)
    for atol, rtol in [(ATOL, RTOL), (0.0, 0.0), (1e-44, 0.0), (0.0, 0.5)]:
        assert_row(compare_arrays(a, b, atol=atol, rtol=rtol, equal_nan=False, tensor="t"),
                   expected(a, b, atol, rtol))


def test_f32_path_matches_float64_path_bit_for_bit(tmp_path, monkeypatch):
    """The float32 path gives what the float64 path gives for the same float32 files, cosine included
    (its sums are taken from the same float64 values, block by block)."""
    monkeypatch.setattr(compare, "BLOCK", 1000)
    a, b = _planted_f32(9_999, seed=2)
    bad = ~(np.isfinite(a) & np.isfinite(b))
    a[bad], b[bad] = 0.5, 0.25
    fast = compare_arrays(a, b, atol=ATOL, rtol=RTOL, equal_nan=False, tensor="t")
    slow = compare_arrays(a.astype(np.float64), b.astype(np.float64), atol=ATOL, rtol=RTOL, equal_nan=False,
                          tensor="t")
    assert fast == slow


@pytest.mark.parametrize("later", [1, -1], ids=["later-block-larger", "later-block-smaller"])
def test_f32_max_rel_in_a_later_block_by_a_hair(monkeypatch, later):
    """The running max rel lets a block skip its float64 recheck only when its float32 maximum is clearly
    below: a later block whose ratio is above the earlier maximum by one float32 step still wins, and one
    below it by one step does not."""
    monkeypatch.setattr(compare, "BLOCK", 1000)
    a, b = np.ones(3500, np.float32), np.ones(3500, np.float32)
    a[5] = np.float32(1 + 2**-10)  # rel 2**-10 in block 0
    a[2500] = np.float32(1 + 2**-10 + later * 2**-22)  # block 2: a hair above or below it
    for x in (a, a.astype(np.float64)):  # the float32 path, and the float64 one as the reference's twin
        assert_row(compare_arrays(x, b, atol=0.0, rtol=0.0, equal_nan=False, tensor="t"), expected(a, b, 0.0, 0.0))
    assert compare_arrays(a, b, atol=0.0, rtol=0.0, equal_nan=False, tensor="t").max_rel_diff == \
        (2**-10 + 2**-22 if later > 0 else 2**-10)


@pytest.mark.parametrize("block", [1 << 17, 64, 7])
def test_f32_path_where_float32_rounding_misleads(monkeypatch, block):
    """Values where a float32 view alone gives a wrong answer, each against plain float64 numpy: two |a - b|
    that tie in float32 (float64 puts the later one first), two |a - b| / |b| whose float32 order is the
    reverse of float64's, and an atol that float32 rounds up (0.1), with one difference just above it."""
    monkeypatch.setattr(compare, "BLOCK", block)
    rng = np.random.default_rng(4)
    a = rng.standard_normal(500).astype(np.float32)
    b = a.copy()
    b[50:60] *= np.float32(1 + 3e-3)  # a few over tolerance, far from the figures below (rel 3e-3)
    a[100], b[100] = np.float32(1 + 2**-21), np.float32(2**-30 * (1 + 2**-22))  # float32: the same |a - b|
    a[101], b[101] = np.float32(1 + 2**-21), np.float32(2**-30)  # float64: larger by 2**-52, so the max is here
    assert np.abs(a[100] - b[100]) == np.abs(a[101] - b[101])  # the premise
    for atol, rtol in [(ATOL, RTOL), (0.0, 0.0), (1e-2, 0.0), (2.0, 0.0)]:  # 2.0: every element within atol
        row = compare_arrays(a, b, atol=atol, rtol=rtol, equal_nan=False, tensor="t")
        assert_row(row, expected(a, b, atol, rtol))
        assert row.max_abs_diff_at == [101]
    a, b = a.copy(), a.copy()
    b[50:60] *= np.float32(1 + 3e-3)
    a[300], b[300] = np.float32(0.0009750547), np.float32(1.0032041)  # rel: float32 0.9990281, float64 0.99902806
    a[301], b[301] = np.float32(0.00097471755), np.float32(1.0028875)  # rel: float32 0.999028, float64 0.99902809
    assert abs(a[300] - b[300]) / abs(b[300]) > abs(a[301] - b[301]) / abs(b[301])  # the premise
    assert abs(float(a[300]) - float(b[300])) / abs(float(b[300])) < abs(float(a[301]) - float(b[301])) / abs(float(b[301]))
    for atol, rtol in [(ATOL, RTOL), (0.0, 0.0), (2.0, 0.0)]:
        row = compare_arrays(a, b, atol=atol, rtol=rtol, equal_nan=False, tensor="t")
        assert_row(row, expected(a, b, atol, rtol))
        assert row.max_rel_diff == abs(float(a[301]) - float(b[301])) / abs(float(b[301]))
    c, z = np.zeros(300, np.float32), np.zeros(300, np.float32)
    c[[5, 200]] = np.float32(0.1)  # 0.10000000149 in float32: over atol = 0.1 in float64
    c[[6, 201]] = np.float32(0.5)  # and a larger difference in the same block
    row = compare_arrays(c, z, atol=0.1, rtol=0.0, equal_nan=False, tensor="t")
    assert_row(row, expected(c, z, 0.1, 0.0))
    assert row.mismatched == 4
