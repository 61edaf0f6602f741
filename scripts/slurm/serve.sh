#!/usr/bin/env bash
# Serves an index split into shards on a SLURM cluster: one job (serve.sbatch) of N nodes, a shard
# server on each (`simlm-search serve --index SHARD`, one a node, srun) and the front on the first
# (`simlm-search serve --shard URL ...`), which answers as the unsplit index would.
#
#   scripts/slurm/serve.sh --shards DIR [--run R] [--bind HOST] [--port P] [--front-port P]
#       [--partition P] [--time T] [--front-opts "OPTS"] [--wait [SECS]] [-- shard server options]
#
# DIR holds the shard indexes as subfolders (index.sh's W/shards: 000, 001, ...), each given its own
# graph (`simlm-index hnsw DIR/000`) or served exact; or DIR is a comma-separated list of shard
# folders. R (default DIR.serve) gets shards.txt, the servers' logs, and, once they listen, the
# addresses: R/shard-i.url and R/front.url (http://HOST:PORT). --wait waits for the front (at most SECS,
# default 600) and prints its address; the job runs until `scancel` or its time limit.
#
# The binary: $SIMLM_BIN (the simlm-search file or its folder), else simlm-search on PATH, at the same
# path on every node. DIR and R must be on a filesystem every node sees.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
die() {
  echo "serve.sh: error: $*" >&2
  exit 1
}
usage() {
  sed -n '6,7p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 2
}
shards="" run="" bind="0.0.0.0" port=0 front_port=0 partition="" time_limit="" front_opts="" wait=""
serve_opts=()
while [ $# -gt 0 ]; do
  case "$1" in
    --shards | --run | --bind | --port | --front-port | --partition | --time | --front-opts)
      [ $# -ge 2 ] || die "$1 needs a value"
      case "$1" in
        --shards) shards=$2 ;;
        --run) run=$2 ;;
        --bind) bind=$2 ;;
        --port) port=$2 ;;
        --front-port) front_port=$2 ;;
        --partition) partition=$2 ;;
        --time) time_limit=$2 ;;
        --front-opts) front_opts=$2 ;;
      esac
      shift 2
      ;;
    --wait)
      wait=600
      if [ $# -ge 2 ] && [[ "$2" =~ ^[0-9]+$ ]]; then wait=$2 && shift; fi
      shift
      ;;
    --) shift && serve_opts=("$@") && break ;;
    -h | --help) usage ;;
    *) die "unknown option $1 (shard server options go after --)" ;;
  esac
done
[ -n "$shards" ] || die "--shards DIR is required (a folder of shard indexes, or a comma-separated list)"
for p in "$port" "$front_port"; do
  [[ "$p" =~ ^[0-9]+$ ]] && [ "$p" -le 65535 ] || die "port $p: expected 0 (any free port) to 65535"
done

# The shard folders: subfolders holding an index, or the list given.
dirs=()
if [ -d "$shards" ]; then
  for d in "$(realpath -- "$shards")"/*/; do
    [ -f "$d/manifest.json" ] && dirs+=("${d%/}")
  done
  [ ${#dirs[@]} -gt 0 ] || die "$shards: no shard index in it (subfolders holding a manifest.json)"
  run="${run:-$(realpath -m -- "${shards%/}").serve}"
else
  IFS=, read -r -a given <<<"$shards"
  for d in "${given[@]}"; do
    [ -f "$d/manifest.json" ] || die "$d: not an index folder (no manifest.json)"
    dirs+=("$(realpath -- "$d")")
  done
  [ -n "$run" ] || die "--run R is required with a list of shard folders"
fi
run="$(realpath -m -- "$run")"

if [ -n "${SIMLM_BIN:-}" ]; then
  bin=$SIMLM_BIN
  [ -d "$bin" ] && bin="$bin/simlm-search"
else
  bin="$(command -v simlm-search || true)"
  [ -n "$bin" ] || die "simlm-search not found: set SIMLM_BIN to the binary or its folder (e.g. target/release)"
fi
bin="$(realpath -m -- "$bin")"
"$bin" --version >/dev/null 2>&1 || die "$bin does not run here"
command -v sbatch >/dev/null 2>&1 || die "sbatch not found: run this on a SLURM login node"
# Each folder is checked here (its manifest's checksum) before any node is held for it.
for d in "${dirs[@]}"; do
  "${bin%/*}/simlm-index" info "$d" >/dev/null 2>&1 || [ ! -x "${bin%/*}/simlm-index" ] \
    || die "$d: \`simlm-index info\` refuses it (run it for the reason)"
done

mkdir -p "$run/logs"
printf '%s\n' "${dirs[@]}" >"$run/shards.txt"
rm -f "$run"/shard-*.url "$run/front.url"
quote() { printf '%q ' "$@"; }
args=(--parsable --nodes="${#dirs[@]}" --output="$run/logs/serve-%j.log"
  --export="ALL,SIMLM_SEARCH=$bin,SIMLM_RUN=$run,SIMLM_BIND=$bind,SIMLM_PORT=$port,SIMLM_FRONT_PORT=$front_port")
[ -n "$partition" ] && args+=(--partition="$partition")
[ -n "$time_limit" ] && args+=(--time="$time_limit")
job=$(SIMLM_SERVE_OPTS="$(quote "${serve_opts[@]}")" SIMLM_FRONT_OPTS="$front_opts" \
  sbatch "${args[@]}" "$here/serve.sbatch")
job=${job%%;*}
echo "$job" >"$run/job"
echo "serve: job $job, ${#dirs[@]} shard servers and a front ($run)"
echo "  follow: squeue -j $job; tail -f $run/logs/serve-$job.log"
echo "  the front's address, once it listens: cat $run/front.url"
echo "  stop: scancel $job"
[ -n "$wait" ] || exit 0
for ((t = 0; t < wait * 2; t++)); do
  if [ -s "$run/front.url" ]; then
    echo "front: $(cat "$run/front.url")"
    exit 0
  fi
  state=$(squeue -h -j "$job" -o '%T' 2>/dev/null || true)
  if [ -z "$state" ] || [[ "$state" =~ ^(FAILED|CANCELLED|TIMEOUT|COMPLETED|NODE_FAIL) ]]; then
    tail -n 20 "$run/logs/serve-$job.log" >&2 2>/dev/null || true
    die "job $job ended before the front listened (${state:-gone}; log above)"
  fi
  sleep 0.5
done
die "the front did not listen within $wait s (job $job still ${state:-queued}; see $run/logs/)"
