#!/usr/bin/env python3
"""The front over shard servers (`simlm-search serve --shard ...`) against one server on the unsplit
index, on loopback, in one run:

  equal    every query of the file, one a request, asked of both (exact search, k 100): the same ids,
           scores (as printed: the same f32) and order, or the run fails naming the first that differs;
  load     N clients (threads, one keep-alive connection each) send the queries one a request (k 10,
           exact, no text) at concurrency 1 and 64: queries/s and p50 / p99 latency, the single server
           first, then the front.

Every server runs on this machine: the front, its shard servers and the single server share its CPUs
(one at a time under load), so what the front adds here is its HTTP hop, the merge and the shards'
searches beside each other, not more hardware.

usage: scripts/bench/bench_front.py [--collection POOL] [--model DIR] [--queries Q] [--shards 2] [--bin target/release]
"""
import argparse
import json
import os
import subprocess
import sys
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_serve import load, read_queries  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SHARED = os.environ.get("SIMLM_SHARED", os.path.join(ROOT, "../shared"))


def run(cmd):
    t = time.perf_counter()
    p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if p.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{p.stdout[-2000:]}")
    return time.perf_counter() - t


def start(cmd, addr_file):
    if os.path.exists(addr_file):
        os.remove(addr_file)
    proc = subprocess.Popen(cmd + ["--addr", "127.0.0.1:0", "--addr-file", addr_file],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    for _ in range(6000):
        if os.path.exists(addr_file):
            return proc, open(addr_file).read().strip()
        if proc.poll() is not None:
            sys.exit(f"{' '.join(cmd)} exited: {proc.stderr.read()}")
        time.sleep(0.05)
    sys.exit(f"{' '.join(cmd)} did not listen")


def search(url, text, k):
    body = json.dumps({"query": text, "k": k, "exact": True, "text": False}).encode()
    req = urllib.request.Request(url + "/search", body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=120) as r:
        return [(h["docid"], h["score"], h["row"]) for h in json.load(r)["hits"]]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--collection", default=os.path.join(SHARED, "data/msmarco/pool/collection.tsv"))
    ap.add_argument("--model", default=os.path.join(ROOT, "models/all-MiniLM-L6-v2"))
    ap.add_argument("--queries", default=os.path.join(SHARED, "data/msmarco/queries.dev.small.tsv"))
    ap.add_argument("--shards", type=int, default=2)
    ap.add_argument("--bin", default=os.path.join(ROOT, "target/release"))
    ap.add_argument("--work", default=os.path.join(ROOT, "target/bench-front"))
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--requests", type=int, default=20000)
    ap.add_argument("--equal-k", type=int, default=100)
    ap.add_argument("--whole", help="an index of the collection already built (skips the builds)")
    ap.add_argument("--shard-index", action="append", help="a shard index already built (once per shard)")
    a = ap.parse_args()
    index_bin, search_bin = os.path.join(a.bin, "simlm-index"), os.path.join(a.bin, "simlm-search")
    os.makedirs(a.work, exist_ok=True)
    if a.whole and a.shard_index:
        whole, parts = a.whole, a.shard_index
        a.shards = len(parts)
        print(f"indexes: {whole}; shards {', '.join(parts)}")
    else:
        whole = os.path.join(a.work, "whole")
        parts = [os.path.join(a.work, f"shard{i}") for i in range(a.shards)]
        base = [index_bin, "build", "--collection", a.collection, "--model", a.model, "--no-hnsw"]
        t_whole = run(base + ["--out", whole])
        t_parts = [run(base + ["--out", p, "--shard", f"{i}/{a.shards}"]) for i, p in enumerate(parts)]
        print(f"indexes: whole {t_whole:.1f} s, {a.shards} shards {sum(t_parts):.1f} s (0 s: already built)")

    procs = []
    try:
        single_p, single = start([search_bin, "serve", "--index", whole, "--exact"], os.path.join(a.work, "single.url"))
        procs.append(single_p)
        urls = []
        for i, p in enumerate(parts):
            proc, url = start([search_bin, "serve", "--index", p, "--exact"], os.path.join(a.work, f"shard{i}.url"))
            procs.append(proc)
            urls.append(url)
        cmd = [search_bin, "serve"] + sum((["--shard", u] for u in urls), [])
        front_p, front = start(cmd, os.path.join(a.work, "front.url"))
        procs.append(front_p)

        queries = read_queries(a.queries, 10**9)
        t = time.perf_counter()
        for qid, text in queries:
            want, got = search(single, text, a.equal_k), search(front, text, a.equal_k)
            if want != got:
                sys.exit(f"query {qid}: the front's top {a.equal_k} differs from the single server's:\n"
                         f"  single {want[:5]}\n  front  {got[:5]}")
        print(f"equal: all {len(queries)} queries of {os.path.basename(a.queries)}: the front's exact top "
              f"{a.equal_k} (ids, scores, order, rows) = the single server's ({time.perf_counter() - t:.0f} s)")

        cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
        print(f"load: k 10, exact, no text; {os.cpu_count()} CPUs ({cpu}); {a.seconds:.0f} s a level")
        print(f"{'service':<28} {'conc':>4} {'q/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'errors':>6}")
        for conc in (1, 64):
            for name, url in (("single server", single), (f"front over {a.shards} shards", front)):
                host, port = url.removeprefix("http://").rsplit(":", 1)
                r = load(host, int(port), queries, conc, a.seconds, a.requests)
                print(f"{name:<28} {conc:>4} {r['qps']:>8.1f} {r['p50_ms']:>8.1f} {r['p99_ms']:>8.1f} "
                      f"{len(r['errors']):>6}")
                if r["errors"]:
                    print("  first error:", r["errors"][0])
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait()


if __name__ == "__main__":
    main()
