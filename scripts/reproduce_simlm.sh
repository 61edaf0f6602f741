#!/usr/bin/env bash
# SimLM's table from nothing, on a machine with internet (and a GPU for the encoding):
#   dev.small MRR@10 41.1, R@50 87.8, R@1k 98.7; TREC DL19 nDCG@10 71.4; DL20 nDCG@10 69.7.
#
#   scripts/reproduce_simlm.sh            # the real run (downloads ~3.5 GB, writes ~32 GB)
#   scripts/reproduce_simlm.sh --small    # the same steps on data of this machine (no downloads):
#                                          # 2,000 pool passages, all-MiniLM-L6-v2, CPU; tests the logic
#
# Every step is resumable: downloads continue where they stopped (curl -C -), finished files are
# verified (archive integrity, line counts, and the SHA-256 recorded at the first complete download),
# the index build resumes from its last chunk, and finished runs and evaluations are kept.
# Environment: SIMLM_DATA (work folder, default target/simlm), SIMLM_BIN (binaries, default
# target/release), SIMLM_DEVICE (cpu | cuda, default cuda when nvidia-smi works), SIMLM_SHARED (--small).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
small=0
[ "${1:-}" = "--small" ] && small=1
work="${SIMLM_DATA:-$root/target/simlm}"
[ $small = 1 ] && work="${SIMLM_DATA:-$root/target/simlm-small}"
bin="${SIMLM_BIN:-$root/target/release}"
mkdir -p "$work/raw"
log() { printf '\n== %s\n' "$*"; }

# ---- 1. data ----------------------------------------------------------------------------------
fetch() { # url file: resumable download, then moved into place
  local url="$1" dest="$2"
  [ -f "$dest" ] && return 0
  log "download $url"
  curl -fL --retry 5 --retry-delay 10 -C - -o "$dest.part" "$url"
  mv "$dest.part" "$dest"
}
check_lines() { # file expected-count
  local n
  n=$(wc -l < "$1")
  [ "$n" -eq "$2" ] || { echo "error: $1 has $n lines, expected $2: delete it and run again" >&2; exit 1; }
}
record_or_verify() { # file: SHA-256 recorded at first success, verified later
  local f="$1" sums="$work/raw/checksums.sha256" name
  name="$(basename "$f")"
  if grep -q "  $name\$" "$sums" 2>/dev/null; then
    (cd "$(dirname "$f")" && grep "  $name\$" "$sums" | sha256sum -c --quiet -) ||
      { echo "error: $f does not match the checksum recorded when it was downloaded" >&2; exit 1; }
  else
    (cd "$(dirname "$f")" && sha256sum "$name") >> "$sums"
  fi
}

