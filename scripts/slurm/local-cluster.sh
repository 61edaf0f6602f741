#!/usr/bin/env bash
# A two-node SLURM cluster on this one machine, for the tests and for trying scripts/slurm/index.sh:
# munged with its own key, slurmctld, and two slurmd (nodes n1 and n2, each 1 CPU and one declared
# GPU) on 127.0.0.1 with their own ports. Not for production.
#
#   scripts/slurm/local-cluster.sh up       install the packages if missing (root), start the daemons
#   scripts/slurm/local-cluster.sh status   sinfo and squeue
#   scripts/slurm/local-cluster.sh down     stop the daemons this script started (by their PID files)
#
# Everything (configuration, keys, state, logs, PID files) lives in one folder: $SIMLM_SLURM_DIR, by
# default target/slurm-local in the checkout. Ports: $SIMLM_SLURM_PORT (slurmctld, default 16817) and
# the two after it (n1, n2). Clients find the cluster through SLURM_CONF, which `up` prints.
#
# Needs root (slurmd runs jobs as their users; munged runs as the munge user) and, when the packages
# are missing, apt-get. Without them `up` exits 3 with the reason (the tests then report SKIPPED).
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
dir="${SIMLM_SLURM_DIR:-$root/target/slurm-local}"
port="${SIMLM_SLURM_PORT:-16817}"
conf="$dir/etc/slurm.conf"
# The time a requeued job waits before it may start again is the credential lifetime (AuthInfo
# cred_expire, 120 s by default); a short one here makes a node failure quick to test.
cred_expire="${SIMLM_SLURM_CRED_EXPIRE:-10}"

usage() {
  echo "usage: $0 up|down|status   (state in \$SIMLM_SLURM_DIR, default target/slurm-local)" >&2
  exit 2
}

# Exit status 3: this machine cannot run the cluster (no SLURM and no way to install it).
cannot() {
  echo "local-cluster: cannot start: $*" >&2
  exit 3
}

alive() { # PID file -> whether its process runs
  [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null
}

install_packages() {
  local missing=()
  for b in slurmctld slurmd sbatch munged; do
    command -v "$b" >/dev/null 2>&1 || missing+=("$b")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  if [ "$(id -u)" -ne 0 ]; then
    cannot "${missing[*]} not installed, and installing them needs root"
  fi
  command -v apt-get >/dev/null 2>&1 || cannot "${missing[*]} not installed and no apt-get here"
  echo "local-cluster: installing slurmd slurmctld slurm-client munge"
  if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
    --no-install-recommends slurmd slurmctld slurm-client munge; } >"$dir/apt.log" 2>&1; then
    tail -n 20 "$dir/apt.log" >&2
    cannot "apt-get could not install the packages (log: $dir/apt.log)"
  fi
}

write_config() {
  local gpu_file=/dev/null
  # Any device file will do: SLURM only counts it and sets CUDA_VISIBLE_DEVICES for the job.
  [ -e /dev/tty1 ] && gpu_file=/dev/tty1
  mkdir -p "$dir/etc" "$dir/state" "$dir/log" "$dir/run"
  cat >"$conf" <<EOF
# Written by scripts/slurm/local-cluster.sh: two nodes on this machine, all state under $dir.
ClusterName=simlm-local
SlurmctldHost=localhost
SlurmctldPort=$port
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$dir/munge/munged.socket,cred_expire=$cred_expire
StateSaveLocation=$dir/state/ctld
SlurmdSpoolDir=$dir/state/%n
SlurmctldPidFile=$dir/run/slurmctld.pid
SlurmdPidFile=$dir/run/slurmd-%n.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SwitchType=switch/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
# A node that stopped answering takes jobs again when it is back; one set down by hand
# (scontrol update nodename=n2 state=down) stays down until state=resume.
ReturnToService=1
# Short timers, so that tests do not wait on the defaults (60 s between scheduling passes, 30 s
# kill wait, 300 s for a lost node).
SchedulerParameters=sched_interval=2,bf_interval=2
KillWait=5
SlurmdTimeout=30
MinJobAge=600
GresTypes=gpu
NodeName=n1 NodeHostname=localhost NodeAddr=127.0.0.1 Port=$((port + 1)) CPUs=1 Gres=gpu:1 State=UNKNOWN
NodeName=n2 NodeHostname=localhost NodeAddr=127.0.0.1 Port=$((port + 2)) CPUs=1 Gres=gpu:1 State=UNKNOWN
PartitionName=local Nodes=n1,n2 Default=YES MaxTime=INFINITE State=UP
EOF
  echo "# No cgroup plugin in use (ProctrackType=proctrack/linuxproc, TaskPlugin=task/none)." \
    >"$dir/etc/cgroup.conf"
  cat >"$dir/etc/gres.conf" <<EOF
NodeName=n1 Name=gpu File=$gpu_file
NodeName=n2 Name=gpu File=$gpu_file
EOF
}

