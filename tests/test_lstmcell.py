"""nn.LSTMCell checkpoints (weight_ih, weight_hh, bias_ih, bias_hh without _l0), alone, nested and stacked in a
ModuleList, against independent truth: the cells stepped by a Python loop in torch, ``h, c = cell(x[:, t], (h, c))``.
Never lstmscope against itself.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file
from safetensors.torch import save_file
from torch import nn

from helpers import assert_one_error_line

B, T, F, H = 3, 7, 5, 6
TOL = 1e-6


def make_cell(seed: int, input_size: int = F, hidden: int = H, bias: bool = True) -> nn.LSTMCell:
    torch.manual_seed(seed)
    cell = nn.LSTMCell(input_size, hidden, bias=bias)
    with torch.no_grad():  # wider than the default +-1/sqrt(H), so gates are not all near 0.5
        for p in cell.parameters():
            p.uniform_(-0.8, 0.8)
    return cell


class Stack(nn.Module):
    """A hand-written stacked LSTM: a ModuleList of cells, each stepping on the h of the one before."""

    def __init__(self, cells: list[nn.LSTMCell]):
        super().__init__()
        self.cells = nn.ModuleList(cells)
        self.head = nn.Linear(cells[-1].hidden_size, 2)


def loop(cells: list[nn.LSTMCell], x: np.ndarray) -> dict[str, np.ndarray]:
    """The truth: the cells stepped over x (B, T, F) in a Python loop; output is the last cell's h_t."""
    xt = torch.from_numpy(x)
    h = [torch.zeros(x.shape[0], c.hidden_size, dtype=xt.dtype) for c in cells]
    c = [torch.zeros_like(v) for v in h]
    outs = []
    with torch.no_grad():
        for t in range(x.shape[1]):
            inp = xt[:, t]
            for k, cell in enumerate(cells):
                h[k], c[k] = cell(inp, (h[k], c[k]))
                inp = h[k]
            outs.append(inp)
    return {"h_n": torch.stack(h).numpy(), "c_n": torch.stack(c).numpy(), "output": torch.stack(outs, 1).numpy()}


def inputs(tmp_path, width: int = F, seed: int = 0):
    x = np.random.default_rng(seed).standard_normal((B, T, width)).astype(np.float32)
    path = tmp_path / f"x{width}.npy"
    np.save(path, x)
    return x, path


def inspect_json(invoke, path) -> dict:
    r = invoke("inspect", path, "--json")
    assert r.exit_code == 0, r.stdout + r.stderr
    assert r.stderr == ""
    return json.loads(r.stdout)


def exported(invoke, tmp_path, ck, x_path, *args) -> dict[str, np.ndarray]:
    out = tmp_path / "state.safetensors"
    r = invoke("export-state", ck, x_path, "-o", out, "--include-output", "--force", *args)
    assert r.exit_code == 0, r.stdout + r.stderr
    return load_file(out)


def assert_matches(got: dict, want: dict, tol: float = TOL) -> None:
    for k in ("h_n", "c_n", "output"):
        assert got[k].shape == want[k].shape, k
        np.testing.assert_allclose(got[k], want[k], atol=tol, rtol=0, err_msg=k)


# --- one cell ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("form,prefix", [("bare", ""), ("nested", "model.decoder.rnn"), ("prefixed", "cell")])
def test_single_cell_runs_like_a_loop(invoke, tmp_path, form, prefix):
    cell = make_cell(1)
    sd = cell.state_dict()
    obj = {"bare": sd, "nested": {"epoch": 3, "model": {"decoder": {"rnn": sd}}},
           "prefixed": {f"cell.{k}": v for k, v in sd.items()} | {"out.weight": torch.randn(2, H)}}[form]
    ck = tmp_path / "cell.pt"
    torch.save(obj, ck)
    (mod,) = inspect_json(invoke, ck)["modules"]
    assert mod["prefix"] == prefix
    assert (mod["input_size"], mod["hidden_size"], mod["num_layers"], mod["bidirectional"], mod["bias"],
            mod["proj_size"]) == (F, H, 1, False, True, 0)
    assert any("nn.LSTMCell" in n and "h, c = cell(x[t], (h, c))" in n for n in mod["notes"]), mod["notes"]
    x, xp = inputs(tmp_path)
    want = loop([cell], x)
    assert_matches(exported(invoke, tmp_path, ck, xp), want)
    r = invoke("run", ck, xp, "--json")
    assert r.exit_code == 0, r.stdout + r.stderr
    doc = json.loads(r.stdout)
    assert doc["ok"] is True and doc["shapes"]["h_n"] == [1, B, H]
    assert doc["states"][0]["h_n"]["max"] == pytest.approx(float(want["h_n"].max()), abs=TOL)


