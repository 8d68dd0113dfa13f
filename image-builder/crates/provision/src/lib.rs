//! In-VM provisioning steps, shared by the cloud-init renderer and the Packer plugin.
//!
//! Every step is a complete POSIX `sh` script meant to run as root with `sh -eu`
//! (a child shell, so `set -e` really applies: POSIX shells ignore `set -e` inside a
//! function called from an `if`/`||` context, which a runner calling steps as functions would
//! be). The
//! renderer writes them to files and runs them from `runcmd`; the Packer plugin
//! sends them through Packer's communicator. Nothing here depends on the host.
//!
//! The known first-boot fixes live here, once:
//! - an apt drop-in with `DPkg::Lock::Timeout`, installed before any package work;
//! - a bounded wait for apt's own boot-time jobs (apt-daily, unattended-upgrades)
//!   and for whatever else holds the dpkg lock;
//! - `apt-get update` retried (bounded) while another process holds the lists lock,
//!   which `DPkg::Lock::Timeout` does not cover;
//! - a sudoers drop-in for the build user validated with `visudo -cf` before it is
//!   moved into place;
//! - a seal that removes cloud-init state, logs and build secrets before a snapshot.
//!
//! `cloud-init status --wait` appears only in [`wait_cloud_init_outside`], which is
//! for callers outside cloud-init (Packer over SSH). Called from inside a cloud-init
//! stage it would wait for the stage it runs in, forever.

use std::time::Duration;

/// Where provisioning keeps its scripts and staged files in the VM (removed by the seal).
pub const WORK_DIR: &str = "/var/lib/image-builder";
/// Runtime state of provisioning (tmpfs: never part of an image).
pub const RUN_DIR: &str = "/run/image-builder";
/// The apt drop-in that makes apt/dpkg wait for the dpkg lock instead of failing.
pub const APT_LOCK_DROPIN: &str = "/etc/apt/apt.conf.d/90image-builder-dpkg-lock";
/// Where the vm-agent binary is installed.
pub const AGENT_BIN: &str = "/usr/local/bin/vm-agent";
/// Where the vm-agent systemd unit is installed.
pub const AGENT_UNIT: &str = "/etc/systemd/system/vm-agent.service";
/// The vm-agent systemd unit itself (`templates/systemd/vm-agent.service`), one
/// definition for every route into an image (cloud-init bakes and Packer).
pub const AGENT_UNIT_FILE: &str = include_str!("../../../../templates/systemd/vm-agent.service");
/// vm-agent's config file (vm-agent's default `--config`; one definition, in agent-config).
pub use agent_config::DEFAULT_CONFIG_PATH as AGENT_CONFIG_PATH;
/// vm-agent's secrets file (vm-agent's default `paths.secrets_file`; mode 0600).
pub use agent_config::DEFAULT_SECRETS_PATH as AGENT_SECRETS_PATH;
/// Non-secret record of the bake, kept in the image.
pub const BAKED_INFO: &str = "/etc/image-builder/baked.json";

/// One provisioning step: a name (shown in progress and in the seal report) and a
/// complete `sh` script.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Step {
    /// Short kebab-case name, e.g. `apt-update`.
    pub name: String,
    /// The script, starting with a shebang and `set -eu`.
    pub script: String,
}

impl Step {
    fn new(name: impl Into<String>, body: &str) -> Self {
        let name = name.into();
        Step {
            script: format!("#!/bin/sh\n# image-builder step: {name}\nset -eu\n{body}"),
            name,
        }
    }
}

/// A user command as a step: the snippet runs with `sh -eu`.
pub fn command(name: &str, run: &str) -> Step {
    let run = if run.ends_with('\n') {
        run.to_owned()
    } else {
        format!("{run}\n")
    };
    Step::new(name, &run)
}

