"""Independent pure-numpy (float64) reference implementation of torch.nn.LSTM.

Written directly from the documented equations; deliberately does not import torch.

For each layer ``l`` and direction ``d`` (gate order in the weights: i, f, g, o)::

    i  = sigmoid(W_ii x + b_ii + W_hi h + b_hi)
    f  = sigmoid(W_if x + b_if + W_hf h + b_hf)
    g  = tanh   (W_ig x + b_ig + W_hg h + b_hg)
    o  = sigmoid(W_io x + b_io + W_ho h + b_ho)
    c' = f * c + i * g
    h' = o * tanh(c')              (proj_size == 0)
    h' = W_hr @ (o * tanh(c'))     (proj_size > 0)
"""

from __future__ import annotations

import numpy as np

__all__ = ["lstm_reference"]


def _sigmoid(z: np.ndarray) -> np.ndarray:
    # Numerically stable logistic function.
    out = np.empty_like(z)
    pos = z >= 0
    out[pos] = 1.0 / (1.0 + np.exp(-z[pos]))
    ez = np.exp(z[~pos])
    out[~pos] = ez / (1.0 + ez)
    return out


def _get(params: dict, name: str):
    if name not in params:
        return None
    v = params[name]
    # Accept numpy arrays, python lists, or anything exposing __array__ (cast to float64).
    if hasattr(v, "detach"):  # tolerate tensors without importing torch
        v = v.detach().cpu().double().numpy()
    return np.asarray(v, dtype=np.float64)


