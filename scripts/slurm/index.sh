#!/usr/bin/env bash
# Builds an index on a SLURM cluster: a job array of N shard builds (shard.sbatch:
# `simlm-index build --shard i/N`, each into its own folder) and a merge job (merge.sbatch:
# `simlm-index merge ... --out DIR`) that runs once every shard has succeeded.
#
#   scripts/slurm/index.sh --collection C --model M --out DIR --shards N [--max-running K]
#       [--partition P] [--gres gpu:1] [--time T] [--work W] [--wait] [-- simlm-index build options]
#   scripts/slurm/index.sh --out DIR [--work W] --status
#
# DIR is the merged index. The shards and the jobs' logs go to W (default DIR.slurm, beside DIR):
# W/shards/000 ... and W/logs/. C, M, DIR and W must be on a filesystem every node sees.
#
# Running the same command again submits only what is missing: a shard whose folder holds a finished
# (committed) shard index is not built again, a shard still queued or running is left to its job, and
# a merge that can no longer run (a shard failed) is replaced. If everything is finished and merged it
# says so. W records the run's settings (collection, model, N, build options); another command with
# other settings is refused rather than mixed into the same shards.
#
# --status prints each shard's state (finished rows; rows done and the rate from its log) and the jobs.
# --wait returns when the merge ends, with its exit status (1 if it can never run: a shard failed).
#
# The binary: $SIMLM_BIN (the simlm-index file or the folder holding it, e.g. target/release), else
# simlm-index on PATH. It must be reachable at the same path on every node.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"

die() {
  echo "index.sh: error: $*" >&2
  exit 1
}
usage() {
  sed -n '6,8p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 2
}

collection="" model="" out="" shards="" max_running="" partition="" gres="" time_limit=""
work="" wait=0 status=0
build_opts=()
while [ $# -gt 0 ]; do
  case "$1" in
    --collection | --model | --out | --shards | --max-running | --partition | --gres | --time | --work)
      [ $# -ge 2 ] || die "$1 needs a value"
      case "$1" in
        --collection) collection=$2 ;;
        --model) model=$2 ;;
        --out) out=$2 ;;
        --shards) shards=$2 ;;
        --max-running) max_running=$2 ;;
        --partition) partition=$2 ;;
        --gres) gres=$2 ;;
        --time) time_limit=$2 ;;
        --work) work=$2 ;;
      esac
      shift 2
      ;;
    --wait) wait=1 && shift ;;
    --status) status=1 && shift ;;
    --) shift && build_opts=("$@") && break ;;
    -h | --help) usage ;;
    *) die "unknown option $1 (simlm-index build options go after --)" ;;
  esac
done

