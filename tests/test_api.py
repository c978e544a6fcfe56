"""The Python API (lstmscope.inspect / run / export_state / trace / diff / compare) gives what the commands give:
the same JSON documents for the same inputs, numpy arrays equal to torch.nn.LSTM's, errors as LstmscopeError,
nothing printed, and a cheap ``import lstmscope``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import lstmscope

REPO = Path(__file__).resolve().parent.parent
S = REPO / "sample_checkpoints"


def _cli_json(invoke, *args) -> dict:
    r = invoke(*args, "--json")
    assert r.exit_code in (0, 1), r.stderr
    return json.loads(r.stdout)


def _same(a, b, path_keys=("path",)):
    """Equal documents, up to float rounding in the last place."""
    if isinstance(a, dict):
        assert set(a) == set(b), (sorted(a), sorted(b))
        for k in a:
            _same(a[k], b[k])
    elif isinstance(a, list):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            _same(x, y)
    elif isinstance(a, float) and isinstance(b, float):
        assert a == pytest.approx(b, rel=1e-12, abs=1e-15)
    else:
        assert a == b


def test_import_is_cheap():
    code = "import sys, lstmscope; print('torch' in sys.modules, 'numpy' in sys.modules, 'rich' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "False", "False"]


def test_inspect_equals_the_command(invoke):
    res = lstmscope.inspect(S / "tagger.safetensors")
    _same(res.to_dict(), _cli_json(invoke, "inspect", S / "tagger.safetensors"))
    assert [m.name for m in res.modules] == ["encoder.rnn"]


def test_run_equals_the_command_and_torch(invoke, capsys):
    res = lstmscope.run(S / "bi_2layer.pt", S / "varlen.npz", all_layers=True)
    assert capsys.readouterr() == ("", "")  # prints nothing
    _same(res.to_dict(), _cli_json(invoke, "run", S / "bi_2layer.pt", S / "varlen.npz", "--all-layers"))
    sd = torch.load(S / "bi_2layer.pt", weights_only=True)["model_state_dict"]
    lstm = torch.nn.LSTM(4, 6, num_layers=2, bidirectional=True, batch_first=True)
    lstm.load_state_dict({k.removeprefix("lstm."): v for k, v in sd.items()})
    with np.load(S / "varlen.npz") as z:
        xv, lv = z["x"], z["lengths"]
    packed = torch.nn.utils.rnn.pack_padded_sequence(torch.from_numpy(xv), torch.from_numpy(lv),
                                                     batch_first=True, enforce_sorted=False)
    with torch.no_grad():
        out, (h, c) = lstm(packed)
        out, _ = torch.nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=10)
    assert np.allclose(res.h_n, h.numpy(), atol=1e-6) and np.allclose(res.c_n, c.numpy(), atol=1e-6)
    assert np.allclose(res.output, out.numpy(), atol=1e-6) and res.ok


def test_an_array_runs_as_its_file_does(tmp_path):
    x = np.load(S / "batch.npy")
    from_file = lstmscope.run(S / "uni_1layer.pt", S / "batch.npy")
    from_array = lstmscope.run(S / "uni_1layer.pt", x)
    assert np.array_equal(from_file.h_n, from_array.h_n) and np.array_equal(from_file.c_n, from_array.c_n)
    doc = from_array.to_dict()
    assert doc["input"]["path"] == "<array>" and doc["ok"]
    ids = np.load(S / "sentiment_ids.npy")
    masked = lstmscope.run(S / "sentiment.keras", ids)
    assert masked.ok and masked.to_dict()["input"]["mask"]["valid_steps"] == [5, 2, 4, 10]
    with np.load(S / "varlen.npz") as z:
        xv = z["x"]
    lengths = lstmscope.run(S / "bi_2layer.pt", xv, lengths=np.array([10, 7, 3, 1]))
    assert np.array_equal(lengths.h_n, lstmscope.run(S / "bi_2layer.pt", S / "varlen.npz").h_n)


def test_export_trace_diff_compare_equal_the_commands(invoke, tmp_path):
    x = S / "batch.npy"
    e = lstmscope.export_state(S / "uni_1layer.pt", x, tmp_path / "api.safetensors")
    assert e.path.exists()
    r = invoke("export-state", S / "uni_1layer.pt", x, "-o", tmp_path / "cli.safetensors")
    assert r.exit_code == 0
    assert (tmp_path / "api.safetensors").read_bytes() == (tmp_path / "cli.safetensors").read_bytes()
    d = lstmscope.diff(tmp_path / "api.safetensors", tmp_path / "cli.safetensors")
    assert d.equal
    _same(d.to_dict(), _cli_json(invoke, "diff-states", tmp_path / "api.safetensors", tmp_path / "cli.safetensors"))
    t = lstmscope.trace(S / "flipflop.pt", S / "flipflop_input.npy", tmp_path / "t.safetensors", quantities="h,f")
    doc = _cli_json(invoke, "trace", S / "flipflop.pt", S / "flipflop_input.npy", "-o", tmp_path / "t2.safetensors",
                    "--quantities", "h,f")
    mine = t.to_dict()
    for k in ("path", "sha256", "threads"):
        mine.pop(k), doc.pop(k)
    _same(mine, doc)
    assert t.arrays()["layer0/forward/h"].shape == (2, 120, 8)
    unkept = lstmscope.trace(S / "flipflop.pt", S / "flipflop_input.npy")
    assert unkept.path is None and unkept.summary.rows
    c = lstmscope.compare(S / "uni_1layer.pt", x=np.load(x), b_dtype="float64")
    cdoc = _cli_json(invoke, "compare", S / "uni_1layer.pt", x, "--b-dtype", "float64")
    mine = c.to_dict()
    assert mine["input"]["path"] == "<array>"
    mine["input"]["path"] = cdoc["input"]["path"]
    _same(mine, cdoc)


def test_errors_are_lstmscope_errors(tmp_path):
    with pytest.raises(lstmscope.LstmscopeError, match="no such"):
        lstmscope.run(tmp_path / "missing.pt", S / "batch.npy")
    with pytest.raises(lstmscope.LstmscopeError, match="unknown option"):
        lstmscope.run(S / "uni_1layer.pt", S / "batch.npy", bogus=1)
    with pytest.raises(lstmscope.LstmscopeError, match="features"):
        lstmscope.run(S / "uni_1layer.pt", np.zeros((2, 5, 7), np.float32))
    with pytest.raises(lstmscope.LstmscopeError):
        lstmscope.compare(S / "uni_1layer.pt")
    target = tmp_path / "s.safetensors"
    lstmscope.export_state(S / "uni_1layer.pt", S / "batch.npy", target)
    with pytest.raises(lstmscope.LstmscopeError, match=r"force=True") as info:
        lstmscope.export_state(S / "uni_1layer.pt", S / "batch.npy", target)
    assert "--force" not in str(info.value)
    lstmscope.export_state(S / "uni_1layer.pt", S / "batch.npy", target, force=True)


def test_results_show_as_the_commands_report():
    res = lstmscope.run(S / "bi_2layer.pt", S / "varlen.npz")
    text = str(res)
    assert "Where each h_n slice lives in output" in text and "All 2 checks ok" in text
    bundle = res._repr_mimebundle_()
    assert set(bundle) == {"text/plain", "text/html"} and "<pre" in bundle["text/html"]
    from io import StringIO

    from rich.console import Console

    buf = StringIO()
    Console(file=buf, width=100, color_system=None).print(res)
    assert "h_n[3]" in buf.getvalue()
