//! The Terraform module in `templates/terraform/` is `terraform fmt`-clean and valid HCL
//! (`terraform fmt` parses every file; no provider is needed, and none can be downloaded).

#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::Command;

#[test]
fn terraform_templates_are_fmt_clean() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../templates/terraform");
    let out = Command::new("terraform")
        .arg(format!("-chdir={}", dir.display()))
        .args(["fmt", "-check", "-recursive", "-diff"])
        .env("TF_CLI_CONFIG_FILE", "/dev/null")
        .output()
        .unwrap_or_else(|e| {
            panic!("`terraform` is required by this test but cannot run ({e}): install Terraform 1.5 or newer")
        });
    assert!(
        out.status.success(),
        "terraform fmt -check failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let tf: Vec<_> = std::fs::read_dir(dir.join("worker-fleet"))
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.path().extension().is_some_and(|x| x == "tf"))
        .collect();
    assert!(tf.len() >= 3, "the worker-fleet module has its .tf files");
}
