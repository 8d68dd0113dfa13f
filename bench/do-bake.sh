#!/usr/bin/env bash
# Packer 1.6.6's DigitalOcean builder vs `image-builder bake --backend digitalocean`,
# both against the DigitalOcean simulator (do-sim) with the same droplet and
# action delays. Prints the API requests each sent (the simulator's request
# log, by route), the wall time, and the ratios. Goal: image-builder sends at
# most 0.5x Packer's requests.
#
# What is compared: the API side of a bake. Packer runs with
# `communicator: none` (its DigitalOcean builder still creates a temporary SSH
# key, waits for `active`, shuts down, snapshots, destroys); image-builder's
# builder VM is played by the simulator (`play_vm`: it fetches the agent
# through the presigned URL, PUTs the seal report at boot, and powers off one
# action-delay later, like a shutdown). Both tools poll with their defaults
# (Packer: every 3 s; image-builder: 5 s, snapshot polls spread out as it runs).
#
#   BOOT_MS (30000)  ACTION_MS (5000)  SNAPSHOT_MS (120000)   simulator delays
#   PROFILE (debug)                                            cargo profile to build
#
# Needs: packer (Debian's 1.6.6), cargo, python3, s3s-fs (.ci/setup-s3.sh).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BOOT_MS=${BOOT_MS:-30000}
ACTION_MS=${ACTION_MS:-5000}
SNAPSHOT_MS=${SNAPSHOT_MS:-120000}
PROFILE=${PROFILE:-debug}
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}

command -v packer >/dev/null || { echo "do-bake.sh: packer not found: apt-get install packer (Debian's 1.6.6)" >&2; exit 1; }
command -v python3 >/dev/null || { echo "do-bake.sh: python3 not found" >&2; exit 1; }

prof_flag=()
[[ "$PROFILE" == release ]] && prof_flag=(--release)
echo "building do-sim and image-builder ($PROFILE)..." >&2
(cd "$ROOT" && cargo build -q "${prof_flag[@]}" -p do-sim && cargo build -q "${prof_flag[@]}" -p image-builder)
SIM="$TARGET/$PROFILE/do-sim"
IB="$TARGET/$PROFILE/image-builder"

work=$(mktemp -d)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT

# Secrets live in 0600 files / the environment, never in argv.
umask 077
TOKEN="bench-$(od -An -N8 -tx8 /dev/urandom | tr -d ' ')"
printf '%s' "$TOKEN" > "$work/do-token"
S3_KEY=bench-access-key
S3_SECRET="bench-$(od -An -N8 -tx8 /dev/urandom | tr -d ' ')"
printf 'SPACES_ACCESS_KEY_ID=%s\nSPACES_SECRET_ACCESS_KEY=%s\n' "$S3_KEY" "$S3_SECRET" > "$work/space.env"

source "$ROOT/bench/lib/sim.sh"
# The Space: s3s-fs on loopback.
start_s3 "$S3_KEY" "$S3_SECRET"

# The simulator, with the same delays for both tools.
cat > "$work/sim.json" <<EOF
{"token": "$TOKEN", "droplet_boot_ms": $BOOT_MS, "action_ms": $ACTION_MS,
 "action_ms_by_type": {"snapshot": $SNAPSHOT_MS},
 "play_vm": {"result": "ok", "report_after_ms": 0, "after_ms": $ACTION_MS}}
EOF
start_sim "$SIM"

sim_reset() { python3 -c 'import sys,urllib.request; urllib.request.urlopen(urllib.request.Request(sys.argv[1]+"/_sim/requests/reset", method="POST"))' "$API"; }
sim_requests() { python3 -c 'import sys,urllib.request; print(urllib.request.urlopen(sys.argv[1]+"/_sim/requests").read().decode())' "$API"; }
sim_droplets() { python3 -c 'import sys,json,urllib.request; print(len(json.load(urllib.request.urlopen(sys.argv[1]+"/_sim/state"))["droplets"]))' "$API"; }
now_ms() { date +%s%3N; }

