"""Keras checkpoints, read without Keras or TensorFlow: h5py (imported when a file is read) and JSON. Torch-free.

Which file it is, is decided by content:

* ``keras-zip``: a Keras 3 ``.keras`` zip (config.json, metadata.json, model.weights.h5). The weights member is
  read into memory for h5py; nothing is extracted to disk. Weight groups are named by class, not by layer name:
  ``layers/lstm``, ``layers/lstm_1`` (snake_case class name and a counter per container), so the config is walked
  in order and counted the way Keras counts; ``vars`` groups carry the layer name (Keras >= 3.6), a cross-check.
* ``keras-h5``: a legacy full model (Keras 1, Keras 2, tf.keras, Keras 3 ``model.save("x.h5")``): root attribute
  ``model_config``, weights under ``model_weights/<layer>``, each layer's ``weight_names`` in order.
* ``keras-weights-h5``: a legacy ``save_weights`` file (``layer_names`` on the root), no config.
* ``keras3-weights-h5``: a Keras 3 ``.weights.h5`` (a ``layers/.../vars`` tree), no config: the layer class is
  known only from the group name.

Every module is handed over in ``nn.LSTM``'s layout (gate order i, f, g, o): ``weight_ih = kernel.T``,
``weight_hh = recurrent_kernel.T``, ``bias_ih = bias``, ``bias_hh = 0`` (``bias_layout="single"``); CuDNNLSTM and
Keras 1 files are converted from their own layouts. Nothing in a file is ever run: Lambda functions and custom
classes stay JSON, and HDF5 links, external storage and virtual datasets that lead out of the file are refused.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import sys
import time
import zipfile
import zlib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from lstmscope.errors import CheckpointError, UsageError, clean_message
from lstmscope.fileio import file_sha256
from lstmscope.readers.base import Checkpoint, LSTMModule, TensorInfo
from lstmscope.sniff import HDF5, KERAS_ZIP
from lstmscope.spec import KERAS2_HARD_SIGMOID, KERAS3_HARD_SIGMOID, SIGMOID, TANH, Activation, LSTMSpec

FORMATS = (KERAS_ZIP, HDF5)
ZIP_FORMAT, FULL_H5, WEIGHTS_H5, KERAS3_WEIGHTS_H5 = "keras-zip", "keras-h5", "keras-weights-h5", "keras3-weights-h5"

ZIP_RATIO, ZIP_MARGIN, ZIP_MEMBER_MAX = 100, 16 << 20, 4 << 30  # declared sizes beyond these: a zip bomb
CONFIG_MAX = 64 << 20  # config.json / metadata.json larger than this is not a model description
DATA_RATIO, DATA_MARGIN = 64, 16 << 20  # a dataset may not claim more bytes than this times the file, plus this
MAX_DEPTH, MAX_OBJECTS = 64, 200_000  # nesting and size limits for configs and HDF5 trees
ISOLATE = hasattr(os, "fork") and sys.platform != "darwin"  # read HDF5 in a forked child (see _isolated); macOS
#                                                           frameworks are not fork-safe, Windows cannot fork
HDF5_TIMEOUT = 60.0  # seconds a child may take before the file counts as one that hangs the HDF5 library

_CONTAINERS = {"Sequential", "Functional", "Model"}
_LSTM = {"LSTM", "CuDNNLSTM"}
_WRAPPERS = {"Bidirectional", "TimeDistributed"}
_IDENTITY = {"Dropout", "SpatialDropout1D", "GaussianNoise", "GaussianDropout", "AlphaDropout", "ActivityRegularization"}
_OTHER_RECURRENT = {"GRU", "CuDNNGRU", "SimpleRNN", "ConvLSTM1D", "ConvLSTM2D", "ConvLSTM3D", "ConvRNN2D"}
_KERAS3_OTHER_GROUPS = {"gru", "simple_rnn", "conv_lstm1d", "conv_lstm2d", "conv_lstm3d", "cu_dnngru"}

# Keras activation names -> lstmscope's canonical ones (spec.ACTIVATION_PARAMS); hard_sigmoid depends on the version
_ACTIVATIONS = {
    "linear": Activation("linear"), "relu": Activation("relu"), "elu": Activation("elu", 1.0), "selu": Activation("selu"),
    "softsign": Activation("softsign"), "softplus": Activation("softplus"), "exponential": Activation("exponential"),
    "swish": Activation("swish"), "silu": Activation("swish"), "gelu": Activation("gelu"), "relu6": Activation("relu6"),
    "leaky_relu": Activation("leaky_relu", 0.2), "sigmoid": SIGMOID, "tanh": TANH,
}
_KNOWN_ACTIVATIONS = ", ".join(sorted([*_ACTIVATIONS, "hard_sigmoid"]))
NO_CONFIG = "no config: "  # the notes on defaults start with this (with_activations replaces them)


# --- public ------------------------------------------------------------------------------------------------

def read(path: Path, fmt: str) -> Checkpoint:
    """List a Keras file's LSTMs without loading weights; one CheckpointError for a bad file."""
    try:
        import h5py  # noqa: F401  (imported here: nothing else in lstmscope needs it)
    except ImportError:
        raise CheckpointError(f"{path} is a Keras file; reading it needs h5py (pip install h5py)") from None
    listing = _isolated(path, lambda: _Reader(path).guarded(lambda r: r.listing(fmt)))
    return _checkpoint(path, fmt, listing)


