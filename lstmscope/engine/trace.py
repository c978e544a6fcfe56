"""Every time step of every layer and direction: h_t, c_t and the four gates, as numpy. torch.

``trace_lstm`` runs the stepwise engine (engine/stepwise.py) with its per-step capture, for every cell,
the standard one included: nn.LSTM's fused kernel hands back only ``output`` and ``(h_n, c_n)``. The
trace comes back as arrays, or block by block to a ``sink`` as the blocks are computed (a caller can
write them to a file at their place without holding the whole trace).
"""

from __future__ import annotations

from typing import Callable, Iterable

import numpy as np
import torch
from torch.nn.utils.rnn import pack_padded_sequence

from lstmscope.engine.fused import DTYPES, build_lstm, check_device, to_numpy
from lstmscope.engine.stepwise import MAX_BLOCK_STEPS, StepBlock
from lstmscope.errors import InputError, StateError, UsageError
from lstmscope.spec import LSTMSpec

QUANTITIES = ("h", "c", "i", "f", "g", "o")  # h_t, c_t, input / forget gate, candidate, output gate
DIRECTIONS = ("forward", "backward")  # index 0 and 1 of the trace's `direction`

# sink(layer, direction, quantity, start, block): block (batch, steps, width) is time steps start.. of
# (layer, direction, quantity), in input-time order; the sink owns it (a fresh array each call).
Sink = Callable[[int, int, str, int, np.ndarray], None]


def check_quantities(quantities: Iterable[str]) -> tuple[str, ...]:
    """The quantity names in the order given, once each; UsageError for an unknown one or none."""
    picked = tuple(dict.fromkeys(quantities))
    bad = [q for q in picked if q not in QUANTITIES]
    if bad or not picked:
        what = f"{', '.join(map(repr, bad))} is not a quantity lstmscope traces" if bad else "no quantity asked for"
        raise UsageError(f"{what}; pick from {','.join(QUANTITIES)} (e.g. --quantities h,c,f)")
    return picked


def quantity_width(spec: LSTMSpec, quantity: str) -> int:
    """h is proj_size wide on a projected LSTM; c and the gates are hidden_size wide."""
    return spec.output_size if quantity == "h" else spec.hidden_size


