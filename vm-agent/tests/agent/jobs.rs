use crate::common::*;
use std::time::Duration;

fn ready_agent(tweak: impl FnOnce(&mut Agent)) -> Agent {
    let mut a = Agent::new();
    tweak(&mut a);
    a.cloud_init_done();
    a.start();
    a.wait_ready();
    a
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

#[test]
fn jobs_run_as_the_build_user_with_its_groups() {
    if !is_root() {
        // Unprivileged: the agent runs jobs as itself and says so.
        let a = ready_agent(|a| a.cfg.jobs.user = Some("builder".into()));
        let out = a.cli(&["run", "--", "id", "-u"]);
        assert_eq!(
            text(&out.stdout).trim(),
            nix::unistd::geteuid().as_raw().to_string()
        );
        let s = a.status();
        assert!(
            s["jobs"]["run_as"]["note"]
                .as_str()
                .unwrap_or("")
                .contains("not root"),
            "{s:#}"
        );
        eprintln!("NOTE: not root, so only the run-as-self path was tested");
        return;
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
    let marker = a.path("trapped");
    let script = format!(
        "trap 'echo term > {}' TERM; while true; do sleep 0.1; done",
        marker.display()
    );
    a.cli(&["run", "--detach", "--", "sh", "-c", &script]);
    a.wait_job(1, 10, |j| j["state"] == "running");
    std::thread::sleep(Duration::from_millis(300));
    a.cli(&["cancel", "1"]);
    let j = a.wait_job(1, 10, |j| j["state"] == "cancelled");
    assert_eq!(j["signal"], 9, "{j:#}");
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
    let _ = child.wait();
    a.wait_job(1, 10, |j| j["state"] == "cancelled");
}

#[test]
fn concurrency_limit_queues_jobs() {
    let a = ready_agent(|a| a.cfg.jobs.max_concurrent = 1);
    a.cli(&["run", "--detach", "--", "sleep", "2"]);
    a.cli(&["run", "--detach", "--", "true"]);
    a.wait_job(1, 10, |j| j["state"] == "running");
    assert_eq!(a.job(2)["state"], "queued");
    let s = a.status();
    assert_eq!(s["jobs"]["running"], 1);
    assert_eq!(s["jobs"]["queued"], 1);
    a.wait_job(2, 10, |j| j["state"] == "succeeded");
    // Queued jobs wait for readiness too: covered by `jobs_wait_for_readiness`.
}

#[test]
fn jobs_wait_for_readiness() {
    let mut a = Agent::new();
    a.start();
    let out = a.cli(&["run", "--detach", "--", "true"]);
    assert_eq!(code(&out), 0);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(a.job(1)["state"], "queued");
    a.cloud_init_done();
    a.wait_job(1, 10, |j| j["state"] == "succeeded");
}

#[test]
fn records_survive_a_restart_and_running_jobs_become_lost() {
    let mut a = ready_agent(|_| {});
    assert_eq!(code(&a.cli(&["run", "--", "echo", "hi"])), 0);
    a.cli(&["run", "--detach", "--", "sleep", "300"]);
    let j = a.wait_job(2, 10, |j| j["state"] == "running");
    let job_pid = j["pid"].as_i64().expect("pid") as i32;
    a.kill();
    // The orphaned job (systemd would kill the cgroup; here we do).
    let _ = nix::sys::signal::killpg(
        nix::unistd::Pid::from_raw(job_pid),
        nix::sys::signal::Signal::SIGKILL,
    );
    a.start();
    let j1 = a.job(1);
    assert_eq!(j1["state"], "succeeded");
    let j2 = a.job(2);
    assert_eq!(j2["state"], "lost", "{j2:#}");
    assert!(j2["detail"].as_str().unwrap_or("").contains("was running"));
    assert_eq!(text(&a.cli(&["logs", "1"]).stdout), "hi\n");
    a.wait_ready();
    a.cli(&["run", "--detach", "--", "true"]);
    assert_eq!(
        a.wait_job(3, 10, |j| j["state"] == "succeeded")["id"],
        3,
        "ids continue"
    );
}

#[test]
fn logs_follow_streams_until_the_job_ends() {
    let a = ready_agent(|_| {});
    a.cli(&[
        "run",
        "--detach",
        "--",
        "sh",
        "-c",
        "echo one; sleep 1; echo two",
    ]);
    let out = a.cli(&["logs", "-f", "1"]);
    assert_eq!(text(&out.stdout), "one\ntwo\n");
}

#[test]
fn hold_and_release() {
    let a = ready_agent(|_| {});
    let out = a.cli(&["hold", "--for", "1h", "--reason", "debugging"]);
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    let s = a.status();
    assert_eq!(s["hold"]["reason"], "debugging");
    assert!(s["hold"]["until"].is_string());
    assert!(a.path("state/hold.json").exists(), "hold persisted");
    assert_eq!(code(&a.cli(&["hold", "--for", "0"])), 64, "0 refused");
    assert_eq!(code(&a.cli(&["release"])), 0);
    assert!(a.status()["hold"].is_null());
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
