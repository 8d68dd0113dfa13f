//! Pinned SSH with the real `ssh` and `sshd`: a worker whose host key is the one the
//! fleet generated is reached by name; the same address with another host key is
//! refused (never trust on first use), and nothing is ever added to known_hosts.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use agent_status::Stage;
use image_builder::fleet::keys::{self, KeyPair};
use image_builder::fleet::ssh::{Pinned, agent_status};
use image_builder::fleet::state::{
    FleetBackend, FleetState, STATE_VERSION, StateDir, WorkerRecord,
};

struct Sshd {
    child: Child,
    port: u16,
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn sshd_binary() -> PathBuf {
    let p = PathBuf::from("/usr/sbin/sshd");
    assert!(
        p.is_file(),
        "/usr/sbin/sshd is required by this test: apt-get install openssh-server (or run .ci/setup.sh)"
    );
    p
}

/// An sshd on 127.0.0.1 with `host` as its host key, letting `authorized` in as the
/// current user; it answers every command with `pinned-ok`.
fn start_sshd(dir: &Path, host: &KeyPair, authorized: &str) -> Sshd {
    start_sshd_with(dir, host, authorized, "echo pinned-ok", "")
}

/// The same with its own `ForceCommand` and extra configuration lines.
fn start_sshd_with(dir: &Path, host: &KeyPair, authorized: &str, force: &str, extra: &str) -> Sshd {
    use std::os::unix::fs::PermissionsExt as _;
    let key = dir.join("host_key");
    std::fs::write(&key, &host.private).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::write(dir.join("authorized_keys"), format!("{authorized}\n")).unwrap();
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = dir.join("sshd_config");
    std::fs::write(
        &config,
        format!(
            "ListenAddress 127.0.0.1\nPort {port}\nHostKey {key}\nAuthorizedKeysFile {ak}\nPidFile {pid}\n\
             StrictModes no\nUsePAM no\nPermitRootLogin prohibit-password\nPasswordAuthentication no\n\
             KbdInteractiveAuthentication no\nForceCommand {force}\n{extra}",
            key = key.display(),
            ak = dir.join("authorized_keys").display(),
            pid = dir.join("sshd.pid").display(),
        ),
    )
    .unwrap();
    let log = std::fs::File::create(dir.join("sshd.log")).unwrap();
    let sshd = Sshd {
        child: Command::new(sshd_binary())
            .args(["-D", "-e", "-f"])
            .arg(&config)
            .stdin(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start sshd"),
        port,
    };
    // sshd is listening once its log says so (on failure, Drop kills it).
    let log_path = dir.join("sshd.log");
    for _ in 0..200 {
        if std::fs::read_to_string(&log_path).is_ok_and(|l| l.contains("listening on")) {
            return sshd;
        }
        std::thread::sleep(std::time::Duration::from_millis(25));
    }
    panic!(
        "sshd did not start:\n{}",
        std::fs::read_to_string(&log_path).unwrap_or_default()
    );
}

/// A local fleet's state with no workers yet.
fn empty_state(name: &str) -> FleetState {
    FleetState {
        version: STATE_VERSION,
        name: name.parse().unwrap(),
        backend: FleetBackend::Qemu,
        user: nix_user(),
        spec_sha256: String::new(),
        image: String::new(),
        sha: None,
        region: None,
        size: None,
        workers: Vec::new(),
        shared_host_key: None,
    }
}

/// `name`, served by `sshd` with `host` as its host key.
fn add_worker(state: &mut FleetState, name: &str, sshd: &Sshd, host: &KeyPair) {
    state.workers.push(WorkerRecord {
        name: name.into(),
        id: None,
        address: "127.0.0.1".into(),
        port: sshd.port,
        host_key: host.public_key_only(),
        created_at: String::new(),
    });
}

#[test]
fn pinned_host_key_is_accepted_and_a_changed_one_refused() {
    let dir = tempfile::tempdir().unwrap();
    let states = StateDir::at(dir.path().join("state"));
    let mut state = empty_state("pin");
    let pinned = Pinned::paths(&states, &state).unwrap();
    let identity = pinned.ensure_identity("fleet pin").unwrap();
    let host = keys::generate("pin-1 host").unwrap();

    let sshd_dir = dir.path().join("sshd");
    std::fs::create_dir_all(&sshd_dir).unwrap();
    let sshd = start_sshd(&sshd_dir, &host, &identity);
    add_worker(&mut state, "pin-1", &sshd, &host);
    pinned.write(&state).unwrap();
    let known_before = std::fs::read_to_string(&pinned.known_hosts).unwrap();

    let ok = pinned.ssh("pin-1").arg("true").output().unwrap();
    assert!(
        ok.status.success() && String::from_utf8_lossy(&ok.stdout).contains("pinned-ok"),
        "the pinned worker is reached: {}",
        String::from_utf8_lossy(&ok.stderr)
    );

    // Same address and port, another host key: refused, and known_hosts unchanged.
    drop(sshd);
    let impostor = keys::generate("impostor").unwrap();
    let sshd_dir2 = dir.path().join("sshd2");
    std::fs::create_dir_all(&sshd_dir2).unwrap();
    let sshd2 = start_sshd(&sshd_dir2, &impostor, &identity);
    state.workers[0].port = sshd2.port;
    pinned.write(&state).unwrap();
    let refused = pinned.ssh("pin-1").arg("true").output().unwrap();
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(255), "{stderr}");
    assert!(
        !String::from_utf8_lossy(&refused.stdout).contains("pinned-ok"),
        "a changed host key must not get through"
    );
    assert!(
        stderr.contains("HOST IDENTIFICATION HAS CHANGED")
            || stderr.contains("Host key verification failed"),
        "{stderr}"
    );
    assert_eq!(
        std::fs::read_to_string(&pinned.known_hosts).unwrap(),
        known_before,
        "nothing is learned on first use"
    );
}

fn nix_user() -> String {
    std::env::var("USER")
        .ok()
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| {
            let out = Command::new("id").arg("-un").output().unwrap();
            String::from_utf8_lossy(&out.stdout).trim().to_owned()
        })
}

