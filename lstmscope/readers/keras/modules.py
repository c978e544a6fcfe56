"""From layers to modules: which layer feeds which (and what masks it), chains of identical layers stacked into
one module, each module's spec and weight sources, and its weights read and converted to nn.LSTM's layout."""

from __future__ import annotations

from typing import Any, Callable, Iterator

import numpy as np

from lstmscope.readers.base import LSTMModule
from lstmscope.readers.keras.config import _IDENTITY
from lstmscope.readers.keras.found import _Dir, _Layer
from lstmscope.masking import MaskRule
from lstmscope.readers.keras.hdf5 import _read_dataset
from lstmscope.spec import LSTMSpec
from lstmscope.tokens import EmbeddingRef


# --- the graph: which layer feeds which, chains, masking ----------------------------------------------------------

def _inputs(lc: dict) -> tuple[list[tuple[str, int]], bool, bool] | None:
    """The layer's inputs (layer name, tensor index) in its only call, whether other tensors are passed
    (initial_state, constants), and whether a mask is passed; None when it is called more than once or the
    format is not understood."""
    nodes = lc.get("inbound_nodes")
    if not isinstance(nodes, list) or len(nodes) != 1:
        return None
    node = nodes[0]
    if isinstance(node, dict):  # Keras 3: {"args": [...], "kwargs": {...}}
        args = list(_keras_tensors(node.get("args")))
        kwargs = node.get("kwargs") if isinstance(node.get("kwargs"), dict) else {}
        extra = any(list(_keras_tensors(v)) for k, v in kwargs.items() if k not in ("mask", "training"))
        return args, extra, bool(list(_keras_tensors(kwargs.get("mask"))))
    if isinstance(node, list):  # Keras 1/2: [[name, node_index, tensor_index(, kwargs)], ...]
        out, extra = [], False
        for item in node:
            if not (isinstance(item, list) and len(item) >= 3 and isinstance(item[0], str)):
                return None
            out.append((item[0], item[2] if isinstance(item[2], int) else -1))
            if len(item) > 3 and isinstance(item[3], dict) and any(k not in ("mask", "training") for k in item[3]):
                extra = True
        return out, extra, False
    return None


def _keras_tensors(value: Any, depth: int = 0) -> Iterator[tuple[str, int]]:
    if depth > 16:
        return
    if isinstance(value, dict):
        if value.get("class_name") == "__keras_tensor__":
            hist = value.get("config", {}).get("keras_history") if isinstance(value.get("config"), dict) else None
            if isinstance(hist, list) and len(hist) == 3 and isinstance(hist[0], str):
                yield hist[0], hist[2] if isinstance(hist[2], int) else -1
            return
        for v in value.values():
            yield from _keras_tensors(v, depth + 1)
    elif isinstance(value, list):
        for v in value:
            yield from _keras_tensors(v, depth + 1)


def _link(entries: list[tuple[dict, str, str]], found: list[_Layer], is_sequential: bool,
          embedding_weights: Callable[[str], tuple[str, tuple[int, ...], str] | None] | None = None) -> None:
    """Set each found layer's feeder (skipping identity layers), the Embedding it reads (``embedding_weights(name)``
    gives an Embedding layer's matrix as (dataset path, shape, dtype), or None) and what masks its input, within
    one container."""
    by_name = {name: (lc, cls) for lc, cls, name in entries}
    order = [name for _, _, name in entries]
    lstm_names = {layer.name: layer for layer in found}

    def source(name: str) -> tuple[str | None, bool, bool]:
        """(the layer feeding ``name``, passed extra tensors, passed a mask) for a single, plain input."""
        if is_sequential:
            i = order.index(name)
            return (order[i - 1] if i > 0 else None), False, False
        got = _inputs(by_name[name][0])
        if got is None or len(got[0]) != 1 or got[0][0][1] not in (0, -1):
            return None, True, bool(got and got[2])
        return got[0][0][0], got[1], got[2]

    def walk_back(name: str) -> tuple[str | None, bool, bool]:
        src, extra, masked = source(name)
        seen = 0
        while src in by_name and by_name[src][1] in _IDENTITY and seen < len(order):
            src, more, m2 = source(src)
            extra, masked, seen = extra or more, masked or m2, seen + 1
        return (src if src in by_name else None), extra, masked

    def mask_source(name: str, depth: int = 0) -> tuple[str | None, MaskRule | None]:
        """(what masks the layer's input, the rule when Keras computes the mask from the model's input here)."""
        src, _, masked = walk_back(name)
        if src is None or depth > len(order):
            return ("a mask passed to it" if masked else None), None
        lc, cls = by_name[src]
        cfg = lc.get("config") if isinstance(lc.get("config"), dict) else {}
        if cls == "Masking":
            value = cfg.get("mask_value", 0.0)
            text = f"{src} (Masking, mask_value {value})"
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
            return text, (MaskRule("value", float(value), text) if ok and depth == 0 else None)
        if cls == "Embedding" and cfg.get("mask_zero") is True:
            text = f"{src} (Embedding, mask_zero=True)"
            return text, (MaskRule("zero_id", 0.0, text) if depth == 0 else None)
        if src in lstm_names and lstm_names[src].return_sequences:
            return mask_source(src, depth + 1)[0], None
        return ("a mask passed to it" if masked else None), None

    for layer in found:
        if layer.name not in by_name:
            continue
        src, extra, _ = walk_back(layer.name)
        layer.feeder = None if extra else src
        layer.masked_by, layer.mask_rule = mask_source(layer.name)
        if src is not None and not extra and by_name[src][1] == "Embedding" and embedding_weights is not None:
            cfg = by_name[src][0].get("config") if isinstance(by_name[src][0].get("config"), dict) else {}
            got = embedding_weights(src)
            if got is not None and len(got[1]) == 2 and got[1][1] == layer.input_size:
                layer.embedding = EmbeddingRef(src, got[0], got[1][0], got[1][1], got[2],
                                               mask_zero=cfg.get("mask_zero") is True)


