"""The synthetic data of the scale benchmark (scripts/bench/bench_scale.py): base vectors, held-out
queries and their exact top 10, generated once and cached.

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
"""
import hashlib
import json
import os
import subprocess
import sys
import time

from .common import ROOT, log, npy_chunks, npy_write_header

SHARED = os.environ.get("SIMLM_SHARED", os.path.join(os.path.dirname(ROOT), "shared"))
POOL = os.path.join(SHARED, "data/msmarco/pool/collection.tsv")
MINILM = os.path.join(ROOT, "models/all-MiniLM-L6-v2")
GEN_VERSION = "g3"
BLOCK = 65_536          # rows generated at a time
TRUTH_K = 10


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
