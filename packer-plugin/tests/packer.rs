//! Integration tests that drive Debian's real `packer` (1.6.6) with our plugin.
//!
//! Every test builds a private directory with the plugin installed as
//! `packer-provisioner-vmagent` (single-component mode, the 1.6.6 layout), a
//! template, and `PACKER_PLUGIN_PATH`/`PACKER_CONFIG_DIR` pointing there, then runs
//! `packer build -machine-readable` and checks its output.
//!
//! The SSH tests start a throwaway `sshd` on 127.0.0.1 (own host key, own
//! authorized key, free port). Its `ForceCommand` runs every command in a private
//! mount namespace where `/etc`, `/var`, `/root`, `/home` and `/usr/local` are
//! overlays whose upper layers live in the test's directory: the real provisioning
//! steps (sudoers, apt drop-in, agent install, seal) run for real, and their writes
//! land in the test directory instead of on this machine. A fake `cloud-init` and
//! `journalctl` come first on PATH so the machine's own are never touched.
//! This needs root (mount namespaces); without it the SSH tests fail and say so.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const PLUGIN: &str = env!("CARGO_BIN_EXE_packer-plugin-vmagent");

/// How long a test waits for something that normally takes seconds before it
/// gives up: a guard against hangs, not an assertion about speed.
const HANG_GUARD: Duration = Duration::from_secs(120);

/// Fail loudly (never skip) when a tool is missing.
fn require(tool: &str, package: &str) -> PathBuf {
    for dir in ["/usr/sbin", "/usr/bin", "/sbin", "/bin", "/usr/local/bin"] {
        let p = Path::new(dir).join(tool);
        if p.exists() {
            return p;
        }
    }
    panic!(
        "`{tool}` is not installed: these tests need the Debian package `{package}` \
         (run .ci/setup-packer.sh, or `apt-get install -y {package}`)"
    );
}

struct Build {
    dir: tempfile::TempDir,
}

struct Run {
    code: Option<i32>,
    stdout: String,
    log: String,
}

