//! Checks of rendered user-data with the real tools, where they exist on the host:
//! `visudo -cf` for the sudoers drop-in, `cloud-init schema --config-file`, and
//! PyYAML (`yaml.safe_load`, what cloud-init itself uses) compared with the model.

use std::path::PathBuf;
use std::process::Command;

use serde::Serialize;

use crate::render::Rendered;

/// Outcome of one external check.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case", tag = "status")]
pub enum CheckStatus {
    /// The tool ran and accepted the input.
    Passed,
    /// The tool ran and rejected the input.
    Failed {
        /// The tool's findings.
        detail: String,
    },
    /// The tool is not installed here.
    Unavailable {
        /// What to install.
        hint: String,
    },
}

/// One external check.
#[derive(Clone, Debug, Serialize)]
pub struct Check {
    /// Which check.
    pub name: String,
    /// Its outcome.
    #[serde(flatten)]
    pub status: CheckStatus,
}

/// Find a tool on PATH or in the sbin directories (visudo lives in /usr/sbin,
/// which is not on a normal user's PATH).
pub fn find_tool(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
}

fn run(cmd: &mut Command) -> CheckStatus {
    match cmd.output() {
        Ok(out) if out.status.success() => CheckStatus::Passed,
        Ok(out) => CheckStatus::Failed {
            detail: format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
            .trim()
            .to_owned(),
        },
        Err(e) => CheckStatus::Failed {
            detail: format!("could not run: {e}"),
        },
    }
}

/// `visudo -cf` on a sudoers drop-in.
pub fn visudo(content: &str) -> CheckStatus {
    let Some(visudo) = find_tool("visudo") else {
        return CheckStatus::Unavailable {
            hint: "install the `sudo` package for visudo".into(),
        };
    };
    let dir = match tempfile::tempdir() {
        Ok(d) => d,
        Err(e) => {
            return CheckStatus::Failed {
                detail: format!("temp dir: {e}"),
            };
        }
    };
    let p = dir.path().join("sudoers-dropin");
    if let Err(e) = std::fs::write(&p, content) {
        return CheckStatus::Failed {
            detail: format!("write {}: {e}", p.display()),
        };
    }
    run(Command::new(visudo).arg("-cf").arg(&p))
}

/// `cloud-init schema --config-file` on user-data.
pub fn cloud_init_schema(user_data: &str) -> CheckStatus {
    let Some(cloud_init) = find_tool("cloud-init") else {
        return CheckStatus::Unavailable {
            hint: "install the `cloud-init` package".into(),
        };
    };
    let dir = match tempfile::tempdir() {
        Ok(d) => d,
        Err(e) => {
            return CheckStatus::Failed {
                detail: format!("temp dir: {e}"),
            };
        }
    };
    let p = dir.path().join("user-data");
    if let Err(e) = std::fs::write(&p, user_data) {
        return CheckStatus::Failed {
            detail: format!("write {}: {e}", p.display()),
        };
    }
    run(Command::new(cloud_init)
        .args(["schema", "--config-file"])
        .arg(&p))
}

const PYYAML_CHECK: &str = r#"
import json, sys, yaml
doc = yaml.safe_load(open(sys.argv[1]))
want = json.load(open(sys.argv[2]))
def diff(a, b, path):
    if type(a) is not type(b):
        return "%s: PyYAML read %r (%s), expected %r (%s)" % (path or "<root>", a, type(a).__name__, b, type(b).__name__)
    if isinstance(a, dict):
        if set(a) != set(b):
            return "%s: keys %s, expected %s" % (path or "<root>", sorted(map(str, a)), sorted(b))
        for k in a:
            d = diff(a[k], b[k], path + "." + k if path else k)
            if d: return d
    elif isinstance(a, list):
        if len(a) != len(b):
            return "%s: %d items, expected %d" % (path, len(a), len(b))
        for i, (x, y) in enumerate(zip(a, b)):
            d = diff(x, y, "%s[%d]" % (path, i))
            if d: return d
    elif a != b:
        return "%s: PyYAML read %r, expected %r" % (path, a, b)
    return None
d = diff(doc, want, "")
if d:
    print(d)
    sys.exit(1)
"#;

/// Load user-data with PyYAML and compare it with the model, value by value.
pub fn pyyaml_roundtrip(rendered: &Rendered) -> CheckStatus {
    let Some(python) = find_tool("python3") else {
        return CheckStatus::Unavailable {
            hint: "install `python3` and `python3-yaml`".into(),
        };
    };
    let probe = Command::new(&python).args(["-c", "import yaml"]).output();
    if !probe.is_ok_and(|o| o.status.success()) {
        return CheckStatus::Unavailable {
            hint: "install the `python3-yaml` package".into(),
        };
    }
    let dir = match tempfile::tempdir() {
        Ok(d) => d,
        Err(e) => {
            return CheckStatus::Failed {
                detail: format!("temp dir: {e}"),
            };
        }
    };
    let ud = dir.path().join("user-data");
    let want = dir.path().join("want.json");
    let json = serde_json::to_string(&rendered.config).unwrap_or_default();
    if let Err(e) = std::fs::write(&ud, &rendered.text).and_then(|()| std::fs::write(&want, json)) {
        return CheckStatus::Failed {
            detail: format!("write temp files: {e}"),
        };
    }
    run(Command::new(python)
        .args(["-c", PYYAML_CHECK])
        .arg(&ud)
        .arg(&want))
}

/// Every external check of one rendering.
pub fn external_checks(rendered: &Rendered) -> Vec<Check> {
    let mut out = Vec::new();
    if let Some(s) = &rendered.sudoers {
        out.push(Check {
            name: "visudo -cf (sudoers drop-in)".into(),
            status: visudo(s),
        });
    }
    out.push(Check {
        name: "cloud-init schema".into(),
        status: cloud_init_schema(&rendered.text),
    });
    out.push(Check {
        name: "PyYAML read-back".into(),
        status: pyyaml_roundtrip(rendered),
    });
    out
}
