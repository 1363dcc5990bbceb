#!/usr/bin/env bash
# build-image.sh [TAG] - builds relabel's container image with podman
# without any image registry: the two base images are made here with
# mmdebstrap from the Debian mirror this machine's apt uses, imported, and
# passed to the Dockerfile as BUILD_BASE and BASE.
#
#   build base    minbase + the Dockerfile's BUILD_PACKAGES (compiler, meson)
#   runtime base  minbase + the Dockerfile's RUNTIME_PACKAGES (CA bundle,
#                 libuv, mbedTLS, inih), no documentation or locales
#
# With every package already in its base, the Dockerfile installs nothing
# and `podman build` needs no network: the test does not depend on a
# container reaching a mirror.  A base is tagged with a hash of its recipe
# and kept in the test's storage (storage.conf), so it is made once and
# reused by later builds until the recipe changes or it is a week old;
# then it is made again (security updates) and the old one removed.
#
# Podman runs with this directory's containers.conf and storage.conf (see
# them for why).  Prints timings, then, as its last line, the image size
# in bytes.  Needs root, podman, runc, mmdebstrap (scripts/deps.sh test).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../../.." && pwd)
tag=${1:-localhost/relabel:test}
export CONTAINERS_CONF=$here/containers.conf
export CONTAINERS_STORAGE_CONF=$here/storage.conf
suite=bookworm
max_age=$((7 * 86400))

# ARG NAME="a b c" in the Dockerfile: one list, used here and by the build.
dockerfile_list() {
    sed -n "s/^ARG $1=\"\\(.*\\)\"\$/\\1/p" "$root/Dockerfile"
}
build_pkgs=$(dockerfile_list BUILD_PACKAGES)
runtime_pkgs=$(dockerfile_list RUNTIME_PACKAGES)
[ -n "$build_pkgs" ] && [ -n "$runtime_pkgs" ] || {
    echo "build-image.sh: no BUILD_PACKAGES or RUNTIME_PACKAGES in the Dockerfile" >&2
    exit 1
}

# The Debian sources apt uses here, for the suite only (not the other
# repositories a machine may have): "deb URI SUITE COMPONENTS" lines.
mirrors=()
while read -r uri release components; do
    mirrors+=("deb $uri $release $components")
done < <(apt-get indextargets --format '$(REPO_URI) $(RELEASE) $(COMPONENT)' \
             'Identifier: Packages' \
         | awk -v s="$suite" '$2 ~ "^" s "(-[a-z]+)?$" {c[$1" "$2] = c[$1" "$2] " " $3}
                               END {for (k in c) print k c[k]}' | sort)
if [ ${#mirrors[@]} -eq 0 ]; then
    echo "build-image.sh: apt has no $suite sources on this machine (apt-get update?)" >&2
    exit 1
fi

# Documentation, man pages and locales are dropped as in Debian's slim
# images; merged /usr is set up without the usrmerge package (and perl).
slim=(--dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/info/*'
      --dpkgopt='path-exclude=/usr/share/locale/*'
      --dpkgopt='path-include=/usr/share/locale/locale.alias'
      --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright')
recipe_version=1

# make_base NAME "PACKAGES": prints the tag of a base image with PACKAGES,
# made unless a fresh one exists.
make_base() {
    local name=$1 pkgs=$2 hash ref created now start log
    hash=$(printf '%s\n' "$recipe_version" "$suite" "$pkgs" "${slim[@]}" | sha256sum | cut -c1-12)
    ref=localhost/$name:$suite-$hash
    now=$(date +%s)
    if created=$(podman image inspect --format '{{.Created.Unix}}' "$ref" 2>/dev/null) &&
        [ $((now - created)) -lt $max_age ]; then
        echo "base $ref: cached" >&2
        echo "$ref"
        return
    fi
    start=$SECONDS
    podman rmi -f "$ref" >/dev/null 2>&1 || true
    log=/var/tmp/relabel-podman/$name.log
    if ! mmdebstrap --variant=minbase --format=tar --include="${pkgs// /,}" \
        --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr "${slim[@]}" \
        "$suite" - "${mirrors[@]}" 2>"$log" |
        podman import --quiet - "$ref" >/dev/null; then
        tail -40 "$log" >&2
        echo "build-image.sh: making $ref failed (log: $log)" >&2
        exit 1
    fi
    echo "base $ref: made in $((SECONDS - start))s" >&2
    echo "$ref"
}

# Bases of other recipes (another branch may still use them) are removed
# once they are as old as a base may get.
prune_bases() {
    local ref created now
    now=$(date +%s)
    for ref in $(podman images --format '{{.Repository}}:{{.Tag}}' "localhost/$1"); do
        created=$(podman image inspect --format '{{.Created.Unix}}' "$ref" 2>/dev/null) || continue
        [ $((now - created)) -lt $max_age ] || podman rmi -f "$ref" >/dev/null 2>&1 || true
    done
}

mkdir -p /var/tmp/relabel-podman
prune_bases relabel-build-base
prune_bases relabel-base
build_base=$(make_base relabel-build-base "$build_pkgs")
runtime_base=$(make_base relabel-base "$runtime_pkgs")

start=$SECONDS
# --format docker: the OCI format has no HEALTHCHECK.  --network none:
# the bases hold every package, so nothing may be fetched.  --layers=false:
# no intermediate images to clean up (the bases are the cache that counts).
podman build --quiet --format docker --network none --layers=false \
    --build-arg BASE="$runtime_base" --build-arg BUILD_BASE="$build_base" \
    -t "$tag" "$root" >/dev/null
echo "image $tag: built in $((SECONDS - start))s" >&2
podman image inspect --format '{{.Size}}' "$tag"