if [ $small = 0 ]; then
  model="${SIMLM_MODEL:-intfloat/simlm-base-msmarco-finetuned}"
  ms=https://msmarco.z22.web.core.windows.net/msmarcoranking
  raw="$work/raw"
  fetch "$ms/collectionandqueries.tar.gz" "$raw/collectionandqueries.tar.gz"
  fetch https://rocketqa.bj.bcebos.com/corpus/marco.tar.gz "$raw/marco.tar.gz"
  fetch "$ms/msmarco-test2019-queries.tsv.gz" "$raw/msmarco-test2019-queries.tsv.gz"
  fetch "$ms/msmarco-test2020-queries.tsv.gz" "$raw/msmarco-test2020-queries.tsv.gz"
  fetch https://trec.nist.gov/data/deep/2019qrels-pass.txt "$raw/2019qrels-pass.txt"
  fetch https://trec.nist.gov/data/deep/2020qrels-pass.txt "$raw/2020qrels-pass.txt"
  for f in "$raw"/*.tar.gz "$raw"/*.tsv.gz "$raw"/*.txt; do record_or_verify "$f"; done
  if [ ! -f "$work/collection.tsv" ]; then
    log "unpack the collection and dev.small"
    tar -xzf "$raw/collectionandqueries.tar.gz" -C "$work" collection.tsv queries.dev.small.tsv qrels.dev.small.tsv
  fi
  if [ ! -f "$work/para.title.txt" ]; then
    log "unpack RocketQA's titles"
    tar -xzf "$raw/marco.tar.gz" -C "$work" --strip-components=1 marco/para.title.txt
  fi
  [ -f "$work/dl19.queries.tsv" ] || gunzip -c "$raw/msmarco-test2019-queries.tsv.gz" > "$work/dl19.queries.tsv"
  [ -f "$work/dl20.queries.tsv" ] || gunzip -c "$raw/msmarco-test2020-queries.tsv.gz" > "$work/dl20.queries.tsv"
  cp -n "$raw/2019qrels-pass.txt" "$work/dl19.qrels.txt"
  cp -n "$raw/2020qrels-pass.txt" "$work/dl20.qrels.txt"
  check_lines "$work/collection.tsv" 8841823
  check_lines "$work/para.title.txt" 8841823
  check_lines "$work/queries.dev.small.tsv" 6980
  check_lines "$work/qrels.dev.small.tsv" 7437
  check_lines "$work/dl19.qrels.txt" 9260
  check_lines "$work/dl20.qrels.txt" 11386
  device="${SIMLM_DEVICE:-$(nvidia-smi >/dev/null 2>&1 && echo cuda || echo cpu)}"
else
  shared="${SIMLM_SHARED:-$root/../shared}"
  "$root/scripts/fetch-minilm.sh" >/dev/null
  model="${SIMLM_MODEL:-$root/models/all-MiniLM-L6-v2}"
  m="$shared/data/msmarco"
  head -n 2000 "$m/pool/collection.tsv" > "$work/collection.tsv"
  # A titles file in the collection's order (empty titles become `-`), to run the --titles path.
  cut -f1 "$work/collection.tsv" | sed 's/$/\t/' > "$work/para.title.txt"
  cp "$m/queries.dev.small.tsv" "$work/queries.dev.small.tsv"
  cp "$m/qrels.dev.small.tsv" "$work/qrels.dev.small.tsv"
  cp "$m/dl19.queries.tsv" "$work/dl19.queries.tsv"
  cp "$m/dl20.queries.judged.tsv" "$work/dl20.queries.tsv"
  cp "$m/pool/dl19.qrels.in-pool.txt" "$work/dl19.qrels.txt"
  cp "$m/pool/dl20.qrels.in-pool.txt" "$work/dl20.qrels.txt"
  check_lines "$work/collection.tsv" 2000
  device="${SIMLM_DEVICE:-cpu}"
fi

# ---- 2. index ---------------------------------------------------------------------------------
# On a GPU the binaries need the cuda feature: they are kept apart from the CPU ones (target/cuda).
build_args=(--release --locked -p indexer -p searcher -p eval)
if [ "$device" = cuda ]; then
  build_args+=(--features cuda --target-dir "$root/target/cuda")
  [ -z "${SIMLM_BIN:-}" ] && bin="$root/target/cuda/release"
fi
if [ ! -x "$bin/simlm-index" ] || [ ! -x "$bin/simlm-search" ] || [ ! -x "$bin/simlm-eval" ]; then
  log "build the binaries"
  (cd "$root" && cargo build "${build_args[@]}")
fi
if [ ! -f "$work/index/manifest.json" ]; then
  log "encode the collection ($device)"
  "$bin/simlm-index" build --model "$model" --format simlm --collection "$work/collection.tsv" \
    --titles "$work/para.title.txt" --fix-encoding --device "$device" --no-hnsw --out "$work/index"
fi

# ---- 3. search and evaluate -------------------------------------------------------------------
for set in dev dl19 dl20; do
  q="$work/$set.queries.tsv"
  [ $set = dev ] && q="$work/queries.dev.small.tsv"
  if [ ! -f "$work/$set.run" ]; then
    log "search $set (exact, k=1000)"
    "$bin/simlm-search" batch --index "$work/index" --queries "$q" --k 1000 --exact --device "$device" \
      --out "$work/$set.run"
  fi
done
"$bin/simlm-eval" --qrels "$work/qrels.dev.small.tsv" --run "$work/dev.run" --metric MRR@10 --metric R@50 \
  --metric R@1000 --json > "$work/dev.eval.json"
for y in 19 20; do
  "$bin/simlm-eval" --qrels "$work/dl$y.qrels.txt" --run "$work/dl$y.run" --metric nDCG@10 --json \
    > "$work/dl$y.eval.json"
done

# ---- 4. the table -----------------------------------------------------------------------------
python3 - "$work" "$small" <<'PY'
import json, sys
work, small = sys.argv[1], sys.argv[2] == "1"
ev = {s: json.load(open(f"{work}/{s}.eval.json")) for s in ("dev", "dl19", "dl20")}
rows = [("dev.small MRR@10", ev["dev"], "MRR@10", 41.1), ("dev.small R@50", ev["dev"], "R@50", 87.8),
        ("dev.small R@1k", ev["dev"], "R@1000", 98.7), ("DL19 nDCG@10", ev["dl19"], "nDCG@10", 71.4),
        ("DL20 nDCG@10", ev["dl20"], "nDCG@10", 69.7)]
print()
if small:
    print("SMALL MODE: 2,000 pool passages and all-MiniLM-L6-v2: these numbers test the pipeline and are")
    print("NOT comparable with the paper's.")
print(f"{'metric':<18}{'ours':>8}{'SimLM paper':>13}{'queries':>9}{'missing':>9}")
for name, e, key, paper in rows:
    print(f"{name:<18}{100 * e['metrics'][key]:>8.1f}{paper:>13.1f}{e['queries']:>9}{e['missing']:>9}")
PY
