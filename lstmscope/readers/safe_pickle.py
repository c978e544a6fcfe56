"""Read torch pickles without running code from them.

``torch.load(weights_only=True)`` refuses any global outside its allowlist, so it cannot read a
full-module pickle (``torch.save(model)``), and it does not know the FRAME opcode of pickle
protocols 4 and 5. This module is the fallback for those files. It never imports a module and
never calls anything the file names, except the few callables that rebuild tensors and plain
containers.

Design
------
torch still does the file handling: ``torch.load(path, weights_only=False, pickle_module=...)``
is given a pickle "module" whose ``Unpickler`` is :class:`RestrictedUnpickler`. torch keeps what
it is good at (zip records, mmap, the legacy layout, storages, byte order), and every object in
the pickle is made by this unpickler. That makes this unpickler the whole security boundary, so:

* It is the pure-Python ``pickle._Unpickler`` with its opcode table rebuilt here from an explicit
  list. Opcodes that only build data (numbers, strings, tuples, lists, dicts, memo, frames) keep
  the standard code; the opcodes that look up or call things (GLOBAL, STACK_GLOBAL, INST, OBJ,
  EXT1/2/4, REDUCE, NEWOBJ, NEWOBJ_EX, BUILD, APPEND(S), SETITEM(S), ADDITEMS) are reimplemented;
  an opcode not listed is an error.
* ``find_class`` is a dictionary lookup, never ``__import__`` or ``getattr``: the allowlist is
  torch's own weights-only one (tensor/storage rebuild functions, storage types, dtypes,
  ``torch.Size``, ``torch.device``, ``collections.OrderedDict``, ...) plus ``builtins.frozenset``
  and ``builtins.bytes``, with ``_codecs.encode`` held to ``'latin1'`` (another codec name could
  import a module). Any other global, ``os.system`` and ``torch.load`` included, becomes an
  inert :class:`StubGlobal` that records its module and name. Stubs are not classes and not
  callable, so torch's rebuild functions cannot call or subclass them either.
* A stub rebuilt as an object (NEWOBJ, ``copyreg._reconstructor``, ``copyreg.__newobj__``, INST
  or OBJ without arguments) becomes a :class:`StubObject`; BUILD, SETITEMS, APPENDS and ADDITEMS
  only store what they are given in it (``__setstate__`` is never looked up).
* A stub, or a stub object, that the pickle asks to *call* (REDUCE, or INST/OBJ with arguments)
  is not called: the result is a :class:`RefusedCall` placeholder, and the name is recorded.
* BUILD and the container opcodes on real objects are limited as in torch's weights-only
  unpickler (Tensor, Parameter, OrderedDict; list, dict, set); BUILD on an OrderedDict may not
  shadow its methods (``items``).
* EXT codes resolve through ``copyreg``'s registry to this ``find_class`` (never through the
  process-wide extension cache). Persistent ids are torch's storages; the legacy format's
  ``("module", cls, file, source)`` ids return ``cls`` without torch's source-code check.
* ``torch.load`` hands TorchScript archives to ``torch.jit.load``; the caller turns torch's
  warning about that into an error before it can happen (see :func:`restricted_torch_load`).

This module imports without torch; torch is imported inside the functions that need it.
"""

from __future__ import annotations

import _compat_pickle
import copyreg
import pickle
import types
import warnings
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["Inert", "PickleReport", "RefusedCall", "RestrictedUnpickler", "StubGlobal", "StubObject",
           "restricted_torch_load"]


def python3_name(module: str, name: str, python2_names: bool) -> tuple[str, str]:
    """(module, name), with Python 2 names mapped as pickle itself maps them (tables only, no import)."""
    if python2_names:
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        elif module in _compat_pickle.IMPORT_MAPPING:
            module = _compat_pickle.IMPORT_MAPPING[module]
    return module, name


@dataclass
class PickleReport:
    """What a restricted read met: stubbed globals and refused calls, as ``module.name``, first seen first."""

    stubbed_globals: list[str] = field(default_factory=list)
    refused_calls: list[str] = field(default_factory=list)

    def _stub(self, name: str) -> None:
        if name not in self.stubbed_globals:
            self.stubbed_globals.append(name)

    def _refuse(self, name: str) -> None:
        if name not in self.refused_calls:
            self.refused_calls.append(name)

    def stubbed_only(self) -> list[str]:
        """Stubbed globals that were not also refused calls (those are listed once, as refused)."""
        return [g for g in self.stubbed_globals if g not in self.refused_calls]


