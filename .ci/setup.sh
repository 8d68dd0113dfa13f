#!/usr/bin/env bash
# Install everything the build and the test suite need on a fresh Debian 12 machine.
# Idempotent and quiet when everything is there already. Slow things are cached
# outside the checkout (under ~/.cache/image-builder), keyed by their inputs.
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages: every tool the build and the test suite run, by name (a test,
# tests/tests/ci_setup.rs, holds this list against the tools the code runs). Benchmark-only
# tools (hyperfine, rclone) are in bench/setup.sh.
#   cloud-init, python3-yaml: schema checks and PyYAML read-backs of every rendering
#   sudo: visudo;  packer: the Packer plugin's tests;  openssh-*: ssh, scp, sshd, ssh-keygen
#   qemu-*, systemd-container, mmdebstrap, e2fsprogs, genisoimage: local images and workers
#   systemd: systemd-analyze (unit checks);  git: artifact tests and `git rev-parse`
#   binutils: readelf/strings (vm-agent/build-static.sh);  curl, ca-certificates: setup scripts
#   util-linux: unshare, umount, nsenter, setpriv, ionice;  procps: kill;  python3
#   iproute2: ip (do-sim's machine mode: droplets in network namespaces)
#   gdisk, fdisk, mtools, grub-common, grub-*-bin: golden disks (sgdisk, sfdisk, mformat/
#     mmd/mcopy, grub-mkimage, GRUB's BIOS and EFI images);  ovmf: UEFI boots
PACKAGES=(
  cloud-init python3-yaml python3 sudo
  packer openssh-server openssh-client
  qemu-system-x86 qemu-utils systemd-container mmdebstrap e2fsprogs genisoimage
  systemd git binutils util-linux procps iproute2 curl ca-certificates
  gdisk fdisk mtools grub-common grub-pc-bin grub-efi-amd64-bin ovmf
)

# node/npm may come from elsewhere (e.g. NodeSource, whose nodejs conflicts with
# Debian's npm): only install Debian's when there is no npm at all.
command -v npm >/dev/null 2>&1 || PACKAGES+=(nodejs npm)

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}" >&2
  SUDO=""; [[ $(id -u) -eq 0 ]] || SUDO="sudo"
  $SUDO apt-get update -qq
  # A first install can fail transiently on these machines; retry once.
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null ||
    { sleep 3; DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null; }
fi

# Component setup scripts (each idempotent, each caching under ~/.cache/image-builder).
for s in .ci/setup-*.sh; do
  [[ -e "$s" ]] || continue
  echo "setup: $s" >&2
  bash "$s" >/dev/null
done
# Disk: a fresh `cargo test --workspace` (clippy, test binaries, the static agent for
# the end-to-end test) needs about 5 GB under target/ plus ~1.5 GB of caches. Say so
# up front when the machine has less, instead of failing later with ENOSPC mid-link.
avail_kb=$(df -Pk "${CARGO_TARGET_DIR:-target}" 2>/dev/null | awk 'NR==2 {print $4}' || df -Pk . | awk 'NR==2 {print $4}')
if [[ -n "${avail_kb:-}" ]] && ((avail_kb < 6 * 1024 * 1024)); then
  echo "setup: WARNING: only $((avail_kb / 1024)) MiB free for the build; the test suite needs ~6 GiB" >&2
  df -h . "$HOME/.cache" >&2 || true
fi
echo "setup: ok" >&2
