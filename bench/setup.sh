#!/usr/bin/env bash
# What the benchmarks need on top of .ci/setup.sh (the tests do not need these):
# hyperfine (timings), rclone (the peer of artifact pulls). Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
bash .ci/setup.sh
PACKAGES=(hyperfine rclone)
missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "bench/setup: installing ${missing[*]}" >&2
  SUDO=""; [[ $(id -u) -eq 0 ]] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
echo "bench/setup: ok" >&2
