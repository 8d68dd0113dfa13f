//! The artifact part of the report: the boot pull of `artifacts.sha` and every on-demand
//! `vm-agent pull SHA`, one [`ArtifactItem`] per sha.

use crate::time::ts;
use serde::{Deserialize, Serialize};
use std::time::SystemTime;

/// Where a pull is. The boot pull starts `none` (nothing to pull at boot) or `pending`;
/// every pull is then `fetching` and ends `installed`, `unavailable` or `failed`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ArtifactState {
    /// No boot pull configured (`artifacts.sha` unset, or no `[artifacts]` at all).
    #[default]
    None,
    /// The boot pull has not started yet.
    Pending,
    Fetching,
    /// Every file's sha256 matched the manifest.
    Installed,
    /// Not there or not reachable (no credentials, no manifest, access denied).
    Unavailable,
    /// There but not installable (checksum mismatch, disk full, bad manifest, timeout).
    Failed,
}

impl ArtifactState {
    pub fn as_str(self) -> &'static str {
        match self {
            ArtifactState::None => "none",
            ArtifactState::Pending => "pending",
            ArtifactState::Fetching => "fetching",
            ArtifactState::Installed => "installed",
            ArtifactState::Unavailable => "unavailable",
            ArtifactState::Failed => "failed",
        }
    }
}

impl std::fmt::Display for ArtifactState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

/// What started a pull.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ArtifactTrigger {
    /// The boot pull of `artifacts.sha` (the `fetching-artifacts` stage).
    Boot,
    /// `vm-agent pull SHA`.
    Pull,
}

impl std::fmt::Display for ArtifactTrigger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(match self {
            ArtifactTrigger::Boot => "boot",
            ArtifactTrigger::Pull => "pull",
        })
    }
}

/// The artifact part of `vm-agent status` (and of the readiness report).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ArtifactReport {
    /// Of the boot pull.
    pub state: ArtifactState,
    /// Why `none`, `unavailable` or `failed` (e.g. "artifact unavailable: …").
    pub detail: Option<String>,
    /// The build pulled at boot (`artifacts.sha`).
    #[serde(default)]
    pub sha: Option<String>,
    /// `artifacts.required`.
    #[serde(default)]
    pub required: bool,
    /// `s3://<bucket> at <endpoint>` (no keys).
    #[serde(default)]
    pub store: Option<String>,
    /// Where the keys come from: `secrets-file`, `environment`, `none`.
    #[serde(default)]
    pub credentials: Option<String>,
    /// Every pull since the agent started (boot and on demand), one per sha, newest last.
    pub items: Vec<ArtifactItem>,
}

/// One sha: being fetched, installed, unavailable or failed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ArtifactItem {
    pub sha: String,
    /// `fetching`, then `installed`, `unavailable` or `failed`.
    pub state: ArtifactState,
    pub trigger: ArtifactTrigger,
    /// Why `unavailable` or `failed`.
    pub reason: Option<String>,
    /// `<state_dir>/artifacts/<sha>` once installed.
    pub path: Option<String>,
    pub files: u64,
    /// Bytes in the build.
    pub bytes: u64,
    /// Bytes received so far (progress while `fetching`).
    pub bytes_done: u64,
    /// Every file's sha256 matched the manifest (true exactly when installed).
    pub verified: bool,
    /// It was installed before this pull (nothing fetched).
    pub already_installed: bool,
    /// Bytes taken over from an interrupted earlier pull.
    pub bytes_resumed: u64,
    /// Requests retried and files re-fetched after a digest mismatch.
    pub retries: u32,
    pub refetches: u32,
    /// Other shas evicted from the cache to make room.
    pub evicted: Vec<String>,
    #[serde(with = "ts")]
    pub started_at: SystemTime,
    pub duration_secs: f64,
}

impl ArtifactItem {
    /// A pull that has just started.
    pub fn fetching(sha: &str, trigger: ArtifactTrigger) -> ArtifactItem {
        ArtifactItem {
            sha: sha.to_string(),
            state: ArtifactState::Fetching,
            trigger,
            reason: None,
            path: None,
            files: 0,
            bytes: 0,
            bytes_done: 0,
            verified: false,
            already_installed: false,
            bytes_resumed: 0,
            retries: 0,
            refetches: 0,
            evicted: vec![],
            started_at: SystemTime::now(),
            duration_secs: 0.0,
        }
    }

    /// `vm-agent pull` exit code: 0 installed, 1 failed, 2 unavailable.
    pub fn exit_code(&self) -> i32 {
        match self.state {
            ArtifactState::Installed => 0,
            ArtifactState::Unavailable => 2,
            _ => 1,
        }
    }
}
