#!/usr/bin/env bash
# Serves a freshly trained model on loopback and runs tools/serve-abuse.py against it: no good request
# may fail while slow clients, oversized and compressed bodies, malformed requests and bursts hit the
# server. Run by ctest (Serve.AbuseScriptFindsNoFailedGoodRequest); FRESHREC_BUILD_DIR names the build.
set -euo pipefail
cd "$(dirname "$0")/.."
build="${FRESHREC_BUILD_DIR:-build}"
python="${PYTHON:-.venv/bin/python}"
[[ -x "$python" ]] || python=python3
work="$(mktemp -d)"
server=""
cleanup() {
  [[ -n "$server" ]] && kill "$server" 2>/dev/null && wait "$server" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT

"$build/freshrec" --log-level warn train -c configs/demo.yaml train.epochs=1 train.output_dir="$work/train" >/dev/null
"$build/freshrec" --log-level warn export --checkpoint "$work/train/best.pt" --publish "$work/models" >/dev/null
"$build/freshrec" --log-level warn serve --models "$work/models" --port 0 --header-timeout-ms 3000 >"$work/serve.out" &
server=$!
port=""
for _ in $(seq 1 600); do
  port="$(sed -n 's/^listening on port \([0-9]*\)$/\1/p' "$work/serve.out")"
  [[ -n "$port" ]] && break
  kill -0 "$server" 2>/dev/null || { echo "serve-abuse-check: the server did not start" >&2; exit 1; }
  sleep 0.1
done
[[ -n "$port" ]] || { echo "serve-abuse-check: the server printed no port within 60 s" >&2; exit 1; }
"$python" tools/serve-abuse.py --port "$port" --seconds 15 --history 12,45,7
kill -0 "$server" || { echo "serve-abuse-check: the server died" >&2; exit 1; }
