"""Keras files written with h5py and zipfile from numpy weights, for the Keras reader's tests.

Keras 3 cannot write Keras 1 or Keras 2 files, nor a Keras 3.0-3.2 Windows file, so they are written here
following the layouts of the real files in ../shared/real_checkpoints (see its manifest) and of Keras's own
savers: a legacy full model has the root attributes ``keras_version``, ``backend`` and ``model_config`` (JSON)
and its weights under ``model_weights/<layer>``, each layer group listing its datasets in ``weight_names`` (in
weight order: kernel, recurrent_kernel, bias); a weights-only file has the same groups on the root with
``layer_names`` there; a Keras 3 file has ``layers/<snake_case class>[_<n>]/cell/vars/<i>``.

Every builder returns a :class:`Built`: the path and, per LSTM module lstmscope must list, the truth in Keras's
own terms (kernel, recurrent_kernel and bias in Keras's layout, gate order i, f, c, o; activations by Keras name)
for the tests' Keras-equation reference. Nothing here imports lstmscope.
"""

from __future__ import annotations

import io
import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np


@dataclass
class Direction:
    """One direction of one layer, in Keras's layout (what Keras 2's LSTM computes with)."""

    kernel: np.ndarray  # (input, 4 * units), gates i, f, c, o
    recurrent_kernel: np.ndarray  # (units, 4 * units)
    bias: np.ndarray | None  # (4 * units,)
    go_backwards: bool = False  # reads the input last step first (the backward half of a Bidirectional too)


@dataclass
class Truth:
    """One Keras layer as Keras runs it."""

    name: str  # the Keras layer name
    dirs: list[Direction]
    activation: str = "tanh"
    recurrent_activation: str = "hard_sigmoid"
    keras_major: int = 2  # hard_sigmoid is 0.2x + 0.5 before Keras 3, x/6 + 0.5 from Keras 3
    return_sequences: bool = True

    @property
    def units(self) -> int:
        return self.dirs[0].recurrent_kernel.shape[0]

    @property
    def input_size(self) -> int:
        return self.dirs[0].kernel.shape[0]


@dataclass
class Built:
    path: Path
    layers: dict[str, Truth] = field(default_factory=dict)  # Keras layer name -> truth
    modules: list[str] = field(default_factory=list)  # module names lstmscope must list, in order


def rng_arrays(seed: int, input_size: int, units: int, gates: int = 4, bias: bool = True,
               dtype=np.float32) -> list[np.ndarray]:
    """Random kernel (I, gates*H), recurrent_kernel (H, gates*H) and bias (gates*H), scaled so that the
    gates saturate neither way."""
    r = np.random.default_rng(seed)
    out = [r.uniform(-0.8, 0.8, (input_size, gates * units)), r.uniform(-0.8, 0.8, (units, gates * units))]
    if bias:
        out.append(r.uniform(-0.5, 0.5, (gates * units,)))
    return [a.astype(dtype) for a in out]


# --- configs as Keras 2 / tf.keras write them --------------------------------------------------------------------

def lstm_config(name: str, units: int, *, cls: str = "LSTM", activation: str = "tanh",
                recurrent_activation: str = "hard_sigmoid", use_bias: bool = True, return_sequences: bool = True,
                go_backwards: bool = False, stateful: bool = False, input_shape=None, **extra) -> dict:
    cfg = {"name": name, "trainable": True, "dtype": "float32", "return_sequences": return_sequences,
           "return_state": False, "go_backwards": go_backwards, "stateful": stateful, "unroll": False,
           "units": units, "activation": activation, "recurrent_activation": recurrent_activation,
           "use_bias": use_bias, "kernel_initializer": {"class_name": "GlorotUniform", "config": {"seed": None}},
           "unit_forget_bias": True, "dropout": 0.0, "recurrent_dropout": 0.0, "implementation": 2, **extra}
    if cls == "CuDNNLSTM":  # cuDNN's cell is fixed: no activations, always a bias
        for k in ("activation", "recurrent_activation", "use_bias", "unroll", "dropout", "recurrent_dropout",
                  "implementation"):
            cfg.pop(k)
    if input_shape is not None:
        cfg["batch_input_shape"] = [None, *input_shape]
    return {"class_name": cls, "config": cfg}


