//! Test harness: runs the real `vm-agent` binary as a daemon in a temp dir, with a fake
//! cloud-init status dir, fake logind/proc session roots, and fake host keys.
#![allow(dead_code)]

use serde_json::Value;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant, SystemTime};
use vm_agent::config::{Config, Dur, Limit, Provider};
use vm_agent::report::{Stage, StatusReport};

pub const BIN: &str = env!("CARGO_BIN_EXE_vm-agent");

pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

pub struct Agent {
    pub dir: tempfile::TempDir,
    pub cfg: Config,
    pub cfg_path: PathBuf,
    pub log_path: PathBuf,
    child: Option<Child>,
    pub env: Vec<(String, String)>,
    /// Run the daemon as this (uid, gid) instead of the test's own user; `start` hands the
    /// temp dir to it.
    pub daemon_user: Option<(u32, u32)>,
}

impl Agent {
    /// Config with every path in a temp dir, all timers `never`, cloud-init not finished yet.
    pub fn new() -> Agent {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        let mut cfg = Config::example();
        cfg.paths.runtime_dir = d.join("run");
        cfg.paths.state_dir = d.join("state");
        cfg.paths.secrets_file = d.join("secrets.toml");
        cfg.paths.passwd_file = d.join("passwd");
        cfg.paths.group_file = d.join("group");
        cfg.paths.ssh_host_key_dir = d.join("ssh");
        cfg.socket.path = d.join("run/agent.sock");
        cfg.cloud_init.status_dirs = vec![d.join("ci-run"), d.join("ci-var")];
        cfg.cloud_init.poll_interval = Dur(Duration::from_millis(100));
        cfg.cloud_init.timeout = Limit::After(Duration::from_secs(60));
        cfg.timers.idle_timeout = Limit::Never;
        cfg.timers.max_lifetime = Limit::Never;
        cfg.timers.no_job_timeout = Limit::Never;
        cfg.timers.tick = Dur(Duration::from_millis(200));
        cfg.timers.warn_grace = Dur(Duration::ZERO);
        cfg.sessions.logind_dir = d.join("sessions");
        cfg.sessions.proc_dir = d.join("proc");
        cfg.sessions.dev_dir = d.join("dev");
        cfg.jobs.kill_grace = Dur(Duration::from_secs(1));
        cfg.destroy.provider = Provider::DryRun;
        cfg.destroy.poweroff_command =
            vec!["touch".into(), d.join("powered-off").display().to_string()];
        for sub in ["ci-run", "sessions", "proc", "dev/pts", "ssh"] {
            std::fs::create_dir_all(d.join(sub)).expect("mkdir");
        }
        let me = nix::unistd::geteuid().as_raw();
        let mygid = nix::unistd::getegid().as_raw();
        std::fs::write(
            d.join("passwd"),
            format!(
                "root:x:0:0:root:/root:/bin/sh\nme:x:{me}:{mygid}::{}:/bin/sh\nbuilder:x:65534:65534::{}:/bin/sh\n",
                d.join("home-me").display(),
                d.join("home-builder").display()
            ),
        )
        .expect("passwd");
        std::fs::write(
            d.join("group"),
            "root:x:0:\nnogroup:x:65534:\nextra:x:4242:builder\nagents:x:4343:\n",
        )
        .expect("group");
        // A fake host key (any base64 blob works for the fingerprint).
        std::fs::write(
            d.join("ssh/ssh_host_ed25519_key.pub"),
            "ssh-ed25519 aGVsbG8= root@test\n",
        )
        .expect("hostkey");
        let cfg_path = d.join("config.toml");
        let log_path = d.join("daemon.log");
        Agent {
            dir,
            cfg,
            cfg_path,
            log_path,
            child: None,
            env: vec![],
            daemon_user: None,
        }
    }

    pub fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    pub fn cloud_init_done(&self) {
        std::fs::write(
            self.path("ci-run/status.json"),
            r#"{"v1":{"stage":null,"datasource":"DataSourceNoCloud","init":{"errors":[]},"modules-final":{"errors":[]}}}"#,
        )
        .expect("status.json");
        std::fs::write(
            self.path("ci-run/result.json"),
            r#"{"v1":{"datasource":"DataSourceNoCloud","errors":[]}}"#,
        )
        .expect("result.json");
    }

