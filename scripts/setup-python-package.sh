#!/usr/bin/env bash
# Builds the Python package (python/: PyO3 + the numpy crate, built by maturin, one abi3 wheel for
# CPython >= 3.9) and installs it into .venv, with pytest for its tests (python/tests). The first build
# compiles the engine's dependencies in release mode (python/target, kept for the next builds); pip
# fetches maturin from PyPI for the build. Set CARGO_BUILD_JOBS to bound the build's cores.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
venv="$root/.venv"
"$root/scripts/setup-python.sh"
"$venv/bin/python" -c "import pytest" 2>/dev/null ||
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check pytest
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check "$root/python"
"$venv/bin/python" -c "import simlm; print('simlm', simlm.__version__, 'installed in $venv')"