def simple_config(cls: str, name: str, **cfg) -> dict:
    return {"class_name": cls, "config": {"name": name, "trainable": True, "dtype": "float32", **cfg}}


def bidirectional_config(name: str, layer: dict, merge_mode="concat", backward: dict | None = None) -> dict:
    cfg = {"name": name, "trainable": True, "layer": layer, "merge_mode": merge_mode}
    if backward is not None:
        cfg["backward_layer"] = backward
    return {"class_name": "Bidirectional", "config": cfg}


def sequential(layers: list[dict], name: str = "sequential", keras1: bool = False) -> dict:
    """Keras 1 and Keras <= 2.2 write a Sequential's config as the bare layer list."""
    return {"class_name": "Sequential", "config": layers if keras1 else {"name": name, "layers": layers}}


# --- legacy HDF5 ---------------------------------------------------------------------------------------------------

def _names(values: list[str]) -> np.ndarray:
    return np.array([v.encode("utf8") for v in values]) if values else np.array([], dtype=np.float64)


def _set_list_attr(obj, name: str, values: list[str], split: bool) -> None:
    """Keras splits list attributes over 64 KiB into ``name0``, ``name1``, ...; ``split`` forces it."""
    if not split:
        obj.attrs[name] = _names(values)
        return
    half = (len(values) + 1) // 2
    for i, chunk in enumerate((values[:half], values[half:])):
        obj.attrs[f"{name}{i}"] = _names(chunk)


def write_legacy(path: Path, groups: list[tuple[str, list[tuple[str, np.ndarray]]]], *, model_config: dict | None,
                 version: str = "2.2.4", backend: str = "tensorflow", split: bool = False) -> Path:
    """A legacy Keras HDF5: ``groups`` is [(layer name, [(weight name, array), ...])] in layer order; each array
    is written at ``<layer group>/<weight name>``. With a model_config: a full model (weights under
    model_weights/); without: a save_weights file."""
    with h5py.File(path, "w") as f:
        f.attrs["keras_version"] = version.encode("utf8")
        f.attrs["backend"] = backend.encode("utf8")
        if model_config is not None:
            f.attrs["model_config"] = json.dumps(model_config).encode("utf8")
            f.attrs["training_config"] = json.dumps({"loss": "mse"}).encode("utf8")
            g = f.create_group("model_weights")
            g.attrs["keras_version"] = version.encode("utf8")
            g.attrs["backend"] = backend.encode("utf8")
        else:
            g = f
        _set_list_attr(g, "layer_names", [n for n, _ in groups], split)
        for layer, weights in sorted(groups, key=lambda lw: lw[0]):  # Keras writes groups sorted by name
            lg = g.create_group(layer)
            _set_list_attr(lg, "weight_names", [w for w, _ in weights], split)
            for wname, array in weights:
                lg.create_dataset(wname, data=array)
        if model_config is not None:  # an optimizer whose moments have LSTM shapes: never a layer
            opt = f.create_group("optimizer_weights")
            for layer, weights in groups:
                for wname, array in weights:
                    opt.create_dataset(f"training/Adam/{layer}/{wname.replace(':0', '')}/m:0", data=array * 0)
    return path


_STYLE = {  # how weight names drift: Keras 2.0-2.2, Keras 2.3 / tf.keras 2.x, Keras 3 writing .h5
    "k2": lambda layer, cell, w: f"{layer}/{w}:0",
    "tf2": lambda layer, cell, w: f"{layer}/{cell}/{w}:0",
    "k3": lambda layer, cell, w: f"{layer}/{cell}/{w}",
}
_WEIGHT_NAMES = ("kernel", "recurrent_kernel", "bias")