[ -n "$out" ] || die "--out DIR is required (the merged index folder)"
out="$(realpath -m -- "${out%/}")"
work="$(realpath -m -- "${work:-$out.slurm}")"
case "$work/" in "$out"/*) die "--work $work is inside --out $out: the index folder holds only the index" ;; esac
digits_for() { # N -> width of shard folder names
  local d=${#1}
  [ "$d" -lt 3 ] && d=3
  echo "$d"
}
shard_dir() { # i -> folder of shard i
  printf "%s/shards/%0$(digits_for "$shards")d" "$work" "$1"
}

command -v squeue >/dev/null 2>&1 && command -v sbatch >/dev/null 2>&1 \
  || die "sbatch/squeue not found: run this on a SLURM login node (for the local test cluster:" \
    "scripts/slurm/local-cluster.sh up, then the export SLURM_CONF=... line it prints)"

# The simlm-index binary.
if [ -n "${SIMLM_BIN:-}" ]; then
  bin=$SIMLM_BIN
  [ -d "$bin" ] && bin="$bin/simlm-index"
else
  bin="$(command -v simlm-index || true)"
  [ -n "$bin" ] || die "simlm-index not found: set SIMLM_BIN to the binary or its folder (e.g. target/release)"
fi
bin="$(realpath -m -- "$bin")"
[ -f "$bin" ] && [ -x "$bin" ] || die "$bin: no simlm-index binary there (SIMLM_BIN=${SIMLM_BIN:-unset})"
"$bin" --version >/dev/null 2>&1 || die "$bin does not run here (\`$bin --version\` failed)"

# A recorded job: `kind id` lines in W/jobs, the latest last.
recorded() { # kind -> ids, one a line
  [ -f "$work/jobs" ] && awk -v k="$1" '$1 == k { print $2 }' "$work/jobs" || true
}
# Array tasks and jobs of this run the controller knows: "id state reason" lines (array tasks as A_i),
# ended ones too while the controller remembers them.
known() {
  local ids
  ids=$( { recorded array; recorded merge; } | paste -sd, -)
  [ -n "$ids" ] || return 0
  # An id the controller no longer knows makes squeue fail when it is the only one: ask one at a time.
  local id
  for id in ${ids//,/ }; do
    squeue -h -r -t all -j "$id" -o '%i %T %r' 2>/dev/null || true
  done
}
# Those still queued or running.
ended='(COMPLETED|FAILED|CANCELLED|TIMEOUT|OUT_OF_MEMORY|NODE_FAIL|BOOT_FAIL|DEADLINE|PREEMPTED|SPECIAL_EXIT|REVOKED)'
queued() {
  known | grep -Ev "^[^ ]+ $ended " || true
}

# A finished shard: its folder holds a committed manifest of shard i of N (read through
# `simlm-index info`, which checks the manifest's own checksum).
shard_finished() { # i -> 0 if finished
  local d j
  d="$(shard_dir "$1")"
  [ -f "$d/manifest.json" ] || return 1
  j="$("$bin" info "$d" 2>/dev/null | tr -d ' \n')" || return 1
  j="$(grep -o '"shard":{[^}]*}' <<<"$j")" || return 1
  grep -q "\"index\":$1," <<<"$j" && grep -q "\"count\":$shards," <<<"$j"
}
shard_rows() { # i -> passages in a finished shard
  "$bin" info "$(shard_dir "$1")" 2>/dev/null | tr -d ' \n' | grep -o '"count":[0-9]*' | head -n1 | cut -d: -f2
}

show_status() {
  [ -f "$work/settings" ] || die "$work: no run here (no settings file); give the --out (and --work) of a run"
  shards="$(sed -n 's/^shards=//p' "$work/settings")"
  echo "run: $work  (index: $out)"
  local q i d p rows total rate
  q="$(known)"
  for ((i = 0; i < shards; i++)); do
    d="$(shard_dir "$i")"
    if shard_finished "$i"; then
      echo "shard $i: finished, $(shard_rows "$i") passages  ($d)"
      continue
    fi
    # An unfinished build: rows done from its progress record; the total, and the rate of the
    # current attempt (rows since it began or resumed, to the record's last update), from its log.
    rows="" total="" rate=""
    p="$(ls -d "$d"/gen*/build.progress.json 2>/dev/null | tail -n1 || true)"
    [ -n "$p" ] && rows="$(grep -o '"rows_done": *[0-9]*' "$p" | grep -o '[0-9]*$' || true)"
    local log attempt began from upd
    log="$(ls -t "$work"/logs/shard-"$i"-*.log 2>/dev/null | head -n1 || true)"
    if [ -n "$log" ]; then
      attempt="$(awk '/^== shard/ { a = "" } { a = a $0 "\n" } END { printf "%s", a }' "$log")"
      total="$(grep -o 'encoding: started ([0-9]*' <<<"$attempt" | grep -o '[0-9]*$' || true)"
      began="$(sed -n 's/^== shard.* began \([0-9]*\),.*/\1/p' <<<"$attempt")"
      from="$(grep -o 'resuming after [0-9]*' <<<"$attempt" | grep -o '[0-9]*$' || echo 0)"
      upd="$(stat -c %Y "$p" 2>/dev/null || true)"
      if [ -n "$rows" ] && [ -n "$began" ] && [ -n "$upd" ] && [ "$upd" -gt "$began" ] \
        && [ "$rows" -gt "$from" ]; then
        rate="$(awk -v r=$((rows - from)) -v s=$((upd - began)) -v left=$((${total:-$rows} - rows)) \
          'BEGIN { printf "%.1f passages/s, eta %.0f s", r / s, left / (r / s) }')"
      fi
    fi
    local state
    state="$(awk -v t="_$i" 'substr($1, length($1) - length(t) + 1) == t { print $2 ($3 == "None" ? "" : " (" $3 ")") }' <<<"$q" | tail -n1)"
    [ -z "$state" ] && state="not queued${log:+ (see its log)}" && [ -z "$log" ] && state="not submitted"
    echo "shard $i: $state${rows:+, $rows${total:+/$total} passages encoded}${rate:+ ($rate)}${log:+  (log $log)}"
  done
  if [ -f "$work/merge.done" ] && [ -f "$out/manifest.json" ]; then
    echo "merge: finished ($out)"
  else
    local m
    m="$(recorded merge | tail -n1)"
    if [ -n "$m" ]; then
      echo "merge: job $m $(awk -v m="$m" '$1 == m { print $2 ($3 == "None" ? "" : " (" $3 ")") }' <<<"$q" | tail -n1)"
    else
      echo "merge: not submitted"
    fi
  fi
}

