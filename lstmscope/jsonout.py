"""JSON documents for every command. No Rich: JSON is written with sys.stdout.write, never wrapped.

Each document carries ``"schema": "lstmscope.<command>/<version>"``. NaN and Inf become null.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

import numpy as np

from lstmscope.fileio import given

if TYPE_CHECKING:  # the typed results the core builds, and their parts; imported for annotations only
    from lstmscope.readers.base import LSTMModule
    from lstmscope.report import SliceStats, StateView
    from lstmscope.spec import LSTMSpec
    from lstmscope.statediff import DiffResult
    from lstmscope.comparerun import CompareResult
    from lstmscope.runner import RunOutcome
    from lstmscope.snapshot import ImportResult, StateFile

RUN_SCHEMA = "lstmscope.run/1"
INSPECT_SCHEMA = "lstmscope.inspect/1"


def jsonable(obj: Any) -> Any:
    """Plain JSON types: numpy scalars and arrays converted, NaN and Inf as None."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist())
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        f = float(obj)
        return f if math.isfinite(f) else None
    return obj


def dumps(doc: dict) -> str:
    """One JSON document on one line; numpy scalars converted, NaN/Inf as null."""
    return json.dumps(jsonable(doc), allow_nan=False)


def model_fields(spec: LSTMSpec) -> dict:
    """The module's configuration: LSTMSpec.to_dict(), the one place it is written out."""
    return spec.to_dict()


def module_fields(m: LSTMModule, embedding_candidates: list[str] | None = None) -> dict:
    """``embedding``: the embedding the module's graph feeds it from (Keras, ONNX), else null; ``mask``: how the
    file masks its input (Keras), else null; ``embedding_candidates``: a PyTorch file's tensors --embedding may
    name (2-D, width input_size)."""
    return {"prefix": m.prefix, "name": m.name, **model_fields(m.spec), "parameters": m.spec.parameter_count(),
            "return_sequences": list(m.return_sequences) or None, "notes": list(m.notes),
            "embedding": None if m.embedding is None else m.embedding.to_dict(),
            "mask": None if m.mask is None else {"kind": m.mask.kind, "value": m.mask.value, "source": m.mask.source},
            "embedding_candidates": list(embedding_candidates or [])}


def mask_fields(mask) -> dict | None:
    """A run's mask (lstmscope.masking.StepMask), or None."""
    if mask is None:
        return None
    return {**mask.to_meta(), "masked_steps": int(mask.valid.size - mask.counts.sum())}


def inspect_document(path: str, sha256: str, fmt: str, modules: list[LSTMModule], *,
                     stubbed_globals: list[str] = (), refused_calls: list[str] = (),
                     single_layers: list[LSTMModule] = (), candidates: dict[str, list[str]] | None = None,
                     notes: list[str] = ()) -> dict:
    """``stubbed_globals``/``refused_calls``: what a read without running code stubbed and refused ([] otherwise);
    ``candidates``: module name -> the tensors --embedding may name for it."""
    cands = candidates or {}
    return {
        "schema": INSPECT_SCHEMA,
        "checkpoint": {"path": path, "sha256": sha256, "format": fmt,
                       "stubbed_globals": list(stubbed_globals), "refused_calls": list(refused_calls),
                       "notes": list(notes)},
        "modules": [module_fields(m, cands.get(m.name)) for m in modules],
        "single_layers": [module_fields(m, cands.get(m.name)) for m in single_layers],
    }


def _stats(s: SliceStats) -> dict:
    return {"shape": list(s.shape), "mean": s.mean, "std": s.std, "min": s.min, "max": s.max,
            "norm": s.norm, "nonfinite": s.nonfinite}


