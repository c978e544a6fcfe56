"""What a newcomer trips on: pipes and standard input as inputs, output names that lie about the format,
state dtypes, lengths given twice, usage lines and help, what export-state says it wrote, diffs of foreign
files. Truth: torch.nn.LSTM run directly, numpy, and the files on disk."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file

from helpers import assert_one_error_line

REPO = Path(__file__).resolve().parent.parent
SAMPLES = REPO / "sample_checkpoints"
LSTMSCOPE = [sys.executable, "-m", "lstmscope"]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("newcomer")
    torch.manual_seed(0)
    lstm = torch.nn.LSTM(3, 5, num_layers=2, batch_first=True)
    torch.save(lstm.state_dict(), tmp / "m.pt")
    x = np.random.default_rng(0).standard_normal((2, 7, 3)).astype(np.float32)
    np.save(tmp / "x.npy", x)
    with torch.no_grad():
        out, (h, c) = lstm(torch.from_numpy(x))
    return tmp, lstm, x, (out.numpy(), h.numpy(), c.numpy())


def _sh(cmd: str, cwd: Path, **env) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-c", cmd], cwd=cwd, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
                               **env})


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_input_from_a_pipe_and_from_standard_input(model):
    tmp, _, _, (out, h, _) = model
    for cmd in ("lstmscope run m.pt <(cat x.npy) --json", "cat x.npy | lstmscope run m.pt - --json"):
        r = _sh(cmd, tmp)
        assert r.returncode == 0, r.stderr
        doc = json.loads(r.stdout)
        assert doc["ok"] and doc["input"]["batch"] == 2 and doc["input"]["time"] == 7
        got = [s["h_n"]["mean"] for s in doc["states"]]
        assert np.allclose(got, h.mean(axis=(1, 2)), atol=1e-6)
        # named as given (/dev/fd/N or -), not by the temporary copy, which is gone when the command ends
        path = doc["input"]["path"]
        assert path == "-" if " - " in cmd else path.startswith("/dev/fd/"), path
    table = _sh("lstmscope run <(cat m.pt) - < x.npy", tmp)
    assert table.returncode == 0, table.stderr
    assert "in /dev/fd/" in table.stdout and "Input   stdin  batch 2" in table.stdout


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_checkpoint_and_snapshot_from_pipes(model):
    tmp, _, _, (_, h, c) = model
    r = _sh("lstmscope export-state <(cat m.pt) x.npy -o s.safetensors --force -q && "
            "lstmscope show-state <(cat s.safetensors) --json", tmp)
    assert r.returncode == 0, r.stderr
    snap = load_file(tmp / "s.safetensors")
    assert np.allclose(snap["h_n"], h, atol=1e-6) and np.allclose(snap["c_n"], c, atol=1e-6)
    r = _sh("lstmscope diff-states <(cat s.safetensors) s.safetensors -q", tmp)
    assert r.returncode == 0, r.stderr


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_errors_about_a_stream_name_it_as_given(model):
    """An error about a pipe's bytes names /dev/fd/N or stdin, not the temporary copy lstmscope read them from."""
    tmp = model[0]
    (tmp / "notes.txt").write_text("not an array\n")
    for cmd, named in (("lstmscope run m.pt <(cat notes.txt)", "/dev/fd/"), ("lstmscope run m.pt - < notes.txt", "stdin"),
                       ("lstmscope run <(cat notes.txt) x.npy", "/dev/fd/"), ("lstmscope show-state - < notes.txt", "stdin")):
        r = _sh(cmd, tmp)
        assert r.returncode == 2 and r.stdout == "", (cmd, r.stderr)
        lines = r.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("Error: " + named), (cmd, lines)
        assert "lstmscope-stream-" not in r.stderr, r.stderr


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_an_empty_pipe_is_one_error_line(model):
    tmp = model[0]
    r = _sh("lstmscope run m.pt <(true)", tmp)
    assert r.returncode == 2 and r.stdout == ""
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and "gave no bytes" in lines[0]
    assert "an input" in lines[0]  # not "a input"


@pytest.mark.parametrize("name", ["out.npy", "out.npz", "out.pt", "state.onnx"])
def test_an_output_name_that_promises_another_format_is_refused(invoke, model, name):
    tmp = model[0]
    target = tmp / name
    line = assert_one_error_line(invoke("export-state", tmp / "m.pt", tmp / "x.npy", "-o", target), target)
    assert "safetensors" in line and not target.exists()
    line = assert_one_error_line(invoke("trace", tmp / "m.pt", tmp / "x.npy", "-o", target), target)
    assert not target.exists()


