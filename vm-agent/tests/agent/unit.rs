use crate::common::*;
use std::process::Command;

/// `systemd-analyze verify` on the unit template, failing on any output at all (it only warns
/// about unknown keys and still exits 0).
#[test]
fn systemd_unit_verifies_cleanly() {
    let template = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../templates/systemd/vm-agent.service"
    );
    let text_in = std::fs::read_to_string(template).expect("unit template");
    let directives: Vec<&str> = text_in
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .collect();
    let has = |d: &str| directives.iter().any(|l| l.starts_with(d));
    assert!(has("Type=notify"));
    assert!(has("RestartPreventExitStatus=78"));
    assert!(has("WantedBy=cloud-init.target"));
    assert!(
        !has("After=cloud-final"),
        "ordering cycle (see local-vm-notes pitfall 5)"
    );
    assert!(!has("NoNewPrivileges=yes"), "jobs may need sudo");
    let dir = tempfile::tempdir().expect("tmp");
    let unit = dir.path().join("vm-agent.service");
    // verify checks that ExecStart's binary exists: point it at the one just built.
    std::fs::write(&unit, text_in.replace("/usr/local/bin/vm-agent", BIN)).expect("write");
    let out = match Command::new("systemd-analyze")
        .arg("verify")
        .arg(&unit)
        .output()
    {
        Ok(o) => o,
        Err(e) => panic!("systemd-analyze not runnable ({e}): install the `systemd` package"),
    };
    assert!(out.status.success(), "verify failed: {}", text(&out.stderr));
    assert_eq!(text(&out.stderr).trim(), "", "verify printed warnings");
    assert_eq!(text(&out.stdout).trim(), "", "verify printed output");
}