def with_activations(module: LSTMModule, *, activation: str | None = None, recurrent_activation: str | None = None,
                     keras_version: str | None = None) -> LSTMModule:
    """The module with its cell's activations replaced (``--activation`` / ``--recurrent-activation``).

    Names are Keras's (``tanh``, ``relu``, ``hard_sigmoid``, ...). ``hard_sigmoid`` follows ``keras_version``
    (the checkpoint's ``framework_version``): Keras 3's ``clip(x/6 + 0.5, 0, 1)`` from 3.0, ``clip(0.2x + 0.5, 0, 1)``
    before; None means a Keras 1/2 file. Unknown names raise UsageError.
    """
    keras3 = _is_keras3(keras_version)
    spec, notes = module.spec, list(module.notes)
    for value, option, field_name, keras_name in ((activation, "--activation", "cell_activation", "activation"),
                                                  (recurrent_activation, "--recurrent-activation", "gate_activation",
                                                   "recurrent_activation")):
        if value is None:
            continue
        act = _activation_named(value.strip().lower(), keras3)
        if act is None:
            raise UsageError(f"{option} {value!r} is not an activation lstmscope runs; choose one of: "
                             f"{_KNOWN_ACTIVATIONS}")
        spec = replace(spec, **{field_name: act})
        notes = [n for n in notes if not n.startswith(f"{NO_CONFIG}{keras_name} ")]
        notes.append(f"{keras_name} {act} (from {option})")
    return replace(module, spec=spec, notes=tuple(notes))


class KerasCheckpoint(Checkpoint):
    """A Checkpoint whose "holds no LSTM" error is said in Keras's terms (layer names and classes)."""

    def module(self, wanted: str | None) -> LSTMModule:
        if not self.modules:
            raise CheckpointError(f"{self.path.name} holds no LSTM: {self.no_lstm_hint}")
        return super().module(wanted)


# --- what the walks find -------------------------------------------------------------------------------------

@dataclass
class _Dir:
    """One direction of one layer: its weight datasets in the file's own layout."""

    kind: str  # "keras" (kernel, recurrent_kernel[, bias]), "cudnn" (bias 8H, raw cuDNN blocks), "keras1" (12 arrays)
    paths: list[str]  # dataset paths as shown (Windows backslashes made '/'), in weight order
    h5names: list[str]  # the same datasets' HDF5 names, to read them by
    shapes: list[tuple[int, ...]]
    dtype: str
    input_size: int
    units: int


@dataclass
class _Layer:
    """One LSTM layer (or Bidirectional(LSTM)) as the file describes it."""

    name: str  # the Keras layer name
    where: tuple[str, ...]  # names of the submodels around it, outermost first
    dirs: list[_Dir]  # forward[, backward]
    activation: Activation
    recurrent: Activation
    use_bias: bool
    go_backwards: bool = False
    return_sequences: bool | None = None  # None: unknown (no config)
    merge_mode: str | None = "concat"  # Bidirectional only
    wrapper: str | None = None  # "TimeDistributed" when wrapped
    notes: list[str] = field(default_factory=list)
    feeder: str | None = None  # the layer whose output it takes (identity layers skipped), same container
    masked_by: str | None = None
    container: int = 0  # which container it sits in (layers chain only within one)

    @property
    def units(self) -> int:
        return self.dirs[0].units

    @property
    def input_size(self) -> int:
        return self.dirs[0].input_size

    @property
    def bidirectional(self) -> bool:
        return len(self.dirs) == 2

    @property
    def bias_layout(self) -> str:
        return "ih+hh" if self.dirs[0].kind == "cudnn" else "single"


class _Refused(Exception):
    """Raised inside the reader with a message; read() adds the file's path."""


def _fail(message: str):
    raise _Refused(message)


# --- the reader ---------------------------------------------------------------------------------------------

