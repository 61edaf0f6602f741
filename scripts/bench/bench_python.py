#!/usr/bin/env python3
"""The Python package against its peers, each measured in the same run on the same CPU.

  search, one call:  simlm Index.search (exact / graph) vs faiss IndexFlatIP and hnswlib, one query, k=10
  search, a batch:   the same with 2,000 queries in one call
  encode:            simlm Encoder.encode vs sentence-transformers' encode, the pool's first 2,000
                     passages, all-MiniLM-L6-v2
  evaluate:          simlm.evaluate vs pytrec_eval on a 7,000-query x 1,000-document run

Peers run in the same process with the same thread count (faiss: omp_set_num_threads; hnswlib:
num_threads; torch: set_num_threads). Each peer not installed is reported as skipped. Usage:

  target/bench-venv/bin/python scripts/bench/bench_python.py [--threads 2] [--n 30000] [--skip-encode]

The search matrix: --index IDX (an existing index; its vectors are used by every peer) or, by default,
N random unit vectors of 384 dimensions (seeded), imported with simlm.import_vectors (M 32, efC 200);
hnswlib is built with the same M and efC. Queries: 2,000 random unit vectors (seeded). The graph
searches use ef 128 (simlm's default) for both; recall@10 against exact search is printed beside them.
"""

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
SHARED = Path(os.environ.get("SIMLM_SHARED", ROOT.parent / "shared"))


def cpu_name():
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def per_call(fn, calls):
    """Median and p99 of single calls, in microseconds."""
    times = []
    for i in range(calls):
        t = time.perf_counter()
        fn(i)
        times.append((time.perf_counter() - t) * 1e6)
    times.sort()
    return statistics.median(times), times[int(0.99 * (len(times) - 1))]


def best_of(fn, repeat=3):
    out = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return min(out)


def recall(rows, truth, k=10):
    return float(np.mean([len(set(a[:k]) & set(b[:k])) / k for a, b in zip(rows, truth)]))


def line(name, value, peer=None):
    print(f"  {name:<48} {value}" + (f"   [{peer}]" if peer else ""), flush=True)


def bench_search(args, simlm, tmp):
    rng = np.random.default_rng(0)
    if args.index:
        idx = simlm.Index(args.index, threads=args.threads)
        base = np.ascontiguousarray(idx.vectors, dtype=np.float32)
    else:
        base = rng.standard_normal((args.n, 384)).astype(np.float32)
        base /= np.linalg.norm(base, axis=1, keepdims=True)
        t = time.perf_counter()
        simlm.import_vectors(base, out=tmp / "idx", m=32, ef_construction=200, threads=args.threads)
        line("simlm import + graph build (M 32, efC 200)", f"{time.perf_counter() - t:.1f} s")
        idx = simlm.Index(tmp / "idx", threads=args.threads)
    n, dim = base.shape
    q = rng.standard_normal((2000, dim)).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    print(f"search: {n} x {dim} vectors, 2,000 queries, k 10, {args.threads} threads", flush=True)
    _, truth = idx.search(q, k=10, exact=True)

    peers = {}
    try:
        import faiss

        faiss.omp_set_num_threads(args.threads)
        flat = faiss.IndexFlatIP(dim)
        flat.add(base)
        peers["faiss"] = flat
    except ImportError:
        line("faiss", "skipped: not installed")
    try:
        import hnswlib

        h = hnswlib.Index(space="ip", dim=dim)
        t = time.perf_counter()
        h.init_index(max_elements=n, M=32, ef_construction=200, random_seed=0)
        h.add_items(base, np.arange(n), num_threads=args.threads)
        line("hnswlib graph build (M 32, efC 200)", f"{time.perf_counter() - t:.1f} s")
        h.set_ef(args.ef)
        h.set_num_threads(args.threads)
        peers["hnswlib"] = h
    except ImportError:
        line("hnswlib", "skipped: not installed")

    calls = 500
    print("one call (one query, k=10), microseconds median / p99:")
    med, p99 = per_call(lambda i: idx.search(q[i % 2000:i % 2000 + 1], k=10, exact=True), calls)
    line("simlm Index.search exact=True", f"{med:.0f} / {p99:.0f}")
    if "faiss" in peers:
        med, p99 = per_call(lambda i: peers["faiss"].search(q[i % 2000:i % 2000 + 1], 10), calls)
        line("faiss IndexFlatIP.search", f"{med:.0f} / {p99:.0f}")
    med, p99 = per_call(lambda i: idx.search(q[i % 2000:i % 2000 + 1], k=10, ef=args.ef), calls)
    line(f"simlm Index.search ef={args.ef}", f"{med:.0f} / {p99:.0f}")
    if "hnswlib" in peers:
        med, p99 = per_call(lambda i: peers["hnswlib"].knn_query(q[i % 2000:i % 2000 + 1], k=10), calls)
        line(f"hnswlib knn_query ef={args.ef}", f"{med:.0f} / {p99:.0f}")

    print("a batch of 2,000 queries in one call, queries/s (best of 3), recall@10 vs exact:")
    s = best_of(lambda: idx.search(q, k=10, exact=True))
    line("simlm Index.search exact=True", f"{2000 / s:,.0f} q/s")
    if "faiss" in peers:
        s = best_of(lambda: peers["faiss"].search(q, 10))
        _, frows = peers["faiss"].search(q, 10)
        line("faiss IndexFlatIP.search", f"{2000 / s:,.0f} q/s, recall@10 {recall(frows, truth):.4f}")
    s = best_of(lambda: idx.search(q, k=10, ef=args.ef))
    _, grows = idx.search(q, k=10, ef=args.ef)
    line(f"simlm Index.search ef={args.ef}", f"{2000 / s:,.0f} q/s, recall@10 {recall(grows, truth):.4f}")
    if "hnswlib" in peers:
        s = best_of(lambda: peers["hnswlib"].knn_query(q, k=10))
        hrows, _ = peers["hnswlib"].knn_query(q, k=10)
        line(f"hnswlib knn_query ef={args.ef}", f"{2000 / s:,.0f} q/s, recall@10 {recall(hrows, truth):.4f}")


