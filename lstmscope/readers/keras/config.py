"""Keras layer configs: which classes are LSTMs, wrappers or other recurrent layers, an LSTM layer from its
weights and config, Bidirectional, activations and Keras versions, and the small JSON helpers the walks share."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np

from lstmscope.readers.keras.found import _Dir, _fail, _Layer
from lstmscope.spec import KERAS2_HARD_SIGMOID, KERAS3_HARD_SIGMOID, SIGMOID, TANH, Activation

if TYPE_CHECKING:
    from lstmscope.readers.keras.reader import _Reader

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
