"""The tools the scale benchmark (scripts/bench/bench_scale.py) compares: how each is built and searched, with
its settings. Every command runs through measure.measure, in its own process.

The peers and their settings:
  engine   the product's CLI, as a user runs it: `simlm-index import --vectors BASE.npy --out DIR --no-hnsw`,
           then `simlm-index hnsw DIR --hnsw-m 32 --ef-construction 200 --threads T` (the build figures:
           construction seconds from its `graph: done in S s` line, the step's wall time beside it, the
           step's peak RSS), then `simlm-search batch --index DIR --query-vectors Q.npy --k 10 --ef E
           --threads T --run-format msmarco` per ef (queries/s from the line it prints: the search alone,
           without opening the index), after one untimed process at the first ef (the peers read their
           whole index into memory before their timed searches; the engine's first process after the build
           pays for the pages the cache no longer holds: reported beside the table), and `--exact` at k 10
           and 1000. Binaries from --bin (target/release).
  hnswlib  space "ip", init_index(M, ef_construction, random_seed 100), add_items(chunk, ids,
           num_threads=T) over the base read in 100,000-row chunks (time = add_items only); the index saved
           (file size = bytes/vector), loaded by a second process that sets set_ef(ef) and calls
           knn_query(Q, k=10, num_threads=T) (time = knn_query only).
  faiss    IndexHNSWFlat(dim, M, METRIC_INNER_PRODUCT), hnsw.efConstruction, omp_set_num_threads(T),
           add(chunk) per chunk (time = add only); write_index / read_index; hnsw.efSearch = ef, search(Q, 10).
           Exact: IndexFlatIP filled chunk by chunk, search(Q, 10) and search(Q, 1000). The tool
           `faiss-flat` runs this exact part alone (no graph built).
  Both peers read the base in chunks with plain reads (no memory map): their peak RSS is their own index plus
  one chunk, their best case (an np.load of the whole base would add 3 GB at 1M). The children run with
  the BLAS tuning variables (OPENBLAS_CORETYPE, OPENBLAS_L2_SIZE, GOTO*, MKL_DEBUG_CPU_TYPE, MKL_CBWR,
  MKL_ENABLE_INSTRUCTIONS, NVPL_*) removed from the environment, so that faiss and numpy pick their own
  kernels, except that faiss IndexFlatIP runs with the OpenBLAS kernel that searched fastest in a probe
  (its own pick, Haswell's or SkylakeX's: see run_faiss_flat); OMP_NUM_THREADS / OPENBLAS_NUM_THREADS /
  RAYON_NUM_THREADS = T. The script prints the BLAS
  libraries faiss and numpy load with the kernel (architecture) OpenBLAS selected (threadpoolctl), and the
  faiss build and SIMD level dispatched.
"""
import json
import os
import re
import shutil
import subprocess
import threading

from .common import probe_coretype, with_coretype
from .generate import make_truth
from .measure import StepFailed, disk_read_rate, drop_cached, folder_bytes, measure

CHUNK = 100_000         # rows the peers are given per add call


CHUNKS = r'''
import numpy as np
def chunks(path, rows):
    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read(f)
        n, d = shape
        for s in range(0, n, rows):
            c = min(rows, n - s)
            yield s, np.fromfile(f, dtype=dtype, count=c * d).reshape(c, d)
def recall(found, truth):
    k = truth.shape[1]
    return float(np.mean([len(set(f[:k].tolist()) & set(t.tolist())) / k for f, t in zip(found, truth)]))
'''

HNSWLIB_BUILD = CHUNKS + r'''
import sys, os, time, hnswlib
base, out, m, efc, threads, rows = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
n, d = np.load(base, mmap_mode="r").shape
idx = hnswlib.Index(space="ip", dim=d)
idx.init_index(max_elements=n, ef_construction=efc, M=m, random_seed=100)
secs = 0.0
for s, x in chunks(base, rows):
    t = time.perf_counter()
    idx.add_items(x, np.arange(s, s + len(x)), num_threads=threads)
    secs += time.perf_counter() - t
print("build_seconds %.4f" % secs)
idx.save_index(out)
print("index_bytes %d" % os.path.getsize(out))
'''

HNSWLIB_SEARCH = CHUNKS + r'''
import sys, time, hnswlib
path, queries, truth, threads, repeat = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
efs = [int(e) for e in sys.argv[6].split(",")]
q, truth = np.load(queries), np.load(truth)
idx = hnswlib.Index(space="ip", dim=q.shape[1])
idx.load_index(path)
for ef in efs:
    idx.set_ef(max(ef, 10))
    best = None
    for _ in range(repeat):
        t = time.perf_counter()
        labels, _ = idx.knn_query(q, k=10, num_threads=threads)
        s = time.perf_counter() - t
        best = s if best is None else min(best, s)
    print("ef %d recall %.6f qps %.3f" % (ef, recall(labels, truth), len(q) / best))
'''

