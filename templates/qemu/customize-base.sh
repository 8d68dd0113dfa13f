#!/bin/sh
# mmdebstrap customize hook for `image-builder base build` ($1 = the new root).
# A root filesystem that boots under QEMU with direct kernel boot (root=/dev/vda)
# and under systemd-nspawn, and whose cloud-init reads a NoCloud seed.
set -eu
R="$1"
echo "/dev/vda / ext4 rw,discard,errors=remount-ro 0 1" > "$R/etc/fstab"
echo "localhost" > "$R/etc/hostname"
mkdir -p "$R/etc/systemd/network" "$R/etc/cloud/cloud.cfg.d"
# networkd (not ifupdown) so there is exactly one DHCP client.
cat > "$R/etc/systemd/network/80-dhcp.network" <<'NET'
[Match]
Name=en* eth*

[Network]
DHCP=yes
NET
# NoCloud only (no slow probing of cloud metadata services); C.UTF-8 because
# minbase has no `locales` (cc_locale would fail); ed25519 host keys only
# (RSA key generation takes ~12 s under TCG).
cat > "$R/etc/cloud/cloud.cfg.d/90_image_builder.cfg" <<'CFG'
datasource_list: [ NoCloud, None ]
locale: C.UTF-8
ssh_genkeytypes: [ed25519]
CFG
# Per-instance identity is created on first boot.
: > "$R/etc/machine-id"
rm -f "$R"/etc/ssh/ssh_host_*
chroot "$R" systemctl enable systemd-networkd.service systemd-resolved.service >/dev/null 2>&1 || true
# Serial console login prompt is noise on the console log the bake reads.
chroot "$R" systemctl mask serial-getty@ttyS0.service >/dev/null 2>&1 || true
# What apt downloaded during the build does not belong in the image.
rm -rf "$R"/var/lib/apt/lists/* "$R"/var/cache/apt/*.bin "$R"/var/cache/apt/archives/*.deb
