"""Rich rendering. Takes a Console and finished results; computes nothing.

Colour marks ok / mismatch only. Every cell that carries a name or an index expression is a
``Text`` so that brackets (``output[b, 0, 16:32]``) are never read as markup.
"""

from __future__ import annotations

import math

from rich import box
from rich.console import Console
from rich.padding import Padding
from rich.table import Table
from rich.text import Text

from lstmscope.report import StateView
from lstmscope.readers.base import LSTMModule
from lstmscope.spec import LSTMSpec

OK_STYLE = "bold green"
BAD_STYLE = "bold red"
DIR_SHORT = {"forward": "fwd", "backward": "bwd"}


def _num(v: float | None, fmt: str = ".4g") -> Text:
    if v is None:
        return Text("-", style="dim")
    if v != v:  # NaN
        return Text("nan", style=BAD_STYLE)
    return Text(format(v, fmt))


def describe_spec(spec: LSTMSpec) -> str:
    """One line: shapes, then the cell when it is not nn.LSTM's (Keras terms for Keras modules)."""
    keras = spec.framework == "keras"
    parts = [f"input {spec.input_size}", f"{'units' if keras else 'hidden'} {spec.hidden_size}"]
    if spec.proj_size:
        parts.append(f"proj {spec.proj_size}")
    parts.append(f"{spec.num_layers} layer{'s' if spec.num_layers > 1 else ''}")
    parts.append("bidirectional" if spec.bidirectional else "unidirectional")
    if spec.go_backwards:
        parts.append("go_backwards")
    parts.append(("bias" if spec.bias_layout == "single" or not keras else "two biases (cuDNN)") if spec.bias else "no bias")
    if keras:
        parts.append(f"activation {spec.cell_activation}, recurrent_activation {spec.gate_activation}")
    elif not spec.standard_cell:
        parts.append(spec.describe_cell())
    parts.append(spec.dtype)
    return ", ".join(parts)


def render_inspect(console: Console, path: str, fmt: str, modules: list[LSTMModule], *,
                   stubbed_globals: list[str] = (), refused_calls: list[str] = (),
                   single_layers: list[LSTMModule] = (), version: str | None = None) -> None:
    console.print(Text.assemble(("Checkpoint ", "bold"), path, f"  ({fmt}{f', Keras {version}' if version else ''})"))
    if stubbed_globals or refused_calls:
        console.print(Text("read without running code" + (f": {', '.join(stubbed_globals)}" if stubbed_globals else "")))
    if refused_calls:
        console.print(Text(f"refused to call: {', '.join(refused_calls)} (the file asked to run code; it was not run)",
                           style=BAD_STYLE))
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    longest = max([len(m.display_name) for m in modules] + [6])
    table.add_column("module", overflow="fold", min_width=min(longest, 32))
    table.add_column("configuration", overflow="fold", ratio=1)
    table.add_column("params", justify="right", no_wrap=True)
    for m in modules:
        config = Text(describe_spec(m.spec))
        for note in m.notes:
            config.append(f"\n{note}", style="dim")
        table.add_row(Text(m.display_name), config, f"{m.spec.parameter_count():,}")
    console.print(table)
    n = len(modules)
    console.print(f"{n} LSTM module{'s' if n != 1 else ''} found."
                  + (" Pick one with --module NAME for run." if n > 1 else ""))
    if single_layers:
        console.print(Text("Each layer of a stack also runs alone: --module "
                           + ", ".join(m.name for m in single_layers), style="dim"))


def _dims(names: list[str], shape: tuple[int, ...]) -> str:
    return "(" + ", ".join(f"{n}={d}" for n, d in zip(names, shape)) + ")"


