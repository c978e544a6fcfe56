"""PyTorch's state_dict names: find ``nn.LSTM`` parameter groups (and ``nn.LSTMCell`` ones, through
lstmscope.readers.state_dict_cells) in a flat listing of keys and infer each one's LSTMSpec from shapes alone
(torch-free). Used by the torch and safetensors readers.
"""

from __future__ import annotations

import re
from typing import Mapping

from lstmscope.errors import CheckpointError
from lstmscope.readers.base import LSTMModule, TensorInfo, _fmt
from lstmscope.spec import LSTMSpec

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


def _is_optimizer_state(prefix: str) -> bool:
    return any(part in _OPTIMIZER_PARTS for part in prefix.split(".") if part)


def find_lstm_modules(tensors: Mapping[str, TensorInfo], source: str, skipped: list[str] | None = None, *,
                      kinds: dict[str, str] | None = None,
                      single_layers: list[LSTMModule] | None = None) -> list[LSTMModule]:
    """Every LSTM whose parameters appear in ``tensors`` under some prefix, in key order: ``nn.LSTM``
    groups (``weight_ih_l0``, ...) and ``nn.LSTMCell`` ones (``weight_ih``, ..., alone or stacked in a list;
    see lstmscope.readers.state_dict_cells), each as an nn.LSTM module.

    ``source`` names the file in error messages. Raises CheckpointError when a group of
    LSTM-named tensors is inconsistent; the message names the tensor and the expected shape.
    GRU and RNN groups (modules and cells) go to ``skipped``; ``kinds`` gets, for each, its gates in words
    ("3 gates (an nn.GRUCell)"); ``single_layers`` gets each cell of a stack of cells, alone.
    """
    from lstmscope.readers.state_dict_cells import find_lstm_cells

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
            if kinds is not None:
                kinds[prefix.rstrip(".")] = "3 gates or 1 (an nn.GRU or nn.RNN)"
            continue
        modules.append(_infer_module(prefix, names, tensors, source))
    modules += find_lstm_cells(tensors, source, _is_optimizer_state, skipped, kinds, single_layers)
    if len(modules) > 1:  # in key order, nn.LSTM and nn.LSTMCell modules alike
        order = {k: i for i, k in enumerate(tensors)}
        modules.sort(key=lambda m: min((order.get(k, len(order)) for k in m.source.values()), default=len(order)))
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
        raise CheckpointError(f"{where}: tensor '{prefix}weight_ih_l0' and the rest are {spec.dtype}; "
                              "an LSTM needs floating-point weights")
    name = prefix.rstrip(".")
    return LSTMModule(name=name, spec=spec, source={n: prefix + n for n in expected})


def other_recurrent_hint(kinds: dict[str, str]) -> str:
    """The "holds no LSTM" reason when recurrent cells (nn.GRUCell, nn.RNNCell) were found: "" when only
    nn.GRU / nn.RNN modules were (lstmscope.readers.base words those)."""
    if not any("Cell" in k for k in kinds.values()):
        return ""
    parts = [f"under {name or '(top level)'!r} {'have ' if i == 0 else ''}{what}"
             for i, (name, what) in enumerate(kinds.items())]
    return f"the recurrent weights {', '.join(parts)}, not an LSTM's 4"
