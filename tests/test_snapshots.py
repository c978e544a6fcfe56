"""State snapshots (export-state, --initial-state, import-state, show-state) against independent truth.

The truth is ``torch.nn.LSTM`` run directly in this file on the same weights, the safetensors
libraries (numpy and torch loaders) reading the files lstmscope wrote, hashlib, and the file format
as the README documents it. lstmscope is only compared with itself where the property is
self-consistency (byte-identical files across processes).
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import importlib.metadata
import json
import os
import struct
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import safetensors.numpy
import safetensors.torch
import torch
from safetensors import safe_open
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

# Input: batch B, time T, features F. Cell width H, projected width P where proj_size > 0.
B, T, F, H, P = 3, 7, 4, 5, 3
LENGTHS = np.array([5, T, 1], dtype=np.int64)  # unsorted, with 1 and T
TOL = 1e-6  # lstmscope (float32) against torch.nn.LSTM (float32) run here
README_FIELDS = {
    "format_version", "num_layers", "num_directions", "hidden_size", "proj_size", "input_size", "batch_size",
    "dtype", "module", "checkpoint_sha256", "input_sha256", "lengths_sha256", "initial_state_sha256",
    "lstmscope_version", "layout", "spec",
}
DIRECTIONS = ("forward", "backward")

CONFIGS = {
    # name: (nn.LSTM kwargs, checkpoint form)
    "uni1": (dict(num_layers=1, bidirectional=False, proj_size=0), "state_dict"),
    "uni2": (dict(num_layers=2, bidirectional=False, proj_size=0), "wrapped"),
    "bi2": (dict(num_layers=2, bidirectional=True, proj_size=0), "wrapped"),
    "proj": (dict(num_layers=2, bidirectional=False, proj_size=P), "state_dict"),
    "biproj": (dict(num_layers=2, bidirectional=True, proj_size=P), "wrapped"),
}
# Where each form puts the LSTM; lstmscope reports the key prefix without the trailing dot.
FORM_PREFIX = {"state_dict": "", "wrapped": "model_state_dict.lstm"}


@dataclasses.dataclass
class Model:
    name: str
    lstm: torch.nn.LSTM  # float32, batch_first
    ckpt: Path
    prefix: str

    @property
    def L(self) -> int:
        return self.lstm.num_layers

    @property
    def D(self) -> int:
        return 2 if self.lstm.bidirectional else 1

    @property
    def out(self) -> int:
        return self.lstm.proj_size or H


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Model]:
    root = tmp_path_factory.mktemp("snap_ckpts")
    out = {}
    for seed, (name, (cfg, form)) in enumerate(CONFIGS.items()):
        torch.manual_seed(100 + seed)
        lstm = torch.nn.LSTM(input_size=F, hidden_size=H, batch_first=True, **cfg)
        with torch.no_grad():  # wider than the default init so states are not all tiny
            for p in lstm.parameters():
                p.uniform_(-0.8, 0.8)
        lstm.eval()
        sd = {k: v.detach().clone().contiguous() for k, v in lstm.state_dict().items()}
        path = root / f"{name}.pt"
        if form == "state_dict":
            torch.save(sd, path)
        else:
            torch.save({"epoch": 2, "model_state_dict": {f"lstm.{k}": v for k, v in sd.items()}}, path)
        out[name] = Model(name, lstm, path, FORM_PREFIX[form])
    return out


@dataclasses.dataclass
class Inputs:
    x: np.ndarray  # (B, T, F) float32
    files: dict  # name -> Path


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Inputs:
    root = tmp_path_factory.mktemp("snap_inputs")
    rng = np.random.default_rng(7)
    x = (rng.standard_normal((B, T, F)) * 1.5).astype(np.float32)
    files = {}
    for name, arr in {"x.npy": x, "lengths.npy": LENGTHS}.items():
        files[name] = root / name
        np.save(files[name], arr)
    files["x_len.npz"] = root / "x_len.npz"
    np.savez(files["x_len.npz"], x=x, lengths=LENGTHS)
    return Inputs(x, files)


# --- independent truth ---------------------------------------------------------------------------


def torch_run(lstm: torch.nn.LSTM, x: np.ndarray, lengths=None, h0=None, c0=None, dtype=torch.float32):
    """torch.nn.LSTM run here: (output (B, T, D*out) zero-padded, h_n, c_n) as numpy."""
    m = lstm if dtype == torch.float32 else copy.deepcopy(lstm).to(dtype)  # never round the shared weights
    xt = torch.from_numpy(np.ascontiguousarray(x)).to(dtype)
    hx = None
    if h0 is not None:
        hx = (torch.as_tensor(h0).to(dtype), torch.as_tensor(c0).to(dtype))
    with torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*not supported with oneDNN.*")
        if lengths is None:
            out, (h, c) = m(xt, hx)
        else:
            packed = pack_padded_sequence(xt, torch.as_tensor(lengths), batch_first=True, enforce_sorted=False)
            out, (h, c) = m(packed, hx)
            out, _ = pad_packed_sequence(out, batch_first=True, total_length=xt.shape[1])
    return out.numpy(), h.numpy(), c.numpy()


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def read_header(path: Path) -> tuple[dict, int]:
    """The raw safetensors header (JSON) and the size of the data section, parsed by hand."""
    raw = Path(path).read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8:8 + n]), len(raw) - 8 - n


def file_metadata(path: Path) -> dict | None:
    with safe_open(str(path), framework="np") as f:
        return f.metadata()


def state_meta(path: Path) -> dict:
    md = file_metadata(path)
    assert md is not None and list(md) == ["lstmscope.state"], md
    return json.loads(md["lstmscope.state"])


def assert_ok(r) -> None:
    assert r.exit_code == 0, (r.stdout, r.stderr)


def assert_one_error(r, code: int = 2) -> str:
    """Exit ``code``, nothing on stdout, exactly one ``Error: ...`` line on stderr; returns that line."""
    assert r.exit_code == code, (r.exit_code, r.stdout, r.stderr)
    assert r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), r.stderr
    return lines[0]


def export(invoke, m: Model, inp: Path, out: Path, *extra) -> Path:
    r = invoke("export-state", m.ckpt, inp, "-o", out, *extra)
    assert_ok(r)
    return out


def close(got: np.ndarray, want: np.ndarray, tol: float = TOL) -> None:
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=0, atol=tol)


# --- export-state values, tensors and metadata -------------------------------------------------------

EXPORT_CASES = [
    # (model, lengths source, extra options)
    ("uni1", None, ()),
    ("bi2", None, ()),
    ("proj", None, ()),
    ("bi2", "npz", ()),
    ("biproj", "file", ()),
    ("uni2", "file", ("--dtype", "float64")),
]


@pytest.mark.parametrize("name,lengths_src,extra", EXPORT_CASES, ids=lambda v: str(v))
def test_export_state_equals_torch(invoke, models, inputs, tmp_path, name, lengths_src, extra):
    m = models[name]
    args = list(extra)
    if lengths_src == "npz":
        inp = inputs.files["x_len.npz"]
    else:
        inp = inputs.files["x.npy"]
        if lengths_src == "file":
            args += ["--lengths", inputs.files["lengths.npy"]]
    lengths = None if lengths_src is None else LENGTHS
    f64 = "float64" in extra
    out = export(invoke, m, inp, tmp_path / "s.safetensors", "--include-output", *args)

    want_out, want_h, want_c = torch_run(m.lstm, inputs.x, lengths, dtype=torch.float64 if f64 else torch.float32)
    tol = 1e-12 if f64 else TOL
    want_dtype = np.float64 if f64 else np.float32
    expected_names = {"h_n", "c_n", "output"} | ({"lengths"} if lengths is not None else set())

    arrays = safetensors.numpy.load_file(str(out))
    tensors = safetensors.torch.load_file(str(out))
    assert set(arrays) == expected_names
    assert set(tensors) == expected_names
    assert arrays["h_n"].shape == (m.L * m.D, B, m.out)
    assert arrays["c_n"].shape == (m.L * m.D, B, H)
    assert arrays["output"].shape == (B, T, m.D * m.out)
    for k in ("h_n", "c_n", "output"):
        assert arrays[k].dtype == want_dtype
        assert tensors[k].dtype == (torch.float64 if f64 else torch.float32)
        assert tensors[k].is_contiguous()
        assert arrays[k].flags.c_contiguous
    close(arrays["h_n"], want_h, tol)
    close(arrays["c_n"], want_c, tol)
    close(arrays["output"], want_out, tol)
    close(tensors["h_n"].numpy(), want_h, tol)
    close(tensors["c_n"].numpy(), want_c, tol)
    close(tensors["output"].numpy(), want_out, tol)
    if lengths is not None:
        assert arrays["lengths"].dtype == np.int64
        assert tensors["lengths"].dtype == torch.int64
        np.testing.assert_array_equal(arrays["lengths"], LENGTHS)

    # The data section is tiled by the tensors, back to back, with no gaps or overlaps.
    header, data_len = read_header(out)
    spans = sorted(tuple(v["data_offsets"]) for k, v in header.items() if k != "__metadata__")
    assert spans[0][0] == 0 and spans[-1][1] == data_len
    assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))
    for k, v in header.items():
        if k != "__metadata__":
            itemsize = {"F32": 4, "F64": 8, "I64": 8}[v["dtype"]]
            assert v["data_offsets"][1] - v["data_offsets"][0] == int(np.prod(v["shape"])) * itemsize

    # Exactly one metadata entry, canonical JSON, every documented field with its value.
    md = file_metadata(out)
    assert list(md) == ["lstmscope.state"]
    raw = md["lstmscope.state"]
    assert raw == json.dumps(json.loads(raw), sort_keys=True, separators=(",", ":"))
    meta = json.loads(raw)
    assert set(meta) == README_FIELDS
    assert meta == {
        "format_version": 1,
        "num_layers": m.L,
        "num_directions": m.D,
        "hidden_size": H,
        "proj_size": m.lstm.proj_size,
        "input_size": F,
        "batch_size": B,
        "dtype": "float64" if f64 else "float32",
        "module": m.prefix,
        "checkpoint_sha256": sha256(m.ckpt),
        "input_sha256": sha256(inp),
        "lengths_sha256": None if lengths is None else hashlib.sha256(LENGTHS.astype(np.int64).tobytes()).hexdigest(),
        "initial_state_sha256": None,
        "lstmscope_version": importlib.metadata.version("lstmscope"),
        "layout": "torch",
        "spec": {  # the nn.LSTM that made the file, in full
            "input_size": F, "hidden_size": H, "proj_size": m.lstm.proj_size, "num_layers": m.L,
            "bidirectional": m.D == 2, "num_directions": m.D, "bias": m.lstm.bias,
            "dtype": str(next(m.lstm.parameters()).dtype).removeprefix("torch."),  # the checkpoint's, not the run's
            "gate_activation": {"name": "sigmoid", "alpha": None, "beta": None},
            "cell_activation": {"name": "tanh", "alpha": None, "beta": None},
            "go_backwards": False, "bias_layout": "ih+hh", "framework": "pytorch", "names": [],
        },
    }


@pytest.mark.parametrize("layout", ["time_major", "single"])
def test_export_output_is_batch_first(invoke, models, inputs, tmp_path, layout):
    """README: the snapshot's output is always (batch, time, ...), whatever the input layout."""
    m = models["bi2"]
    if layout == "time_major":
        np.save(tmp_path / "in.npy", np.ascontiguousarray(inputs.x.transpose(1, 0, 2)))  # (T, B, F)
        x, extra = inputs.x, ["--time-major"]
    else:
        np.save(tmp_path / "in.npy", inputs.x[1])  # (T, F): one sequence
        x, extra = inputs.x[1:2], []
    out = export(invoke, m, tmp_path / "in.npy", tmp_path / "s.safetensors", "--include-output", *extra)
    want_out, want_h, want_c = torch_run(m.lstm, x)
    s = safetensors.numpy.load_file(str(out))
    close(s["output"], want_out)
    close(s["h_n"], want_h)
    close(s["c_n"], want_c)
    assert state_meta(out)["batch_size"] == x.shape[0]