def render_keras_shapes(console: Console, view: StateView, output_shape: list[int] | None,
                        return_sequences: tuple[bool, ...] = ()) -> None:
    """Shapes and the state/output relation in Keras's own terms: what ``layer(x, return_sequences=True,
    return_state=True)`` returns, (batch, units) per state."""
    spec = view.spec
    u = spec.hidden_size
    bi = spec.bidirectional
    returns = "[y, h_f, c_f, h_b, c_b]" if bi else "[y, h, c]"
    table = Table(box=None, show_header=False, pad_edge=False, padding=(0, 1))
    table.add_column(style="bold", overflow="fold")
    table.add_column(overflow="fold")
    table.add_column(style="dim", overflow="fold")
    if output_shape is not None:
        lead = ["time", "batch"] if view.layout == "time_major" else ["batch", "time"]
        table.add_row("y", _dims(lead + ["2*units" if bi else "units"], tuple(output_shape)),
                      f"{view.layer_name(spec.num_layers - 1)}, every step")
    for r in view.rows:
        for which, arr in (("h", view.h_n), ("c", view.c_n)):
            table.add_row(Text(view.state_label(r, which)), _dims(["batch", "units"], arr[r.index].shape),
                          "state after the last step" if which == "h" else "")
    console.print(Text("Shapes", style="bold underline"))
    console.print(Text(f"layer(x, return_sequences=True, return_state=True) returns {returns}:", style="dim"))
    console.print(table)
    notes = ["Each state is (batch, units): one row per sequence, whatever the number of steps."]
    if spec.go_backwards:
        notes.append("go_backwards=True: y comes back in processing order (y[:, t] is the state after reading "
                     "x[:, T-1-t]), so h == y[:, -1]; PyTorch's and ONNX's reverse outputs are in input order instead.")
    if bi:
        notes.append(f"Bidirectional concat: y[..., :{u}] is forward, y[..., {u}:] is backward re-reversed to input "
                     f"order, so h_f == y[:, -1, :{u}] and h_b == y[:, 0, {u}:].")
    if return_sequences and not return_sequences[-1]:
        notes.append(f"{view.layer_name(spec.num_layers - 1)} has return_sequences=False: Keras returns only y[:, -1]; "
                     "the whole y is shown here so the relation can be checked.")
    for n in notes:
        console.print(Padding(Text(n, style="dim"), (0, 0, 0, 2)))


def render_shapes(console: Console, view: StateView, output_shape: list[int] | None,
                  return_sequences: tuple[bool, ...] = ()) -> None:
    spec = view.spec
    if view.keras:
        render_keras_shapes(console, view, output_shape, return_sequences)
        return
    L, D, B = spec.num_layers, spec.num_directions, view.batch
    out_name = "proj" if spec.proj_size else "hidden"
    table = Table(box=None, show_header=False, pad_edge=False, padding=(0, 1))
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    table.add_column(style="dim", overflow="fold")
    if output_shape is not None:
        lead = ["time", "batch"] if view.layout == "time_major" else ["batch", "time"]
        table.add_row("output", _dims(lead + [f"{D}*{out_name}" if D > 1 else out_name], tuple(output_shape)),
                      "last layer, every step")
    table.add_row("h_n", _dims([f"{L}*{D}" if D > 1 else "layers", "batch", out_name], view.h_n.shape),
                  "every layer, last step")
    table.add_row("c_n", _dims([f"{L}*{D}" if D > 1 else "layers", "batch", "hidden"], view.c_n.shape),
                  "every layer, last step")
    console.print(Text("Shapes", style="bold underline"))
    console.print(table)
    if D > 1:
        notes = [f"h_n.view({L}, {D}, {B}, {spec.output_size}) is (layers, directions, batch, {out_name}); "
                 f"h_n[i] is layer i//{D}, direction i%{D} (0 forward, 1 backward)."]
    else:
        notes = ["h_n[i] is layer i; output is the last layer's h at every step."]
    if view.layout == "batch_first":
        notes.append("batch_first applies to output only: h_n and c_n are always (layers*directions, batch, ...).")
    if spec.proj_size:
        notes.append(f"proj_size={spec.proj_size}: h_n and output are {spec.proj_size} wide, "
                     f"c_n is hidden_size={spec.hidden_size} wide and never appears in output.")
    for n in notes:
        console.print(Padding(Text(n, style="dim"), (0, 0, 0, 2)))


