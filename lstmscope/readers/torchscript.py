"""TorchScript archives (``torch.jit.save``): their tensors, read without loading the archive. Torch-free.

``torch.load(weights_only=True)`` refuses a TorchScript archive, and ``torch.jit.load`` would compile and
keep its code. lstmscope does neither: it reads the archive's pickles (``<archive>/data.pkl``, the scripted
module's object tree, and ``<archive>/constants.pkl``, the tensor constants of its code) with
lstmscope.readers.torch_listing's restricted reader, which builds plain containers and tensor records and
turns every other global into an inert stub that is never imported or called. TorchScript's own classes
(``__torch__.torch.nn.modules.rnn.LSTMCell``, ``__torch__.my_model.Net``, ...) are such stubs: their
attributes (parameters, buffers, submodules) are kept, and flattened to state_dict-style keys
(``_model.decoder.rnn.weight_ih``). The only other globals answered are ``torch.jit._pickle``'s list
helpers, which return their argument (``build_intlist(data) -> data``). Tensor values are read from the
archive's ``data/<key>`` records with numpy (lstmscope.readers.torch_values). The code under ``code/`` is
never read; what was left out is listed in the checkpoint's notes and ``stubbed_globals``.
"""

from __future__ import annotations

import io
import re
import zipfile
from dataclasses import replace
from pathlib import Path
from typing import Any

from lstmscope.errors import CheckpointError, clean_message
from lstmscope.readers.base import Checkpoint, LSTMModule, TensorInfo
from lstmscope.readers.safe_pickle import PickleReport
from lstmscope.readers.state_dict_names import find_lstm_modules
from lstmscope.readers.torch_listing import (ListingUnpickler, NotAName, TensorRecord, Unsupported, _ZipStorages,
                                             zip_records)
from lstmscope.sniff import TORCHSCRIPT

FORMATS = (TORCHSCRIPT,)
MAX_PICKLE = 256 << 20  # bytes: a data.pkl or constants.pkl that declares more is refused before it is read
_MANGLE = re.compile(r"\.___torch_mangle_[0-9]+")
MODULE_NOTE = ("read from a TorchScript archive's data, never its code: what the model's forward() does "
               "around this LSTM is not known to lstmscope")


class _JitHelper(NotAName):
    """One of ``torch.jit._pickle``'s helpers that give back their argument (lists with a static type)."""

    __slots__ = ("qualified",)
    what = "a TorchScript helper"

    def __init__(self, qualified: str):
        self.qualified = qualified


_JIT_HELPERS = {f"torch.jit._pickle.{n}": _JitHelper(f"torch.jit._pickle.{n}") for n in (
    "build_intlist", "build_tensorlist", "build_doublelist", "build_boollist", "restore_type_tag")}


class ScriptUnpickler(ListingUnpickler):
    """:class:`ListingUnpickler` that also answers ``torch.jit._pickle``'s list helpers (identity functions)."""

    def find_class(self, module: str, name: str) -> Any:
        if type(module) is str and type(name) is str and f"{module}.{name}" in _JIT_HELPERS:
            return _JIT_HELPERS[f"{module}.{name}"]
        return super().find_class(module, name)

    def _call(self, func: Any, args: Any) -> Any:
        if isinstance(func, _JitHelper):
            if not isinstance(args, tuple):
                raise Unsupported("call arguments that are not a tuple")
            if func.qualified.endswith("restore_type_tag") and len(args) == 2 and type(args[1]) is str:
                return args[0]
            if len(args) == 1 and type(args[0]) is list:
                return args[0]
            raise Unsupported(f"a call of {func.qualified} with unexpected arguments")
        return super()._call(func, args)


class Listing:
    """What an archive holds, as lstmscope read it."""

    def __init__(self) -> None:
        self.records: dict[str, TensorRecord] = {}  # flattened key -> tensor record, first name of each tensor
        self.report = PickleReport()
        self.big_endian = False
        self.version: str | None = None  # the archive's "version" record
        self.code_files = 0  # files under code/ (sources and their debug pickles): never read
        self.other_constants = 0  # constants.pkl entries that are not tensors
        self.unread: list[str] = []  # other records lstmscope does not read (extra files, ...)


