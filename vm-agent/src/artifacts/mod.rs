//! The `fetching-artifacts` readiness stage's hook. Issue 4 (sha-keyed artifacts from a Space)
//! implements [`ArtifactFetcher`]; until then the daemon uses [`NoArtifacts`].

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};

/// What the artifacts stage reports in `vm-agent status`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ArtifactReport {
    /// `none` (nothing configured), `fetched`, `unavailable`, ...
    pub state: String,
    pub detail: Option<String>,
    /// Installed artifacts, e.g. `<state>/artifacts/<sha>/`.
    pub items: Vec<ArtifactItem>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ArtifactItem {
    pub sha: String,
    pub path: String,
    pub files: u64,
    pub bytes: u64,
}

/// Result of the stage: the report, and a reason when readiness must be `degraded`
/// (required artifacts unavailable). Optional artifacts that are missing leave `degraded`
/// unset and say so in the report.
#[derive(Debug, Clone, Default)]
pub struct ArtifactOutcome {
    pub report: ArtifactReport,
    pub degraded: Option<String>,
}

/// Fetches the boot-time artifacts. Called once, during `fetching-artifacts`.
pub trait ArtifactFetcher: Send + Sync {
    fn fetch(&self) -> BoxFuture<'_, ArtifactOutcome>;
}

/// No artifacts configured.
pub struct NoArtifacts;

impl ArtifactFetcher for NoArtifacts {
    fn fetch(&self) -> BoxFuture<'_, ArtifactOutcome> {
        Box::pin(async {
            ArtifactOutcome {
                report: ArtifactReport {
                    state: "none".into(),
                    detail: Some("no artifacts configured".into()),
                    items: vec![],
                },
                degraded: None,
            }
        })
    }
}
