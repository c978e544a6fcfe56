"""Legacy Keras HDF5 files (Keras 1, Keras 2, tf.keras, Keras 3 ``model.save("x.h5")``): ``model_config`` over
``model_weights/<layer>`` and each layer's ``weight_names``, or a ``save_weights`` file (``layer_names`` only),
whose LSTMs are found by their weight names and shapes."""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING, Any, Callable

from lstmscope.readers.keras.config import (
    _CONTAINERS, _LSTM, _OTHER_RECURRENT, _WRAPPERS, UNKNOWN, _as_lstm, _bidirectional, _builtin, _container_layers,
    _dict, _flag, _layer_name, _lstm_layer, _wrapped,
)
from lstmscope.readers.keras.found import MAX_DEPTH, _Dir, _fail, _Layer
from lstmscope.readers.keras.hdf5 import _attr_list, _child, _dataset_at
from lstmscope.readers.keras.modules import _link

if TYPE_CHECKING:
    from lstmscope.readers.keras.reader import _Reader


class _Legacy:
    def __init__(self, reader: _Reader, f, weights):
        self.r, self.g = reader, weights
        self.group_path = "" if weights is f else weights.name.strip("/")
        self.listed = set(_attr_list(weights, "layer_names"))

    def _path(self, *parts: str) -> str:
        return "/".join(p for p in (self.group_path, *parts) if p)

    def walk_model(self, config: Any) -> None:
        if not isinstance(config, dict):
            _fail("its model_config is not a JSON object describing a model")
        cls = config.get("class_name")
        if not _builtin(config) or cls not in _CONTAINERS:
            _fail(f"its model_config describes a model of class {json.dumps(cls)[:60]}, which lstmscope does not "
                  "import")
        self.container(config, (), cls == "Sequential", 0)

    def container(self, lc: dict, where: tuple[str, ...], is_sequential: bool, depth: int) -> None:
        if depth > MAX_DEPTH:
            _fail("its model_config nests models too deeply")
        entries = _container_layers(lc)
        container = self.r.new_container()
        found: list[_Layer] = []
        for e, cls, name in entries:
            found += self.r.add_layers(self.layer(e, cls, name, where, depth), container)
        _link(entries, found, is_sequential, lambda name: self.embedding(name, where))

    def embedding(self, name: str, where: tuple[str, ...]) -> tuple[str, tuple[int, ...], str] | None:
        """An Embedding layer's matrix (its one weight): (HDF5 name, shape, dtype), or None."""
        if not where and self.listed and name not in self.listed:
            return None
        weights = self.weights_of(name, where)
        if len(weights) != 1:
            return None
        _, shape, dtype, h5name = weights[0]
        return h5name, shape, dtype

    def layer(self, lc: dict, cls: str, name: str, where: tuple[str, ...], depth: int) -> list[_Layer]:
        if not _builtin(lc):
            self.r.add_custom(name, lc)
            return []
        if cls in _CONTAINERS:
            self.container(lc, where + (name,), cls == "Sequential", depth + 1)
            return []
        if cls in _OTHER_RECURRENT:
            self.r.add_other(name, f"a {cls}")
            return []
        if not (cls in _LSTM or cls in _WRAPPERS or cls == "RNN"):
            return []
        if not where and self.listed and name not in self.listed:
            _fail(f"model_config has layer {name!r} but model_weights does not list it in layer_names; the "
                  "weights are missing")
        return self.recurrent(lc, cls, name, where, self.weights_of(name, where))

    def recurrent(self, lc: dict, cls: str, name: str, where: tuple[str, ...], weights: list) -> list[_Layer]:
        """A recurrent layer (or a wrapper of one) whose weights, in weight_names order, are ``weights``."""
        cfg = _dict(lc.get("config"), f"layer {name!r} config")
        if cls == "TimeDistributed":
            inner = _dict(cfg.get("layer"), f"layer {name!r} inner layer")
            icls = inner.get("class_name")
            if not _builtin(inner):
                self.r.add_custom(name, inner, "wraps the")
                return []
            if icls in _OTHER_RECURRENT:
                self.r.add_other(name, f"a TimeDistributed({icls})")
            if not (icls in _LSTM or icls in ("Bidirectional", "RNN")):
                return []
            return _wrapped(self.recurrent(inner, str(icls), _layer_name(inner) or name, where, weights), name)
        if cls == "Bidirectional":
            inner = _dict(cfg.get("layer"), f"layer {name!r} inner layer")
            fw = _as_lstm(self.r, inner, name, "Bidirectional")
            back = cfg.get("backward_layer")
            bw = _as_lstm(self.r, _dict(back, "backward_layer"), name, "Bidirectional") if back is not None else fw
            if fw is None or bw is None:
                return []
            if len(weights) % 2:
                _fail(f"Bidirectional layer {name!r} has {len(weights)} weight arrays; expected the same number "
                      "for each direction")
            half = len(weights) // 2
            forward = _lstm_layer(self.r, name, where, [self.direction(fw, weights[:half], name)], fw[1])
            backward = _lstm_layer(self.r, name, where, [self.direction(bw, weights[half:], name)], bw[1])
            return _bidirectional(self.r, name, forward, backward, cfg.get("merge_mode", "concat"), back is not None)
        got = _as_lstm(self.r, lc, name)
        if got is None:
            return []
        return [_lstm_layer(self.r, name, where, [self.direction(got, weights, name)], got[1])]

    def weights_of(self, name: str, where: tuple[str, ...]) -> list[tuple[str, tuple[int, ...], str]]:
        """A layer's weight datasets in weight_names order: its own group's at the top level; inside a submodel,
        the outermost submodel group's weights whose names start with the layer's name (after submodel names)."""
        top = where[0] if where else name
        group = _child(self.g, top, self._path(top))
        if group is None:
            return []
        names = _attr_list(group, "weight_names")
        if where:
            names = [n for n in names if _owner_first(n, where) == name]
        out = []
        for n in names:
            path = self._path(top, n)
            ds = _dataset_at(group, n, path)
            if ds is None:
                _fail(f"weight {n!r} of layer {name!r} is listed in weight_names but {path} is not in the file")
            out.append((path, *self.r.dataset(ds, path)))  # (path, shape, dtype, HDF5 name)
        return out

    def direction(self, lstm: tuple[str, dict], weights: list, name: str) -> _Dir:
        cls, cfg = lstm
        if not weights:
            _fail(f"model_config has LSTM layer {name!r} but the file holds no weights for it; the weights are "
                  "missing")
        if cls == "CuDNNLSTM":
            return self.r.make_dir("cudnn", weights, name)
        if len(weights) == 12:  # Keras 1: W, U, b per gate, gates i, c, f, o
            return self.r.make_dir("keras1", _keras1_order(weights, lambda e: e[0]), name)
        use_bias = _flag(cfg, "use_bias", True)
        if len(weights) != (3 if use_bias else 2):
            _fail(f"layer {name!r} has {len(weights)} weight arrays ({', '.join(e[0] for e in weights)}); an LSTM "
                  f"{'with' if use_bias else 'without'} bias has {3 if use_bias else 2}")
        return self.r.make_dir("keras", weights, name)

    def infer(self) -> None:
        """A weights-only file: every layer group whose weights are shaped like an LSTM's."""
        for top in _attr_list(self.g, "layer_names"):
            group = _child(self.g, top, self._path(top))
            if group is None:
                _fail(f"layer_names lists {top!r} but the file has no group {top!r}; the file is damaged")
            owners: dict[tuple[str, ...], dict[str | None, list]] = {}
            for n in _attr_list(group, "weight_names"):
                comps, direction, _ = _owner(n)
                path = self._path(top, n)
                ds = _dataset_at(group, n, path)
                if ds is None:
                    _fail(f"weight {n!r} is listed in weight_names but {path} is not in the file")
                if comps and comps[0] == top and len(comps) > 1:
                    comps = comps[1:]
                owners.setdefault(comps or (top,), {}).setdefault(direction, []).append((path, ds))
            container = self.r.new_container()
            for comps, dirs in owners.items():
                name, where = comps[0], (() if comps[0] == top else (top,))
                one, fw, bw = (self._guess(name, where, dirs.get(d, [])) for d in (None, "forward", "backward"))
                if one is not None and fw is None and bw is None:
                    self.r.add_layers([one], container)
                elif one is None and fw is not None and bw is not None:
                    self.r.add_layers(_bidirectional(self.r, name, fw, bw, UNKNOWN, False), container)
                elif any(_gates([tuple(ds.shape or ()) for _, ds in d]) in (1, 3) for d in dirs.values()):
                    self.r.add_other(name, "a GRU or SimpleRNN (by its weight shapes)")

    def _guess(self, name: str, where: tuple[str, ...], entries: list) -> _Layer | None:
        shapes = [tuple(ds.shape or ()) for _, ds in entries]
        if len(entries) == 12 and all(_KERAS1_NAME.search(p) for p, _ in entries):
            kind, entries = "keras1", _keras1_order(entries, lambda e: e[0])
        elif _gates(shapes) == 4:
            kind = "cudnn" if len(shapes) == 3 and shapes[2] == (8 * shapes[1][0],) else "keras"
        else:
            return None
        checked = [(p, *self.r.dataset(ds, p)) for p, ds in entries]
        return _lstm_layer(self.r, name, where, [self.r.make_dir(kind, checked, name)], None)


