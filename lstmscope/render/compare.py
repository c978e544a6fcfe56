"""Rich rendering of ``compare``: what sides A and B were, then diff-states' table (and, with --per-step,
the per-step table and profile of a trace diff). Takes a Console and a finished CompareResult."""

from __future__ import annotations

from rich.console import Console
from rich.text import Text

from lstmscope.render import BAD_STYLE, OK_STYLE, render_diff
from lstmscope.render.console import print_note


def _side(console: Console, label: str, side, reference: bool) -> None:
    print_note(console, Text.assemble((f"{label}{' (reference)' if reference else ''}: ", "bold"), side.path), indent=0)
    how = "onnxruntime, each LSTM node alone" if side.runtime == "onnxruntime" else f"lstmscope, {side.engine} engine"
    print_note(console, f"module {side.module or '(top level)'}, {side.format}; {how}, {side.dtype}, {side.device}",
               indent=4)


def render_compare(console: Console, res) -> None:
    _side(console, "A", res.a, False)
    _side(console, "B", res.b, True)
    if res.input:
        i = res.input
        lens = "" if i["lengths"] is None else ", lengths " + ",".join(str(v) for v in i["lengths"][:8]) + \
            ("..." if len(i["lengths"]) > 8 else "")
        console.print(Text(f"input {i['path']}: {i['batch']} x {i['time']:,} steps x {i['features']} features{lens}",
                           style="dim"))
    diff = res.diff
    render_diff(console, diff, sides=False)  # the sides are described above
    if not diff.comparable:
        console.print(Text("The two modules have different shapes: nothing was run.", style=BAD_STYLE))
    if res.steps is not None:
        from lstmscope.render.trace import render_trace_diff

        console.print()
        what = "h and c" if any(r.quantity == "c" for r in res.steps.rows) else "h"
        console.print(Text(f"Per step ({what} of every layer and direction)", style="bold"))
        render_trace_diff(console, res.steps)
    if res.steps is not None and diff.comparable:
        if res.equal:
            console.print(Text("Same within tolerance.", style=OK_STYLE))
        else:
            where = [w for w, ok in (("final states or outputs", res.diff.equal),
                                     ("steps", res.steps is None or res.steps.equal)) if not ok]
            console.print(Text(f"The sides differ ({' and '.join(where)}).", style=BAD_STYLE))
