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
             recall@10 at every ef >= hnswlib's - 0.005; engine queries/s at recall@10 0.95 >= 1.3x
             hnswlib's (log queries/s interpolated linearly in recall between the two ef settings around
             0.95).

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
  kernels; OMP_NUM_THREADS / OPENBLAS_NUM_THREADS / RAYON_NUM_THREADS = T. The script prints the BLAS
  libraries faiss and numpy load with the kernel (architecture) OpenBLAS selected (threadpoolctl), and the
  faiss build and SIMD level dispatched.

Rounds: with --rounds R the tools alternate within each round (the order rotates by one each round, so none
always runs first); every figure reported is the MEDIAN over the rounds per tool (per ef for search;
--stat best takes the fastest instead, as bench_search.py does). Default: 3 rounds up to n = 100,000, one
above.

The generator (vectors shaped after a seed matrix of real embeddings):
  Seed: by default the 28,606 MS MARCO pool passages (../shared/data/msmarco/pool/collection.tsv) encoded by
  the engine with all-MiniLM-L6-v2 (sentence-transformers format: one segment, mean pooling, L2-normalised;
  384-d), the only real model here; made once (`simlm-index embed --threads T`: ~36 min
  on one busy core here, 13 passages/s) and cached in WORK/seed/. --seed-vectors PATH.npy seeds from any
  float32 matrix instead (e.g. real 768-d SimLM passage vectors: then nothing is stretched).
  Fitted on the seed: the mean, the covariance's eigenvalues and eigenvectors (principal spectrum),
  k-means topics (--seed-clusters, 256), and from them, per principal direction, the share of the variance
  that lies between topics (alpha_i), the topics' size distribution and the spread of their radii; and the
  near-duplicates (rows whose nearest other row is at cosine >= 0.95: 25% of the pool, MS MARCO repeats
  itself) with their cosines.
  Generated: a mixture of K = n / (seed rows / seed clusters) topics (the seed's mean topic size, ~112
  rows: a larger n has more topics, as tight as the seed's): centres ~ N(0, alpha_i lambda_i); a row =
  centre + its topic's low-rank offset (one of 256 random rank-r subspaces drawn from the within-topic
  spectrum, holding a share rho of the within-topic variance) + full-rank N(0, (1 - rho)(1 - alpha_i)
  lambda_i) noise, times the topic's radius factor, in the principal basis; topic weights and radius factors
  resampled from the seed's topics; rotated into the target basis, shifted by the mean, rescaled to a seed
  norm; then half the seed's near-duplicate share of the rows (--near-dups) are replaced by near copies of
  another row of their block at a cosine resampled from the seed's. The total covariance is the seed's.
  A plain Gaussian mixture is far from real embeddings locally (its 20-NN intrinsic dimension came out 68
  against the pool's 15, nearest-neighbour cosine 0.55 against 0.79), hence the low-rank offsets and the
  copies: r and rho are calibrated (grid r in 6..32, rho in 0.6..0.95, deterministic) so that a generated
  sample of the seed's size matches the seed's MLE intrinsic dimension (20 NN), median nearest-neighbour
  and mean 10th-neighbour inner products. The script prints that check (with the eigenvalue shares,
  participation ratio, near-duplicate share) for the seed and the generated sample. With the MiniLM pool
  seed: r 16, rho 0.95; LID 10.5 (seed 15.1), NN1 median 0.81 (0.83), NN10 0.67 (0.62), near-duplicates
  23% (25%): locally a little easier than the seed, globally more spread (768-d stretch, below).
  Another dimension (384 -> 768): the spectrum is stretched, log(lambda) interpolated over the relative rank
  (component j of D takes the seed's spectrum at rank (j + 0.5) d / D) and scaled to the seed's total
  variance, so the share of variance in the top p% of components is the seed's: a 768-d model spends its
  variance over twice as many directions (the harder, more conservative case: participation ratio 134 ->
  187 with the pool seed). When D = r x d the basis is kron(V, H) (V the seed's eigenvectors, H a random r x r rotation)
  and the mean kron(mu, 1/sqrt(r)): each seed coordinate becomes r coordinates, so the per-coordinate
  structure (outlier dimensions, ranges, which the engine's per-dimension 8-bit codes depend on) is kept;
  otherwise the basis is a random rotation and the mean's coordinates are interpolated.
  Norms: each vector is rescaled to a norm drawn from the seed's norms. The seed's norm distribution is kept
  because with raw inner-product scores the norms decide which vectors are hubs and how hard the search
  is; the engine L2-normalises what it encodes (so does SimLM's reference code, see
  ../shared/data/README.md), so the default seed gives unit vectors, and a seed of unnormalised vectors
  keeps its spread.
  Queries: held-out draws from the same mixture (another RNG stream, no near copies), not rows of the base. Real queries
  differ from passages (shorter texts, a query/passage offset); this generator does not model that.
  Caveat: the pool is the union of top-100 lists for 97 queries, so the seed is more topical than the
  8.8M collection.
  Deterministic: numpy's PCG64 seeded with (--seed, stream, block); blocks of 65,536 rows are generated,
  written and forgotten, so memory stays ~1 GB whatever n (--full: 8,841,823 x 768 = 27.2 GB on disk).
  Cached in WORK/data/<seed>-n<N>-d<D>-s<seed>-g3/: base.npy, queries-<Q>.npy (float32, C order) and
  truth-<Q>.npy (int64 row ids, exact inner-product top 10, ties to the lower row) with
  truth-<Q>-scores.npy, model.npz and generator.json (parameters and the realism check).

Usage (the repository's .venv: scripts/setup-python.sh --bench, or pip install faiss-cpu hnswlib
threadpoolctl matplotlib):
  .venv/bin/python scripts/bench/bench_scale.py                              # 1M x 768, 10,000 queries, 1 round
  .venv/bin/python scripts/bench/bench_scale.py --n 20000 --queries 1000 --rounds 3
  .venv/bin/python scripts/bench/bench_scale.py --seed-vectors simlm-passages.npy --dim 768
  .venv/bin/python scripts/bench/bench_scale.py --full                      # 8,841,823 x 768, engine only
  .venv/bin/python scripts/bench/bench_scale.py --tools hnswlib --resume     # one tool now, the others later:
  each tool's figures are saved in OUT/roundR/TOOL.json when it finishes; --resume reuses them.
  .venv/bin/python scripts/bench/bench_scale.py --tools engine,hnswlib,faiss-flat --resume  # faiss exact only
  With --full the base streams from the generator into `simlm-index import --vectors FIFO` (one copy on
  disk, the index's), the truth is computed from the index's vectors.npy, and a stopped run resumes: the
  same command again skips the finished import (OUT/round1/full-progress.json) and the graph build
  resumes from the engine's checkpoint; the build time is then the checkpoint's recorded seconds of
  building plus the last run's wall time (work lost after a checkpoint is redone and counted once).
Output: a markdown table (printed and in OUT/results.md), OUT/results.json, OUT/recall_qps.png;
OUT defaults to WORK/results-N.
"""
import argparse
import hashlib
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SHARED = os.environ.get("SIMLM_SHARED", os.path.join(os.path.dirname(ROOT), "shared"))
POOL = os.path.join(SHARED, "data/msmarco/pool/collection.tsv")
MINILM = os.path.join(ROOT, "models/all-MiniLM-L6-v2")
FULL_N = 8_841_823
GEN_VERSION = "g3"
BLOCK = 65_536          # rows generated at a time
CHUNK = 100_000         # rows the peers are given per add call
TRUTH_K = 10
BLAS_TUNING = re.compile(r"^(OPENBLAS_CORETYPE|OPENBLAS_L2_SIZE|OPENBLAS_VERBOSE|GOTOBLAS_.*|GOTO_.*|"
                         r"MKL_DEBUG_CPU_TYPE|MKL_CBWR|MKL_ENABLE_INSTRUCTIONS|NVPL_.*)$")


def log(msg):
    print(msg, file=sys.stderr, flush=True)


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
# The seed


def default_seed(work, bins, threads):
    """The pool passages encoded by the engine with all-MiniLM-L6-v2 (made once, cached)."""
    out = os.path.join(work, "seed", "minilm-pool-passages.npy")
    if os.path.exists(out):
        return out
    os.makedirs(os.path.dirname(out), exist_ok=True)
    if not os.path.exists(os.path.join(MINILM, ".complete")):
        subprocess.run([os.path.join(ROOT, "scripts/fetch-minilm.sh")], check=True)
    exe = next((os.path.join(b, "simlm-index") for b in bins if os.path.exists(os.path.join(b, "simlm-index"))), None)
    if exe is None:
        sys.exit(f"no simlm-index in {bins} to encode the seed; pass --seed-vectors PATH.npy")
    jsonl = os.path.join(work, "seed", "pool.jsonl")
    with open(POOL, encoding="utf-8") as f, open(jsonl, "w", encoding="utf-8") as o:
        for line in f:
            _, text = line.rstrip("\n").split("\t", 1)
            o.write(json.dumps({"text": text}) + "\n")
    log(f"encoding the seed (28,606 pool passages, all-MiniLM-L6-v2) with {exe}, {threads} threads ...")
    subprocess.run([exe, "embed", "--model", MINILM, "--format", "sentence-transformers", "--kind", "passage",
                    "--input", jsonl, "--out", out + ".part.npy", "--threads", str(threads)], check=True)
    os.replace(out + ".part.npy", out)
    return out


def file_tag(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for b in iter(lambda: f.read(1 << 22), b""):
            h.update(b)
    return h.hexdigest()[:12]


# ----------------------------------------------------------------------------------------------------
# The generator


def kmeans(x, k, rng, iters=25):
    """Lloyd's k-means (inner products on the centred rows); returns labels and centres."""
    import numpy as np
    n = len(x)
    c = x[rng.choice(n, size=k, replace=False)].copy()
    for _ in range(iters):
        labels = np.empty(n, dtype=np.int64)
        cn = (c * c).sum(1)
        for s in range(0, n, 8192):
            labels[s:s + 8192] = np.argmax(2 * x[s:s + 8192] @ c.T - cn, axis=1)
        sizes = np.bincount(labels, minlength=k)
        new = np.zeros_like(c)
        np.add.at(new, labels, x)
        empty = sizes == 0
        new[~empty] /= sizes[~empty, None]
        new[empty] = x[rng.choice(n, size=int(empty.sum()), replace=False)]
        c = new
    return labels, c


def stretch(values, dim, log_scale):
    """values (descending, length d) resampled to length dim over the relative rank."""
    import numpy as np
    d = len(values)
    t = (np.arange(dim) + 0.5) * d / dim - 0.5
    if log_scale:
        v = np.maximum(values, values.max() * 1e-12)
        out = np.exp(np.interp(t, np.arange(d), np.log(v)))
        return out * (values.sum() / out.sum())
    return np.interp(t, np.arange(d), values)


def fit_model(seed_x, dim, seed, clusters):
    """Everything the generator takes from the seed, in the target dimension."""
    import numpy as np
    rng = np.random.default_rng([seed, 0])
    x = np.asarray(seed_x, dtype=np.float64)
    n, d = x.shape
    norms = np.linalg.norm(x, axis=1)
    mu = x.mean(0)
    xc = x - mu
    lam, v = np.linalg.eigh(xc.T @ xc / (n - 1))
    order = np.argsort(lam)[::-1]
    lam, v = np.maximum(lam[order], 0), v[:, order]
    k = min(clusters, n // 4)
    labels, centres = kmeans(xc, k, rng)
    sizes = np.bincount(labels, minlength=k)
    proj = (centres @ v)                                   # centres in the principal basis
    between = (sizes[:, None] * proj ** 2).sum(0) / n
    alpha = np.clip(between / np.maximum(lam, 1e-30), 0.0, 0.98)
    within = np.array([((xc[labels == i] - centres[i]) ** 2).sum(1).mean() if sizes[i] else 0.0
                       for i in range(k)])
    keep = sizes > 1
    radius = within[keep] / np.average(within[keep], weights=sizes[keep])   # variance factor, size-weighted mean 1
    if dim == d:
        lam_t, alpha_t, basis, mu_t, how = lam, alpha, v, mu, "the seed's own basis and mean"
    else:
        lam_t, alpha_t = stretch(lam, dim, True), stretch(alpha, dim, False)
        if dim % d == 0:
            r = dim // d
            h, _ = np.linalg.qr(rng.standard_normal((r, r)))
            basis = np.kron(v, h)
            mu_t = np.kron(mu, np.full(r, 1 / np.sqrt(r)))
            how = f"spectrum stretched {d} -> {dim}; basis kron(seed eigenvectors, random {r}x{r} rotation)"
        else:
            basis, _ = np.linalg.qr(rng.standard_normal((dim, dim)))
            mu_t = np.interp((np.arange(dim) + 0.5) * d / dim - 0.5, np.arange(d), mu)
            mu_t *= np.linalg.norm(mu) / max(np.linalg.norm(mu_t), 1e-30)
            how = f"spectrum stretched {d} -> {dim}; random basis, mean coordinates interpolated"
    # Near-duplicates: the share of rows whose nearest other row is at cosine >= NEAR_DUP (on a sample), and
    # those cosines. A copy makes two such rows, so half the share is made into copies.
    xs = (x / np.maximum(norms, 1e-30)[:, None]).astype(np.float32)
    idx = rng.choice(n, size=min(2000, n), replace=False)
    cs = xs[idx] @ xs.T
    cs[np.arange(len(idx)), idx] = -np.inf
    cos1 = cs.max(1)
    dup_cos = np.sort(cos1[cos1 >= NEAR_DUP]).astype(np.float64)
    return {
        "dup_fraction": np.float64(len(dup_cos) / len(idx) / 2), "dup_cos": dup_cos if len(dup_cos) else np.ones(1),
        "mu": mu_t.astype(np.float32), "basis": basis.astype(np.float32),
        "sd_between": np.sqrt(alpha_t * lam_t).astype(np.float32),
        "sd_within": np.sqrt((1 - alpha_t) * lam_t).astype(np.float32),
        "topic_sizes": sizes[keep].astype(np.int64), "topic_radius": radius.astype(np.float64),
        "norms": np.sort(norms).astype(np.float64), "seed_rows": np.int64(n), "seed_dim": np.int64(d),
        "seed_lambda": lam, "seed_alpha": alpha, "how": np.str_(how),
    }


NEAR_DUP = 0.95          # cosine above which two rows count as near-duplicates
SUBSPACES = 256         # low-rank within-topic subspaces, shared by the topics
RANKS = (6, 8, 12, 16, 24, 32)
RHOS = (0.6, 0.75, 0.85, 0.95)


class Mixture:
    """The topics of one data set (from --seed and n): centres, weights, radius factors, and each topic's
    low-rank subspace. A row = centre + its topic's subspace x N(0, I_rank) (a share rho of the within-topic
    variance) + full-rank N(0, (1 - rho) (1 - alpha_i) lambda_i) noise, times the topic's radius factor;
    rotated into the target basis, shifted by the mean, rescaled to a seed norm; a share of the rows are
    then made near-duplicates of another row of their block (cosines resampled from the seed's)."""

    def __init__(self, model, n, seed, rank=None, rho=None):
        import numpy as np
        rng = np.random.default_rng([seed, 1, n])
        mean_size = float(model["seed_rows"]) / len(model["topic_sizes"])
        self.k = max(1, int(round(n / mean_size)))
        self.model = model
        self.rank = int(model["rank"] if rank is None else rank)
        self.rho = float(model["rho"] if rho is None else rho)
        dim = len(model["mu"])
        sdw = model["sd_within"]
        self.centres = (rng.standard_normal((self.k, dim), dtype=np.float32) * model["sd_between"])
        w = rng.choice(model["topic_sizes"], size=self.k).astype(np.float64)
        self.p = w / w.sum()
        self.scale = np.sqrt(rng.choice(model["topic_radius"], size=self.k)).astype(np.float32)
        self.sub = rng.standard_normal((SUBSPACES, self.rank, dim), dtype=np.float32) * (sdw * np.sqrt(self.rho / self.rank))
        self.subof = rng.integers(0, SUBSPACES, size=self.k)
        self.iso = (sdw * np.sqrt(1 - self.rho)).astype(np.float32)

    def block(self, seed, stream, b, rows, dups=True):
        import numpy as np
        m = self.model
        rng = np.random.default_rng([seed, stream, b])
        lab = rng.choice(self.k, size=rows, p=self.p)
        z = rng.standard_normal((rows, len(m["mu"])), dtype=np.float32)
        z *= self.iso
        u = rng.standard_normal((rows, self.rank), dtype=np.float32)
        s = self.subof[lab]
        order = np.argsort(s, kind="stable")
        bounds = np.flatnonzero(np.diff(s[order])) + 1
        for grp in np.split(order, bounds):
            if len(grp):
                z[grp] += u[grp] @ self.sub[s[grp[0]]]
        z *= self.scale[lab, None]
        z += self.centres[lab]
        x = z @ m["basis"].T
        x += m["mu"]
        want = rng.choice(m["norms"], size=rows).astype(np.float32)
        x *= (want / np.maximum(np.linalg.norm(x, axis=1), 1e-30))[:, None]
        if dups and float(m["dup_fraction"]) > 0 and rows > 1:
            # Near-duplicates: row i becomes cos c to row j (another row of the block), its own draw giving
            # the direction of the difference; the norm is j's.
            d = np.flatnonzero(rng.random(rows) < float(m["dup_fraction"]))
            j = (d + rng.integers(1, rows, size=len(d))) % rows
            c = rng.choice(m["dup_cos"], size=len(d)).astype(np.float32)[:, None]
            src = x[j]
            nj = np.linalg.norm(src, axis=1, keepdims=True)
            unit = src / np.maximum(nj, 1e-30)
            e = x[d] - (x[d] * unit).sum(1, keepdims=True) * unit
            e /= np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-30)
            x[d] = nj * (c * unit + np.sqrt(np.maximum(1 - c * c, 0)) * e)
        return np.ascontiguousarray(x, dtype=np.float32)

    def write(self, path, n, seed, stream, dups=True):
        tmp = path + ".part"
        with open(tmp, "wb") as f:
            self.write_to(f, os.path.basename(path), n, seed, stream, dups)
        os.replace(tmp, path)

    def write_to(self, f, name, n, seed, stream, dups=True):
        """The .npy bytes of n rows into an open file or pipe."""
        dim = len(self.model["mu"])
        npy_write_header(f, n, dim)
        for b, s in enumerate(range(0, n, BLOCK)):
            f.write(self.block(seed, stream, b, min(BLOCK, n - s), dups).tobytes())
            if b % 16 == 15:
                log(f"  {name}: {s + BLOCK:,}/{n:,} rows")


def shape_stats(x, rng, sample=1000, k=20, spectrum=True):
    """Numbers to compare a generated sample with the seed: spectrum, intrinsic dimension (Levina-Bickel
    MLE over the 20 nearest neighbours by inner product), neighbours' inner products, near-duplicates."""
    import numpy as np
    x = np.asarray(x, dtype=np.float32)
    out = {}
    if spectrum:
        xc = x - x.mean(0)
        lam = np.clip(np.linalg.eigvalsh((xc.T @ xc).astype(np.float64) / (len(x) - 1))[::-1], 0, None)
        share = np.cumsum(lam) / lam.sum()
        out = {"top1_share": float(share[0]), "top10_share": float(share[9]),
               "top50_share": float(share[min(49, len(share) - 1)]),
               "participation_ratio": float(lam.sum() ** 2 / (lam ** 2).sum())}
    idx = rng.choice(len(x), size=min(sample, len(x)), replace=False)
    ip = x[idx] @ x.T
    rand = (ip.sum() - (ip[np.arange(len(idx)), idx]).sum()) / (ip.size - len(idx))
    ip[np.arange(len(idx)), idx] = -np.inf
    nn = np.argpartition(-ip, k, axis=1)[:, :k]
    top = np.take_along_axis(ip, nn, 1)
    o = np.argsort(-top, axis=1)
    nn, top = np.take_along_axis(nn, o, 1), np.take_along_axis(top, o, 1)
    sq = (x * x).sum(1)
    dist = np.sort(np.sqrt(np.maximum(sq[idx, None] + sq[nn] - 2 * top, 1e-30)), axis=1)
    lid = -1 / np.mean(np.log(np.maximum(dist[:, :-1], 1e-12) / dist[:, -1:]), axis=1)
    cos1 = top[:, 0] / np.sqrt(sq[idx] * sq[nn[:, 0]])
    norms = np.sqrt(sq)
    out.update({"lid_mle_20": float(np.mean(lid)), "ip_nn1": float(top[:, 0].mean()),
                "ip_nn1_median": float(np.median(top[:, 0])), "ip_nn10": float(top[:, 9].mean()),
                "ip_random": float(rand), "near_dup_share": float((cos1 >= NEAR_DUP).mean()),
                "norm_mean": float(norms.mean()), "norm_std": float(norms.std())})
    return out


def calibrate(model, seed_x, seed, target):
    """The within-topic rank and low-rank share rho whose generated sample (the seed's size) comes closest to
    the seed's intrinsic dimension and neighbour inner products (grid search; deterministic)."""
    import numpy as np
    best, grid = None, []
    for rank in RANKS:
        for rho in RHOS:
            x = Mixture(model, len(seed_x), seed, rank, rho).block(seed, 3, 0, len(seed_x))
            st = shape_stats(x, np.random.default_rng([seed, 9]), spectrum=False)
            err = (((st["lid_mle_20"] - target["lid_mle_20"]) / target["lid_mle_20"]) ** 2
                   + ((st["ip_nn1_median"] - target["ip_nn1_median"]) / (1 - target["ip_nn1_median"])) ** 2
                   + ((st["ip_nn10"] - target["ip_nn10"]) / (1 - target["ip_nn10"])) ** 2)
            grid.append({"rank": rank, "rho": rho, "err": round(float(err), 4), "lid": round(st["lid_mle_20"], 2),
                         "nn1_median": round(st["ip_nn1_median"], 3), "nn10": round(st["ip_nn10"], 3)})
            if best is None or err < best[0]:
                best = (err, rank, rho)
    return best[1], best[2], grid


def exact_truth(base, q, k, threads):
    """Exact inner-product top k of every query (rows; ties to the lower row), in blocks."""
    import numpy as np
    nq = len(q)
    best_s = np.full((nq, k), -np.inf, dtype=np.float32)
    best_i = np.full((nq, k), -1, dtype=np.int64)
    qb = 2048
    for s, blk in npy_chunks(base, 32_768):
        for a in range(0, nq, qb):
            sc = q[a:a + qb] @ blk.T
            kk = min(k, sc.shape[1])
            part = np.argpartition(-sc, kk - 1, axis=1)[:, :kk]
            cs = np.concatenate([best_s[a:a + qb], np.take_along_axis(sc, part, 1)], axis=1)
            ci = np.concatenate([best_i[a:a + qb], part + s], axis=1)
            o = np.lexsort((ci, -cs), axis=1)[:, :k]
            best_s[a:a + qb] = np.take_along_axis(cs, o, 1)
            best_i[a:a + qb] = np.take_along_axis(ci, o, 1)
    return best_i, best_s


def int_keys(d):
    """JSON object keys that were ints (the exact results' k) back to ints."""
    return {int(k) if isinstance(k, str) and k.isdigit() else k: v for k, v in d.items()}


def prepare_data(a):
    """Base, queries and truth for (seed, n, dim, seed): generated once, then read from the cache."""
    import numpy as np
    if a.seed_vectors:
        seed_path, tag = a.seed_vectors, "sv" + file_tag(a.seed_vectors)
    else:
        seed_path, tag = default_seed(a.work, [a.bin, os.path.join(ROOT, "target/debug")], a.threads), "minilm-pool"
    folder = os.path.join(a.work, "data", f"{tag}-n{a.n}-d{a.dim}-s{a.seed}-{GEN_VERSION}")
    os.makedirs(folder, exist_ok=True)
    paths = {"base": os.path.join(folder, "base.npy"), "queries": os.path.join(folder, f"queries-{a.queries}.npy"),
             "truth": os.path.join(folder, f"truth-{a.queries}.npy"),
             "truth_scores": os.path.join(folder, f"truth-{a.queries}-scores.npy"), "folder": folder,
             "seed": seed_path}
    model_path, info_path = os.path.join(folder, "model.npz"), os.path.join(folder, "generator.json")
    if os.path.exists(model_path):
        z = np.load(model_path)
        model = {key: z[key] for key in z.files}
        info = json.load(open(info_path))
    else:
        log(f"fitting the generator on {seed_path} ...")
        seed_x = np.load(seed_path).astype(np.float32)
        model = fit_model(seed_x, a.dim, a.seed, a.seed_clusters)
        if a.near_dups is not None:
            model["dup_fraction"] = np.float64(a.near_dups)
        check_seed = shape_stats(seed_x, np.random.default_rng([a.seed, 9]))
        log(f"calibrating the within-topic rank and share on the seed ({len(RANKS) * len(RHOS)} samples of "
            f"{len(seed_x):,} rows) ...")
        model["rank"], model["rho"], grid = calibrate(model, seed_x, a.seed, check_seed)
        sample = Mixture(model, len(seed_x), a.seed).block(a.seed, 3, 0, len(seed_x))
        info = {"rank": int(model["rank"]), "rho": float(model["rho"]),
                "near_dup_fraction_made": float(model["dup_fraction"]), "calibration": grid,
                "seed": seed_path, "seed_shape": list(seed_x.shape), "n": a.n, "dim": a.dim, "rng_seed": a.seed,
                "version": GEN_VERSION, "how": str(model["how"]), "seed_topics": int(len(model["topic_sizes"])),
                "topics": Mixture(model, a.n, a.seed).k,
                "between_topic_variance_share": float((model["seed_alpha"] * model["seed_lambda"]).sum()
                                                      / model["seed_lambda"].sum()),
                "check_seed": check_seed, "check_generated": shape_stats(sample, np.random.default_rng([a.seed, 9]))}
        np.savez(model_path + ".part.npz", **model)
        os.replace(model_path + ".part.npz", model_path)
        json.dump(info, open(info_path, "w"), indent=1)
    mix = None
    if a.stream_base and not os.path.exists(paths["base"]):
        # --full: the base is never written here; it streams from the generator into the engine's import
        # (`--vectors` a named pipe), whose vectors.npy then serves as the base for the truth. Disk: one
        # copy of the matrix (27.2 GB) instead of two.
        mix = Mixture(model, a.n, a.seed)
        paths["stream"] = mix
        if not os.path.exists(paths["queries"]):
            mix.write(paths["queries"], a.queries, a.seed, 2, dups=False)
        return paths, info
    if not os.path.exists(paths["base"]):
        mix = Mixture(model, a.n, a.seed)
        log(f"generating {a.n:,} x {a.dim} base vectors ({mix.k:,} topics) into {paths['base']} ...")
        t = time.perf_counter()
        mix.write(paths["base"], a.n, a.seed, 1)
        log(f"  {time.perf_counter() - t:.0f} s")
    if not os.path.exists(paths["queries"]):
        mix = mix or Mixture(model, a.n, a.seed)
        mix.write(paths["queries"], a.queries, a.seed, 2, dups=False)
    make_truth(a, paths)
    return paths, info


def make_truth(a, paths):
    """The exact top TRUTH_K of the queries over paths["base"], computed once and cached."""
    import numpy as np
    if os.path.exists(paths["truth"]):
        return
    log(f"exact top {TRUTH_K} of {a.queries:,} queries (numpy, blocks, from {paths['base']}) ...")
    t = time.perf_counter()
    ids, scores = exact_truth(paths["base"], np.load(paths["queries"]), TRUTH_K, a.threads)
    np.save(paths["truth_scores"], scores)
    np.save(paths["truth"] + ".part.npy", ids)
    os.replace(paths["truth"] + ".part.npy", paths["truth"])
    log(f"  {time.perf_counter() - t:.0f} s")


# ----------------------------------------------------------------------------------------------------
# Children


def child_env(threads):
    env = {k: v for k, v in os.environ.items() if not BLAS_TUNING.match(k)}
    env.update(OMP_NUM_THREADS=str(threads), OPENBLAS_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads),
               RAYON_NUM_THREADS=str(threads))
    return env


# The measured command runs as the child of this small launcher, not of the benchmark itself: Linux keeps
# a process's ru_maxrss across exec, starting it at the RSS of whatever forked it, so a child forked
# straight from this (possibly large) Python process would report at least this process's RSS.
LAUNCHER = r'''
import os, subprocess, sys
p = subprocess.Popen(sys.argv[2:])
_, status, usage = os.wait4(p.pid, 0)
with open(sys.argv[1], "w") as f:
    f.write("%d %d" % (usage.ru_maxrss, os.waitstatus_to_exitcode(status)))
'''


class StepFailed(RuntimeError):
    """A measured command exited non-zero; its wall time, stderr and peak memory (None where unknown)
    come with it."""

    def __init__(self, msg, wall, err, rss=None, anon=None):
        super().__init__(msg)
        self.wall, self.err, self.rss, self.anon = wall, err, rss, anon


def measure(cmd, env):
    """Runs cmd; returns stdout, stderr, wall seconds, peak RSS MiB (os.wait4's ru_maxrss), and the peak of
    RssAnon sampled from /proc every 50 ms, MiB. A non-zero exit raises StepFailed."""
    import tempfile
    fd, rusage = tempfile.mkstemp(prefix="bench_scale_rusage_")
    os.close(fd)
    t = time.perf_counter()
    p = subprocess.Popen([sys.executable, "-c", LAUNCHER, rusage, *cmd], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, env=env)
    peak_anon, done = [0], threading.Event()
    bufs = {}

    def drain(name, stream):
        bufs[name] = stream.read().decode(errors="replace")

    def sample():
        pid = None
        while not done.is_set():
            try:
                if pid is None:
                    with open(f"/proc/{p.pid}/task/{p.pid}/children") as f:
                        kids = f.read().split()
                    pid = int(kids[0]) if kids else None
                if pid is not None:
                    with open(f"/proc/{pid}/status") as f:
                        for line in f:
                            if line.startswith("RssAnon:"):
                                peak_anon[0] = max(peak_anon[0], int(line.split()[1]))
            except OSError:
                if pid is not None:
                    return
            done.wait(0.05)
    threads = [threading.Thread(target=drain, args=("out", p.stdout)), threading.Thread(target=drain, args=("err", p.stderr)),
               threading.Thread(target=sample)]
    for th in threads:
        th.start()
    p.wait()
    wall = time.perf_counter() - t
    done.set()
    for th in threads:
        th.join()
    with open(rusage) as f:
        got = f.read().split()
    os.remove(rusage)
    if p.returncode != 0 or len(got) != 2 or got[1] != "0":
        raise StepFailed(f"{' '.join(cmd[:3])} ... exited {got[1] if len(got) == 2 else p.returncode}:\n"
                         f"{bufs['err'][-3000:]}", wall, bufs["err"],
                         int(got[0]) / 1024 if len(got) == 2 else None, peak_anon[0] / 1024 or None)
    return bufs["out"], bufs["err"], wall, int(got[0]) / 1024, peak_anon[0] / 1024


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


def folder_bytes(path):
    seen, total = set(), 0
    for dirpath, _, files in os.walk(path):
        for name in files:
            st = os.stat(os.path.join(dirpath, name))
            if st.st_ino not in seen:
                seen.add(st.st_ino)
                total += st.st_size
    return total


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

    def _batch(self, paths, folder, mode, k, repeat=None):
        a = self.a
        run = os.path.join(folder, "engine.run")
        best = None
        for _ in range(a.repeat if repeat is None else repeat):
            _, err, wall, rss, anon = measure([self.search_bin, "batch", "--index", self.index, "--query-vectors",
                                               paths["queries"], "--k", str(k), *mode, "--threads", str(a.threads),
                                               "--out", run, "--run-format", "msmarco"], self.env)
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
            return [dict(ef=ef, **self._batch(paths, folder, ["--ef", str(ef)], 10)) for ef in efs]
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
        return out

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


def drop_cached(path):
    """Asks the kernel to drop the file's cached pages (clean pages go; a hint)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def disk_read_rate(path, gib=4):
    """The disk's sequential read rate in GB/s: `dd` with direct I/O (no page cache) over the first
    `gib` GiB of the file, in 16 MiB reads; None where dd or direct I/O is not available."""
    count = min(gib * 64, max(1, os.path.getsize(path) // (16 << 20)))
    try:
        p = subprocess.run(["dd", f"if={path}", "of=/dev/null", "bs=16M", f"count={count}", "iflag=direct"],
                           capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.TimeoutExpired):
        return None
    m = re.search(r"(\d+) bytes .*?copied, ([\d.]+) s", p.stderr)
    return int(m.group(1)) / float(m.group(2)) / 1e9 if p.returncode == 0 and m else None


def run_peer(a, env, name, paths, folder, efs):
    py = a.python
    idx = os.path.join(folder, f"{name}.index")
    build, search = (HNSWLIB_BUILD, HNSWLIB_SEARCH) if name == "hnswlib" else (FAISS_BUILD, FAISS_SEARCH)
    out, _, wall, rss, anon = measure([py, "-c", build, paths["base"], idx, str(a.m), str(a.ef_construction),
                                       str(a.threads), str(CHUNK)], env)
    b = {k: v for row in parse_lines(out, "build_seconds") + parse_lines(out, "index_bytes") for k, v in row.items()}
    r = {"build": {"build_seconds": b["build_seconds"], "step_seconds": wall, "rss_mib": rss, "anon_mib": anon,
                   "index_bytes": int(b["index_bytes"]), "disk_bytes": int(b["index_bytes"])}}
    out, _, _, srss, sanon = measure([py, "-c", search, idx, paths["queries"], paths["truth"], str(a.threads),
                                      str(a.repeat), ",".join(map(str, efs))], env)
    r["hnsw"] = [{"ef": int(row["ef"]), "recall": row["recall"], "qps": row["qps"], "rss_mib": srss, "anon_mib": sanon}
                 for row in parse_lines(out, "ef")]
    if not a.keep_indexes:
        os.remove(idx)
    if name == "faiss" and not a.no_exact:
        r["exact"] = run_faiss_flat(a, env, paths)
    return r


def run_faiss_flat(a, env, paths):
    """faiss IndexFlatIP's exact search at k = 10 and 1000 (also the tool `faiss-flat` alone: the exact
    comparison without building faiss's graph)."""
    out, _, _, frss, _ = measure([a.python, "-c", FAISS_FLAT, paths["base"], paths["queries"], paths["truth"],
                                  str(a.threads), str(a.repeat), str(CHUNK)], env)
    return {int(row["k"]): {"recall": row["recall"], "qps": row["qps"], "rss_mib": frss}
            for row in parse_lines(out, "k")}


# ----------------------------------------------------------------------------------------------------
# Summaries


def at_recall(points, target):
    """Queries/s at the recall target: log(qps) interpolated linearly in recall between the settings around
    it. Returns (qps, note); note '>=' when even the smallest ef is above the target (a lower bound)."""
    import math
    pts = sorted(points)
    if not pts or pts[-1][0] < target:
        return None, "not reached"
    if pts[0][0] >= target:
        return max(q for r, q in pts if r >= target), ">="
    for (r1, q1), (r2, q2) in zip(pts, pts[1:]):
        if r1 < target <= r2:
            f = (target - r1) / (r2 - r1) if r2 > r1 else 1.0
            return math.exp(math.log(q1) + f * (math.log(q2) - math.log(q1))), ""
    return None, "not reached"


def combine(rounds, stat):
    """Per tool: the median (or best) over rounds of every figure."""
    def pick(values, higher_better):
        if stat == "best":
            return max(values) if higher_better else min(values)
        return statistics.median(values)
    out = {}
    for tool in rounds[0]:
        rs = [r[tool] for r in rounds]
        t = {}
        if "build" in rs[0]:
            t = combine_graph(rs, pick)
            if "first_pass" in rs[0]:
                t["first_pass"] = rs[0]["first_pass"]
        if "exact" in rs[0]:
            t["exact"] = {k: {"recall": statistics.median([x["exact"][k]["recall"] for x in rs]),
                              "qps": pick([x["exact"][k]["qps"] for x in rs], True),
                              "rss_mib": max(x["exact"][k].get("rss_mib", 0.0) for x in rs),
                              "wall_s": statistics.median([x["exact"][k].get("wall_s", 0.0) for x in rs]),
                              **{f: rs[0]["exact"][k][f] for f in ("matrix_bytes", "read_gb_per_s", "disk_gb_per_s")
                                 if f in rs[0]["exact"][k]}}
                          for k in rs[0]["exact"]}
        out[tool] = t
    return out


def combine_graph(rs, pick):
    """One graph tool's build and HNSW figures over rounds."""
    b = {key: pick([x["build"][key] for x in rs], False)
         for key in rs[0]["build"] if isinstance(rs[0]["build"][key], (int, float))}
    b.update({k: v for k, v in rs[0]["build"].items() if not isinstance(v, (int, float))})
    hnsw = []
    for i, row in enumerate(rs[0]["hnsw"]):
        hnsw.append({"ef": row["ef"], "recall": statistics.median([x["hnsw"][i]["recall"] for x in rs]),
                     "qps": pick([x["hnsw"][i]["qps"] for x in rs], True),
                     "rss_mib": max(x["hnsw"][i]["rss_mib"] for x in rs),
                     "wall_s": statistics.median([x["hnsw"][i].get("wall_s", 0.0) for x in rs]),
                     **{f: rs[0]["hnsw"][i][f] for f in ("cold_qps", "cold_wall_s", "cold_rss_mib")
                        if f in rs[0]["hnsw"][i]}})
    return {"build": b, "hnsw": hnsw}


def report(a, info, res, n, dim, nq, blas_lines, env_removed):
    L = []
    L.append(f"# bench_scale: {n:,} x {dim} vectors, {nq:,} queries, k = 10, {a.threads} threads, "
             f"M {a.m}, efConstruction {a.ef_construction}")
    L.append("")
    L.append(f"Generator: seed {info['seed']} {tuple(info['seed_shape'])}; {info['how']}; {info['topics']:,} topics "
             f"(seed: {info['seed_topics']}, between-topic share of the variance {info['between_topic_variance_share']:.2f}); "
             f"within-topic subspaces of rank {info['rank']} holding {info['rho']:.2f} of the within-topic variance "
             f"(calibrated); near-duplicate copies {info['near_dup_fraction_made']:.3f} of the rows; rng seed {a.seed}.")
    cs, cg = info["check_seed"], info["check_generated"]
    L.append("")
    L.append("| shape check | top-1 eig share | top-10 | top-50 | participation ratio | LID (MLE, 20 NN) | IP 1st NN mean / median "
             "| IP 10th NN | IP random | near-dup share | norm mean / std |")
    L.append("|---|---|---|---|---|---|---|---|---|---|---|")
    for name, c in (("seed", cs), ("generated (seed's size)", cg)):
        L.append(f"| {name} | {c['top1_share']:.3f} | {c['top10_share']:.3f} | {c['top50_share']:.3f} | "
                 f"{c['participation_ratio']:.1f} | {c['lid_mle_20']:.1f} | {c['ip_nn1']:.3f} / {c['ip_nn1_median']:.3f} | "
                 f"{c['ip_nn10']:.3f} | {c['ip_random']:.3f} | {c['near_dup_share']:.3f} | "
                 f"{c['norm_mean']:.3f} / {c['norm_std']:.3f} |")
    L.append("")
    rounds_note = f"{a.rounds} round{'s' if a.rounds > 1 else ''}, {'median' if a.stat == 'median' else 'best'} per tool"
    L.append(f"Build ({rounds_note}; seconds = graph construction only; peak RSS = ru_maxrss of the building process, "
             f"anon = sampled peak RssAnon; B/vec = index file / whole index on disk):")
    L.append("")
    L.append("| tool | build s | inserts/s | peak RSS MiB | anon MiB | index file B/vec | on disk B/vec | step wall s | search peak RSS MiB |")
    L.append("|---|---|---|---|---|---|---|---|---|")
    for tool, r in graph_tools(res).items():
        b = r["build"]
        L.append(f"| {tool} | {b['build_seconds']:.2f} | {n / b['build_seconds']:,.0f} | {b['rss_mib']:,.0f} | "
                 f"{b['anon_mib']:,.0f} | {b['index_bytes'] / n:,.1f} | {b['disk_bytes'] / n:,.1f} | {b['step_seconds']:.2f} | "
                 f"{max(h['rss_mib'] for h in r['hnsw']):,.0f} |")
    if "engine" in res:
        b = res["engine"]["build"]
        L.append("")
        L.append(f"engine import (`simlm-index import --no-hnsw`): {b['import_seconds']:.2f} s, peak RSS "
                 f"{b['import_rss_mib']:,.0f} MiB (anon {b['import_anon_mib']:,.0f}); graph step wall "
                 f"{b['step_seconds']:.2f} s; generation files: "
                 + ", ".join(f"{k} {v:,}" for k, v in b.get("files", {}).items())
                 + f"; whole index folder {b['disk_bytes']:,} bytes")
        e = res["engine"]
        L.append("engine search processes (wall s incl. opening the index / peak RSS MiB): "
                 + ", ".join(f"ef {h['ef']} {h.get('wall_s', 0):.1f}/{h['rss_mib']:,.0f}" for h in e["hnsw"])
                 + "".join(f", exact k={k} {x.get('wall_s', 0):.1f}/{x.get('rss_mib', 0):,.0f}"
                           for k, x in e.get("exact", {}).items()))
        fp = e.get("first_pass")
        if fp:
            L.append(f"engine HNSW, the untimed first search process after the build (ef {fp['ef']}; the page cache as "
                     f"the build left it): R@10 {fp['recall']:.4f}, {fp['qps']:,.1f} queries/s, process wall "
                     f"{fp['wall_s']:.1f} s; the table below starts after it")
        cold = [h for h in e["hnsw"] if "cold_qps" in h]
        if cold:
            L.append("engine HNSW, first pass from a cold cache (graph and matrix dropped; queries/s, process wall s "
                     "incl. opening the index): " + ", ".join(f"ef {h['ef']} {h['cold_qps']:,.1f} q/s, "
                                                            f"{h['cold_wall_s']:.1f} s" for h in cold)
                     + "; the table below shows the warm passes")
        for k, x in e.get("exact", {}).items():
            if x.get("read_gb_per_s") is not None:
                disk = x.get("disk_gb_per_s")
                L.append(f"exact k={k}, the matrix ({x['matrix_bytes']:,} bytes) streamed from a cold cache: "
                         f"{x['read_gb_per_s']:.2f} GB/s over the whole pass, against the disk's sequential "
                         f"read rate of " + (f"{disk:.2f} GB/s (dd, direct I/O)" if disk else "(not measured)"))
    L.append("")
    tools = list(graph_tools(res))
    L.append("HNSW search, recall@10 / queries/s per ef:")
    L.append("")
    L.append("| ef | " + " | ".join(f"{t} R@10 | {t} q/s" for t in tools) + " |")
    L.append("|---|" + "---|---|" * len(tools))
    for i, row in enumerate(res[tools[0]]["hnsw"]):
        cells = []
        for t in tools:
            h = res[t]["hnsw"][i]
            cells += [f"{h['recall']:.4f}", f"{h['qps']:,.0f}"]
        L.append(f"| {row['ef']} | " + " | ".join(cells) + " |")
    L.append("")
    L.append("| queries/s at recall@10 | " + " | ".join(f"{r:.2f}" for r in (0.90, 0.95, 0.99)) + " |")
    L.append("|---|---|---|---|")
    for t in tools:
        cells = []
        for target in (0.90, 0.95, 0.99):
            q, note = at_recall([(h["recall"], h["qps"]) for h in res[t]["hnsw"]], target)
            cells.append("-" if q is None else f"{note}{q:,.0f}")
        L.append(f"| {t} | " + " | ".join(cells) + " |")
    ex = {t: res[t]["exact"] for t in res if "exact" in res[t]}
    if ex:
        L.append("")
        L.append("Exact search, queries/s (R@10 of the top 10 against numpy's truth):")
        L.append("")
        L.append("| tool | k = 10 | k = 1000 |")
        L.append("|---|---|---|")
        names = {"engine": "engine (simlm-search --exact)", "faiss": "faiss IndexFlatIP",
                 "faiss-flat": "faiss IndexFlatIP"}
        for t, e in ex.items():
            L.append(f"| {names.get(t, t)} | " + " | ".join(f"{e[k]['qps']:,.1f} (R@10 {e[k]['recall']:.4f})"
                                                           for k in (10, 1000)) + " |")
        peer = next((t for t in ("faiss", "faiss-flat") if t in ex), None)
        if "engine" in ex and peer:
            L.append("")
            L.append("engine / faiss: " + ", ".join(f"k={k} {ex['engine'][k]['qps'] / ex[peer][k]['qps']:.2f}x"
                                                      for k in (10, 1000)))
    if "engine" in res and "hnswlib" in res:
        L.append("")
        L.append("Targets (engine against hnswlib):")
        L.append("")
        e, h = res["engine"], res["hnswlib"]
        ins = (n / e["build"]["build_seconds"]) / (n / h["build"]["build_seconds"])
        L.append(f"- build inserts/s >= 1.25x hnswlib's: {ins:.2f}x -> {'MET' if ins >= 1.25 else 'NOT MET'}")
        rss = e["build"]["rss_mib"] / h["build"]["rss_mib"]
        anon = e["build"]["anon_mib"] / max(h["build"]["anon_mib"], 1e-9)
        L.append(f"- peak RSS <= 0.5x hnswlib's: {rss:.2f}x -> {'MET' if rss <= 0.5 else 'NOT MET'} "
                 f"(anonymous memory alone: {anon:.2f}x)")
        diffs = [(x["ef"], x["recall"] - y["recall"]) for x, y in zip(e["hnsw"], h["hnsw"])]
        worst = min(diffs, key=lambda d: d[1])
        L.append(f"- recall@10 at equal ef >= hnswlib's - 0.005: worst difference {worst[1]:+.4f} at ef {worst[0]} -> "
                 f"{'MET' if worst[1] >= -0.005 else 'NOT MET'} (" + ", ".join(f"ef{ef} {d:+.4f}" for ef, d in diffs) + ")")
        qe, ne = at_recall([(x["recall"], x["qps"]) for x in e["hnsw"]], 0.95)
        qh, nh = at_recall([(x["recall"], x["qps"]) for x in h["hnsw"]], 0.95)
        if qe is None or qh is None:
            L.append(f"- queries/s at recall 0.95 >= 1.3x hnswlib's: not measurable (engine {ne or qe}, hnswlib {nh or qh}); "
                     "widen --efs")
        else:
            ratio = qe / qh
            caveat = " (a bound: the smallest ef is already above 0.95 for " + \
                ", ".join(t for t, nn in (("engine", ne), ("hnswlib", nh)) if nn == ">=") + "; add smaller ef)" if ">=" in (ne, nh) else ""
            L.append(f"- queries/s at recall 0.95 >= 1.3x hnswlib's: engine {qe:,.0f}, hnswlib {qh:,.0f}, {ratio:.2f}x -> "
                     f"{'MET' if ratio >= 1.3 else 'NOT MET'}{caveat}")
    L.append("")
    L.append("Environment of the children: removed " + (", ".join(env_removed) or "nothing") +
             f"; OMP/OPENBLAS/MKL/RAYON_NUM_THREADS={a.threads}.")
    L.extend(blas_lines)
    return "\n".join(L)


def graph_tools(res):
    """The tools of `res` that built a graph (`faiss-flat` runs exact search only)."""
    return {t: r for t, r in res.items() if "hnsw" in r}


def plot(res, path, title):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for tool, r in graph_tools(res).items():
        pts = r["hnsw"]
        ax.plot([p["recall"] for p in pts], [p["qps"] for p in pts], marker="o", label=tool)
        for p in pts:
            ax.annotate(str(p["ef"]), (p["recall"], p["qps"]), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_yscale("log")
    ax.set_xlabel("recall@10")
    ax.set_ylabel("queries/s")
    ax.axvline(0.95, color="grey", lw=0.5, ls=":")
    ax.grid(True, which="both", lw=0.3)
    ax.legend()
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


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
    ap.add_argument("--m", type=int, default=32)
    ap.add_argument("--ef-construction", type=int, default=200)
    ap.add_argument("--efs", default=None, help="search ef grid, comma-separated (default 10,16,32,64,128,256,512)")
    ap.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 3 up to n 100,000, else 1)")
    ap.add_argument("--stat", choices=["median", "best"], default="median", help="how rounds combine")
    ap.add_argument("--repeat", type=int, default=1, help="passes per search setting, the fastest kept")
    ap.add_argument("--tools", default="engine,hnswlib,faiss")
    ap.add_argument("--no-exact", action="store_true", help="skip the exact-search throughput")
    ap.add_argument("--keep-indexes", action="store_true")
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
            if a.resume and os.path.exists(saved):
                res[tool] = json.load(open(saved), object_hook=int_keys)
                log(f"round {r + 1}/{a.rounds}: {tool}: from {saved} (--resume)")
                continue
            log(f"round {r + 1}/{a.rounds}: {tool} ...")
            t = time.perf_counter()
            if tool == "engine":
                res[tool] = {"build": engine.build(paths, folder)}
                res[tool]["hnsw"] = engine.search(paths, folder, efs)
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
            json.dump(res[tool], open(saved + ".part", "w"), indent=1, default=str)
            os.replace(saved + ".part", saved)
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
