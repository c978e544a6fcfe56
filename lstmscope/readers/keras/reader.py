"""The Keras reader: opens a ``.keras`` archive or an HDF5 file, checks every weight dataset it is shown, and
hands the model's description to the walker for its kind of file (keras3.py, legacy.py)."""

from __future__ import annotations

import io
import json
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from lstmscope.errors import CheckpointError, clean_message
from lstmscope.readers.base import TensorInfo
from lstmscope.readers.keras.config import _builtin, _is_keras3
from lstmscope.readers.keras.found import _Dir, _fail, _Layer, _Refused
from lstmscope.readers.keras.hdf5 import _attr_text, _child, _read_dataset
from lstmscope.readers.keras.keras3 import _Keras3, _Tree
from lstmscope.readers.keras.legacy import _Legacy
from lstmscope.readers.keras.modules import _load
from lstmscope.sniff import KERAS_ZIP

ZIP_FORMAT, FULL_H5, WEIGHTS_H5, KERAS3_WEIGHTS_H5 = "keras-zip", "keras-h5", "keras-weights-h5", "keras3-weights-h5"

ZIP_RATIO, ZIP_MARGIN, ZIP_MEMBER_MAX = 100, 16 << 20, 4 << 30  # declared sizes beyond these: a zip bomb
CONFIG_MAX = 64 << 20  # config.json / metadata.json larger than this is not a model description
DATA_RATIO, DATA_MARGIN = 64, 16 << 20  # a dataset may not claim more bytes than this times the file, plus this


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

    def load_embedding(self, fmt: str, h5name: str, shape: tuple[int, ...]) -> np.ndarray:
        if fmt == KERAS_ZIP:
            self._open_zip()
        with self._h5() as f:
            return _read_dataset(f, h5name, shape)

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