    pub fn write_secrets(&self, text: &str) {
        use std::os::unix::fs::PermissionsExt;
        std::fs::write(&self.cfg.paths.secrets_file, text).expect("secrets");
        std::fs::set_permissions(
            &self.cfg.paths.secrets_file,
            std::fs::Permissions::from_mode(0o600),
        )
        .expect("chmod");
    }

    pub fn write_config(&self) {
        std::fs::write(&self.cfg_path, self.cfg.to_toml()).expect("config");
    }

    /// Start the daemon and wait for its socket.
    pub fn start(&mut self) {
        self.write_config();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .expect("log");
        let mut cmd = Command::new(BIN);
        cmd.arg("--config")
            .arg(&self.cfg_path)
            .arg("daemon")
            .env("VM_AGENT_LOG", "debug")
            .env_remove("NOTIFY_SOCKET")
            // S3 keys only from what a test sets (secrets file or `self.env`).
            .env_remove("SPACES_ACCESS_KEY_ID")
            .env_remove("SPACES_SECRET_ACCESS_KEY")
            .env_remove("AWS_ACCESS_KEY_ID")
            .env_remove("AWS_SECRET_ACCESS_KEY")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup"))
            .stderr(log);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        if let Some((uid, gid)) = self.daemon_user {
            chown_tree(self.dir.path(), uid, gid);
            cmd.uid(uid).gid(gid);
        }
        let mut child = cmd.spawn().expect("spawn daemon");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::os::unix::net::UnixStream::connect(&self.cfg.socket.path).is_err() {
            if let Ok(Some(st)) = child.try_wait() {
                panic!("daemon exited early ({st}): {}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "daemon socket never appeared: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        self.child = Some(child);
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).expect("running")
    }

    /// SIGKILL the daemon (a crash). It must still have been running (or been SIGKILLed by
    /// the test itself): a daemon that exited on its own fails the test with its log.
    pub fn kill(&mut self) {
        let mut daemon = self.child.take().expect("the daemon was started");
        daemon.kill().expect("SIGKILL the daemon");
        let status = daemon.wait().expect("reap the daemon");
        assert_eq!(
            status.signal(),
            Some(nix::sys::signal::Signal::SIGKILL as i32),
            "the daemon had already ended ({status}):\n{}",
            self.log()
        );
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(BIN)
            .arg("--config")
            .arg(&self.cfg_path)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run cli")
    }

    /// `status --json`, parsed as the report type readers use (image-builder's fleets).
    pub fn status(&self) -> StatusReport {
        let out = self.cli(&["status", "--json"]);
        StatusReport::from_json(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "status --json: {e}: {} {}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        })
    }

    /// Poll status until `f` holds.
    pub fn wait_status(
        &self,
        what: &str,
        secs: u64,
        f: impl Fn(&StatusReport) -> bool,
    ) -> StatusReport {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let s = self.status();
            if f(&s) {
                return s;
            }
            if Instant::now() > deadline {
                panic!(
                    "timed out waiting for {what}; last status: {s:#?}\nlog:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn wait_ready(&self) -> StatusReport {
        self.wait_status("readiness", 15, |s| s.stage.is_final())
    }

    pub fn job(&self, id: u64) -> Value {
        let out = self.cli(&["jobs", "--json"]);
        assert_eq!(code(&out), 0, "jobs --json: {}", text(&out.stderr));
        let jobs: Value = serde_json::from_slice(&out.stdout).expect("jobs json");
        jobs.as_array()
            .and_then(|a| a.iter().find(|j| j["id"] == id).cloned())
            .unwrap_or(Value::Null)
    }

    pub fn wait_job(&self, id: u64, secs: u64, f: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let j = self.job(id);
            if f(&j) {
                return j;
            }
            assert!(
                Instant::now() < deadline,
                "job {id} never matched: {j:#}\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// A fake sshd session process in the fake /proc.
    pub fn open_session(&self, pid: u32, user: &str, tty: &str) {
        let p = self.path(&format!("proc/{pid}"));
        std::fs::create_dir_all(&p).expect("mkdir");
        std::fs::write(p.join("cmdline"), format!("sshd: {user}@{tty}\0")).expect("cmdline");
    }

    pub fn close_session(&self, pid: u32) {
        std::fs::remove_dir_all(self.path(&format!("proc/{pid}"))).expect("close session");
    }

    /// `vm-agent run --detach -- ARGV`: accepted (exit 0), and the job id it printed.
    pub fn run_detached(&self, argv: &[&str]) -> u64 {
        let out = self.cli(&[&["run", "--detach", "--"], argv].concat());
        assert_eq!(
            code(&out),
            0,
            "run --detach {argv:?}: {}",
            text(&out.stderr)
        );
        text(&out.stdout)
            .trim()
            .parse()
            .unwrap_or_else(|e| panic!("job id from {:?}: {e}", text(&out.stdout)))
    }

    /// Wait until the daemon has run a timer tick at or after `at` (by its clock), and return
    /// a status from after that tick. A tick rescans the sessions before it reads the clock
    /// and evaluates the timers, so a witness session created once the daemon's clock has
    /// passed `at` and then seen in status proves such a tick ran. The witness is closed (and
    /// seen gone) before returning. While open it is a session like any other, so use this
    /// only where something else (a hold, a finished destroy) already decides the outcome.
    pub fn wait_tick_after(&self, at: SystemTime) -> StatusReport {
        self.wait_status("the daemon's clock", 30, |s| s.now >= at);
        let witness = self.path("sessions/tick-witness");
        std::fs::write(&witness, "REMOTE=1\nUSER=tick-witness\nSTATE=active\n")
            .expect("witness session");
        let has_witness = |s: &StatusReport| s.sessions.iter().any(|x| x.user == "tick-witness");
        let seen = self.wait_status("a tick that sees the witness session", 30, has_witness);
        std::fs::remove_file(&witness).expect("close the witness session");
        self.wait_status("a tick without the witness session", 30, |s| {
            !has_witness(s)
        });
        seen
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // The test already failed: stop the daemon, report nothing more.
            if let Some(mut daemon) = self.child.take() {
                daemon.kill().ok();
                daemon.wait().ok();
            }
        } else if self.child.is_some() {
            self.kill();
        }
    }
}

/// Hand every file under `dir` (and `dir`) to `uid:gid`.
fn chown_tree(dir: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::lchown(dir, Some(uid), Some(gid))
        .unwrap_or_else(|e| panic!("chown {}: {e}", dir.display()));
    for entry in std::fs::read_dir(dir).expect("read_dir") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() && !path.is_symlink() {
            chown_tree(&path, uid, gid);
        } else {
            std::os::unix::fs::lchown(&path, Some(uid), Some(gid))
                .unwrap_or_else(|e| panic!("chown {}: {e}", path.display()));
        }
    }
}

/// A timestamp of a job record (RFC 3339, milliseconds).
pub fn record_time(v: &Value) -> SystemTime {
    humantime::parse_rfc3339_weak(v.as_str().unwrap_or_else(|| panic!("timestamp: {v}")))
        .unwrap_or_else(|e| panic!("timestamp {v}: {e}"))
}

/// When the status report's history entered `stage`.
pub fn stage_entered(status: &StatusReport, stage: Stage) -> SystemTime {
    status
        .history
        .iter()
        .find(|h| h.stage == stage)
        .unwrap_or_else(|| panic!("no {stage:?} in the history: {status:#?}"))
        .at
}

pub fn code(o: &Output) -> i32 {
    o.status.code().unwrap_or(-1)
}

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The stages of a status report's readiness history, in order.
pub fn history_stages(status: &StatusReport) -> Vec<Stage> {
    status.history.iter().map(|h| h.stage).collect()
}

pub fn wait_until(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub fn exists(p: &Path) -> bool {
    p.exists()
}

/// Pids whose `/proc/<pid>/cmdline` contains `needle`, except `except` (e.g. a test server
/// that takes its own keys as arguments).
pub fn cmdlines_containing(needle: &str, except: &[u32]) -> Vec<String> {
    let mut hits = vec![];
    for e in std::fs::read_dir("/proc").expect("proc").flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Ok(pid) = name.parse::<u32>() else {
            continue;
        };
        if except.contains(&pid) {
            continue;
        }
        if let Ok(c) = std::fs::read(e.path().join("cmdline"))
            && String::from_utf8_lossy(&c).contains(needle)
        {
            hits.push(format!(
                "{pid}: {}",
                String::from_utf8_lossy(&c).replace('\0', " ")
            ));
        }
    }
    hits
}
