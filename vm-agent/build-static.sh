#!/usr/bin/env bash
# Build vm-agent as one static executable and check that it is static.
# Uses the musl target when it is installed; otherwise the gnu target with +crt-static
# (glibc linked statically: the agent never calls NSS — users/groups are parsed from
# /etc/passwd and /etc/group, DNS goes through hickory, TLS through rustls; the DO API
# client merges compiled-in CA roots with the system store).
# Prints the binary's path on stdout; everything else goes to stderr.
set -euo pipefail
cd "$(dirname "$0")/.."

if rustup target list --installed 2>/dev/null | grep -qx x86_64-unknown-linux-musl; then
  target=x86_64-unknown-linux-musl
else
  target=x86_64-unknown-linux-gnu
  echo "build-static: musl target not installed; using $target with +crt-static" >&2
fi

# Profile overrides for this binary only (the workspace's release profile stays as it is):
# - panic=abort: a panic in the daemon ends it and systemd restarts it (Restart=on-failure),
#   instead of tokio swallowing a panicked task and leaving a half-working agent; the workspace's
#   release profile unwinds for image-builder's bake cleanup guards, which the agent has none of;
# - fat LTO + one codegen unit: smaller binary (the S3 SDK and aws-lc are most of it).
# Each can be overridden from the environment.
export CARGO_PROFILE_RELEASE_PANIC="${CARGO_PROFILE_RELEASE_PANIC:-abort}"
export CARGO_PROFILE_RELEASE_LTO="${CARGO_PROFILE_RELEASE_LTO:-fat}"
export CARGO_PROFILE_RELEASE_CODEGEN_UNITS="${CARGO_PROFILE_RELEASE_CODEGEN_UNITS:-1}"
RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static" \
  cargo build --release -p vm-agent --target "$target" >&2

bin="${CARGO_TARGET_DIR:-target}/$target/release/vm-agent"
ldd_out="$(ldd "$bin" 2>&1 || true)"
case "$ldd_out" in
  *"not a dynamic executable"*|*"statically linked"*) ;;
  *) echo "build-static: $bin is NOT static:" >&2; echo "$ldd_out" >&2; exit 1 ;;
esac
if readelf -d "$bin" 2>/dev/null | grep -q NEEDED; then
  echo "build-static: $bin has NEEDED entries:" >&2; readelf -d "$bin" | grep NEEDED >&2; exit 1
fi
for lib in libssl libcrypto libnss; do
  if strings "$bin" | grep -q "${lib}\.so"; then
    echo "build-static: $bin references ${lib}.so" >&2; exit 1
  fi
done
echo "build-static: $bin is static ($(stat -c %s "$bin") bytes)" >&2
echo "$bin"
