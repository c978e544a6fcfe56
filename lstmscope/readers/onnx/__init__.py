"""ONNX models, read with the ``onnx`` package (imported when a file is read; no onnxruntime, no torch).

Every ``LSTM`` node of the default domain, in the main graph or in any subgraph (``If`` branches, ``Loop`` and
``Scan`` bodies; named by their path, "If_0/then_branch/LSTM_3"), is an LSTM layer. Consecutive nodes that the
PyTorch exporter chains (one node's ``Y [T, D, B, H]`` transposed and reshaped into the next one's ``X``) form one
stacked module; each of them runs alone too (``--module``).

How ONNX maps to LSTMSpec (framework "onnx", names = the node paths):

* ``W [D, 4H, I]``, ``R [D, 4H, H]``: weight_ih, weight_hh per direction, gate blocks i, o, f, c reordered to
  i, f, g, o. ``B [D, 8H]``: bias_ih (first 4H), bias_hh (last 4H), each reordered; no ``B``: bias False
  (ONNX's biases are then zeros, which is what nn.LSTM(bias=False) computes). ``P [D, 3H]`` (i, o, f):
  weight_peephole (i, f, o), peephole True.
* ``direction``: forward; bidirectional (directions in W in the order forward, reverse, like nn.LSTM's);
  reverse: one direction read last step first, go_backwards True. Final states are ONNX's ``Y_h``/``Y_c``;
  lstmscope's output is in processing order, ONNX's ``Y`` in input order (``Y[t] = output[len-1-t]``).
* ``activations`` (f, g, h per direction, with activation_alpha/beta): gate_activation, cell_activation,
  hidden_activation (None when h == g); ``clip``, ``input_forget`` as they are. ``layout`` 1 only changes how
  the graph lays out X and Y (noted).

Weights come from initializers, Constant nodes, or small constant subgraphs folded by onnx's reference
evaluator; weights fed as graph inputs are listed and refused on run. External data is read only from the
model's own folder, with every size checked first.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lstmscope.errors import CheckpointError, clean_message
from lstmscope.readers.base import Checkpoint, LSTMModule, TensorInfo
from lstmscope.readers.onnx import graph as _graph
from lstmscope.readers.onnx.feeds import state_feed
from lstmscope.readers.onnx.nodes import CHAIN_MAX, Node, canonical, chain_to, read_node, sources
from lstmscope.readers.onnx.proto import _Refused, check_tensor, load_model, tensor_values
from lstmscope.sniff import ONNX
from lstmscope.spec import LSTMSpec
from lstmscope.tokens import EmbeddingRef

# The package: this module holds read() and builds the modules; the rest is
#   proto.py  the protobuf, tensors, external data
#   graph.py  graphs and subgraphs, names through scopes, where a weight comes from, folding
#   nodes.py  LSTM nodes in LSTMSpec's terms, stacks, weights in nn.LSTM's layout

FORMATS = (ONNX,)
RECURRENT_OPS = ("GRU", "RNN", "Loop", "Scan")
LSTM_SINCE = 7  # LSTM-1 (opsets 1-6) differs (output_sequence) and onnxruntime cannot run it


def read(path: Path, fmt: str) -> Checkpoint:
    """List an ONNX model's LSTM nodes (folding constant subgraphs that build weights); one CheckpointError
    for a bad file."""
    try:
        import onnx  # noqa: F401
    except ImportError:
        raise CheckpointError(f"{path} is an ONNX model; reading it needs the onnx package: pip install 'lstmscope[onnx]' (or pip install onnx)") \
            from None
    return _guarded(path, lambda: _read(path))


def _guarded(path: Path, fn):
    try:
        return fn()
    except _Refused as e:
        raise CheckpointError(f"{path}: {e}") from None
    except CheckpointError:
        raise
    except RecursionError:
        raise CheckpointError(f"{path}: the ONNX model is nested too deeply to be read") from None
    except MemoryError:
        raise CheckpointError(f"{path}: reading it needs more memory than there is; the file claims more than it "
                              "holds (damaged or hostile)") from None
    except (OSError, ValueError, KeyError, TypeError, IndexError, OverflowError, UnicodeError) as e:
        raise CheckpointError(f"{path}: cannot read this ONNX model ({type(e).__name__}: {clean_message(e)}); it is "
                              "damaged or not a model") from None


def _read(path: Path) -> Checkpoint:
    model = load_model(path)
    base_dir = path.parent
    opsets = list(model.opset_import)
    version = next((int(o.version) for o in opsets if o.domain in ("", "ai.onnx")), None)
    tensors: dict[str, TensorInfo] = {}
    initializers: dict[str, Any] = {}
    nodes: list[Node] = []
    others: list[str] = []
    ops: dict[str, int] = {}
    lstm_protos: list[tuple[Any, Any]] = []
    for g in _graph.walk(model):
        prefix = f"{g.path}/" if g.path else ""
        for name, t in g.initializers.items():
            shape, dtype = check_tensor(t, f"initializer '{prefix}{name}'", base_dir)
            tensors[prefix + name] = TensorInfo(shape, dtype)
            initializers[prefix + name] = t
        for proto in g.proto.node:
            ops[proto.op_type] = ops.get(proto.op_type, 0) + 1
            if proto.domain not in ("", "ai.onnx"):
                continue
            if proto.op_type == "LSTM":
                lstm_protos.append((g, proto))
            elif proto.op_type in RECURRENT_OPS:
                others.append(f"{proto.op_type} node '{g.node_names[id(proto)]}'")
    if lstm_protos and version is not None and version < LSTM_SINCE:
        names = ", ".join(repr(g.node_names[id(p)]) for g, p in lstm_protos[:4])
        raise CheckpointError(f"{path}: its LSTM nodes ({names}) are LSTM-1 (the model imports ONNX opset {version}), "
                              f"which onnxruntime cannot run; convert the model to opset {LSTM_SINCE} or later "
                              "(onnx.version_converter.convert_version)")
    for g, proto in lstm_protos:
        nodes.append(read_node(g, proto, base_dir, opsets))
    modules, singles, by_name = _modules(nodes, opsets, base_dir)
    hint = _hint(others, ops)

    def parameters(module: LSTMModule) -> dict[str, np.ndarray]:
        chain = by_name.get(module.name)
        if chain is None:
            raise CheckpointError(f"{path}: module {module.name!r} is not one of this file's")
        for node in chain:
            if node.refusal:
                raise CheckpointError(f"{path}: LSTM node '{node.name}' cannot run: {node.refusal}")
        out: dict[str, np.ndarray] = {}
        for k, node in enumerate(chain):
            out.update(_guarded(path, lambda node=node, k=k: canonical(node, k)))
        return out

    who = " ".join(v for v in (model.producer_name, model.producer_version) if v)
    producer = ", ".join(v for v in (who, None if version is None else f"ONNX opset {version}") if v) or None
    def tensor(key: str) -> np.ndarray:
        return _guarded(path, lambda: tensor_values(initializers[key], f"initializer '{key}'", base_dir))

    return Checkpoint(path=path, format=ONNX, tensors=tensors, modules=modules,
                      _parameters=parameters, other_recurrent=others, no_lstm_hint=hint, single_layers=singles,
                      producer=producer, _tensor=tensor)


def _hint(others: list[str], ops: dict[str, int]) -> str:
    if others:
        shown = ", ".join(others[:6]) + (f" and {len(others) - 6} more" if len(others) > 6 else "")
        return f"no ONNX LSTM node; its recurrent ops are {shown} (lstmscope reads LSTM nodes only)"
    common = sorted(ops, key=lambda k: -ops[k])[:8]
    return f"no LSTM node among its {sum(ops.values())} nodes (ops: {', '.join(common) or 'none'})"


@dataclass(frozen=True)
class ModuleGraph:
    """What a module's nodes are in the graph, beyond LSTMSpec: ONNX's ``layout`` of X/Y/Y_h/Y_c (0: time-major
    ``Y [T, D, B, H]``; 1: batch-major ``Y [B, T, D, H]``) and where the nodes' initial states come from."""

    chain: tuple = field(repr=False)
    opsets: tuple = field(repr=False)
    base_dir: Path = field(repr=False)

    @property
    def layout(self) -> int:
        return self.chain[0].layout

    def state_feed(self, batch: int) -> dict:
        """The graph's state feeds for ``batch`` sequences (lstmscope.readers.onnx.feeds)."""
        return _guarded(self.base_dir, lambda: state_feed(list(self.chain), batch, list(self.opsets), self.base_dir))


