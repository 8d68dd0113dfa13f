use crate::common::*;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::time::Duration;
use vm_agent::report::{Stage, StatusReport};

fn ready_agent(tweak: impl FnOnce(&mut Agent)) -> Agent {
    let mut a = Agent::new();
    tweak(&mut a);
    a.cloud_init_done();
    a.start();
    a.wait_ready();
    a
}

/// Shell that blocks a job until the test opens `gate` (creates the file). It also gives up
/// once the agent's temp dir is gone, so a test that fails first leaves no job behind.
fn until_open(gate: &Path) -> String {
    let dir = gate.parent().expect("gate in the temp dir");
    format!(
        "until [ -e {} ] || [ ! -d {} ]; do sleep 0.05; done",
        gate.display(),
        dir.display()
    )
}

fn open_gate(gate: &Path) {
    std::fs::write(gate, "").expect("open the gate");
}

#[test]
fn run_streams_output_and_propagates_the_exit_code() {
    let a = ready_agent(|_| {});
    let out = a.cli(&[
        "run",
        "--name",
        "demo",
        "--",
        "sh",
        "-c",
        "echo out; echo err >&2; printf 'no newline'; exit 7",
    ]);
    assert_eq!(code(&out), 7, "stderr: {}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "out\nerr\nno newline");
    let j = a.job(1);
    assert_eq!(j["state"], "failed");
    assert_eq!(j["exit_code"], 7);
    assert_eq!(j["name"], "demo");
    let logs = a.cli(&["logs", "1"]);
    assert_eq!(text(&logs.stdout), "out\nerr\nno newline");
    let ok = a.cli(&["run", "--", "true"]);
    assert_eq!(code(&ok), 0);
    assert_eq!(a.job(2)["state"], "succeeded");
    let human = a.cli(&["jobs"]);
    let listing = text(&human.stdout);
    assert!(
        listing.contains("failed") && listing.contains("succeeded"),
        "{listing}"
    );
    // A command that does not exist: 127, like a shell.
    let missing = a.cli(&["run", "--", "/nonexistent/cmd"]);
    assert_eq!(code(&missing), 127);
}

/// An agent that is not root runs jobs as itself, not as `jobs.user`, and says so. Run as
/// root, the test starts the daemon as an unprivileged uid of its own.
#[test]
fn an_unprivileged_agent_runs_jobs_as_itself_and_says_so() {
    let a = ready_agent(|a| {
        a.cfg.jobs.user = Some("builder".into());
        if is_root() {
            let home = a.path("home-agent");
            std::fs::create_dir_all(&home).expect("home");
            let mut passwd = std::fs::read_to_string(a.path("passwd")).expect("passwd");
            passwd.push_str(&format!("agent:x:4321:4321::{}:/bin/sh\n", home.display()));
            std::fs::write(a.path("passwd"), passwd).expect("passwd");
            a.daemon_user = Some((4321, 4321));
        }
    });
    let daemon_uid = a
        .daemon_user
        .map_or(nix::unistd::geteuid().as_raw(), |(uid, _)| uid);
    assert_ne!(daemon_uid, 0);
    assert_ne!(
        daemon_uid, 65534,
        "builder's uid: the test could not tell them apart"
    );
    let out = a.cli(&["run", "--", "id", "-u"]);
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), daemon_uid.to_string());
    assert_eq!(a.job(1)["uid"], daemon_uid);
    let s = a.status();
    let run_as = &s.jobs.run_as;
    assert_eq!(run_as.uid, daemon_uid, "{s:#?}");
    assert_ne!(run_as.user, "builder", "{s:#?}");
    assert!(
        run_as.note.as_deref().unwrap_or("").contains("not root"),
        "{s:#?}"
    );
}

