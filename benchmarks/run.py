"""lstmscope's benchmark suite (issue 4): every goal as a ratio measured side by side in one run.

    python benchmarks/run.py            # the full suite, a few minutes
    python benchmarks/run.py --quick    # tiny sizes, one repetition: a smoke run (well under a minute)
    python benchmarks/run.py --only run_vs_bare --only threads
    python benchmarks/run.py --list     # the figure names

Timings on a shared machine are noisy, so each figure runs its sides interleaved (A, B, A, B, ...)
after one untimed warm-up of each, and reports the median of A, the median of B and the median of the
per-pair ratios A_i / B_i. Subprocess walls are taken here around each command; peak RSS comes from a
small wrapper process (see RSS_WRAPPER). Results go to stdout as Markdown (machine, table, notes);
progress goes to stderr.
Generated data lives in one temporary directory; each figure removes its files when it is done.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib.metadata
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Callable

REPO = Path(__file__).resolve().parent.parent
SAMPLES = REPO / "sample_checkpoints"
sys.path.insert(0, str(Path(__file__).resolve().parent))  # diff_big.py beside this file

# The "big" model of the run / all-layers / GFLOP/s figures, and the "small" streamed model.
BIG = SimpleNamespace(input_size=64, hidden_size=256, num_layers=2, bidirectional=True, batch=32, time=500)
SMALL = SimpleNamespace(input_size=32, hidden_size=64, num_layers=1, bidirectional=False, batch=1)
# The small stacked bidirectional model of trace_rss: a streamed trace of it goes through temporary files.
SMALL_BI = SimpleNamespace(input_size=8, hidden_size=16, num_layers=2, bidirectional=True, batch=1)

BARE_SCRIPT = '''\
"""What a user writes without lstmscope: load the input and a state_dict, build nn.LSTM, run it once."""
import json, sys, time
import numpy as np
import torch
from torch import nn

ckpt, inp = sys.argv[1], sys.argv[2]
i, h, layers, bi, threads = map(int, sys.argv[3:8])
if threads > 0:
    torch.set_num_threads(threads)
x = torch.from_numpy(np.load(inp))  # (batch, time, features)
lstm = nn.LSTM(i, h, num_layers=layers, bidirectional=bool(bi), batch_first=True)
lstm.load_state_dict(torch.load(ckpt, weights_only=True))
lstm.eval()
t0 = time.perf_counter()
with torch.no_grad():
    out, (h_n, c_n) = lstm(x)
print(json.dumps({"threads": torch.get_num_threads(), "forward_s": time.perf_counter() - t0,
                  "h_n_norm": float(h_n.norm())}))
'''


BARE_STREAM_SCRIPT = '''\
"""What a user writes to stream a long input without lstmscope: np.load(mmap_mode="r"), one nn.LSTM call per
chunk of steps, (h, c) carried from chunk to chunk."""
import json, sys, time
import numpy as np
import torch
from torch import nn

ckpt, inp = sys.argv[1], sys.argv[2]
i, h, layers, bi, threads, chunk = map(int, sys.argv[3:9])
if threads > 0:
    torch.set_num_threads(threads)
x = np.load(inp, mmap_mode="r")  # (batch, time, features), read a chunk at a time
lstm = nn.LSTM(i, h, num_layers=layers, bidirectional=bool(bi), batch_first=True)
lstm.load_state_dict(torch.load(ckpt, weights_only=True))
lstm.eval()
t0 = time.perf_counter()
state = None
with torch.no_grad():
    for s in range(0, x.shape[1], chunk):
        out, state = lstm(torch.from_numpy(np.ascontiguousarray(x[:, s:s + chunk])), state)
print(json.dumps({"threads": torch.get_num_threads(), "forward_s": time.perf_counter() - t0,
                  "h_n_norm": float(state[0].norm())}))
'''


# ----------------------------------------------------------------------------------------------------------
# Measuring


# Peak RSS needs a small middleman: Linux keeps ru_maxrss across execve, so a child forked from this
# (big, torch-loaded) process reports at least this process's RSS. The wrapper is a bare Python (about
# 10 MiB): it runs the command, then reports its wall time and RUSAGE_CHILDREN's ru_maxrss.
RSS_WRAPPER = ("import json, resource, subprocess, sys, time; t = time.perf_counter(); "
               "rc = subprocess.call(sys.argv[2:]); w = time.perf_counter() - t; "
               "open(sys.argv[1], 'w').write(json.dumps([w, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, rc]))")


@dataclass
class Measured:
    wall: float  # seconds, start to exit of the command
    rss: int | None  # bytes: the command's peak resident set (ru_maxrss), when asked for
    rc: int
    stdout: str
    stderr: str


def child_env() -> dict[str, str]:
    """The environment for measured children: LSTMSCOPE_THREADS removed so defaults are lstmscope's own."""
    env = dict(os.environ)
    env.pop("LSTMSCOPE_THREADS", None)
    return env


