//! Helpers shared by image-builder's integration tests.
#![allow(dead_code, clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The workspace root.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

/// Run the real `image-builder` binary.
pub fn image_builder(args: &[&str], cwd: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_image-builder"))
        .args(args)
        .current_dir(cwd)
        .env("IMAGE_BUILDER_LOG", "warn")
        .output()
        .expect("run image-builder")
}

/// Fail loudly (never skip) when a tool the test needs is missing.
pub fn require_tool(tool: &str, package: &str) -> PathBuf {
    image_builder::validate::find_tool(tool).unwrap_or_else(|| {
        panic!("`{tool}` is required by this test but is not installed: apt-get install {package} (or run .ci/setup.sh)")
    })
}

/// Require python3 with PyYAML.
pub fn require_pyyaml() {
    require_tool("python3", "python3");
    let ok = Command::new("python3")
        .args(["-c", "import yaml"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "PyYAML is required by this test: apt-get install python3-yaml (or run .ci/setup.sh)"
    );
}

/// Load YAML with PyYAML (what cloud-init uses) and return it as JSON.
pub fn pyyaml_load(text: &str) -> serde_json::Value {
    require_pyyaml();
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("doc.yaml");
    std::fs::write(&p, text).unwrap();
    let out = Command::new("python3")
        .args([
            "-c",
            "import json,sys,yaml,datetime\nd=yaml.safe_load(open(sys.argv[1]))\n\
             print(json.dumps(d, default=lambda o: {'__non_json__': type(o).__name__, 'repr': repr(o)}))",
        ])
        .arg(&p)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "PyYAML failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}