/// Quote a string for POSIX `sh` (single quotes, `'` spelled `'\''`).
pub fn sh_quote(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:=@%+,".contains(c))
    {
        return s.to_owned();
    }
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// Shell that writes `content` to `path` exactly (via a temp file and rename).
fn write_file_snippet(path: &str, content: &str, mode: &str) -> String {
    let p = sh_quote(path);
    format!(
        "mkdir -p \"$(dirname {p})\"\n(umask 077 && printf '%s' {c} > {p}.tmp)\nchmod {mode} {p}.tmp\nmv -f {p}.tmp {p}\n",
        c = sh_quote(content),
    )
}

/// Content of the apt lock drop-in.
pub fn apt_lock_dropin_content(lock_timeout: Duration) -> String {
    format!(
        "// Installed by image-builder: wait for the dpkg lock instead of failing.\nDPkg::Lock::Timeout \"{}\";\n",
        lock_timeout.as_secs().max(1)
    )
}

/// Install the apt lock drop-in (for callers that cannot use cloud-init's write_files).
pub fn apt_lock_dropin(lock_timeout: Duration) -> Step {
    Step::new(
        "apt-lock-dropin",
        &write_file_snippet(
            APT_LOCK_DROPIN,
            &apt_lock_dropin_content(lock_timeout),
            "0644",
        ),
    )
}

/// Wait (bounded) until apt's boot-time jobs are done and no apt/dpkg process runs.
pub fn wait_apt_idle(timeout: Duration) -> Step {
    let body = format!(
        r#"deadline=$(( $(date +%s) + {secs} ))
busy() {{
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
}}
while who=$(busy); do
  if [ "$(date +%s)" -ge "$deadline" ]; then
    echo "image-builder: apt is still busy after {secs}s ($who); continuing, DPkg::Lock::Timeout applies" >&2
    break
  fi
  echo "image-builder: waiting for apt to be idle: $who"
  sleep 3
done
"#,
        secs = timeout.as_secs().max(1)
    );
    Step::new("wait-apt-idle", &body)
}

/// `apt-get update`, retried while another process holds the lists lock (bounded).
pub fn apt_update(retries: u32) -> Step {
    let body = format!(
        r#"export DEBIAN_FRONTEND=noninteractive
n=0
while :; do
  n=$((n + 1))
  # apt-get update exits 0 when index files fail to download: treat that as a failure.
  if out=$(apt-get update -q 2>&1) &&
     ! printf '%s\n' "$out" | grep -q -e '^W: Failed to fetch' -e '^E: ' -e 'Some index files failed to download'; then
    printf '%s\n' "$out"; break
  fi
  printf '%s\n' "$out" >&2
  if [ "$n" -ge {retries} ]; then
    echo "image-builder: apt-get update failed {retries} times; giving up" >&2
    exit 1
  fi
  case "$out" in
    *"Could not get lock"*|*"lists/lock"*|*"Unable to lock directory"*) why="the lists lock is held" ;;
    *"Failed to fetch"*|*"index files failed"*) why="index files failed to download" ;;
    *) why="it failed" ;;
  esac
  echo "image-builder: apt-get update: $why; retry $n/{retries} in $((n * 3))s" >&2
  sleep $((n * 3))
done
"#,
        retries = retries.max(1)
    );
    Step::new("apt-update", &body)
}

const APT_GET: &str =
    "apt-get -y -q -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold";

/// `apt-get upgrade`.
pub fn apt_upgrade() -> Step {
    Step::new(
        "apt-upgrade",
        &format!("export DEBIAN_FRONTEND=noninteractive\n{APT_GET} upgrade\n"),
    )
}

/// `apt-get install` of the given packages (a transient dpkg failure is retried once).
pub fn apt_install(packages: &[String]) -> Step {
    let list = packages
        .iter()
        .map(|p| sh_quote(p))
        .collect::<Vec<_>>()
        .join(" ");
    Step::new(
        "apt-install",
        &format!(
            "export DEBIAN_FRONTEND=noninteractive\n{APT_GET} install {list} || {{\n  echo 'image-builder: apt-get install failed; retrying once' >&2\n  sleep 5\n  {APT_GET} install {list}\n}}\n"
        ),
    )
}

/// The sudoers drop-in path for a user.
pub fn sudoers_path(user: &str) -> String {
    format!("/etc/sudoers.d/90-{user}")
}

/// Content of the passwordless-sudo drop-in for `user`.
pub fn sudoers_content(user: &str) -> String {
    format!(
        "# Installed by image-builder: passwordless sudo for the build user.\n{user} ALL=(ALL) NOPASSWD:ALL\n"
    )
}