def measure(cmd: list[str], *, ok: tuple[int, ...] = (0,), rss: bool = False) -> Measured:
    """Run ``cmd`` once and time it; with ``rss``, through RSS_WRAPPER for its peak RSS as well.
    Raises when the exit code is unexpected."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err, \
            tempfile.NamedTemporaryFile("r", suffix=".json") as res:
        full = [sys.executable, "-I", "-S", "-c", RSS_WRAPPER, res.name, *cmd] if rss else cmd
        t0 = time.perf_counter()
        rc = subprocess.run(full, stdout=out, stderr=err, env=child_env()).returncode
        wall, peak = time.perf_counter() - t0, None
        if rss and rc == 0:
            wall, kib, rc = json.loads(res.read())
            peak = kib * 1024
        out.seek(0)
        err.seek(0)
        m = Measured(wall, peak, rc, out.read().decode(errors="replace"), err.read().decode(errors="replace"))
    if rc not in ok:
        raise RuntimeError(f"{' '.join(map(str, cmd))} exited {rc}: {m.stderr.strip()[-500:]}")
    return m


def lstmscope_cmd() -> list[str]:
    """The ``lstmscope`` entry point next to this Python, or ``python -m lstmscope``."""
    exe = Path(sys.executable).parent / "lstmscope"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "lstmscope"]


def interleave(variants: dict[str, Callable[[], float]], rounds: int, warmup: int) -> dict[str, list[float]]:
    """Run the variants in turn (A, B, C, A, B, C, ...) ``rounds`` times after ``warmup`` untimed turns;
    each callable returns its own measurement."""
    for _ in range(warmup):
        for fn in variants.values():
            fn()
    got: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(rounds):
        for k, fn in variants.items():
            got[k].append(fn())
    return got


def timed(fn: Callable[[], object]) -> Callable[[], float]:
    def run() -> float:
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0
    return run


def median_ratio(a: list[float], b: list[float]) -> float:
    return statistics.median(x / y for x, y in zip(a, b))


# ----------------------------------------------------------------------------------------------------------
# Results


@dataclass
class Row:
    figure: str  # the figure's name (--only NAME)
    what: str  # "A / B" in words
    a: str  # median of A, formatted with its unit
    b: str  # median of B, or ""
    value: float | None  # what the goal judges: the median of per-pair ratios, or an absolute value
    goal: tuple[str, float] | None  # ("<=", 2.0), or None for context rows
    unit: str = ""  # of value, when it is not a ratio
    skipped: str = ""  # why the figure did not run
    error: str = ""  # what went wrong when it did not finish

    @property
    def result(self) -> str:
        if self.error:
            return "ERROR"
        if self.skipped:
            return "skipped"
        if self.goal is None or self.value is None:
            return "info"
        op, limit = self.goal
        return "PASS" if (self.value <= limit if op == "<=" else self.value >= limit) else "FAIL"


@dataclass
class Ctx:
    tmp: Path
    quick: bool
    notes: list[str] = field(default_factory=list)

    def rounds(self, full: int) -> int:
        return 1 if self.quick else full

    @property
    def warmup(self) -> int:
        return 0 if self.quick else 1

    def note(self, figure: str, text: str) -> None:
        self.notes.append(f"**{figure}**: {text}")

    def workdir(self, name: str) -> Path:
        d = self.tmp / name
        d.mkdir()
        return d


def fmt_s(x: float) -> str:
    return f"{x:.3g} s" if x < 100 else f"{x:.0f} s"


def fmt_mib(x: float) -> str:
    return f"{x / 2**20:.1f} MiB"


def fmt_rate(x: float, unit: str) -> str:
    return f"{x:,.0f} {unit}" if x >= 100 else f"{x:.3g} {unit}"


# ----------------------------------------------------------------------------------------------------------
# Data


def save_lstm(path: Path, cfg: SimpleNamespace, seed: int = 0) -> None:
    """A plain nn.LSTM state_dict ``.pt`` (batch_first does not change the weights)."""
    import torch

    torch.manual_seed(seed)
    lstm = torch.nn.LSTM(cfg.input_size, cfg.hidden_size, num_layers=cfg.num_layers, bidirectional=cfg.bidirectional,
                         batch_first=True)
    torch.save(lstm.state_dict(), path)


def save_input(path: Path, batch: int, steps: int, features: int, seed: int = 1) -> None:
    import numpy as np

    x = np.random.default_rng(seed).standard_normal((batch, steps, features), dtype=np.float32)  # (batch, time, features)
    np.save(path, x)


def spec_of(cfg: SimpleNamespace):
    from lstmscope.spec import LSTMSpec

    return LSTMSpec(input_size=cfg.input_size, hidden_size=cfg.hidden_size, proj_size=0, num_layers=cfg.num_layers,
                    bidirectional=cfg.bidirectional, bias=True, dtype="float32")


def auto_chunk(cfg: SimpleNamespace, batch: int, steps: int) -> int | None:
    """The chunk size ``lstmscope run`` picks by itself for this input (None: one whole run)."""
    from lstmscope.runner import RunOptions, plan_chunks

    return plan_chunks(RunOptions("ckpt", "input"), spec_of(cfg),
                       SimpleNamespace(batch=batch, time=steps, features=cfg.input_size))


def chunking(cfg: SimpleNamespace, batch: int, steps: int) -> str:
    chunk = auto_chunk(cfg, batch, steps)
    return f"streamed in {chunk:,}-step chunks" if chunk else "one whole run"


def lstm_flops(cfg: SimpleNamespace, batch: int, steps: int) -> float:
    """Matmul FLOPs of one forward: 2*4*H*(I_l + H) per step, sequence and direction; I_l = D*H above layer 0."""
    d = 2 if cfg.bidirectional else 1
    per = sum(2 * 4 * cfg.hidden_size * ((cfg.input_size if layer == 0 else d * cfg.hidden_size) + cfg.hidden_size)
              for layer in range(cfg.num_layers))
    return float(per) * steps * batch * d


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


# ----------------------------------------------------------------------------------------------------------
# Figures


def fig_diff_small(ctx: Ctx) -> list[Row]:
    d = ctx.workdir("diff_small")
    ls = lstmscope_cmd()
    snaps = [d / "a.safetensors", d / "b.safetensors"]
    for s in snaps[:1] if ctx.quick else snaps:  # --quick saves a torch start-up: the second is a copy
        measure([*ls, "export-state", str(SAMPLES / "bi_2layer.pt"), str(SAMPLES / "varlen.npz"), "-o", str(s), "--quiet"])
    if ctx.quick:
        shutil.copyfile(snaps[0], snaps[1])
    diff = [*ls, "diff-states", *map(str, snaps)]
    got = interleave({"json": lambda: measure([*diff, "--json"]).wall,
                      "table": lambda: measure(diff).wall,
                      "numpy": lambda: measure([sys.executable, "-c", "import numpy"]).wall},
                     ctx.rounds(10), ctx.warmup)
    ctx.note("diff_small", "two `export-state` snapshots of sample_checkpoints/bi_2layer.pt + varlen.npz "
                           "(identical, exit 0). `--json` loads neither Rich nor the renderers (tests/test_diff.py guards "
                           "it); the default table needs both.")
    med = {k: fmt_s(statistics.median(v)) for k, v in got.items()}
    return [Row("diff_small", "`diff-states --json` / `python -c \"import numpy\"`", med["json"], med["numpy"],
                median_ratio(got["json"], got["numpy"]), ("<=", 1.5)),
            Row("diff_small", "`diff-states` (table) / `python -c \"import numpy\"`", med["table"], med["numpy"],
                median_ratio(got["table"], got["numpy"]), ("<=", 2.0))]


def fig_help(ctx: Ctx) -> list[Row]:
    ls = lstmscope_cmd()
    got = interleave({"help": lambda: measure([*ls, "--help"]).wall,
                      "numpy": lambda: measure([sys.executable, "-c", "import numpy"]).wall},
                     ctx.rounds(10), ctx.warmup)
    return [Row("help", "`lstmscope --help` / `python -c \"import numpy\"`", fmt_s(statistics.median(got["help"])),
                fmt_s(statistics.median(got["numpy"])), median_ratio(got["help"], got["numpy"]), ("<=", 1.5))]


def fig_inspect_keras(ctx: Ctx) -> list[Row]:
    """inspect on the shipped Keras 3 sample: torch-free (h5py only), so it starts near numpy's own time."""
    ls = lstmscope_cmd()
    sample = str(Path(__file__).resolve().parent.parent / "sample_checkpoints" / "forecaster.keras")
    got = interleave({"inspect": lambda: measure([*ls, "inspect", sample, "--json"]).wall,
                      "numpy": lambda: measure([sys.executable, "-c", "import numpy"]).wall},
                     ctx.rounds(10), ctx.warmup)
    return [Row("inspect_keras", "`lstmscope inspect forecaster.keras --json` / `python -c \"import numpy\"`",
                fmt_s(statistics.median(got["inspect"])), fmt_s(statistics.median(got["numpy"])),
                median_ratio(got["inspect"], got["numpy"]), ("<=", 3.0))]


