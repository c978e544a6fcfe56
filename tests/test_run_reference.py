"""`lstmscope run` against independent truth: the float64 numpy reference (tests/reference.py) and
torch.nn.LSTM run directly in the test. Never lstmscope against itself.

Tiny LSTMs of every shape (1-3 layers, bidirectional, proj_size, bias=False) are saved once per
session in three checkpoint forms (bare state_dict .pt, a wrapped training dict, safetensors) and
run through the CLI (``--json`` and text) and through ``lstmscope.runner.execute_run``.
"""

from __future__ import annotations

import dataclasses
import json
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from reference import lstm_reference

# Input: batch B, time T, features F. Cell width H, projected width P where proj_size > 0.
B, T, F, H, P = 4, 6, 5, 6, 3
# Unsorted, with a length of 1 and a length of T.
LENGTHS = np.array([4, T, 1, 3], dtype=np.int64)
TOL32 = 1e-5  # float32 run against the float64 reference
TOL64 = 1e-10  # --dtype float64 run against the float64 reference
TOL_TORCH = 1e-6  # lstmscope against torch.nn.LSTM, both float32

CONFIGS = {
    "L1": dict(num_layers=1, bidirectional=False, proj_size=0, bias=True),
    "L2": dict(num_layers=2, bidirectional=False, proj_size=0, bias=True),
    "L3": dict(num_layers=3, bidirectional=False, proj_size=0, bias=True),
    "L1-bi": dict(num_layers=1, bidirectional=True, proj_size=0, bias=True),
    "L2-bi": dict(num_layers=2, bidirectional=True, proj_size=0, bias=True),
    "L3-bi-proj": dict(num_layers=3, bidirectional=True, proj_size=P, bias=True),
    "L2-proj": dict(num_layers=2, bidirectional=False, proj_size=P, bias=True),
    "L1-nobias": dict(num_layers=1, bidirectional=False, proj_size=0, bias=False),
    "L2-bi-nobias": dict(num_layers=2, bidirectional=True, proj_size=0, bias=False),
    "L2-bi-proj-nobias": dict(num_layers=2, bidirectional=True, proj_size=P, bias=False),
}
NAMES = list(CONFIGS)
FORMS = ("state_dict", "wrapped", "safetensors")
# Where each form puts the LSTM's tensors; lstmscope reports the prefix without the trailing dot.
FORM_PREFIX = {"state_dict": "", "wrapped": "model_state_dict.enc.lstm", "safetensors": "rnn"}
FORM_FORMAT = {"state_dict": "torch-zip", "wrapped": "torch-zip", "safetensors": "safetensors"}
DIRECTIONS = ("forward", "backward")


@dataclasses.dataclass
class Model:
    name: str
    num_layers: int
    bidirectional: bool
    proj_size: int
    bias: bool
    lstm: torch.nn.LSTM  # float32, batch_first
    params: dict  # nn.LSTM state_dict names -> float32 numpy
    paths: dict  # form -> checkpoint path

    @property
    def D(self) -> int:
        return 2 if self.bidirectional else 1

    @property
    def out(self) -> int:
        return self.proj_size or H

    def ckpt(self, form: str | None = None) -> Path:
        """The default form rotates over the configurations so every form meets every feature."""
        return self.paths[form or FORMS[NAMES.index(self.name) % len(FORMS)]]


def _make_lstm(cfg: dict, seed: int) -> torch.nn.LSTM:
    torch.manual_seed(seed)
    lstm = torch.nn.LSTM(input_size=F, hidden_size=H, batch_first=True, **cfg)
    with torch.no_grad():  # wider than the default +-1/sqrt(H) so gates are not all near 0.5
        for p in lstm.parameters():
            p.uniform_(-0.8, 0.8)
    return lstm.eval()


