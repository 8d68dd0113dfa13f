//! Jobs as the report carries them: one record per job (vm-agent also stores each as a JSON
//! file under `<state_dir>/jobs/`, the same encoding).

use crate::time::ts;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::time::SystemTime;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum JobState {
    /// Waiting for readiness or for a free slot (`jobs.max_concurrent`).
    Queued,
    Running,
    Succeeded,
    Failed,
    Cancelled,
    TimedOut,
    /// Queued or running when the daemon stopped; its outcome is unknown.
    Lost,
}

impl JobState {
    pub fn is_final(self) -> bool {
        !matches!(self, JobState::Queued | JobState::Running)
    }
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Running => "running",
            JobState::Succeeded => "succeeded",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
            JobState::TimedOut => "timed-out",
            JobState::Lost => "lost",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobRecord {
    pub id: u64,
    pub name: Option<String>,
    pub argv: Vec<String>,
    pub state: JobState,
    /// User the job runs as, and why if that is not the configured build user.
    pub user: String,
    pub uid: u32,
    pub gid: u32,
    /// uid of the client that submitted it.
    pub submitted_by: u32,
    #[serde(with = "ts")]
    pub submitted_at: SystemTime,
    #[serde(with = "ts::opt", default)]
    pub started_at: Option<SystemTime>,
    #[serde(with = "ts::opt", default)]
    pub finished_at: Option<SystemTime>,
    pub pid: Option<i32>,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    /// `--timeout` as given (or the configured default).
    pub timeout: Option<String>,
    pub log: PathBuf,
    pub detail: Option<String>,
}

impl JobRecord {
    /// Exit code `vm-agent run` reports: the job's own, 128+signal when killed, 124 when timed
    /// out (like timeout(1)), 125 when it never ran (lost, failed to start).
    pub fn cli_exit_code(&self) -> i32 {
        match self.state {
            JobState::TimedOut => 124,
            JobState::Lost => 125,
            _ => match (self.exit_code, self.signal) {
                (Some(c), _) => c,
                (None, Some(s)) => 128 + s,
                (None, None) => 125,
            },
        }
    }

    pub fn label(&self) -> String {
        self.name.clone().unwrap_or_else(|| self.argv.join(" "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A record as the agent stores it.
    fn rec(state: JobState) -> JobRecord {
        let mut r: JobRecord = serde_json::from_str(
            r#"{"id": 1, "name": null, "argv": ["true"], "state": "queued", "user": "u",
                "uid": 1, "gid": 1, "submitted_by": 0, "submitted_at": "2025-01-01T00:00:00Z",
                "pid": null, "exit_code": null, "signal": null, "timeout": null, "log": "x",
                "detail": null}"#,
        )
        .expect("a job record");
        r.state = state;
        r
    }

    #[test]
    fn exit_codes() {
        let mut r = rec(JobState::Failed);
        r.exit_code = Some(3);
        assert_eq!(r.cli_exit_code(), 3);
        r.exit_code = None;
        r.signal = Some(15);
        r.state = JobState::Cancelled;
        assert_eq!(r.cli_exit_code(), 143);
        r.state = JobState::TimedOut;
        assert_eq!(r.cli_exit_code(), 124);
    }
}
