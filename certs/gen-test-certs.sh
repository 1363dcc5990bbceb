#!/usr/bin/env bash
#
# gen-test-certs.sh OUTDIR - the certificates and keys relabel's tests use.
#
# Everything here is TEST-ONLY: the private keys are written next to the
# certificates, unprotected, and the CA is one nobody else trusts.  Never
# point a production listener at these files.
#
# Made in OUTDIR (ECDSA P-256 unless noted):
#   ca.crt ca.key                 root "relabel test CA"
#   brand.crt brand.key           smtp.example.com + IP 127.0.0.1, by the test CA
#   brand-chain.crt               brand.crt followed by ca.crt (chain-file test)
#   brand-rsa.crt brand-rsa.key   RSA-2048 leaf for smtp.example.com, by the test CA
#   brand-b.crt brand-b.key       mail.brand-b.test + *.brand-b.test, by the test CA
#   brand-c.crt brand-c.key       smtp.brand-c.test, by the test CA
#   upstream.crt upstream.key     smtp.mailgun.org, by the test CA
#   wrongname.crt wrongname.key   smtp.other.org, by the test CA
#   expired.crt expired.key       smtp.mailgun.org, by the test CA, valid 2020-2021 only
#   other-ca.crt other-ca.key     root "relabel other CA" (not trusted by the tests)
#   otherca.crt otherca.key       smtp.mailgun.org, by "relabel other CA"
#   unknownca.crt unknownca.key   smtp.mailgun.org, self-signed (issuer known to nobody)
#   mismatch.key                  a key that belongs to no certificate
#
# Idempotent: when OUTDIR already holds a complete set still valid for
# another 30 days, nothing is done.  A new set is built in a temporary
# directory and moved into place only when complete, so an interrupted run
# never leaves a half-made set that looks finished.
set -euo pipefail

if [ $# -ne 1 ]; then
    echo "usage: $0 OUTDIR" >&2
    exit 2
fi
out=$1
stamp=$out/.complete

# Bump when the set of files or their contents change, so old sets in build
# directories are replaced rather than reused.
version=2

# The leaves (two years) expire before the CA (ten): checking one of them
# is enough, as all are made together.
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$version" ] &&
    openssl x509 -in "$out/brand.crt" -noout -checkend $((30 * 86400)) >/dev/null 2>&1; then
    echo "test certificates in $out are up to date"
    exit 0
fi

umask 077
mkdir -p "$out"
tmp=$(mktemp -d "$out/.tmp.XXXXXX")
trap 'rm -rf "$tmp"' EXIT

# One small config file serves `req` (no prompts, names from -subj), the
# per-certificate extensions (picked with -extensions, SAN from the
# environment) and `openssl ca` for the expired certificate, whose dates
# `x509 -days` cannot put in the past.
cat >"$tmp/openssl.cnf" <<CNF
[ req ]
distinguished_name = req_dn
prompt = no
[ req_dn ]
CN = unused

[ v3_ca ]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash

[ v3_leaf ]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = \${ENV::SAN}
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid

[ v3_leaf_rsa ]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = \${ENV::SAN}
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid

[ ca ]
default_ca = test_ca
[ test_ca ]
database = $tmp/index.txt
new_certs_dir = $tmp
serial = $tmp/serial
default_md = sha256
policy = policy_any
unique_subject = no
copy_extensions = none
[ policy_any ]
commonName = supplied
CNF
export OPENSSL_CONF=$tmp/openssl.cnf
export SAN=DNS:unused

ec_key() {
    openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null
}

# root NAME CN: a self-signed CA certificate, ten years.
root() {
    ec_key "$tmp/$1.key"
    openssl req -new -x509 -key "$tmp/$1.key" -subj "/CN=$2" -days 3650 -sha256 \
        -extensions v3_ca -out "$tmp/$1.crt"
}

# leaf NAME CN SAN CA [rsa]: a server certificate signed by CA, two years.
leaf() {
    local name=$1 cn=$2 san=$3 ca=$4 kind=${5:-ec} ext=v3_leaf
    if [ "$kind" = rsa ]; then
        openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 \
            -out "$tmp/$name.key" 2>/dev/null
        ext=v3_leaf_rsa
    else
        ec_key "$tmp/$name.key"
    fi
    openssl req -new -key "$tmp/$name.key" -subj "/CN=$cn" -out "$tmp/$name.csr"
    SAN=$san openssl x509 -req -in "$tmp/$name.csr" -CA "$tmp/$ca.crt" -CAkey "$tmp/$ca.key" \
        -set_serial "0x$(openssl rand -hex 8)" -days 730 -sha256 \
        -extfile "$OPENSSL_CONF" -extensions "$ext" -out "$tmp/$name.crt" 2>/dev/null
}

root ca "relabel test CA"
root other-ca "relabel other CA"

leaf brand smtp.example.com "DNS:smtp.example.com,IP:127.0.0.1" ca
leaf brand-rsa smtp.example.com "DNS:smtp.example.com,IP:127.0.0.1" ca rsa
leaf brand-b mail.brand-b.test "DNS:mail.brand-b.test,DNS:*.brand-b.test" ca
leaf brand-c smtp.brand-c.test "DNS:smtp.brand-c.test" ca
leaf upstream smtp.mailgun.org "DNS:smtp.mailgun.org" ca
leaf wrongname smtp.other.org "DNS:smtp.other.org" ca
leaf otherca smtp.mailgun.org "DNS:smtp.mailgun.org" other-ca
cat "$tmp/brand.crt" "$tmp/ca.crt" >"$tmp/brand-chain.crt"

# Self-signed leaf: its issuer is itself, which no trust store holds.
ec_key "$tmp/unknownca.key"
SAN=DNS:smtp.mailgun.org openssl req -new -x509 -key "$tmp/unknownca.key" \
    -subj "/CN=smtp.mailgun.org" -days 730 -sha256 -extensions v3_leaf -out "$tmp/unknownca.crt"

# Expired: issued by the trusted CA, valid only in 2020.
ec_key "$tmp/expired.key"
openssl req -new -key "$tmp/expired.key" -subj "/CN=smtp.mailgun.org" -out "$tmp/expired.csr"
: >"$tmp/index.txt"
echo 01 >"$tmp/serial"
SAN=DNS:smtp.mailgun.org openssl ca -batch -notext -cert "$tmp/ca.crt" -keyfile "$tmp/ca.key" \
    -in "$tmp/expired.csr" -startdate 20200101000000Z -enddate 20210101000000Z \
    -extfile "$OPENSSL_CONF" -extensions v3_leaf -out "$tmp/expired.crt" 2>/dev/null

ec_key "$tmp/mismatch.key"

files="ca.crt ca.key other-ca.crt other-ca.key brand.crt brand.key brand-chain.crt
    brand-rsa.crt brand-rsa.key brand-b.crt brand-b.key brand-c.crt brand-c.key
    upstream.crt upstream.key wrongname.crt wrongname.key
    expired.crt expired.key otherca.crt otherca.key unknownca.crt unknownca.key mismatch.key"
rm -f "$stamp"
for f in $files; do
    case $f in
    *.crt) chmod 644 "$tmp/$f" ;;
    esac
    mv -f "$tmp/$f" "$out/$f"
done
echo "$version" >"$stamp"
echo "test certificates written to $out:" $files
