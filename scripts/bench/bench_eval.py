#!/usr/bin/env python3
"""Benchmark: simlm-eval against pytrec_eval on a dev.small-sized run (6,980 queries x 1,000 docs).

Both tools read the same qrels and run files from disk and compute MRR@10, R@50, R@1000 and nDCG@10;
each runs in its own process, and wall time and peak memory (max RSS) are printed side by side.

usage: scripts/bench/bench_eval.py [--python PY] [--bin target/release/simlm-eval] [--shared ../shared]
"""
import argparse
import os
import random
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

PYTREC = r'''
import sys, pytrec_eval
qrels_path, run_path = sys.argv[1], sys.argv[2]
qrels = {}
for line in open(qrels_path):
    q, _, d, r = line.split()
    qrels.setdefault(q, {})[d] = int(r)
run = {}
for line in open(run_path):
    q, _, d, _, s, _ = line.split()
    run.setdefault(q, {})[d] = float(s)
ev = pytrec_eval.RelevanceEvaluator(qrels, {"recall.50,1000", "ndcg_cut.10", "recip_rank"})
res = ev.evaluate(run)
# MRR@10 needs the run cut to its top 10 in trec_eval order.
top = {q: dict(sorted(ds.items(), key=lambda x: (x[1], x[0]), reverse=True)[:10]) for q, ds in run.items()}
rr = pytrec_eval.RelevanceEvaluator(qrels, {"recip_rank"}).evaluate(top)
n = len(qrels)
print("MRR@10 %.4f R@50 %.4f R@1000 %.4f nDCG@10 %.4f" % (
    sum(v["recip_rank"] for v in rr.values()) / n,
    sum(v["recall_50"] for v in res.values()) / n,
    sum(v["recall_1000"] for v in res.values()) / n,
    sum(v["ndcg_cut_10"] for v in res.values()) / n))
'''


def make_run(qrels_path, out_path, docs_per_query=1000, seed=1):
    rng = random.Random(seed)
    rel = {}
    for line in open(qrels_path):
        q, _, d, _ = line.split()
        rel.setdefault(q, []).append(d)
    with open(out_path, "w") as f:
        for q, ds in rel.items():
            cands = [str(rng.randrange(8_841_823)) for _ in range(docs_per_query)]
            cands = list(dict.fromkeys(cands))
            for d in ds:  # put each relevant passage somewhere in (or out of) the list
                pos = rng.randrange(docs_per_query * 2)
                if pos < len(cands) and d not in cands:
                    cands[pos] = d
            cands = list(dict.fromkeys(cands))[:docs_per_query]
            lines = [f"{q} Q0 {d} {i + 1} {1000 - i + rng.random():.6f} bench\n" for i, d in enumerate(cands)]
            f.writelines(lines)


def measure(cmd):
    t = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t
    out, err = p.stdout.read().decode(), p.stderr.read().decode()
    if status != 0:
        sys.exit(f"{cmd[0]} failed: {err}")
    return wall, usage.ru_maxrss / 1024, out.strip()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--python", default=sys.executable)
    ap.add_argument("--bin", default=os.path.join(ROOT, "target/release/simlm-eval"))
    ap.add_argument("--shared", default=os.path.join(ROOT, "../shared"))
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args()
    qrels = os.path.join(a.shared, "data/msmarco/qrels.dev.small.tsv")
    with tempfile.TemporaryDirectory() as tmp:
        run = os.path.join(tmp, "dev.small.bench.trec")
        make_run(qrels, run)
        with open(run) as f:
            n = sum(1 for _ in f)
        print(f"run: {n:,} lines, {os.path.getsize(run) / 1e6:.0f} MB; qrels: {qrels}; {os.cpu_count()} CPUs")
        ours = [measure([a.bin, "--qrels", qrels, "--run", run]) for _ in range(a.repeat)]
        theirs = [measure([a.python, "-c", PYTREC, qrels, run]) for _ in range(a.repeat)]
    best = lambda rs: min(rs, key=lambda r: r[0])
    o, t = best(ours), best(theirs)
    print(f"{'tool':<14}{'wall s (best of %d)' % a.repeat:>22}{'peak RSS MiB':>14}")
    print(f"{'simlm-eval':<14}{o[0]:>22.3f}{o[1]:>14.0f}")
    print(f"{'pytrec_eval':<14}{t[0]:>22.3f}{t[1]:>14.0f}")
    print(f"speed-up: {t[0] / o[0]:.1f}x")
    print("simlm-eval:  " + " ".join(o[2].split()))
    print("pytrec_eval: " + t[2])


if __name__ == "__main__":
    main()