class StubGlobal:
    """A global the file names but that is not allowed: never imported, never called."""

    __slots__ = ("module", "name")

    def __init__(self, module: str, name: str):
        self.module = module
        self.name = name

    @property
    def qualified(self) -> str:
        return f"{self.module}.{self.name}"

    def __repr__(self) -> str:
        return f"<stub {self.qualified}>"


class Inert:
    """Data a pickle attached to something that was not built: state, items, list elements."""

    __slots__ = ("origin", "args", "state", "raw_state", "items", "elements")

    def __init__(self, origin: str, args: tuple = ()):
        self.origin = origin  # "module.name" of the stubbed class or refused callable
        self.args = args
        self.state: dict = {}  # BUILD's dict state (and slot state)
        self.raw_state: Any = None  # BUILD's state when it is not a dict
        self.items: list[tuple[Any, Any]] = []  # SETITEM(S) pairs
        self.elements: list[Any] = []  # APPEND(S) / ADDITEMS values

    def _build(self, state: Any) -> None:
        slotstate = None
        if isinstance(state, tuple) and len(state) == 2 and all(s is None or isinstance(s, dict) for s in state):
            state, slotstate = state
        if isinstance(state, dict):
            self.state.update(state)
        elif state is not None:
            self.raw_state = state
        if slotstate:
            self.state.update(slotstate)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.origin}>"


class StubObject(Inert):
    """An instance of a stubbed class, holding the state the pickle gave it."""

    __slots__ = ()


class RefusedCall(Inert):
    """Stands where the result of a refused call would be. ``args`` are what it would have been called with."""

    __slots__ = ()


# Markers for copyreg's helpers: recognised as object-building patterns, never called.
_RECONSTRUCTOR = StubGlobal("copyreg", "_reconstructor")
_NEWOBJ = StubGlobal("copyreg", "__newobj__")
_NEWOBJ_EX = StubGlobal("copyreg", "__newobj_ex__")
_OBJECT = StubGlobal("builtins", "object")
_MARKERS = {m.qualified: m for m in (_RECONSTRUCTOR, _NEWOBJ, _NEWOBJ_EX, _OBJECT)}

_allowed_cache: tuple[dict[str, Any], set[int]] | None = None


def _allowed() -> tuple[dict[str, Any], set[int]]:
    """``module.name`` -> object for the globals that may be used, and the ids of those objects."""
    global _allowed_cache
    if _allowed_cache is None:
        from torch import _weights_only_unpickler

        table = dict(_weights_only_unpickler._get_allowed_globals())  # torch's weights-only allowlist
        table.update({"builtins.frozenset": frozenset, "builtins.bytes": bytes,
                      "_codecs.encode": _latin1_encode})  # (any codec name could import an encodings module)
        _allowed_cache = (table, {id(v) for v in table.values()})
    return _allowed_cache


def _latin1_encode(text: Any, encoding: Any = "utf-8", *_: Any) -> bytes:
    """``_codecs.encode`` as pickle uses it for bytes in protocols 0-2: ``encode(str, 'latin1')`` only."""
    if type(text) is not str or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError("_codecs.encode is only allowed for a string and 'latin1'")
    return text.encode("latin1")


def _ascii(value: Any) -> Any:
    return value.decode("ascii") if isinstance(value, bytes) else value


_DATA_OPS = (
    "PROTO FRAME NONE NEWFALSE NEWTRUE INT BININT BININT1 BININT2 LONG LONG1 LONG4 FLOAT BINFLOAT "
    "STRING BINSTRING SHORT_BINSTRING BINBYTES SHORT_BINBYTES BINBYTES8 BYTEARRAY8 NEXT_BUFFER READONLY_BUFFER "
    "UNICODE BINUNICODE SHORT_BINUNICODE BINUNICODE8 TUPLE EMPTY_TUPLE TUPLE1 TUPLE2 TUPLE3 EMPTY_LIST LIST "
    "EMPTY_DICT DICT EMPTY_SET FROZENSET POP POP_MARK DUP GET BINGET LONG_BINGET PUT BINPUT LONG_BINPUT MEMOIZE "
    "MARK STOP PERSID BINPERSID GLOBAL STACK_GLOBAL EXT1 EXT2 EXT4"
).split()  # standard code; GLOBAL/STACK_GLOBAL/EXT* go through find_class/get_extension below


