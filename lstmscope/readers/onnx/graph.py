"""The graph and its subgraphs: every node with its path, names resolved through nested scopes, and where a
tensor comes from (initializer, Constant node, graph input, or a small constant subgraph folded by
``onnx.reference.ReferenceEvaluator``, never by op semantics written here)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from lstmscope.errors import clean_message
from lstmscope.readers.onnx.proto import _fail, check_tensor, dtype_name, tensor_values

MAX_DEPTH = 32  # subgraphs nested deeper than this (If in If in ...) are no model's
MAX_NODES = 1_000_000  # nodes in all graphs together
# Ops a constant subgraph that builds a weight may use: they reshape, pick and join tensors, and none makes a
# tensor larger than its inputs together except Concat and Gather (their outputs are sized by shape inference)
FOLD_OPS = frozenset({"Slice", "Concat", "Unsqueeze", "Squeeze", "Reshape", "Transpose", "Gather", "Split",
                      "Identity", "Constant", "Cast", "Flatten"})
FOLD_MAX_NODES = 256
FOLD_MAX_ELEMENTS = 1 << 26  # elements in all of a folded subgraph's tensors together (256 MiB of float32)


@dataclass
class Graph:
    """One graph: the main graph (path "") or a subgraph ("If_3/then_branch"), in its scope."""

    proto: Any
    path: str
    parent: "Graph | None"
    depth: int
    initializers: dict[str, Any] = field(default_factory=dict)
    producers: dict[str, tuple[Any, int]] = field(default_factory=dict)  # output name -> (node, index in graph)
    inputs: dict[str, Any] = field(default_factory=dict)  # graph inputs that no initializer backs
    consumers: dict[str, list[Any]] = field(default_factory=dict)  # tensor name -> nodes reading it here
    node_names: dict[int, str] = field(default_factory=dict)  # id(node) -> its path

    def find(self, name: str) -> tuple["Graph", str] | None:
        """(the graph whose scope holds ``name``, "initializer" / "node" / "input"), innermost first."""
        g: Graph | None = self
        while g is not None:
            if name in g.initializers:
                return g, "initializer"
            if name in g.producers:
                return g, "node"
            if name in g.inputs:
                return g, "input"
            g = g.parent
        return None


def walk(model: Any) -> Iterator[Graph]:
    """Every graph of the model, the main graph first, then subgraphs (If branches, Loop and Scan bodies)."""
    main = _graph(model.graph, "", None, 0)
    stack = [main]
    count = 0
    while stack:
        g = stack.pop()
        count += len(g.proto.node)
        if count > MAX_NODES:
            _fail(f"the model has over {MAX_NODES:,} nodes; too many to be read")
        yield g
        subs = []
        for node in g.proto.node:
            for attr in node.attribute:
                graphs = [attr.g] if attr.HasField("g") else list(attr.graphs)
                for j, sub in enumerate(graphs):
                    if g.depth + 1 > MAX_DEPTH:
                        _fail(f"subgraphs are nested more than {MAX_DEPTH} deep (at {g.node_names[id(node)]}); "
                              "no model nests its If/Loop bodies that deep")
                    where = f"{g.node_names[id(node)]}/{attr.name}" + (f"[{j}]" if len(graphs) > 1 else "")
                    subs.append(_graph(sub, where, g, g.depth + 1))
        stack.extend(reversed(subs))


def _graph(proto: Any, path: str, parent: Graph | None, depth: int) -> Graph:
    g = Graph(proto, path, parent, depth)
    for t in proto.initializer:
        g.initializers[t.name] = t
    for vi in proto.input:
        if vi.name not in g.initializers:
            g.inputs[vi.name] = vi
    prefix = f"{path}/" if path else ""
    taken: set[str] = set()
    for i, node in enumerate(proto.node):
        name = f"{prefix}{node.name or f'{node.op_type}@{i}'}"
        if name in taken:
            name = f"{name}@{i}"
        taken.add(name)
        g.node_names[id(node)] = name
        for j, out in enumerate(node.output):
            if out:
                g.producers.setdefault(out, (node, i))
        for inp in node.input:
            if inp:
                g.consumers.setdefault(inp, []).append(node)
    return g


def value_info_shape(vi: Any) -> tuple[tuple[int | str | None, ...] | None, str | None]:
    """(shape with ints, symbolic names or None per dim; None when unknown, dtype name or None) of a graph input."""
    t = vi.type
    if not t.HasField("tensor_type"):
        return None, None
    tt = t.tensor_type
    dtype = dtype_name(tt.elem_type) if tt.elem_type else None
    if not tt.HasField("shape"):
        return None, dtype
    dims = tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tt.shape.dim)
    return dims, dtype


@dataclass
class Source:
    """Where one input of a node comes from, and how to get its values."""

    describe: str  # "initializer 'W'", "Constant node 'c'", "graph input 'W' (no values in the file)", ...
    shape: tuple | None  # ints (symbolic dims as str/None for graph inputs); None: unknown
    dtype: str | None
    load: Callable[[], np.ndarray] | None  # None: the file holds no values for it
    why_not: str = ""  # when load is None: why


def resolve(g: Graph, name: str, what: str, base_dir: Path, opsets: list) -> Source:
    """Where the tensor ``name`` seen from graph ``g`` comes from."""
    found = g.find(name)
    if found is None:
        return Source(f"'{name}', which nothing in the model produces", None, None, None,
                      f"{what} '{name}' is produced by no node, initializer or graph input (the model is damaged)")
    scope, kind = found
    if kind == "initializer":
        t = scope.initializers[name]
        label = f"initializer '{name}'"
        shape, dtype = check_tensor(t, f"{what} ({label})", base_dir)
        return Source(label, shape, dtype, lambda: tensor_values(t, f"{what} ({label})", base_dir))
    if kind == "input":
        shape, dtype = value_info_shape(scope.inputs[name])
        return Source(f"graph input '{name}' (no values in the file)", shape, dtype, None,
                      f"{what} is the graph input '{name}': the file holds no values for it (they are fed at run "
                      "time); lstmscope can list this LSTM but not run it")
    node, _ = scope.producers[name]
    node_name = scope.node_names[id(node)]
    if node.op_type == "Constant" and node.domain in ("", "ai.onnx") and len(node.attribute) == 1 \
            and node.attribute[0].name == "value" and node.attribute[0].HasField("t"):
        t = node.attribute[0].t
        label = f"Constant node '{node_name}'"
        shape, dtype = check_tensor(t, f"{what} ({label})", base_dir)
        return Source(label, shape, dtype, lambda: tensor_values(t, f"{what} ({label})", base_dir))
    return _folded(scope, name, node, node_name, what, base_dir, opsets)


def _folded(g: Graph, name: str, node: Any, node_name: str, what: str, base_dir: Path, opsets: list) -> Source:
    """A weight built by a small constant subgraph: extracted into a model of its own and evaluated by onnx's
    reference evaluator (at listing time: its shape is known only then)."""
    import onnx
    from onnx import helper

    order: list[Any] = []
    leaves: dict[str, Any] = {}  # initializer name -> TensorProto
    state: dict[int, int] = {}  # id(node) -> 1 visiting, 2 done
    computed = f"{what} is computed by {node.op_type} node '{node_name}'"

    def visit(start_node: Any) -> str | None:  # iterative DFS; returns why not foldable, or None
        stack: list[tuple[Any, int]] = [(start_node, 0)]
        state[id(start_node)] = 1
        while stack:
            n, i = stack[-1]
            if (n.op_type not in FOLD_OPS or n.domain not in ("", "ai.onnx")
                    or any(a.HasField("g") or len(a.graphs) for a in n.attribute)):
                return f"{computed} from a {n.op_type} node '{g.node_names.get(id(n), n.name)}', not from constants"
            inputs = [x for x in n.input if x]
            if i == len(inputs):
                stack.pop()
                state[id(n)] = 2
                order.append(n)
                continue
            stack[-1] = (n, i + 1)
            x = inputs[i]
            found = g.find(x)
            if found is None:
                return f"{computed} from '{x}', which nothing produces"
            scope, kind = found
            if kind == "initializer":
                leaves[x] = scope.initializers[x]
            elif kind == "input":
                return f"{computed} from the graph input '{x}', so the file holds no values for it"
            else:
                if scope is not g:
                    return f"{computed} from '{x}', computed in an outer graph"
                prev, _ = scope.producers[x]
                s = state.get(id(prev), 0)
                if s == 1:
                    _fail(f"{computed} in a cycle of nodes (through '{x}'); an ONNX graph has none, so the file "
                          "is damaged")
                if s == 0:
                    if len(state) >= FOLD_MAX_NODES:
                        return f"{computed} from over {FOLD_MAX_NODES} nodes; too many to fold"
                    state[id(prev)] = 1
                    stack.append((prev, 0))
        return None

    why = visit(node)
    if why:
        return Source(f"computed by {node.op_type} node '{node_name}'", None, None, None,
                      why + "; lstmscope reads weights from initializers, Constant nodes and constant subgraphs")
    label = f"{what}: folded from {len(order)} node{'s' if len(order) != 1 else ''} ({', '.join(sorted({n.op_type for n in order}))}) over " \
            + (", ".join(f"initializer '{k}'" for k in leaves) or "Constant nodes")
    values: dict[str, np.ndarray] = {}
    for k, t in leaves.items():
        check_tensor(t, f"{what} (initializer '{k}')", base_dir)
    total = sum(math.prod(t.dims) for t in leaves.values())
    if total > FOLD_MAX_ELEMENTS:
        _fail(f"{label}: its constants hold {total} elements; too many to fold")
    for k, t in leaves.items():
        values[k] = tensor_values(t, f"{what} (initializer '{k}')", base_dir)
    graph = helper.make_graph(
        [_copy(n) for n in order], "fold", [],
        [helper.make_tensor_value_info(name, onnx.TensorProto.UNDEFINED, None)],
        [onnx.numpy_helper.from_array(v, k) for k, v in values.items()])
    model = helper.make_model(graph, opset_imports=list(opsets))
    model.ir_version = min(model.ir_version, 10)
    _bound(model, label, set(values), any(n.op_type in ("Concat", "Gather") for n in order))
    try:
        from onnx.reference import ReferenceEvaluator

        (out,) = ReferenceEvaluator(model).run(None, {})
    except MemoryError:
        _fail(f"{label}: folding it needs more memory than there is")
    except Exception as e:  # the evaluator's errors: bad shapes, axes, types in a damaged subgraph
        _fail(f"{label}: onnx's reference evaluator cannot fold it ({type(e).__name__}: {clean_message(e)})")
    out = np.asarray(out)
    if out.dtype.kind != "f":
        _fail(f"{label}: it folds to a {out.dtype} tensor; an LSTM weight is floating point")
    return Source(f"folded subgraph ({', '.join(sorted({n.op_type for n in order}))} of "
                  f"{', '.join(repr(k) for k in leaves) or 'Constant nodes'})",
                  tuple(out.shape), out.dtype.name, lambda: out)


def _copy(node: Any) -> Any:
    import onnx

    n = onnx.NodeProto()
    n.CopyFrom(node)
    return n


def _bound(model: Any, label: str, leaves: set[str], grows: bool) -> None:
    """Before evaluating: onnx's shape inference sizes every tensor the subgraph makes; refuse one too large.
    Without Concat or Gather no tensor outgrows the constants, so unknown sizes are refused only with them."""
    import onnx

    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception as e:  # inference errors: a damaged subgraph
        _fail(f"{label}: onnx's shape inference refuses it ({type(e).__name__}: {clean_message(e)})")
    total = 0
    for vi in list(inferred.graph.value_info) + list(inferred.graph.output):
        dims, _ = value_info_shape(vi)
        if dims is None or any(not isinstance(d, int) for d in dims):
            if grows:
                _fail(f"{label}: onnx's shape inference cannot size it, so it is not folded")
            continue
        total += math.prod(dims)
    if total > FOLD_MAX_ELEMENTS:
        _fail(f"{label}: folding it would make {total} elements; too many for an LSTM's weights")
