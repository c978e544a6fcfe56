"""The Rich output at 50, 60, 80 and 200 columns and in a pipe, against golden files of the rounded output.

Each command runs in-process on the shipped samples. A terminal of N columns is Rich's convention
``TTY_COMPATIBLE=1 COLUMNS=N`` (with ``NO_COLOR=1``: no escape codes); a pipe is the CliRunner's plain stream.
The golden files (tests/golden/<case>.<width>.txt) hold the output with every number rounded to 3 significant
digits and runs of spaces squeezed, so a last-digit difference between CPUs does not fail them; the layout is
checked apart from them: no line wider than the terminal, nothing cut with an ellipsis, no escape codes, and in
a pipe no trailing spaces and no line broken inside a path or a tuple.

``LSTMSCOPE_UPDATE_GOLDEN=1 pytest tests/test_output_widths.py`` rewrites the golden files (then read the diff).
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SAMPLES = REPO / "sample_checkpoints"
GOLDEN = Path(__file__).resolve().parent / "golden"
WIDTHS = (50, 60, 80, 200)
UPDATE = os.environ.get("LSTMSCOPE_UPDATE_GOLDEN") == "1"

_NUMBER = re.compile(r"(?<![\w.])[-+]?\d+\.\d+(?:e[-+]?\d+)?|(?<![\w.])[-+]?\d+e[-+]?\d+")


def _round(match: re.Match) -> str:
    v = float(match.group(0))
    return f"{v:.3g}"


def normalise(text: str, tmp: Path) -> str:
    """Paths of the test's folder replaced, numbers rounded, spaces squeezed, trailing spaces cut."""
    text = text.replace(str(tmp), "<tmp>").replace(str(REPO), "<repo>")
    text = re.sub(r"[0-9a-f]{12,}(\.\.\.)?", "<sha>", text)
    out = []
    for line in text.splitlines():
        line = _NUMBER.sub(_round, line)
        out.append(re.sub(r" {2,}", "  ", line).rstrip())
    return "\n".join(out).strip("\n") + "\n"


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """Snapshots and copies the cases read, made once."""
    tmp = tmp_path_factory.mktemp("widths")
    from typer.testing import CliRunner

    from lstmscope.cli import app

    runner = CliRunner()
    for name in ("bi_2layer.pt", "varlen.npz", "batch.npy", "tagger.safetensors", "forecaster.keras",
                 "sentiment.keras", "sentiment_ids.npy", "flipflop.pt", "flipflop_input.npy", "uni_1layer.pt"):
        shutil.copy(SAMPLES / name, tmp / name)
    for args in (["export-state", "bi_2layer.pt", "varlen.npz", "-o", "a.safetensors", "--include-output"],
                 ["export-state", "bi_2layer.pt", "varlen.npz", "-o", "b.safetensors", "--dtype", "float64"]):
        r = runner.invoke(app, [str(tmp / a) if (tmp / a).exists() or a.endswith(".safetensors") else a
                                for a in args])
        assert r.exit_code == 0, r.stderr
    return tmp


CASES = {
    "inspect_keras": ["inspect", "forecaster.keras"],
    "inspect_safetensors": ["inspect", "tagger.safetensors"],
    "run_bidirectional": ["run", "bi_2layer.pt", "varlen.npz", "-b", "1", "--units", "0:4"],
    "run_masked_tokens": ["run", "sentiment.keras", "sentiment_ids.npy"],
    "export": ["export-state", "bi_2layer.pt", "batch.npy", "-o", "out.safetensors", "--force", "--include-output"],
    "show_state": ["show-state", "a.safetensors"],
    "diff": ["diff-states", "a.safetensors", "b.safetensors"],
    "trace": ["trace", "flipflop.pt", "flipflop_input.npy", "--quantities", "h,c,f", "--heatmap", "f"],
    "compare": ["compare", "bi_2layer.pt", "varlen.npz", "--b-dtype", "float64"],
}


def _run(work: Path, case: str, width: int | None):
    """The command in the samples' folder, with the file names as a user types them there."""
    from typer.testing import CliRunner

    from lstmscope.cli import app

    env = {"NO_COLOR": "1", "COLUMNS": str(width or 80), "TTY_COMPATIBLE": "1" if width else "0"}
    here = os.getcwd()
    os.chdir(work)
    try:
        r = CliRunner().invoke(app, CASES[case], env=env)
    finally:
        os.chdir(here)
    assert r.exit_code in (0, 1), (r.exit_code, r.stderr)
    return r