#[test]
fn jobs_run_as_the_build_user_with_its_groups() {
    if !is_root() {
        panic!("this test needs root to switch jobs to the build user (CI runs as root)");
    }
    let a = ready_agent(|a| {
        a.cfg.jobs.user = Some("builder".into());
        let home = a.path("home-builder");
        std::fs::create_dir_all(&home).expect("home");
        nix::unistd::chown(
            &home,
            Some(nix::unistd::Uid::from_raw(65534)),
            Some(nix::unistd::Gid::from_raw(65534)),
        )
        .expect("chown");
        // The temp dir is 0700 root; let the build user reach its home.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(a.dir.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod");
    });
    let out = a.cli(&[
        "run",
        "--",
        "sh",
        "-c",
        "id -u; id -g; id -G; echo $HOME; pwd; touch $HOME/made-by-job",
    ]);
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    let lines: Vec<String> = text(&out.stdout).lines().map(String::from).collect();
    assert_eq!(lines[0], "65534");
    assert_eq!(lines[1], "65534");
    let groups: Vec<&str> = lines[2].split_whitespace().collect();
    assert!(
        groups.contains(&"4242") && !groups.contains(&"0"),
        "groups {groups:?}"
    );
    assert_eq!(lines[3], a.path("home-builder").display().to_string());
    assert_eq!(lines[4], lines[3]);
    assert!(a.path("home-builder/made-by-job").exists());
}

#[test]
fn cancel_terminates_the_whole_process_group() {
    let a = ready_agent(|_| {});
    let pidfile = a.path("bg.pid");
    let script = format!("sleep 300 & echo $! > {}; wait", pidfile.display());
    let out = a.cli(&["run", "--detach", "--", "sh", "-c", &script]);
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), "1");
    a.wait_job(1, 10, |j| j["state"] == "running");
    wait_until("pid file", 10, || {
        std::fs::read_to_string(&pidfile).is_ok_and(|s| s.ends_with('\n'))
    });
    let bg: i32 = std::fs::read_to_string(&pidfile)
        .expect("pid")
        .trim()
        .parse()
        .expect("pid");
    let c = a.cli(&["cancel", "1"]);
    assert_eq!(code(&c), 0, "{}", text(&c.stderr));
    let j = a.wait_job(1, 10, |j| j["state"] == "cancelled");
    assert_eq!(j["signal"], 15);
    wait_until("background sleep to die", 10, || {
        std::fs::read_to_string(format!("/proc/{bg}/stat"))
            .map(|s| s.split_whitespace().nth(2) == Some("Z"))
            .unwrap_or(true)
    });
    // Cancelling again is an error.
    assert_ne!(code(&a.cli(&["cancel", "1"])), 0);
}

#[test]
fn cancel_escalates_to_sigkill_after_the_grace_period() {
    let a = ready_agent(|_| {});
    // The job ignores SIGTERM (and so do its children, which inherit that), and says so by
    // creating `armed` only once the trap is set.
    let armed = a.path("armed");
    let script = format!(
        "trap '' TERM; touch {}; while true; do sleep 0.1; done",
        armed.display()
    );
    let id = a.run_detached(&["sh", "-c", &script]);
    wait_until("the job to ignore SIGTERM", 10, || armed.exists());
    assert_eq!(a.job(id)["state"], "running");
    let c = a.cli(&["cancel", &id.to_string()]);
    assert_eq!(code(&c), 0, "{}", text(&c.stderr));
    let j = a.wait_job(id, 10, |j| j["state"] == "cancelled");
    assert_eq!(j["signal"], 9, "{j:#}");
    assert!(a.log().contains("job ignored SIGTERM"), "{}", a.log());
}

#[test]
fn timeout_kills_the_job_with_124() {
    let a = ready_agent(|_| {});
    let out = a.cli(&["run", "--timeout", "1s", "--", "sleep", "30"]);
    assert_eq!(code(&out), 124);
    assert_eq!(a.job(1)["state"], "timed-out");
    let bad = a.cli(&["run", "--timeout", "0", "--", "true"]);
    assert_eq!(
        code(&bad),
        64,
        "zero timeout refused: {}",
        text(&bad.stderr)
    );
}