def weight_names(style: str, layer: str, cell: str, arrays: list[np.ndarray]) -> list[tuple[str, np.ndarray]]:
    return [(_STYLE[style](layer, cell, w), a) for w, a in zip(_WEIGHT_NAMES, arrays)]


def keras2_model(path: Path, spec: list[tuple], *, input_size: int = 3, version: str = "2.2.4", style: str = "k2",
                 weights_only: bool = False, split: bool = False, backward_config: bool = True,
                 hard_sigmoid: str = "hard_sigmoid", list_config: bool = True) -> Built:
    """A Keras 2 Sequential from a small description, one tuple per layer:

    ("lstm", name, units, {config overrides}), ("bidirectional", name, inner name, units, merge_mode, {overrides}),
    ("cudnn", name, units), ("gru", name, units), ("dropout", name), ("masking", name), ("dense", name, units).
    ``list_config``: the Sequential's config is the bare layer list (Keras <= 2.2), else {"name", "layers"}.
    """
    layers, groups, built = [], [], Built(path)
    width, seed, cells = input_size, 0, 0
    major = int(version.split(".")[0])

    def cell_name() -> str:
        nonlocal cells
        cells += 1
        return "lstm_cell" if cells == 1 else f"lstm_cell_{cells - 1}"

    for item in spec:
        kind, name = item[0], item[1]
        first = {"input_shape": (7, input_size)} if not layers else {}
        seed += 1
        if kind in ("lstm", "cudnn"):
            units = item[2]
            over = item[3] if len(item) > 3 else {}
            cfg = lstm_config(name, units, cls="CuDNNLSTM" if kind == "cudnn" else "LSTM",
                              **{"recurrent_activation": hard_sigmoid, **first, **over})
            use_bias = over.get("use_bias", True)
            arrays = rng_arrays(seed, width, units, bias=use_bias)
            if kind == "cudnn":
                stored, arrays = cudnn_arrays(arrays, seed)
                groups.append((name, weight_names(style, name, cell_name(), stored)))
                truth = Truth(name, [Direction(*arrays)], "tanh", "sigmoid", major, over.get("return_sequences", True))
            else:
                groups.append((name, weight_names(style, name, cell_name(), arrays)))
                c = cfg["config"]
                truth = Truth(name, [Direction(*(arrays + [None] * (3 - len(arrays))), go_backwards=c["go_backwards"])],
                              c["activation"], c["recurrent_activation"], major, c["return_sequences"])
            layers.append(cfg)
            built.layers[name] = truth
            width = units
        elif kind == "bidirectional":
            inner, units, merge = item[2], item[3], item[4]
            over = item[5] if len(item) > 5 else {}
            icfg = lstm_config(f"forward_{inner}" if backward_config else inner, units,
                               **{"recurrent_activation": hard_sigmoid, **over})
            bcfg = lstm_config(f"backward_{inner}", units,
                               **{"recurrent_activation": hard_sigmoid, **over, "go_backwards": True}) if backward_config else None
            bi = bidirectional_config(name, icfg, merge, bcfg)
            if first:
                bi["config"]["batch_input_shape"] = [None, 7, input_size]
            fw, bw = rng_arrays(seed, width, units), rng_arrays(seed + 100, width, units)
            groups.append((name, weight_names(style, f"{name}/forward_{inner}", cell_name(), fw)
                           + weight_names(style, f"{name}/backward_{inner}", cell_name(), bw)))
            c = icfg["config"]
            built.layers[name] = Truth(name, [Direction(*fw), Direction(*bw, go_backwards=True)], c["activation"],
                                       c["recurrent_activation"], major, c["return_sequences"])
            layers.append(bi)
            width = units * 2 if merge == "concat" else units
        elif kind == "gru":
            units = item[2]
            layers.append(simple_config("GRU", name, units=units, return_sequences=True, **({"batch_input_shape": [None, 7, input_size]} if first else {})))
            groups.append((name, weight_names(style, name, "gru_cell", rng_arrays(seed, width, units, gates=3))))
            width = units
        elif kind == "dense":
            units = item[2]
            layers.append(simple_config("Dense", name, units=units, activation="linear"))
            k, _, b = rng_arrays(seed, width, units, gates=1)
            groups.append((name, [(f"{name}/kernel:0", k), (f"{name}/bias:0", b)]))
            width = units
        elif kind == "dropout":
            layers.append(simple_config("Dropout", name, rate=0.5))
            groups.append((name, []))
        elif kind == "masking":
            layers.append(simple_config("Masking", name, mask_value=0.0, batch_input_shape=[None, 7, input_size]))
            groups.append((name, []))
        else:
            raise ValueError(kind)
    write_legacy(path, groups, model_config=None if weights_only else sequential(layers, keras1=list_config),
                 version=version, split=split)
    return built


