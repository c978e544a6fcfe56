"""Every command line the README shows runs, on the shipped samples, and exits as the README says.

The ```bash blocks of README.md run in order in one bash session (later blocks use what earlier ones made:
``$d``, files), in a temporary folder holding a copy of sample_checkpoints/. A block preceded by
``<!-- readme-test: skip ... -->`` is not run (installing, the test suite itself, the benchmarks, lines with
placeholder files such as model.pt). A line ending in ``# exit N`` must exit N; every other command must exit 0
(the script runs under ``set -e``, with ``pipefail``).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SKIP = "<!-- readme-test: skip"


def readme_blocks() -> list[tuple[int, str]]:
    """(line number, text) of every runnable ```bash block of the README."""
    lines = (REPO / "README.md").read_text().splitlines()
    out, i = [], 0
    while i < len(lines):
        if lines[i].strip() == "```bash":
            start = i
            j = i + 1
            while lines[j].strip() != "```":
                j += 1
            before = next((lines[k] for k in range(start - 1, -1, -1) if lines[k].strip()), "")
            if not before.strip().startswith(SKIP):
                out.append((start + 1, "\n".join(lines[start + 1:j])))
            i = j + 1
        else:
            i += 1
    return out


def script(blocks: list[tuple[int, str]]) -> str:
    """One bash script: each block under set -e; ``cmd  # exit N`` lines checked for N."""
    parts = ["set -euo pipefail"]
    for line_no, text in blocks:
        parts.append(f"echo '>>> README.md line {line_no}' >&2")
        for line in text.split("\n"):
            m = re.search(r"#\s*exit\s+(\d+)\s*$", line)
            if m:
                cmd = line[:m.start()].rstrip()
                parts.append(f"set +e; {cmd}; rc=$?; set -e; "
                             f"if [ $rc -ne {m.group(1)} ]; then echo \"README.md block at line {line_no}: exit $rc, "
                             f"the README says {m.group(1)}\" >&2; exit 99; fi")
            else:
                parts.append(line)
    return "\n".join(parts) + "\n"


def test_readme_has_runnable_blocks():
    blocks = readme_blocks()
    assert len(blocks) >= 8
    assert any("sample_checkpoints/sentiment.keras" in b for _, b in blocks)


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_every_readme_command_runs_as_documented(tmp_path):
    pytest.importorskip("onnx")  # the README exports ONNX files and runs onnxruntime
    pytest.importorskip("onnxruntime")
    pytest.importorskip("matplotlib")
    shutil.copytree(REPO / "sample_checkpoints", tmp_path / "sample_checkpoints")
    text = script(readme_blocks())
    (tmp_path / "readme.sh").write_text(text)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
           "TMPDIR": str(tmp_path), "LSTMSCOPE_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    r = subprocess.run(["bash", str(tmp_path / "readme.sh")], cwd=tmp_path, env=env, capture_output=True, text=True,
                       timeout=600)
    where = [line for line in r.stderr.splitlines() if line.startswith(">>> README.md")]
    assert r.returncode == 0, (f"stopped after {where[-1] if where else 'the start'} with exit {r.returncode}:\n"
                               + r.stderr[-3000:])
    assert "Error:" not in r.stderr, r.stderr[-3000:]