def fig_run_vs_bare(ctx: Ctx) -> list[Row]:
    """lstmscope's overhead over bare PyTorch at EQUAL thread counts (the headline), and lstmscope's thread rule
    against torch's default thread count as a row of its own: with another process on a core, two LSTM threads
    run several times slower than one, so a ratio across thread counts measures the rule, not the overhead."""
    d = ctx.workdir("run_vs_bare")
    cfg = BIG
    steps = 50 if ctx.quick else cfg.time
    ckpt, inp, bare = d / "lstm.pt", d / "x.npy", d / "bare.py"
    save_lstm(ckpt, cfg)
    save_input(inp, cfg.batch, steps, cfg.input_size)
    bare.write_text(BARE_SCRIPT)
    ls = lstmscope_cmd()
    run_cmd = [*ls, "run", str(ckpt), str(inp), "--json"]
    info: dict[str, dict] = {}

    def run_bare(threads_arg: int, key: str) -> Callable[[], float]:
        def run() -> float:
            m = measure([sys.executable, str(bare), str(ckpt), str(inp), str(cfg.input_size), str(cfg.hidden_size),
                         str(cfg.num_layers), str(int(cfg.bidirectional)), str(threads_arg)])
            info[key] = json.loads(m.stdout)
            return m.wall
        return run

    streamed = auto_chunk(cfg, cfg.batch, steps) is not None
    # The headline: both sides at 1 thread (the count a busy machine leaves steady); then both at 2 threads, then
    # the thread rule (lstmscope's default against torch's default), then the whole-run context.
    variants = {"run1": lambda: measure([*run_cmd, "--threads", "1"]).wall, "bare1": run_bare(1, "bare at 1")}
    two = usable_cores() >= 2
    if not ctx.quick:
        if two:
            variants["run2"] = lambda: measure([*run_cmd, "--threads", "2"]).wall
            variants["bare2"] = run_bare(2, "bare at 2")
        variants["run"] = lambda: measure(run_cmd).wall
        variants["bare"] = run_bare(0, "bare at torch's default")
        if streamed:  # and the same run without automatic chunking
            variants["whole"] = lambda: measure([*run_cmd, "--chunk-size", "0"]).wall
    got = interleave(variants, ctx.rounds(5), ctx.warmup)
    from lstmscope.engine.fused import default_threads

    threads = default_threads(spec_of(cfg), cfg.batch)
    fwd = ", ".join(f"{k}: {v['forward_s']:.3g} s at {v['threads']} thread(s)" for k, v in info.items())
    torch_default = info.get("bare at torch's default", {}).get("threads", "?")
    ctx.note("run_vs_bare", f"I={cfg.input_size} H={cfg.hidden_size} {cfg.num_layers} layers bidirectional, B={cfg.batch} "
                            f"T={steps}, plain state_dict .pt, automatic chunking ({chunking(cfg, cfg.batch, steps)}). "
                            "Equal-thread rows pass --threads N to lstmscope and torch.set_num_threads(N) to the bare "
                            f"script. Thread-rule row: lstmscope's default (here {threads} when this process checked; "
                            "the rule counts the cores no other process is running on when the run starts) against "
                            f"torch's default ({torch_default}). The bare script's forward alone (last run): {fwd}.")
    med = {k: fmt_s(statistics.median(v)) for k, v in got.items()}
    rows = [Row("run_vs_bare", "`lstmscope run --json --threads 1` / bare PyTorch script at 1 thread", med["run1"],
                med["bare1"], median_ratio(got["run1"], got["bare1"]), ("<=", 1.0))]
    if "run2" in got:
        rows.append(Row("run_vs_bare", "`run --json --threads 2` / bare script at 2 threads", med["run2"], med["bare2"],
                        median_ratio(got["run2"], got["bare2"]), ("<=", 1.0)))
    if "run" in got:
        rows.append(Row("run_vs_bare", f"thread rule: `run --json` (default threads) / bare script at torch's default "
                                       f"({torch_default}) (context)", med["run"], med["bare"],
                        median_ratio(got["run"], got["bare"]), None))
    if "whole" in got:
        rows.append(Row("run_vs_bare", "`run --json --chunk-size 0` / bare script at torch's default (context)",
                        med["whole"], med["bare"], median_ratio(got["whole"], got["bare"]), None))
    return rows


def _big_in_process(ctx: Ctx):
    """The big model's spec, parameters and an input, in this process."""
    import numpy as np
    import torch

    cfg = BIG
    steps = 50 if ctx.quick else cfg.time
    torch.manual_seed(0)
    lstm = torch.nn.LSTM(cfg.input_size, cfg.hidden_size, num_layers=cfg.num_layers, bidirectional=cfg.bidirectional,
                         batch_first=True).eval()
    x = np.random.default_rng(1).standard_normal((cfg.batch, steps, cfg.input_size), dtype=np.float32)  # (batch, time, features)
    params = {k: v.detach() for k, v in lstm.state_dict().items()}
    return cfg, steps, lstm, params, x


def fig_all_layers(ctx: Ctx) -> list[Row]:
    import torch
    from lstmscope.engine.fused import default_threads, run_lstm

    cfg, steps, _, params, x = _big_in_process(ctx)
    spec = spec_of(cfg)
    threads = default_threads(spec, cfg.batch)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        got = interleave({"all": timed(lambda: run_lstm(spec, params, x, all_layers=True)),
                          "fused": timed(lambda: run_lstm(spec, params, x, all_layers=False))},
                         ctx.rounds(7), ctx.warmup)
    finally:
        torch.set_num_threads(before)
    ctx.note("all_layers", f"in process, engine.run_lstm on the run_vs_bare model (T={steps}), {threads} thread(s) "
                           "on both sides.")
    return [Row("all_layers", "`run_lstm(all_layers=True)` / fused", fmt_s(statistics.median(got["all"])),
                fmt_s(statistics.median(got["fused"])), median_ratio(got["all"], got["fused"]), ("<=", 1.1))]


def onednn_gemm(n: int):
    """A callable doing one n x n x n float32 GEMM in oneDNN, the library nn.LSTM's CPU kernel runs on, and its
    name; or torch.mm (MKL) and its name where this torch has no oneDNN (mkldnn) tensors."""
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    if torch.backends.mkldnn.is_available():
        try:
            am, bm = a.to_mkldnn(), b.to_mkldnn()
            linear = torch._C._nn.mkldnn_linear  # y = x @ w.T on mkldnn tensors: one oneDNN inner product
            linear(am, bm, None)
            return (lambda: linear(am, bm, None)), "oneDNN GEMM (mkldnn_linear)"
        except (AttributeError, RuntimeError):
            pass
    return (lambda: torch.mm(a, b)), "torch.mm (no oneDNN here)"


def fig_gflops(ctx: Ctx) -> list[Row]:
    """The fused forward's GFLOP/s against a oneDNN GEMM's on the same core(s). nn.LSTM's CPU kernel is oneDNN,
    so oneDNN's own best GEMM is the like-for-like ceiling; torch.mm goes to MKL, which reaches a smaller
    share of this CPU's FMA peak and is kept as a context row."""
    import torch
    from lstmscope.engine.fused import default_threads

    cfg, steps, lstm, _, x_np = _big_in_process(ctx)
    x = torch.from_numpy(x_np)
    n = 512 if ctx.quick else 2048
    a, b = torch.randn(n, n), torch.randn(n, n)
    gemm, gemm_name = onednn_gemm(n)
    flops, mm_flops = lstm_flops(cfg, cfg.batch, steps), 2.0 * n ** 3
    rows = []
    best: dict[int, tuple[float, float, float]] = {}
    before = torch.get_num_threads()
    for threads in sorted({1, default_threads(spec_of(cfg), cfg.batch)}):
        torch.set_num_threads(threads)

        def forward() -> None:
            with torch.inference_mode():
                lstm(x)

        try:
            got = interleave({"lstm": timed(forward), "gemm": timed(gemm), "mm": timed(lambda: torch.mm(a, b))},
                             ctx.rounds(5), ctx.warmup)
        finally:
            torch.set_num_threads(before)
        rate = {"lstm": [flops / t / 1e9 for t in got["lstm"]]}
        rate.update({k: [mm_flops / t / 1e9 for t in got[k]] for k in ("gemm", "mm")})
        best[threads] = (max(rate["lstm"]), max(rate["gemm"]), max(rate["mm"]))
        med = {k: fmt_rate(statistics.median(v), "GFLOP/s") for k, v in rate.items()}
        rows.append(Row("gflops", f"fused nn.LSTM forward / {n}x{n} {gemm_name}, GFLOP/s, {threads} thread(s)",
                        med["lstm"], med["gemm"], median_ratio(rate["lstm"], rate["gemm"]), None))
        rows.append(Row("gflops", f"{gemm_name} / torch.mm (MKL), {n}x{n}, {threads} thread(s) (context)",
                        med["gemm"], med["mm"], median_ratio(rate["gemm"], rate["mm"]), None))
    ctx.note("gflops", f"{flops / 1e9:.1f} GFLOP per forward (2*4*H*(I_l+H) per step, sequence and direction; "
                       f"layer 2's input is 2H wide; gate nonlinearities not counted), T={steps}, float32. The ceiling "
                       f"is {gemm_name}: torch._C._nn.mkldnn_linear on mkldnn (oneDNN) tensors, chosen because "
                       "nn.LSTM's CPU kernel is oneDNN too (torch.mm goes to MKL); a numpy or torch loop is no FMA "
                       "peak. Best of the rounds, forward / oneDNN / torch.mm: "
                       + "; ".join(f"{t} thread(s) {fw:.3g} / {g:.3g} / {mm:.3g} GFLOP/s"
                                   for t, (fw, g, mm) in best.items()) + ".")
    return rows


