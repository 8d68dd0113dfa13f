//! The workspace-level test package. Its tests are in `tests/`: `contracts.rs` (what
//! image-builder writes for the agent, read by vm-agent's parser), `e2e.rs` (bake, boot a
//! worker under QEMU, artifacts, jobs, idle power-off), `do_machines.rs` (the DigitalOcean
//! path on machines that really run: do-sim's machine mode), `templates.rs`, `ci_setup.rs`.
//! This library holds what those tests share: the real binaries, built as CI builds them.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

pub fn target_dir() -> PathBuf {
    // target/debug/deps/e2e-HASH -> target/debug
    std::env::current_exe()
        .unwrap()
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .to_owned()
}

pub fn require(tool: &str, package: &str) {
    let found = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool} || test -x /usr/sbin/{tool}"))
        .output();
    assert!(
        found.is_ok_and(|o| o.status.success()),
        "`{tool}` is required by the end-to-end test: apt-get install {package} (or run .ci/setup.sh)"
    );
}

pub fn run(cmd: &mut Command) -> Output {
    cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"))
}

pub fn image_builder() -> PathBuf {
    let st = Command::new(env!("CARGO"))
        .args([
            "build",
            "-q",
            "-p",
            "image-builder",
            "--bin",
            "image-builder",
        ])
        .current_dir(workspace())
        .status()
        .unwrap();
    assert!(st.success(), "cargo build -p image-builder failed");
    target_dir().join("image-builder")
}

/// The static agent, built by the same script as the release one, but without fat LTO
/// and with parallel codegen: the same code and linking (static, panic=abort), minutes
/// less on a 2-core CI machine. The shipped profile is measured by `bench/agent.sh`.
pub fn static_agent() -> PathBuf {
    let out = run(Command::new("bash")
        .arg(workspace().join("vm-agent/build-static.sh"))
        .env("CARGO_PROFILE_RELEASE_LTO", "off")
        .env("CARGO_PROFILE_RELEASE_CODEGEN_UNITS", "16")
        .current_dir(workspace()));
    assert!(
        out.status.success(),
        "vm-agent/build-static.sh failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let path = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let p = if Path::new(&path).is_absolute() {
        PathBuf::from(path)
    } else {
        workspace().join(path)
    };
    assert!(p.is_file(), "{}", p.display());
    p
}
