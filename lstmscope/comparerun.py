"""``compare``: one input through two sides, diffed per layer and direction with diff-states' rules.

A side is a checkpoint's module run in one setting: lstmscope's engine (fused nn.LSTM or the stepwise cell) in
a dtype on a device, or (``runtime="onnxruntime"``) the ONNX file's own LSTM nodes run by onnxruntime, each
node extracted with its weights into a one-node model. Both sides read the same input, lengths and initial
state; states are compared in PyTorch's layout (layers * directions, batch, width), whatever the formats.

B is the reference (compare.py's rule: ``|a - b| <= atol + rtol * |b|``). torch is imported only when a side
runs (through lstmscope.engine); onnxruntime only for a runtime side.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lstmscope.statediff import DEFAULT_ATOL, DEFAULT_RTOL, DiffResult, compare_arrays
from lstmscope.errors import CheckpointError, InputError, UsageError, clean_message
from lstmscope.fileio import given, shown_name
from lstmscope.readers import Checkpoint, LSTMModule, read_checkpoint
from lstmscope.report import DIRECTIONS
from lstmscope.sequences import Sequences
from lstmscope.spec import LSTMSpec

ENGINES = ("fused", "stepwise")
RUNTIMES = ("lstmscope", "onnxruntime")
# Two modules are comparable when these agree (the shapes of everything compared)
SHAPE_FIELDS = ("input_size", "hidden_size", "proj_size", "num_layers", "num_directions")
# Listed when they differ (states then usually differ too: these say why)
CELL_FIELDS = ("bias", "gate_activation", "cell_activation", "hidden_activation", "go_backwards", "peephole", "clip",
               "input_forget")
ORT_MISSING = "--b-runtime onnxruntime needs onnxruntime: pip install 'lstmscope[onnx]'"


@dataclass
class CompareOptions:
    a: str | os.PathLike  # checkpoint A
    b: str | os.PathLike | None  # checkpoint B; None: A again, in B's settings
    input: str | os.PathLike
    module_a: str | None = None
    module_b: str | None = None
    key: str | None = None
    lengths: str | os.PathLike | None = None
    time_major: bool = False
    dtype: str | None = None  # both sides (None: each checkpoint's)
    device: str = "cpu"  # both sides
    threads: int | None = None
    initial_state: str | os.PathLike | None = None
    broadcast_state: bool = False
    activation: str | None = None  # Keras sides only
    recurrent_activation: str | None = None
    all_layers: bool = False  # also compare every layer's output, not only the last layer's
    per_step: bool = False  # also compare h and c at every step (traces)
    b_dtype: str | None = None
    b_device: str | None = None
    b_engine: str | None = None  # "fused" or "stepwise"; None: the module's (fused unless the cell needs stepwise)
    b_runtime: str | None = None  # "onnxruntime"; None: lstmscope
    atol: float = DEFAULT_ATOL
    rtol: float = DEFAULT_RTOL
    equal_nan: bool = False
    embedding: str | None = None  # token inputs: A's embedding tensor (as run's --embedding)
    mask_value: float | None = None  # as run's: Keras masking semantics on both sides
    no_mask: bool = False
    padding: str = "post"


@dataclass
class Side:
    """What one side was."""

    label: str  # "A" or "B"
    path: str
    sha256: str
    format: str  # the reader's: "torch-zip", "onnx", "keras-h5", ...
    module: str  # its display name
    framework: str  # the spec's: "pytorch", "keras", "onnx"
    runtime: str  # "lstmscope" or "onnxruntime"
    engine: str | None  # "fused" / "stepwise" for lstmscope; None for onnxruntime
    dtype: str  # the dtype it ran in
    device: str

    def describe(self) -> str:
        how = "onnxruntime (each LSTM node alone)" if self.runtime == "onnxruntime" else \
            f"lstmscope {self.engine}"
        return f"{self.path} [{self.module or '(top level)'}] {self.format}, {how}, {self.dtype}, {self.device}"

    def to_dict(self) -> dict:
        return {"path": self.path, "sha256": self.sha256, "format": self.format, "module": self.module,
                "framework": self.framework, "runtime": self.runtime, "engine": self.engine, "dtype": self.dtype,
                "device": self.device}


@dataclass
class CompareResult:
    a: Side
    b: Side
    diff: DiffResult  # h_n / c_n per layer and direction, then output rows
    steps: DiffResult | None = None  # with per_step: kind "trace", h and c per (layer, direction)
    input: dict = field(default_factory=dict)  # path, batch, time, features, lengths
    notes: list[str] = field(default_factory=list)  # one-line remarks for stderr

    @property
    def equal(self) -> bool:
        return self.diff.equal and (self.steps is None or self.steps.equal)


@dataclass
class _Run:
    h_n: np.ndarray  # (num_layers * num_directions, batch, out)
    c_n: np.ndarray  # (num_layers * num_directions, batch, hidden)
    outputs: dict[int, np.ndarray]  # layer -> (batch, time, D * out), in the module's processing order
    dtype: str
    steps: dict[tuple[int, int, str], np.ndarray] | None = None  # (layer, direction, q) -> (batch, time, width)


# --- choosing the sides ------------------------------------------------------------------------------------

def _check_options(o: CompareOptions) -> None:
    from lstmscope.runner import RUN_DTYPES

    for flag, v in (("--dtype", o.dtype), ("--b-dtype", o.b_dtype)):
        if v is not None and v not in RUN_DTYPES:
            raise UsageError(f"{flag} {v} is not one of {', '.join(RUN_DTYPES)}")
    if o.b_engine is not None and o.b_engine not in ENGINES:
        raise UsageError(f"--b-engine {o.b_engine}: choose {' or '.join(ENGINES)}")
    if o.b_runtime is not None and o.b_runtime not in RUNTIMES:
        raise UsageError(f"--b-runtime {o.b_runtime}: choose onnxruntime (or lstmscope, the default)")
    if o.atol < 0 or o.rtol < 0:
        raise UsageError("--atol and --rtol must be >= 0")
    ort = o.b_runtime == "onnxruntime"
    if ort:
        given = [f for f, v in (("--b-dtype", o.b_dtype), ("--b-engine", o.b_engine), ("--b-device", o.b_device))
                 if v is not None]
        if given:
            raise UsageError(f"{', '.join(given)} and --b-runtime onnxruntime do not go together: onnxruntime runs "
                             "the file's nodes in their own dtype, on the CPU")
    if o.b is None and not ort and o.b_dtype is None and o.b_device is None and o.b_engine is None:
        raise UsageError("nothing to compare: give a second checkpoint (lstmscope compare A B INPUT) or a setting "
                         "for side B (--b-dtype, --b-device, --b-engine, --b-runtime onnxruntime)")


def _pick_module(ck: Checkpoint, wanted: str | None, flag: str) -> LSTMModule:
    try:
        return ck.module(wanted)
    except CheckpointError as e:
        raise CheckpointError(e.message.replace("--module", flag)) from None


def _pick_b(ck_b: Checkpoint, mod_a: LSTMModule, ck_a: Checkpoint, wanted: str | None) -> LSTMModule:
    """B's module: --module-b, the only one, or the one at A's place in its file with A's shape, or the only
    one of B's with A's shape."""
    if wanted is not None or len(ck_b.modules) <= 1:
        return _pick_module(ck_b, wanted, "--module-b")
    shape = _shape(mod_a.spec)
    same = [m for m in ck_b.modules if _shape(m.spec) == shape]
    index = next((i for i, m in enumerate(ck_a.modules) if m.name == mod_a.name), None)
    if index is not None and index < len(ck_b.modules) and _shape(ck_b.modules[index].spec) == shape:
        return ck_b.modules[index]
    if len(same) == 1:
        return same[0]
    choices = " or ".join(f"--module-b {m.name or repr('')}" for m in (same or ck_b.modules))
    raise UsageError(f"{ck_b.path.name} holds {len(ck_b.modules)} LSTMs and "
                     f"{'several' if same else 'none'} of them has the shape of A's module "
                     f"'{mod_a.display_name}'; pass {choices}")


def _shape(spec: LSTMSpec) -> tuple:
    d = spec.to_dict()
    return tuple(d[f] for f in SHAPE_FIELDS)


def _cell(module: LSTMModule, ck: Checkpoint, o: CompareOptions) -> LSTMModule:
    """The module with --activation/--recurrent-activation where its format takes them (Keras)."""
    if (o.activation is None and o.recurrent_activation is None) or ck._cell_override is None:
        return module
    return ck.with_cell(module, activation=o.activation, recurrent_activation=o.recurrent_activation)


def _engine(spec: LSTMSpec, wanted: str | None, label: str) -> str:
    from lstmscope.engine import engine_name

    natural = engine_name(spec)
    if wanted is None:
        return natural
    if wanted == "fused" and natural != "fused":
        raise UsageError(f"--b-engine fused: side {label}'s cell (peepholes, clip, other activations) is one "
                         "nn.LSTM's fused kernel cannot compute; only the stepwise engine runs it")
    return wanted


# --- the comparison ---------------------------------------------------------------------------------------

def compare_run(o: CompareOptions) -> CompareResult:
    """Run ``o.input`` through both sides and diff them (B the reference). Raises LstmscopeError for bad
    input; two modules of different shapes give a result that is not comparable (``diff.architecture``)."""
    from lstmscope.sequences import load_sequences

    _check_options(o)
    ort = o.b_runtime == "onnxruntime"
    ck_a = read_checkpoint(o.a)
    ck_b = ck_a if o.b is None or Path(o.b) == Path(o.a) else read_checkpoint(o.b)
    if ort:
        from lstmscope.sniff import ONNX

        if ck_b.format != ONNX:
            which = "A" if o.b is None else "B"
            raise UsageError(f"--b-runtime onnxruntime runs an ONNX file's LSTM nodes, and {ck_b.path} (side "
                             f"{which}) is {ck_b.format}; export the model to ONNX first, or compare it with "
                             "lstmscope compare MODEL MODEL.onnx INPUT --b-runtime onnxruntime")
    mod_a = _cell(_pick_module(ck_a, o.module_a, "--module-a"), ck_a, o)
    if ck_b is ck_a and o.module_b is None:
        mod_b = mod_a
    else:
        mod_b = _cell(_pick_b(ck_b, mod_a, ck_a, o.module_b), ck_b, o)
    if (o.activation is not None or o.recurrent_activation is not None) and \
            ck_a._cell_override is None and ck_b._cell_override is None:
        ck_a.with_cell(mod_a, activation=o.activation, recurrent_activation=o.recurrent_activation)  # raises
    sa, sb = mod_a.spec, mod_b.spec
    dev_b = o.b_device or o.device
    eng_a = _engine(sa, None, "A")
    eng_b = None if ort else _engine(sb, o.b_engine, "B")
    side_a = Side("A", given(ck_a.path), ck_a.sha256, ck_a.format, mod_a.display_name, sa.framework, "lstmscope",
                  eng_a, o.dtype or sa.dtype, o.device)
    side_b = Side("B", given(ck_b.path), ck_b.sha256, ck_b.format, mod_b.display_name, sb.framework,
                  "onnxruntime" if ort else "lstmscope", eng_b,
                  sb.dtype if ort else (o.b_dtype or o.dtype or sb.dtype), "cpu" if ort else dev_b)
    diff = DiffResult(side_a.describe(), side_b.describe(), o.atol, o.rtol, o.equal_nan)
    _spec_differences(diff, sa, sb)
    notes = [n for n in {ck_a.reading_note(), ck_b.reading_note()} if n]
    if not diff.comparable:
        return CompareResult(side_a, side_b, diff, notes=notes)
    from lstmscope.runner import build_mask, check_input_options

    check_input_options(o)
    token_model = mod_a.embedding is not None or o.embedding is not None
    seqs = load_sequences(o.input, time_major=o.time_major, key=o.key, lengths_path=o.lengths,
                          expected_features=None if token_model else sa.input_size, module_name=mod_a.display_name)
    notes += seqs.notes
    data_a, data_b = _embedded(ck_a, mod_a, ck_b, mod_b, seqs, o, notes)
    warnings: list[str] = []
    mask = build_mask(mod_a, seqs, o, notes, warnings)
    notes += [f"warning: {w}" for w in warnings]
    from lstmscope.masking import active

    mask = active(mask)
    lengths = seqs.lengths
    if mask is not None:  # both sides read the steps A's mask keeps, compacted (see lstmscope.masking)
        data_a, data_b, lengths = mask.compact(data_a), mask.compact(data_b), mask.run_lengths
        notes.append(f"note: both sides read only the steps A's mask keeps: {mask.source}"
                     + ("; per step, the steps read are compared (masked ones left out)" if o.per_step else ""))
    h0 = c0 = None
    if o.initial_state is not None:
        from lstmscope.snapshot import fit_state, read_state_file

        state = read_state_file(o.initial_state, allow_torch=True)
        h0, c0 = fit_state(state, mod_a.display_name, sa, seqs.batch, broadcast=o.broadcast_state)
    from lstmscope import engine

    engine.check_device(o.device)
    if o.b_device is not None and o.b_device != o.device:
        try:
            engine.check_device(o.b_device)
        except UsageError as e:
            raise UsageError(e.message.replace("--device", "--b-device", 1)) from None
    engine.configure_threads(o.threads if o.threads is not None else engine.default_threads(sa, seqs.batch))
    run_a = _run_lstmscope(sa, ck_a.parameters(mod_a), data_a, lengths, h0, c0, o.dtype, o.device,
                           eng_a == "stepwise" and sa.standard_cell, o.all_layers, o.per_step)
    if ort:
        run_b = _run_onnxruntime(ck_b.path, sb, data_b, lengths, h0, c0, o.all_layers, o.per_step, o.threads)
        notes.append("note: side B is onnxruntime " + _ort_version() + ", running each LSTM node of "
                     f"'{mod_b.display_name}' alone in a one-node model with the file's weights")
    else:
        run_b = _run_lstmscope(sb, ck_b.parameters(mod_b), data_b, lengths, h0, c0, o.b_dtype or o.dtype, dev_b,
                               eng_b == "stepwise" and sb.standard_cell, o.all_layers, o.per_step)
    if mask is not None:  # outputs back on the whole time axis; a wholly masked sequence keeps its initial state
        from lstmscope.runner import _initial_for_empty

        for r in (run_a, run_b):
            r.outputs = {k: mask.expand(v, backwards_in_place=sa.go_backwards) for k, v in r.outputs.items()}
            _initial_for_empty(r, mask, h0, c0)
    side_a.dtype, side_b.dtype = run_a.dtype, run_b.dtype
    diff.a, diff.b = side_a.describe(), side_b.describe()
    _state_rows(diff, sa, run_a, run_b)
    steps = None
    if o.per_step:
        steps = _step_rows(side_a, side_b, sa, run_a, run_b, seqs.lengths if mask is None else mask.counts, o)
        if ort:
            notes.append("note: per step, onnxruntime hands back h (Y) but not c, so c is compared at the last "
                         "step only")
        notes.append(f"note: per-step values of {'side A' if ort else 'both sides'} come from lstmscope's stepwise "
                     "engine (the fused kernel keeps no per-step c); the final states come from each side's "
                     "own engine")
    inp = {"path": given(seqs.path), "key": seqs.key, "layout": seqs.layout, "batch": seqs.batch, "time": seqs.time,
           "features": seqs.features, "lengths": None if seqs.lengths is None else seqs.lengths.tolist(),
           "tokens": seqs.tokens, "embedding": None if seqs.embedding_ref is None else seqs.embedding_ref.to_dict(),
           "mask": None if mask is None else mask.to_meta()}
    return CompareResult(side_a, side_b, diff, steps, inp, notes)


def _embedded(ck_a: Checkpoint, mod_a: LSTMModule, ck_b: Checkpoint, mod_b: LSTMModule, seqs: Sequences,
              o: CompareOptions, notes: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Each side's input as features: token ids through each side's own embedding (B falls back to A's when its
    file has none), float features as they are."""
    from lstmscope.runner import resolve_embedding

    try:
        ref_a = resolve_embedding(ck_a, mod_a, seqs, o.embedding, notes)
    except InputError:
        if not seqs.tokens or ck_b is ck_a or o.embedding is not None:
            raise
        ref_b = resolve_embedding(ck_b, mod_b, seqs, None, notes)  # A has none: B's, for both (or B's error)
        seqs.attach_embedding(ck_b.embedding_matrix(ref_b), ref_b)
        notes.append(f"note: side A ({shown_name(ck_a.path)}) has no embedding of its own that lstmscope finds; both sides "
                     f"read the ids through B's {ref_b.describe()}")
        return seqs.data, seqs.data
    if ref_a is None:
        return seqs.data, seqs.data
    seqs.attach_embedding(ck_a.embedding_matrix(ref_a), ref_a)
    data_a = seqs.data
    if ck_b is ck_a and mod_b.embedding == mod_a.embedding:
        return data_a, data_a
    try:
        ref_b = resolve_embedding(ck_b, mod_b, seqs, None, [])
    except (InputError, UsageError):
        ref_b = None
    if ref_b is None:
        notes.append(f"note: side B ({shown_name(ck_b.path)}) has no embedding of its own that lstmscope finds; both sides "
                     f"read the ids through A's {ref_a.describe()}")
        return data_a, data_a
    from lstmscope.tokens import check_ids, lookup

    matrix = ck_b.embedding_matrix(ref_b)
    check_ids(seqs.ids, matrix.shape[0], f"{seqs.display_name} (side B's embedding {ref_b.name})")
    notes.append(f"note: token ids: side A through {ref_a.describe()}, side B through {ref_b.describe()}")
    return data_a, lookup(matrix, seqs.ids)