def list_torchscript(path: Path) -> Listing:
    """The tensors of a TorchScript archive with their records, and what was stubbed, refused or left out.

    Raises :class:`Unsupported` for what the reader does not model, or another exception for a damaged file.
    """
    from lstmscope.readers.torch import _FLATTEN_BUDGET, _flatten

    out = Listing()
    with zipfile.ZipFile(path) as z:
        root, by_name = zip_records(z, "torch.jit.save")
        if root + "byteorder" in by_name:
            order = z.read(root + "byteorder")
            if order not in (b"little", b"big"):
                raise Unsupported(f"byteorder record {order[:16]!r}")
            out.big_endian = order == b"big"
        if root + "version" in by_name and by_name[root + "version"].file_size < 64:
            text = z.read(root + "version").decode("ascii", "replace").strip()
            out.version = text if text.isdigit() else None
        budget = [_FLATTEN_BUDGET]
        flat: dict[str, Any] = {}
        obj = _unpickle(z, by_name, root, "data.pkl", "data/", out.report)
        _flatten(obj, "", flat, TensorRecord, depth=0, budget=budget)
        if root + "constants.pkl" in by_name:
            constants = _unpickle(z, by_name, root, "constants.pkl", "constants/", out.report)
            for i, value in enumerate(constants if isinstance(constants, tuple) else (constants,)):
                before = len(flat)
                _flatten(value, f"CONSTANTS.c{i}.", flat, TensorRecord, depth=0, budget=budget)
                out.other_constants += len(flat) == before
        seen: set[int] = set()
        for key, record in flat.items():  # a tensor met twice (TorchScript's _flat_weights lists): its first name
            if id(record) not in seen:
                seen.add(id(record))
                out.records[key] = record
        read = {root + n for n in ("data.pkl", "constants.pkl", "version", "byteorder")}
        for n in by_name:
            rest = n[len(root):]
            if rest.startswith("code/"):
                out.code_files += not n.endswith("/")
            elif n not in read and not rest.startswith(("data/", "constants/", ".data/")) and not n.endswith("/"):
                out.unread.append(rest)
    out.report.stubbed_globals[:] = list(dict.fromkeys(_MANGLE.sub("", g) for g in out.report.stubbed_globals))
    out.report.refused_calls[:] = list(dict.fromkeys(_MANGLE.sub("", g) for g in out.report.refused_calls))
    return out


def _unpickle(z: zipfile.ZipFile, by_name: dict[str, zipfile.ZipInfo], root: str, name: str, folder: str,
              report: PickleReport) -> Any:
    info = by_name.get(root + name)
    if info is None:
        raise Unsupported(f"no {name}")
    if info.file_size > MAX_PICKLE:
        raise Unsupported(f"{name} declares {info.file_size:,} bytes")
    data = z.read(info)
    return ScriptUnpickler(io.BytesIO(data), report=report, storages=_ZipStorages(by_name, root, folder)).load()


def read(path: Path, fmt: str = TORCHSCRIPT) -> Checkpoint:
    """The reader protocol (lstmscope.readers.base.Reader): see :func:`read_torchscript`."""
    return read_torchscript(path)


def read_torchscript(path: Path) -> Checkpoint:
    """A TorchScript archive's tensors and LSTMs, without loading it (no code is read or run)."""
    from lstmscope.readers.state_dict_names import other_recurrent_hint
    from lstmscope.readers.torch import _TooManyObjects
    from lstmscope.readers.torch_values import zip_loader

    try:
        listing = list_torchscript(path)
    except Unsupported as e:
        raise CheckpointError(f"{path}: cannot read this TorchScript archive ({e}); lstmscope reads TorchScript "
                              "archives from their data without loading them, and does not model this") from None
    except _TooManyObjects:
        raise CheckpointError(f"{path} holds too many nested objects; lstmscope stops looking for tensors there "
                              "(a damaged or hostile file?)") from None
    except Exception as e:  # a damaged archive or pickle
        raise CheckpointError(f"{path}: cannot read TorchScript archive ({clean_message(e) or type(e).__name__}); "
                              "lstmscope read it without running code from it") from None
    tensors = {k: TensorInfo(r.shape, r.dtype) for k, r in listing.records.items()}
    others: list[str] = []
    kinds: dict[str, str] = {}
    singles: list[LSTMModule] = []
    found = find_lstm_modules(tensors, path.name, others, kinds=kinds, single_layers=singles)
    modules = [replace(m, notes=m.notes + (MODULE_NOTE,)) for m in found]
    singles = [replace(m, notes=m.notes + (MODULE_NOTE,)) for m in singles]
    load = zip_loader(path, listing.records, listing.big_endian)

    def parameters(module: LSTMModule) -> dict:
        loaded = load(list(module.source.values()))
        return {name: loaded[key] for name, key in module.source.items()}

    return Checkpoint(path=path, format=TORCHSCRIPT, tensors=tensors, modules=modules,
                      _parameters=parameters, other_recurrent=others,
                      stubbed_globals=listing.report.stubbed_only(), refused_calls=list(listing.report.refused_calls),
                      notes=_notes(listing), no_lstm_hint=other_recurrent_hint(kinds), single_layers=singles,
                      producer=f"TorchScript archive format {listing.version}" if listing.version else "TorchScript",
                      _tensor=lambda key: load([key])[key])


def _notes(listing: Listing) -> list[str]:
    """What was not read, one line each."""
    notes = [f"TorchScript archive read from its data (data.pkl, constants.pkl, tensor records) without loading it: "
             f"the code under code/ ({listing.code_files} files) was neither read nor run, and its classes were "
             "kept as inert stubs"]
    if listing.other_constants:
        notes.append(f"{listing.other_constants} constant(s) of the code that are not tensors were not looked at")
    if listing.unread:
        more = len(listing.unread) - 5
        shown = ", ".join(listing.unread[:5]) + (f" and {more} more" if more > 0 else "")
        notes.append(f"records not read: {shown}")
    return notes