impl Run {
    fn assert_contains(&self, needle: &str) {
        assert!(
            self.stdout.contains(needle),
            "packer output lacks {needle:?}\n--- stdout ---\n{}\n--- log (tail) ---\n{}",
            self.stdout,
            tail(&self.log, 60)
        );
    }
    fn assert_success(&self) {
        assert_eq!(
            self.code,
            Some(0),
            "packer failed\n--- stdout ---\n{}\n--- log (tail) ---\n{}",
            self.stdout,
            tail(&self.log, 80)
        );
    }
    fn assert_failure(&self) {
        assert_eq!(self.code, Some(1), "packer should fail\n{}", self.stdout);
    }
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

impl Build {
    fn new() -> Build {
        require("packer", "packer");
        let dir = tempfile::tempdir().expect("tempdir");
        std::os::unix::fs::symlink(PLUGIN, dir.path().join("packer-provisioner-vmagent"))
            .expect("install the plugin");
        Build { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn file(&self, name: &str, content: &str) -> PathBuf {
        let p = self.path().join(name);
        std::fs::write(&p, content).expect("write file");
        p
    }

    /// `packer build` with a hard limit; returns status, stdout and the debug log.
    fn build(&self, template: &str) -> Run {
        let mut child = self.spawn(template);
        let out = wait_with_limit(&mut child, Duration::from_secs(300));
        self.finish(out)
    }

    fn spawn(&self, template: &str) -> Child {
        let log = self.path().join("packer.log");
        Command::new("packer")
            .args(["build", "-machine-readable", "-color=false", template])
            .current_dir(self.path())
            .env("CHECKPOINT_DISABLE", "1")
            .env("PACKER_PLUGIN_PATH", self.path())
            .env("PACKER_CONFIG_DIR", self.path())
            .env("PACKER_LOG", "1")
            .env("PACKER_LOG_PATH", &log)
            .env("PACKER_PLUGIN_VMAGENT_LOG", "debug")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start packer")
    }

    fn finish(&self, out: Output) -> Run {
        Run {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            log: std::fs::read_to_string(self.path().join("packer.log")).unwrap_or_default(),
        }
    }
}

fn wait_with_limit(child: &mut Child, limit: Duration) -> Output {
    let mut stdout = child.stdout.take().expect("piped stdout");
    let reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = std::io::Read::read_to_end(&mut stdout, &mut buf);
        buf
    });
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait packer") {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let log =
                std::fs::read_to_string(std::env::temp_dir().join("vmagent-last-interrupt-log"))
                    .unwrap_or_default();
            panic!(
                "packer did not finish within {limit:?}\n--- log (tail) ---\n{}",
                tail(&std::fs::read_to_string(&log).unwrap_or_default(), 80)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    Output {
        status,
        stdout: reader.join().expect("stdout reader"),
        stderr: Vec::new(),
    }
}

// ------------------------------------------------------------ no VM at all --

#[test]
fn json_template_null_builder_communicator_none() {
    let b = Build::new();
    b.file(
        "t.json",
        r#"{"builders":[{"type":"null","communicator":"none"}],
            "provisioners":[{"type":"vmagent","commands":["echo hi"],"step_timeout":120}]}"#,
    );
    let r = b.build("t.json");
    r.assert_success();
    r.assert_contains(",ui,say,==> null: vmagent: provisioning: wait-cloud-init > apt-lock-dropin");
    r.assert_contains(",ui,say,==> null: vmagent: step 4/6: command-1");
    r.assert_contains(",ui,say,==> null: vmagent: all steps succeeded");
    r.assert_contains("artifact,0,builder-id,fnoeding.null");
}

#[test]
fn hcl2_template_null_builder_communicator_none() {
    let b = Build::new();
    b.file(
        "t.pkr.hcl",
        r#"
source "null" "example" { communicator = "none" }
build {
  sources = ["source.null.example"]
  provisioner "vmagent" {
    commands            = ["echo one", "echo two"]
    environment         = { GREETING = "hello" }
    wait_for_cloud_init = false
    seal                = false
    step_timeout        = "5m"
  }
}
"#,
    );
    let r = b.build("t.pkr.hcl");
    r.assert_success();
    r.assert_contains(
        ",ui,say,==> null.example: vmagent: provisioning: apt-lock-dropin > wait-apt-idle > command-1 > command-2 > cleanup\n",
    );
    r.assert_contains(",ui,say,==> null.example: vmagent: all steps succeeded");
    r.assert_contains("artifact,0,builder-id,fnoeding.null");
}

#[test]
fn hcl2_unknown_attribute_is_unsupported_argument() {
    let b = Build::new();
    b.file(
        "t.pkr.hcl",
        r#"
source "null" "example" { communicator = "none" }
build {
  sources = ["source.null.example"]
  provisioner "vmagent" {
    bogus = 1
  }
}
"#,
    );
    let r = b.build("t.pkr.hcl");
    r.assert_failure();
    r.assert_contains("Unsupported argument");
    r.assert_contains("An argument named \"bogus\" is not");
}

#[test]
fn prepare_error_fails_the_build_with_our_text() {
    let b = Build::new();
    b.file(
        "t.json",
        r#"{"builders":[{"type":"null","communicator":"none"}],
            "provisioners":[{"type":"vmagent","cloud_init_timeout":"soon","sudoers":true}]}"#,
    );
    let r = b.build("t.json");
    r.assert_failure();
    r.assert_contains("Failed to prepare build");
    r.assert_contains("vmagent: 2 error(s) in the provisioner configuration");
    r.assert_contains("sudoers: true needs build_user");
    r.assert_contains("cloud_init_timeout: \"soon\" is not a duration");
}

#[test]
fn provision_error_fails_the_build_with_our_text() {
    // communicator = "none" cannot upload: the agent-install step must fail the
    // build with our message naming the step and Packer's reason.
    let b = Build::new();
    let agent = b.file("vm-agent", "#!/bin/sh\necho fake agent\n");
    let cfg = b.file("agent.toml", "[timers]\nidle_timeout = \"5m\"\n");
    b.file(
        "t.pkr.hcl",
        &format!(
            r#"
source "null" "example" {{ communicator = "none" }}
build {{
  sources = ["source.null.example"]
  provisioner "vmagent" {{
    agent_path   = "{}"
    agent_config = "{}"
  }}
}}
"#,
            agent.display(),
            cfg.display()
        ),
    );
    let r = b.build("t.pkr.hcl");
    r.assert_failure();
    r.assert_contains("vmagent: step \"agent-install\": uploading");
    r.assert_contains("Upload is not implemented when communicator = 'none'");
    r.assert_contains("Build 'null.example' errored");
}

