//! Reading cloud-init's progress from its `status.json` / `result.json` files (no subprocess).
//!
//! cloud-init writes `status.json` while it runs (current `stage`, per-stage `errors`) and
//! `result.json` once its last stage has finished (`errors`, `datasource`). Both live in
//! `/run/cloud-init` (this boot) and `/var/lib/cloud/data`. Files older than the boot are
//! ignored, so a result left over from an earlier boot is not taken as this boot's.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// The report types, defined once in the `agent-status` crate (the status report's contract).
pub use agent_status::cloud_init::{CloudInitState, CloudInitStatus};

fn fresh(path: &Path, not_before: Option<SystemTime>) -> bool {
    let Ok(meta) = std::fs::metadata(path) else {
        return false;
    };
    match (not_before, meta.modified()) {
        (Some(nb), Ok(m)) => m >= nb,
        _ => true,
    }
}

fn read_json(path: &Path) -> Option<serde_json::Value> {
    let text = std::fs::read_to_string(path).ok()?;
    serde_json::from_str(&text).ok()
}

fn strings(v: Option<&serde_json::Value>) -> Vec<String> {
    v.and_then(|v| v.as_array())
        .map(|a| {
            a.iter()
                .map(|e| match e {
                    serde_json::Value::String(s) => s.clone(),
                    other => other.to_string(),
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Errors of every stage in a `status.json`.
fn stage_errors(status: &serde_json::Value) -> Vec<String> {
    let mut out = vec![];
    if let Some(v1) = status.get("v1").and_then(|v| v.as_object()) {
        for (name, stage) in v1 {
            for e in strings(stage.get("errors")) {
                out.push(format!("{name}: {e}"));
            }
        }
    }
    out
}

/// Read the first directory in `dirs` that has fresh cloud-init status.
pub fn read_status(dirs: &[PathBuf], not_before: Option<SystemTime>) -> CloudInitStatus {
    for dir in dirs {
        let result = dir.join("result.json");
        let status = dir.join("status.json");
        if fresh(&result, not_before)
            && let Some(v) = read_json(&result)
        {
            let v1 = v.get("v1");
            let mut errors = strings(v1.and_then(|v| v.get("errors")));
            if let Some(s) = read_json(&status) {
                for e in stage_errors(&s) {
                    if !errors.iter().any(|x| e.ends_with(x.as_str())) {
                        errors.push(e);
                    }
                }
            }
            return CloudInitStatus {
                state: if errors.is_empty() {
                    CloudInitState::Done
                } else {
                    CloudInitState::Error
                },
                stage: None,
                datasource: v1
                    .and_then(|v| v.get("datasource"))
                    .and_then(|d| d.as_str())
                    .map(String::from),
                errors,
                source: Some(result),
            };
        }
        if fresh(&dir.join("disabled"), not_before) {
            let mut s = CloudInitStatus::with_state(CloudInitState::Disabled);
            s.source = Some(dir.join("disabled"));
            return s;
        }
        if fresh(&status, not_before)
            && let Some(v) = read_json(&status)
        {
            let v1 = v.get("v1");
            return CloudInitStatus {
                state: CloudInitState::Running,
                stage: v1
                    .and_then(|v| v.get("stage"))
                    .and_then(|s| s.as_str())
                    .map(String::from),
                datasource: v1
                    .and_then(|v| v.get("datasource"))
                    .and_then(|d| d.as_str())
                    .map(String::from),
                errors: stage_errors(&v),
                source: Some(status),
            };
        }
    }
    CloudInitStatus::with_state(CloudInitState::NotStarted)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn running_then_done_then_error() {
        let d = tempfile::tempdir().expect("tempdir");
        let dirs = vec![d.path().join("run"), d.path().join("var")];
        std::fs::create_dir_all(&dirs[0]).expect("mkdir");
        assert_eq!(read_status(&dirs, None).state, CloudInitState::NotStarted);
        std::fs::write(
            dirs[0].join("status.json"),
            r#"{"v1":{"stage":"modules-config","datasource":"DataSourceNoCloud","init":{"errors":[]}}}"#,
        )
        .expect("write");
        let s = read_status(&dirs, None);
        assert_eq!(s.state, CloudInitState::Running);
        assert_eq!(s.stage.as_deref(), Some("modules-config"));
        std::fs::write(
            dirs[0].join("result.json"),
            r#"{"v1":{"datasource":"DataSourceNoCloud","errors":[]}}"#,
        )
        .expect("write");
        assert_eq!(read_status(&dirs, None).state, CloudInitState::Done);
        std::fs::write(
            dirs[0].join("result.json"),
            r#"{"v1":{"datasource":"DataSourceNoCloud","errors":["('locale', ProcessExecutionError)"]}}"#,
        )
        .expect("write");
        let s = read_status(&dirs, None);
        assert_eq!(s.state, CloudInitState::Error);
        assert!(s.errors[0].contains("locale"));
    }

    #[test]
    fn stale_files_are_ignored() {
        let d = tempfile::tempdir().expect("tempdir");
        std::fs::write(d.path().join("result.json"), r#"{"v1":{"errors":[]}}"#).expect("write");
        let future = SystemTime::now() + std::time::Duration::from_secs(3600);
        let s = read_status(&[d.path().to_path_buf()], Some(future));
        assert_eq!(s.state, CloudInitState::NotStarted);
    }
}
