"""What every part of the scale benchmark (scripts/bench/bench_scale.py) shares: the repository root, the
log line on stderr, and .npy files read and written in blocks; and, for every benchmark, the engine's
kernels as its binaries name them."""
import os
import subprocess
import sys

# The repository root: this file is ROOT/scripts/bench/scale/common.py.
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def engine_kernels(exe):
    """The kernels the engine runs on this CPU: the `kernels:` line of `EXE --version`."""
    try:
        out = subprocess.run([exe, "--version"], capture_output=True, text=True).stdout
    except OSError:
        out = ""
    return next((l.split(":", 1)[1].strip() for l in out.splitlines() if l.startswith("kernels:")),
                f"? (no kernels line from {exe} --version)")


# ----------------------------------------------------------------------------------------------------
# .npy streaming


def npy_write_header(f, n, dim):
    import numpy as np
    np.lib.format.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False, "shape": (n, dim)})


def npy_chunks(path, rows):
    """(start, block) over a 2-d .npy with plain reads (no memory map: nothing stays resident)."""
    import numpy as np
    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read(f)
        assert not fortran and len(shape) == 2, path
        n, d = shape
        for s in range(0, n, rows):
            c = min(rows, n - s)
            yield s, np.fromfile(f, dtype=dtype, count=c * d).reshape(c, d)


def npy_shape(path):
    import numpy as np
    return np.load(path, mmap_mode="r").shape
