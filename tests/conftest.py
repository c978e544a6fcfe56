"""Shared fixtures. The float64 reference lives in tests/reference.py (independent of lstmscope)."""

from __future__ import annotations

import json
import os
import warnings
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
SAMPLES = ROOT / "sample_checkpoints"
sys.path.insert(0, str(TESTS))  # `from reference import lstm_reference`


def _hypothesis_profiles() -> None:
    """"ci" (the default) and "long" (``pytest --hypothesis-profile=long tests/test_fuzz.py``). Tests that
    pass their own ``@settings`` keep them; test_fuzz.py takes its example counts from here. No example
    database: nothing is written into the working tree."""
    from hypothesis import HealthCheck, settings

    slow = [HealthCheck.too_slow, HealthCheck.data_too_large]
    settings.register_profile("ci", max_examples=500, deadline=2000, database=None, derandomize=True,
                              suppress_health_check=slow, print_blob=True)
    settings.register_profile("long", settings.get_profile("ci"), max_examples=5000, derandomize=False)
    if settings.get_current_profile_name() == "default":  # never undo a --hypothesis-profile already applied
        settings.load_profile("ci")


_hypothesis_profiles()


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


@pytest.fixture
def one_torch_thread():
    """Tiny models run fastest on one thread, and a second one stalls when another process holds a core
    (torch is imported only by the tests that ask for this)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def keras():
    """Keras 3 on the torch backend, the tests' oracle for Keras files: imported once per session."""
    os.environ.setdefault("KERAS_BACKEND", "torch")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        keras = pytest.importorskip("keras")
    if keras.backend.backend() != "torch":
        pytest.skip("Keras runs on another backend here; these tests use the torch backend")
    return keras