def _modules(nodes: list[Node], opsets: list, base_dir: Path) -> tuple[list[LSTMModule], list[LSTMModule], dict[str, list[Node]]]:
    """Chains of nodes stacked as the PyTorch exporter stacks nn.LSTM layers become one module each."""
    nxt: dict[int, Node] = {}
    has_prev: set[int] = set()
    for b in nodes:
        for a in nodes:
            if a is b or id(a) in nxt or id(b) in has_prev:
                continue
            why = chain_to(a, b, opsets)
            if why is None:
                nxt[id(a)] = b
                has_prev.add(id(b))
            elif why:
                b.notes.append(f"reads the output of {a.name} but is not stacked with it: {why}")
    modules, singles, by_name = [], [], {}
    for head in nodes:
        if id(head) in has_prev:
            continue
        chain = [head]
        while id(chain[-1]) in nxt and len(chain) <= len(nodes):
            chain.append(nxt[id(chain[-1])])
        m = _module("+".join(n.name for n in chain), chain, opsets, base_dir)
        modules.append(m)
        by_name[m.name] = chain
        if len(chain) > 1:
            for n in chain:
                s = _module(n.name, [n], opsets, base_dir)
                singles.append(s)
                by_name[s.name] = [n]
    return modules, singles, by_name


def _module(name: str, chain: list[Node], opsets: list, base_dir: Path) -> LSTMModule:
    head = chain[0]
    gate, cell, hidden = head.acts
    spec = LSTMSpec(input_size=head.input_size, hidden_size=head.hidden, proj_size=0, num_layers=len(chain),
                    bidirectional=head.num_directions == 2, bias=head.sources["B"] is not None, dtype=head.dtype,
                    gate_activation=gate, cell_activation=cell, go_backwards=head.direction == "reverse",
                    bias_layout="ih+hh", framework="onnx", names=tuple(n.name for n in chain),
                    peephole=head.sources["P"] is not None, clip=head.clip, input_forget=head.input_forget,
                    hidden_activation=hidden)
    source: dict[str, str] = {}
    notes: list[str] = []
    for k, node in enumerate(chain):
        source.update(sources(node, k))
        prefix = f"{node.name}: " if len(chain) > 1 else ""
        notes += [prefix + n for n in node.notes if prefix + n not in notes]
        if node.refusal and not any(n.endswith("run refused") for n in node.notes):
            notes.append(f"{prefix}run refused: {node.refusal}")
    return LSTMModule(name=name, spec=spec, source=source, notes=tuple(dict.fromkeys(notes)),
                      graph=ModuleGraph(tuple(chain), tuple(opsets), base_dir), embedding=_embedding(head, base_dir))


