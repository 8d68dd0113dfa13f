#!/bin/bash
# CI as a fresh machine runs it, for measuring: a new clone of this checkout's HEAD, an
# empty CARGO_HOME and an empty HOME (so ~/.cache/image-builder and every other cache
# start empty), target/ inside the clone, then .ci/run with CI=true. Prints the wall
# time and the peak disk use of clone + target + caches + crates (sampled every 20 s).
# Debian packages and the Rust toolchain (RUSTUP_HOME) stay as they are on this machine.
#
#   WORK (a new directory under /var/tmp)   where the clone and the empty homes go
set -u
src=$(cd "$(dirname "$0")/.." && pwd)
commit=$(git -C "$src" rev-parse HEAD)
root=${WORK:-$(mktemp -d /var/tmp/image-builder-fresh.XXXXXX)}
mkdir -p "$root/home" "$root/cargo-home"
git clone -q "$src" "$root/repo" && git -C "$root/repo" checkout -q "$commit" || exit 1
# The rustup proxies; registry and git caches go to the empty CARGO_HOME.
ln -s "${CARGO_HOME:-$HOME/.cargo}/bin" "$root/cargo-home/bin"
(
  peak=0
  while sleep 20; do
    k=$(du -sxk "$root" 2>/dev/null | cut -f1)
    [ "${k:-0}" -gt "$peak" ] && peak=$k && echo "$peak" > "$root/peak-kib"
  done
) &
sampler=$!
start=$(date +%s)
(cd "$root/repo" && env -i PATH="$root/cargo-home/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" \
  HOME="$root/home" USER="$(id -un)" LOGNAME="$(id -un)" CARGO_HOME="$root/cargo-home" \
  RUSTUP_HOME="${RUSTUP_HOME:-$HOME/.rustup}" CI=true TERM=dumb LANG=C.UTF-8 \
  bash .ci/run > "$root/ci.log" 2>&1)
rc=$?
end=$(date +%s)
kill "$sampler"
passed=$(grep -E '^test result' "$root/ci.log" | awk '{p+=$4} END {print p+0}')
failed=$(grep -E '^test result' "$root/ci.log" | awk '{f+=$6} END {print f+0}')
echo "fresh .ci/run of ${commit:0:12}: rc=$rc wall=$((end-start))s passed=$passed failed=$failed peak_kib=$(cat "$root/peak-kib" 2>/dev/null) log=$root/ci.log"
exit $rc
