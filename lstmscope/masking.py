"""Masked steps, as Keras skips them: which steps an LSTM reads, and how its output looks around the others.
numpy only.

Keras runs a masked LSTM over every step and, at a masked step, keeps the state as it was and writes the
previous output again (zeros before the first valid step), or zeros (inside ``Bidirectional``, whose layers set
``zero_output_for_mask``). A ``go_backwards`` layer reverses the whole time axis, mask included, and returns its
output in that processing order. So a masked step changes nothing: the final state is the state after the last
step read, wherever the masked steps are (front padding, end padding, holes).

lstmscope runs exactly that by *compaction*: each sequence's valid steps are gathered to the front, in order
(``compact``), the LSTM runs on them with ``lengths`` = their count (packed, as for end padding), and the output
is put back at the steps Keras would put it (``expand``), the masked ones filled by the rule. The engines need no
masks, the fused ``nn.LSTM`` path stays, and a streamed run reads compacted chunks (``compact_reader``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from lstmscope.arrays import consecutive_runs
from lstmscope.errors import InputError

FILLS = ("repeat", "zero")  # a masked step's output: the previous output again (zeros before any), or zeros


@dataclass(frozen=True)
class MaskRule:
    """How a module's input is masked, as the file (or an option) says."""

    kind: str  # "value": a step is masked when every feature equals ``value`` (Keras Masking);
    #            "zero_id": when its token id is 0 (Keras Embedding(mask_zero=True)); "pre": the first T - len steps
    #            (front padding given by --lengths with --padding pre)
    value: float = 0.0
    source: str = ""  # what set it, for the header: "masking (Masking, mask_value 0.0)", "--mask-value 0"

    def describe(self) -> str:
        if self.kind == "value":
            return f"a step is skipped when all its features equal {self.value:g}"
        if self.kind == "zero_id":
            return "a step is skipped when its token id is 0"
        return "each sequence's first T - len steps are skipped (padding at the front)"


