//! Sha-keyed build artifacts on the worker: the `fetching-artifacts` readiness stage and
//! `vm-agent pull SHA`.
//!
//! The daemon talks to an [`ArtifactFetcher`]: [`NoArtifacts`] when the config has no
//! `[artifacts]` table, else [`S3Fetcher`] (module [`s3`]), which pulls with
//! `artifact_store::pull` into `<state_dir>/artifacts/<sha>/` (verified, installed by
//! rename, never half-visible). The fetcher owns the artifact part of the readiness report
//! ([`ArtifactReport`]); the daemon only asks it for the boot outcome, on-demand pulls and the
//! report.
//!
//! Outcomes of a pull (one [`ArtifactItem`] per sha):
//! * `installed`: every file's sha256 matched the manifest (`verified = true`);
//! * `unavailable`: no credentials, no manifest (sha not published), access denied (401/403),
//!   store unreachable. Optional artifacts: readiness continues to `ready` and `status` says
//!   "artifact unavailable: <reason>". Required: readiness is `degraded` with that reason;
//! * `failed`: the build is there but could not be installed (checksum mismatch after the
//!   bounded re-fetches, disk full, bad manifest, timeout). Same readiness rules.

pub mod child;
pub mod s3;

pub use s3::S3Fetcher;

use crate::config::{Config, Secrets};
use crate::util::ts;
use futures::future::BoxFuture;
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

/// Compares with the wire spelling. Only for `cli.rs`, which still writes
/// `item.state == "installed"`; compare with the variants everywhere else.
impl PartialEq<&str> for ArtifactState {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
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

/// Result of the boot stage: a reason when readiness must be `degraded` (required artifacts
/// unavailable or failed). Optional artifacts that are missing leave `degraded` unset and say
/// so in the report.
#[derive(Debug, Clone, Default)]
pub struct ArtifactOutcome {
    pub degraded: Option<String>,
}

/// Why an on-demand pull was not even started.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PullRefused {
    #[error("no [artifacts] section in the agent's config: nothing to pull from")]
    NotConfigured,
    #[error("invalid sha `{sha}`: {reason}")]
    InvalidSha { sha: String, reason: String },
}

/// What the daemon needs from the artifact layer.
pub trait ArtifactFetcher: Send + Sync {
    /// The boot pull. Called once, during `fetching-artifacts`.
    fn fetch(&self) -> BoxFuture<'_, ArtifactOutcome>;
    /// Pull `sha` now (`vm-agent pull SHA`); the item says installed, unavailable or failed.
    fn pull(&self, sha: String) -> BoxFuture<'_, Result<ArtifactItem, PullRefused>>;
    /// The current artifact report.
    fn report(&self) -> ArtifactReport;
    /// A pull is running (keeps the idle timers from firing): which.
    fn busy(&self) -> Option<String> {
        None
    }
}

/// No `[artifacts]` table.
pub struct NoArtifacts;

impl ArtifactFetcher for NoArtifacts {
    fn fetch(&self) -> BoxFuture<'_, ArtifactOutcome> {
        Box::pin(async { ArtifactOutcome::default() })
    }

    fn pull(&self, _sha: String) -> BoxFuture<'_, Result<ArtifactItem, PullRefused>> {
        Box::pin(async { Err(PullRefused::NotConfigured) })
    }

    fn report(&self) -> ArtifactReport {
        ArtifactReport {
            state: ArtifactState::None,
            detail: Some("no artifacts configured".into()),
            ..Default::default()
        }
    }
}

/// The fetcher the config asks for.
pub fn from_config(cfg: &Config, secrets: &Secrets) -> Box<dyn ArtifactFetcher> {
    match &cfg.artifacts {
        None => Box::new(NoArtifacts),
        Some(a) => Box::new(S3Fetcher::new(
            a.clone(),
            cfg.paths.state_dir.clone(),
            s3::credentials(secrets),
        )),
    }
}
