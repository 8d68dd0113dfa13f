#!/bin/sh
# mmdebstrap customize hook for `image-builder base build` ($1 = the new root).
# A root filesystem for a whole bootable disk (GPT, GRUB for BIOS and UEFI, root found
# by the label/UUID the disk assembly gives it) that also boots under systemd-nspawn,
# whose cloud-init reads a NoCloud seed locally and ConfigDrive on DigitalOcean.
set -eu
R="$1"
# The disk assembly labels the root filesystem "rootfs" (image-builder's disk.rs).
echo "LABEL=rootfs / ext4 rw,discard,errors=remount-ro 0 1" > "$R/etc/fstab"
echo "localhost" > "$R/etc/hostname"
mkdir -p "$R/etc/systemd/network" "$R/etc/cloud/cloud.cfg.d"
# networkd (not ifupdown) so there is exactly one DHCP client. DigitalOcean's
# droplets from custom images get their network through DHCP too.
cat > "$R/etc/systemd/network/80-dhcp.network" <<'NET'
[Match]
Name=en* eth*

[Network]
DHCP=yes
NET
# Datasources: ConfigDrive first, then NoCloud, then None. DigitalOcean configures
# droplets from custom images through a config drive and says an image that lists
# NoCloud before ConfigDrive will not work there; locally the bake (seed directory)
# and QEMU boots (seed ISO labelled cidata) find no config drive and use NoCloud.
# No probing of network metadata services (slow when absent).
# C.UTF-8 because minbase has no `locales` (cc_locale would fail); ed25519 host keys
# only (RSA key generation takes ~12 s under TCG); growpart + resizefs (cloud-init's
# defaults, made explicit) give the root filesystem a bigger disk on first boot.
cat > "$R/etc/cloud/cloud.cfg.d/90_image_builder.cfg" <<'CFG'
datasource_list: [ ConfigDrive, NoCloud, None ]
locale: C.UTF-8
ssh_genkeytypes: [ed25519]
growpart: {mode: auto, devices: ["/"]}
resize_rootfs: true
CFG
# Per-instance identity is created on first boot.
: > "$R/etc/machine-id"
rm -f "$R"/etc/ssh/ssh_host_*
chroot "$R" systemctl enable ssh.service systemd-networkd.service systemd-resolved.service >/dev/null 2>&1 || true
# What apt downloaded during the build does not belong in the image.
rm -rf "$R"/var/lib/apt/lists/* "$R"/var/cache/apt/*.bin "$R"/var/cache/apt/archives/*.deb
