//! vm-agent's status report: a **contract** between the agent and whatever reads its state.
//!
//! [`StatusReport`] is what `vm-agent status --json` prints, what the agent's ready file holds
//! and what its readiness callback POSTs; image-builder's fleets read it over SSH
//! (`fleet up --wait-ready`, `fleet ls --status`, `fleet run`, `down`/`reap`). Versioned
//! ([`REPORT_VERSION`], field `report_version`).
//!
//! One definition for both sides: the agent builds a [`StatusReport`] and serializes it with
//! serde; readers parse it with [`StatusReport::from_json`], which refuses a report of another
//! version and names the field that does not parse. Timestamps are RFC 3339 strings with
//! milliseconds, UTC ([`time::ts`]). The agent's behaviour (readiness, job store, timers,
//! sessions, self-destroy) stays in vm-agent; this crate holds the data, its wire spelling
//! and the 80-column rendering of `vm-agent status`. It depends only on `serde`,
//! `serde_json`, `serde_path_to_error` and `humantime`.

pub mod artifacts;
pub mod cloud_init;
pub mod jobs;
mod render;
pub mod time;
pub mod timers;

pub use artifacts::{ArtifactItem, ArtifactReport, ArtifactState, ArtifactTrigger};
pub use cloud_init::{CloudInitState, CloudInitStatus};
pub use jobs::{JobRecord, JobState};
pub use render::{human_bytes, job_line};
pub use timers::{TimerName, TimerState, TimerStatus};

use serde::{Deserialize, Serialize};
use std::fmt;
use std::time::SystemTime;
use time::ts;

/// Version of the report's layout (`report_version`).
pub const REPORT_VERSION: u32 = 1;

/// Readiness: `booting` → `waiting-cloud-init` → `fetching-artifacts` → `ready` or
/// `degraded`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Stage {
    Booting,
    WaitingCloudInit,
    FetchingArtifacts,
    Ready,
    Degraded,
}

