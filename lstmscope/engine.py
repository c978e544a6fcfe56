"""Run an LSTM with torch and hand back numpy results.

Two ways to run the same stack:
  * fused: one ``nn.LSTM`` over all layers, as a user would write it;
  * layer by layer (``all_layers=True``): one single-layer ``nn.LSTM`` per layer, so every layer's
    output sequence exists and can be checked against that layer's h_n / c_n.
Both accept packed variable-length batches and an initial (h0, c0) in PyTorch's native layout.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from lstmscope.errors import UsageError
from lstmscope.spec import LSTMSpec

DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32, "float64": torch.float64}


@dataclass
class RunResult:
    """What ``nn.LSTM`` returned, as numpy arrays (bfloat16 runs are widened to float32 here)."""

    output: np.ndarray  # (batch, time, num_directions * out) - the last layer at every step, batch-first
    h_n: np.ndarray  # (num_layers * num_directions, batch, out) - every layer at its last step
    c_n: np.ndarray  # (num_layers * num_directions, batch, hidden)
    layer_outputs: list[np.ndarray] | None  # with all_layers: each layer's (batch, time, D * out) output
    dtype: str  # the dtype the LSTM ran in


def build_lstm(spec: LSTMSpec, params: dict[str, torch.Tensor], dtype: torch.dtype, device: str = "cpu",
               *, num_layers: int | None = None, input_size: int | None = None) -> nn.LSTM:
    """An ``nn.LSTM`` made on the meta device and given ``params`` without a copy (``assign=True``)."""
    with torch.device("meta"):
        lstm = nn.LSTM(
            input_size=input_size or spec.input_size,
            hidden_size=spec.hidden_size,
            num_layers=num_layers or spec.num_layers,
            bias=spec.bias,
            batch_first=True,
            bidirectional=spec.bidirectional,
            proj_size=spec.proj_size,
        )
    state = {k: v.to(device=device, dtype=dtype) for k, v in params.items()}
    lstm.load_state_dict(state, strict=True, assign=True)
    return lstm.eval()


def _forward(lstm: nn.LSTM, x: torch.Tensor, lengths: torch.Tensor | None, hx):
    """Run ``lstm`` (batch_first) on padded ``x``; with lengths, as a packed batch in original order."""
    with warnings.catch_warnings():
        # "LSTM with projections is not supported with oneDNN": torch falls back by itself.
        warnings.filterwarnings("ignore", message=".*not supported with oneDNN.*")
        if lengths is None:
            return lstm(x, hx)
        packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        out, (h, c) = lstm(packed, hx)
        out, _ = pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])
        return out, (h, c)


def _to_numpy(t: torch.Tensor) -> np.ndarray:
    t = t.detach()
    if t.dtype == torch.bfloat16:
        t = t.float()
    return t.cpu().numpy()


def run_lstm(
    spec: LSTMSpec,
    params: dict[str, torch.Tensor],
    data: np.ndarray,
    *,
    lengths: np.ndarray | None = None,
    dtype: str | None = None,
    all_layers: bool = False,
    h0: np.ndarray | None = None,
    c0: np.ndarray | None = None,
    device: str = "cpu",
) -> RunResult:
    """Run ``data`` (batch, time, features) through the LSTM described by ``spec``.

    ``dtype`` defaults to the checkpoint's. ``h0``/``c0`` are in PyTorch's native layout,
    (num_layers * num_directions, batch, out) and (..., hidden).
    """
    run_dtype = DTYPES[dtype or spec.dtype]
    if device != "cpu" and not torch.cuda.is_available():
        raise UsageError(f"--device {device} was asked for but torch sees no CUDA device; use --device cpu")
    with torch.inference_mode():
        x = torch.from_numpy(data).to(device=device, dtype=run_dtype)  # (batch, time, features)
        lens = None if lengths is None else torch.from_numpy(np.asarray(lengths, dtype=np.int64))
        hx = None
        if h0 is not None:
            hx = (torch.from_numpy(np.ascontiguousarray(h0)).to(device=device, dtype=run_dtype),
                  torch.from_numpy(np.ascontiguousarray(c0)).to(device=device, dtype=run_dtype))
        if not all_layers:
            lstm = build_lstm(spec, params, run_dtype, device)
            out, (h, c) = _forward(lstm, x, lens, hx)
            return RunResult(_to_numpy(out), _to_numpy(h), _to_numpy(c), None, str(run_dtype).removeprefix("torch."))
        d = spec.num_directions
        layer_out, hs, cs, outs = x, [], [], []
        for layer in range(spec.num_layers):
            sub = {}
            for name, t in params.items():
                kind, _, rest = name.rpartition("_l")
                num, _, suffix = rest.partition("_")
                if int(num) == layer:
                    sub[f"{kind}_l0{'_' + suffix if suffix else ''}"] = t
            lstm = build_lstm(spec, sub, run_dtype, device, num_layers=1, input_size=spec.layer_input_size(layer))
            sub_hx = None if hx is None else (hx[0][layer * d:(layer + 1) * d], hx[1][layer * d:(layer + 1) * d])
            layer_out, (h, c) = _forward(lstm, layer_out, lens, sub_hx)
            hs.append(h)
            cs.append(c)
            outs.append(_to_numpy(layer_out))
        return RunResult(outs[-1], _to_numpy(torch.cat(hs)), _to_numpy(torch.cat(cs)), outs,
                         str(run_dtype).removeprefix("torch."))