def _spec_differences(diff: DiffResult, sa: LSTMSpec, sb: LSTMSpec) -> None:
    """Shape fields that differ make the sides not comparable; cell fields and names are listed."""
    da, db = sa.to_dict(), sb.to_dict()
    for f in SHAPE_FIELDS:
        if da[f] != db[f]:
            diff.architecture[f] = [da[f], db[f]]
    for f in CELL_FIELDS + ("dtype", "framework"):
        va, vb = da.get(f), db.get(f)
        if f == "peephole" or f == "input_forget":
            va, vb = bool(va), bool(vb)
        if va != vb:
            diff.provenance[f"spec.{f}"] = [_short(va), _short(vb)]


def _short(v):
    if isinstance(v, dict) and "name" in v:  # an activation
        args = [f"{v[k]:g}" for k in ("alpha", "beta") if v.get(k) is not None]
        return v["name"] + (f"({', '.join(args)})" if args else "")
    return v


def _state_rows(diff: DiffResult, spec: LSTMSpec, a: _Run, b: _Run) -> None:
    d = spec.num_directions
    kw = dict(atol=diff.atol, rtol=diff.rtol, equal_nan=diff.equal_nan)
    for name, xa, xb in (("h_n", a.h_n, b.h_n), ("c_n", a.c_n, b.c_n)):
        for i in range(xa.shape[0]):  # (num_layers * num_directions, batch, width)
            diff.rows.append(compare_arrays(xa[i], xb[i], tensor=name, layer=i // d, direction=DIRECTIONS[i % d],
                                            **kw))
    last = spec.num_layers - 1
    for layer in sorted(set(a.outputs) & set(b.outputs)):
        name = "output" if layer == last else f"output layer {layer}"
        diff.rows.append(compare_arrays(a.outputs[layer], b.outputs[layer], tensor=name, **kw))


