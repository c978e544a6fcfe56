"""The ``run`` job as a library call: checkpoint + input -> states, checks and the facts to show.

Torch is imported here only when a run actually starts (through ``lstmscope.engine``).
"""

from __future__ import annotations

import os
from pathlib import Path
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lstmscope.readers import Checkpoint, LSTMModule, read_checkpoint
from lstmscope.errors import InputError, UsageError
from lstmscope.masking import StepMask, active
from lstmscope.report import LayerEnds, StateView, build_view
from lstmscope.sequences import Sequences, load_sequences
from lstmscope.spec import LSTMSpec
from lstmscope.tokens import EmbeddingRef

RUN_DTYPES = ("float16", "bfloat16", "float32", "float64")
AUTO_STREAM_BYTES = 256 << 20  # stream automatically when input + gates + output of the whole run pass this
AUTO_CHUNK_BYTES = 16 << 20  # automatic chunks hold about this much input + gates + output
MIN_AUTO_CHUNK = 256  # steps; fewer would make the per-chunk overhead show


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
    units: tuple | None = None  # --units as lstmscope.options.parse_span gives it (the front end parses the text)
    device: str = "cpu"
    initial_state: str | os.PathLike | None = None  # a state file whose h_n/c_n seed the run
    broadcast_state: bool = False  # allow a batch-1 initial state for a larger batch
    chunk_size: int | None = None  # time steps per chunk; None: automatic (see plan_chunks); 0: never chunk
    threads: int | None = None  # torch intra-op threads; None: engine.default_threads
    tmp_dir: str | None = None  # where bidirectional streamed runs keep layer outputs (default: TMPDIR)
    activation: str | None = None  # Keras modules: the cell activation to use instead of the file's (or default)
    recurrent_activation: str | None = None  # Keras modules: the gate activation, likewise
    embedding: str | None = None  # token inputs: the tensor holding the (vocab, input_size) embedding matrix
    mask_value: float | None = None  # Keras masking: skip steps whose features all equal this (as Masking does)
    no_mask: bool = False  # run every step of a masked module's input, padding included
    padding: str = "post"  # where --lengths' padding is: "post" (the end: packed) or "pre" (the front: skipped)


@dataclass
class RunResult:
    """The final states and what the checks need, however the run was done."""

    h_n: np.ndarray  # (num_layers * num_directions, batch, out)
    c_n: np.ndarray  # (num_layers * num_directions, batch, hidden)
    dtype: str  # the dtype the LSTM ran in
    layer_outputs: dict[int, "np.ndarray | LayerEnds"]  # whole outputs, or just their LayerEnds when streamed
    output: np.ndarray | None = None  # (batch, time, D * out): the last layer's whole output, unless streamed


@dataclass
class RunOutcome:
    checkpoint: Checkpoint
    module: LSTMModule
    sequences: Sequences
    result: RunResult
    view: StateView
    initial_state_sha256: str | None = None
    initial_state_path: str | None = None
    notes: list[str] = field(default_factory=list)  # one-line remarks for stderr
    chunk_size: int | None = None  # steps per chunk when the run was streamed
    threads: int = 1
    input_nonfinite: int = 0  # NaN/Inf values in the input
    engine: str = "fused"  # "fused" (nn.LSTM) or "stepwise" (any other cell)
    mask: StepMask | None = None  # the steps the LSTM read, when a mask (or --padding pre) skipped some
    data_warnings: list[str] = field(default_factory=list)  # e.g. a sequence every step of which is masked
    written: dict[str, tuple[int, ...]] = field(default_factory=dict)  # export-state: tensor -> shape, as written

    @property
    def output_width(self) -> int:
        return self.module.spec.num_directions * self.module.spec.output_size

    @property
    def nonfinite_states(self) -> list[dict]:
        """Per (layer, direction) with any: counts of non-finite h_n / c_n values."""
        return [{"layer": r.layer, "direction": r.direction, "h_n": r.h_n.nonfinite, "c_n": r.c_n.nonfinite}
                for r in self.view.rows if r.h_n.nonfinite or r.c_n.nonfinite]

    @property
    def warnings(self) -> list[str]:
        """One-line warnings about the data (for stderr and the JSON ``warnings`` list)."""
        out = []
        if self.input_nonfinite:
            bad = self.nonfinite_states
            where = "; ".join(f"layer {r['layer']} {r['direction']}: h_n {r['h_n']}, c_n {r['c_n']}" for r in bad)
            out.append(f"{self.sequences.display_name} holds {self.input_nonfinite:,} NaN/Inf value"
                       f"{'s' if self.input_nonfinite != 1 else ''}; non-finite final states: {where or 'none'}")
        elif self.nonfinite_states:
            out.append("the final states hold NaN/Inf values although the input is finite (the weights hold "
                       "NaN/Inf, or the run overflowed its dtype)")
        return self.data_warnings + out


