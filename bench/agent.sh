#!/usr/bin/env bash
# vm-agent benchmark: static binary size, idle RSS after 60 s, `vm-agent status` latency
# (median, hyperfine). Prints each against its target; exits 1 if any target is missed.
#   targets: binary <= 15 MiB, idle RSS <= 8 MiB, status <= 20 ms
# Env: IDLE_SECS (default 60), RUNS (default 50), VM_AGENT_BIN (skip the build).
# Needs: hyperfine (apt-get install hyperfine).
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
idle_secs="${IDLE_SECS:-60}"
runs="${RUNS:-50}"
command -v hyperfine >/dev/null || { echo "bench/agent.sh: hyperfine missing: apt-get install hyperfine" >&2; exit 2; }

bin="${VM_AGENT_BIN:-$("$here/vm-agent/build-static.sh")}"
size=$(stat -c %s "$bin")

work="$(mktemp -d)"
pid=""
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null; rm -rf "$work"; }
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
echo "waiting ${idle_secs}s for idle RSS..." >&2
sleep "$idle_secs"
rss_kib=$(awk '/^VmRSS:/ {print $2}' "/proc/$pid/status")

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
check "status latency (median)" "$median_ms" 20 ms
exit $fail
