#!/usr/bin/env bash
# Runs the beambridge gateway in front of BEAM nodes that run on their own,
# as the compose stack does:
#   gateway.sh --node HOST:PORT [--node HOST:PORT ...] [other `serve` options]
# or probes a running one: `gateway.sh health` exits 0 when /healthz answers
# 200, that is when at least one node is connected.
#
# Configuration comes from the environment:
#   BEAMBRIDGE_HOST (127.0.0.1; the image sets 0.0.0.0), BEAMBRIDGE_PORT (8765;
#     0 = any free port), BEAMBRIDGE_LOG_LEVEL (info),
#   BEAMBRIDGE_TOKEN or BEAMBRIDGE_TOKEN_FILE: the clients' bearer token
#     (neither: `serve` makes one up and prints it),
#   BEAM_BRIDGE_SECRET or BEAM_BRIDGE_SECRET_FILE: the nodes' shared secret,
#     read by `beambridge serve` itself.
set -euo pipefail

host="${BEAMBRIDGE_HOST:-127.0.0.1}"
port="${BEAMBRIDGE_PORT:-8765}"

if [ "${1:-}" = health ]; then
  case "$host" in
    0.0.0.0) probe=127.0.0.1 ;;
    ::) probe='[::1]' ;;
    *:*) probe="[$host]" ;;
    *) probe="$host" ;;
  esac
  exec python3 - "http://$probe:$port/healthz" <<'EOF'
import sys
import urllib.request

try:
    with urllib.request.urlopen(sys.argv[1], timeout=3) as reply:
        print(reply.read().decode())
except OSError as exc:  # URLError and HTTPError (503) included
    sys.exit(f"gateway health: {sys.argv[1]}: {exc}")
EOF
fi

token="${BEAMBRIDGE_TOKEN:-}"
if [ -z "$token" ] && [ -n "${BEAMBRIDGE_TOKEN_FILE:-}" ]; then
  if [ ! -r "$BEAMBRIDGE_TOKEN_FILE" ]; then
    echo "gateway.sh: cannot read BEAMBRIDGE_TOKEN_FILE=$BEAMBRIDGE_TOKEN_FILE" >&2
    exit 2
  fi
  token="$(tr -d '[:space:]' <"$BEAMBRIDGE_TOKEN_FILE")"
fi

args=(--host "$host" --port "$port")
if [ -n "$token" ]; then
  args+=(--token "$token")
fi

exec beambridge --log-level "${BEAMBRIDGE_LOG_LEVEL:-info}" serve "${args[@]}" "$@"