def states_fields(view: StateView) -> dict:
    """The "states", "checks" and (when asked) "values" members shared by run and show-state."""
    doc: dict[str, Any] = {
        "states": [{"layer": r.layer, "layer_name": view.layer_name(r.layer), "direction": r.direction,
                    "index": r.index, "h_label": view.state_label(r, "h"), "c_label": view.state_label(r, "c"),
                    "h_n": _stats(r.h_n), "c_n": _stats(r.c_n)} for r in view.rows],
        "checks": [{"layer": c.layer, "direction": c.direction, "output_time_index": c.output_time_index,
                    "output_columns": list(c.columns), "output_position": view.output_position(c.direction, layer=c.layer),
                    "max_abs_diff": c.max_abs_diff, "ok": c.ok}
                   for c in view.checks],
    }
    if view.values:
        doc["values"] = {"batch_index": view.value_batch, "rows": [asdict(v) for v in view.values]}
    return doc


def run_document(outcome: "RunOutcome") -> dict:
    """The ``lstmscope.run/1`` document for a :class:`lstmscope.runner.RunOutcome`."""
    ck, module, seqs, result, view = outcome.checkpoint, outcome.module, outcome.sequences, outcome.result, outcome.view
    return {
        "schema": RUN_SCHEMA,
        "checkpoint": {"path": given(ck.path), "sha256": ck.sha256, "format": ck.format, "module": module.prefix},
        "model": model_fields(module.spec),
        "engine": outcome.engine,
        "notes": list(module.notes),
        "input": {
            "path": given(seqs.path),
            "key": seqs.key,
            "layout": seqs.layout,
            "batch": seqs.batch,
            "time": seqs.time,
            "features": seqs.features,
            "lengths": None if seqs.lengths is None else seqs.lengths.tolist(),
            "run_dtype": result.dtype,
            "tokens": seqs.tokens,
            "embedding": None if seqs.embedding_ref is None else seqs.embedding_ref.to_dict(),
            "mask": mask_fields(outcome.mask),
        },
        "shapes": {
            "output": view.output_shape(outcome.output_width),
            "h_n": list(result.h_n.shape),
            "c_n": list(result.c_n.shape),
            **({"onnx": onnx_shapes(view, with_y=True)} if view.onnx else {}),
        },
        "initial_state": None if outcome.initial_state_path is None else
        {"path": outcome.initial_state_path, "sha256": outcome.initial_state_sha256},
        **states_fields(view),
        "nonfinite": nonfinite_fields(outcome),
        "warnings": outcome.warnings,
        "ok": view.all_ok,
    }


def onnx_shapes(view: StateView, *, with_y: bool) -> dict:
    """ONNX modules: what each node returns, in ONNX's terms: Y [T, D, B, H], Y_h and Y_c [D, B, H] (layout 0),
    or batch-first (layout 1)."""
    spec = view.spec
    t, d, b, h = view.time, spec.num_directions, view.batch, spec.output_size
    lay1 = view.graph_layout == 1
    nodes = []
    for layer in range(spec.num_layers):
        st = [b, d, h] if lay1 else [d, b, h]
        row = {"name": view.layer_name(layer), "layer": layer, "Y_h": st, "Y_c": st}
        if with_y:
            row["Y"] = [b, t, d, h] if lay1 else [t, d, b, h]
        nodes.append(row)
    return {"layout": view.graph_layout, "nodes": nodes}


def nonfinite_fields(outcome: "RunOutcome") -> dict:
    """NaN/Inf in the input and, per (layer, direction) that has any, in the final states."""
    return {"input": outcome.input_nonfinite, "states": outcome.nonfinite_states}


EXPORT_SCHEMA = "lstmscope.export/1"
STATE_SCHEMA = "lstmscope.state/1"
DIFF_SCHEMA = "lstmscope.diff/1"


def export_document(outcome: "RunOutcome", path, meta: dict, sha256: str, size: int) -> dict:
    view = outcome.view
    return {
        "schema": EXPORT_SCHEMA,
        "path": str(path),
        "sha256": sha256,
        "bytes": size,
        "metadata": meta,
        "norms": [{"layer": r.layer, "direction": r.direction, "h_n": r.h_n.norm, "c_n": r.c_n.norm} for r in view.rows],
        "checks": states_fields(view)["checks"],
        "nonfinite": nonfinite_fields(outcome),
        "warnings": outcome.warnings,
        "ok": view.all_ok,
    }


