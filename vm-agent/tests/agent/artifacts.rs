//! The `fetching-artifacts` stage and `vm-agent pull` against a real S3 server (s3s-fs on
//! 127.0.0.1), with builds published by image-builder's publish code.

use crate::common::*;
use crate::s3::*;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::PathBuf;
use std::time::Duration;
use vm_agent::config::{ArtifactsConfig, Limit};
use vm_agent::report::{ArtifactItem, ArtifactState, ArtifactTrigger, Stage, StatusReport};

const SHA: &str = "0a1b2c3d4e5f60718293a4b5c6d7e8f901234567";
const OTHER_SHA: &str = "feedfacecafebeef00112233445566778899aabb";

/// An agent whose `[artifacts]` points at `server`, cloud-init already done.
fn agent_for(server: &S3Server, sha: Option<&str>, required: bool) -> Agent {
    let mut a = Agent::new();
    a.cloud_init_done();
    a.cfg.artifacts = Some(ArtifactsConfig {
        bucket: BUCKET.into(),
        endpoint: server.endpoint(),
        region: "us-east-1".into(),
        path_style: true,
        sha: sha.map(String::from),
        required,
        cache_max_bytes: None,
        min_free_bytes: 1 << 20,
        concurrency: 8,
        timeout: Limit::After(Duration::from_secs(120)),
    });
    a
}

fn good_keys(a: &Agent, server: &S3Server) {
    a.write_secrets(&format!(
        "spaces_access_key_id = \"{}\"\nspaces_secret_access_key = \"{}\"\n",
        server.access_key, server.secret_key
    ));
}

/// A build: a nested executable, a small text file and a 20 MiB file (ranged GETs).
struct Build {
    _dir: tempfile::TempDir,
    root: PathBuf,
    big: Vec<u8>,
}

fn build_tree() -> Build {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("out");
    write_file(&root.join("bin/tool"), b"#!/bin/sh\necho tool\n", 0o755);
    write_file(&root.join("README.txt"), b"hello from the build\n", 0o644);
    let big = pseudo_random(20 << 20, 7);
    write_file(&root.join("lib/big.bin"), &big, 0o644);
    Build {
        _dir: dir,
        root,
        big,
    }
}

fn wait_final(a: &Agent, secs: u64) -> StatusReport {
    a.wait_status("a final stage", secs, |s| s.stage.is_final())
}

fn item<'a>(s: &'a StatusReport, sha: &str) -> &'a ArtifactItem {
    s.artifacts
        .items
        .iter()
        .find(|i| i.sha == sha)
        .unwrap_or_else(|| panic!("no artifact item for {sha}: {s:#?}"))
}

/// What `vm-agent pull --json` printed.
fn pulled(out: &std::process::Output) -> ArtifactItem {
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("pull --json: {e}: {}", text(&out.stdout)))
}

fn no_incoming(a: &Agent) {
    let art = a.path("state/artifacts");
    if let Ok(rd) = std::fs::read_dir(&art) {
        for e in rd.flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            assert!(!n.starts_with(".incoming"), "left behind: {n}");
        }
    }
}

