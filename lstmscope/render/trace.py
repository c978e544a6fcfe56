"""Rich rendering of traces: the summary of ``trace``, its heatmap, the PNG it wrote, and a diff of two traces.
Takes a Console and finished results; computes nothing (heatmap pooling is lstmscope.heatmap's)."""

from __future__ import annotations

import math

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from lstmscope.render import BAD_STYLE, DIR_SHORT, OK_STYLE, _num, render_only_in
from lstmscope.render.console import layout_width, print_note, print_table

SPARK = "▁▂▃▄▅▆▇█"  # per-step profile levels, low to high
SPARK_ASCII = ".:-=+*#@"  # the same where the console cannot print Unicode


def render_trace_diff(console: Console, res) -> None:
    """Trace rows: a table (per layer, direction, quantity) and the max |diff| profile over time."""
    if not res.comparable:
        if "time_order" in res.architecture:
            oa, ob = res.architecture["time_order"]
            why = (f"A is stored in {oa}-time order and B in {ob}-time order; a processing-order trace cannot be "
                   "compared step by step with an input-order one (trace both with the same --order).")
        else:
            why = "the two traces come from differently shaped LSTMs, batches, lengths or numbers of steps."
        console.print(Text(f"Not comparable: {why}", style=BAD_STYLE))
        return
    if res.rows:
        batch, time, _ = res.rows[0].shape
        console.print(Text(f"{batch} sequence{'s' if batch != 1 else ''} x {time:,} steps; padding (steps past a "
                           "sequence's length) left out", style="dim"))
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
    for name, justify in (("layer", "right"), ("dir", "left"), ("q", "left"), ("max |diff|", "right"),
                          ("at", "left"), ("1st over", "right"), ("% over", "right"), ("", "left")):
        table.add_column(name, justify=justify, overflow="fold", no_wrap=name == "at", min_width=4 if not name else None)
    for r in res.rows:
        mark = Text("PASS", style=OK_STYLE) if r.passed else Text("FAIL", style=BAD_STYLE)
        at = "(" + ",".join(str(i) for i in r.max_abs_diff_at) + ")" if r.max_abs_diff_at else ""
        first = Text("-", style="dim") if r.first_step_over is None else Text(f"{r.first_step_over:,}", style=BAD_STYLE)
        table.add_row(str(r.layer), DIR_SHORT[r.direction], r.quantity, _num(r.max_abs_diff, ".2e"), at, first,
                      f"{r.mismatched_pct:.3g}%", mark)
    print_table(console, table)
    print_note(console, "at: (sequence, step, unit) of the max |diff|; 1st over: the first step with an "
                        "element over tolerance; % over: elements over it")
    names = {r.layer: r.tensor.split("/")[0] for r in res.rows}
    if any(n != f"layer{i}" for i, n in names.items()):
        print_note(console, "layer " + ", ".join(f"{i} = {n}" for i, n in sorted(names.items())))
    _render_step_profile(console, res.rows, res.atol)
    render_only_in(console, res)
    if res.equal:
        console.print(Text("Traces match within tolerance.", style=OK_STYLE))
    else:
        failed = [r for r in res.rows if not r.passed]
        first = min(failed, key=lambda r: r.first_step_over, default=None)
        console.print(Text(f"Traces differ: {len(failed)} of {len(res.rows)} rows fail"
                           + (f", first at step {first.first_step_over:,} ({first.tensor})" if first else "")
                           + (", tensors missing on one side" if res.only_in_a or res.only_in_b else "") + ".",
                           style=BAD_STYLE))


