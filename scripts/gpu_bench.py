#!/usr/bin/env python3
"""GPU measurement, for one device run (PyTorch and transformers present, no Rust toolchain):

  1. parity: our fp16 CUDA vectors against our f32 (CPU binary) and PyTorch fp16, on the fixture texts
     with all-MiniLM-L6-v2;
  2. speed: a BERT-base-shaped checkpoint with random weights (SimLM's shape: 12 layers, 768 wide) encodes
     the same N pool passages (simlm format, 144 tokens) in our engine (fp16, length-sorted token-budget
     batches) and in PyTorch fp16 as SimLM's encode_main.py does (file order, batch 512, padded to each
     batch's longest); passages/s of each and the ratio;
  3. exact search of a batch of queries over the encoded matrix.

usage (on the GPU machine, from the repository root, with the CUDA binaries of scripts/build-cuda.sh
carried in target/cuda/release and the CPU ones in target/release):
  python3 scripts/gpu_bench.py --collection gpu-data/collection.tsv --n 20000
"""
import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def cuda_env():
    """LD_LIBRARY_PATH with the CUDA 13 libraries of the PyTorch installation."""
    env = dict(os.environ)
    try:
        import nvidia
        base = list(nvidia.__path__)[0]
        libs = []
        for dirpath, _, files in os.walk(base):
            if any(f.startswith(("libcublas", "libcudart", "libcurand", "libnvrtc")) for f in files):
                libs.append(dirpath)
        env["LD_LIBRARY_PATH"] = ":".join(libs + [env.get("LD_LIBRARY_PATH", "")])
    except ImportError:
        pass
    return env


def embed(binary, model, kind, inp, out, extra, env):
    p = subprocess.run([binary, "embed", "--model", model, "--kind", kind, "--input", inp, "--out", out] + extra,
                       capture_output=True, text=True, env=env)
    if p.returncode != 0:
        sys.exit(f"{binary} failed: {p.stderr}")
    m = re.search(r"encoded (\d+) texts in ([\d.]+) s", p.stderr)
    return float(m.group(2))


