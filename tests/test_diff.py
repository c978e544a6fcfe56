"""diff-states (and the torch-free promise of diff-states / show-state) against independent truth.

Expected numbers are computed here with numpy in float64 from the tensors that the safetensors
library reads back; the pass rule is the README's ``|a - b| <= atol + rtol * |b|`` with B the
reference. Property tests drive ``lstmscope.statediff`` with hypothesis.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import safetensors.numpy
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import array_shapes, arrays
from safetensors import safe_open

from lstmscope.statediff import compare_arrays, diff_states
from lstmscope.snapshot import StateFile

B, T, F, H = 3, 6, 4, 5
ATOL, RTOL = 1e-5, 1.3e-6  # the documented defaults
DIRECTIONS = ("forward", "backward")
TOP_KEYS = {"schema", "kind", "a", "b", "equal", "comparable", "atol", "rtol", "equal_nan", "rows", "only_in_a",
            "only_in_b", "metadata_differences"}
ROW_KEYS = {"tensor", "layer", "direction", "shape", "shape_b", "max_abs_diff", "max_abs_diff_at", "max_rel_diff",
            "mismatched", "total", "mismatched_pct", "cosine", "pass"}


def _export(args: list) -> None:
    from typer.testing import CliRunner

    from lstmscope.cli import app

    r = CliRunner().invoke(app, ["export-state", *map(str, args)])
    assert r.exit_code == 0, r.stderr


@pytest.fixture(scope="module")
def snaps(tmp_path_factory) -> dict[str, Path]:
    """Snapshots of tiny bidirectional 2-layer LSTMs, exported once through the CLI."""
    import torch

    root = tmp_path_factory.mktemp("diff")
    ckpts = {}
    for name, hidden in (("h5", H), ("h6", H + 1)):
        torch.manual_seed(hidden)
        lstm = torch.nn.LSTM(F, hidden, num_layers=2, bidirectional=True, batch_first=True)
        ckpts[name] = root / f"{name}.pt"
        torch.save(lstm.state_dict(), ckpts[name])
    x = np.random.default_rng(0).standard_normal((B, T, F)).astype(np.float32)
    np.save(root / "x.npy", x)
    out = {
        "base": ["h5", []],
        "base2": ["h5", []],  # the same run again, to a second file
        "with_output": ["h5", ["--include-output"]],
        "f64": ["h5", ["--dtype", "float64"]],
        "h6": ["h6", []],
    }
    paths = {}
    for key, (ck, extra) in out.items():
        paths[key] = root / f"{key}.safetensors"
        _export([ckpts[ck], root / "x.npy", "-o", paths[key], *extra])
    return paths


def metadata(path: Path) -> dict | None:
    with safe_open(str(path), framework="np") as f:
        return f.metadata()


def copy_with(src: Path, dst: Path, edit) -> Path:
    """A copy of a snapshot (metadata entry kept) with ``edit(tensors)`` applied."""
    tensors = safetensors.numpy.load_file(str(src))
    edit(tensors)
    safetensors.numpy.save_file(tensors, str(dst), metadata=metadata(src))
    return dst


def diff_json(invoke, a, b, *extra) -> tuple[int, dict]:
    r = invoke("diff-states", a, b, "--json", *extra)
    assert r.exit_code in (0, 1), (r.exit_code, r.stderr)
    assert r.stderr == ""
    return r.exit_code, json.loads(r.stdout)


def assert_one_error(r, code: int = 2) -> str:
    assert r.exit_code == code, (r.exit_code, r.stdout, r.stderr)
    assert r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), r.stderr
    return lines[0]


def expected_row(a: np.ndarray, b: np.ndarray, atol: float, rtol: float) -> dict:
    """What a row must say, computed here in float64 with B as the reference."""
    x, y = a.astype(np.float64), b.astype(np.float64)
    d = np.abs(x - y)
    fail = ~(d <= atol + rtol * np.abs(y))
    return {
        "max_abs_diff": float(d.max()),
        "max_abs_diff_at": [int(i) for i in np.unravel_index(int(np.argmax(d)), d.shape)],
        "mismatched": int(fail.sum()),
        "total": int(d.size),
        "cosine": float(np.dot(x.ravel(), y.ravel()) / np.sqrt(np.dot(x.ravel(), x.ravel()) * np.dot(y.ravel(), y.ravel()))),
        "pass": not fail.any(),
    }


# --- exit codes and the JSON document --------------------------------------------------------------------


def test_identical_files(invoke, snaps):
    code, doc = diff_json(invoke, snaps["base"], snaps["base2"])
    assert code == 0
    assert set(doc) == TOP_KEYS
    assert doc["schema"] == "lstmscope.diff/1"
    assert (doc["a"], doc["b"]) == (str(snaps["base"]), str(snaps["base2"]))
    assert doc["equal"] is True and doc["comparable"] is True
    assert (doc["atol"], doc["rtol"], doc["equal_nan"]) == (ATOL, RTOL, False)
    assert doc["only_in_a"] == [] and doc["only_in_b"] == []
    assert doc["metadata_differences"] == {"architecture": {}, "provenance": {}}
    # h_n then c_n, each per (layer, direction) in native order
    assert [(r["tensor"], r["layer"], r["direction"]) for r in doc["rows"]] == [
        (t, i // 2, DIRECTIONS[i % 2]) for t in ("h_n", "c_n") for i in range(4)]
    for row in doc["rows"]:
        assert set(row) == ROW_KEYS
        assert row["shape"] == [B, H] and row["shape_b"] is None
        assert row["max_abs_diff"] == 0.0 and row["mismatched"] == 0 and row["total"] == B * H
        assert row["mismatched_pct"] == 0.0 and row["pass"] is True
        assert row["cosine"] == pytest.approx(1.0, abs=1e-12)
    r = invoke("diff-states", snaps["base"], snaps["base2"])
    assert r.exit_code == 0 and r.stderr == "" and r.stdout.strip()


def test_perturbed_copy_by_10x_tolerance(invoke, snaps, tmp_path):
    ref = safetensors.numpy.load_file(str(snaps["base"]))
    idx = 2  # layer 1, forward

    def edit(t):
        b = t["h_n"][idx]
        b[1, 3] += np.float32(10 * (ATOL + RTOL * abs(b[1, 3])))  # 10x the tolerance: the largest
        b[0, 0] -= np.float32(5 * ATOL)  # fails too
        b[2, 4] += np.float32(0.3 * ATOL)  # within tolerance

    a = copy_with(snaps["base"], tmp_path / "a.safetensors", edit)
    got = safetensors.numpy.load_file(str(a))
    code, doc = diff_json(invoke, a, snaps["base"])
    assert code == 1
    assert doc["equal"] is False and doc["comparable"] is True
    assert len(doc["rows"]) == 8
    for i, row in enumerate(doc["rows"]):
        if (row["tensor"], row["layer"], row["direction"]) != ("h_n", 1, "forward"):
            assert row["pass"] is True and row["max_abs_diff"] == 0.0
            continue
        want = expected_row(got["h_n"][idx], ref["h_n"][idx], ATOL, RTOL)
        assert want["mismatched"] == 2 and want["max_abs_diff_at"] == [1, 3]  # the test's own premise
        assert row["max_abs_diff"] == want["max_abs_diff"]
        assert row["max_abs_diff_at"] == want["max_abs_diff_at"]
        assert row["mismatched"] == want["mismatched"]
        assert row["total"] == want["total"]
        assert row["mismatched_pct"] == pytest.approx(100 * 2 / (B * H))
        assert row["cosine"] == pytest.approx(want["cosine"], rel=1e-12)
        assert row["pass"] is False
    r = invoke("diff-states", a, snaps["base"])
    assert r.exit_code == 1 and r.stderr == "" and "FAIL" in r.stdout


def test_perturbation_inside_tolerance(invoke, snaps, tmp_path):
    def edit(t):
        t["h_n"][0, 0, 0] += np.float32(0.3 * ATOL)
        t["c_n"][3, 2, 4] -= np.float32(0.3 * ATOL)

    a = copy_with(snaps["base"], tmp_path / "a.safetensors", edit)
    code, doc = diff_json(invoke, a, snaps["base"])
    assert code == 0 and doc["equal"] is True
    assert doc["rows"][0]["max_abs_diff"] > 0
    # and a tighter --atol turns it into a difference
    code, doc = diff_json(invoke, a, snaps["base"], "--atol", "1e-7", "--rtol", "0")
    assert code == 1
    assert sum(r["mismatched"] for r in doc["rows"]) == 2


def test_b_is_the_reference(invoke, tmp_path):
    """|a - b| <= atol + rtol * |b|: with atol 0 and rtol 0.1, 1.0 vs 1.105 passes one way only."""
    one = np.ones((1, 1, 1))
    safetensors.numpy.save_file({"h_n": one, "c_n": one}, str(tmp_path / "a.safetensors"))
    safetensors.numpy.save_file({"h_n": one * 1.105, "c_n": one}, str(tmp_path / "b.safetensors"))
    args = ("--atol", "0", "--rtol", "0.1")
    assert invoke("diff-states", tmp_path / "a.safetensors", tmp_path / "b.safetensors", *args).exit_code == 0
    assert invoke("diff-states", tmp_path / "b.safetensors", tmp_path / "a.safetensors", *args).exit_code == 1


@pytest.mark.parametrize("bad", ["garbage", "missing", "text", "empty", "no_c_n", "directory"])
@pytest.mark.parametrize("side", ["a", "b"])
def test_unreadable_file_exits_2(invoke, snaps, tmp_path, bad, side):
    p = tmp_path / "bad.safetensors"
    if bad == "garbage":
        p.write_bytes(np.random.default_rng(1).bytes(300))
    elif bad == "text":
        p.write_text("h_n c_n\n0.1 0.2\n")
    elif bad == "empty":
        p.write_bytes(b"")
    elif bad == "no_c_n":
        copy_with(snaps["base"], p, lambda t: t.pop("c_n"))
    elif bad == "directory":
        p.mkdir()
    args = (p, snaps["base"]) if side == "a" else (snaps["base"], p)
    line = assert_one_error(invoke("diff-states", *args))
    if bad == "no_c_n":
        assert "c_n" in line
    assert invoke("diff-states", *args, "--json").exit_code == 2


def test_negative_tolerance_is_a_usage_error(invoke, snaps):
    assert_one_error(invoke("diff-states", snaps["base"], snaps["base2"], "--atol", "-1"))


def test_tensor_only_in_one_file(invoke, snaps):
    code, doc = diff_json(invoke, snaps["with_output"], snaps["base"])
    assert code == 1
    assert doc["only_in_a"] == ["output"] and doc["only_in_b"] == []
    assert doc["comparable"] is True and doc["equal"] is False
    assert all(r["pass"] for r in doc["rows"])
    code, doc = diff_json(invoke, snaps["base"], snaps["with_output"])
    assert code == 1
    assert doc["only_in_a"] == [] and doc["only_in_b"] == ["output"]


def test_architecture_difference(invoke, snaps):
    code, doc = diff_json(invoke, snaps["base"], snaps["h6"])
    assert code == 1
    assert doc["comparable"] is False and doc["equal"] is False
    assert doc["metadata_differences"]["architecture"] == {"hidden_size": [H, H + 1]}
    r = invoke("diff-states", snaps["base"], snaps["h6"])
    assert r.exit_code == 1 and r.stderr == ""


def test_provenance_only_difference(invoke, snaps):
    code, doc = diff_json(invoke, snaps["base"], snaps["f64"])
    assert code == 0
    assert doc["equal"] is True and doc["comparable"] is True
    assert doc["metadata_differences"]["architecture"] == {}
    assert doc["metadata_differences"]["provenance"] == {"dtype": ["float32", "float64"]}
    a = safetensors.numpy.load_file(str(snaps["base"]))
    b = safetensors.numpy.load_file(str(snaps["f64"]))
    assert b["h_n"].dtype == np.float64
    for i, row in enumerate(doc["rows"][:4]):
        assert row["max_abs_diff"] == expected_row(a["h_n"][i], b["h_n"][i], ATOL, RTOL)["max_abs_diff"]
    r = invoke("diff-states", snaps["base"], snaps["f64"])
    assert r.exit_code == 0 and "dtype" in r.stdout


def test_quiet(invoke, snaps, tmp_path):
    r = invoke("diff-states", snaps["base"], snaps["base2"], "--quiet")
    assert (r.exit_code, r.stdout, r.stderr) == (0, "", "")
    a = copy_with(snaps["base"], tmp_path / "a.safetensors", lambda t: t["c_n"].__setitem__((0, 0, 0), 9.0))
    r = invoke("diff-states", a, snaps["base"], "-q")
    assert (r.exit_code, r.stdout, r.stderr) == (1, "", "")
    r = invoke("diff-states", snaps["base"], snaps["h6"], "--quiet")
    assert (r.exit_code, r.stdout, r.stderr) == (1, "", "")
    r = invoke("diff-states", snaps["base"], snaps["with_output"], "--quiet", "--json")
    assert (r.exit_code, r.stdout, r.stderr) == (1, "", "")


# --- foreign files and NaN ----------------------------------------------------------------------------


@pytest.fixture
def foreign(tmp_path):
    rng = np.random.default_rng(3)
    h = rng.standard_normal((4, B, H)).astype(np.float32)  # (L*D, B, H): 2 layers x 2 directions
    c = rng.standard_normal((4, B, H)).astype(np.float32)
    return tmp_path, h, c


def test_foreign_files_whole_and_per_direction(invoke, foreign):
    root, h, c = foreign
    h2 = h.copy()
    h2[3, 1, 2] += 1.0  # layer 1 backward
    np.savez(root / "a.npz", h_n=h2, c_n=c)
    safetensors.numpy.save_file({"h_n": h, "c_n": c}, str(root / "b.safetensors"))
    code, doc = diff_json(invoke, root / "a.npz", root / "b.safetensors")
    assert code == 1
    assert [(r["tensor"], r["layer"], r["direction"]) for r in doc["rows"]] == [("h_n", None, None), ("c_n", None, None)]
    want = expected_row(h2, h, ATOL, RTOL)
    row = doc["rows"][0]
    assert row["shape"] == [4, B, H]
    assert (row["max_abs_diff"], row["max_abs_diff_at"], row["mismatched"], row["total"]) == (
        want["max_abs_diff"], want["max_abs_diff_at"], want["mismatched"], want["total"])
    assert want["max_abs_diff_at"] == [3, 1, 2]
    assert doc["rows"][1]["pass"] is True
    assert doc["metadata_differences"] == {"architecture": {}, "provenance": {}}

    code, doc = diff_json(invoke, root / "a.npz", root / "b.safetensors", "--num-directions", "2")
    assert code == 1
    assert [(r["tensor"], r["layer"], r["direction"]) for r in doc["rows"]] == [
        (t, i // 2, DIRECTIONS[i % 2]) for t in ("h_n", "c_n") for i in range(4)]
    assert [r["pass"] for r in doc["rows"]] == [True, True, True, False] + [True] * 4
    assert doc["rows"][3]["max_abs_diff_at"] == [1, 2]
    assert doc["rows"][3]["shape"] == [B, H]

    code, doc = diff_json(invoke, root / "b.safetensors", root / "b.safetensors", "--num-directions", "1")
    assert code == 0 and len(doc["rows"]) == 8  # 4 layers x 1 direction, h_n and c_n


def test_foreign_shape_mismatch(invoke, foreign):
    root, h, c = foreign
    np.savez(root / "a.npz", h_n=h, c_n=c)
    np.savez(root / "b.npz", h_n=h[:, :, :3], c_n=c)
    code, doc = diff_json(invoke, root / "a.npz", root / "b.npz")
    assert code == 1
    row = doc["rows"][0]
    assert row["tensor"] == "h_n" and row["pass"] is False
    assert row["shape"] == [4, B, H] and row["shape_b"] == [4, B, 3]
    assert doc["rows"][1]["pass"] is True


def _nan_files(root, h, c):
    hn = h.copy()
    hn[0, 0, 0] = hn[2, 1, 4] = np.nan
    np.savez(root / "a.npz", h_n=hn, c_n=c)
    np.savez(root / "b.npz", h_n=hn.copy(), c_n=c)  # NaN at the same places
    np.savez(root / "c.npz", h_n=h, c_n=c)  # no NaN
    return root / "a.npz", root / "b.npz", root / "c.npz"


def test_nan_never_equals_nan_by_default(invoke, foreign):
    a, b, c = _nan_files(*foreign)
    code, doc = diff_json(invoke, a, b)
    assert code == 1 and doc["equal_nan"] is False
    assert doc["rows"][0]["mismatched"] == 2 and doc["rows"][0]["pass"] is False
    assert doc["rows"][1]["pass"] is True


def test_equal_nan_one_side_only_still_differs(invoke, foreign):
    a, _, c = _nan_files(*foreign)
    code, doc = diff_json(invoke, a, c, "--equal-nan")
    assert code == 1 and doc["equal_nan"] is True and doc["rows"][0]["mismatched"] == 2
    code, doc = diff_json(invoke, c, a, "--equal-nan")
    assert code == 1 and doc["rows"][0]["mismatched"] == 2


def test_equal_nan_same_places(invoke, foreign):
    """NaN at the same places counts as equal with --equal-nan (it once stayed mismatched: |b| = NaN)."""
    a, b, _ = _nan_files(*foreign)
    code, doc = diff_json(invoke, a, b, "--equal-nan")
    assert doc["rows"][0]["max_abs_diff"] == 0.0
    assert doc["rows"][0]["mismatched"] == 0
    assert code == 0 and doc["equal"] is True


def test_equal_infinities_pass_with_default_rtol():
    a = np.array([1.0, np.inf, -np.inf])
    row = compare_arrays(a, a.copy(), atol=ATOL, rtol=RTOL, equal_nan=False, tensor="t")
    assert row.passed and row.mismatched == 0 and row.max_abs_diff == 0.0


def test_infinite_reference_matches_only_the_same_infinity(invoke, tmp_path):
    """atol + rtol * |inf| is inf: without care anything (finite, -inf, NaN) would pass against inf."""
    a = np.array([1.0, -np.inf, np.nan, np.inf])
    b = np.array([np.inf, np.inf, np.inf, np.inf])
    row = compare_arrays(a, b, atol=ATOL, rtol=RTOL, equal_nan=False, tensor="t")
    assert row.mismatched == 3 and not row.passed
    h = np.zeros((1, 1, 4))
    np.savez(tmp_path / "a.npz", h_n=a.reshape(1, 1, 4), c_n=h)
    np.savez(tmp_path / "b.npz", h_n=b.reshape(1, 1, 4), c_n=h)
    assert invoke("diff-states", tmp_path / "a.npz", tmp_path / "b.npz", "--quiet").exit_code == 1


def test_equal_infinities_pass_with_rtol_zero():
    """0 * inf must not turn the tolerance of an infinite reference into NaN."""
    a = np.array([1.0, np.inf, -np.inf])
    row = compare_arrays(a, a.copy(), atol=ATOL, rtol=0.0, equal_nan=False, tensor="t")
    assert row.passed and row.mismatched == 0


@pytest.mark.parametrize("v", [
    1e-160,  # |x|^2 * |y|^2 underflows when multiplied first
    1e160,  # sums of squares would overflow without scaling
    1e-170,  # sums of squares would underflow to 0 without scaling
])
def test_cosine_of_identical_extreme_arrays(v):
    import warnings

    a = np.full((2, 3), v)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        row = compare_arrays(a, a.copy(), atol=ATOL, rtol=RTOL, equal_nan=False, tensor="t")
    assert row.passed
    assert row.cosine == pytest.approx(1.0)
    assert caught == []


def test_cli_identical_tiny_values_clean(tmp_path):
    """No numpy RuntimeWarning on stderr and a real cosine for identical files of tiny values."""
    h = np.full((1, 2, 3), 1e-160)
    np.savez(tmp_path / "a.npz", h_n=h, c_n=h)
    np.savez(tmp_path / "b.npz", h_n=h.copy(), c_n=h.copy())
    r = _lstmscope(_torchless_env(tmp_path), "diff-states", tmp_path / "a.npz", tmp_path / "b.npz", "--json")
    assert r.returncode == 0, r.stderr
    assert [row["cosine"] for row in json.loads(r.stdout)["rows"]] == [1.0, 1.0]
    assert r.stderr == ""


# --- property tests on lstmscope.statediff --------------------------------------------------------------

PROP = settings(max_examples=200, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
tolerances = st.one_of(st.sampled_from([0.0, 1e-8, 1.3e-6, 1e-5, 1e-3]), st.floats(0, 1e-2))
SCALES = [0.0, 1e-9, 1e-7, 1e-6, 1e-5, 1e-4, 1e-2, 1.0]


def _elements(dtype):
    width = 32 if dtype == np.float32 else 64
    # Magnitudes below 1e-30 are flushed to 0: squares of such values are subnormal, where the cosine
    # loses its precision; test_cosine_of_identical_extreme_arrays covers extreme magnitudes on its own.
    return st.floats(-50, 50, width=width, allow_nan=False, allow_infinity=False).map(
        lambda v: v if abs(v) >= 1e-30 else 0.0)


@st.composite
def close_pair(draw, shape=None):
    """(a, b): b is a, a perturbed a, or unrelated; float32 or float64; finite."""
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    if shape is None:
        shape = draw(array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=5))
    a = draw(arrays(dtype, shape, elements=_elements(dtype)))
    how = draw(st.sampled_from(["same", "noise", "sparse", "other"]))
    if how == "same":
        b = a.copy()
    elif how == "other":
        b = draw(arrays(dtype, shape, elements=_elements(dtype)))
    else:
        noise = draw(arrays(np.float64, shape, elements=st.floats(-1, 1)))
        if how == "sparse":
            noise *= draw(arrays(np.bool_, shape))
        b = (a.astype(np.float64) + noise * draw(st.sampled_from(SCALES))).astype(dtype)
    return a, b


def rule(a, b, atol, rtol) -> np.ndarray:
    """Elements that pass, by the README's rule, computed in float64 (B is the reference)."""
    x, y = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.abs(x - y) <= atol + rtol * np.abs(y)


