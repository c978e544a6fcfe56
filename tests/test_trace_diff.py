"""diff-states on two traces, against independent truth.

Traces are written by the real CLI (``lstmscope trace``) from tiny nn.LSTM checkpoints; the expected
figures are computed here with numpy in float64 from what ``safetensors.numpy.load_file`` reads back,
with the README's rule ``|a - b| <= atol + rtol * |b|`` (B the reference), padding (steps past a
sequence's length) left out.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import load_file, save_file

from helpers import assert_one_error_line

I, H, B, T = 3, 4, 2, 160
LENGTHS = np.array([100, 40], dtype=np.int64)  # steps 100.. are padding in every sequence
TOP_KEYS = {"schema", "kind", "a", "b", "equal", "comparable", "atol", "rtol", "equal_nan", "rows", "only_in_a",
            "only_in_b", "metadata_differences"}
ROW_KEYS = {"tensor", "layer", "direction", "shape", "shape_b", "max_abs_diff", "max_abs_diff_at", "max_rel_diff",
            "mismatched", "total", "mismatched_pct", "cosine", "pass", "quantity", "first_step_over_tolerance",
            "per_step_max_abs_diff"}


def _cli(*args, env=None):
    from typer.testing import CliRunner

    from lstmscope.cli import app

    return CliRunner().invoke(app, [str(a) for a in args], env=env)


def _strict_json(text: str) -> dict:
    """json.loads that refuses NaN/Infinity (the document must hold null instead)."""
    def refuse(name):
        raise AssertionError(f"{name} in JSON")

    return json.loads(text, parse_constant=refuse)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """float32 and float64 traces of one tiny bidirectional 2-layer LSTM, with and without lengths, one in
    processing order, one over fewer steps, and a state snapshot; all written through the CLI."""
    import torch

    root = tmp_path_factory.mktemp("trace_diff")
    torch.manual_seed(0)
    lstm = torch.nn.LSTM(I, H, num_layers=2, bidirectional=True, batch_first=True)
    torch.save(lstm.state_dict(), root / "m.pt")
    x = np.random.default_rng(0).standard_normal((B, T, I)).astype(np.float32)  # (B, T, I)
    np.save(root / "x.npy", x)
    np.save(root / "short.npy", x[:, : T // 2])
    np.save(root / "len.npy", LENGTHS)
    out = {}

    def trace(name, *args, inp="x.npy"):
        out[name] = root / f"{name}.safetensors"
        r = _cli("trace", root / "m.pt", root / inp, "-o", out[name], "--quiet", *args)
        assert r.exit_code == 0, r.stderr

    trace("f32", "--quantities", "h,c,f")
    trace("f64", "--quantities", "h,c,f", "--dtype", "float64")
    trace("f32_len", "--quantities", "h,c", "--lengths", root / "len.npy")
    trace("f64_len", "--quantities", "h,c", "--dtype", "float64", "--lengths", root / "len.npy")
    trace("f32_proc", "--quantities", "h,c,f", "--order", "processing")
    trace("f32_short", "--quantities", "h,c,f", inp="short.npy")
    trace("f32_hc", "--quantities", "h,c")
    out["state"] = root / "state.safetensors"
    r = _cli("export-state", root / "m.pt", root / "x.npy", "-o", out["state"])
    assert r.exit_code == 0, r.stderr
    return out


def expected_rows(path_a: Path, path_b: Path, atol: float, rtol: float, equal_nan: bool = False) -> dict[str, dict]:
    """Per tensor: per-step max |a - b| (NaN where every sequence is padding), the first step over tolerance,
    the max and where, mismatched and total elements; numpy over the whole arrays."""
    ta, tb = load_file(str(path_a)), load_file(str(path_b))
    lengths = ta.get("lengths")
    out = {}
    for name in sorted(set(ta) & set(tb) - {"lengths"}):
        x, y = ta[name].astype(np.float64), tb[name].astype(np.float64)  # (batch, time, width)
        batch, time, _ = x.shape
        valid = np.ones((batch, time), dtype=bool) if lengths is None else np.arange(time)[None] < lengths[:, None]
        valid = np.broadcast_to(valid[:, :, None], x.shape)
        with np.errstate(invalid="ignore"):
            d = np.abs(x - y)
        nan_x, nan_y = np.isnan(x), np.isnan(y)
        d[nan_x | nan_y] = np.inf
        if equal_nan:
            d[nan_x & nan_y] = 0.0
        with np.errstate(invalid="ignore"):
            over = ~(d <= atol + rtol * np.abs(y)) & valid
        if equal_nan:
            over &= ~(nan_x & nan_y)
        dv = np.where(valid, d, -1.0)
        per_step = dv.max(axis=(0, 2))
        per_step = np.where(per_step < 0, np.nan, per_step)
        steps_over = np.flatnonzero(over.any(axis=(0, 2)))
        at = np.unravel_index(int(np.argmax(dv)), x.shape)
        out[name] = {"per_step": per_step, "first": int(steps_over[0]) if steps_over.size else None,
                     "max": float(dv.max()), "at": [int(v) for v in at], "mismatched": int(over.sum()),
                     "total": int(valid.sum())}
    return out


def _json_steps(row) -> np.ndarray:
    return np.array([np.nan if v is None else v for v in row["per_step_max_abs_diff"]], dtype=np.float64)


def check_against_numpy(doc: dict, path_a: Path, path_b: Path, atol: float, rtol: float, equal_nan=False):
    want = expected_rows(path_a, path_b, atol, rtol, equal_nan)
    assert {r["tensor"] for r in doc["rows"]} == set(want)
    for row in doc["rows"]:
        w = want[row["tensor"]]
        assert set(row) == ROW_KEYS
        assert row["quantity"] == row["tensor"].rsplit("/", 1)[1]
        np.testing.assert_array_equal(_json_steps(row), np.where(np.isinf(w["per_step"]), np.nan, w["per_step"]))
        assert row["first_step_over_tolerance"] == w["first"], row["tensor"]
        assert row["max_abs_diff"] == (None if w["max"] == np.inf else w["max"])  # inf in JSON is null
        assert row["max_abs_diff_at"] == w["at"]
        assert (row["mismatched"], row["total"]) == (w["mismatched"], w["total"])
        assert row["pass"] is (w["mismatched"] == 0)
    return want


def test_float32_against_float64_per_step(files):
    atol, rtol = 5e-8, 0.0  # tight enough that float32 rounding crosses it somewhere
    r = _cli("diff-states", files["f32"], files["f64"], "--atol", atol, "--rtol", rtol, "--json")
    doc = _strict_json(r.stdout)
    assert set(doc) == TOP_KEYS and doc["kind"] == "trace" and doc["schema"] == "lstmscope.diff/1"
    want = check_against_numpy(doc, files["f32"], files["f64"], atol, rtol)
    assert any(w["first"] is not None for w in want.values())  # the test exercises a crossing
    assert len(doc["rows"]) == 2 * 2 * 3  # layers x directions x (h, c, f)
    assert all(len(row["per_step_max_abs_diff"]) == T for row in doc["rows"])
    assert doc["metadata_differences"]["provenance"]["dtype"] == ["float32", "float64"]
    assert doc["metadata_differences"]["architecture"] == {}
    assert r.exit_code == 1 and r.stderr == "" and doc["equal"] is False

    # at the default tolerances float32 stays within float64's: exit 0, no step over
    r = _cli("diff-states", files["f32"], files["f64"], "--json")
    assert r.exit_code == 0 and r.stderr == ""
    doc = _strict_json(r.stdout)
    check_against_numpy(doc, files["f32"], files["f64"], 1e-5, 1.3e-6)
    assert all(row["first_step_over_tolerance"] is None for row in doc["rows"])


def test_small_blocks_give_the_same_figures(files, monkeypatch):
    """Time blocks of a few steps (STEP_BLOCK elements): the figures do not depend on where blocks end."""
    import lstmscope.statediff as compare
    import lstmscope.tracediff as tracediff
    from lstmscope.jsonout import diff_document, dumps

    def doc():
        d = json.loads(dumps(diff_document(compare.diff_files(files["f32_len"], files["f64_len"], atol=5e-8, rtol=0.0))))
        return d, [row.pop("cosine") for row in d["rows"]]  # the cosine's sums are taken in another order

    whole, cosines = doc()
    monkeypatch.setattr(tracediff, "STEP_BLOCK", 3 * B * H)  # three steps a block
    blocked, blocked_cosines = doc()
    assert blocked == whole
    np.testing.assert_allclose(blocked_cosines, cosines, rtol=1e-12)


def test_lengths_leave_padding_out(files):
    atol, rtol = 5e-8, 0.0
    r = _cli("diff-states", files["f32_len"], files["f64_len"], "--atol", atol, "--rtol", rtol, "--json")
    doc = _strict_json(r.stdout)
    check_against_numpy(doc, files["f32_len"], files["f64_len"], atol, rtol)
    for row in doc["rows"]:
        steps = row["per_step_max_abs_diff"]
        assert all(v is None for v in steps[int(LENGTHS.max()):])  # padding in every sequence: null
        assert all(v is not None for v in steps[: int(LENGTHS.max())])
        assert row["total"] == int(LENGTHS.sum()) * H
        assert row["max_abs_diff_at"][1] < LENGTHS[row["max_abs_diff_at"][0]]
    assert r.exit_code == (0 if doc["equal"] else 1)


def _perturbed_copy(src: Path, dst: Path, name: str, index: tuple[int, int, int], delta: float) -> float:
    """``dst``: ``src`` with one element of tensor ``name`` changed by ``delta`` (metadata kept); returns |change|."""
    tensors = load_file(str(src))
    with safe_open(str(src), "np") as f:
        meta = f.metadata()
    old = tensors[name][index]
    tensors[name][index] = old + delta
    save_file(tensors, str(dst), metadata=meta)
    return abs(float(tensors[name][index]) - float(old))


def test_one_perturbed_element_is_found(files, tmp_path):
    name, at = "layer1/backward/c", (1, 137, 2)
    changed = tmp_path / "changed.safetensors"
    size = _perturbed_copy(files["f64"], changed, name, at, 1e-3)
    r = _cli("diff-states", changed, files["f64"], "--json")
    assert r.exit_code == 1 and r.stderr == ""
    doc = _strict_json(r.stdout)
    assert doc["comparable"] is True and doc["equal"] is False
    check_against_numpy(doc, changed, files["f64"], 1e-5, 1.3e-6)
    for row in doc["rows"]:
        if row["tensor"] == name:
            assert row["first_step_over_tolerance"] == at[1]
            assert row["max_abs_diff"] == size and row["max_abs_diff_at"] == list(at)
            assert row["mismatched"] == 1 and row["pass"] is False
            steps = row["per_step_max_abs_diff"]
            assert steps[at[1]] == size and all(v == 0.0 for i, v in enumerate(steps) if i != at[1])
        else:
            assert row["first_step_over_tolerance"] is None and row["max_abs_diff"] == 0.0 and row["pass"] is True

    text = _cli("diff-states", changed, files["f64"])
    assert text.exit_code == 1 and text.stderr == ""
    assert "Traces differ: 1 of 12 rows fail, first at step 137 (layer1/backward/c)" in " ".join(text.stdout.split())
    assert "^" in text.stdout  # the profile marks the column over tolerance


@pytest.mark.parametrize("columns", [80, 60])
def test_table_and_profile_fit_the_width(files, tmp_path, columns):
    changed = tmp_path / "changed.safetensors"
    _perturbed_copy(files["f32_len"], changed, "layer0/forward/h", (0, 50, 1), 1.0)
    for pair in ((files["f32"], files["f64"]), (changed, files["f64_len"])):
        # a terminal of that width (TTY_COMPATIBLE=1: Rich's convention), without colour
        r = _cli("diff-states", *pair, "--atol", "5e-8",
                 env={"COLUMNS": str(columns), "TTY_COMPATIBLE": "1", "NO_COLOR": "1"})
        assert r.exit_code == 1 and r.stderr == ""
        lines = r.stdout.splitlines()
        assert max(len(line) for line in lines) <= columns, max(lines, key=len)
        assert "\x1b[" not in r.stdout  # NO_COLOR: no escape codes at all
        assert "max |diff| per step" in r.stdout and "1st over" in r.stdout


def test_identical_traces_are_equal(files, tmp_path):
    copy = tmp_path / "copy.safetensors"
    shutil.copyfile(files["f32_len"], copy)
    r = _cli("diff-states", files["f32_len"], copy, "--json")
    assert r.exit_code == 0 and r.stderr == ""
    doc = _strict_json(r.stdout)
    assert doc["equal"] is True and doc["metadata_differences"] == {"architecture": {}, "provenance": {}}
    for row in doc["rows"]:
        assert row["first_step_over_tolerance"] is None and row["max_abs_diff"] == 0.0
        assert row["cosine"] == pytest.approx(1.0, abs=1e-12)
        assert set(row["per_step_max_abs_diff"][: int(LENGTHS.max())]) == {0.0}
    r = _cli("diff-states", files["f32_len"], copy)
    assert r.exit_code == 0 and "Traces match within tolerance." in r.stdout
    r = _cli("diff-states", files["f32_len"], copy, "--quiet")
    assert (r.exit_code, r.stdout, r.stderr) == (0, "", "")


def test_nan_rules(files, tmp_path):
    """NaN in the same valid place in both counts equal only with --equal-nan; NaN against a number differs."""
    at = (0, 30, 3)
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    _perturbed_copy(files["f64"], a, "layer0/forward/h", at, np.nan)
    _perturbed_copy(files["f64"], b, "layer0/forward/h", at, np.nan)
    r = _cli("diff-states", a, b, "--json")
    doc = _strict_json(r.stdout)
    check_against_numpy(doc, a, b, 1e-5, 1.3e-6)
    row = next(r_ for r_ in doc["rows"] if r_["tensor"] == "layer0/forward/h")
    assert r.exit_code == 1 and row["first_step_over_tolerance"] == 30 and row["cosine"] is None
    assert row["per_step_max_abs_diff"][30] is None  # inf in JSON is null

    r = _cli("diff-states", a, b, "--equal-nan", "--json")
    doc = _strict_json(r.stdout)
    check_against_numpy(doc, a, b, 1e-5, 1.3e-6, equal_nan=True)
    assert r.exit_code == 0 and doc["equal"] is True

    r = _cli("diff-states", a, files["f64"], "--equal-nan", "--json")  # NaN against a number
    doc = _strict_json(r.stdout)
    check_against_numpy(doc, a, files["f64"], 1e-5, 1.3e-6, equal_nan=True)
    assert r.exit_code == 1
    row = next(r_ for r_ in doc["rows"] if r_["tensor"] == "layer0/forward/h")
    assert row["first_step_over_tolerance"] == 30 and row["max_abs_diff"] is None and row["max_abs_diff_at"] == list(at)


def test_quantities_in_one_file_only(files):
    r = _cli("diff-states", files["f32"], files["f32_hc"], "--json")
    doc = _strict_json(r.stdout)
    assert r.exit_code == 1 and doc["comparable"] is True
    assert doc["only_in_a"] == sorted(f"layer{l}/{d}/f" for l in (0, 1) for d in ("backward", "forward"))
    assert doc["only_in_b"] == [] and len(doc["rows"]) == 8 and all(row["pass"] for row in doc["rows"])


def test_time_order_and_shape_are_not_comparable(files):
    """As for snapshots of differently shaped LSTMs: reported as not comparable, exit 1."""
    r = _cli("diff-states", files["f32_proc"], files["f32"], "--json")
    doc = _strict_json(r.stdout)
    assert r.exit_code == 1 and r.stderr == ""
    assert doc["comparable"] is False and doc["rows"] == []
    assert doc["metadata_differences"]["architecture"] == {"time_order": ["processing", "input"]}
    r = _cli("diff-states", files["f32_proc"], files["f32"], env={"COLUMNS": "200"})
    assert r.exit_code == 1
    assert ("a processing-order trace cannot be compared step by step with an input-order one"
            in " ".join(r.stdout.split()))

    r = _cli("diff-states", files["f32_short"], files["f32"], "--json")
    doc = _strict_json(r.stdout)
    assert r.exit_code == 1 and doc["comparable"] is False
    assert doc["metadata_differences"]["architecture"] == {"time": [T // 2, T]}
    assert "input_sha256" in doc["metadata_differences"]["provenance"]

    r = _cli("diff-states", files["f32_len"], files["f32_hc"], "--json")  # lengths against none
    doc = _strict_json(r.stdout)
    assert r.exit_code == 1 and doc["comparable"] is False
    assert doc["metadata_differences"]["architecture"] == {"lengths": [LENGTHS.tolist(), None]}
    r = _cli("diff-states", files["f32_len"], files["f32_hc"], "--quiet")
    assert (r.exit_code, r.stdout, r.stderr) == (1, "", "")


def test_trace_against_snapshot_is_refused(files):
    r = _cli("diff-states", files["f32"], files["state"])
    assert_one_error_line(r, files["f32"], "is a trace and", "a state snapshot",
                          "diff-states compares two snapshots or two traces")
    r = _cli("diff-states", files["state"], files["f32"], "--json")
    assert_one_error_line(r, files["state"], "is a state snapshot and", "a trace")
    r = _cli("diff-states", files["f32"], files["f32"].parent / "x.npy")  # neither: the state reader says what it is
    assert_one_error_line(r, files["f32"].parent / "x.npy", "not a state file")
    r = _cli("diff-states", files["f32"], files["f64"], "--num-directions", "2")
    assert_one_error_line(r, files["f32"], "--num-directions")


def test_trace_diff_does_not_import_torch(files, tmp_path):
    stub = tmp_path / "stub"
    (stub / "torch").mkdir(parents=True)
    (stub / "torch" / "__init__.py").write_text('raise ImportError("torch must not be imported")\n')
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(stub), *filter(None, [os.environ.get("PYTHONPATH")])]))
    env.pop("LSTMSCOPE_DEBUG", None)
    r = subprocess.run([sys.executable, "-m", "lstmscope", "diff-states", str(files["f32_len"]), str(files["f64_len"]),
                        "--json"], env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    assert r.stdout == _cli("diff-states", files["f32_len"], files["f64_len"], "--json").stdout


def test_show_state_on_a_trace_does_not_import_torch(files, tmp_path):
    """show-state TRACE (summary and heatmap) is torch-free, like every command that only reads files."""
    stub = tmp_path / "stub"
    (stub / "torch").mkdir(parents=True)
    (stub / "torch" / "__init__.py").write_text('raise ImportError("torch must not be imported")\n')
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(stub), *filter(None, [os.environ.get("PYTHONPATH")])]),
               COLUMNS="80")
    env.pop("LSTMSCOPE_DEBUG", None)
    r = subprocess.run([sys.executable, "-m", "lstmscope", "show-state", str(files["f32_len"]), "--heatmap", "c"],
                       env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    assert "Heatmap: c (cell state c_t)" in r.stdout
