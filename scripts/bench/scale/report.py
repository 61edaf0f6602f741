"""The scale benchmark's summaries (scripts/bench/bench_scale.py): the rounds combined per tool, the markdown
report (shape check, build, search, exact, targets) and the recall / queries/s plot."""
import os
import statistics

from .common import PROBE_QUERIES, cpu_level, engine_kernels


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
                              **{f: rs[0]["exact"][k][f] for f in ("matrix_bytes", "read_gb_per_s", "disk_gb_per_s",
                                                                   "coretype", "probe_qps")
                                 if f in rs[0]["exact"][k]}}
                          for k in rs[0]["exact"]}
        out[tool] = t
    return out


def combine_graph(rs, pick):
    """One graph tool's build and HNSW figures over rounds."""
    b = {key: pick([x["build"][key] for x in rs], False)
         for key in rs[0]["build"] if isinstance(rs[0]["build"][key], (int, float))}
    b.update({k: v for k, v in rs[0]["build"].items() if not isinstance(v, (int, float))})
    def rows(runs):
        return [{"ef": row["ef"], "recall": statistics.median([x[i]["recall"] for x in runs]),
                 "qps": pick([x[i]["qps"] for x in runs], True),
                 "rss_mib": max(x[i]["rss_mib"] for x in runs),
                 "wall_s": statistics.median([x[i].get("wall_s", 0.0) for x in runs]),
                 **{f: runs[0][i][f] for f in ("cold_qps", "cold_wall_s", "cold_rss_mib") if f in runs[0][i]}}
                for i, row in enumerate(runs[0])]
    out = {"build": b, "hnsw": rows([x["hnsw"] for x in rs])}
    if "hnsw_by_threads" in rs[0]:
        out["hnsw_by_threads"] = {t: rows([x["hnsw_by_threads"][t] for x in rs]) for t in rs[0]["hnsw_by_threads"]}
    return out


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
    L.extend(ef_table({t: res[t]["hnsw"] for t in tools}))
    L.append("")
    L.append("| queries/s at recall@10 | " + " | ".join(f"{r:.2f}" for r in (0.90, 0.95, 0.99)) + " |")
    L.append("|---|---|---|---|")
    for t in tools:
        cells = []
        for target in (0.90, 0.95, 0.99):
            q, note = at_recall([(h["recall"], h["qps"]) for h in res[t]["hnsw"]], target)
            cells.append("-" if q is None else f"{note}{q:,.0f}")
        L.append(f"| {t} | " + " | ".join(cells) + " |")
    for threads in a.search_threads:
        if threads == a.threads or not all(threads in res[t].get("hnsw_by_threads", {}) for t in tools):
            continue
        L.append("")
        L.append(f"HNSW search with {threads} thread{'s' if threads > 1 else ''} (the same graphs), "
                 "recall@10 / queries/s per ef:")
        L.append("")
        L.extend(ef_table({t: res[t]["hnsw_by_threads"][threads] for t in tools}))
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
        if peer and "coretype" in ex[peer][10]:
            probe = ex[peer][10]["probe_qps"]
            L.append("")
            ct = ex[peer][10]["coretype"]
            L.append(f"faiss IndexFlatIP ran with OpenBLAS's {ct} kernel"
                     + ("" if ct == "auto" else f" (OPENBLAS_CORETYPE={ct})")
                     + f", the fastest in a probe (first {PROBE_QUERIES} queries, k = 10, queries/s: "
                     + ", ".join(f"{c} {q:,.1f}" for c, q in probe.items())
                     + "; auto is OpenBLAS's own pick, named on the BLAS line below)")
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
        runs = {a.threads: (e["hnsw"], h["hnsw"])}
        for threads in a.search_threads:
            if threads in e.get("hnsw_by_threads", {}) and threads in h.get("hnsw_by_threads", {}):
                runs[threads] = (e["hnsw_by_threads"][threads], h["hnsw_by_threads"][threads])
        for threads, (eh, hh) in sorted(runs.items()):
            at = f"{threads} thread{'s' if threads > 1 else ''}"
            qe, ne = at_recall([(x["recall"], x["qps"]) for x in eh], 0.95)
            qh, nh = at_recall([(x["recall"], x["qps"]) for x in hh], 0.95)
            if qe is None or qh is None:
                L.append(f"- queries/s at recall 0.95 >= 2x hnswlib's ({at}): not measurable (engine {ne or qe}, "
                         f"hnswlib {nh or qh}); widen --efs")
                continue
            ratio = qe / qh
            caveat = " (a bound: the smallest ef is already above 0.95 for " + \
                ", ".join(t for t, nn in (("engine", ne), ("hnswlib", nh)) if nn == ">=") + "; add smaller ef)" if ">=" in (ne, nh) else ""
            L.append(f"- queries/s at recall 0.95 >= 2x hnswlib's ({at}): engine {qe:,.0f}, hnswlib {qh:,.0f}, "
                     f"{ratio:.2f}x -> {'MET' if ratio >= 2 else 'NOT MET'}{caveat}")
    L.append("")
    L.append("Environment of the children: removed " + (", ".join(env_removed) or "nothing") +
             f"; OMP/OPENBLAS/MKL/RAYON_NUM_THREADS={a.threads}.")
    L.append(f"CPU level (CPUID): {cpu_level()}.")
    L.append("Engine kernels (`simlm-search --version`): " + engine_kernels(os.path.join(a.bin, "simlm-search")))
    L.extend(blas_lines)
    return "\n".join(L)


def ef_table(rows):
    """The markdown lines of a recall@10 / queries/s table per ef, a pair of columns per tool of `rows`
    ({tool: [{ef, recall, qps}, ...]}, the same efs in the same order)."""
    tools = list(rows)
    lines = ["| ef | " + " | ".join(f"{t} R@10 | {t} q/s" for t in tools) + " |",
             "|---|" + "---|---|" * len(tools)]
    for i, row in enumerate(rows[tools[0]]):
        cells = []
        for t in tools:
            h = rows[t][i]
            cells += [f"{h['recall']:.4f}", f"{h['qps']:,.0f}"]
        lines.append(f"| {row['ef']} | " + " | ".join(cells) + " |")
    return lines


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
