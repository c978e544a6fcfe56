"""Smoke test of the benchmark suite: ``benchmarks/run.py --quick`` runs every figure and prints its row.

No timing is asserted: the numbers depend on the machine and its load (the suite reports them; the
goals are judged by a full run, see README "Performance").
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RUN = ROOT / "benchmarks" / "run.py"


def test_quick_run_prints_every_figure():
    listed = subprocess.run([sys.executable, str(RUN), "--list"], capture_output=True, text=True, timeout=60)
    assert listed.returncode == 0, listed.stderr
    figures = listed.stdout.split()
    assert len(figures) >= 9
    proc = subprocess.run([sys.executable, str(RUN), "--quick"], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| ")]
    for name in figures:
        assert any(line.startswith(f"| {name} |") for line in rows), f"no row for {name}:\n{proc.stdout}"
    assert "CPU:" in proc.stdout and "torch" in proc.stdout