#[test]
fn client_hangup_cancels_an_attached_job() {
    let a = ready_agent(|_| {});
    let mut child = std::process::Command::new(BIN)
        .arg("--config")
        .arg(&a.cfg_path)
        .args(["run", "--", "sleep", "300"])
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("spawn");
    a.wait_job(1, 10, |j| j["state"] == "running");
    child.kill().expect("kill client");
    let st = child.wait().expect("reap the client");
    assert_eq!(st.signal(), Some(9), "the client was still attached: {st}");
    a.wait_job(1, 10, |j| j["state"] == "cancelled");
}

#[test]
fn concurrency_limit_queues_jobs() {
    let a = ready_agent(|a| a.cfg.jobs.max_concurrent = 1);
    // Job 1 holds the only slot until the test opens the gate.
    let gate = a.path("gate");
    assert_eq!(a.run_detached(&["sh", "-c", &until_open(&gate)]), 1);
    assert_eq!(a.run_detached(&["true"]), 2);
    a.wait_job(1, 10, |j| j["state"] == "running");
    assert_eq!(a.job(2)["state"], "queued");
    let s = a.status();
    assert_eq!(s.jobs.running, 1);
    assert_eq!(s.jobs.queued, 1);
    open_gate(&gate);
    let second = a.wait_job(2, 10, |j| j["state"] == "succeeded");
    let first = a.job(1);
    assert_eq!(first["state"], "succeeded", "{first:#}");
    assert!(
        record_time(&second["started_at"]) >= record_time(&first["finished_at"]),
        "job 2 started only once job 1 had finished: {first:#} {second:#}"
    );
    // Queued jobs wait for readiness too: covered by `jobs_wait_for_readiness`.
}

#[test]
fn jobs_wait_for_readiness() {
    let mut a = Agent::new();
    a.start();
    // The job reports the agent's stage as the job sees it when it runs.
    let cfg = a.cfg_path.display().to_string();
    let out = a.cli(&[
        "run", "--detach", "--", BIN, "--config", &cfg, "status", "--json",
    ]);
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    let s = a.status();
    assert_ne!(s.stage, Stage::Ready, "{s:#?}");
    assert_eq!(a.job(1)["state"], "queued");
    a.cloud_init_done();
    let j = a.wait_job(1, 10, |j| j["finished_at"].is_string());
    let logs = a.cli(&["logs", "1"]);
    assert_eq!(code(&logs), 0, "{}", text(&logs.stderr));
    let seen = StatusReport::from_json(&logs.stdout)
        .unwrap_or_else(|e| panic!("the job's status: {e}: {}", text(&logs.stdout)));
    assert_eq!(
        seen.stage,
        Stage::Ready,
        "the job ran before readiness: {seen:#?}"
    );
    assert_eq!(j["state"], "succeeded", "{j:#}");
    let s = a.status();
    assert!(
        record_time(&j["started_at"]) >= stage_entered(&s, Stage::Ready),
        "started before readiness: {j:#} {s:#?}"
    );
}

