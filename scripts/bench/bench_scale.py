#!/usr/bin/env python3
"""Benchmark at scale: the engine's HNSW graph and exact search against hnswlib and faiss, on 1,000,000 x 768
synthetic vectors shaped after real embeddings (or on your own), every tool in its own child process.

What it measures (same vectors, same queries, same M / efConstruction / threads for every tool):
  build      graph construction seconds, inserts/s, peak RSS of the building process (os.wait4's ru_maxrss;
             beside it the peak of RssAnon sampled from /proc every 50 ms: ru_maxrss also counts the pages
             of memory-mapped files the process touched, which the kernel can drop, anonymous memory it can't;
             each command runs under a small Python launcher that wait4s it, because Linux carries ru_maxrss
             over exec from the forking process: the ~11 MiB launcher is the floor, not this script's RSS),
             index bytes per vector on disk;
  HNSW       recall@10 (against exact inner-product top 10 computed here with numpy) and queries/s for each
             ef of a grid;
  exact      queries/s of the engine's exact search and faiss IndexFlatIP at k = 10 and k = 1000;
  targets    engine inserts/s >= 1.25x hnswlib's; engine peak RSS <= 0.5x hnswlib's; engine
             recall@10 at every ef >= hnswlib's - 0.005; engine queries/s at recall@10 0.95 >= 2x
             hnswlib's at each of --search-threads (log queries/s interpolated linearly in recall between
             the two ef settings around 0.95).

The parts, each in scripts/bench/scale/: generate.py (the generator, the data and the truth: its docstring
says how the vectors are made), peers.py (the engine, hnswlib and faiss: how each is built and searched,
with its settings), measure.py (the child processes and their figures), report.py (the tables and the
plot). This file parses the arguments and runs the rounds.

Rounds: with --rounds R the tools alternate within each round (the order rotates by one each round, so none
always runs first); every figure reported is the MEDIAN over the rounds per tool (per ef for search;
--stat best takes the fastest instead, as bench_search.py does). Default: 3 rounds up to n = 100,000, one
above.

Usage (the repository's .venv: scripts/setup-python.sh --bench, or pip install faiss-cpu hnswlib
threadpoolctl matplotlib):
  .venv/bin/python scripts/bench/bench_scale.py                              # 1M x 768, 10,000 queries, 1 round
  .venv/bin/python scripts/bench/bench_scale.py --n 20000 --queries 1000 --rounds 3
  .venv/bin/python scripts/bench/bench_scale.py --seed-vectors simlm-passages.npy --dim 768
  .venv/bin/python scripts/bench/bench_scale.py --full                      # 8,841,823 x 768, engine only
  .venv/bin/python scripts/bench/bench_scale.py --tools hnswlib --resume     # one tool now, the others later:
  each tool's figures are saved in OUT/roundR/TOOL.json when it finishes; --resume reuses them.
  .venv/bin/python scripts/bench/bench_scale.py --tools engine,hnswlib,faiss-flat --resume  # faiss exact only
  .venv/bin/python scripts/bench/bench_scale.py --tools engine,hnswlib --search-threads 1,2 --keep-indexes
  .venv/bin/python scripts/bench/bench_scale.py --tools engine,hnswlib --search-threads 1,2 --search-again
  # the graph searches alone again, on the kept indexes, every tool in the same run
  With --full the base streams from the generator into `simlm-index import --vectors FIFO` (one copy on
  disk, the index's), the truth is computed from the index's vectors.npy, and a stopped run resumes: the
  same command again skips the finished import (OUT/round1/full-progress.json) and the graph build
  resumes from the engine's checkpoint; the build time is then the checkpoint's recorded seconds of
  building plus the last run's wall time (work lost after a checkpoint is redone and counted once).
Output: a markdown table (printed and in OUT/results.md), OUT/results.json, OUT/recall_qps.png;
OUT defaults to WORK/results-N.
"""
import argparse
import json
import os
import shutil
import sys
import time

from scale.common import ROOT, log, npy_shape
from scale.generate import prepare_data
from scale.measure import BLAS_TUNING, child_env, measure
from scale.peers import FAISS_INFO, HNSWLIB_INFO, Engine, run_faiss_flat, run_peer, search_peer
from scale.report import combine, plot, report

FULL_N = 8_841_823


def int_keys(d):
    """JSON object keys that were ints (the exact results' k) back to ints."""
    return {int(k) if isinstance(k, str) and k.isdigit() else k: v for k, v in d.items()}


