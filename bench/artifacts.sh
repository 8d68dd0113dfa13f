#!/usr/bin/env bash
# Artifact pull benchmark: image-builder's pull (the code vm-agent uses) vs
# `rclone copy`, side by side in one run against the same local S3 server.
#
#   bench/artifacts.sh            # 256 MiB single object + 1,000 small files
#   RUNS=5 bench/artifacts.sh     # best of 5 (default 3)
#
# Both sides end with verified files on disk: ours verifies SHA-256 while
# streaming and installs atomically; rclone's time includes a `sha256sum -c`
# pass afterwards. Prints MiB/s for each and the ratio (goal: >= 1.5x rclone).
#
# Server (SERVER=garage, the default, or SERVER=s3s-fs): Garage 2.5.0, built once
# by bench/setup-garage.sh into ~/.cache/image-builder (~15 min the first time),
# data and metadata on /dev/shm when it has room. s3s-fs (the test server, from
# .ci/setup-s3.sh) serves only ~100-300 MiB/s on 2 cores, which hides client
# differences; Garage serves several times that and is the strictest about
# checksum headers. Both listen on 127.0.0.1 only, with throwaway keys passed
# through the environment.
#
# Needs: cargo, rclone (Debian package), python3, coreutils.
set -euo pipefail
cd "$(dirname "$0")/.."

RUNS="${RUNS:-3}"
BIG_MIB="${BIG_MIB:-256}"
SMALL_COUNT="${SMALL_COUNT:-1000}"
SMALL_KIB="${SMALL_KIB:-16}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"

command -v rclone >/dev/null || { echo "bench: rclone missing (apt-get install rclone)" >&2; exit 1; }
SERVER="${SERVER:-garage}"
case "$SERVER" in garage|s3s-fs) ;; *) echo "bench: SERVER must be garage or s3s-fs, got '$SERVER'" >&2; exit 2;; esac
echo "bench: building image-builder (release, artifact feature)" >&2
cargo build -q --release -p image-builder
IB="$CARGO_TARGET_DIR/release/image-builder"
if [[ "$SERVER" == garage ]]; then SERVER_BIN="$(bash bench/setup-garage.sh)"; else SERVER_BIN="$(bash .ci/setup-s3.sh)"; fi

scratch_base=/tmp
if [[ -d /dev/shm ]] && (( $(df -Pk /dev/shm | awk 'NR==2{print $4}') > 2 * 1024 * (BIG_MIB + 64) * 2 )); then
  scratch_base=/dev/shm