class _Reader:
    def __init__(self, path: Path):
        self.path = path
        self.size = path.stat().st_size
        self.version: str | None = None
        self.keras3 = False
        self.layers: list[_Layer] = []
        self.others: list[str] = []  # names of non-LSTM recurrent layers
        self.why_not: list[str] = []  # "layer 'gru' is a GRU, not an LSTM", custom classes, ...
        self.notes: list[str] = []
        self.tensors: dict[str, TensorInfo] = {}
        self._containers = 0
        self._weights: bytes | None = None  # a .keras archive's model.weights.h5

    def guarded(self, fn: Callable[["_Reader"], Any]) -> Any:
        """Run ``fn``; every error a damaged or hostile file can cause becomes one CheckpointError naming it."""
        try:
            return fn(self)
        except _Refused as e:
            raise CheckpointError(f"{self.path}: {e}") from None
        except CheckpointError:
            raise
        except RecursionError:
            raise CheckpointError(f"{self.path}: the Keras config is nested too deeply to be a model") from None
        except (OSError, ValueError, KeyError, RuntimeError, EOFError, NotImplementedError, zipfile.BadZipFile,
                zlib.error, UnicodeError, OverflowError) as e:
            what = "archive" if self._weights is not None or zipfile.is_zipfile(self.path) else "HDF5 file"
            raise CheckpointError(f"{self.path}: cannot read this Keras {what} ({type(e).__name__}: "
                                  f"{clean_message(e)}); it is truncated, damaged or not a Keras model") from None

    # -- opening --

    def listing(self, fmt: str) -> "_Listing":
        if fmt == KERAS_ZIP:
            config, self.version = self._open_zip()
            self.keras3 = _is_keras3(self.version, default=True)
            with self._h5() as f:
                self._read_keras3(f, config)
            kind = ZIP_FORMAT
        else:
            with self._h5() as f:
                kind = self._read_h5(f)
        return _Listing(kind, self.version, self.layers, self.others, self.why_not, self.notes, self.tensors)

    def load(self, fmt: str, layers: list[_Layer]) -> dict[str, np.ndarray]:
        if fmt == KERAS_ZIP:
            self._open_zip()
        return _load(self._h5, layers)

    def _h5(self):
        import h5py

        if self._weights is not None:
            return h5py.File(io.BytesIO(self._weights), "r")
        return h5py.File(self.path, "r")

    def _open_zip(self) -> tuple[Any, str | None]:
        with zipfile.ZipFile(self.path) as z:
            infos = {i.filename: i for i in z.infolist()}
            declared = sum(i.file_size for i in infos.values())
            if declared > ZIP_RATIO * self.size + ZIP_MARGIN or any(i.file_size > ZIP_MEMBER_MAX for i in infos.values()):
                _fail(f"the archive's members declare {declared} bytes, far more than the {self.size}-byte archive "
                      "could hold (a zip bomb?); nothing was extracted")
            if "config.json" not in infos:
                _fail("a .keras archive without config.json; the model's layers are described there, so it "
                      "cannot be read (re-save the model with model.save('model.keras'))")
            config = _json_member(z, infos["config.json"], "config.json")
            version = None
            if "metadata.json" in infos:
                meta = _json_member(z, infos["metadata.json"], "metadata.json")
                if isinstance(meta, dict) and isinstance(meta.get("keras_version"), str):
                    version = meta["keras_version"]
            if "model.weights.h5" not in infos:
                sharded = [n for n in infos if n.endswith(".json") and "weights" in n]
                _fail("config.json has no weights beside it: the archive lacks model.weights.h5"
                      + (f" (it has {', '.join(sharded)}: sharded weights lstmscope does not read)" if sharded else ""))
            self._weights = z.read(infos["model.weights.h5"])
        if not self._weights.startswith(b"\x89HDF\r\n\x1a\n"):
            _fail("model.weights.h5 inside the archive is not an HDF5 file; the archive is damaged")
        return config, version

    def _read_h5(self, f) -> str:
        attrs = f.attrs
        self.version = _attr_text(f, "keras_version") if "keras_version" in attrs else None
        if "model_config" in attrs:
            self.keras3 = _is_keras3(self.version)
            text = _attr_text(f, "model_config")
            try:
                config = json.loads(text)
            except json.JSONDecodeError as e:
                _fail(f"its model_config attribute is not valid JSON ({clean_message(e)})")
            weights = _child(f, "model_weights")
            if weights is None:
                if "layer_names" in attrs or "layer_names0" in attrs:  # weights on the root (very old files)
                    weights = f
                else:
                    _fail("the file has a model_config but no model_weights group: the model's weights are missing "
                          "(saved without weights?)")
            if self.version is None and "keras_version" in weights.attrs:
                self.version = _attr_text(weights, "keras_version")
                self.keras3 = _is_keras3(self.version)
            _Legacy(self, f, weights).walk_model(config)
            return FULL_H5
        if "layer_names" in attrs or "layer_names0" in attrs:
            self.keras3 = _is_keras3(self.version)
            _Legacy(self, f, f).infer()
            return WEIGHTS_H5
        tree = _Tree(f)
        if tree.root is not None:
            self.keras3, self.version = True, self.version or "3"
            _Keras3(self, tree).infer(tree.root, ())
            return KERAS3_WEIGHTS_H5
        _fail("an HDF5 file that is not a Keras model (no model_config, layer_names or layers/ group); lstmscope "
              "reads Keras .keras, .h5 and .weights.h5 files")

    def _read_keras3(self, f, config: Any) -> None:
        tree = _Tree(f)
        if not isinstance(config, dict):
            _fail("config.json is not a JSON object describing a model")
        cls = config.get("class_name")
        walker = _Keras3(self, tree)
        if cls in ("Sequential", "Functional") and _builtin(config):
            if tree.root is None:
                _fail("model.weights.h5 has no layers/ group: config.json's weights are missing")
            walker.walk_container(config, tree.root, (), is_sequential=cls == "Sequential")
            return
        what = f"class {json.dumps(cls)[:60]}" + (f" from module {json.dumps(config['module'])[:60]}"
                                                    if config.get("module") else "")
        if tree.root is None:
            _fail(f"config.json describes a model of {what}, which lstmscope does not import, and the weights file "
                  "has no layers/ group to read instead")
        self.notes.append(f"config.json describes a custom model ({what}); lstmscope never imports it, so its LSTMs "
                          "were found by their weight groups alone")
        walker.infer(tree.root, ())

    # -- what the walks report --

    def new_container(self) -> int:
        self._containers += 1
        return self._containers

    def add_layers(self, layers: list[_Layer], container: int) -> list[_Layer]:
        for layer in layers:
            layer.container = container
        self.layers += layers
        return layers

    def add_other(self, name: str, what: str) -> None:
        self.others.append(name)
        self.why_not.append(f"layer {name!r} is {what}, not an LSTM")

    def add_custom(self, name: str, cfg: dict, inside: str = "") -> None:
        module = cfg.get("module")
        what = f"custom class {cfg.get('class_name')!r}" + (f" from module {module!r}" if module else "")
        self.why_not.append(f"layer {name!r} {inside or 'is of'} {what}, which lstmscope never imports")
        self.notes.append(f"layer {name!r}: {what} was not looked into (lstmscope never imports code from a file)")

    def dataset(self, ds, path: str) -> tuple[tuple[int, ...], str, str]:
        """A weight dataset's shape and dtype, checked: floating point, inside the file, no external data."""
        if ds.is_virtual:
            _fail(f"dataset {path} is a virtual dataset (its data lives in other files); lstmscope refuses to "
                  "follow it")
        if ds.external:
            _fail(f"dataset {path} keeps its data in an external file ({ds.external[0][0]!r}); lstmscope refuses "
                  "to read it")
        try:
            shape = tuple(int(d) for d in ds.shape) if ds.shape is not None else ()
            dt = ds.dtype
        except TypeError:  # an HDF5 type numpy has no equivalent for
            _fail(f"dataset {path} has an HDF5 data type lstmscope cannot read; an LSTM weight is floating point")
        if dt.kind != "f" or dt.itemsize not in (2, 4, 8):
            _fail(f"dataset {path} is {dt} {shape}; an LSTM weight must be float16, float32 or float64")
        if int(np.prod(shape, dtype=np.float64)) * dt.itemsize > DATA_RATIO * self.size + DATA_MARGIN:
            _fail(f"dataset {path} claims {shape} ({dt}), far more than the file could hold; the file is damaged")
        self.tensors[path] = TensorInfo(shape, dt.newbyteorder("=").name)
        return shape, dt.newbyteorder("=").name, ds.name

    def make_dir(self, kind: str, entries: list[tuple[str, tuple[int, ...], str, str]], layer: str) -> _Dir:
        """Check one direction's weights (path, shape, dtype, HDF5 name; in weight order) against the LSTM layout
        of ``kind``."""
        shapes = [e[1] for e in entries]
        paths = [e[0] for e in entries]
        dtypes = {e[2] for e in entries}
        if len(dtypes) > 1:
            _fail(f"layer {layer!r} mixes weight dtypes ({', '.join(sorted(dtypes))}) in {', '.join(paths)}")
        listed = ", ".join(f"{p} {s}" for p, s in zip(paths, shapes))
        bad = f"layer {layer!r} has weights that are not an LSTM's: {listed}"
        if kind == "keras1":
            if len(shapes) != 12 or any(len(s) != n for s, n in zip(shapes, [2, 2, 1] * 4)):
                _fail(f"{bad} (Keras 1: 12 arrays W, U, b per gate)")
            i, h = shapes[0]
            if any(s != want for s, want in zip(shapes, [(i, h), (h, h), (h,)] * 4)):
                _fail(bad)
        else:
            if len(shapes) not in (2, 3) or len(shapes[0]) != 2 or len(shapes[1]) != 2:
                _fail(f"{bad} (expected kernel, recurrent_kernel and bias)")
            (i, g4), (h, g4r) = shapes[0], shapes[1]
            bias = (8 * h,) if kind == "cudnn" else (4 * h,)
            if h < 1 or g4 != 4 * h or g4r != 4 * h or (len(shapes) == 3 and shapes[2] != bias):
                _fail(f"{bad} (an LSTM of {h} units needs kernel (input, {4 * h}), recurrent_kernel ({h}, {4 * h}) "
                      f"and bias {bias})")
        if i < 1:
            _fail(f"{bad} (no input features)")
        return _Dir(kind, paths, [e[3] for e in entries], shapes, dtypes.pop(), i, h)