def fig_threads(ctx: Ctx) -> list[Row]:
    import numpy as np
    import torch
    from lstmscope.engine.fused import default_threads, run_lstm

    cores = usable_cores()
    if cores < 2:
        return [Row("threads", "2 threads / 1 thread", "", "", None, None, skipped="only 1 usable core")]
    rows = []
    before = torch.get_num_threads()
    cfg_b, steps_b, _, params_b, x_b = _big_in_process(ctx)
    cfg_s = SMALL
    steps_s = 2000 if ctx.quick else 20000
    torch.manual_seed(0)
    small = torch.nn.LSTM(cfg_s.input_size, cfg_s.hidden_size)
    params_s = {k: v.detach() for k, v in small.state_dict().items()}
    x_s = np.random.default_rng(1).standard_normal((1, steps_s, cfg_s.input_size), dtype=np.float32)  # (batch, time, features)
    for label, cfg, steps, params, x, batch, goal in (
            ("small", cfg_s, steps_s, params_s, x_s, 1, (">=", 1.0)),
            ("big", cfg_b, steps_b, params_b, x_b, cfg_b.batch, ("<=", 1.0))):
        spec = spec_of(cfg)

        def at(threads: int) -> Callable[[], float]:
            def run() -> float:
                torch.set_num_threads(threads)
                t0 = time.perf_counter()
                run_lstm(spec, params, x)
                return time.perf_counter() - t0
            return run

        try:
            got = interleave({"two": at(2), "one": at(1)}, ctx.rounds(7 if label == "small" else 5), ctx.warmup)
        finally:
            torch.set_num_threads(before)
        picks = default_threads(spec, batch)
        rows.append(Row("threads", f"{label} model: 2 threads / 1 thread (default picks {picks})",
                        fmt_s(statistics.median(got["two"])), fmt_s(statistics.median(got["one"])),
                        median_ratio(got["two"], got["one"]), goal))
    ctx.note("threads", f"in process, engine.run_lstm, torch.set_num_threads before each call. small: I={cfg_s.input_size} "
                        f"H={cfg_s.hidden_size} B=1 T={steps_s}; big: the run_vs_bare model (T={steps_b}). Goal: the "
                        "side the default picks is the faster one (small >= 1, big <= 1).")
    return rows


def fig_stepwise_vs_fused(ctx: Ctx) -> list[Row]:
    import torch
    from lstmscope.engine.stepwise import StepwiseLSTM
    from lstmscope.spec import KERAS2_HARD_SIGMOID

    cfg, steps, lstm, params, x_np = _big_in_process(ctx)
    x = torch.from_numpy(x_np)  # (batch, time, features)

    def stepwise(**kw) -> StepwiseLSTM:
        m = StepwiseLSTM(cfg.input_size, cfg.hidden_size, num_layers=cfg.num_layers, bidirectional=cfg.bidirectional,
                         batch_first=True, **kw)
        m.load_state_dict(params)
        return m

    def forward(module: torch.nn.Module) -> Callable[[], float]:
        def run() -> None:
            with torch.inference_mode():
                module(x)
        return timed(run)

    standard, keras = stepwise(), stepwise(gate_activation=KERAS2_HARD_SIGMOID)
    rows = []
    before = torch.get_num_threads()
    for threads in (1, 2):
        what = f"StepwiseLSTM / nn.LSTM forward, standard cell, {threads} thread(s) each"
        if threads > usable_cores():
            rows.append(Row("stepwise_vs_fused", what, "", "", None, ("<=", 2.5), skipped=f"only {usable_cores()} usable core"))
            continue
        variants = {"stepwise": forward(standard), "fused": forward(lstm)}
        if threads == 1:  # context: a Keras cell (hard_sigmoid gates), which only the stepwise engine runs
            variants["keras"] = forward(keras)
        torch.set_num_threads(threads)
        try:
            got = interleave(variants, ctx.rounds(5), ctx.warmup)
        finally:
            torch.set_num_threads(before)
        med = {k: fmt_s(statistics.median(v)) for k, v in got.items()}
        rows.append(Row("stepwise_vs_fused", what, med["stepwise"], med["fused"],
                        median_ratio(got["stepwise"], got["fused"]), ("<=", 2.5)))
        if "keras" in got:
            rows.append(Row("stepwise_vs_fused", "StepwiseLSTM with hard_sigmoid(0.2, 0.5) gates / nn.LSTM, 1 thread "
                                                 "(context)", med["keras"], med["fused"],
                            median_ratio(got["keras"], got["fused"]), None))
    ctx.note("stepwise_vs_fused", f"in process, the run_vs_bare model (T={steps}), float32, batch_first, same thread "
                                  "count on both sides (torch.set_num_threads); nn.LSTM is torch's fused kernel, "
                                  "StepwiseLSTM (engine/stepwise.py) a Python loop over time steps.")
    return rows


@contextlib.contextmanager
def _prepack_env(value: str):
    """Run the block with LSTMSCOPE_PREPACK=value (engine/stepwise.py's switch), then restore it."""
    from lstmscope.engine.stepwise import PREPACK_ENV

    before = os.environ.get(PREPACK_ENV)
    os.environ[PREPACK_ENV] = value
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(PREPACK_ENV, None)
        else:
            os.environ[PREPACK_ENV] = before


