"""Every time step of every layer and direction: h_t, c_t and the four gates, as numpy. torch.

Both functions run the stepwise engine (engine/stepwise.py) with its per-step capture, for every cell,
the standard one included: nn.LSTM's fused kernel hands back only ``output`` and ``(h_n, c_n)``.

* ``trace_lstm`` runs the whole input at once (the stack as one StepwiseLSTM, both directions of a layer
  together, varying lengths packed): the fast path. The trace comes back as arrays, or block by block to
  a ``sink`` as the blocks are computed.
* ``stream_trace`` runs a long input a chunk of time steps at a time, in memory that does not grow with
  the time axis: layer by layer and direction by direction, each direction over the chunks in its own
  processing order (the backward one reads each sequence's own steps reversed), carrying (h, c) from chunk
  to chunk; a layer's output goes to temporary files that the next layer reads. Steps past a sequence's
  length are run on the padding and then masked (NaN), never packed: a forward step never reads a later
  one, and a reversed sequence has its valid steps first, so masking gives what packing would.

The sink: ``sink(layer, direction, quantity, start, block, flipped)``, block (batch, steps, width). With
``flipped`` False row s is input time step ``start + s``; with ``flipped`` True the block is in the
direction's processing order with each sequence's own steps reversed: row s of sequence b is input step
``lengths[b] - 1 - (start + s)`` while ``start + s < lengths[b]``, and padding rows stay where they are
(``snapshot.SnapshotWriter.put_reversed_steps`` writes such a block in input-time order).
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import replace
from typing import Callable, Iterable

import numpy as np
import torch
from torch.nn.utils.rnn import pack_padded_sequence

from lstmscope.engine.fused import DTYPES, build_lstm, check_device, layer_params, to_numpy
from lstmscope.engine.stepwise import MAX_BLOCK_STEPS, StepBlock
from lstmscope.errors import InputError, StateError, UsageError
from lstmscope.sequences import unflip_pieces
from lstmscope.spec import LSTMSpec

QUANTITIES = ("h", "c", "i", "f", "g", "o")  # h_t, c_t, input / forget gate, candidate, output gate
DIRECTIONS = ("forward", "backward")  # index 0 and 1 of the trace's `direction`

# sink(layer, direction, quantity, start, block, flipped): block (batch, steps, width) holds steps start.. of
# (layer, direction, quantity), in input-time order or, when flipped, reversed per sequence (module docstring);
# the sink owns it (a fresh array each call).
Sink = Callable[[int, int, str, int, np.ndarray, bool], None]
Progress = Callable[[int, int], None]  # (steps done, steps in all), over every layer and direction


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


def _check_run(spec: LSTMSpec, batch: int, time: int, lengths, h0, c0) -> np.ndarray | None:
    """Check lengths and the initial state against the run; the lengths (None when every sequence runs
    every step)."""
    lens = None
    if lengths is not None:
        lens = np.asarray(lengths, dtype=np.int64).reshape(-1)
        if lens.shape != (batch,) or lens.min(initial=1) < 1 or lens.max(initial=1) > time:
            raise InputError(f"lengths {lens.tolist()} must give one length in 1..{time} per sequence ({batch})")
        if (lens == time).all():
            lens = None  # every sequence runs every step
    layers_dirs = spec.num_layers * spec.num_directions
    for name, state, width in (("h0", h0, spec.output_size), ("c0", c0, spec.hidden_size)):
        if state is not None and tuple(np.shape(state)) != (layers_dirs, batch, width):
            raise StateError(f"{name} has shape {tuple(np.shape(state))}; this LSTM needs ({layers_dirs}, {batch}, "
                             f"{width}) (num_layers * num_directions, batch, width)")
    if (h0 is None) != (c0 is None):
        raise StateError("give both h0 and c0, or neither")
    return lens


def _collector(spec: LSTMSpec, batch: int, time: int, lens: np.ndarray | None, out: dict) -> Sink:
    """A sink filling ``out`` with whole (batch, time, width) arrays: input-time order for every direction,
    except that a go_backwards module's stay in its processing order (as Keras returns y)."""
    full = lens if lens is not None else np.full(batch, time, dtype=np.int64)

    def sink(layer: int, direction: int, quantity: str, start: int, block: np.ndarray, flipped: bool) -> None:
        key = (layer, direction, quantity)
        if key not in out:
            out[key] = np.empty((batch, time, block.shape[2]), dtype=block.dtype)
        arr, n = out[key], block.shape[1]
        if flipped == spec.go_backwards:
            arr[:, start:start + n] = block
            return
        for b in range(batch):  # un-reverse each sequence's valid steps (see the module docstring)
            for lo, hi, at, rev in unflip_pieces(full[b], start, n):
                arr[b, at:at + hi - lo] = block[b, lo:hi][::-1] if rev else block[b, lo:hi]
    return sink