@pytest.fixture(scope="session")
def models(tmp_path_factory) -> dict[str, Model]:
    root = tmp_path_factory.mktemp("ckpts")
    out = {}
    for seed, (name, cfg) in enumerate(CONFIGS.items()):
        lstm = _make_lstm(cfg, seed)
        sd = {k: v.detach().clone().contiguous() for k, v in lstm.state_dict().items()}
        paths = {
            "state_dict": root / f"{name}.pt",
            "wrapped": root / f"{name}_wrapped.pth",
            "safetensors": root / f"{name}.safetensors",
        }
        torch.save(sd, paths["state_dict"])
        torch.save({"epoch": 3, "model_state_dict": {f"enc.lstm.{k}": v for k, v in sd.items()}}, paths["wrapped"])
        save_file({f"rnn.{k}": v for k, v in sd.items()}, str(paths["safetensors"]))
        params = {k: v.numpy().copy() for k, v in sd.items()}
        out[name] = Model(name, cfg["num_layers"], cfg["bidirectional"], cfg["proj_size"], cfg["bias"], lstm, params, paths)
    return out


@dataclasses.dataclass
class Inputs:
    x: np.ndarray  # (B, T, F) float32
    x16: np.ndarray  # (B, T, F) float16
    x64: np.ndarray  # (B, T, F) float64 with values float32 cannot hold
    files: dict  # name -> path


@pytest.fixture(scope="session")
def inputs(tmp_path_factory) -> Inputs:
    root = tmp_path_factory.mktemp("inputs")
    rng = np.random.default_rng(1234)
    x = (rng.standard_normal((B, T, F)) * 1.5).astype(np.float32)
    x16 = (rng.standard_normal((B, T, F)) * 1.5).astype(np.float16)
    x64 = rng.standard_normal((B, T, F)) * 1.5
    tm = np.ascontiguousarray(x.transpose(1, 0, 2))  # (T, B, F)
    files = {
        "x.npy": x,
        "x16.npy": x16,
        "x64.npy": x64,
        "x_tm.npy": tm,
        "single.npy": x[2],  # (T, F)
        "lengths.npy": LENGTHS,
    }
    paths = {}
    for name, arr in files.items():
        paths[name] = root / name
        np.save(paths[name], arr)
    paths["x_len.npz"] = root / "x_len.npz"
    np.savez(paths["x_len.npz"], x=x, lengths=LENGTHS)
    paths["x_tm_len.npz"] = root / "x_tm_len.npz"
    np.savez(paths["x_tm_len.npz"], x=tm, lengths=LENGTHS)
    return Inputs(x, x16, x64, paths)


# --- independent truth ---------------------------------------------------------------------------

_REF_CACHE: dict = {}


def reference(m: Model, x: np.ndarray, lengths=None):
    """(output, h_n, c_n, layer_outputs), float64, from tests/reference.py. Cached per (model, input)."""
    key = (m.name, x.dtype.str, x.shape, x.tobytes(), None if lengths is None else tuple(lengths))
    if key not in _REF_CACHE:
        _REF_CACHE[key] = lstm_reference(
            m.params, x, num_layers=m.num_layers, bidirectional=m.bidirectional, proj_size=m.proj_size,
            lengths=None if lengths is None else list(lengths),
        )
    return _REF_CACHE[key]


def torch_fused(m: Model, x: np.ndarray, lengths=None):
    """torch.nn.LSTM (all layers in one module), float32, run here: (output, h_n, c_n) as numpy."""
    xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    with torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*not supported with oneDNN.*")
        if lengths is None:
            out, (h, c) = m.lstm(xt)
        else:
            packed = pack_padded_sequence(xt, torch.as_tensor(lengths), batch_first=True, enforce_sorted=False)
            out, (h, c) = m.lstm(packed)
            out, _ = pad_packed_sequence(out, batch_first=True, total_length=xt.shape[1])
    return out.numpy(), h.numpy(), c.numpy()


def stats(a: np.ndarray) -> dict:
    a = np.asarray(a, dtype=np.float64)
    return {"mean": a.mean(), "std": a.std(), "min": a.min(), "max": a.max(), "norm": np.sqrt((a * a).sum())}


def assert_states(doc: dict, m: Model, h_n: np.ndarray, c_n: np.ndarray, tol: float) -> None:
    """JSON ``states`` (one row per layer/direction, layer-major) against our own statistics."""
    rows = doc["states"]
    assert len(rows) == m.num_layers * m.D
    batch = h_n.shape[1]
    for i, row in enumerate(rows):
        layer, d = divmod(i, m.D)
        assert (row["layer"], row["direction"], row["index"]) == (layer, DIRECTIONS[d], layer * m.D + d)
        for name, arr, width in (("h_n", h_n, m.out), ("c_n", c_n, H)):
            got = row[name]
            assert got["shape"] == [batch, width]
            assert got["nonfinite"] == 0
            want = stats(arr[i])
            for k, v in want.items():
                assert got[k] == pytest.approx(v, abs=tol), (i, name, k)