def trace_lstm(
    spec: LSTMSpec,
    params: dict[str, np.ndarray],
    data: np.ndarray,
    *,
    lengths: np.ndarray | None = None,
    h0: np.ndarray | None = None,
    c0: np.ndarray | None = None,
    dtype: str | None = None,
    device: str = "cpu",
    quantities: Iterable[str] = QUANTITIES,
    sink: Sink | None = None,
) -> dict[tuple[int, int, str], np.ndarray] | None:
    """Run ``data`` (batch, time, features) through the LSTM of ``spec`` and record every step.

    Quantities (``quantities`` picks which, from QUANTITIES): ``h`` (h_t, proj_size wide when projected,
    else hidden_size), ``c`` (c_t), and the gates after their activations ``i``, ``f``, ``g`` (the
    candidate, Keras's c~) and ``o`` (hidden_size wide). Direction 0 is forward, 1 backward.

    Time order: input-time order for every direction: step t is the state after reading ``x[t]``, for the
    backward direction too (its step 0 holds its final state). With ``spec.go_backwards`` (Keras) each
    sequence's own steps are reversed before the run, as the engine's runner does, and the trace is in that
    processing order, as Keras returns y: step t is the state after reading ``x[len - 1 - t]``.

    Padding: with ``lengths``, steps t >= lengths[b] are not computed as data; they hold NaN.

    ``h0``/``c0``: the initial state in PyTorch's layout, (num_layers * num_directions, batch, P) and
    (..., hidden); zeros when None. ``dtype`` defaults to the checkpoint's (bfloat16 traces come back as
    float32).

    Returns ``{(layer, direction, quantity): (batch, time, width)}``; or, with ``sink``, None, after
    calling ``sink(layer, direction, quantity, start, block)`` with each block (batch, steps, width) of
    time steps ``start..`` as it is made (the backward direction's blocks come last steps first; the
    padding steps after the longest sequence come last, as NaN blocks). Every step of every key is handed
    over exactly once.
    """
    picked = check_quantities(quantities)
    run_dtype = DTYPES[dtype or spec.dtype]
    check_device(device)
    data = np.asarray(data)
    if data.ndim != 3 or data.shape[2] != spec.input_size:
        raise InputError(f"the input has shape {data.shape}; the LSTM expects (batch, time, {spec.input_size})")
    batch, time, _ = data.shape
    lens = None
    if lengths is not None:
        lens = np.asarray(lengths, dtype=np.int64).reshape(-1)
        if lens.shape != (batch,) or lens.min(initial=1) < 1 or lens.max(initial=1) > time:
            raise InputError(f"lengths {lens.tolist()} must give one length in 1..{time} per sequence ({batch})")
        if (lens == time).all():
            lens = None  # every sequence runs every step
    if spec.go_backwards:
        from lstmscope.sequences import reverse_steps

        data = reverse_steps(data, lens)
    layers_dirs = spec.num_layers * spec.num_directions
    for name, state, width in (("h0", h0, spec.output_size), ("c0", c0, spec.hidden_size)):
        if state is not None and tuple(np.shape(state)) != (layers_dirs, batch, width):
            raise StateError(f"{name} has shape {tuple(np.shape(state))}; this LSTM needs ({layers_dirs}, {batch}, "
                             f"{width}) (num_layers * num_directions, batch, width)")
    if (h0 is None) != (c0 is None):
        raise StateError("give both h0 and c0, or neither")

    out: dict[tuple[int, int, str], np.ndarray] = {}
    if sink is None:
        def sink(layer: int, direction: int, quantity: str, start: int, block: np.ndarray) -> None:
            key = (layer, direction, quantity)
            if key not in out:
                out[key] = np.empty((batch, time, block.shape[2]), dtype=block.dtype)
            out[key][:, start:start + block.shape[1]] = block
        returns = True
    else:
        returns = False

    def capture(b: StepBlock) -> None:
        steps = b.h.shape[0]
        pad = None
        if lens is not None:
            pad = (b.start + np.arange(steps))[None, :] >= lens[:, None]  # (batch, steps): past the length
            if not pad.any():
                pad = None
        for q in picked:
            block = np.array(to_numpy(getattr(b, q).transpose(0, 1)), order="C")  # (batch, steps, width), a copy
            if pad is not None:
                block[pad] = np.nan
            sink(b.layer, b.direction, q, b.start, block)

    with torch.inference_mode():
        x = torch.from_numpy(np.ascontiguousarray(data)).to(device=device, dtype=run_dtype)  # (batch, time, features)
        hx = None
        if h0 is not None:
            hx = (torch.from_numpy(np.ascontiguousarray(h0)).to(device=device, dtype=run_dtype),
                  torch.from_numpy(np.ascontiguousarray(c0)).to(device=device, dtype=run_dtype))
        lstm = build_lstm(spec, params, run_dtype, device, stepwise=True)  # nn.LSTM hides the gates
        inp = x if lens is None else pack_padded_sequence(x, torch.from_numpy(lens), batch_first=True,
                                                          enforce_sorted=False)
        lstm(inp, hx, capture=capture)

    ran = time if lens is None else int(lens.max())  # a packed run stops at the longest sequence
    nan_dtype = np.float32 if run_dtype == torch.bfloat16 else np.dtype(str(run_dtype).removeprefix("torch."))
    for start in range(ran, time, MAX_BLOCK_STEPS):  # the steps no sequence reaches: padding
        steps = min(MAX_BLOCK_STEPS, time - start)
        for layer in range(spec.num_layers):
            for direction in range(spec.num_directions):
                for q in picked:
                    shape = (batch, steps, quantity_width(spec, q))
                    sink(layer, direction, q, start, np.full(shape, np.nan, nan_dtype))
    return out if returns else None
