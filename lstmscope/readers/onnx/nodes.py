"""ONNX LSTM nodes: their attributes in LSTMSpec's terms, stacks of nodes as the PyTorch exporter chains them,
and their weights in nn.LSTM's layout (ONNX gate order i, o, f, c -> i, f, g, o)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lstmscope.readers.onnx.graph import Graph, Source, resolve, value_info_shape
from lstmscope.readers.onnx.proto import FLOAT_TYPES, _fail
from lstmscope.spec import SIGMOID, TANH, Activation

DIRECTIONS = {"forward": 1, "reverse": 1, "bidirectional": 2}
# ONNX activation name (lower case, as onnxruntime matches them) -> (spec name, default alpha, default beta);
# a parameter the function takes with no default must be given in activation_alpha / activation_beta
_ACTIVATIONS = {
    "sigmoid": ("sigmoid", None, None), "tanh": ("tanh", None, None), "relu": ("relu", None, None),
    "hardsigmoid": ("hard_sigmoid", 0.2, 0.5), "leakyrelu": ("leaky_relu", 0.01, None),
    "thresholdedrelu": ("thresholded_relu", 1.0, None), "scaledtanh": ("scaled_tanh", "?", "?"),
    "elu": ("elu", 1.0, None), "softsign": ("softsign", None, None), "softplus": ("softplus", None, None),
    "affine": ("affine", "?", "?"),
}
_TAKES = {"hardsigmoid": (True, True), "leakyrelu": (True, False), "thresholdedrelu": (True, False),
          "scaledtanh": (True, True), "elu": (True, False), "affine": (True, True)}
# ONNX's gate blocks are i, o, f, c; canonical block j is ONNX block _GATES[j] (i, f, g=c, o)
_GATES = (0, 2, 3, 1)
_PEEPHOLES = (0, 2, 1)  # ONNX P is (i, o, f); canonical (i, f, o)
# Ops the PyTorch exporter (and keras2onnx) puts between one layer's Y [T, D, B, H] and the next layer's X
CHAIN_OPS = frozenset({"Transpose", "Squeeze", "Reshape", "Identity", "Unsqueeze"})
CHAIN_MAX = 6


@dataclass
class Node:
    """One LSTM node as the file describes it."""

    name: str  # its path: "LSTM_22", "If_0/then_branch/LSTM_3"
    graph: Graph
    proto: Any
    direction: str
    hidden: int
    input_size: int
    dtype: str
    layout: int
    clip: float | None
    input_forget: bool
    acts: tuple[Activation, Activation, Activation | None]  # gate (f), cell (g), hidden (h; None when h == g)
    sources: dict[str, Source | None]  # "W", "R", "B", "P" (B, P: None when absent)
    notes: list[str] = field(default_factory=list)
    refusal: str | None = None  # why run cannot run it (listed all the same)

    @property
    def num_directions(self) -> int:
        return DIRECTIONS[self.direction]

    def cell(self) -> tuple:
        """What must be equal for two nodes to stack."""
        return (self.direction, self.hidden, self.dtype, self.layout, self.clip, self.input_forget, self.acts,
                self.sources["B"] is not None, self.sources["P"] is not None, self.refusal is None)


def _attrs(proto: Any) -> dict[str, Any]:
    from onnx import helper

    out = {}
    for a in proto.attribute:
        try:
            out[a.name] = helper.get_attribute_value(a)
        except Exception:  # an attribute of no known type: damaged
            _fail(f"LSTM node '{proto.name}' has an unreadable attribute {a.name!r}")
    return out


def _text(v: Any) -> str:
    return v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)


def read_node(g: Graph, proto: Any, base_dir: Path, opsets: list) -> Node:
    name = g.node_names[id(proto)]
    where = f"LSTM node '{name}'"
    a = _attrs(proto)
    direction = _text(a.get("direction", b"forward"))
    if direction not in DIRECTIONS:
        _fail(f"{where} has direction {direction!r}; ONNX knows forward, reverse and bidirectional")
    d = DIRECTIONS[direction]
    inputs = list(proto.input) + [""] * 8
    if not inputs[1] or not inputs[2]:
        _fail(f"{where} lacks its W or R input; every LSTM node has both")
    sources = {k: (resolve(g, inputs[i], f"{where} {k}", base_dir, opsets) if inputs[i] else None)
               for k, i in (("W", 1), ("R", 2), ("B", 3), ("P", 7))}
    hidden = a.get("hidden_size")
    r_shape = sources["R"].shape
    if hidden is None and r_shape is not None and len(r_shape) == 3 and isinstance(r_shape[2], int):
        hidden = r_shape[2]
    if not isinstance(hidden, int) or hidden < 1:
        _fail(f"{where} has no usable hidden_size ({hidden!r}) and R's shape does not tell it")
    w_shape = sources["W"].shape
    input_size = w_shape[2] if w_shape is not None and len(w_shape) == 3 and isinstance(w_shape[2], int) else None
    if input_size is None:
        x = g.inputs.get(proto.input[0]) if proto.input else None
        dims = value_info_shape(x)[0] if x is not None else None
        input_size = dims[-1] if dims and isinstance(dims[-1], int) else 0
    want = {"W": (d, 4 * hidden, input_size), "R": (d, 4 * hidden, hidden), "B": (d, 8 * hidden),
            "P": (d, 3 * hidden)}
    dtypes = set()
    for k, s in sources.items():
        if s is None:
            continue
        if s.shape is not None and (len(s.shape) != len(want[k]) or any(
                isinstance(x, int) and x != y for x, y in zip(s.shape, want[k]))):
            _fail(f"{where}: {k} ({s.describe}) is {s.shape}; direction {direction} and hidden_size {hidden} "
                  f"need {want[k]}")
        if s.dtype is not None:
            if s.dtype not in FLOAT_TYPES:
                _fail(f"{where}: {k} ({s.describe}) is {s.dtype}; LSTM weights are floating point")
            dtypes.add(s.dtype)
    if len(dtypes) > 1:
        _fail(f"{where} mixes weight dtypes ({', '.join(sorted(dtypes))})")
    layout = a.get("layout", 0)
    if layout not in (0, 1):
        _fail(f"{where} has layout {layout!r}; ONNX knows 0 (time-major) and 1 (batch-major)")
    clip = a.get("clip")
    if clip is not None and not (isinstance(clip, float) and clip > 0):
        _fail(f"{where} has clip {clip!r}; a clip threshold is a positive number")
    forget = a.get("input_forget", 0)
    node = Node(name, g, proto, direction, hidden, input_size, dtypes.pop() if dtypes else "float32", int(layout),
                clip, bool(forget), (SIGMOID, TANH, None), sources)
    _activations(node, a, d)
    _notes(node, inputs, sources)
    return node


def _activations(node: Node, a: dict, d: int) -> None:
    names = [_text(x) for x in a.get("activations", [])] or ["Sigmoid", "Tanh", "Tanh"] * d
    alphas, betas = list(a.get("activation_alpha", [])), list(a.get("activation_beta", []))
    if len(names) == 3 and d == 2:
        names = names * 2
    if len(names) != 3 * d:
        node.refusal = f"it lists {len(names)} activations; {node.direction} takes {3 * d} (f, g, h per direction)"
        return
    acts: list[Activation] = []
    for raw in names:
        key = raw.lower()
        if key not in _ACTIVATIONS:
            node.refusal = f"its activation {raw!r} is not one ONNX defines for LSTM"
            return
        spec_name, alpha, beta = _ACTIVATIONS[key]
        takes_a, takes_b = _TAKES.get(key, (False, False))
        if takes_a and alphas:  # onnxruntime: the lists are consumed, in order, by the functions that take them
            alpha = float(alphas.pop(0))
        elif key == "thresholdedrelu":
            node.notes.append("ThresholdedRelu has no activation_alpha: alpha 1.0 taken (the ONNX operator's "
                              "default; onnxruntime uses 0 here)")
        if takes_b and betas:
            beta = float(betas.pop(0))
        if alpha == "?" or beta == "?":
            node.refusal = f"its activation {raw} needs activation_alpha and activation_beta, which it lacks"
            return
        acts.append(Activation(spec_name, alpha, beta))
    per_dir = [tuple(acts[3 * k:3 * k + 3]) for k in range(d)]
    if len(set(per_dir)) > 1:
        node.refusal = ("its directions use different activations (" + "; ".join(", ".join(map(str, p))
                                                                             for p in per_dir)
                        + "); lstmscope runs one cell for both directions")
    f, g_, h = per_dir[0]
    node.acts = (f, g_, None if h == g_ else h)


def _notes(node: Node, inputs: list[str], sources: dict) -> None:
    notes = node.notes
    if node.direction == "reverse":
        notes.append("direction reverse: runs as go_backwards (each sequence read last step first); ONNX's Y "
                     "is in input order: Y[t] = output[len-1-t], Y_h = h_n")
    if node.layout == 1:
        notes.append("layout 1: X, Y, Y_h and Y_c are batch-first in the graph")
    if sources["B"] is None:
        notes.append("no B input: ONNX's biases default to zeros (listed with bias False)")
    if inputs[4]:
        notes.append(f"sequence_lens comes from '{inputs[4]}' in the graph; pass --lengths to run with lengths")
    given = [f"{what} ('{inputs[i]}')" for i, what in ((5, "initial_h"), (6, "initial_c")) if inputs[i]]
    if given:
        notes.append(f"the graph supplies {' and '.join(given)}; lstmscope starts from zeros unless "
                     "--initial-state is given")
    missing = [(k, s) for k, s in sources.items() if s is not None and s.load is None]
    inputs_only = [k for k, s in missing if s.describe.startswith("graph input")]
    if missing and len(inputs_only) == len(missing):
        what = f"{', '.join(inputs_only)} {'is a graph input' if len(missing) == 1 else 'are graph inputs'}"
        notes.append(f"{what}: the file holds no values (they are fed at run time); run refused")
        if node.refusal is None:
            node.refusal = f"{what}, fed at run time: the file holds no values for them"
    elif missing:
        notes.append("; ".join(f"{k}: {s.describe}" for k, s in missing) + "; run refused")
        if node.refusal is None:
            node.refusal = missing[0][1].why_not


# --- stacks --------------------------------------------------------------------------------------------

def chain_to(prev: Node, node: Node, opsets: list) -> str | None:
    """None when ``node``'s X is ``prev``'s Y [T, D, B, H] reshaped to [T, B, D*H] (checked by evaluating the
    ops in between with onnx's reference evaluator on a probe tensor), else why not (for a note), or "" when
    ``node`` does not read ``prev`` at all."""
    g = node.graph
    if prev.graph is not g or not node.proto.input or not prev.proto.output or not prev.proto.output[0]:
        return ""
    y = prev.proto.output[0]
    ops: list[Any] = []
    name = node.proto.input[0]
    while name != y:
        got = g.producers.get(name)
        if got is None or len(ops) >= CHAIN_MAX or got[0].op_type not in CHAIN_OPS or got[0].domain not in ("", "ai.onnx"):
            return ""
        ops.append(got[0])
        name = got[0].input[0] if got[0].input else ""
    if prev.cell() != node.cell():
        return "their cells differ (direction, hidden_size, activations, clip, biases or peepholes)"
    if node.input_size != prev.hidden * prev.num_directions:
        return f"it takes {node.input_size} features but the first gives {prev.hidden * prev.num_directions}"
    if prev.direction == "reverse":
        return "direction reverse"
    return None if _probe(prev, list(reversed(ops)), y, node.proto.input[0], opsets) else \
        "the ops between them do not turn Y [T, D, B, H] into [T, B, D*H]"


def _probe(prev: Node, ops: list[Any], y: str, x: str, opsets: list) -> bool:
    import onnx
    from onnx import helper

    t, b = 3, 2
    xv = prev.graph.inputs.get(prev.proto.input[0]) if prev.proto.input else None
    dims = value_info_shape(xv)[0] if xv is not None else None
    if dims and len(dims) == 3 and all(isinstance(v, int) and v > 0 for v in dims[:2]):
        t, b = dims[0], dims[1]
    d, h = prev.num_directions, prev.hidden
    probe = np.arange(t * d * b * h, dtype=np.float32).reshape(t, d, b, h)
    consts, nodes = [], []
    for n in ops:
        for extra in n.input[1:]:
            if not extra:
                continue
            try:
                src = resolve(prev.graph, extra, "a reshape's argument", Path("."), opsets)
                if src.load is None:
                    return False
                consts.append(onnx.numpy_helper.from_array(np.asarray(src.load()), extra))
            except Exception:
                return False
        nodes.append(n)
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info(y, onnx.TensorProto.FLOAT, probe.shape)],
                              [helper.make_tensor_value_info(x, onnx.TensorProto.UNDEFINED, None)], consts)
    model = helper.make_model(graph, opset_imports=list(opsets))
    model.ir_version = min(model.ir_version, 10)
    try:
        from onnx.reference import ReferenceEvaluator

        (out,) = ReferenceEvaluator(model).run(None, {y: probe})
    except Exception:
        return False
    want = probe.transpose(0, 2, 1, 3).reshape(t, b, d * h)
    return np.shape(out) == want.shape and np.array_equal(out, want)


# --- weights ---------------------------------------------------------------------------------------------

def canonical(node: Node, k: int) -> dict[str, np.ndarray]:
    """The node's weights as layer ``k`` of nn.LSTM's state_dict."""
    h = node.hidden
    arrays = {key: (s.load() if s is not None else None) for key, s in node.sources.items()}
    for key, a in arrays.items():
        if a is not None and a.dtype.kind != "f":
            _fail(f"LSTM node '{node.name}': {key} is {a.dtype}; LSTM weights are floating point")

    def gates(a: np.ndarray) -> np.ndarray:  # (4H, ...) in i, o, f, c -> i, f, g, o
        return np.ascontiguousarray(np.concatenate([a[j * h:(j + 1) * h] for j in _GATES]))

    out: dict[str, np.ndarray] = {}
    for d, suffix in zip(range(node.num_directions), ("", "_reverse")):
        key = f"l{k}{suffix}"
        out[f"weight_ih_{key}"] = gates(arrays["W"][d])  # (4H, I)
        out[f"weight_hh_{key}"] = gates(arrays["R"][d])  # (4H, H)
        if arrays["B"] is not None:
            out[f"bias_ih_{key}"] = gates(arrays["B"][d, :4 * h])  # (4H,)
            out[f"bias_hh_{key}"] = gates(arrays["B"][d, 4 * h:])  # (4H,)
        if arrays["P"] is not None:
            p = arrays["P"][d]
            out[f"weight_peephole_{key}"] = np.ascontiguousarray(
                np.concatenate([p[j * h:(j + 1) * h] for j in _PEEPHOLES]))  # (3H,) i, f, o
    return out


def sources(node: Node, k: int) -> dict[str, str]:
    out: dict[str, str] = {}
    for d, suffix in zip(range(node.num_directions), ("", "_reverse")):
        key = f"l{k}{suffix}"
        w, r, b, p = (node.sources[x] for x in ("W", "R", "B", "P"))
        out[f"weight_ih_{key}"] = f"W {w.describe} [{d}], gates i,o,f,c -> i,f,g,o"
        out[f"weight_hh_{key}"] = f"R {r.describe} [{d}], gates i,o,f,c -> i,f,g,o"
        if b is not None:
            out[f"bias_ih_{key}"] = f"B {b.describe} [{d}, :{4 * node.hidden}], gates reordered"
            out[f"bias_hh_{key}"] = f"B {b.describe} [{d}, {4 * node.hidden}:], gates reordered"
        if p is not None:
            out[f"weight_peephole_{key}"] = f"P {p.describe} [{d}], i,o,f -> i,f,o"
    return out
