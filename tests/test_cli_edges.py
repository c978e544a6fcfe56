"""Edge cases found by reviewing the CLI as a new user: each must be one clear error or a documented result."""

from __future__ import annotations

import json

import numpy as np
import torch
from safetensors.numpy import save_file
from torch import nn

from helpers import assert_one_error_line


def _lstm_file(tmp_path, **kw):
    torch.manual_seed(0)
    lstm = nn.LSTM(3, 4, batch_first=True, **kw)
    path = tmp_path / "m.pt"
    torch.save(lstm.state_dict(), path)
    return lstm, path


def _x(tmp_path, shape=(2, 5, 3)):
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    path = tmp_path / "x.npy"
    np.save(path, x)
    return x, path


def test_checkpoint_given_as_input_is_bad_input(invoke, tmp_path):
    _, ck = _lstm_file(tmp_path)
    line = assert_one_error_line(invoke("run", ck, ck), ck)
    assert "PyTorch checkpoint" in line and "CHECKPOINT argument" in line


def test_gru_only_file_says_gru(invoke, tmp_path):
    path = tmp_path / "gru.pt"
    torch.save(nn.GRU(3, 4).state_dict(), path)
    line = assert_one_error_line(invoke("inspect", path), path)
    assert "no LSTM" in line and "GRU" in line


def test_show_state_on_a_non_torch_zip_does_not_suggest_import_state(invoke, tmp_path):
    import zipfile

    path = tmp_path / "model.keras"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("config.json", "{}")
    line = assert_one_error_line(invoke("show-state", path), path)
    assert "import-state" not in line and "Keras" in line and "not a state file" in line


def test_initial_state_full_module_pickle_is_one_clean_line(invoke, tmp_path):
    lstm, ck = _lstm_file(tmp_path)
    _, x = _x(tmp_path)
    bad = tmp_path / "state.pt"
    torch.save(lstm, bad)  # a module, not an (h, c) tuple
    line = assert_one_error_line(invoke("run", ck, x, "--initial-state", bad), bad)
    assert "weights_only` set to `False" not in line and "(h, c) tuple" in line


def test_export_refuses_to_overwrite_its_own_input_even_with_force(invoke, tmp_path):
    _, ck = _lstm_file(tmp_path)
    _, x = _x(tmp_path)
    before = x.read_bytes()
    line = assert_one_error_line(invoke("export-state", ck, x, "-o", x, "--force"), x)
    assert "also an input" in line
    assert x.read_bytes() == before


def test_time_major_on_2d_input_is_refused(invoke, tmp_path):
    _, ck = _lstm_file(tmp_path)
    _, x = _x(tmp_path, (5, 3))
    assert "--time-major" in assert_one_error_line(invoke("run", ck, x, "--time-major"), x)


def test_units_reversed_says_so(invoke, tmp_path):
    _, ck = _lstm_file(tmp_path)
    _, x = _x(tmp_path)
    r = invoke("run", ck, x, "-b", "0", "--units", "3:1")
    assert r.exit_code == 2 and r.stdout == "" and "--units 3:1 is empty (3 is not before 1)" in r.stderr


def test_run_json_records_the_initial_state(invoke, tmp_path):
    lstm, ck = _lstm_file(tmp_path)
    x, xp = _x(tmp_path)
    h0 = np.random.default_rng(1).standard_normal((1, 2, 4)).astype(np.float32)
    st = tmp_path / "s.npz"
    np.savez(st, h_n=h0, c_n=h0)
    r = invoke("run", ck, xp, "--initial-state", st, "--json")
    assert r.exit_code == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["initial_state"]["path"] == str(st) and len(doc["initial_state"]["sha256"]) == 64
    with torch.no_grad():
        _, (h, _c) = lstm(torch.from_numpy(x), (torch.from_numpy(h0), torch.from_numpy(h0)))
    assert abs(doc["states"][0]["h_n"]["norm"] - float(h[0].norm())) < 1e-5
    assert json.loads(invoke("run", ck, xp, "--json").stdout)["initial_state"] is None


def test_diff_cosine_is_null_when_a_side_holds_nan(invoke, tmp_path):
    h = np.ones((1, 2, 3), dtype=np.float32)
    bad = h.copy()
    bad[0, 0, 0] = np.nan
    save_file({"h_n": bad, "c_n": h}, str(tmp_path / "a.safetensors"))
    save_file({"h_n": h, "c_n": h}, str(tmp_path / "b.safetensors"))
    r = invoke("diff-states", tmp_path / "a.safetensors", tmp_path / "b.safetensors", "--json")
    assert r.exit_code == 1
    rows = {row["tensor"]: row for row in json.loads(r.stdout)["rows"]}
    assert rows["h_n"]["cosine"] is None and rows["h_n"]["pass"] is False
    assert rows["c_n"]["cosine"] == 1.0