/// Validate a staged sudoers drop-in with `visudo -cf` and move it into place (0440 root:root).
pub fn sudoers_install(user: &str, staged: &str) -> Step {
    let body = format!(
        r#"staged={staged}
target={target}
if ! command -v visudo >/dev/null 2>&1; then
  echo "image-builder: visudo not found: install the sudo package to get passwordless sudo" >&2
  exit 1
fi
chown root:root "$staged"
chmod 0440 "$staged"
visudo -cf "$staged"
mkdir -p /etc/sudoers.d
cp -p "$staged" "$target.tmp"
chmod 0440 "$target.tmp"
mv -f "$target.tmp" "$target"
rm -f "$staged"
visudo -c >/dev/null
"#,
        staged = sh_quote(staged),
        target = sh_quote(&sudoers_path(user)),
    );
    Step::new("sudoers", &body)
}

/// Write, validate and install the sudoers drop-in in one step (no staged file needed).
pub fn sudoers_write_and_install(user: &str) -> Step {
    let staged = format!("{WORK_DIR}/staged/sudoers-90-{user}");
    let write = write_file_snippet(&staged, &sudoers_content(user), "0440");
    let install = sudoers_install(user, &staged);
    let install_body = install
        .script
        .split_once("set -eu\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Step::new("sudoers", &format!("{write}{install_body}"))
}

/// Bounded wait for cloud-init to finish, for callers OUTSIDE cloud-init only (e.g.
/// Packer over SSH). Never use this from user-data: it would wait for itself.
pub fn wait_cloud_init_outside(timeout: Duration) -> Step {
    let body = format!(
        r#"if ! command -v cloud-init >/dev/null 2>&1; then
  echo "image-builder: cloud-init is not installed; nothing to wait for"
  exit 0
fi
rc=0
timeout {secs} cloud-init status --wait >/dev/null || rc=$?
case "$rc" in
  0) echo "image-builder: cloud-init is done" ;;
  124) echo "image-builder: cloud-init did not finish within {secs}s" >&2; exit 1 ;;
  2) echo "image-builder: cloud-init finished with recoverable errors" >&2; cloud-init status --long >&2 || true ;;
  *) echo "image-builder: cloud-init failed (status exit $rc)" >&2; cloud-init status --long >&2 || true; exit 1 ;;
esac
"#,
        secs = timeout.as_secs().max(1)
    );
    Step::new("wait-cloud-init", &body)
}

/// Where the agent binary comes from during a bake.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AgentSource {
    /// An HTTP(S) URL (e.g. a short-lived presigned GET), fetched inside the VM.
    Url(String),
    /// A file already in the VM (uploaded by Packer, or copied in by the local backend).
    Path(String),
}

/// Install vm-agent: fetch or take the binary, check its sha256, install it with its
/// unit and config, and enable the unit so that it starts on every boot.
pub fn agent_install(source: &AgentSource, sha256: &str, unit: &str, config_toml: &str) -> Step {
    let fetch = match source {
        AgentSource::Url(url) => format!(
            r#"python3 - "$tmp" <<'IMAGE_BUILDER_PY'
import sys, time, urllib.request
url = {url}
for attempt in range(1, 6):
    try:
        with urllib.request.urlopen(url, timeout=60) as r, open(sys.argv[1], "wb") as f:
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
"#,
            url = py_str(url)
        ),
        AgentSource::Path(p) => format!("cp {} \"$tmp\"\n", sh_quote(p)),
    };
    let body = format!(
        r#"tmp={bin}.download
rm -f "$tmp"
{fetch}got=$(sha256sum "$tmp" | cut -d' ' -f1)
if [ "$got" != {sha} ]; then
  echo "image-builder: vm-agent checksum mismatch: expected {sha}, got $got" >&2
  rm -f "$tmp"
  exit 1
fi
chmod 0755 "$tmp"
mv -f "$tmp" {bin}
{unit_write}{config_write}systemctl daemon-reload 2>/dev/null || true
systemctl enable vm-agent.service
echo "image-builder: vm-agent installed and enabled (sha256 {sha})"
"#,
        bin = AGENT_BIN,
        sha = sh_quote(sha256),
        unit_write = write_file_snippet(AGENT_UNIT, unit, "0644"),
        config_write = write_file_snippet(AGENT_CONFIG_PATH, config_toml, "0644"),
    );
    Step::new("agent-install", &body)
}

