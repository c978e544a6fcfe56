"""Trace heatmaps: the selection rules, the pooled grid against numpy computed here from the file, the scale
rules, the Rich drawing at 60, 80 and 200 columns with and without colour, the CLI options and their errors,
and the --png picture (its size and the colour of a cell whose value the test set)."""

from __future__ import annotations

import io
import json
import math

import numpy as np
import pytest
from safetensors.numpy import load_file

from lstmscope import heatmap as hm
from lstmscope.errors import UsageError
from lstmscope.heatmap import HeatmapRequest, Selection, data_scale, fixed_scale, heatmap_grid
from lstmscope.spec import Activation, LSTMSpec
from lstmscope.tracefile import TraceWriter, read_trace, trace_layout, trace_metadata

SHADE_CHARS = set("·░▒▓█#≡=-")


def make_spec(**kw) -> LSTMSpec:
    base = dict(input_size=3, hidden_size=13, proj_size=0, num_layers=2, bidirectional=True, bias=True,
                dtype="float32")
    base.update(kw)
    return LSTMSpec(**base)


def write_trace(path, spec: LSTMSpec, batch: int, time: int, *, lengths=None, quantities=tuple("hcifgo"),
                seed: int = 0, set_values=None):
    """A trace file written with lstmscope's own writer, holding random values (gates in (0, 1), the rest
    signed), NaN past each length. ``set_values(name, array)`` may change an array before it is written."""
    rng = np.random.default_rng(seed)
    layout = trace_layout(spec, batch, time, "float32", quantities, lengths is not None)
    meta = trace_metadata(spec, dtype="float32", module="m", checkpoint_sha256=None, input_sha256=None,
                          lengths=None if lengths is None else np.asarray(lengths), initial_state_sha256=None,
                          time_order="input", quantities=quantities)
    with TraceWriter(path, layout, meta) as w:
        for name, (_, shape) in layout.items():
            if name == "lengths":
                w.put(name, np.asarray(lengths, dtype=np.int64))
                continue
            q = name.rsplit("/", 1)[1]
            a = rng.random(shape) if q in "ifo" else rng.standard_normal(shape) * 0.7  # (B, T, W)
            a = a.astype(np.float32)
            if lengths is not None:
                a[np.arange(time)[None, :] >= np.asarray(lengths)[:, None]] = np.nan
            if set_values is not None:
                set_values(name, a)
            w.put(name, a)
    return read_trace(path)


def pooled_reference(a: np.ndarray, uf: int, sf: int) -> np.ndarray:
    """Mean over blocks of uf units by sf steps of a (steps, units) array, NaN left out; NaN for an all-NaN
    block. Written independently of lstmscope.heatmap (plain loops)."""
    steps, units = a.shape
    rows, cols = math.ceil(units / uf), math.ceil(steps / sf)
    out = np.full((rows, cols), np.nan)
    for r in range(rows):
        for c in range(cols):
            block = a[c * sf:(c + 1) * sf, r * uf:(r + 1) * uf].astype(np.float64)
            vals = block[~np.isnan(block)]
            if vals.size:
                out[r, c] = vals.sum() / vals.size
    return out


# --- selection ----------------------------------------------------------------------------------------------

def Request(quantity=None, **kw):
    """A HeatmapRequest with --units/--steps parsed as the CLI parses them."""
    from lstmscope.options import parse_span

    for flag in ("units", "steps"):
        if isinstance(kw.get(flag), str):
            kw[flag] = parse_span(kw[flag], f"--{flag}")
    return HeatmapRequest(quantity, **kw)


def test_defaults_are_last_layer_forward_sequence_0_everything():
    spec = make_spec()
    sel = Request("c").resolve(spec, 4, 30, tuple("hcifgo"))
    assert sel == Selection("c", 1, 0, 0, (0, 13), (0, 30))
    sel = Request("f", layer="-2", direction="bwd", batch_index=-1, units="3:", steps=":-10").resolve(
        spec, 4, 30, tuple("hcifgo"))
    assert sel == Selection("f", 0, 1, 3, (3, 13), (0, 20))
    assert Request("g", direction="1", units="-1").resolve(spec, 4, 30, tuple("hcifgo")).units == (12, 13)
    # --png alone: h when traced, else the first quantity traced
    assert Request().resolve(spec, 4, 30, ("c", "f")).quantity == "c"
    keras = make_spec(framework="keras", names=("encoder", "decoder"), bidirectional=False)
    assert Request("h", layer="encoder").resolve(keras, 1, 5, tuple("hcifgo")).layer == 0


