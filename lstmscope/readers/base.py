"""The boundary between file formats and everything else.

A reader (one module of this package per file family) recognises a file by its bytes (lstmscope.sniff),
lists the LSTM modules in it without loading tensor data, and hands over one module's parameters as
numpy arrays in one canonical layout: ``nn.LSTM``'s state_dict names and shapes
(``LSTMSpec.expected_shapes()``), gate order i, f, g, o. Nothing outside this package knows a file
format; nothing in it imports torch except the torch reader, and only to read torch files.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Protocol

import numpy as np

from lstmscope.errors import CheckpointError, UsageError
from lstmscope.fileio import shown_name
from lstmscope.masking import MaskRule
from lstmscope.spec import LSTMSpec
from lstmscope.tokens import EmbeddingRef

@dataclass(frozen=True)
class TensorInfo:
    """What is known about one stored tensor without reading its data."""

    shape: tuple[int, ...]
    dtype: str  # numpy-style name: "float32", "float16", "bfloat16", "int64", ...



@dataclass(frozen=True)
class LSTMModule:
    """One LSTM found in a checkpoint: what it is, what ``--module`` calls it, where its tensors live."""

    name: str  # PyTorch: key prefix without the trailing dot ("" for a bare nn.LSTM state_dict);
    #            Keras: the layer name, or "first+...+last" for a chain of stacked layers
    spec: LSTMSpec
    source: Mapping[str, str] = field(default_factory=dict)  # canonical parameter name -> where the file keeps it
    notes: tuple[str, ...] = ()  # one-line facts about the module to show with it (defaults taken, masking)
    return_sequences: tuple[bool, ...] = ()  # Keras: per layer, whether the layer returns every step
    # ONNX: the nodes' graph facts (lstmscope.readers.onnx.ModuleGraph: .layout, .state_feed(batch)); else None
    graph: Any = field(default=None, compare=False, repr=False)
    embedding: EmbeddingRef | None = None  # the embedding its input comes from, when the file's graph says so
    mask: MaskRule | None = None  # how its input is masked (Keras Masking / Embedding(mask_zero=True)), else None

    @property
    def prefix(self) -> str:
        """The name, as PyTorch users know it (a state_dict key prefix)."""
        return self.name

    def keys(self) -> dict[str, str]:
        """Canonical parameter name -> where the file keeps it."""
        return dict(self.source)

    @property
    def display_name(self) -> str:
        return self.name or "(top level)"


ParameterLoader = Callable[[LSTMModule], Mapping[str, np.ndarray]]


@dataclass
class Checkpoint:
    """A checkpoint file, its tensor listing and the LSTMs found in it."""

    path: Path
    format: str  # e.g. "safetensors", "torch-zip", "torch-legacy", "keras-zip", "keras-h5"
    tensors: dict[str, TensorInfo]  # every tensor the file lists (flattened key or dataset path) -> info
    modules: list[LSTMModule]  # what inspect lists and run picks from
    _parameters: ParameterLoader = field(repr=False)
    other_recurrent: list[str] = field(default_factory=list)  # recurrent layers that are not LSTMs (GRU, RNN), skipped
    # torch files weights-only loading refused, read by lstmscope.readers.safe_pickle ("module.name", first seen first):
    stubbed_globals: list[str] = field(default_factory=list)  # classes kept as inert stubs, never imported
    refused_calls: list[str] = field(default_factory=list)  # callables the file asked to call; never called
    notes: list[str] = field(default_factory=list)  # one-line facts about the file for stderr
    no_lstm_hint: str = ""  # why no module was found, in the format's terms (for the "holds no LSTM" error)
    framework_version: str | None = None  # e.g. Keras's keras_version attribute
    producer: str | None = None  # who wrote the file, for display: "Keras 3.1.0", "pytorch 1.9, ONNX opset 13"
    # readers whose files may lack the cell's config (Keras) set this: (module, activation, recurrent_activation)
    # -> the module with those activations; None: the format's cell is fixed (nn.LSTM's)
    _cell_override: Callable[[LSTMModule, str | None, str | None], LSTMModule] | None = field(default=None, repr=False)
    single_layers: list[LSTMModule] = field(default_factory=list)  # each layer of a stacked Keras chain, alone:
    #                                                  --module accepts them too; inspect lists them under the chain
    # reads one listed tensor by its key (PyTorch, safetensors: what --embedding names); None: the format has none
    _tensor: Callable[[str], np.ndarray] | None = field(default=None, repr=False)
    # reads the matrix of an embedding the graph names (Keras, ONNX); None: the format's graph has none
    _embedding: Callable[[EmbeddingRef], np.ndarray] | None = field(default=None, repr=False)
    _sha256: str | None = field(default=None, repr=False)

    @property
    def sha256(self) -> str:
        """The file's sha256, computed when first asked for (a run that prints tables never needs it)."""
        if self._sha256 is None:
            from lstmscope.fileio import file_sha256

            self._sha256 = file_sha256(self.path)
        return self._sha256

    def embedding_candidates(self, module: LSTMModule) -> list[str]:
        """Listed tensors that could be the (vocab, input_size) embedding feeding ``module`` (2-D floating point,
        width input_size, not a weight of any LSTM in the file)."""
        from lstmscope.tokens import candidates

        lstm_weights = {key for m in [module, *self.modules, *self.single_layers] for key in m.source.values()}
        return candidates(self.tensors, module.spec.input_size, lstm_weights)

    def embedding_named(self, key: str, module: LSTMModule, how: str) -> EmbeddingRef:
        """The listed tensor ``key`` as the module's embedding (``--embedding KEY``), its shape checked."""
        info = self.tensors.get(key)
        if info is None:
            cands = self.embedding_candidates(module)
            raise UsageError(f"--embedding {key!r}: {self.path.name} has no tensor of that name; "
                             + (f"candidates (2-D, width {module.spec.input_size}): {', '.join(cands)}" if cands
                                else f"it has no 2-D tensor of width {module.spec.input_size} (the LSTM's input_size)"))
        if len(info.shape) != 2 or info.shape[1] != module.spec.input_size or info.shape[0] < 1:
            raise UsageError(f"--embedding {key!r} is {info.dtype} {_fmt(info.shape)}; module "
                             f"'{module.display_name}' needs a (vocab, {module.spec.input_size}) matrix (its "
                             "input_size is the embedding's width)")
        if key in module.source.values():
            raise UsageError(f"--embedding {key!r} is one of module '{module.display_name}''s own LSTM weights, not "
                             "an embedding")
        if not (info.dtype.startswith("float") or info.dtype == "bfloat16"):
            raise UsageError(f"--embedding {key!r} is {info.dtype}; an embedding matrix is floating point")
        return EmbeddingRef(key, key, info.shape[0], info.shape[1], info.dtype, how=how)

    def embedding_matrix(self, ref: EmbeddingRef) -> np.ndarray:
        """The (vocab, width) matrix of ``ref``, floating point (bfloat16 widened to float32)."""
        if self._embedding is not None and (self._tensor is None or ref.source not in self.tensors):
            m = self._embedding(ref)
        elif self._tensor is not None:
            m = self._tensor(ref.source)
        else:
            raise CheckpointError(f"{self.path}: cannot read embedding {ref.name!r} from a {self.format} file")
        m = np.asarray(m)
        if m.shape != (ref.vocab, ref.width) or m.dtype.kind != "f":
            raise CheckpointError(f"{self.path}: embedding {ref.name!r} is {m.dtype} {_fmt(m.shape)}; expected "
                                  f"floating point {_fmt((ref.vocab, ref.width))}")
        return m

    def module(self, wanted: str | None) -> LSTMModule:
        try:
            return select_module(self.modules, wanted, shown_name(self.path), self.other_recurrent, self.no_lstm_hint,
                                 self.single_layers)
        except CheckpointError as e:
            if self.modules or not self.refused_calls:
                raise
            raise CheckpointError(f"{e.message}; the file also asked to run code ({', '.join(self.refused_calls)}), "
                                  "which lstmscope refused") from None

    def with_cell(self, module: LSTMModule, *, activation: str | None = None,
                  recurrent_activation: str | None = None) -> LSTMModule:
        """``module`` with its cell's activations named by the user (``--activation``, ``--recurrent-activation``):
        for Keras modules, whose weights-only files carry no config. Names are Keras's."""
        if activation is None and recurrent_activation is None:
            return module
        if self._cell_override is None:
            raise UsageError("--activation and --recurrent-activation apply to Keras modules (a weights-only file "
                             f"has no config); module '{module.display_name}' of {shown_name(self.path)} is a PyTorch "
                             "module, whose cell is nn.LSTM's")
        return self._cell_override(module, activation, recurrent_activation)

    def reading_note(self) -> str | None:
        """One line for stderr when the file was read without running code from it, else None."""
        if not (self.stubbed_globals or self.refused_calls):
            return None
        parts = [f"note: {shown_name(self.path)} was read without running code from it"]
        if self.stubbed_globals:
            parts.append(f"stubbed: {', '.join(self.stubbed_globals)}")
        if self.refused_calls:
            parts.append(f"refused to call: {', '.join(self.refused_calls)}")
        return "; ".join(parts)

    def parameters(self, module: LSTMModule) -> dict[str, np.ndarray]:
        """The module's parameters in the canonical layout, checked against its spec: every name of
        ``spec.expected_shapes()`` with that shape, floating point (bfloat16 is handed over widened to
        float32, exactly; ``spec.dtype`` still says bfloat16)."""
        got = self._parameters(module)
        expected = module.spec.expected_shapes()
        out: dict[str, np.ndarray] = {}
        for name, shape in expected.items():
            a = got.get(name)
            if a is None:
                raise CheckpointError(f"{self.path}: module '{module.display_name}' lacks parameter {name} "
                                      f"(from {module.source.get(name, '?')})")
            a = np.asarray(a)
            if tuple(a.shape) != shape or a.dtype.kind != "f":
                raise CheckpointError(f"{self.path}: module '{module.display_name}': {name} "
                                      f"(from {module.source.get(name, '?')}) is {a.dtype} {tuple(a.shape)}; "
                                      f"expected floating point {shape}")
            out[name] = a
        return out


