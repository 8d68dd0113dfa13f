#!/usr/bin/env bash
# Local bake benchmark: the same provisioning (bench/specs/bench.yaml) on the same base
# (`image-builder base build`: a whole disk that boots by its own GRUB) three ways, then
# boot-to-ready of a worker. All three outputs are whole disks that boot by themselves
# (GPT + GRUB for BIOS and UEFI); none needs a kernel on QEMU's command line.
#
#   (a) image-builder bake --backend qemu --way container   (systemd-nspawn + boot check)
#   (b) image-builder bake --backend qemu --way vm          (full QEMU boot under TCG)
#   (c) packer build templates/packer/qemu-bake.pkr.hcl     (Packer 1.6.6 QEMU builder +
#       the vmagent provisioner running the same provision)
#
# Prints each wall time, the container way's disk assembly and boot check times (from
# its manifest), and the ratios container/packer and vm/packer (medians over RUNS runs).
# Goal: the container way with its boot check <= 0.5x Packer. Then boots a worker from the container-way golden image with
# `image-builder run-local` and measures QEMU start -> agent `ready` and cloud-init done
# -> `ready` (goal <= 1 s), read from the agent's readiness history over SSH.
# Exits 1 if a goal is missed, 2 if something needed is missing.
#
# Env: RUNS (default 1), SPEC (default bench/specs/bench.yaml), CARGO_TARGET_DIR
#      (default target), VM_AGENT_BIN / IMAGE_BUILDER_BIN / PACKER_PLUGIN_BIN (skip
#      that build), WORKER=0 (skip the worker part), KEEP=1 (keep the work dir).
# Needs root and: packer qemu-system-x86 qemu-utils systemd-container mmdebstrap
#      genisoimage e2fsprogs openssh-client python3 python3-yaml gdisk mtools grub-pc-bin
#      grub-efi-amd64-bin fdisk (apt-get install ...).
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
runs="${RUNS:-1}"
spec="$(realpath "${SPEC:-$here/bench/specs/bench.yaml}")"
target="${CARGO_TARGET_DIR:-$here/target}"
export CARGO_TARGET_DIR="$target"

say() { echo "local-bake: $*" >&2; }
die() { echo "local-bake: ERROR: $*" >&2; exit 2; }
need() { command -v "$1" >/dev/null 2>&1 || die "\`$1\` not found: apt-get install -y $2"; }
now() { date +%s.%N; }
secs() { python3 -c 'import sys; print("%.1f" % (float(sys.argv[2]) - float(sys.argv[1])))' "$1" "$2"; }

[ "$(id -u)" = 0 ] || die "needs root (systemd-nspawn, mkfs.ext4 -d, mmdebstrap in root mode)"
[[ "$runs" =~ ^[1-9][0-9]*$ ]] || die "RUNS must be a positive integer, got '$runs'"
[ -f "$spec" ] || die "spec $spec does not exist"
need packer packer
need qemu-system-x86_64 qemu-system-x86
need qemu-img qemu-utils
need systemd-nspawn systemd-container
need mmdebstrap mmdebstrap
need genisoimage genisoimage
need debugfs e2fsprogs
need sfdisk fdisk
need sgdisk gdisk
need mformat mtools
need grub-mkimage grub-common
[ -f /usr/lib/grub/i386-pc/boot.img ] || die "GRUB's BIOS images are missing: apt-get install -y grub-pc-bin"
[ -d /usr/lib/grub/x86_64-efi ] || die "GRUB's EFI modules are missing: apt-get install -y grub-efi-amd64-bin"
need ssh openssh-client
need ssh-keygen openssh-client
need python3 python3
python3 -c 'import yaml' 2>/dev/null || die "python3 cannot import yaml: apt-get install -y python3-yaml"
need cargo "rust toolchain (rustup)"
packer_version="$(packer version 2>/dev/null | head -1)"
case "$packer_version" in
  "Packer v1.6."*) ;;
  *) say "warning: the template is written for Debian's Packer 1.6.6; found '$packer_version'" ;;
esac