@pytest.mark.parametrize("width", [*WIDTHS, None], ids=[*map(str, WIDTHS), "pipe"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_output_at_width(work, case, width):
    r = _run(work, case, width)
    text = r.stdout
    assert "\x1b[" not in text  # NO_COLOR, or a pipe: no escape codes at all
    assert "…" not in text, text  # nothing cut with an ellipsis
    lines = text.splitlines()
    if width is not None:
        too_wide = [line for line in lines if len(line) > width]
        assert not too_wide, too_wide[0]
    else:
        assert all(line == line.rstrip() for line in lines), "trailing spaces in a pipe"
        for line in lines:  # a tuple, a shape or a list is never split across lines in a pipe
            assert line.count("(") == line.count(")") and line.count("[") == line.count("]"), line
    golden = GOLDEN / f"{case}.{width or 'pipe'}.txt"
    got = normalise(text, work)
    if UPDATE or not golden.exists():
        if not UPDATE:
            pytest.fail(f"no golden file {golden.name}; run with LSTMSCOPE_UPDATE_GOLDEN=1 to write it")
        GOLDEN.mkdir(exist_ok=True)
        golden.write_text(got)
        return
    assert got == golden.read_text(), f"{golden.name} differs; rerun with LSTMSCOPE_UPDATE_GOLDEN=1 and read the diff"


@pytest.mark.parametrize("case", ["run_bidirectional", "inspect_keras", "show_state"])
def test_every_number_of_the_json_stays_whole_at_50_columns(work, case):
    """The numbers the JSON gives appear whole in the 50-column text (formatted as the tables format them)."""
    from lstmscope.cli import app
    from typer.testing import CliRunner
    import json

    args = [str(work / a) if (work / a).exists() or a.endswith(".safetensors") else a for a in CASES[case]]
    doc = json.loads(CliRunner().invoke(app, args + ["--json"]).stdout)
    text = _run(work, case, 50).stdout
    tokens = set(re.findall(r"[-\w.,+]+", text))
    if case == "inspect_keras":
        want = [f"{m['parameters']:,}" for m in doc["modules"]]
    else:
        want = [f"{s[k][f]:.4g}" for s in doc["states"] for k in ("h_n", "c_n") for f in ("mean", "std", "min", "max")]
    missing = [w for w in want if w not in tokens]
    assert not missing, (missing, text)


@pytest.mark.parametrize("text,width,whole", [
    ("batch_first applies to output only: h_n and c_n are always (layers*directions, batch, ...).", 60,
     ["(layers*directions, batch, ...)."]),
    ("h_n[i] is layer i; output is the last layer's h at every step.", 58, ["the last layer's h at every"]),
    ("the graph supplies initial_h ('/lstm/Slice_output_0') and initial_c ('/lstm/Slice_1_output_0'); lstmscope "
     "starts from zeros", 60, ["('/lstm/Slice_output_0')", "('/lstm/Slice_1_output_0');"]),
    ("mean: mean over all valid steps, sequences and units (padding and non-finite values left out)", 78,
     ["mean over all valid steps, sequences and units (padding and"]),
    ("note: the layers' states are read from the file and compared one slice at a time", 30,
     ["note: the layers' states are"]),  # an apostrophe at a word's edge opens no quote
    ("note: 'h0's batch differs from the input batch so the states are read as zeros", 30,
     ["note: 'h0's batch differs from"]),
])
def test_wrap_atomic_keeps_groups_whole_and_prose_flowing(text, width, whole):
    """Lines fit the width and say the text, word for word; tuples up to TUPLE_MAX and quoted names are never
    broken; an apostrophe is no quote (the rest of the note still flows); prose in parentheses wraps like
    prose."""
    from lstmscope.render.console import wrap_atomic

    lines = wrap_atomic(text, width)
    assert all(len(line) <= width for line in lines), lines
    assert " ".join(lines).split() == text.split()
    assert all(any(piece in line for line in lines) for piece in whole), lines