_KERAS1_NAME = re.compile(r"(^|_)([WUb]_[icfo])(:\d+)?$")


def _keras1_order(entries: list, path_of: Callable) -> list:
    """Keras 1's 12 arrays in its own order W_i, U_i, b_i, W_c, U_c, b_c, W_f, U_f, b_f, W_o, U_o, b_o, by their
    names when all 12 say which they are (else as listed)."""
    order = {f"{w}_{g}": k for k, (g, w) in enumerate((g, w) for g in "icfo" for w in "WUb")}
    keys = [_KERAS1_NAME.search(path_of(e)) for e in entries]
    if all(keys) and sorted(order[m.group(2)] for m in keys) == list(range(12)):
        return [e for _, e in sorted(zip(keys, entries), key=lambda ke: order[ke[0].group(2)])]
    return entries


def _gates(shapes: list[tuple[int, ...]]) -> int | None:
    """Gates of a (kernel, recurrent_kernel[, bias]) set, by the recurrent kernel's shape (H, gates * H)."""
    if len(shapes) in (2, 3) and len(shapes[1]) == 2 and shapes[1][0] > 0 and shapes[1][1] % shapes[1][0] == 0:
        return shapes[1][1] // shapes[1][0]
    return None


# --- legacy weight names ----------------------------------------------------------------------------------

