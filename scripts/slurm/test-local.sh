#!/usr/bin/env bash
# The SLURM check, on a two-node cluster of this machine (local-cluster.sh, its own folder and ports,
# stopped again at the end, also on failure):
#   1. one plain `simlm-index build` of a collection, then index.sh's 4-shard array and merge of the
#      same passages: the merged index equals the plain build (vectors, ids, offsets byte for byte;
#      the manifest in everything but the generation folder's name, the build's resume key and the
#      manifest's own checksum); running index.sh again submits nothing;
#   2. a node taken down while it encodes a shard: the task is requeued onto the other node, resumes
#      from its progress record (its log says after how many rows), the array completes and the merge
#      is again equal to the plain build; then the node is resumed;
#   3. a shard that fails: the merge stays PENDING (DependencyNeverSatisfied); once the cause is gone,
#      index.sh submits only that shard and a new merge, whose index equals a plain build;
#   4. serve.sh: the plain build's passages in 2 shards, a shard server on each node and the front:
#      every query of the collection's query file gets the unsplit index's exact answer through it.
# Prints the wall times of the plain build and of the array + merge. A machine that cannot run the
# cluster (no SLURM, and no root or apt-get to install it) is reported as SKIPPED, exit status 0.
#
# Environment: SIMLM_BIN (binaries, default target/debug), SIMLM_SHARED (default ../shared); for a
# measurement with another model or collection in checks 1 and 2: SIMLM_SLURM_TEST_MODEL (default the
# tiny-bert fixture), SIMLM_SLURM_TEST_COLLECTION (default classic/vaswani, 11,429 passages) and
# SIMLM_SLURM_TEST_ROWS (its first N lines only).
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
shared="${SIMLM_SHARED:-$root/../shared}"
bin="${SIMLM_BIN:-$root/target/debug}"
collection="${SIMLM_SLURM_TEST_COLLECTION:-$shared/data/classic/vaswani/docs.jsonl}"
model="${SIMLM_SLURM_TEST_MODEL:-$shared/fixtures/tiny-bert}"
small="$shared/data/classic/med/docs.jsonl"
tiny="$shared/fixtures/tiny-bert"
chunk=64
work="$root/target/slurm-test"
export SIMLM_SLURM_DIR="$work/cluster" SIMLM_SLURM_PORT="${SIMLM_SLURM_TEST_PORT:-16917}"
export SIMLM_BIN="$bin" SIMLM_SLURM_POLL=1
slurm="$root/scripts/slurm"

skip() {
  echo "SLURM tests: SKIPPED: $*"
  exit 0
}
fail() {
  echo "SLURM tests: FAILED: $*" >&2
  exit 1
}
for f in "$collection" "$small" "$model/config.json" "$tiny/config.json"; do
  [ -e "$f" ] || skip "$f is missing (the shared fixtures and data beside the checkout)"
done
# The manifests name the model as it was given: both builds get the same, canonical, path.
model="$(realpath "$model")" tiny="$(realpath "$tiny")" collection="$(realpath "$collection")"
[ -x "$bin/simlm-index" ] || fail "$bin/simlm-index not found: build it first (cargo build -p indexer)"

# A cluster left by an earlier run that was killed is stopped (by its PID files) before its folder goes.
[ -d "$SIMLM_SLURM_DIR" ] && "$slurm/local-cluster.sh" down >/dev/null 2>&1 || true
rm -rf "$work"
mkdir -p "$work"
if [ -n "${SIMLM_SLURM_TEST_ROWS:-}" ]; then
  head -n "$SIMLM_SLURM_TEST_ROWS" "$collection" >"$work/collection.${collection##*.}"
  collection="$work/collection.${collection##*.}"
