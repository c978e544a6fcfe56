"""Rich rendering. Takes a Console and finished results; computes nothing.

This module renders the state commands (inspect, run, export-state, show-state, diff-states);
``lstmscope.render.trace`` renders traces (summary, heatmaps, trace diffs) and is imported only when one is
shown. In tables colour marks ok / mismatch only (heatmaps use it for values). Every cell that carries a name
or an index expression is a ``Text`` so that brackets (``output[b, 0, 16:32]``) are never read as markup.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from lstmscope.render.console import print_note, print_table
from lstmscope.fileio import given, shown_name

from lstmscope.report import DIRECTIONS, StateView
from lstmscope.readers.base import LSTMModule
from lstmscope.spec import LSTMSpec

if TYPE_CHECKING:  # the typed results the core builds; imported for annotations only
    from lstmscope.api import InspectResult
    from lstmscope.statediff import DiffResult
    from lstmscope.runner import RunOutcome
    from lstmscope.snapshot import ImportResult, StateFile

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


def render_inspect_result(console: Console, res: "InspectResult") -> None:
    """``inspect``: an lstmscope.api.InspectResult."""
    res._render(console)


def render_import(console: Console, res: "ImportResult") -> None:
    """``import-state``: what was written (an lstmscope.snapshot.ImportResult), as plain text (never markup)."""
    held = ", ".join(f"{k} {shape}" for k, shape in res.tensors.items())
    print_note(console, Text.assemble(("Wrote ", "bold"), str(res.path),
                                      f" from {res.source} ({res.source_kind}): {held}, module {res.module}"), indent=0)


def token_lines(m: LSTMModule, candidates: list[str] = ()) -> list[str]:
    """What inspect says of a module's token input: its embedding and mask, or the tensors --embedding may name."""
    out = []
    if m.embedding is not None:
        out.append(f"token ids go through {m.embedding.describe()}")
    elif candidates:
        from lstmscope.tokens import named_like_embedding

        named = named_like_embedding(list(candidates))
        pick = f"; token ids use {named[0]} unless --embedding says" if len(named) == 1 else ""
        out.append(f"embedding candidates (--embedding KEY): {', '.join(candidates[:6])}"
                   + (f" and {len(candidates) - 6} more" if len(candidates) > 6 else "") + pick)
    if m.mask is not None:
        out.append(f"masked by {m.mask.source}: {m.mask.describe()}")
    return out


def render_inspect(console: Console, path: str, fmt: str, modules: list[LSTMModule], *,
                   stubbed_globals: list[str] = (), refused_calls: list[str] = (),
                   single_layers: list[LSTMModule] = (), version: str | None = None,
                   candidates: dict[str, list[str]] | None = None, notes: list[str] = ()) -> None:
    print_note(console, Text.assemble(("Checkpoint ", "bold"), path, f"  ({fmt}{f', {version}' if version else ''})"),
               indent=0)
    if stubbed_globals or refused_calls:
        console.print(Text("read without running code" + (f": {', '.join(stubbed_globals)}" if stubbed_globals else "")))
    for note in notes:  # facts about the file: what a reader left unread, a custom model class, ...
        console.print(Text(note, style="dim"))
    if refused_calls:
        console.print(Text(f"refused to call: {', '.join(refused_calls)} (the file asked to run code; it was not run)",
                           style=BAD_STYLE))
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    longest = max([len(m.display_name) for m in modules] + [6])
    table.add_column("module", overflow="fold", min_width=min(longest, 32))
    table.add_column("configuration", overflow="fold")
    table.add_column("params", justify="right", no_wrap=True)
    for m in modules:
        config = Text(describe_spec(m.spec))
        for line in token_lines(m, (candidates or {}).get(m.name, [])):
            config.append(f"\n{line}")
        table.add_row(Text(m.display_name), config, f"{m.spec.parameter_count():,}")
    print_table(console, table)
    n = len(modules)
    console.print(f"{n} LSTM module{'s' if n != 1 else ''} found."
                  + (" Pick one with --module NAME for run." if n > 1 else ""))
    for m in modules:  # a module's notes, at the console's width (node names kept whole)
        for note in m.notes:
            print_note(console, note if n == 1 else f"{m.display_name}: {note}", indent=0)
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
                          ("state after the last valid step" if view.masked else "state after the last step") if which == "h" else "")
    console.print(Text("Shapes", style="bold underline"))
    console.print(Text(f"layer(x, return_sequences=True, return_state=True) returns {returns}:", style="dim"))
    print_table(console, table)
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
        print_note(console, n)