@dataclass
class _Listing:
    """What a read found (sent back from the child process that read the file)."""

    kind: str
    version: str | None
    layers: list[_Layer]
    others: list[str]
    why_not: list[str]
    notes: list[str]
    tensors: dict[str, TensorInfo]


def _checkpoint(path: Path, fmt: str, found: _Listing) -> Checkpoint:
    modules, singles = _modules(found.layers)
    by_name = {m.name: layers for m, layers in modules + singles}

    def parameters(module: LSTMModule) -> dict[str, np.ndarray]:
        layers = by_name.get(module.name)
        if layers is None:
            raise CheckpointError(f"{path}: module {module.name!r} is not one of this file's")
        return _isolated(path, lambda: _Reader(path).guarded(lambda r: r.load(fmt, layers)))

    hint = "; ".join(found.why_not) or ("no weights shaped like an LSTM's" if found.kind in (WEIGHTS_H5, KERAS3_WEIGHTS_H5)
                                        else "no LSTM layer in its config")
    return KerasCheckpoint(path=path, format=found.kind, sha256=file_sha256(path), tensors=found.tensors,
                           modules=[m for m, _ in modules], _parameters=parameters, other_recurrent=found.others,
                           notes=found.notes, no_lstm_hint=hint, framework_version=found.version,
                           single_layers=[m for m, _ in singles])