@pytest.mark.parametrize("request_kw,fragments", [
    (dict(quantity="c", units="0:300"), ["--units 0:300", "13 units (hidden_size)", "0:13"]),
    (dict(quantity="h", units="0:6"), ["--units 0:6", "h of this module is 4 wide (proj_size)", "0:4"]),
    (dict(quantity="c", units="5:5"), ["--units 5:5 is empty", "0:13"]),
    (dict(quantity="c", units="a:b"), ["--units 'a:b' is not a range"]),
    (dict(quantity="c", steps="10:31"), ["--steps 10:31", "30 steps", "0:30"]),
    (dict(quantity="c", steps="-40:"), ["--steps -40:", "0:30"]),
    (dict(quantity="c", layer="2"), ["--layer 2", "2 layers", "0..1"]),
    (dict(quantity="c", layer="decoder"), ["--layer decoder", "0..1"]),
    (dict(quantity="c", direction="up"), ["--direction up", "forward or backward"]),
    (dict(quantity="c", batch_index=4), ["--batch-index 4", "4 sequences", "0..3"]),
    (dict(quantity="x"), ["--heatmap x is not a quantity", "h, c, i, f, g, o"]),
    (dict(quantity="g"), ["--heatmap g", "--quantities h,c,f", "h, c, f"]),
])
def test_bad_selection_names_the_valid_range(request_kw, fragments):
    spec = make_spec(proj_size=4)
    with pytest.raises(UsageError) as e:
        Request(**request_kw).resolve(spec, 4, 30, ("h", "c", "f"))  # --units a:b fails as it is parsed
    for frag in fragments:
        assert frag in e.value.message, (frag, e.value.message)


def test_backward_on_a_unidirectional_module():
    with pytest.raises(UsageError, match="unidirectional"):
        Request("h", direction="backward").resolve(make_spec(bidirectional=False), 1, 5, ("h",))


def test_narrowing_without_a_picture_is_refused():
    with pytest.raises(UsageError, match="--layer, --units only narrow a picture"):
        Request(layer="0", units="0:2").check_used(png=False)
    Request(units="0:2").check_used(png=True)
    Request("h", units="0:2").check_used(png=False)


# --- the grid -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("time,max_cols,units,max_rows,sf,uf", [
    (24, 100, "0:13", 40, 1, 1),  # no pooling
    (24, 8, "0:13", 40, 3, 1),  # time divides exactly
    (23, 5, "0:13", 40, 5, 1),  # time does not divide: the last column holds 3 steps
    (23, 7, "0:13", 4, 4, 4),  # units pooled too: the last row holds 1 unit
    (23, 4, "2:11", 3, 6, 3),  # a unit range, pooled
])
def test_pooling_equals_numpy_on_the_file(tmp_path, time, max_cols, units, max_rows, sf, uf):
    spec = make_spec()
    lengths = [time, 9, 1]
    tf = write_trace(tmp_path / "t.safetensors", spec, 3, time, lengths=lengths)
    raw = load_file(tmp_path / "t.safetensors")
    for b in range(3):
        sel = Request("c", batch_index=b, units=units, direction="backward").resolve(
            spec, 3, time, tf.quantities)
        grid = heatmap_grid(tf, sel, max_cols, max_rows)
        assert (grid.steps_per_col, grid.units_per_row) == (sf, uf)
        u0, u1 = sel.units
        want = pooled_reference(raw["layer1/backward/c"][b, :, u0:u1], uf, sf)  # (rows, cols)
        assert grid.values.shape == want.shape
        assert grid.cols <= max_cols and grid.rows <= max_rows
        np.testing.assert_allclose(grid.values, want, rtol=1e-12, atol=1e-12, equal_nan=True)
        assert grid.step_edges[0] == 0 and grid.step_edges[-1] == time and np.all(np.diff(grid.step_edges) > 0)
        assert grid.unit_edges[0] == u0 and grid.unit_edges[-1] == u1
        # padding: a column is NaN exactly when all its steps are past the length
        starts = grid.step_edges[:-1]
        np.testing.assert_array_equal(np.isnan(grid.values).all(axis=0), starts >= lengths[b])
        assert grid.has_padding == (lengths[b] < time)


