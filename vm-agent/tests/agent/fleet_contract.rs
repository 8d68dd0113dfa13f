//! What image-builder's fleets rely on in the agent: its own record of why it ends the
//! machine (`destroy.record_file`; workers use /dev/console, the serial console),
//! one-shot workers, job variables outside argv, and a heredoc on a job's stdin.

use crate::common::*;
use std::time::Duration;
use vm_agent::config::Limit;
use vm_agent::report::{DestroyState, TimerName};

#[test]
fn the_destroy_record_names_the_timer_and_that_no_job_ran() {
    let mut a = Agent::new();
    a.cfg.timers.idle_timeout = Limit::After(Duration::from_secs(2));
    let record = a.path("destroy-record");
    std::fs::write(&record, "").expect("record file");
    a.cfg.destroy.record_file = Some(record.clone());
    a.cloud_init_done();
    a.start();
    a.wait_status("idle timer", 15, |s| {
        s.destroy.state == DestroyState::DryRun
    });
    let text = std::fs::read_to_string(&record).expect("read record");
    assert_eq!(text.lines().count(), 1, "{text}");
    assert!(
        text.starts_with("vm-agent: destroying this machine (dry-run): idle timer fired"),
        "{text}"
    );
    assert!(text.contains("jobs running 0, queued 0"), "{text}");
}

#[test]
fn a_one_shot_worker_ends_after_its_first_job_whatever_the_idle_timer_says() {
    let mut a = Agent::new();
    a.cfg.timers.one_shot = true;
    a.cfg.timers.idle_timeout = Limit::Never;
    a.cfg.timers.no_job_timeout = Limit::Never;
    let record = a.path("destroy-record");
    std::fs::write(&record, "").expect("record file");
    a.cfg.destroy.record_file = Some(record.clone());
    a.cloud_init_done();
    a.start();
    let ready = a.wait_ready();
    assert_eq!(
        ready.destroy.state,
        DestroyState::Armed,
        "no job yet: nothing fires"
    );
    assert_eq!(code(&a.cli(&["run", "--", "true"])), 0);
    let s = a.wait_status("one-shot", 15, |s| s.destroy.state == DestroyState::DryRun);
    assert_eq!(s.destroy.timer, Some(TimerName::OneShot), "{s:#?}");
    let text = std::fs::read_to_string(&record).expect("read record");
    assert!(
        text.contains("one-shot timer fired: its one job ended")
            && text.contains("jobs running 0, queued 0"),
        "{text}"
    );
}

/// `run --env NAME` / `--env-prefix P`: values from the CLI's own environment reach the job
/// over the socket; they are never in argv, the job record on disk or the daemon's log.
#[test]
fn job_environment_travels_outside_argv_and_is_never_stored() {
    const SECRET: &str = "job-env-secret-4b1d";
    let mut a = Agent::new();
    a.cloud_init_done();
    a.start();
    a.wait_ready();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_vm-agent"))
        .arg("--config")
        .arg(a.path("config.toml"))
        .args([
            "run",
            "--env",
            "API_KEY",
            "--env-prefix",
            "IBENV_",
            "--",
            "sh",
            "-c",
        ])
        .arg("echo key=$API_KEY other=$OTHER")
        .env("API_KEY", SECRET)
        .env("IBENV_OTHER", "via-prefix")
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run");
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains(&format!("key={SECRET} other=via-prefix")),
        "{}",
        text(&out.stdout)
    );
    let mut stored = String::new();
    for e in std::fs::read_dir(a.path("state/jobs"))
        .expect("jobs dir")
        .flatten()
    {
        if e.path().extension().is_some_and(|x| x == "json") {
            stored.push_str(&std::fs::read_to_string(e.path()).unwrap_or_default());
        }
    }
    assert!(!stored.is_empty(), "the job record was found");
    assert!(
        !stored.contains(SECRET),
        "the value is in the job record: {stored}"
    );
    assert!(
        !a.log().contains(SECRET),
        "the value is in the daemon's log"
    );
    let bad = a.cli(&["run", "--env", "NOT_SET_ANYWHERE_9", "--", "true"]);
    assert_eq!(code(&bad), 64, "{}", text(&bad.stderr));
}

/// `run --stdin`: a heredoc script reaches the job on its stdin, and its exit code comes back.
#[test]
fn a_heredoc_script_reaches_the_job_on_stdin() {
    use std::io::Write as _;
    let mut a = Agent::new();
    a.cloud_init_done();
    a.start();
    a.wait_ready();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_vm-agent"))
        .arg("--config")
        .arg(a.path("config.toml"))
        .args(["run", "--stdin", "--", "sh", "-s"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(b"echo from-the-heredoc\nexit 4\n")
        .expect("write the script");
    let out = child.wait_with_output().expect("wait");
    assert_eq!(code(&out), 4, "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("from-the-heredoc"),
        "{}",
        text(&out.stdout)
    );
    // Without --stdin a job's stdin is empty, not the caller's.
    let out = a.cli(&["run", "--", "sh", "-c", "cat; echo end"]);
    assert_eq!(code(&out), 0);
    assert_eq!(text(&out.stdout).trim(), "end");
}