@pytest.mark.parametrize("name,noted", [("out.txt", True), ("out", True), ("out.st", False),
                                        ("out.safetensors", False)])
def test_an_output_name_that_does_not_say_safetensors_gets_a_note(invoke, model, tmp_path, name, noted):
    """Written (the name promises no other format), with a note on stderr saying what the file is."""
    tmp, _, _, (_, h, _) = model
    for cmd in ("export-state", "trace"):
        target = tmp_path / f"{cmd}-{name}"
        r = invoke(cmd, tmp / "m.pt", tmp / "x.npy", "-o", target, "-q")
        assert r.exit_code == 0, r.stderr
        assert ("is a safetensors file whatever its name says" in r.stderr) == noted, r.stderr
        assert load_file(target)  # a safetensors file, read by safetensors itself
    np.testing.assert_allclose(load_file(tmp_path / f"export-state-{name}")["h_n"], h, atol=1e-6)
    np.savez(tmp_path / "foreign.npz", h_n=h, c_n=h)
    r = invoke("import-state", tmp_path / "foreign.npz", "--checkpoint", tmp / "m.pt", "-o", tmp_path / f"imported-{name}")
    assert r.exit_code == 0 and ("is a safetensors file whatever its name says" in r.stderr) == noted, r.stderr


def test_state_dtype_writes_states_a_float32_lstm_takes(invoke, model):
    tmp, lstm, x, _ = model
    target = tmp / "d64.safetensors"
    r = invoke("export-state", tmp / "m.pt", tmp / "x.npy", "-o", target, "--force", "--dtype", "float64",
               "--state-dtype", "float32", "--include-output")
    assert r.exit_code == 0, r.stderr
    s = load_file(target)
    assert {k: str(v.dtype) for k, v in s.items()} == {"h_n": "float32", "c_n": "float32", "output": "float32"}
    with torch.no_grad():  # the float32 nn.LSTM takes them as they are, and they are the float64 run's
        lstm64 = torch.nn.LSTM(3, 5, num_layers=2, batch_first=True).double()
        lstm64.load_state_dict({k: v.double() for k, v in lstm.state_dict().items()})
        _, (h64, c64) = lstm64(torch.from_numpy(x).double())
        lstm(torch.from_numpy(x), (torch.from_numpy(s["h_n"]), torch.from_numpy(s["c_n"])))
    assert np.allclose(s["h_n"], h64.numpy(), atol=1e-7)
    shown = invoke("show-state", target)
    assert shown.exit_code == 0 and "Stored  float32 tensors" in shown.stdout and "ran in float64" in shown.stdout
    plain = tmp / "plain64.safetensors"
    assert invoke("export-state", tmp / "m.pt", tmp / "x.npy", "-o", plain, "--dtype", "float64").exit_code == 0
    assert "feed them to an nn.LSTM of that dtype" in invoke("show-state", plain).stdout
    r = invoke("export-state", tmp / "m.pt", tmp / "x.npy", "-o", tmp / "b.safetensors", "--state-dtype", "int8")
    assert r.exit_code == 2 and r.stderr.startswith("Error: --state-dtype int8") and len(r.stderr.splitlines()) == 1
    assert not (tmp / "b.safetensors").exists()


def test_lengths_given_twice_says_which_wins(invoke, model):
    tmp = model[0]
    np.savez(tmp / "xl.npz", x=np.load(tmp / "x.npy"), lengths=np.array([7, 4]))
    np.save(tmp / "l.npy", np.array([7, 7]))
    r = invoke("run", tmp / "m.pt", tmp / "xl.npz", "--lengths", tmp / "l.npy", "--json")
    assert r.exit_code == 0
    assert "note: --lengths l.npy replaces the lengths stored in xl.npz ([7, 4])" in r.stderr
    assert json.loads(r.stdout)["input"]["lengths"] == [7, 7]
    same = invoke("run", tmp / "m.pt", tmp / "xl.npz", "--lengths", tmp / "l.npy", "-q")
    np.save(tmp / "l2.npy", np.array([7, 4]))
    assert "replaces" not in invoke("run", tmp / "m.pt", tmp / "xl.npz", "--lengths", tmp / "l2.npy", "-q").stderr
    assert same.exit_code == 0