FAISS_INFO = r'''
import json, numpy, faiss
from threadpoolctl import threadpool_info
print("faiss", faiss.__version__, "| compile options:", faiss.get_compile_options(), "| SIMD level dispatched:",
      faiss.SIMDConfig.get_level_name() if hasattr(faiss, "SIMDConfig") else "n/a",
      "| module:", getattr(faiss, "swigfaiss", faiss).__name__, "| numpy", numpy.__version__)
for i in sorted(threadpool_info(), key=lambda i: i["filepath"]):
    lib = "faiss" if "faiss" in i["filepath"] else ("numpy" if "numpy" in i["filepath"] else i["filepath"].split("/")[-2])
    print("BLAS/OpenMP of %s: %s %s, kernel %s, threading %s, %s threads (%s)" % (
        lib, i["internal_api"], i.get("version"), i.get("architecture", "-"), i.get("threading_layer", "-"),
        i["num_threads"], i["filepath"].split("/")[-1]))
'''

# Which hnswlib the children import (a build of its own for another CPU can come first on PYTHONPATH).
HNSWLIB_INFO = r'''
import hnswlib, importlib.metadata
print("hnswlib", importlib.metadata.version("hnswlib"), "| module:", hnswlib.__file__)
'''

FAISS_BUILD = CHUNKS + r'''
import sys, os, time, faiss
base, out, m, efc, threads, rows = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
faiss.omp_set_num_threads(threads)
n, d = np.load(base, mmap_mode="r").shape
idx = faiss.IndexHNSWFlat(d, m, faiss.METRIC_INNER_PRODUCT)
idx.hnsw.efConstruction = efc
secs = 0.0
for s, x in chunks(base, rows):
    t = time.perf_counter()
    idx.add(x)
    secs += time.perf_counter() - t
print("build_seconds %.4f" % secs)
faiss.write_index(idx, out)
print("index_bytes %d" % os.path.getsize(out))
'''

FAISS_SEARCH = CHUNKS + r'''
import sys, time, faiss
path, queries, truth, threads, repeat = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
efs = [int(e) for e in sys.argv[6].split(",")]
faiss.omp_set_num_threads(threads)
q, truth = np.load(queries), np.load(truth)
idx = faiss.read_index(path)
for ef in efs:
    idx.hnsw.efSearch = max(ef, 10)
    best = None
    for _ in range(repeat):
        t = time.perf_counter()
        _, labels = idx.search(q, 10)
        s = time.perf_counter() - t
        best = s if best is None else min(best, s)
    print("ef %d recall %.6f qps %.3f" % (ef, recall(labels, truth), len(q) / best))
'''

FAISS_FLAT = CHUNKS + r'''
import sys, time, faiss
base, queries, truth, threads, repeat, rows = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
faiss.omp_set_num_threads(threads)
q, truth = np.load(queries), np.load(truth)
idx = faiss.IndexFlatIP(q.shape[1])
for _, x in chunks(base, rows):
    idx.add(x)
for k in (10, 1000):
    best = None
    for _ in range(repeat):
        t = time.perf_counter()
        _, labels = idx.search(q, k)
        s = time.perf_counter() - t
        best = s if best is None else min(best, s)
    print("k %d recall %.6f qps %.3f" % (k, recall(labels, truth), len(q) / best))
'''


def parse_lines(out, key):
    rows = []
    for line in out.splitlines():
        f = line.split()
        if f and f[0] == key:
            rows.append({f[i]: float(f[i + 1]) for i in range(0, len(f) - 1, 2)})
    return rows


def run_recall(path, truth):
    """Recall@10 of an msmarco run file (qid = query row, docid = base row) against the truth."""
    import numpy as np
    nq, k = truth.shape
    found = np.full((nq, k), -1, dtype=np.int64)
    with open(path) as f:
        for line in f:
            qid, did, rank = line.split("\t")
            r = int(rank)
            if r <= k:
                found[int(qid), r - 1] = int(did)
    return float(np.mean([len(set(a.tolist()) & set(b.tolist())) / k for a, b in zip(found, truth)]))


