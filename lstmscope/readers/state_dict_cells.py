"""``nn.LSTMCell`` parameters in a flat listing of state_dict keys, as ``nn.LSTM`` modules. Torch-free.

A hand-written loop steps an ``nn.LSTMCell`` (``weight_ih (4H, I)``, ``weight_hh (4H, H)``, ``bias_ih``,
``bias_hh (4H,)``, no ``_l0``, no projection) over the sequence: ``h, c = cell(x[t], (h, c))``. That is a
one-layer unidirectional ``nn.LSTM``, so a cell becomes an :class:`LSTMModule` whose ``source`` maps
``weight_ih_l0`` (and so on) to the cell's keys, and the rest of lstmscope runs it unchanged. Cells of one
``nn.ModuleList`` (``cells.0.``, ``cells.1.``, ...) whose widths chain (cell k+1 takes cell k's h) and that agree
(hidden size, bias, dtype) are a stack, one module named by the list (``num_layers`` = the list's length);
others stay one module per cell, with a note that says why they were not stacked.

``nn.GRUCell`` (3 gates) and ``nn.RNNCell`` (1) share the names: they are reported, never run. A group that
is not clearly a cell (a ``weight_ih`` alone, shapes that do not fit ``(G*H, I)`` and ``(G*H, H)``, optimizer
state) is not a module.
"""

from __future__ import annotations

import re
from typing import Mapping

from lstmscope.dtypes import FLOAT_NAMES
from lstmscope.errors import CheckpointError
from lstmscope.readers.base import LSTMModule, TensorInfo, _fmt
from lstmscope.spec import LSTMSpec

_CELL_PARAM = re.compile(r"^(?P<prefix>.*?)(?P<kind>weight_ih|weight_hh|bias_ih|bias_hh)$")
_LIST_ITEM = re.compile(r"^(?P<list>(?:.*\.)?)(?P<index>0|[1-9][0-9]{0,5})\.$")  # "cells.3." -> ("cells.", "3")
_KINDS = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
OTHER_CELLS = {3: "nn.GRUCell", 1: "nn.RNNCell"}  # gates -> what the cell is

SINGLE_NOTE = ("an nn.LSTMCell: lstmscope runs it over the sequence as a loop `h, c = cell(x[t], (h, c))` would; "
               "`output` here is the sequence of h_t that loop produces")


class _Cell:
    """One cell's keys and shapes."""

    __slots__ = ("prefix", "keys", "input_size", "hidden", "bias", "dtype")

    def __init__(self, prefix: str, keys: dict[str, str], input_size: int, hidden: int, bias: bool, dtype: str):
        self.prefix = prefix  # "decoder.rnn." ("" at the top level)
        self.keys = keys  # "weight_ih" -> the file's key
        self.input_size = input_size
        self.hidden = hidden
        self.bias = bias
        self.dtype = dtype

    @property
    def name(self) -> str:
        return self.prefix.rstrip(".")


def find_lstm_cells(tensors: Mapping[str, TensorInfo], source: str, is_optimizer_state,
                    skipped: list[str] | None = None, kinds: dict[str, str] | None = None,
                    single_layers: list[LSTMModule] | None = None) -> list[LSTMModule]:
    """Every ``nn.LSTMCell`` (alone, or stacked in a list) in ``tensors``, in key order, as an nn.LSTM module.

    GRUCell / RNNCell prefixes go to ``skipped`` (``kinds`` says which each is); the cells of a stack, each
    alone, go to ``single_layers``. Raises CheckpointError for a cell whose tensors are inconsistent.
    """
    groups: dict[str, dict[str, str]] = {}
    for key in tensors:
        m = _CELL_PARAM.match(key)
        if not m:
            continue
        prefix = m.group("prefix")
        if (prefix and not prefix.endswith(".")) or is_optimizer_state(prefix):
            continue  # "myweight_ih", or Adam's moments of a cell
        groups.setdefault(prefix, {})[m.group("kind")] = key
    cells: list[_Cell] = []
    for prefix, keys in groups.items():
        gates = _gates(keys, tensors)
        if gates is None:
            continue
        if gates != 4:
            if skipped is not None:
                skipped.append(prefix.rstrip("."))
            if kinds is not None:
                kinds[prefix.rstrip(".")] = f"{gates} gate{'s' if gates > 1 else ''} (an {OTHER_CELLS[gates]})"
            continue
        cells.append(_check_cell(prefix, keys, tensors, source))
    return _modules(cells, tensors, single_layers)


def _gates(keys: dict[str, str], tensors: Mapping[str, TensorInfo]) -> int | None:
    """G when weight_ih is (G*H, I) and weight_hh (G*H, H) with G in (1, 3, 4), all non-zero; else None."""
    if "weight_ih" not in keys or "weight_hh" not in keys:
        return None
    w_ih, w_hh = tensors[keys["weight_ih"]].shape, tensors[keys["weight_hh"]].shape
    if len(w_ih) != 2 or len(w_hh) != 2 or w_ih[0] != w_hh[0] or 0 in w_ih or 0 in w_hh:
        return None
    gates, rem = divmod(w_hh[0], w_hh[1])
    return gates if rem == 0 and gates in (1, 3, 4) else None


