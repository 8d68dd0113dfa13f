# Bounded wait for cloud-init to finish, for callers OUTSIDE cloud-init only (Packer
# over SSH): from inside a cloud-init stage it would wait for itself.
# Parameters: TIMEOUT_SECS.
if ! command -v cloud-init >/dev/null 2>&1; then
  echo "image-builder: cloud-init is not installed; nothing to wait for"
  exit 0
fi
rc=0
timeout "$TIMEOUT_SECS" cloud-init status --wait >/dev/null || rc=$?
case "$rc" in
  0) echo "image-builder: cloud-init is done" ;;
  124) echo "image-builder: cloud-init did not finish within ${TIMEOUT_SECS}s" >&2; exit 1 ;;
  2) echo "image-builder: cloud-init finished with recoverable errors" >&2; cloud-init status --long >&2 || true ;;
  *) echo "image-builder: cloud-init failed (status exit $rc)" >&2; cloud-init status --long >&2 || true; exit 1 ;;
esac
