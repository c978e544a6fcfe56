"""``diff-states`` on two big snapshots: the pair of files, and the measurement. numpy only (no torch).

    python benchmarks/diff_big.py [--gib 1.0] [--dir DIR] [--runs 3]

writes two v1 snapshots of about that size each (almost all of it ``output``), runs
``python -m lstmscope diff-states A B --json`` on them, prints each run's wall time and peak RSS (the
child's VmHWM) against the file size, and the wall time of the baseline run just after it
(benchmarks/block_pass.py: one float32 pass over the same bytes, read the same way), and removes the files.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from lstmscope.snapshot import METADATA_KEY, canonical_json, encode_header, snapshot_metadata
from lstmscope.spec import LSTMSpec

BATCH, HIDDEN, LAYERS = 16, 256, 2  # a bidirectional 2-layer LSTM: output is (batch, time, 2 * HIDDEN)
SPEC = LSTMSpec(input_size=64, hidden_size=HIDDEN, proj_size=0, num_layers=LAYERS, bidirectional=True, bias=True,
                dtype="float32")


def make_pair(directory: str | os.PathLike, nbytes: int, *, seed: int = 0) -> tuple[Path, Path]:
    """Two snapshots of about ``nbytes`` each in ``directory``: ``a.safetensors`` and ``b.safetensors``.

    B is A with every value moved by about 3e-7 of another value (within the default tolerances) and
    every 4099th value by 1e-3 (beyond them), so the diff counts mismatches in every block. Each file
    is consistent on its own (h_n's last layer equals ``output`` at its ends, so ``show-state`` passes)
    and byte-identical to what ``snapshot.write_snapshot`` writes for the same tensors; it is written a
    sequence at a time, so making a pair takes a few sequences' worth of memory, not the files' size.
    """
    directory = Path(directory)
    width = SPEC.num_directions * HIDDEN
    ld = LAYERS * SPEC.num_directions
    time_steps = max(1, nbytes // (BATCH * width * 4))
    rng = np.random.default_rng(seed)
    c_n = rng.standard_normal((ld, BATCH, HIDDEN)).astype(np.float32)  # (num_layers * num_directions, batch, hidden)
    h_a = rng.standard_normal((ld, BATCH, HIDDEN)).astype(np.float32)  # the last layer's rows are set below
    h_b = h_a.copy()
    meta = snapshot_metadata(SPEC, batch_size=BATCH, dtype="float32", module="lstm", checkpoint_sha256=None,
                             input_sha256=None)
    layout = {"c_n": ("float32", c_n.shape), "h_n": ("float32", h_a.shape),
              "output": ("float32", (BATCH, time_steps, width))}  # (batch, time, num_directions * hidden)
    head, order = encode_header(layout, {METADATA_KEY: canonical_json(meta)})
    assert order == ["c_n", "h_n", "output"]  # h_n depends on the output: write the output first, h_n last
    states_at = len(head)
    paths = directory / "a.safetensors", directory / "b.safetensors"
    with open(paths[0], "wb") as fa, open(paths[1], "wb") as fb:
        for f in (fa, fb):
            f.write(head)
            f.seek(states_at + c_n.nbytes + h_a.nbytes)
        for b in range(BATCH):
            seq_a = rng.standard_normal((time_steps, width), dtype=np.float32)  # (time, 2 * hidden)
            seq_b = seq_a + np.float32(3e-7) * np.roll(seq_a, 1)
            seq_b.reshape(-1)[b % 4099::4099] += np.float32(1e-3)
            for f, seq, h in ((fa, seq_a, h_a), (fb, seq_b, h_b)):
                h[ld - 2, b] = seq[-1, :HIDDEN]  # forward ends at the last step
                h[ld - 1, b] = seq[0, HIDDEN:]  # backward ends at step 0
                f.write(seq.astype("<f4", copy=False).tobytes())
        for f, h in ((fa, h_a), (fb, h_b)):
            f.seek(states_at)
            f.write(c_n.astype("<f4", copy=False).tobytes())
            f.write(h.astype("<f4", copy=False).tobytes())
    return paths


# Runs ``python -m lstmscope`` and, at exit, writes the process's VmHWM (peak RSS) to the file named by
# argv[1]. The child's own ru_maxrss is no measure: Linux carries the parent's peak over the exec, so a
# child of a big process (one that has just made the files) reports at least the parent's size.
_CHILD = """
import atexit, runpy, sys
out = sys.argv.pop(1)
def peak():
    try:
        with open("/proc/self/status") as f:
            kb = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
    except (OSError, StopIteration):
        return
    with open(out, "w") as f:
        f.write(str(kb * 1024))
atexit.register(peak)
sys.argv[0] = "lstmscope"
runpy.run_module("lstmscope", run_name="__main__", alter_sys=True)
"""


def measure(*args: str | os.PathLike) -> dict:
    """Wall and CPU seconds, peak RSS in bytes (VmHWM; where /proc is missing, ru_maxrss) and output of
    ``python -m lstmscope *args``."""
    with tempfile.TemporaryDirectory() as tmp:
        peak = Path(tmp) / "peak"
        with open(Path(tmp) / "out", "w+b") as out, open(Path(tmp) / "err", "w+b") as err:
            t0 = time.perf_counter()
            p = subprocess.Popen([sys.executable, "-c", _CHILD, str(peak), *map(str, args)], stdout=out, stderr=err)
            _, status, usage = os.wait4(p.pid, 0)
            wall = time.perf_counter() - t0
            p.returncode = os.waitstatus_to_exitcode(status)
            out.seek(0)
            err.seek(0)
            rss = int(peak.read_text()) if peak.exists() else usage.ru_maxrss * 1024
            return {"wall_s": wall, "cpu_s": usage.ru_utime + usage.ru_stime, "rss_bytes": rss, "exit": p.returncode,
                    "stdout": out.read().decode(), "stderr": err.read().decode()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gib", type=float, default=1.0, help="size of each snapshot, GiB")
    ap.add_argument("--dir", default=None, help="where to write them (default: a temporary directory)")
    ap.add_argument("--runs", type=int, default=3)
    ns = ap.parse_args()
    with tempfile.TemporaryDirectory(dir=ns.dir) as tmp:
        t0 = time.perf_counter()
        a, b = make_pair(tmp, int(ns.gib * 2**30))
        size = a.stat().st_size
        print(f"made 2 x {size / 2**30:.3f} GiB in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
        with open(a, "rb") as f:
            data_at = 8 + int.from_bytes(f.read(8), "little")  # every tensor is float32, stored after the header
        count = (size - data_at) // 4
        block_pass = [sys.executable, str(Path(__file__).resolve().parent / "block_pass.py"), str(a), str(b),
                      str(data_at), str(data_at), str(count)]
        for _ in range(ns.runs):
            r = measure("diff-states", a, b, "--json")
            t0 = time.perf_counter()
            subprocess.run(block_pass, check=True, stdout=subprocess.DEVNULL)
            base = time.perf_counter() - t0
            rows = json.loads(r["stdout"])["rows"] if r["stdout"] else []
            print(json.dumps({"wall_s": round(r["wall_s"], 3), "block_pass_s": round(base, 3),
                              "over_block_pass": round(r["wall_s"] / base, 2), "cpu_s": round(r["cpu_s"], 3),
                              "peak_rss_mib": round(r["rss_bytes"] / 2**20, 1),
                              "rss_over_file": round(r["rss_bytes"] / size, 3), "exit": r["exit"],
                              "mismatched": sum(row["mismatched"] for row in rows), "stderr": r["stderr"][-300:]}))


if __name__ == "__main__":
    main()