#[test]
fn boot_pull_installs_a_verified_build_and_reaches_ready_without_leaking_keys() {
    let server = S3Server::start();
    let b = build_tree();
    let published = server.publish(SHA, std::slice::from_ref(&b.root));
    assert_eq!(published.files, 3);
    let mut a = agent_for(&server, Some(SHA), true);
    good_keys(&a, &server);
    a.start();
    let s = wait_final(&a, 90);
    assert_eq!(s.stage, Stage::Ready, "{s:#?}\n{}", a.log());
    let stages = history_stages(&s);
    assert_eq!(
        stages,
        [
            Stage::Booting,
            Stage::WaitingCloudInit,
            Stage::FetchingArtifacts,
            Stage::Ready
        ]
    );
    let art = &s.artifacts;
    assert_eq!(art.state, ArtifactState::Installed);
    assert_eq!(art.sha.as_deref(), Some(SHA));
    assert!(art.required);
    assert_eq!(art.credentials.as_deref(), Some("secrets-file"));
    let it = item(&s, SHA);
    assert_eq!(it.state, ArtifactState::Installed);
    assert_eq!(it.trigger, ArtifactTrigger::Boot);
    assert!(it.verified);
    assert_eq!(it.files, 3);
    let total = (20u64 << 20) + 20 + 21;
    assert_eq!(it.bytes, total);
    assert_eq!(it.bytes_done, total, "everything came from the store");
    assert!(it.duration_secs >= 0.0);
    let dir = a.path(&format!("state/artifacts/{SHA}"));
    assert_eq!(it.path, Some(dir.display().to_string()));

    // Installed with the published contents and modes.
    assert_eq!(
        std::fs::read(dir.join("out/lib/big.bin")).expect("big"),
        b.big
    );
    assert_eq!(
        std::fs::read(dir.join("out/README.txt")).expect("readme"),
        b"hello from the build\n"
    );
    let mode = std::fs::metadata(dir.join("out/bin/tool"))
        .expect("tool")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o755);
    assert!(dir.join("manifest.json").is_file());
    no_incoming(&a);

    // The ready file and the human status say the same.
    let ready = StatusReport::from_json(&std::fs::read(a.path("run/ready")).expect("ready file"))
        .expect("a status report");
    assert_eq!(ready.artifacts.state, ArtifactState::Installed);
    let out = a.cli(&["status"]);
    assert_eq!(code(&out), 0);
    let human = text(&out.stdout);
    assert!(
        human.contains("artifacts: installed 0a1b2c3d4e5f (required)"),
        "{human}"
    );
    assert!(human.contains("verified"), "{human}");
    for line in human.lines() {
        assert!(line.chars().count() <= 80, "over 80 columns: {line:?}");
    }

    // The keys: never in any argv (but the test server's own), the log or the status.
    let json = text(&a.cli(&["status", "--json"]).stdout);
    for secret in [&server.secret_key, &server.access_key] {
        let hits = cmdlines_containing(secret, &[server.pid()]);
        assert!(hits.is_empty(), "{secret} in argv: {hits:?}");
        let log = a.log();
        let leaked: Vec<&str> = log
            .lines()
            .filter(|l| l.contains(secret.as_str()))
            .collect();
        assert!(leaked.is_empty(), "{secret} in the daemon log: {leaked:?}");
        assert!(!json.contains(secret.as_str()), "{secret} in status --json");
        assert!(!human.contains(secret), "{secret} in status");
    }
}

#[test]
fn missing_manifest_and_optional_artifacts_still_reach_ready() {
    let server = S3Server::start();
    let mut a = agent_for(&server, Some(SHA), false);
    good_keys(&a, &server);
    a.start();
    let s = wait_final(&a, 60);
    assert_eq!(s.stage, Stage::Ready, "{s:#?}");
    assert!(s.reason.is_none(), "{s:#?}");
    assert_eq!(s.artifacts.state, ArtifactState::Unavailable);
    let detail = s.artifacts.detail.as_deref().unwrap_or("");
    assert!(detail.starts_with("artifact unavailable: "), "{detail}");
    assert!(detail.contains("not published"), "{detail}");
    assert!(
        detail.contains(&format!("builds/{SHA}/manifest.json")),
        "{detail}"
    );
    let out = a.cli(&["status"]);
    assert_eq!(code(&out), 0, "ready");
    let human = text(&out.stdout);
    assert!(human.contains("artifacts: unavailable"), "{human}");
    assert!(human.contains("artifact unavailable: "), "{human}");
    for line in human.lines() {
        assert!(line.chars().count() <= 80, "over 80 columns: {line:?}");
    }
    assert!(!a.path(&format!("state/artifacts/{SHA}")).exists());
}

#[test]
fn missing_manifest_and_required_artifacts_are_degraded_with_the_reason() {
    let server = S3Server::start();
    let mut a = agent_for(&server, Some(SHA), true);
    good_keys(&a, &server);
    a.start();
    let s = wait_final(&a, 60);
    assert_eq!(s.stage, Stage::Degraded, "{s:#?}");
    let reason = s.reason.as_deref().unwrap_or("");
    assert!(
        reason.contains(&format!("required artifact {SHA}: artifact unavailable: ")),
        "{reason}"
    );
    assert!(reason.contains("not published"), "{reason}");
    assert_eq!(code(&a.cli(&["status"])), 1, "degraded -> 1");
    assert!(a.path("run/degraded").exists());
    assert!(!a.path("run/ready").exists());
}