def fig_trace_vs_fused(ctx: Ctx) -> list[Row]:
    import torch
    from lstmscope.engine import stepwise
    from lstmscope.engine.trace import QUANTITIES, trace_lstm

    cfg, steps, lstm, params, x_np = _big_in_process(ctx)
    spec = spec_of(cfg)
    params_np = {k: v.numpy() for k, v in params.items()}
    x = torch.from_numpy(x_np)  # (batch, time, features)
    ran: dict[str, str] = {}

    def trace(prepack: str) -> Callable[[], float]:
        def run() -> None:
            with _prepack_env(prepack):
                trace_lstm(spec, params_np, x_np, quantities=QUANTITIES, sink=lambda *block: None)  # blocks dropped
            ran[prepack] = stepwise.last_recurrent_path
        return timed(run)

    def fused() -> None:
        with torch.inference_mode():
            lstm(x)

    rows = []
    before = torch.get_num_threads()
    for threads in (1, 2):
        what = f"full trace (6 quantities, no writing) / nn.LSTM forward, {threads} thread(s) each"
        if threads > usable_cores():
            rows.append(Row("trace_vs_fused", what, "", "", None, ("<=", 2.0), skipped=f"only {usable_cores()} usable core"))
            continue
        torch.set_num_threads(threads)
        try:
            got = interleave({"prepacked": trace("1"), "plain": trace("0"), "fused": timed(fused)},
                             ctx.rounds(5), ctx.warmup)
        finally:
            torch.set_num_threads(before)
        med = {k: fmt_s(statistics.median(v)) for k, v in got.items()}
        rows.append(Row("trace_vs_fused", what, med["prepacked"], med["fused"],
                        median_ratio(got["prepacked"], got["fused"]), ("<=", 2.0)))
        rows.append(Row("trace_vs_fused", f"the same with LSTMSCOPE_PREPACK=0 (plain addmm_ loop), {threads} thread(s) "
                                          "(context)", med["plain"], med["fused"],
                        median_ratio(got["plain"], got["fused"]), None))
    mib = (2 if cfg.bidirectional else 1) * cfg.num_layers * 6 * cfg.batch * steps * cfg.hidden_size * 4 / 2**20
    ctx.note("trace_vs_fused", f"in process, the run_vs_bare model (T={steps}), float32: engine.trace.trace_lstm with "
                               f"all six quantities ({mib:.0f} MiB of float32 blocks copied to numpy, then dropped by "
                               "the sink) against the fused nn.LSTM forward of the same parameters and input. "
                               f"Recurrent product that ran (stepwise.last_recurrent_path): default {ran.get('1')}, "
                               f"LSTMSCOPE_PREPACK=0 {ran.get('0')}.")
    return rows


def fig_trace_write(ctx: Ctx) -> list[Row]:
    import numpy as np
    import torch
    from lstmscope.engine.fused import configure_threads, default_threads
    from lstmscope.engine.trace import QUANTITIES, trace_lstm
    from lstmscope.runner import RunOptions, trace

    cfg = BIG
    steps = 50 if ctx.quick else cfg.time
    what = "trace file write speed: file size / `runner.trace` wall"
    d = 2 if cfg.bidirectional else 1
    need = 2 * d * cfg.num_layers * 6 * cfg.batch * steps * cfg.hidden_size * 4 + (64 << 20)  # the file twice over
    free = shutil.disk_usage(ctx.tmp).free
    if free < need:
        why = f"needs {need / 2**20:.0f} MiB free in {ctx.tmp}, has {free / 2**20:.0f} MiB"
        return [Row("trace_write", what, "", "", None, None, "MB/s", skipped=why)]
    w = ctx.workdir("trace_write")
    ckpt, inp, out = w / "lstm.pt", w / "x.npy", w / "trace.safetensors"
    save_lstm(ckpt, cfg)
    save_input(inp, cfg.batch, steps, cfg.input_size)
    spec = spec_of(cfg)
    threads = default_threads(spec, cfg.batch)
    params = {k: v.numpy() for k, v in torch.load(ckpt, weights_only=True).items()}
    x = np.load(inp)  # (batch, time, features)
    sizes: list[int] = []

    def write() -> None:
        out.unlink(missing_ok=True)
        trace(RunOptions(ckpt, inp, threads=threads), out)  # sets `threads` itself
        sizes.append(out.stat().st_size)

    def compute() -> None:
        configure_threads(threads)
        trace_lstm(spec, params, x, quantities=QUANTITIES, sink=lambda *block: None)

    before = torch.get_num_threads()
    try:
        got = interleave({"write": timed(write), "compute": timed(compute)}, ctx.rounds(3), ctx.warmup)
    finally:
        torch.set_num_threads(before)
    size = sizes[-1]
    shutil.rmtree(w)
    rate = [size / t / 1e6 for t in got["write"]]
    extra = [size / max(a - b, 1e-9) / 1e6 for a, b in zip(got["write"], got["compute"])]
    ctx.note("trace_write", f"in process, the run_vs_bare model (T={steps}), {threads} thread(s) (the default): "
                            f"`lstmscope.runner.trace` writing all six quantities to a {size / 1e6:.0f} MB trace file "
                            f"(read, run, statistics and write; the file removed before each round) against "
                            f"engine.trace.trace_lstm alone with a sink that drops the blocks. The time the file adds, "
                            f"as a rate: {statistics.median(extra):,.0f} MB/s (median over the pairs). MB = 10^6 bytes.")
    return [Row("trace_write", what, fmt_rate(statistics.median(rate), "MB/s"), "", statistics.median(rate), None,
                "MB/s"),
            Row("trace_write", "`runner.trace` to a file / the same trace computed only (no file)",
                fmt_s(statistics.median(got["write"])), fmt_s(statistics.median(got["compute"])),
                median_ratio(got["write"], got["compute"]), None)]


def _small_stream_files(ctx: Ctx, name: str, long_steps: int, short_steps: int):
    d = ctx.workdir(name)
    ckpt, long_x, short_x = d / "lstm.pt", d / f"x{long_steps}.npy", d / f"x{short_steps}.npy"
    save_lstm(ckpt, SMALL)
    save_input(long_x, SMALL.batch, long_steps, SMALL.input_size)
    save_input(short_x, SMALL.batch, short_steps, SMALL.input_size)
    return d, ckpt, long_x, short_x


def fig_rss(ctx: Ctx) -> list[Row]:
    long_steps, short_steps = (30_000, 1_000) if ctx.quick else (1_000_000, 10_000)
    d, ckpt, long_x, short_x = _small_stream_files(ctx, "rss", long_steps, short_steps)
    ls = lstmscope_cmd()
    got = interleave({"long": lambda: measure([*ls, "run", str(ckpt), str(long_x), "--json"], rss=True).rss,
                      "short": lambda: measure([*ls, "run", str(ckpt), str(short_x), "--json"], rss=True).rss},
                     ctx.rounds(2), 0)
    shutil.rmtree(d)
    ctx.note("rss", f"I={SMALL.input_size} H={SMALL.hidden_size} 1 layer unidirectional B=1; `lstmscope run --json`, "
                    f"default threads and automatic chunking ({long_steps:,} steps: {chunking(SMALL, 1, long_steps)}; "
                    f"{short_steps:,} steps: {chunking(SMALL, 1, short_steps)}); "
                    f"input files {long_steps * SMALL.input_size * 4 / 2**20:.0f} MiB and "
                    f"{short_steps * SMALL.input_size * 4 / 2**20:.1f} MiB; peak RSS is the command's ru_maxrss, "
                    "taken by a small wrapper process (see RSS_WRAPPER).")
    return [Row("rss", f"peak RSS, {long_steps:,}-step streamed run / {short_steps:,}-step run",
                fmt_mib(statistics.median(got["long"])), fmt_mib(statistics.median(got["short"])),
                median_ratio(got["long"], got["short"]), ("<=", 1.25))]