def test_steps_range_and_small_blocks_read_only_the_sequence(tmp_path, monkeypatch):
    spec = make_spec()
    time = 101
    tf = write_trace(tmp_path / "t.safetensors", spec, 4, time, lengths=[101, 90, 60, 5])
    raw = load_file(tmp_path / "t.safetensors")["layer0/forward/f"]
    from lstmscope.arrays import DiskArray

    reads = []
    real = DiskArray.read_flat

    def spy(self, f, start, out):
        reads.append((start, out.size))
        return real(self, f, start, out)

    monkeypatch.setattr(DiskArray, "read_flat", spy)
    monkeypatch.setattr(hm, "BLOCK_BYTES", 7 * 13 * 4)  # 7 steps a block: columns straddle blocks
    sel = Request("f", layer="0", batch_index=2, steps="3:97").resolve(spec, 4, time, tf.quantities)
    grid = heatmap_grid(tf, sel, 10, 40)
    want = pooled_reference(raw[2, 3:97], 1, 10)
    np.testing.assert_allclose(grid.values, want, rtol=1e-12, atol=1e-12, equal_nan=True)
    assert grid.step_edges.tolist() == [3, 13, 23, 33, 43, 53, 63, 73, 83, 93, 97]
    row = 2 * time * 13  # the sequence's first element in the flat tensor
    assert reads and all(row <= s and s + n <= row + time * 13 for s, n in reads)  # only sequence 2
    assert all(n <= 7 * 13 for _, n in reads)  # in blocks
    assert sum(n for _, n in reads) == (60 - 3) * 13  # steps past the length (60) are never read


def test_scale_rules():
    spec = make_spec()
    assert (fixed_scale(spec, "f").lo, fixed_scale(spec, "f").hi) == (0.0, 1.0)
    assert fixed_scale(spec, "g").lo == -1.0 and fixed_scale(spec, "h").hi == 1.0
    assert fixed_scale(spec, "c") is None
    assert fixed_scale(make_spec(proj_size=4), "h") is None  # W_hr makes h unbounded
    relu = make_spec(cell_activation=Activation("relu"))
    assert fixed_scale(relu, "g") is None and fixed_scale(relu, "h") is None and fixed_scale(relu, "i").hi == 1.0
    hard = make_spec(gate_activation=Activation("hard_sigmoid", 0.2, 0.5))
    assert fixed_scale(hard, "o").hi == 1.0
    assert fixed_scale(make_spec(gate_activation=Activation("linear")), "f") is None
    s = data_scale(np.array([[0.5, -2.0], [np.nan, 1.0]]), "c")
    assert (s.lo, s.hi, s.signed, s.cmap) == (-2.0, 2.0, True, "RdBu_r")
    s = data_scale(np.array([[0.5, 3.0], [np.nan, 0.0]]), "c")
    assert (s.lo, s.hi, s.signed, s.cmap) == (0.0, 3.0, False, "viridis")
    assert (data_scale(np.full((2, 2), np.nan), "c").lo, data_scale(np.zeros((1, 1)), "c").hi) == (0.0, 1.0)


def test_grid_scale_for_c_is_from_the_cells(tmp_path):
    spec = make_spec()
    tf = write_trace(tmp_path / "t.safetensors", spec, 2, 12)
    sel = Request("c").resolve(spec, 2, 12, tf.quantities)
    grid = heatmap_grid(tf, sel, 5, 40)
    top = np.nanmax(np.abs(grid.values))
    assert (grid.scale.lo, grid.scale.hi) == (-top, top) and not grid.scale.fixed
    raw = load_file(tmp_path / "t.safetensors")["layer1/forward/c"][0]
    assert grid.value_range == (float(raw.min()), float(raw.max()))


# --- drawing ------------------------------------------------------------------------------------------------

def draw(grid_or_args, width: int, color_system, monkeypatch, no_color=False) -> str:
    from rich.console import Console

    from lstmscope.render.trace import heatmap_fit, render_heatmap

    if no_color:
        monkeypatch.setenv("NO_COLOR", "1")
    else:
        monkeypatch.delenv("NO_COLOR", raising=False)
    tf, sel = grid_or_args
    buf = io.StringIO()
    console = Console(file=buf, width=width, color_system=color_system, force_terminal=color_system is not None,
                      highlight=False)
    cols, rows = heatmap_fit(console, sel)
    render_heatmap(console, heatmap_grid(tf, sel, cols, rows))
    return buf.getvalue()