def lstm_reference(
    params: dict[str, np.ndarray],
    x: np.ndarray,
    *,
    num_layers: int,
    bidirectional: bool,
    proj_size: int = 0,
    lengths=None,
    h0=None,
    c0=None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[np.ndarray]]:
    """params: PyTorch nn.LSTM state_dict names without prefix (weight_ih_l0, weight_hh_l0, bias_ih_l0, bias_hh_l0,
    weight_hr_l0, and *_reverse), any float dtype (cast to float64 inside); biases may be absent (bias=False).
    x: (B, T, F) batch-first. lengths: optional sequence of B ints (1..T); each sequence b only runs over its first
    lengths[b] steps, like a packed sequence: the forward direction's final state is taken at step lengths[b]-1, the
    backward direction starts at step lengths[b]-1 and ends at step 0, and output positions t >= lengths[b] are 0
    (as pad_packed_sequence gives).
    h0: (num_layers*D, B, proj_size or hidden) and c0: (num_layers*D, B, hidden), PyTorch's native layout, optional (zeros).
    Returns (output (B, T, D*H_out), h_n (L*D, B, H_out), c_n (L*D, B, H), layer_outputs: list of each layer's
    (B, T, D*H_out) output sequence), all float64. Index of layer l direction d in h_n is l*D + d."""
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 3:
        raise ValueError(f"x must be (B, T, F), got shape {x.shape}")
    if num_layers < 1:
        raise ValueError("num_layers must be >= 1")
    B, T, _ = x.shape
    D = 2 if bidirectional else 1

    w_hh0 = _get(params, "weight_hh_l0")
    if w_hh0 is None:
        raise KeyError("weight_hh_l0 missing from params")
    H = w_hh0.shape[0] // 4
    if proj_size and proj_size > 0:
        H_out = int(proj_size)
    else:
        proj_size = 0
        H_out = H

    if lengths is None:
        lens = np.full((B,), T, dtype=np.int64)
    else:
        lens = np.asarray(lengths, dtype=np.int64).reshape(-1)
        if lens.shape[0] != B:
            raise ValueError(f"lengths has {lens.shape[0]} entries for batch of {B}")
        if np.any(lens < 1) or np.any(lens > T):
            raise ValueError(f"lengths must lie in 1..{T}, got {lens.tolist()}")

    if h0 is None:
        h0 = np.zeros((num_layers * D, B, H_out), dtype=np.float64)
    else:
        h0 = np.asarray(h0, dtype=np.float64)
        if h0.shape != (num_layers * D, B, H_out):
            raise ValueError(f"h0 must have shape {(num_layers * D, B, H_out)}, got {h0.shape}")
    if c0 is None:
        c0 = np.zeros((num_layers * D, B, H), dtype=np.float64)
    else:
        c0 = np.asarray(c0, dtype=np.float64)
        if c0.shape != (num_layers * D, B, H):
            raise ValueError(f"c0 must have shape {(num_layers * D, B, H)}, got {c0.shape}")

    # valid[b, t] is True for steps that sequence b actually runs.
    valid = np.arange(T)[None, :] < lens[:, None]  # (B, T)

    h_n = np.zeros((num_layers * D, B, H_out), dtype=np.float64)
    c_n = np.zeros((num_layers * D, B, H), dtype=np.float64)
    layer_outputs: list[np.ndarray] = []

    layer_in = x
    for layer in range(num_layers):
        dir_outputs = []
        for d in range(D):
            sfx = f"_l{layer}" + ("_reverse" if d == 1 else "")
            w_ih = _get(params, "weight_ih" + sfx)
            w_hh = _get(params, "weight_hh" + sfx)
            if w_ih is None or w_hh is None:
                raise KeyError(f"weight_ih{sfx} / weight_hh{sfx} missing from params")
            if w_ih.shape != (4 * H, layer_in.shape[2]):
                raise ValueError(f"weight_ih{sfx} has shape {w_ih.shape}, expected {(4 * H, layer_in.shape[2])}")
            if w_hh.shape != (4 * H, H_out):
                raise ValueError(f"weight_hh{sfx} has shape {w_hh.shape}, expected {(4 * H, H_out)}")
            b_ih = _get(params, "bias_ih" + sfx)
            b_hh = _get(params, "bias_hh" + sfx)
            bias = np.zeros((4 * H,), dtype=np.float64)
            if b_ih is not None:
                bias = bias + b_ih
            if b_hh is not None:
                bias = bias + b_hh
            w_hr = None
            if proj_size:
                w_hr = _get(params, "weight_hr" + sfx)
                if w_hr is None:
                    raise KeyError(f"weight_hr{sfx} missing from params (proj_size={proj_size})")
                if w_hr.shape != (H_out, H):
                    raise ValueError(f"weight_hr{sfx} has shape {w_hr.shape}, expected {(H_out, H)}")

            idx = layer * D + d
            h = h0[idx].copy()  # (B, H_out)
            c = c0[idx].copy()  # (B, H)
            out = np.zeros((B, T, H_out), dtype=np.float64)
            steps = range(T) if d == 0 else range(T - 1, -1, -1)
            for t in steps:
                m = valid[:, t]  # which sequences run this step
                if not m.any():
                    continue
                xt = layer_in[:, t, :]  # (B, F)
                gates = xt @ w_ih.T + h @ w_hh.T + bias  # (B, 4H)
                i = _sigmoid(gates[:, 0 * H : 1 * H])
                f = _sigmoid(gates[:, 1 * H : 2 * H])
                g = np.tanh(gates[:, 2 * H : 3 * H])
                o = _sigmoid(gates[:, 3 * H : 4 * H])
                c_new = f * c + i * g
                h_new = o * np.tanh(c_new)
                if w_hr is not None:
                    h_new = h_new @ w_hr.T
                # Sequences that have ended (forward) or not yet started (backward) keep their state.
                c = np.where(m[:, None], c_new, c)
                h = np.where(m[:, None], h_new, h)
                out[m, t, :] = h_new[m]
            h_n[idx] = h
            c_n[idx] = c
            dir_outputs.append(out)
        layer_out = np.concatenate(dir_outputs, axis=2) if D == 2 else dir_outputs[0]
        layer_outputs.append(layer_out)
        layer_in = layer_out

    return layer_outputs[-1].copy(), h_n, c_n, layer_outputs