def expected_time_index(m: Model, d: int, lengths) -> list[int]:
    if d == 1:
        return [0] * B
    return [T - 1] * B if lengths is None else [int(n) - 1 for n in lengths]


def assert_checks(doc: dict, m: Model, lengths, layers) -> None:
    checks = doc["checks"]
    want = [(layer, d) for layer in layers for d in range(m.D)]
    assert [(c["layer"], DIRECTIONS.index(c["direction"])) for c in checks] == want
    for c, (layer, d) in zip(checks, want):
        assert c["ok"] is True
        assert c["max_abs_diff"] <= 1e-6
        assert c["output_time_index"] == expected_time_index(m, d, lengths)
        assert c["output_columns"] == [d * m.out, (d + 1) * m.out]
    assert doc["ok"] is True


def run_json(invoke, *args) -> dict:
    result = invoke("run", *args, "--json")
    assert result.exit_code == 0, result.stdout + result.stderr
    assert result.stderr == ""
    doc = json.loads(result.stdout)
    assert doc["schema"] == "lstmscope.run/1"
    return doc


def run_lib(ckpt, inp, **kw):
    from lstmscope.runner import RunOptions, execute_run

    return execute_run(RunOptions(checkpoint=ckpt, input=inp, **kw))


def assert_close(got, want, tol, what=""):
    assert got.shape == want.shape, what
    np.testing.assert_allclose(np.asarray(got, dtype=np.float64), want, rtol=0, atol=tol, err_msg=what)


# --- CLI JSON against the reference ---------------------------------------------------------------

VARIANTS = {
    # name: (input file, extra args, lengths, tolerance, run dtype)
    "full": ("x.npy", (), None, TOL32, "float32"),
    "npz-lengths": ("x_len.npz", (), LENGTHS, TOL32, "float32"),
    "float64": ("x_len.npz", ("--dtype", "float64"), LENGTHS, TOL64, "float64"),
}


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("name", NAMES)
def test_cli_states_match_reference(invoke, models, inputs, name, variant):
    m = models[name]
    inp, extra, lengths, tol, run_dtype = VARIANTS[variant]
    doc = run_json(invoke, m.ckpt(), inputs.files[inp], *extra)
    _, h_n, c_n, _ = reference(m, inputs.x, lengths)
    assert_states(doc, m, h_n, c_n, tol)
    # Without --all-layers only the last layer's output exists, so only it is checked.
    assert_checks(doc, m, lengths, [m.num_layers - 1])

    out_t, h_t, c_t = torch_fused(m, inputs.x, lengths)
    assert doc["shapes"] == {"output": list(out_t.shape), "h_n": list(h_t.shape), "c_n": list(c_t.shape)}
    assert doc["shapes"] == {"output": [B, T, m.D * m.out], "h_n": [m.num_layers * m.D, B, m.out],
                             "c_n": [m.num_layers * m.D, B, H]}
    model = doc["model"]
    assert (model["input_size"], model["hidden_size"], model["proj_size"], model["num_layers"],
            model["bidirectional"], model["num_directions"], model["bias"], model["dtype"]) == (
        F, H, m.proj_size, m.num_layers, m.bidirectional, m.D, m.bias, "float32")
    assert doc["input"]["run_dtype"] == run_dtype
    assert doc["input"]["layout"] == "batch_first"
    assert (doc["input"]["batch"], doc["input"]["time"], doc["input"]["features"]) == (B, T, F)
    assert doc["input"]["lengths"] == (None if lengths is None else LENGTHS.tolist())


@pytest.mark.parametrize("form", FORMS)
def test_every_checkpoint_form(invoke, models, inputs, form):
    m = models["L3-bi-proj"]
    doc = run_json(invoke, m.ckpt(form), inputs.files["x_len.npz"])
    assert doc["checkpoint"]["module"] == FORM_PREFIX[form]
    assert doc["checkpoint"]["format"] == FORM_FORMAT[form]
    _, h_n, c_n, _ = reference(m, inputs.x, LENGTHS)
    assert_states(doc, m, h_n, c_n, TOL32)
    assert_checks(doc, m, LENGTHS, [m.num_layers - 1])
    # --module with and without the trailing dot selects the same LSTM.
    if FORM_PREFIX[form]:
        for prefix in (FORM_PREFIX[form], FORM_PREFIX[form] + "."):
            doc2 = run_json(invoke, m.ckpt(form), inputs.files["x_len.npz"], "--module", prefix)
            assert_states(doc2, m, h_n, c_n, TOL32)