#[test]
fn wrong_keys_are_unavailable_with_a_clear_403_and_the_secret_never_shows() {
    let server = S3Server::start();
    let b = build_tree();
    server.publish(SHA, std::slice::from_ref(&b.root));
    let wrong = "definitely-not-the-secret-5e1f";
    let mut a = agent_for(&server, Some(SHA), true);
    a.write_secrets(&format!(
        "spaces_access_key_id = \"{}\"\nspaces_secret_access_key = \"{wrong}\"\n",
        server.access_key
    ));
    a.start();
    let s = wait_final(&a, 60);
    assert_eq!(s.stage, Stage::Degraded, "{s:#?}");
    let detail = s.artifacts.detail.as_deref().unwrap_or("");
    assert_eq!(s.artifacts.state, ArtifactState::Unavailable, "{s:#?}");
    assert!(detail.contains("access denied"), "{detail}");
    assert!(detail.contains("HTTP 403"), "{detail}");
    let human = text(&a.cli(&["status"]).stdout);
    assert!(human.contains("HTTP 403"), "{human}");
    assert!(!a.path(&format!("state/artifacts/{SHA}")).exists());
    let hits = cmdlines_containing(wrong, &[]);
    assert!(hits.is_empty(), "secret in argv: {hits:?}");
    assert!(!a.log().contains(wrong), "secret in the log");
    assert!(
        !text(&a.cli(&["status", "--json"]).stdout).contains(wrong),
        "secret in status --json"
    );
    assert!(!human.contains(wrong), "secret in status");
}

#[test]
fn missing_keys_and_an_unreachable_store_are_unavailable() {
    // No secrets file and no environment keys.
    let server = S3Server::start();
    let mut a = agent_for(&server, Some(SHA), false);
    a.start();
    let s = wait_final(&a, 60);
    assert_eq!(s.stage, Stage::Ready, "{s:#?}");
    assert_eq!(s.artifacts.credentials.as_deref(), Some("none"));
    let detail = s.artifacts.detail.as_deref().unwrap_or("");
    assert!(
        detail.contains("artifact unavailable: no S3 credentials"),
        "{detail}"
    );
    drop(a);

    // Keys, but nothing listens on the endpoint: required → degraded, "unreachable".
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    let mut a = agent_for(&server, Some(SHA), true);
    if let Some(c) = a.cfg.artifacts.as_mut() {
        c.endpoint = format!("http://127.0.0.1:{closed}");
    }
    good_keys(&a, &server);
    a.start();
    let s = wait_final(&a, 120);
    assert_eq!(s.stage, Stage::Degraded, "{s:#?}");
    let reason = s.reason.as_deref().unwrap_or("");
    assert!(reason.contains("artifact unavailable: "), "{reason}");
    assert!(reason.contains("unreachable"), "{reason}");
}

#[test]
fn corrupted_object_is_refused_and_nothing_is_installed() {
    let server = S3Server::start();
    let b = build_tree();
    server.publish(SHA, std::slice::from_ref(&b.root));
    // Same size, different bytes, behind the server's back.
    let obj = server.object_path(&format!("builds/{SHA}/out/README.txt"));
    std::fs::write(&obj, b"HELLO FROM THE BUILD\n").expect("corrupt");
    let mut a = agent_for(&server, Some(SHA), true);
    good_keys(&a, &server);
    a.start();
    let s = wait_final(&a, 90);
    assert_eq!(s.stage, Stage::Degraded, "{s:#?}");
    assert_eq!(s.artifacts.state, ArtifactState::Failed);
    let reason = s.reason.as_deref().unwrap_or("");
    assert!(reason.contains("artifact failed: "), "{reason}");
    assert!(reason.contains("sha256 mismatch"), "{reason}");
    assert!(reason.contains("out/README.txt"), "{reason}");
    let it = item(&s, SHA);
    assert!(!it.verified);
    assert!(it.path.is_none());
    assert!(!a.path(&format!("state/artifacts/{SHA}")).exists());
    no_incoming(&a);
}

