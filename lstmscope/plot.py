"""``--png``: a trace heatmap and the gate saturation per layer as a PNG, drawn with matplotlib.

matplotlib is an optional extra (``pip install 'lstmscope[plot]'``) and is imported only inside
:func:`write_png`, through its object-oriented API on the Agg canvas: no pyplot, no GUI, no change to
the process's backend. :func:`check_png` says before any run whether the picture can be written.

The picture: left, the selection of lstmscope.heatmap as units (rows, unit 0 at the top) by steps, each
cell drawn over exactly the units and steps it pools (pcolormesh on the pooling edges), coloured with the
scale's colormap (viridis, or RdBu_r for signed scales) over the same range the terminal uses, with a
colour bar; hatched (no cell drawn) is padding. Right, the share of saturated values per layer
and direction for each gate traced (tracestats' thresholds), from the summary of the run or, without
one, computed from the file block by block. The PNG is figsize * dpi pixels exactly, written atomically,
and byte-identical for the same trace (no Software or date metadata).
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lstmscope.errors import OutputError, UsageError
from lstmscope.heatmap import Grid, Selection, heatmap_grid

FIGSIZE = (11.0, 5.0)  # inches
DPI = 100
MAX_COLS = 1000  # heatmap cells across, at most (more steps are pooled)
MAX_ROWS = 400  # unit rows, at most
SATURATION_QUANTITIES = ("i", "f", "o", "g", "h")  # the bounded quantities tracestats counts saturation for
READ_BLOCK_BYTES = 16 << 20  # summary computed from the file: about this much per read
MISSING = "--png needs matplotlib: pip install 'lstmscope[plot]'"


@dataclass
class PngResult:
    """What write_png wrote."""

    path: Path
    width: int  # pixels
    height: int
    heatmap_extent: tuple[float, float, float, float]  # the heatmap axes in pixels: (left, top, right, bottom),
    #                                                    origin at the image's top left
    data_limits: tuple[float, float, float, float]  # the axes' data range: (step left, step right, unit top, unit bottom)
    grid: Grid
    what: str  # a few words on what the picture shows

    def pixel(self, step: float, unit: float) -> tuple[int, int]:
        """(x, y) of the image pixel at data point (step, unit) of the heatmap axes."""
        left, top, right, bottom = self.heatmap_extent
        x0, x1, y0, y1 = self.data_limits
        x = left + (step - x0) / (x1 - x0) * (right - left)
        y = top + (unit - y0) / (y1 - y0) * (bottom - top)
        return int(x), int(y)


def matplotlib_available() -> bool:
    return importlib.util.find_spec("matplotlib") is not None


def check_png(path: str | os.PathLike, *, force: bool, output: str | os.PathLike | None = None,
              sources: tuple = ()) -> None:
    """Refuse, before any run, a ``--png`` that cannot be written: matplotlib missing, the path is the trace
    output or one of the inputs, or it exists without ``force``."""
    from lstmscope.fileio import check_target

    if not matplotlib_available():
        raise UsageError(MISSING)
    path = Path(path)
    if output is not None and path.resolve() == Path(output).resolve():
        raise UsageError(f"--png {path} is also the trace output (-o); give the picture another name")
    for src in sources:
        if src is not None and Path(src).exists() and path.exists() and os.path.samefile(src, path):
            raise OutputError(f"--png {path} is also an input of this command; write the picture to another file")
    check_target(path, force)


def write_png(path: str | os.PathLike, trace, selection: Selection, summary=None, force: bool = False, *,
              figsize: tuple[float, float] = FIGSIZE, dpi: int = DPI, max_cols: int = MAX_COLS,
              max_rows: int = MAX_ROWS) -> PngResult:
    """Draw ``selection`` of ``trace`` (a tracefile.TraceFile) and its gate saturation (``summary``: a
    tracestats.TraceStats, or None to compute it from the file) into the PNG ``path``, atomically."""
    from lstmscope.fileio import atomic_writer, check_target

    path = Path(path)
    if not matplotlib_available():
        raise UsageError(MISSING)
    check_target(path, force)
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure
    import matplotlib

    grid = heatmap_grid(trace, selection, max_cols, max_rows)
    stats = summary if summary is not None else trace_summary(trace)
    sel, scale = grid.selection, grid.scale
    fig = Figure(figsize=figsize, dpi=dpi, layout="constrained")
    FigureCanvasAgg(fig)
    heat_ax, sat_ax = fig.subplots(1, 2, width_ratios=(3, 1))
    mesh = heat_ax.pcolormesh(grid.step_edges, grid.unit_edges, np.ma.masked_invalid(grid.values),
                              cmap=matplotlib.colormaps[scale.cmap], norm=Normalize(scale.lo, scale.hi),
                              shading="flat", edgecolors="none", antialiased=False)
    x0, x1 = float(grid.step_edges[0]), float(grid.step_edges[-1])
    y0, y1 = float(grid.unit_edges[0]), float(grid.unit_edges[-1])
    heat_ax.set_xlim(x0, x1)
    heat_ax.set_ylim(y1, y0)  # unit 0 at the top, as in the terminal
    for axis, lo, hi, per in ((heat_ax.xaxis, x0, x1, grid.steps_per_col), (heat_ax.yaxis, y0, y1, grid.units_per_row)):
        ticks = _ticks(int(lo), int(hi), 12 if axis is heat_ax.xaxis else 16)
        axis.set_ticks([t + 0.5 if per == 1 else t for t in ticks], [str(t) for t in ticks])  # unpooled: centres
    heat_ax.set_facecolor("white")
    heat_ax.patch.set_hatch("///")  # shows where no cell is drawn: padding
    heat_ax.patch.set_edgecolor("0.75")
    heat_ax.set_xlabel("step" + ("" if grid.steps_per_col == 1 else f" ({grid.steps_per_col} per column, mean)")
                       + ("; hatched: padding" if grid.has_padding else ""))
    heat_ax.set_ylabel("unit" + ("" if grid.units_per_row == 1 else f" ({grid.units_per_row} per row, mean)"))
    layer = grid.layer_name if grid.layer_name != f"layer{sel.layer}" else f"layer {sel.layer}"
    heat_ax.set_title(f"{sel.quantity} ({grid.quantity_words}), {layer} {sel.direction_name}, "
                      f"sequence {sel.batch_index}", fontsize="medium")
    bar = fig.colorbar(mesh, ax=heat_ax)
    bar.set_label(f"{sel.quantity} ({scale.reason})")
    _saturation_panel(sat_ax, stats, trace)
    fig.canvas.draw()
    box = heat_ax.get_window_extent()  # display pixels, origin at the bottom left
    width, height = (int(round(v)) for v in fig.canvas.get_width_height())
    extent = (float(box.x0), height - float(box.y1), float(box.x1), height - float(box.y0))
    with atomic_writer(path, force) as f:
        fig.savefig(f, format="png", dpi=dpi, metadata={"Software": None})
    what = "heatmap and gate saturation per layer"
    return PngResult(path, width, height, extent, (x0, x1, y0, y1), grid, what)


def _ticks(lo: int, hi: int, most: int) -> list[int]:
    """Round indices in lo..hi-1 (multiples of 1, 2 or 5 times a power of ten), at most about ``most``."""
    interval = next(k * 10 ** e for e in range(19) for k in (1, 2, 5) if k * 10 ** e * most >= hi - lo)
    return list(range(-(-lo // interval) * interval, hi, interval))


def _saturation_panel(ax, stats, trace) -> None:
    """Grouped bars: per layer and direction, the saturated share of each bounded quantity traced."""
    from matplotlib.ticker import PercentFormatter

    pairs = [(layer, d) for layer in range(trace.spec.num_layers) for d in ("forward", "backward")[:trace.spec.num_directions]]
    qs = [q for q in SATURATION_QUANTITIES if q in trace.quantities]
    ax.set_title("gate saturation", fontsize="medium")
    if not qs:
        ax.text(0.5, 0.5, "no gate traced", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
        return
    x = np.arange(len(pairs), dtype=np.float64)
    w = 0.8 / len(qs)
    top = 0.0
    for k, q in enumerate(qs):
        shares = []
        for layer, d in pairs:
            try:
                share = stats.row(layer, d, q).saturated_share
            except KeyError:
                share = None
            shares.append(0.0 if share is None else share)
        top = max(top, *shares)
        ax.bar(x + (k - (len(qs) - 1) / 2) * w, shares, w, label=q)
    short = {"forward": "fwd", "backward": "bwd"}
    ax.set_xticks(x, [f"L{layer} {short[d]}" for layer, d in pairs])
    ax.set_ylim(0, min(1.0, max(0.1, 1.25 * top)))  # small shares stay visible; 10% at least
    if top == 0:
        ax.text(0.5, 0.5, "no saturated values", ha="center", va="center", transform=ax.transAxes, color="0.4")
    ax.yaxis.set_major_formatter(PercentFormatter(1.0, decimals=0))
    ax.set_ylabel("values saturated")
    ax.legend(fontsize="small", ncols=min(len(qs), 3))


def trace_summary(trace):
    """tracestats figures of a whole trace file, read in time blocks of about READ_BLOCK_BYTES."""
    from lstmscope.tracestats import TraceSummary

    summary = TraceSummary(lengths=trace.lengths)
    for layer, d, q in trace.keys():
        if q not in SATURATION_QUANTITIES:
            continue
        arr = trace.tensors[trace.name(layer, d, q)]  # DiskArray (batch, time, width)
        batch, time, width = arr.shape
        step = max(1, READ_BLOCK_BYTES // max(1, batch * width * arr.itemsize))
        for start in range(0, time, step):
            stop = min(time, start + step)
            summary.add(layer, ("forward", "backward")[d], q, start, arr.read_axis1(start, stop))
    return summary.result()