def _step_rows(side_a: Side, side_b: Side, spec: LSTMSpec, a: _Run, b: _Run, lengths, o: CompareOptions) -> DiffResult:
    from lstmscope.tracediff import compare_steps

    res = DiffResult(side_a.describe(), side_b.describe(), o.atol, o.rtol, o.equal_nan, kind="trace")
    from lstmscope.tracefile import QUANTITIES

    for key in sorted(a.steps, key=lambda k: (k[0], k[1], QUANTITIES.index(k[2]))):  # h before c, as diff-states
        if key not in b.steps:
            continue
        layer, direction, q = key
        res.rows.append(compare_steps(a.steps[key], b.steps[key], lengths=lengths, atol=o.atol, rtol=o.rtol,
                                      equal_nan=o.equal_nan, tensor=f"layer{layer}/{DIRECTIONS[direction]}/{q}",
                                      layer=layer, direction=DIRECTIONS[direction], quantity=q))
    return res


# --- lstmscope's side -------------------------------------------------------------------------------------

def _run_lstmscope(spec: LSTMSpec, params: dict, data: np.ndarray, lengths, h0, c0, dtype: str | None, device: str,
                   force_stepwise: bool, all_layers: bool, per_step: bool) -> _Run:
    """The module's final states and output(s) as ``lstmscope run`` computes them (a go_backwards module reads
    each sequence last step first); ``force_stepwise`` runs a standard cell in the stepwise engine."""
    from lstmscope.engine import run_lstm

    x = data
    if spec.go_backwards:
        from lstmscope.sequences import reverse_steps

        x = reverse_steps(data, lengths)
    if force_stepwise:
        r = _run_stepwise(spec, params, x, lengths, h0, c0, dtype, device, all_layers)
    else:
        r = run_lstm(spec, params, x, lengths=lengths, dtype=dtype, all_layers=all_layers, device=device, h0=h0,
                     c0=c0)
    outs = dict(enumerate(r.layer_outputs)) if r.layer_outputs is not None else {spec.num_layers - 1: r.output}
    steps = None
    if per_step:
        from lstmscope.engine.trace import trace_lstm

        steps = trace_lstm(spec, params, data, lengths=lengths, h0=h0, c0=c0, dtype=dtype, device=device,
                           quantities=("h", "c"))
    return _Run(r.h_n, r.c_n, outs, r.dtype, steps)


