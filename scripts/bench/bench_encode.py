#!/usr/bin/env python3
"""Benchmark: the engine's encoder against PyTorch and ONNX Runtime, each driven at its best, in one run.

Passages: the first N of the MS MARCO pool in SimLM's passage format (title `-`, at most 144 tokens),
[CLS] pooling, unit vectors. Peers, each with the same thread count:
  * the engine: a whole `simlm-index embed` process (start-up, tokenisation, encoding, writing);
  * PyTorch (transformers), texts sorted by token length, the best of several batch sizes;
  * sentence-transformers' own `encode` (its character-length order, the folder's pooling);
  * ONNX Runtime: the model exported with torch.onnx.export twice (transformers' eager attention, which
    the optimizer fuses into its Attention operator, and SDPA), each fused by onnxruntime.transformers'
    BERT optimizer, all graph optimisations on, texts sorted by token length; the faster export and
    batch size are kept.
The peers' timings include their tokenisation. Batch sizes (and exports) are chosen on the first
--probe passages (512), then every encoder runs in interleaved rounds and keeps its fastest.

One query: the first Q dev.small queries (SimLM's query format, at most 32 tokens) encoded one at a
time, p50 and p99 latency (engine: `encode_latency`, the REPL's and the service's path).

With --int8, two more encoders run in the same rounds: the engine's `--precision int8` and ONNX
Runtime's dynamic int8 (`quantize_dynamic` of the optimised model: int8 weights per channel with
reduce_range on CPUs without VNNI, its advice for them; full range with VNNI; u8 activations), and their vectors' cosine to their
own f32 vectors is printed.

usage: scripts/bench/bench_encode.py [--model models/all-MiniLM-L6-v2 | --base] [--n 2000] [--threads 2] [--int8]
                               [--rounds 2] [--probe 512] [--q 1000]
  --base: a BERT-base-shaped checkpoint (12 layers, 768 wide) with seeded random weights, made once
          under target/bench-models/.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

from scale.common import cpu_features, cpu_level, engine_kernels

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MINILM = os.path.join(ROOT, "models/all-MiniLM-L6-v2")
BATCHES = [8, 16, 32, 64, 128]


def load_tsv(path, n):
    out = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            out.append(line.rstrip("\n").split("\t", 1)[1])
            if len(out) == n:
                break
    return out


def make_base(dest):
    """A BERT-base-shaped checkpoint with seeded random weights and MiniLM's (bert-base-uncased) vocabulary."""
    if os.path.exists(os.path.join(dest, "model.safetensors")):
        return dest
    import torch
    from transformers import BertConfig, BertModel
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=30522, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                     intermediate_size=3072)
    tmp = dest + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    BertModel(cfg).eval().save_pretrained(tmp, safe_serialization=True)
    for f in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        shutil.copy(os.path.join(MINILM, f), tmp)
    os.replace(tmp, dest)
    return dest


def cpu_has_vnni():
    """From CPUID, as ONNX Runtime sees it (so under scripts/bench/avx2-only: no)."""
    f = cpu_features()
    return "AVX512VNNI" in f or "AVXVNNI" in f


