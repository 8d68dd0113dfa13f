#!/usr/bin/env bash
# vm-agent benchmark: static binary size, idle RSS after 60 s, `vm-agent status` latency
# (median, hyperfine). Prints each against its target; exits 1 if any target is missed.
#   targets: binary <= 15 MiB, idle RSS <= 8 MiB, status <= 20 ms
# A second daemon, started at the same time, pulls a 64 MiB build at boot from a local s3s-fs
# (objects + manifest written straight into s3s-fs's data dir) and its idle RSS after the same
# wait is held to the same 8 MiB: a worker's normal state is "booted and pulled". That part
# needs s3s-fs (`bash .ci/setup-s3.sh`; S3S_FS_BIN overrides) and says so loudly if it is missing.
# Env: IDLE_SECS (default 60), RUNS (default 50), VM_AGENT_BIN (skip the build), PULL_MIB (64).
# Needs: hyperfine (apt-get install hyperfine), python3.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
idle_secs="${IDLE_SECS:-60}"
runs="${RUNS:-50}"
command -v hyperfine >/dev/null || { echo "bench/agent.sh: hyperfine missing: apt-get install hyperfine" >&2; exit 2; }

bin="${VM_AGENT_BIN:-$("$here/vm-agent/build-static.sh")}"
size=$(stat -c %s "$bin")

work="$(mktemp -d)"
pid=""
cleanup() {
  for p_ in "$pid" "${ppid:-}" "${spid:-}"; do [ -n "$p_" ] && kill "$p_" 2>/dev/null; done
  wait 2>/dev/null; rm -rf "$work"
}
trap cleanup EXIT
mkdir -p "$work/ci" "$work/ssh"
echo '{"v1":{"datasource":"DataSourceNoCloud","errors":[]}}' > "$work/ci/result.json"
cp /etc/ssh/ssh_host_*_key.pub "$work/ssh/" 2>/dev/null || true
cat > "$work/config.toml" <<TOML
[paths]
runtime_dir = "$work/run"
state_dir = "$work/state"
secrets_file = "$work/secrets.toml"
ssh_host_key_dir = "$work/ssh"
[socket]
path = "$work/run/agent.sock"
[cloud_init]
status_dirs = ["$work/ci"]
[timers]
idle_timeout = "never"
max_lifetime = "never"
no_job_timeout = "never"
[destroy]
provider = "dry-run"
TOML
VM_AGENT_LOG=warn "$bin" --config "$work/config.toml" daemon 2>"$work/daemon.log" &
pid=$!
for _ in $(seq 100); do [ -S "$work/run/agent.sock" ] && break; sleep 0.05; done
"$bin" --config "$work/config.toml" status >/dev/null || { echo "daemon not ready:"; cat "$work/daemon.log"; exit 1; }

# The pulling daemon (optional: needs s3s-fs).
s3s="${S3S_FS_BIN:-${XDG_CACHE_HOME:-$HOME/.cache}/image-builder/s3s-fs-0.14.1/bin/s3s-fs}"
pull_mib="${PULL_MIB:-64}"
ppid=""; spid=""; pull_line=""
if [ -x "$s3s" ]; then
  p="$work/pull"; sha=0123456789abcdef0123456789abcdef01234567
  mkdir -p "$p/s3/bkt/builds/$sha/lib" "$p/ssh"
  head -c $((pull_mib << 20)) /dev/urandom > "$p/s3/bkt/builds/$sha/lib/big.bin"
  for i in $(seq 50); do head -c 16384 /dev/urandom > "$p/s3/bkt/builds/$sha/lib/small$i"; done
  python3 - "$p/s3/bkt/builds/$sha" "$sha" <<'PY'
import hashlib, json, os, sys
root, sha = sys.argv[1], sys.argv[2]
files = []
for d, _, names in os.walk(root):
    for n in sorted(names):
        full = os.path.join(d, n)
        data = open(full, "rb").read()
        files.append({"path": os.path.relpath(full, root), "size": len(data),
                      "sha256": hashlib.sha256(data).hexdigest(), "mode": "0644"})
json.dump({"version": 1, "sha": sha, "created_at": "2026-01-01T00:00:00Z", "files": files},
          open(os.path.join(root, "manifest.json"), "w"))