impl Stage {
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Booting => "booting",
            Stage::WaitingCloudInit => "waiting-cloud-init",
            Stage::FetchingArtifacts => "fetching-artifacts",
            Stage::Ready => "ready",
            Stage::Degraded => "degraded",
        }
    }
    pub fn is_final(self) -> bool {
        matches!(self, Stage::Ready | Stage::Degraded)
    }
    /// `vm-agent status` exit code: 0 ready, 1 degraded, 2 not ready yet.
    pub fn exit_code(self) -> i32 {
        match self {
            Stage::Ready => 0,
            Stage::Degraded => 1,
            _ => 2,
        }
    }
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StageEntry {
    pub stage: Stage,
    #[serde(with = "ts")]
    pub at: SystemTime,
    pub reason: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hold {
    pub reason: Option<String>,
    pub by_uid: u32,
    #[serde(with = "ts")]
    pub since: SystemTime,
    /// `None`: until `vm-agent release`.
    #[serde(with = "ts::opt", default)]
    pub until: Option<SystemTime>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunAsReport {
    pub user: String,
    pub uid: u32,
    pub gid: u32,
    /// Why jobs do not run as the configured build user, if they don't.
    pub note: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobsSummary {
    pub running: u32,
    pub queued: u32,
    pub total: u64,
    pub max_concurrent: u32,
    pub run_as: RunAsReport,
    /// The most recent jobs (newest last).
    pub recent: Vec<JobRecord>,
}

/// Where self-destroy is (`vm-agent status`, `destroy.state`): `armed` until a timer
/// fires, `draining` during the grace period, `destroying` during the provider's
/// call, then the state of the provider's outcome.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DestroyState {
    #[default]
    Armed,
    Draining,
    Destroying,
    Destroyed,
    DryRun,
    Blocked,
    Refused,
    PoweredOff,
    Failed,
}

impl DestroyState {
    pub fn as_str(self) -> &'static str {
        match self {
            DestroyState::Armed => "armed",
            DestroyState::Draining => "draining",
            DestroyState::Destroying => "destroying",
            DestroyState::Destroyed => "destroyed",
            DestroyState::DryRun => "dry-run",
            DestroyState::Blocked => "blocked",
            DestroyState::Refused => "refused",
            DestroyState::PoweredOff => "powered-off",
            DestroyState::Failed => "failed",
        }
    }
}

impl fmt::Display for DestroyState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DestroyStatus {
    pub provider: String,
    pub state: DestroyState,
    pub detail: Option<String>,
    /// The timer that fired.
    pub timer: Option<TimerName>,
    #[serde(with = "ts::opt", default)]
    pub at: Option<SystemTime>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SystemStats {
    pub load: [f64; 3],
    pub mem_total_bytes: u64,
    pub mem_available_bytes: u64,
    /// The filesystem holding the state dir.
    pub disk_total_bytes: u64,
    pub disk_available_bytes: u64,
}

/// A logged-in SSH session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    pub user: String,
    /// `pts/0`; `None` for a session without a terminal (`ssh host cmd`).
    pub tty: Option<String>,
    /// `logind` or `proc`.
    pub source: String,
    /// logind session id or sshd pid.
    pub id: String,
}

/// An SSH host key's fingerprint (`SHA256:<base64, no padding>`, as `ssh-keygen -l` prints
/// it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostKey {
    /// Key type as written in the file, e.g. `ssh-ed25519`.
    pub key_type: String,
    pub fingerprint: String,
    pub file: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusReport {
    pub report_version: u32,
    pub agent_version: String,
    pub hostname: String,
    pub stage: Stage,
    /// Why `degraded`.
    pub reason: Option<String>,
    pub history: Vec<StageEntry>,
    #[serde(with = "ts")]
    pub now: SystemTime,
    #[serde(with = "ts")]
    pub boot_time: SystemTime,
    #[serde(with = "ts")]
    pub agent_started_at: SystemTime,
    pub uptime_secs: u64,
    pub cloud_init: CloudInitStatus,
    pub artifacts: ArtifactReport,
    pub jobs: JobsSummary,
    #[serde(with = "ts::opt", default)]
    pub idle_since: Option<SystemTime>,
    pub hold: Option<Hold>,
    pub sessions: Vec<Session>,
    pub timers: Vec<TimerStatus>,
    /// Set once a timer fired: new jobs are refused.
    pub draining: Option<String>,
    pub destroy: DestroyStatus,
    /// Result of the readiness callback, if one is configured.
    pub callback: Option<String>,
    pub system: SystemStats,
    pub ssh_host_keys: Vec<HostKey>,
}

impl StatusReport {
    /// Parse a report (`vm-agent status --json`, the ready file, a callback body). A report
    /// of another [`REPORT_VERSION`], or one that does not parse, is an error that says
    /// which.
    pub fn from_json(json: &[u8]) -> Result<StatusReport, ReportError> {
        /// Just the version, whatever else the document holds.
        #[derive(Deserialize)]
        struct Version {
            report_version: Option<serde_json::Value>,
        }
        let version: Version = serde_json::from_slice(json).map_err(ReportError::NotJson)?;
        match version.report_version {
            None => return Err(ReportError::NoVersion),
            Some(v) if v.as_u64() != Some(REPORT_VERSION.into()) => {
                return Err(ReportError::Version(v));
            }
            Some(_) => {}
        }
        let mut de = serde_json::Deserializer::from_slice(json);
        serde_path_to_error::deserialize(&mut de).map_err(|e| ReportError::Invalid {
            field: e.path().to_string(),
            error: e.into_inner(),
        })
    }
}

/// Why a document is not a [`StatusReport`] this side understands.
#[derive(Debug)]
pub enum ReportError {
    /// Not a JSON object (empty output, an error message, truncated JSON).
    NotJson(serde_json::Error),
    /// A JSON object without `report_version`.
    NoVersion,
    /// Another version of the report (the agent and the reader were built apart).
    Version(serde_json::Value),
    /// The right version, but `field` does not parse.
    Invalid {
        field: String,
        error: serde_json::Error,
    },
}

impl fmt::Display for ReportError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReportError::NotJson(e) => write!(f, "no status report (not a JSON object: {e})"),
            ReportError::NoVersion => {
                write!(f, "no status report (a JSON object without report_version)")
            }
            ReportError::Version(v) => write!(
                f,
                "status report_version {v}, this side reads only report_version \
                 {REPORT_VERSION}: the agent and this tool are of different releases"
            ),
            ReportError::Invalid { field, error } => {
                write!(f, "status report: field `{field}`: {error}")
            }
        }
    }
}

impl std::error::Error for ReportError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ReportError::NotJson(e) | ReportError::Invalid { error: e, .. } => Some(e),
            ReportError::NoVersion | ReportError::Version(_) => None,
        }
    }
}