def fig_trace_rss(ctx: Ctx) -> list[Row]:
    """Peak RSS of `lstmscope trace` at a long and a short input: the long one streams (automatic chunks), its
    trace goes block by block to the file, so memory must not grow with the steps."""
    long_steps, short_steps = (30_000, 1_000) if ctx.quick else (1_000_000, 10_000)
    rows = []
    for name, cfg in (("trace_rss", SMALL), ("trace_rss_bi", SMALL_BI)):
        d = ctx.workdir(name)
        ckpt, long_x, short_x = d / "lstm.pt", d / f"x{long_steps}.npy", d / f"x{short_steps}.npy"
        save_lstm(ckpt, cfg)
        save_input(long_x, 1, long_steps, cfg.input_size)
        save_input(short_x, 1, short_steps, cfg.input_size)
        ls = lstmscope_cmd()
        runs: dict[str, list] = {"long": [], "short": []}

        def trace(x: Path, key: str) -> Callable[[], float]:
            def run() -> float:
                m = measure([*ls, "trace", str(ckpt), str(x), "-o", str(d / f"{key}.safetensors"), "--force",
                             "--json"], rss=True)
                runs[key].append((m.wall, (d / f"{key}.safetensors").stat().st_size))
                return m.rss
            return run

        got = interleave({"long": trace(long_x, "long"), "short": trace(short_x, "short")}, ctx.rounds(1), 0)
        shutil.rmtree(d)
        wall, size = statistics.median(w for w, _ in runs["long"]), runs["long"][0][1]
        shape = (f"I={cfg.input_size} H={cfg.hidden_size} {cfg.num_layers} layer{'s' if cfg.num_layers > 1 else ''} "
                 f"{'bidirectional' if cfg.bidirectional else 'unidirectional'} B=1")
        ctx.note(name, f"{shape}; `lstmscope trace -o T --json`, all six quantities, default threads and automatic "
                       f"chunking ({long_steps:,} steps: {chunking(cfg, 1, long_steps)}; {short_steps:,} steps: "
                       f"{chunking(cfg, 1, short_steps)}); the {long_steps:,}-step trace is {size / 2**20:,.0f} MiB and took "
                       f"{fmt_s(wall)} ({size / 2**20 / wall:,.0f} MiB/s of trace); peak RSS is ru_maxrss via "
                       "RSS_WRAPPER.")
        rows.append(Row(name, f"peak RSS, {long_steps:,}-step trace / {short_steps:,}-step trace ({shape})",
                        fmt_mib(statistics.median(got["long"])), fmt_mib(statistics.median(got["short"])),
                        median_ratio(got["long"], got["short"]), ("<=", 1.25)))
    return rows


def fig_throughput(ctx: Ctx) -> list[Row]:
    """Streamed `run` against what a user writes to stream without lstmscope: BARE_STREAM_SCRIPT, with the same
    chunk size and thread count. The input's sha256 (load_sequences hashes every input) is timed on its own."""
    from lstmscope.engine.fused import default_threads
    from lstmscope.fileio import file_sha256

    steps = 30_000 if ctx.quick else 1_000_000
    d, ckpt, x, _ = _small_stream_files(ctx, "throughput", steps, 10)
    ls = lstmscope_cmd()
    threads = default_threads(spec_of(SMALL), 1)
    chunk = auto_chunk(SMALL, 1, steps) or steps
    bare, bare_stream = d / "bare.py", d / "bare_stream.py"
    bare.write_text(BARE_SCRIPT)
    bare_stream.write_text(BARE_STREAM_SCRIPT)
    info: dict[str, dict] = {}
    peaks: dict[str, list[int]] = {}

    def timed_cmd(key: str, cmd: list[str]) -> Callable[[], float]:
        def run() -> float:
            m = measure(cmd, rss=True)  # the wall is the command's own, the wrapper's start-up left out
            peaks.setdefault(key, []).append(m.rss)
            if key.startswith("bare"):
                info[key] = json.loads(m.stdout)
            return m.wall
        return run

    def hash_input() -> float:
        t0 = time.perf_counter()
        file_sha256(x)
        return time.perf_counter() - t0

    model = [str(SMALL.input_size), str(SMALL.hidden_size), "1", "0", str(threads)]
    run_cmd = [*ls, "run", str(ckpt), str(x), "--json"]
    variants = {"stream": timed_cmd("stream", run_cmd),
                "bare_stream": timed_cmd("bare_stream", [sys.executable, str(bare_stream), str(ckpt), str(x), *model,
                                                         str(chunk)]),
                "sha": hash_input}
    if not ctx.quick:  # context: lstmscope without chunking, and one whole-array nn.LSTM call. (Bare PyTorch at
        # torch's default thread count is left out: on a busy machine two threads make this B=1 model several
        # times slower, see the threads figure.)
        variants["whole"] = timed_cmd("whole", [*run_cmd, "--chunk-size", "0"])
        variants["bare"] = timed_cmd("bare", [sys.executable, str(bare), str(ckpt), str(x), *model])
    got = interleave(variants, ctx.rounds(3), 0)
    size = x.stat().st_size
    shutil.rmtree(d)
    rate = {k: [steps / t for t in v] for k, v in got.items() if k != "sha"}
    med = {k: statistics.median(v) for k, v in rate.items()}
    rows = [Row("throughput", f"steps/s, streamed `run --json` / bare streaming loop (np.load mmap, nn.LSTM per "
                              f"{chunk:,}-step chunk, (h, c) carried; {threads} thread)",
                fmt_rate(med["stream"], "steps/s"), fmt_rate(med["bare_stream"], "steps/s"),
                median_ratio(rate["stream"], rate["bare_stream"]), (">=", 1.0)),
            Row("throughput", "sha256 of the input (in process) / streamed `run --json` wall (context)",
                fmt_s(statistics.median(got["sha"])), fmt_s(statistics.median(got["stream"])),
                median_ratio(got["sha"], got["stream"]), None)]
    if "whole" in rate:
        rows.append(Row("throughput", "steps/s, streamed `run --json` / bare whole-array nn.LSTM (context)",
                        fmt_rate(med["stream"], "steps/s"), fmt_rate(med["bare"], "steps/s"),
                        median_ratio(rate["stream"], rate["bare"]), None))
        rows.append(Row("throughput", "steps/s, streamed `run --json` / `run --json --chunk-size 0` (context)",
                        fmt_rate(med["stream"], "steps/s"), fmt_rate(med["whole"], "steps/s"),
                        median_ratio(rate["stream"], rate["whole"]), None))
    names = {"stream": "streamed", "bare_stream": "bare streaming loop", "bare": "bare whole-array",
             "whole": "--chunk-size 0"}
    rss = ", ".join(f"{names[k]} {fmt_mib(statistics.median(v))}" for k, v in peaks.items())
    fwd = ", ".join(f"{names[k]} {steps / v['forward_s']:,.0f} steps/s" for k, v in info.items())
    ctx.note("throughput", f"{steps:,} steps, the rss model; steps/s from the subprocess wall (start-up, loading and, "
                           f"for lstmscope, hashing included); lstmscope at its default {threads} thread(s), automatic "
                           f"chunking ({chunking(SMALL, 1, steps)}); the bare scripts at the same thread count. "
                           f"Forward alone (last run): {fwd}. The input is {size / 2**20:.0f} MiB; its sha256 "
                           f"(lstmscope.fileio.file_sha256, page cache warm) took "
                           f"{fmt_s(statistics.median(got['sha']))}. Median peak RSS: {rss}.")
    return rows


def _data_span(path: Path) -> tuple[int, int]:
    """(first data byte, number of float32 values) of a safetensors file whose tensors are all float32."""
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        head = json.loads(f.read(n))
    ends = [v["data_offsets"][1] for k, v in head.items() if k != "__metadata__"]
    assert all(v["dtype"] == "F32" for k, v in head.items() if k != "__metadata__")
    return 8 + n, max(ends) // 4