#[test]
fn pull_on_demand_through_the_daemon_with_keys_from_the_environment() {
    let server = S3Server::start();
    let mut a = agent_for(&server, None, false);
    a.env = vec![
        ("SPACES_ACCESS_KEY_ID".into(), server.access_key.clone()),
        ("SPACES_SECRET_ACCESS_KEY".into(), server.secret_key.clone()),
    ];
    a.start();
    let s = wait_final(&a, 30);
    assert_eq!(s.stage, Stage::Ready);
    assert_eq!(s.artifacts.state, ArtifactState::None);
    assert_eq!(s.artifacts.credentials.as_deref(), Some("environment"));

    // Not published yet: exit 2 ("unavailable"), nothing installed.
    let out = a.cli(&["pull", OTHER_SHA]);
    assert_eq!(code(&out), 2, "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("artifact unavailable: "),
        "{}",
        text(&out.stderr)
    );

    let b = build_tree();
    server.publish(OTHER_SHA, std::slice::from_ref(&b.root));
    let out = a.cli(&["pull", OTHER_SHA, "--json"]);
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    let it = pulled(&out);
    assert_eq!(it.state, ArtifactState::Installed);
    assert_eq!(it.trigger, ArtifactTrigger::Pull);
    assert!(it.verified);
    assert!(!it.already_installed);
    assert_eq!(it.files, 3);
    let dir = a.path(&format!("state/artifacts/{OTHER_SHA}"));
    assert_eq!(
        std::fs::read(dir.join("out/lib/big.bin")).expect("big"),
        b.big
    );

    // status sees it (one item per sha: the earlier "unavailable" was replaced).
    let s = a.status();
    assert_eq!(s.artifacts.items.len(), 1, "{s:#?}");
    assert_eq!(item(&s, OTHER_SHA).state, ArtifactState::Installed);

    // Again: already installed; the human form prints the directory on stdout.
    let out = a.cli(&["pull", OTHER_SHA]);
    assert_eq!(code(&out), 0);
    assert_eq!(text(&out.stdout).trim(), dir.display().to_string());
    assert!(
        text(&out.stderr).contains("already installed"),
        "{}",
        text(&out.stderr)
    );

    // Bad sha: the daemon refuses it as a bad request (usage error).
    let out = a.cli(&["pull", "NOT-A-SHA"]);
    assert_eq!(code(&out), 64, "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("invalid sha"));

    assert!(cmdlines_containing(&server.secret_key, &[server.pid()]).is_empty());
    assert!(!a.log().contains(&server.secret_key));
}

#[test]
fn pull_without_an_artifacts_section_is_refused() {
    let mut a = Agent::new();
    a.cloud_init_done();
    a.start();
    a.wait_ready();
    let out = a.cli(&["pull", SHA]);
    assert_eq!(code(&out), 64, "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("no [artifacts] section"),
        "{}",
        text(&out.stderr)
    );
    // Nobody without the group may pull either: covered by the peer-credential check
    // (`pull` is privileged like `run`).
    assert!(vm_agent::protocol::Request::Pull { sha: SHA.into() }.is_privileged());
}

/// Children of `pid` whose command line is `... pull-worker`.
fn pull_workers_of(pid: u32) -> Vec<u32> {
    let mut found = vec![];
    for e in std::fs::read_dir("/proc").expect("proc").flatten() {
        let Ok(child) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        // pid (comm) state ppid ...: comm may hold spaces, so split after the last ')'.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        if ppid == Some(pid) && String::from_utf8_lossy(&cmdline).contains("pull-worker") {
            found.push(child);
        }
    }
    found
}

/// A ready agent (no boot sha) whose store holds build OTHER_SHA.
fn ready_with_a_published_build() -> (S3Server, Build, Agent) {
    let server = S3Server::start();
    let b = build_tree();
    server.publish(OTHER_SHA, std::slice::from_ref(&b.root));
    let mut a = agent_for(&server, None, false);
    good_keys(&a, &server);
    a.start();
    assert_eq!(wait_final(&a, 30).stage, Stage::Ready);
    (server, b, a)
}

fn signal(sig: &str, pid: u32) {
    let st = std::process::Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .expect("kill");
    assert!(st.success(), "kill {sig} {pid}");
}

/// The one pull-worker child of `daemon`, once it is there.
fn wait_pull_worker(daemon: u32) -> u32 {
    let mut workers = vec![];
    wait_until("a pull-worker child of the daemon", 30, || {
        workers = pull_workers_of(daemon);
        !workers.is_empty()
    });
    assert_eq!(workers.len(), 1, "{workers:?}");
    workers[0]
}