/// A Python string literal (JSON string syntax is valid Python).
fn py_str(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "''".to_owned())
}

/// The seal report: written by the bake finisher in the VM, read by every bake backend.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SealReport {
    /// Format version (1).
    pub version: u32,
    /// `ok` or `failed`.
    pub status: String,
    /// Why it failed.
    #[serde(default)]
    pub reason: Option<String>,
    /// The step that failed (`seal` when sealing itself failed).
    #[serde(default)]
    pub failed_step: Option<String>,
    /// cloud-init's own errors (from `result.json`).
    #[serde(default)]
    pub cloud_init_errors: Vec<String>,
    /// Steps that ran, with exit codes and durations.
    #[serde(default)]
    pub steps: Vec<StepResult>,
    /// The tail of `/var/log/cloud-init-output.log`.
    #[serde(default)]
    pub log_tail: Vec<String>,
    /// cloud-init, kernel and OS versions.
    #[serde(default)]
    pub versions: std::collections::BTreeMap<String, String>,
    /// When the finisher ran (UTC, RFC 3339).
    #[serde(default)]
    pub finished_at: Option<String>,
}

/// One step in a [`SealReport`].
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StepResult {
    /// Step name.
    pub name: String,
    /// Its exit code.
    pub exit_code: i32,
    /// How long it took.
    pub seconds: u64,
}