def _stack_mismatch(a: _Layer, b: _Layer) -> str | None:
    """Why ``b`` cannot be stacked on ``a`` (which feeds it its whole output sequence), or None."""
    checks = [
        ("units", a.units, b.units), ("activation", a.activation, b.activation),
        ("recurrent_activation", a.recurrent, b.recurrent), ("use_bias", a.use_bias, b.use_bias),
        ("bias layout", a.bias_layout, b.bias_layout), ("dtype", a.dirs[0].dtype, b.dirs[0].dtype),
        ("Bidirectional", a.bidirectional, b.bidirectional),
    ]
    for what, x, y in checks:
        if x != y:
            if isinstance(x, bool):
                return f"{a.name if x else b.name} is {what} and {b.name if x else a.name} is not"
            return f"{what} {x} vs {y}"
    for layer in (a, b):
        if layer.bidirectional and layer.merge_mode != "concat":
            return f"{layer.name} has merge_mode {layer.merge_mode!r} (only 'concat' stacks)"
    if a.go_backwards or b.go_backwards:
        return "go_backwards"
    if b.input_size != a.units * len(a.dirs):
        return f"the kernel of the second takes {b.input_size} features but the first gives {a.units * len(a.dirs)}"
    return None


def _modules(layers: list[_Layer]) -> tuple[list[tuple[LSTMModule, list[_Layer]]], list[tuple[LSTMModule, list[_Layer]]]]:
    """Chains of stackable layers become one module each; their layers are also offered alone."""
    counts: dict[str, int] = {}
    for layer in layers:
        counts[layer.name] = counts.get(layer.name, 0) + 1
    qual: dict[int, str] = {}
    taken: set[str] = set()
    for layer in layers:
        name = layer.name if counts[layer.name] == 1 else "/".join((*layer.where, layer.name))
        n = 2
        while name in taken:  # only a damaged config repeats a name within one model
            name, n = f"{layer.name}#{n}", n + 1
        qual[id(layer)] = name
        taken.add(name)
    index = {(layer.container, layer.name): layer for layer in layers}
    nxt: dict[int, _Layer] = {}
    has_prev: set[int] = set()
    for b in layers:
        a = index.get((b.container, b.feeder)) if b.feeder else None
        if a is None or a is b or not a.return_sequences or a.wrapper or b.wrapper or id(a) in nxt:
            continue
        why = _stack_mismatch(a, b)
        if why is None:
            nxt[id(a)] = b
            has_prev.add(id(b))
        else:
            a.notes.append(f"not stacked with {qual[id(b)]} (which reads its output): {why}; a stack needs "
                           "identical layers")
            b.notes.append(f"not stacked with {qual[id(a)]} (whose output it reads): {why}; a stack needs "
                           "identical layers")
    modules, singles = [], []
    for head in layers:
        if id(head) in has_prev:
            continue
        chain = [head]
        while id(chain[-1]) in nxt and len(chain) <= len(layers):
            chain.append(nxt[id(chain[-1])])
        modules.append((_module("+".join(qual[id(x)] for x in chain), chain), chain))
        if len(chain) > 1:
            singles += [(_module(qual[id(x)], [x]), [x]) for x in chain]
    return modules, singles