def _run_stepwise(spec: LSTMSpec, params: dict, x: np.ndarray, lengths, h0, c0, dtype: str | None, device: str,
                  all_layers: bool):
    """run_lstm's calls, with the stepwise engine for a cell the fused kernel would run."""
    import torch

    from lstmscope.engine.fused import DTYPES, RunResult, _forward, build_lstm, layer_params, to_numpy

    run_dtype = DTYPES[dtype or spec.dtype]
    with torch.inference_mode():
        xt = torch.from_numpy(x).to(device=device, dtype=run_dtype)  # (batch, time, features)
        lens = None if lengths is None else torch.from_numpy(np.asarray(lengths, dtype=np.int64))
        hx = None
        if h0 is not None:
            hx = tuple(torch.from_numpy(np.ascontiguousarray(s)).to(device=device, dtype=run_dtype) for s in (h0, c0))
        name = str(run_dtype).removeprefix("torch.")
        if not all_layers:
            out, (h, c) = _forward(build_lstm(spec, params, run_dtype, device, stepwise=True), xt, lens, hx)
            return RunResult(to_numpy(out), to_numpy(h), to_numpy(c), None, name)
        d = spec.num_directions
        y, hs, cs, outs = xt, [], [], []
        for layer in range(spec.num_layers):
            lstm = build_lstm(spec, layer_params(params, layer), run_dtype, device, num_layers=1,
                              input_size=spec.layer_input_size(layer), stepwise=True)
            sub = None if hx is None else (hx[0][layer * d:(layer + 1) * d], hx[1][layer * d:(layer + 1) * d])
            y, (h, c) = _forward(lstm, y, lens, sub)
            hs.append(h)
            cs.append(c)
            outs.append(to_numpy(y))
        return RunResult(outs[-1], to_numpy(torch.cat(hs)), to_numpy(torch.cat(cs)), outs, name)