/// The part of the seal that removes state and secrets (no report, no power-off).
/// Run last, right before a snapshot.
pub fn seal_clean() -> Step {
    let body = format!(
        r#"rm -rf {work}
# cloud-init state: processed user-data (with any secret in it), instance data, logs, seed.
if command -v cloud-init >/dev/null 2>&1; then
  cloud-init clean --logs --seed --machine-id || cloud-init clean --logs
fi
# journald may hold command output.
if command -v journalctl >/dev/null 2>&1; then
  journalctl --flush >/dev/null 2>&1 || true
  journalctl --rotate >/dev/null 2>&1 || true
  journalctl --vacuum-time=1s >/dev/null 2>&1 || true
fi
rm -f /var/log/journal/*/*.journal /var/log/journal/*/*.journal~ 2>/dev/null || true
# Per-instance identity is regenerated on the next boot.
rm -f /etc/ssh/ssh_host_*_key /etc/ssh/ssh_host_*_key.pub
rm -f /root/.bash_history /home/*/.bash_history
: > /var/log/wtmp 2>/dev/null || true
: > /var/log/lastlog 2>/dev/null || true
# Deleted files keep their blocks on a block-level snapshot: discard them.
fstrim -a >/dev/null 2>&1 || true
sync
echo "image-builder: sealed"
"#,
        work = WORK_DIR
    );
    Step::new("seal", &body)
}

/// The bake finisher, a Python 3 script (python3 is always there with cloud-init).
///
/// Started detached at boot, it waits for cloud-init to finish all its stages
/// (`/run/cloud-init/result.json`), builds the seal report (the contract between
/// the VM and the bake), seals the image on success, prints the report on the
/// console between markers, PUTs it to `report_url` when given, and powers off.
pub fn seal_finisher(
    report_url: Option<&str>,
    seal_clean_path: &str,
    baked_info_json: &str,
) -> String {
    format!(
        r#"#!/usr/bin/python3
# image-builder bake finisher: report the provisioning result, seal, power off.
import json, os, subprocess, sys, time, urllib.request

REPORT_URL = {url}
SEAL = {seal}
RUN = {run}
BAKED_INFO = {baked_path}
BAKED = {baked}
BEGIN, END = "IMAGE-BUILDER-SEAL-REPORT-BEGIN", "IMAGE-BUILDER-SEAL-REPORT-END"


def read(path, default=None):
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return default


def console(text):
    for dev in ("/dev/console", "/dev/ttyS0"):
        try:
            with open(dev, "w") as f:
                f.write(text + "\n")
            return
        except OSError:
            continue
    print(text)


def main():
    result = None
    raw = read("/run/cloud-init/result.json")
    if raw:
        try:
            result = json.loads(raw).get("v1", {{}})
        except ValueError:
            result = None
    errors = list((result or {{}}).get("errors") or [])
    failed_step = (read(RUN + "/failed-step") or "").strip() or None
    steps = []
    for line in (read(RUN + "/steps.tsv") or "").splitlines():
        parts = line.split("\t")
        if len(parts) == 3:
            steps.append({{"name": parts[0], "exit_code": int(parts[1]), "seconds": int(parts[2])}})
    tail = (read("/var/log/cloud-init-output.log") or "").splitlines()[-60:]
    status = "ok"
    reason = None
    if result is None:
        status, reason = "failed", "cloud-init did not finish (no /run/cloud-init/result.json)"
    elif failed_step:
        status, reason = "failed", "step %s failed" % failed_step
    elif errors:
        status, reason = "failed", "cloud-init reported errors: %s" % "; ".join(map(str, errors))
    elif not os.path.exists(RUN + "/done"):
        status, reason = "failed", "provisioning steps did not run to the end"
    os_release = dict(
        l.split("=", 1) for l in (read("/etc/os-release") or "").splitlines() if "=" in l
    )
    report = {{
        "version": 1,
        "status": status,
        "reason": reason,
        "failed_step": failed_step,
        "cloud_init_errors": errors,
        "steps": steps,
        "log_tail": tail,
        "versions": {{
            "cloud_init": (subprocess.run(["cloud-init", "--version"], capture_output=True, text=True).stdout
                           or subprocess.run(["cloud-init", "--version"], capture_output=True, text=True).stderr).strip(),
            "kernel": os.uname().release,
            "os": os_release.get("PRETTY_NAME", "").strip('"'),
        }},
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }}
    if status == "ok":
        BAKED["baked_at"] = report["finished_at"]
        os.makedirs(os.path.dirname(BAKED_INFO), exist_ok=True)
        with open(BAKED_INFO + ".tmp", "w") as f:
            json.dump(BAKED, f, indent=1, sort_keys=True)
            f.write("\n")
        os.replace(BAKED_INFO + ".tmp", BAKED_INFO)
        seal = subprocess.run(["sh", "-eu", SEAL], capture_output=True, text=True)
        if seal.returncode != 0:
            report["status"] = "failed"
            report["failed_step"] = "seal"
            report["reason"] = "the seal step failed (exit %d)" % seal.returncode
            report["log_tail"] = (seal.stdout + seal.stderr).splitlines()[-60:]
    body = json.dumps(report, sort_keys=True)
    os.makedirs(RUN, exist_ok=True)
    with open(RUN + "/seal-report.json", "w") as f:
        f.write(body + "\n")
    console(BEGIN + "\n" + body + "\n" + END)
    if REPORT_URL:
        for attempt in range(1, 6):
            try:
                req = urllib.request.Request(REPORT_URL, data=body.encode(), method="PUT",
                                             headers={{"Content-Type": "application/json"}})
                urllib.request.urlopen(req, timeout=30).read()
                break
            except Exception as e:
                console("image-builder: report upload failed (attempt %d/5): %s" % (attempt, e))
                time.sleep(2 * attempt)
    try:
        os.remove(os.path.abspath(__file__))
    except OSError:
        pass
    os.sync()
    subprocess.run(["systemctl", "poweroff"])


main()
"#,
        url = report_url.map(py_str).unwrap_or_else(|| "None".to_owned()),
        seal = py_str(seal_clean_path),
        run = py_str(RUN_DIR),
        baked_path = py_str(BAKED_INFO),
        baked = baked_info_json,
    )
}

/// The boot-time watcher for a bake: started from `bootcmd` in its own transient unit
/// (so no cloud-init stage waits for it), it waits for cloud-init to finish and runs
/// the finisher; if provisioning broke before the finisher was written it still
/// reports on the console and powers off, so a bake never waits for its timeout.
pub fn seal_watcher_command(finisher_path: &str, timeout: Duration) -> Vec<String> {
    let script = format!(
        "i=0; while [ ! -e /run/cloud-init/result.json ] && [ $i -lt {secs} ]; do sleep 1; i=$((i+1)); done; \
         if [ -f {f} ]; then exec python3 {f}; fi; \
         echo 'IMAGE-BUILDER-SEAL-REPORT-BEGIN' > /dev/console; \
         echo '{{\"version\":1,\"status\":\"failed\",\"reason\":\"provisioning failed before the seal step was installed\"}}' > /dev/console; \
         echo 'IMAGE-BUILDER-SEAL-REPORT-END' > /dev/console; systemctl poweroff",
        secs = timeout.as_secs().max(1),
        f = sh_quote(finisher_path)
    );
    [
        "systemd-run",
        "--no-block",
        "--collect",
        "--unit=image-builder-seal",
        "--description=image-builder bake finisher",
        "/bin/sh",
        "-c",
        &script,
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect()
}

/// The step runner: runs each step file in order with `sh -eu`, records name, exit
/// code and seconds in `RUN_DIR/steps.tsv`, and stops at the first failure (recorded
/// in `RUN_DIR/failed-step`), exiting non-zero so cloud-init marks its result failed.
pub fn runner_script(steps: &[(String, String)]) -> String {
    let mut s = format!(
        r#"#!/bin/sh
# image-builder step runner (generated): each step runs with `sh -eu`, in order.
set -u
RUN={run}
mkdir -p "$RUN"
: > "$RUN/steps.tsv"
rm -f "$RUN/failed-step" "$RUN/done"
run_step() {{
  echo "image-builder: ==> $1"
  t0=$(date +%s)
  sh -eu "$2"
  rc=$?
  printf '%s\t%s\t%s\n' "$1" "$rc" "$(( $(date +%s) - t0 ))" >> "$RUN/steps.tsv"
  if [ "$rc" -ne 0 ]; then
    echo "$1" > "$RUN/failed-step"
    echo "image-builder: step $1 failed with exit code $rc" >&2
    exit "$rc"
  fi
}}
"#,
        run = RUN_DIR
    );
    for (name, path) in steps {
        s.push_str(&format!("run_step {} {}\n", sh_quote(name), sh_quote(path)));
    }
    s.push_str("touch \"$RUN/done\"\necho 'image-builder: all steps done'\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    fn sh_ok(script: &str) -> std::process::Output {
        Command::new("sh")
            .arg("-c")
            .arg(script)
            .output()
            .expect("run sh")
    }

    #[test]
    fn sh_quote_round_trips_through_a_real_shell() {
        for s in [
            "plain",
            "it's",
            "a b",
            "$HOME",
            "`x`",
            "new\nline",
            "",
            "--flag",
            "\\",
            "\"q\"",
        ] {
            let out = sh_ok(&format!("printf %s {}", sh_quote(s)));
            assert_eq!(String::from_utf8_lossy(&out.stdout), s, "quoting {s:?}");
        }
    }

    #[test]
    fn write_file_snippet_writes_exact_bytes() {
        let dir = tempfile::tempdir().unwrap();
        for (i, content) in [
            "no newline",
            "with newline\n",
            "IMAGE_BUILDER_EOF\nclash\n",
            "",
            "'$x' `y`\n\n",
        ]
        .iter()
        .enumerate()
        {
            let p = dir.path().join(format!("f{i}"));
            let p = p.to_str().unwrap();
            let out = sh_ok(&write_file_snippet(p, content, "0640"));
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            assert_eq!(std::fs::read_to_string(p).unwrap(), *content);
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(
                std::fs::metadata(p).unwrap().permissions().mode() & 0o777,
                0o640
            );
        }
    }

    #[test]
    fn runner_stops_at_the_first_failing_step_and_records_it() {
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path().join("run");
        let mk = |name: &str, body: &str| {
            let p = dir.path().join(format!("{name}.sh"));
            std::fs::write(&p, body).unwrap();
            (name.to_owned(), p.to_str().unwrap().to_owned())
        };
        let steps = vec![
            mk("one", "echo one > \"$OUT/one\"\n"),
            // `false` in the middle must stop this step (set -e), not just be ignored.
            mk("two", "false\necho reached > \"$OUT/two\"\n"),
            mk("three", "echo three > \"$OUT/three\"\n"),
        ];
        let script = runner_script(&steps).replace(RUN_DIR, run.to_str().unwrap());
        let out = Command::new("sh")
            .arg("-c")
            .arg(&script)
            .env("OUT", dir.path())
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1));
        assert!(dir.path().join("one").exists());
        assert!(
            !dir.path().join("two").exists(),
            "set -e did not stop step two"
        );
        assert!(
            !dir.path().join("three").exists(),
            "runner went on after a failure"
        );
        assert_eq!(
            std::fs::read_to_string(run.join("failed-step"))
                .unwrap()
                .trim(),
            "two"
        );
        let tsv = std::fs::read_to_string(run.join("steps.tsv")).unwrap();
        assert!(tsv.starts_with("one\t0\t"), "{tsv}");
        assert!(tsv.contains("two\t1\t"), "{tsv}");
        assert!(!run.join("done").exists());
    }

    #[test]
    fn unset_variables_fail_a_step() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s");
        std::fs::write(&p, "echo \"$DEFINITELY_UNSET_VAR\"\n").unwrap();
        let out = Command::new("sh").arg("-eu").arg(&p).output().unwrap();
        assert!(!out.status.success());
    }

    #[test]
    fn apt_update_retries_are_bounded() {
        // A fake apt-get that always reports the lists lock: the step must give up
        // after the configured number of tries, not loop forever.
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("apt-get");
        std::fs::write(
            &bin,
            "#!/bin/sh\necho x >> \"$COUNT\"\necho 'E: Could not get lock /var/lib/apt/lists/lock' >&2\nexit 100\n",
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
        let sleep = dir.path().join("sleep");
        std::fs::write(&sleep, "#!/bin/sh\nexit 0\n").unwrap();
        std::fs::set_permissions(&sleep, std::fs::Permissions::from_mode(0o755)).unwrap();
        let count = dir.path().join("count");
        let out = Command::new("sh")
            .arg("-c")
            .arg(apt_update(3).script)
            .env("PATH", format!("{}:/usr/bin:/bin", dir.path().display()))
            .env("COUNT", &count)
            .output()
            .unwrap();
        assert!(!out.status.success());
        assert_eq!(std::fs::read_to_string(&count).unwrap().lines().count(), 3);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("the lists lock is held"), "{err}");
        assert!(err.contains("giving up"), "{err}");
    }

    #[test]
    fn apt_update_that_exits_zero_after_failed_fetches_is_a_failure() {
        // apt-get update exits 0 when it cannot reach the mirror (it only warns);
        // the step must not pretend the lists are fresh.
        let dir = tempfile::tempdir().unwrap();
        use std::os::unix::fs::PermissionsExt;
        for (name, body) in [
            (
                "apt-get",
                "#!/bin/sh\necho 'W: Failed to fetch http://deb.debian.org/debian/dists/bookworm/InRelease  Temporary failure resolving'\necho 'W: Some index files failed to download. They have been ignored, or old ones used instead.'\nexit 0\n",
            ),
            ("sleep", "#!/bin/sh\nexit 0\n"),
        ] {
            let p = dir.path().join(name);
            std::fs::write(&p, body).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        let out = Command::new("sh")
            .arg("-c")
            .arg(apt_update(2).script)
            .env("PATH", format!("{}:/usr/bin:/bin", dir.path().display()))
            .output()
            .unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("index files failed to download"), "{err}");
    }

    #[test]
    fn status_wait_only_in_the_outside_waiter() {
        let inside = [
            apt_lock_dropin(Duration::from_secs(60)),
            wait_apt_idle(Duration::from_secs(60)),
            apt_update(3),
            apt_install(&["curl".into()]),
            sudoers_write_and_install("builder"),
            seal_clean(),
        ];
        for s in inside {
            assert!(
                !s.script.contains("status --wait"),
                "{} calls cloud-init status --wait",
                s.name
            );
        }
        assert!(!seal_finisher(None, "/x", "{}").contains("status --wait"));
        assert!(
            !seal_watcher_command("/x", Duration::from_secs(5))
                .join(" ")
                .contains("status --wait")
        );
        assert!(
            wait_cloud_init_outside(Duration::from_secs(5))
                .script
                .contains("status --wait")
        );
    }
}