// ------------------------------------------------------------- over SSH ---

/// A throwaway sshd whose sessions run in an overlay sandbox (see module docs).
struct Sshd {
    dir: tempfile::TempDir,
    port: u16,
    child: Child,
}

const SANDBOX: &str = r#"#!/bin/sh
# ForceCommand: run the requested command in a private mount namespace with
# overlays over the directories provisioning writes to.
S="$(dirname "$0")"
exec unshare --mount --propagation private -- sh -c '
set -e
S=$1
for d in etc var root home usr/local; do
  mkdir -p "$S/upper/$d" "$S/work/$d"
  mount -t overlay overlay -o "lowerdir=/$d,upperdir=$S/upper/$d,workdir=$S/work/$d" "/$d"
done
# Keep systemctl/journalctl away from the host service manager and journal.
if [ -d /run/systemd ]; then mount -t tmpfs tmpfs /run/systemd; fi
export SYSTEMD_OFFLINE=1
export PATH="$S/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
cd /
exec sh -c "$SSH_ORIGINAL_COMMAND"
' sandbox "$S"
"#;

/// `cloud-init status --wait` lasts `cloud-init-delay` seconds (none if the
/// file is missing) or until the test creates `cloud-init-release`, whichever
/// comes first. It records in `calls.log` how it ended: "finished" if it ran to
/// the end, "killed" on SIGTERM (how the plugin's step wrapper stops a step).
const FAKE_CLOUD_INIT: &str = r#"#!/bin/sh
S="$(cd "$(dirname "$0")/.." && pwd)"
echo "cloud-init $*" >> "$S/calls.log"
case "$1" in
  status)
    if [ "${2:-}" = "--wait" ]; then
      # Once the SSH session is gone, dash's "Terminated" notice for the killed
      # `sleep` would raise SIGPIPE and end the script before its TERM trap.
      trap '' PIPE
      trap 'echo "cloud-init wait killed" >> "$S/calls.log"; exit 143' TERM
      echo $$ > "$S/cloud-init-wait.pid"
      left="$(cat "$S/cloud-init-delay" 2>/dev/null || echo 0)"
      while [ "$left" -gt 0 ] && [ ! -e "$S/cloud-init-release" ]; do
        sleep 1
        left=$((left - 1))
      done
      echo "cloud-init wait finished" >> "$S/calls.log"
    fi
    echo "status: done" ;;
esac
exit 0
"#;

const FAKE_JOURNALCTL: &str = r#"#!/bin/sh
S="$(cd "$(dirname "$0")/.." && pwd)"
echo "journalctl $*" >> "$S/calls.log"
exit 0
"#;

fn write_exec(p: &Path, content: &str) {
    std::fs::write(p, content).expect("write script");
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).expect("chmod");
}

