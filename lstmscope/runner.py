"""The ``run`` job as a library call: checkpoint + input -> states, checks and the facts to show.

Torch is imported here only when a run actually starts (through ``lstmscope.engine``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

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


@dataclass
class RunOutcome:
    checkpoint: Checkpoint
    module: LSTMModule
    sequences: Sequences
    result: "object"  # lstmscope.engine.RunResult
    view: StateView


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
    from lstmscope.engine import run_lstm

    result = run_lstm(
        module.spec,
        ck.module_parameters(module),
        seqs.data,
        lengths=seqs.lengths,
        dtype=opts.dtype,
        all_layers=opts.all_layers,
        device=opts.device,
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
    return RunOutcome(ck, module, seqs, result, view)
