"""Regenerate the sample checkpoints and sequences in this folder, deterministically.

    python sample_checkpoints/make_samples.py

Every file is a function of the seeds below; running this twice gives byte-identical files. The Keras
sample needs Keras 3 (the dev extra; it runs on the torch backend, no TensorFlow); lstmscope reading it
needs neither.
"""

from __future__ import annotations

import io
import json
import os
import zipfile
from pathlib import Path

import numpy as np
import torch
from torch import nn
from safetensors.torch import save_file

HERE = Path(__file__).resolve().parent


class Tagger(nn.Module):
    """A bigger model with an LSTM inside it: embedding -> encoder.rnn -> head."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Linear(6, 8)
        self.encoder = nn.Module()
        self.encoder.rnn = nn.LSTM(8, 12, num_layers=2, batch_first=True)
        self.head = nn.Linear(12, 3)


def main() -> None:
    torch.manual_seed(0)
    rng = np.random.default_rng(0)

    # 1-layer unidirectional, saved as a plain state_dict of nn.LSTM (keys weight_ih_l0, ...).
    uni = nn.LSTM(4, 8, num_layers=1)
    torch.save(uni.state_dict(), HERE / "uni_1layer.pt")

    # 2-layer bidirectional, wrapped like a training script saves it: {"epoch", "model_state_dict"}.
    bi = nn.LSTM(4, 6, num_layers=2, bidirectional=True)
    torch.save({"epoch": 3, "model_state_dict": {f"lstm.{k}": v for k, v in bi.state_dict().items()}},
               HERE / "bi_2layer.pt")

    # proj_size: h_n and output are 3 wide, c_n is 8 wide.
    proj = nn.LSTM(4, 8, num_layers=2, proj_size=3)
    torch.save(proj.state_dict(), HERE / "proj.pt")

    # An LSTM nested inside a bigger model, as .safetensors (keys encoder.rnn.weight_ih_l0, ...).
    tagger = Tagger()
    save_file({k: v.contiguous() for k, v in tagger.state_dict().items()}, str(HERE / "tagger.safetensors"))

    # Sequences: one (B, T, F) batch of width 4, a (T, F) single sequence, a time-major copy,
    # a variable-length batch with its lengths, and an input for the tagger's LSTM (width 8).
    x = rng.standard_normal((3, 10, 4)).astype(np.float32)
    np.save(HERE / "batch.npy", x)
    np.save(HERE / "single.npy", x[0])
    np.save(HERE / "batch_time_major.npy", np.ascontiguousarray(x.transpose(1, 0, 2)))
    np.savez(HERE / "varlen.npz", x=rng.standard_normal((4, 10, 4)).astype(np.float32),
             lengths=np.array([10, 7, 3, 1], dtype=np.int64))
    np.save(HERE / "varlen_lengths.npy", np.array([10, 7, 3, 1], dtype=np.int64))
    np.save(HERE / "tagger_input.npy", rng.standard_normal((2, 6, 8)).astype(np.float32))
    keras_sample()
    sentiment_sample()
    flipflop_sample()


class FlipFlop(nn.Module):
    """A trained model whose gates do something visible (the README's trace heatmap): lstm -> head."""

    def __init__(self):
        super().__init__()
        self.lstm = nn.LSTM(3, 8, batch_first=True)
        self.head = nn.Linear(8, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (batch, time, 3) -> logits (batch, time, 1)
        return self.head(self.lstm(x)[0])


def flipflop_batch(rng: np.random.Generator, batch: int, steps: int) -> tuple[np.ndarray, np.ndarray]:
    """The flip-flop task: channel 0 is a "set" pulse, channel 1 a "reset" pulse (each on 6% of the steps),
    channel 2 noise to ignore; the target is 1 from a set until the next reset, else 0. The LSTM must hold
    one bit for as long as no pulse comes: its gates open at pulses and the cell state holds in between."""
    r = rng.random((batch, steps))
    x = np.zeros((batch, steps, 3), np.float32)  # (batch, time, 3)
    x[..., 0], x[..., 1] = r < 0.06, (r >= 0.06) & (r < 0.12)
    x[..., 2] = rng.uniform(-1, 1, (batch, steps))
    y = np.zeros((batch, steps, 1), np.float32)
    state = np.zeros(batch, np.float32)
    for t in range(steps):
        state = np.where(x[:, t, 0] > 0, 1.0, np.where(x[:, t, 1] > 0, 0.0, state))
        y[:, t, 0] = state
    return x, y


def flipflop_sample() -> None:
    """flipflop.pt (a state_dict with lstm.* and head.*), trained for about two seconds on one thread (300 Adam
    steps; it then gets every step of 256 fresh 200-step sequences right), and flipflop_input.npy: two
    sequences of 120 steps with their pulses at fixed steps (sequence 0: set 10, reset 40, set 70, reset 100;
    sequence 1: set 30, reset 90) and fresh noise."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one thread: the same float sums in the same order on every run
    try:
        torch.manual_seed(1)
        rng = np.random.default_rng(1)
        model = FlipFlop()
        opt = torch.optim.Adam(model.parameters(), lr=0.02)
        for _ in range(300):
            x, y = (torch.from_numpy(a) for a in flipflop_batch(rng, 32, 60))
            loss = nn.functional.binary_cross_entropy_with_logits(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        torch.save(model.state_dict(), HERE / "flipflop.pt")
    finally:
        torch.set_num_threads(threads)
    x = np.zeros((2, 120, 3), np.float32)  # (batch, time, 3)
    for b, pulses in enumerate([{10: 0, 40: 1, 70: 0, 100: 1}, {30: 0, 90: 1}]):
        for t, channel in pulses.items():
            x[b, t, channel] = 1.0
    x[..., 2] = rng.uniform(-1, 1, (2, 120))
    np.save(HERE / "flipflop_input.npy", x)


def keras_sample() -> None:
    """forecaster.keras: a Keras 3 model, Input(None, 4) -> LSTM(6, return_sequences) -> Dropout -> LSTM(6) -> Dense(1).
    The two LSTMs are one stacked module (encoder+decoder) in lstmscope's terms. Keras stamps the save date
    and zip times, and Python object ids, into the file; they are fixed here so the bytes depend on the seed alone."""
    os.environ.setdefault("KERAS_BACKEND", "torch")
    import keras

    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((None, 4)),
        keras.layers.LSTM(6, return_sequences=True, name="encoder"),
        keras.layers.Dropout(0.1, name="dropout"),
        keras.layers.LSTM(6, name="decoder"),
        keras.layers.Dense(1, name="head"),
    ], name="forecaster")
    _save_keras(model, HERE / "forecaster.keras")


SENTIMENT_WORDS = ["<pad>", "good", "great", "fun", "love", "fine", "bad", "awful", "dull", "hate", "poor",
                   "the", "movie", "plot", "was", "and", "a", "not"]  # id 0 is padding (mask_zero)


def sentiment_sample() -> None:
    """sentiment.keras + sentiment_ids.npy: Input(None,) int ids -> Embedding(18, 8, mask_zero=True) -> LSTM(6) ->
    Dense(1, sigmoid), trained for a few seconds to tell sentences with more of good..fine (ids 1-5) than of
    bad..poor (6-10) from the others; "not" (17) flips the word after it. The ids are padded at the front, as
    keras.utils.pad_sequences pads by default, so each sequence's last valid step is the last index and its first
    valid step differs; the third has a hole (a 0 inside) to show a step skipped in the middle."""
    os.environ.setdefault("KERAS_BACKEND", "torch")
    import keras

    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    n, t = 2048, 10
    ids = np.zeros((n, t), dtype=np.int64)
    y = np.zeros(n, dtype=np.float32)
    for k in range(n):
        length = int(rng.integers(3, t + 1))
        words = rng.integers(1, len(SENTIMENT_WORDS), size=length)
        score, flip = 0, 1
        for w in words:
            if w == 17:
                flip = -1
                continue
            score += flip * (1 if 1 <= w <= 5 else -1 if 6 <= w <= 10 else 0)
            flip = 1
        ids[k, t - length:] = words  # padding at the front
        y[k] = float(score > 0)
    model = keras.Sequential([
        keras.Input((None,), dtype="int32"),
        keras.layers.Embedding(len(SENTIMENT_WORDS), 8, mask_zero=True, name="embedding"),
        keras.layers.LSTM(6, name="lstm"),
        keras.layers.Dense(1, activation="sigmoid", name="head"),
    ], name="sentiment")
    model.compile(optimizer=keras.optimizers.Adam(0.02), loss="binary_crossentropy", metrics=["accuracy"])
    model.fit(ids, y, epochs=12, batch_size=64, verbose=0)
    _save_keras(model, HERE / "sentiment.keras")
    sentences = [["the", "movie", "was", "great", "fun"],
                 ["bad", "plot"],
                 ["not", "good", "<pad>", "and", "dull"],  # a 0 inside: a hole the mask skips
                 ["the", "plot", "was", "not", "bad", "and", "the", "movie", "was", "fine"]]
    out = np.zeros((len(sentences), t), dtype=np.int64)
    for k, words in enumerate(sentences):
        out[k, t - len(words):] = [SENTIMENT_WORDS.index(w) for w in words]
    np.save(HERE / "sentiment_ids.npy", out)


def _save_keras(model, buf: Path) -> None:
    """model.save(buf), then the archive made deterministic (save date, zip times, object ids fixed)."""
    model.save(buf)
    members = {}
    with zipfile.ZipFile(buf) as z:
        for name in z.namelist():
            members[name] = z.read(name)
    members["config.json"] = json.dumps(_renumber(json.loads(members["config.json"]))).encode()
    meta = json.loads(members["metadata.json"])
    meta["date_saved"] = "2026-01-01@00:00:00"
    members["metadata.json"] = json.dumps(meta, sort_keys=True).encode()
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as z:
        for name in sorted(members):
            info = zipfile.ZipInfo(name, date_time=(2026, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            z.writestr(info, members[name])
    buf.write_bytes(out.getvalue())


def _renumber(obj, ids=None):
    """Keras writes Python object ids as shared_object_id: number them 1, 2, ... in order of appearance."""
    ids = {} if ids is None else ids
    if isinstance(obj, dict):
        return {k: (ids.setdefault(v, len(ids) + 1) if k == "shared_object_id" else _renumber(v, ids))
                for k, v in obj.items()}
    if isinstance(obj, list):
        return [_renumber(v, ids) for v in obj]
    return obj


if __name__ == "__main__":
    main()