# --- onnxruntime's side -----------------------------------------------------------------------------------

def _import_ort():
    try:
        import onnxruntime
    except ImportError:
        raise UsageError(ORT_MISSING) from None
    return onnxruntime


def _ort_version() -> str:
    return getattr(_import_ort(), "__version__", "?")


def onnx_nodes(path: Path, names: tuple[str, ...]):
    """(the model, the LSTM nodes named ``names`` as lstmscope.readers.onnx reads them, in that order)."""
    from lstmscope.readers.onnx import graph as onnx_graph
    from lstmscope.readers.onnx.nodes import read_node
    from lstmscope.readers.onnx.proto import load_model

    model = load_model(path)
    opsets = list(model.opset_import)
    found = {}
    for g in onnx_graph.walk(model):
        for proto in g.proto.node:
            if proto.op_type == "LSTM" and proto.domain in ("", "ai.onnx") and g.node_names[id(proto)] in names:
                try:
                    found[g.node_names[id(proto)]] = read_node(g, proto, path.parent, opsets)
                except Exception as e:  # the reader listed it, so this is unexpected; say where
                    raise CheckpointError(f"{path}: LSTM node '{g.node_names[id(proto)]}': {clean_message(e)}") \
                        from None
    missing = [n for n in names if n not in found]
    if missing:
        raise CheckpointError(f"{path}: LSTM node(s) {', '.join(map(repr, missing))} not found")
    return model, [found[n] for n in names]