def _module(name: str, chain: list[_Layer]) -> LSTMModule:
    head = chain[0]
    spec = LSTMSpec(input_size=head.input_size, hidden_size=head.units, proj_size=0, num_layers=len(chain),
                    bidirectional=head.bidirectional, bias=head.use_bias, dtype=head.dirs[0].dtype,
                    gate_activation=head.recurrent, cell_activation=head.activation,
                    go_backwards=head.go_backwards and not head.bidirectional, bias_layout=head.bias_layout,
                    framework="keras", names=tuple(x.name for x in chain))
    source: dict[str, str] = {}
    for k, layer in enumerate(chain):
        for d, suffix in zip(layer.dirs, ("", "_reverse")):
            source.update(_sources(d, f"l{k}{suffix}", layer.use_bias))
    notes: list[str] = []
    if head.masked_by and head.mask_rule is None:
        notes.append(f"input is masked by {head.masked_by}, which lstmscope cannot compute from this module's input; "
                     "it runs every step (--mask-value V masks steps whose features all equal V)")
    for layer in chain:
        prefix = f"{layer.name}: " if len(chain) > 1 else ""
        notes += [prefix + n for n in layer.notes if prefix + n not in notes]
    returns = tuple(x.return_sequences for x in chain) if all(x.return_sequences is not None for x in chain) else ()
    return LSTMModule(name=name, spec=spec, source=source, notes=tuple(notes), return_sequences=returns,
                      embedding=head.embedding, mask=head.mask_rule)


def _sources(d: _Dir, k: str, use_bias: bool) -> dict[str, str]:
    h = d.units
    if d.kind == "keras1":
        pick = lambda j: ", ".join(d.paths[3 * g + j] for g in (0, 2, 1, 3))  # noqa: E731  (i, f, c, o)
        return {f"weight_ih_{k}": pick(0), f"weight_hh_{k}": pick(1), f"bias_ih_{k}": pick(2),
                f"bias_hh_{k}": "(zeros: Keras has one bias)"}
    out = {f"weight_ih_{k}": d.paths[0], f"weight_hh_{k}": d.paths[1]}
    if d.kind == "cudnn":
        out.update({f"bias_ih_{k}": f"{d.paths[2]}[:{4 * h}]", f"bias_hh_{k}": f"{d.paths[2]}[{4 * h}:]"})
    elif use_bias:
        out.update({f"bias_ih_{k}": d.paths[2], f"bias_hh_{k}": "(zeros: Keras has one bias)"})
    return out


# --- weights ----------------------------------------------------------------------------------------------------

def _load(opener: Callable[[], Any], layers: list[_Layer]) -> dict[str, np.ndarray]:
    """Read and convert a module's weights to nn.LSTM's layout (gate order i, f, g, o)."""
    out: dict[str, np.ndarray] = {}
    with opener() as f:
        for k, layer in enumerate(layers):
            for d, suffix in zip(layer.dirs, ("", "_reverse")):
                arrays = [_read_dataset(f, p, s) for p, s in zip(d.h5names, d.shapes)]
                w_ih, w_hh, b_ih, b_hh = _canonical(d, arrays)
                out[f"weight_ih_l{k}{suffix}"] = w_ih
                out[f"weight_hh_l{k}{suffix}"] = w_hh
                if b_ih is not None:
                    out[f"bias_ih_l{k}{suffix}"] = b_ih
                    out[f"bias_hh_l{k}{suffix}"] = b_hh
    return out


def _canonical(d: _Dir, a: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None]:
    h, i = d.units, d.input_size
    if d.kind == "keras1":  # W_i, U_i, b_i, W_c, U_c, b_c, W_f, U_f, b_f, W_o, U_o, b_o: gates i, c, f, o
        gates = (0, 2, 1, 3)  # -> i, f, c, o
        w_ih = np.concatenate([a[3 * g] for g in gates], axis=1).T  # (4H, I)
        w_hh = np.concatenate([a[3 * g + 1] for g in gates], axis=1).T  # (4H, H)
        b = np.concatenate([a[3 * g + 2] for g in gates])  # (4H,)
        return np.ascontiguousarray(w_ih), np.ascontiguousarray(w_hh), b, np.zeros_like(b)
    if d.kind == "cudnn":  # each gate block is raw cuDNN memory: (H, I) row-major under a (I, H) shape
        w_ih = np.concatenate([a[0][:, g * h:(g + 1) * h].reshape(h, i) for g in range(4)])  # (4H, I)
        w_hh = np.concatenate([a[1][:, g * h:(g + 1) * h].reshape(h, h) for g in range(4)])  # (4H, H)
        return w_ih, w_hh, np.ascontiguousarray(a[2][:4 * h]), np.ascontiguousarray(a[2][4 * h:])
    w_ih = np.ascontiguousarray(a[0].T)  # kernel (I, 4H) -> (4H, I)
    w_hh = np.ascontiguousarray(a[1].T)  # recurrent_kernel (H, 4H) -> (4H, H)
    if len(a) == 3:
        return w_ih, w_hh, a[2], np.zeros_like(a[2])
    return w_ih, w_hh, None, None
