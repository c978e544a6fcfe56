"""Keras 3 weights: the ``layers/.../vars`` tree of a ``.keras`` archive's model.weights.h5 or a ``.weights.h5``
file, walked with config.json (groups are named by class and counted the way Keras counts) or, with no usable
config, alone (LSTMs found by their group names and weight shapes)."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from lstmscope.readers.keras.config import (
    _CONTAINERS, _KERAS3_OTHER_GROUPS, _LSTM, _OTHER_RECURRENT, UNKNOWN, _as_lstm, _bidirectional, _builtin,
    _container_layers, _dict, _is_operation, _layer_name, _lstm_layer, _natural, _snake, _unique, _wrapped,
)
from lstmscope.readers.keras.found import MAX_DEPTH, MAX_OBJECTS, _fail, _Layer, _Refused
from lstmscope.readers.keras.hdf5 import _attr_text, _child, _keys
from lstmscope.readers.keras.modules import _link

if TYPE_CHECKING:
    from lstmscope.readers.keras.reader import _Reader


class _Tree:
    """A Keras 3 weights file's layer groups by normalised path. Keras 3.0-3.2 on Windows named groups with
    backslashes (``layers\\lstm\\cell``); they are split here. Links, virtual and external datasets are refused
    as they are met."""

    def __init__(self, f):
        self.groups: dict[str, Any] = {}
        self.datasets: dict[str, Any] = {}
        self.children: dict[str, list[str]] = {}
        self._count = 0
        for name in _keys(f):
            first = name.replace("\\", "/").split("/")[0]
            if first in ("layers", "_layer_checkpoint_dependencies", "vars"):
                self._walk(f, name, "", 0)
        self.root = next((r for r in ("layers", "_layer_checkpoint_dependencies") if r in self.groups), None)

    def _walk(self, parent, name: str, at: str, depth: int) -> None:
        import h5py

        self._count += 1
        if depth > MAX_DEPTH or self._count > MAX_OBJECTS:
            _fail("its HDF5 layer tree is nested too deeply or too large to be a Keras model")
        key = "/".join(p for p in (at + "/" + name.replace("\\", "/")).split("/") if p)
        obj = _child(parent, name, key)
        parts = key.split("/")
        for i in range(1, len(parts) + 1):  # every prefix exists as a group (flat backslash names imply them)
            prefix, head = "/".join(parts[:i]), "/".join(parts[:i - 1])
            kids = self.children.setdefault(head, [])
            if parts[i - 1] not in kids:
                kids.append(parts[i - 1])
            if i < len(parts):
                self.groups.setdefault(prefix, None)
        if isinstance(obj, h5py.Group):
            self.groups[key] = obj
            for child in _keys(obj):
                self._walk(obj, child, key, depth + 1)
        elif isinstance(obj, h5py.Dataset):
            self.datasets[key] = obj

    def has(self, path: str) -> bool:
        return path in self.groups

    def vars_name(self, path: str) -> str | None:
        """The layer name Keras >= 3.6 writes on ``<path>/vars``."""
        g = self.groups.get(path + "/vars")
        if g is None or "name" not in g.attrs:
            return None
        try:
            return _attr_text(g, "name")
        except _Refused:
            return None

    def variables(self, path: str) -> list[tuple[str, Any]]:
        """``<path>/vars/0``, ``/1``, ... in order."""
        names = [c for c in self.children.get(path + "/vars", []) if c.isdigit() and f"{path}/vars/{c}" in self.datasets]
        return [(f"{path}/vars/{c}", self.datasets[f"{path}/vars/{c}"]) for c in sorted(names, key=int)]


class _Keras3:
    """Walks a Keras 3 config over its weight tree (or, with no usable config, the tree alone)."""

    def __init__(self, reader: _Reader, tree: _Tree):
        self.r, self.tree = reader, tree

    def walk_container(self, lc: dict, at: str, where: tuple[str, ...], is_sequential: bool, depth: int = 0) -> None:
        if depth > MAX_DEPTH:
            _fail("config.json nests models too deeply")
        entries = _container_layers(lc)
        counted = entries[1:] if is_sequential and entries and entries[0][1] == "InputLayer" else entries
        used: dict[str, int] = {}
        container = self.r.new_container()
        found: list[_Layer] = []
        paths: dict[str, str] = {}
        for e, cls, name in counted:
            if _is_operation(e):  # keras.ops nodes of a functional graph are not layers: no weights, no counter
                continue
            path = f"{at}/{_unique(_snake(cls), used)}"
            paths[name] = path
            found += self.r.add_layers(self.layer(e, cls, name, path, where, depth), container)
        _link(entries, found, is_sequential, lambda name: self.embedding(paths.get(name)))

    def embedding(self, path: str | None) -> tuple[str, tuple[int, ...], str] | None:
        """An Embedding layer's matrix at ``path`` (its one variable): (HDF5 name, shape, dtype), or None."""
        variables = self.tree.variables(path) if path else []
        if len(variables) != 1:
            return None
        p, ds = variables[0]
        shape, dtype, h5name = self.r.dataset(ds, p)
        return h5name, shape, dtype

    def layer(self, lc: dict, cls: str, name: str, path: str, where: tuple[str, ...], depth: int) -> list[_Layer]:
        if not _builtin(lc):
            self.r.add_custom(name, lc)
            return []
        cfg = _dict(lc.get("config"), f"layer {name!r} config")
        if cls in _CONTAINERS:
            self.walk_container(lc, path + "/layers", where + (name,), cls == "Sequential", depth + 1)
            return []
        if cls == "TimeDistributed":
            inner = _dict(cfg.get("layer"), f"layer {name!r} inner layer")
            icls, iname = inner.get("class_name"), _layer_name(inner) or name
            if not isinstance(icls, str) or icls in _CONTAINERS or icls == "TimeDistributed":
                return []
            return _wrapped(self.layer(inner, icls, iname, path + "/layer", where, depth + 1), name)
        if cls == "Bidirectional":
            inner = _dict(cfg.get("layer"), f"layer {name!r} inner layer")
            fw = _as_lstm(self.r, inner, name, "Bidirectional")
            if fw is None:
                return []
            back = cfg.get("backward_layer")
            bw = _as_lstm(self.r, _dict(back, "backward_layer"), name, "Bidirectional") if back is not None else fw
            if bw is None:
                return []
            self._check_vars_name(path, name)
            forward = self.lstm(name, where, path + "/forward_layer", *fw)
            backward = self.lstm(name, where, path + "/backward_layer", *bw)
            return _bidirectional(self.r, name, forward, backward, cfg.get("merge_mode", "concat"), back is not None)
        if cls in _LSTM or cls == "RNN":
            got = _as_lstm(self.r, lc, name)
            if got is None:
                return []
            self._check_vars_name(path, name)
            return [self.lstm(name, where, path, *got)]
        if cls in _OTHER_RECURRENT:
            self.r.add_other(name, f"a {cls}")
        return []

    def lstm(self, name: str, where: tuple[str, ...], path: str, cls: str, cfg: dict) -> _Layer:
        variables = self.tree.variables(path + "/cell") or self.tree.variables(path)
        if not variables:
            _fail(f"config.json has LSTM layer {name!r} but the weights file has no weights for it at "
                  f"{path}/cell/vars; the file is incomplete")
        entries = [(p, *self.r.dataset(ds, p)) for p, ds in variables]
        d = self.r.make_dir("cudnn" if cls == "CuDNNLSTM" else "keras", entries, name)
        return _lstm_layer(self.r, name, where, [d], cfg)

    def _check_vars_name(self, path: str, name: str) -> None:
        got = self.tree.vars_name(path)
        if got is not None and got != name:
            _fail(f"weights group {path} belongs to layer {got!r} but config.json puts layer {name!r} there; "
                  "config.json and model.weights.h5 do not match")

    def infer(self, at: str, where: tuple[str, ...], depth: int = 0) -> None:
        """No usable config: find LSTMs by their groups (``lstm``, ``bidirectional``, ``rnn``, ...)."""
        if depth > MAX_DEPTH:
            _fail("its layer tree is nested too deeply")
        container = self.r.new_container()
        for child in sorted(self.tree.children.get(at, []), key=_natural):
            path = f"{at}/{child}"
            base = re.sub(r"_\d+$", "", child)
            name = self.tree.vars_name(path) or child
            if self.tree.has(path + "/layers"):
                self.infer(path + "/layers", where + (name,), depth + 1)
            elif base in _KERAS3_OTHER_GROUPS:
                self.r.add_other(name, f"a {base} layer (by its weight group {path})")
            elif base == "bidirectional":
                fw = self._guess(name, where, path + "/forward_layer")
                bw = self._guess(name, where, path + "/backward_layer")
                if fw is None or bw is None:
                    if self.tree.variables(path + "/forward_layer/cell"):
                        self.r.add_other(name, "a Bidirectional wrapper of a layer that is not an LSTM")
                    continue
                self.r.add_layers(_bidirectional(self.r, name, fw, bw, UNKNOWN, False), container)
            elif base in ("lstm", "rnn", "time_distributed"):
                inner = path + "/layer" if base == "time_distributed" else path
                layer = self._guess(self.tree.vars_name(inner) or name, where, inner)
                if layer is not None:
                    self.r.add_layers(_wrapped([layer], name) if inner != path else [layer], container)
                elif base == "lstm":
                    _fail(f"weights group {path} is named like an LSTM but holds no LSTM weights")
                elif self.tree.variables(inner + "/cell"):
                    self.r.add_other(name, f"a {base} layer that is not an LSTM (by its weight shapes)")

    def _guess(self, name: str, where: tuple[str, ...], path: str) -> _Layer | None:
        variables = self.tree.variables(path + "/cell") or self.tree.variables(path)
        if len(variables) not in (2, 3):
            return None
        shapes = [tuple(ds.shape or ()) for _, ds in variables]
        if len(shapes[1]) != 2 or shapes[1][0] < 1 or shapes[1][1] != 4 * shapes[1][0]:
            return None
        entries = [(p, *self.r.dataset(ds, p)) for p, ds in variables]
        kind = "cudnn" if len(shapes) == 3 and shapes[2] == (8 * shapes[1][0],) else "keras"
        return _lstm_layer(self.r, name, where, [self.r.make_dir(kind, entries, name)], None)