def one_node_model(node, model, x_type: int):
    """``node`` alone: X [T, B, I], sequence_lens L [B] (int32), initial_h H0 and initial_c C0 [D, B, H] as graph
    inputs, its weights (from the file) as initializers, its attributes but ``layout`` (the feeds here are
    time-major), Y, Y_h and Y_c as outputs."""
    from onnx import TensorProto, helper, numpy_helper

    d, h, i = node.num_directions, node.hidden, node.input_size
    inits, names = [], {}
    for k in ("W", "R", "B", "P"):
        src = node.sources[k]
        if src is None:
            continue
        if src.load is None:
            raise CheckpointError(f"LSTM node '{node.name}': {src.why_not}")
        inits.append(numpy_helper.from_array(np.asarray(src.load()), k))
        names[k] = k
    inputs = [helper.make_tensor_value_info("X", x_type, ["T", "B", i]),
              helper.make_tensor_value_info("L", TensorProto.INT32, ["B"]),
              helper.make_tensor_value_info("H0", x_type, [d, "B", h]),
              helper.make_tensor_value_info("C0", x_type, [d, "B", h])]
    new = helper.make_node("LSTM", ["X", "W", "R", names.get("B", ""), "L", "H0", "C0", names.get("P", "")],
                           ["Y", "Y_h", "Y_c"], name=node.name.replace("/", "_"))
    new.attribute.extend(a for a in node.proto.attribute if a.name != "layout")
    outs = [helper.make_tensor_value_info(n, x_type, None) for n in ("Y", "Y_h", "Y_c")]
    graph = helper.make_graph([new], "lstmscope_compare", inputs, outs, inits)
    opsets = [o for o in model.opset_import if o.domain in ("", "ai.onnx")]
    return helper.make_model(graph, opset_imports=opsets, ir_version=model.ir_version)


