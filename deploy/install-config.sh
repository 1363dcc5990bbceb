#!/bin/sh
# install-config.sh SRC DEST - a `meson install` step: copies the example
# configuration SRC (relative to the source tree) to DEST (absolute; below
# DESTDIR when that is set), but only when DEST does not exist yet, so a
# reinstall or an upgrade never overwrites the configuration of a running
# server.  The example itself is always installed with the documentation.
set -eu
src="$MESON_SOURCE_ROOT/$1"
dest="${DESTDIR:-}$2"
if [ -e "$dest" ]; then
    echo "Keeping $dest: it exists (the new example is in the documentation directory)"
    exit 0
fi
mkdir -p "$(dirname "$dest")"
cp "$src" "$dest"
chmod 644 "$dest"
echo "Installing $src to $dest"
