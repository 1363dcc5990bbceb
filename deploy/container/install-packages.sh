#!/bin/sh
# install-packages.sh PACKAGE... - a step of the image build: installs
# those Debian packages the base image lacks, then drops apt's lists.  A
# base that already holds them all (as the CI test's do) needs no network.
set -eu
missing=""
for p in "$@"; do
    dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q "install ok installed" ||
        missing="$missing $p"
done
[ -n "$missing" ] || exit 0
apt-get update -q
# shellcheck disable=SC2086 # one word per package
DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $missing
rm -rf /var/lib/apt/lists/*