SEARCH_LINE = re.compile(r"(\d+) queries \((.*?)\) in ([\d.]+) s \(([\d.]+) queries/s\)")
GRAPH_LINE = re.compile(r"graph: done in ([\d.]+) s")
RESUME_LINE = re.compile(r"resuming the graph after (\d+) of (\d+) nodes, ([\d.]+) s of building so far")


class Engine:
    def __init__(self, a, env):
        self.a, self.env = a, env
        self.first_pass = None  # the untimed first search process of the last search() (not --full)
        self.index_bin = os.path.join(a.bin, "simlm-index")
        self.search_bin = os.path.join(a.bin, "simlm-search")
        problems = []
        for exe, sub, flag in ((self.index_bin, "import", "--vectors"), (self.search_bin, "batch", "--query-vectors")):
            if not os.path.exists(exe):
                problems.append(f"{exe} does not exist")
                continue
            h = subprocess.run([exe, sub, "--help"], capture_output=True, text=True)
            if h.returncode != 0 or flag not in h.stdout:
                problems.append(f"`{os.path.basename(exe)} {sub} --help` has no {flag} (exit {h.returncode}): "
                                f"{(h.stderr or h.stdout).strip()[:300]}")
        if problems:
            raise SystemExit("engine CLI not ready:\n  " + "\n  ".join(problems) + "\n(--tools hnswlib,faiss runs the peers alone)")
        hh = subprocess.run([self.index_bin, "hnsw", "--help"], capture_output=True, text=True).stdout
        self.m_flag = "--hnsw-m" if "--hnsw-m" in hh else "--m"

    def build(self, paths, folder):
        a = self.a
        idx = os.path.join(folder, "engine-index")
        # --full spans sessions: its record keeps the steps already done (and their figures), and a
        # stopped graph build resumes from the engine's checkpoint (DIR/graph.partial).
        record_path = os.path.join(folder, "full-progress.json")
        record = json.load(open(record_path)) if a.stream_base and os.path.exists(record_path) else {}
        if record and not os.path.exists(os.path.join(idx, "manifest.json")):
            record = {}  # the index it describes is gone

        def save_record():
            if a.stream_base:
                json.dump(record, open(record_path + ".part", "w"), indent=1)
                os.replace(record_path + ".part", record_path)

        if "import" not in record:
            shutil.rmtree(idx, ignore_errors=True)
            stream = paths.get("stream")
            if stream is not None:
                fifo = os.path.join(folder, "base.fifo")
                if os.path.exists(fifo):
                    os.remove(fifo)
                os.mkfifo(fifo)
                failed = []

                def feed():
                    try:
                        with open(fifo, "wb") as f:
                            stream.write_to(f, "base (streamed)", a.n, a.seed, 1)
                    except Exception as e:  # the importer stopped reading: its own error says why
                        failed.append(e)
                feeder = threading.Thread(target=feed)
                feeder.start()
                _, err, wall, rss, anon = measure([self.index_bin, "import", "--vectors", fifo, "--out", idx,
                                                   "--no-hnsw", "--threads", str(a.threads)], self.env)
                feeder.join()
                os.remove(fifo)
                if failed or not os.path.exists(os.path.join(idx, "manifest.json")):
                    raise SystemExit(f"streamed import failed: {failed}\n{err[-2000:]}")
            else:
                _, err, wall, rss, anon = measure([self.index_bin, "import", "--vectors", paths["base"], "--out", idx,
                                                   "--no-hnsw", "--threads", str(a.threads)], self.env)
            record["import"] = {"seconds": wall, "rss_mib": rss, "anon_mib": anon,
                                "streamed_from_generator": stream is not None}
            save_record()
        r = {"import_seconds": record["import"]["seconds"], "import_rss_mib": record["import"]["rss_mib"],
             "import_anon_mib": record["import"]["anon_mib"],
             "import_streamed": record["import"].get("streamed_from_generator", False)}
        if paths.get("stream") is not None:
            manifest = json.load(open(os.path.join(idx, "manifest.json")))
            paths["base"] = os.path.join(idx, manifest["data"], "vectors.npy")
        make_truth(a, paths)
        if "graph" not in record:
            try:
                _, err, wall, rss, anon = measure([self.index_bin, "hnsw", idx, self.m_flag, str(a.m),
                                                   "--ef-construction", str(a.ef_construction),
                                                   "--threads", str(a.threads)], self.env)
            except StepFailed as e:  # stopped: recorded below, and the next run resumes it
                err, wall, rss, anon = e.err, e.wall, e.rss, e.anon
            g = GRAPH_LINE.search(err)
            resumed = RESUME_LINE.search(err)
            runs = record.get("graph_runs", [])
            runs.append({"wall_s": wall, "rss_mib": rss, "anon_mib": anon, "done": bool(g),
                         "resumed_after_nodes": int(resumed.group(1)) if resumed else None,
                         "prior_build_s": float(resumed.group(3)) if resumed else 0.0})
            record["graph_runs"] = runs
            if not g:
                save_record()
                raise SystemExit(f"the graph build stopped ({len(runs)} run(s) so far); run the same command again "
                                 f"to resume it from its checkpoint:\n{err[-2000:]}")
            # A resumed build's time: the seconds its checkpoint records for the nodes inserted before
            # it (every earlier run up to its last checkpoint, even one killed without a record here)
            # plus the last run's own wall time. Work lost after a checkpoint is redone, and counted, in
            # the next run.
            last = runs[-1]
            record["graph"] = {"done_line_s": float(g.group(1)), "wall_s": last["prior_build_s"] + wall,
                               "runs_wall_s": sum(x["wall_s"] for x in runs),
                               "rss_mib": max(x["rss_mib"] or 0 for x in runs),
                               "anon_mib": max(x["anon_mib"] or 0 for x in runs), "runs": len(runs),
                               "resumed": last["resumed_after_nodes"] is not None}
            save_record()
        gr = record.get("graph") or {}
        r["step_seconds"] = gr.get("wall_s")
        # A resumed build: its checkpoint's seconds plus the last run's; in one run, its `graph: done` line.
        r["build_seconds"] = gr["wall_s"] if gr.get("resumed") else gr.get("done_line_s", gr.get("wall_s"))
        r["build_seconds_source"] = ("the checkpoint's build seconds plus the last run's wall time (resumed)"
                                     if gr.get("resumed")
                                     else "graph: done line")
        r["rss_mib"], r["anon_mib"] = gr.get("rss_mib"), gr.get("anon_mib")
        manifest = json.load(open(os.path.join(idx, "manifest.json")))
        gen = os.path.join(idx, manifest["data"])
        r["index_bytes"] = os.path.getsize(os.path.join(gen, "graph.hnsw"))
        r["disk_bytes"] = folder_bytes(idx)
        r["files"] = {f: os.path.getsize(os.path.join(gen, f)) for f in sorted(os.listdir(gen))}
        self.index = idx
        return r

    def _batch(self, paths, folder, mode, k, repeat=None, threads=None):
        a = self.a
        threads = threads or a.threads
        run = os.path.join(folder, "engine.run")
        best = None
        for _ in range(a.repeat if repeat is None else repeat):
            _, err, wall, rss, anon = measure([self.search_bin, "batch", "--index", self.index, "--query-vectors",
                                               paths["queries"], "--k", str(k), *mode, "--threads", str(threads),
                                               "--out", run, "--run-format", "msmarco"],
                                              with_threads(self.env, threads))
            m = SEARCH_LINE.search(err)
            if not m:
                raise RuntimeError(f"no `N queries (...) in S s (Q queries/s)` line in simlm-search's stderr:\n{err[-2000:]}")
            qps = float(m.group(4))
            best = qps if best is None else max(best, qps)
        import numpy as np
        rec = run_recall(run, np.load(paths["truth"]))
        os.remove(run)
        return {"recall": rec, "qps": best, "rss_mib": rss, "anon_mib": anon, "wall_s": wall, "mode": m.group(2)}

    def search(self, paths, folder, efs):
        if not self.a.stream_base:
            # The peers' search processes read their whole index into memory before the timed searches
            # (load_index, read_index: not timed). The engine's maps its files, so its first process
            # after the build pays for whatever the page cache no longer holds (the build reads the matrix
            # only at its start; a machine that reclaims cold pages drops it meanwhile). One untimed pass
            # at the first ef puts the engine on the peers' footing; its figures are kept as `first_pass`.
            first = self._batch(paths, folder, ["--ef", str(efs[0])], 10, repeat=1)
            self.first_pass = dict(ef=efs[0], **first)
            return by_threads(self.a, lambda t: [dict(ef=ef, **self._batch(paths, folder, ["--ef", str(ef)], 10,
                                                                           threads=t)) for ef in efs])
        # The matrix is larger than memory (--full): each ef starts with a cold pass (neither the graph
        # nor the matrix cached), then the warm passes (--repeat, the fastest kept) that the table shows.
        manifest = json.load(open(os.path.join(self.index, "manifest.json")))
        gen = os.path.join(self.index, manifest["data"])
        out = []
        for ef in efs:
            for f in ("graph.hnsw", "vectors.npy"):
                drop_cached(os.path.join(gen, f))
            cold = self._batch(paths, folder, ["--ef", str(ef)], 10, repeat=1)
            warm = self._batch(paths, folder, ["--ef", str(ef)], 10)
            out.append(dict(ef=ef, **warm, cold_qps=cold["qps"], cold_wall_s=cold["wall_s"],
                            cold_rss_mib=cold["rss_mib"]))
        return {"hnsw": out}

    def exact(self, paths, folder):
        if not self.a.stream_base:
            return {k: self._batch(paths, folder, ["--exact"], k) for k in (10, 1000)}
        # The matrix is larger than memory (--full): each pass starts with none of it cached, and its
        # read rate is set beside the disk's own sequential rate (direct reads, no cache).
        manifest = json.load(open(os.path.join(self.index, "manifest.json")))
        vectors = os.path.join(self.index, manifest["data"], "vectors.npy")
        size = os.path.getsize(vectors)
        disk = disk_read_rate(vectors)
        out = {}
        for k in (10, 1000):
            drop_cached(vectors)
            r = self._batch(paths, folder, ["--exact"], k)
            r["matrix_bytes"] = size
            r["read_gb_per_s"] = size / r["wall_s"] / 1e9
            r["disk_gb_per_s"] = disk
            out[k] = r
        return out