/// A pull runs in its own process: killing it mid-transfer fails that pull with the reason,
/// the daemon lives on (and stays small), and the next pull resumes and installs.
#[test]
fn a_pull_runs_in_a_child_process_whose_death_does_not_take_the_daemon() {
    let (server, b, a) = ready_with_a_published_build();
    let daemon = a.pid();

    // Freeze the store so the pull is caught mid-way, then kill its process.
    signal("-STOP", server.pid());
    let pulling = std::thread::scope(|s| {
        let h = s.spawn(|| a.cli(&["pull", OTHER_SHA, "--json"]));
        let worker = wait_pull_worker(daemon);
        // The keys reach it over a pipe, not its argv.
        assert!(cmdlines_containing(&server.secret_key, &[server.pid()]).is_empty());
        signal("-KILL", worker);
        h.join().expect("cli thread")
    });
    signal("-CONT", server.pid());
    assert_eq!(code(&pulling), 1, "{}", text(&pulling.stderr));
    let it = pulled(&pulling);
    assert_eq!(it.state, ArtifactState::Failed, "{it:#?}");
    let reason = it.reason.as_deref().unwrap_or_default();
    assert!(
        reason.contains("the pull process ended without a result") && reason.contains("signal"),
        "{reason}"
    );

    // The daemon is the same process and still answers.
    assert_eq!(a.pid(), daemon);
    assert!(
        std::path::Path::new(&format!("/proc/{daemon}")).exists(),
        "the daemon died with its pull:\n{}",
        a.log()
    );
    let s = a.status();
    assert_eq!(s.stage, Stage::Ready, "{s:#?}");
    assert_eq!(item(&s, OTHER_SHA).state, ArtifactState::Failed);
    no_incoming_visible(&a);

    // The next pull completes (partial files of the killed one are reused or replaced).
    let out = a.cli(&["pull", OTHER_SHA, "--json"]);
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    assert_eq!(pulled(&out).state, ArtifactState::Installed);
    let dir = a.path(&format!("state/artifacts/{OTHER_SHA}"));
    assert_eq!(
        std::fs::read(dir.join("out/lib/big.bin")).expect("big"),
        b.big
    );
    no_incoming(&a);
    assert!(pull_workers_of(daemon).is_empty(), "no pull process left");
}

/// After a killed pull, nothing is installed under the sha's own name.
fn no_incoming_visible(a: &Agent) {
    assert!(
        !a.path(&format!("state/artifacts/{OTHER_SHA}")).exists(),
        "a killed pull must not leave an installed build"
    );
}

/// A daemon killed mid-pull takes its pull process with it (no orphan pull running on).
#[test]
fn a_killed_daemon_leaves_no_pull_process_behind() {
    let (server, _build, mut a) = ready_with_a_published_build();
    let daemon = a.pid();
    signal("-STOP", server.pid());
    let (worker, progress) = std::thread::scope(|s| {
        let h = s.spawn(|| a.cli(&["pull", OTHER_SHA]));
        let worker = wait_pull_worker(daemon);
        // A second reader on the worker's progress pipe (its stdout): once the daemon is gone,
        // the worker's next progress line still has a reader, so it cannot end on a broken
        // pipe; only the parent-death signal can end it.
        let progress = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(nix::fcntl::OFlag::O_NONBLOCK.bits())
            .open(format!("/proc/{worker}/fd/1"))
            .expect("open the worker's progress pipe");
        signal("-KILL", daemon);
        let out = h.join().expect("cli thread");
        assert_ne!(code(&out), 0, "the pull cannot succeed without its daemon");
        (worker, progress)
    });
    // While the store is still frozen: the worker makes no progress, so only the
    // parent-death signal can end it now.
    wait_until("the orphaned pull-worker to end", 10, || {
        // Gone, or a zombie nobody has reaped yet.
        std::fs::read_to_string(format!("/proc/{worker}/stat"))
            .map(|st| {
                st.rsplit_once(')')
                    .is_some_and(|(_, r)| r.trim_start().starts_with('Z'))
            })
            .unwrap_or(true)
    });
    drop(progress);
    signal("-CONT", server.pid());
    a.kill();
    assert!(
        !a.path(&format!("state/artifacts/{OTHER_SHA}")).exists(),
        "nothing installed"
    );
}