@pytest.mark.parametrize("width", [60, 80, 200])
@pytest.mark.parametrize("quantity", ["c", "f"])  # a signed and an unsigned scale
def test_drawing_fits_without_colour(tmp_path, monkeypatch, width, quantity):
    from rich.cells import cell_len

    spec = make_spec(hidden_size=100)
    tf = write_trace(tmp_path / "t.safetensors", spec, 2, 1000, lengths=[1000, 700])
    sel = Request(quantity, batch_index=1).resolve(spec, 2, 1000, tf.quantities)
    for no_color, system in ((False, None), (True, "truecolor")):  # a pipe, and NO_COLOR on a terminal
        text = draw((tf, sel), width, system, monkeypatch, no_color=no_color)
        lines = text.splitlines()
        assert "\x1b[3" not in text and "\x1b[4" not in text and "38;" not in text and "48;" not in text
        if system is None:
            assert "\x1b" not in text  # a pipe: no escape codes at all
        else:  # NO_COLOR keeps bold and dim
            from rich.text import Text

            text = Text.from_ansi(text).plain
            lines = text.splitlines()
        assert all(cell_len(line) <= width for line in lines), max(map(cell_len, lines))
        assert not [line for line in lines if line != line.rstrip()]  # no trailing blanks
        cells = [line.split("│", 1)[1] for line in lines if "│" in line]
        assert len(cells) == math.ceil(100 / math.ceil(100 / 40))  # 34 rows of 3 units (the last 1)
        assert set("".join(cells)) - {" "} <= SHADE_CHARS and set("".join(cells)) & set("░▒▓")
        axis = next(line for line in lines if "└" in line).split("└", 1)[1]  # one character per column
        assert len({len(c) for c in cells}) == 1 and 0.6 * len(axis) < len(cells[0]) < 0.8 * len(axis)  # padding cut
        assert "1 row = 3 units (mean; the last 1)" in " ".join(lines)
        assert "steps (mean" in text and "blank = padding" in " ".join(lines)
        assert "Heatmap: " + quantity in text
        assert ("strokes negative" in " ".join(lines)) == (quantity == "c")


@pytest.mark.parametrize("width", [60, 80, 200])
def test_drawing_with_colour(tmp_path, monkeypatch, width):
    from rich.text import Text

    spec = make_spec()
    tf = write_trace(tmp_path / "t.safetensors", spec, 1, 50)
    sel = Request("g").resolve(spec, 1, 50, tf.quantities)
    text = draw((tf, sel), width, "truecolor", monkeypatch)
    assert "\x1b[" in text and "48;2;" in text  # background colours
    plain = Text.from_ansi(text).plain
    assert all(len(line) <= width for line in plain.splitlines())
    assert not set(plain) & set("░▒▓█≡")  # colour instead of shades
    assert "scale -1..1 (tanh range;" in plain.replace("\n", " ")


def test_axis_labels_and_pooling_line(tmp_path, monkeypatch):
    spec = make_spec(hidden_size=4, num_layers=1, bidirectional=False)
    tf = write_trace(tmp_path / "t.safetensors", spec, 1, 10)
    sel = Request("h", units="1:4").resolve(spec, 1, 10, tf.quantities)
    lines = draw((tf, sel), 80, None, monkeypatch).splitlines()
    assert lines[0] == "Heatmap: h (hidden state h_t), layer 0 forward, sequence 0 (of 1)"
    assert lines[1] == "units 1:4 of 4 (rows), steps 0:10 of 10 (columns)"
    assert [line.split("│")[0] for line in lines[2:5]] == ["1 ", "2 ", "3 "]
    assert lines[5] == "  └┬────┬────" and lines[6] == "   0    5"
    assert lines[7] == "1 column = 1 step, 1 row = 1 unit"


# --- the CLI ------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """A saved 2-layer bidirectional nn.LSTM (3 inputs, 5 hidden), a (3, 40, 3) input and lengths."""
    import torch

    d = tmp_path_factory.mktemp("model")
    torch.manual_seed(0)
    lstm = torch.nn.LSTM(3, 5, num_layers=2, bidirectional=True, batch_first=True)
    torch.save(lstm.state_dict(), d / "m.pt")
    np.save(d / "x.npy", np.random.default_rng(1).standard_normal((3, 40, 3)).astype(np.float32))
    np.save(d / "len.npy", np.array([40, 25, 3], dtype=np.int64))
    return d / "m.pt", d / "x.npy", d / "len.npy"


def cli(runner, *args, width=80):
    from lstmscope.cli import app

    return runner.invoke(app, [str(a) for a in args], env={"COLUMNS": str(width), "NO_COLOR": "1"})