# --- library call against the reference -----------------------------------------------------------

@pytest.mark.parametrize("all_layers", [False, True], ids=["fused", "all-layers"])
@pytest.mark.parametrize("with_lengths", [False, True], ids=["full", "lengths"])
@pytest.mark.parametrize("name", NAMES)
def test_library_matches_reference(models, inputs, name, with_lengths, all_layers):
    m = models[name]
    lengths = LENGTHS if with_lengths else None
    inp = inputs.files["x_len.npz" if with_lengths else "x.npy"]
    res = run_lib(m.ckpt(), inp, all_layers=all_layers).result
    out, h_n, c_n, layer_outputs = reference(m, inputs.x, lengths)
    assert res.dtype == "float32"
    assert_close(res.h_n, h_n, TOL32, "h_n")
    assert_close(res.c_n, c_n, TOL32, "c_n")
    assert_close(res.output, out, TOL32, "output")
    if with_lengths:  # pad_packed_sequence pads with zeros after each sequence's end
        for b, n in enumerate(LENGTHS):
            assert np.all(res.output[b, n:] == 0)
    if all_layers:
        assert sorted(res.layer_outputs) == list(range(m.num_layers))
        for layer, want in enumerate(layer_outputs):
            assert_close(res.layer_outputs[layer], want, TOL32, f"layer {layer} output")
    else:
        assert list(res.layer_outputs) == [m.num_layers - 1]  # only the last layer's output exists


@pytest.mark.parametrize("all_layers", [False, True], ids=["fused", "all-layers"])
@pytest.mark.parametrize("name", ["L2-bi", "L3-bi-proj", "L2-proj", "L1-nobias"])
def test_library_float64(models, inputs, name, all_layers):
    m = models[name]
    res = run_lib(m.ckpt(), inputs.files["x_len.npz"], dtype="float64", all_layers=all_layers).result
    out, h_n, c_n, layer_outputs = reference(m, inputs.x, LENGTHS)
    assert res.dtype == "float64"
    assert res.h_n.dtype == res.c_n.dtype == res.output.dtype == np.float64
    assert_close(res.h_n, h_n, TOL64, "h_n")
    assert_close(res.c_n, c_n, TOL64, "c_n")
    assert_close(res.output, out, TOL64, "output")
    if all_layers:
        for layer, want in enumerate(layer_outputs):
            assert_close(res.layer_outputs[layer], want, TOL64)


def test_float64_checkpoint_runs_in_float64(invoke, models, inputs, tmp_path):
    """Without --dtype the run uses the checkpoint's dtype."""
    m = models["L2-bi-proj-nobias"]
    ckpt = tmp_path / "f64.pt"
    torch.save({k: torch.from_numpy(v).double() for k, v in m.params.items()}, ckpt)
    doc = run_json(invoke, ckpt, inputs.files["x64.npy"])
    assert doc["model"]["dtype"] == "float64"
    assert doc["input"]["run_dtype"] == "float64"
    _, h_n, c_n, _ = reference(m, inputs.x64)
    assert_states(doc, m, h_n, c_n, TOL64)
    assert_checks(doc, m, None, [m.num_layers - 1])


# --- lengths, layouts and input dtypes ------------------------------------------------------------

@pytest.mark.parametrize("name", ["L1", "L2-bi", "L3-bi-proj"])
def test_lengths_file(invoke, models, inputs, name):
    m = models[name]
    doc = run_json(invoke, m.ckpt(), inputs.files["x.npy"], "--lengths", inputs.files["lengths.npy"])
    assert doc["input"]["lengths"] == LENGTHS.tolist()
    _, h_n, c_n, _ = reference(m, inputs.x, LENGTHS)
    assert_states(doc, m, h_n, c_n, TOL32)
    assert_checks(doc, m, LENGTHS, [m.num_layers - 1])
    res = run_lib(m.ckpt(), inputs.files["x.npy"], lengths=inputs.files["lengths.npy"]).result
    assert_close(res.h_n, h_n, TOL32)
    assert_close(res.c_n, c_n, TOL32)


