//! Bake backends. Each backend turns rendered bake user-data into an image and
//! returns a [`BakeResult`]; the common parts (naming, agent, manifest) live in
//! [`crate::bake`]. Dispatch is one `match` in `bake::bake`.

pub mod digitalocean;
pub mod qemu;

use std::path::PathBuf;

use serde::Serialize;

use provision::SealReport;

/// The vm-agent binary a bake installs.
#[derive(Clone, Debug)]
pub struct AgentArtifact {
    /// The static binary on this host.
    pub path: PathBuf,
    /// Its sha256 (hex).
    pub sha256: String,
    /// The agent config (TOML) to bake in.
    pub config_toml: String,
    /// The systemd unit.
    pub unit: String,
}

/// What a backend produced.
#[derive(Clone, Debug, Serialize)]
pub struct BakeResult {
    /// Backend-specific id: a path (qemu) or `region:image-id` (DigitalOcean).
    pub artifact_id: String,
    /// e.g. `image-builder.qemu`.
    pub builder_type: String,
    /// Files produced, with sizes.
    pub files: Vec<(PathBuf, u64)>,
    /// Named phases and their durations in seconds, in order.
    pub timings: Vec<(String, f64)>,
    /// The seal report from the builder.
    pub report: SealReport,
    /// Backend-specific details (boot check, droplet id, …).
    pub details: serde_json::Value,
}
