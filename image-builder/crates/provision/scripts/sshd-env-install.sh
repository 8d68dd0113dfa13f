# Install the staged sshd drop-in (0644 root:root) only if `sshd -t` accepts the whole
# configuration with it. Parameters: STAGED (the staged file), TARGET (its place).
# A drop-in sshd would refuse is never left in place: the image must keep its SSH.
SSHD=$(command -v sshd 2>/dev/null || echo /usr/sbin/sshd)
if [ ! -x "$SSHD" ]; then
  echo "image-builder: sshd not found: install openssh-server so workers can be reached" >&2
  exit 1
fi
if ! grep -Eqs '^[[:space:]]*Include[[:space:]]+/etc/ssh/sshd_config\.d/\*\.conf' /etc/ssh/sshd_config; then
  echo "image-builder: /etc/ssh/sshd_config does not include sshd_config.d/*.conf: $TARGET would be ignored" >&2
  exit 1
fi
chown root:root "$STAGED"
chmod 0644 "$STAGED"
mkdir -p "$(dirname "$TARGET")"
cp -p "$STAGED" "$TARGET.tmp"
mv -f "$TARGET.tmp" "$TARGET"
rm -f "$STAGED"
# sshd -t wants a host key; a sealed image has none until first boot: check with a
# throwaway one then.
tmpkey=
if ! ls /etc/ssh/ssh_host_*_key >/dev/null 2>&1; then
  tmpkey=$(mktemp -d)
  ssh-keygen -q -t ed25519 -N '' -f "$tmpkey/k"
fi
if ! "$SSHD" -t ${tmpkey:+-h "$tmpkey/k"}; then
  rm -f "$TARGET"
  [ -z "$tmpkey" ] || rm -rf "$tmpkey"
  echo "image-builder: sshd -t refused the configuration with $TARGET: removed it" >&2
  exit 1
fi
[ -z "$tmpkey" ] || rm -rf "$tmpkey"
