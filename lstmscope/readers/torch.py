"""PyTorch checkpoints (torch.save, zip and legacy formats): find the LSTMs and hand over their parameters.

Torch files are listed without torch by lstmscope.readers.torch_listing (which hands anything it does
not model back to torch), so ``inspect`` imports torch only for such files; parameters are loaded with
torch when a run asks for them, and handed over as numpy arrays. Torch files are read with ``weights_only=True``; when that refuses
a file (a full-module pickle, pickle protocol 4 or 5), lstmscope.readers.safe_pickle reads it again
without running code from it: other classes become inert stubs and calls are refused.
Legacy-format files whose tensors sit on untyped storages (uint16/32/64, float8), which torch's legacy loader
cannot read, are read by lstmscope.readers.torch_values from their bytes. TorchScript archives are handed to
lstmscope.readers.torchscript, which reads their data and never loads them.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from lstmscope.errors import CheckpointError, clean_message
from lstmscope.readers.base import Checkpoint, LSTMModule, TensorInfo
from lstmscope.readers.state_dict_names import find_lstm_modules, other_recurrent_hint  # noqa: F401 (re-exported)
from lstmscope.sniff import TORCH_LEGACY, TORCH_ZIP, TORCHSCRIPT, sniff

FORMATS = (TORCH_ZIP, TORCH_LEGACY, TORCHSCRIPT)


def read(path: Path, fmt: str) -> Checkpoint:
    """List a torch file's tensors (torch-free where lstmscope.readers.torch_listing can) and find its LSTMs.
    TorchScript archives go to lstmscope.readers.torchscript, which never loads them."""
    if fmt == TORCHSCRIPT:
        from lstmscope.readers.torchscript import read_torchscript

        return read_torchscript(path)
    stubbed: list[str] = []
    refused: list[str] = []
    listed = _list_torch_free(path, fmt)
    if listed is not None:  # names, shapes and dtypes without torch; values are loaded when asked for
        tensors, report, records = listed
        if fmt == TORCH_LEGACY and any(r.untyped for r in records.values()):
            # torch's legacy loader cannot read untyped storages (uint16/32/64, float8): read the bytes directly
            from lstmscope.readers.torch_values import legacy_loader

            load = legacy_loader(path, records)
        else:
            load = _lazy_torch_loader(path, fmt, tensors)
    else:
        flat, report = _torch_load_flat(path, fmt)
        tensors = {k: TensorInfo(tuple(t.shape), str(t.dtype).removeprefix("torch.")) for k, t in flat.items()}
        load = lambda keys: {k: flat[k] for k in keys}  # noqa: E731
    if report is not None:
        stubbed, refused = report.stubbed_only(), list(report.refused_calls)
    others: list[str] = []
    kinds: dict[str, str] = {}
    singles: list[LSTMModule] = []
    modules = find_lstm_modules(tensors, path.name, others, kinds=kinds, single_layers=singles)

    def parameters(module: LSTMModule) -> dict[str, np.ndarray]:
        loaded = load(list(module.source.values()))
        return {name: _numpy(loaded[key]) for name, key in module.source.items()}

    return Checkpoint(path=path, format=TORCH_LEGACY if fmt == TORCH_LEGACY else TORCH_ZIP,
                      tensors=tensors, modules=modules, _parameters=parameters, other_recurrent=others,
                      stubbed_globals=stubbed, refused_calls=refused, no_lstm_hint=other_recurrent_hint(kinds),
                      single_layers=singles, _tensor=lambda key: _numpy(load([key])[key]))


def _numpy(t) -> np.ndarray:
    """A CPU tensor as numpy, sharing memory; bfloat16 (which numpy lacks) widened to float32, exactly.
    numpy arrays (read without torch) pass through."""
    if isinstance(t, np.ndarray):
        return t
    import torch

    t = t.detach()
    return (t.float() if t.dtype == torch.bfloat16 else t).numpy()


# Internal, for tests and debugging: "1" lists torch files with torch, as the tensor loader reads them.
LIST_WITH_TORCH_ENV = "LSTMSCOPE_LIST_WITH_TORCH"


def _list_torch_free(path: Path, fmt: str) -> tuple[dict[str, TensorInfo], Any, dict[str, Any]] | None:
    """Tensor infos, the safe_pickle report and the TensorRecords of a torch file, read by
    lstmscope.readers.torch_listing without torch; None when that reader cannot vouch for giving what torch
    would (torch then reads the file, and gives its own errors)."""
    if os.environ.get(LIST_WITH_TORCH_ENV) == "1":
        return None
    from lstmscope.readers.torch_listing import TensorRecord, list_torch_file

    try:
        obj, report = list_torch_file(path, legacy=fmt == TORCH_LEGACY)
        flat: dict[str, Any] = {}
        _flatten(obj, "", flat, TensorRecord, depth=0, budget=[_FLATTEN_BUDGET])
    except Exception:  # Unsupported, a damaged file, too many objects: all for the torch path to judge
        return None
    return {k: TensorInfo(t.shape, t.dtype) for k, t in flat.items()}, report, flat


def _lazy_torch_loader(path: Path, fmt: str, listed: dict[str, TensorInfo]) -> Callable[[list[str]], dict[str, Any]]:
    """Loads the file with torch on first use (as read_checkpoint's torch path does) and checks the
    tensors against the torch-free listing the LSTMs were found in."""
    flat: dict[str, Any] = {}
    loaded: list[bool] = []

    def load(keys: list[str]) -> dict[str, Any]:
        if not loaded:
            flat.update(_torch_load_flat(path, fmt)[0])
            loaded.append(True)
        out = {}
        for k in keys:
            t = flat.get(k)
            if t is None or TensorInfo(tuple(t.shape), str(t.dtype).removeprefix("torch.")) != listed[k]:
                raise CheckpointError(f"{path}: tensor {k!r} is not what the file listed when it was opened "
                                      "(did the file change?); run again")
            out[k] = t
        return out

    return load


def _torch_load_flat(path: Path, fmt: str) -> tuple[dict[str, Any], Any]:
    """Flattened tensors of a torch file, and the safe_pickle report (None when weights-only loading read it)."""
    import torch

    obj, report = load_torch_file(path, fmt)
    flat: dict[str, Any] = {}
    try:
        _flatten(obj, "", flat, torch.Tensor, depth=0, budget=[_FLATTEN_BUDGET])
    except _TooManyObjects:
        raise CheckpointError(f"{path} holds more than {_FLATTEN_BUDGET:,} nested objects; lstmscope stops "
                              "looking for tensors there (a damaged or hostile file?)") from None
    return flat, report


def torch_load(path: Path, fmt: str | None = None) -> Any:
    """The object in a torch file, on CPU, read without running code (see :func:`load_torch_file`)."""
    return load_torch_file(path, fmt)[0]


def load_torch_file(path: Path, fmt: str | None = None) -> tuple[Any, Any]:
    """(object, report): every failure is one clear CheckpointError.

    ``torch.load(weights_only=True)`` always goes first; the report is then None. Only when it
    refuses the file (a global outside its allowlist, as in ``torch.save(model)``, or an opcode it
    lacks, as in pickle protocols 4 and 5: an UnpicklingError) is the file read again by
    :func:`lstmscope.readers.safe_pickle.restricted_torch_load`, which never imports or calls what the file
    names; its :class:`~lstmscope.readers.safe_pickle.PickleReport` says what it stubbed and refused.
    Zip files are memory-mapped either way, so untouched tensors are never read.
    """
    import pickle

    import torch

    fmt = fmt or sniff(path).format
    mmap = fmt == TORCH_ZIP
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. "Detected pickle protocol N": not the user's concern
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap), None
    except pickle.UnpicklingError:
        pass  # weights-only refused it: read it again below, without running code
    except Exception as e:
        raise CheckpointError(_untyped_legacy(path, fmt, e)
                              or f"{path}: cannot read PyTorch checkpoint ({clean_message(e)})") from None
    from lstmscope.readers.safe_pickle import restricted_torch_load

    try:
        return restricted_torch_load(path, mmap=mmap)
    except Exception as e:
        raise CheckpointError(_untyped_legacy(path, fmt, e)
                              or f"{path}: cannot read PyTorch checkpoint ({clean_message(e)}); "
                              "lstmscope read it without running code from it") from None


def _untyped_legacy(path: Path, fmt: str, error: Exception) -> str | None:
    """The message for torch's legacy loader failing on an untyped storage (a uint16, uint32, uint64 or float8
    tensor: torch.save keeps those as bytes, and its legacy loader asks the bytes for a dtype), naming the
    tensor and its dtype where lstmscope's listing can; None for any other error."""
    if fmt != TORCH_LEGACY or "UntypedStorage" not in str(error):
        return None
    what = "a tensor of a dtype saved as untyped bytes (uint16, uint32, uint64 or float8)"
    try:
        from lstmscope.readers.torch_listing import TensorRecord, list_torch_file

        obj, _ = list_torch_file(path, legacy=True)
        flat: dict[str, Any] = {}
        _flatten(obj, "", flat, TensorRecord, depth=0, budget=[_FLATTEN_BUDGET])
        untyped = [(k, r.dtype) for k, r in flat.items() if r.untyped]
        if untyped:
            what = f"tensor {untyped[0][0]!r} ({untyped[0][1]})" + (
                f" (and {len(untyped) - 1} more such tensors)" if len(untyped) > 1 else "")
    except Exception:  # the listing cannot read it either: say what torch could not do
        pass
    return (f"{path}: torch's legacy-format (pre-1.6) loader cannot read {what}; re-save the file with "
            "torch.save's default (zip) format")


