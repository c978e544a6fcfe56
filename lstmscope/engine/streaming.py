"""Run an LSTM over a long input a chunk of time steps at a time, in flat memory. torch.

The input is read a chunk at a time (``read_steps``), (h, c) is carried from chunk to chunk, and only
what is asked for is kept: the final states, the two output rows per sequence that the identity
checks need (``LayerEnds``), and, when a sink is given, the last layer's output handed over chunk by
chunk (to be written to disk).

* Unidirectional models run every layer on each chunk before the next chunk is read (fused, or one
  module per layer with ``all_layers``).
* Bidirectional models need the future for the backward direction, so they run layer by layer: the
  forward direction over the chunks in order, the backward direction over them in reverse order. Each
  layer's output goes to temporary files (time-major, positioned reads and writes) that the next layer
  reads; they live in a temporary directory that is removed afterwards, also on failure or Ctrl-C.
* Variable lengths: a sequence that ends inside a chunk runs packed there and keeps its state from its
  last step; in the backward direction each sequence starts at its own last step.

On CPU the result is bit-identical to the whole run in every case the tests cover (see README).
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, replace
from typing import Callable

import numpy as np
import torch
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from lstmscope.engine.fused import DTYPES, build_lstm, layer_params, quiet_onednn, to_numpy
from lstmscope.report import LayerEnds
from lstmscope.spec import LSTMSpec

Reader = Callable[[int, int], np.ndarray]  # (start, stop) -> (batch, stop - start, features)
Sink = Callable[[int, np.ndarray], None]  # (start, (batch, n, D * out)) of the last layer's output
Progress = Callable[[int, int], None]  # (steps done, steps in all)


@dataclass
class StreamResult:
    h_n: np.ndarray  # (num_layers * num_directions, batch, out)
    c_n: np.ndarray  # (num_layers * num_directions, batch, hidden)
    layer_ends: dict[int, LayerEnds]  # the last layer's, or every layer's with all_layers
    dtype: str


class _Ends:
    """Collects LayerEnds for one layer from time-major output chunks."""

    def __init__(self, batch: int, width: int, last_steps: np.ndarray):
        self.at_last = np.zeros((batch, width), dtype=np.float64)
        self.at_first = np.zeros((batch, width), dtype=np.float64)
        self.last = last_steps

    def wants(self, start: int, n: int) -> bool:
        return start == 0 or bool(np.any((self.last >= start) & (self.last < start + n)))

    def take(self, start: int, out: np.ndarray) -> None:  # out: (n, batch, width) time-major
        n = out.shape[0]
        hit = (self.last >= start) & (self.last < start + n)
        if hit.any():
            b = np.nonzero(hit)[0]
            self.at_last[b] = out[self.last[b] - start, b]
        if start == 0:
            self.at_first[:] = out[0]

    def done(self, dtype) -> LayerEnds:
        return LayerEnds(self.at_last.astype(dtype), self.at_first.astype(dtype))


class _TempSeq:
    """A (time, batch, width) array in a temporary file, written and read a chunk at a time."""

    def __init__(self, directory: str, time: int, batch: int, width: int, dtype: np.dtype):
        self.shape, self.dtype = (time, batch, width), np.dtype(dtype)
        self.row = batch * width * self.dtype.itemsize
        fd, self.path = tempfile.mkstemp(prefix="layer-", suffix=".bin", dir=directory)
        self.f = os.fdopen(fd, "w+b")

    def write(self, start: int, a: np.ndarray) -> None:
        self.f.seek(start * self.row)
        self.f.write(memoryview(np.ascontiguousarray(a, dtype=self.dtype)).cast("B"))

    def read(self, start: int, stop: int) -> np.ndarray:
        out = np.empty((stop - start, *self.shape[1:]), dtype=self.dtype)
        self.f.seek(start * self.row)
        if self.f.readinto(memoryview(out.reshape(-1)).cast("B")) != out.nbytes:
            raise OSError(f"short read from temporary file {self.path}")
        return out

    def close(self) -> None:
        if not self.f.closed:
            self.f.close()
            os.unlink(self.path)


def _run_chunk(lstm, x: torch.Tensor, hx, local: np.ndarray | None):
    """One chunk, time-major x (n, batch, features); ``local`` (batch,) steps each sequence has in this
    chunk (None: all n). Sequences with none keep their state; padded steps give zeros."""
    n = x.shape[0]
    if local is None or bool(np.all(local == n)):
        return lstm(x, hx)
    h, c = hx[0].clone(), hx[1].clone()
    out = x.new_zeros((n, x.shape[1], lstm.proj_size or lstm.hidden_size))
    idx = np.nonzero(local > 0)[0]
    if idx.size:
        ti = torch.from_numpy(idx).to(x.device)
        packed = pack_padded_sequence(x.index_select(1, ti), torch.from_numpy(local[idx]), enforce_sorted=False)
        o, (hs, cs) = lstm(packed, (h.index_select(1, ti), c.index_select(1, ti)))
        o, _ = pad_packed_sequence(o, total_length=n)
        out[:, ti] = o
        h[:, ti] = hs
        c[:, ti] = cs
    return out, (h, c)


def _reverse_local(x: torch.Tensor, local: np.ndarray | None) -> torch.Tensor:
    """Reverse each sequence's own first ``local[b]`` steps of a time-major chunk (the rest stays put)."""
    n = x.shape[0]
    if local is None or bool(np.all(local == n)):
        return x.flip(0)
    j = np.arange(n)[:, None]
    idx = np.where(j < local[None, :], local[None, :] - 1 - j, j)  # (n, batch)
    t = torch.from_numpy(idx).to(x.device)
    return x.gather(0, t.unsqueeze(-1).expand(-1, -1, x.shape[2]))