impl Sshd {
    fn start() -> Sshd {
        let sshd = require("sshd", "openssh-server");
        require("ssh-keygen", "openssh-client");
        require("unshare", "util-linux");
        require("visudo", "sudo");
        assert!(
            nix_is_root(),
            "the SSH tests need root: their sshd runs every command in a mount-namespace \
             sandbox (overlays over /etc, /var, ...) so the real provisioning steps cannot \
             change this machine"
        );
        let dir = tempfile::Builder::new()
            .prefix("vmagent-sshd")
            .tempdir()
            .expect("tempdir");
        let d = dir.path();
        // sshd refuses a ForceCommand path or keys under group/world-writable dirs
        // only with StrictModes; the temp dir is 0700 anyway.
        for key in ["host_key", "id"] {
            let st = Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-f"])
                .arg(d.join(key))
                .status()
                .expect("ssh-keygen");
            assert!(st.success(), "ssh-keygen failed");
        }
        std::fs::copy(d.join("id.pub"), d.join("authorized_keys")).expect("authorized_keys");
        std::fs::create_dir_all(d.join("bin")).expect("bin");
        std::fs::create_dir_all(d.join("stage")).expect("stage");
        write_exec(&d.join("sandbox.sh"), SANDBOX);
        write_exec(&d.join("bin/cloud-init"), FAKE_CLOUD_INIT);
        write_exec(&d.join("bin/journalctl"), FAKE_JOURNALCTL);
        std::fs::create_dir_all("/run/sshd").expect("sshd privilege-separation dir");

        let port = {
            let l = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
            l.local_addr().expect("addr").port()
        };
        let cfg = format!(
            "ListenAddress 127.0.0.1\nPort {port}\nHostKey {d}/host_key\nAuthorizedKeysFile {d}/authorized_keys\n\
             PidFile {d}/sshd.pid\nStrictModes no\nUsePAM no\nPermitRootLogin prohibit-password\n\
             PasswordAuthentication no\nKbdInteractiveAuthentication no\nForceCommand {d}/sandbox.sh\n",
            d = d.display()
        );
        std::fs::write(d.join("sshd_config"), cfg).expect("sshd_config");
        let log = std::fs::File::create(d.join("sshd.log")).expect("sshd.log");
        let child = Command::new(sshd)
            .args(["-D", "-e", "-f"])
            .arg(d.join("sshd_config"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start sshd");
        let me = Sshd { dir, port, child };
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "sshd did not listen on {port}: {}",
                std::fs::read_to_string(me.dir.path().join("sshd.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        me
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// A file as the sandboxed commands left it (overlay upper layer).
    fn upper(&self, p: &str) -> PathBuf {
        self.path().join("upper").join(p.trim_start_matches('/'))
    }

    fn builder_json(&self) -> String {
        format!(
            r#"{{"type":"null","ssh_host":"127.0.0.1","ssh_port":{},"ssh_username":"root","ssh_private_key_file":"{}","ssh_timeout":"30s"}}"#,
            self.port,
            self.path().join("id").display()
        )
    }

    fn calls(&self) -> String {
        std::fs::read_to_string(self.path().join("calls.log")).unwrap_or_default()
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn nix_is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

fn template(sshd: &Sshd, provisioner: serde_json::Value) -> String {
    let builder: serde_json::Value =
        serde_json::from_str(&sshd.builder_json()).expect("builder json");
    serde_json::json!({"builders": [builder], "provisioners": [provisioner]}).to_string()
}

#[test]
fn ssh_runs_the_shared_steps_uploads_the_agent_and_seals() {
    let host_had_sudoers = Path::new("/etc/sudoers.d/90-builder").exists();
    let sshd = Sshd::start();
    let b = Build::new();
    let agent_bytes = "#!/bin/sh\necho fake vm-agent\n";
    let agent = b.file("vm-agent", agent_bytes);
    let cfg = b.file("agent.toml", "[destroy]\nephemeral_tag = \"golden\"\n");
    b.file(
        "t.json",
        &template(
            &sshd,
            serde_json::json!({
                "type": "vmagent",
                "agent_path": agent,
                "agent_config": cfg,
                "build_user": "builder",
                "commands": ["echo \"out:$GREETING\"; echo err-line >&2"],
                "environment": {"GREETING": "hello world"},
                "staging_dir": sshd.path().join("stage"),
                "wait_apt_idle": false,
            }),
        ),
    );
    let r = b.build("t.json");
    r.assert_success();
    // Remote stdout and stderr reach Packer's UI.
    r.assert_contains(",ui,message,    null: out:hello world\n");
    r.assert_contains(",ui,error,==> null: err-line\n");
    r.assert_contains("vmagent: uploaded ");
    r.assert_contains("image-builder: vm-agent installed and enabled");
    r.assert_contains(",ui,say,==> null: vmagent: all steps succeeded");

    // The steps really ran (in the sandbox).
    let installed =
        std::fs::read_to_string(sshd.upper("/usr/local/bin/vm-agent")).expect("agent installed");
    assert_eq!(installed, agent_bytes);
    assert_eq!(
        std::fs::read_to_string(sshd.upper("/etc/vm-agent/config.toml")).expect("config"),
        "[destroy]\nephemeral_tag = \"golden\"\n"
    );
    let unit =
        std::fs::read_to_string(sshd.upper("/etc/systemd/system/vm-agent.service")).expect("unit");
    assert_eq!(
        unit,
        provision::AGENT_UNIT_FILE,
        "the plugin installs the same unit as every bake"
    );
    let wants = sshd.upper("/etc/systemd/system/cloud-init.target.wants/vm-agent.service");
    assert!(wants.symlink_metadata().is_ok(), "unit not enabled");
    let sudoers =
        std::fs::read_to_string(sshd.upper("/etc/sudoers.d/90-builder")).expect("sudoers");
    assert!(
        sudoers.contains("builder ALL=(ALL) NOPASSWD:ALL"),
        "{sudoers}"
    );
    let apt = std::fs::read_to_string(sshd.upper("/etc/apt/apt.conf.d/90image-builder-dpkg-lock"))
        .expect("apt drop-in");
    assert!(apt.contains("DPkg::Lock::Timeout \"600\";"), "{apt}");
    // `fleet run --env` reaches jobs on workers made from this image: the sshd drop-in
    // every bake renders, installed after `sshd -t` accepted it.
    let accept_env = sshd.upper(provision::SSHD_ACCEPT_ENV_DROPIN);
    assert_eq!(
        std::fs::read_to_string(&accept_env).expect("sshd AcceptEnv drop-in"),
        provision::SSHD_ACCEPT_ENV_CONTENT
    );
    assert_eq!(
        accept_env.metadata().unwrap().permissions().mode() & 0o777,
        0o644
    );
    // The seal ran (cloud-init clean) and the staged agent is gone.
    let calls = sshd.calls();
    assert!(calls.contains("cloud-init status --wait"), "{calls}");
    assert!(calls.contains("cloud-init clean --logs"), "{calls}");
    let leftovers: Vec<_> = std::fs::read_dir(sshd.path().join("stage"))
        .expect("stage dir")
        .collect();
    assert!(leftovers.is_empty(), "staged files left: {leftovers:?}");
    // ...and nothing leaked onto this machine.
    assert_eq!(
        Path::new("/etc/sudoers.d/90-builder").exists(),
        host_had_sudoers,
        "the sandbox leaked a sudoers drop-in onto the host"
    );
}

#[test]
fn ssh_failing_step_fails_the_build_naming_the_step() {
    let sshd = Sshd::start();
    let b = Build::new();
    b.file(
        "t.json",
        &template(
            &sshd,
            serde_json::json!({
                "type": "vmagent",
                "commands": ["echo before-failure", "echo about to fail >&2; exit 7", "echo never"],
                "staging_dir": sshd.path().join("stage"),
                "wait_for_cloud_init": false,
                "wait_apt_idle": false,
                "seal": false,
            }),
        ),
    );
    let r = b.build("t.json");
    r.assert_failure();
    r.assert_contains(",ui,message,    null: before-failure\n");
    r.assert_contains(",ui,error,==> null: about to fail\n");
    r.assert_contains("Build 'null' errored after");
    r.assert_contains("vmagent: step \"command-2\" failed with exit status 7");
    assert!(!r.stdout.contains("null: never"), "{}", r.stdout);
}

// ------------------------------------------------- keepalive recorder ---

/// Packer starts this script in place of the plugin when a test records the
/// yamux traffic. The real plugin's stdout, which carries the handshake line,
/// goes to a file. A helper waits for that line and gives Packer the same line
/// with the recorder's socket as the address. `exec` keeps the plugin on this
/// pid, so Packer's final SIGKILL still reaches the plugin. Packer 1.6.6 starts
/// a JSON template's provisioner once per build, so one handshake file is
/// enough.
const RECORDING_WRAPPER: &str = r#"#!/bin/sh
out=@HANDSHAKE@
: > "$out"
exec 3>&1
(
  until [ "$(wc -l < "$out")" -ge 1 ]; do sleep 0.05; done
  line="$(head -n 1 "$out")"
  printf '%s|unix|%s\n' "${line%%|unix|*}" @SOCKET@ >&3
) &
exec @PLUGIN@ > "$out" 3>&-
"#;

/// Which end of the plugin connection sent a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    Packer,
    Plugin,
}

/// A yamux Ping frame seen on the plugin connection.
#[derive(Debug, Clone)]
struct Ping {
    from: End,
    /// ACK (an answer) rather than SYN (a ping).
    ack: bool,
    /// The ping id, which the answer must echo.
    opaque: u32,
    /// The fake `cloud-init status --wait` step had started and was not released yet.
    during_step: bool,
}

/// A man in the middle on the plugin's socket. It forwards every frame both
/// ways unchanged and records the yamux Ping frames in the order they pass.
/// Once Packer's keepalive ping has been answered by the plugin while the fake
/// cloud-init wait runs, it releases that wait (`cloud-init-release`). So the
/// step lasts exactly until a keepalive exchange has happened during it.
///
/// yamux header: `version(u8) type(u8) flags(u16 BE) stream(u32 BE)
/// length(u32 BE)`. Type 0 (Data) is followed by `length` bytes. Type 2 is
/// Ping, with SYN = 1 (a ping) or ACK = 2 (its answer) in the flags and the
/// ping id in `length`, which the answer echoes (hashicorp/yamux `spec.md`
/// lines 40-77, `const.go` lines 86-121).
struct KeepaliveRecorder {
    recording: Arc<Recording>,
}

struct Recording {
    pings: Mutex<Vec<Ping>>,
    /// Written by the fake cloud-init when its wait starts.
    step_started: PathBuf,
    /// Created by the recorder to end the fake wait.
    release: PathBuf,
}

impl KeepaliveRecorder {
    /// Put the recording wrapper in place of the plugin in `b`'s plugin
    /// directory and wait, in the background, for Packer to connect.
    fn install(b: &Build, sshd: &Sshd) -> KeepaliveRecorder {
        let socket = b.path().join("recorder.sock");
        let handshake = b.path().join("plugin-handshake");
        let wrapper = RECORDING_WRAPPER
            .replace("@HANDSHAKE@", &sh_single_quote(&handshake))
            .replace("@SOCKET@", &sh_single_quote(&socket))
            .replace("@PLUGIN@", &sh_single_quote(Path::new(PLUGIN)));
        let installed = b.path().join("packer-provisioner-vmagent");
        std::fs::remove_file(&installed).expect("remove the plugin symlink");
        write_exec(&installed, &wrapper);

        let listener = UnixListener::bind(&socket).expect("bind the recorder socket");
        let recording = Arc::new(Recording {
            pings: Mutex::new(Vec::new()),
            step_started: sshd.path().join("cloud-init-wait.pid"),
            release: sshd.path().join("cloud-init-release"),
        });
        let for_relays = Arc::clone(&recording);
        std::thread::spawn(move || {
            let Ok((packer, _)) = listener.accept() else {
                return;
            };
            let line = std::fs::read_to_string(&handshake).expect("the plugin's handshake line");
            let addr = line.trim_end().rsplit('|').next().expect("an address");
            let plugin = UnixStream::connect(addr).expect("connect to the plugin");
            let packer_reader = packer.try_clone().expect("clone the Packer side");
            let plugin_writer = plugin.try_clone().expect("clone the plugin side");
            let to_plugin = Arc::clone(&for_relays);
            std::thread::spawn(move || {
                to_plugin.relay(packer_reader, plugin_writer, End::Packer);
            });
            for_relays.relay(plugin, packer, End::Plugin);
        });
        KeepaliveRecorder { recording }
    }

    fn pings(&self) -> Vec<Ping> {
        lock(&self.recording.pings).clone()
    }
}

impl Recording {
    /// Forward frames from `src` to `dst` until either side closes.
    fn relay(&self, mut src: UnixStream, mut dst: UnixStream, from: End) {
        let mut header = [0u8; 12];
        while src.read_exact(&mut header).is_ok() {
            let length = u32::from_be_bytes([header[8], header[9], header[10], header[11]]);
            // Recorded before it is forwarded, so a ping is always in the list
            // before its answer.
            let answered = header[1] == 2 && self.record(from, header, length);
            let mut payload = Vec::new();
            if header[1] == 0 {
                payload.resize(length as usize, 0);
                if src.read_exact(&mut payload).is_err() {
                    break;
                }
            }
            if dst.write_all(&header).is_err() || dst.write_all(&payload).is_err() {
                break;
            }
            if answered {
                // Packer has the answer; now the step may end.
                std::fs::write(&self.release, "").expect("release the fake cloud-init wait");
            }
        }
        let _ = src.shutdown(Shutdown::Both);
        let _ = dst.shutdown(Shutdown::Both);
    }

    /// Record a Ping frame; true if it is the plugin's answer, during the
    /// step, to a ping Packer sent during the step.
    fn record(&self, from: End, header: [u8; 12], opaque: u32) -> bool {
        let flags = u16::from_be_bytes([header[2], header[3]]);
        let ping = Ping {
            from,
            ack: flags & 2 != 0,
            opaque,
            during_step: self.step_started.exists() && !self.release.exists(),
        };
        let mut pings = lock(&self.pings);
        let answered = ping.from == End::Plugin
            && ping.ack
            && ping.during_step
            && pings.iter().any(|p| {
                p.from == End::Packer && !p.ack && p.opaque == ping.opaque && p.during_step
            });
        pings.push(ping);
        answered
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn sh_single_quote(p: &Path) -> String {
    let s = p.to_str().expect("UTF-8 path");
    assert!(!s.contains('\''), "path with a quote: {s}");
    format!("'{s}'")
}

/// Poll `done` until it holds. `guard` only stops a hung test; it does not
/// measure anything.
fn wait_until(what: &str, guard: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + guard;
    while !done() {
        assert!(
            Instant::now() < deadline,
            "{what} (gave up after {guard:?})"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A step longer than Packer's 30 s yamux keepalive interval. The fake
/// cloud-init wait is held until the recorder has seen Packer's keepalive ping
/// and the plugin's answer pass while the step runs. Go's yamux drops the
/// session when a ping goes unanswered for 10 s (yamux `session.go`
/// `keepalive`), so the plugin must answer while the step's RPC is busy.
#[test]
fn ssh_step_longer_than_the_keepalive_interval_succeeds() {
    let sshd = Sshd::start();
    // If no keepalive exchange releases it, the wait gives up after 110 s
    // (within cloud_init_timeout), and the ping assertions below say why.
    std::fs::write(sshd.path().join("cloud-init-delay"), "110").expect("delay");
    let b = Build::new();
    let recorder = KeepaliveRecorder::install(&b, &sshd);
    b.file(
        "t.json",
        &template(
            &sshd,
            serde_json::json!({
                "type": "vmagent",
                "staging_dir": sshd.path().join("stage"),
                "apt_lock_fix": false,
                "wait_apt_idle": false,
                "seal": false,
                "cloud_init_timeout": "2m",
            }),
        ),
    );
    let r = b.build("t.json");

    let pings = recorder.pings();
    let ping = pings
        .iter()
        .position(|p| p.from == End::Packer && !p.ack && p.during_step)
        .unwrap_or_else(|| {
            panic!(
                "Packer sent no keepalive ping while the step ran: {pings:?}\n{}",
                tail(&r.log, 40)
            )
        });
    let opaque = pings[ping].opaque;
    let answer = pings
        .iter()
        .position(|p| p.from == End::Plugin && p.ack && p.opaque == opaque)
        .unwrap_or_else(|| {
            panic!(
                "the plugin never answered Packer's ping {opaque}: {pings:?}\n{}",
                tail(&r.log, 40)
            )
        });
    assert!(
        answer > ping && pings[answer].during_step,
        "ping {opaque} was not answered while the step ran: {pings:?}"
    );
    // The step ended because of that exchange, then the build went on and
    // succeeded over the same session.
    let calls = sshd.calls();
    assert!(
        calls.contains("cloud-init wait finished")
            && sshd.path().join("cloud-init-release").exists(),
        "{calls}"
    );
    r.assert_success();
    r.assert_contains("image-builder: cloud-init is done");
}

/// Interrupting packer (SIGTERM, as Ctrl-C would): Packer calls
/// `Provisioner.Cancel`, which must stop the remote step (here the cloud-init
/// wait) instead of leaving it running.
#[test]
fn ssh_interrupt_cancels_the_running_remote_step() {
    let sshd = Sshd::start();
    // Left alone, the fake wait would run to the end after 120 s and log
    // "finished"; killed, it logs "killed".
    std::fs::write(sshd.path().join("cloud-init-delay"), "120").expect("delay");
    let b = Build::new();
    b.file(
        "t.json",
        &template(
            &sshd,
            serde_json::json!({
                "type": "vmagent",
                "staging_dir": sshd.path().join("stage"),
                "seal": false,
            }),
        ),
    );
    let mut child = b.spawn("t.json");
    // SAFETY-free way to let wait_with_limit print this build's log on timeout.
    unsafe_free_set_log(&b.path().join("packer.log"));
    let pid_file = sshd.path().join("cloud-init-wait.pid");
    wait_until("the wait step never started", HANG_GUARD, || {
        pid_file.exists()
    });
    let remote_pid: i32 = std::fs::read_to_string(&pid_file)
        .expect("pid")
        .trim()
        .parse()
        .expect("pid number");
    let packer_pid = i32::try_from(child.id()).expect("pid fits");
    // Packer's outer (panicwrap) process ignores SIGINT, which a terminal sends to
    // the whole group, and forwards SIGTERM to the real packer: both cancel builds.
    let st = Command::new("kill")
        .args(["-TERM", &packer_pid.to_string()])
        .status()
        .expect("kill -TERM packer");
    assert!(st.success());
    let out = wait_with_limit(&mut child, Duration::from_secs(300));
    let r = b.finish(out);
    assert_ne!(
        r.code,
        Some(0),
        "an interrupted build must fail\n{}",
        r.stdout
    );
    // Packer cancels the running provisioner on one of two paths, whichever its
    // goroutines reach first: its provisioner client logs the first line just before
    // it calls `Provisioner.Cancel` (packer v1.6.6 `packer-plugin-sdk/rpc/provisioner.go`
    // lines 54-60); when the builder's hook is cancelled first, the second (seen under
    // load: the hook's context ends the provisioning stream). Either way the remote
    // step must end killed, which is checked next.
    assert!(
        r.log
            .contains("Cancelling provisioner after context cancellation")
            || r.log
                .contains("Cancelling provisioning due to context cancellation"),
        "Packer did not cancel the provisioner\n{}",
        tail(&r.log, 60)
    );
    // The remote process is gone, and it was killed, not left to finish: the
    // fake wait logs how it ended.
    wait_until(
        &format!(
            "the remote step (pid {remote_pid}) still runs after Cancel\n{}",
            tail(&r.log, 60)
        ),
        HANG_GUARD,
        || !Path::new(&format!("/proc/{remote_pid}")).exists(),
    );
    let calls = sshd.calls();
    assert!(calls.contains("cloud-init wait killed"), "{calls}");
    assert!(!calls.contains("cloud-init wait finished"), "{calls}");
}

/// The example template in templates/packer/ passes `packer validate` with our
/// plugin (ConfigSpec + Prepare run for real; no DigitalOcean call is made).
#[test]
fn example_digitalocean_template_validates() {
    let b = Build::new();
    let agent = b.file("vm-agent", "#!/bin/sh\n");
    let cfg = b.file("agent.toml", "\n");
    let template = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../templates/packer/digitalocean-vmagent.pkr.hcl"
    );
    let out = Command::new("packer")
        .args(["validate", "-var"])
        .arg(format!("agent_path={}", agent.display()))
        .arg("-var")
        .arg(format!("agent_config={}", cfg.display()))
        .arg(template)
        .current_dir(b.path())
        .env("CHECKPOINT_DISABLE", "1")
        .env("PACKER_PLUGIN_PATH", b.path())
        .env("PACKER_CONFIG_DIR", b.path())
        .env("DIGITALOCEAN_API_TOKEN", "not-a-real-token")
        .output()
        .expect("packer validate");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn unsafe_free_set_log(p: &Path) {
    // Tests in this binary run in parallel; the variable is only read on timeout
    // and only for diagnostics.
    let _ = std::fs::write(
        std::env::temp_dir().join("vmagent-last-interrupt-log"),
        p.display().to_string(),
    );
}