def _isolated(path: Path, fn: Callable[[], Any]) -> Any:
    """``fn()``, run in a forked child where the platform can fork. The HDF5 library crashes (SIGSEGV) or loops
    forever on some damaged files (fuzzing found both); in a child, either becomes one CheckpointError and
    lstmscope lives on. The child sends back its result, or its error message, pickled through a pipe."""
    if not ISOLATE:
        return fn()
    import pickle
    import select
    import signal
    import warnings

    r, w = os.pipe()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # Python >= 3.12 warns about forking with threads
        pid = os.fork()
    if pid == 0:  # the child: never returns
        code = 0
        try:
            os.close(r)
            try:
                data = pickle.dumps(("ok", fn()), protocol=pickle.HIGHEST_PROTOCOL)
            except CheckpointError as e:
                data = pickle.dumps(("error", e.message))
            except MemoryError:
                data = pickle.dumps(("error", f"{path}: reading it needs more memory than there is; the file claims "
                                              "more than it holds (damaged or hostile)"))
            except BaseException as e:  # a bug: reported as one, in the parent
                data = pickle.dumps(("bug", f"{type(e).__name__}: {clean_message(e)}"))
            with os.fdopen(w, "wb") as out:
                out.write(data)
        except BaseException:
            code = 1
        finally:
            os._exit(code)
    os.close(w)
    chunks: list[bytes] = []
    reaped = False
    try:
        deadline = time.monotonic() + HDF5_TIMEOUT
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([r], [], [], left)[0]:
                raise CheckpointError(f"{path}: reading it took over {HDF5_TIMEOUT:g} s; the HDF5 library loops "
                                      "forever on some damaged files, so the file is damaged or hostile")
            chunk = os.read(r, 1 << 20)
            if not chunk:
                break
            chunks.append(chunk)
        _, status = os.waitpid(pid, 0)
        reaped = True
    finally:
        os.close(r)
        if not reaped:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
    if not chunks:
        why = signal.Signals(os.WTERMSIG(status)).name if os.WIFSIGNALED(status) else f"exit status {os.WEXITSTATUS(status)}"
        raise CheckpointError(f"{path}: the HDF5 library crashed reading it ({why}); the file is damaged or hostile "
                              "(lstmscope reads HDF5 in a separate process, so only that process died)")
    kind, value = pickle.loads(b"".join(chunks))  # our own child's bytes, not the file's
    if kind == "error":
        raise CheckpointError(value)
    if kind == "bug":
        raise RuntimeError(f"the Keras reader failed in its child process: {value}")
    return value


# --- Keras 3: the layers/.../vars tree ---------------------------------------------------------------------------

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
        for e, cls, name in counted:
            if _is_operation(e):  # keras.ops nodes of a functional graph are not layers: no weights, no counter
                continue
            path = f"{at}/{_unique(_snake(cls), used)}"
            found += self.r.add_layers(self.layer(e, cls, name, path, where, depth), container)
        _link(entries, found, is_sequential)

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


# --- legacy HDF5: model_config + model_weights, or layer_names/weight_names only -----------------------------------

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
        _link(entries, found, is_sequential)

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


# --- layer configs -------------------------------------------------------------------------------------------

UNKNOWN = "unknown"  # a merge_mode a weights-only file does not record


def _as_lstm(r: _Reader, lc: dict, name: str, wrapper: str = "") -> tuple[str, dict] | None:
    """(class, LSTM config) for an LSTM, CuDNNLSTM or RNN(LSTMCell) layer config; None, with the reason
    recorded, for a custom class or another recurrent layer."""
    cls = lc.get("class_name")
    if not _builtin(lc):
        r.add_custom(name, lc, "wraps the" if wrapper else "is the")
        return None
    cfg = _dict(lc.get("config"), f"layer {name!r} config")
    if cls == "RNN":
        cell = _dict(cfg.get("cell"), f"layer {name!r} cell")
        if not _builtin(cell):
            r.add_custom(name, cell, "runs the")
            return None
        if cell.get("class_name") != "LSTMCell":
            r.add_other(name, f"{'a ' + wrapper + ' of ' if wrapper else ''}an RNN of {cell.get('class_name')}")
            return None
        flags = {k: cfg[k] for k in ("return_sequences", "go_backwards", "stateful", "time_major") if k in cfg}
        return "LSTM", {**_dict(cell.get("config"), f"layer {name!r} cell config"), **flags}
    if cls in _LSTM:
        return str(cls), cfg
    r.add_other(name, f"a {wrapper}({cls})" if wrapper else f"a {cls}")
    return None


def _wrapped(layers: list[_Layer], wrapper_name: str) -> list[_Layer]:
    for layer in layers:
        layer.wrapper = wrapper_name
        layer.notes.append(f"wrapped in TimeDistributed {wrapper_name!r}: Keras runs it on each step of the outer "
                           "time axis; lstmscope runs it on (batch, time, features) sequences")
    return layers