@pytest.mark.parametrize("all_layers", [False, True], ids=["fused", "all-layers"])
@pytest.mark.parametrize("name", ["L2", "L3-bi-proj"])
def test_lengths_all_shorter_than_time(invoke, models, inputs, tmp_path, name, all_layers):
    """max(lengths) < T: output keeps all T steps, zero after each sequence's end."""
    m = models[name]
    short = np.array([2, 1, 5, 3], dtype=np.int64)
    inp = tmp_path / "short.npz"
    np.savez(inp, x=inputs.x, lengths=short)
    args = ["--all-layers"] if all_layers else []
    doc = run_json(invoke, m.ckpt(), inp, *args)
    out, h_n, c_n, _ = reference(m, inputs.x, short)
    assert doc["shapes"]["output"] == [B, T, m.D * m.out]
    assert_states(doc, m, h_n, c_n, TOL32)
    assert_checks(doc, m, short, range(m.num_layers) if all_layers else [m.num_layers - 1])
    res = run_lib(m.ckpt(), inp, all_layers=all_layers).result
    assert_close(res.output, out, TOL32)
    assert_close(res.h_n, h_n, TOL32)
    assert_close(res.c_n, c_n, TOL32)


@pytest.mark.parametrize("with_lengths", [False, True], ids=["full", "lengths"])
@pytest.mark.parametrize("name", ["L1", "L2-bi", "L3-bi-proj", "L2-bi-proj-nobias"])
def test_time_major(invoke, models, inputs, name, with_lengths):
    m = models[name]
    lengths = LENGTHS if with_lengths else None
    tm = inputs.files["x_tm_len.npz" if with_lengths else "x_tm.npy"]
    bf = inputs.files["x_len.npz" if with_lengths else "x.npy"]
    doc = run_json(invoke, m.ckpt(), tm, "--time-major")
    assert doc["input"]["layout"] == "time_major"
    assert (doc["input"]["batch"], doc["input"]["time"]) == (B, T)
    out_t, h_t, c_t = torch_fused(m, inputs.x, lengths)
    # nn.LSTM(batch_first=False) gives output (T, B, D*P); h_n/c_n do not depend on the layout.
    assert doc["shapes"] == {"output": [T, B, m.D * m.out], "h_n": list(h_t.shape), "c_n": list(c_t.shape)}
    _, h_n, c_n, _ = reference(m, inputs.x, lengths)
    assert_states(doc, m, h_n, c_n, TOL32)
    assert_checks(doc, m, lengths, [m.num_layers - 1])
    # The same states as the batch-first file.
    doc_bf = run_json(invoke, m.ckpt(), bf)
    for a, b in zip(doc["states"], doc_bf["states"]):
        for name_ in ("h_n", "c_n"):
            for k in ("mean", "std", "min", "max", "norm"):
                assert a[name_][k] == pytest.approx(b[name_][k], abs=1e-6)
    tm_res = run_lib(m.ckpt(), tm, time_major=True, all_layers=True).result
    bf_res = run_lib(m.ckpt(), bf, all_layers=True).result
    assert_close(tm_res.h_n, h_n, TOL32)
    assert_close(tm_res.c_n, c_n, TOL32)
    assert_close(tm_res.h_n, bf_res.h_n.astype(np.float64), 1e-6)
    assert_close(tm_res.c_n, bf_res.c_n.astype(np.float64), 1e-6)


@pytest.mark.parametrize("name", ["L1", "L2-bi", "L3-bi-proj"])
def test_single_sequence_2d(invoke, models, inputs, name):
    m = models[name]
    x1 = inputs.x[2:3]  # single.npy holds x[2] as (T, F)
    doc = run_json(invoke, m.ckpt(), inputs.files["single.npy"])
    assert doc["input"]["layout"] == "single"
    assert (doc["input"]["batch"], doc["input"]["time"], doc["input"]["features"]) == (1, T, F)
    assert doc["shapes"] == {"output": [1, T, m.D * m.out], "h_n": [m.num_layers * m.D, 1, m.out],
                             "c_n": [m.num_layers * m.D, 1, H]}
    out, h_n, c_n, _ = reference(m, x1)
    assert_states(doc, m, h_n, c_n, TOL32)
    checks = doc["checks"]
    assert len(checks) == m.D and all(c["ok"] for c in checks)
    assert [c["output_time_index"] for c in checks] == [[T - 1], [0]][: m.D]
    res = run_lib(m.ckpt(), inputs.files["single.npy"]).result
    assert_close(res.h_n, h_n, TOL32)
    assert_close(res.c_n, c_n, TOL32)
    assert_close(res.output, out, TOL32)