def torch_vectors(model, tok, items, kind, torch, batch=512, dtype=None):
    vecs = []
    with torch.inference_mode():
        for s in range(0, len(items), batch):
            chunk = items[s:s + batch]
            if kind == "query":
                enc = tok([c["text"] for c in chunk], max_length=32, truncation=True, padding=True, return_tensors="pt")
            else:
                titles = [c.get("title") or "-" for c in chunk]
                enc = tok(titles, [c["text"] for c in chunk], max_length=144, truncation=True, padding=True,
                          return_tensors="pt")
            enc = {k: v.cuda() for k, v in enc.items()}
            out = model(**enc).last_hidden_state[:, 0].float()
            vecs.append(torch.nn.functional.normalize(out, dim=-1).cpu())
    torch.cuda.synchronize()
    return torch.cat(vecs)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--collection", required=True)
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--minilm", default=os.path.join(ROOT, "models/all-MiniLM-L6-v2"))
    ap.add_argument("--fixtures", default=os.path.join(ROOT, "gpu-data/all-MiniLM-L6-v2.expected.jsonl"))
    ap.add_argument("--cuda-bin", default=os.path.join(ROOT, "target/cuda/release"))
    ap.add_argument("--batch-tokens", type=int, default=65536)
    a = ap.parse_args()

    import numpy as np
    import torch
    from transformers import AutoModel, AutoTokenizer, BertConfig, BertModel

    env = cuda_env()
    idx = os.path.join(a.cuda_bin, "simlm-index")
    print(f"device: {torch.cuda.get_device_name(0)}; torch {torch.__version__}")
    tmp = tempfile.mkdtemp()

    # 1. parity on the fixture texts (MiniLM, real weights).
    items = [json.loads(l) for l in open(a.fixtures)]
    tok = AutoTokenizer.from_pretrained(a.minilm)
    ref = AutoModel.from_pretrained(a.minilm, torch_dtype=torch.float16).cuda().eval()
    for kind in ("query", "passage"):
        sub = [{"text": x["text"], "title": x.get("title")} for x in items if x["kind"] == kind]
        inp = os.path.join(tmp, f"{kind}.jsonl")
        with open(inp, "w") as f:
            for x in sub:
                f.write(json.dumps(x) + "\n")
        outs = {}
        for name, extra in (("f16", ["--device", "cuda", "--precision", "f16"]),
                            ("f32", ["--device", "cuda", "--precision", "f32"])):
            out = os.path.join(tmp, f"{kind}.{name}.npy")
            embed(idx, a.minilm, kind, inp, out, extra + ["--pooling", "cls"], env)
            outs[name] = np.load(out)
        pt = torch_vectors(ref, tok, sub, kind, torch).numpy()
        c32 = (outs["f16"] * outs["f32"]).sum(1).min()
        cpt = (outs["f16"] * pt).sum(1).min()
        finite = bool(np.isfinite(outs["f16"]).all())
        print(f"parity {kind}: min cosine fp16 vs our f32 {c32:.6f}, fp16 vs PyTorch fp16 {cpt:.6f}, finite {finite}")

    # 2. speed with a BERT-base-shaped checkpoint.
    base = os.path.join(tmp, "bert-base-random")
    torch.manual_seed(0)
    BertModel(BertConfig(), add_pooling_layer=False).save_pretrained(base, safe_serialization=True)
    tok.save_pretrained(base)
    texts = []
    with open(a.collection, encoding="utf-8") as f:
        for line in f:
            texts.append({"text": line.rstrip("\n").split("\t", 1)[1]})
            if len(texts) == a.n:
                break
    inp = os.path.join(tmp, "passages.jsonl")
    with open(inp, "w") as f:
        for x in texts:
            f.write(json.dumps(x) + "\n")
    out = os.path.join(tmp, "passages.npy")
    embed(idx, base, "passage", inp, os.path.join(tmp, "warm.npy"), ["--device", "cuda", "--precision", "f16"], env)
    ours_s = embed(idx, base, "passage", inp, out,
                   ["--device", "cuda", "--precision", "f16", "--batch-tokens", str(a.batch_tokens)], env)
    model = BertModel.from_pretrained(base, torch_dtype=torch.float16).cuda().eval()
    btok = AutoTokenizer.from_pretrained(base)
    torch_vectors(model, btok, texts[:1024], "passage", torch)  # warm-up
    t = time.perf_counter()
    pt = torch_vectors(model, btok, texts, "passage", torch)
    torch_s = time.perf_counter() - t
    n = len(texts)
    ours = np.load(out)
    print(f"speed: {n} passages, BERT-base shape, fp16, 144 tokens")
    print(f"  ours    {ours_s:8.2f} s {n / ours_s:10.1f} passages/s (token budget {a.batch_tokens})")
    print(f"  PyTorch {torch_s:8.2f} s {n / torch_s:10.1f} passages/s (encode_main: file order, batch 512)")
    print(f"  ratio {torch_s / ours_s:.2f}x; min cosine ours vs PyTorch {(ours * pt.numpy()).sum(1).min():.5f}")
    print(f"  8.8M passages at our rate: {8_841_823 / (n / ours_s) / 60:.1f} min")

    # 3. exact search of 1,000 queries over the matrix, on the GPU (PyTorch matmul + topk as reference).
    m = torch.from_numpy(ours).cuda().half()
    q = m[:1000].clone()
    torch.cuda.synchronize()
    t = time.perf_counter()
    torch.topk(q @ m.T, 1000, dim=1)
    torch.cuda.synchronize()
    print(f"exact search, 1,000 queries x {n} vectors, k=1000 (torch fp16 matmul+topk): {(time.perf_counter() - t) * 1e3:.1f} ms")


if __name__ == "__main__":
    main()