def _lstm_layer(r: _Reader, name: str, where: tuple[str, ...], dirs: list[_Dir], cfg: dict | None) -> _Layer:
    """An LSTM layer from its weights and (when the file has one) its config."""
    d = dirs[0]
    use_bias = d.kind in ("cudnn", "keras1") or len(d.paths) == 3
    default = _default_recurrent(r)
    if cfg is None:
        notes = [f"{NO_CONFIG}activation tanh assumed (--activation changes it)",
                 f"{NO_CONFIG}recurrent_activation {default[0]} assumed, {default[1]} (--recurrent-activation "
                 "changes it)",
                 f"{NO_CONFIG}go_backwards=False assumed"]
        return _Layer(name, where, dirs, TANH, default[0], use_bias, notes=notes)
    units = cfg.get("units", cfg.get("output_dim"))
    if units is not None and units != d.units:
        _fail(f"layer {name!r}: the config says {json.dumps(units)[:20]} units but its recurrent kernel {d.paths[1]} "
              f"is {d.shapes[1]}, {d.units} units")
    if d.kind == "cudnn":
        act, rec = TANH, SIGMOID  # cuDNN's fixed cell
    else:
        act = _activation(cfg.get("activation", "tanh"), r.keras3, name, "activation")
        rec_value = cfg.get("recurrent_activation", cfg.get("inner_activation", default[0].name))
        rec = _activation(rec_value, r.keras3, name, "recurrent_activation")
        if d.kind == "keras" and _flag(cfg, "use_bias", True) != use_bias:
            _fail(f"layer {name!r}: the config says use_bias={_flag(cfg, 'use_bias', True)} but the file holds "
                  f"{len(d.paths)} weight arrays")
    layer = _Layer(name, where, dirs, act, rec, use_bias, go_backwards=_flag(cfg, "go_backwards", False),
                   return_sequences=_flag(cfg, "return_sequences", False))
    if _flag(cfg, "stateful", False):
        layer.notes.append("stateful=True: Keras carries h and c from one batch to the next; lstmscope starts from "
                           "zeros unless given --initial-state")
    if _flag(cfg, "time_major", False):
        layer.notes.append("time_major=True: the layer takes (time, batch, features); pass --time-major")
    return layer


_MERGES = {"sum": "adds", "ave": "averages", "mul": "multiplies", None: "returns as a list (merge_mode=None)"}


def _bidirectional(r: _Reader, name: str, fw: _Layer, bw: _Layer, merge: Any, has_backward_config: bool) -> list[_Layer]:
    """One Bidirectional layer from its two directions. A config without backward_layer (tf.keras, Keras 2): the
    backward direction is the forward config with go_backwards flipped."""
    if merge != "concat" and merge != UNKNOWN and merge not in _MERGES:
        _fail(f"layer {name!r} has merge_mode {json.dumps(merge)[:30]}; Keras knows concat, sum, ave, mul and null")
    if not has_backward_config:
        bw.go_backwards = not fw.go_backwards

    def fields(layer: _Layer) -> tuple:
        return (layer.units, layer.input_size, layer.activation, layer.recurrent, layer.use_bias,
                layer.dirs[0].kind, layer.dirs[0].dtype)

    if fw.go_backwards or not bw.go_backwards:
        why = "forward layer has go_backwards=True (or its backward layer has not)"
    elif fields(fw) != fields(bw):
        why = "two directions differ (units, activations, bias or dtype)"
    else:
        why = ""
    if why:
        r.why_not.append(f"layer {name!r} is a Bidirectional whose {why}")
        r.notes.append(f"layer {name!r} is skipped: a Bidirectional whose {why} is not an LSTM lstmscope runs")
        return []
    layer = replace(fw, dirs=[fw.dirs[0], bw.dirs[0]], go_backwards=False,
                    merge_mode="concat" if merge == UNKNOWN else merge,
                    notes=fw.notes + [n for n in bw.notes if n not in fw.notes])
    if merge != "concat" and merge != UNKNOWN:
        layer.notes.append(f"merge_mode={'None' if merge is None else repr(merge)}: Keras {_MERGES[merge]} the two "
                           "directions' outputs; lstmscope shows them side by side (forward, then backward)")
    return [layer]


def _default_recurrent(r: _Reader) -> tuple[Activation, str]:
    """Keras's default recurrent_activation: hard_sigmoid before Keras 2.3.0, sigmoid from then (and in Keras 3),
    with why, for the note."""
    v = _version_tuple(r.version)
    if r.keras3:
        return SIGMOID, "the Keras 3 default"
    if v is None:
        return SIGMOID, "the default since Keras 2.3.0 (the file records no keras_version)"
    if v < (2, 3, 0):
        tf = "; tf.keras of TensorFlow 2.0-2.1 wrote 2.2.4-tf too but defaulted to sigmoid" if "tf" in str(r.version) else ""
        return KERAS2_HARD_SIGMOID, f"the default before Keras 2.3.0 (the file says {r.version}{tf})"
    return SIGMOID, f"the default since Keras 2.3.0 (the file says {r.version})"


def _activation(value: Any, keras3: bool, layer: str, which: str) -> Activation:
    name = _activation_config_name(value)
    act = _activation_named(name, keras3) if name is not None else None
    if act is None:
        shown = name if name is not None else json.dumps(value)[:80]
        _fail(f"layer {layer!r} has {which} {shown!r}, which lstmscope cannot run; it runs: {_KNOWN_ACTIVATIONS}")
    cfg = value.get("config") if isinstance(value, dict) else None
    if act.name in ("leaky_relu", "elu") and isinstance(cfg, dict):  # a serialized LeakyReLU / ELU object
        alpha = cfg.get("negative_slope", cfg.get("alpha"))
        if isinstance(alpha, (int, float)) and not isinstance(alpha, bool) and np.isfinite(alpha):
            act = Activation(act.name, float(alpha))
    return act