def render_states(console: Console, view: StateView) -> None:
    table = Table(title="Final states per layer and direction", box=box.SIMPLE_HEAD, pad_edge=False,
                  title_justify="left", title_style="bold")
    for name, justify in (("layer", "right"), ("dir", "left"), ("i", "right"), ("", "left"),
                          ("mean", "right"), ("std", "right"), ("min", "right"), ("max", "right"), ("norm", "right")):
        table.add_column(name, justify=justify)
    for r in view.rows:
        labels = (("h", r.h_n), ("c", r.c_n)) if view.keras else (("h_n", r.h_n), ("c_n", r.c_n))
        for j, (label, s) in enumerate(labels):
            cells = [str(r.layer), DIR_SHORT[r.direction], str(r.index)] if j == 0 else ["", "", ""]
            name = Text(label)
            if s.nonfinite:
                name.append(f" ({s.nonfinite} non-finite)", style=BAD_STYLE)
            table.add_row(*cells, name, _num(s.mean), _num(s.std), _num(s.min), _num(s.max), _num(s.norm),
                          end_section=(j == 1 and r is not view.rows[-1]))
    console.print(table)
    if view.keras:  # layer names can be long: the table keeps numbers readable with indexes
        names = ", ".join(f"{i} = {view.layer_name(i)}" for i in range(view.spec.num_layers))
        console.print(Padding(Text(f"layer {names}", style="dim"), (0, 0, 0, 2)))


def render_checks(console: Console, view: StateView, hint: str | None) -> None:
    by_key = {(c.layer, c.direction): c for c in view.checks}
    title = "Where each h lives in y" if view.keras else "Where each h_n slice lives in output"
    table = Table(title=title, box=box.SIMPLE_HEAD, pad_edge=False, title_justify="left", title_style="bold")
    for name, justify in (("layer", "right"), ("dir", "left"), ("h" if view.keras else "h_n", "left"),
                          ("y position" if view.keras else "output position", "left"),
                          ("max |diff|", "right"), ("check", "left")):
        table.add_column(name, justify=justify, overflow="fold", no_wrap=(name == "output position"))
    for r in view.rows:
        c = by_key.get((r.layer, r.direction))
        sl = Text(view.state_label(r, "h"))
        layer = str(r.layer)
        if c is None:
            table.add_row(layer, DIR_SHORT[r.direction], sl, Text(f"not in {view.output_name}", style="dim"),
                          Text("-", style="dim"), Text("-", style="dim"))
            continue
        mark = Text("ok", style=OK_STYLE) if c.ok else Text("MISMATCH", style=BAD_STYLE)
        table.add_row(layer, DIR_SHORT[r.direction], sl, Text(view.output_position(r.direction, layer=r.layer)), _num(c.max_abs_diff, ".1e"), mark)
    console.print(table)
    notes = []
    if view.checks and len(set(view.last_steps.tolist())) > 1:
        notes.append(f"len[b]-1 = {view.last_steps.tolist()}: each sequence's own last step.")
    if len(view.checks) < len(view.rows) and hint:
        notes.append(hint.replace("output holds", "y holds") if view.keras else hint)
    for n in notes:
        console.print(Padding(Text(n, style="dim"), (0, 0, 0, 2)))


def render_values(console: Console, view: StateView) -> None:
    if not view.values:
        return
    b = view.value_batch
    for v in view.values:
        layer = view.layer_name(v.layer) if view.keras else v.layer
        table = Table(box=box.SIMPLE_HEAD, pad_edge=False, title_justify="left",
                      title=Text(f"layer {layer} {v.direction}, batch {b}", style="bold"))
        table.add_column("unit", justify="right")
        table.add_column(Text("h" if view.keras else "h_n"), justify="right")
        if v.output is not None:
            table.add_column(Text(v.output_position or view.output_name), justify="right")
        table.add_column(Text("c" if view.keras else "c_n"), justify="right")
        for k, u in enumerate(v.units):
            cells = [str(u), _num(v.h_n[k], ".7g")]
            if v.output is not None:
                cells.append(_num(v.output[k], ".7g"))
            cells.append(_num(v.c_n[k], ".7g"))
            table.add_row(*cells)
        console.print(table)


