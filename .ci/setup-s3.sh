#!/usr/bin/env bash
# Build the S3-compatible test server (s3s-fs, from crates.io) into a cache
# directory outside the checkout, keyed by version, so repeated CI runs on the
# same machine do not rebuild it. Used by image-builder/tests/artifact_*.rs and
# bench/artifacts.sh.
#
# Idempotent. Prints the path of the s3s-fs executable on stdout (last line).
#
#   S3S_FS_VERSION   pinned version (default below; 0.14.1 builds with rustc 1.95)
#   S3S_FS_HOME      install root (default ~/.cache/image-builder/s3s-fs-<version>)
#
# Needs cargo (a Rust toolchain) and network access to crates.io.
set -euo pipefail

S3S_FS_VERSION="${S3S_FS_VERSION:-0.14.1}"
S3S_FS_HOME="${S3S_FS_HOME:-${XDG_CACHE_HOME:-$HOME/.cache}/image-builder/s3s-fs-$S3S_FS_VERSION}"
bin="$S3S_FS_HOME/bin/s3s-fs"

if [[ -x "$bin" ]] && "$bin" --version 2>/dev/null | grep -q "$S3S_FS_VERSION"; then
    echo "setup-s3: s3s-fs $S3S_FS_VERSION already in $S3S_FS_HOME" >&2
    echo "$bin"
    exit 0
fi

command -v cargo >/dev/null || { echo "setup-s3: cargo is required" >&2; exit 1; }
mkdir -p "$S3S_FS_HOME"
echo "setup-s3: building s3s-fs $S3S_FS_VERSION into $S3S_FS_HOME (takes a few minutes)" >&2
# The `s3s-fs` binary target requires the `binary` feature. Build in a private
# target dir so the workspace's target dirs are not touched.
CARGO_TARGET_DIR="$S3S_FS_HOME/build" cargo install s3s-fs --version "$S3S_FS_VERSION" \
    --locked --features binary --root "$S3S_FS_HOME" >&2
rm -rf "$S3S_FS_HOME/build"
"$bin" --version >&2
echo "$bin"