@pytest.mark.parametrize("name", ["L2-bi", "L2-proj"])
def test_float16_input_file(invoke, models, inputs, name):
    m = models[name]
    doc = run_json(invoke, m.ckpt(), inputs.files["x16.npy"])
    assert doc["input"]["run_dtype"] == "float32"  # the checkpoint's dtype, not the input's
    x = inputs.x16.astype(np.float64)  # float16 values are exact in float32 and float64
    _, h_n, c_n, _ = reference(m, x)
    assert_states(doc, m, h_n, c_n, TOL32)
    assert_checks(doc, m, None, [m.num_layers - 1])
    res = run_lib(m.ckpt(), inputs.files["x16.npy"]).result
    assert_close(res.h_n, h_n, TOL32)
    assert_close(res.c_n, c_n, TOL32)


@pytest.mark.parametrize("name", ["L2-bi", "L3-bi-proj"])
def test_float64_input_file(invoke, models, inputs, name):
    m = models[name]
    _, h_n, c_n, _ = reference(m, inputs.x64)
    # In the checkpoint's float32 (the input is rounded to float32 first).
    doc = run_json(invoke, m.ckpt(), inputs.files["x64.npy"])
    assert doc["input"]["run_dtype"] == "float32"
    assert_states(doc, m, h_n, c_n, TOL32)
    # In float64 nothing is rounded: float32 weights are exact in float64.
    doc = run_json(invoke, m.ckpt(), inputs.files["x64.npy"], "--dtype", "float64")
    assert doc["input"]["run_dtype"] == "float64"
    assert_states(doc, m, h_n, c_n, TOL64)
    assert_checks(doc, m, None, [m.num_layers - 1])
    res = run_lib(m.ckpt(), inputs.files["x64.npy"], dtype="float64").result
    assert_close(res.h_n, h_n, TOL64)
    assert_close(res.c_n, c_n, TOL64)


# --- --all-layers ---------------------------------------------------------------------------------

@pytest.mark.parametrize("with_lengths", [False, True], ids=["full", "lengths"])
@pytest.mark.parametrize("name", NAMES)
def test_all_layers_checks_every_layer(invoke, models, inputs, name, with_lengths):
    m = models[name]
    lengths = LENGTHS if with_lengths else None
    inp = inputs.files["x_len.npz" if with_lengths else "x.npy"]
    doc = run_json(invoke, m.ckpt(), inp, "--all-layers")
    assert len(doc["checks"]) == m.num_layers * m.D
    assert_checks(doc, m, lengths, range(m.num_layers))
    # Layer by layer gives the states of torch's fused multi-layer nn.LSTM.
    out_t, h_t, c_t = torch_fused(m, inputs.x, lengths)
    assert_states(doc, m, h_t, c_t, TOL_TORCH)
    res = run_lib(m.ckpt(), inp, all_layers=True).result
    assert_close(res.h_n, h_t.astype(np.float64), TOL_TORCH, "h_n")
    assert_close(res.c_n, c_t.astype(np.float64), TOL_TORCH, "c_n")
    assert_close(res.output, out_t.astype(np.float64), TOL_TORCH, "output")
    assert doc["shapes"] == {"output": list(out_t.shape), "h_n": list(h_t.shape), "c_n": list(c_t.shape)}


def test_all_layers_time_major_shapes(invoke, models, inputs):
    m = models["L3-bi-proj"]
    doc = run_json(invoke, m.ckpt(), inputs.files["x_tm_len.npz"], "--time-major", "--all-layers")
    assert doc["shapes"]["output"] == [T, B, m.D * m.out]
    assert_checks(doc, m, LENGTHS, range(m.num_layers))
    _, h_t, c_t = torch_fused(m, inputs.x, LENGTHS)
    assert_states(doc, m, h_t, c_t, TOL_TORCH)