def _dir(view: StateView, direction: str) -> str:
    """fwd / bwd, or rev for an ONNX reverse node (run as go_backwards: one direction, read last step first)."""
    return "rev" if view.onnx and view.spec.go_backwards else DIR_SHORT[direction]


def _hc(view: StateView) -> tuple[str, str]:
    """What the framework calls the final states: h_n/c_n (PyTorch), h/c (Keras), Y_h/Y_c (ONNX)."""
    return ("h", "c") if view.keras else ("Y_h", "Y_c") if view.onnx else ("h_n", "c_n")


def render_onnx_shapes(console: Console, view: StateView, output_shape: list[int] | None) -> None:
    """Shapes and the state/output relation in ONNX's terms: what each LSTM node returns, Y [T, D, B, H] and
    Y_h, Y_c [D, B, H] (batch-first with layout 1), Y in input order for every direction."""
    spec = view.spec
    d, b, h = spec.num_directions, view.batch, spec.output_size
    lay1 = view.graph_layout == 1
    table = Table(box=None, show_header=False, pad_edge=False, padding=(0, 1))
    table.add_column(style="bold", overflow="fold")
    table.add_column(overflow="fold")
    table.add_column(style="dim", overflow="fold")
    many = spec.num_layers > 1
    for layer in range(spec.num_layers):
        node = view.layer_name(layer)
        pre = f"{node} " if many else ""
        if output_shape is not None:
            t = view.time
            y = (["B", "T", "D", "H"], (b, t, d, h)) if lay1 else (["T", "D", "B", "H"], (t, d, b, h))
            table.add_row(Text(pre + "Y"), _dims(*y), f"{node}, every step, input order")
        st = (["B", "D", "H"], (b, d, h)) if lay1 else (["D", "B", "H"], (d, b, h))
        table.add_row(Text(pre + "Y_h"), _dims(*st), f"{node}, after each direction's last step")
        table.add_row(Text(pre + "Y_c"), _dims(*st), "")
    console.print(Text("Shapes", style="bold underline"))
    console.print(Text("each LSTM node returns Y, Y_h, Y_c:", style="dim"))
    print_table(console, table)
    notes = ["Y is in input order for every direction: Y_h[0] == Y[len[b]-1, 0, b, :] (forward)"
             + (", Y_h[1] == Y[0, 1, b, :] (backward)." if spec.bidirectional else ".")]
    if spec.go_backwards:
        notes = ["direction reverse: Y is in input order (unlike Keras's go_backwards), so Y_h == Y[0, 0, b, :], the "
                 "state after reading x[0]; lstmscope runs the node as go_backwards and reverses its output per "
                 "sequence (Y[t] = output[len-1-t])."]
    if len(set(view.last_steps.tolist())) > 1:
        notes.append("With sequence_lens, Y is zero past each length.")
    if many:
        notes.append(f"h_n[l*{d} + d] (lstmscope, PyTorch) is Y_h[d] of node l." if d > 1 else
                     "h_n[l] (lstmscope, PyTorch) is Y_h[0] of node l.")
    if lay1:
        notes.append("layout 1: the graph keeps X, Y, Y_h and Y_c batch-first.")
    for n in notes:
        print_note(console, n)


def render_shapes(console: Console, view: StateView, output_shape: list[int] | None,
                  return_sequences: tuple[bool, ...] = ()) -> None:
    spec = view.spec
    if view.keras:
        render_keras_shapes(console, view, output_shape, return_sequences)
        return
    if view.onnx:
        render_onnx_shapes(console, view, output_shape)
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
    print_table(console, table)
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
        print_note(console, n)


