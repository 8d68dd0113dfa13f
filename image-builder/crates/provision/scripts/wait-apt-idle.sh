# Wait (bounded) until apt's boot-time jobs are done and no apt/dpkg process runs.
# Parameters: TIMEOUT_SECS.
deadline=$(( $(date +%s) + $TIMEOUT_SECS ))
busy() {
  if command -v systemctl >/dev/null 2>&1 &&
     systemctl is-active --quiet apt-daily.service apt-daily-upgrade.service 2>/dev/null; then
    echo "systemd apt-daily job"; return 0
  fi
  for c in /proc/[0-9]*/comm; do
    read -r name < "$c" 2>/dev/null || continue
    case "$name" in
      apt|apt-get|aptitude|dpkg|unattended-upgr|apt.systemd.dai) echo "$name (pid $(basename "$(dirname "$c")"))"; return 0 ;;
    esac
  done
  return 1
}
while who=$(busy); do
  if [ "$(date +%s)" -ge "$deadline" ]; then
    echo "image-builder: apt is still busy after ${TIMEOUT_SECS}s ($who); continuing, DPkg::Lock::Timeout applies" >&2
    break
  fi
  echo "image-builder: waiting for apt to be idle: $who"
  sleep 3
done