start_munge() {
  local m="$dir/munge"
  alive "$m/munged.pid" && return 0
  # munged insists on its own folder (owned by munge, not writable by others) and a private key.
  mkdir -p "$m/key"
  if [ ! -s "$m/key/munge.key" ]; then
    head -c 1024 /dev/urandom >"$m/key/munge.key"
  fi
  chown -R munge:munge "$m"
  chmod 755 "$m"
  chmod 700 "$m/key"
  chmod 400 "$m/key/munge.key"
  runuser -u munge -- munged -S "$m/munged.socket" --key-file="$m/key/munge.key" \
    --log-file="$m/munged.log" --pid-file="$m/munged.pid" --seed-file="$m/munged.seed" \
    || { tail -n 5 "$m/munged.log" >&2 2>/dev/null; cannot "munged did not start (log: $m/munged.log)"; }
}

wait_for() { # seconds, description, command...
  local t=$1 what=$2
  shift 2
  for _ in $(seq $((t * 5))); do
    "$@" >/dev/null 2>&1 && return 0
    sleep 0.2
  done
  echo "local-cluster: $what did not come up within $t s; logs in $dir/log" >&2
  tail -n 5 "$dir"/log/*.log >&2 || true
  exit 1
}

nodes_idle() {
  [ "$(sinfo -h -N -o '%N %t' | grep -c ' idle$')" -eq 2 ]
}

up() {
  mkdir -p "$dir"
  install_packages
  [ "$(id -u)" -eq 0 ] || cannot "slurmd and munged need root here"
  id munge >/dev/null 2>&1 || cannot "no munge user (is the munge package installed?)"
  export SLURM_CONF="$conf"
  if alive "$dir/run/slurmctld.pid" && alive "$dir/run/slurmd-n1.pid" && alive "$dir/run/slurmd-n2.pid" \
    && alive "$dir/munge/munged.pid"; then
    echo "local-cluster: already up in $dir"
  else
    # A partly running cluster (one daemon died) is brought whole: the configuration is rewritten only
    # while no slurm daemon of it runs.
    if ! alive "$dir/run/slurmctld.pid" && ! alive "$dir/run/slurmd-n1.pid" \
      && ! alive "$dir/run/slurmd-n2.pid"; then
      write_config
    fi
    start_munge
    alive "$dir/run/slurmctld.pid" || slurmctld -f "$conf"
    wait_for 20 slurmctld scontrol ping
    for n in n1 n2; do
      alive "$dir/run/slurmd-$n.pid" || slurmd -f "$conf" -N "$n"
    done
  fi
  # A node left down or drained (by hand, or by a test stopped half-way) is resumed once it answers.
  local n resumed=""
  for _ in $(seq 100); do
    nodes_idle && break
    for n in $(sinfo -h -N -o '%N %t' | awk '$2 ~ /^(down|drain|drng|fail)$/ { print $1 }'); do
      case " $resumed " in *" $n "*) continue ;; esac
      echo "local-cluster: resuming $n ($(sinfo -h -n "$n" -o '%t, reason: %E'))"
      scontrol update nodename="$n" state=resume || true
      resumed="$resumed $n"
    done
    sleep 0.2
  done
  wait_for 30 "both nodes" nodes_idle
  sinfo
  echo
  echo "export SLURM_CONF=$conf"
}

down() {
  local stopped=0
  # The jobs of this cluster go first: their processes (under slurmstepd) would outlive slurmd.
  if alive "$dir/run/slurmctld.pid" && [ -f "$conf" ]; then
    export SLURM_CONF="$conf"
    local jobs
    jobs="$(squeue -h -o %A 2>/dev/null | sort -u | paste -sd' ' -)"
    if [ -n "$jobs" ]; then
      echo "local-cluster: cancelling the cluster's jobs: $jobs"
      # shellcheck disable=SC2086
      scancel $jobs 2>/dev/null || true
      for _ in $(seq 100); do
        [ -z "$(squeue -h -o %A 2>/dev/null)" ] && break
        sleep 0.2
      done
    fi
  fi
  for p in "$dir/run/slurmd-n1.pid" "$dir/run/slurmd-n2.pid" "$dir/run/slurmctld.pid" \
    "$dir/munge/munged.pid"; do
    if alive "$p"; then
      local pid
      pid="$(cat "$p")"
      kill "$pid"
      for _ in $(seq 50); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
      done
      if kill -0 "$pid" 2>/dev/null; then
        echo "local-cluster: $(basename "$p" .pid) (PID $pid) did not stop within 5 s; sending KILL" >&2
        kill -9 "$pid" 2>/dev/null || true
      fi
      stopped=$((stopped + 1))
    fi
  done
  echo "local-cluster: stopped $stopped daemon(s) of $dir"
}

status() {
  if [ ! -f "$conf" ] || ! alive "$dir/run/slurmctld.pid"; then
    echo "local-cluster: not running ($dir)"
    return 1
  fi
  export SLURM_CONF="$conf"
  sinfo
  echo
  squeue -o '%.10i %.9P %.14j %.8T %.10M %.6D %R'
  echo
  echo "export SLURM_CONF=$conf"
}

[ $# -eq 1 ] || usage
case "$1" in
  up) up ;;
  down) down ;;
  status) status ;;
  *) usage ;;
esac