@pytest.mark.parametrize("width", [60, 80, 200])
def test_cli_heatmap_under_the_summary(tmp_path, runner, model, width):
    ck, x, lens = model
    out = tmp_path / "t.safetensors"
    r = cli(runner, "trace", ck, x, "--lengths", lens, "-o", out, "--heatmap", "f", "--layer", "0",
            "--direction", "backward", "-b", "1", "--units", "1:4", "--steps", "2:38", width=width)
    assert r.exit_code == 0, r.stderr
    assert r.stderr == ""
    assert "Summary per layer" in r.stdout
    heat = r.stdout[r.stdout.index("Heatmap: f"):]
    assert "layer 0 backward" in heat and "units 1:4 of 5" in heat and "steps 2:38 of 40" in heat
    assert "this sequence has 25 valid steps" in heat
    assert all(len(line) <= width for line in heat.splitlines())
    rows = [line for line in heat.splitlines() if "│" in line]
    assert [row.split("│")[0].strip() for row in rows] == ["1", "2", "3"]
    assert "\x1b" not in r.stdout
    raw = load_file(out)["layer0/backward/f"][1, 2:38, 1:4]
    assert len(rows[0].split("│")[1]) <= 36 and np.isnan(raw[23:]).all()


def test_cli_json_and_quiet_keep_stdout_clean(tmp_path, runner, model):
    ck, x, _ = model
    r = cli(runner, "trace", ck, x, "-o", tmp_path / "a.safetensors", "--heatmap", "c", "--json")
    assert r.exit_code == 0 and r.stderr == ""
    doc = json.loads(r.stdout)
    assert doc["schema"] == "lstmscope.trace/1" and "png" not in doc
    r = cli(runner, "trace", ck, x, "-o", tmp_path / "b.safetensors", "--heatmap", "c", "--quiet")
    assert r.exit_code == 0 and r.stdout == "" and r.stderr == ""


def assert_refused(r, *paths, fragments=()):
    assert r.exit_code == 2, (r.exit_code, r.stdout, r.stderr)
    assert r.stdout == ""
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and "internal error" not in lines[0], r.stderr
    for frag in fragments:
        assert frag in lines[0], (frag, lines[0])
    for p in paths:
        assert not p.exists(), p
        assert not [q for q in p.parent.iterdir() if q.name.startswith(f".{p.name}.")]


@pytest.mark.parametrize("args,fragments", [
    (["--heatmap", "c", "--units", "0:6"], ["--units 0:6", "0:5"]),
    (["--heatmap", "c", "--steps", "30:41"], ["--steps 30:41", "0:40"]),
    (["--heatmap", "c", "--layer", "2"], ["--layer 2", "0..1"]),
    (["--heatmap", "c", "-b", "3"], ["--batch-index 3", "0..2"]),
    (["--heatmap", "g", "--quantities", "h,c"], ["--heatmap g", "--quantities h,c"]),
    (["--heatmap", "z"], ["--heatmap z"]),
    (["--units", "0:2"], ["--units only narrows a picture"]),
    (["--png", "{png}", "--units", "0:9"], ["--units 0:9"]),
])
def test_cli_bad_heatmap_options_write_nothing(tmp_path, runner, model, args, fragments):
    ck, x, _ = model
    out, png = tmp_path / "t.safetensors", tmp_path / "p.png"
    args = [a.replace("{png}", str(png)) for a in args]
    assert_refused(cli(runner, "trace", ck, x, "-o", out, *args), out, png, fragments=fragments)


def test_cli_backward_on_unidirectional(tmp_path, runner):
    import torch

    torch.manual_seed(0)
    torch.save(torch.nn.LSTM(3, 4, batch_first=True).state_dict(), tmp_path / "u.pt")
    np.save(tmp_path / "x.npy", np.zeros((1, 4, 3), np.float32))
    out = tmp_path / "t.safetensors"
    assert_refused(cli(runner, "trace", tmp_path / "u.pt", tmp_path / "x.npy", "-o", out, "--heatmap", "h",
                       "--direction", "backward"), out, fragments=["unidirectional"])


def test_cli_png_without_matplotlib(tmp_path, runner, model, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a, **k: None if name.split(".")[0] == "matplotlib" else real(name, *a, **k))
    ck, x, _ = model
    out, png = tmp_path / "t.safetensors", tmp_path / "p.png"
    assert_refused(cli(runner, "trace", ck, x, "-o", out, "--png", png), out, png,
                   fragments=["--png needs matplotlib: pip install 'lstmscope[plot]'"])


