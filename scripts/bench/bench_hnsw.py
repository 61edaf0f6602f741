#!/usr/bin/env python3
"""Benchmark: HNSW graph build time and peak memory, the engine's builder against hnswlib, same M and
ef_construction, same vectors, same thread count, in one run.

Datasets: real embeddings (an index's vectors.npy, e.g. the MS MARCO pool encoded by
scripts/reproduce_here.sh; it lies in the generation folder the index's manifest names) and N synthetic
unit vectors for scale.

usage: scripts/bench/bench_hnsw.py --real target/repro/pool/gen000001/vectors.npy [--synthetic 1000000 --synthetic-dim 16]
"""
import argparse
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

HNSWLIB = r'''
import sys, time, numpy as np, hnswlib
path, m, efc, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
x = np.load(path, mmap_mode="r")
t = time.perf_counter()
idx = hnswlib.Index(space="ip", dim=x.shape[1])
idx.init_index(max_elements=x.shape[0], ef_construction=efc, M=m)
idx.add_items(x, np.arange(x.shape[0]), num_threads=threads)
print("build_seconds %.3f" % (time.perf_counter() - t))
'''


def measure(cmd, env=None):
    t = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    _, status, usage = os.wait4(p.pid, 0)
    out, err = p.stdout.read().decode(), p.stderr.read().decode()
    if status != 0:
        sys.exit(f"{cmd[0]} failed: {err}")
    build = float(out.split("build_seconds")[1].split()[0])
    return build, time.perf_counter() - t, usage.ru_maxrss / 1024


def synthetic(path, n, dim, seed=0):
    import numpy as np
    rng = np.random.default_rng(seed)
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False, "shape": (n, dim)})
        for s in range(0, n, 100_000):
            x = rng.standard_normal((min(100_000, n - s), dim), dtype=np.float32)
            x /= np.linalg.norm(x, axis=1, keepdims=True)
            f.write(x.tobytes())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--real", default=os.path.join(ROOT, "target/repro/pool/gen000001/vectors.npy"))
    ap.add_argument("--synthetic", type=int, default=1_000_000)
    ap.add_argument("--synthetic-dim", type=int, default=16)
    ap.add_argument("--m", type=int, default=32)
    ap.add_argument("--ef-construction", type=int, default=200)
    ap.add_argument("--synthetic-m", type=int, default=16)
    ap.add_argument("--synthetic-ef-construction", type=int, default=100)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--python", default=sys.executable)
    ap.add_argument("--bin", default=os.path.join(ROOT, "target/release/examples/hnsw_build"))
    a = ap.parse_args()
    env = dict(os.environ, RAYON_NUM_THREADS=str(a.threads))
    import numpy as np
    with tempfile.TemporaryDirectory() as tmp:
        sets = []
        if a.real and os.path.exists(a.real):
            sets.append(("real: " + os.path.relpath(a.real, ROOT), a.real, a.m, a.ef_construction))
        if a.synthetic:
            p = os.path.join(tmp, "synthetic.npy")
            synthetic(p, a.synthetic, a.synthetic_dim)
            sets.append((f"synthetic unit vectors", p, a.synthetic_m, a.synthetic_ef_construction))
        print(f"{a.threads} threads; time = graph construction only; peak RSS of the whole process")
        print(f"{'vectors':<40}{'n x dim':>16}{'M':>4}{'efC':>5}  {'tool':<10}{'build s':>9}{'peak MiB':>10}")
        for name, path, m, efc in sets:
            shape = np.load(path, mmap_mode="r").shape
            ours = measure([a.bin, path, str(m), str(efc)], env)
            theirs = measure([a.python, "-c", HNSWLIB, path, str(m), str(efc), str(a.threads)])
            dims = f"{shape[0]:,} x {shape[1]}"
            print(f"{name:<40}{dims:>16}{m:>4}{efc:>5}  {'engine':<10}{ours[0]:>9.1f}{ours[2]:>10.0f}")
            print(f"{'':<40}{'':>16}{'':>4}{'':>5}  {'hnswlib':<10}{theirs[0]:>9.1f}{theirs[2]:>10.0f}")


if __name__ == "__main__":
    main()
