"""Find LSTM modules in a flat ``{key: (shape, dtype)}`` listing and infer their configuration.

Torch-free: this works from shapes and dtype names alone, so safetensors headers can be
inspected without importing torch.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Mapping

from lstmscope.errors import CheckpointError

_PARAM = re.compile(r"^(?P<prefix>.*?)(?P<kind>weight_ih|weight_hh|bias_ih|bias_hh|weight_hr)_l(?P<layer>\d+)(?P<rev>_reverse)?$")

# Path components that mark optimizer state (Adam moments have the same shapes as the weights).
_OPTIMIZER_PARTS = frozenset(
    {
        "optimizer",
        "optimizers",
        "optimizer_states",
        "optimizer_state",
        "optimizer_state_dict",
        "optim",
        "optim_state",
        "exp_avg",
        "exp_avg_sq",
        "max_exp_avg_sq",
        "momentum_buffer",
        "square_avg",
        "acc_delta",
    }
)


@dataclass(frozen=True)
class TensorInfo:
    """What is known about one stored tensor without reading its data."""

    shape: tuple[int, ...]
    dtype: str  # numpy-style name: "float32", "float16", "bfloat16", "int64", ...


# Activation functions a cell may use, by canonical name, with the parameters each takes. Names follow
# Keras (snake_case) and cover ONNX's list; `alpha`/`beta` are ONNX's activation_alpha/activation_beta.
#   sigmoid 1/(1+e^-x); tanh; relu; linear x; hard_sigmoid clip(alpha*x + beta, 0, 1);
#   elu x>0 ? x : alpha*(e^x-1); selu; softsign x/(1+|x|); softplus log(1+e^x); exponential e^x;
#   swish x*sigmoid(x); gelu (exact, erf); relu6 clip(x, 0, 6); leaky_relu x>=0 ? x : alpha*x;
#   thresholded_relu x>alpha ? x : 0; scaled_tanh alpha*tanh(beta*x); affine alpha*x + beta
ACTIVATION_PARAMS: dict[str, tuple[str, ...]] = {
    "sigmoid": (), "tanh": (), "relu": (), "linear": (), "hard_sigmoid": ("alpha", "beta"), "elu": ("alpha",),
    "selu": (), "softsign": (), "softplus": (), "exponential": (), "swish": (), "gelu": (), "relu6": (),
    "leaky_relu": ("alpha",), "thresholded_relu": ("alpha",), "scaled_tanh": ("alpha", "beta"),
    "affine": ("alpha", "beta"),
}


@dataclass(frozen=True)
class Activation:
    """One activation function of a cell: a canonical name and its parameters (None where it takes none)."""

    name: str  # a key of ACTIVATION_PARAMS
    alpha: float | None = None  # slope (hard_sigmoid, leaky_relu, affine), scale (elu, scaled_tanh), threshold
    beta: float | None = None  # offset (hard_sigmoid, affine), inner scale (scaled_tanh)

    def __str__(self) -> str:
        args = [f"{k}={_num(getattr(self, k))}" for k in ACTIVATION_PARAMS.get(self.name, ())]
        return f"{self.name}({', '.join(args)})" if args else self.name

    def to_dict(self) -> dict:
        return {"name": self.name, "alpha": self.alpha, "beta": self.beta}

    @classmethod
    def from_dict(cls, d: "Mapping | str") -> "Activation":
        if isinstance(d, str):
            return cls(d)
        return cls(str(d["name"]), _opt_float(d.get("alpha")), _opt_float(d.get("beta")))


SIGMOID = Activation("sigmoid")
TANH = Activation("tanh")
KERAS2_HARD_SIGMOID = Activation("hard_sigmoid", 0.2, 0.5)  # Keras 1, Keras 2, tf.keras: clip(0.2x + 0.5, 0, 1)
KERAS3_HARD_SIGMOID = Activation("hard_sigmoid", 1 / 6, 0.5)  # Keras 3: relu6(x + 3) / 6 = clip(x/6 + 0.5, 0, 1)


def _num(v: float | None) -> str:
    return "?" if v is None else f"{v:.6g}"


def _opt_float(v) -> float | None:
    return None if v is None else float(v)


BIAS_LAYOUTS = ("ih+hh", "single")  # PyTorch/ONNX: b_ih + b_hh; Keras: one bias (b_hh handed over as zeros)
FRAMEWORKS = ("pytorch", "keras")  # whose terms the relation between state and output is shown in


@dataclass(frozen=True)
class LSTMSpec:
    """One LSTM (a stack of identical layers): its shapes and its cell.

    The defaults describe ``nn.LSTM``: sigmoid gates, tanh cell, both directions in PyTorch's order.
    Everything downstream (engines, snapshot metadata, JSON, tables, ``fit_state``) takes this and
    never re-derives it; :meth:`to_dict` is the one place the configuration is written out.
    """

    input_size: int  # features per time step: weight_ih_l0.shape[1]
    hidden_size: int  # cell width H: weight_ih_l0.shape[0] // 4 (never weight_hh's width)
    proj_size: int  # projected hidden width P (0 = no projection): weight_hr_l0.shape[0]
    num_layers: int  # stacked layers L
    bidirectional: bool  # True when *_reverse tensors exist
    bias: bool  # True when the cell has biases
    dtype: str  # parameter dtype name, e.g. "float32"
    gate_activation: Activation = SIGMOID  # i, f, o (Keras: recurrent_activation)
    cell_activation: Activation = TANH  # the candidate g and h = o * act(c) (Keras: activation)
    go_backwards: bool = False  # unidirectional only: reads the input last step first and returns its output
    #                             in that processing order (Keras go_backwards)
    bias_layout: str = "ih+hh"  # see BIAS_LAYOUTS
    framework: str = "pytorch"  # see FRAMEWORKS
    names: tuple[str, ...] = ()  # PyTorch: () (the module's key prefix names it); Keras: each layer's name

    @property
    def num_directions(self) -> int:
        return 2 if self.bidirectional else 1

    @property
    def output_size(self) -> int:
        """Width of h (and of each direction's slice of ``output``): P if projected, else H."""
        return self.proj_size or self.hidden_size

    @property
    def standard_cell(self) -> bool:
        """True when ``nn.LSTM`` computes this cell exactly (sigmoid gates, tanh cell); other cells run on
        the stepwise engine."""
        return self.gate_activation == SIGMOID and self.cell_activation == TANH

    def layer_input_size(self, layer: int) -> int:
        return self.input_size if layer == 0 else self.output_size * self.num_directions

    def describe_cell(self) -> str:
        """"sigmoid gates, tanh cell" and the like, for headers and tables."""
        return f"{self.gate_activation} gates, {self.cell_activation} cell"

    def to_dict(self) -> dict:
        """Every field, JSON-ready (the one place the configuration is written out)."""
        return {
            "input_size": self.input_size, "hidden_size": self.hidden_size, "proj_size": self.proj_size,
            "num_layers": self.num_layers, "bidirectional": self.bidirectional,
            "num_directions": self.num_directions, "bias": self.bias, "dtype": self.dtype,
            "gate_activation": self.gate_activation.to_dict(), "cell_activation": self.cell_activation.to_dict(),
            "go_backwards": self.go_backwards, "bias_layout": self.bias_layout, "framework": self.framework,
            "names": list(self.names),
        }

    @classmethod
    def from_dict(cls, d: Mapping) -> "LSTMSpec":
        """The inverse of :meth:`to_dict`; fields added later take their defaults (``num_directions``
        stands in for ``bidirectional`` in v1 snapshot metadata)."""
        bidirectional = d["bidirectional"] if "bidirectional" in d else d.get("num_directions") == 2
        return cls(
            input_size=int(d["input_size"]), hidden_size=int(d["hidden_size"]), proj_size=int(d.get("proj_size", 0)),
            num_layers=int(d["num_layers"]), bidirectional=bool(bidirectional), bias=bool(d.get("bias", True)),
            dtype=str(d.get("dtype", "float32")),
            gate_activation=Activation.from_dict(d.get("gate_activation", "sigmoid")),
            cell_activation=Activation.from_dict(d.get("cell_activation", "tanh")),
            go_backwards=bool(d.get("go_backwards", False)), bias_layout=str(d.get("bias_layout", "ih+hh")),
            framework=str(d.get("framework", "pytorch")), names=tuple(str(n) for n in d.get("names", ())),
        )

    def expected_shapes(self) -> dict[str, tuple[int, ...]]:
        """Every parameter ``nn.LSTM`` would hold, with its shape, keyed as in its state_dict.

        This is also the canonical layout every reader hands parameters over in (gate order i, f, g, o)."""
        h, p = self.hidden_size, self.proj_size
        out: dict[str, tuple[int, ...]] = {}
        for layer in range(self.num_layers):
            for suffix in ("", "_reverse")[: self.num_directions]:
                k = f"l{layer}{suffix}"
                out[f"weight_ih_{k}"] = (4 * h, self.layer_input_size(layer))
                out[f"weight_hh_{k}"] = (4 * h, p or h)
                if self.bias:
                    out[f"bias_ih_{k}"] = (4 * h,)
                    out[f"bias_hh_{k}"] = (4 * h,)
                if p:
                    out[f"weight_hr_{k}"] = (p, h)
        return out

    def parameter_count(self) -> int:
        """Parameters the model really holds (a Keras single bias counts once)."""
        total = 0
        for name, shape in self.expected_shapes().items():
            if name.startswith("bias_hh") and self.bias_layout == "single":
                continue
            n = 1
            for d in shape:
                n *= d
            total += n
        return total


@dataclass(frozen=True)
class LSTMModule:
    """One LSTM found in a checkpoint: where its tensors live and what it is."""

    prefix: str  # key prefix without the trailing dot ("" for a bare nn.LSTM state_dict)
    spec: LSTMSpec

    @property
    def key_prefix(self) -> str:
        return f"{self.prefix}." if self.prefix else ""

    def keys(self) -> dict[str, str]:
        """nn.LSTM parameter name -> key in the checkpoint."""
        return {name: self.key_prefix + name for name in self.spec.expected_shapes()}

    @property
    def display_name(self) -> str:
        return self.prefix or "(top level)"


def _is_optimizer_state(prefix: str) -> bool:
    return any(part in _OPTIMIZER_PARTS for part in prefix.split(".") if part)


def find_lstm_modules(tensors: Mapping[str, TensorInfo], source: str, skipped: list[str] | None = None) -> list[LSTMModule]:
    """Every LSTM whose parameters appear in ``tensors`` under some prefix, in key order.

    ``source`` names the file in error messages. Raises CheckpointError when a group of
    LSTM-named tensors is inconsistent; the message names the tensor and the expected shape.
    """
    groups: dict[str, dict[str, str]] = {}
    for key in tensors:
        m = _PARAM.match(key)
        if not m:
            continue
        prefix = m.group("prefix")
        if prefix and not prefix.endswith("."):
            continue  # e.g. "myweight_ih_l0": not an nn.LSTM parameter name
        if _is_optimizer_state(prefix):
            continue
        name = key[len(prefix):]
        groups.setdefault(prefix, {})[name] = key
    modules = []
    for prefix, names in groups.items():
        if _other_recurrent(names, tensors):
            if skipped is not None:  # nn.GRU / nn.RNN share the parameter names but have 3 or 1 gates
                skipped.append(prefix.rstrip("."))
            continue
        modules.append(_infer_module(prefix, names, tensors, source))
    return modules


def _other_recurrent(names: dict[str, str], tensors: Mapping[str, TensorInfo]) -> bool:
    """True when the group is clearly a GRU or plain RNN: weight_hh_l0 is (G*H, H) with G != 4
    (an LSTM's weight_hh_l0 is (4*H, H), or (4*H, P) with weight_hr_l0)."""
    if "weight_ih_l0" not in names or "weight_hh_l0" not in names or "weight_hr_l0" in names:
        return False
    w_ih, w_hh = tensors[names["weight_ih_l0"]].shape, tensors[names["weight_hh_l0"]].shape
    if len(w_ih) != 2 or len(w_hh) != 2 or w_ih[0] != w_hh[0] or w_hh[1] == 0:
        return False
    gates, rem = divmod(w_hh[0], w_hh[1])
    return rem == 0 and gates in (1, 3)


def _infer_module(prefix: str, names: dict[str, str], tensors: Mapping[str, TensorInfo], source: str) -> LSTMModule:
    shown = prefix.rstrip(".") or "(top level)"
    where = f"{source}: LSTM '{shown}'"
    if "weight_ih_l0" not in names:
        raise CheckpointError(
            f"{where} has {', '.join(sorted(names))} but no weight_ih_l0; "
            f"expected tensor '{prefix}weight_ih_l0' of shape (4*hidden_size, input_size)"
        )
    w_ih = tensors[names["weight_ih_l0"]]
    if len(w_ih.shape) != 2 or w_ih.shape[0] % 4 or w_ih.shape[0] == 0 or w_ih.shape[1] == 0:
        raise CheckpointError(
            f"{where}: '{prefix}weight_ih_l0' has shape {_fmt(w_ih.shape)}; "
            "expected (4*hidden_size, input_size), both non-zero, with a first dimension divisible by 4"
        )
    hidden = w_ih.shape[0] // 4
    proj = 0
    if "weight_hr_l0" in names:
        w_hr = tensors[names["weight_hr_l0"]]
        if len(w_hr.shape) != 2:
            raise CheckpointError(f"{where}: '{prefix}weight_hr_l0' has shape {_fmt(w_hr.shape)}; expected (proj_size, {hidden})")
        proj = w_hr.shape[0]
        if not 0 < proj < hidden:
            raise CheckpointError(f"{where}: '{prefix}weight_hr_l0' has shape {_fmt(w_hr.shape)}; expected "
                                  f"(proj_size, {hidden}) with 0 < proj_size < hidden_size ({hidden}), as nn.LSTM requires")
    layers = sorted({int(_PARAM.match(n).group("layer")) for n in names})
    num_layers = layers[-1] + 1
    gap = next((i for i, layer in enumerate(layers) if layer != i), None)
    if gap is not None:  # checked before expected_shapes(), which would list every layer up to "weight_ih_l99999999"
        raise CheckpointError(
            f"{where} has tensors for layer {layers[gap]} but none for layer {gap}: missing tensor "
            f"'{prefix}weight_ih_l{gap}' (found layers {', '.join(map(str, layers[:8]))}{', ...' if len(layers) > 8 else ''})"
        )
    spec = LSTMSpec(
        input_size=w_ih.shape[1],
        hidden_size=hidden,
        proj_size=proj,
        num_layers=num_layers,
        bidirectional=any(n.endswith("_reverse") for n in names),
        bias=any(n.startswith("bias_") for n in names),
        dtype=w_ih.dtype,
    )
    expected = spec.expected_shapes()
    for name, shape in expected.items():
        if name not in names:
            raise CheckpointError(
                f"{where} is missing tensor '{prefix}{name}'; expected shape {_fmt(shape)} "
                f"for a {num_layers}-layer{' bidirectional' if spec.bidirectional else ''} LSTM "
                f"(input_size={spec.input_size}, hidden_size={hidden}, proj_size={proj}, bias={spec.bias})"
            )
        info = tensors[names[name]]
        if tuple(info.shape) != shape:
            raise CheckpointError(
                f"{where}: tensor '{prefix}{name}' has shape {_fmt(info.shape)}; expected {_fmt(shape)} "
                f"(input_size={spec.input_size}, hidden_size={hidden}, proj_size={proj})"
            )
        if info.dtype != spec.dtype:
            raise CheckpointError(
                f"{where}: tensor '{prefix}{name}' is {info.dtype} but '{prefix}weight_ih_l0' is {spec.dtype}; "
                "all parameters of one LSTM must share a dtype"
            )
    extra = sorted(set(names) - set(expected))
    if extra:
        raise CheckpointError(
            f"{where}: unexpected tensor '{prefix}{extra[0]}' for a {num_layers}-layer "
            f"{'bidirectional' if spec.bidirectional else 'unidirectional'} LSTM "
            f"(proj_size={proj}, bias={spec.bias}); the module's tensors are inconsistent"
        )
    if spec.dtype not in ("float16", "bfloat16", "float32", "float64"):
        raise CheckpointError(f"{where}: parameters are {spec.dtype}; an LSTM needs floating-point weights")
    return LSTMModule(prefix=prefix.rstrip("."), spec=spec)


def select_module(modules: list[LSTMModule], wanted: str | None, source: str,
                  other_recurrent: list[str] | None = None) -> LSTMModule:
    """The module named by ``--module`` (trailing dot optional), or the only one."""
    if not modules:
        if other_recurrent:
            names = ", ".join(repr(p) for p in other_recurrent)
            raise CheckpointError(f"{source} holds no LSTM: the recurrent weights under {names} have 3 gates or 1 "
                                  "(an nn.GRU or nn.RNN), not an LSTM's 4")
        raise CheckpointError(
            f"{source} holds no LSTM: no tensors named like weight_ih_l0 / weight_hh_l0 under any prefix"
        )
    choices = ", ".join(repr(m.prefix) for m in modules)
    if wanted is not None:
        key = wanted.rstrip(".")
        for m in modules:
            if m.prefix == key:
                return m
        raise CheckpointError(f"{source} has no LSTM module {wanted!r}; choose one of: {choices} (--module PREFIX)")
    if len(modules) > 1:
        opts = " or ".join(f"--module {m.prefix or repr('')}" for m in modules)
        raise CheckpointError(f"{source} holds {len(modules)} LSTMs ({choices}); pass {opts}")
    return modules[0]


def _fmt(shape) -> str:
    return "(" + ", ".join(str(d) for d in shape) + ("," if len(shape) == 1 else "") + ")"
