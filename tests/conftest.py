"""Shared fixtures. The float64 reference lives in tests/reference.py (independent of lstmscope)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
SAMPLES = ROOT / "sample_checkpoints"
sys.path.insert(0, str(TESTS))  # `from reference import lstm_reference`


def real_checkpoints_dir() -> Path:
    return Path(os.environ.get("LSTMSCOPE_REAL_CHECKPOINTS", ROOT.parent / "shared" / "real_checkpoints"))


def real_manifest() -> list[dict]:
    """Manifest entries, or [] when the shared folder is absent (tests using it then skip)."""
    path = real_checkpoints_dir() / "manifest.json"
    if not path.is_file():
        return []
    return json.loads(path.read_text())["checkpoints"]


@pytest.fixture
def runner():
    from typer.testing import CliRunner

    return CliRunner()


@pytest.fixture
def invoke(runner):
    """Run the CLI in-process; returns the Result (stdout, stderr and exit_code kept apart)."""
    from lstmscope.cli import app

    def _invoke(*args):
        return runner.invoke(app, [str(a) for a in args])

    return _invoke
