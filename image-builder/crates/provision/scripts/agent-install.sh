# Install vm-agent: fetch or copy the binary, check its sha256, install it with its
# unit and config, and enable the unit so that it starts on every boot.
# Parameters: AGENT_URL (fetched when not empty) or AGENT_PATH (a file in the VM),
# AGENT_SHA256, AGENT_BIN, UNIT_PATH, UNIT_CONTENT, CONFIG_PATH, CONFIG_CONTENT.

# Write $3 to $1 exactly, mode $2 (via a temp file and rename).
install_file() {
  mkdir -p "$(dirname "$1")"
  (umask 077 && printf '%s' "$3" > "$1.tmp")
  chmod "$2" "$1.tmp"
  mv -f "$1.tmp" "$1"
}

tmp="$AGENT_BIN.download"
rm -f "$tmp"
if [ -n "$AGENT_URL" ]; then
  python3 - "$tmp" "$AGENT_URL" <<'IMAGE_BUILDER_PY'
import sys, time, urllib.request
path, url = sys.argv[1], sys.argv[2]
for attempt in range(1, 6):
    try:
        with urllib.request.urlopen(url, timeout=60) as r, open(path, "wb") as f:
            while True:
                b = r.read(1 << 20)
                if not b:
                    break
                f.write(b)
        break
    except Exception as e:
        print("image-builder: fetching vm-agent failed (attempt %d/5): %s" % (attempt, e), file=sys.stderr)
        if attempt == 5:
            sys.exit(1)
        time.sleep(2 * attempt)
IMAGE_BUILDER_PY
else
  cp "$AGENT_PATH" "$tmp"
fi
got=$(sha256sum "$tmp" | cut -d' ' -f1)
if [ "$got" != "$AGENT_SHA256" ]; then
  echo "image-builder: vm-agent checksum mismatch: expected $AGENT_SHA256, got $got" >&2
  rm -f "$tmp"
  exit 1
fi
chmod 0755 "$tmp"
mv -f "$tmp" "$AGENT_BIN"
install_file "$UNIT_PATH" 0644 "$UNIT_CONTENT"
install_file "$CONFIG_PATH" 0644 "$CONFIG_CONTENT"
systemctl daemon-reload 2>/dev/null || true
systemctl enable vm-agent.service
echo "image-builder: vm-agent installed and enabled (sha256 $AGENT_SHA256)"