def test_cell_without_bias_and_in_safetensors(invoke, tmp_path):
    cell = make_cell(2, bias=False)
    ck = tmp_path / "cell.safetensors"
    save_file({f"enc.cell.{k}": v.contiguous() for k, v in cell.state_dict().items()}, str(ck))
    (mod,) = inspect_json(invoke, ck)["modules"]
    assert (mod["prefix"], mod["bias"]) == ("enc.cell", False)
    x, xp = inputs(tmp_path)
    assert_matches(exported(invoke, tmp_path, ck, xp), loop([cell], x))


def test_cell_in_float64(invoke, tmp_path):
    cell = make_cell(3).double()
    ck = tmp_path / "cell64.pt"
    torch.save({"rnn": cell.state_dict()}, ck)
    x, xp = inputs(tmp_path)
    got = exported(invoke, tmp_path, ck, xp)  # runs in the checkpoint's dtype
    assert_matches(got, loop([cell], x.astype(np.float64)), tol=1e-12)


# --- stacks in a ModuleList -----------------------------------------------------------------------------

@pytest.mark.parametrize("n", [2, 3])
def test_chaining_list_is_one_stack(invoke, tmp_path, n):
    cells = [make_cell(10 + k, F if k == 0 else H) for k in range(n)]
    ck = tmp_path / "stack.pt"
    torch.save({"state_dict": Stack(cells).state_dict()}, ck)
    doc = inspect_json(invoke, ck)
    (mod,) = doc["modules"]
    assert (mod["prefix"], mod["num_layers"], mod["input_size"], mod["hidden_size"]) == ("state_dict.cells", n, F, H)
    names = ", ".join(f"state_dict.cells.{k}" for k in range(n))
    assert any(f"a stack of {n} nn.LSTMCell ({names}), each feeding the next" in note for note in mod["notes"])
    assert [m["prefix"] for m in doc["single_layers"]] == [f"state_dict.cells.{k}" for k in range(n)]
    x, xp = inputs(tmp_path)
    assert_matches(exported(invoke, tmp_path, ck, xp), loop(cells, x))
    # one cell of the stack, alone (--module names it): the second cell on an input of its width
    x6, xp6 = inputs(tmp_path, H, seed=1)
    assert_matches(exported(invoke, tmp_path, ck, xp6, "--module", "state_dict.cells.1"), loop([cells[1]], x6))


def test_top_level_modulelist_is_a_stack(invoke, tmp_path):
    cells = [make_cell(20, F), make_cell(21, H)]
    ck = tmp_path / "list.pt"
    torch.save(nn.ModuleList(cells).state_dict(), ck)
    (mod,) = inspect_json(invoke, ck)["modules"]
    assert (mod["prefix"], mod["num_layers"]) == ("", 2)
    x, xp = inputs(tmp_path)
    assert_matches(exported(invoke, tmp_path, ck, xp), loop(cells, x))


@pytest.mark.parametrize("case", ["widths", "hidden"])
def test_list_that_does_not_chain_is_one_module_per_cell(invoke, tmp_path, case):
    # widths: cell 1 takes 4 features, cell 0 gives 6; hidden: cell 1 takes 6 but gives 3 (not an nn.LSTM stack)
    second = make_cell(31, 4, H) if case == "widths" else make_cell(31, H, 3)
    cells = [make_cell(30), second]
    ck = tmp_path / "list.pt"
    torch.save(Stack(cells).state_dict(), ck)
    doc = inspect_json(invoke, ck)
    mods = {m["prefix"]: m for m in doc["modules"]}
    assert list(mods) == ["cells.0", "cells.1"]
    assert all(m["num_layers"] == 1 for m in mods.values())
    why = {"widths": "'cells.1' takes 4 features but 'cells.0' gives 6",
           "hidden": "hidden_size 6 and 'cells.1' 3"}[case]
    assert any("not stacked" in n and why in n for n in mods["cells.1"]["notes"]), mods["cells.1"]["notes"]
    r = invoke("run", ck, inputs(tmp_path)[1])
    assert_one_error_line(r, ck, "--module cells.0", "--module cells.1")
    for k, cell in enumerate(cells):
        x, xp = inputs(tmp_path, cell.input_size, seed=k)
        assert_matches(exported(invoke, tmp_path, ck, xp, "--module", f"cells.{k}"), loop([cell], x))


