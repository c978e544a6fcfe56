"""Run an LSTM with torch and hand back numpy results.

Two ways to run the same stack:
  * fused: one ``nn.LSTM`` over all layers, as a user would write it;
  * layer by layer (``all_layers=True``): one single-layer ``nn.LSTM`` per layer, so every layer's
    output sequence exists and can be checked against that layer's h_n / c_n.
Both accept packed variable-length batches and an initial (h0, c0) in PyTorch's native layout.
"""

from __future__ import annotations

import contextlib
import os
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


def as_tensor(a: np.ndarray | torch.Tensor) -> torch.Tensor:
    """A numpy array as a CPU tensor sharing its memory (the one place parameters become torch tensors).
    Read-only arrays (memory-mapped files) are shared too: lstmscope never writes to parameters."""
    if isinstance(a, torch.Tensor):
        return a
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*not writable.*")
        return torch.from_numpy(np.ascontiguousarray(a))


def engine_name(spec: LSTMSpec) -> str:
    """Which engine runs ``spec``: "fused" (nn.LSTM) for a standard cell, else "stepwise"
    (lstmscope.engine.stepwise: other activations, peepholes, clip, coupled gates)."""
    return "fused" if spec.standard_cell else "stepwise"


def build_lstm(spec: LSTMSpec, params: dict[str, np.ndarray], dtype: torch.dtype, device: str = "cpu",
               *, num_layers: int | None = None, input_size: int | None = None, batch_first: bool = True,
               stepwise: bool = False) -> nn.LSTM:
    """An ``nn.LSTM`` (or, for a cell it cannot compute or with ``stepwise``, a StepwiseLSTM) made on the meta device and given ``params`` (numpy, canonical layout) without a
    second copy where dtype and device allow (``assign=True``): no random initialisation."""
    shape = dict(input_size=input_size or spec.input_size, hidden_size=spec.hidden_size,
                 num_layers=num_layers or spec.num_layers, bias=spec.bias, batch_first=batch_first,
                 bidirectional=spec.bidirectional, proj_size=spec.proj_size)
    with torch.device("meta"):
        if spec.standard_cell and not stepwise:  # the fused kernel: every cell it computes exactly
            lstm = nn.LSTM(**shape)
        else:  # any other cell (activations, ONNX's peepholes, clip, coupled gates): the same calling
            #    convention, one time step at a time
            from lstmscope.engine.stepwise import StepwiseLSTM

            lstm = StepwiseLSTM(**shape, gate_activation=spec.gate_activation, cell_activation=spec.cell_activation,
                                peephole=spec.peephole, clip=spec.clip, input_forget=spec.input_forget,
                                hidden_activation=spec.hidden_activation)
    state = {k: as_tensor(v).to(device=device, dtype=dtype) for k, v in params.items()}
    lstm.load_state_dict(state, strict=True, assign=True)
    return lstm.eval()


def layer_params(params: dict[str, np.ndarray], layer: int, reverse: bool | None = None) -> dict[str, np.ndarray]:
    """The parameters of one layer renamed as layer 0 of a one-layer LSTM: both directions
    (``reverse=None``), or one direction as a unidirectional LSTM (``reverse`` False/True)."""
    sub = {}
    for name, t in params.items():
        kind, _, rest = name.rpartition("_l")
        num, _, suffix = rest.partition("_")
        if int(num) != layer:
            continue
        if reverse is None:
            sub[f"{kind}_l0{'_' + suffix if suffix else ''}"] = t
        elif (suffix == "reverse") == reverse:
            sub[f"{kind}_l0"] = t
    return sub


@contextlib.contextmanager
def quiet_onednn():
    """Hide "LSTM with projections is not supported with oneDNN": torch falls back by itself."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*not supported with oneDNN.*")
        yield


def check_device(device: str) -> str:
    """``cpu``, ``cuda`` or ``cuda:N``, refused in one line when this machine cannot run it."""
    kind, _, index = device.partition(":")
    if kind not in ("cpu", "cuda") or (index and not index.isdigit()) or (kind == "cpu" and index):
        raise UsageError(f"--device {device} is not a device lstmscope knows; use cpu, cuda or cuda:N")
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"--device {device} was asked for but torch sees no CUDA device here; use --device cpu")
        if index and int(index) >= torch.cuda.device_count():
            raise UsageError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return device


SMALL_STEP_MACS = 1 << 20  # below this much work per time step, one thread beats two (see README)
MAX_DEFAULT_THREADS = 8


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def busy_cores(samples: int = 4, gap: float = 0.002) -> int:
    """Other processes running right now: the least of a few readings of /proc/loadavg's "running"
    count, less this process (a momentary blip is not a busy core). 0 where there is no /proc."""
    import time

    least = None
    for i in range(samples):
        try:
            with open("/proc/loadavg") as f:
                running = int(f.read().split()[3].split("/")[0])
        except (OSError, ValueError, IndexError):
            return 0
        least = running if least is None else min(least, running)
        if least <= 1:
            break
        time.sleep(gap)
    return max(0, least - 1)


def default_threads(spec: LSTMSpec, batch: int) -> int:
    """One thread for small models, where OpenMP's hand-offs cost more than they save. Bigger models
    get the cores no other process is running on right now (at most 8): an LSTM's threads wait for
    each other at every time step, so one thread sharing a core with another program stalls them
    all (measured here: 4-12x slower than one thread while another process held a core)."""
    macs = batch * spec.num_directions * 4 * spec.hidden_size * (spec.input_size + spec.output_size)
    if macs < SMALL_STEP_MACS:
        return 1
    return max(1, min(usable_cores() - busy_cores(), MAX_DEFAULT_THREADS))


def configure_threads(threads: int) -> None:
    if threads < 1:
        raise UsageError(f"--threads {threads}: give a positive number of threads")
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


def _forward(lstm: nn.LSTM, x: torch.Tensor, lengths: torch.Tensor | None, hx):
    """Run ``lstm`` (batch_first) on padded ``x``; with lengths, as a packed batch in original order."""
    with quiet_onednn():
        if lengths is None:
            return lstm(x, hx)
        packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        out, (h, c) = lstm(packed, hx)
        out, _ = pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])
        return out, (h, c)


def to_numpy(t: torch.Tensor) -> np.ndarray:
    t = t.detach()
    if t.dtype == torch.bfloat16:
        t = t.float()
    return t.cpu().numpy()


def run_lstm(
    spec: LSTMSpec,
    params: dict[str, np.ndarray],
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
    check_device(device)
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
            return RunResult(to_numpy(out), to_numpy(h), to_numpy(c), None, str(run_dtype).removeprefix("torch."))
        d = spec.num_directions
        layer_out, hs, cs, outs = x, [], [], []
        for layer in range(spec.num_layers):
            sub = layer_params(params, layer)
            lstm = build_lstm(spec, sub, run_dtype, device, num_layers=1, input_size=spec.layer_input_size(layer))
            sub_hx = None if hx is None else (hx[0][layer * d:(layer + 1) * d], hx[1][layer * d:(layer + 1) * d])
            layer_out, (h, c) = _forward(lstm, layer_out, lens, sub_hx)
            hs.append(h)
            cs.append(c)
            outs.append(to_numpy(layer_out))
        return RunResult(outs[-1], to_numpy(torch.cat(hs)), to_numpy(torch.cat(cs)), outs,
                         str(run_dtype).removeprefix("torch."))