/// A fleet `name` of one worker, `<name>-1`: an sshd whose `ForceCommand` is the shell
/// script `script` (in the sshd's directory), with `extra` sshd configuration; the fleet's
/// state saved and its SSH files written.
struct OneWorker {
    /// `state/` holds the fleet's state (`IMAGE_BUILDER_STATE_DIR`), `sshd/` the worker's.
    dir: tempfile::TempDir,
    pinned: Pinned,
    _sshd: Sshd,
}

fn one_worker(name: &str, script: &str, extra: &str) -> OneWorker {
    let dir = tempfile::tempdir().unwrap();
    let states = StateDir::at(dir.path().join("state"));
    let mut state = empty_state(name);
    let pinned = Pinned::paths(&states, &state).unwrap();
    let identity = pinned.ensure_identity(&format!("fleet {name}")).unwrap();
    let host = keys::generate(&format!("{name}-1 host")).unwrap();
    let sshd_dir = dir.path().join("sshd");
    std::fs::create_dir_all(&sshd_dir).unwrap();
    let force = sshd_dir.join("force.sh");
    std::fs::write(&force, script).unwrap();
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&force, std::fs::Permissions::from_mode(0o755)).unwrap();
    let sshd = start_sshd_with(
        &sshd_dir,
        &host,
        &identity,
        &force.display().to_string(),
        extra,
    );
    add_worker(&mut state, &format!("{name}-1"), &sshd, &host);
    states.save(&state).unwrap();
    pinned.write(&state).unwrap();
    OneWorker {
        dir,
        pinned,
        _sshd: sshd,
    }
}