fi
cleanup() {
  local rc=$?
  if [ $rc -ne 0 ]; then
    echo "--- slurm state and logs at the failure:" >&2
    SLURM_CONF="$SIMLM_SLURM_DIR/etc/slurm.conf" squeue -t all -o '%i %T %r %N' >&2 2>/dev/null || true
    tail -n 5 "$work"/*.slurm/logs/*.log >&2 2>/dev/null || true
  fi
  "$slurm/local-cluster.sh" down >/dev/null 2>&1 || echo "SLURM tests: could not stop the cluster in $SIMLM_SLURM_DIR" >&2
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM
up_log="$work/up.log"
set +e
"$slurm/local-cluster.sh" up >"$up_log" 2>&1
rc=$?
set -e
if [ $rc -eq 3 ]; then
  skip "$(grep 'cannot start' "$up_log" | head -n1 | sed 's/^local-cluster: cannot start: //')"
fi
[ $rc -eq 0 ] || { cat "$up_log" >&2; fail "the local cluster did not start (above)"; }
export SLURM_CONF="$SIMLM_SLURM_DIR/etc/slurm.conf"

# The merged index equals a plain build: the three data files byte for byte, and the manifests but
# for `data` (the generation folder's name), `settings` (the resume key of a build; a merge has none)
# and `checksum` (the manifest's own).
same_index() { # merged plain
  local f
  for f in vectors.npy docids.txt offsets.bin; do
    cmp "$1"/gen*/"$f" "$2"/gen*/"$f" || fail "$1: $f differs from the plain build's"
  done
  python3 - "$1/manifest.json" "$2/manifest.json" <<'EOF' || fail "$1: the manifest differs from the plain build's (above)"
import json, sys
a, b = (json.load(open(p)) for p in sys.argv[1:])
for m in (a, b):
    for k in ("data", "settings", "checksum"):
        m.pop(k)
if a != b:
    sys.exit("differ: " + ", ".join(k for k in a if a.get(k) != b.get(k)))
EOF
  "$bin/simlm-index" verify "$1" >/dev/null || fail "$1: simlm-index verify failed"
}
now() { date +%s.%N; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", b - a }'; }
index() { "$slurm/index.sh" --shards 4 "$@"; }

rows=$(wc -l <"$collection")
echo "SLURM tests: cluster up ($SIMLM_SLURM_DIR); $rows passages of $collection, model $model, chunks of $chunk"

# 1. The array (with --gres gpu:1) and merge against one plain build (both with both CPUs: the build's threads, or one
#    task on each 1-CPU node).
t0=$(now)
"$bin/simlm-index" build --collection "$collection" --model "$model" --out "$work/plain" \
  --no-hnsw --chunk-rows $chunk >"$work/plain.log" 2>&1 || { cat "$work/plain.log" >&2; fail "plain build"; }
t1=$(now)
index --collection "$collection" --model "$model" --out "$work/a" --gres gpu:1 --wait \
  -- --chunk-rows $chunk --no-hnsw >"$work/a.log" 2>&1 || { cat "$work/a.log" >&2; fail "index.sh --wait (4 shards)"; }
t2=$(now)
# Each task held its node's declared GPU, as on a GPU partition.
[ "$(cat "$work"/a.slurm/logs/shard-*.log | grep -c 'CUDA_VISIBLE_DEVICES=0$')" -eq 4 ] \
  || fail "the shard tasks did not get a GPU with --gres gpu:1 (their logs' first lines)"
same_index "$work/a" "$work/plain"
index --collection "$collection" --model "$model" --out "$work/a" --wait -- --chunk-rows $chunk --no-hnsw >"$work/a2.log" 2>&1
grep -q 'nothing to submit' "$work/a2.log" || { cat "$work/a2.log" >&2; fail "index.sh again after the merge"; }
plain_s=$(secs "$t0" "$t1") array_s=$(secs "$t1" "$t2")
echo "ok 1: 4 shards + merge equal the plain build; run again: nothing to submit" \
  "(plain build $plain_s s, array + merge $array_s s)"

# 2. n2 taken down while it encodes a shard (after its first chunk).
index --collection "$collection" --model "$model" --out "$work/b" -- --chunk-rows $chunk --no-hnsw >"$work/b.log" 2>&1 \
  || { cat "$work/b.log" >&2; fail "index.sh (node-down run)"; }
array=$(sed -n 's/^shards submitted: job array \([0-9]*\),.*/\1/p' "$work/b.log")
[ -n "$array" ] || fail "no job array id in $work/b.log"
task="" done_before=0
for _ in $(seq 1200); do
  task=$(squeue -h -r -j "$array" -t running -o '%i %N' | awk '$2 == "n2" { print $1 }' | head -n1)
  if [ -n "$task" ]; then
    d=$(printf '%s/b.slurm/shards/%03d' "$work" "${task#*_}")
    p=$(ls "$d"/gen*/build.progress.json 2>/dev/null | head -n1 || true)
    done_before=$( [ -n "$p" ] && grep -o '"rows_done": *[0-9]*' "$p" | grep -o '[0-9]*$' || echo 0)
    [ "${done_before:-0}" -gt 0 ] && [ ! -f "$d/manifest.json" ] && break
  fi
  task=""
  sleep 0.05
done
[ -n "$task" ] || fail "no shard was seen encoding on n2 within 60 s"
scontrol update nodename=n2 state=down reason=slurm-test
t3=$(now)
index --collection "$collection" --model "$model" --out "$work/b" --wait -- --chunk-rows $chunk --no-hnsw >"$work/b2.log" 2>&1 \
  || { cat "$work/b2.log" >&2; fail "index.sh --wait after n2 went down"; }
t4=$(now)
grep -q 'shards still queued or running from before' "$work/b2.log" && ! grep -q 'shards submitted' "$work/b2.log" \
  || { cat "$work/b2.log" >&2; fail "index.sh run again while shards were queued submitted shards again"; }
same_index "$work/b" "$work/plain"
log=$(ls "$work"/b.slurm/logs/shard-"${task#*_}"-*.log)
grep -q "^== shard .* attempt 2" "$log" || { cat "$log" >&2; fail "task $task was not run a second time"; }
resumed=$(grep -o 'resuming after [0-9]*' "$log" | grep -o '[0-9]*$' || echo 0)
[ "$resumed" -ge "$done_before" ] && [ "$resumed" -gt 0 ] \
  || { cat "$log" >&2; fail "task $task did not resume from its record ($done_before rows seen done before)"; }
[ "$(sinfo -h -n n2 -o '%t')" = "down" ] || fail "n2 came back before it was resumed"
scontrol update nodename=n2 state=resume
for _ in $(seq 100); do
  [ "$(sinfo -h -n n2 -o '%t')" = "idle" ] && break
  sleep 0.2
done
[ "$(sinfo -h -n n2 -o '%t')" = "idle" ] || fail "n2 did not come back after state=resume"
echo "ok 2: n2 down during task $task (after $done_before rows): requeued, resumed after $resumed rows," \
  "array and merge done $(secs "$t3" "$t4") s later, merge equal to the plain build; n2 resumed"

# 3. A shard that fails (its folder holds a stray file), then succeeds once it is removed.
"$bin/simlm-index" build --collection "$small" --model "$tiny" --out "$work/plain-small" \
  --no-hnsw --chunk-rows $chunk >"$work/plain-small.log" 2>&1 || { cat "$work/plain-small.log" >&2; fail "plain build (small)"; }
mkdir -p "$work/c.slurm/shards/002"
echo stray >"$work/c.slurm/shards/002/stray"
if index --collection "$small" --model "$tiny" --out "$work/c" --wait -- --chunk-rows $chunk --no-hnsw >"$work/c.log" 2>&1; then
  cat "$work/c.log" >&2
  fail "index.sh --wait succeeded with a failing shard"
fi
merge=$(sed -n 's/^merge: job \([0-9]*\) .*/\1/p' "$work/c.log")
[ "$(squeue -h -j "$merge" -o '%T %r')" = "PENDING DependencyNeverSatisfied" ] \
  || fail "the merge (job $merge) is not PENDING for DependencyNeverSatisfied: $(squeue -h -j "$merge" -o '%T %r')"
grep -q 'shard 2: FAILED' "$work/c.log" || { cat "$work/c.log" >&2; fail "index.sh did not name the failed shard"; }
rm "$work/c.slurm/shards/002/stray"
index --collection "$small" --model "$tiny" --out "$work/c" --wait -- --chunk-rows $chunk --no-hnsw >"$work/c2.log" 2>&1 \
  || { cat "$work/c2.log" >&2; fail "index.sh --wait after the failed shard's cause was removed"; }
grep -q 'shards submitted: job array [0-9]*, tasks 2 of 0-3' "$work/c2.log" && grep -q "cancelled the earlier merge job $merge" "$work/c2.log" \
  || { cat "$work/c2.log" >&2; fail "index.sh again: expected shard 2 alone and a new merge"; }
same_index "$work/c" "$work/plain-small"
echo "ok 3: a failed shard left the merge PENDING (DependencyNeverSatisfied); run again, only it was" \
  "submitted, and the merge equals the plain build"

# 4. The plain build served split over the two nodes: serve.sh starts a shard server on each and the
#    front; every query of the collection's query file, asked of the front and of one server on the
#    unsplit index (exact search, k 100, one query a request), gets the same ids, scores and order.
queries_file="$(dirname "$collection")/queries.tsv"
[ -f "$queries_file" ] || queries_file="$shared/data/classic/vaswani/queries.tsv"
for i in 0 1; do
  "$bin/simlm-index" build --collection "$collection" --model "$model" --out "$work/d/00$i" \
    --shard $i/2 --no-hnsw --chunk-rows $chunk >"$work/d-$i.log" 2>&1 || { cat "$work/d-$i.log" >&2; fail "shard build $i/2"; }
done
"$slurm/serve.sh" --shards "$work/d" --bind 127.0.0.1 --wait 120 -- --exact >"$work/d.log" 2>&1 \
  || { cat "$work/d.log" >&2; tail -n 20 "$work"/d.serve/logs/*.log >&2; fail "serve.sh --wait"; }
serve_job=$(cat "$work/d.serve/job")
front=$(cat "$work/d.serve/front.url")
"$bin/simlm-search" serve --index "$work/plain" --exact --addr 127.0.0.1:0 --addr-file "$work/single.url" \
  >"$work/single.log" 2>&1 &
single_pid=$!
for _ in $(seq 600); do [ -s "$work/single.url" ] && break; sleep 0.1; done
[ -s "$work/single.url" ] || { cat "$work/single.log" >&2; fail "the single server did not start"; }
python3 - "$front" "$(cat "$work/single.url")" "$queries_file" >"$work/compare.log" 2>&1 <<'EOF' \
  || { kill $single_pid; cat "$work/compare.log" >&2; fail "the front's answers differ from the unsplit index's (above)"; }
import json, sys, urllib.request
front, single, path = sys.argv[1:]
def search(url, q):
    body = json.dumps({"query": q, "k": 100, "exact": True, "text": False}).encode()
    req = urllib.request.Request(url + "/search", body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        return [(h["docid"], h["score"], h["row"]) for h in json.load(r)["hits"]]
n = 0
for line in open(path, encoding="utf-8"):
    qid, _, text = line.rstrip("\n").partition("\t")
    if not text.strip():
        continue
    a, b = search(front, text), search(single, text)
    if a != b:
        sys.exit(f"query {qid}: front {a[:3]}... single {b[:3]}...")
    n += 1
info = json.load(urllib.request.urlopen(front + "/info"))
print(f"{n} queries equal; front over {len(info['shards'])} shards, {info['count']} passages")
EOF
kill $single_pid
shards_seen=$(sed -n 's/.*front over \([0-9]*\) shards.*/\1/p' "$work/compare.log")
[ "$shards_seen" = 2 ] || fail "the front does not serve 2 shards: $(cat "$work/compare.log")"
nodes=$(squeue -h -j "$serve_job" -o '%N')
scancel "$serve_job"
for _ in $(seq 100); do
  [ -z "$(squeue -h -j "$serve_job" -o '%T' 2>/dev/null)" ] && break
  sleep 0.2
done
[ -z "$(squeue -h -j "$serve_job" -o '%T' 2>/dev/null)" ] || fail "the serve job $serve_job did not end after scancel"
for _ in $(seq 50); do pgrep -f "simlm-search serve --index $work/d/" >/dev/null || break; sleep 0.2; done
! pgrep -f "simlm-search serve --index $work/d/" >/dev/null || fail "shard servers still running after scancel"
echo "ok 4: serve.sh: a shard server on each node ($nodes) and the front; $(cat "$work/compare.log");" \
  "scancel stopped them"

cpu=$(grep -m1 'model name' /proc/cpuinfo | sed 's/.*: //')
echo "SLURM tests: passed. Timings: plain build $plain_s s, 4-shard array + merge $array_s s" \
  "($rows passages, $(basename "$model"), $bin, $(nproc) CPUs: $cpu)"