def cudnn_arrays(keras: list[np.ndarray], seed: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """CuDNNLSTM's stored weights for a cell that equals the Keras LSTM ``keras`` (kernel, recurrent, bias),
    inverted from Keras 2's own converter (``keras/engine/saving.py`` ``convert_lstm_weights``, from_cudnn=True):
    each gate block of an LSTM kernel is ``k.T.reshape(k.shape, order='F')`` of the cuDNN block, each recurrent
    block ``k.T``, and the LSTM bias is the sum of cuDNN's input and recurrent biases."""
    kernel, recurrent, bias = keras
    units = recurrent.shape[0]
    inputs = kernel.shape[0]
    k_blocks, r_blocks = [], []
    for g in range(4):
        kk = kernel[:, g * units:(g + 1) * units]  # (I, H): what Keras's converter must produce
        k_blocks.append(kk.reshape((units, inputs), order="F").T)  # X.T with X.reshape((I, H), order='F') == kk
        r_blocks.append(recurrent[:, g * units:(g + 1) * units].T)
    b_in = np.random.default_rng(seed + 7).uniform(-0.5, 0.5, bias.shape).astype(bias.dtype)
    stored = [np.hstack(k_blocks), np.hstack(r_blocks), np.concatenate([b_in, bias - b_in])]
    # What Keras computes with: the converter applied to the stored arrays (not to `keras`, so float error is its own)
    back_k = np.hstack([b.T.reshape(b.shape, order="F") for b in np.hsplit(stored[0], 4)])
    back_r = np.hstack([b.T for b in np.hsplit(stored[1], 4)])
    back_b = np.sum(np.split(stored[2], 2), axis=0)
    return stored, [back_k, back_r, back_b]


def keras1_model(path: Path, *, gpu: bool = False, input_size: int = 2, units: int = 5, stacked: bool = True) -> Built:
    """Keras 1.2: ``output_dim``, ``inner_activation``, ``consume_less``; 12 arrays per LSTM
    (W_i, U_i, b_i, W_c, U_c, b_c, W_f, U_f, b_f, W_o, U_o, b_o: gates i, c, f, o) or, with consume_less='gpu',
    three concatenated ones (gates i, f, c, o), named ``<layer>_W_i`` (no ':0')."""
    built, layers, groups = Built(path), [], []
    width = input_size
    names = ["lstm_1", "lstm_2"] if stacked else ["lstm_1"]
    for n, name in enumerate(names):
        cfg = {"name": name, "trainable": True, "return_sequences": True, "go_backwards": False,
               "stateful": False, "unroll": False, "consume_less": "gpu" if gpu else "cpu", "output_dim": units,
               "activation": "tanh", "inner_activation": "hard_sigmoid", "forget_bias_init": "one",
               "input_dim": width, "init": "glorot_uniform", "inner_init": "orthogonal"}
        if n == 0:
            cfg["batch_input_shape"] = [None, 4, input_size]
        layers.append({"class_name": "LSTM", "config": cfg})
        kernel, recurrent, bias = rng_arrays(10 + n, width, units)
        if gpu:
            weights = [(f"{name}_W", kernel), (f"{name}_U", recurrent), (f"{name}_b", bias)]
        else:
            block = {g: k for k, g in enumerate("ifco")}  # gate order in the concatenated (Keras 2) layout
            weights = []
            for g in "icfo":  # Keras 1 lists them i, c, f, o
                s = slice(block[g] * units, (block[g] + 1) * units)
                weights += [(f"{name}_W_{g}", kernel[:, s]), (f"{name}_U_{g}", recurrent[:, s]), (f"{name}_b_{g}", bias[s])]
        groups.append((name, weights))
        built.layers[name] = Truth(name, [Direction(kernel, recurrent, bias)], "tanh", "hard_sigmoid", 1)
        width = units
    built.modules = ["+".join(names)]
    write_legacy(path, groups, model_config=sequential(layers, keras1=True), version="1.2.2")
    return built


def nested_legacy(path: Path, style: str = "tf2") -> Built:
    """A functional model holding two Sequentials, each with an LSTM named ``lstm_1`` (names repeat across
    submodels): each submodel's weights sit in one group named after it."""
    version = "3.1.0" if style == "k3" else "2.4.0"
    built, groups, layers = Built(path), [], []
    layers.append({"name": "input_1", "class_name": "InputLayer", "config": {"name": "input_1",
                                                                              "batch_input_shape": [None, 7, 3]},
                   "inbound_nodes": []})
    width, prev = 3, "input_1"
    for n, sub in enumerate(("inner", "inner_2")):
        units = 4 + n
        arrays = rng_arrays(30 + n, width, units)
        inner = lstm_config("lstm_1", units, recurrent_activation="sigmoid")
        layers.append({"name": sub, "class_name": "Sequential", "config": {"name": sub, "layers": [inner]},
                       "inbound_nodes": [[[prev, 0, 0, {}]]]})
        prefix = f"{sub}/lstm_1" if style == "k3" else "lstm_1"
        groups.append((sub, weight_names(style, prefix, "lstm_cell", arrays)))
        built.layers[f"{sub}/lstm_1"] = Truth("lstm_1", [Direction(*arrays)], "tanh", "sigmoid", int(version[0]))
        width, prev = units, sub
    config = {"class_name": "Functional" if style == "k3" else "Model",
              "config": {"name": "model", "layers": layers, "input_layers": [["input_1", 0, 0]],
                         "output_layers": [[prev, 0, 0]]}}
    groups.insert(0, ("input_1", []))
    write_legacy(path, groups, model_config=config, version=version)
    built.modules = ["inner/lstm_1", "inner_2/lstm_1"]
    return built


# --- Keras 3 ------------------------------------------------------------------------------------------------------

def keras3_layer(cls: str, name: str, **config) -> dict:
    return {"module": "keras.layers", "class_name": cls, "config": {"name": name, "trainable": True, **config},
            "registered_name": None}


def keras3_lstm(name: str, units: int, **over) -> dict:
    cfg = {"return_sequences": True, "return_state": False, "go_backwards": False, "stateful": False,
           "unroll": False, "zero_output_for_mask": False, "units": units, "activation": "tanh",
           "recurrent_activation": "sigmoid", "use_bias": True, "unit_forget_bias": True, "dropout": 0.0,
           "recurrent_dropout": 0.0, "seed": None, **over}
    return keras3_layer("LSTM", name, **cfg)


def keras3_sequential(layers: list[dict], name: str = "sequential") -> dict:
    return {"module": "keras", "class_name": "Sequential", "config": {"name": name, "trainable": True,
                                                                      "layers": layers}, "registered_name": None}


def write_keras3_weights(f: h5py.File, datasets: dict[str, np.ndarray], windows: bool = False,
                         names: dict[str, str] | None = None, empty: tuple[str, ...] = ()) -> None:
    """Keras 3 weight groups: ``datasets`` maps '<group path>/vars/<i>' to arrays; each group path gets a
    ``vars`` group (with a ``name`` attribute when ``names`` gives one, as Keras >= 3.6 writes); ``empty`` group
    paths get an empty ``vars`` (weightless layers, a layer's own level above its cell). ``windows`` writes group
    paths the way Keras 3.0-3.2 did on Windows: one root group named ``layers\\lstm\\cell``."""
    groups: dict[str, h5py.Group] = {}

    def vars_group(gpath: str) -> h5py.Group:
        if gpath not in groups:
            g = f if not gpath else f.create_group(gpath.replace("/", "\\") if windows else gpath)
            groups[gpath] = g.create_group("vars")
            if names and gpath in names:
                groups[gpath].attrs["name"] = names[gpath]
        return groups[gpath]

    for gpath in empty:
        vars_group(gpath)
    for key, array in datasets.items():
        gpath, _, index = key.rpartition("/vars/")
        vars_group(gpath).create_dataset(index, data=array)


def write_keras_zip(path: Path, config, weights: bytes | None, *, version: str = "3.1.0",
                    extra: dict[str, bytes] | None = None, compress: bool = False) -> Path:
    """A .keras archive as Keras 3 writes it (stored members: metadata.json, config.json, model.weights.h5)."""
    method = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
    with zipfile.ZipFile(path, "w", method) as z:
        z.writestr("metadata.json", json.dumps({"keras_version": version, "date_saved": "2024-01-01@00:00:00"}))
        if config is not None:
            z.writestr("config.json", config if isinstance(config, (str, bytes)) else json.dumps(config))
        if weights is not None:
            z.writestr("model.weights.h5", weights)
        for name, data in (extra or {}).items():
            z.writestr(name, data)
    return path


def h5_bytes(datasets: dict[str, np.ndarray], windows: bool = False, names: dict[str, str] | None = None,
             empty: tuple[str, ...] = ()) -> bytes:
    buf = io.BytesIO()
    with h5py.File(buf, "w") as f:
        write_keras3_weights(f, datasets, windows, names, empty)
    return buf.getvalue()


def keras3_stack(path: Path, *, windows: bool = False, as_zip: bool = True, version: str = "3.1.0",
                 names: bool = False) -> Built:
    """Keras 3: InputLayer, LSTM 'enc_a' (4 units), Dropout, LSTM 'enc_b' (4 units), LSTM 'narrow' (3 units):
    the first two stack; the config names differ from the group names (layers/lstm, layers/lstm_1, ...)."""
    built = Built(path)
    layers = [keras3_layer("InputLayer", "input_layer", batch_shape=[None, 7, 3], dtype="float32"),
              keras3_lstm("enc_a", 4), keras3_layer("Dropout", "dropout_3", rate=0.2), keras3_lstm("enc_b", 4),
              keras3_lstm("narrow", 3, return_sequences=False, recurrent_activation="hard_sigmoid")]
    datasets = {}
    for n, (group, name, inputs, units) in enumerate((("layers/lstm", "enc_a", 3, 4), ("layers/lstm_1", "enc_b", 4, 4),
                                                      ("layers/lstm_2", "narrow", 4, 3))):
        arrays = rng_arrays(40 + n, inputs, units)
        for i, a in enumerate(arrays):
            datasets[f"{group}/cell/vars/{i}"] = a
        rec = "hard_sigmoid" if name == "narrow" else "sigmoid"
        built.layers[name] = Truth(name, [Direction(*arrays)], "tanh", rec, 3, name != "narrow")
    datasets["optimizer/vars/3"] = datasets["layers/lstm/cell/vars/0"] * 0  # LSTM-shaped optimizer moments
    layer_names = {"layers/lstm": "enc_a", "layers/lstm_1": "enc_b", "layers/lstm_2": "narrow",
                   "layers/dropout": "dropout_3", "": "sequential"}
    cells = {f"{g}/cell": "lstm_cell" for g in ("layers/lstm", "layers/lstm_1", "layers/lstm_2")}
    data = h5_bytes(datasets, windows, {**layer_names, **cells} if names else None,
                    empty=("layers/lstm", "layers/dropout", "layers/lstm_1", "layers/lstm_2", "metrics/mean"))
    if as_zip:
        write_keras_zip(path, keras3_sequential(layers), data, version=version)
    else:
        path.write_bytes(data)
    built.modules = ["enc_a+enc_b", "narrow"] if as_zip else ["enc_a", "enc_b", "narrow"] if names else \
        ["lstm", "lstm_1", "lstm_2"]
    return built


# --- hostile and broken files ---------------------------------------------------------------------------------------

KERNEL = "model_weights/lstm_1/lstm_1/kernel:0"  # in keras2_model(style="k2") files


def replace_kernel(path: Path, how: str, tmp: Path) -> Path:
    """Point lstm_1's kernel elsewhere: an external link, a soft link, a virtual dataset, or external raw storage,
    each leading to ``secret`` data in another file."""
    with h5py.File(path, "a") as f:
        kernel = f[KERNEL][()]
        del f[KERNEL]
        group = f[KERNEL.rsplit("/", 1)[0]]
        leaf = KERNEL.rsplit("/", 1)[1]
        if how == "external_link":
            other = tmp / "secret.h5"
            with h5py.File(other, "w") as s:
                s["data"] = kernel
            group[leaf] = h5py.ExternalLink(str(other), "/data")
        elif how == "soft_link":
            f["model_weights/lstm_1/stolen"] = kernel
            group[leaf] = h5py.SoftLink("/model_weights/lstm_1/stolen")
        elif how == "virtual":
            other = tmp / "secret_vds.h5"
            with h5py.File(other, "w") as s:
                s["data"] = kernel
            layout = h5py.VirtualLayout(shape=kernel.shape, dtype=kernel.dtype)
            layout[:] = h5py.VirtualSource(str(other), "data", shape=kernel.shape)
            group.create_virtual_dataset(leaf, layout)
        elif how == "external_storage":
            raw = tmp / "secret.bin"
            raw.write_bytes(kernel.tobytes())
            group.create_dataset(leaf, shape=kernel.shape, dtype=kernel.dtype, external=[(str(raw), 0, kernel.nbytes)])
        else:
            raise ValueError(how)
    return path


def zip_bomb(path: Path) -> Path:
    """A .keras whose model.weights.h5 inflates 64 MiB of zeros from a few kilobytes."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("metadata.json", json.dumps({"keras_version": "3.1.0"}))
        z.writestr("config.json", json.dumps(keras3_sequential([keras3_lstm("lstm", 2)])))
        z.writestr("model.weights.h5", bytes(64 << 20))
    return path


def lying_sizes(path: Path, member: str = "config.json", size: int = 0xFFFFFFF0) -> Path:
    """A zip whose central directory declares ``size`` uncompressed bytes for ``member``."""
    data = bytearray(path.read_bytes())
    at = data.find(b"PK\x01\x02")
    while at >= 0:
        name_len = int.from_bytes(data[at + 28:at + 30], "little")
        if data[at + 46:at + 46 + name_len] == member.encode():
            data[at + 24:at + 28] = size.to_bytes(4, "little")
        at = data.find(b"PK\x01\x02", at + 4)
    path.write_bytes(bytes(data))
    return path


def lambda_payload(marker: Path) -> dict:
    """A Lambda layer config whose function, if Keras unmarshalled and ran it, would create ``marker``."""
    import base64
    import marshal

    code = compile(f"open({str(marker)!r}, 'w').write('ran')", "<lambda>", "exec")
    return keras3_layer("Lambda", "lambda", function={"class_name": "__lambda__", "config": {
        "code": base64.b64encode(marshal.dumps(code)).decode(), "defaults": None, "closure": None}}, arguments={})
