#!/usr/bin/env bash
#
# gen-dev-cert.sh HOSTNAME OUTDIR - a self-signed certificate for trying
# relabel out (the README's quick start), never for production.
#
# Writes OUTDIR/HOSTNAME.crt (ECDSA P-256, subjectAltName = HOSTNAME, one
# year) and OUTDIR/HOSTNAME.key (mode 600).  Does nothing when both exist,
# so it is safe to run again; delete the two files to get a new pair.
# Clients will not trust this certificate unless told to (for example
# `swaks --tls-ca-path OUTDIR/HOSTNAME.crt`, or Python's cafile=).
set -euo pipefail

if [ $# -ne 2 ]; then
    echo "usage: $0 HOSTNAME OUTDIR" >&2
    exit 2
fi
host=$1
out=$2

# The name goes into file names and an openssl config: allow only what a
# host name or an IPv4/IPv6 literal can contain.
if ! [[ $host =~ ^[A-Za-z0-9]([A-Za-z0-9.:-]*[A-Za-z0-9])?$ ]] || [ ${#host} -gt 253 ]; then
    echo "$0: '$host' is not a host name" >&2
    exit 2
fi
if [[ $host =~ ^[0-9.]+$ || $host == *:* ]]; then
    san="IP:$host"
else
    san="DNS:$host"
fi

crt=$out/$host.crt
key=$out/$host.key
if [ -e "$crt" ] && [ -e "$key" ]; then
    echo "$crt and $key already exist; nothing to do"
    exit 0
fi

mkdir -p "$out"
tmp=$(mktemp -d "$out/.tmp.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
umask 077

openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$tmp/key" 2>/dev/null
# A leaf that signs itself: clients can pin it as their trust anchor.
# -config /dev/null keeps the system openssl.cnf (and its prompts) out.
openssl req -new -x509 -config /dev/null -key "$tmp/key" -subj "/CN=$host" -days 365 -sha256 \
    -addext "basicConstraints=critical,CA:FALSE" \
    -addext "keyUsage=critical,digitalSignature" \
    -addext "extendedKeyUsage=serverAuth" \
    -addext "subjectAltName=$san" \
    -out "$tmp/crt"
chmod 600 "$tmp/key"
chmod 644 "$tmp/crt"
mv -f "$tmp/key" "$key"
mv -f "$tmp/crt" "$crt"
echo "made $crt (self-signed, $san, valid 365 days)"
echo "made $key (mode 600)"
