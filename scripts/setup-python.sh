#!/usr/bin/env bash
# Creates .venv with the Python packages the tests compare against: numpy (reads our .npy files),
# pytrec_eval (trec_eval's C code, the reference for simlm-eval), and the official clients of the
# embedding APIs the service speaks (huggingface_hub's InferenceClient for TEI's, openai for OpenAI's).
# Idempotent.
# With --bench it adds what the benchmarks run beside the engine: torch, transformers, onnx, onnxruntime,
# sentence-transformers, faiss-cpu, hnswlib, threadpoolctl (which BLAS kernel the peers use) and
# matplotlib (plots).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
venv="$root/.venv"
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
pkgs=(numpy pytrec-eval-terrier huggingface-hub openai)
if [ "${1:-}" = "--bench" ]; then
  pkgs+=(torch transformers onnx onnxruntime sentence-transformers faiss-cpu hnswlib threadpoolctl matplotlib)
fi
missing=()
for p in "${pkgs[@]}"; do
  mod="${p//-/_}"
  case "$p" in
    pytrec-eval-terrier) mod=pytrec_eval ;;
    faiss-cpu) mod=faiss ;;
    huggingface-hub) mod=huggingface_hub ;;
  esac
  "$venv/bin/python" -c "import $mod" 2>/dev/null || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing into .venv: ${missing[*]}"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "${missing[@]}"
fi