def render_verdict(console: Console, view: StateView) -> None:
    if not view.checks:
        return
    bad = [c for c in view.checks if not c.ok]
    if not bad:
        n = len(view.checks)
        what = "every checked h equals its place in y" if view.keras else "every checked h_n slice equals its place in output"
        console.print(Text(f"All {n} checks ok" if n > 1 else "1 check ok", style=OK_STYLE),
                      Text(f"(max |diff| <= 1e-6): {what}."))
    else:
        console.print(Text(f"{len(bad)} of {len(view.checks)} checks failed", style=BAD_STYLE),
                      Text("(max |diff| > 1e-6)."))


def render_view(console: Console, view: StateView, output_shape: list[int] | None,
                hint: str | None = "output holds the last layer only; --all-layers runs layer by layer and checks every layer.",
                return_sequences: tuple[bool, ...] = ()) -> None:
    console.print()
    render_shapes(console, view, output_shape, return_sequences)
    console.print()
    render_states(console, view)
    if view.checks or output_shape is not None:
        render_checks(console, view, hint)
    render_values(console, view)
    render_verdict(console, view)


def render_run_header(console: Console, *, checkpoint: str, fmt: str, module: LSTMModule, input_name: str,
                      layout: str, batch: int, time: int, features: int, dtype: str, lengths_text: str | None,
                      initial_state: str | None = None, chunk_size: int | None = None, engine: str | None = None,
                      notes: tuple[str, ...] = ()) -> None:
    lay = {"batch_first": "(batch, time, features), batch_first",
           "time_major": "(time, batch, features), --time-major",
           "single": "(time, features): one sequence, run as batch 1"}[layout]
    grid = Table(box=None, show_header=False, pad_edge=False, padding=(0, 1))
    grid.add_column(style="bold")
    grid.add_column(overflow="fold")
    grid.add_row("Module", Text.assemble(module.display_name, (f"  in {checkpoint} ({fmt})", "dim")))
    grid.add_row("", Text(describe_spec(module.spec)))
    for note in notes:
        grid.add_row("", Text(note, style="dim"))
    grid.add_row("Input", Text.assemble(input_name, (f"  batch {batch}, time {time}, features {features}", "")))
    ran = {"fused": " on nn.LSTM (fused)", "stepwise": " on the stepwise cell (nn.LSTM cannot run this cell)"}.get(engine or "", "")
    grid.add_row("", Text(f"read as {lay}; ran in {dtype}{ran}"))
    if chunk_size:
        chunks = -(-time // chunk_size)
        grid.add_row("", Text(f"streamed: {chunks:,} chunks of {chunk_size:,} steps, (h, c) carried across them"))
    if lengths_text:
        grid.add_row("Lengths", Text(lengths_text))
    if initial_state:
        grid.add_row("Seeded", Text(f"h0, c0 from {initial_state}"))
    console.print(grid)


def render_run(console: Console, outcome) -> None:
    """The whole ``run`` report for a :class:`lstmscope.runner.RunOutcome`."""
    seqs, view = outcome.sequences, outcome.view
    lengths_text = None
    if seqs.lengths is not None:
        lengths_text = f"{seqs.lengths.tolist()} from {seqs.lengths_source}: packed batch, enforce_sorted=False"
    render_run_header(
        console, checkpoint=outcome.checkpoint.path.name, fmt=outcome.checkpoint.format, module=outcome.module,
        input_name=seqs.display_name, layout=seqs.layout, batch=seqs.batch, time=seqs.time,
        features=seqs.features, dtype=outcome.result.dtype, lengths_text=lengths_text,
        initial_state=outcome.initial_state_path, chunk_size=outcome.chunk_size, engine=outcome.engine,
        notes=outcome.module.notes,
    )
    render_view(console, view, view.output_shape(outcome.output_width), return_sequences=outcome.module.return_sequences)


def render_export(console: Console, outcome, path, meta: dict, size: int) -> None:
    """The short summary ``export-state`` prints: norms per layer/direction and where the file went."""
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, title_justify="left", title_style="bold",
                  title=f"Snapshot of module {outcome.module.display_name}")
    keras = outcome.view.keras
    for name in ("layer", "dir", "i", "norm h" if keras else "norm h_n", "norm c" if keras else "norm c_n"):
        table.add_column(name, justify="left" if name == "dir" else "right")
    for r in outcome.view.rows:
        table.add_row(str(r.layer), DIR_SHORT[r.direction], str(r.index), _num(r.h_n.norm), _num(r.c_n.norm))
    console.print(table)
    from lstmscope.snapshot import state_layout

    spec = outcome.module.spec
    held = state_layout(spec, outcome.sequences.batch, "float32", meta.get("layout", "torch"))
    listed = ", ".join(f"{k} {shape}" for k, (_, shape) in held.items()) if len(held) <= 4 else \
        f"{len(held)} tensors ({', '.join(list(held)[:2])}, ...), each {next(iter(held.values()))[1]}"
    console.print(Text.assemble(("Wrote ", "bold"), str(path), f"  ({size:,} bytes; {listed})"))
    render_verdict(console, outcome.view)


