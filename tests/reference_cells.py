"""Independent pure-numpy (float64) reference for LSTM cells with any activation (no torch, no lstmscope).

The same equations as reference.py's ``lstm_reference``, with the two activations as parameters
(gate order in the weights: i, f, g, o)::

    i  = gate_act(W_ii x + b_ii + W_hi h + b_hi)
    f  = gate_act(W_if x + b_if + W_hf h + b_hf)
    g  = cell_act(W_ig x + b_ig + W_hg h + b_hg)
    o  = gate_act(W_io x + b_io + W_ho h + b_ho)
    c' = f * c + i * g
    h' = o * cell_act(c')              (proj_size == 0)
    h' = W_hr @ (o * cell_act(c'))     (proj_size > 0)

Activations are written from the formulas in the comment above lstmscope.spec.ACTIVATION_PARAMS (Keras
names; alpha/beta as ONNX's activation_alpha/activation_beta; selu with Keras's constants).

ONNX's cell, from the operator's equations (P peepholes, given as ``weight_peephole_l{k}[_reverse]`` (3H,)
in the order i, f, o; ``hidden_activation`` h, by default the cell activation; clip(z) = min(max(z, -clip),
clip) on every gate pre-activation when ``clip`` is given, the identity otherwise)::

    i  = gate_act(clip(W_ii x + b_ii + W_hi h + b_hi + P_i * c))
    f  = gate_act(clip(W_if x + b_if + W_hf h + b_hf + P_f * c))     input_forget: f = 1 - i
    g  = cell_act(clip(W_ig x + b_ig + W_hg h + b_hg))
    c' = f * c + i * g
    o  = gate_act(clip(W_io x + b_io + W_ho h + b_ho + P_o * c'))    (the new c')
    h' = o * hidden_act(c')
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["activation", "lstm_reference_cells", "lstm_reference_trace"]

SELU_ALPHA = 1.67326324
SELU_SCALE = 1.05070098

_erf = np.vectorize(math.erf, otypes=[np.float64])


def _sigmoid(z):
    return np.where(z >= 0, 1.0 / (1.0 + np.exp(-np.abs(z))), np.exp(-np.abs(z)) / (1.0 + np.exp(-np.abs(z))))


def _elu(z, alpha):
    return np.where(z > 0, z, alpha * np.expm1(np.minimum(z, 0.0)))


def activation(name: str, alpha: float | None = None, beta: float | None = None):
    """The float64 function ``name`` with its parameters, from spec.py's formulas."""
    table = {
        "sigmoid": _sigmoid,
        "tanh": np.tanh,
        "relu": lambda z: np.maximum(z, 0.0),
        "linear": lambda z: z,
        "hard_sigmoid": lambda z: np.clip(alpha * z + beta, 0.0, 1.0),
        "elu": lambda z: _elu(z, alpha),
        "selu": lambda z: SELU_SCALE * _elu(z, SELU_ALPHA),
        "softsign": lambda z: z / (1.0 + np.abs(z)),
        "softplus": lambda z: np.logaddexp(0.0, z),  # log(1 + e^z) without overflow
        "exponential": np.exp,
        "swish": lambda z: z * _sigmoid(z),
        "gelu": lambda z: 0.5 * z * (1.0 + _erf(z / math.sqrt(2.0))),
        "relu6": lambda z: np.clip(z, 0.0, 6.0),
        "leaky_relu": lambda z: np.where(z >= 0, z, alpha * z),
        "thresholded_relu": lambda z: np.where(z > alpha, z, 0.0),
        "scaled_tanh": lambda z: alpha * np.tanh(beta * z),
        "affine": lambda z: alpha * z + beta,
    }
    fn = table[name]
    return lambda z: fn(np.asarray(z, dtype=np.float64))


def _as_fn(act):
    """An activation given as a name, a (name, alpha, beta) tuple, or anything with .name/.alpha/.beta."""
    if isinstance(act, str):
        return activation(act)
    if isinstance(act, tuple):
        return activation(*act)
    return activation(act.name, act.alpha, act.beta)


def _f64(v):
    if v is None:
        return None
    if hasattr(v, "detach"):  # a torch tensor, without importing torch
        v = v.detach().cpu().double().numpy()
    return np.asarray(v, dtype=np.float64)


