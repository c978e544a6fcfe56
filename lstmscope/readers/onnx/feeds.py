"""Where a module's nodes take their initial state from in the deployed graph, so that a snapshot can be written
as the graph's own feeds (lstmscope's "onnx" state layout).

A node's ``initial_h``/``initial_c`` ``[D, B, H]`` is often a graph input, or a Slice/Gather/Unsqueeze/Squeeze/
Reshape/Transpose of one (Silero slices ``h0 [2, B, 64]`` per node; keras2onnx unsqueezes slices of a packed state
input). The ops in between are evaluated by onnx's reference evaluator on a probe (the graph input filled with
0, 1, 2, ...), so each element of the node's state is traced to one element of the graph input; nothing of the
ops' semantics is written here. Each (node, direction) slice must then be an affine map
``input.flat[offset + b * stride_b + h * stride_h]``. Anything else (no graph input, a computed state, a batch
the graph does not declare, overlapping slices) is written as ``{node}/initial_h`` / ``{node}/initial_c``
``[D, B, H]``, exactly what the node takes, with a note.

The result is a plain JSON-able dict (kept in the snapshot's metadata, so reading a snapshot back needs neither
onnx nor torch)::

    {"tensors": {name: shape}, "slices": [{"index": i, "which": "h" | "c", "tensor": name, "offset": o,
     "strides": [stride_b, stride_h]}], "layout": 0 | 1, "nodes": [node names], "notes": [...]}
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from lstmscope.readers.onnx.graph import resolve, value_info_shape

MOVE_OPS = frozenset({"Slice", "Gather", "Unsqueeze", "Squeeze", "Reshape", "Transpose", "Identity", "Split",
                      "Flatten"})  # ops that only move elements (their first input is the data)
MAX_OPS = 8


def state_feed(chain: list, batch: int, opsets: list, base_dir: Path) -> dict[str, Any]:
    """The feed description of a module (its chain of Nodes) for a run of ``batch`` sequences."""
    tensors: dict[str, list[int]] = {}
    slices: list[dict[str, Any]] = []
    notes: list[str] = []
    traced: dict[tuple[int, str], tuple[str, np.ndarray]] = {}  # (node k, which) -> (graph input, (D, B, H) flat idx)
    shapes: dict[str, list[int]] = {}
    for k, node in enumerate(chain):
        for which, pos in (("h", 5), ("c", 6)):
            name = (list(node.proto.input) + [""] * 8)[pos]
            got, why = _trace(node, name, batch, opsets, base_dir)
            if got is None:
                if why:
                    notes.append(f"{node.name} initial_{which}: {why}")
                continue
            root, shape, idx = got
            traced[(k, which)] = (root, idx)
            shapes[root] = shape
    # an element of a graph input may feed one state element only; else the feed is ambiguous
    used: dict[str, list[np.ndarray]] = {}
    for root, idx in traced.values():
        used.setdefault(root, []).append(idx.ravel())
    for root, parts in used.items():
        flat = np.concatenate(parts)
        if len(np.unique(flat)) != flat.size:
            notes.append(f"graph input '{root}' feeds overlapping parts of the states; written per node instead")
            traced = {key: v for key, v in traced.items() if v[0] != root}
        elif flat.size < int(np.prod(shapes[root])):
            notes.append(f"graph input '{root}' {shapes[root]}: the parts this module does not read are written as "
                         "zeros")
    for k, node in enumerate(chain):
        d = node.num_directions
        for which in ("h", "c"):
            got = traced.get((k, which))
            if got is None:
                root = f"{node.name}/initial_{which}"
                if node.layout == 1:  # (batch, num_directions, hidden), as a layout-1 node takes it
                    tensors[root] = [batch, d, node.hidden]
                    idx = np.arange(batch * d * node.hidden).reshape(batch, d, node.hidden).transpose(1, 0, 2)
                else:  # (num_directions, batch, hidden), as the node takes it
                    tensors[root] = [d, batch, node.hidden]
                    idx = np.arange(d * batch * node.hidden).reshape(d, batch, node.hidden)
            else:
                root, idx = got
                tensors[root] = list(shapes[root])
            for di in range(d):
                a = idx[di]
                off = int(a[0, 0])
                sb = int(a[1, 0] - a[0, 0]) if a.shape[0] > 1 else 0
                sh = int(a[0, 1] - a[0, 0]) if a.shape[1] > 1 else 1
                slices.append({"index": k * d + di, "which": which, "tensor": root, "offset": off,
                               "strides": [sb, sh]})
    per_node = [n for n in tensors if "/initial_" in n]
    if per_node:
        notes.append(f"written as {', '.join(per_node[:4])}{' ...' if len(per_node) > 4 else ''} "
                     f"{'[B, D, H]' if chain[0].layout == 1 else '[D, B, H]'}: "
                     "what the node takes, not a graph input")
    return {"tensors": tensors, "slices": slices, "layout": chain[0].layout, "nodes": [n.name for n in chain],
            "notes": notes}


def _trace(node, name: str, batch: int, opsets: list, base_dir: Path):
    """((graph input, its shape for this batch, (D, B, H) flat indexes into it), "") or (None, why not)."""
    if not name:
        return None, "not given (the node starts from zeros)"
    g = node.graph
    if g.path:
        return None, "the node is in a subgraph"
    ops: list[Any] = []
    at = name
    while at not in g.inputs:
        got = g.producers.get(at)
        if got is None:
            return None, f"'{name}' is not computed from a graph input"
        op = got[0]
        if op.op_type not in MOVE_OPS or op.domain not in ("", "ai.onnx") or len(ops) >= MAX_OPS or not op.input:
            return None, f"'{name}' is computed ({op.op_type}), not taken from a graph input"
        ops.append(op)
        at = op.input[0]
    dims, _ = value_info_shape(g.inputs[at])
    if dims is None:
        return None, f"graph input '{at}' declares no shape"
    shape = [v if isinstance(v, int) and v > 0 else batch for v in dims]
    probe = np.arange(int(np.prod(shape)), dtype=np.float64).reshape(shape)
    out = probe if not ops else _evaluate(g, list(reversed(ops)), at, name, probe, opsets, base_dir)
    want = (node.num_directions, batch, node.hidden)
    if node.layout == 1:  # a layout-1 node takes initial_h/initial_c as [B, D, H]
        want = (batch, node.num_directions, node.hidden)
    if out is None or tuple(np.shape(out)) != want:
        return None, (f"graph input '{at}' {list(dims)} does not give [{', '.join(map(str, want))}] for batch {batch}"
                      if out is not None else f"the ops from graph input '{at}' could not be evaluated")
    idx = np.asarray(out).astype(np.int64)
    if node.layout == 1:
        idx = idx.transpose(1, 0, 2)  # (num_directions, batch, hidden)
    for a in idx:
        off = a[0, 0]
        sb = a[1, 0] - off if a.shape[0] > 1 else 0
        sh = a[0, 1] - off if a.shape[1] > 1 else 1
        if not np.array_equal(a, off + np.arange(a.shape[0])[:, None] * sb + np.arange(a.shape[1])[None, :] * sh):
            return None, f"graph input '{at}' is rearranged in a way lstmscope cannot write back"
    return (at, shape, idx), ""


def _evaluate(g, ops: list, x: str, y: str, probe: np.ndarray, opsets: list, base_dir: Path):
    import onnx
    from onnx import helper

    consts = []
    for n in ops:
        for extra in n.input[1:]:
            if not extra:
                continue
            try:
                src = resolve(g, extra, "a state op's argument", base_dir, opsets)
                if src.load is None:
                    return None
                consts.append(onnx.numpy_helper.from_array(np.asarray(src.load()), extra))
            except Exception:
                return None
    graph = helper.make_graph(ops, "state", [helper.make_tensor_value_info(x, onnx.TensorProto.DOUBLE, probe.shape)],
                              [helper.make_tensor_value_info(y, onnx.TensorProto.UNDEFINED, None)], consts)
    model = helper.make_model(graph, opset_imports=list(opsets))
    model.ir_version = min(model.ir_version, 10)
    try:
        from onnx.reference import ReferenceEvaluator

        (out,) = ReferenceEvaluator(model).run(None, {x: probe})
    except Exception:
        return None
    return out