def render_states(console: Console, view: StateView) -> None:
    table = Table(title="Final states per layer and direction", box=box.SIMPLE_HEAD, pad_edge=False,
                  title_justify="left", title_style="bold")
    for name, justify in (("layer", "right"), ("dir", "left"), ("i", "right"), ("", "left"),
                          ("mean", "right"), ("std", "right"), ("min", "right"), ("max", "right"), ("norm", "right")):
        table.add_column(name, justify=justify)
    for r in view.rows:
        hn, cn = _hc(view)
        labels = ((hn, r.h_n), (cn, r.c_n))
        for j, (label, s) in enumerate(labels):
            cells = [str(r.layer), _dir(view, r.direction), str(r.index)] if j == 0 else ["", "", ""]
            name = Text(label)
            if s.nonfinite:
                name.append(f" ({s.nonfinite} non-finite)", style=BAD_STYLE)
            table.add_row(*cells, name, _num(s.mean), _num(s.std), _num(s.min), _num(s.max), _num(s.norm),
                          end_section=(j == 1 and r is not view.rows[-1]))
    print_table(console, table)
    if any(r.h_n.nonfinite or r.c_n.nonfinite for r in view.rows):
        print_note(console, "mean, std, min, max and norm are over the finite values of a slice; its "
                            "NaN/Inf values are counted next to its name")
        console.print()
    if view.keras or view.onnx:  # layer names can be long: the table keeps numbers readable with indexes
        names = ", ".join(f"{i} = {view.layer_name(i)}" for i in range(view.spec.num_layers))
        print_note(console, f"layer {names}")
        console.print()


def render_checks(console: Console, view: StateView, hint: str | None) -> None:
    by_key = {(c.layer, c.direction): c for c in view.checks}
    title = "Where each h lives in y" if view.keras else "Where each Y_h lives in Y" if view.onnx else \
        "Where each h_n slice lives in output"
    table = Table(title=title, box=box.SIMPLE_HEAD, pad_edge=False, title_justify="left", title_style="bold")
    for name, justify in (("layer", "right"), ("dir", "left"), (_hc(view)[0], "left"),
                          (f"{view.output_name} position" if view.keras or view.onnx else "output position", "left"),
                          ("max |diff|", "right"), ("check", "left")):
        table.add_column(name, justify=justify, overflow="fold", no_wrap=(name in ("output position", "Y position")))
    for r in view.rows:
        c = by_key.get((r.layer, r.direction))
        sl = Text(view.state_label(r, "h"))
        layer = str(r.layer)
        if c is None:
            table.add_row(layer, _dir(view, r.direction), sl, Text(f"not in {view.output_name}", style="dim"),
                          Text("-", style="dim"), Text("-", style="dim"))
            continue
        mark = Text("ok", style=OK_STYLE) if c.ok else Text("MISMATCH", style=BAD_STYLE)
        table.add_row(layer, _dir(view, r.direction), sl, Text(view.output_position(r.direction, layer=r.layer)), _num(c.max_abs_diff, ".1e"), mark)
    print_table(console, table)
    notes = []
    if view.checks and not view.masked and len(set(view.last_steps.tolist())) > 1:  # masked: render_mask_table
        notes.append(f"len[b]-1 = {view.last_steps.tolist()}: each sequence's own last step.")
    if len(view.checks) < len(view.rows) and hint:
        notes.append(hint.replace("output holds", f"{view.output_name} holds") if view.keras or view.onnx else hint)
    for n in notes:
        print_note(console, n)


MASK_ROWS = 16  # sequences listed in the per-sequence mask table; the rest are counted


def _runs(steps: np.ndarray) -> str:
    """Step indexes as ranges: [0, 1, 2, 5] -> "0-2, 5"."""
    if steps.size == 0:
        return "-"
    from lstmscope.arrays import consecutive_runs

    parts = [f"{int(steps[a])}-{int(steps[z - 1])}" if z - a > 1 else str(int(steps[a]))
             for a, z in consecutive_runs(steps)]
    return ", ".join(parts[:4]) + (f", ... ({len(parts) - 4} more runs)" if len(parts) > 4 else "")


def render_mask_table(console: Console, view: StateView) -> None:
    """Per sequence: the steps a mask skipped, and the output step each direction's final state equals."""
    if not view.masked or not view.checks:
        return
    last_layer = {c.direction: c for c in view.checks if c.layer == view.spec.num_layers - 1}
    table = Table(title="Per sequence: which output step holds h", box=box.SIMPLE_HEAD, pad_edge=False,
                  title_justify="left", title_style="bold")
    table.add_column("seq", justify="right")
    table.add_column("read", justify="right")
    if view.valid is not None:
        table.add_column("skipped steps", overflow="fold")
    dirs = [d for d in DIRECTIONS[:view.spec.num_directions] if d in last_layer]
    for d in dirs:
        table.add_column(f"{_hc(view)[0]}{'' if len(dirs) == 1 else ' ' + _dir(view, d)} equals", no_wrap=True)
    batch = view.batch
    counts = view.valid.sum(axis=1) if view.valid is not None else None
    for b in range(min(batch, MASK_ROWS)):
        cells = [str(b), "-" if counts is None else str(int(counts[b]))]
        if view.valid is not None:
            cells.append(_runs(np.flatnonzero(~view.valid[b])))
        for d in dirs:
            t = last_layer[d].output_time_index[b]
            cells.append("the initial state (all masked)" if t < 0 else
                         view.output_position(d, b, layer=view.spec.num_layers - 1))
        table.add_row(*cells)
    print_table(console, table)
    if batch > MASK_ROWS:
        print_note(console, f"... and {batch - MASK_ROWS} more sequences (--json lists them all)")