# --- Packer ---
cat > "$work/packer.json" <<EOF
{"builders": [{"type": "digitalocean", "api_url": "$API/", "region": "nyc3", "size": "s-1vcpu-1gb",
  "image": "debian-12-x64", "snapshot_name": "packer-bench-{{timestamp}}", "communicator": "none",
  "state_timeout": "10m", "snapshot_timeout": "60m"}]}
EOF
sim_reset
echo "packer build (DigitalOcean builder, communicator none)..." >&2
t0=$(now_ms)
DIGITALOCEAN_API_TOKEN="$TOKEN" CHECKPOINT_DISABLE=1 packer build -color=false "$work/packer.json" > "$work/packer.log" 2>&1 \
    || { cat "$work/packer.log" >&2; exit 1; }
t1=$(now_ms)
sim_requests > "$work/packer-requests.json"
packer_left=$(sim_droplets)

# --- image-builder ---
head -c 4194304 /dev/urandom > "$work/vm-agent"
cat > "$work/spec.yaml" <<'EOF'
name: bench
base:
  digitalocean: debian-12-x64
build_user:
  name: builder
digitalocean:
  region: nyc3
  size: s-1vcpu-1gb
bake:
  timeout: 30m
EOF
sim_reset
echo "image-builder bake --backend digitalocean..." >&2
t2=$(now_ms)
"$IB" bake "$work/spec.yaml" --backend digitalocean --yes --json \
    --api-url "$API" --token-file "$work/do-token" \
    --space-endpoint "http://127.0.0.1:$S3_PORT" --space-bucket bench --space-path-style \
    --space-credentials-file "$work/space.env" --state-dir "$work/state" \
    --agent-bin "$work/vm-agent" --out "$work/out" > "$work/ib-manifest.json" 2> "$work/ib.log" \
    || { cat "$work/ib.log" >&2; exit 1; }
t3=$(now_ms)
sim_requests > "$work/ib-requests.json"
ib_left=$(sim_droplets)

python3 - "$work/packer-requests.json" "$work/ib-requests.json" $((t1 - t0)) $((t3 - t2)) "$packer_left" "$ib_left" \
    "$BOOT_MS" "$ACTION_MS" "$SNAPSHOT_MS" <<'EOF'
import json, sys
p, i = (json.load(open(f)) for f in sys.argv[1:3])
pt, it = int(sys.argv[3]) / 1000, int(sys.argv[4]) / 1000
pl, il = sys.argv[5], sys.argv[6]
boot, action, snap = sys.argv[7:10]
print(f"DigitalOcean bake against do-sim (boot {int(boot)/1000:g}s, actions {int(action)/1000:g}s, snapshot {int(snap)/1000:g}s)")
print()
routes = sorted(set(p["by_route"]) | set(i["by_route"]))
w = max(len(r) for r in routes)
print(f"{'route':<{w}}  {'packer':>7}  {'image-builder':>13}")
for r in routes:
    print(f"{r:<{w}}  {p['by_route'].get(r, 0):>7}  {i['by_route'].get(r, 0):>13}")
print(f"{'TOTAL API requests':<{w}}  {p['total']:>7}  {i['total']:>13}")
print(f"{'wall time (s)':<{w}}  {pt:>7.1f}  {it:>13.1f}")
print(f"{'droplets left':<{w}}  {pl:>7}  {il:>13}")
print()
ratio = i["total"] / p["total"] if p["total"] else float("inf")
print(f"requests: image-builder / packer = {ratio:.2f}  (goal <= 0.50: {'met' if ratio <= 0.5 else 'NOT met'})")
print(f"wall time: image-builder / packer = {it / pt:.2f}")
print("(image-builder also pre-flights: account, droplet count, size/price, base image; and confirms the destroy with a 404.")
print(" Its polls for the seal report go to the Space (S3), not to the DigitalOcean API, and are not counted here.)")
EOF