def bench_encode(args, simlm):
    model = ROOT / "models" / "all-MiniLM-L6-v2"
    pool = SHARED / "data" / "msmarco" / "pool" / "collection.tsv"
    if not model.is_dir() or not pool.is_file():
        line("encode", f"skipped: needs {model} and {pool}")
        return
    texts = []
    with open(pool, encoding="utf-8") as f:
        for i, l in enumerate(f):
            if i >= 2000:
                break
            texts.append(l.rstrip("\n").split("\t", 1)[1])
    print(f"encode: the pool's first 2,000 passages, all-MiniLM-L6-v2, {args.threads} threads, passages/s:")
    enc = simlm.Encoder(model, format="sentence-transformers", precision="f32", threads=args.threads)
    enc.encode(texts[:64], kind="passage")
    t = time.perf_counter()
    ours = enc.encode(texts, kind="passage")
    s = time.perf_counter() - t
    line("simlm Encoder.encode (f32, batch_tokens default)", f"{2000 / s:.1f}")
    try:
        import torch
        from sentence_transformers import SentenceTransformer
    except ImportError:
        line("sentence-transformers", "skipped: not installed")
        return
    torch.set_num_threads(args.threads)
    st = SentenceTransformer(str(model), device="cpu")
    for bs in (32, 128):
        st.encode(texts[:64], batch_size=bs)
        t = time.perf_counter()
        theirs = st.encode(texts, batch_size=bs, normalize_embeddings=True, convert_to_numpy=True)
        s = time.perf_counter() - t
        cos = float(np.min(np.sum(ours * theirs, axis=1)))
        line(f"sentence-transformers encode batch_size={bs}", f"{2000 / s:.1f} (min cosine to simlm {cos:.6f})",
             f"torch {torch.__version__}")


def bench_evaluate(args, simlm):
    qrels_path = SHARED / "data" / "msmarco" / "qrels.dev.small.tsv"
    pool = SHARED / "data" / "msmarco" / "pool" / "collection.tsv"
    if not qrels_path.is_file():
        line("evaluate", f"skipped: needs {qrels_path}")
        return
    qrels = {}
    for l in open(qrels_path):
        qid, _, d, r = l.split()
        qrels.setdefault(qid, {})[d] = int(r)
    pids = [l.split("\t", 1)[0] for l in open(pool, encoding="utf-8")]
    rng = np.random.default_rng(0)
    run = {}
    for qid, judged in qrels.items():
        docs = list(rng.choice(pids, 1000, replace=False))
        for j, d in enumerate(judged):
            docs[int(rng.integers(0, 1000))] = d
        scores = np.sort(rng.random(1000))[::-1]
        run[qid] = {d: float(s) for d, s in zip(docs, scores)}
    nq, nd = len(run), sum(len(v) for v in run.values())
    print(f"evaluate: {nq} queries x 1,000 = {nd:,} run lines, qrels.dev.small, 4 measures, seconds (best of 3):")
    measures = ("recip_rank", "ndcg_cut_10", "recall_50", "recall_1000")
    s = best_of(lambda: simlm.evaluate(qrels, run, measures=measures))
    line("simlm.evaluate(dicts)", f"{s:.2f}")
    tmp = Path(tempfile.mkdtemp())
    with open(tmp / "run.trec", "w") as f:
        for qid, docs in run.items():
            for r, (d, sc) in enumerate(docs.items()):
                f.write(f"{qid} Q0 {d} {r + 1} {sc!r} x\n")
    s = best_of(lambda: simlm.evaluate(qrels_path, tmp / "run.trec", measures=measures))
    line("simlm.evaluate(paths)", f"{s:.2f}")
    try:
        import pytrec_eval
    except ImportError:
        line("pytrec_eval", "skipped: not installed")
        return
    s = best_of(lambda: pytrec_eval.RelevanceEvaluator(qrels, set(measures)).evaluate(run))
    line("pytrec_eval RelevanceEvaluator(...).evaluate(dicts)", f"{s:.2f}")
    ev = pytrec_eval.RelevanceEvaluator(qrels, set(measures))
    s = best_of(lambda: ev.evaluate(run))
    line("pytrec_eval evaluate only (evaluator built once)", f"{s:.2f}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--n", type=int, default=30000, help="random vectors when no --index")
    ap.add_argument("--index", help="an existing index whose vectors every peer searches")
    ap.add_argument("--ef", type=int, default=128)
    ap.add_argument("--skip-search", action="store_true")
    ap.add_argument("--skip-encode", action="store_true")
    ap.add_argument("--skip-evaluate", action="store_true")
    args = ap.parse_args()
    import simlm

    print(f"CPU: {cpu_name()}; {os.cpu_count()} logical cores; Python {sys.version.split()[0]}; "
          f"numpy {np.__version__}; simlm {simlm.__version__}", flush=True)
    with tempfile.TemporaryDirectory() as d:
        if not args.skip_search:
            bench_search(args, simlm, Path(d))
        if not args.skip_encode:
            bench_encode(args, simlm)
        if not args.skip_evaluate:
            bench_evaluate(args, simlm)


if __name__ == "__main__":
    main()