def fig_diff_big(ctx: Ctx) -> list[Row]:
    """`diff-states` on two big snapshots against BLOCK_PASS (benchmarks/block_pass.py): one float32 pass over
    the same bytes, read the same way (positioned reads of the same blocks), in a process of its own."""
    nbytes = (16 << 20) if ctx.quick else (1 << 30)
    need = 2 * nbytes + (256 << 20)
    free = shutil.disk_usage(ctx.tmp).free
    size_s = "16 MiB" if ctx.quick else "1 GiB"
    what_ratio = f"`diff-states` / one float32 block pass over the same bytes (block_pass.py), two {size_s} snapshots"
    what_wall, what_rss = f"`diff-states` wall, two {size_s} snapshots", f"peak RSS / file size, two {size_s} snapshots"
    if free < need:
        why = f"needs {need / 2**30:.1f} GiB free in {ctx.tmp}, has {free / 2**30:.1f} GiB"
        return [Row("diff_big", what_ratio, "", "", None, ("<=", 1.5), skipped=why),
                Row("diff_big", what_wall, "", "", None, None, "s", skipped=why),
                Row("diff_big", what_rss, "", "", None, ("<=", 0.5), skipped=why)]
    d = ctx.workdir("diff_big")
    t0 = time.perf_counter()
    try:
        from diff_big import make_pair
    except ImportError:  # the other helper's module is missing: write the pair ourselves
        make_pair = _make_pair_fallback
    a, b = make_pair(d, nbytes)
    made = time.perf_counter() - t0
    size = (a.stat().st_size + b.stat().st_size) / 2
    (off_a, count), (off_b, count_b) = _data_span(a), _data_span(b)
    assert count == count_b
    from lstmscope.statediff import BLOCK

    block_pass = [sys.executable, str(Path(__file__).resolve().parent / "block_pass.py"), str(a), str(b), str(off_a),
                  str(off_b), str(count), str(BLOCK)]
    runs: list[Measured] = []

    def diff() -> float:
        runs.append(measure([*lstmscope_cmd(), "diff-states", str(a), str(b), "--json"], ok=(0, 1), rss=True))
        return runs[-1].wall

    got = interleave({"diff": diff, "pass": lambda: measure(block_pass, rss=True).wall,
                      "floor": lambda: measure([*block_pass, "--cosine"]).wall}, ctx.rounds(5), ctx.warmup)
    rows_json = json.loads(runs[-1].stdout)["rows"]
    shutil.rmtree(d)
    rss = [m.rss / size for m in runs]
    ctx.note("diff_big", f"pair made by benchmarks/diff_big.make_pair in {made:.1f} s ({size / 2**30:.3f} GiB each; B "
                         f"differs from A by design: {sum(r['mismatched'] for r in rows_json):,} mismatches, exit "
                         f"{sorted({m.rc for m in runs})}); files freshly written, so reads come from the page cache. "
                         f"`diff-states --json` against block_pass.py: {count:,} float32 values per file read "
                         f"{BLOCK:,} at a time with os.preadv into buffers allocated once, and one np.subtract per "
                         "block (Python and numpy start-up included on both sides). Peak RSS is the command's "
                         "ru_maxrss, taken by a small wrapper process. The floor row is block_pass.py --cosine: the "
                         "same pass plus each block converted to float64 and the cosine's three np.dot products, the "
                         "least any diff that reports diff-states' float64 cosine does; where it is above the goal "
                         "on its own, the goal cannot be met without a float32 cosine or compiled code.")
    return [Row("diff_big", what_ratio, fmt_s(statistics.median(got["diff"])), fmt_s(statistics.median(got["pass"])),
                median_ratio(got["diff"], got["pass"]), ("<=", 1.5)),
            Row("diff_big", "floor: block pass + float64 cosine sums / block pass", fmt_s(statistics.median(got["floor"])),
                fmt_s(statistics.median(got["pass"])), median_ratio(got["floor"], got["pass"]), None),
            Row("diff_big", "`diff-states --json` / that floor", fmt_s(statistics.median(got["diff"])),
                fmt_s(statistics.median(got["floor"])), median_ratio(got["diff"], got["floor"]), None),
            Row("diff_big", what_wall, fmt_s(statistics.median(got["diff"])), "", statistics.median(got["diff"]), None,
                "s"),
            Row("diff_big", what_rss, fmt_mib(statistics.median([m.rss for m in runs])), fmt_mib(size),
                statistics.median(rss), ("<=", 0.5))]


