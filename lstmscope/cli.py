"""The ``lstmscope`` command line: parse options, call the core, pick the renderer, map errors to exit codes.

Heavy modules (torch, the engine, Rich tables) are imported inside the commands, so ``--help``
and the torch-free commands start fast.
"""

import contextlib  # no `from __future__ import annotations`: Typer reads every command's annotations at start,
#                   and evaluating them from strings costs 10-30 ms a start
import functools
import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from lstmscope import __version__
from lstmscope.options import parse_span
from lstmscope.errors import (EXIT_BAD_INPUT, EXIT_DIFFERENT, EXIT_INTERNAL, EXIT_INTERRUPTED, EXIT_OK, LstmscopeError,
                              clean_message)


class _Command(typer.core.TyperCommand):
    """Usage lines as users write them: ``lstmscope run [OPTIONS] CHECKPOINT INPUT`` (Typer wraps required
    arguments in braces)."""

    def collect_usage_pieces(self, ctx) -> list[str]:
        return [p[1:-1] if p.startswith("{") and p.endswith("}") else p for p in super().collect_usage_pieces(ctx)]


app = typer.Typer(
    name="lstmscope",
    help="Look inside LSTM state: h_n and c_n against output, per layer and direction.\n\n"
    "Exit codes: 0 ok; 1 a check failed or states differ; 2 usage error or bad input; "
    "3 internal error (a bug); 130 interrupted.",
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
    pretty_exceptions_show_locals=False,
    no_args_is_help=True,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _stdout():
    from lstmscope.render.console import stdout_console

    return stdout_console()


def _emit(document, render_name: str, *render_args, json_out: bool, quiet: bool = False) -> None:
    """The one way results reach stdout: nothing (--quiet), one JSON document (``document()``), or the
    Rich renderer ``lstmscope.render.<render_name>`` (imported only then)."""
    if quiet:
        return
    if json_out:
        from lstmscope.jsonout import dumps

        sys.stdout.write(dumps(document()) + "\n")
        return
    from lstmscope import render

    getattr(render, render_name)(_stdout(), *render_args)


def say(line: str) -> None:
    """One line on stderr (an error, note or warning), a stream's temporary copy named as the user gave it."""
    from lstmscope.fileio import unspooled

    sys.stderr.write(unspooled(line) + "\n")
    sys.stderr.flush()


def fail(message: str, code: int = EXIT_BAD_INPUT) -> typer.Exit:
    """Print one ``Error: ...`` line on stderr and return the Exit to raise."""
    say(f"Error: {message}")
    return typer.Exit(code)


def guarded(fn):
    """Map core errors to ``Error: ...`` + exit code; anything else is a bug, reported in one line."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (typer.Exit, typer.Abort):
            raise
        except LstmscopeError as e:
            raise fail(clean_message(e.message), e.exit_code) from None
        except KeyboardInterrupt:
            raise fail("interrupted", EXIT_INTERRUPTED) from None
        except Exception as e:
            if os.environ.get("LSTMSCOPE_DEBUG"):
                raise
            raise fail(
                f"internal error ({type(e).__name__}: {clean_message(e)}). This is a bug in lstmscope; "
                "please report it with the command you ran (LSTMSCOPE_DEBUG=1 shows the traceback)",
                EXIT_INTERNAL,
            ) from None

    return wrapper


def _version(value: bool) -> None:
    if value:
        sys.stdout.write(f"lstmscope {__version__}\n")
        raise typer.Exit(EXIT_OK)


@app.callback()
def main(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Look inside LSTM state: h_n and c_n against output, per layer and direction.

    Exit codes: 0 ok, 1 a check failed or states differ, 2 usage error or bad input, 3 internal error, 130 interrupted.
    """


CheckpointArg = Annotated[Path, typer.Argument(metavar="CHECKPOINT", help="LSTM checkpoint: .pt/.pth/.bin/.ckpt (state_dict, wrapped dict, Lightning), .safetensors, Keras .keras/.h5/.weights.h5, or an ONNX model (.onnx).", show_default=False)]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON document on stdout instead of tables.")]
ActivationOpt = Annotated[Optional[str], typer.Option("--activation", help="Keras modules: the cell activation (Keras's name: tanh, relu, ...) instead of the file's; for weights-only files, which carry no config.", show_default=False)]
RecurrentActivationOpt = Annotated[Optional[str], typer.Option("--recurrent-activation", help="Keras modules: the gate activation (sigmoid, hard_sigmoid, ...) instead of the file's or the default taken from keras_version.", show_default=False)]
LayoutOpt = Annotated[Optional[str], typer.Option("--layout", help="How the snapshot stores h and c: torch (h_n, c_n: (layers*directions, batch, hidden)), keras (per layer <layer>/h, <layer>/c: (batch, units)) or onnx (the graph's own state inputs, named and shaped as the graph declares them, else <node>/initial_h, <node>/initial_c: (directions, batch, hidden)). Default: the module's framework.", show_default=False)]
ModuleOpt = Annotated[Optional[str], typer.Option("--module", "-m", help="The LSTM to use when the file holds several (see inspect): PyTorch key prefix, Keras layer name, a stack's a+b name, or one layer of a stack.", show_default=False)]


@app.command(cls=_Command, short_help="List the LSTMs in a checkpoint.")
@guarded
def inspect(checkpoint: CheckpointArg, json_out: JsonOpt = False) -> None:
    """List the LSTM modules in a checkpoint with their inferred configuration."""
    from lstmscope.api import inspect as do_inspect

    res = do_inspect(checkpoint)
    res.display_path = str(checkpoint)  # as the user wrote it (a pipe's, not its temporary copy)
    _emit(res.to_dict, "render_inspect_result", res, json_out=json_out)


InputArg = Annotated[Path, typer.Argument(metavar="INPUT", help="Input sequences: .npy, or .npz with the array (and optional 'lengths'). 2-D is (T, F); 3-D is (B, T, F).", show_default=False)]
EmbeddingOpt = Annotated[Optional[str], typer.Option("--embedding", help="Token-id input: the (vocab, input_size) tensor the ids are looked up in (see inspect's candidates). Keras and ONNX models name their own; a PyTorch file's only 2-D tensor of width input_size named like an embedding is taken without it.", show_default=False)]
MaskValueOpt = Annotated[Optional[float], typer.Option("--mask-value", help="Skip every step whose features all equal this value, as a Keras Masking layer does (the state carries through; the final state is the one after the last valid step), also for a model without a mask layer.", show_default=False)]
NoMaskOpt = Annotated[bool, typer.Option("--no-mask", help="Run every step of a masked model's input, padding included (what Keras would not do).")]
PaddingOpt = Annotated[str, typer.Option("--padding", help="Where --lengths' padding is: post (at the end; packed, as pack_padded_sequence) or pre (at the front: each sequence runs on its last len steps).")]
KeyOpt = Annotated[Optional[str], typer.Option("--key", help="Array name inside an .npz input.", show_default=False)]
LengthsOpt = Annotated[Optional[Path], typer.Option("--lengths", help="A .npy of per-sequence lengths: runs a packed batch (enforce_sorted=False).", show_default=False)]
TimeMajorOpt = Annotated[bool, typer.Option("--time-major", help="3-D input is (T, B, F) instead of (B, T, F).")]
DtypeOpt = Annotated[Optional[str], typer.Option("--dtype", help="Run in this dtype (float32, float64, float16, bfloat16); default: the checkpoint's.", show_default=False)]
AllLayersOpt = Annotated[bool, typer.Option("--all-layers", help="Run layer by layer so every layer's output exists and every layer is checked.")]
BatchIndexOpt = Annotated[Optional[int], typer.Option("--batch-index", "-b", help="Print the values of this sequence's h_n/c_n slices next to output.", show_default=False)]
UnitsOpt = Annotated[Optional[str], typer.Option("--units", help="Units to print with --batch-index, as START:STOP (default 0:8).", show_default=False)]
InitialStateOpt = Annotated[Optional[Path], typer.Option("--initial-state", help="Seed the run with this state (h0, c0): an lstmscope snapshot, or a safetensors/.npz with h_n/c_n (or h0/c0), or a torch file with an (h, c) tuple.", show_default=False)]
BroadcastOpt = Annotated[bool, typer.Option("--broadcast-state", help="Let a batch-1 initial state seed every sequence of a larger batch.")]
ForceOpt = Annotated[bool, typer.Option("--force", help="Overwrite the output file (-o) if it exists.")]
OutOpt = Annotated[Path, typer.Option("--output", "-o", help="Snapshot file to write (.safetensors).", show_default=False)]
NumDirsOpt = Annotated[Optional[int], typer.Option("--num-directions", help="For state files without lstmscope metadata: 2 splits h_n/c_n into forward/backward rows.", show_default=False)]


ChunkOpt = Annotated[Optional[int], typer.Option("--chunk-size", help="Stream the input this many time steps at a time, carrying (h, c) across chunks (flat memory; same result). Default: automatic, chunks of about 16 MiB once a whole run would pass 256 MiB; 0 never chunks.", show_default=False)]
ThreadsOpt = Annotated[Optional[int], typer.Option("--threads", help="torch CPU threads. Default: 1 for small models (where more threads only add overhead), else the cores no other process is running on (at most 8).", show_default=False, envvar="LSTMSCOPE_THREADS")]
DeviceOpt = Annotated[str, typer.Option("--device", help="Run on cpu, cuda or cuda:N. States are always reported from CPU copies.")]
TmpDirOpt = Annotated[Optional[Path], typer.Option("--tmp-dir", help="Where a streamed bidirectional run keeps each layer's output while the next layer reads it (removed afterwards). Default: $TMPDIR.", show_default=False)]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="Print no results and no progress; only the exit code (warnings still go to stderr).")]
HeatmapOpt = Annotated[Optional[str], typer.Option("--heatmap", help="Draw one quantity (h, c, i, f, g or o) of one layer, direction and sequence as units by steps under the summary, pooled to the terminal width.", show_default=False)]
LayerOpt = Annotated[Optional[str], typer.Option("--layer", help="Heatmap/PNG: the layer (an index, negative counts from the end, or a Keras layer name). Default: the last.", show_default=False)]
DirectionOpt = Annotated[Optional[str], typer.Option("--direction", help="Heatmap/PNG: forward or backward (or 0 or 1). Default: forward.", show_default=False)]
StepsOpt = Annotated[Optional[str], typer.Option("--steps", help="Heatmap/PNG: the steps to draw, as A:B (B exclusive). Default: all.", show_default=False)]
PngOpt = Annotated[Optional[Path], typer.Option("--png", help="Also write the heatmap (of h unless --heatmap says) and the gate saturation per layer as a PNG; needs matplotlib (pip install 'lstmscope[plot]'). --force overwrites it too.", show_default=False)]