# --- --batch-index / --units ----------------------------------------------------------------------

def _expected_rows(m: Model, b: int, units: list[int], lengths, all_layers: bool, ref, time_major=False):
    out, h_n, c_n, layer_outputs = ref
    rows = []
    for layer in range(m.num_layers):
        for d in range(m.D):
            i = layer * m.D + d
            h = [h_n[i, b, u] if u < m.out else None for u in units]
            c = [c_n[i, b, u] for u in units]
            o = pos = None
            if all_layers or layer == m.num_layers - 1:
                t = (T - 1 if lengths is None else int(lengths[b]) - 1) if d == 0 else 0
                o = [layer_outputs[layer][b, t, d * m.out + u] if u < m.out else None for u in units]
                shown = [u for u in units if u < m.out]  # the output columns that hold these units
                cols = f"{d * m.out + shown[0]}:{d * m.out + shown[-1] + 1}" if shown else f"{d * m.out}:{d * m.out}"
                pos = f"output[{t}, {b}, {cols}]" if time_major else f"output[{b}, {t}, {cols}]"
            rows.append(dict(layer=layer, direction=DIRECTIONS[d], units=units, h_n=h, c_n=c, output=o,
                             output_position=pos))
    return rows


def _assert_values_equal(got, want, tol):
    if want is None:
        assert got is None
        return
    assert len(got) == len(want)
    for g, w in zip(got, want):
        if w is None:
            assert g is None
        else:
            assert g == pytest.approx(w, abs=tol)


CASES_VALUES = [
    # (model, --batch-index, --units, expected units, --all-layers, --time-major, lengths)
    ("L3-bi-proj", "1", "1:5", [1, 2, 3, 4], False, False, LENGTHS),  # units 3, 4 lie beyond proj_size=3 in h_n
    ("L3-bi-proj", "3", "0:6", list(range(6)), True, False, LENGTHS),
    ("L2-proj", "0", "2:6", [2, 3, 4, 5], True, True, LENGTHS),
    ("L2", "-1", "2:4", [2, 3], False, False, None),  # negative index counts from the end
    ("L2-bi-nobias", "2", "5", [5], True, False, LENGTHS),  # one unit; sequence 2 has length 1
    ("L1-bi", "0", None, list(range(6)), False, True, None),  # default: the first min(8, H) units
]


@pytest.mark.parametrize("name,bi,units,want_units,all_layers,time_major,lengths", CASES_VALUES)
def test_values_json(invoke, models, inputs, name, bi, units, want_units, all_layers, time_major, lengths):
    m = models[name]
    files = {(False, False): "x.npy", (False, True): "x_len.npz", (True, False): "x_tm.npy", (True, True): "x_tm_len.npz"}
    inp = inputs.files[files[time_major, lengths is not None]]
    args = [m.ckpt(), inp, "--batch-index", bi]
    if units is not None:
        args += ["--units", units]
    if all_layers:
        args.append("--all-layers")
    if time_major:
        args.append("--time-major")
    doc = run_json(invoke, *args)
    b = int(bi) % B
    vals = doc["values"]
    assert vals["batch_index"] == b
    want = _expected_rows(m, b, want_units, lengths, all_layers, reference(m, inputs.x, lengths), time_major)
    assert len(vals["rows"]) == len(want)
    for got, exp in zip(vals["rows"], want):
        assert (got["layer"], got["direction"], got["units"]) == (exp["layer"], exp["direction"], exp["units"])
        _assert_values_equal(got["h_n"], exp["h_n"], TOL32)
        _assert_values_equal(got["c_n"], exp["c_n"], TOL32)
        _assert_values_equal(got["output"], exp["output"], TOL32)
        assert got["output_position"] == exp["output_position"]


_NUM = re.compile(r"-?\d+(?:\.\d+)?(?:e[+-]?\d+)?")