fi
work="$(mktemp -d "$scratch_base/artifact-bench.XXXXXX")"
server_pid=""
cleanup() { [[ -n "$server_pid" ]] && kill "$server_pid" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT

free_port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
hex() { head -c "$1" /dev/urandom | od -An -tx1 | tr -d ' \n'; }
port="$(free_port)"
if [[ "$SERVER" == garage ]]; then
  # Throwaway keys for a loopback-only server; Garage wants GK + 24 hex / 64 hex.
  export SPACES_ACCESS_KEY_ID="GK$(hex 12)"
  export SPACES_SECRET_ACCESS_KEY="$(hex 32)"
  mkdir -p "$work/garage"
  (umask 077; cat >"$work/garage/garage.toml" <<TOML
metadata_dir = "$work/garage/meta"
data_dir = "$work/garage/data"
db_engine = "lmdb"
replication_factor = 1
rpc_bind_addr = "127.0.0.1:$(free_port)"
rpc_public_addr = "127.0.0.1:$(free_port)"
rpc_secret = "$(hex 32)"
[s3_api]
s3_region = "us-east-1"
api_bind_addr = "127.0.0.1:$port"
root_domain = ".s3.garage.localhost"
TOML
  )
  GARAGE_DEFAULT_ACCESS_KEY="$SPACES_ACCESS_KEY_ID" GARAGE_DEFAULT_SECRET_KEY="$SPACES_SECRET_ACCESS_KEY" \
    GARAGE_DEFAULT_BUCKET=bench RUST_LOG=warn \
    "$SERVER_BIN" -c "$work/garage/garage.toml" server --single-node --default-bucket \
    >"$work/server.log" 2>&1 &
  server_pid=$!
else
  export SPACES_ACCESS_KEY_ID="bench-access-key"
  export SPACES_SECRET_ACCESS_KEY="bench-secret-key-$(hex 8)"
  mkdir -p "$work/data/bench"
  "$SERVER_BIN" --host 127.0.0.1 --port "$port" --access-key "$SPACES_ACCESS_KEY_ID" \
    --secret-key "$SPACES_SECRET_ACCESS_KEY" "$work/data" >"$work/server.log" 2>&1 &
  server_pid=$!
fi
up=""
for _ in $(seq 300); do
  if (echo >"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then up=1; break; fi
  kill -0 "$server_pid" 2>/dev/null || break
  sleep 0.1
done
[[ -n "$up" ]] || { echo "bench: $SERVER did not start; its log:" >&2; tail -20 "$work/server.log" >&2; exit 2; }

export IMAGE_BUILDER_S3_ENDPOINT="http://127.0.0.1:$port"
export IMAGE_BUILDER_S3_BUCKET=bench
export IMAGE_BUILDER_S3_PATH_STYLE=true
export IMAGE_BUILDER_S3_REGION=us-east-1
export IMAGE_BUILDER_LOG=warn
export RCLONE_CONFIG_BENCH_TYPE=s3
export RCLONE_CONFIG_BENCH_PROVIDER=Other
export RCLONE_CONFIG_BENCH_ENDPOINT="$IMAGE_BUILDER_S3_ENDPOINT"
export RCLONE_CONFIG_BENCH_REGION=us-east-1
export RCLONE_CONFIG_BENCH_FORCE_PATH_STYLE=true
export RCLONE_CONFIG_BENCH_ACCESS_KEY_ID="$SPACES_ACCESS_KEY_ID"
export RCLONE_CONFIG_BENCH_SECRET_ACCESS_KEY="$SPACES_SECRET_ACCESS_KEY"
unset AWS_CA_BUNDLE

echo "bench: generating ${BIG_MIB} MiB object and ${SMALL_COUNT} x ${SMALL_KIB} KiB files in $work" >&2
mkdir -p "$work/src/small"
head -c "$((BIG_MIB << 20))" /dev/urandom >"$work/src/big.bin"
python3 - "$work/src/small" "$SMALL_COUNT" "$SMALL_KIB" <<'PY'
import os, sys
d, n, kib = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
for i in range(n):
    with open(os.path.join(d, f"f{i:05d}.bin"), "wb") as f:
        f.write(os.urandom(kib * 1024))
PY
(cd "$work/src" && sha256sum big.bin >"$work/big.sums" && find small -type f -print0 | xargs -0 sha256sum >"$work/small.sums")

BIG_SHA=b16b16b16b16b16b16b16b16b16b16b16b16b16b
SMALL_SHA=5a115a115a115a115a115a115a115a115a115a11
"$IB" artifact publish --sha "$BIG_SHA" "$work/src/big.bin" >/dev/null
"$IB" artifact publish --sha "$SMALL_SHA" "$work/src/small" >/dev/null

now() { date +%s.%N; }
# best-of-RUNS seconds of a command (fresh destination each run)
best() {
  local best="" t0 t1 dt
  for i in $(seq "$RUNS"); do
    rm -rf "$work/dst"; mkdir -p "$work/dst"; sync
    t0=$(now); "$@" >/dev/null; t1=$(now)
    dt=$(python3 -c "print($t1-$t0)")
    best=$(python3 -c "b='$best'; print(min(float(b), $dt) if b else $dt)")
  done
  echo "$best"
}
ours() { "$IB" artifact pull "$1" --root "$work/dst" >/dev/null 2>&1; }
# rclone with --transfers T (its default is 4): T=16 as a user tuning it would, and
# T=64, the same number of requests in flight as our pull's default.
theirs() {
  rclone copy "bench:bench/builds/$1/" "$work/dst" --transfers "$3" --checkers "$3" \
    --multi-thread-streams 4 --multi-thread-cutoff 64M >/dev/null 2>&1
  (cd "$work/dst" && sha256sum --quiet -c "$2")
}

report() {
  local name=$1 mib=$2 ours_s=$3 t16=$4 t64=$5
  python3 - "$name" "$mib" "$ours_s" "$t16" "$t64" <<'PY'
import sys
name, mib, o, t16, t64 = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5])
print(f"{name}")
print(f"  image-builder pull (64 in flight)        {mib/o:8.1f} MiB/s ({o:6.2f}s)")
print(f"  rclone copy --transfers 16 + sha256sum   {mib/t16:8.1f} MiB/s ({t16:6.2f}s)   ratio {t16/o:5.2f}x")
print(f"  rclone copy --transfers 64 + sha256sum   {mib/t64:8.1f} MiB/s ({t64:6.2f}s)   ratio {t64/o:5.2f}x")
PY
}

echo "bench: ${RUNS} runs each, best time counts" >&2
echo "== artifact pull: server $SERVER on 127.0.0.1, $(nproc) cores, load $(cut -d" " -f1-3 /proc/loadavg) =="
o=$(best ours "$BIG_SHA"); t16=$(best theirs "$BIG_SHA" "$work/big.sums" 16); t64=$(best theirs "$BIG_SHA" "$work/big.sums" 64)
report "1 x ${BIG_MIB} MiB object" "$BIG_MIB" "$o" "$t16" "$t64"
small_mib=$(python3 -c "print($SMALL_COUNT*$SMALL_KIB/1024)")
o=$(best ours "$SMALL_SHA"); t16=$(best theirs "$SMALL_SHA" "$work/small.sums" 16); t64=$(best theirs "$SMALL_SHA" "$work/small.sums" 64)
report "${SMALL_COUNT} x ${SMALL_KIB} KiB files" "$small_mib" "$o" "$t16" "$t64"
