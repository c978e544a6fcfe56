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
import os
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

import numpy as np

from lstmscope.errors import CheckpointError, UsageError, clean_message
from lstmscope.readers.base import Checkpoint, LSTMModule
from lstmscope.readers.keras.config import _KNOWN_ACTIVATIONS, NO_CONFIG, _activation_named, _is_keras3
from lstmscope.readers.keras.modules import _modules
from lstmscope.readers.keras.reader import FULL_H5, ZIP_FORMAT  # noqa: F401  (re-exported: Checkpoint.format values)
from lstmscope.readers.keras.reader import KERAS3_WEIGHTS_H5, WEIGHTS_H5, _Listing, _Reader
from lstmscope.sniff import HDF5, KERAS_ZIP

# The package: this module holds the public API and runs every read in a forked child (_isolated); the rest is
#   reader.py   opens the file (zip or HDF5), checks each weight dataset, and hands over to a walker:
#   keras3.py   Keras 3: config.json over the layers/.../vars tree (or the tree alone)
#   legacy.py   legacy HDF5: model_config + model_weights, or layer_names/weight_names only
#   config.py   layer configs: LSTM classes, wrappers, activations, Keras versions
#   modules.py  which layer feeds which, stacks of layers as modules, weights in nn.LSTM's layout
#   hdf5.py     HDF5 access that follows only the file's own hard links
#   found.py    what the walks find (_Layer, _Dir) and the error they raise (_Refused)

FORMATS = (KERAS_ZIP, HDF5)
ISOLATE = hasattr(os, "fork") and sys.platform != "darwin"  # read HDF5 in a forked child (see _isolated); macOS
#                                                           frameworks are not fork-safe, Windows cannot fork
HDF5_TIMEOUT = 60.0  # seconds a child may take before the file counts as one that hangs the HDF5 library


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
        assumed = [n for n in notes if n.startswith(f"{NO_CONFIG}{keras_name} ")]
        was = getattr(spec, field_name)
        spec = replace(spec, **{field_name: act})
        notes = [n for n in notes if n not in assumed]
        source = "a default" if assumed else "the file's config"
        notes.append(f"{keras_name} {act} (from {option}; {source} says {was})" if act != was
                     else f"{keras_name} {act} (from {option}; the same as {source})")
    return replace(module, spec=spec, notes=tuple(notes))


# --- the checkpoint, and reads in a child process -----------------------------------------------------

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
    def cell_override(module: LSTMModule, activation: str | None, recurrent_activation: str | None) -> LSTMModule:
        return with_activations(module, activation=activation, recurrent_activation=recurrent_activation,
                                keras_version=found.version)

    def embedding(ref) -> np.ndarray:
        shape = (ref.vocab, ref.width)
        return _isolated(path, lambda: _Reader(path).guarded(lambda r: r.load_embedding(fmt, ref.source, shape)))

    return Checkpoint(path=path, format=found.kind, tensors=found.tensors,
                      modules=[m for m, _ in modules], _parameters=parameters, other_recurrent=found.others,
                      notes=found.notes, no_lstm_hint=hint, framework_version=found.version,
                      producer=None if found.version is None else f"Keras {found.version}",
                      single_layers=[m for m, _ in singles], _cell_override=cell_override, _embedding=embedding)


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