def test_cli_png_path_that_is_an_input_or_the_output(tmp_path, runner, model):
    ck, x, lens = model
    out = tmp_path / "t.safetensors"
    for src in (ck, x, lens):
        before = src.read_bytes()
        r = cli(runner, "trace", ck, x, "--lengths", lens, "-o", out, "--png", src, "--force")
        assert_refused(r, out, fragments=["--png", "input"])
        assert src.read_bytes() == before
    assert_refused(cli(runner, "trace", ck, x, "-o", out, "--png", out), out, fragments=["trace output"])


# --- the PNG ------------------------------------------------------------------------------------------------

def test_png_size_and_the_colour_of_a_set_cell(tmp_path):
    pytest.importorskip("matplotlib")
    import matplotlib
    from matplotlib.colors import Normalize
    from matplotlib.image import imread

    from lstmscope.plot import write_png

    spec = make_spec(hidden_size=6, num_layers=1, bidirectional=False)
    unit, step = 4, 9  # the cell the test sets

    def set_values(name, a):
        if name == "layer0/forward/f":
            a[0] = 0.5
            a[0, step, unit] = 0.9
        if name == "layer0/forward/c":
            a[0, step, unit] = -3.0  # the extreme of a signed scale

    tf = write_trace(tmp_path / "t.safetensors", spec, 2, 20, set_values=set_values)
    for q, value in (("f", 0.9), ("c", -3.0)):
        sel = Request(q).resolve(spec, 2, 20, tf.quantities)
        png = tmp_path / f"{q}.png"
        res = write_png(png, tf, sel, figsize=(8, 4), dpi=50)
        img = imread(png)  # (height, width, RGBA) floats in 0..1
        assert img.shape[:2] == (200, 400) == (res.height, res.width)
        assert (res.grid.steps_per_col, res.grid.units_per_row) == (1, 1)
        norm = Normalize(res.grid.scale.lo, res.grid.scale.hi)
        want = np.array(matplotlib.colormaps[res.grid.scale.cmap](norm(value))[:3])
        px, py = res.pixel(step + 0.5, unit + 0.5)
        np.testing.assert_allclose(img[py, px, :3], want, atol=1.5 / 255)
        if q == "f":  # a neighbour (0.5) has another colour
            nx, ny = res.pixel(step + 1.5, unit + 0.5)
            np.testing.assert_allclose(img[ny, nx, :3], matplotlib.colormaps["viridis"](0.5)[:3], atol=1.5 / 255)
        else:
            assert res.grid.scale.lo == -3.0 and res.grid.scale.cmap == "RdBu_r"


def test_png_refuses_overwrite_and_is_deterministic(tmp_path):
    pytest.importorskip("matplotlib")
    from lstmscope.errors import OutputError
    from lstmscope.plot import write_png

    spec = make_spec(hidden_size=5)
    tf = write_trace(tmp_path / "t.safetensors", spec, 2, 30, lengths=[30, 12])
    sel = Request("c", batch_index=1).resolve(spec, 2, 30, tf.quantities)
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    write_png(a, tf, sel)
    write_png(b, tf, sel)  # the summary computed from the file
    assert a.read_bytes() == b.read_bytes()
    with pytest.raises(OutputError, match="already exists"):
        write_png(a, tf, sel)
    write_png(a, tf, sel, force=True)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_cli_png(tmp_path, runner, model):
    pytest.importorskip("matplotlib")
    from matplotlib.image import imread

    ck, x, lens = model
    out, png = tmp_path / "t.safetensors", tmp_path / "p.png"
    r = cli(runner, "trace", ck, x, "--lengths", lens, "-o", out, "--png", png, "--units", "0:3", "--json")
    assert r.exit_code == 0 and r.stderr == "", r.stderr
    doc = json.loads(r.stdout)
    assert doc["png"] == {"path": str(png), "width": 1100, "height": 500}
    assert imread(png).shape[:2] == (500, 1100)
    r = cli(runner, "trace", ck, x, "-o", out, "--png", png, "--force", "--heatmap", "i")
    assert r.exit_code == 0 and r.stderr == "", r.stderr
    assert f"Wrote {png}" in " ".join(r.stdout.split()) and "Heatmap: i" in r.stdout
    r = cli(runner, "trace", ck, x, "-o", tmp_path / "u.safetensors", "--png", png)  # exists: refused first
    assert_refused(r, tmp_path / "u.safetensors", fragments=["already exists"])
