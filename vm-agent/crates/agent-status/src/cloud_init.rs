//! cloud-init's progress as the report carries it (vm-agent reads it from cloud-init's
//! `status.json` / `result.json`).

use serde::{Deserialize, Serialize};
use std::path::PathBuf;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CloudInitState {
    /// No status file yet.
    NotStarted,
    Running,
    Done,
    /// Finished with errors.
    Error,
    /// cloud-init is disabled on this boot (`disabled` marker file).
    Disabled,
    /// The agent was configured not to wait.
    Skipped,
    /// Did not finish within `cloud_init.timeout`.
    TimedOut,
}

impl CloudInitState {
    pub fn is_final(self) -> bool {
        !matches!(self, CloudInitState::NotStarted | CloudInitState::Running)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CloudInitStatus {
    pub state: CloudInitState,
    /// cloud-init's current stage while running (`init-local`, `init`, `modules-config`, ...).
    pub stage: Option<String>,
    pub datasource: Option<String>,
    pub errors: Vec<String>,
    /// The file the state was read from.
    pub source: Option<PathBuf>,
}

impl CloudInitStatus {
    pub fn with_state(state: CloudInitState) -> Self {
        CloudInitStatus {
            state,
            stage: None,
            datasource: None,
            errors: vec![],
            source: None,
        }
    }
}