def render_state(console: Console, state, view: StateView) -> None:
    """``show-state``: metadata, named shapes and the per-layer/direction table."""
    grid = Table(box=None, show_header=False, pad_edge=False, padding=(0, 1))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column(overflow="fold")
    grid.add_row("State", Text.assemble(str(state.path), (f"  ({state.kind})", "dim")))
    m = state.meta or {}
    if m:
        if view.keras:  # the module's spec is in the metadata: say it as inspect does, in Keras's terms
            spec_line = f"{describe_spec(view.spec)}; batch {m['batch_size']}, ran in {m['dtype']}"
        else:
            spec_line = (f"{m['num_layers']} layer{'s' if m['num_layers'] != 1 else ''} x {m['num_directions']} "
                         f"direction{'s' if m['num_directions'] != 1 else ''}, hidden {m['hidden_size']}, "
                         f"proj {m['proj_size']}, input {m['input_size']}, batch {m['batch_size']}, {m['dtype']}")
        grid.add_row("Model", Text(f"{m['module'] or '(top level)'}: {spec_line}"))
        for k in sorted(k for k in m if k.endswith("sha256")):
            grid.add_row("", Text(f"{k}: {m[k][:16] + '...' if m[k] else '-'}", style="dim"))
        grid.add_row("", Text(f"lstmscope {m.get('lstmscope_version')}, format {m.get('format_version')}", style="dim"))
    if state.meta is None:
        grid.add_row("", Text("no lstmscope metadata: shapes only (--num-directions tells directions apart)", style="dim"))
    console.print(grid)
    width = state.output.shape[-1] if state.output is not None else None
    render_view(console, view, view.output_shape(width) if width is not None else None,
                hint="output holds the last layer only; earlier layers cannot be checked from a snapshot.")