def _check_cell(prefix: str, keys: dict[str, str], tensors: Mapping[str, TensorInfo], source: str) -> _Cell:
    """The cell's sizes from its weights (weight_ih (4H, I), weight_hh (4H, H)); biases and dtypes checked."""
    where = f"{source}: LSTMCell '{prefix.rstrip('.') or '(top level)'}'"
    w_ih = tensors[keys["weight_ih"]]
    hidden, input_size = w_ih.shape[0] // 4, w_ih.shape[1]
    biases = [k for k in ("bias_ih", "bias_hh") if k in keys]
    if len(biases) == 1:
        missing = "bias_hh" if biases == ["bias_ih"] else "bias_ih"
        raise CheckpointError(f"{where} has {biases[0]} but no {missing}; expected tensor '{prefix}{missing}' of "
                              f"shape ({4 * hidden},) (an nn.LSTMCell has both biases or neither)")
    for kind in _KINDS:
        if kind not in keys:
            continue
        info = tensors[keys[kind]]
        want = (4 * hidden,) if kind.startswith("bias") else (4 * hidden, input_size if kind == "weight_ih" else hidden)
        if tuple(info.shape) != want:
            raise CheckpointError(f"{where}: tensor '{keys[kind]}' has shape {_fmt(info.shape)}; expected "
                                  f"{_fmt(want)} (input_size={input_size}, hidden_size={hidden})")
        if info.dtype != w_ih.dtype:
            raise CheckpointError(f"{where}: tensor '{keys[kind]}' is {info.dtype} but '{keys['weight_ih']}' is "
                                  f"{w_ih.dtype}; all parameters of one LSTMCell must share a dtype")
    if w_ih.dtype not in FLOAT_NAMES:
        raise CheckpointError(f"{where}: tensor '{keys['weight_ih']}' is {w_ih.dtype}; an LSTM needs floating-point "
                              f"weights ({', '.join(FLOAT_NAMES)})")
    return _Cell(prefix, keys, input_size, hidden, bool(biases), w_ih.dtype)


def _module(name: str, layers: list[_Cell], notes: tuple[str, ...]) -> LSTMModule:
    first = layers[0]
    spec = LSTMSpec(input_size=first.input_size, hidden_size=first.hidden, proj_size=0, num_layers=len(layers),
                    bidirectional=False, bias=first.bias, dtype=first.dtype)
    source = {}
    for k, cell in enumerate(layers):
        for kind in _KINDS:
            if kind in cell.keys:
                source[f"{kind}_l{k}"] = cell.keys[kind]
    return LSTMModule(name=name, spec=spec, source=source, notes=notes)


def _modules(cells: list[_Cell], tensors: Mapping[str, TensorInfo], single_layers: list[LSTMModule] | None
             ) -> list[LSTMModule]:
    """Cells of one list that chain -> one stacked module; every other cell -> a module of its own."""
    lists: dict[str, dict[int, _Cell]] = {}
    for cell in cells:
        m = _LIST_ITEM.match(cell.prefix)
        if m:
            lists.setdefault(m.group("list"), {})[int(m.group("index"))] = cell
    stacked: dict[int, LSTMModule] = {}  # id(first cell) -> the stack's module
    in_stack: set[int] = set()
    why_not: dict[int, str] = {}  # id(cell) -> why its list is not a stack
    for list_prefix, members in lists.items():
        if len(members) < 2:
            continue
        order = [members[i] for i in sorted(members)]
        why = _why_not_stacked(list_prefix, members, tensors)
        if why:
            for cell in order:
                why_not[id(cell)] = why
            continue
        names = ", ".join(c.name for c in order)
        note = (f"a stack of {len(order)} nn.LSTMCell ({names}), each feeding the next: lstmscope runs it as a loop "
                f"over t that steps {order[0].name} on x[t] and each later cell on the h_t the cell before it just "
                "gave; `output` here is the sequence of the last cell's h_t")
        stacked[id(order[0])] = _module(list_prefix.rstrip("."), order, (note,))
        in_stack.update(id(c) for c in order)
        if single_layers is not None:
            alone = f"one cell of the stack '{list_prefix.rstrip('.') or '(top level)'}', run alone"
            single_layers.extend(_module(c.name, [c], (SINGLE_NOTE, alone)) for c in order)
    modules = []
    for cell in cells:
        if id(cell) in stacked:
            modules.append(stacked[id(cell)])
        elif id(cell) not in in_stack:
            notes = (SINGLE_NOTE,) + ((why_not[id(cell)],) if id(cell) in why_not else ())
            modules.append(_module(cell.name, [cell], notes))
    return modules


def _why_not_stacked(list_prefix: str, members: dict[int, _Cell], tensors: Mapping[str, TensorInfo]) -> str:
    """Why the cells of one list are not one stack ("" when they are)."""
    shown = list_prefix.rstrip(".") or "(top level)"
    indices = sorted(members)
    if indices != list(range(len(indices))):
        gap = next(i for i, j in enumerate(indices) if i != j)
        return f"not stacked with the other cells of '{shown}': it has no LSTMCell at index {gap}"
    others = sorted({k[len(list_prefix):].split(".", 1)[0] for k in tensors if k.startswith(list_prefix)}
                    - {str(i) for i in indices})
    if others:
        return (f"not stacked with the other cells of '{shown}': the list also holds '{list_prefix}{others[0]}', "
                "which is not an LSTMCell")
    order = [members[i] for i in indices]
    for a, b in zip(order, order[1:]):
        if b.input_size != a.hidden:
            return (f"not stacked with the other cells of '{shown}': '{b.name}' takes {b.input_size} features but "
                    f"'{a.name}' gives {a.hidden} (its hidden_size), so one does not feed the next")
        for what, x, y in (("hidden_size", a.hidden, b.hidden), ("bias", a.bias, b.bias), ("dtype", a.dtype, b.dtype)):
            if x != y:
                return (f"not stacked with the other cells of '{shown}': '{a.name}' has {what} {x} and '{b.name}' "
                        f"{y}; a stack needs alike layers")
    return ""