def sorted_batches(lengths, batch):
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    return [order[s:s + batch] for s in range(0, len(order), batch)]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=MINILM)
    ap.add_argument("--base", action="store_true", help="a BERT-base-shaped random checkpoint instead of --model")
    ap.add_argument("--collection", default=os.path.join(ROOT, "../shared/data/msmarco/pool/collection.tsv"))
    ap.add_argument("--queries", default=os.path.join(ROOT, "../shared/data/msmarco/queries.dev.small.tsv"))
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--q", type=int, default=1000, help="queries for the one-query latency")
    ap.add_argument("--probe", type=int, default=512, help="passages on which each peer's batch size is chosen")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--bin", default=os.path.join(ROOT, "target/release"))
    ap.add_argument("--rounds", type=int, default=2, help="interleaved rounds; each encoder keeps its best")
    ap.add_argument("--engine-args", default="", help="extra simlm-index embed options")
    ap.add_argument("--int8", action="store_true", help="also the engine's --precision int8 and ONNX Runtime's dynamic int8")
    a = ap.parse_args()
    # Both binaries are checked before the minutes of encoding, not after.
    for exe in ("simlm-index", "examples/encode_latency"):
        if not os.access(os.path.join(a.bin, exe), os.X_OK):
            sys.exit(f"{os.path.join(a.bin, exe)} is missing: build it with `cargo build --release --bin "
                     f"simlm-index --example encode_latency` (or give --bin the folder that holds both)")
    if a.probe < 1 or a.n < 1 or a.q < 1 or a.rounds < 1:
        ap.error("--probe, --n, --q and --rounds must be at least 1")

    os.environ["OMP_NUM_THREADS"] = str(a.threads)
    import numpy as np
    import onnxruntime as ort
    import torch
    from transformers import AutoModel, AutoTokenizer

    torch.set_num_threads(a.threads)
    torch.set_num_interop_threads(1)
    model_dir = make_base(os.path.join(ROOT, "target/bench-models/bert-base-random")) if a.base else a.model
    texts = load_tsv(a.collection, a.n)
    queries = load_tsv(a.queries, a.q + 10)
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModel.from_pretrained(model_dir, attn_implementation="sdpa").eval()
    cfg = model.config
    print(f"model {model_dir}: {cfg.num_hidden_layers} layers, {cfg.hidden_size} wide; {a.threads} threads")
    print(f"PyTorch {torch.__version__}: {torch.get_num_threads()} threads, MKL {torch.backends.mkl.is_available()}, "
          f"oneDNN {torch.backends.mkldnn.is_available()}, CPU capability {torch.backends.cpu.get_cpu_capability()}")
    print(f"CPU level (CPUID): {cpu_level()}")
    print(f"engine kernels: {engine_kernels(os.path.join(a.bin, 'simlm-index'))}")

    def tokenize_passages(idx, tensors):
        return tok(["-"] * len(idx), [texts[i] for i in idx], max_length=144, truncation="longest_first",
                   padding=True, return_tensors=tensors)

    lengths = [len(x) for x in tok(["-"] * len(texts), texts, max_length=144, truncation="longest_first")["input_ids"]]

    def torch_run(idx_all, batch):
        vecs = np.zeros((len(texts), cfg.hidden_size), dtype=np.float32)
        with torch.inference_mode():
            for idx in sorted_batches([lengths[i] for i in idx_all], batch):
                idx = [idx_all[i] for i in idx]
                out = model(**tokenize_passages(idx, "pt")).last_hidden_state[:, 0]
                vecs[idx] = torch.nn.functional.normalize(out, dim=-1).numpy()
        return vecs

    # ONNX Runtime: export, then the BERT fusions (attention, LayerNorm, GELU) of its transformers optimizer.
    # Two exports: transformers' eager attention (the pattern the optimizer fuses into its Attention
    # operator) and SDPA (left unfused); the probe below keeps whichever runs faster, per precision.
    work = tempfile.mkdtemp(prefix="bench_encode.")
    enc = tokenize_passages(list(range(4)), "pt")
    class Wrapped(torch.nn.Module):
        """The three inputs by position, the last hidden state out (what the export traces)."""

        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, input_ids, attention_mask, token_type_ids):
            return self.m(input_ids=input_ids, attention_mask=attention_mask,
                          token_type_ids=token_type_ids).last_hidden_state

    so = ort.SessionOptions()
    so.intra_op_num_threads = a.threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    reduce = not cpu_has_vnni()
    candidates = {"ort": {}, "ort-int8": {}}  # family -> export -> session
    ort_notes = {}
    for impl in ("eager", "sdpa"):
        onnx_path = os.path.join(work, f"model.{impl}.onnx")
        m = AutoModel.from_pretrained(model_dir, attn_implementation=impl).eval()
        with torch.no_grad():
            torch.onnx.export(Wrapped(m).eval(), (enc["input_ids"], enc["attention_mask"], enc["token_type_ids"]),
                              onnx_path, input_names=["input_ids", "attention_mask", "token_type_ids"],
                              output_names=["last_hidden_state"], opset_version=17, dynamo=False,
                              dynamic_axes={n: {0: "b", 1: "s"} for n in ["input_ids", "attention_mask",
                                                                          "token_type_ids", "last_hidden_state"]})
        note = "graph optimisations ORT_ENABLE_ALL"
        try:
            from onnxruntime.transformers import optimizer
            opt = optimizer.optimize_model(onnx_path, model_type="bert", num_heads=cfg.num_attention_heads,
                                           hidden_size=cfg.hidden_size)
            opt.save_model_to_file(os.path.join(work, f"model.{impl}.opt.onnx"))
            onnx_path = os.path.join(work, f"model.{impl}.opt.onnx")
            fused = {k: v for k, v in opt.get_fused_operator_statistics().items() if v}
            note += f" after the BERT optimizer (fused: {fused})"
        except Exception as e:  # the optimizer is optional: the plain export still runs, and the note says so
            note += f" (BERT optimizer failed: {e})"
        ort_notes[impl] = note
        candidates["ort"][impl] = ort.InferenceSession(onnx_path, so, providers=["CPUExecutionProvider"])
        print(f"ONNX Runtime {ort.__version__}, {impl} export: intra-op threads {a.threads}; {note}")
        if a.int8:
            from onnxruntime.quantization import QuantType, quantize_dynamic
            import onnx
            int8_path = os.path.join(work, f"model.{impl}.int8.onnx")
            # The fused operators' outputs have no inferred type; the quantizer is told they are float.
            # reduce_range (7-bit weights) is ONNX Runtime's advice for CPUs without VNNI, where u8 x i8
            # products go through a saturating 16-bit add; with VNNI the full 8-bit range is its best setting.
            quantize_dynamic(onnx_path, int8_path, weight_type=QuantType.QInt8, per_channel=True,
                             reduce_range=reduce, extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
            candidates["ort-int8"][impl] = ort.InferenceSession(int8_path, so, providers=["CPUExecutionProvider"])
    if a.int8:
        print(f"ONNX Runtime int8: quantize_dynamic(weight_type=QInt8, per_channel=True, reduce_range={reduce}) "
              f"of each optimised model (CPU {'without' if reduce else 'with'} VNNI)")

    def ort_runner(session):
        def run(idx_all, batch):
            vecs = np.zeros((len(texts), cfg.hidden_size), dtype=np.float32)
            for idx in sorted_batches([lengths[i] for i in idx_all], batch):
                idx = [idx_all[i] for i in idx]
                e = tokenize_passages(idx, "np")
                out = session.run(None, {k: e[k].astype(np.int64)
                                         for k in ("input_ids", "attention_mask", "token_type_ids")})[0][:, 0]
                vecs[idx] = out / np.linalg.norm(out, axis=1, keepdims=True)
            return vecs
        return run

    st = None
    try:
        from sentence_transformers import SentenceTransformer
        st = SentenceTransformer(model_dir, device="cpu")
        st.max_seq_length = 144
    except Exception as e:
        print(f"sentence-transformers not run: {e}")

    def timed(f):
        t = time.perf_counter()
        v = f()
        return time.perf_counter() - t, v

    # Batch sizes (and, for ONNX Runtime, the export): each peer's fastest on the first 512 passages.
    probe = list(range(min(a.probe, len(texts))))
    best_batch = {}
    sessions, ort_export = {}, {}

    def sweep(name, f):
        f(probe[:32], 8)  # warm-up
        speeds = {b: timed(lambda: f(probe, b))[0] for b in BATCHES}
        print(f"{name} batch sizes on {len(probe)} passages: " +
              ", ".join(f"{b}: {len(probe) / s:.1f}/s" for b, s in speeds.items()))
        return speeds

    speeds = sweep("torch", torch_run)
    best_batch["torch"] = min(speeds, key=speeds.get)
    for family, exports in candidates.items():
        if not exports:
            continue
        best = None
        for impl, session in exports.items():
            speeds = sweep(f"{family} ({impl} export)", ort_runner(session))
            b = min(speeds, key=speeds.get)
            if best is None or speeds[b] < best[0]:
                best = (speeds[b], impl, b)
        _, impl, b = best
        sessions[family], ort_export[family], best_batch[family] = exports[impl], impl, b
        print(f"{family}: {impl} export, batch {b}")
    sess = sessions["ort"]

    with tempfile.TemporaryDirectory() as tmp:
        inp = os.path.join(tmp, "in.jsonl")
        with open(inp, "w") as f:
            for t in texts:
                f.write(json.dumps({"text": t}) + "\n")
        out = os.path.join(tmp, "out.npy")
        out8 = os.path.join(tmp, "out.int8.npy")

        def engine_runner(dest, extra):
            cmd = [os.path.join(a.bin, "simlm-index"), "embed", "--model", model_dir, "--kind", "passage", "--input",
                   inp, "--out", dest, "--format", "simlm", "--pooling", "cls", "--threads", str(a.threads)]
            cmd += a.engine_args.split() + extra

            def run():
                p = subprocess.run(cmd, capture_output=True, text=True)
                if p.returncode != 0:
                    sys.exit(p.stderr)
            return run

        best = {}
        everyone = [("engine", engine_runner(out, [])),
                    ("torch", lambda: torch_run(list(range(len(texts))), best_batch["torch"])),
                    ("ort", lambda: ort_runner(sess)(list(range(len(texts))), best_batch["ort"]))]
        if a.int8:
            everyone += [("engine-int8", engine_runner(out8, ["--precision", "int8"])),
                         ("ort-int8", lambda: ort_runner(sessions["ort-int8"])(list(range(len(texts))),
                                                                               best_batch["ort-int8"]))]
        if st is not None:
            everyone.append(("st", lambda: st.encode(texts, batch_size=32, normalize_embeddings=True)))
        vecs = {}
        for r in range(a.rounds):
            for name, f in everyone:
                # A pause first: the previous encoder's idle threads (PyTorch's OpenMP workers wait
                # spinning for up to 200 ms, ONNX Runtime's spin too) would otherwise take cores from
                # whichever encoder is timed next.
                time.sleep(1.0)
                s, v = timed(f)
                best[name] = min(best.get(name, float("inf")), s)
                vecs[name] = v
            print(f"round {r + 1}: " + ", ".join(f"{k} {v:.2f} s" for k, v in best.items()) + " (best so far)",
                  file=sys.stderr)
        ours = np.load(out)
        ours8 = np.load(out8) if a.int8 else None

    # One query at a time.
    lat = {}
    for name, precision in [("engine", "f32")] + ([("engine-int8", "int8")] if a.int8 else []):
        r = subprocess.run([os.path.join(a.bin, "examples/encode_latency"), model_dir, a.queries, str(a.q),
                            str(a.threads), precision], capture_output=True, text=True)
        if r.returncode != 0:
            sys.exit(r.stderr)
        j = json.loads(r.stdout.strip().splitlines()[-1])
        lat[name] = (j["p50_ms"], j["p99_ms"])

    def peer_latency(f):
        ms = []
        for i, q in enumerate(queries):
            t = time.perf_counter()
            f(q)
            if i >= 10:
                ms.append((time.perf_counter() - t) * 1e3)
        ms.sort()
        return ms[len(ms) // 2], ms[round((len(ms) - 1) * 0.99)]

    def torch_one(q):
        with torch.inference_mode():
            model(**tok(q, max_length=32, truncation=True, return_tensors="pt")).last_hidden_state[:, 0]

    def ort_one(session):
        def one(q):
            e = tok(q, max_length=32, truncation=True, return_tensors="np")
            session.run(None, {k: e[k].astype(np.int64) for k in ("input_ids", "attention_mask", "token_type_ids")})
        return one

    lat["torch"] = peer_latency(torch_one)
    for name, session in sessions.items():
        lat[name] = peer_latency(ort_one(session))
    shutil.rmtree(work, ignore_errors=True)

    n = len(texts)
    names = {"engine": "simlm-index embed (whole process)",
             "torch": f"PyTorch, token-length order, batch {best_batch['torch']}",
             "ort": f"ONNX Runtime, {ort_export['ort']} export, token-length order, batch {best_batch['ort']}",
             "st": "sentence-transformers encode, batch 32",
             "engine-int8": "simlm-index embed --precision int8",
             "ort-int8": f"ONNX Runtime int8, {ort_export.get('ort-int8')} export, batch {best_batch.get('ort-int8')}"}
    print(f"\n{n} passages of {os.path.basename(a.collection)}, simlm format (144 tokens); best of {a.rounds} "
          f"interleaved rounds; {a.threads} threads")
    print(f"{'encoder':<50}{'seconds':>9}{'passages/s':>12}")
    for k, s in best.items():
        print(f"{names[k]:<50}{s:>9.2f}{n / s:>12.1f}")
    peer = min(best["torch"], best["ort"])
    print(f"engine vs the faster of PyTorch and ONNX Runtime: {peer / best['engine']:.2f}x")
    if a.int8:
        print(f"engine int8 vs engine f32: {best['engine'] / best['engine-int8']:.2f}x; "
              f"vs ONNX Runtime int8: {best['ort-int8'] / best['engine-int8']:.2f}x")
    print(f"\none query ({a.q} dev.small queries, one at a time): p50 / p99 ms")
    for k, (p50, p99) in lat.items():
        print(f"  {k:<8} {p50:7.2f} / {p99:7.2f}")
    for k in ("torch", "ort"):
        print(f"min cosine engine vs {k}: {(ours * vecs[k]).sum(1).min():.6f}")
    if a.int8:
        for name, q, f in (("engine int8 vs engine f32", ours8, ours), ("ONNX Runtime int8 vs its f32", vecs["ort-int8"], vecs["ort"])):
            c = (q * f).sum(1)
            print(f"cosine {name}: min {c.min():.5f}, mean {c.mean():.5f}")


if __name__ == "__main__":
    main()
