"""The ``run`` job as a library call: checkpoint + input -> states, checks and the facts to show.

Torch is imported here only when a run actually starts (through ``lstmscope.engine``).
"""

from __future__ import annotations

import os
from pathlib import Path
from dataclasses import dataclass, field

from lstmscope.checkpoint import Checkpoint, read_checkpoint
from lstmscope.errors import UsageError
from lstmscope.report import StateView, build_view
from lstmscope.sequences import Sequences, load_sequences
from lstmscope.spec import LSTMModule

RUN_DTYPES = ("float16", "bfloat16", "float32", "float64")


@dataclass
class RunOptions:
    checkpoint: str | os.PathLike
    input: str | os.PathLike
    module: str | None = None
    key: str | None = None
    lengths: str | os.PathLike | None = None
    time_major: bool = False
    dtype: str | None = None  # None: the checkpoint's dtype
    all_layers: bool = False
    batch_index: int | None = None
    units: str | None = None
    device: str = "cpu"
    initial_state: str | os.PathLike | None = None  # a state file whose h_n/c_n seed the run
    broadcast_state: bool = False  # allow a batch-1 initial state for a larger batch


@dataclass
class RunOutcome:
    checkpoint: Checkpoint
    module: LSTMModule
    sequences: Sequences
    result: "object"  # lstmscope.engine.RunResult
    view: StateView
    initial_state_sha256: str | None = None
    initial_state_path: str | None = None
    notes: list[str] = field(default_factory=list)  # one-line remarks for stderr


def execute_run(opts: RunOptions) -> RunOutcome:
    if opts.dtype is not None and opts.dtype not in RUN_DTYPES:
        raise UsageError(f"--dtype {opts.dtype} is not one of {', '.join(RUN_DTYPES)}")
    ck = read_checkpoint(opts.checkpoint)
    module = ck.module(opts.module)
    seqs = load_sequences(
        opts.input,
        time_major=opts.time_major,
        key=opts.key,
        lengths_path=opts.lengths,
        expected_features=module.spec.input_size,
        module_name=module.display_name,
    )
    h0 = c0 = None
    state_sha = None
    notes = []
    if opts.initial_state is not None:
        from lstmscope.fileio import file_sha256
        from lstmscope.snapshot import fit_state, read_state_file

        state = read_state_file(opts.initial_state, allow_torch=True)
        h0, c0 = fit_state(state, module.display_name, module.spec, seqs.batch, broadcast=opts.broadcast_state)
        state_sha = file_sha256(state.path)
        if module.spec.bidirectional:
            notes.append("note: bidirectional model: the backward direction's initial state enters at the last time "
                         "step, so a chunked run cannot equal the whole run (the backward pass needs the future)")
    from lstmscope.engine import run_lstm

    result = run_lstm(
        module.spec,
        ck.module_parameters(module),
        seqs.data,
        lengths=seqs.lengths,
        dtype=opts.dtype,
        all_layers=opts.all_layers,
        device=opts.device,
        h0=h0,
        c0=c0,
    )
    if result.layer_outputs is not None:
        layer_outputs = dict(enumerate(result.layer_outputs))
    else:
        layer_outputs = {module.spec.num_layers - 1: result.output}
    view = build_view(
        module.spec,
        result.h_n,
        result.c_n,
        last_steps=seqs.last_steps(),
        layout=seqs.layout,
        time=seqs.time,
        layer_outputs=layer_outputs,
        batch_index=opts.batch_index,
        units=opts.units,
    )
    return RunOutcome(ck, module, seqs, result, view, state_sha,
                      None if opts.initial_state is None else str(opts.initial_state), notes)


def export_state(opts: RunOptions, out: str | os.PathLike, *, include_output: bool = False, force: bool = False):
    """Run, then write a v1 snapshot of the final states. Returns (outcome, written path, metadata)."""
    from lstmscope.fileio import check_target, refuse_overwriting_sources
    from lstmscope.snapshot import snapshot_metadata, write_snapshot

    out_path = Path(out)
    check_target(out_path, force)  # refuse before spending time on the run
    refuse_overwriting_sources(out_path, opts.checkpoint, opts.input, opts.lengths, opts.initial_state)
    outcome = execute_run(opts)
    res, seqs = outcome.result, outcome.sequences
    meta = snapshot_metadata(
        outcome.module.spec, batch_size=seqs.batch, dtype=res.dtype, module=outcome.module.prefix,
        checkpoint_sha256=outcome.checkpoint.sha256, input_sha256=seqs.sha256, lengths=seqs.lengths,
        initial_state_sha256=outcome.initial_state_sha256,
    )
    tensors = {"h_n": res.h_n, "c_n": res.c_n}
    if include_output:
        tensors["output"] = res.output
    if seqs.lengths is not None:
        tensors["lengths"] = seqs.lengths
    write_snapshot(out_path, tensors, meta, force=force)
    return outcome, out_path, meta