@dataclass
class StepMask:
    """Which steps of each sequence the LSTM reads (``valid``, (batch, time) bool), and what the output holds at
    the others (``fill``)."""

    valid: np.ndarray  # (B, T) bool
    fill: str  # one of FILLS
    source: str  # where the mask comes from, for headers and metadata
    counts: np.ndarray = field(init=False)  # (B,) valid steps per sequence
    first: np.ndarray = field(init=False)  # (B,) first valid step, -1 when none
    last: np.ndarray = field(init=False)  # (B,) last valid step, -1 when none

    def __post_init__(self) -> None:
        v = np.asarray(self.valid, dtype=bool)
        if v.ndim != 2:
            raise ValueError("a step mask is (batch, time)")
        self.valid = v
        self.counts = v.sum(axis=1).astype(np.int64)
        any_ = self.counts > 0
        t = v.shape[1]
        self.first = np.where(any_, np.argmax(v, axis=1), -1).astype(np.int64)
        self.last = np.where(any_, t - 1 - np.argmax(v[:, ::-1], axis=1), -1).astype(np.int64)

    @property
    def batch(self) -> int:
        return self.valid.shape[0]

    @property
    def time(self) -> int:
        return self.valid.shape[1]

    @property
    def empty(self) -> list[int]:
        """Sequences with no valid step (their final state is the initial state)."""
        return np.nonzero(self.counts == 0)[0].tolist()

    @property
    def masks_anything(self) -> bool:
        return bool(self.counts.sum() < self.valid.size)

    @property
    def run_lengths(self) -> np.ndarray:
        """(B,) lengths of the compacted run: the valid counts, at least 1 (a sequence with none runs one
        throwaway step whose results are replaced; see ``empty``)."""
        return np.maximum(self.counts, 1)

    @property
    def run_time(self) -> int:
        return int(self.run_lengths.max())

    @property
    def positions(self) -> np.ndarray:
        """(B, run_time) the input step of each compacted step (its last valid step repeated past the count; 0
        for a sequence with none)."""
        n = self.run_time
        b, t = np.nonzero(self.valid)  # row-major: per sequence, steps in order
        out = np.zeros((self.batch, n), dtype=np.int64)
        k = np.arange(b.size) - np.repeat(np.concatenate([[0], np.cumsum(self.counts)[:-1]]), self.counts)
        out[b, k] = t
        pad = np.arange(n)[None, :] >= self.counts[:, None]
        return np.where(pad, np.maximum(self.last, 0)[:, None], out)

    def compact(self, x: np.ndarray) -> np.ndarray:
        """(B, T, F) -> (B, run_time, F): each sequence's valid steps first, in order, then its last one
        repeated (never read: the run's lengths stop before)."""
        return np.take_along_axis(x, self.positions[:, :, None], axis=1)

    def compact_reader(self, read_steps: Callable[[int, int], np.ndarray]) -> Callable[[int, int], np.ndarray]:
        """``read_steps(start, stop)`` (input steps, (B, n, F)) -> a reader of compacted steps, for streamed
        runs: each chunk reads only the contiguous runs of input steps it needs."""
        pos = self.positions

        def read(start: int, stop: int) -> np.ndarray:
            want = pos[:, start:stop]  # (B, n)
            steps = np.unique(want)
            out = None
            for a, z in consecutive_runs(steps):
                lo, hi = int(steps[a]), int(steps[z - 1]) + 1
                block = read_steps(lo, hi)
                if out is None:
                    out = np.zeros((self.batch, stop - start, block.shape[2]), dtype=block.dtype)
                hit = (want >= lo) & (want < hi)
                b, k = np.nonzero(hit)
                out[b, k] = block[b, want[b, k] - lo]
            return out

        return read

    def targets(self, backwards_in_place: bool) -> np.ndarray:
        """(B, run_time) where each compacted output step goes in the expanded output: its input step, or, for a
        layer that returns its output in processing order over the whole reversed axis (Keras go_backwards),
        ``T - 1 - step`` of the k-th step read (the k-th valid step from the end). Increasing in k."""
        pos = self.positions
        if not backwards_in_place:
            return pos
        n = self.run_time
        k = np.arange(n)[None, :]
        src = np.clip(self.counts[:, None] - 1 - k, 0, None)
        return self.time - 1 - np.take_along_axis(pos, src, axis=1)

    def target_valid(self, backwards_in_place: bool) -> np.ndarray:
        """(B, T) the valid steps in the expanded output's own order."""
        return self.valid[:, ::-1] if backwards_in_place else self.valid

    def expand(self, out: np.ndarray, *, backwards_in_place: bool = False, fill: str | None = None) -> np.ndarray:
        """A compacted run's output (B, run_time, W) back on the full time axis (B, T, W): each valid step's
        output where Keras puts it (see ``targets``), masked steps by ``fill`` (default: the mask's)."""
        fill = fill or self.fill
        tv = self.target_valid(backwards_in_place)
        before = np.cumsum(tv, axis=1) - 1  # (B, T): index of the latest valid step at or before each step
        idx = np.where(tv, before, before if fill == "repeat" else -1)  # -1: zeros
        padded = np.concatenate([out, np.zeros((out.shape[0], 1, out.shape[2]), dtype=out.dtype)], axis=1)
        idx = np.where(idx < 0, out.shape[1], idx)
        return np.take_along_axis(padded, idx[:, :, None], axis=1)

    def expanding_sink(self, put_row, *, backwards_in_place: bool = False, fill: str | None = None) -> "ExpandingSink":
        """A streamed run's output sink for compacted chunks that writes the expanded output row by row through
        ``put_row(b, t0, rows)`` (rows (m, W): steps t0..t0+m of sequence b); call ``finish()`` after the run.
        Steps never written are zeros."""
        return ExpandingSink(self, put_row, self.targets(backwards_in_place), fill or self.fill)

    def scatter(self, start: int, block: np.ndarray, flipped: bool, put_row) -> None:
        """A block of compacted steps (B, n, W) (``flipped``: each sequence's reversed, per the run lengths) put at
        the input steps they read: ``put_row(b, t0, rows)`` per stretch of consecutive steps. The compacted
        padding (and a wholly masked sequence's throwaway step) is not data and is left out."""
        from lstmscope.sequences import unflip_pieces

        pos, n = self.positions, block.shape[1]
        for b in range(block.shape[0]):
            pieces = unflip_pieces(self.run_lengths[b], start, n) if flipped else [(0, n, start, False)]
            for lo, hi, at, rev in pieces:
                rows = block[b, lo:hi][::-1] if rev else block[b, lo:hi]
                keep = np.arange(at, at + hi - lo) < self.counts[b]
                if not keep.any():
                    continue
                rows, ts = rows[keep], pos[b, np.arange(at, at + hi - lo)[keep]]
                for a, z in consecutive_runs(ts):
                    put_row(b, int(ts[a]), rows[a:z])

    def fill_skipped(self, put_row, dtype, width: int, piece: int = 4096) -> None:
        """NaN at every step the mask skipped, through ``put_row(b, t0, rows)``, ``piece`` steps at a time."""
        for b in range(self.batch):
            skipped = np.flatnonzero(~self.valid[b])
            for a, z in consecutive_runs(skipped):
                lo, hi = int(skipped[a]), int(skipped[z - 1]) + 1
                for t in range(lo, hi, piece):
                    put_row(b, t, np.full((min(hi, t + piece) - t, width), np.nan, dtype=dtype))

    def output_steps(self, backwards_in_place: bool) -> tuple[np.ndarray, np.ndarray]:
        """(B,) each, the expanded output steps holding the last step read (where the final state is) going
        forward and going backward: (last valid, first valid) for a layer whose output is in input order;
        (T - 1 - first valid, ...) for Keras go_backwards, whose output is in processing order. -1 for a sequence
        with no valid step."""
        if backwards_in_place:
            fwd = np.where(self.counts > 0, self.time - 1 - self.first, -1)
            return fwd.astype(np.int64), self.first
        return self.last, self.first

    def to_meta(self) -> dict:
        """What a snapshot or trace records of the mask: its source, fill and each sequence's valid steps."""
        return {"source": self.source, "fill": self.fill, "valid_steps": self.counts.tolist(),
                "first_valid": self.first.tolist(), "last_valid": self.last.tolist()}