def _owner(weight_name: str) -> tuple[tuple[str, ...], str | None, str]:
    """(the layer path a legacy weight name belongs to, its direction in a Bidirectional, its basename):
    ``bidirectional/forward_lstm/lstm_cell_1/kernel:0`` -> (("bidirectional",), "forward", "kernel")."""
    parts = [p for p in weight_name.split("/") if p]
    base = parts[-1].split(":")[0] if parts else ""
    comps = parts[:-1]
    if not comps:  # Keras 1: "lstm_1_W_i", "forward_lstm_1_W"
        m = re.match(r"^(.+?)_([WUb](?:_[a-z])?)$", base)
        if m:
            comps = [m.group(1)]
    if comps and re.search(r"(^|_)cell(_\d+)?$", comps[-1]) and len(comps) > 1:
        comps = comps[:-1]
    direction = None
    if comps and comps[-1].startswith(("forward_", "backward_")):
        direction = comps[-1].split("_", 1)[0]
        comps = comps[:-1]
    return tuple(comps), direction, base


def _owner_first(weight_name: str, where: tuple[str, ...]) -> str | None:
    """The first name of a weight's layer path after the submodel names it starts with."""
    comps, _, _ = _owner(weight_name)
    comps = list(comps)
    for w in where:
        if comps and comps[0] == w and len(comps) > 1:
            comps.pop(0)
    return comps[0] if comps else None
