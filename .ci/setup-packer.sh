#!/bin/sh
# Installs what packer-plugin's integration tests need on a fresh Debian 12 machine.
# Idempotent: apt-get install is a no-op for installed packages.
#   packer          Debian's packer 1.6.6 (the tests drive the real binary)
#   openssh-server  the throwaway sshd the SSH tests start on 127.0.0.1
#   openssh-client  ssh-keygen for its host and client keys
#   sudo            visudo, used by the sudoers step
#   util-linux      unshare (the SSH tests' mount-namespace sandbox)
#   coreutils       timeout (wraps every remote step)
#   systemd         systemctl (offline `enable` of the vm-agent unit)
# The SSH tests must run as root (they mount overlays in a private namespace).
set -eu
pkgs="packer openssh-server openssh-client sudo util-linux coreutils systemd"
missing=""
for p in $pkgs; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo -n"
  $SUDO apt-get update -q
  # shellcheck disable=SC2086
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends $missing
fi
# sshd's privilege-separation directory (normally created by its systemd unit).
[ -d /run/sshd ] || { [ "$(id -u)" -eq 0 ] && mkdir -p /run/sshd; } || true
packer version