def render_values(console: Console, view: StateView) -> None:
    if not view.values:
        return
    b = view.value_batch
    console.print()  # apart from the notes above
    for v in view.values:
        layer = view.layer_name(v.layer) if view.keras or view.onnx else v.layer
        table = Table(box=box.SIMPLE_HEAD, pad_edge=False, title_justify="left",
                      title=Text(f"layer {layer} {v.direction}, batch {b}", style="bold"))
        table.add_column("unit", justify="right")
        table.add_column(Text(_hc(view)[0]), justify="right")
        if v.output is not None:
            table.add_column(Text(v.output_position or view.output_name), justify="right")
        table.add_column(Text(_hc(view)[1]), justify="right")
        for k, u in enumerate(v.units):
            cells = [str(u), _num(v.h_n[k], ".7g")]
            if v.output is not None:
                cells.append(_num(v.output[k], ".7g"))
            cells.append(_num(v.c_n[k], ".7g"))
            table.add_row(*cells)
        print_table(console, table)


def render_verdict(console: Console, view: StateView) -> None:
    if not view.checks:
        return
    bad = [c for c in view.checks if not c.ok]
    if not bad:
        n = len(view.checks)
        what = "every checked h equals its place in y" if view.keras else "every checked Y_h equals its place in Y" \
            if view.onnx else "every checked h_n slice equals its place in output"
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
    render_mask_table(console, view)
    render_values(console, view)
    render_verdict(console, view)


def render_run_header(console: Console, *, checkpoint: str, fmt: str, module: LSTMModule, input_name: str,
                      layout: str, batch: int, time: int, features: int, dtype: str, lengths_text: str | None,
                      initial_state: str | None = None, chunk_size: int | None = None, engine: str | None = None,
                      notes: tuple[str, ...] = (), embedding=None, mask=None) -> None:
    lay = {"batch_first": "(batch, time, features), batch_first",
           "time_major": "(time, batch, features), --time-major",
           "single": "(time, features): one sequence, run as batch 1"}[layout]
    if embedding is not None:
        lay = {"batch_first": "token ids (batch, time)", "time_major": "token ids (time, batch), --time-major",
               "single": "token ids (time,): one sequence, run as batch 1"}[layout]
    grid = Table(box=None, show_header=False, pad_edge=False, padding=(0, 1))
    grid.add_column(style="bold")
    grid.add_column(overflow="fold")
    grid.add_row("Module", Text.assemble(module.display_name, (f"  in {checkpoint} ({fmt})", "dim")))
    grid.add_row("", Text(describe_spec(module.spec)))
    for note in notes:
        grid.add_row("", Text(note, style="dim"))
    what = f"token ids, embedded to {features} features" if embedding is not None else f"features {features}"
    grid.add_row("Input", Text.assemble(input_name, (f"  batch {batch}, time {time}, {what}", "")))
    ran = {"fused": " on nn.LSTM (fused)", "stepwise": " on the stepwise cell (nn.LSTM cannot run this cell)"}.get(engine or "", "")
    grid.add_row("", Text(f"read as {lay}; ran in {dtype}{ran}"))
    if embedding is not None:
        grid.add_row("Embedding", Text(f"{embedding.describe()}, from {embedding.source} ({embedding.how})"))
    if chunk_size:
        chunks = -(-time // chunk_size)
        grid.add_row("", Text(f"streamed: {chunks:,} chunks of {chunk_size:,} steps, (h, c) carried across them"))
    if lengths_text:
        grid.add_row("Lengths", Text(lengths_text))
    if mask is not None:
        grid.add_row("Mask", Text(mask.source))
        fill = ("the previous output again (zeros before the first)" if mask.fill == "repeat" else "zeros")
        grid.add_row("", Text(f"valid steps per sequence {mask.counts.tolist()}; skipped steps keep the state, "
                              f"and the output there is {fill}"))
    if initial_state:
        grid.add_row("Seeded", Text(f"h0, c0 from {initial_state}"))
    console.print(grid)


def render_run(console: Console, outcome: "RunOutcome") -> None:
    """The whole ``run`` report for a :class:`lstmscope.runner.RunOutcome`."""
    seqs, view = outcome.sequences, outcome.view
    lengths_text = None
    if seqs.lengths is not None:
        lengths_text = f"{seqs.lengths.tolist()} from {seqs.lengths_source}: packed batch, enforce_sorted=False"
    render_run_header(
        console, checkpoint=shown_name(outcome.checkpoint.path), fmt=outcome.checkpoint.format, module=outcome.module,
        input_name=seqs.display_name, layout=seqs.layout, batch=seqs.batch, time=seqs.time,
        features=seqs.features, dtype=outcome.result.dtype, lengths_text=lengths_text,
        initial_state=outcome.initial_state_path, chunk_size=outcome.chunk_size, engine=outcome.engine,
        notes=outcome.module.notes, embedding=seqs.embedding_ref, mask=outcome.mask,
    )
    render_view(console, view, view.output_shape(outcome.output_width), return_sequences=outcome.module.return_sequences)


def render_export(console: Console, outcome: "RunOutcome", path, meta: dict, size: int) -> None:
    """The short summary ``export-state`` prints: norms per layer/direction and where the file went."""
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, title_justify="left", title_style="bold",
                  title=f"Snapshot of module {outcome.module.display_name}")
    hn, cn = _hc(outcome.view)
    for name in ("layer", "dir", "i", f"norm {hn}", f"norm {cn}"):
        table.add_column(name, justify="left" if name == "dir" else "right")
    for r in outcome.view.rows:
        table.add_row(str(r.layer), _dir(outcome.view, r.direction), str(r.index), _num(r.h_n.norm), _num(r.c_n.norm))
    print_table(console, table)
    held = outcome.written  # every tensor written, the output and lengths too
    states = {k: v for k, v in held.items() if k not in ("output", "lengths")}
    extra = [f"{k} {held[k]}" for k in ("output", "lengths") if k in held]
    listed = ", ".join([f"{k} {shape}" for k, shape in states.items()] + extra) if len(states) <= 4 else \
        ", ".join([f"{len(states)} state tensors ({', '.join(list(states)[:2])}, ...), each "
                   f"{next(iter(states.values()))}"] + extra)
    print_note(console, Text.assemble(("Wrote ", "bold"), str(path), f"  ({size:,} bytes; {listed})"), indent=0)
    render_verdict(console, outcome.view)


