"""lstmscope as a Python library, for notebooks: the commands' results as objects.

    import lstmscope
    r = lstmscope.run("model.pt", x)          # x: a path, or a numpy array (B, T, F) / token ids (B, T)
    r.h_n, r.c_n, r.output, r.ok              # numpy arrays and the identity checks
    r.to_dict()                               # the document `lstmscope run --json` prints
    r                                         # in Jupyter: the report `lstmscope run` prints

Every function takes what the command takes (paths, or numpy arrays where the command takes an input file),
returns the same result the command renders, prints nothing (notes and warnings are in ``.notes`` and
``.warnings``), and raises :class:`lstmscope.LstmscopeError` subclasses for bad input (what the command would
report as ``Error: ...``). torch is imported only when something runs.
"""

from __future__ import annotations

import importlib
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lstmscope.errors import LstmscopeError, UsageError
from lstmscope.fileio import given

__all__ = ["inspect", "run", "export_state", "trace", "diff", "compare", "LstmscopeError",
           "InspectResult", "RunResult", "TraceResult", "DiffReport", "CompareReport"]

PathLike = str | os.PathLike
ARRAY_NAME = "<array>"  # how a numpy array given as input is named in results


class _Shown:
    """Shows as the command's Rich report: in Jupyter (text and HTML), with rich.print, and as str(). A result
    that wraps one core object names it (``_subject``), the function that builds its --json document and the
    one that renders it, as (module, name); others override to_dict and _render."""

    _width = 100
    _subject = "result"
    _document: tuple[str, str] = ("", "")
    _renderer: tuple[str, str] = ("", "")

    def to_dict(self) -> dict:
        """The document the command prints with --json."""
        return _call(self._document, getattr(self, self._subject))

    def _render(self, console) -> None:
        module, name = self._renderer
        getattr(importlib.import_module(module), name)(console, getattr(self, self._subject))

    def __rich_console__(self, console, options):
        from io import StringIO

        from rich.console import Console
        from rich.text import Text

        c = Console(width=options.max_width, record=True, file=StringIO(), color_system="truecolor", highlight=False)
        self._render(c)
        yield Text.from_ansi(c.export_text(styles=True).rstrip("\n"))

    def _console(self):
        from io import StringIO

        from rich.console import Console

        return Console(width=self._width, record=True, file=StringIO(), color_system="truecolor", highlight=False)

    def __str__(self) -> str:
        c = self._console()
        self._render(c)
        return "\n".join(line.rstrip() for line in c.export_text().splitlines())

    def _repr_mimebundle_(self, include=None, exclude=None) -> dict:
        c = self._console()
        self._render(c)
        text = "\n".join(line.rstrip() for line in c.export_text(clear=False).splitlines())
        return {"text/plain": text, "text/html": c.export_html(inline_styles=True)}

    def _repr_pretty_(self, p, cycle) -> None:  # IPython's plain-text repr
        p.text(str(self))


def _call(where: tuple[str, str], *args):
    module, name = where
    return getattr(importlib.import_module(module), name)(*args)


@dataclass
class _Input:
    """A path or a numpy array as the file a command reads (arrays saved to a temporary .npy for the call)."""

    folder: tempfile.TemporaryDirectory | None = None

    def path(self, x: Any, name: str) -> str | None:
        if x is None or isinstance(x, (str, os.PathLike)):
            return None if x is None else os.fspath(x)
        a = np.asarray(x)
        if a.dtype == object:
            raise UsageError(f"{name}: give a path or a numeric numpy array, not {type(x).__name__}")
        if self.folder is None:
            self.folder = tempfile.TemporaryDirectory(prefix="lstmscope-api-")
        p = Path(self.folder.name) / f"{name}.npy"
        np.save(p, a, allow_pickle=False)
        return str(p)

    def close(self) -> None:
        if self.folder is not None:
            self.folder.cleanup()


# --- inspect --------------------------------------------------------------------------------------------------