def render_diff(console: Console, res) -> None:
    console.print(Text.assemble(("A ", "bold"), res.a, ("   B (reference) ", "bold"), res.b))
    console.print(Text(f"pass when |a - b| <= atol + rtol * |b|, atol={res.atol:g}, rtol={res.rtol:g}"
                       + (", NaN == NaN" if res.equal_nan else ""), style="dim"))
    for kind, fields in (("architecture", res.architecture), ("provenance", res.provenance)):
        for f, (va, vb) in fields.items():
            style = BAD_STYLE if kind == "architecture" else "dim"
            short = ["-" if v is None else v[:12] + "..." if f.endswith("sha256") and isinstance(v, str) else v
                     for v in (va, vb)]
            console.print(Text(f"{kind} differs: {f}: {short[0]} (A) vs {short[1]} (B)", style=style))
    if res.kind == "trace":
        _render_trace_diff(console, res)
        return
    if not res.comparable:
        console.print(Text("Not comparable: the two states come from differently shaped LSTMs or batches.", style=BAD_STYLE))
        return
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
    for name, justify in (("tensor", "left"), ("shape", "left"), ("max |diff|", "right"), ("at", "left"),
                          ("max rel", "right"), ("mismatched", "right"), ("cosine", "right"), ("", "left")):
        table.add_column(name, justify=justify, overflow="fold", min_width=4 if name else None)
    for r in res.rows:
        name = r.tensor if r.layer is None else f"{r.tensor} {r.layer} {DIR_SHORT[r.direction]}"
        mark = Text("PASS", style=OK_STYLE) if r.passed else Text("FAIL", style=BAD_STYLE)
        if r.shape_b is not None:
            table.add_row(Text(name), Text(f"{tuple(r.shape)} vs {tuple(r.shape_b)}"), "-", "", "-", "-", "-", mark)
            continue
        at = "(" + ",".join(str(i) for i in r.max_abs_diff_at) + ")" if r.max_abs_diff_at else ""
        table.add_row(Text(name), "x".join(str(d) for d in r.shape), _num(r.max_abs_diff, ".2e"), at,
                      _num(r.max_rel_diff, ".2e"), f"{r.mismatched}/{r.total} ({r.mismatched_pct:.3g}%)",
                      _num(r.cosine, ".6f") if r.cosine == r.cosine else Text("-", style="dim"), mark)
    console.print(table)
    for side, names in (("A", res.only_in_a), ("B", res.only_in_b)):
        if names:
            console.print(Text(f"only in {side}: {', '.join(names)}", style=BAD_STYLE))
    if res.equal:
        console.print(Text("States match within tolerance.", style=OK_STYLE))
    else:
        bad = sum(not r.passed for r in res.rows)
        console.print(Text(f"States differ: {bad} of {len(res.rows)} rows fail"
                           + (", tensors missing on one side" if res.only_in_a or res.only_in_b else "") + ".",
                           style=BAD_STYLE))


SPARK = "▁▂▃▄▅▆▇█"  # per-step profile levels, low to high
SPARK_ASCII = ".:-=+*#@"  # the same where the console cannot print Unicode


