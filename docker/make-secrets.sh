#!/usr/bin/env bash
# Writes the compose stack's two secrets, once, for local use:
#   secrets/node_secret    the shared secret between gateway and node
#   secrets/gateway_token  the bearer token clients present to the gateway
# Existing files are kept, so running it again changes nothing. The folder is
# private to you (0700); the files are 0644 because compose mounts them as
# they are, and the services read them as an unprivileged user of their own.
set -euo pipefail

dir="${1:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/secrets}"
mkdir -p "$dir"
chmod 700 "$dir"
# Never committed, whatever the repository's own .gitignore says.
[ -e "$dir/.gitignore" ] || echo '*' >"$dir/.gitignore"

for name in node_secret gateway_token; do
  if [ ! -s "$dir/$name" ]; then
    (umask 022 && head -c 32 /dev/urandom | base64 | tr -d '/+=\n' >"$dir/$name")
    echo "wrote $dir/$name"
  fi
done