PY
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  # Throwaway keys for a loopback-only test server (s3s-fs only takes them as arguments).
  "$s3s" --host 127.0.0.1 --port "$port" --access-key benchid --secret-key benchsecret "$p/s3" 2>"$p/s3.log" &
  spid=$!
  sed -e "s|$work/run|$p/run|g; s|$work/state|$p/state|; s|$work/secrets.toml|$p/secrets.toml|" \
    "$work/config.toml" > "$p/config.toml"
  cat >> "$p/config.toml" <<TOML
[artifacts]
bucket = "bkt"
endpoint = "http://127.0.0.1:$port"
path_style = true
sha = "$sha"
required = true
TOML
  (umask 077; printf 'spaces_access_key_id = "benchid"\nspaces_secret_access_key = "benchsecret"\n' > "$p/secrets.toml")
  for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/"$port") 2>/dev/null && break; sleep 0.05; done
  VM_AGENT_LOG=warn "$bin" --config "$p/config.toml" daemon 2>"$p/daemon.log" &
  ppid=$!
else
  echo "bench/agent.sh: *** s3s-fs missing at $s3s: run .ci/setup-s3.sh to also measure RSS after a pull ***" >&2
fi

echo "waiting ${idle_secs}s for idle RSS..." >&2
sleep "$idle_secs"
rss_kib=$(awk '/^VmRSS:/ {print $2}' "/proc/$pid/status")
rss_split() { awk '/^Rss(Anon|File):/ {printf "%s%s %.2f MiB", sep, $1, $2/1024; sep=", "}' "/proc/$1/status"; }
rss_detail=$(rss_split "$pid")
if [ -n "$ppid" ]; then
  "$bin" --config "$p/config.toml" status --json > "$p/status.json" || true
  pulled=$(python3 -c "import json,sys; a=json.load(open(sys.argv[1]))['artifacts']; i=a['items'][-1] if a['items'] else {}; print(a['state'], i.get('bytes', 0), '%.2f' % i.get('duration_secs', 0))" "$p/status.json")
  set -- $pulled
  [ "$1" = installed ] || { echo "bench/agent.sh: the boot pull did not install: $pulled"; cat "$p/daemon.log"; exit 1; }
  prss_kib=$(awk '/^VmRSS:/ {print $2}' "/proc/$ppid/status")
  prss_detail=$(rss_split "$ppid")
  pull_line="$(python3 -c "print('%.2f' % ($prss_kib/1024))")"
  pull_info="boot pull of $(python3 -c "print('%.1f' % ($2/1048576))") MiB in ${3}s ($(python3 -c "import sys; print('%.0f' % ($2/1048576/max(float(sys.argv[1]),1e-9)))" "$3") MiB/s, verified)"
fi

hyperfine --warmup 5 --runs "$runs" -N --export-json "$work/hf.json" \
  "$bin --config $work/config.toml status" >/dev/null 2>&1 \
  || hyperfine --warmup 5 --runs "$runs" --export-json "$work/hf.json" \
       "$bin --config $work/config.toml status" >/dev/null
median_ms=$(python3 -c "import json,sys; print('%.2f' % (json.load(open(sys.argv[1]))['results'][0]['median']*1000))" "$work/hf.json")

fail=0
check() { # name value target unit
  if python3 -c "import sys; sys.exit(0 if float(sys.argv[1]) <= float(sys.argv[2]) else 1)" "$2" "$3"; then
    printf '%-28s %10s %-4s (target <= %s %s)  OK\n' "$1" "$2" "$4" "$3" "$4"
  else
    printf '%-28s %10s %-4s (target <= %s %s)  MISSED\n' "$1" "$2" "$4" "$3" "$4"; fail=1
  fi
}
echo "vm-agent $("$bin" --version | awk '{print $2}') ($bin)"
check "static binary size" "$(python3 -c "print('%.2f' % ($size/1048576))")" 15 MiB
check "idle RSS after ${idle_secs}s" "$(python3 -c "print('%.2f' % ($rss_kib/1024))")" 8 MiB
echo "  ($rss_detail)"
check "status latency (median)" "$median_ms" 20 ms
if [ -n "$pull_line" ]; then
  check "idle RSS ${idle_secs}s after pull" "$pull_line" 8 MiB
  echo "  ($prss_detail; $pull_info)"
fi
exit $fail