def _activation_config_name(value: Any) -> str | None:
    """A Keras activation as configs write it: a name, None (linear), a serialized function, or a serialized
    activation object (its class name: LeakyReLU, ELU, ...)."""
    if value is None:
        return "linear"
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        cls, cfg = value.get("class_name"), value.get("config")
        if cls == "function" and isinstance(cfg, str):
            return cfg
        if cls == "Activation" and isinstance(cfg, dict):
            return _activation_config_name(cfg.get("activation"))
        if isinstance(cls, str):
            return cls
    return None


def _activation_named(name: str, keras3: bool) -> Activation | None:
    """By Keras name, or by class name (``LeakyReLU`` is leaky_relu): case and underscores aside."""
    key = name.lower().replace("_", "")
    if key == "hardsigmoid":
        return KERAS3_HARD_SIGMOID if keras3 else KERAS2_HARD_SIGMOID
    return _SQUASHED.get(key)


_SQUASHED = {k.replace("_", ""): v for k, v in _ACTIVATIONS.items()}


def _version_tuple(version: str | None) -> tuple[int, ...] | None:
    m = re.match(r"^\s*(\d+)(?:\.(\d+))?(?:\.(\d+))?", version or "")
    return tuple(int(g or 0) for g in m.groups()) if m else None


def _is_keras3(version: str | None, default: bool = False) -> bool:
    v = _version_tuple(version)
    return default if v is None else v[0] >= 3


# --- config helpers -------------------------------------------------------------------------------------------

def _dict(value: Any, what: str) -> dict:
    if not isinstance(value, dict):
        _fail(f"the Keras config's {what} is not a JSON object")
    return value


def _flag(cfg: dict, key: str, default: bool) -> bool:
    v = cfg.get(key, default)
    if not isinstance(v, (bool, int)) or isinstance(v, int) and v not in (0, 1):
        _fail(f"the Keras config says {key}={json.dumps(v)[:40]}; expected true or false")
    return bool(v)


def _layer_name(lc: dict) -> str | None:
    cfg = lc.get("config")
    name = cfg.get("name") if isinstance(cfg, dict) else None
    name = name if isinstance(name, str) else lc.get("name")
    return name if isinstance(name, str) else None


def _container_entries(lc: dict) -> list:
    cfg = lc.get("config")
    if isinstance(cfg, list):  # Keras 1 / early Keras 2 Sequential: the config is the layer list
        return cfg
    layers = _dict(cfg, "model config").get("layers")
    if not isinstance(layers, list):
        _fail("the Keras config has a model without a layers list")
    return layers


def _container_layers(lc: dict) -> list[tuple[dict, str, str]]:
    out = []
    for e in _container_entries(lc):
        if not isinstance(e, dict) or not isinstance(e.get("class_name"), str):
            _fail("the Keras config lists a layer that is not an object with a class_name")
        name = _layer_name(e)
        if name is None:
            _fail(f"the Keras config has a {e['class_name']} layer without a name")
        out.append((e, e["class_name"], name))
    return out


def _builtin(lc: dict) -> bool:
    """True for a class Keras ships; False for a custom class (which lstmscope never imports)."""
    cls, module, registered = lc.get("class_name"), lc.get("module", "keras"), lc.get("registered_name")
    if not isinstance(cls, str) or ">" in cls:
        return False
    if not (isinstance(module, str) and (module == "keras" or module.startswith(("keras.", "tf_keras")))):
        return False
    return registered is None or registered == cls


def _is_operation(lc: dict) -> bool:
    module = lc.get("module")
    return isinstance(module, str) and "ops" in module.split(".")


def _snake(name: str) -> str:
    """keras.src.utils.naming.to_snake_case: how Keras 3 names weight groups."""
    name = re.sub(r"\W+", "", name)
    name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub("([a-z])([A-Z])", r"\1_\2", name).lower()


def _unique(name: str, used: dict[str, int]) -> str:
    if name in used:
        used[name] += 1
        return f"{name}_{used[name]}"
    used[name] = 0
    return name


def _natural(name: str) -> tuple:
    return tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name))


def _json_member(z: zipfile.ZipFile, info: zipfile.ZipInfo, name: str) -> Any:
    if info.file_size > CONFIG_MAX:
        _fail(f"its {name} declares {info.file_size} bytes; too large to be a model description")
    raw = z.read(info)
    try:
        return json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        _fail(f"its {name} is not UTF-8 text; the archive is damaged")
    except json.JSONDecodeError as e:
        _fail(f"its {name} is not valid JSON ({clean_message(e)})")


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