def plan_chunks(opts: RunOptions, spec: LSTMSpec, seqs: Sequences) -> int | None:
    """Steps per chunk, or None for one whole run. Automatic: when the whole run's input, gates and
    output would pass AUTO_STREAM_BYTES, chunks of about AUTO_CHUNK_BYTES of them."""
    if opts.chunk_size is not None:
        if opts.chunk_size < 0:
            raise UsageError(f"--chunk-size {opts.chunk_size}: give a positive number of time steps (0: never chunk)")
        return opts.chunk_size if 0 < opts.chunk_size < seqs.time else None
    d = spec.num_directions
    per_step = seqs.batch * (seqs.features + d * 4 * spec.hidden_size + d * spec.output_size) * 4
    if seqs.time * per_step <= AUTO_STREAM_BYTES:
        return None
    auto = max(MIN_AUTO_CHUNK, AUTO_CHUNK_BYTES // per_step)
    return auto if seqs.time > auto else None


def _count_nonfinite(a: np.ndarray) -> int:
    return int(a.size - np.count_nonzero(np.isfinite(a)))


@dataclass
class _Prepared:
    """What every job reads before it runs: the checkpoint, the module (with any cell override), the input
    (token ids looked up in the embedding), the mask, and the initial state fitted to the module."""

    checkpoint: Checkpoint
    module: LSTMModule
    sequences: Sequences
    h0: np.ndarray | None
    c0: np.ndarray | None
    initial_state_sha256: str | None
    notes: list[str]  # one-line remarks for stderr
    mask: StepMask | None = None  # the steps the LSTM reads, when a mask skips some
    warnings: list[str] = field(default_factory=list)  # about the data (stderr and JSON warnings)


def check_input_options(opts: RunOptions) -> None:
    """Refuse option combinations that make no sense, before anything is read."""
    if opts.dtype is not None and opts.dtype not in RUN_DTYPES:
        raise UsageError(f"--dtype {opts.dtype} is not one of {', '.join(RUN_DTYPES)}")
    if opts.padding not in ("post", "pre"):
        raise UsageError(f"--padding {opts.padding!r}: give post (padding at the end) or pre (at the front)")
    if opts.no_mask and opts.mask_value is not None:
        raise UsageError("--no-mask and --mask-value contradict each other; pass one")
    if opts.padding == "pre" and opts.mask_value is not None:
        raise UsageError("--padding pre says where --lengths' padding is; --mask-value finds padding by its value: "
                         "pass one")


def _prepare(opts: RunOptions) -> _Prepared:
    check_input_options(opts)
    ck = read_checkpoint(opts.checkpoint)
    module = ck.with_cell(ck.module(opts.module), activation=opts.activation,
                          recurrent_activation=opts.recurrent_activation)
    spec = module.spec
    token_model = module.embedding is not None or opts.embedding is not None
    seqs = load_sequences(opts.input, time_major=opts.time_major, key=opts.key, lengths_path=opts.lengths,
                          expected_features=None if token_model else spec.input_size,
                          module_name=module.display_name)
    h0 = c0 = None
    state_sha = None
    notes = [n for n in [ck.reading_note()] if n] + seqs.notes  # e.g. read without running code from the file
    ref = resolve_embedding(ck, module, seqs, opts.embedding, notes)
    if ref is not None:
        seqs.attach_embedding(ck.embedding_matrix(ref), ref)
    warnings: list[str] = []
    mask = build_mask(module, seqs, opts, notes, warnings)
    if opts.initial_state is not None:
        from lstmscope.fileio import file_sha256
        from lstmscope.snapshot import fit_state, read_state_file

        state = read_state_file(opts.initial_state, allow_torch=True)
        h0, c0 = fit_state(state, module.display_name, spec, seqs.batch, broadcast=opts.broadcast_state)
        state_sha = file_sha256(state.path)
    return _Prepared(ck, module, seqs, h0, c0, state_sha, notes, mask, warnings)


def resolve_embedding(ck: Checkpoint, module: LSTMModule, seqs: Sequences, key: str | None,
                      notes: list[str]) -> EmbeddingRef | None:
    """The embedding token ids go through (None for float features), or an error that says what to pass."""
    from lstmscope.tokens import named_like_embedding

    where = seqs.display_name
    spec = module.spec
    if key is not None:
        if not seqs.tokens:
            raise UsageError(f"--embedding {key!r} looks token ids up, but {where} holds float features "
                             f"{tuple(seqs.source.shape)}; give integer ids (B, T), or drop --embedding")
        return ck.embedding_named(key, module, "--embedding")
    if not seqs.tokens:
        if module.embedding is None:
            return None
        e = module.embedding
        if seqs.features == spec.input_size:
            notes.append(f"note: module '{module.display_name}' reads token ids through {e.describe()}; {where} holds "
                         f"float features of width {spec.input_size}, fed to the LSTM as they are (no embedding)")
            return None
        raise InputError(f"{where} is {seqs.source.dtype} {tuple(seqs.source.shape)}, but module "
                         f"'{module.display_name}' reads token ids through {e.describe()}: give the ids as integers, "
                         f"(B, T) or (T,) (e.g. ids.astype(np.int64)), or float features (B, T, {spec.input_size})")
    if module.embedding is not None:
        return module.embedding
    cands = ck.embedding_candidates(module)
    named = named_like_embedding(cands)
    if len(named) == 1:
        from dataclasses import replace

        ref = ck.embedding_named(named[0], module, "its name")
        ref = replace(ref, how=f"the only 2-D tensor of width {spec.input_size} named like an embedding")
        notes.append(f"note: token ids looked up in {named[0]} {ref.vocab, ref.width}, the only 2-D tensor of width "
                     f"{spec.input_size} named like an embedding (--embedding KEY names another)")
        return ref
    what = f"{where} holds token ids ({seqs.source.dtype} {tuple(seqs.source.shape)})"
    if spec.framework in ("keras", "onnx") and not cands:
        feeder = "an Embedding layer" if spec.framework == "keras" else "a Gather of an embedding initializer"
        raise InputError(f"{what}, but module '{module.display_name}' of {ck.path.name} does not read its input "
                         f"from {feeder}; give float features (B, T, {spec.input_size})")
    if not cands:
        raise InputError(f"{what}, but {ck.path.name} has no embedding for module '{module.display_name}': no 2-D "
                         f"tensor of width {spec.input_size} (its input_size); give float features "
                         f"(B, T, {spec.input_size}) instead, or --embedding KEY")
    shown = ", ".join(cands[:8]) + (f" and {len(cands) - 8} more" if len(cands) > 8 else "")
    raise InputError(f"{what}; name the embedding matrix with --embedding KEY (candidates of width "
                     f"{spec.input_size}: {shown})")


def build_mask(module: LSTMModule, seqs: Sequences, opts: RunOptions, notes: list[str],
               warnings: list[str]) -> StepMask | None:
    """The steps the LSTM reads when a mask (the module's, --mask-value, or --padding pre) skips some; None when
    every step up to each length runs."""
    from lstmscope.masking import MaskRule, mask_from_rule

    spec = module.spec
    rule = module.mask
    if opts.no_mask:
        if rule is not None:
            notes.append(f"note: --no-mask: every step runs, padding included; Keras would skip the steps masked by "
                         f"{rule.source}")
        else:
            notes.append(f"note: --no-mask: module '{module.display_name}' has no mask; every step runs as before")
        return None
    if opts.mask_value is not None:
        if rule is not None:
            notes.append(f"note: --mask-value {opts.mask_value:g} replaces the mask of {rule.source}")
        rule = MaskRule("value", float(opts.mask_value), f"--mask-value {opts.mask_value:g}")
    elif opts.padding == "pre":
        if seqs.lengths is None:
            raise UsageError("--padding pre says each sequence's padding is at the front; it needs --lengths (or "
                             "'lengths' in the .npz) to say how many steps are real")
        rule = MaskRule("pre", source=f"--padding pre with lengths from {seqs.lengths_source}")
    if rule is None:
        return None
    if rule.kind == "zero_id" and not seqs.tokens:
        notes.append(f"note: {rule.source} masks token id 0, but the input is float features: every step runs "
                     "(--mask-value V masks steps whose features all equal V)")
        return None
    valid = mask_from_rule(rule, seqs.read_steps, seqs.batch, seqs.time,
                           read_ids=seqs.read_ids if seqs.tokens else None,
                           lengths=seqs.lengths)
    fill = "zero" if spec.bidirectional or rule.kind == "pre" or spec.framework == "onnx" else "repeat"
    mask = StepMask(valid, fill, rule.describe() if rule.kind == "pre" else f"{rule.source}: {rule.describe()}")
    for b in mask.empty:
        warnings.append(f"sequence {b} of {seqs.display_name}: every step is masked, so nothing is read; its final "
                        "state is the initial state and its output is all zeros")
    return mask


def _threads(opts: RunOptions, spec: LSTMSpec, seqs: Sequences) -> int:
    """Check the device, then set and return the torch thread count (``--threads``, or the default)."""
    from lstmscope import engine

    engine.check_device(opts.device)
    threads = opts.threads if opts.threads is not None else engine.default_threads(spec, seqs.batch)
    engine.configure_threads(threads)
    return threads


def execute_run(opts: RunOptions, *, progress=None, sink_for=None) -> RunOutcome:
    """Run ``opts``. ``progress(done, total)`` is called as a streamed run advances. ``sink_for(spec,
    seqs, dtype)`` may return a callable that receives the last layer's output chunk by chunk
    (``(start, (batch, n, D * out))``); then the whole output is never held."""
    p = _prepare(opts)
    ck, module, spec, seqs, h0, c0, state_sha, notes = (p.checkpoint, p.module, p.module.spec, p.sequences, p.h0,
                                                        p.c0, p.initial_state_sha256, p.notes)
    if h0 is not None and spec.bidirectional:
        notes.append("note: bidirectional model: the backward direction's initial state enters at the last time "
                     "step, so a chunked run cannot equal the whole run (the backward pass needs the future)")
    mask = active(p.mask)
    chunk = plan_chunks(opts, spec, seqs)
    from lstmscope import engine
    from lstmscope.sequences import reverse_steps

    threads = _threads(opts, spec, seqs)
    run_dtype = opts.dtype or spec.dtype
    params = ck.parameters(module)
    backwards = spec.go_backwards  # Keras go_backwards: each sequence read last step first; output in that order
    keras_backwards = backwards and spec.framework != "onnx"  # output in processing order over the whole time axis
    # a mask runs the valid steps only (compacted to the front, packed): the engines see run_lengths, run_time
    lengths = seqs.lengths if mask is None else mask.run_lengths
    if chunk is None:
        data = seqs.data if mask is None else mask.compact(seqs.data)
        if backwards:
            data = reverse_steps(data, lengths)
        nonfinite = _count_nonfinite(seqs.data)
        r = engine.run_lstm(spec, params, data, lengths=lengths, dtype=opts.dtype, all_layers=opts.all_layers,
                            device=opts.device, h0=h0, c0=c0)
        outs = dict(enumerate(r.layer_outputs)) if r.layer_outputs is not None else {spec.num_layers - 1: r.output}
        if backwards and spec.framework == "onnx":  # ONNX's Y is in input order: Y[t] = output[len-1-t]
            outs = {k: reverse_steps(v, lengths) for k, v in outs.items()}
        if mask is not None:  # back on the whole time axis, masked steps filled as Keras fills them
            outs = {k: mask.expand(v, backwards_in_place=keras_backwards) for k, v in outs.items()}
        output = outs[spec.num_layers - 1]
        result = RunResult(r.h_n, r.c_n, r.dtype, outs, output)
        if sink_for is not None:
            sink = sink_for(ck, module, seqs, r.dtype, state_sha, p.mask)
            if sink is not None:
                sink(0, output)
    else:
        from lstmscope.engine.streaming import stream_lstm

        counted = [0, 0]  # steps counted so far, non-finite values in them (the first pass, in order, only)

        read_steps = seqs.read_steps if mask is None else mask.compact_reader(seqs.read_steps)
        time = seqs.time if mask is None else mask.run_time
        if backwards:
            from lstmscope.sequences import reversed_reader

            read_steps = reversed_reader(read_steps, lengths, time, seqs.batch)

        def read(start: int, stop: int) -> np.ndarray:
            x = read_steps(start, stop)
            if start == counted[0]:
                counted[0] = stop
                counted[1] += _count_nonfinite(x)
            return x

        sink = sink_for(ck, module, seqs, run_dtype, state_sha, p.mask) if sink_for is not None else None
        if sink is not None and mask is not None:
            if backwards and spec.framework == "onnx":
                raise UsageError("a masked, streamed run of a reverse ONNX node cannot write its output as it goes; "
                                 "pass --chunk-size 0 (a whole run)")
            sink = mask.expanding_sink(sink.put_row, backwards_in_place=keras_backwards)
        r = stream_lstm(spec, params, read, batch=seqs.batch, time=time, chunk_size=chunk,
                        lengths=lengths, dtype=opts.dtype, all_layers=opts.all_layers, h0=h0, c0=c0,
                        device=opts.device, sink=sink, progress=progress, tmp_dir=opts.tmp_dir)
        if sink is not None and mask is not None:
            sink.finish()
        nonfinite = counted[1]
        ends = dict(r.layer_ends)
        if backwards and spec.framework == "onnx":  # in ONNX's input order, processing's last step is Y[0]
            ends = {k: LayerEnds(at_last=e.at_first, at_first=e.at_last) for k, e in ends.items()}
        result = RunResult(r.h_n, r.c_n, r.dtype, ends)
    if mask is not None:
        _initial_for_empty(result, mask, h0, c0)
        last, first = mask.output_steps(keras_backwards)  # where each direction's last step read lands
    else:
        last = seqs.last_steps()
        first = np.zeros(seqs.batch, dtype=np.int64)
    view = build_view(
        spec,
        result.h_n,
        result.c_n,
        last_steps=last,
        first_steps=first,
        layout=seqs.layout,
        time=seqs.time,
        layer_outputs=result.layer_outputs,
        batch_index=opts.batch_index,
        units=opts.units,
    )
    view.masked = mask is not None
    view.valid = None if mask is None else mask.valid
    if module.graph is not None:
        view.graph_layout = module.graph.layout
    out = RunOutcome(ck, module, seqs, result, view, state_sha,
                     None if opts.initial_state is None else str(opts.initial_state), notes, chunk, threads, nonfinite,
                     engine.engine_name(spec))
    out.mask = p.mask
    out.data_warnings = p.warnings
    return out


def _initial_for_empty(result: RunResult, mask: StepMask, h0: np.ndarray | None, c0: np.ndarray | None) -> None:
    """A sequence with no valid step reads nothing: its final state is its initial state (its throwaway step in
    the compacted run is replaced), as in Keras."""
    for b in mask.empty:
        result.h_n[:, b] = 0 if h0 is None else h0[:, b]
        result.c_n[:, b] = 0 if c0 is None else c0[:, b]


STATE_DTYPES = ("float16", "float32", "float64")  # what export-state --state-dtype may store


def export_state(opts: RunOptions, out: str | os.PathLike, *, include_output: bool = False, force: bool = False,
                 progress=None, layout: str | None = None, state_dtype: str | None = None):
    """Run, then write a v1 snapshot of the final states (and, with ``include_output``, the output,
    written chunk by chunk as a streamed run makes it). ``layout``: "torch" (h_n, c_n) or "keras" (per layer
    ``[h, c]`` as ``initial_state`` takes them); None: the module's framework's. Returns (outcome, written
    path, metadata). "onnx" (ONNX modules' default): the graph's own state feeds, named and shaped as
    the graph declares them where the nodes take their initial state from graph inputs (see
    lstmscope.readers.onnx.feeds), else ``{node}/initial_h``/``{node}/initial_c`` (D, batch, hidden).
    An ONNX reverse node's output is written in input order, as ONNX's Y is. ``state_dtype``: the dtype the
    tensors are stored in (default: the run's; bfloat16 runs store float32); metadata ``dtype`` stays the run's."""
    from lstmscope.fileio import check_safetensors_name, check_target, refuse_overwriting_sources
    from lstmscope.snapshot import (LAYOUTS, SnapshotWriter, check_layout, default_layout, snapshot_metadata,
                                    state_layout, state_tensors)

    out_path = Path(out)
    if state_dtype is not None and state_dtype not in STATE_DTYPES:
        raise UsageError(f"--state-dtype {state_dtype} is not one of {', '.join(STATE_DTYPES)}")
    if layout is not None and layout not in LAYOUTS:  # refuse before the run, in the module's terms
        check_layout(layout, read_checkpoint(opts.checkpoint).module(opts.module).spec)
    refuse_overwriting_sources(out_path, opts.checkpoint, opts.input, opts.lengths, opts.initial_state)
    name_note = check_safetensors_name(out_path)
    check_target(out_path, force)  # refuse before spending time on the run
    box: dict = {}

    def sink_for(ck: Checkpoint, module: LSTMModule, seqs: Sequences, dtype: str, state_sha: str | None,
                 mask: StepMask | None):
        """Open the snapshot before the run, so the output can go straight to its place in the file."""
        spec = module.spec
        kind = check_layout(layout or default_layout(spec), spec)
        feed = module.graph.state_feed(seqs.batch) if kind == "onnx" else None
        box["layout"], box["spec"], box["feed"] = kind, spec, feed
        meta = snapshot_metadata(spec, batch_size=seqs.batch, dtype=dtype, module=module.prefix,
                                 checkpoint_sha256=ck.sha256, input_sha256=seqs.sha256, lengths=seqs.lengths,
                                 initial_state_sha256=state_sha, layout=kind, feed=feed,
                                 mask=None if mask is None else mask.to_meta(), embedding=seqs.embedding_ref)
        np_dtype = state_dtype or ("float32" if dtype == "bfloat16" else dtype)  # what the file stores
        tensors = state_layout(spec, seqs.batch, np_dtype, kind, feed)
        clash = sorted(set(tensors) & {"output", "lengths"})
        if clash:
            raise UsageError(f"the graph's state input {clash[0]!r} has the name lstmscope gives its own tensor; "
                             "pass --layout torch")
        if include_output:
            tensors["output"] = (np_dtype, (seqs.batch, seqs.time, spec.num_directions * spec.output_size))
        if seqs.lengths is not None:
            tensors["lengths"] = ("int64", (seqs.batch,))
        box["meta"] = meta
        box["writer"] = w = SnapshotWriter(out_path, tensors, meta, force=force)
        w.__enter__()
        if not include_output:
            return None
        if spec.go_backwards and spec.framework == "onnx" and plan_chunks(opts, spec, seqs) is not None:
            lens = seqs.lengths if seqs.lengths is not None else np.full(seqs.batch, seqs.time, dtype=np.int64)
            # streamed chunks come in processing order; ONNX's Y is in input order: reversed per sequence
            return lambda start, chunk: w.put_reversed_steps("output", start, chunk, lens)
        return _OutputSink(w)

    try:
        outcome = execute_run(opts, progress=progress, sink_for=sink_for)
        res, seqs = outcome.result, outcome.sequences
        w = box["writer"]
        for name, a in state_tensors(box["spec"], res.h_n, res.c_n, box["layout"], box["feed"]).items():
            w.put(name, a)
        if seqs.lengths is not None:
            w.put("lengths", seqs.lengths)
    except BaseException as e:
        if "writer" in box:
            box["writer"].__exit__(type(e), e, e.__traceback__)
        raise
    box["writer"].__exit__(None, None, None)
    outcome.written = {k: tuple(shape) for k, (_, shape) in box["writer"].layout.items()}
    if box["feed"] is not None:
        outcome.notes += [f"note: {n}" for n in box["feed"]["notes"]]
    if name_note:
        outcome.notes.append(name_note)
    return outcome, out_path, box["meta"]


class _OutputSink:
    """Writes a run's output into a snapshot as it comes: whole chunks of steps, or (a masked streamed run) rows of
    one sequence."""

    def __init__(self, writer):
        self.w = writer

    def __call__(self, start: int, chunk: np.ndarray) -> None:
        self.w.put_steps("output", start, chunk)

    def put_row(self, b: int, start: int, rows: np.ndarray) -> None:
        self.w.put_row_steps("output", b, start, rows)


@dataclass
class TraceOutcome:
    """What ``trace`` wrote."""

    module: LSTMModule
    sequences: Sequences
    path: Path
    meta: dict
    layout: dict  # tensor name -> (numpy dtype name, shape), as written
    notes: list[str] = field(default_factory=list)  # one-line remarks for stderr
    threads: int = 1
    summary: Any = None  # lstmscope.tracestats.TraceStats of what was written
    chunk_size: int | None = None  # steps per chunk when the trace was streamed
    warnings: list[str] = field(default_factory=list)  # about the data (stderr and the JSON's warnings)


def trace(opts: RunOptions, out: str | os.PathLike, *, quantities: str | None = None, order: str = "input",
          force: bool = False, check=None, progress=None) -> TraceOutcome:
    """Run ``opts`` step by step and write every step of every layer, direction and quantity to ``out``
    (see lstmscope.tracefile for the file). Blocks go to their place in the file as the engine makes them,
    so the whole trace is never held. ``quantities``: "h,c,i,f,g,o" or a part (None: all); ``order``:
    "input" or "processing". ``check(module, sequences, quantities)``, when given, is called once the
    checkpoint and input are read and before anything runs or is written (to refuse bad options early).
    A long input streams (``opts.chunk_size``, automatic as for ``run``: see plan_chunks) in flat memory,
    with temporary files in ``opts.tmp_dir``; ``progress(done, total)`` counts steps of every layer and
    direction."""
    from lstmscope.fileio import check_safetensors_name, check_target, refuse_overwriting_sources
    from lstmscope.tracefile import TraceWriter, check_order, parse_quantities, trace_layout, trace_metadata

    picked = parse_quantities(quantities)
    check_order(order)
    out_path = Path(out)
    refuse_overwriting_sources(out_path, opts.checkpoint, opts.input, opts.lengths, opts.initial_state)
    name_note = check_safetensors_name(out_path, "trace")
    check_target(out_path, force)  # refuse before spending time on the run
    p = _prepare(opts)
    ck, module, spec, seqs, notes = p.checkpoint, p.module, p.module.spec, p.sequences, p.notes
    if name_note:
        notes.append(name_note)
    if check is not None:
        check(module, seqs, picked)
    from lstmscope.engine.trace import stream_trace, trace_lstm
    from lstmscope.tracefile import tensor_name
    from lstmscope.tracestats import TraceSummary

    threads = _threads(opts, spec, seqs)
    chunk = plan_chunks(opts, spec, seqs)
    run_dtype = opts.dtype or spec.dtype
    np_dtype = "float32" if run_dtype == "bfloat16" else run_dtype  # bfloat16 traces come back as float32
    params = ck.parameters(module)
    mask = active(p.mask)
    if mask is not None and order != "input":
        raise UsageError("--order processing with a mask: a masked trace is stored in input order only (each step "
                         "at the input step it read; skipped steps NaN)")
    layout = trace_layout(spec, seqs.batch, seqs.time, np_dtype, picked, seqs.lengths is not None)
    if mask is not None:
        layout["valid"] = ("uint8", (seqs.batch, seqs.time))
    meta = trace_metadata(spec, dtype=run_dtype, module=module.prefix, checkpoint_sha256=ck.sha256,
                          input_sha256=seqs.sha256, lengths=seqs.lengths, initial_state_sha256=p.initial_state_sha256,
                          time_order=order, quantities=picked)
    if mask is not None:
        meta["mask"] = mask.to_meta()
    if seqs.embedding_ref is not None:
        meta["embedding"] = seqs.embedding_ref.to_dict()
    lens = seqs.lengths if seqs.lengths is not None else np.full(seqs.batch, seqs.time, dtype=np.int64)
    if mask is not None:  # the engine runs the valid steps only, compacted (see lstmscope.masking)
        lens = mask.run_lengths

    def stored_flipped(direction: int) -> bool:
        """Whether the file keeps this direction reversed per sequence: processing order, for a direction that
        ran backwards (the backward one, or a go_backwards layer)."""
        return order == "processing" and ((direction == 1) != spec.go_backwards)

    summary = TraceSummary(lengths=lens if mask is None else mask.counts)  # O(width) per key, fed what the file is
    with TraceWriter(out_path, layout, meta, force=force) as w:
        def sink(layer: int, direction: int, quantity: str, start: int, block: np.ndarray, flipped: bool) -> None:
            summary.add(layer, ("forward", "backward")[direction], quantity, start, block, flipped=flipped)
            name = tensor_name(spec, layer, direction, quantity)
            if mask is not None:
                mask.scatter(start, block, flipped, lambda b, t0, rows: w.put_row_steps(name, b, t0, rows))
            elif flipped != stored_flipped(direction):
                w.put_reversed_steps(name, start, block, lens)
            else:
                w.put_steps(name, start, block)

        data, read_steps, time = seqs.data if chunk is None else None, seqs.read_steps, seqs.time
        if mask is not None:
            for name, (dt, shape) in layout.items():  # skipped steps hold NaN, like padding
                if len(shape) == 3:
                    mask.fill_skipped(lambda b, t0, rows, name=name: w.put_row_steps(name, b, t0, rows),
                                      np.dtype(dt), shape[2])
            w.put("valid", mask.valid.astype(np.uint8))
            data = mask.compact(seqs.data) if chunk is None else None
            read_steps, time = mask.compact_reader(seqs.read_steps), mask.run_time
        run = dict(lengths=seqs.lengths if mask is None else lens, h0=p.h0, c0=p.c0, dtype=opts.dtype,
                   device=opts.device, quantities=picked, sink=sink, progress=progress)
        if chunk is None:
            trace_lstm(spec, params, data, **run)
        else:
            stream_trace(spec, params, read_steps, batch=seqs.batch, time=time, chunk_size=chunk,
                         tmp_dir=opts.tmp_dir, **run)
        if seqs.lengths is not None:
            w.put("lengths", seqs.lengths)
    stats = summary.result()
    if mask is not None:  # where the largest |c| is: a compacted step -> the input step it read
        pos = mask.positions
        for d in stats.directions:
            if d.max_abs_c_at is not None:
                b, k, u = d.max_abs_c_at
                d.max_abs_c_at = (b, int(pos[b, k]), u)
        for r in stats.rows:
            r.steps = seqs.time
    return TraceOutcome(module, seqs, out_path, meta, layout, notes, threads, stats, chunk, p.warnings)