_FLATTEN_BUDGET = 1_000_000  # objects visited; shared references could otherwise multiply the walk
_MODULE_STATE = ("_parameters", "_buffers", "_modules")


class _TooManyObjects(Exception):
    pass


def _flatten(obj: Any, prefix: str, out: dict[str, Any], tensor_type: type, depth: int,
             budget: list[int] | None = None) -> None:
    """Tensors in nested containers -> ``out["a.b.c"]``.

    Inert objects from lstmscope.readers.safe_pickle are containers too. A stubbed ``nn.Module`` (its state
    has ``_parameters``/``_buffers``/``_modules``) is named as ``state_dict()`` names it: parameters
    and persistent buffers at its prefix, children at prefix + name + "."; other attributes are
    skipped. Any other stub gives its attributes, items and elements; a refused call's arguments
    are never looked at.
    """
    from lstmscope.readers.safe_pickle import Inert

    if depth > 64:
        return
    if budget is not None:
        budget[0] -= 1
        if budget[0] < 0:
            raise _TooManyObjects
    if isinstance(obj, tensor_type):
        out[prefix.rstrip(".")] = obj
    elif isinstance(obj, Mapping):
        for k, v in obj.items():
            _flatten(v, f"{prefix}{k}.", out, tensor_type, depth + 1, budget)
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            _flatten(v, f"{prefix}{i}.", out, tensor_type, depth + 1, budget)
    elif isinstance(obj, Inert):
        state = obj.state
        if any(isinstance(state.get(k), Mapping) for k in _MODULE_STATE):
            transient = state.get("_non_persistent_buffers_set")
            transient = transient if isinstance(transient, (set, frozenset)) else set()
            for group in ("_parameters", "_buffers"):
                entries = state.get(group)
                if isinstance(entries, Mapping):
                    for k, v in entries.items():
                        if isinstance(v, tensor_type) and not (group == "_buffers" and k in transient):
                            out[f"{prefix}{k}"] = v
            children = state.get("_modules")
            if isinstance(children, Mapping):
                for k, v in children.items():
                    _flatten(v, f"{prefix}{k}.", out, tensor_type, depth + 1, budget)
        else:
            _flatten(state, prefix, out, tensor_type, depth + 1, budget)
            for k, v in obj.items:
                _flatten(v, f"{prefix}{k}.", out, tensor_type, depth + 1, budget)
            _flatten(obj.elements, prefix, out, tensor_type, depth + 1, budget)
            _flatten(obj.raw_state, prefix, out, tensor_type, depth + 1, budget)