@PROP
@given(pair=close_pair(), atol=tolerances, rtol=tolerances)
def test_prop_compare_arrays_follows_the_rule(pair, atol, rtol):
    a, b = pair
    row = compare_arrays(a, b, atol=atol, rtol=rtol, equal_nan=False, tensor="t")
    ok = rule(a, b, atol, rtol)
    assert row.passed == bool(np.all(ok))
    assert row.mismatched == int(ok.size - np.count_nonzero(ok))
    assert row.total == a.size
    assert row.shape == list(a.shape) and row.shape_b is None
    d = np.abs(a.astype(np.float64) - b.astype(np.float64))
    assert row.max_abs_diff == d.max()
    assert d[tuple(row.max_abs_diff_at)] == d.max()
    assert -1.0 - 1e-9 <= row.cosine <= 1.0 + 1e-9


@PROP
@given(pair=close_pair(), atol=tolerances, rtol=tolerances)
def test_prop_compare_with_itself_is_equal(pair, atol, rtol):
    a, _ = pair
    row = compare_arrays(a, a.copy(), atol=atol, rtol=rtol, equal_nan=False, tensor="t")
    assert row.passed and row.mismatched == 0 and row.max_abs_diff == 0.0 and row.max_rel_diff == 0.0
    if np.any(a != 0):
        assert row.cosine == pytest.approx(1.0, abs=1e-9)