if [ "$status" -eq 1 ]; then
  show_status
  exit 0
fi

[ -n "$collection" ] || die "--collection C is required"
[ -n "$model" ] || die "--model M is required (a model folder on the shared filesystem)"
[ -n "$shards" ] || die "--shards N is required"
[[ "$shards" =~ ^[1-9][0-9]*$ ]] || die "--shards $shards: expected a whole number of at least 1"
[ -z "$max_running" ] || [[ "$max_running" =~ ^[1-9][0-9]*$ ]] \
  || die "--max-running $max_running: expected a whole number of at least 1"
[ -f "$collection" ] && [ -r "$collection" ] || die "--collection $collection: no readable file there"
collection="$(realpath -- "$collection")"
if [ -e "$model" ]; then
  model="$(realpath -- "$model")"
else
  case "$model" in
    ./* | ../* | /*) die "--model $model: no such folder" ;;
  esac
  echo "index.sh: note: --model $model is not a folder here: every node will fetch it from the hub" \
    "(put the model folder on the shared filesystem instead on a cluster without internet access)" >&2
fi
for v in "$collection" "$model" "$out" "$work" "$bin"; do
  case "$v" in *,*) die "$v: a path with a comma cannot be passed to sbatch --export" ;; esac
done

# Graph options are the merge's: the shards are built without a graph. A titles file is named by its
# absolute path, as the nodes see it.
merge_opts=()
for ((k = 0; k < ${#build_opts[@]}; k++)); do
  o=${build_opts[k]}
  case "$o" in
    --titles=*) build_opts[k]="--titles=$(realpath -m -- "${o#--titles=}")" ;;
    --titles) [ $((k + 1)) -lt ${#build_opts[@]} ] && build_opts[k + 1]="$(realpath -m -- "${build_opts[k + 1]}")" ;;
    --no-hnsw | --hnsw-m=* | --m=* | --ef-construction=*) merge_opts+=("$o") ;;
    --hnsw-m | --m | --ef-construction) merge_opts+=("$o" "${build_opts[k + 1]:-}") ;;
    --shard | --shard=* | --out | --out=* | --collection | --collection=* | --model | --model=*)
      die "$o after --: index.sh sets the shard, collection, model and output itself" ;;
  esac
done
quote() { [ $# -eq 0 ] || printf '%q ' "$@"; }
build_q="$(quote "${build_opts[@]}")"
merge_q="$(quote "${merge_opts[@]}")"

# The run's settings: a run folder holds shards of one command only.
settings="collection=$collection
model=$model
shards=$shards
build options=$build_q"
if [ -f "$work/settings" ] && [ "$(cat "$work/settings")" != "$settings" ]; then
  echo "index.sh: error: $work holds a run with other settings:" >&2
  diff <(cat "$work/settings") <(echo "$settings") | sed -n 's/^</  there:/p; s/^>/  asked:/p' >&2
  echo "  use another --out (or --work), or remove $work to start over" >&2
  exit 1
fi
merged() { [ -f "$work/merge.done" ] && [ -f "$out/manifest.json" ]; }
if merged; then
  echo "index.sh: all $shards shards are finished and merged into $out: nothing to submit"
  echo "  (simlm-index info $out; remove $out and $work/merge.done to merge again)"
  exit 0
fi
# The merge writes only into a new or empty folder or an index folder; one that holds a finished index
# is not this run's to replace. Refused now rather than after the encoding.
if [ -e "$out" ]; then
  [ -d "$out" ] || die "--out $out exists and is not a folder"
  [ -f "$out/manifest.json" ] && die "$out already holds an index that this run did not merge: give another --out"
  if [ -n "$(ls -A "$out")" ] && [ ! -f "$out/simlm-index.lock" ] && ! compgen -G "$out/gen[0-9]*" >/dev/null; then
    die "--out $out holds files that are not an index: give a new or empty folder"
  fi
fi
mkdir -p "$work/shards" "$work/logs"
[ -f "$work/settings" ] || { echo "$settings" >"$work/settings.tmp" && mv "$work/settings.tmp" "$work/settings"; }

# What each shard needs.
finished=() running=() missing=() deps=()
q="$(queued)"
for ((i = 0; i < shards; i++)); do
  if shard_finished "$i"; then
    finished+=("$i")
    continue
  fi
  # A task of an earlier submission still queued or running keeps its shard.
  task="$(awk -v t="_$i" 'substr($1, length($1) - length(t) + 1) == t { print $1 }' <<<"$q" | tail -n1)"
  if [ -n "$task" ]; then
    running+=("$task")
  else
    missing+=("$i")
  fi
done

ranges() { # ascending numbers -> "0-3,5,7-8"
  awk 'BEGIN { RS = " " } NF { n = $1 + 0; if (s == "") { s = n; p = n } else if (n == p + 1) { p = n }
       else { printf "%s%s", sep, (s == p ? s : s "-" p); sep = ","; s = n; p = n } }
       END { if (s != "") printf "%s%s", sep, (s == p ? s : s "-" p) }' <<<"$*"
}

export SIMLM_INDEX="$bin" SIMLM_COLLECTION="$collection" SIMLM_MODEL="$model" SIMLM_SHARDS="$shards"
export SIMLM_WORK="$work" SIMLM_OUT="$out" SIMLM_BUILD_OPTS="$build_q" SIMLM_MERGE_OPTS="$merge_q"
common=(--parsable)
[ -n "$partition" ] && common+=(--partition "$partition")
[ -n "$time_limit" ] && common+=(--time "$time_limit")

array_id=""
if [ ${#missing[@]} -gt 0 ]; then
  list="$(ranges "${missing[@]}")"
  args=("${common[@]}" --array "$list${max_running:+%$max_running}" --requeue --open-mode append
    --output "$work/logs/shard-%a-%A.log"
    --export "ALL,SIMLM_INDEX,SIMLM_COLLECTION,SIMLM_MODEL,SIMLM_SHARDS,SIMLM_WORK,SIMLM_BUILD_OPTS")
  [ -n "$gres" ] && args+=(--gres "$gres")
  array_id="$(sbatch "${args[@]}" "$here/shard.sbatch")" || die "sbatch refused the shard array (above)"
  array_id="${array_id%%;*}"
  echo "array $array_id $list" >>"$work/jobs"
fi

# The merge: kept if one of this run is queued and can still run with nothing new to wait for;
# otherwise (a shard failed, or new shards were submitted) replaced.
merge_id="" merge_kept=0
old_merge="$(recorded merge | tail -n1)"
if [ -n "$old_merge" ]; then
  old_state="$(awk -v m="$old_merge" '$1 == m { print $2 " " $3 }' <<<"$q")"
  if [ -n "$old_state" ]; then
    if [ -z "$array_id" ] && [ "${old_state#* }" != "DependencyNeverSatisfied" ]; then
      merge_id=$old_merge merge_kept=1
    else
      scancel "$old_merge" 2>/dev/null || true
      echo "index.sh: cancelled the earlier merge job $old_merge ($old_state): a new one replaces it"
    fi
  fi
fi
if [ -z "$merge_id" ]; then
  [ -n "$array_id" ] && deps+=("$array_id")
  deps+=("${running[@]}")
  margs=("${common[@]}" --requeue --open-mode append --output "$work/logs/merge-%j.log"
    --export "ALL,SIMLM_INDEX,SIMLM_SHARDS,SIMLM_WORK,SIMLM_OUT,SIMLM_MERGE_OPTS")
  if [ ${#deps[@]} -gt 0 ]; then
    margs+=(--dependency "afterok:$(IFS=:; echo "${deps[*]}")")
  fi
  merge_id="$(sbatch "${margs[@]}" "$here/merge.sbatch")" || die "sbatch refused the merge job (above)"
  merge_id="${merge_id%%;*}"
  echo "merge $merge_id" >>"$work/jobs"
fi

# What was done, and how to follow it.
echo "run folder: $work  (settings, shards/, logs/)"
[ ${#finished[@]} -gt 0 ] && echo "shards finished before: $(ranges "${finished[@]}")"
[ ${#running[@]} -gt 0 ] && echo "shards still queued or running from before: ${running[*]}"
[ -n "$array_id" ] && echo "shards submitted: job array $array_id, tasks $(ranges "${missing[@]}") of 0-$((shards - 1))${max_running:+, at most $max_running at a time}"
if [ "$merge_kept" -eq 1 ]; then
  echo "merge: job $merge_id -> $out (submitted before; it runs after every shard succeeds)"
else
  echo "merge: job $merge_id -> $out$([ ${#deps[@]} -gt 0 ] && echo " (after every shard succeeds)")"
fi
ids="${array_id:+$array_id,}$merge_id"
echo "follow:"
echo "  squeue -j $ids -o '%i %T %r %N'     (a merge PENDING for DependencyNeverSatisfied: a shard failed;"
echo "                                          read its log, then run this command again: only what is missing is submitted)"
echo "  $0 --out $out$( [ "$work" != "$out.slurm" ] && echo " --work $work") --status"
echo "  simlm-index info $(shard_dir 0)     (a finished shard)      logs: $work/logs/"

[ "$wait" -eq 1 ] || exit 0

# --wait: until the merge leaves the queue, or can never run.
last=""
while :; do
  s="$(squeue -h -j "$merge_id" -o '%T %r' 2>/dev/null | grep -Ev "^$ended " || true)"
  [ -z "$s" ] && break
  if [ "${s#* }" = "DependencyNeverSatisfied" ]; then
    echo "index.sh: the merge (job $merge_id) can never run: a shard failed. Shards:" >&2
    show_status >&2
    echo "read the failed shard's log, then run the same command again (without --wait to return at once)" >&2
    exit 1
  fi
  done_now=0
  for ((i = 0; i < shards; i++)); do
    [ -f "$(shard_dir "$i")/manifest.json" ] && done_now=$((done_now + 1))
  done
  line="$done_now/$shards shards finished, merge ${s%% *}"
  [ "$line" != "$last" ] && echo "$(date +%T) $line" && last=$line
  sleep "${SIMLM_SLURM_POLL:-5}"
done
# The merge's exit status: from the controller while it remembers the job, else from accounting, else
# from what the merge leaves (merge.done is written only after it succeeded).
code=""
j="$(scontrol show job -o "$merge_id" 2>/dev/null || true)"
if [[ "$j" =~ JobState=([A-Z_]+).*ExitCode=([0-9]+):([0-9]+) ]]; then
  state=${BASH_REMATCH[1]} code=${BASH_REMATCH[2]}
  [ "${BASH_REMATCH[3]}" != 0 ] && [ "$code" = 0 ] && code=1
  [ "$state" != COMPLETED ] && [ "$code" = 0 ] && code=1
elif j="$(sacct -n -X -P -j "$merge_id" -o State,ExitCode 2>/dev/null | head -n1)" && [ -n "$j" ]; then
  state=${j%%|*} code=${j#*|} code=${code%%:*}
  [ "$state" != COMPLETED ] && [ "$code" = 0 ] && code=1
else
  state=unknown
  merged && code=0 || code=1
fi
if [ "$code" = 0 ] && merged; then
  echo "index.sh: merged into $out (job $merge_id)"
else
  echo "index.sh: the merge (job $merge_id) ended $state, exit status $code; log: $work/logs/merge-$merge_id.log" >&2
  [ "$code" = 0 ] && code=1
fi
exit "$code"