def _link(entries: list[tuple[dict, str, str]], found: list[_Layer], is_sequential: bool) -> None:
    """Set each found layer's feeder (skipping identity layers) and what masks its input, within one container."""
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

    def mask_source(name: str, depth: int = 0) -> str | None:
        src, _, masked = walk_back(name)
        if src is None or depth > len(order):
            return "a mask passed to it" if masked else None
        lc, cls = by_name[src]
        cfg = lc.get("config") if isinstance(lc.get("config"), dict) else {}
        if cls == "Masking":
            return f"{src} (Masking, mask_value {cfg.get('mask_value', 0.0)})"
        if cls == "Embedding" and cfg.get("mask_zero") is True:
            return f"{src} (Embedding, mask_zero=True)"
        if src in lstm_names and lstm_names[src].return_sequences:
            return mask_source(src, depth + 1)
        return "a mask passed to it" if masked else None

    for layer in found:
        if layer.name not in by_name:
            continue
        src, extra, _ = walk_back(layer.name)
        layer.feeder = None if extra else src
        layer.masked_by = mask_source(layer.name)


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
    if head.masked_by:
        notes.append(f"input is masked by {head.masked_by}; lstmscope runs every step (masking comes with token inputs)")
    for layer in chain:
        prefix = f"{layer.name}: " if len(chain) > 1 else ""
        notes += [prefix + n for n in layer.notes if prefix + n not in notes]
    returns = tuple(x.return_sequences for x in chain) if all(x.return_sequences is not None for x in chain) else ()
    return LSTMModule(name=name, spec=spec, source=source, notes=tuple(notes), return_sequences=returns)


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


def _read_dataset(f, path: str, shape: tuple[int, ...]) -> np.ndarray:
    import h5py

    node = f
    for part in [p for p in path.split("/") if p]:  # the listing checked links; check again: the file may have changed
        node = _child(node, part, path) if isinstance(node, h5py.Group) else None
        if node is None:
            _fail(f"{path} is no longer in the file (did it change?)")
    if not isinstance(node, h5py.Dataset) or node.is_virtual or node.external or tuple(node.shape or ()) != shape:
        _fail(f"{path} changed since it was listed (did the file change?)")
    a = np.asarray(node[()])
    if a.dtype.kind != "f":
        _fail(f"{path} is {a.dtype}; an LSTM weight must be floating point")
    return a.astype(a.dtype.newbyteorder("="), copy=False)


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


# --- HDF5 helpers: only hard links inside the file --------------------------------------------------------------

def _keys(group) -> list[str]:
    """A group's member names; names that are not UTF-8 (h5py gives them as bytes) are no Keras group's."""
    names = [n for n in group.keys() if isinstance(n, str)]
    if len(names) > MAX_OBJECTS:
        _fail(f"HDF5 group {group.name} has {len(names)} members; too many for a Keras model")
    return names


def _child(group, name: str, shown: str | None = None):
    """``group[name]`` for a hard link; None when absent; refuses soft and external links."""
    import h5py

    link = group.get(name, getlink=True)
    if link is None:
        return None
    where = shown or f"{group.name.rstrip('/')}/{name}"
    if isinstance(link, h5py.ExternalLink):
        _fail(f"{where} is an external link to {link.filename}:{link.path}; lstmscope never follows links out of "
              "the file")
    if not isinstance(link, h5py.HardLink):
        _fail(f"{where} is a {type(link).__name__}; lstmscope follows only the file's own (hard) links")
    return group[name]


def _dataset_at(group, relative: str, shown: str):
    """The dataset at ``relative`` (a weight name with '/'s) under ``group``, link by link."""
    import h5py

    node = group
    for part in [p for p in relative.split("/") if p]:
        if not isinstance(node, h5py.Group):
            return None
        node = _child(node, part, shown)
        if node is None:
            return None
    return node if isinstance(node, h5py.Dataset) else None


def _attr(obj, name: str) -> Any:
    """An attribute's value, read only when HDF5 says it holds text (fixed or variable-length strings) or is an
    empty list: a damaged file can give an attribute a type whose reading crashes the HDF5 library."""
    import h5py

    aid = h5py.h5a.open(obj.id, name.encode("utf-8"))
    space = aid.get_space()
    kind = space.get_simple_extent_type()
    count = int(np.prod(space.get_simple_extent_dims() or (), dtype=np.float64)) if kind == h5py.h5s.SIMPLE else 1
    if kind == h5py.h5s.NULL or count == 0:
        return np.array([], dtype=np.float64)
    if aid.get_type().get_class() != h5py.h5t.STRING or count > MAX_OBJECTS:
        _fail(f"HDF5 attribute {name!r} of {obj.name} is not text; the file is damaged or not a Keras model")
    return obj.attrs[name]


def _attr_text(obj, name: str) -> str:
    v = _attr(obj, name)
    if isinstance(v, np.ndarray) and v.size == 1 and v.dtype.kind in "SUO":
        v = v.reshape(-1)[0]
    if isinstance(v, (bytes, np.bytes_)):
        return bytes(v).decode("utf-8")
    if isinstance(v, str):
        return str(v)
    _fail(f"HDF5 attribute {name!r} of {obj.name} is not text")


def _attr_list(obj, name: str) -> list[str]:
    """A list attribute as Keras writes it: ``name``, or split in chunks ``name0``, ``name1``, ..."""
    attrs = obj.attrs
    if name in attrs:
        chunks = [_attr(obj, name)]
    else:
        chunks, i = [], 0
        while f"{name}{i}" in attrs and i < MAX_OBJECTS:
            chunks.append(_attr(obj, f"{name}{i}"))
            i += 1
    out: list[str] = []
    for chunk in chunks:
        for v in np.asarray(chunk).reshape(-1):
            if isinstance(v, (bytes, np.bytes_)):
                out.append(bytes(v).decode("utf-8"))
            elif isinstance(v, str):
                out.append(str(v))
            else:
                _fail(f"HDF5 attribute {name!r} of {obj.name} is not a list of names")
    return out


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