def test_list_with_another_module_between_is_not_a_stack(invoke, tmp_path):
    seq = nn.Sequential(make_cell(40), nn.LayerNorm(H), make_cell(41, H))
    ck = tmp_path / "seq.pt"
    torch.save(seq.state_dict(), ck)
    doc = inspect_json(invoke, ck)
    assert [m["prefix"] for m in doc["modules"]] == ["0", "2"]
    assert any("no LSTMCell at index 1" in n for n in doc["modules"][0]["notes"])


def test_cells_next_to_an_lstm(invoke, tmp_path):
    torch.manual_seed(5)
    model = nn.ModuleDict({"enc": nn.LSTM(F, H, batch_first=True), "dec": make_cell(50, H)})
    ck = tmp_path / "both.pt"
    torch.save(model.state_dict(), ck)
    doc = inspect_json(invoke, ck)
    assert [m["prefix"] for m in doc["modules"]] == ["enc", "dec"]


# --- not LSTM cells ----------------------------------------------------------------------------------

@pytest.mark.parametrize("kind,words", [(nn.GRUCell, "3 gates (an nn.GRUCell)"),
                                        (nn.RNNCell, "1 gate (an nn.RNNCell)")])
def test_gru_and_rnn_cells_are_refused(invoke, tmp_path, kind, words):
    ck = tmp_path / "other.pt"
    torch.save({"decoder.cell." + k: v for k, v in kind(F, H).state_dict().items()}, ck)
    x, xp = inputs(tmp_path)
    for args in (("inspect", ck), ("run", ck, xp)):
        assert_one_error_line(invoke(*args), ck, "holds no LSTM", "'decoder.cell'", words, "not an LSTM's 4")


def test_gru_cell_next_to_an_lstm_cell_is_left_out(invoke, tmp_path):
    ck = tmp_path / "mixed.pt"
    torch.save({**{f"gru.{k}": v for k, v in nn.GRUCell(F, H).state_dict().items()},
                **{f"lstm.{k}": v for k, v in make_cell(60).state_dict().items()}}, ck)
    assert [m["prefix"] for m in inspect_json(invoke, ck)["modules"]] == ["lstm"]


@pytest.mark.parametrize("case", ["linear_alone", "no_weight_hh", "hh_not_square", "optimizer_moments", "gates_5"])
def test_no_false_positives(invoke, tmp_path, case):
    cell = make_cell(70).state_dict()
    obj = {
        "linear_alone": {"proj.weight_ih": torch.randn(4 * H, F), "proj.bias_ih": torch.randn(4 * H)},
        "no_weight_hh": {k: v for k, v in cell.items() if k != "weight_hh"},
        "hh_not_square": {**cell, "weight_hh": torch.randn(4 * H, H + 1)},  # (4H, H+1): not (G*H, H)
        "optimizer_moments": {"optimizer": {"exp_avg": dict(cell), "exp_avg_sq": dict(cell)}},
        "gates_5": {"weight_ih": torch.randn(5 * H, F), "weight_hh": torch.randn(5 * H, H)},
    }[case]
    ck = tmp_path / f"{case}.pt"
    torch.save(obj, ck)
    assert_one_error_line(invoke("inspect", ck), ck, "holds no LSTM")


def test_optimizer_moments_next_to_a_cell_are_not_modules(invoke, tmp_path):
    cell = make_cell(71)
    ck = tmp_path / "train.pt"
    sd = cell.state_dict()
    torch.save({"model": {f"cell.{k}": v for k, v in sd.items()},
                "optimizer_state": {"exp_avg": {f"cell.{k}": torch.zeros_like(v) for k, v in sd.items()}}}, ck)
    assert [m["prefix"] for m in inspect_json(invoke, ck)["modules"]] == ["model.cell"]


@pytest.mark.parametrize("case,fragments", [
    ("bias_shape", ("'rnn.bias_hh'", "expected (24,)")),
    ("one_bias", ("has bias_ih but no bias_hh", "'rnn.bias_hh'")),
    ("dtype", ("'rnn.weight_hh' is float64", "share a dtype")),
    ("integer", ("'rnn.weight_ih' is int32", "floating-point")),
])
def test_inconsistent_cell_is_one_error_line(invoke, tmp_path, case, fragments):
    sd = {f"rnn.{k}": v for k, v in make_cell(80).state_dict().items()}
    if case == "bias_shape":
        sd["rnn.bias_hh"] = torch.zeros(4 * H + 1)
    elif case == "one_bias":
        del sd["rnn.bias_hh"]
    elif case == "dtype":
        sd["rnn.weight_hh"] = sd["rnn.weight_hh"].double()
    else:
        sd = {k: (v * 100).int() for k, v in sd.items()}
    ck = tmp_path / f"{case}.pt"
    torch.save(sd, ck)
    assert_one_error_line(invoke("inspect", ck), ck, *fragments)