def save(figures, path):
    """Writes one tool's figures to `path` whole (a `.part` file renamed into place)."""
    json.dump(figures, open(path + ".part", "w"), indent=1, default=str)
    os.replace(path + ".part", path)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument("--queries", type=int, default=None, help="held-out queries (10,000; --full: 1,000)")
    ap.add_argument("--seed", type=int, default=0, help="the generator's RNG seed")
    ap.add_argument("--seed-vectors", help="float32 .npy of real embeddings to shape the vectors after "
                                           "(default: the pool encoded with all-MiniLM-L6-v2)")
    ap.add_argument("--seed-clusters", type=int, default=256, help="k-means topics fitted on the seed")
    ap.add_argument("--near-dups", type=float, default=None,
                    help="share of rows made near-duplicates of another (default: half the seed's near-duplicate share)")
    ap.add_argument("--work", default=os.path.join(ROOT, "target", "bench-scale"),
                    help="cache of seed, data and truth; outputs (default target/bench-scale; --full needs ~40 GiB)")
    ap.add_argument("--out", help="results folder (default WORK/results-N)")
    ap.add_argument("--bin", default=os.path.join(ROOT, "target/release"), help="folder of simlm-index, simlm-search")
    ap.add_argument("--python", default=sys.executable, help="Python with numpy, hnswlib, faiss-cpu, threadpoolctl")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--search-threads", help="thread counts of the graph searches, comma-separated (default: "
                    "--threads); builds and exact search use --threads")
    ap.add_argument("--m", type=int, default=32)
    ap.add_argument("--ef-construction", type=int, default=200)
    ap.add_argument("--efs", default=None, help="search ef grid, comma-separated (default 10,16,32,64,128,256,512)")
    ap.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 3 up to n 100,000, else 1)")
    ap.add_argument("--stat", choices=["median", "best"], default="median", help="how rounds combine")
    ap.add_argument("--repeat", type=int, default=1, help="passes per search setting, the fastest kept")
    ap.add_argument("--tools", default="engine,hnswlib,faiss")
    ap.add_argument("--no-exact", action="store_true", help="skip the exact-search throughput")
    ap.add_argument("--keep-indexes", action="store_true")
    ap.add_argument("--search-again", action="store_true",
                    help="rerun only the graph searches, on the indexes an earlier --keep-indexes run left in OUT "
                         "(its build figures kept): the tools' searches side by side in one run")
    ap.add_argument("--generate-only", action="store_true", help="make (or check) the data and truth, then stop")
    ap.add_argument("--full", action="store_true", help="8,841,823 x 768, engine only, 1,000 queries, ef 64/128/256")
    ap.add_argument("--resume", action="store_true",
                    help="reuse the figures of tools already done in OUT/roundR/TOOL.json (same arguments)")
    ap.add_argument("--stream-base", action="store_true",
                    help="engine only: stream the base into the import (no base.npy), resumable (--full does this)")
    a = ap.parse_args()
    if a.stream_base:
        a.tools, a.rounds = "engine", 1
    if a.full:
        a.n, a.tools, a.rounds, a.stream_base = FULL_N, "engine", 1, True
        a.queries = a.queries or 1000
        a.efs = a.efs or "64,128,256"
    a.queries = a.queries or 10_000
    a.rounds = a.rounds or (3 if a.n <= 100_000 else 1)
    efs = [int(e) for e in (a.efs or "10,16,32,64,128,256,512").split(",")]
    a.search_threads = sorted({int(t) for t in (a.search_threads or str(a.threads)).split(",") if t} or {a.threads})
    tools = [t for t in a.tools.split(",") if t]
    unknown = [t for t in tools if t not in ("engine", "hnswlib", "faiss", "faiss-flat")]
    if unknown or not tools:
        sys.exit(f"--tools {a.tools!r}: name one or more of engine, hnswlib, faiss, faiss-flat (comma-separated)")
    a.out = a.out or os.path.join(a.work, f"results-{a.n}")
    os.makedirs(a.out, exist_ok=True)
    if a.full:
        # One copy of the matrix (streamed into the index), the graph file (codes and links) and a
        # checkpoint of the links.
        need = a.n * a.dim * 4 * 1.45
        free = shutil.disk_usage(a.work).free
        if not os.path.exists(os.path.join(a.out, "round1", "full-progress.json")) and free < need:
            sys.exit(f"--full needs ~{need / 2**30:.0f} GiB under {a.work} (the index's matrix, its graph and a "
                     f"checkpoint); {free / 2**30:.0f} GiB free")

    # The parent's own BLAS (data generation, ground truth) keeps to --threads too (numpy loaded first:
    # threadpoolctl limits the libraries already loaded).
    import numpy  # noqa: F401
    try:
        from threadpoolctl import threadpool_limits
        limits = threadpool_limits(a.threads)  # noqa: F841 (kept for the run)
    except ImportError:
        limits = None  # noqa: F841

    env = child_env(a.threads)
    removed = sorted(k for k in os.environ if BLAS_TUNING.match(k))
    blas = []
    if {"faiss", "faiss-flat", "hnswlib"} & set(tools):
        out, _, _, _, _ = measure([a.python, "-c", FAISS_INFO], env)
        blas = out.strip().splitlines()
        if "hnswlib" in tools:
            out, _, _, _, _ = measure([a.python, "-c", HNSWLIB_INFO], env)
            blas += out.strip().splitlines()
        for line in blas:
            log(line)
    engine = Engine(a, env) if "engine" in tools else None

    t0 = time.perf_counter()
    paths, info = prepare_data(a)
    n, dim = (a.n, a.dim) if "stream" in paths else npy_shape(paths["base"])
    nq = npy_shape(paths["queries"])[0]
    log(f"data: {paths['folder']} ({time.perf_counter() - t0:.0f} s)")
    log(json.dumps({"check_seed": info["check_seed"], "check_generated": info["check_generated"]}))
    if a.generate_only:
        return

    rounds = []
    for r in range(a.rounds):
        order = tools[r % len(tools):] + tools[:r % len(tools)]
        res = {}
        for tool in order:
            folder = os.path.join(a.out, f"round{r + 1}")
            os.makedirs(folder, exist_ok=True)
            saved = os.path.join(folder, f"{tool}.json")
            if a.search_again and tool in ("engine", "hnswlib", "faiss"):
                res[tool] = json.load(open(saved), object_hook=int_keys)
                log(f"round {r + 1}/{a.rounds}: {tool}: searches again on the kept index (build figures from {saved})")
                if tool == "engine":
                    engine.index = os.path.join(folder, "engine-index")
                    res[tool].update(engine.search(paths, folder, efs))
                    res[tool]["first_pass"] = engine.first_pass
                else:
                    res[tool].update(search_peer(a, env, tool, paths, folder, efs))
                save(res[tool], saved)
                continue
            if a.resume and os.path.exists(saved):
                res[tool] = json.load(open(saved), object_hook=int_keys)
                log(f"round {r + 1}/{a.rounds}: {tool}: from {saved} (--resume)")
                continue
            log(f"round {r + 1}/{a.rounds}: {tool} ...")
            t = time.perf_counter()
            if tool == "engine":
                res[tool] = {"build": engine.build(paths, folder)}
                res[tool].update(engine.search(paths, folder, efs))
                if engine.first_pass:
                    res[tool]["first_pass"] = engine.first_pass
                if not a.no_exact:
                    res[tool]["exact"] = engine.exact(paths, folder)
                if not a.keep_indexes:
                    shutil.rmtree(engine.index, ignore_errors=True)
            elif tool == "faiss-flat":
                res[tool] = {"exact": run_faiss_flat(a, env, paths)}
            else:
                res[tool] = run_peer(a, env, tool, paths, folder, efs)
            if "build" in res[tool]:
                log(f"  {tool}: {time.perf_counter() - t:.0f} s; build {res[tool]['build']['build_seconds']:.2f} s, "
                    f"peak RSS {res[tool]['build']['rss_mib']:.0f} MiB; "
                    + " ".join(f"ef{h['ef']}:{h['recall']:.3f}/{h['qps']:.0f}" for h in res[tool]["hnsw"]))
            else:
                log(f"  {tool}: {time.perf_counter() - t:.0f} s; exact "
                    + " ".join(f"k={k}:{x['recall']:.3f}/{x['qps']:.1f}" for k, x in res[tool]["exact"].items()))
            # Each tool's figures as soon as it is done: a run stopped later keeps them (--resume).
            save(res[tool], saved)
        rounds.append({t: res[t] for t in tools})
    res = combine(rounds, a.stat)
    text = report(a, info, res, n, dim, nq, blas, removed)
    png = os.path.join(a.out, "recall_qps.png")
    plot(res, png, f"{n:,} x {dim}, {nq:,} queries, k=10, M {a.m}, efC {a.ef_construction}, {a.threads} threads")
    text += f"\n\nPlot: {png}"
    with open(os.path.join(a.out, "results.md"), "w") as f:
        f.write(text + "\n")
    json.dump({"args": vars(a), "generator": info, "rounds": rounds, "combined": res, "data": paths},
              open(os.path.join(a.out, "results.json"), "w"), indent=1, default=str)
    print(text)


if __name__ == "__main__":
    main()