@dataclass
class InspectResult(_Shown):
    """The LSTMs in a checkpoint (``lstmscope inspect``)."""

    checkpoint: Any  # lstmscope.readers.Checkpoint
    candidates: dict[str, list[str]] = field(default_factory=dict)
    display_path: str | None = None  # the path as given, when it differs from the file read (a pipe's copy)

    @property
    def modules(self) -> list:
        return self.checkpoint.modules

    @property
    def notes(self) -> list[str]:
        return list(self.checkpoint.notes)

    def to_dict(self) -> dict:
        from lstmscope.jsonout import inspect_document

        ck = self.checkpoint
        return inspect_document(self.display_path or given(ck.path), ck.sha256, ck.format, ck.modules,
                                stubbed_globals=ck.stubbed_globals,
                                refused_calls=ck.refused_calls, single_layers=ck.single_layers,
                                candidates=self.candidates, notes=ck.notes)

    def _render(self, console) -> None:
        from lstmscope.render import render_inspect

        ck = self.checkpoint
        render_inspect(console, self.display_path or given(ck.path), ck.format, ck.modules, version=ck.producer,
                       stubbed_globals=ck.stubbed_globals, refused_calls=ck.refused_calls,
                       single_layers=ck.single_layers, candidates=self.candidates, notes=ck.notes)


def inspect(checkpoint: PathLike) -> InspectResult:
    """``lstmscope inspect CHECKPOINT``: the LSTM modules a checkpoint holds (torch-free for torch files)."""
    from lstmscope.readers import read_checkpoint

    ck = read_checkpoint(checkpoint)
    if not ck.modules:
        ck.module(None)  # raises the "holds no LSTM" error
    return InspectResult(ck, embedding_candidates(ck))


def embedding_candidates(ck) -> dict[str, list[str]]:
    """Module name -> the tensors ``--embedding`` may name, for formats without a graph (PyTorch, safetensors)."""
    return {m.name: ck.embedding_candidates(m) for m in ck.modules + ck.single_layers
            if m.embedding is None and ck._tensor is not None and ck.format != "onnx"}


# --- run, export_state ------------------------------------------------------------------------------------------

@dataclass
class RunResult(_Shown):
    """One run (``lstmscope run``): the final states, the output, the identity checks."""

    outcome: Any  # lstmscope.runner.RunOutcome
    _subject = "outcome"
    _document = ("lstmscope.jsonout", "run_document")
    _renderer = ("lstmscope.render", "render_run")

    @property
    def h_n(self) -> np.ndarray:
        """(num_layers * num_directions, batch, proj_size or hidden_size), PyTorch's layout."""
        return self.outcome.result.h_n

    @property
    def c_n(self) -> np.ndarray:
        return self.outcome.result.c_n

    @property
    def output(self) -> np.ndarray | None:
        """(batch, time, D * out) of the last layer, as the framework lays it out (None when streamed)."""
        return self.outcome.result.output

    @property
    def layer_outputs(self) -> dict:
        return self.outcome.result.layer_outputs

    @property
    def checks(self) -> list:
        return self.outcome.view.checks

    @property
    def ok(self) -> bool:
        return self.outcome.view.all_ok

    @property
    def spec(self):
        return self.outcome.module.spec

    @property
    def notes(self) -> list[str]:
        return list(self.outcome.notes)

    @property
    def warnings(self) -> list[str]:
        return list(self.outcome.warnings)


def _options(checkpoint: PathLike, x: Any, inputs: _Input, options: dict):
    from lstmscope.runner import RunOptions

    opts = dict(options)
    for key in ("lengths", "initial_state"):
        if key in opts and opts[key] is not None and not isinstance(opts[key], (str, os.PathLike)):
            opts[key] = inputs.path(opts[key], key)
    if "units" in opts:
        from lstmscope.options import parse_span

        opts["units"] = parse_span(opts["units"], "units")
    known = set(RunOptions.__dataclass_fields__) - {"checkpoint", "input"}
    unknown = sorted(set(opts) - known)
    if unknown:
        raise UsageError(f"unknown option{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}; "
                         f"run takes: {', '.join(sorted(known))}")
    return RunOptions(checkpoint=os.fspath(checkpoint), input=inputs.path(x, "input") or "", **opts)


def _named(outcome, x: Any) -> None:
    """An array given as input is named ARRAY_NAME in the result, not by its temporary file."""
    if not isinstance(x, (str, os.PathLike)):
        seqs = outcome.sequences
        seqs.sha256  # noqa: B018  (hash the bytes while the temporary file is there)
        seqs.path = Path(ARRAY_NAME)