def _render_step_profile(console: Console, rows, atol: float) -> None:
    """One line per row: max |diff| per step, pooled (max) to the width left, on one log10 scale shared by
    every row and reaching atol (its level is named); under a row with mismatches, ^ marks the columns
    holding a step over tolerance (the exact per-element rule, which a per-step maximum cannot show)."""
    if not rows or rows[0].per_step_max_abs_diff is None or not rows[0].per_step_max_abs_diff.size:
        return
    import numpy as np

    steps = [r.per_step_max_abs_diff for r in rows]
    positive = [v[np.isfinite(v) & (v > 0)] for v in steps]
    positive = [v for v in positive if v.size]
    if not positive:
        return  # every valid step equal: nothing to draw
    lo = int(np.floor(np.log10(min(float(v.min()) for v in positive))))
    top = max([float(v.max()) for v in positive] + [atol])
    lo = min(lo, int(np.floor(np.log10(top))) - 1)
    hi = max(int(np.ceil(np.log10(top))), lo + 1)
    glyphs = SPARK if (console.encoding or "").lower().startswith("utf") else SPARK_ASCII
    labels = [f"{r.layer} {DIR_SHORT[r.direction]} {r.quantity}" for r in rows]
    lw = max(len(s) for s in labels) + 2
    time = steps[0].size
    per = -(-time // max(layout_width(console) - lw - 1, 8))  # steps a column
    cols = -(-time // per)
    def glyph(value: float) -> str:
        if value != value:
            return " "  # every step of the column is padding
        if value == 0:
            return "_"
        level = (math.log10(value) - lo) / (hi - lo) * len(glyphs) if value != math.inf else len(glyphs)
        return glyphs[int(min(max(level, 0), len(glyphs) - 1))]

    marks = [f"atol {atol:g} = {glyph(atol)}"] if atol > 0 else []
    if any(r.per_step_over.any() for r in rows):
        marks.append("^ a step over tolerance")
    if any((v == 0).any() for v in steps):
        marks.append("_ 0")
    console.print(Text(f"max |diff| per step, log scale {glyphs[0]} 1e{lo:+03d} .. {glyphs[-1]} 1e{hi:+03d}, "
                       + (f"{per:,} steps a column" if per > 1 else "a step a column"), style="dim"))
    if marks:
        console.print(Text("; ".join(marks), style="dim"))
    last = f"{time - 1:,}"
    if cols >= len(last) + 2:
        console.print(Text(" " * lw + "0" + last.rjust(cols - 1), style="dim"))
    for label, r, v in zip(labels, rows, steps):
        pad = np.full(cols * per, np.nan)
        pad[:time] = v
        pooled = np.fmax.reduce(pad.reshape(cols, per), axis=1)  # NaN only where every step is padding
        flagged = np.zeros(cols * per, dtype=bool)
        flagged[:time] = r.per_step_over
        flagged = flagged.reshape(cols, per).any(axis=1)
        line = Text(label.ljust(lw))
        for value, bad in zip(pooled.tolist(), flagged.tolist()):
            line.append(glyph(value), style=BAD_STYLE if bad else None)
        line.rstrip()  # columns of padding at the end
        console.print(line, no_wrap=True, overflow="crop")
        if flagged.any():
            console.print(Text(" " * lw + "".join("^" if f else " " for f in flagged.tolist()).rstrip(),
                               style=BAD_STYLE), no_wrap=True, overflow="crop")


def render_trace(console: Console, *, meta: dict, layout: dict, summary, spec, module_name: str,
                 path=None, size: int | None = None, input_name: str | None = None, chunk_size: int | None = None,
                 verb: str = "Wrote") -> None:
    """A trace: what it holds (per quantity, how many tensors of which shape) and the summary figures per layer,
    direction and quantity, with one line per figure saying what it means. ``path``/``size`` None: the trace
    was not kept (``trace`` without -o; ``input_name`` names what was traced). ``verb``: "Wrote" after a run,
    "Trace" when showing a file."""
    from lstmscope.tracestats import FIGURE_NOTES

    stats = summary
    padding = meta["padding"] if meta.get("lengths_sha256") else "no padding"
    mask = meta.get("mask")
    if isinstance(mask, dict) and isinstance(mask.get("valid_steps"), list):
        read = sum(mask["valid_steps"])
        padding += f"; masked: {read:,} steps read, skipped steps NaN"
    how = (f"module {module_name}, {meta['dtype']}, {meta['time_order']}-time order, {padding}"
           + (f", streamed in chunks of {chunk_size:,} steps" if chunk_size else ""))
    if path is None:
        console.print(Text.assemble(("Traced ", "bold"), f"{input_name} ({how}); "
                                    "not kept: give -o FILE to keep every step"))
    else:
        console.print(Text.assemble((f"{verb} ", "bold"), str(path), f"  ({size:,} bytes; {how})"))
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    for col in ("quantity", "tensors", "shape (batch, time, width)", "example name"):
        table.add_column(col, overflow="fold")
    for q in meta["quantities"]:
        names = sorted(n for n in layout if n.endswith(f"/{q}"))
        shapes = sorted({layout[n][1] for n in names})
        table.add_row(q, str(len(names)), Text(", ".join(str(s) for s in shapes)), Text(names[0] if names else ""))
    print_table(console, table)
    if stats is None:
        return
    names = spec.names if spec.framework == "keras" else ()
    summary = Table(title="Summary per layer, direction and quantity", box=box.SIMPLE_HEAD, pad_edge=False,
                    title_justify="left", title_style="bold")
    for col, justify in (("layer", "right"), ("dir", "left"), ("q", "left"), ("mean", "right"),
                         ("saturated", "right"), ("sat units", "right"), ("dead units", "right")):
        summary.add_column(col, justify=justify)
    for r in stats.rows:
        share = Text("-", style="dim") if r.saturated_share is None else Text(f"{r.saturated_share:.1%}")
        sat = Text("-", style="dim") if r.saturated_units is None else Text(f"{r.saturated_units}/{r.width}")
        summary.add_row(str(r.layer), DIR_SHORT[r.direction], r.quantity, _num(r.mean), share, sat,
                        f"{r.dead_units}/{r.width}")
    print_table(console, summary)
    mem = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    for col, justify in (("layer", "right"), ("dir", "left"), ("forget mean", "right"), ("memory", "right"),
                         ("max |c|", "right"), ("at (seq, step, unit)", "left")):
        mem.add_column(col, justify=justify, no_wrap=col in ("memory", "at (seq, step, unit)"))
    for d in stats.directions:
        memory = Text("-", style="dim") if d.memory_length is None else Text(
            "inf" if d.memory_length == float("inf") else f"{d.memory_length:.3g} steps")
        at = "" if d.max_abs_c_at is None else "(" + ", ".join(str(v) for v in d.max_abs_c_at) + ")"
        mem.add_row(str(d.layer), DIR_SHORT[d.direction], _num(d.forget_mean), memory, _num(d.max_abs_c), at)
    print_table(console, mem)
    if names:
        print_note(console, "layer " + ", ".join(f"{i} = {n}" for i, n in enumerate(names)))
    nonfinite = any(r.non_finite for r in stats.rows)
    for figure, meaning in FIGURE_NOTES:
        if figure == "values" or (figure == "non-finite" and not nonfinite):
            continue  # not in the tables above
        print_note(console, f"{figure}: {meaning}")
    if nonfinite:
        bad = ", ".join(f"{r.quantity} layer {r.layer} {DIR_SHORT[r.direction]}: {r.non_finite}"
                        for r in stats.rows if r.non_finite)
        console.print(Text(f"non-finite values in valid steps: {bad}", style=BAD_STYLE))


# Heatmaps (lstmscope.heatmap.Grid). Colours approximate matplotlib's colormaps of the same name (9 anchors
# each), so the terminal and --png agree; without colour, shade characters stand for bins of the scale.
CMAP_ANCHORS = {
    "viridis": ((68, 1, 84), (71, 45, 123), (59, 82, 139), (44, 114, 142), (33, 145, 140), (40, 174, 128),
                (94, 201, 98), (173, 220, 48), (253, 231, 37)),
    "RdBu_r": ((5, 48, 97), (42, 113, 178), (107, 172, 209), (194, 221, 236), (247, 246, 246), (251, 204, 180),
               (228, 128, 102), (186, 40, 50), (103, 0, 31)),
}
SHADES = "·░▒▓█"  # unsigned scales: 5 equal bins, low to high
SIGNED_SHADES = "#≡=-·░▒▓█"  # signed scales: 9 equal bins; strokes for negative, shades for positive, · near 0
HEATMAP_ROWS = 40  # unit rows drawn at most (more units are pooled)


def heatmap_fit(console: Console, selection) -> tuple[int, int]:
    """(max_cols, max_rows) of a heatmap of ``selection`` drawn on ``console``: the columns left of the width
    after the unit labels."""
    label = len(str(selection.units[1] - 1))
    return max(1, layout_width(console) - label - 2), HEATMAP_ROWS


def _cmap_rgb(name: str, pos: float) -> tuple[int, int, int]:
    anchors = CMAP_ANCHORS[name]
    x = min(max(pos, 0.0), 1.0) * (len(anchors) - 1)
    k = min(int(x), len(anchors) - 2)
    t = x - k
    a, b = anchors[k], anchors[k + 1]
    return tuple(int(round(a[i] + (b[i] - a[i]) * t)) for i in range(3))


def _shade(pos: float, signed: bool) -> str:
    chars = SIGNED_SHADES if signed else SHADES
    return chars[min(int(pos * len(chars)), len(chars) - 1)]


def _fmt(v: float) -> str:
    return f"{v:.3g}"


def render_heatmap(console: Console, grid) -> None:
    """One (layer, direction, sequence) of a trace as units (rows) by steps (columns): a title, unit labels, the
    cells, a step axis, the pooling and the scale. Colour when the console has it, else shade characters."""
    from rich.color import Color
    from rich.style import Style

    sel, scale = grid.selection, grid.scale
    # 16 colours cannot show a colormap: shades there, as without colour
    colour = not console.no_color and console.color_system in ("256", "truecolor")
    layer = f"layer {sel.layer}" + (f" ({grid.layer_name})" if grid.layer_name != f"layer{sel.layer}" else "")
    _flow(console, [f"Heatmap: {sel.quantity} ({grid.quantity_words}),", f"{layer} {sel.direction_name},",
                    f"sequence {sel.batch_index} (of {grid.batch})"], " ", "bold")
    (u0, u1), (s0, s1) = sel.units, sel.steps
    length = [] if grid.length == grid.time else [f"this sequence has {grid.length} valid "
                                                  f"step{'s' if grid.length != 1 else ''}"]
    order = "" if grid.time_order == "input" else f", {grid.time_order} order"
    _flow(console, [f"units {u0}:{u1} of {grid.width} (rows),",
                    f"steps {s0}:{s1} of {grid.time} (columns{order}){';' if length else ''}", *length], " ", "dim")
    label_w = len(str(u1 - 1))
    pos = scale.position(grid.values)  # (rows, cols) in 0..1, NaN for padding
    for r in range(grid.rows):
        line = Text.assemble((f"{int(grid.unit_edges[r]):>{label_w}} │", "dim"))
        for c in range(grid.cols):
            p = pos[r, c]
            if p != p:  # NaN: padding only
                line.append(" ")  # (trailing blanks are cut below when there is no background colour)
            elif colour:
                line.append(" ", Style(bgcolor=Color.from_rgb(*_cmap_rgb(scale.cmap, float(p)))))
            else:
                line.append(_shade(float(p), scale.signed))
        if not colour:
            line.rstrip()
        console.print(line, no_wrap=True, overflow="crop", crop=True)
    # step axis: a tick under the column holding each labelled step
    room = layout_width(console) - label_w - 2  # columns available to the labels
    spacing = len(str(s1 - 1)) + 2
    step = next(k * 10 ** e for e in range(19) for k in (1, 2, 5) if k * 10 ** e >= spacing * grid.steps_per_col)
    ticks, labels, end = [], [" "] * room, -1
    for t in [s0, *range((s0 // step + 1) * step, s1, step)]:
        col, text = (t - s0) // grid.steps_per_col, str(t)
        if col <= end or col + len(text) > room:
            continue
        ticks.append(col)
        labels[col:col + len(text)] = text
        end = col + len(text)
    axis = ["─"] * grid.cols
    for col in ticks:
        axis[col] = "┬"
    console.print(Text(" " * label_w + " └" + "".join(axis), style="dim"), no_wrap=True, overflow="crop")
    console.print(Text(" " * (label_w + 2) + "".join(labels).rstrip(), style="dim"), no_wrap=True, overflow="crop")
    # pooling and scale
    def per(n: int, last: int, one: str, many: str) -> str:
        unit = one if n == 1 else many
        return f"{n} {unit}" + ("" if n == 1 else " (mean" + (f"; the last {last})" if last != n else ")"))

    col_text = per(grid.steps_per_col, int(grid.step_edges[-1] - grid.step_edges[-2]), "step", "steps")
    row_text = per(grid.units_per_row, int(grid.unit_edges[-1] - grid.unit_edges[-2]), "unit", "units")
    blank = "; blank = padding" if grid.has_padding else ""
    _flow(console, [f"1 column = {col_text},", f"1 row = {row_text}{blank}"], " ", "dim")
    head = [f"scale {_fmt(scale.lo)}..{_fmt(scale.hi)}", f"({scale.reason})"]
    if grid.value_range is not None:
        head[1:] = [f"({scale.reason};", f"values {_fmt(grid.value_range[0])}..{_fmt(grid.value_range[1])})"]
    _flow(console, head, " ", "dim")
    if colour:
        n = 24
        bar = Text(_fmt(scale.lo) + " ")
        for k in range(n):
            if scale.signed and k == n // 2:
                bar.append(" 0 ")
            bar.append(" ", Style(bgcolor=Color.from_rgb(*_cmap_rgb(scale.cmap, (k + 0.5) / n))))
        bar.append(" " + _fmt(scale.hi))
        console.print(bar, no_wrap=True, overflow="crop")
        return
    chars = SIGNED_SHADES if scale.signed else SHADES
    step = (scale.hi - scale.lo) / len(chars)
    if scale.signed:  # thresholds: strokes below, shades above, · around 0
        half = len(chars) // 2
        entries = [f"{ch} <{_fmt(scale.lo + (k + 1) * step)}" for k, ch in enumerate(chars[:half])]
        entries.append(f"{chars[half]} ±{_fmt(step / 2)}")
        entries += [f"{ch} >{_fmt(scale.lo + (half + 1 + k) * step)}" for k, ch in enumerate(chars[half + 1:])]
        entries.append("(strokes negative, shades positive)")
    else:
        entries = [f"{ch} {_fmt(scale.lo + k * step)}..{_fmt(scale.lo + (k + 1) * step)}" for k, ch in enumerate(chars)]
    _flow(console, entries, "   ")


def _flow(console: Console, entries: list[str], sep: str, style: str = "") -> None:
    """Print ``entries`` joined by ``sep``, breaking lines only between entries (an entry wider than the console
    is folded), with no trailing blanks."""
    line = ""
    for entry in entries:
        if line and len(line) + len(sep) + len(entry) > layout_width(console):
            console.print(Text(line, style=style), overflow="fold")
            line = ""
        line = f"{line}{sep}{entry}" if line else entry
    console.print(Text(line, style=style), overflow="fold")


def render_png_written(console: Console, result) -> None:
    """``--png``: what was written (plot.PngResult)."""
    print_note(console, Text.assemble(("Wrote ", "bold"), str(result.path),
                                      f"  ({result.width}x{result.height} pixels: {result.what})"), indent=0)