def _notes(outcome) -> None:
    for note in outcome.notes:
        say(note)
    for warning in outcome.warnings:
        say(f"warning: {warning}")


def _run_options(params: dict, *, exclude: tuple[str, ...] = ()):
    """The RunOptions a command's parameters name (every RunOptions field among them, but ``exclude``), in the
    core's terms: ``--units`` parsed, ``--tmp-dir`` a string."""
    from lstmscope.runner import RunOptions

    opts = {k: v for k, v in params.items() if k in RunOptions.__dataclass_fields__ and k not in exclude}
    if opts.get("tmp_dir") is not None:
        opts["tmp_dir"] = str(opts["tmp_dir"])
    if "units" in opts:
        opts["units"] = parse_span(opts["units"], "--units")
    return RunOptions(**opts)


def _progress(enabled: bool):
    """A Rich progress bar on stderr, for terminals only; nothing is imported when it is off."""
    if not enabled or not sys.stderr.isatty():
        return contextlib.nullcontext(None)
    from lstmscope.render import progress_bar

    return progress_bar()


@app.command(cls=_Command, short_help="Run sequences; h_n/c_n against output.")
@guarded
def run(
    checkpoint: CheckpointArg,
    input: InputArg,
    module: ModuleOpt = None,
    key: KeyOpt = None,
    lengths: LengthsOpt = None,
    time_major: TimeMajorOpt = False,
    dtype: DtypeOpt = None,
    all_layers: AllLayersOpt = False,
    batch_index: BatchIndexOpt = None,
    units: UnitsOpt = None,
    initial_state: InitialStateOpt = None,
    broadcast_state: BroadcastOpt = False,
    chunk_size: ChunkOpt = None,
    threads: ThreadsOpt = None,
    device: DeviceOpt = "cpu",
    tmp_dir: TmpDirOpt = None,
    activation: ActivationOpt = None,
    recurrent_activation: RecurrentActivationOpt = None,
    embedding: EmbeddingOpt = None,
    mask_value: MaskValueOpt = None,
    no_mask: NoMaskOpt = False,
    padding: PaddingOpt = "post",
    quiet: QuietOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Run sequences through an LSTM and show every layer's and direction's h_n / c_n against output.

    Exits 1 when an h_n slice does not equal its place in output (max |diff| > 1e-6).
    """
    opts = _run_options(locals())
    from lstmscope.runner import execute_run

    with _progress(not (quiet or json_out)) as progress:
        outcome = execute_run(opts, progress=progress)
    _notes(outcome)
    from lstmscope.jsonout import run_document

    _emit(lambda: run_document(outcome), "render_run", outcome, json_out=json_out, quiet=quiet)
    if not outcome.view.all_ok:
        raise typer.Exit(EXIT_DIFFERENT)


@app.command("export-state", cls=_Command, short_help="Run, and save the final states.")
@guarded
def export_state(
    checkpoint: CheckpointArg,
    input: InputArg,
    output: OutOpt,
    module: ModuleOpt = None,
    key: KeyOpt = None,
    lengths: LengthsOpt = None,
    time_major: TimeMajorOpt = False,
    dtype: DtypeOpt = None,
    initial_state: InitialStateOpt = None,
    broadcast_state: BroadcastOpt = False,
    include_output: Annotated[bool, typer.Option("--include-output", help="Also store the output sequence (batch, time, directions*hidden); a streamed run writes it chunk by chunk.")] = False,
    layout: LayoutOpt = None,
    state_dtype: Annotated[Optional[str], typer.Option("--state-dtype", help="Store the states (and output) in this dtype (float16, float32, float64) instead of the run's: e.g. float32 states from a --dtype float64 run, for a float32 nn.LSTM.", show_default=False)] = None,
    force: ForceOpt = False,
    chunk_size: ChunkOpt = None,
    threads: ThreadsOpt = None,
    device: DeviceOpt = "cpu",
    tmp_dir: TmpDirOpt = None,
    activation: ActivationOpt = None,
    recurrent_activation: RecurrentActivationOpt = None,
    embedding: EmbeddingOpt = None,
    mask_value: MaskValueOpt = None,
    no_mask: NoMaskOpt = False,
    padding: PaddingOpt = "post",
    quiet: QuietOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Run like `run` and write the final states as a safetensors snapshot.

    PyTorch modules: h_n and c_n in PyTorch's native layout, ready to pass back as (h0, c0). Keras modules:
    per layer what initial_state takes, <layer>/h and <layer>/c (<layer>/h_f, c_f, h_b, c_b for a
    Bidirectional), each (batch, units). ONNX modules: the graph's state inputs (initial_h/initial_c as each
    node takes them), ready to feed to onnxruntime with the next chunk. --layout picks another.
    """
    opts = _run_options(locals())
    from lstmscope.fileio import file_sha256
    from lstmscope.runner import export_state as do_export

    with _progress(not (quiet or json_out)) as progress:
        outcome, path, meta = do_export(opts, output, include_output=include_output, force=force, progress=progress,
                                        layout=layout, state_dtype=state_dtype)
    _notes(outcome)
    size = path.stat().st_size
    from lstmscope.jsonout import export_document

    _emit(lambda: export_document(outcome, path, meta, file_sha256(path), size), "render_export",
          outcome, path, meta, size, json_out=json_out, quiet=quiet)
    if not outcome.view.all_ok:
        raise typer.Exit(EXIT_DIFFERENT)


@app.command("import-state", cls=_Command, short_help="Make a snapshot of a foreign state file.")
@guarded
def import_state(
    file: Annotated[Path, typer.Argument(metavar="FILE", help="A state file lstmscope did not write: safetensors/.npz with h_n/c_n (or h0/c0), Keras's h and c (or h_f, c_f, h_b, c_b), or a torch file with an (h, c) tuple.", show_default=False)],
    output: OutOpt,
    checkpoint: Annotated[Path, typer.Option("--checkpoint", help="The checkpoint the state belongs to (for metadata and shape checks).", show_default=False)],
    module: ModuleOpt = None,
    layout: LayoutOpt = None,
    force: ForceOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Convert a foreign state file into an lstmscope v1 snapshot with full metadata.

    Reads PyTorch's layout (h_n/c_n or h0/c0) and Keras's (h and c, or h_f, c_f, h_b, c_b, each (batch, units),
    as np.savez(p, h=h, c=c) writes them), and lstmscope snapshots of any layout (torch, keras, onnx); writes
    the module's own framework's layout unless --layout says.
    """
    from lstmscope.snapshot import import_state as do_import

    res = do_import(file, output, checkpoint, module=module, layout=layout, force=force)
    for note in res.notes:
        say(note)
    from lstmscope.jsonout import import_document

    _emit(lambda: import_document(res), "render_import", res, json_out=json_out)


@app.command("diff-states", cls=_Command, short_help="Compare two snapshots or traces.")
@guarded
def diff_states(
    a: Annotated[Path, typer.Argument(metavar="A", help="State file or trace A.", show_default=False)],
    b: Annotated[Path, typer.Argument(metavar="B", help="State file or trace B, the reference.", show_default=False)],
    atol: Annotated[float, typer.Option("--atol", help="Absolute tolerance.")] = 1e-5,
    rtol: Annotated[float, typer.Option("--rtol", help="Relative tolerance (times |b|).")] = 1.3e-6,
    equal_nan: Annotated[bool, typer.Option("--equal-nan", help="NaN in both files at the same place counts as equal.")] = False,
    num_directions: NumDirsOpt = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print nothing; only set the exit code (0 equal, 1 different, 2 unreadable).")] = False,
    json_out: JsonOpt = False,
) -> None:
    """Compare two state snapshots per layer and direction, or two traces per layer, direction and quantity.
    Exit 0 equal, 1 different, 2 unreadable.

    Traces (lstmscope trace -o) also show, per row, the first step over tolerance and the max |diff| at every
    step (steps past a sequence's length are left out): float32 drifting from float64 over a long sequence.

    --quiet overrides --json: nothing is printed.

    An element passes when |a - b| <= atol + rtol * |b|; defaults are torch.testing's float32 ones.
    """
    from lstmscope.statediff import diff_files

    if atol < 0 or rtol < 0:
        raise fail("--atol and --rtol must be >= 0")
    res = diff_files(a, b, atol=atol, rtol=rtol, equal_nan=equal_nan, num_directions=num_directions)

    def document() -> dict:
        from lstmscope.jsonout import diff_document  # only for --json: --quiet and tables never load it

        return diff_document(res)

    _emit(document, "render_diff", res, json_out=json_out, quiet=quiet)
    if not res.equal:
        raise typer.Exit(EXIT_DIFFERENT)


@app.command("compare", cls=_Command, short_help="Run one input through two sides; diff them.")
@guarded
def compare(
    paths: Annotated[list[Path], typer.Argument(metavar="A [B] INPUT", help="Checkpoint A, optionally checkpoint B (the reference; any format, same architecture), and the input sequences (.npy/.npz). Without B, side B is A again in the settings --b-* give.", show_default=False)],
    module_a: Annotated[Optional[str], typer.Option("--module-a", help="A's LSTM when its file holds several (see inspect).", show_default=False)] = None,
    module_b: Annotated[Optional[str], typer.Option("--module-b", help="B's LSTM. Default: the one at A's place in its file with A's shape, or the only one with A's shape.", show_default=False)] = None,
    key: KeyOpt = None,
    lengths: LengthsOpt = None,
    time_major: TimeMajorOpt = False,
    dtype: DtypeOpt = None,
    all_layers: Annotated[bool, typer.Option("--all-layers", help="Also compare every layer's output, not only the last layer's.")] = False,
    initial_state: InitialStateOpt = None,
    broadcast_state: BroadcastOpt = False,
    threads: ThreadsOpt = None,
    device: DeviceOpt = "cpu",
    activation: ActivationOpt = None,
    recurrent_activation: RecurrentActivationOpt = None,
    embedding: EmbeddingOpt = None,
    mask_value: MaskValueOpt = None,
    no_mask: NoMaskOpt = False,
    padding: PaddingOpt = "post",
    b_dtype: Annotated[Optional[str], typer.Option("--b-dtype", help="Side B runs in this dtype (float32, float64, float16, bfloat16).", show_default=False)] = None,
    b_device: Annotated[Optional[str], typer.Option("--b-device", help="Side B runs on this device (cpu, cuda, cuda:N).", show_default=False)] = None,
    b_engine: Annotated[Optional[str], typer.Option("--b-engine", help="Side B's engine: stepwise (the per-step cell) or fused (nn.LSTM's kernel, standard cells only).", show_default=False)] = None,
    b_runtime: Annotated[Optional[str], typer.Option("--b-runtime", help="onnxruntime: side B runs the ONNX file's LSTM nodes in onnxruntime, each alone with its weights (needs lstmscope[onnx]).", show_default=False)] = None,
    per_step: Annotated[bool, typer.Option("--per-step", help="Also compare h and c at every step: the first step where the sides part beyond tolerance and the max |diff| per step.")] = False,
    atol: Annotated[float, typer.Option("--atol", help="Absolute tolerance.")] = 1e-5,
    rtol: Annotated[float, typer.Option("--rtol", help="Relative tolerance (times |b|).")] = 1.3e-6,
    equal_nan: Annotated[bool, typer.Option("--equal-nan", help="NaN on both sides at the same place counts as equal.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print nothing; only set the exit code (0 same, 1 different, 2 bad input).")] = False,
    json_out: JsonOpt = False,
) -> None:
    """Run one input through two sides and diff their h_n / c_n per layer and direction, and the output.
    Exit 0 same within tolerance, 1 different or not comparable, 2 bad input.

    Two checkpoints (A B INPUT: model.pt against model.onnx, a Keras file against its PyTorch port), or one
    checkpoint in two settings (A INPUT with --b-dtype, --b-device, --b-engine), or an ONNX file against
    onnxruntime (--b-runtime onnxruntime). The run options apply to both sides; --b-* change side B only.
    B is the reference: an element passes when |a - b| <= atol + rtol * |b| (diff-states' rule).
    """
    if len(paths) not in (2, 3):
        raise fail(f"compare takes A INPUT or A B INPUT (2 or 3 paths), got {len(paths)}: "
                   "lstmscope compare MODEL.pt MODEL.onnx X.npy, or lstmscope compare MODEL.pt X.npy --b-dtype float64")
    from lstmscope.comparerun import CompareOptions, compare_run

    a, b, inp = (paths[0], None, paths[1]) if len(paths) == 2 else paths
    if b is None and inp.is_file():
        from lstmscope import sniff

        if sniff.sniff(inp).format in sniff.CHECKPOINT_FORMATS:  # compare A.pt B.onnx, the input forgotten
            raise fail(f"{inp} is a checkpoint, not input sequences: give the input last "
                       f"(lstmscope compare {a} {inp} INPUT), or one checkpoint and the input with a --b-* setting")
    res = compare_run(CompareOptions(
        a=a, b=b, input=inp, module_a=module_a, module_b=module_b, key=key, lengths=lengths, time_major=time_major,
        dtype=dtype, device=device, threads=threads, initial_state=initial_state, broadcast_state=broadcast_state,
        activation=activation, recurrent_activation=recurrent_activation, all_layers=all_layers, per_step=per_step,
        embedding=embedding, mask_value=mask_value, no_mask=no_mask, padding=padding,
        b_dtype=b_dtype, b_device=b_device, b_engine=b_engine, b_runtime=b_runtime, atol=atol, rtol=rtol,
        equal_nan=equal_nan))
    for note in res.notes:
        say(note)
    if not quiet:
        if json_out:
            from lstmscope.jsonout import compare_document, dumps

            sys.stdout.write(dumps(compare_document(res)) + "\n")
        else:
            from lstmscope.render.compare import render_compare

            render_compare(_stdout(), res)
    if not res.equal:
        raise typer.Exit(EXIT_DIFFERENT)


@app.command("show-state", cls=_Command, short_help="Show a snapshot or a trace.")
@guarded
def show_state(
    snapshot: Annotated[Path, typer.Argument(metavar="FILE", help="A state snapshot (.safetensors), an .npz with h_n/c_n, or a trace (lstmscope trace -o).", show_default=False)],
    batch_index: Annotated[Optional[int], typer.Option("--batch-index", "-b", help="Print this sequence's h_n/c_n values (a trace: the sequence to draw).", show_default=False)] = None,
    units: Annotated[Optional[str], typer.Option("--units", help="Units to print with --batch-index, as START:STOP (default 0:8); a trace: the units to draw (default all).", show_default=False)] = None,
    num_directions: NumDirsOpt = None,
    heatmap: HeatmapOpt = None,
    layer: LayerOpt = None,
    direction: DirectionOpt = None,
    steps: StepsOpt = None,
    png: PngOpt = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite the --png file if it exists.")] = False,
    json_out: JsonOpt = False,
) -> None:
    """Show a snapshot: metadata, named shapes and the per-layer/direction table (torch-free).

    A trace file shows what trace showed when it wrote it: the tensors and the summary (computed again from the
    file, in flat memory), and with --heatmap/--png the pictures, without running anything again.
    """
    from lstmscope.tracefile import is_trace

    if is_trace(snapshot):
        _show_trace_file(snapshot, heatmap, layer, direction, batch_index, units, steps, png, force, json_out)
        return
    given = [f for f, v in (("--heatmap", heatmap), ("--layer", layer), ("--direction", direction),
                            ("--steps", steps), ("--png", png)) if v is not None]
    if given:
        raise fail(f"{', '.join(given)} {'is' if len(given) == 1 else 'are'} for traces, and {snapshot} is not one "
                   "(lstmscope trace CHECKPOINT INPUT -o TRACE.safetensors writes a trace)")
    from lstmscope.snapshot import read_state_file, state_view

    state = read_state_file(snapshot)
    view = state_view(state, num_directions=num_directions, batch_index=batch_index, units=parse_span(units, "--units"))
    from lstmscope.jsonout import state_document

    _emit(lambda: state_document(state, view), "render_state", state, view, json_out=json_out)
    if not view.all_ok:
        raise typer.Exit(EXIT_DIFFERENT)



def _show_trace_file(path: Path, heatmap, layer, direction, batch_index, units, steps, png, force: bool,
                     json_out: bool) -> None:
    """``show-state TRACE``: the trace's tensors and summary, and its heatmap or PNG."""
    from lstmscope.heatmap import HeatmapRequest
    from lstmscope.tracefile import read_trace
    from lstmscope.tracestats import summarize_trace

    request = HeatmapRequest(heatmap, layer, direction, batch_index, parse_span(units, "--units"),
                             parse_span(steps, "--steps"))
    request.check_used(png is not None)
    t = read_trace(path)
    selection = None
    if heatmap is not None or png is not None:
        selection = request.resolve(t.spec, t.batch, t.time, t.quantities)
    if png is not None:
        from lstmscope.plot import check_png

        check_png(png, force=force, sources=(path,))
    layout = {name: (str(a.dtype), a.shape) for name, a in t.tensors.items()}
    if t.lengths is not None:
        layout["lengths"] = ("int64", (t.batch,))
    _show_trace(path, t.meta, layout, summarize_trace(t), t.spec, t.meta.get("module") or "(top level)",
                heatmap=heatmap, png=png, selection=selection, force=force, json_out=json_out, verb="Trace")

@app.command(cls=_Command, short_help="Every step and gate, to a file.")
@guarded
def trace(
    checkpoint: CheckpointArg,
    input: InputArg,
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Trace file to write (.safetensors). Without it the trace goes to a temporary file that is removed once the summary, heatmap and PNG are made.", show_default=False)] = None,
    module: ModuleOpt = None,
    key: KeyOpt = None,
    lengths: LengthsOpt = None,
    time_major: TimeMajorOpt = False,
    dtype: DtypeOpt = None,
    initial_state: InitialStateOpt = None,
    broadcast_state: BroadcastOpt = False,
    quantities: Annotated[Optional[str], typer.Option("--quantities", help="Which quantities to store, comma-separated from h,c,i,f,g,o (h_t, c_t, input/forget gate, candidate, output gate). Default: all.", show_default=False)] = None,
    order: Annotated[str, typer.Option("--order", help="Time order of the stored steps: input (step t is the state after reading x[t], the backward direction too) or processing (each direction in the order it ran: the backward direction's steps reversed per sequence).")] = "input",
    force: ForceOpt = False,
    chunk_size: ChunkOpt = None,
    threads: ThreadsOpt = None,
    device: DeviceOpt = "cpu",
    tmp_dir: Annotated[Optional[Path], typer.Option("--tmp-dir", help="Where a streamed trace keeps each layer's output while the next layer reads it (removed afterwards). Default: $TMPDIR.", show_default=False)] = None,
    activation: ActivationOpt = None,
    recurrent_activation: RecurrentActivationOpt = None,
    embedding: EmbeddingOpt = None,
    mask_value: MaskValueOpt = None,
    no_mask: NoMaskOpt = False,
    padding: PaddingOpt = "post",
    heatmap: HeatmapOpt = None,
    layer: LayerOpt = None,
    direction: DirectionOpt = None,
    batch_index: Annotated[Optional[int], typer.Option("--batch-index", "-b", help="Heatmap/PNG: the sequence to draw. Default: 0.", show_default=False)] = None,
    units: Annotated[Optional[str], typer.Option("--units", help="Heatmap/PNG: the units to draw, as A:B (B exclusive). Default: all.", show_default=False)] = None,
    steps: StepsOpt = None,
    png: PngOpt = None,
    quiet: QuietOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Run step by step and write every time step of every layer and direction (h, c and the four gates) to a
    safetensors trace.

    One tensor per (layer, direction, quantity), each (batch, time, width), named layer{L}/{forward|backward}/{q}
    for PyTorch and ONNX modules (layer0/forward/h, layer1/backward/f) and {Keras layer name}/{forward|backward}/{q} for
    Keras modules (encoder/forward/h). q is h, c, i, f, g or o; h is proj_size wide on a projected LSTM,
    the rest hidden_size. With lengths the file also holds lengths, and every value past a sequence's length
    is NaN. The metadata entry lstmscope.trace (canonical JSON) names the module, spec, dtype, time order and
    the sha256 of every input.
    """
    opts = _run_options(locals(), exclude=("units", "batch_index"))  # those two are the heatmap's here
    from lstmscope.heatmap import HeatmapRequest
    from lstmscope.runner import trace as do_trace

    request = HeatmapRequest(heatmap, layer, direction, batch_index, parse_span(units, "--units"),
                             parse_span(steps, "--steps"))
    request.check_used(png is not None)
    picture: dict = {}

    def check(mod, seqs, picked) -> None:
        """Refuse bad heatmap options and an unwritable --png before anything runs."""
        picture["selection"] = request.resolve(mod.spec, seqs.batch, seqs.time, picked)
        if png is not None:
            from lstmscope.plot import check_png

            check_png(png, force=force, output=output, sources=(checkpoint, input, lengths, initial_state))

    wanted = heatmap is not None or png is not None
    with contextlib.ExitStack() as stack:
        target = output
        if output is None:  # a trace for the summary and pictures only: made in a temporary folder, removed after
            import tempfile

            folder = stack.enter_context(tempfile.TemporaryDirectory(prefix="lstmscope-trace-", dir=tmp_dir))
            target = Path(folder) / "trace.safetensors"
        with _progress(not (quiet or json_out)) as progress:
            outcome = do_trace(opts, target, quantities=quantities, order=order, force=force,
                               check=check if wanted else None, progress=progress)
        _trace_results(outcome, output is not None, heatmap, png, picture, force, quiet, json_out)


def _trace_results(outcome, kept: bool, heatmap, png, picture: dict, force: bool, quiet: bool, json_out: bool) -> None:
    """After ``trace`` ran: the notes, then what _show_trace shows. With ``kept`` False the trace is a temporary
    file its caller removes afterwards."""
    for note in outcome.notes:
        say(note)
    for warning in outcome.warnings:
        say(f"warning: {warning}")
    _show_trace(outcome.path, outcome.meta, outcome.layout, outcome.summary, outcome.module.spec,
                outcome.module.display_name, kept=kept, heatmap=heatmap, png=png, selection=picture.get("selection"),
                force=force, quiet=quiet, json_out=json_out, input_name=outcome.sequences.display_name,
                chunk_size=outcome.chunk_size, threads=outcome.threads, warnings=outcome.warnings)


def _show_trace(path: Path, meta: dict, layout: dict, summary, spec, module_name: str, *, kept: bool = True,
                heatmap=None, png=None, selection=None, force: bool = False, quiet: bool = False,
                json_out: bool = False, input_name: str | None = None, chunk_size: int | None = None,
                threads: int | None = None, verb: str = "Wrote", warnings: list[str] = ()) -> None:
    """A written trace: the PNG (when asked), then the summary and heatmap (or the JSON document)."""
    from lstmscope.fileio import file_sha256

    written = trace_file = None
    if png is not None or (heatmap is not None and not (quiet or json_out)):
        from lstmscope.tracefile import read_trace

        trace_file = read_trace(path)
    if png is not None:
        from lstmscope.plot import write_png

        written = write_png(png, trace_file, selection, summary, force=force)
    if quiet:
        return
    size = path.stat().st_size if kept else None
    if json_out:
        from lstmscope.jsonout import dumps
        from lstmscope.tracefile import trace_document

        doc = trace_document(path if kept else None, file_sha256(path) if kept else None, size, meta, layout,
                             summary, chunk_size=chunk_size, threads=threads)
        doc["warnings"] = list(warnings)
        if written is not None:
            doc["png"] = {"path": str(written.path), "width": written.width, "height": written.height}
        sys.stdout.write(dumps(doc) + "\n")
        return
    from lstmscope.render.trace import render_trace

    console = _stdout()
    render_trace(console, meta=meta, layout=layout, summary=summary, spec=spec, module_name=module_name,
                 path=path if kept else None, size=size, input_name=input_name, chunk_size=chunk_size, verb=verb)
    if heatmap is not None:
        from lstmscope.heatmap import heatmap_grid
        from lstmscope.render.trace import heatmap_fit, render_heatmap

        console.print()
        max_cols, max_rows = heatmap_fit(console, selection)
        render_heatmap(console, heatmap_grid(trace_file, selection, max_cols, max_rows))
    if written is not None:
        from lstmscope.render.trace import render_png_written

        render_png_written(console, written)


def entry_point() -> None:
    """The ``lstmscope`` command (and ``python -m lstmscope``): ``app``, with Typer building only the command
    that is run.

    Typer turns every registered command into a Click command, all its options included, at each start
    (about 5-7 ms for the eight here, a twentieth of a ``diff-states --json`` start). When the first argument
    names a command, a copy of the app holding just that one runs it: its parsing, help and errors are the
    same, since a group with a callback stays a group. Anything else (``--help``, ``--version``, a mistyped
    name, which Typer answers with the list of commands) runs the whole app.
    """
    import copy

    from typer.main import get_command_name

    args = sys.argv[1:]
    name = args[0] if args else ""
    picked = [c for c in app.registered_commands
              if (c.name or get_command_name(c.callback.__name__ if c.callback else "")) == name]
    lean = app
    if picked:
        lean = copy.copy(app)
        lean.registered_commands = picked
    lean(prog_name="lstmscope")