@st.composite
def state_pair(draw):
    """Two foreign states of the same (L*D, B, H) shape, with L*D <= 4, B <= 3, H <= 5."""
    d = draw(st.sampled_from([1, 2]))
    layers = draw(st.integers(1, 4 // d))
    batch = draw(st.integers(1, 3))
    hidden = draw(st.integers(1, 5))
    shape = (layers * d, batch, hidden)
    ha, hb = draw(close_pair(shape=shape))
    ca, cb = draw(close_pair(shape=shape))
    return d, ha, hb, ca, cb


def _state(name, h, c) -> StateFile:
    return StateFile(Path(name), h, c, None, None, None, "npz", {})


@PROP
@given(s=state_pair(), atol=tolerances, rtol=tolerances)
def test_prop_diff_states_per_layer_direction(s, atol, rtol):
    d, ha, hb, ca, cb = s
    sa, sb = _state("a", ha, ca), _state("b", hb, cb)
    res = diff_states(sa, sb, atol=atol, rtol=rtol, num_directions=d)
    ld = ha.shape[0]
    assert len(res.rows) == 2 * ld
    for k, row in enumerate(res.rows):
        name, i = ("h_n", k) if k < ld else ("c_n", k - ld)
        a, b = (ha[i], hb[i]) if name == "h_n" else (ca[i], cb[i])
        ok = rule(a, b, atol, rtol)
        assert (row.tensor, row.layer, row.direction) == (name, i // d, DIRECTIONS[i % d])
        assert row.passed == bool(ok.all())
        assert row.mismatched == int(ok.size - np.count_nonzero(ok))
    whole = rule(ha, hb, atol, rtol).all() and rule(ca, cb, atol, rtol).all()
    assert res.equal == bool(whole)
    assert res.comparable and res.only_in_a == [] and res.only_in_b == []

    # without --num-directions: one row per whole tensor, same verdict
    res1 = diff_states(sa, sb, atol=atol, rtol=rtol)
    assert [(r.tensor, r.layer) for r in res1.rows] == [("h_n", None), ("c_n", None)]
    assert res1.equal == bool(whole)
    assert res1.rows[0].mismatched == int(np.size(ha) - np.count_nonzero(rule(ha, hb, atol, rtol)))

    # a state compared with itself is equal
    assert diff_states(sa, _state("a2", ha.copy(), ca.copy()), atol=atol, rtol=rtol, num_directions=d).equal


@PROP
@given(s=state_pair(), atol=tolerances, rtol=tolerances)
def test_prop_diff_states_from_files(s, atol, rtol):
    """The same rule through files on disk (safetensors and .npz) and read_state_file."""
    from lstmscope.snapshot import read_state_file

    d, ha, hb, ca, cb = s
    with tempfile.TemporaryDirectory() as tmp:
        pa, pb = Path(tmp) / "a.safetensors", Path(tmp) / "b.npz"
        safetensors.numpy.save_file({"h_n": ha, "c_n": ca}, str(pa))
        np.savez(pb, h_n=hb, c_n=cb)
        res = diff_states(read_state_file(pa), read_state_file(pb), atol=atol, rtol=rtol, num_directions=d)
    assert res.equal == bool(rule(ha, hb, atol, rtol).all() and rule(ca, cb, atol, rtol).all())
    assert sum(r.mismatched for r in res.rows) == int(
        2 * ha.size - np.count_nonzero(rule(ha, hb, atol, rtol)) - np.count_nonzero(rule(ca, cb, atol, rtol)))


# --- torch-free ------------------------------------------------------------------------------------------


def _torchless_env(tmp_path: Path) -> dict:
    stub = tmp_path / "stub"
    (stub / "torch").mkdir(parents=True)
    (stub / "torch" / "__init__.py").write_text('raise ImportError("torch must not be imported")\n')
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(stub), *filter(None, [env.get("PYTHONPATH")])])
    env.pop("LSTMSCOPE_DEBUG", None)
    return env


def _lstmscope(env, *args):
    return subprocess.run([sys.executable, "-m", "lstmscope", *map(str, args)], env=env, capture_output=True,
                          text=True, timeout=60)


def test_diff_and_show_do_not_import_torch(invoke, snaps, tmp_path):
    env = _torchless_env(tmp_path)
    probe = subprocess.run([sys.executable, "-c", "import torch"], env=env, capture_output=True, text=True)
    assert probe.returncode != 0 and "torch must not be imported" in probe.stderr  # the stub is in effect

    r = _lstmscope(env, "diff-states", snaps["base"], snaps["f64"], "--json")
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""
    doc = json.loads(r.stdout)
    assert doc["equal"] is True
    assert r.stdout == invoke("diff-states", snaps["base"], snaps["f64"], "--json").stdout

    r = _lstmscope(env, "diff-states", snaps["base"], snaps["base2"])
    assert r.returncode == 0, r.stderr
    r = _lstmscope(env, "diff-states", snaps["base"], snaps["h6"], "--quiet")
    assert (r.returncode, r.stdout, r.stderr) == (1, "", "")

    r = _lstmscope(env, "show-state", snaps["with_output"], "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["ok"] is True
    assert r.stdout == invoke("show-state", snaps["with_output"], "--json").stdout
    r = _lstmscope(env, "show-state", snaps["with_output"], "-b", "1")
    assert r.returncode == 0, r.stderr

    # a torch-pickled state is refused with advice, without importing torch
    pt = tmp_path / "state.pt"
    pt.write_bytes(b"\x80\x02}q\x00.")  # a pickle protocol-2 header: sniffed as a torch file
    r = _lstmscope(env, "diff-states", pt, snaps["base"])
    assert r.returncode == 2 and "import-state" in r.stderr and "torch must not" not in r.stderr


# Runs the CLI in this process's Python and prints the lstmscope / Rich modules it loaded, one per line.
_MODULES_AFTER = """
import sys
from lstmscope.cli import app
try:
    app(sys.argv[1:], prog_name="lstmscope")
except SystemExit:
    pass
sys.stderr.write("\\n".join(sorted(m for m in sys.modules if m.split(".")[0] in ("lstmscope", "rich", "torch"))))
"""


@pytest.mark.parametrize("mode", ["--json", "--quiet"])
def test_diff_loads_no_rich_and_only_what_a_diff_needs(snaps, mode):
    """diff-states --json / --quiet start without Rich (and so without the renderers), without the trace-diff
    module for two snapshots, and (--quiet) without the JSON encoder; a table still loads Rich."""
    r = subprocess.run([sys.executable, "-c", _MODULES_AFTER, "diff-states", str(snaps["base"]), str(snaps["h6"]), mode],
                       capture_output=True, text=True, timeout=60)
    loaded = set(r.stderr.split())
    assert "lstmscope.statediff" in loaded and "lstmscope.snapshot" in loaded, r.stderr  # the probe works
    assert not {m for m in loaded if m.split(".")[0] in ("rich", "torch")}
    assert not loaded & {"lstmscope.render", "lstmscope.tracediff", "lstmscope.report"} - (
        {"lstmscope.report"} if mode == "--json" else set())  # jsonout needs report's types
    assert ("lstmscope.jsonout" in loaded) == (mode == "--json")
    r = subprocess.run([sys.executable, "-c", _MODULES_AFTER, "diff-states", str(snaps["base"]), str(snaps["h6"])],
                       capture_output=True, text=True, timeout=60)
    assert "rich" in r.stderr.split() and "lstmscope.render" in r.stderr.split()