def _capture_to(sink: Sink, picked: tuple[str, ...], lens: np.ndarray | None, *, layer: int | None = None,
                direction: int | None = None, offset: int = 0, flipped=lambda direction: False,
                progress: Callable[[int], None] | None = None):
    """A StepwiseLSTM capture handing each StepBlock's quantities to ``sink`` as numpy, with the steps past
    each sequence's length set to NaN. ``layer``/``direction`` replace the block's own (for a one-layer,
    one-direction module running a part of the stack), ``offset`` is added to its start (a chunk's first
    step), ``flipped(direction)`` says whether that direction's blocks are reversed per sequence."""

    def capture(b: StepBlock) -> None:
        steps, start = b.h.shape[0], offset + b.start
        pad = None
        if lens is not None:
            pad = (start + np.arange(steps))[None, :] >= lens[:, None]  # (batch, steps): past the length
            if not pad.any():
                pad = None
        lay = b.layer if layer is None else layer
        d = b.direction if direction is None else direction
        for q in picked:
            block = _owned(getattr(b, q).transpose(0, 1))  # (batch, steps, width)
            if pad is not None:
                block[pad] = np.nan
            sink(lay, d, q, start, block, flipped(d))
        if progress is not None:
            progress(steps)
    return capture


def _owned(t: torch.Tensor) -> np.ndarray:
    """A C-ordered numpy copy of ``t`` that the caller owns, made by torch (its copy uses every thread)."""
    if t.dtype == torch.bfloat16:
        t = t.float()  # a copy already
    elif t.is_contiguous():
        t = t.clone()
    else:
        t = t.contiguous()
    return t.cpu().numpy()


def _nan_dtype(run_dtype: torch.dtype) -> np.dtype:
    return np.dtype(np.float32) if run_dtype == torch.bfloat16 else np.dtype(str(run_dtype).removeprefix("torch."))


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
    progress: Progress | None = None,
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
    calling the sink (module docstring) with each block as it is made: here every block is in input-time
    order (flipped False) except a go_backwards module's (flipped True); the backward direction's blocks
    come last steps first, and the padding steps after the longest sequence come last, as NaN blocks.
    Every step of every key is handed over exactly once. ``progress(done, total)`` counts steps over every
    layer and direction.
    """
    picked = check_quantities(quantities)
    run_dtype = DTYPES[dtype or spec.dtype]
    check_device(device)
    data = np.asarray(data)
    if data.ndim != 3 or data.shape[2] != spec.input_size:
        raise InputError(f"the input has shape {data.shape}; the LSTM expects (batch, time, {spec.input_size})")
    batch, time, _ = data.shape
    lens = _check_run(spec, batch, time, lengths, h0, c0)
    if spec.go_backwards:
        from lstmscope.sequences import reverse_steps

        data = reverse_steps(data, lens)
    out: dict[tuple[int, int, str], np.ndarray] = {}
    returns = sink is None
    if sink is None:
        sink = _collector(spec, batch, time, lens, out)
    total = time * spec.num_layers * spec.num_directions
    done = [0]

    def tick(n: int) -> None:
        done[0] += n
        progress(done[0], total)

    with torch.inference_mode():
        x = torch.from_numpy(np.ascontiguousarray(data)).to(device=device, dtype=run_dtype)  # (batch, time, features)
        hx = None
        if h0 is not None:
            hx = (torch.from_numpy(np.ascontiguousarray(h0)).to(device=device, dtype=run_dtype),
                  torch.from_numpy(np.ascontiguousarray(c0)).to(device=device, dtype=run_dtype))
        lstm = build_lstm(spec, params, run_dtype, device, stepwise=True)  # nn.LSTM hides the gates
        inp = x if lens is None else pack_padded_sequence(x, torch.from_numpy(lens), batch_first=True,
                                                          enforce_sorted=False)
        lstm(inp, hx, capture=_capture_to(sink, picked, lens, flipped=lambda d: spec.go_backwards,
                                          progress=None if progress is None else tick))

    ran = time if lens is None else int(lens.max())  # a packed run stops at the longest sequence
    for start in range(ran, time, MAX_BLOCK_STEPS):  # the steps no sequence reaches: padding
        steps = min(MAX_BLOCK_STEPS, time - start)
        for layer in range(spec.num_layers):
            for direction in range(spec.num_directions):
                for q in picked:
                    shape = (batch, steps, quantity_width(spec, q))
                    sink(layer, direction, q, start, np.full(shape, np.nan, _nan_dtype(run_dtype)), spec.go_backwards)
                if progress is not None:
                    tick(steps)
    return out if returns else None


class _StepFile:
    """One direction of one layer's output, (batch, time, width) in input-time order, in a temporary file:
    written a block at a time (a reversed block per sequence), read a chunk of steps at a time."""

    def __init__(self, directory: str, batch: int, time: int, width: int, dtype: np.dtype):
        self.batch, self.time, self.width, self.dtype = batch, time, width, np.dtype(dtype)
        self.step = width * self.dtype.itemsize  # bytes per (sequence, step)
        fd, self.path = tempfile.mkstemp(prefix="layer-", suffix=".bin", dir=directory)
        self.f = os.fdopen(fd, "w+b")
        self.f.truncate(batch * time * self.step)

    def _at(self, b: int, t: int) -> int:
        return (b * self.time + t) * self.step

    def write(self, start: int, block: np.ndarray, flipped: bool, lens: np.ndarray) -> None:
        """Steps start.. of every sequence (``block`` (batch, n, width)); flipped as a sink's block."""
        block = np.ascontiguousarray(block, dtype=self.dtype)
        n = block.shape[1]
        for b in range(self.batch):
            if not flipped:
                os.pwrite(self.f.fileno(), block[b].data, self._at(b, start))
                continue
            for lo, hi, at, rev in unflip_pieces(lens[b], start, n):
                piece = np.ascontiguousarray(block[b, lo:hi][::-1] if rev else block[b, lo:hi])
                os.pwrite(self.f.fileno(), piece.data, self._at(b, at))

    def read(self, start: int, stop: int) -> np.ndarray:
        out = np.empty((self.batch, stop - start, self.width), dtype=self.dtype)
        for b in range(self.batch):
            view = memoryview(out[b]).cast("B")
            if os.preadv(self.f.fileno(), [view], self._at(b, start)) != len(view):
                raise OSError(f"short read from temporary file {self.path}")
        return out

    def close(self) -> None:
        if not self.f.closed:
            self.f.close()