def render_state(console: Console, state: "StateFile", view: StateView) -> None:
    """``show-state``: metadata, named shapes and the per-layer/direction table."""
    grid = Table(box=None, show_header=False, pad_edge=False, padding=(0, 1))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column(overflow="fold")
    grid.add_row("State", Text.assemble(given(state.path), (f"  ({state.kind})", "dim")))
    m = state.meta or {}
    if m:
        if view.keras or view.onnx:  # the module's spec is in the metadata: say it as inspect does, in its terms
            spec_line = f"{describe_spec(view.spec)}; batch {m['batch_size']}, ran in {m['dtype']}"
        else:
            spec_line = (f"{m['num_layers']} layer{'s' if m['num_layers'] != 1 else ''} x {m['num_directions']} "
                         f"direction{'s' if m['num_directions'] != 1 else ''}, hidden {m['hidden_size']}, "
                         f"proj {m['proj_size']}, input {m['input_size']}, batch {m['batch_size']}, ran in "
                         f"{m['dtype']}")
        grid.add_row("Model", Text(f"{m['module'] or '(top level)'}: {spec_line}"))
        for k in sorted(k for k in m if k.endswith("sha256")):
            grid.add_row("", Text(f"{k}: {m[k][:16] + '...' if m[k] else '-'}", style="dim"))
        grid.add_row("", Text(f"lstmscope {m.get('lstmscope_version')}, format {m.get('format_version')}", style="dim"))
    if state.meta is None:
        grid.add_row("", Text("no lstmscope metadata: shapes only (--num-directions tells directions apart)", style="dim"))
    stored = str(state.h_n.dtype)
    grid.add_row("Stored", Text(f"{stored} tensors: feed them to an nn.LSTM of that dtype (h0.to(lstm.weight_ih_l0"
                                f".dtype) for another; export-state --state-dtype writes another)"
                                if stored != "float32" else f"{stored} tensors"))
    console.print(grid)
    width = state.output.shape[-1] if state.output is not None else None
    render_view(console, view, view.output_shape(width) if width is not None else None,
                hint="output holds the last layer only; earlier layers cannot be checked from a snapshot.")