def lstm_reference_cells(params: dict, x, *, num_layers: int, bidirectional: bool, proj_size: int = 0,
                         lengths=None, h0=None, c0=None, gate_activation="sigmoid", cell_activation="tanh",
                         hidden_activation=None, clip=None, input_forget=False):
    """Like ``reference.lstm_reference`` (same arguments, same conventions for lengths, h0/c0 and the
    results), with ``gate_activation`` (i, f, o) and ``cell_activation`` (g and the output's act(c)), and
    ONNX's cell: ``hidden_activation`` (the output's act(c) when given), ``clip``, ``input_forget`` and
    peepholes (any ``weight_peephole_*`` in ``params``), as in the module docstring.

    x: (B, T, F) batch-first. Returns (output (B, T, D*H_out), h_n (L*D, B, H_out), c_n (L*D, B, H),
    layer_outputs), float64; output is 0 where t >= lengths[b]."""
    x = np.asarray(x, dtype=np.float64)
    B, T, _ = x.shape
    D = 2 if bidirectional else 1
    trace = lstm_reference_trace(params, x, num_layers=num_layers, bidirectional=bidirectional,
                                 proj_size=proj_size, lengths=lengths, h0=h0, c0=c0,
                                 gate_activation=gate_activation, cell_activation=cell_activation,
                                 hidden_activation=hidden_activation, clip=clip, input_forget=input_forget)
    lens = np.full(B, T) if lengths is None else np.asarray(lengths, dtype=np.int64).reshape(B)
    rows = np.arange(B)
    h_n, c_n, layer_outputs = [], [], []
    for layer in range(num_layers):
        for d in range(D):  # the state after the last step a direction ran: len-1 forward, 0 backward
            t = lens - 1 if d == 0 else np.zeros(B, dtype=np.int64)
            h_n.append(trace[(layer, d, "h")][rows, t])
            c_n.append(trace[(layer, d, "c")][rows, t])
        out = np.concatenate([trace[(layer, d, "h")] for d in range(D)], axis=2)
        layer_outputs.append(np.nan_to_num(out, nan=0.0))  # padding steps give 0, as nn.LSTM's output
    return layer_outputs[-1].copy(), np.stack(h_n), np.stack(c_n), layer_outputs


def lstm_reference_trace(params: dict, x, *, num_layers: int, bidirectional: bool, proj_size: int = 0,
                         lengths=None, h0=None, c0=None, gate_activation="sigmoid", cell_activation="tanh",
                         hidden_activation=None, clip=None, input_forget=False):
    """Every step of every layer and direction, from the equations above (the same arguments and
    conventions as ``lstm_reference_cells``).

    Returns ``{(layer, direction, quantity): (B, T, width)}`` float64 for quantity in h, c, i, f, g, o (gates
    after their activations; h of width proj_size when projected, else H), in input-time order: step t is
    the state after reading x[t], for the backward direction (1) too. Steps t >= lengths[b] are NaN."""
    gate, cell = _as_fn(gate_activation), _as_fn(cell_activation)
    out_act = cell if hidden_activation is None else _as_fn(hidden_activation)
    cut = (lambda z: z) if clip is None else (lambda z: np.minimum(np.maximum(z, -float(clip)), float(clip)))
    x = np.asarray(x, dtype=np.float64)
    B, T, _ = x.shape
    D = 2 if bidirectional else 1
    H = _f64(params["weight_hh_l0"]).shape[0] // 4
    P = proj_size or H
    lens = np.full(B, T) if lengths is None else np.asarray(lengths, dtype=np.int64).reshape(B)
    h0 = np.zeros((num_layers * D, B, P)) if h0 is None else _f64(h0)
    c0 = np.zeros((num_layers * D, B, H)) if c0 is None else _f64(c0)
    trace = {}
    inp = x
    for layer in range(num_layers):
        outs = []
        for d in range(D):
            sfx = f"_l{layer}" + ("_reverse" if d else "")
            w_ih, w_hh = _f64(params["weight_ih" + sfx]), _f64(params["weight_hh" + sfx])
            b = sum((_f64(params[n]) for n in ("bias_ih" + sfx, "bias_hh" + sfx) if n in params), np.zeros(4 * H))
            w_hr = _f64(params["weight_hr" + sfx]) if proj_size else None
            peep = _f64(params["weight_peephole" + sfx]) if "weight_peephole" + sfx in params else np.zeros(3 * H)
            p_i, p_f, p_o = peep[:H], peep[H:2 * H], peep[2 * H:]
            k = layer * D + d
            rec = {q: np.full((B, T, P if q == "h" else H), np.nan) for q in "hcifgo"}
            for bi in range(B):
                h, c = h0[k, bi].copy(), c0[k, bi].copy()
                n = int(lens[bi])
                for t in (range(n) if d == 0 else range(n - 1, -1, -1)):
                    z = w_ih @ inp[bi, t] + w_hh @ h + b
                    i = gate(cut(z[:H] + p_i * c))
                    f = 1.0 - i if input_forget else gate(cut(z[H:2 * H] + p_f * c))
                    g = cell(cut(z[2 * H:3 * H]))
                    c = f * c + i * g
                    o = gate(cut(z[3 * H:] + p_o * c))
                    h = o * out_act(c)
                    if w_hr is not None:
                        h = w_hr @ h
                    for q, v in zip("hcifgo", (h, c, i, f, g, o)):
                        rec[q][bi, t] = v
            for q, v in rec.items():
                trace[(layer, d, q)] = v
            outs.append(rec["h"])  # the next layer reads each sequence's own steps only
        inp = np.concatenate(outs, axis=2)
    return trace
