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
use futures::future::BoxFuture;

/// The report types, defined once in the `agent-status` crate (the status report's contract).
pub use agent_status::artifacts::{ArtifactItem, ArtifactReport, ArtifactState, ArtifactTrigger};

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