/// `fleet run --env NAME` through the real binary: the value reaches the worker through
/// the SSH protocol (SendEnv, accepted by the images' sshd drop-in), not in the remote
/// command; the remote command is `vm-agent run` with the prefix; the job's exit code is
/// `fleet run`'s.
#[test]
fn fleet_run_sends_env_by_the_ssh_protocol_and_returns_the_jobs_code() {
    const SECRET: &str = "fleet-run-env-secret-0c9b";
    let w = one_worker(
        "envs",
        "#!/bin/sh\necho \"token=$IMAGE_BUILDER_ENV_JOB_TOKEN\"\necho \"command=$SSH_ORIGINAL_COMMAND\"\necho \"stdin=$(cat)\"\nexit 3\n",
        provision::SSHD_ACCEPT_ENV_CONTENT,
    );
    let dir = &w.dir;
    let out = Command::new(env!("CARGO_BIN_EXE_image-builder"))
        .args([
            "fleet",
            "run",
            "--fleet",
            "envs",
            "--worker",
            "envs-1",
            "--env",
            "JOB_TOKEN",
            "--",
            "sh",
            "-c",
            "env",
        ])
        .env("IMAGE_BUILDER_STATE_DIR", dir.path().join("state"))
        .env("JOB_TOKEN", SECRET)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(3),
        "the job's code: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains(&format!("token={SECRET}")), "{stdout}");
    let command = stdout.lines().find(|l| l.starts_with("command=")).unwrap();
    assert_eq!(
        command,
        "command=vm-agent run --env-prefix IMAGE_BUILDER_ENV_ -- sh -c env"
    );
    assert!(!command.contains(SECRET));
    assert!(
        stdout.contains("stdin=\n") || stdout.ends_with("stdin="),
        "without --stdin the job reads nothing: {stdout}"
    );

    // --stdin: a heredoc goes to the job.
    let mut child = Command::new(env!("CARGO_BIN_EXE_image-builder"))
        .args([
            "fleet", "run", "--fleet", "envs", "--worker", "envs-1", "--stdin", "--", "sh", "-s",
        ])
        .env("IMAGE_BUILDER_STATE_DIR", dir.path().join("state"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write as _;
        let mut pipe = child.stdin.take().unwrap();
        pipe.write_all(b"echo from-the-heredoc\n").unwrap();
    }
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("stdin=echo from-the-heredoc"), "{stdout}");
    assert!(
        stdout.contains("command=vm-agent run --stdin -- sh -s"),
        "{stdout}"
    );
}

/// A status report vm-agent wrote (`agent-status`'s fixture: stage `ready`, 1 job running).
const REPORT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../vm-agent/crates/agent-status/tests/fixtures/report-v1.json"
);

/// `vm-agent status --json` over pinned SSH is read as the agent's own report type, and a
/// report of another version is an error naming it; `fleet run` without `--worker` picks
/// the worker by the typed report (`ready`).
#[test]
fn fleet_reads_the_agents_status_report_as_its_type() {
    // The worker's vm-agent: `status --json` prints the report in `report.json` next to the
    // script (exit 0: ready); anything else says what it was asked to run.
    let w = one_worker(
        "stat",
        "#!/bin/sh\nif [ \"$SSH_ORIGINAL_COMMAND\" = 'vm-agent status --json' ]; then \
         cat \"$(dirname \"$0\")/report.json\"; else echo \"ran=$SSH_ORIGINAL_COMMAND\"; fi\n",
        "",
    );
    let (dir, pinned) = (&w.dir, &w.pinned);
    let report = dir.path().join("sshd/report.json");
    std::fs::copy(REPORT, &report).unwrap();

    let status = agent_status(pinned, "stat-1").unwrap();
    assert_eq!(status.stage, Stage::Ready);
    assert_eq!((status.jobs.running, status.jobs.queued), (1, 1));
    let fleet_run = || {
        Command::new(env!("CARGO_BIN_EXE_image-builder"))
            .args(["fleet", "run", "--fleet", "stat", "--", "true"])
            .env("IMAGE_BUILDER_STATE_DIR", dir.path().join("state"))
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    let out = fleet_run();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("ran=vm-agent run -- true"),
        "the ready worker was picked: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // A report of another version: an error that names it, and no worker is ready.
    let mut newer: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(REPORT).unwrap()).unwrap();
    newer["report_version"] = 2.into();
    std::fs::write(&report, newer.to_string()).unwrap();
    let e = agent_status(pinned, "stat-1").unwrap_err();
    assert!(e.contains("report_version 2"), "{e}");
    let out = fleet_run();
    assert_ne!(out.status.code(), Some(0));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no worker of fleet stat is ready"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