def state_document(state: "StateFile", view: StateView) -> dict:
    return {
        "schema": STATE_SCHEMA,
        "path": given(state.path),
        "kind": state.kind,
        "metadata": state.meta,
        "shapes": {k: list(v) for k, v in state.stored.items()} if state.stored else
        {k: list(v.shape) for k, v in state.tensors().items()},  # as the file names and holds them
        **states_fields(view),
        "ok": view.all_ok,
    }


def diff_document(res: "DiffResult") -> dict:
    """``lstmscope.diff/1``. ``kind`` says what was compared: "state" (snapshots) or "trace"; trace rows add
    ``quantity``, ``first_step_over_tolerance`` and ``per_step_max_abs_diff`` (null where every sequence is
    padding, or where NaN/Inf differ)."""
    trace = res.kind == "trace"
    return {
        "schema": DIFF_SCHEMA,
        "kind": res.kind,
        "a": res.a,
        "b": res.b,
        "equal": res.equal,
        "comparable": res.comparable,
        "atol": res.atol,
        "rtol": res.rtol,
        "equal_nan": res.equal_nan,
        "rows": [_diff_row(r, trace) for r in res.rows],
        "only_in_a": res.only_in_a,
        "only_in_b": res.only_in_b,
        "metadata_differences": {"architecture": res.architecture, "provenance": res.provenance},
    }


def _diff_row(r, trace: bool) -> dict:
    row = {"tensor": r.tensor, "layer": r.layer, "direction": r.direction, "shape": r.shape,
           "shape_b": r.shape_b, "max_abs_diff": r.max_abs_diff, "max_abs_diff_at": r.max_abs_diff_at,
           "max_rel_diff": r.max_rel_diff, "mismatched": r.mismatched, "total": r.total,
           "mismatched_pct": r.mismatched_pct, "cosine": r.cosine, "pass": r.passed}
    if r.stored_as is not None:  # a keras- or onnx-layout file's own name for an h_n/c_n slice
        row["stored_as"] = r.stored_as
    if trace:
        steps = r.per_step_max_abs_diff
        row.update({"quantity": r.quantity, "first_step_over_tolerance": r.first_step_over,
                    "per_step_max_abs_diff": None if steps is None else
                    [v if math.isfinite(v) else None for v in steps.tolist()]})  # one pass, not jsonable's recursion
    return row


COMPARE_SCHEMA = "lstmscope.compare/1"


def compare_document(res: "CompareResult") -> dict:
    """``lstmscope.compare/1`` for a :class:`lstmscope.comparerun.CompareResult`: what each side was, the input,
    diff_document's fields for the final states and outputs (``rows``, ``equal``, ``comparable``,
    ``metadata_differences``: shape fields that differ under ``architecture``, cell fields under ``provenance``),
    and with --per-step ``per_step``: diff_document's trace rows (h and c per layer and direction, each with
    ``first_step_over_tolerance`` and ``per_step_max_abs_diff``) and the first step over tolerance of any row.
    ``equal`` is the whole verdict (states, outputs and steps)."""
    doc = diff_document(res.diff)
    doc.pop("schema")
    doc.pop("kind")
    steps = None
    if res.steps is not None:
        s = diff_document(res.steps)
        firsts = [r.first_step_over for r in res.steps.rows if r.first_step_over is not None]
        steps = {"equal": s["equal"], "first_step_over_tolerance": min(firsts) if firsts else None, "rows": s["rows"]}
    return {"schema": COMPARE_SCHEMA, "sides": {"a": res.a.to_dict(), "b": res.b.to_dict()}, "input": res.input or None,
            **doc, "equal": res.equal, "states_equal": res.diff.equal, "per_step": steps}


def import_document(res: "ImportResult") -> dict:
    """The ``lstmscope.import/1`` document for an lstmscope.snapshot.ImportResult."""
    from lstmscope.fileio import file_sha256

    return {"schema": "lstmscope.import/1", "path": str(res.path), "sha256": file_sha256(res.path),
            "source": str(res.source), "source_kind": res.source_kind, "metadata": res.meta}