def _run_onnxruntime(path: Path, spec: LSTMSpec, data: np.ndarray, lengths, h0, c0, all_layers: bool,
                     per_step: bool, threads: int | None) -> _Run:
    """The module's nodes in onnxruntime, layer k's Y [T, D, B, H] reshaped to [T, B, D*H] as layer k+1's X."""
    ort = _import_ort()
    from onnx import helper

    model, nodes = onnx_nodes(path, spec.names)
    np_dtype = np.dtype(nodes[0].dtype)
    x_type = helper.np_dtype_to_tensor_dtype(np_dtype)
    batch, time = data.shape[:2]
    d = spec.num_directions
    lens = np.full(batch, time, np.int32) if lengths is None else np.asarray(lengths, np.int32)
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.intra_op_num_threads = threads or 1
    x = np.ascontiguousarray(data.transpose(1, 0, 2), dtype=np_dtype)  # (time, batch, features)
    hs, cs, outs, steps = [], [], {}, {}
    for k, node in enumerate(nodes):
        h_init = np.zeros((d, batch, node.hidden), np_dtype) if h0 is None else h0[k * d:(k + 1) * d].astype(np_dtype)
        c_init = np.zeros((d, batch, node.hidden), np_dtype) if c0 is None else c0[k * d:(k + 1) * d].astype(np_dtype)
        try:
            sess = ort.InferenceSession(one_node_model(node, model, x_type).SerializeToString(), opts,
                                        providers=["CPUExecutionProvider"])
            y, y_h, y_c = sess.run(["Y", "Y_h", "Y_c"], {"X": x, "L": lens, "H0": np.ascontiguousarray(h_init),
                                                         "C0": np.ascontiguousarray(c_init)})
        except Exception as e:
            raise CheckpointError(f"{path}: onnxruntime could not run LSTM node '{node.name}' alone: "
                                  f"{clean_message(e)}") from None
        hs.append(y_h)  # (D, batch, hidden)
        cs.append(y_c)
        x = np.ascontiguousarray(y.transpose(0, 2, 1, 3).reshape(time, batch, d * node.hidden))  # [T, B, D*H]
        if all_layers or k == len(nodes) - 1 or per_step:
            out = _processing_order(spec, x.transpose(1, 0, 2), lengths)  # (batch, time, D*H)
            if all_layers or k == len(nodes) - 1:
                outs[k] = out
            if per_step:
                for j in range(d):
                    steps[(k, j, "h")] = _processing_order(spec, y[:, j].transpose(1, 0, 2), lengths)
    return _Run(np.concatenate(hs), np.concatenate(cs), outs, str(np_dtype), steps if per_step else None)


def _processing_order(spec: LSTMSpec, a: np.ndarray, lengths) -> np.ndarray:
    """ONNX's Y is in input order; a go_backwards module's output (lstmscope's, Keras's) in processing order."""
    if not spec.go_backwards:
        return np.ascontiguousarray(a)
    from lstmscope.sequences import reverse_steps

    return reverse_steps(np.ascontiguousarray(a), lengths)
