"""The baseline of the diff_big figure: one float32 pass over two files' bytes, block by block. numpy only.

    python benchmarks/block_pass.py A B OFFSET_A OFFSET_B COUNT [BLOCK] [--cosine]

reads COUNT float32 values from A at byte OFFSET_A and from B at OFFSET_B, BLOCK values at a time (the
block ``lstmscope.statediff`` uses), with positioned reads into two buffers allocated once (as
``diff-states`` reads), and makes one float32 pass over each pair of blocks: ``np.subtract`` into a third
buffer. It prints the largest difference seen (from the last element of each block, so that the
pass cannot be skipped and adds nothing but a scalar read). That is the least any diff of the same
bytes in numpy does: start Python and numpy, read every byte once, touch every value once.

With ``--cosine`` it also takes, per block, what a float64 cosine of float32 data costs at the least in
numpy: both blocks converted to float64 (float32 products are exact there, float32 sums are not) and the
three dot products x.x, y.y, x.y. It prints the cosine too. The dot products are taken over rows of 8192
values with np.matmul, which stays on one thread: a plain np.dot of a whole block lets OpenBLAS split it
over threads, which on this project's shared 2-core machines is slower (1.5 s against 1.1 s measured for
two 1 GiB files), so it would be no floor. That is the floor of any diff that
reports the float64 cosine, as ``diff-states`` does, before it finds a single maximum or mismatch.
"""

import os
import sys

import numpy as np


ROW = 8192


def dot(x: np.ndarray, y: np.ndarray) -> float:
    k = x.size - x.size % ROW
    rows = np.matmul(x[:k].reshape(-1, 1, ROW), y[:k].reshape(-1, ROW, 1)).sum() if k else 0.0
    return float(rows) + float(np.dot(x[k:], y[k:]))


def main() -> None:
    a, b = sys.argv[1], sys.argv[2]
    off_a, off_b, count = int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
    args = [v for v in sys.argv[6:] if v != "--cosine"]
    cosine = "--cosine" in sys.argv[6:]
    block = int(args[0]) if args else 1 << 17
    x, y, d = (np.empty(min(block, count), dtype=np.float32) for _ in range(3))
    x64, y64 = (np.empty(min(block, count) if cosine else 0) for _ in range(2))
    sums = [0.0, 0.0, 0.0]
    fa, fb = os.open(a, os.O_RDONLY), os.open(b, os.O_RDONLY)
    seen = 0.0
    try:
        for s in range(0, count, block):
            c = min(block, count - s)
            for fd, buf, off in ((fa, x, off_a), (fb, y, off_b)):
                view, got = memoryview(buf[:c]).cast("B"), 0
                while got < len(view):
                    n = os.preadv(fd, [view[got:]], off + s * 4 + got)
                    if not n:
                        raise SystemExit(f"{a if fd == fa else b} is shorter than {count} values")
                    got += n
            np.subtract(x[:c], y[:c], out=d[:c])
            seen = max(seen, abs(float(d[c - 1])))
            if cosine:
                np.copyto(x64[:c], x[:c])
                np.copyto(y64[:c], y[:c])
                sums[0] += dot(x64[:c], x64[:c])
                sums[1] += dot(y64[:c], y64[:c])
                sums[2] += dot(x64[:c], y64[:c])
    finally:
        os.close(fa)
        os.close(fb)
    print(seen, sums[2] / (sums[0] * sums[1]) ** 0.5 if cosine and sums[0] * sums[1] else "")


if __name__ == "__main__":
    main()
