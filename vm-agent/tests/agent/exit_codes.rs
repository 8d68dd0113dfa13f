//! The exit-code table of `vm-agent/src/cli.rs` (and the README), row by row through the real
//! binary: each case asserts the code and the message on stderr, and that a failure prints
//! exactly one `vm-agent: ` line.

use crate::common::*;
use std::process::{Command, Output, Stdio};

struct Case {
    name: &'static str,
    /// `--config` (default: the agent's).
    config: Option<std::path::PathBuf>,
    args: Vec<String>,
    stdin: &'static str,
    code: i32,
    stderr: &'static [&'static str],
    /// Lines on stderr that start with `vm-agent: ` (the one error, or none).
    reports: usize,
}

fn case(name: &'static str, args: &[&str], code: i32, stderr: &'static [&'static str]) -> Case {
    Case {
        name,
        config: None,
        args: args.iter().map(|a| (*a).to_owned()).collect(),
        stdin: "",
        code,
        stderr,
        reports: usize::from(code != 0),
    }
}

fn run(config: &std::path::Path, c: &Case) -> Output {
    use std::io::Write as _;
    let mut child = Command::new(BIN)
        .arg("--config")
        .arg(c.config.as_deref().unwrap_or(config))
        .args(&c.args)
        .env_remove("VM_AGENT_SOCKET")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("vm-agent");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(c.stdin.as_bytes())
        .expect("write stdin");
    child.wait_with_output().expect("vm-agent")
}

fn check_all(config: &std::path::Path, cases: &[Case]) {
    let mut failures = Vec::new();
    for c in cases {
        let out = run(config, c);
        let err = text(&out.stderr);
        if code(&out) != c.code {
            failures.push(format!(
                "{}: exit {}, expected {}: {err}",
                c.name,
                code(&out),
                c.code
            ));
        }
        for needle in c.stderr {
            if !err.contains(needle) {
                failures.push(format!("{}: stderr lacks {needle:?}: {err}", c.name));
            }
        }
        let reports = err.lines().filter(|l| l.starts_with("vm-agent: ")).count();
        if reports != c.reports {
            failures.push(format!(
                "{}: {reports} `vm-agent: ` lines, expected {}: {err}",
                c.name, c.reports
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} problems:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn exit_codes_without_a_daemon() {
    let a = Agent::new();
    a.write_config();
    let bad = a.path("bad.toml");
    std::fs::write(&bad, "version = 1\n[timers]\nidle_timout = \"5m\"\n").expect("bad config");
    let cases = [
        case("--version", &["--version"], 0, &[]),
        case("check-config", &["check-config"], 0, &[]),
        Case {
            stdin: "not a job",
            ..case(
                "pull-worker by hand",
                &["pull-worker"],
                1,
                &["vm-agent: pull-worker: cannot read the pull job from stdin"],
            )
        },
        case(
            "no daemon",
            &["status"],
            3,
            &["vm-agent: cannot connect to ", "the daemon is not running"],
        ),
        Case {
            reports: 0,
            ..case(
                "unknown flag",
                &["status", "--bogus"],
                64,
                &["error: unexpected argument '--bogus' found", "Usage:"],
            )
        },
        // Flag values are judged before the daemon is asked: 64, not 3.
        case(
            "bad --for",
            &["hold", "--for", "5 fortnights"],
            64,
            &["vm-agent: --for: "],
        ),
        case(
            "zero --timeout",
            &["run", "--timeout", "0", "--", "true"],
            64,
            &["vm-agent: --timeout: "],
        ),
        Case {
            config: Some(bad),
            ..case(
                "bad config",
                &["check-config"],
                78,
                &["vm-agent: ", "idle_timout"],
            )
        },
    ];
    check_all(&a.cfg_path, &cases);
}

#[test]
fn exit_codes_with_a_daemon() {
    let mut a = Agent::new();
    a.cloud_init_done();
    a.start();
    a.wait_ready();
    let cases = [
        case("ready", &["status"], 0, &[]),
        // The job's outcome, not an error of the agent: nothing on stderr.
        Case {
            reports: 0,
            ..case(
                "the job's own code",
                &["run", "--", "sh", "-c", "exit 7"],
                7,
                &[],
            )
        },
        case(
            "timed out",
            &["run", "--timeout", "1s", "--", "sleep", "30"],
            124,
            &["vm-agent: job 2 timed-out: timed out after 1s"],
        ),
        case(
            "refused as malformed",
            &["pull", "0123456789abcdef0123456789abcdef01234567"],
            64,
            &["vm-agent: ", "no [artifacts] section"],
        ),
        case(
            "agent error",
            &["cancel", "999"],
            125,
            &["vm-agent: no job 999"],
        ),
        // Notes for the human are not errors.
        Case {
            reports: 1,
            ..case(
                "hold",
                &["hold", "--reason", "debugging"],
                0,
                &["vm-agent: "],
            )
        },
        Case {
            reports: 1,
            ..case("release", &["release"], 0, &["vm-agent: released"])
        },
    ];
    check_all(&a.cfg_path, &cases);
}
