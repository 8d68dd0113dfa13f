use crate::common::*;
use std::process::{Command, Stdio};

/// Start the daemon on `config` text and expect it to refuse with exit 78, naming `needle`.
fn refused(a: &Agent, config: &str, needle: &str) {
    std::fs::write(&a.cfg_path, config).expect("config");
    let out = Command::new(BIN)
        .arg("--config")
        .arg(&a.cfg_path)
        .arg("daemon")
        .stdin(Stdio::null())
        .output()
        .expect("daemon");
    let err = text(&out.stderr);
    assert_eq!(code(&out), 78, "config {config:?}: {err}");
    assert!(
        err.contains(needle),
        "error does not name {needle:?}: {err}"
    );
    assert!(
        !a.cfg.socket.path.exists(),
        "no socket for a refused config"
    );
}

fn base(a: &Agent) -> String {
    a.cfg.to_toml()
}

#[test]
fn unknown_key_is_refused_with_the_key_named() {
    let a = Agent::new();
    let cfg = base(&a).replace("[timers]\n", "[timers]\nidle_timout = \"5m\"\n");
    refused(&a, &cfg, "idle_timout");
}

#[test]
fn bad_durations_and_zero_are_refused() {
    let a = Agent::new();
    let cfg = base(&a).replace(
        "idle_timeout = \"never\"",
        "idle_timeout = \"5 fortnights\"",
    );
    refused(&a, &cfg, "idle_timeout");
    let cfg = base(&a).replace("max_lifetime = \"never\"", "max_lifetime = \"0\"");
    refused(&a, &cfg, "max_lifetime");
    let cfg = base(&a).replace("no_job_timeout = \"never\"", "no_job_timeout = 0");
    refused(&a, &cfg, "write \"never\"");
}

#[test]
fn bad_artifacts_section_is_refused_with_the_field_named() {
    let a = Agent::new();
    let section = "\n[artifacts]\nbucket = \"b\"\nendpoint = \"http://127.0.0.1:9\"\n";
    refused(
        &a,
        &format!("{}{section}pathstyle = true\n", base(&a)),
        "pathstyle",
    );
    refused(
        &a,
        &format!("{}{section}sha = \"HEAD\"\n", base(&a)),
        "artifacts.sha",
    );
    // Half a key pair in the secrets file: refused, naming the missing key, not quoting any.
    std::fs::write(&a.cfg_path, format!("{}{section}", base(&a))).expect("config");
    a.write_secrets("spaces_access_key_id = \"DO00HALFPAIRKEY\"\n");
    let out = Command::new(BIN)
        .arg("--config")
        .arg(&a.cfg_path)
        .arg("daemon")
        .stdin(Stdio::null())
        .output()
        .expect("daemon");
    let err = text(&out.stderr);
    assert_eq!(code(&out), 78, "{err}");
    assert!(err.contains("spaces_secret_access_key"), "{err}");
    assert!(!err.contains("DO00HALFPAIRKEY"), "{err}");
}

#[test]
fn world_readable_secrets_are_refused() {
    let a = Agent::new();
    a.write_secrets("do_token = \"dop_v1_world_readable_secret\"\n");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(
        &a.cfg.paths.secrets_file,
        std::fs::Permissions::from_mode(0o644),
    )
    .expect("chmod");
    refused(&a, &base(&a), "chmod 600");
    // The message never quotes the secret.
    let out = Command::new(BIN)
        .arg("--config")
        .arg(&a.cfg_path)
        .arg("check-config")
        .output()
        .expect("check");
    assert_eq!(code(&out), 78);
    assert!(!text(&out.stderr).contains("dop_v1_world_readable_secret"));
}

#[test]
fn secrets_owned_by_someone_else_are_refused() {
    if !is_root() {
        panic!("this test needs root to chown the secrets file (CI runs as root)");
    }
    let a = Agent::new();
    a.write_secrets("do_token = \"x\"\n");
    nix::unistd::chown(
        &a.cfg.paths.secrets_file,
        Some(nix::unistd::Uid::from_raw(65534)),
        None,
    )
    .expect("chown");
    refused(&a, &base(&a), "owned by uid 65534");
}

#[test]
fn bad_secret_file_syntax_does_not_echo_the_secret() {
    let a = Agent::new();
    a.write_secrets("do_token = \"dop_v1_unterminated\n");
    refused(&a, &base(&a), "secrets.toml");
    let out = Command::new(BIN)
        .arg("--config")
        .arg(&a.cfg_path)
        .arg("check-config")
        .output()
        .expect("check");
    assert!(
        !text(&out.stderr).contains("dop_v1_unterminated"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn unknown_build_user_is_refused() {
    let mut a = Agent::new();
    if !is_root() {
        panic!("jobs.user is only resolved when the agent is root (CI runs as root)");
    }
    a.cfg.jobs.user = Some("nosuchuser".into());
    refused(&a, &base(&a), "jobs.user");
}

#[test]
fn config_path_comes_from_the_environment_too() {
    let a = Agent::new();
    a.write_config();
    let out = Command::new(BIN)
        .arg("check-config")
        .env("VM_AGENT_CONFIG", &a.cfg_path)
        .output()
        .expect("check");
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains(&a.cfg_path.display().to_string()));
}