def test_usage_lines_and_command_list(runner):
    from lstmscope.cli import app

    r = runner.invoke(app, ["run", "--help"], env={"COLUMNS": "80"})
    assert "Usage: lstmscope run [OPTIONS] CHECKPOINT INPUT" in r.stdout
    r = runner.invoke(app, ["compare", "--help"], env={"COLUMNS": "80"})
    assert "Usage: lstmscope compare [OPTIONS] A [B] INPUT" in r.stdout
    r = runner.invoke(app, ["--help"], env={"COLUMNS": "80"})
    commands = r.stdout.split("Commands:")[1]
    assert "..." not in commands  # no description cut short
    for name in ("inspect", "run", "export-state", "import-state", "diff-states", "compare", "show-state", "trace"):
        assert f"  {name} " in commands


def test_wrote_lists_every_tensor_written(invoke, model):
    tmp = model[0]
    np.savez(tmp / "xl.npz", x=np.load(tmp / "x.npy"), lengths=np.array([7, 4]))
    target = tmp / "all.safetensors"
    r = invoke("export-state", tmp / "m.pt", tmp / "xl.npz", "-o", target, "--force", "--include-output")
    wrote = next(line for line in r.stdout.splitlines() if line.startswith("Wrote"))
    on_disk = load_file(target)
    for name, a in on_disk.items():
        assert f"{name} {tuple(a.shape)}" in wrote, (name, wrote)


def test_a_foreign_file_missing_provenance_is_one_line(invoke, model):
    tmp = model[0]
    snap = tmp / "s1.safetensors"
    assert invoke("export-state", tmp / "m.pt", tmp / "x.npy", "-o", snap, "--force").exit_code == 0
    s = load_file(snap)
    np.savez(tmp / "foreign.npz", h_n=s["h_n"], c_n=s["c_n"])
    r = invoke("diff-states", tmp / "foreign.npz", snap)
    assert r.exit_code == 0
    lines = [line for line in r.stdout.splitlines() if "provenance" in line]
    assert len(lines) == 1 and "records none of" in lines[0] and "module" in lines[0]


def test_top_level_module_is_named_in_diffs(invoke, model, tmp_path):
    tmp = model[0]
    wrapped = tmp_path / "wrapped.pt"
    sd = torch.load(tmp / "m.pt", weights_only=True)
    torch.save({f"enc.{k}": v for k, v in sd.items()}, wrapped)
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    assert invoke("export-state", tmp / "m.pt", tmp / "x.npy", "-o", a).exit_code == 0
    assert invoke("export-state", wrapped, tmp / "x.npy", "-o", b).exit_code == 0
    r = invoke("diff-states", a, b)
    line = next(x for x in r.stdout.splitlines() if x.startswith("provenance differs: module"))
    assert "(top level) (A) vs enc (B)" in line


def test_nonfinite_statistics_say_they_are_over_finite_values(invoke, model):
    tmp = model[0]
    x = np.load(tmp / "x.npy")
    x[1, 3, 0] = np.nan
    np.save(tmp / "xnan.npy", x)
    r = invoke("run", tmp / "m.pt", tmp / "xnan.npy")
    assert "over the finite values" in r.stdout


@pytest.mark.parametrize("args", [["--help"], ["diff-states", "--help"], ["diff-states"], ["nope"], ["--version"],
                                  ["inspect", "-h"], ["inspect", str(SAMPLES / "uni_1layer.pt"), "--json"],
                                  ["show-state", "--bogus"]],
                         ids=lambda a: " ".join(a[:2]).replace(str(SAMPLES) + "/", ""))
def test_the_entry_point_answers_as_the_whole_app(args):
    """`lstmscope` builds only the command it runs (cli.entry_point); what it prints and its exit code are
    the whole app's, for commands, help, usage errors, an unknown command and --version."""
    env = {**os.environ, "COLUMNS": "80", "NO_COLOR": "1"}
    whole = subprocess.run([sys.executable, "-c", "import sys; from lstmscope.cli import app; "
                            "app(prog_name='lstmscope')", *args], capture_output=True, text=True, env=env, timeout=120)
    lean = subprocess.run([*LSTMSCOPE, *args], capture_output=True, text=True, env=env, timeout=120)
    assert (lean.returncode, lean.stdout, lean.stderr) == (whole.returncode, whole.stdout, whole.stderr)
    assert whole.returncode in (0, 2) and (whole.stdout or whole.stderr)


def test_the_entry_point_leaves_the_app_whole(monkeypatch):
    """The lean copy is a copy: after a run through entry_point, `app` still holds every command."""
    from lstmscope import cli

    before = list(cli.app.registered_commands)
    monkeypatch.setattr(sys, "argv", ["lstmscope", "inspect", str(SAMPLES / "uni_1layer.pt"), "--json"])
    with pytest.raises(SystemExit) as e:
        cli.entry_point()
    assert e.value.code in (0, None)
    assert cli.app.registered_commands == before and len(before) == 8