def with_threads(env, threads):
    """`env` with the thread-count variables of the children (`child_env`) set to `threads`."""
    return {**env, **{k: str(threads) for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                                                 "RAYON_NUM_THREADS")}}


def by_threads(a, search):
    """The graph searches at each of --search-threads: `hnsw` (at --threads when it is one of them, else the
    first) and `hnsw_by_threads` {threads: rows}."""
    rows = {t: search(t) for t in a.search_threads}
    return {"hnsw": rows.get(a.threads, rows[a.search_threads[0]]), "hnsw_by_threads": rows}


def search_peer(a, env, name, paths, folder, efs):
    """A peer's graph searches on its index in `folder`, at each of --search-threads."""
    idx = os.path.join(folder, f"{name}.index")
    search = HNSWLIB_SEARCH if name == "hnswlib" else FAISS_SEARCH

    def search_at(t):
        out, _, _, srss, sanon = measure([a.python, "-c", search, idx, paths["queries"], paths["truth"], str(t),
                                          str(a.repeat), ",".join(map(str, efs))], with_threads(env, t))
        return [{"ef": int(row["ef"]), "recall": row["recall"], "qps": row["qps"], "rss_mib": srss, "anon_mib": sanon}
                for row in parse_lines(out, "ef")]
    return by_threads(a, search_at)


