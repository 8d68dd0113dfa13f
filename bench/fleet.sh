#!/usr/bin/env bash
# Fleets: `image-builder fleet up -n 1` and `-n 5` until every worker is ready, beside the
# way the shell scripts it replaces do it (create droplets one by one, wait for `active`,
# then an SSH loop of `cloud-init status --wait` with StrictHostKeyChecking=accept-new),
# in one run, against do-sim's machine mode (droplets are real systemd-nspawn containers
# of the base tree, booted from a snapshot baked here first).
#
# Prints wall time and API requests per worker for each, and the ratios. Goals:
# `-n 5` within 1.2x of `-n 1`; fewer API requests per worker than the loop.
#
#   RUNS (3)        repetitions of each measurement (medians are printed)
#   PROFILE (debug) cargo profile of do-sim and image-builder
#
# Needs root (machine mode), cargo, python3, curl, ssh, s3s-fs (.ci/setup-s3.sh),
# and the base tree (`image-builder base build`, cached).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
RUNS=${RUNS:-3}
PROFILE=${PROFILE:-debug}
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
[[ $(id -u) -eq 0 ]] || { echo "fleet.sh: machine mode needs root" >&2; exit 1; }
for t in python3 curl ssh; do command -v "$t" >/dev/null || { echo "fleet.sh: $t missing" >&2; exit 1; }; done

prof_flag=()
[[ "$PROFILE" == release ]] && prof_flag=(--release)
echo "building do-sim, image-builder ($PROFILE) and the static agent..." >&2
(cd "$ROOT" && cargo build -q "${prof_flag[@]}" -p do-sim -p image-builder)
SIM="$TARGET/$PROFILE/do-sim"
IB="$TARGET/$PROFILE/image-builder"
AGENT=$(CARGO_PROFILE_RELEASE_LTO=off CARGO_PROFILE_RELEASE_CODEGEN_UNITS=16 bash "$ROOT/vm-agent/build-static.sh")
ROOTFS=$("$IB" base build --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["rootfs"])')

work=$(mktemp -d)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

# Secrets: 0600 files and the environment, never argv. (Only these files get umask 077:
# the simulator's droplet trees must keep ordinary modes.)
rand() { od -An -N8 -tx8 /dev/urandom | tr -d ' '; }
TOKEN="bench-$(rand)"; WORKER_TOKEN="bench-worker-$(rand)"
S3_KEY=bench-access-key; S3_SECRET="bench-$(rand)"
(
    umask 077
    printf '%s' "$TOKEN" > "$work/do-token"
    printf 'SPACES_ACCESS_KEY_ID=%s\nSPACES_SECRET_ACCESS_KEY=%s\n' "$S3_KEY" "$S3_SECRET" > "$work/space.env"
)
export DIGITALOCEAN_TOKEN="$TOKEN" DIGITALOCEAN_WORKER_TOKEN="$WORKER_TOKEN"
export IMAGE_BUILDER_STATE_DIR="$work/state" IMAGE_BUILDER_CONFIG="$work/none.toml"

source "$ROOT/bench/lib/sim.sh"
start_s3 "$S3_KEY" "$S3_SECRET"

cat > "$work/sim.json" <<EOF
{"token": "$TOKEN",
 "scoped_tokens": [{"name": "worker", "token": "$WORKER_TOKEN", "scopes": ["droplet:read", "droplet:delete"]}],
 "machines": {"base_rootfs": "$ROOTFS", "forwards": ["127.0.0.1:$S3_PORT"], "state_dir": "$work/machines"}}
EOF
start_sim "$SIM"

sim_reset() { curl -fsS -X POST "$API/_sim/requests/reset" >/dev/null; }
sim_total() { curl -fsS "$API/_sim/requests" | python3 -c 'import json,sys; print(json.load(sys.stdin)["total"])'; }
now_ms() { date +%s%3N; }

cat > "$work/spec.yaml" <<'EOF'
name: benchfleet
base:
  digitalocean: debian-12-x64
build_user:
  name: builder
agent:
  idle_timeout: 30m
digitalocean:
  region: nyc3
  size: s-1vcpu-1gb
EOF

echo "baking the golden snapshot in machine mode..." >&2
"$IB" bake "$work/spec.yaml" --backend digitalocean --yes --json --api-url "$API" --token-file "$work/do-token" \
    --space-endpoint "http://127.0.0.1:$S3_PORT" --space-bucket bench --space-path-style \
    --space-credentials-file "$work/space.env" --state-dir "$work/bakes" --poll-interval 200ms \
    --agent-bin "$AGENT" --out "$work/out" > "$work/bake.json" 2> "$work/bake.log" \
    || { cat "$work/bake.log" >&2; exit 1; }
IMAGE=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["builds"][0]["artifact_id"].split(":")[1])' "$work/bake.json")