EMBEDDING_PATH_OPS = frozenset({"Transpose", "Identity", "Dropout"})  # between a Gather and the LSTM's X


def _embedding(node: Node, base_dir: Path) -> EmbeddingRef | None:
    """The embedding the node's X comes from: a Gather (axis 0) of a 2-D floating-point initializer of width
    input_size, reached through at most a few layout ops."""
    g, name = node.graph, node.proto.input[0] if node.proto.input else ""
    for _ in range(CHAIN_MAX + 1):
        found = g.find(name) if name else None
        if found is None or found[1] != "node":
            return None
        scope, _ = found
        producer, _ = scope.producers[name]
        if producer.domain not in ("", "ai.onnx"):
            return None
        if producer.op_type in EMBEDDING_PATH_OPS and producer.input:
            g, name = scope, producer.input[0]
            continue
        if producer.op_type != "Gather" or len(producer.input) != 2:
            return None
        axis = next((a.i for a in producer.attribute if a.name == "axis"), 0)
        table = scope.find(producer.input[0])
        if axis != 0 or table is None or table[1] != "initializer":
            return None
        t = table[0].initializers[producer.input[0]]
        try:
            shape, dtype = check_tensor(t, f"initializer '{producer.input[0]}'", base_dir)
        except (_Refused, CheckpointError):
            return None
        if len(shape) != 2 or shape[1] != node.input_size or not dtype.startswith("float"):
            return None
        key = (f"{table[0].path}/" if table[0].path else "") + producer.input[0]
        return EmbeddingRef(producer.input[0], key, shape[0], shape[1], dtype)
    return None

