#!/usr/bin/env bash
# Installs relabel's build (and, with "test", test) dependencies from
# Debian's archive.  Does nothing when everything is already installed, so
# it is cheap to call before every build.
set -euo pipefail

build_pkgs=(build-essential meson ninja-build pkg-config libuv1-dev libmbedtls-dev libinih-dev libcrypt-dev
            openssl ca-certificates scdoc)
test_pkgs=(libcmocka-dev python3 python3-pytest python3-aiosmtpd swaks curl msmtp testssl.sh valgrind clang libclang-rt-14-dev clang-format cppcheck
           prometheus
           # tests/deploy: the container image (podman with runc, base images
           # from mmdebstrap), manifests, the systemd unit, man pages
           podman runc mmdebstrap python3-yaml systemd man-db)

pkgs=("${build_pkgs[@]}")
[ "${1:-}" = test ] && pkgs+=("${test_pkgs[@]}")

missing=()
for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0

echo "installing: ${missing[*]}"
sudo=""
[ "$(id -u)" -eq 0 ] || sudo=sudo
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -q
$sudo apt-get install -y -q "${missing[@]}"
