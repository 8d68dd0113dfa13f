# The part of the seal that removes state and secrets (no report, no power-off). Run
# last, right before a snapshot. Parameters: WORK_DIR (provisioning's scripts and files).
rm -rf "$WORK_DIR"
# cloud-init state: processed user-data (with any secret in it), instance data, logs, seed.
if command -v cloud-init >/dev/null 2>&1; then
  cloud-init clean --logs --seed --machine-id || cloud-init clean --logs
fi
# Empty, not missing: a new ID on each machine's first boot without systemd's first-boot
# `preset-all` (which would enable units the image left disabled; README "seal").
: > /etc/machine-id
chmod 0444 /etc/machine-id
# journald may hold command output.
if command -v journalctl >/dev/null 2>&1; then
  journalctl --flush >/dev/null 2>&1 || true
  journalctl --rotate >/dev/null 2>&1 || true
  journalctl --vacuum-time=1s >/dev/null 2>&1 || true
fi
rm -f /var/log/journal/*/*.journal /var/log/journal/*/*.journal~ 2>/dev/null || true
# Per-instance identity is regenerated on the next boot.
rm -f /etc/ssh/ssh_host_*_key /etc/ssh/ssh_host_*_key.pub
rm -f /root/.bash_history /home/*/.bash_history
: > /var/log/wtmp 2>/dev/null || true
: > /var/log/lastlog 2>/dev/null || true
# Deleted files keep their blocks on a block-level snapshot: discard them.
fstrim -a >/dev/null 2>&1 || true
sync
echo "image-builder: sealed"