def render_only_in(console: Console, res: "DiffResult") -> None:
    """The tensors a diff found in one file only (snapshots and traces alike)."""
    for side, names in (("A", res.only_in_a), ("B", res.only_in_b)):
        if names:
            console.print(Text(f"only in {side}: {', '.join(names)}", style=BAD_STYLE))


def _provenance_value(field: str, v) -> str:
    if v is None:
        return "-"
    if field == "module" and v == "":
        return "(top level)"
    if field.endswith("sha256") and isinstance(v, str):
        return v[:12] + "..."
    return str(v)


def render_diff(console: Console, res: "DiffResult", *, sides: bool = True) -> None:
    """diff-states' report. ``sides=False`` leaves out the line naming A and B (compare describes them above)."""
    if sides:
        console.print(Text.assemble(("A ", "bold"), res.a, ("   B (reference) ", "bold"), res.b))
    console.print(Text(f"pass when |a - b| <= atol + rtol * |b|, atol={res.atol:g}, rtol={res.rtol:g}"
                       + (", NaN == NaN" if res.equal_nan else ""), style="dim"))
    for kind, fields in (("architecture", res.architecture), ("provenance", res.provenance)):
        for side, label in ((0, "A"), (1, "B (reference)")):
            none = [f for f, v in fields.items() if v[side] is None]
            if kind == "provenance" and len(none) > 2 and len(none) == len(fields):  # a file without metadata
                console.print(Text(f"provenance: {label} records none of {', '.join(none)} (a state file without "
                                   "lstmscope metadata)", style="dim"))
                fields = {}
        for f, (va, vb) in fields.items():
            style = BAD_STYLE if kind == "architecture" else "dim"
            short = [_provenance_value(f, v) for v in (va, vb)]
            console.print(Text(f"{kind} differs: {f}: {short[0]} (A) vs {short[1]} (B)", style=style))
    if res.kind == "trace":
        from lstmscope.render.trace import render_trace_diff

        render_trace_diff(console, res)
        return
    if not res.comparable:
        console.print(Text("Not comparable: the two states come from differently shaped LSTMs or batches.", style=BAD_STYLE))
        return
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
    for name, justify in (("tensor", "left"), ("shape", "left"), ("max |diff|", "right"), ("at", "left"),
                          ("max rel", "right"), ("mismatched", "right"), ("cosine", "right"), ("", "left")):
        table.add_column(name, justify=justify, overflow="fold", min_width=4 if name else None)
    for r in res.rows:
        name = r.stored_as or (r.tensor if r.layer is None else f"{r.tensor} {r.layer} {DIR_SHORT[r.direction]}")
        mark = Text("PASS", style=OK_STYLE) if r.passed else Text("FAIL", style=BAD_STYLE)
        if r.shape_b is not None:
            table.add_row(Text(name), Text(f"{tuple(r.shape)} vs {tuple(r.shape_b)}"), "-", "", "-", "-", "-", mark)
            continue
        at = "(" + ",".join(str(i) for i in r.max_abs_diff_at) + ")" if r.max_abs_diff_at else ""
        table.add_row(Text(name), "x".join(str(d) for d in r.shape), _num(r.max_abs_diff, ".2e"), at,
                      _num(r.max_rel_diff, ".2e"), f"{r.mismatched}/{r.total} ({r.mismatched_pct:.3g}%)",
                      _num(r.cosine, ".6f") if r.cosine == r.cosine else Text("-", style="dim"), mark)
    print_table(console, table)
    render_only_in(console, res)
    if res.equal:
        console.print(Text("States match within tolerance.", style=OK_STYLE))
    else:
        bad = sum(not r.passed for r in res.rows)
        console.print(Text(f"States differ: {bad} of {len(res.rows)} rows fail"
                           + (", tensors missing on one side" if res.only_in_a or res.only_in_b else "") + ".",
                           style=BAD_STYLE))


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

            # engines count every time step once per layer and direction (T x L x D in all)
            self._progress = Progress(TextColumn("steps x layers x directions"), BarColumn(), MofNCompleteColumn(),
                                      TimeRemainingColumn(),
                                      console=Console(stderr=True), transient=True)
            self._progress.start()
            self._task = self._progress.add_task("run", total=total)
        self._progress.update(self._task, completed=done, total=total)

    def __exit__(self, *exc) -> None:
        if self._progress is not None:
            self._progress.stop()