def _render_trace_diff(console: Console, res) -> None:
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
    console.print(table)
    console.print(Padding(Text("at: (sequence, step, unit) of the max |diff|; 1st over: the first step with an "
                               "element over tolerance; % over: elements over it", style="dim"), (0, 0, 0, 2)))
    names = {r.layer: r.tensor.split("/")[0] for r in res.rows}
    if any(n != f"layer{i}" for i, n in names.items()):
        console.print(Padding(Text("layer " + ", ".join(f"{i} = {n}" for i, n in sorted(names.items())),
                                   style="dim"), (0, 0, 0, 2)))
    _render_step_profile(console, res.rows, res.atol)
    for side, names_ in (("A", res.only_in_a), ("B", res.only_in_b)):
        if names_:
            console.print(Text(f"only in {side}: {', '.join(names_)}", style=BAD_STYLE))
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
    per = -(-time // max(console.width - lw - 1, 8))  # steps a column
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


class progress_bar:
    """A context manager yielding ``progress(done, total)`` for streamed runs. The bar appears on
    stderr only once a run has taken about a second, and is cleared when it ends."""

    DELAY = 1.0  # seconds before the bar appears

    def __enter__(self):
        import os
        import time

        self.delay = float(os.environ.get("LSTMSCOPE_PROGRESS_DELAY", self.DELAY))
        self._clock = time.monotonic
        self._start = self._clock()
        self._progress = None
        self._task = None
        return self.update

    def update(self, done: int, total: int) -> None:
        if self._progress is None:
            if self._clock() - self._start < self.delay:
                return
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self._progress = Progress(TextColumn("steps"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                                      console=Console(stderr=True), transient=True)
            self._progress.start()
            self._task = self._progress.add_task("run", total=total)
        self._progress.update(self._task, completed=done, total=total)

    def __exit__(self, *exc) -> None:
        if self._progress is not None:
            self._progress.stop()


def render_trace(console: Console, outcome, size: int | None) -> None:
    """``trace``: what was written (per quantity, how many tensors of which shape) and the summary figures
    per layer, direction and quantity, with one line per figure saying what it means. ``size`` None: the
    trace was not kept (no -o)."""
    from lstmscope.tracestats import FIGURE_NOTES

    meta, layout, stats = outcome.meta, outcome.layout, outcome.summary
    padding = meta["padding"] if outcome.sequences.lengths is not None else "no padding"
    how = (f"module {outcome.module.display_name}, {meta['dtype']}, {meta['time_order']}-time order, {padding}"
           + (f", streamed in chunks of {outcome.chunk_size:,} steps" if outcome.chunk_size else ""))
    if size is None:
        console.print(Text.assemble(("Traced ", "bold"), f"{outcome.sequences.display_name} ({how}); "
                                    "not kept: give -o FILE to keep every step"))
    else:
        console.print(Text.assemble(("Wrote ", "bold"), str(outcome.path), f"  ({size:,} bytes; {how})"))
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    for col in ("quantity", "tensors", "shape (batch, time, width)", "example name"):
        table.add_column(col, overflow="fold")
    for q in meta["quantities"]:
        names = sorted(n for n in layout if n.endswith(f"/{q}"))
        shapes = sorted({layout[n][1] for n in names})
        table.add_row(q, str(len(names)), Text(", ".join(str(s) for s in shapes)), Text(names[0] if names else ""))
    console.print(table)
    if stats is None:
        return
    names = outcome.module.spec.names if outcome.module.spec.framework == "keras" else ()
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
    console.print(summary)
    mem = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    for col, justify in (("layer", "right"), ("dir", "left"), ("forget mean", "right"), ("memory", "right"),
                         ("max |c|", "right"), ("at (seq, step, unit)", "left")):
        mem.add_column(col, justify=justify)
    for d in stats.directions:
        memory = Text("-", style="dim") if d.memory_length is None else Text(
            "inf" if d.memory_length == float("inf") else f"{d.memory_length:.3g} steps")
        at = "" if d.max_abs_c_at is None else "(" + ", ".join(str(v) for v in d.max_abs_c_at) + ")"
        mem.add_row(str(d.layer), DIR_SHORT[d.direction], _num(d.forget_mean), memory, _num(d.max_abs_c), at)
    console.print(mem)
    if names:
        console.print(Padding(Text("layer " + ", ".join(f"{i} = {n}" for i, n in enumerate(names)), style="dim"),
                              (0, 0, 0, 2)))
    nonfinite = any(r.non_finite for r in stats.rows)
    for figure, meaning in FIGURE_NOTES:
        if figure == "values" or (figure == "non-finite" and not nonfinite):
            continue  # not in the tables above
        console.print(Padding(Text(f"{figure}: {meaning}", style="dim"), (0, 0, 0, 2)))
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
    return max(1, console.width - label - 2), HEATMAP_ROWS


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
    room = console.width - label_w - 2  # columns available to the labels
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
        if line and len(line) + len(sep) + len(entry) > console.width:
            console.print(Text(line, style=style), overflow="fold")
            line = ""
        line = f"{line}{sep}{entry}" if line else entry
    console.print(Text(line, style=style), overflow="fold")


def render_png_written(console: Console, result) -> None:
    """``--png``: what was written (plot.PngResult)."""
    console.print(Text.assemble(("Wrote ", "bold"), str(result.path),
                                f"  ({result.width}x{result.height} pixels: {result.what})"))