def test_export_float16(invoke, models, inputs, tmp_path):
    m = models["uni2"]
    out = export(invoke, m, inputs.files["x.npy"], tmp_path / "s.safetensors", "--dtype", "float16")
    s = safetensors.numpy.load_file(str(out))
    assert s["h_n"].dtype == np.float16 and s["c_n"].dtype == np.float16
    assert state_meta(out)["dtype"] == "float16"
    _, want_h, want_c = torch_run(m.lstm, inputs.x, dtype=torch.float16)
    close(s["h_n"].astype(np.float32), want_h.astype(np.float32), 2e-3)
    close(s["c_n"].astype(np.float32), want_c.astype(np.float32), 2e-3)


def test_export_without_include_output_holds_only_states(invoke, models, inputs, tmp_path):
    out = export(invoke, models["bi2"], inputs.files["x.npy"], tmp_path / "s.safetensors")
    assert set(safetensors.numpy.load_file(str(out))) == {"h_n", "c_n"}


def test_export_json_document(invoke, models, inputs, tmp_path):
    m = models["bi2"]
    out = tmp_path / "s.safetensors"
    r = invoke("export-state", m.ckpt, inputs.files["x.npy"], "-o", out, "--json")
    assert_ok(r)
    assert r.stderr == ""
    doc = json.loads(r.stdout)
    assert doc["schema"] == "lstmscope.export/1"
    assert doc["path"] == str(out)
    assert doc["sha256"] == sha256(out)
    assert doc["bytes"] == out.stat().st_size
    assert doc["metadata"] == state_meta(out)
    assert doc["ok"] is True
    _, h, c = torch_run(m.lstm, inputs.x)
    assert len(doc["norms"]) == m.L * m.D
    for i, row in enumerate(doc["norms"]):
        assert (row["layer"], row["direction"]) == (i // m.D, DIRECTIONS[i % m.D])
        assert row["h_n"] == pytest.approx(np.linalg.norm(h[i].astype(np.float64)), abs=1e-5)
        assert row["c_n"] == pytest.approx(np.linalg.norm(c[i].astype(np.float64)), abs=1e-5)


def test_snapshot_usable_without_lstmscope(invoke, models, inputs, tmp_path):
    """README: load_file(p)["h_n"], ["c_n"] go straight back into nn.LSTM as (h0, c0)."""
    m = models["bi2"]
    out = export(invoke, m, inputs.files["x.npy"], tmp_path / "s.safetensors")
    s = safetensors.torch.load_file(str(out))
    x2 = torch.from_numpy(inputs.x[:, ::-1].copy())
    with torch.no_grad():
        got_out, (got_h, got_c) = m.lstm(x2, (s["h_n"], s["c_n"]))
        _, (h, c) = m.lstm(torch.from_numpy(inputs.x))
        want_out, (want_h, want_c) = m.lstm(x2, (h, c))
    close(got_out.numpy(), want_out.numpy())
    close(got_h.numpy(), want_h.numpy())
    close(got_c.numpy(), want_c.numpy())


def test_export_byte_identical_across_processes(invoke, models, inputs, tmp_path):
    m = models["biproj"]
    paths = [tmp_path / "p1.safetensors", tmp_path / "p2.safetensors"]
    procs = [  # two separate processes, started together
        subprocess.Popen([sys.executable, "-m", "lstmscope", "export-state", str(m.ckpt), str(inputs.files["x_len.npz"]),
                          "-o", str(p), "--include-output"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for p in paths
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
    assert paths[0].read_bytes() == paths[1].read_bytes()
    # and in this process too: no timestamps, no process-dependent content
    p3 = export(invoke, m, inputs.files["x_len.npz"], tmp_path / "p3.safetensors", "--include-output")
    assert p3.read_bytes() == paths[0].read_bytes()


# --- continuity: a chunked unidirectional run equals the whole run ---------------------------------


@pytest.mark.parametrize("name", ["uni1", "uni2"])
@pytest.mark.parametrize("k", [1, T - 1, T // 2])
def test_chunked_equals_whole(invoke, models, inputs, tmp_path, name, k):
    m = models[name]
    np.save(tmp_path / "part1.npy", inputs.x[:, :k])
    np.save(tmp_path / "part2.npy", inputs.x[:, k:])
    c1 = export(invoke, m, tmp_path / "part1.npy", tmp_path / "c1.safetensors")
    r = invoke("export-state", m.ckpt, tmp_path / "part2.npy", "-o", tmp_path / "c2.safetensors",
               "--initial-state", c1)
    assert_ok(r)
    assert r.stderr == ""  # unidirectional: no note
    _, want_h, want_c = torch_run(m.lstm, inputs.x)
    s = safetensors.numpy.load_file(str(tmp_path / "c2.safetensors"))
    close(s["h_n"], want_h)
    close(s["c_n"], want_c)
    meta = state_meta(tmp_path / "c2.safetensors")
    assert meta["initial_state_sha256"] == sha256(c1)
    assert meta["input_sha256"] == sha256(tmp_path / "part2.npy")


# --- seeding from foreign state files ----------------------------------------------------------------

FOREIGN_KINDS = ("st_hn", "st_h0", "npz_hn", "npz_h0", "torch_tuple")


def write_foreign(kind: str, root: Path, h0: np.ndarray, c0: np.ndarray) -> Path:
    if kind == "st_hn":
        p = root / "state.safetensors"
        safetensors.numpy.save_file({"h_n": h0, "c_n": c0}, str(p))
    elif kind == "st_h0":
        p = root / "state.safetensors"
        safetensors.numpy.save_file({"h0": h0, "c0": c0}, str(p))
    elif kind == "npz_hn":
        p = root / "state.npz"
        np.savez(p, h_n=h0, c_n=c0)
    elif kind == "npz_h0":
        p = root / "state.npz"
        np.savez(p, h0=h0, c0=c0)
    else:
        p = root / "state.pt"
        torch.save((torch.from_numpy(h0), torch.from_numpy(c0)), p)
    return p


def random_state(m: Model, batch: int = B, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    h0 = rng.uniform(-0.9, 0.9, (m.L * m.D, batch, m.out)).astype(np.float32)  # (L*D, batch, out)
    c0 = rng.uniform(-2.0, 2.0, (m.L * m.D, batch, H)).astype(np.float32)  # (L*D, batch, hidden)
    return h0, c0


@pytest.mark.parametrize("kind", FOREIGN_KINDS)
@pytest.mark.parametrize("name", ["uni1", "bi2", "proj", "biproj"])
def test_seed_from_foreign_file_equals_torch(invoke, models, inputs, tmp_path, name, kind):
    m = models[name]
    h0, c0 = random_state(m, seed=len(kind))
    src = write_foreign(kind, tmp_path, h0, c0)
    out = tmp_path / "seeded.safetensors"
    r = invoke("export-state", m.ckpt, inputs.files["x.npy"], "-o", out, "--initial-state", src, "--include-output")
    assert_ok(r)
    want_out, want_h, want_c = torch_run(m.lstm, inputs.x, h0=h0, c0=c0)
    s = safetensors.numpy.load_file(str(out))
    close(s["h_n"], want_h)
    close(s["c_n"], want_c)
    close(s["output"], want_out)
    assert state_meta(out)["initial_state_sha256"] == sha256(src)
    if m.D == 2:
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and "bidirectional" in lines[0], r.stderr
    else:
        assert r.stderr == ""


def test_seed_with_lengths_equals_torch(invoke, models, inputs, tmp_path):
    m = models["bi2"]
    h0, c0 = random_state(m, seed=3)
    src = write_foreign("st_hn", tmp_path, h0, c0)
    out = tmp_path / "seeded.safetensors"
    r = invoke("export-state", m.ckpt, inputs.files["x_len.npz"], "-o", out, "--initial-state", src,
               "--include-output")
    assert_ok(r)
    want_out, want_h, want_c = torch_run(m.lstm, inputs.x, LENGTHS, h0=h0, c0=c0)
    s = safetensors.numpy.load_file(str(out))
    close(s["h_n"], want_h)
    close(s["c_n"], want_c)
    close(s["output"], want_out)


def test_run_with_initial_state_notes(invoke, models, inputs, tmp_path):
    """`run --initial-state`: the bidirectional note goes to stderr, the JSON on stdout stays clean."""
    for name in ("bi2", "uni2"):
        m = models[name]
        h0, c0 = random_state(m)
        src = write_foreign("npz_hn", tmp_path, h0, c0)
        r = invoke("run", m.ckpt, inputs.files["x.npy"], "--initial-state", src, "--json")
        assert_ok(r)
        doc = json.loads(r.stdout)
        _, want_h, _ = torch_run(m.lstm, inputs.x, h0=h0, c0=c0)
        for i, row in enumerate(doc["states"]):
            assert row["h_n"]["norm"] == pytest.approx(np.linalg.norm(want_h[i].astype(np.float64)), abs=1e-5)
        if m.D == 2:
            lines = r.stderr.strip().splitlines()
            assert len(lines) == 1 and "bidirectional" in lines[0]
        else:
            assert r.stderr == ""


# --- mismatched states -----------------------------------------------------------------------------


def seed_error(invoke, m: Model, inputs, tmp_path, h0, c0, *extra) -> str:
    src = tmp_path / "bad_state.safetensors"
    safetensors.numpy.save_file({"h_n": h0, "c_n": c0}, str(src))
    out = tmp_path / "never.safetensors"
    r = invoke("export-state", m.ckpt, inputs.files["x.npy"], "-o", out, "--initial-state", src, *extra)
    line = assert_one_error(r)
    assert not out.exists()
    return line


def zeros(*shape):
    return np.zeros(shape, dtype=np.float32)


def test_mismatch_wrong_layers(invoke, models, inputs, tmp_path):
    m = models["uni2"]  # 2 layers, hidden 5
    line = seed_error(invoke, m, inputs, tmp_path, zeros(1, B, H), zeros(1, B, H))
    assert "layer" in line and "hidden" not in line.split("does not fit", 1)[-1]


def test_mismatch_wrong_hidden(invoke, models, inputs, tmp_path):
    m = models["uni2"]
    line = seed_error(invoke, m, inputs, tmp_path, zeros(2, B, H + 1), zeros(2, B, H + 1))
    assert "hidden" in line and str(H + 1) in line


def test_mismatch_lists_every_problem(invoke, models, inputs, tmp_path):
    """Wrong num_layers AND wrong hidden AND wrong batch: one error line naming all three."""
    m = models["uni2"]
    line = seed_error(invoke, m, inputs, tmp_path, zeros(1, B - 1, H + 1), zeros(1, B - 1, H + 1))
    msg = line.split("does not fit", 1)[-1]
    assert "layer" in msg
    assert "hidden" in msg and str(H + 1) in msg
    assert "batch" in msg and str(B - 1) in msg


def test_mismatch_wrong_batch(invoke, models, inputs, tmp_path):
    m = models["uni2"]
    line = seed_error(invoke, m, inputs, tmp_path, zeros(2, B + 1, H), zeros(2, B + 1, H))
    assert "batch" in line and str(B + 1) in line
    assert "--broadcast-state" not in line  # the hint is only for batch-1 states


def test_mismatch_proj_width(invoke, models, inputs, tmp_path):
    m = models["proj"]  # h_n must be P wide, c_n H wide
    line = seed_error(invoke, m, inputs, tmp_path, zeros(2, B, H), zeros(2, B, H))
    assert "proj_size" in line


def test_mismatch_directions_from_snapshot(invoke, models, inputs, tmp_path):
    """A unidirectional snapshot cannot seed a bidirectional model."""
    snap = export(invoke, models["uni2"], inputs.files["x.npy"], tmp_path / "uni.safetensors")
    out = tmp_path / "never.safetensors"
    r = invoke("export-state", models["bi2"].ckpt, inputs.files["x.npy"], "-o", out, "--initial-state", snap)
    line = assert_one_error(r)
    assert "direction" in line
    assert not out.exists()


def test_batch1_state_needs_broadcast(invoke, models, inputs, tmp_path):
    m = models["uni2"]
    line = seed_error(invoke, m, inputs, tmp_path, zeros(2, 1, H), zeros(2, 1, H))
    assert "--broadcast-state" in line


@pytest.mark.parametrize("name", ["uni2", "biproj"])
def test_broadcast_state_equals_torch_expand(invoke, models, inputs, tmp_path, name):
    m = models[name]
    h0, c0 = random_state(m, batch=1, seed=11)
    src = write_foreign("st_hn", tmp_path, h0, c0)
    out = tmp_path / "b.safetensors"
    r = invoke("export-state", m.ckpt, inputs.files["x.npy"], "-o", out, "--initial-state", src,
               "--broadcast-state", "--include-output")
    assert_ok(r)
    th0 = torch.from_numpy(h0).expand(m.L * m.D, B, m.out)
    tc0 = torch.from_numpy(c0).expand(m.L * m.D, B, H)
    want_out, want_h, want_c = torch_run(m.lstm, inputs.x, h0=th0.contiguous(), c0=tc0.contiguous())
    s = safetensors.numpy.load_file(str(out))
    close(s["h_n"], want_h)
    close(s["c_n"], want_c)
    close(s["output"], want_out)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
@pytest.mark.parametrize("which", ["h", "c"])
def test_nonfinite_state_refused(invoke, models, inputs, tmp_path, bad, which):
    m = models["uni1"]
    h0, c0 = random_state(m)
    (h0 if which == "h" else c0)[0, 1, 2] = bad
    line = seed_error(invoke, m, inputs, tmp_path, h0, c0)
    assert "NaN" in line or "Inf" in line


# --- import-state --------------------------------------------------------------------------------------


def test_import_state_from_torch_tuple(invoke, models, inputs, tmp_path):
    m = models["biproj"]
    h0, c0 = random_state(m, seed=5)
    src = tmp_path / "hc.pt"
    torch.save((torch.from_numpy(h0), torch.from_numpy(c0)), src)
    out = tmp_path / "imported.safetensors"
    r = invoke("import-state", src, "-o", out, "--checkpoint", m.ckpt, "--json")
    assert_ok(r)
    assert r.stderr == ""
    doc = json.loads(r.stdout)
    assert doc["schema"] == "lstmscope.import/1"
    assert doc["sha256"] == sha256(out)
    assert doc["source_kind"] == "torch"

    s = safetensors.numpy.load_file(str(out))
    assert set(s) == {"h_n", "c_n"}
    np.testing.assert_array_equal(s["h_n"], h0)
    np.testing.assert_array_equal(s["c_n"], c0)
    assert s["h_n"].dtype == np.float32
    md = file_metadata(out)
    raw = md["lstmscope.state"]
    assert list(md) == ["lstmscope.state"]
    assert raw == json.dumps(json.loads(raw), sort_keys=True, separators=(",", ":"))
    meta = json.loads(raw)
    assert set(meta) == README_FIELDS
    assert doc["metadata"] == meta
    assert meta["format_version"] == 1
    assert meta["module"] == m.prefix == "model_state_dict.lstm"
    assert (meta["num_layers"], meta["num_directions"], meta["hidden_size"], meta["proj_size"],
            meta["input_size"], meta["batch_size"]) == (m.L, m.D, H, P, F, B)
    assert meta["dtype"] == "float32"
    assert meta["checkpoint_sha256"] == sha256(m.ckpt)
    assert meta["input_sha256"] is None
    assert meta["lengths_sha256"] is None
    assert meta["initial_state_sha256"] is None

    # The imported snapshot seeds a run like the original tensors do.
    seeded = tmp_path / "seeded.safetensors"
    r = invoke("export-state", m.ckpt, inputs.files["x.npy"], "-o", seeded, "--initial-state", out)
    assert_ok(r)
    _, want_h, want_c = torch_run(m.lstm, inputs.x, h0=h0, c0=c0)
    close(safetensors.numpy.load_file(str(seeded))["h_n"], want_h)
    close(safetensors.numpy.load_file(str(seeded))["c_n"], want_c)

    # Refuses to overwrite without --force; the file stays as it was.
    before = out.read_bytes()
    r = invoke("import-state", src, "-o", out, "--checkpoint", m.ckpt)
    line = assert_one_error(r)
    assert "--force" in line
    assert out.read_bytes() == before
    r = invoke("import-state", src, "-o", out, "--checkpoint", m.ckpt, "--force")
    assert_ok(r)
    assert out.read_bytes() == before  # same content, deterministic bytes


def test_import_state_from_npz(invoke, models, tmp_path):
    m = models["uni2"]
    h0, c0 = random_state(m, seed=9)
    src = write_foreign("npz_h0", tmp_path, h0, c0)
    out = tmp_path / "imported.safetensors"
    r = invoke("import-state", src, "-o", out, "--checkpoint", m.ckpt, "--json")
    assert_ok(r)
    assert json.loads(r.stdout)["source_kind"] == "npz"
    s = safetensors.numpy.load_file(str(out))
    np.testing.assert_array_equal(s["h_n"], h0)
    np.testing.assert_array_equal(s["c_n"], c0)
    assert state_meta(out)["module"] == "model_state_dict.lstm"


def test_import_state_mismatch_writes_nothing(invoke, models, tmp_path):
    m = models["uni2"]
    src = write_foreign("npz_hn", tmp_path, zeros(3, B, H), zeros(3, B, H))
    before = sorted(os.listdir(tmp_path))
    r = invoke("import-state", src, "-o", tmp_path / "x.safetensors", "--checkpoint", m.ckpt)
    assert_one_error(r)
    assert sorted(os.listdir(tmp_path)) == before


# --- atomic writes and overwrite rules --------------------------------------------------------------


def test_existing_output_needs_force(invoke, models, inputs, tmp_path):
    m = models["uni1"]
    out = tmp_path / "s.safetensors"
    out.write_bytes(b"precious")
    r = invoke("export-state", m.ckpt, inputs.files["x.npy"], "-o", out)
    line = assert_one_error(r)
    assert "--force" in line
    assert out.read_bytes() == b"precious"
    assert sorted(os.listdir(tmp_path)) == ["s.safetensors"]

    r = invoke("export-state", m.ckpt, inputs.files["x.npy"], "-o", out, "--force")
    assert_ok(r)
    _, want_h, want_c = torch_run(m.lstm, inputs.x)
    s = safetensors.numpy.load_file(str(out))
    close(s["h_n"], want_h)
    close(s["c_n"], want_c)
    assert sorted(os.listdir(tmp_path)) == ["s.safetensors"]


def test_snapshot_file_mode_follows_umask(invoke, models, inputs, tmp_path):
    """The temporary file comes from mkstemp (mode 0600); the published snapshot must not keep that."""
    old = os.umask(0o022)
    try:
        out = export(invoke, models["uni1"], inputs.files["x.npy"], tmp_path / "s.safetensors")
        plain = tmp_path / "plain"
        plain.write_bytes(b"")
    finally:
        os.umask(old)
    assert plain.stat().st_mode & 0o777 == 0o644  # the premise: an ordinary write
    assert out.stat().st_mode & 0o777 == 0o644


def test_output_is_a_directory(invoke, models, inputs, tmp_path):
    d = tmp_path / "dir.safetensors"
    d.mkdir()
    r = invoke("export-state", models["uni1"].ckpt, inputs.files["x.npy"], "-o", d)
    assert_one_error(r)
    assert d.is_dir() and os.listdir(d) == []
    r = invoke("export-state", models["uni1"].ckpt, inputs.files["x.npy"], "-o", d, "--force")
    assert_one_error(r)
    assert d.is_dir() and os.listdir(d) == []


def test_output_in_missing_directory(invoke, models, inputs, tmp_path):
    out = tmp_path / "missing" / "s.safetensors"
    r = invoke("export-state", models["uni1"].ckpt, inputs.files["x.npy"], "-o", out)
    assert_one_error(r)
    assert not (tmp_path / "missing").exists()


def _raise_oserror(tmp, path):
    raise OSError(28, "No space left on device")


def _raise_interrupt(tmp, path):
    raise KeyboardInterrupt


@pytest.mark.parametrize("force", [False, True])
@pytest.mark.parametrize("failure", ["oserror", "interrupt", "os_replace"])
def test_failure_between_write_and_rename_leaves_nothing(invoke, models, inputs, tmp_path, monkeypatch,
                                                         failure, force):
    import lstmscope.fileio

    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out = out_dir / "s.safetensors"
    if force:
        out.write_bytes(b"old contents")
    before = sorted(os.listdir(out_dir))
    if failure == "oserror":
        monkeypatch.setattr(lstmscope.fileio, "_replace", _raise_oserror)
    elif failure == "interrupt":
        monkeypatch.setattr(lstmscope.fileio, "_replace", _raise_interrupt)
    else:  # the real publish step, with os.replace itself failing
        def fail_replace(src, dst, *a, **k):
            raise OSError(28, "No space left on device")

        monkeypatch.setattr(lstmscope.fileio.os, "replace", fail_replace)
    r = invoke("export-state", models["uni1"].ckpt, inputs.files["x.npy"], "-o", out, *(["--force"] if force else []))
    monkeypatch.undo()
    if failure == "interrupt":
        assert r.exit_code == 130
        assert "interrupted" in r.stderr
    elif failure == "os_replace":
        line = assert_one_error(r, 2)
        assert "No space left" in line
    else:
        assert r.exit_code not in (0, 1)
        assert len(r.stderr.strip().splitlines()) == 1 and r.stderr.startswith("Error: ")
    assert sorted(os.listdir(out_dir)) == before
    if force:
        assert out.read_bytes() == b"old contents"


def test_library_write_failure_leaves_nothing(tmp_path, monkeypatch):
    """The core: write_snapshot propagates the failure and removes its temporary file."""
    import lstmscope.fileio
    from lstmscope.snapshot import write_snapshot

    monkeypatch.setattr(lstmscope.fileio, "_replace", _raise_oserror)
    with pytest.raises(OSError):
        write_snapshot(tmp_path / "s.safetensors", {"h_n": zeros(1, 1, 2), "c_n": zeros(1, 1, 2)}, {"format_version": 1})
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("bad", ["features", "garbage", "missing", "lengths", "state"])
def test_failed_run_creates_no_output(invoke, models, inputs, tmp_path, bad):
    m = models["uni1"]
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out = out_dir / "s.safetensors"
    args = [m.ckpt]
    if bad == "features":
        np.save(tmp_path / "bad.npy", np.zeros((B, T, F + 1), dtype=np.float32))
        args.append(tmp_path / "bad.npy")
    elif bad == "garbage":
        (tmp_path / "bad.npy").write_bytes(b"\x93NUMPY garbage here")
        args.append(tmp_path / "bad.npy")
    elif bad == "missing":
        args.append(tmp_path / "nope.npy")
    elif bad == "lengths":
        np.save(tmp_path / "len.npy", np.array([1, 2, T + 5]))
        args += [inputs.files["x.npy"], "--lengths", tmp_path / "len.npy"]
    else:
        (tmp_path / "state.safetensors").write_text("not a state")
        args += [inputs.files["x.npy"], "--initial-state", tmp_path / "state.safetensors"]
    r = invoke("export-state", *args, "-o", out)
    assert_one_error(r)
    assert os.listdir(out_dir) == []


# --- show-state --------------------------------------------------------------------------------------


def np_stats(a: np.ndarray) -> dict:
    a = np.asarray(a, dtype=np.float64)
    return {"mean": a.mean(), "std": a.std(), "min": a.min(), "max": a.max(), "norm": np.sqrt((a * a).sum())}


@pytest.fixture(scope="module")
def shown(models, inputs, tmp_path_factory):
    """Snapshots with --include-output for show-state, made once."""
    from typer.testing import CliRunner

    from lstmscope.cli import app

    root = tmp_path_factory.mktemp("show")
    out = {}
    for name in ("bi2", "proj"):
        p = root / f"{name}.safetensors"
        r = CliRunner().invoke(app, ["export-state", str(models[name].ckpt), str(inputs.files["x_len.npz"]),
                                     "-o", str(p), "--include-output"])
        assert r.exit_code == 0, r.stderr
        out[name] = p
    return out


@pytest.mark.parametrize("name", ["bi2", "proj"])
def test_show_state_json(invoke, models, shown, name):
    m = models[name]
    path = shown[name]
    r = invoke("show-state", path, "--json")
    assert_ok(r)
    assert r.stderr == ""
    doc = json.loads(r.stdout)
    s = safetensors.numpy.load_file(str(path))
    assert doc["schema"] == "lstmscope.state/1"
    assert doc["path"] == str(path)
    assert doc["metadata"] == json.loads(file_metadata(path)["lstmscope.state"])
    assert doc["shapes"] == {k: list(v.shape) for k, v in s.items()}
    assert doc["ok"] is True
    assert len(doc["states"]) == m.L * m.D
    for i, row in enumerate(doc["states"]):
        assert (row["layer"], row["direction"], row["index"]) == (i // m.D, DIRECTIONS[i % m.D], i)
        for k in ("h_n", "c_n"):
            assert row[k]["shape"] == list(s[k][i].shape)
            for stat, v in np_stats(s[k][i]).items():
                assert row[k][stat] == pytest.approx(v, abs=1e-9)
    # the last layer is checked for each direction at that direction's last step
    assert len(doc["checks"]) == m.D
    for d, chk in enumerate(doc["checks"]):
        assert (chk["layer"], chk["direction"]) == (m.L - 1, DIRECTIONS[d])
        assert chk["output_time_index"] == ((LENGTHS - 1).tolist() if d == 0 else [0] * B)
        assert chk["output_columns"] == [d * m.out, (d + 1) * m.out]
        assert chk["ok"] is True
        assert chk["max_abs_diff"] <= 1e-6


@pytest.mark.parametrize("name,b,units", [("bi2", 1, "1:4"), ("proj", 2, "0:5"), ("bi2", 0, None)])
def test_show_state_values(invoke, models, shown, name, b, units):
    m = models[name]
    path = shown[name]
    args = ["show-state", path, "--json", "--batch-index", b] + (["--units", units] if units else [])
    r = invoke(*args)
    assert_ok(r)
    doc = json.loads(r.stdout)
    s = safetensors.numpy.load_file(str(path))
    lo, hi = (0, min(8, H)) if units is None else map(int, units.split(":"))
    us = list(range(lo, hi))
    assert doc["values"]["batch_index"] == b
    rows = doc["values"]["rows"]
    assert len(rows) == m.L * m.D
    for i, row in enumerate(rows):
        layer, d = divmod(i, m.D)
        assert (row["layer"], row["direction"], row["units"]) == (layer, DIRECTIONS[d], us)
        assert row["h_n"] == [float(s["h_n"][i, b, u]) if u < m.out else None for u in us]
        assert row["c_n"] == [float(s["c_n"][i, b, u]) for u in us]
        if layer == m.L - 1:
            t = int(LENGTHS[b]) - 1 if d == 0 else 0
            assert row["output"] == [float(s["output"][b, t, d * m.out + u]) if u < m.out else None for u in us]
            # and h_n really is that slice of output
            assert [v for v in row["output"] if v is not None] == [v for v in row["h_n"] if v is not None]
        else:
            assert row["output"] is None


def test_show_state_text(invoke, shown):
    r = invoke("show-state", shown["bi2"])
    assert_ok(r)
    assert r.stderr == ""
    assert "model_state_dict.lstm" in r.stdout
    assert "ok" in r.stdout
    r = invoke("show-state", shown["bi2"], "-b", 1, "--units", "0:2")
    assert_ok(r)
    s = safetensors.numpy.load_file(str(shown["bi2"]))
    # the printed numbers are the snapshot's (allowing for rounding in the table)
    printed = r.stdout
    v = float(s["c_n"][0, 1, 0])
    assert any(f"{v:.{n}f}" in printed or f"{v:.{n}g}" in printed for n in (3, 4, 5)), printed


def test_show_state_foreign_npz(invoke, models, tmp_path):
    m = models["bi2"]
    h0, c0 = random_state(m, seed=2)
    src = write_foreign("npz_hn", tmp_path, h0, c0)
    r = invoke("show-state", src, "--json")
    assert_ok(r)
    doc = json.loads(r.stdout)
    assert doc["kind"] == "npz"
    assert doc["metadata"] is None
    assert doc["shapes"] == {"h_n": list(h0.shape), "c_n": list(c0.shape)}
    assert len(doc["states"]) == m.L * m.D
    assert doc["checks"] == [] and doc["ok"] is True
    for i, row in enumerate(doc["states"]):
        assert row["h_n"]["norm"] == pytest.approx(np_stats(h0[i])["norm"], abs=1e-9)

    r = invoke("show-state", src, "--json", "--num-directions", 2, "-b", 2, "--units", "0:3")
    assert_ok(r)
    doc = json.loads(r.stdout)
    assert [(row["layer"], row["direction"]) for row in doc["states"]] == [
        (0, "forward"), (0, "backward"), (1, "forward"), (1, "backward")]
    for i, row in enumerate(doc["values"]["rows"]):
        assert row["h_n"] == [float(v) for v in h0[i, 2, 0:3]]
        assert row["c_n"] == [float(v) for v in c0[i, 2, 0:3]]

    r = invoke("show-state", src)
    assert_ok(r)
    assert r.stderr == ""


def test_show_state_fails_check_when_h_n_is_not_in_output(invoke, shown, tmp_path):
    """A snapshot whose h_n was altered no longer matches its output: show-state exits 1."""
    s = safetensors.numpy.load_file(str(shown["bi2"]))
    md = file_metadata(shown["bi2"])
    s["h_n"][-1, 0, 0] += 0.5  # the last layer's backward slice, sequence 0
    p = tmp_path / "tampered.safetensors"
    safetensors.numpy.save_file(s, str(p), metadata=md)
    r = invoke("show-state", p, "--json")
    assert r.exit_code == 1
    doc = json.loads(r.stdout)
    assert doc["ok"] is False
    assert [c["ok"] for c in doc["checks"]] == [True, False]
    assert doc["checks"][1]["max_abs_diff"] == pytest.approx(0.5, abs=1e-6)


def test_show_state_batch_index_out_of_range(invoke, shown):
    line = assert_one_error(invoke("show-state", shown["bi2"], "-b", B))
    assert "--batch-index" in line


@pytest.mark.parametrize("bad", ["random", "text", "empty", "missing", "directory", "no_c_n", "torch", "future",
                                 "bad_meta_json", "h_n_2d"])
def test_show_state_bad_files(invoke, tmp_path, bad):
    p = tmp_path / "s.safetensors"
    if bad == "random":
        p.write_bytes(np.random.default_rng(0).bytes(200))
    elif bad == "text":
        p.write_text("h_n, c_n\n1, 2\n")
    elif bad == "empty":
        p.write_bytes(b"")
    elif bad == "directory":
        p.mkdir()
    elif bad == "no_c_n":
        safetensors.numpy.save_file({"h_n": zeros(1, 1, 2)}, str(p))
    elif bad == "torch":
        p = tmp_path / "s.pt"
        torch.save((torch.zeros(1, 1, 2), torch.zeros(1, 1, 2)), p)
    elif bad == "future":
        meta = {"format_version": 2, "num_layers": 1}
        safetensors.numpy.save_file({"h_n": zeros(1, 1, 2), "c_n": zeros(1, 1, 2)}, str(p),
                                    metadata={"lstmscope.state": json.dumps(meta)})
    elif bad == "bad_meta_json":
        safetensors.numpy.save_file({"h_n": zeros(1, 1, 2), "c_n": zeros(1, 1, 2)}, str(p),
                                    metadata={"lstmscope.state": "{not json"})
    elif bad == "h_n_2d":
        safetensors.numpy.save_file({"h_n": zeros(1, 2), "c_n": zeros(1, 2)}, str(p))
    line = assert_one_error(invoke("show-state", p))
    if bad == "future":
        assert "format_version" in line
    if bad == "torch":
        assert "import-state" in line