def active(mask: StepMask | None) -> StepMask | None:
    """The mask when it skips any step, else None: a run needs no compaction for a mask that masks nothing."""
    return mask if mask is not None and mask.masks_anything else None


def mask_from_rule(rule: MaskRule, read_steps: Callable[[int, int], np.ndarray], batch: int, time: int, *,
                   read_ids: Callable[[int, int], np.ndarray] | None = None, lengths: np.ndarray | None = None,
                   block: int = 4096) -> np.ndarray:
    """(B, T) valid steps under ``rule``, read ``block`` steps at a time. ``lengths`` (end padding, or front
    padding for "pre") limit it further."""
    valid = np.ones((batch, time), dtype=bool)
    if rule.kind == "pre":
        if lengths is None:
            raise InputError("--padding pre needs --lengths (each sequence's real steps, at the end of the time axis)")
        return np.arange(time)[None, :] >= (time - lengths)[:, None]
    for start in range(0, time, block):
        stop = min(time, start + block)
        if rule.kind == "zero_id":
            if read_ids is None:
                raise InputError("a mask_zero mask needs token ids")
            valid[:, start:stop] = read_ids(start, stop) != 0
        else:
            x = read_steps(start, stop)
            with np.errstate(invalid="ignore"):
                valid[:, start:stop] = np.any(x != np.asarray(rule.value, dtype=x.dtype), axis=-1)
    if lengths is not None:
        valid &= np.arange(time)[None, :] < lengths[:, None]
    return valid


class ExpandingSink:
    """See ``StepMask.expanding_sink``: compacted output chunks -> the expanded output, written per sequence in
    contiguous runs, masked steps filled (``repeat``) in pieces of at most FILL_PIECE steps."""

    FILL_PIECE = 4096

    def __init__(self, mask: StepMask, put_row, targets: np.ndarray, fill: str):
        self.mask, self.put_row, self.targets, self.fill = mask, put_row, targets, fill
        self.last_t = np.full(mask.batch, -1, dtype=np.int64)
        self.last_val: list[np.ndarray | None] = [None] * mask.batch

    def _repeat(self, b: int, lo: int, hi: int) -> None:
        """Steps lo..hi-1 of sequence b hold its latest output again (repeat fill; zeros before any)."""
        v = self.last_val[b]
        if self.fill != "repeat" or v is None:
            return
        for a in range(lo, hi, self.FILL_PIECE):
            n = min(hi, a + self.FILL_PIECE) - a
            self.put_row(b, a, np.broadcast_to(v, (n, v.shape[0])))

    def __call__(self, start: int, chunk: np.ndarray) -> None:
        n = chunk.shape[1]
        for b in range(self.mask.batch):
            stop = min(start + n, int(self.mask.counts[b]))
            if stop <= start:
                continue
            tg = self.targets[b, start:stop]
            vals = chunk[b, : stop - start]
            for lo, hi in consecutive_runs(tg):
                t0 = int(tg[lo])
                self._repeat(b, int(self.last_t[b]) + 1, t0)
                self.put_row(b, t0, vals[lo:hi])
                self.last_t[b] = t0 + (hi - lo) - 1
                self.last_val[b] = np.array(vals[hi - 1])

    def finish(self) -> None:
        for b in range(self.mask.batch):
            self._repeat(b, int(self.last_t[b]) + 1, self.mask.time)
