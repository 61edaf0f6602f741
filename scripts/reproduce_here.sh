#!/usr/bin/env bash
# Reproduces, on the data that exists on this machine, the results table of docs/reproduce.md:
#  1. BEIR SciFact with all-MiniLM-L6-v2 (sentence-transformers format, 256 tokens, mean pooling),
#     exact and HNSW search, top 1000, against the published MTEB numbers.
#  2. The MS MARCO passage pool (28,606 real passages, NOT the full 8.8M collection) in simlm format
#     with all-MiniLM-L6-v2, judged TREC DL19 and DL20 queries against the in-pool qrels, exact and HNSW,
#     beside the BM25 runs of the same queries evaluated the same way.
# Every step is skipped when its output exists (delete target/repro to start over).
# A second argument picks the encoder's precision (default f32); int8 writes to target/repro-int8, so
# the two tables sit side by side (the effect of --precision int8 on retrieval).
#   scripts/reproduce_here.sh [scifact|pool|all] [f32|int8]
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
what="${1:-all}"
precision="${2:-f32}"
shared="${SIMLM_SHARED:-$root/../shared}"
bin="${SIMLM_BIN:-$root/target/release}"
out="$root/target/repro"
[ "$precision" = f32 ] || out="$root/target/repro-$precision"
model="$root/models/all-MiniLM-L6-v2"
mkdir -p "$out"
scripts/fetch-minilm.sh >/dev/null
if [ ! -x "$bin/simlm-index" ] || [ ! -x "$bin/simlm-search" ] || [ ! -x "$bin/simlm-eval" ]; then
  cargo build --release --locked -p indexer -p searcher -p eval
fi

index() { # name collection format [extra args]
  local name="$1" coll="$2" fmt="$3"; shift 3
  [ -f "$out/$name/manifest.json" ] || "$bin/simlm-index" build --model "$model" --format "$fmt" \
    --collection "$coll" --out "$out/$name" --precision "$precision" "$@"
}
search() { # name queries run-name [search args]
  local name="$1" queries="$2" run="$3"; shift 3
  [ -f "$out/$run" ] || "$bin/simlm-search" batch --index "$out/$name" --queries "$queries" --k 1000 \
    --out "$out/$run" "$@"
}
evaluate() { # qrels run rel-level metrics...
  local qrels="$1" run="$2" rel="$3" metric; shift 3
  local args=()
  for metric in "$@"; do args+=(--metric "$metric"); done
  "$bin/simlm-eval" --qrels "$qrels" --run "$run" --rel-level "$rel" "${args[@]}" --json
}

if [ "$what" = scifact ] || [ "$what" = all ]; then
  s="$shared/data/beir/scifact"
  index scifact "$s/corpus.jsonl" sentence-transformers
  search scifact "$s/queries.jsonl" scifact.exact.trec --exact
  search scifact "$s/queries.jsonl" scifact.hnsw.trec
  for r in exact hnsw; do
    evaluate "$s/qrels/test.tsv" "$out/scifact.$r.trec" 1 nDCG@10 MRR@10 R@100 R@1000 > "$out/scifact.$r.json"
    echo "SciFact $r: $(cat "$out/scifact.$r.json")"
  done
fi

if [ "$what" = pool ] || [ "$what" = all ]; then
  m="$shared/data/msmarco"
  index pool "$m/pool/collection.tsv" simlm --fix-encoding
  for y in 19 20; do
    q="$m/dl$y.queries.tsv"
    [ "$y" = 20 ] && q="$m/dl20.queries.judged.tsv"
    search pool "$q" "pool.dl$y.exact.trec" --exact
    search pool "$q" "pool.dl$y.hnsw.trec"
    for r in exact hnsw; do
      evaluate "$m/pool/dl$y.qrels.in-pool.txt" "$out/pool.dl$y.$r.trec" 2 nDCG@10 R@100 MRR@10 > "$out/pool.dl$y.$r.json"
      echo "DL$y pool $r: $(cat "$out/pool.dl$y.$r.json")"
    done
    evaluate "$m/pool/dl$y.qrels.in-pool.txt" "$m/runs/bm25.dl$y.top100.trec" 2 nDCG@10 R@100 MRR@10 > "$out/pool.dl$y.bm25.json"
    echo "DL$y pool BM25: $(cat "$out/pool.dl$y.bm25.json")"
  done
fi
