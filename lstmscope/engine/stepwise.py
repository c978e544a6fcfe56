"""A stepwise LSTM: ``nn.LSTM``'s interface and parameters, any activation of spec.ACTIVATION_PARAMS. torch.

``StepwiseLSTM`` runs the cells ``nn.LSTM`` cannot (Keras ``hard_sigmoid`` gates, a ``relu`` cell, ...). It
is a drop-in for ``nn.LSTM`` wherever the engine builds one: same constructor arguments, the same parameter
names and shapes (so ``load_state_dict(params, strict=True, assign=True)`` works on a module made on the
meta device), the same ``forward(input, hx)`` on a tensor or a PackedSequence, the same return shapes.

How it runs, for each layer (both directions of a layer run together, stacked on a leading axis D):

* the input projection of a block of time steps is one matmul per direction (``torch.addmm``), biases
  included, into a reused buffer; the backward direction reads its block in reverse time order;
* then a Python loop over the steps does only the recurrent product (``baddbmm_`` of the (D, B, P) state
  with the stacked W_hh^T into that step's slice; ``addmm_`` for one direction; or the prepacked product
  below) and five elementwise ops, in place, writing h straight into the layer's preallocated output: no
  allocation per step in the standard cell (the prepacked product's scratch aside), and the views each step
  uses are made once per block.
* Varying lengths (packed input) run on the padded batch in the packed (descending-length) order, so the
  sequences that are running at a step are always its first ``batch_sizes[t]`` rows: a step works on a
  prefix of the batch and needs no masks. A direction whose prefix is shorter than the other's gets its
  extra rows computed and thrown away: its finished rows' (h, c) were saved when they finished (forward)
  and its rows that have not started are reset to (h0, c0) when they do (backward). Full-length batches
  pay for none of this.

Per-step capture (``forward(..., capture=fn)``): after each block of steps, ``fn`` gets one
:class:`StepBlock` per direction with that block's gates (after their activations), c and h, in input-time
order and the batch's own row order, so a caller can stream a trace without holding it. The gates are
read from the work buffer they are computed in, h from the layer's output; only c needs room of its own:
with capture each step writes its c into a slot of a per-block buffer instead of over the last one. The
step loop is the same code either way (without capture every slot is the one state tensor, updated in
place), with no test or copy per step for it: the capture work is per block, and only when asked for.

Gates are reordered once per call from nn.LSTM's (i, f, g, o) to (i, f, o, g), so the gate activation is
one op over the first 3H columns and the cell activation one op over the last H.

ONNX's cell (``peephole``, ``clip``, ``input_forget``, a third ``hidden_activation``) is part of the cell,
not a wrapper around it. The step loop, its buffers, the packed-prefix scheme, capture and the recurrent
product (plain or prepacked) are shared; only what happens between "gates += h W_hh^T" and "c is written"
differs, so the loop picks, once per layer, between its inlined standard body and the function
:meth:`StepwiseLSTM._onnx_step` makes (a single ``if`` per step; the standard body and its bits are
unchanged). That function follows onnxruntime's order: i and f add their peephole times c_{t-1}, every gate
pre-activation (i, f, o and the candidate's) is clamped to [-clip, clip] (c itself is not), f = 1 - i with
input_forget, c_t = f * c_{t-1} + i * g, and only then does o add its peephole times the new c_t and get
clamped and activated (peepholes are why o waits; without them all four gates are one clamp and two
activations, as in the standard step). Everything else follows: h = o * out_act(c_t), the projection
(which ONNX has not, but the peephole acts on c, which is hidden-wide), and the captured i, f, g, o are the
gates after their activations (f is 1 - i with input_forget). A distinct hidden activation needs no other
step: the standard body applies ``out_act`` (the cell activation unless one is given) to c.

The prepacked recurrent product. oneDNN multiplies by a weight stored in its own blocked layout faster than
MKL's addmm_ does by W_hh^T for this skinny GEMM (batch rows against a (P, 4H) weight): both directions of
32 x 256 @ 256 x 1024 take 400 us a step at one thread against baddbmm_'s 480-510, 225-280 at two against
255-360. So, chosen once per forward, where the run is float32 on the CPU and torch has the private ops
(``torch.ops.mkldnn._reorder_linear_weight`` and ``_linear_pointwise``), each layer reorders each
direction's W_hh once and the step loop computes h W_hh^T with it into a scratch tensor added to the step's
gates (the op cannot accumulate into the gates: its "sum" post-op is refused). The rest of the step is the
same code, with or without capture, for proj_size, bidirectional and packed runs (a packed run's prefix of
rows is a smaller M, which the packed weight takes). It only pays for a big W_hh: oneDNN's call costs about
17 us more than addmm_'s, so it is used where P * 4H >= PREPACK_MIN_WEIGHT (2^18: H = P = 256) and
batch * P * 4H >= PREPACK_MIN_MACS (2^19); smaller models keep the plain loop (H=64, B=1 would take 29 us a
step instead of 10). These are private ops, so each packing is first checked against ``torch.mm`` on a probe
(error at most 1e-5 of the result's scale); when an op raises or disagrees the plain loop runs, and the
prepacked product is given up for the process. ``LSTMSCOPE_PREPACK=0`` in the environment turns it off;
``last_recurrent_path`` says which product the last forward ran ("prepacked" or "plain"). The plain loop is
unchanged, bit for bit. (MKL's packed sgemm, ``torch.ops.mkl._mkl_linear``, was measured too: no faster than
addmm_ here.)

Everything runs in the parameters' dtype under ``torch.inference_mode()``: the returned tensors are
inference tensors (read them, copy them, hand them back in; do not backpropagate through them).

Speed (benchmarks/run.py --only stepwise_vs_fused --only trace_vs_fused: I=64, H=256, 2 layers,
bidirectional, B=32, T=500, float32, same thread count on both sides; a shared 2-core AMD EPYC with AVX-512,
medians of interleaved runs, which moved by up to 0.3x from run to run): the time of the fused nn.LSTM
forward's, prepacked (and with the plain loop, LSTMSCOPE_PREPACK=0), over 3-5 runs each,

    StepwiseLSTM, no capture        1 thread 1.26-1.31x (1.35-1.48x)    2 threads 1.35-1.67x (1.54-1.87x)
    the full trace (trace_lstm, all
    six quantities, no writing)     1 thread 1.36-1.48x (1.41-1.71x)    2 threads 1.75-1.96x (1.79-2.25x)

At two threads a trace takes about 1.0 s: the input projection (MKL addmm at ~140 GFLOP/s, as fast as
oneDNN here) 0.26 s, the recurrent product 0.22 s prepacked (0.3-0.4 s plain), torch.tanh 0.09-0.13 s (five
times sigmoid's cost per element), engine/trace.py's numpy copies 0.09 s and the emitter's flips of the
backward direction's blocks 0.03-0.04 s; nn.LSTM (oneDNN's fused RNN) does the same matmuls in 0.51-0.55 s
in all. Tiny models pay the per-step Python and dispatch cost instead (H=64, B=1: about 10 us a step
against nn.LSTM's 2-3 us).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from lstmscope.spec import ACTIVATION_PARAMS, SIGMOID, TANH, Activation

# One activation: (x, out) -> None writes act(x) into out; out may be x itself (in place).
ActFn = Callable[[torch.Tensor, torch.Tensor], None]

SELU_ALPHA, SELU_SCALE = 1.67326324, 1.05070098  # Keras's constants (torch.selu's are longer)
PREPACK_ENV = "LSTMSCOPE_PREPACK"  # "0": never use the prepacked recurrent product (module docstring)
PREPACK_TOLERANCE = 1e-5  # the prepacked product's self-check: max |error| relative to max(1, max |h W^T|)
# oneDNN's call costs about 17 us more than addmm_'s, and only pays where W_hh is too big for MKL's skinny GEMM:
PREPACK_MIN_WEIGHT = 1 << 18  # P * 4H, elements of W_hh (P = H = 256 has 2^18)
PREPACK_MIN_MACS = 1 << 19  # batch * P * 4H, multiply-adds of one direction's step
BLOCK_ELEMENTS = 1 << 22  # the input projection is computed for as many steps at a time as fit in this,
MAX_BLOCK_STEPS = 256  # and at most this many


def _copy(fn: Callable[[torch.Tensor], torch.Tensor]) -> ActFn:
    """An activation with no ``out=`` form: compute, then copy into ``out``."""
    return lambda x, out: out.copy_(fn(x))


def _linear(x: torch.Tensor, out: torch.Tensor) -> None:
    if out is not x:
        out.copy_(x)


def _affine(alpha: float, beta: float) -> ActFn:
    def act(x, out):
        torch.mul(x, alpha, out=out)
        out.add_(beta)
    return act


def _hard_sigmoid(alpha: float, beta: float) -> ActFn:
    def act(x, out):  # clip(alpha * x + beta, 0, 1)
        torch.mul(x, alpha, out=out)
        out.add_(beta).clamp_(0.0, 1.0)
    return act


def _scaled_tanh(alpha: float, beta: float) -> ActFn:
    def act(x, out):  # alpha * tanh(beta * x)
        torch.mul(x, beta, out=out)
        out.tanh_().mul_(alpha)
    return act


def _selu(x: torch.Tensor) -> torch.Tensor:
    return F.elu(x, SELU_ALPHA).mul_(SELU_SCALE)


def _softplus(x: torch.Tensor) -> torch.Tensor:
    return torch.logaddexp(x, x.new_zeros(()))  # log(1 + e^x) without F.softplus's cut-off at x > 20


# Every activation of spec.ACTIVATION_PARAMS, as a maker taking (alpha, beta); formulas in spec.py's comment.
ACTIVATIONS: dict[str, Callable[[float | None, float | None], ActFn]] = {
    "sigmoid": lambda a, b: lambda x, out: torch.sigmoid(x, out=out),
    "tanh": lambda a, b: lambda x, out: torch.tanh(x, out=out),
    "relu": lambda a, b: lambda x, out: torch.clamp(x, min=0.0, out=out),
    "linear": lambda a, b: _linear,
    "hard_sigmoid": lambda a, b: _hard_sigmoid(a, b),
    "elu": lambda a, b: _copy(lambda x: F.elu(x, a)),
    "selu": lambda a, b: _copy(_selu),
    "softsign": lambda a, b: _copy(F.softsign),
    "softplus": lambda a, b: _copy(_softplus),
    "exponential": lambda a, b: lambda x, out: torch.exp(x, out=out),
    "swish": lambda a, b: _copy(F.silu),
    "gelu": lambda a, b: _copy(F.gelu),  # exact (erf) form: approximate="none"
    "relu6": lambda a, b: lambda x, out: torch.clamp(x, 0.0, 6.0, out=out),
    "leaky_relu": lambda a, b: _copy(lambda x: F.leaky_relu(x, a)),
    "thresholded_relu": lambda a, b: _copy(lambda x: F.threshold(x, a, 0.0)),  # x > alpha ? x : 0
    "scaled_tanh": lambda a, b: _scaled_tanh(a, b),
    "affine": lambda a, b: _affine(a, b),
}


@dataclass(frozen=True)
class StepBlock:
    """One block of consecutive time steps of one layer and direction, as ``forward(..., capture=fn)`` hands
    it to ``fn``. Tensors are time-major, (steps, batch, width), in input-time order: row ``s`` is time step
    ``start + s``, and for the backward direction too it is the state after reading ``x[start + s]``. Batch
    rows are in the input's own order (a PackedSequence's too). Steps past a sequence's length hold junk.

    The tensors may be views of buffers the next block overwrites: copy what you keep, inside ``fn``."""

    layer: int
    direction: int  # 0 forward, 1 backward
    start: int  # the input time step of the block's first row
    i: torch.Tensor  # (steps, batch, hidden) input gate, after the gate activation
    f: torch.Tensor  # (steps, batch, hidden) forget gate
    g: torch.Tensor  # (steps, batch, hidden) candidate, after the cell activation
    o: torch.Tensor  # (steps, batch, hidden) output gate
    c: torch.Tensor  # (steps, batch, hidden) cell state c_t
    h: torch.Tensor  # (steps, batch, proj_size or hidden) h_t (after the projection, if any)


Capture = Callable[[StepBlock], None]

# Which recurrent product the last forward ran (for tests and benchmarks): "prepacked" when every layer used
# the oneDNN one, else "plain".
last_recurrent_path = "plain"
_prepack_failure: str | None = None  # why the prepacked product was given up for this process, once it failed


def _prepack_wanted(w: torch.Tensor, batch: int) -> bool:
    """Whether a forward of ``batch`` rows with W_hh ``w`` (4H, P) tries the prepacked recurrent product:
    float32 on the CPU, big enough to pay (PREPACK_MIN_*), oneDNN built in, its private ops present, not
    turned off (PREPACK_ENV) and not given up."""
    if os.environ.get(PREPACK_ENV, "1").strip() == "0" or _prepack_failure is not None:
        return False
    if w.numel() < PREPACK_MIN_WEIGHT or batch * w.numel() < PREPACK_MIN_MACS:
        return False
    if w.dtype != torch.float32 or w.device.type != "cpu" or not torch.backends.mkldnn.is_available():
        return False
    ops = getattr(torch.ops, "mkldnn", None)
    return hasattr(ops, "_reorder_linear_weight") and hasattr(ops, "_linear_pointwise")


def _prepacked_recurrent(w_hh_t: torch.Tensor, batch: int) -> Callable | None:
    """A replacement for the step loop's ``recurrent(g, h, w)`` (gates += h W_hh^T) that runs each
    direction's product through oneDNN with W_hh reordered once, here, into its blocked layout: (D, P, 4H)
    ``w_hh_t`` as :meth:`StepwiseLSTM._layer_weights` gives it; ``batch`` the rows it is tuned for (fewer
    rows work too). Checked against ``torch.mm`` on a probe first; None, and the prepacked product given up
    for this process, when that raises or disagrees (these are private torch ops: they may change or go)."""
    global _prepack_failure
    linear = torch.ops.mkldnn._linear_pointwise
    try:
        packed = [torch.ops.mkldnn._reorder_linear_weight(w.t().contiguous(), batch) for w in w_hh_t]  # (4H, P) each
        gen = torch.Generator().manual_seed(0)
        probe = torch.rand((batch, w_hh_t.shape[1]), generator=gen).mul_(2).sub_(1).to(w_hh_t.device)  # (batch, P)
        for w, pk in zip(w_hh_t, packed):
            for rows in (probe, probe[:1]):  # all rows, and one: a packed run's prefix has fewer than `batch`
                want = torch.mm(rows, w)
                err = (linear(rows, pk, None, "none", [], "") - want).abs().max().item()
                if not err <= PREPACK_TOLERANCE * max(1.0, want.abs().max().item()):
                    raise ValueError(f"differs from torch.mm by {err:g}")
    except Exception as e:  # any failure of a private op means: use the plain product
        _prepack_failure = f"{type(e).__name__}: {e}"
        return None
    args = (None, "none", [], "")  # no bias, no fused activation, no scalars, no algorithm
    if len(packed) == 1:
        (w0,) = packed

        def recurrent(g: torch.Tensor, h: torch.Tensor, _w: torch.Tensor) -> None:  # (n, 4H), (n, P)
            g.add_(linear(h, w0, *args))
    else:
        w0, w1 = packed
        add = torch._foreach_add_

        def recurrent(g: torch.Tensor, h: torch.Tensor, _w: torch.Tensor) -> None:  # (2, n, 4H), (2, n, P)
            add([g[0], g[1]], [linear(h[0], w0, *args), linear(h[1], w1, *args)])
    return recurrent


def activation_fn(act: Activation) -> ActFn:
    """The (x, out) function computing ``act``; ValueError for an unknown name or a missing parameter."""
    if act.name not in ACTIVATIONS:
        raise ValueError(f"activation {act.name!r} is not one StepwiseLSTM knows; known: {', '.join(ACTIVATIONS)}")
    missing = [k for k in ACTIVATION_PARAMS[act.name] if getattr(act, k) is None]
    if missing:
        raise ValueError(f"activation {act.name} needs {' and '.join(missing)} (got {act.to_dict()})")
    return ACTIVATIONS[act.name](act.alpha, act.beta)


class StepwiseLSTM(nn.Module):
    """``nn.LSTM`` with a choice of gate and cell activation (inference only).

    Parameters, per layer ``k`` and direction (suffix ``_reverse`` for the backward one), as in nn.LSTM
    (gate order i, f, g, o; P = proj_size or hidden_size):
        weight_ih_l{k}  (4*hidden, input_size for k == 0 else num_directions * P)
        weight_hh_l{k}  (4*hidden, P)
        bias_ih_l{k}, bias_hh_l{k}  (4*hidden,)   when bias
        weight_hr_l{k}  (proj_size, hidden)       when proj_size > 0
        weight_peephole_l{k}  (3*hidden,)         when peephole, order (i, f, o)
    The cell: gates = x W_ih^T + b_ih + h W_hh^T + b_hh; i, f, o = gate_act(.); g = cell_act(.);
    c = f * c + i * g; h = o * out_act(c) (out_act = hidden_activation, or cell_act when None); with a
    projection h = h W_hr^T. ONNX's features (any of them makes the step ONNX's, see :meth:`_onnx_step`):
    ``peephole`` (i, f += p * c_{t-1}; o += p * c_t, after c is updated), ``clip`` (every gate
    pre-activation clamped to [-clip, clip]) and ``input_forget`` (f = 1 - i).
    """

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, bidirectional: bool = False, proj_size: int = 0,
                 gate_activation: Activation = SIGMOID, cell_activation: Activation = TANH,
                 peephole: bool = False, clip: float | None = None, input_forget: bool = False,
                 hidden_activation: Activation | None = None, device=None, dtype=None):
        super().__init__()
        if num_layers < 1 or hidden_size < 1 or input_size < 1:
            raise ValueError(f"StepwiseLSTM needs positive sizes (input_size={input_size}, "
                             f"hidden_size={hidden_size}, num_layers={num_layers})")
        if proj_size < 0 or proj_size >= hidden_size:
            raise ValueError(f"proj_size={proj_size} must be 0 or lie in 1..hidden_size-1 ({hidden_size - 1})")
        self.input_size, self.hidden_size, self.num_layers = input_size, hidden_size, num_layers
        self.bias, self.batch_first, self.bidirectional, self.proj_size = bias, batch_first, bidirectional, proj_size
        if clip is not None and not clip > 0:
            raise ValueError(f"clip={clip} must be a positive threshold (or None: no clip)")
        self.gate_activation, self.cell_activation = gate_activation, cell_activation
        self.peephole, self.input_forget = bool(peephole), bool(input_forget)
        self.clip = None if clip is None else float(clip)
        self.hidden_activation = hidden_activation
        self._gate_fn, self._cell_fn = activation_fn(gate_activation), activation_fn(cell_activation)
        self._out_fn = self._cell_fn if hidden_activation is None else activation_fn(hidden_activation)
        d = 2 if bidirectional else 1
        out = proj_size or hidden_size
        factory = {"device": device, "dtype": dtype}
        for layer in range(num_layers):
            width = input_size if layer == 0 else d * out
            for suffix in ("", "_reverse")[:d]:
                k = f"l{layer}{suffix}"
                self.register_parameter(f"weight_ih_{k}", nn.Parameter(torch.empty(4 * hidden_size, width, **factory)))
                self.register_parameter(f"weight_hh_{k}", nn.Parameter(torch.empty(4 * hidden_size, out, **factory)))
                if bias:
                    self.register_parameter(f"bias_ih_{k}", nn.Parameter(torch.empty(4 * hidden_size, **factory)))
                    self.register_parameter(f"bias_hh_{k}", nn.Parameter(torch.empty(4 * hidden_size, **factory)))
                if proj_size:
                    self.register_parameter(f"weight_hr_{k}", nn.Parameter(torch.empty(proj_size, hidden_size, **factory)))
                if peephole:  # (i, f, o): i and f read c_{t-1}, o reads c_t
                    self.register_parameter(f"weight_peephole_{k}",
                                            nn.Parameter(torch.empty(3 * hidden_size, **factory)))
        self.reset_parameters()

    @property
    def num_directions(self) -> int:
        return 2 if self.bidirectional else 1

    def reset_parameters(self) -> None:
        """nn.LSTM's initialisation: uniform in +-1/sqrt(hidden_size) (a no-op on the meta device)."""
        bound = 1.0 / math.sqrt(self.hidden_size)
        with torch.no_grad():
            for p in self.parameters():
                p.uniform_(-bound, bound)

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}, num_layers={self.num_layers}"
        if self.proj_size:
            s += f", proj_size={self.proj_size}"
        s += f", bias={self.bias}, batch_first={self.batch_first}, bidirectional={self.bidirectional}"
        s += f", gate_activation={self.gate_activation}, cell_activation={self.cell_activation}"
        if self.hidden_activation is not None:
            s += f", hidden_activation={self.hidden_activation}"
        if self.peephole:
            s += ", peephole=True"
        if self.clip is not None:
            s += f", clip={self.clip:g}"
        if self.input_forget:
            s += ", input_forget=True"
        return s

    @property
    def onnx_cell(self) -> bool:
        """True when the cell has one of ONNX's features that change the step (peepholes, clip, coupled
        input and forget gates); a distinct hidden activation alone does not (it is only another function)."""
        return self.peephole or self.clip is not None or self.input_forget

    # ------------------------------------------------------------------------------------------------
    # forward

    @torch.inference_mode()
    def forward(self, input: torch.Tensor | PackedSequence, hx: tuple[torch.Tensor, torch.Tensor] | None = None,
                *, capture: Capture | None = None):
        """Like ``nn.LSTM.forward``, with an optional per-step capture.

        input: (time, batch, input_size), or (batch, time, input_size) with batch_first, or unbatched
            (time, input_size); or a PackedSequence (any ``enforce_sorted``).
        hx: optional (h0, c0), (num_layers * num_directions, batch, P) and (..., hidden), in the batch's
            own order (unbatched: without the batch axis); zeros when None.
        Returns (output, (h_n, c_n)): output (time, batch, num_directions * P) (batch-first with
        batch_first; a PackedSequence with the input's batch_sizes and indices for a packed input);
        h_n (num_layers * num_directions, batch, P); c_n (num_layers * num_directions, batch, hidden).
        capture: called with a :class:`StepBlock` for each layer, block of steps and direction, as the
            blocks are computed (layer by layer; within a layer, block by block, forward then backward;
            the backward direction's blocks come last time steps first). For a packed input, time runs
            to the longest sequence. None (the default) costs nothing.
        """
        packed = isinstance(input, PackedSequence)
        unbatched = False
        if packed:
            # The padded batch in the packed order: longest first, so the running rows at step t are the
            # first batch_sizes[t].
            x, lengths = pad_packed_sequence(PackedSequence(input.data, input.batch_sizes))  # (time, batch, features)
            counts: list[int] | None = input.batch_sizes.tolist()
            if counts[0] == counts[-1]:
                counts = None  # every sequence runs every step
        else:
            x, counts, lengths = input, None, None
            if x.dim() == 2:
                unbatched, x = True, x.unsqueeze(1)
            elif x.dim() != 3:
                raise ValueError(f"StepwiseLSTM expects a 2-D or 3-D input, got shape {tuple(x.shape)}")
            elif self.batch_first:
                x = x.transpose(0, 1)
        x = x.contiguous()  # (time, batch, features)
        if x.shape[2] != self.input_size:
            raise ValueError(f"input has {x.shape[2]} features per step but the LSTM expects {self.input_size}")
        if x.dtype != self.weight_ih_l0.dtype:
            raise ValueError(f"input is {x.dtype} but the LSTM's parameters are {self.weight_ih_l0.dtype}")
        h0, c0 = self._initial_state(hx, x, unbatched)
        if packed and input.sorted_indices is not None:
            h0, c0 = h0.index_select(1, input.sorted_indices), c0.index_select(1, input.sorted_indices)

        unsort = input.unsorted_indices if packed else None  # capture: packed order -> the batch's own
        # (time, batch, D * P), (L * D, batch, P), (L * D, batch, H)
        out, h_n, c_n = self._run(x, counts, h0, c0, capture, unsort)

        if packed:
            data = pack_padded_sequence(out, lengths).data
            if input.unsorted_indices is not None:
                h_n, c_n = h_n.index_select(1, input.unsorted_indices), c_n.index_select(1, input.unsorted_indices)
            return PackedSequence(data, input.batch_sizes, input.sorted_indices, input.unsorted_indices), (h_n, c_n)
        if unbatched:
            return out.squeeze(1), (h_n.squeeze(1), c_n.squeeze(1))
        return (out.transpose(0, 1) if self.batch_first else out), (h_n, c_n)

    def _initial_state(self, hx, x: torch.Tensor, unbatched: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """(h0, c0) as (L * D, batch, P) and (L * D, batch, H): the given ones checked, or zeros."""
        n, batch = self.num_layers * self.num_directions, x.shape[1]
        h_shape, c_shape = (n, batch, self.proj_size or self.hidden_size), (n, batch, self.hidden_size)
        if hx is None:
            return x.new_zeros(h_shape), x.new_zeros(c_shape)
        h0, c0 = hx
        if unbatched:
            h0, c0 = h0.unsqueeze(1), c0.unsqueeze(1)
        for name, t, shape in (("h0", h0, h_shape), ("c0", c0, c_shape)):
            if tuple(t.shape) != shape:
                raise ValueError(f"{name} has shape {tuple(t.shape)}; expected {shape}")
        return h0, c0

    def _layer_weights(self, layer: int):
        """One layer's parameters stacked over directions, gates reordered to (i, f, o, g):
        W_ih (D, 4H, in), bias (D, 4H) or None, W_hh^T (D, P, 4H), W_hr^T (D, H, P) or None."""
        h = self.hidden_size
        order = torch.cat([torch.arange(0, 2 * h), torch.arange(3 * h, 4 * h), torch.arange(2 * h, 3 * h)])
        order = order.to(self.weight_ih_l0.device)
        names = [f"l{layer}{s}" for s in ("", "_reverse")[: self.num_directions]]

        def stack(kind: str) -> torch.Tensor:
            return torch.stack([getattr(self, f"{kind}_{k}") for k in names])

        w_ih = stack("weight_ih").index_select(1, order)  # (D, 4H, in)
        w_hh_t = stack("weight_hh").index_select(1, order).transpose(1, 2)  # (D, P, 4H)
        bias = (stack("bias_ih") + stack("bias_hh")).index_select(1, order) if self.bias else None  # (D, 4H)
        w_hr_t = stack("weight_hr").transpose(1, 2) if self.proj_size else None  # (D, H, P)
        return w_ih, bias, w_hh_t, w_hr_t

    def _run(self, x: torch.Tensor, counts: list[int] | None, h0: torch.Tensor, c0: torch.Tensor,
             capture: Capture | None = None, unsort: torch.Tensor | None = None):
        """Every layer over time-major ``x`` (time, batch, features). ``counts``: the running rows at each
        step (a prefix of the batch; None: all). ``capture``/``unsort``: see :meth:`_emitter`. Returns
        output (time, batch, D * P), h_n, c_n."""
        d, (steps, batch, _) = self.num_directions, x.shape
        p, four_h = self.proj_size or self.hidden_size, 4 * self.hidden_size
        # Buffers shared by the layers. Outputs are zero-filled rather than left empty: their pages are then
        # touched by one (parallel) fill instead of one by one in the step loop, and the slots a packed
        # batch leaves unused hold numbers.
        block = max(1, min(steps, MAX_BLOCK_STEPS, BLOCK_ELEMENTS // max(1, d * batch * four_h)))
        gates = x.new_empty((d, block, batch, four_h))  # the input projection of a block of steps, then the gates
        ys = [x.new_zeros((d, steps, batch, p)) for _ in range(2 if d == 1 and self.num_layers > 1 else 1)]
        joined = x.new_empty((steps, batch, d * p)) if d == 2 else None  # a layer's output in time order
        hs, cs = [], []
        prepack = _prepack_wanted(self.weight_hh_l0, batch)  # chosen once per forward (module docstring)
        for layer in range(self.num_layers):
            y = ys[layer % len(ys)]  # one direction: the previous layer's y is this layer's input
            sl = slice(layer * d, (layer + 1) * d)
            emit = None if capture is None else self._emitter(capture, layer, steps, unsort)
            w_ih, bias, w_hh_t, w_hr_t = self._layer_weights(layer)
            cell = self._onnx_step(layer) if self.onnx_cell else None  # None: the standard step
            fast = _prepacked_recurrent(w_hh_t, batch) if prepack else None  # None: the plain product
            prepack = fast is not None  # a failed self-check turns it off for the layers left too
            h_n, c_n = self._run_layer(x, counts, h0[sl], c0[sl], w_ih, bias, w_hh_t, w_hr_t, gates, y, emit, fast,
                                       cell)
            hs.append(h_n)
            cs.append(c_n)
            if d == 1:
                x = y[0]  # (time, batch, P)
            else:
                joined[..., :p].copy_(y[0])
                joined[..., p:].copy_(y[1].flip(0))
                x = joined  # (time, batch, 2 * P)
        global last_recurrent_path
        last_recurrent_path = "prepacked" if prepack else "plain"
        return x, torch.cat(hs), torch.cat(cs)

    def _emitter(self, capture: Capture, layer: int, steps: int, unsort: torch.Tensor | None):
        """The per-block hand-over :meth:`_run_layer` calls with capture on: (s0, k, gates, cs, ys) in the
        processing order and the packed row order (see there) to ``capture``'s StepBlocks in input-time
        order and the batch's own rows (``unsort``: the packed input's unsorted_indices, or None)."""
        h = self.hidden_size

        def emit(s0: int, k: int, gates: torch.Tensor, cs: torch.Tensor, ys: torch.Tensor) -> None:
            for j in range(gates.shape[0]):
                g, c, hh, start = gates[j], cs[:, j], ys[j], s0  # (k, batch, 4H), (k, batch, H), (k, batch, P)
                if j == 1:  # the backward direction ran these steps last time step first
                    g, c, hh, start = g.flip(0), c.flip(0), hh.flip(0), steps - s0 - k
                if unsort is not None:
                    g, c, hh = g.index_select(1, unsort), c.index_select(1, unsort), hh.index_select(1, unsort)
                capture(StepBlock(layer, j, start, i=g[..., :h], f=g[..., h:2 * h], g=g[..., 3 * h:],
                                  o=g[..., 2 * h:3 * h], c=c, h=hh))
        return emit

    def _onnx_step(self, layer: int):
        """The cell part of one step of ONNX's LSTM for ``layer``: a function (g, ifo, cand, i, f, o, cs, cn)
        taking the step's gate views as :meth:`_run_layer` makes them (pre-activations, h W_hh^T and biases
        added; (i, f, o, g) order) and the previous c ``cs``, leaving the gates after their activations and
        writing c_t into ``cn`` (``cn`` may be ``cs``: in place). ONNX's order (operator docs and
        onnxruntime's uni_directional_lstm.cc): i and f add P_i * c_{t-1}, P_f * c_{t-1}; every gate
        pre-activation is clamped to [-clip, clip]; i, f = gate_act, g = cell_act; with input_forget
        f = 1 - i; c_t = f * c_{t-1} + i * g; only then o adds P_o * c_t, is clamped and activated."""
        h, clip, coupled = self.hidden_size, self.clip, self.input_forget
        gate_fn, cell_fn = self._gate_fn, self._cell_fn

        def couple(i: torch.Tensor, f: torch.Tensor) -> None:  # f = 1 - i
            torch.neg(i, out=f).add_(1.0)

        if not self.peephole:  # every gate reads c_{t-1} or nothing: one clamp, one gate activation
            def step(g, ifo, cand, i, f, o, cs, cn):
                if clip is not None:
                    g.clamp_(-clip, clip)
                gate_fn(ifo, ifo)
                if coupled:
                    couple(i, f)
                cell_fn(cand, cand)
                torch.mul(cs, f, out=cn).addcmul_(i, cand)
            return step

        names = [f"l{layer}{s}" for s in ("", "_reverse")[: self.num_directions]]
        peep = torch.stack([getattr(self, f"weight_peephole_{k}") for k in names]).unsqueeze(1)  # (D, 1, 3H)
        if self.num_directions == 1:
            peep = peep[0]  # (1, 3H): the one-direction loop has no D axis
        p_i, p_f, p_o = peep[..., :h], peep[..., h:2 * h], peep[..., 2 * h:]  # (i, f, o), each broadcast over rows

        def step(g, ifo, cand, i, f, o, cs, cn):
            i.addcmul_(cs, p_i)
            if coupled:
                fi = i  # f's pre-activation is not used
            else:
                f.addcmul_(cs, p_f)
                fi = g[..., :2 * h]  # i and f
            if clip is not None:
                fi.clamp_(-clip, clip)
                cand.clamp_(-clip, clip)
            gate_fn(fi, fi)
            if coupled:
                couple(i, f)
            cell_fn(cand, cand)
            torch.mul(cs, f, out=cn).addcmul_(i, cand)
            o.addcmul_(cn, p_o)  # the output gate's peephole reads the new c
            if clip is not None:
                o.clamp_(-clip, clip)
            gate_fn(o, o)
        return step

    def _run_layer(self, x, counts, h0, c0, w_ih, bias, w_hh_t, w_hr_t, gates, y, emit=None, fast=None, cell=None):
        """One layer, both directions together. x (time, batch, in); h0 (D, batch, P); c0 (D, batch, H);
        weights as :meth:`_layer_weights` gives them; counts as in :meth:`_run`; gates (D, block, batch, 4H)
        a work buffer. ``emit``: None, or called after each block of k steps from s0 with that block's
        gates (D, k, batch, 4H; i, f, o, g after their activations), c (k, D, batch, H) and y (D, k, batch, P),
        each direction in its processing order, rows in the packed order. ``fast``: None, or the prepacked
        recurrent product (:func:`_prepacked_recurrent`) to use instead of addmm_/baddbmm_. ``cell``: None (the
        standard step), or :meth:`_onnx_step`'s function for the gates and c of a step.

        Writes y (D, time, batch, P), each direction's output in its own processing order (the backward
        direction's step s is time T-1-s; with counts, slots where a sequence does not run hold junk) and
        returns h_n (D, batch, P) and c_n (D, batch, H)."""
        steps, batch, width = x.shape
        d, block, _, four_h = gates.shape
        h, p = four_h // 4, y.shape[3]
        c = c0.clone()  # (D, batch, H): the state the next step reads
        # Where each step of a block writes its c: without capture every slot is `c` (updated in place); with
        # it, a buffer of the block's steps, (block, D, batch, H), handed to `emit`. Pairs (D-axis view, run view).
        cbuf = None if emit is None else x.new_empty((block, d, batch, h))
        c_slots = [(t, t[0] if d == 1 else t) for t in ([c] * block if cbuf is None else cbuf)]
        tc = x.new_empty((d, batch, h))  # out_act(c): the hidden activation, cell_act unless one is given
        hfull = x.new_empty((d, batch, h)) if w_hr_t is not None else None  # o * out_act(c), before W_hr
        h_prev = h0  # (D, batch, P): the state a step reads (read only: later steps read a step of y)
        # The step loop works on (D, batch, .) tensors with baddbmm/bmm; one direction drops the D axis and
        # uses addmm/mm, which cost less per call. Either way rows are the second-to-last axis.
        if d == 1:
            recurrent, project, y_run, g_run = torch.Tensor.addmm_, torch.mm, y[0], gates[0]  # (time, ...)
            c_run, tc, hfull, h_prev, w_rec, w_proj = (None if t is None else t[0] for t in (
                c, tc, hfull, h_prev, w_hh_t, w_hr_t))  # c_run: `c` as the loop uses it
        else:
            recurrent, project = torch.Tensor.baddbmm_, torch.bmm
            y_run, g_run = y.transpose(0, 1), gates.transpose(0, 1)  # (time, D, ...)
            c_run, w_rec, w_proj = c, w_hh_t, w_hr_t
        if fast is not None:  # same arguments; a running prefix of rows (counts) is a smaller GEMM M, which it takes
            recurrent = fast
        # Views of each step's slice of `gates`: all 4H, then i, f, o (3H), then g, i, f, o (H each).
        rows = [(r, r[..., :3 * h], r[..., 3 * h:], r[..., :h], r[..., h:2 * h], r[..., 2 * h:3 * h]) for r in g_run]
        gate_fn, cell_fn, out_fn = self._gate_fn, self._cell_fn, self._out_fn
        if counts is not None:
            h_n, c_n = h0.clone(), c0.clone()  # filled in row by row as sequences finish
            fwd, bwd = counts, counts[::-1]  # running rows per step; the backward step s runs time T-1-s
            nf_prev, nb_prev = batch, bwd[0]

        for s0 in range(0, steps, block):
            k = min(block, steps - s0)
            for j in range(d):  # the input projection of this block: (k * batch, in) @ (in, 4H) + bias
                xs = x[s0:s0 + k] if j == 0 else x[steps - s0 - k:steps - s0].flip(0)  # (k, batch, in)
                dst = gates[j, :k].view(k * batch, four_h)
                if bias is None:
                    torch.mm(xs.reshape(k * batch, width), w_ih[j].t(), out=dst)
                else:
                    torch.addmm(bias[j], xs.reshape(k * batch, width), w_ih[j].t(), out=dst)
            y_steps = y_run[s0:s0 + k]  # this block's steps of y
            for s in range(s0, s0 + k):
                g, ifo, cand, i, f, o = rows[s - s0]
                c_full, c_next = c_slots[s - s0]  # where this step's c goes
                h_in, cs, cn, tcs, hf, out = h_prev, c_run, c_next, tc, hfull, y_steps[s - s0]
                if counts is not None:  # run the first n rows (see the module docstring)
                    nf = n = fwd[s]
                    if nf < nf_prev:  # forward rows [nf, nf_prev) ran their last step at s-1
                        h_n[0, nf:nf_prev] = h_prev.view(d, batch, p)[0, nf:nf_prev]
                        c_n[0, nf:nf_prev] = c[0, nf:nf_prev]
                        nf_prev = nf
                    if d == 2:
                        nb = bwd[s]
                        if nb > nb_prev:  # backward rows [nb_prev, nb) start here, from (h0, c0)
                            h_prev[1, nb_prev:nb], c[1, nb_prev:nb] = h0[1, nb_prev:nb], c0[1, nb_prev:nb]
                            nb_prev = nb  # (h_prev is a step of y here, and that row's slot there is unused)
                        n = max(nf, nb)
                    g, ifo, cand, i, f, o, h_in, cs, cn, tcs, out = (
                        t[..., :n, :] for t in (g, ifo, cand, i, f, o, h_in, cs, cn, tcs, out))
                    hf = hf[..., :n, :] if hf is not None else None
                recurrent(g, h_in, w_rec)  # gates += h W_hh^T
                if cell is None:
                    gate_fn(ifo, ifo)
                    cell_fn(cand, cand)
                    torch.mul(cs, f, out=cn).addcmul_(i, cand)  # c = f * c + i * g (in place without capture)
                else:  # ONNX's cell: peepholes, clip, f = 1 - i (see _onnx_step)
                    cell(g, ifo, cand, i, f, o, cs, cn)
                out_fn(cn, tcs)
                if hf is None:
                    torch.mul(o, tcs, out=out)  # h = o * out_act(c)
                else:
                    torch.mul(o, tcs, out=hf)
                    project(hf, w_proj, out=out)  # h = (o * out_act(c)) W_hr^T
                h_prev = out if counts is None else y_steps[s - s0]
                c, c_run = c_full, c_next
            if emit is not None:
                emit(s0, k, gates[:, :k], cbuf[:k], y[:, s0:s0 + k])
        h_prev = h_prev.reshape(d, batch, p)
        if counts is None:
            return h_prev.clone(), c
        h_n[0, :nf_prev], c_n[0, :nf_prev] = h_prev[0, :nf_prev], c[0, :nf_prev]  # rows running at the end
        if d == 2:  # every sequence runs the backward direction's last step (time 0)
            h_n[1], c_n[1] = h_prev[1], c[1]
        return h_n, c_n
