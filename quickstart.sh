#!/usr/bin/env bash
# From a fresh Debian bookworm machine to a running relabel: dependencies,
# build, a development certificate if the configured one does not exist,
# then relabel in the foreground with config/relabel.ini (Ctrl-C stops it).
# Binding 25/465/587/2525 needs root (or CAP_NET_BIND_SERVICE).
set -euo pipefail
cd "$(dirname "$0")"

config=${1:-config/relabel.ini}
scripts/deps.sh
[ -d build ] || meson setup build --buildtype=release
ninja -C build

# The example config points at certs/dev/smtp.example.com.{crt,key}.
cert=$(sed -n 's/^[[:space:]]*cert[[:space:]]*=[[:space:]]*\([^;[:space:]]*\).*/\1/p' "$config" | head -1)
if [ -n "$cert" ] && [ ! -f "$cert" ]; then
    host=$(basename "$cert" .crt)
    certs/gen-dev-cert.sh "$host" "$(dirname "$cert")"
fi

build/relabel --check -c "$config"
exec build/relabel -c "$config"