def run(checkpoint: PathLike, x: Any, **options) -> RunResult:
    """``lstmscope run CHECKPOINT INPUT``. ``x``: a path (.npy/.npz) or a numpy array: float features (B, T, F)
    or (T, F), or integer token ids (B, T) or (T,). ``options`` are run's, as keywords: ``module``, ``lengths``
    (a path or an array), ``time_major``, ``dtype``, ``all_layers``, ``batch_index``, ``units`` ("0:8"),
    ``initial_state`` (a path), ``broadcast_state``, ``chunk_size``, ``threads``, ``device``, ``embedding``,
    ``mask_value``, ``no_mask``, ``padding``, ``activation``, ``recurrent_activation``, ``key``, ``tmp_dir``."""
    from lstmscope.runner import execute_run

    inputs = _Input()
    try:
        outcome = execute_run(_options(checkpoint, x, inputs, options))
        _named(outcome, x)
    finally:
        inputs.close()
    return RunResult(outcome)


def _in_api_terms(e: LstmscopeError) -> LstmscopeError:
    """A core error whose advice names a CLI flag, reworded for keyword arguments (``--force`` -> ``force=True``)."""
    if "--force" in e.message:
        e.message = e.message.replace("pass --force", "pass force=True").replace("--force", "force=True")
        e.args = (e.message,)
    return e


def export_state(checkpoint: PathLike, x: Any, out: PathLike, *, include_output: bool = False, force: bool = False,
                 layout: str | None = None, state_dtype: str | None = None, **options) -> RunResult:
    """``lstmscope export-state CHECKPOINT INPUT -o OUT``: run and write the snapshot; the result is the run's,
    with ``.path`` the file written."""
    from lstmscope.runner import export_state as do_export

    inputs = _Input()
    try:
        outcome, path, meta = do_export(_options(checkpoint, x, inputs, options), out, include_output=include_output,
                                        force=force, layout=layout, state_dtype=state_dtype)
        _named(outcome, x)
    except LstmscopeError as e:
        raise _in_api_terms(e) from None
    finally:
        inputs.close()
    res = RunResult(outcome)
    res.path, res.metadata = path, meta
    return res


# --- trace ----------------------------------------------------------------------------------------------------

@dataclass
class TraceResult(_Shown):
    """Every step and gate (``lstmscope trace``): the summary, and the trace itself when it was kept (``out``)."""

    outcome: Any  # lstmscope.runner.TraceOutcome
    kept: bool

    @property
    def summary(self):
        """lstmscope.tracestats.TraceStats: per (layer, direction, quantity) mean, saturation, dead units, ..."""
        return self.outcome.summary

    @property
    def path(self) -> Path | None:
        return self.outcome.path if self.kept else None

    @property
    def notes(self) -> list[str]:
        return list(self.outcome.notes)

    @property
    def warnings(self) -> list[str]:
        return list(self.outcome.warnings)

    def arrays(self) -> dict[str, np.ndarray]:
        """Every tensor of the trace file, read (only for a kept trace: ``out`` given)."""
        if not self.kept:
            raise UsageError("the trace was not kept: give out=PATH to keep every step")
        from safetensors.numpy import load_file

        return load_file(str(self.outcome.path))

    def to_dict(self) -> dict:
        from lstmscope.tracefile import trace_document

        o = self.outcome
        size = o.path.stat().st_size if self.kept else None
        sha = None
        if self.kept:
            from lstmscope.fileio import file_sha256

            sha = file_sha256(o.path)
        doc = trace_document(o.path if self.kept else None, sha, size, o.meta, o.layout, o.summary,
                             chunk_size=o.chunk_size, threads=o.threads)
        doc["warnings"] = list(o.warnings)
        return doc

    def _render(self, console) -> None:
        from lstmscope.render.trace import render_trace

        o = self.outcome
        render_trace(console, meta=o.meta, layout=o.layout, summary=o.summary, spec=o.module.spec,
                     module_name=o.module.display_name, path=o.path if self.kept else None,
                     size=o.path.stat().st_size if self.kept else None, input_name=o.sequences.display_name,
                     chunk_size=o.chunk_size)


