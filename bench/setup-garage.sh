#!/usr/bin/env bash
# Build Garage (an S3-compatible server, from crates.io) into a cache directory
# outside the checkout, keyed by version. Used by bench/artifacts.sh only (not by
# the tests, not by CI): on 2-core machines s3s-fs, the test server, serves only
# ~100-300 MiB/s, which hides client differences; Garage serves several times that.
#
# Idempotent. Prints the path of the garage executable on stdout (last line).
# The first build takes ~15 minutes on 2 cores.
#
#   GARAGE_VERSION   pinned version (default 2.5.0)
#   GARAGE_HOME      install root (default ~/.cache/image-builder/garage-<version>)
set -euo pipefail

GARAGE_VERSION="${GARAGE_VERSION:-2.5.0}"
GARAGE_HOME="${GARAGE_HOME:-${XDG_CACHE_HOME:-$HOME/.cache}/image-builder/garage-$GARAGE_VERSION}"
bin="$GARAGE_HOME/bin/garage"

if [[ -x "$bin" ]] && "$bin" --version 2>/dev/null | grep -q -- ":$GARAGE_VERSION "; then
    echo "setup-garage: garage $GARAGE_VERSION already in $GARAGE_HOME" >&2
    echo "$bin"
    exit 0
fi

command -v cargo >/dev/null || { echo "setup-garage: cargo is required" >&2; exit 1; }
mkdir -p "$GARAGE_HOME"
echo "setup-garage: building garage $GARAGE_VERSION into $GARAGE_HOME (~15 min on 2 cores)" >&2
CARGO_TARGET_DIR="$GARAGE_HOME/build" cargo install garage --version "$GARAGE_VERSION" \
    --locked --root "$GARAGE_HOME" >&2
rm -rf "$GARAGE_HOME/build"
"$bin" --version >&2
echo "$bin"