# --- state, cleaned up on any exit -------------------------------------------------
work="$(mktemp -d "${TMPDIR:-/var/tmp}/local-bake-bench.XXXXXX")"
worker=""
ib=""
cleanup() {
  local rc=$?
  if [ -n "$worker" ] && [ -n "$ib" ]; then
    "$ib" stop-local "$worker" >/dev/null 2>&1 || say "could not stop worker $worker (see: $ib ls-local)"
  fi
  if [ "${KEEP:-0}" = 1 ]; then say "work dir kept: $work"; else rm -rf "$work"; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'say "interrupted"; exit 130' INT
trap 'say "terminated"; exit 143' TERM

# --- builds --------------------------------------------------------------------------
cd "$here"
if [ -n "${IMAGE_BUILDER_BIN:-}" ]; then
  ib="$IMAGE_BUILDER_BIN"
else
  say "cargo build -p image-builder (CARGO_TARGET_DIR=$target)"
  cargo build -q -p image-builder >&2 || die "cargo build -p image-builder failed"
  ib="$target/debug/image-builder"
fi
if [ -n "${PACKER_PLUGIN_BIN:-}" ]; then
  plugin="$PACKER_PLUGIN_BIN"
else
  say "cargo build -p packer-plugin"
  cargo build -q -p packer-plugin >&2 || die "cargo build -p packer-plugin failed"
  plugin="$target/debug/packer-plugin-vmagent"
fi
if [ -n "${VM_AGENT_BIN:-}" ]; then
  agent="$VM_AGENT_BIN"
else
  say "vm-agent/build-static.sh"
  agent="$(bash "$here/vm-agent/build-static.sh")" || die "vm-agent/build-static.sh failed"
fi
for f in "$ib" "$plugin" "$agent"; do [ -x "$f" ] || die "$f is not an executable"; done

# --- the base --------------------------------------------------------------------------
say "image-builder base build (cached after the first build; ~2 min otherwise)"
"$ib" base build --json >"$work/base.json" 2>"$work/base.log" \
  || { tail -30 "$work/base.log" >&2; die "image-builder base build failed"; }
read -r base_disk base_key < <(python3 -c '
import json, sys
b = json.load(open(sys.argv[1]))
print(b["disk"], b["key"])' "$work/base.json")
[ -f "$base_disk" ] || die "base disk $base_disk is missing"

# --- Packer setup: plugin, generated key, seed, commands from the spec ----------------
mkdir -p "$work/plugins" "$work/packer-config" "$work/seed"
ln -s "$(realpath "$plugin")" "$work/plugins/packer-provisioner-vmagent"
key_comment="packer-bake-generated"
ssh-keygen -q -t ed25519 -N '' -C "$key_comment" -f "$work/id_ed25519"
cp "$here/templates/packer/qemu/meta-data" "$here/templates/packer/qemu/vendor-data" "$work/seed/"
python3 - "$spec" "$work/id_ed25519.pub" "$here/templates/packer/qemu/user-data.in" \
  "$work/seed/user-data" "$work/commands.pkrvars.hcl" <<'PY'
import json, sys, yaml
spec_path, pub, tmpl, user_data, varfile = sys.argv[1:]
spec = yaml.safe_load(open(spec_path))
user = spec["build_user"]["name"]
keys = [open(pub).read().strip()] + list(spec["build_user"].get("ssh_authorized_keys", []))
text = open(tmpl).read().replace("@BUILD_USER@", user).replace(
    "@SSH_KEYS@", "\n".join("      - " + json.dumps(k) for k in keys))
doc = yaml.safe_load(text)  # what cloud-init will parse
assert doc["users"][0]["name"] == user and len(doc["users"][0]["ssh_authorized_keys"]) == len(keys), doc
open(user_data, "w").write(text)
cmds = [c if isinstance(c, str) else c["run"] for c in spec.get("commands", [])]
def hcl(s):
    return json.dumps(s).replace("${", "$${").replace("%{", "%%{")
open(varfile, "w").write("build_user = %s\ncommands = [%s]\n" % (hcl(user), ", ".join(hcl(c) for c in cmds)))
PY
build_user="$(python3 -c 'import sys, yaml; print(yaml.safe_load(open(sys.argv[1]))["build_user"]["name"])' "$spec")"

# --- one bake each way -------------------------------------------------------------------
# Each timed bake starts with no dirty pages left by the one before (as hyperfine's
# `--prepare sync`): the previous bake's 2 GB of writes must not slow the next one's copy.
bake_ib() { # way out log -> prints wall seconds
  local way="$1" out="$2" log="$3" t0 t1
  sync
  t0=$(now)
  if ! "$ib" bake "$spec" --backend qemu --way "$way" --agent-bin "$agent" --json --out "$out" \
      >"$out.manifest.json" 2>"$log"; then
    tail -40 "$log" >&2; die "image-builder bake --way $way failed (log above)"
  fi
  t1=$(now)
  secs "$t0" "$t1"
}

bake_packer() { # out log agent_config -> prints wall seconds
  local out="$1" log="$2" cfg="$3" t0 t1
  sync
  t0=$(now)
  if ! (cd "$here/templates/packer" && CHECKPOINT_DISABLE=1 PACKER_PLUGIN_PATH="$work/plugins" \
      PACKER_CONFIG_DIR="$work/packer-config" PACKER_CACHE_DIR="$work/packer_cache" \
      packer build -color=false -var-file="$work/commands.pkrvars.hcl" \
        -var "base_disk=$base_disk" \
        -var "seed_dir=$work/seed" -var "ssh_private_key_file=$work/id_ed25519" \
        -var "generated_key_comment=$key_comment" \
        -var "agent_path=$agent" -var "agent_config=$cfg" \
        -var "output_dir=$out" -var "console_log=$out.console.log" \
        qemu-bake.pkr.hcl) >"$log" 2>&1 </dev/null; then
    tail -40 "$log" >&2; [ -f "$out.console.log" ] && tail -20 "$out.console.log" >&2
    die "packer build failed (log above)"
  fi
  t1=$(now)
  secs "$t0" "$t1"
}

manifest_field() { # manifest expr
  python3 -c '
import json, sys
b = json.load(open(sys.argv[1]))["builds"][0]
t = {x["step"]: x["seconds"] for x in b["image_builder"]["timings"]}
print(eval(sys.argv[2], {"b": b, "t": t}))' "$1" "$2"
}

declare -a T_OTHER T_CONT T_BOOT T_PREP T_PROV T_DISK T_IMG T_NOCHECK T_VM T_PACKER
golden=""
run_container() {
  say "run $i/$runs: (a) image-builder bake --way container"
  t=$(bake_ib container "$r/container" "$r/container.log")
  T_CONT+=("$t")
  T_BOOT+=("$(manifest_field "$r/container.manifest.json" '"%.1f" % t.get("boot_check", 0)')")
  T_PROV+=("$(manifest_field "$r/container.manifest.json" '"%.1f" % t.get("provision", 0)')")
  T_PREP+=("$(manifest_field "$r/container.manifest.json" '"%.1f" % t.get("prepare", 0)')")
  T_DISK+=("$(manifest_field "$r/container.manifest.json" '"%.1f" % t.get("disk", 0)')")
  T_IMG+=("$(manifest_field "$r/container.manifest.json" '"%.1f" % t.get("image", 0)')")
  T_OTHER+=("$(manifest_field "$r/container.manifest.json" '"%.1f" % ('"$t"' - sum(t.values()))')")
  T_NOCHECK+=("$(python3 -c 'import sys; print("%.1f" % (float(sys.argv[1]) - float(sys.argv[2])))' "$t" "${T_BOOT[-1]}")")
  say "  container: ${t}s (prepare ${T_PREP[-1]}s, nspawn provisioning ${T_PROV[-1]}s, disk ${T_DISK[-1]}s, qcow2 ${T_IMG[-1]}s, boot check ${T_BOOT[-1]}s, other ${T_OTHER[-1]}s)"
  if [ -z "$golden" ]; then
    golden="$(manifest_field "$r/container.manifest.json" 'b["artifact_id"]')"
    # The Packer run bakes the exact agent config image-builder put in the image.
    qemu-img convert -O raw "$golden" "$work/golden.raw"
    root_offset="$(sfdisk --json "$work/golden.raw" | python3 -c '
import json, sys
t = json.load(sys.stdin)["partitiontable"]
print([p for p in t["partitions"] if p.get("name") == "root"][0]["start"] * t["sectorsize"])')" \
      || die "no root partition in $golden"
    debugfs -R 'cat /etc/vm-agent/config.toml' "$work/golden.raw?offset=$root_offset" >"$work/vm-agent.toml" 2>/dev/null
    rm -f "$work/golden.raw"
    grep -q '^\[destroy\]' "$work/vm-agent.toml" \
      || die "could not read /etc/vm-agent/config.toml from the container-way image $golden"
  else
    rm -rf "$r/container"
  fi
}
run_vm() {
  say "run $i/$runs: (b) image-builder bake --way vm"
  t=$(bake_ib vm "$r/vm" "$r/vm.log")
  T_VM+=("$t"); rm -rf "$r/vm"
  say "  vm: ${t}s"
}
run_packer() {
  say "run $i/$runs: (c) packer build templates/packer/qemu-bake.pkr.hcl"
  t=$(bake_packer "$r/packer" "$r/packer.log" "$work/vm-agent.toml")
  T_PACKER+=("$t")
  [ -f "$r/packer/golden.qcow2" ] || die "packer finished but $r/packer/golden.qcow2 is missing"
  rm -rf "$r/packer"
  say "  packer: ${t}s"
}
# The order rotates (a b c, b c a, c a b, ...): each way runs after each other way as
# often, so what one leaves behind (page cache evicted, the host still writing back the
# 2 GB the vm way and Packer wrote) weighs on every way alike. Run 1 starts with (a):
# Packer needs the agent config read from its image.
ways=(run_container run_vm run_packer)
for i in $(seq 1 "$runs"); do
  r="$work/run$i"; mkdir -p "$r"
  for k in 0 1 2; do
    "${ways[$(( (i - 1 + k) % 3 ))]}"
  done
done

median() { python3 -c 'import statistics, sys; print("%.1f" % statistics.median(float(x) for x in sys.argv[1:]))' "$@"; }
m_cont=$(median "${T_CONT[@]}"); m_boot=$(median "${T_BOOT[@]}"); m_prov=$(median "${T_PROV[@]}")
m_img=$(median "${T_IMG[@]}"); m_disk=$(median "${T_DISK[@]}"); m_prep=$(median "${T_PREP[@]}"); m_other=$(median "${T_OTHER[@]}"); m_nocheck=$(median "${T_NOCHECK[@]}")
m_vm=$(median "${T_VM[@]}"); m_packer=$(median "${T_PACKER[@]}")
ratio() { python3 -c 'import sys; print("%.2f" % (float(sys.argv[1]) / float(sys.argv[2])))' "$1" "$2"; }
r_cont=$(ratio "$m_cont" "$m_packer"); r_vm=$(ratio "$m_vm" "$m_packer"); r_nocheck=$(ratio "$m_nocheck" "$m_packer")
fail=0

echo "== local bake: $(basename "$spec"), base bookworm-$base_key, $runs run(s), medians =="
echo "   host: $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg), $packer_version"
printf '%-48s %8ss   runs: %s\n' "(a) image-builder bake --way container" "$m_cont" "${T_CONT[*]}"
printf '%-48s %8ss   runs: %s\n' "      of which prepare (base tree: spare or cp -a)" "$m_prep" "${T_PREP[*]}"
printf '%-48s %8ss   runs: %s\n' "      of which nspawn provisioning" "$m_prov" "${T_PROV[*]}"
printf '%-48s %8ss   runs: %s\n' "      of which disk (GPT, ext4, ESP, GRUB)" "$m_disk" "${T_DISK[*]}"
printf '%-48s %8ss   runs: %s\n' "      of which qcow2 (convert zstd)" "$m_img" "${T_IMG[*]}"
printf '%-48s %8ss   runs: %s\n' "      of which boot check (SeaBIOS, qemu64, bootcmd)" "$m_boot" "${T_BOOT[*]}"
printf '%-48s %8ss   runs: %s\n' "      other (outside the manifest's timed steps)" "$m_other" "${T_OTHER[*]}"
printf '%-48s %8ss   runs: %s\n' "    container way without the boot check" "$m_nocheck" "${T_NOCHECK[*]}"
printf '%-48s %8ss   runs: %s\n' "(b) image-builder bake --way vm" "$m_vm" "${T_VM[*]}"
printf '%-48s %8ss   runs: %s\n' "(c) packer build (qemu + vmagent)" "$m_packer" "${T_PACKER[*]}"
# The goal (#14) is the container way WITH its boot check against Packer: both outputs are
# disks that were booted once. Without the boot check it is reported beside.
if python3 -c 'import sys; sys.exit(0 if float(sys.argv[1]) <= 0.5 else 1)' "$r_cont"; then verdict=OK; else verdict=MISSED; fail=1; fi
printf '%-48s %8sx  (goal <= 0.5x) %s\n' "ratio container with boot check / packer" "$r_cont" "$verdict"
printf '%-48s %8sx  (boot check %ss left out)\n' "ratio container without boot check / packer" "$r_nocheck" "$m_boot"
printf '%-48s %8sx\n' "ratio vm / packer" "$r_vm"

# --- boot-to-ready of a worker ----------------------------------------------------------
if [ "${WORKER:-1}" = 1 ]; then
  worker="bench-$$"
  port_file="$work/worker.json"
  say "worker: image-builder run-local $golden"
  t0=$(now)
  "$ib" run-local "$golden" --spec "$spec" --name "$worker" --ssh-key "$work/id_ed25519.pub" \
    --idle-timeout 10m --json >"$port_file" 2>"$work/run-local.log" \
    || { cat "$work/run-local.log" >&2; worker=""; die "image-builder run-local failed"; }
  read -r ssh_port console < <(python3 -c '
import json, sys
w = json.load(open(sys.argv[1])); print(w["ssh_port"], w["console"])' "$port_file")
  sshw() {
    ssh -q -i "$work/id_ed25519" -p "$ssh_port" -o BatchMode=yes -o ConnectTimeout=5 \
      -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR \
      "$build_user@127.0.0.1" "$@"
  }
  deadline=$(( $(date +%s) + 600 ))
  stage=""
  while :; do
    if sshw vm-agent status --json >"$work/status.json" 2>/dev/null; then
      stage="$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["stage"])' "$work/status.json" 2>/dev/null || true)"
      case "$stage" in ready|degraded) break ;; esac
    fi
    [ "$(date +%s)" -lt "$deadline" ] || { tail -30 "$console" >&2 || true; die "worker not ready after 600 s (last stage: ${stage:-none})"; }
    sleep 0.5
  done
  t_seen=$(now)
  sshw cat /run/cloud-init/status.json >"$work/ci-status.json" 2>/dev/null || echo '{}' >"$work/ci-status.json"
  python3 - "$work/status.json" "$work/ci-status.json" "$t0" "$t_seen" "$stage" >"$work/ready.txt" <<'PY'
import json, sys
from datetime import datetime
st = json.load(open(sys.argv[1])); ci = json.load(open(sys.argv[2]))
t0, seen, stage = float(sys.argv[3]), float(sys.argv[4]), sys.argv[5]
ts = lambda s: datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp()
at = {}
for h in st["history"]:
    at.setdefault(h["stage"], ts(h["at"]))
ready = at.get("ready", at.get("degraded"))
final = (ci.get("v1") or {}).get("modules-final") or {}
ci_done = final.get("finished")
noticed = at.get("fetching-artifacts")
print("qemu_to_ready_poll=%.1f" % (seen - t0))
print("qemu_to_ready_guest=%.1f" % (ready - t0))
print("boot_to_ready=%.1f" % (ready - ts(st["boot_time"])))
print("ci_done_to_ready=%s" % ("%.2f" % (ready - ci_done) if ci_done else "n/a"))
print("noticed_to_ready=%s" % ("%.2f" % (ready - noticed) if noticed else "n/a"))
print("stage=%s" % stage)
PY
  # shellcheck disable=SC1091
  . "$work/ready.txt"
  "$ib" stop-local "$worker" >/dev/null 2>&1 || say "stop-local $worker failed"
  worker=""
  echo "== worker boot-to-ready (run-local of the container-way image; final stage: $stage) =="
  printf '%-48s %8ss\n' "QEMU start -> ready (host, SSH poll)" "$qemu_to_ready_poll"
  printf '%-48s %8ss\n' "QEMU start -> ready (guest clock)" "$qemu_to_ready_guest"
  printf '%-48s %8ss\n' "kernel boot -> ready (agent history)" "$boot_to_ready"
  if [ "$ci_done_to_ready" = n/a ]; then
    verdict="(no modules-final timestamp in /run/cloud-init/status.json)"; fail=1
  elif python3 -c 'import sys; sys.exit(0 if float(sys.argv[1]) <= 1.0 else 1)' "$ci_done_to_ready"; then
    verdict="(goal <= 1 s) OK"
  else
    verdict="(goal <= 1 s) MISSED"; fail=1
  fi
  printf '%-48s %8ss  %s\n' "cloud-init done -> ready" "$ci_done_to_ready" "$verdict"
  printf '%-48s %8ss\n' "  of which: agent saw cloud-init -> ready" "$noticed_to_ready"
  [ "$stage" = ready ] || { say "worker ended in stage '$stage', not ready"; fail=1; }
fi
exit "$fail"
