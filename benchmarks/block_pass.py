"""The baseline of the diff_big figure: one float32 pass over two files' bytes, block by block. numpy only.

    python benchmarks/block_pass.py A B OFFSET_A OFFSET_B COUNT [BLOCK]

reads COUNT float32 values from A at byte OFFSET_A and from B at OFFSET_B, BLOCK values at a time (the
block ``lstmscope.statediff`` uses), with positioned reads into two buffers allocated once (as
``diff-states`` reads), and makes one float32 pass over each pair of blocks: ``np.subtract`` into a third
buffer. It prints the largest difference seen (from the last element of each block, so that the
pass cannot be skipped and adds nothing but a scalar read). That is the least any diff of the same
bytes in numpy does: start Python and numpy, read every byte once, touch every value once.
"""

import os
import sys

import numpy as np


def main() -> None:
    a, b = sys.argv[1], sys.argv[2]
    off_a, off_b, count = int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
    block = int(sys.argv[6]) if len(sys.argv) > 6 else 1 << 17
    x, y, d = (np.empty(min(block, count), dtype=np.float32) for _ in range(3))
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
    finally:
        os.close(fa)
        os.close(fb)
    print(seen)


if __name__ == "__main__":
    main()
