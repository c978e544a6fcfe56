"""The ``lstmscope`` command line: parse options, call the core, pick the renderer, map errors to exit codes.

Heavy modules (torch, the engine, Rich tables) are imported inside the commands, so ``--help``
and the torch-free commands start fast.
"""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from lstmscope import __version__
from lstmscope.errors import EXIT_BAD_INPUT, LstmscopeError, clean_message

EXIT_INTERNAL = 3
EXIT_INTERRUPTED = 130

app = typer.Typer(
    name="lstmscope",
    help="Look inside LSTM state: h_n and c_n against output, per layer and direction.",
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
    pretty_exceptions_show_locals=False,
    no_args_is_help=True,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _stderr():
    from rich.console import Console

    return Console(stderr=True, highlight=False, soft_wrap=True)


def _stdout():
    from rich.console import Console

    return Console(highlight=False)


def fail(message: str, code: int = EXIT_BAD_INPUT) -> typer.Exit:
    """Print one ``Error: ...`` line on stderr and return the Exit to raise."""
    sys.stderr.write(f"Error: {message}\n")
    sys.stderr.flush()
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
        raise typer.Exit(0)


@app.callback()
def main(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Look inside LSTM state: h_n and c_n against output, per layer and direction.

    Exit codes: 0 ok, 1 a check failed or states differ, 2 usage error or bad input.
    """


CheckpointArg = Annotated[Path, typer.Argument(help="LSTM checkpoint: .pt/.pth/.bin/.ckpt (state_dict, wrapped dict, Lightning) or .safetensors.", show_default=False)]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON document on stdout instead of tables.")]
ModuleOpt = Annotated[Optional[str], typer.Option("--module", "-m", help="Key prefix of the LSTM to use when the file holds several (see inspect).", show_default=False)]


@app.command()
@guarded
def inspect(checkpoint: CheckpointArg, json_out: JsonOpt = False) -> None:
    """List the LSTM modules in a checkpoint with their inferred configuration."""
    from lstmscope.checkpoint import read_checkpoint
    from lstmscope.jsonout import dumps, inspect_document

    ck = read_checkpoint(checkpoint)
    if not ck.modules:
        ck.module(None)  # raises the "holds no LSTM" error
    if json_out:
        sys.stdout.write(dumps(inspect_document(str(checkpoint), ck.sha256, ck.format, ck.modules)) + "\n")
    else:
        from lstmscope.render import render_inspect

        render_inspect(_stdout(), str(checkpoint), ck.format, ck.modules)


@app.command()
@guarded
def run(
    checkpoint: CheckpointArg,
    input: Annotated[Path, typer.Argument(help="Input sequences: .npy, or .npz with the array (and optional 'lengths'). 2-D is (T, F); 3-D is (B, T, F).", show_default=False)],
    module: ModuleOpt = None,
    key: Annotated[Optional[str], typer.Option("--key", help="Array name inside an .npz input.", show_default=False)] = None,
    lengths: Annotated[Optional[Path], typer.Option("--lengths", help="A .npy of per-sequence lengths: runs a packed batch (enforce_sorted=False).", show_default=False)] = None,
    time_major: Annotated[bool, typer.Option("--time-major", help="3-D input is (T, B, F) instead of (B, T, F).")] = False,
    dtype: Annotated[Optional[str], typer.Option("--dtype", help="Run in this dtype (float32, float64, float16, bfloat16); default: the checkpoint's.", show_default=False)] = None,
    all_layers: Annotated[bool, typer.Option("--all-layers", help="Run layer by layer so every layer's output exists and every layer is checked.")] = False,
    batch_index: Annotated[Optional[int], typer.Option("--batch-index", "-b", help="Print the values of this sequence's h_n/c_n slices next to output.", show_default=False)] = None,
    units: Annotated[Optional[str], typer.Option("--units", help="Units to print with --batch-index, as START:STOP (default 0:8).", show_default=False)] = None,
    json_out: JsonOpt = False,
) -> None:
    """Run sequences through an LSTM and show every layer's and direction's h_n / c_n against output.

    Exits 1 when an h_n slice does not equal its place in output (max |diff| > 1e-6).
    """
    from lstmscope.runner import RunOptions, execute_run

    outcome = execute_run(RunOptions(
        checkpoint=checkpoint, input=input, module=module, key=key, lengths=lengths, time_major=time_major,
        dtype=dtype, all_layers=all_layers, batch_index=batch_index, units=units,
    ))
    if json_out:
        from lstmscope.jsonout import run_document, dumps

        sys.stdout.write(dumps(run_document(outcome)) + "\n")
    else:
        from lstmscope.render import render_run

        render_run(_stdout(), outcome)
    if not outcome.view.all_ok:
        raise typer.Exit(1)