def trace(checkpoint: PathLike, x: Any, out: PathLike | None = None, *, quantities: str | None = None,
          order: str = "input", force: bool = False, **options) -> TraceResult:
    """``lstmscope trace CHECKPOINT INPUT [-o OUT]``: run step by step; ``out`` keeps the trace file (else only
    the summary is kept). ``quantities``: "h,c,i,f,g,o" or a part; ``options`` as for :func:`run`."""
    from lstmscope.runner import trace as do_trace

    inputs = _Input()
    folder = None
    try:
        target = out
        if out is None:
            folder = tempfile.TemporaryDirectory(prefix="lstmscope-api-trace-")
            target = Path(folder.name) / "trace.safetensors"
        outcome = do_trace(_options(checkpoint, x, inputs, options), target, quantities=quantities, order=order,
                           force=force)
        _named(outcome, x)
    except LstmscopeError as e:
        raise _in_api_terms(e) from None
    finally:
        inputs.close()
        if folder is not None:
            folder.cleanup()
    return TraceResult(outcome, kept=out is not None)


# --- diff, compare --------------------------------------------------------------------------------------------

class _Verdict(_Shown):
    """A result that says whether two sides agree (its ``result.equal``)."""

    result: Any

    @property
    def equal(self) -> bool:
        return self.result.equal


@dataclass
class DiffReport(_Verdict):
    """``lstmscope diff-states``: per layer and direction (snapshots) or per step (traces)."""

    result: Any  # lstmscope.statediff.DiffResult
    _document = ("lstmscope.jsonout", "diff_document")
    _renderer = ("lstmscope.render", "render_diff")

    @property
    def rows(self) -> list:
        return self.result.rows


def diff(a: PathLike, b: PathLike, *, atol: float | None = None, rtol: float | None = None, equal_nan: bool = False,
         num_directions: int | None = None) -> DiffReport:
    """``lstmscope diff-states A B``: two snapshots (or state files), or two traces; B is the reference."""
    from lstmscope.statediff import DEFAULT_ATOL, DEFAULT_RTOL, diff_files

    atol = DEFAULT_ATOL if atol is None else atol
    rtol = DEFAULT_RTOL if rtol is None else rtol
    if atol < 0 or rtol < 0:
        raise UsageError("atol and rtol must be >= 0")
    return DiffReport(diff_files(a, b, atol=atol, rtol=rtol, equal_nan=equal_nan, num_directions=num_directions))


@dataclass
class CompareReport(_Verdict):
    """``lstmscope compare``: one input through two sides, diffed."""

    result: Any  # lstmscope.comparerun.CompareResult
    _document = ("lstmscope.jsonout", "compare_document")
    _renderer = ("lstmscope.render.compare", "render_compare")

    @property
    def rows(self) -> list:
        return self.result.diff.rows

    @property
    def notes(self) -> list[str]:
        return list(self.result.notes)


def compare(a: PathLike, b: PathLike | None = None, x: Any = None, **options) -> CompareReport:
    """``lstmscope compare A [B] INPUT``: ``x`` a path or a numpy array; ``options``: compare's (``b_dtype``,
    ``b_device``, ``b_engine``, ``b_runtime``, ``per_step``, ``atol``, ``rtol``, ``module_a``, ``module_b``, ...,
    and run's input options)."""
    from lstmscope.comparerun import CompareOptions, compare_run

    if x is None:
        raise UsageError("compare needs the input: compare(A, B, x) or compare(A, x=x, b_dtype='float64')")
    inputs = _Input()
    try:
        opts = dict(options)
        for key in ("lengths", "initial_state"):
            if opts.get(key) is not None and not isinstance(opts[key], (str, os.PathLike)):
                opts[key] = inputs.path(opts[key], key)
        known = set(CompareOptions.__dataclass_fields__) - {"a", "b", "input"}
        unknown = sorted(set(opts) - known)
        if unknown:
            raise UsageError(f"unknown option{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}; "
                             f"compare takes: {', '.join(sorted(known))}")
        res = compare_run(CompareOptions(a=os.fspath(a), b=None if b is None else os.fspath(b),
                                         input=inputs.path(x, "input"), **opts))
        if not isinstance(x, (str, os.PathLike)):
            res.input["path"] = ARRAY_NAME
    finally:
        inputs.close()
    return CompareReport(res)