def _local(lengths: np.ndarray | None, start: int, stop: int) -> np.ndarray | None:
    if lengths is None:
        return None
    return np.clip(lengths - start, 0, stop - start)


def stream_lstm(
    spec: LSTMSpec,
    params: dict[str, np.ndarray],
    read_steps: Reader,
    *,
    batch: int,
    time: int,
    chunk_size: int,
    lengths: np.ndarray | None = None,
    dtype: str | None = None,
    all_layers: bool = False,
    h0: np.ndarray | None = None,
    c0: np.ndarray | None = None,
    device: str = "cpu",
    sink: Sink | None = None,
    progress: Progress | None = None,
    tmp_dir: str | None = None,
) -> StreamResult:
    """Run ``time`` steps read by ``read_steps`` through the LSTM, ``chunk_size`` steps at a time."""
    run_dtype = DTYPES[dtype or spec.dtype]
    np_dtype = np.dtype({torch.float16: np.float16, torch.float64: np.float64}.get(run_dtype, np.float32))
    d, p, hid, nl = spec.num_directions, spec.output_size, spec.hidden_size, spec.num_layers
    last = np.full(batch, time - 1, dtype=np.int64) if lengths is None else np.asarray(lengths, dtype=np.int64) - 1
    lengths = None if lengths is None else np.asarray(lengths, dtype=np.int64)
    chunks = [(s, min(s + chunk_size, time)) for s in range(0, time, chunk_size)]

    def tensor(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(a)).to(device=device, dtype=run_dtype)

    if h0 is None:
        h_all = torch.zeros((nl * d, batch, p), dtype=run_dtype, device=device)
        c_all = torch.zeros((nl * d, batch, hid), dtype=run_dtype, device=device)
    else:
        h_all, c_all = tensor(h0), tensor(c0)
    h_n, c_n = h_all.clone(), c_all.clone()
    ends: dict[int, _Ends] = {}
    total = time * nl * d  # steps of every layer and direction: what the progress bar counts
    done = 0

    def tick(n: int) -> None:
        nonlocal done
        done += n
        if progress is not None:
            progress(done, total)

    with torch.inference_mode(), quiet_onednn():
        if d == 1:
            if all_layers:
                mods = [build_lstm(replace(spec, num_layers=1, input_size=spec.layer_input_size(layer)),
                                   layer_params(params, layer), run_dtype, device, batch_first=False)
                        for layer in range(nl)]
                states = [(h_all[layer:layer + 1], c_all[layer:layer + 1]) for layer in range(nl)]
                ends = {layer: _Ends(batch, p, last) for layer in range(nl)}
            else:
                mods = [build_lstm(spec, params, run_dtype, device, batch_first=False)]
                states = [(h_all, c_all)]
                ends = {nl - 1: _Ends(batch, p, last)}
            for start, stop in chunks:
                x = tensor(read_steps(start, stop)).transpose(0, 1)  # (n, batch, features)
                local = _local(lengths, start, stop)
                for i, mod in enumerate(mods):
                    x, states[i] = _run_chunk(mod, x, states[i], local)
                    layer = i if all_layers else nl - 1
                    if layer in ends and ends[layer].wants(start, stop - start):
                        ends[layer].take(start, to_numpy(x))
                if sink is not None:
                    sink(start, to_numpy(x).transpose(1, 0, 2))
                tick((stop - start) * nl)  # the chunk went through every layer
            h_n = torch.cat([s[0] for s in states])
            c_n = torch.cat([s[1] for s in states])
        else:
            with tempfile.TemporaryDirectory(prefix="lstmscope-", dir=tmp_dir) as tmp:
                reader: Callable[[int, int], torch.Tensor] = lambda s, e: tensor(read_steps(s, e)).transpose(0, 1)  # noqa: E731
                prev: list[_TempSeq] = []  # the previous layer's outputs, read by this layer
                opened: list[_TempSeq] = []
                try:
                    for layer in range(nl):
                        last_layer = layer == nl - 1
                        sub = replace(spec, num_layers=1, bidirectional=False, input_size=spec.layer_input_size(layer))
                        fmod = build_lstm(sub, layer_params(params, layer, reverse=False), run_dtype, device, batch_first=False)
                        bmod = build_lstm(sub, layer_params(params, layer, reverse=True), run_dtype, device, batch_first=False)
                        fwd = _TempSeq(tmp, time, batch, p, np_dtype)
                        opened.append(fwd)
                        bwd = None if last_layer else _TempSeq(tmp, time, batch, p, np_dtype)
                        if bwd is not None:
                            opened.append(bwd)
                        k = 2 * layer
                        st = (h_all[k:k + 1], c_all[k:k + 1])
                        for start, stop in chunks:
                            out, st = _run_chunk(fmod, reader(start, stop), st, _local(lengths, start, stop))
                            fwd.write(start, to_numpy(out))
                            tick(stop - start)
                        h_n[k:k + 1], c_n[k:k + 1] = st
                        st = (h_all[k + 1:k + 2], c_all[k + 1:k + 2])
                        keep = last_layer or all_layers
                        if keep:
                            ends[layer] = _Ends(batch, 2 * p, last)
                        for start, stop in reversed(chunks):
                            x = reader(start, stop)
                            if lengths is None:
                                local = None
                            else:
                                local = np.clip(np.minimum(lengths, stop) - start, 0, stop - start)
                            out_r, st = _run_chunk(bmod, _reverse_local(x, local), st, local)
                            out_b = to_numpy(_reverse_local(out_r, local))
                            if bwd is not None:
                                bwd.write(start, out_b)
                            if keep:
                                full = np.concatenate([fwd.read(start, stop), out_b], axis=2)  # (n, batch, 2 * out)
                                ends[layer].take(start, full)
                                if last_layer and sink is not None:
                                    sink(start, full.transpose(1, 0, 2))
                            tick(stop - start)
                        h_n[k + 1:k + 2], c_n[k + 1:k + 2] = st
                        for f in prev:
                            f.close()
                        prev = [fwd] + ([bwd] if bwd is not None else [])
                        if bwd is not None:
                            pf, pb = fwd, bwd
                            reader = lambda s, e, pf=pf, pb=pb: tensor(  # noqa: E731
                                np.concatenate([pf.read(s, e), pb.read(s, e)], axis=2))
                finally:
                    for f in opened:
                        f.close()
    return StreamResult(to_numpy(h_n), to_numpy(c_n), {k: e.done(np_dtype) for k, e in ends.items()},
                        str(run_dtype).removeprefix("torch."))
