"""Per-query reference values from pytrec_eval (trec_eval's own C code) for simlm-eval's parity tests.

usage: pytrec_reference.py QRELS RUN REL_LEVEL METRIC...
Prints {qid: {metric: value}} as JSON, for the queries pytrec_eval evaluates (those in both files).
MRR@k is trec_eval's recip_rank over the run cut to its top k in trec_eval's order (score descending,
docid descending), which is how the official MS MARCO script's MRR@10 reads a ranked list.
"""
import gzip
import json
import sys

import pytrec_eval


def lines(path):
    with open(path, "rb") as f:
        magic = f.read(2)
    opener = gzip.open if magic == b"\x1f\x8b" else open
    with opener(path, "rt", encoding="utf-8") as f:
        for line in f:
            if line.strip():
                yield line.split()


def read_qrels(path):
    qrels = {}
    for i, f in enumerate(lines(path)):
        if len(f) == 3:
            if i == 0 and not f[2].lstrip("-").isdigit():
                continue  # BEIR header
            q, d, r = f
        else:
            q, _, d, r = f
        qrels.setdefault(q, {})[d] = int(r)
    return qrels


def read_run(path):
    run = {}
    for f in lines(path):
        if len(f) == 3:  # MS MARCO qid pid rank: rank 1 first
            q, d, score = f[0], f[1], -float(f[2])
        else:
            q, d, score = f[0], f[2], float(f[4])
        run.setdefault(q, {})[d] = score
    return run


def top_k(run, k):
    out = {}
    for q, docs in run.items():
        ranked = sorted(docs.items(), key=lambda x: (x[1], x[0]), reverse=True)[:k]
        out[q] = dict(ranked)
    return out


def main():
    qrels_path, run_path, rel_level = sys.argv[1], sys.argv[2], int(sys.argv[3])
    metrics = sys.argv[4:]
    qrels, run = read_qrels(qrels_path), read_run(run_path)
    result = {}

    def merge(values, name, key):
        for q, v in values.items():
            result.setdefault(q, {})[name] = v[key]

    for m in metrics:
        if m.startswith("MRR@"):
            k = int(m[4:])
            ev = pytrec_eval.RelevanceEvaluator(qrels, {"recip_rank"}, relevance_level=rel_level)
            merge(ev.evaluate(top_k(run, k)), m, "recip_rank")
            continue
        if m.startswith("R@"):
            measure, key = "recall." + m[2:], "recall_" + m[2:]
        elif m.startswith("P@"):
            measure, key = "P." + m[2:], "P_" + m[2:]
        elif m.startswith("nDCG@"):
            measure, key = "ndcg_cut." + m[5:], "ndcg_cut_" + m[5:]
        elif m == "MAP":
            measure, key = "map", "map"
        else:
            raise SystemExit(f"unknown metric {m}")
        ev = pytrec_eval.RelevanceEvaluator(qrels, {measure}, relevance_level=rel_level)
        merge(ev.evaluate(run), m, key)
    json.dump(result, sys.stdout)


if __name__ == "__main__":
    main()
