#!/usr/bin/env bash
# The search page in a real browser: starts `simlm-search serve` on a free loopback port, opens
# /?q=QUERY in headless Chromium (Debian's package: apt-get install chromium), which runs the search on
# load, and saves a screenshot of the ranked passages.
#   scripts/bench/screenshot_serve.sh INDEX_DIR "query text" OUT.png
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
index="$1"; query="$2"; out="$3"
bin="${SIMLM_BIN:-$root/target/release}"
chromium="$(command -v chromium || command -v chromium-browser || true)"
if [ -z "$chromium" ]; then
  echo "no chromium: install Debian's package (apt-get install chromium)" >&2
  exit 2
fi
log="$(mktemp)"
"$bin/simlm-search" serve --index "$index" --addr 127.0.0.1:0 2> "$log" &
pid=$!
trap 'kill $pid 2>/dev/null || true; rm -f "$log"' EXIT
for _ in $(seq 100); do
  grep -q "http://" "$log" && break
  sleep 0.1
done
addr="$(grep -o 'http://[0-9.:]*' "$log" | head -1)"
[ -n "$addr" ] || { cat "$log" >&2; exit 1; }
url="$addr/?q=$(python3 -c 'import sys, urllib.parse; print(urllib.parse.quote(sys.argv[1]))' "$query")"
profile="$(mktemp -d)"
"$chromium" --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
  --disable-background-networking --disable-component-update --disable-sync \
  --user-data-dir="$profile" --window-size=1000,1300 --virtual-time-budget=15000 \
  --screenshot="$out" "$url" 2>/dev/null
rm -rf "$profile"
echo "screenshot of $url written to $out"