def _make_pair_fallback(directory: Path, nbytes: int):
    import numpy as np
    from lstmscope.snapshot import snapshot_metadata, write_snapshot

    cfg = BIG
    spec = spec_of(cfg)
    width = 2 * cfg.hidden_size
    steps = max(1, nbytes // (cfg.batch * width * 4))
    rng = np.random.default_rng(0)
    out = rng.standard_normal((cfg.batch, steps, width), dtype=np.float32)  # (batch, time, 2 * hidden)
    h = rng.standard_normal((4, cfg.batch, cfg.hidden_size)).astype(np.float32)  # (layers * directions, batch, hidden)
    meta = snapshot_metadata(spec, batch_size=cfg.batch, dtype="float32", module="lstm", checkpoint_sha256=None,
                             input_sha256=None)
    paths = directory / "a.safetensors", directory / "b.safetensors"
    write_snapshot(paths[0], {"h_n": h, "c_n": h, "output": out}, meta)
    out += np.float32(1e-3)
    write_snapshot(paths[1], {"h_n": h, "c_n": h, "output": out}, meta)
    return paths


def fig_compare_vs_runs(ctx: Ctx) -> list[Row]:
    """``compare A B INPUT --json`` against ``run A --json`` + ``run B --json``: A the big model's .pt, B its ONNX
    export (a copy of the .pt when the onnx package is absent)."""
    d = ctx.workdir("compare_vs_runs")
    cfg = BIG
    steps = 50 if ctx.quick else cfg.time
    ckpt, inp = d / "lstm.pt", d / "x.npy"
    save_lstm(ckpt, cfg)
    save_input(inp, cfg.batch, steps, cfg.input_size)
    other = d / "lstm.onnx"
    try:
        import importlib.util
        import warnings

        if importlib.util.find_spec("onnx") is None:
            raise ImportError("onnx")
        import torch

        lstm = torch.nn.LSTM(cfg.input_size, cfg.hidden_size, num_layers=cfg.num_layers,
                             bidirectional=cfg.bidirectional, batch_first=True)
        lstm.load_state_dict(torch.load(ckpt, weights_only=True))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(lstm, (torch.zeros(1, 2, cfg.input_size),), str(other), dynamo=False,
                              input_names=["x"], output_names=["y", "h", "c"], opset_version=14)
        what_b = "its ONNX export (torch.onnx.export)"
    except ImportError:
        other = d / "copy.pt"
        shutil.copyfile(ckpt, other)
        what_b = "a copy of the .pt (the onnx package is not installed)"
    ls = lstmscope_cmd()

    def two_runs() -> float:
        return measure([*ls, "run", str(ckpt), str(inp), "--json"]).wall + \
            measure([*ls, "run", str(other), str(inp), "--json"]).wall

    got = interleave({"compare": lambda: measure([*ls, "compare", str(ckpt), str(other), str(inp), "--json"]).wall,
                      "runs": two_runs}, ctx.rounds(5), ctx.warmup)
    ctx.note("compare_vs_runs", f"the run_vs_bare model (I={cfg.input_size} H={cfg.hidden_size} {cfg.num_layers} layers "
                                f"bidirectional, B={cfg.batch} T={steps}): A its .pt, B {what_b}; both sides "
                                "at lstmscope's default threads. compare reads, runs and diffs both in one process; "
                                "the two runs start two processes (two torch imports) and diff nothing.")
    return [Row("compare_vs_runs", "`lstmscope compare A B INPUT --json` / `run A --json` + `run B --json`",
                fmt_s(statistics.median(got["compare"])), fmt_s(statistics.median(got["runs"])),
                median_ratio(got["compare"], got["runs"]), ("<=", 1.0))]


FIGURES: dict[str, Callable[[Ctx], list[Row]]] = {
    "diff_small": fig_diff_small,
    "help": fig_help,
    "inspect_keras": fig_inspect_keras,
    "run_vs_bare": fig_run_vs_bare,
    "all_layers": fig_all_layers,
    "gflops": fig_gflops,
    "threads": fig_threads,
    "stepwise_vs_fused": fig_stepwise_vs_fused,
    "trace_vs_fused": fig_trace_vs_fused,
    "trace_write": fig_trace_write,
    "rss": fig_rss,
    "trace_rss": fig_trace_rss,
    "throughput": fig_throughput,
    "diff_big": fig_diff_big,
    "compare_vs_runs": fig_compare_vs_runs,
}


# ----------------------------------------------------------------------------------------------------------
# Report


def version_of(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def compile_bytecode() -> str:
    """Write lstmscope's bytecode (``__pycache__``) before anything is timed, and say so.

    A regular install compiles it, and an editable one writes it on the first run, so a user's commands read it
    from ``.pyc`` files as numpy's do. Where PYTHONDONTWRITEBYTECODE is set (as on some CI images) nothing ever
    writes it, and every start-up figure would count compiling lstmscope's sources, about 20 ms a command,
    against numpy's compiled import: that is not what a user waits for. Python reads existing ``.pyc`` files
    whatever that variable says.
    """
    import compileall
    import importlib.util

    spec = importlib.util.find_spec("lstmscope")
    where = [Path(p) for p in (spec.submodule_search_locations or [])] if spec else []
    ok = all(compileall.compile_dir(str(p), quiet=2) for p in where)
    flag = " (PYTHONDONTWRITEBYTECODE is set here: without this they would be compiled at every start)" \
        if os.environ.get("PYTHONDONTWRITEBYTECODE") else ""
    return (f"lstmscope's bytecode written before timing, as an install does{flag}" if ok and where
            else "lstmscope's bytecode could not be written: start-up figures include compiling its sources")


def machine() -> list[str]:
    info: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            info.setdefault(key.strip(), value.strip())  # the first core's
    except OSError:
        pass
    cpu = info.get("model name", platform.processor() or "unknown")
    if "cpu family" in info:  # virtual machines often hide the model name; family/model still tell the core
        flags = info.get("flags", "").split()
        simd = "avx512f" if "avx512f" in flags else "avx2" if "avx2" in flags else ""
        cpu += f" (family {info['cpu family']} model {info.get('model', '?')}, {info.get('cpu MHz', '?')} MHz" \
               + (f", {simd})" if simd else ")")
    ram = "unknown"
    try:
        kb = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                  if line.startswith("MemTotal:"))
        ram = f"{kb / 2**20:.1f} GiB"
    except (OSError, StopIteration):
        pass
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "unknown"
    omp = os.environ.get("OMP_NUM_THREADS")
    return [
        f"date: {datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}",
        f"CPU: {cpu}; {usable_cores()} usable cores (sched_getaffinity) of {os.cpu_count()}; RAM {ram}",
        f"OS: {platform.system()} {platform.release()}; load average at start {load}"
        + (f"; OMP_NUM_THREADS={omp}" if omp else ""),
        f"python {platform.python_version()}, torch {version_of('torch')}, numpy {version_of('numpy')}, "
        f"lstmscope {version_of('lstmscope')}",
        compile_bytecode(),
    ]


def fmt_value(row: Row) -> str:
    if row.skipped or row.value is None:
        return ""
    if row.unit:
        return f"{row.value:.3g} {row.unit}"
    return f"{row.value:.2f}" if row.value >= 0.01 else f"{row.value:.2g}"


def fmt_goal(row: Row) -> str:
    if row.goal is None:
        return "-"
    op, limit = row.goal
    return f"{'≤' if op == '<=' else '≥'} {limit:g}{' ' + row.unit if row.unit else ''}"


def table(rows: list[Row]) -> str:
    head = "| figure | A / B | median A | median B | value | goal | result |\n|---|---|---|---|---|---|---|"
    lines = [head]
    for r in rows:
        result = f"ERROR: {r.error}" if r.error else f"skipped: {r.skipped}" if r.skipped else r.result
        lines.append(f"| {r.figure} | {r.what} | {r.a} | {r.b} | {fmt_value(r)} | {fmt_goal(r)} | {result} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="lstmscope benchmark suite: goals as ratios measured side by side.")
    ap.add_argument("--quick", action="store_true", help="tiny sizes and one repetition (a smoke run)")
    ap.add_argument("--only", action="append", choices=list(FIGURES), metavar="NAME",
                    help=f"run only this figure (repeatable): {', '.join(FIGURES)}")
    ap.add_argument("--list", action="store_true", help="print the figure names, one per line, and exit")
    ap.add_argument("--json", dest="json_path", metavar="FILE", help="also write the rows as JSON to FILE")
    ns = ap.parse_args(argv)
    if ns.list:
        print("\n".join(FIGURES))
        return 0
    names = ns.only or list(FIGURES)
    rows: list[Row] = []
    failed: list[str] = []
    started = time.perf_counter()
    print("# lstmscope benchmarks" + (" (--quick: tiny sizes, one repetition; not for judging goals)" if ns.quick else ""))
    print()
    for line in machine():
        print(f"- {line}")
    print()
    with tempfile.TemporaryDirectory(prefix="lstmscope-bench-") as tmp:
        ctx = Ctx(Path(tmp), ns.quick)
        for name in names:
            t0 = time.perf_counter()
            print(f"[{name}] ...", file=sys.stderr, flush=True)
            try:
                got = FIGURES[name](ctx)
            except Exception as e:  # one broken figure must not hide the others; the exit code says so
                failed.append(name)
                got = [Row(name, "(the figure did not finish)", "", "", None, None,
                           error=f"{type(e).__name__}: {' '.join(str(e).split())[:300]}")]
            rows.extend(got)
            print(f"[{name}] {time.perf_counter() - t0:.1f} s: "
                  + "; ".join(f"{fmt_value(r) or r.a} {r.result}" for r in got), file=sys.stderr, flush=True)
    print(table(rows))
    print()
    print("value: the median of per-pair ratios A_i/B_i (A and B interleaved: A, B, A, B, ...), or the median "
          "itself where the goal has a unit. Medians of A and B are over the same rounds.")
    print()
    for n in ctx.notes:
        print(f"- {n}")
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "unknown"
    print(f"- total {time.perf_counter() - started:.0f} s; load average at the end {load}")
    if ns.json_path:
        Path(ns.json_path).write_text(json.dumps([{**r.__dict__, "result": r.result} for r in rows], indent=1) + "\n")
    if failed:
        print(f"figures that did not finish: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
