"""What every part of the scale benchmark (scripts/bench/bench_scale.py) shares: the repository root, the
log line on stderr, and .npy files read and written in blocks; and, for every benchmark, the engine's
kernels as its binaries name them and the OpenBLAS kernel faiss searches fastest with."""
import os
import subprocess
import sys

# The repository root: this file is ROOT/scripts/bench/scale/common.py.
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def cpu_features():
    """The CPU's features as its CPUID answers them to this process (numpy reads them at import), so that a
    run under scripts/bench/avx2-only sees an AVX2-only CPU where /proc/cpuinfo would still list AVX-512."""
    import numpy as np
    core = getattr(np, "_core", None) or np.core
    return {k for k, v in core._multiarray_umath.__cpu_features__.items() if v}


def cpu_level():
    """"AVX-512", "AVX2" or "portable", from CPUID, with "(AVX-512 hidden by avx2-only)" where it is."""
    f = cpu_features()
    level = "AVX-512" if "AVX512F" in f else "AVX2" if "AVX2" in f and "FMA3" in f else "portable"
    if "avx2_only" in os.environ.get("LD_PRELOAD", ""):
        level += " (AVX-512 hidden by scripts/bench/avx2-only)"
    return level


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


# ----------------------------------------------------------------------------------------------------
# faiss's OpenBLAS kernel

# OpenBLAS kernels faiss's products are probed with: its own pick for the CPU ("auto"), and the AVX2 and
# AVX-512 kernels by name. On a Zen 4 the faiss-cpu wheel's OpenBLAS 0.3.15 picks "Zen", and a named kernel
# searched faster.
# Where CPUID shows no AVX-512 (an AVX2-only CPU, or under scripts/bench/avx2-only) the AVX-512 kernel is
# left out: OpenBLAS would run it without asking the CPU.
CORETYPES = ("auto", "Haswell", "SkylakeX")


def coretypes():
    return CORETYPES if "AVX512F" in cpu_features() else tuple(c for c in CORETYPES if c != "SkylakeX")
PROBE_QUERIES = 500

# One probe: faiss IndexFlatIP over the base (read in blocks), the first PROBE_QUERIES queries at k = 10,
# the best of `repeat` passes; prints queries/s.
FLAT_PROBE = r'''
import sys, time, numpy as np, faiss
base, queries, threads, repeat, rows, nq = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
faiss.omp_set_num_threads(threads)
q = np.ascontiguousarray(np.load(queries)[:nq])
flat = faiss.IndexFlatIP(q.shape[1])
with open(base, "rb") as f:
    version = np.lib.format.read_magic(f)
    read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    (n, d), _, dtype = read(f)
    for s in range(0, n, rows):
        c = min(rows, n - s)
        flat.add(np.fromfile(f, dtype=dtype, count=c * d).reshape(c, d))
best = 0.0
for _ in range(repeat):
    t = time.perf_counter()
    flat.search(q, 10)
    best = max(best, len(q) / (time.perf_counter() - t))
print(best)
'''


def with_coretype(env, coretype):
    """`env` with OPENBLAS_CORETYPE set to `coretype` ("auto": left unset)."""
    e = dict(env)
    e.pop("OPENBLAS_CORETYPE", None)
    if coretype != "auto":
        e["OPENBLAS_CORETYPE"] = coretype
    return e


def probe_coretype(python, base, queries, threads, env, repeat=3, rows=100_000):
    """The OpenBLAS kernel of CORETYPES faiss IndexFlatIP searched fastest with on this CPU, each in its own
    process, and every kernel's queries/s."""
    probe = {}
    for ct in coretypes():
        out = subprocess.run([python, "-c", FLAT_PROBE, base, queries, str(threads), str(repeat), str(rows),
                              str(PROBE_QUERIES)], capture_output=True, text=True, env=with_coretype(env, ct),
                             check=True).stdout
        probe[ct] = float(out.split()[-1])
    return max(probe, key=probe.get), probe
