# Validate the staged sudoers drop-in with `visudo -cf` and move it into place
# (0440 root:root). Parameters: STAGED (the staged file), TARGET (its place).
if ! command -v visudo >/dev/null 2>&1; then
  echo "image-builder: visudo not found: install the sudo package to get passwordless sudo" >&2
  exit 1
fi
chown root:root "$STAGED"
chmod 0440 "$STAGED"
visudo -cf "$STAGED"
mkdir -p /etc/sudoers.d
cp -p "$STAGED" "$TARGET.tmp"
chmod 0440 "$TARGET.tmp"
mv -f "$TARGET.tmp" "$TARGET"
rm -f "$STAGED"
visudo -c >/dev/null