class Reader(Protocol):
    """What every reader module provides (lstmscope.readers.READERS maps formats to them)."""

    FORMATS: tuple[str, ...]  # the lstmscope.sniff format names it reads

    def read(self, path: Path, fmt: str) -> Checkpoint:
        """List the file's LSTMs without loading tensor data; one CheckpointError for a bad file."""
        ...


def select_module(modules: list[LSTMModule], wanted: str | None, source: str,
                  other_recurrent: list[str] | None = None, no_lstm_hint: str = "",
                  single_layers: list[LSTMModule] = ()) -> LSTMModule:
    """The module named by ``--module`` (a listed module, or one layer of a stacked chain; a trailing dot is
    ignored), or the only one."""
    if not modules:
        if no_lstm_hint:  # the reader's own words, in its format's terms
            raise CheckpointError(f"{source} holds no LSTM: {no_lstm_hint}")
        if other_recurrent:
            names = ", ".join(repr(p) for p in other_recurrent)
            raise CheckpointError(f"{source} holds no LSTM: the recurrent weights under {names} have 3 gates or 1 "
                                  "(an nn.GRU or nn.RNN), not an LSTM's 4")
        raise CheckpointError(f"{source} holds no LSTM: "
                              f"{no_lstm_hint or 'no tensors named like weight_ih_l0 / weight_hh_l0 under any prefix'}")
    choices = ", ".join(repr(m.name) for m in modules)
    if wanted is not None:
        key = wanted.rstrip(".") if wanted.endswith(".") and wanted != "." else wanted
        for m in modules:
            if m.name == key:
                return m
        for m in single_layers:
            if m.name == key:
                return m
        extra = f" (or one layer of a stack: {', '.join(repr(m.name) for m in single_layers)})" if single_layers else ""
        raise CheckpointError(f"{source} has no LSTM module {wanted!r}; choose one of: {choices}{extra} (--module NAME)")
    if len(modules) > 1:
        opts = " or ".join(f"--module {m.name or repr('')}" for m in modules)
        raise CheckpointError(f"{source} holds {len(modules)} LSTMs ({choices}); pass {opts}")
    return modules[0]


def _fmt(shape) -> str:
    return "(" + ", ".join(str(d) for d in shape) + ("," if len(shape) == 1 else "") + ")"