@pytest.mark.parametrize("name,all_layers", [("L2-bi-proj-nobias", True), ("L3", False)])
def test_values_text(invoke, models, inputs, name, all_layers):
    m = models[name]
    b = 2
    args = ["run", m.ckpt(), inputs.files["x_len.npz"], "-b", str(b), "--units", "0:3", "--dtype", "float64"]
    if all_layers:
        args.append("--all-layers")
    result = invoke(*args)
    assert result.exit_code == 0, result.stdout + result.stderr
    assert result.stderr == ""
    text = result.stdout
    numbers = [float(s) for s in _NUM.findall(text)]
    for row in _expected_rows(m, b, [0, 1, 2], LENGTHS, all_layers, reference(m, inputs.x, LENGTHS)):
        for v in row["h_n"] + row["c_n"] + (row["output"] or []):
            if v is None:
                continue
            assert any(abs(n - v) <= 1e-6 * abs(v) + 1e-9 for n in numbers), f"{v!r} not printed"
        assert f"layer {row['layer']} {row['direction']}, batch {b}" in text
    n_checks = m.num_layers * m.D if all_layers else m.D
    assert re.search(rf"\b{n_checks} checks? ok", text)
    assert "MISMATCH" not in text


# --- a mismatch exits 1 ---------------------------------------------------------------------------

def _corrupt_build_view(monkeypatch, where):
    """Wrap lstmscope.runner.build_view so the last layer's output differs from h_n at ``where``."""
    import lstmscope.runner as runner_mod

    real = runner_mod.build_view

    def corrupted(spec, h_n, c_n, **kw):
        los = {k: np.array(v, copy=True) for k, v in kw["layer_outputs"].items()}
        last = spec.num_layers - 1
        out = los[last]  # (batch, time, D * out)
        p = spec.output_size
        steps = kw["last_steps"]
        mask = np.zeros(out.shape[:2], dtype=bool)  # (batch, time)
        mask[np.arange(out.shape[0]), steps] = True
        if where == "forward-last-step":
            out[mask, :p] += 0.01
        elif where == "forward-other-steps":
            out[~mask, :p] += 0.01
        kw["layer_outputs"] = los
        return real(spec, h_n, c_n, **kw)

    monkeypatch.setattr(runner_mod, "build_view", corrupted)


@pytest.mark.parametrize("json_out", [True, False], ids=["json", "text"])
def test_mismatch_in_output_exits_1(invoke, models, inputs, monkeypatch, json_out):
    m = models["L2-bi"]
    _corrupt_build_view(monkeypatch, "forward-last-step")
    args = ["run", m.ckpt(), inputs.files["x_len.npz"]] + (["--json"] if json_out else [])
    result = invoke(*args)
    assert result.exit_code == 1, result.stdout + result.stderr
    assert result.stderr == ""
    if json_out:
        doc = json.loads(result.stdout)
        assert doc["ok"] is False
        fwd, bwd = doc["checks"]
        assert fwd["direction"] == "forward" and fwd["ok"] is False
        assert fwd["max_abs_diff"] == pytest.approx(0.01, rel=1e-3)
        assert bwd["ok"] is True
    else:
        assert "MISMATCH" in result.stdout
        assert "1 of 2 checks failed" in result.stdout


def test_output_changed_away_from_the_checked_steps_still_ok(invoke, models, inputs, monkeypatch):
    """Only output[b, len[b]-1] (forward) matters: changing every other step keeps the checks ok."""
    m = models["L2-bi"]
    _corrupt_build_view(monkeypatch, "forward-other-steps")
    doc = run_json(invoke, m.ckpt(), inputs.files["x_len.npz"])
    assert doc["ok"] is True


def test_engine_output_mismatch_exits_1(invoke, models, inputs, monkeypatch):
    import lstmscope.engine as engine

    m = models["L3-bi-proj"]
    real = engine.run_lstm

    def bad(*args, **kwargs):
        r = real(*args, **kwargs)
        out = r.output.copy()
        out[:, 0, -1] += 1e-3  # the backward direction's last column at step 0
        return dataclasses.replace(r, output=out)

    monkeypatch.setattr(engine, "run_lstm", bad)
    result = invoke("run", m.ckpt(), inputs.files["x.npy"], "--json")
    assert result.exit_code == 1, result.stdout + result.stderr
    doc = json.loads(result.stdout)
    assert doc["ok"] is False
    assert [c["ok"] for c in doc["checks"]] == [True, False]
    result = invoke("run", m.ckpt(), inputs.files["x.npy"])
    assert result.exit_code == 1
    assert "MISMATCH" in result.stdout