def run_peer(a, env, name, paths, folder, efs):
    py = a.python
    idx = os.path.join(folder, f"{name}.index")
    build = HNSWLIB_BUILD if name == "hnswlib" else FAISS_BUILD
    out, _, wall, rss, anon = measure([py, "-c", build, paths["base"], idx, str(a.m), str(a.ef_construction),
                                       str(a.threads), str(CHUNK)], env)
    b = {k: v for row in parse_lines(out, "build_seconds") + parse_lines(out, "index_bytes") for k, v in row.items()}
    r = {"build": {"build_seconds": b["build_seconds"], "step_seconds": wall, "rss_mib": rss, "anon_mib": anon,
                   "index_bytes": int(b["index_bytes"]), "disk_bytes": int(b["index_bytes"])}}
    r.update(search_peer(a, env, name, paths, folder, efs))
    if not a.keep_indexes:
        os.remove(idx)
    if name == "faiss" and not a.no_exact:
        r["exact"] = run_faiss_flat(a, env, paths)
    return r


def run_faiss_flat(a, env, paths):
    """faiss IndexFlatIP's exact search at k = 10 and 1000 (also the tool `faiss-flat` alone: the exact
    comparison without building faiss's graph), with the OpenBLAS kernel that was fastest for it on this
    CPU: each of CORETYPES searches the first PROBE_QUERIES queries at k = 10 (best of --repeat), the
    fastest runs the whole set."""
    best, probe = probe_coretype(a.python, paths["base"], paths["queries"], a.threads, env, a.repeat, CHUNK)
    out, _, _, frss, _ = measure([a.python, "-c", FAISS_FLAT, paths["base"], paths["queries"], paths["truth"],
                                  str(a.threads), str(a.repeat), str(CHUNK)], with_coretype(env, best))
    return {int(row["k"]): {"recall": row["recall"], "qps": row["qps"], "rss_mib": frss, "coretype": best,
                            "probe_qps": probe}
            for row in parse_lines(out, "k")}