class RestrictedUnpickler(pickle._Unpickler):
    """A pickle reader that resolves globals from an allowlist and stubs the rest (see the module docstring).

    What it met goes to ``report`` (given, set on a per-load subclass by :func:`_pickle_module`, or a new one).
    """

    report: PickleReport | None = None

    def __init__(self, file, *, report: PickleReport | None = None, **kwargs):
        super().__init__(file, **kwargs)
        self.report = report or self.report or PickleReport()

    def find_class(self, module: str, name: str) -> Any:
        if type(module) is not str or type(name) is not str:
            raise pickle.UnpicklingError("pickle names a global with a non-string module or name")
        module, name = python3_name(module, name, self.proto < 3 and self.fix_imports)
        key = f"{module}.{name}"
        if key in _MARKERS:
            return _MARKERS[key]
        table, _ = _allowed()
        if key in table:
            return table[key]
        self.report._stub(key)
        return StubGlobal(module, name)

    def get_extension(self, code: int) -> None:
        key = copyreg._inverted_registry.get(code)  # never the process-wide _extension_cache
        if not key:
            raise pickle.UnpicklingError(f"unregistered extension code {code}")
        self.append(self.find_class(*key))

    # persistent ids: torch installs its own loader; legacy "module" ids are answered here
    @property
    def persistent_load(self):
        return self._persistent

    @persistent_load.setter
    def persistent_load(self, fn) -> None:
        self._torch_persistent_load = fn

    def _persistent(self, pid: Any) -> Any:
        if type(pid) is tuple and pid:
            kind = _ascii(pid[0])
            if kind == "module" and len(pid) >= 2:  # legacy format: ("module", cls, source file, source)
                return pid[1]
            if not isinstance(kind, str):  # legacy tar format: (cls, source file, source)
                return pid[0]
        elif type(pid) is not int:
            raise pickle.UnpicklingError(f"unsupported persistent id of type {type(pid).__name__}")
        load = getattr(self, "_torch_persistent_load", None)
        if load is None:
            raise pickle.UnpicklingError("persistent id outside a torch file")
        return load(pid)

    # objects and calls
    def _instance(self, cls: StubGlobal, args: tuple = ()) -> StubObject:
        self.report._stub(cls.qualified)
        return StubObject(cls.qualified, args)

    def _refused(self, name: str, args: Any) -> RefusedCall:
        self.report._refuse(name)
        return RefusedCall(name, args if isinstance(args, tuple) else ())

    def _new(self, cls: Any, args: Any, kwargs: Any = None) -> Any:
        if isinstance(cls, StubGlobal):
            return self._instance(cls, args if isinstance(args, tuple) else ())
        import torch

        table, ids = _allowed()
        if not isinstance(args, tuple) or not (kwargs is None or type(kwargs) is dict):
            raise pickle.UnpicklingError("NEWOBJ arguments are not a tuple")
        if cls is torch.nn.Parameter:
            return torch.nn.Parameter(*args, **(kwargs or {}))
        if isinstance(cls, type) and id(cls) in ids:
            return cls.__new__(cls, *args, **(kwargs or {}))
        raise pickle.UnpicklingError(f"cannot create an object of {type(cls).__name__}")

    def _call(self, func: Any, args: Any) -> Any:
        if not isinstance(args, tuple):
            raise pickle.UnpicklingError("REDUCE arguments are not a tuple")
        if func is _RECONSTRUCTOR:  # copyreg._reconstructor(cls, base, state): protocols 0 and 1
            if len(args) == 3 and isinstance(args[0], StubGlobal):
                return self._instance(args[0], () if args[2] is None else (args[2],))
            return self._refused(func.qualified, args)
        if func is _NEWOBJ and args:
            return self._new(args[0], args[1:])
        if func is _NEWOBJ_EX and len(args) == 3:
            return self._new(*args)
        if isinstance(func, StubGlobal):
            return self._refused(func.qualified, args)
        if isinstance(func, Inert):
            return self._refused(func.origin, args)
        table, ids = _allowed()
        if id(func) not in ids:
            raise pickle.UnpicklingError(f"refusing to call a {type(func).__name__} object")
        if (func is table.get("torch._tensor._rebuild_from_type_v2") and len(args) == 4
                and isinstance(args[1], StubGlobal)):
            # a tensor subclass this process does not know: keep the plain tensor, stub the subclass
            self.report._stub(args[1].qualified)
            return self._call(args[0], args[2])
        return func(*args)

    def load_reduce(self) -> None:
        args = self.stack.pop()
        self.stack[-1] = self._call(self.stack[-1], args)

    def load_newobj(self) -> None:
        args = self.stack.pop()
        cls = self.stack.pop()
        self.append(self._new(cls, args))

    def load_newobj_ex(self) -> None:
        kwargs = self.stack.pop()
        args = self.stack.pop()
        cls = self.stack.pop()
        self.append(self._new(cls, args, kwargs))

    def _instantiate(self, klass: Any, args: list) -> None:  # INST and OBJ
        if isinstance(klass, StubGlobal) and not args:
            self.append(self._instance(klass))
        else:
            self.append(self._call(klass, tuple(args)))

    def load_build(self) -> None:
        import torch

        state = self.stack.pop()
        inst = self.stack[-1]
        if isinstance(inst, Inert):
            inst._build(state)
        elif type(inst) is torch.Tensor:  # as torch's weights-only unpickler does (class methods, not
            torch.Tensor.set_(inst, *state)  # attributes a rebuild function may have set on the instance)
        elif type(inst) is torch.nn.Parameter:
            torch.nn.Parameter.__setstate__(inst, state)
        elif type(inst) is OrderedDict and isinstance(state, dict) and all(
                type(k) is str and not hasattr(OrderedDict, k) for k in state):  # e.g. _metadata, never "items"
            inst.__dict__.update(state)
        else:
            raise pickle.UnpicklingError(f"cannot set the state of a {type(inst).__name__} object")

    def load_append(self) -> None:
        value = self.stack.pop()
        self._extend(self.stack[-1], [value])

    def load_appends(self) -> None:
        items = self.pop_mark()
        self._extend(self.stack[-1], items)

    @staticmethod
    def _extend(target: Any, items: list) -> None:
        if type(target) is list:
            target.extend(items)
        elif isinstance(target, Inert):
            target.elements.extend(items)
        else:
            raise pickle.UnpicklingError(f"cannot append to a {type(target).__name__} object")

    def load_setitem(self) -> None:
        value = self.stack.pop()
        key = self.stack.pop()
        self._setitems(self.stack[-1], [key, value])

    def load_setitems(self) -> None:
        items = self.pop_mark()
        self._setitems(self.stack[-1], items)

    @staticmethod
    def _setitems(target: Any, items: list) -> None:
        pairs = list(zip(items[::2], items[1::2]))
        if type(target) in (dict, OrderedDict, Counter):
            for k, v in pairs:
                target[k] = v
        elif isinstance(target, Inert):
            target.items.extend(pairs)
        else:
            raise pickle.UnpicklingError(f"cannot set items of a {type(target).__name__} object")

    def load_additems(self) -> None:
        items = self.pop_mark()
        target = self.stack[-1]
        if type(target) is set:
            target.update(items)
        elif isinstance(target, Inert):
            target.elements.extend(items)
        else:
            raise pickle.UnpicklingError(f"cannot add items to a {type(target).__name__} object")

    dispatch = {getattr(pickle, op)[0]: pickle._Unpickler.dispatch[getattr(pickle, op)[0]] for op in _DATA_OPS}
    dispatch.update({
        pickle.INST[0]: pickle._Unpickler.load_inst,  # reads the name, then find_class + _instantiate
        pickle.OBJ[0]: pickle._Unpickler.load_obj,  # pops the class and args, then _instantiate
        pickle.REDUCE[0]: load_reduce,
        pickle.NEWOBJ[0]: load_newobj,
        pickle.NEWOBJ_EX[0]: load_newobj_ex,
        pickle.BUILD[0]: load_build,
        pickle.APPEND[0]: load_append,
        pickle.APPENDS[0]: load_appends,
        pickle.SETITEM[0]: load_setitem,
        pickle.SETITEMS[0]: load_setitems,
        pickle.ADDITEMS[0]: load_additems,
    })


def _pickle_module(report: PickleReport) -> types.SimpleNamespace:
    """A stand-in for the ``pickle`` module, as ``torch.load(pickle_module=...)`` uses it."""
    unpickler = type("Unpickler", (RestrictedUnpickler,), {"report": report})

    def load(file, **kwargs):
        return unpickler(file, **kwargs).load()

    return types.SimpleNamespace(__name__=__name__, Unpickler=unpickler, load=load,
                                 UnpicklingError=pickle.UnpicklingError)


def restricted_torch_load(path: str | Path, *, mmap: bool) -> tuple[Any, PickleReport]:
    """Read a torch file (zip or legacy) on CPU without running code from it.

    ``mmap=True`` (zip files only) maps storages instead of reading them, so memory does not grow
    with tensors nobody looks at. Raises whatever torch or the unpickler raise; callers wrap it.
    """
    import torch

    report = PickleReport()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # e.g. "Couldn't retrieve source code for container"
        # torch.load passes TorchScript archives to torch.jit.load, announced by this warning: stop there
        warnings.filterwarnings("error", message=".*TorchScript archive.*")
        obj = torch.load(path, map_location="cpu", weights_only=False, pickle_module=_pickle_module(report),
                         mmap=mmap)
    return obj, report
