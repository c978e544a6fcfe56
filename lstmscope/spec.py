"""LSTMSpec: what one LSTM is, its shapes and its cell. Torch-free, format-free.

Readers (lstmscope.readers) build it from a file; engines, snapshots, JSON and tables take it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping


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
FRAMEWORKS = ("pytorch", "keras", "onnx")  # whose terms the relation between state and output is shown in


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
    # ONNX's cell features (nn.LSTM and Keras have none of them; any of them set runs on the stepwise engine):
    peephole: bool = False  # peephole weights weight_peephole_l{k} (3H,), order (i, f, o): i and f add
    #                         p * c_{t-1} to their pre-activation, o adds p * c_t (the new cell state)
    clip: float | None = None  # cell clip: every gate pre-activation (i, f, o and the candidate's, after
    #                            bias and peephole) clamped to [-clip, clip] before its activation; not c
    input_forget: bool = False  # coupled input and forget gates: f = 1 - i (f's weights are unused)
    hidden_activation: Activation | None = None  # act in h = o * act(c) where it differs from cell_activation
    #                                              (ONNX's third activation, "h"); None: cell_activation

    @property
    def num_directions(self) -> int:
        return 2 if self.bidirectional else 1

    @property
    def output_size(self) -> int:
        """Width of h (and of each direction's slice of ``output``): P if projected, else H."""
        return self.proj_size or self.hidden_size

    @property
    def output_activation(self) -> Activation:
        """The activation of c in h = o * act(c): ``hidden_activation`` if set, else ``cell_activation``."""
        return self.cell_activation if self.hidden_activation is None else self.hidden_activation

    @property
    def standard_cell(self) -> bool:
        """True when ``nn.LSTM`` computes this cell exactly (sigmoid gates, tanh cell and output, no peepholes,
        clip or coupled gates); other cells run on the stepwise engine."""
        return (self.gate_activation == SIGMOID and self.cell_activation == TANH and self.output_activation == TANH
                and not self.peephole and self.clip is None and not self.input_forget)

    def layer_input_size(self, layer: int) -> int:
        return self.input_size if layer == 0 else self.output_size * self.num_directions

    def describe_cell(self) -> str:
        """"sigmoid gates, tanh cell" and the like ("..., relu output, peepholes, clip 3, coupled input and
        forget gates" for ONNX's features), for headers and tables."""
        parts = [f"{self.gate_activation} gates", f"{self.cell_activation} cell"]
        if self.output_activation != self.cell_activation:
            parts.append(f"{self.output_activation} output")
        if self.peephole:
            parts.append("peepholes")
        if self.clip is not None:
            parts.append(f"clip {_num(self.clip)}")
        if self.input_forget:
            parts.append("coupled input and forget gates")
        return ", ".join(parts)

    def to_dict(self) -> dict:
        """Every field, JSON-ready (the one place the configuration is written out). ONNX's cell features
        (peephole, clip, input_forget, hidden_activation) are written only when set, so the documents and
        metadata of every other cell stay as they were; :meth:`from_dict` reads their absence as the defaults."""
        out = {
            "input_size": self.input_size, "hidden_size": self.hidden_size, "proj_size": self.proj_size,
            "num_layers": self.num_layers, "bidirectional": self.bidirectional,
            "num_directions": self.num_directions, "bias": self.bias, "dtype": self.dtype,
            "gate_activation": self.gate_activation.to_dict(), "cell_activation": self.cell_activation.to_dict(),
            "go_backwards": self.go_backwards, "bias_layout": self.bias_layout, "framework": self.framework,
            "names": list(self.names),
        }
        if self.peephole:
            out["peephole"] = True
        if self.clip is not None:
            out["clip"] = self.clip
        if self.input_forget:
            out["input_forget"] = True
        if self.hidden_activation is not None:
            out["hidden_activation"] = self.hidden_activation.to_dict()
        return out

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
            peephole=bool(d.get("peephole", False)), clip=_opt_float(d.get("clip")),
            input_forget=bool(d.get("input_forget", False)),
            hidden_activation=(None if d.get("hidden_activation") is None
                               else Activation.from_dict(d["hidden_activation"])),
        )

    def expected_shapes(self) -> dict[str, tuple[int, ...]]:
        """Every parameter ``nn.LSTM`` would hold, with its shape, keyed as in its state_dict.

        This is also the canonical layout every reader hands parameters over in (gate order i, f, g, o), plus
        ``weight_peephole_l{k}`` (3H,) in the order (i, f, o) when the cell has peepholes (ONNX's P is (i, o,
        f): its reader reorders)."""
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
                if self.peephole:
                    out[f"weight_peephole_{k}"] = (3 * h,)
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