# image-builder: `fleet up -n N` returns when every worker's agent is ready (pinned SSH).
ib_up() {
    local n=$1 name=$2
    sim_reset
    local t0; t0=$(now_ms)
    "$IB" fleet up "$work/spec.yaml" -n "$n" --name "$name" --image "$IMAGE" --yes --poll 250ms \
        --api-url "$API" > /dev/null 2> "$work/up-$name.log" || { cat "$work/up-$name.log" >&2; exit 1; }
    local t1; t1=$(now_ms)
    echo "$((t1 - t0)) $(sim_total)"
    "$IB" fleet down "$name" --yes --poll 250ms --api-url "$API" > /dev/null 2>&1
}

# The shell way: one POST per droplet, poll each until active, then an SSH loop of
# `cloud-init status --wait` with accept-new (the same user-data and key, so the same
# machines come up; only the orchestration differs).
"$IB" fleet user-data "$work/spec.yaml" --name loop -o "$work/loop-ud.yaml" 2>/dev/null
KEY="$IMAGE_BUILDER_STATE_DIR/fleets/loop/id_ed25519"
loop_up() {
    local n=$1 i ids=() ips=()
    sim_reset
    local t0; t0=$(now_ms)
    for i in $(seq "$n"); do
        body=$(python3 -c 'import json,sys; print(json.dumps({"name": sys.argv[1], "region": "nyc3", "size": "s-1vcpu-1gb", "image": int(sys.argv[2]), "tags": ["loop"], "user_data": open(sys.argv[3]).read()}))' \
            "loop-$i" "$IMAGE" "$work/loop-ud.yaml")
        ids+=("$(curl -fsS -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' -d "$body" "$API/v2/droplets" \
            | python3 -c 'import json,sys; print(json.load(sys.stdin)["droplet"]["id"])')")
    done
    for id in "${ids[@]}"; do
        while :; do
            ip=$(curl -fsS -H "Authorization: Bearer $TOKEN" "$API/v2/droplets/$id" | python3 -c '
import json,sys
d = json.load(sys.stdin)["droplet"]
print(d["networks"]["v4"][0]["ip_address"] if d["status"] == "active" else "")')
            [[ -n "$ip" ]] && break
            sleep 1
        done
        ips+=("$ip")
    done
    for ip in "${ips[@]}"; do
        until ssh -q -o StrictHostKeyChecking=accept-new -o UserKnownHostsFile="$work/loop-known" -o BatchMode=yes \
            -o ConnectTimeout=5 -i "$KEY" "builder@$ip" cloud-init status --wait >/dev/null 2>&1; do sleep 1; done
    done
    local t1; t1=$(now_ms)
    echo "$((t1 - t0)) $(sim_total)"
    for id in "${ids[@]}"; do curl -fsS -X DELETE -H "Authorization: Bearer $TOKEN" "$API/v2/droplets/$id" >/dev/null; done
    rm -f "$work/loop-known"
}

results="$work/results"
: > "$results"
for r in $(seq "$RUNS"); do
    echo "run $r/$RUNS: fleet up -n 1, -n 5, shell loop -n 5..." >&2
    echo "ib1 $(ib_up 1 "b1r$r")" >> "$results"
    echo "ib5 $(ib_up 5 "b5r$r")" >> "$results"
    echo "loop5 $(loop_up 5)" >> "$results"
done

python3 - "$results" <<'EOF'
import statistics, sys
rows = {}
for line in open(sys.argv[1]):
    k, ms, req = line.split()
    rows.setdefault(k, []).append((int(ms) / 1000, int(req)))
def med(k, i): return statistics.median(r[i] for r in rows[k])
n = {"ib1": 1, "ib5": 5, "loop5": 5}
print("fleet up to all ready, against do-sim machine mode (median of %d runs)" % len(rows["ib1"]))
print()
print(f"{'':<28} {'wall (s)':>9} {'API requests':>13} {'per worker':>11}")
for k, label in [("ib1", "image-builder fleet up -n 1"), ("ib5", "image-builder fleet up -n 5"), ("loop5", "shell loop, 5 workers")]:
    print(f"{label:<28} {med(k,0):>9.1f} {med(k,1):>13.0f} {med(k,1)/n[k]:>11.1f}")
print()
r = med("ib5", 0) / med("ib1", 0)
print(f"-n 5 / -n 1 wall time: {r:.2f}x (goal <= 1.2x) {'OK' if r <= 1.2 else 'MISSED'}")
q = (med("ib5", 1) / 5) / (med("loop5", 1) / 5)
print(f"requests per worker, fleet up / shell loop: {q:.2f}x (goal < 1) {'OK' if q < 1 else 'MISSED'}")
w = med("ib5", 0) / med("loop5", 0)
print(f"wall time, fleet up -n 5 / shell loop: {w:.2f}x")
EOF