#[test]
fn records_survive_a_restart_and_running_jobs_become_lost() {
    let mut a = ready_agent(|_| {});
    assert_eq!(code(&a.cli(&["run", "--", "echo", "hi"])), 0);
    assert_eq!(a.run_detached(&["sleep", "300"]), 2);
    let j = a.wait_job(2, 10, |j| j["state"] == "running");
    let job_pid = j["pid"].as_i64().expect("pid") as i32;
    a.kill();
    // The orphaned job (systemd would kill the cgroup; here we do).
    nix::sys::signal::killpg(
        nix::unistd::Pid::from_raw(job_pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill the orphaned job's process group");
    a.start();
    let j1 = a.job(1);
    assert_eq!(j1["state"], "succeeded");
    let j2 = a.job(2);
    assert_eq!(j2["state"], "lost", "{j2:#}");
    assert!(j2["detail"].as_str().unwrap_or("").contains("was running"));
    assert_eq!(text(&a.cli(&["logs", "1"]).stdout), "hi\n");
    a.wait_ready();
    assert_eq!(a.run_detached(&["true"]), 3, "ids continue");
    a.wait_job(3, 10, |j| j["state"] == "succeeded");
}

#[test]
fn logs_follow_streams_until_the_job_ends() {
    let a = ready_agent(|_| {});
    let gate = a.path("gate");
    let script = format!("echo one; {}; echo two", until_open(&gate));
    let id = a.run_detached(&["sh", "-c", &script]);
    let mut follow = std::process::Command::new(BIN)
        .arg("--config")
        .arg(&a.cfg_path)
        .args(["logs", "-f", &id.to_string()])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("logs -f");
    let mut stdout = BufReader::new(follow.stdout.take().expect("stdout"));
    // `one` arrives while the job is still blocked on the gate: streamed, not read at the end.
    // (Read on a thread: a `logs -f` that never streams must fail the test, not hang it.)
    let (first, rest) = std::thread::scope(|scope| {
        let (tx, rx) = std::sync::mpsc::channel();
        let reader = scope.spawn(move || {
            let mut first = String::new();
            stdout.read_line(&mut first).expect("read logs -f");
            tx.send(first.clone()).expect("send");
            let mut rest = String::new();
            stdout.read_to_string(&mut rest).expect("read logs -f");
            rest
        });
        let first = rx.recv_timeout(Duration::from_secs(30));
        if first.is_err() {
            follow.kill().expect("kill logs -f");
        }
        let first = first.expect("the first line while the job runs");
        open_gate(&gate);
        (first, reader.join().expect("reader"))
    });
    assert_eq!(first, "one\n");
    assert_eq!(rest, "two\n");
    let st = follow.wait().expect("logs -f");
    assert!(st.success(), "logs -f: {st}");
    assert_eq!(a.job(id)["state"], "succeeded");
}

#[test]
fn hold_and_release() {
    let a = ready_agent(|_| {});
    let out = a.cli(&["hold", "--for", "1h", "--reason", "debugging"]);
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    let s = a.status();
    let hold = s.hold.expect("held");
    assert_eq!(hold.reason.as_deref(), Some("debugging"));
    assert!(hold.until.is_some());
    assert!(a.path("state/hold.json").exists(), "hold persisted");
    assert_eq!(code(&a.cli(&["hold", "--for", "0"])), 64, "0 refused");
    assert_eq!(code(&a.cli(&["release"])), 0);
    assert!(a.status().hold.is_none());
}

#[test]
fn non_members_may_read_status_but_not_submit() {
    if !is_root() {
        panic!("this test needs root to run the client as another uid (CI runs as root)");
    }
    let a = ready_agent(|a| {
        a.cfg.socket.mode = "0666".into();
        a.cfg.socket.group = Some("agents".into());
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(a.dir.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod");
    });
    use std::os::unix::process::CommandExt;
    let run_as_nobody = |args: &[&str]| {
        std::process::Command::new(BIN)
            .arg("--config")
            .arg(&a.cfg_path)
            .args(args)
            .uid(65534)
            .gid(65534)
            .output()
            .expect("run as nobody")
    };
    let st = run_as_nobody(&["status", "--json"]);
    assert_eq!(code(&st), 0, "{}", text(&st.stderr));
    let report = StatusReport::from_json(&st.stdout).expect("a status report");
    assert_eq!(report.stage, Stage::Ready);
    let run = run_as_nobody(&["run", "--", "true"]);
    assert_ne!(code(&run), 0);
    assert!(
        text(&run.stderr).contains("may only read status"),
        "{}",
        text(&run.stderr)
    );
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(&a.cfg.socket.path).expect("socket");
    assert_eq!(meta.gid(), 4343, "socket group");
    assert_eq!(meta.mode() & 0o777, 0o666);
    // A member of the socket group may submit.
    let member = std::process::Command::new(BIN)
        .arg("--config")
        .arg(&a.cfg_path)
        .args(["run", "--", "true"])
        .uid(65534)
        .gid(4343)
        .output()
        .expect("member");
    assert_eq!(code(&member), 0, "{}", text(&member.stderr));
}