def stream_trace(
    spec: LSTMSpec,
    params: dict[str, np.ndarray],
    read_steps: Callable[[int, int], np.ndarray],
    *,
    batch: int,
    time: int,
    chunk_size: int,
    sink: Sink,
    lengths: np.ndarray | None = None,
    h0: np.ndarray | None = None,
    c0: np.ndarray | None = None,
    dtype: str | None = None,
    device: str = "cpu",
    quantities: Iterable[str] = QUANTITIES,
    tmp_dir: str | None = None,
    progress: Progress | None = None,
) -> None:
    """``trace_lstm``'s trace of the input that ``read_steps(start, stop)`` reads ((batch, n, features) in
    input-time order), ``chunk_size`` steps at a time (module docstring), to ``sink``. The backward direction's
    blocks, and a go_backwards module's, are flipped; the blocks of a direction come in its processing order.
    Layers after the first read the previous layer's output from temporary files in ``tmp_dir`` (default:
    $TMPDIR), removed afterwards, also on failure or Ctrl-C."""
    picked = check_quantities(quantities)
    run_dtype = DTYPES[dtype or spec.dtype]
    check_device(device)
    if chunk_size < 1:
        raise UsageError(f"chunk size {chunk_size}: give a positive number of time steps")
    lens = _check_run(spec, batch, time, lengths, h0, c0)
    full = lens if lens is not None else np.full(batch, time, dtype=np.int64)
    d, nl, p = spec.num_directions, spec.num_layers, spec.output_size
    np_dtype = _nan_dtype(run_dtype)
    chunks = [(s, min(s + chunk_size, time)) for s in range(0, time, chunk_size)]
    total, done = time * nl * d, [0]

    def tensor(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(a)).to(device=device, dtype=run_dtype)

    def flipped(direction: int) -> bool:
        return (direction == 1) != spec.go_backwards

    from lstmscope.sequences import reversed_reader

    with tempfile.TemporaryDirectory(prefix="lstmscope-trace-", dir=tmp_dir) as tmp, torch.inference_mode():
        files: list[_StepFile] = []
        try:
            read_layer = read_steps
            for layer in range(nl):
                sub = replace(spec, num_layers=1, bidirectional=False, go_backwards=False,
                              input_size=spec.layer_input_size(layer))
                outs = [] if layer == nl - 1 else [_StepFile(tmp, batch, time, p, np_dtype) for _ in range(d)]
                files += outs
                for direction in range(d):
                    read = reversed_reader(read_layer, lens, time, batch) if flipped(direction) else read_layer
                    lstm = build_lstm(sub, layer_params(params, layer, reverse=direction == 1), run_dtype, device,
                                      stepwise=True)
                    k = layer * d + direction
                    hx = None if h0 is None else (tensor(h0[k:k + 1]), tensor(c0[k:k + 1]))
                    for start, stop in chunks:
                        capture = _capture_to(sink, picked, lens, layer=layer, direction=direction, offset=start,
                                              flipped=flipped)
                        y, hx = lstm(tensor(read(start, stop)), hx, capture=capture)  # y (batch, n, P)
                        if outs:
                            outs[direction].write(start, to_numpy(y), flipped(direction), full)
                        if progress is not None:
                            done[0] += stop - start
                            progress(done[0], total)
                if outs:
                    read_layer = (outs[0].read if d == 1 else
                                  lambda s, e, fw=outs[0], bw=outs[1]: np.concatenate([fw.read(s, e), bw.read(s, e)], axis=2))
        finally:
            for f in files:
                f.close()
