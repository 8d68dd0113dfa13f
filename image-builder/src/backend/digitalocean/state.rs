//! The bake state file: what a DigitalOcean bake has created so far, written
//! atomically (0600) after every change so that `bake --resume STATE` can
//! continue a bake whose process died and `reap` has a record of it.
//!
//! Default place: `$XDG_CACHE_HOME/image-builder/bakes/<bake-id>.json`
//! (`~/.cache/...`), or `--state-dir DIR`.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use provision::SealReport;

use crate::backend::Timings;

/// Version of the state file format.
pub const STATE_VERSION: u32 = 1;

/// How far a bake got. Phases only move forward.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Pre-flight checks and the Space uploads.
    Preflight,
    /// `POST /v2/droplets` was (or is about to be) sent.
    Creating,
    /// The builder runs its provisioning; waiting for the seal report.
    Provisioning,
    /// Provisioning reported success; powering off.
    PoweringOff,
    /// The snapshot action runs.
    Snapshotting,
    /// Naming, describing and tagging the image.
    Finishing,
    /// Everything done except destroying the builder.
    Destroying,
    /// The image exists and the builder is gone.
    Done,
    /// The bake failed (see `error`); the builder was destroyed unless `droplet_destroyed` is false.
    Failed,
}

/// The state of one bake.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BakeState {
    /// [`STATE_VERSION`].
    pub version: u32,
    /// Short random id; the builder droplet is tagged `image-builder-bake-<id>`.
    pub bake_id: String,
    /// When the bake started (RFC 3339, UTC).
    pub started_at: String,
    /// The spec file.
    pub spec: PathBuf,
    /// sha256 of the spec (a resume refuses another spec).
    pub spec_sha256: String,
    /// Name of the image (snapshot) being made.
    pub image_name: String,
    /// Region slug.
    pub region: String,
    /// Size slug.
    pub size: String,
    /// The API base URL the bake talks to.
    pub api_url: String,
    /// Where the bake is.
    pub phase: Phase,
    /// The builder droplet's name.
    pub droplet_name: String,
    /// The builder droplet, once created.
    #[serde(default)]
    pub droplet_id: Option<u64>,
    /// The droplet's disk in GB (scales the snapshot timeout).
    #[serde(default)]
    pub droplet_disk_gb: Option<u64>,
    /// The project the droplet goes to (`default` for the account's default project).
    #[serde(default)]
    pub project_id: Option<String>,
    /// Whether the droplet was assigned to its project.
    #[serde(default)]
    pub project_assigned: bool,
    /// The snapshot action, once sent.
    #[serde(default)]
    pub snapshot_action_id: Option<u64>,
    /// The resulting image, once known.
    #[serde(default)]
    pub image_id: Option<u64>,
    /// Key of the seal report in the Space.
    pub report_key: String,
    /// Key of the agent binary in the Space.
    #[serde(default)]
    pub agent_key: Option<String>,
    /// The seal report, once read.
    #[serde(default)]
    pub report: Option<SealReport>,
    /// Phase timings in seconds, in order.
    #[serde(default)]
    pub timings: Timings,
    /// Why the bake failed.
    #[serde(default)]
    pub error: Option<String>,
    /// The builder droplet was confirmed gone (404).
    #[serde(default)]
    pub droplet_destroyed: bool,
}

/// Errors of the state file.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// Reading or writing failed.
    #[error("bake state {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not a bake state.
    #[error("bake state {}: not a valid state file: {source}", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// Why.
        source: serde_json::Error,
    },
    /// Written by another version.
    #[error("bake state {}: format version {found}, this image-builder reads version {STATE_VERSION}", path.display())]
    Version {
        /// The file.
        path: PathBuf,
        /// Its version.
        found: u32,
    },
}

/// A state and the file it lives in.
#[derive(Debug)]
pub struct StateFile {
    /// The file.
    pub path: PathBuf,
    /// The state.
    pub state: BakeState,
}

impl StateFile {
    /// A new state file in `dir` (created if needed), written at once.
    pub fn create(dir: &Path, state: BakeState) -> Result<Self, StateError> {
        std::fs::create_dir_all(dir).map_err(|source| StateError::Io {
            path: dir.to_owned(),
            source,
        })?;
        let f = StateFile {
            path: dir.join(format!("{}.json", state.bake_id)),
            state,
        };
        f.save()?;
        Ok(f)
    }

    /// Read a state file.
    pub fn load(path: &Path) -> Result<Self, StateError> {
        let text = std::fs::read(path).map_err(|source| StateError::Io {
            path: path.to_owned(),
            source,
        })?;
        let probe: serde_json::Value =
            serde_json::from_slice(&text).map_err(|source| StateError::Parse {
                path: path.to_owned(),
                source,
            })?;
        let found = probe
            .get("version")
            .and_then(serde_json::Value::as_u64)
            .unwrap_or(0);
        if found != u64::from(STATE_VERSION) {
            return Err(StateError::Version {
                path: path.to_owned(),
                found: u32::try_from(found).unwrap_or(u32::MAX),
            });
        }
        let state = serde_json::from_value(probe).map_err(|source| StateError::Parse {
            path: path.to_owned(),
            source,
        })?;
        Ok(StateFile {
            path: path.to_owned(),
            state,
        })
    }

    /// Write the state atomically (temp file, fsync, rename, fsync dir), mode 0600.
    pub fn save(&self) -> Result<(), StateError> {
        let io = |source| StateError::Io {
            path: self.path.clone(),
            source,
        };
        let text =
            serde_json::to_vec_pretty(&self.state).map_err(|e| io(std::io::Error::other(e)))?;
        artifact_store::fsutil::write_atomic(&self.path, &text, 0o600).map_err(io)
    }

    /// Change the state and write it.
    pub fn update(&mut self, f: impl FnOnce(&mut BakeState)) -> Result<(), StateError> {
        f(&mut self.state);
        self.save()
    }
}

/// `$XDG_CACHE_HOME/image-builder/bakes` (or `~/.cache/image-builder/bakes`).
pub fn default_state_dir() -> PathBuf {
    std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from(".cache"))
        .join("image-builder")
        .join("bakes")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::BakeStep;

    fn sample() -> BakeState {
        BakeState {
            version: STATE_VERSION,
            bake_id: "0123abcd".into(),
            started_at: "2026-01-01T00:00:00Z".into(),
            spec: "spec.yaml".into(),
            spec_sha256: "ab".repeat(32),
            image_name: "ci-worker-x".into(),
            region: "nyc3".into(),
            size: "s-1vcpu-1gb".into(),
            api_url: "http://127.0.0.1:1".into(),
            phase: Phase::Provisioning,
            droplet_name: "ib-ci-worker-0123abcd".into(),
            droplet_id: Some(7),
            droplet_disk_gb: Some(25),
            project_id: Some("default".into()),
            project_assigned: true,
            snapshot_action_id: None,
            image_id: None,
            report_key: "bakes/0123abcd/seal-report.json".into(),
            agent_key: None,
            report: None,
            timings: {
                let mut t = Timings::default();
                t.push(BakeStep::Create, 1.5);
                t
            },
            error: None,
            droplet_destroyed: false,
        }
    }

    #[test]
    fn round_trips_with_mode_0600() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().expect("tempdir");
        let mut f = StateFile::create(dir.path(), sample()).expect("create");
        f.update(|s| s.phase = Phase::Snapshotting).expect("update");
        let back = StateFile::load(&f.path).expect("load");
        assert_eq!(back.state, f.state);
        assert_eq!(back.state.phase, Phase::Snapshotting);
        let mode = std::fs::metadata(&f.path)
            .expect("stat")
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600);
    }

    #[test]
    fn refuses_other_versions_and_garbage() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("s.json");
        let mut v = serde_json::to_value(sample()).expect("json");
        v["version"] = 9.into();
        std::fs::write(&p, v.to_string()).expect("write");
        let e = StateFile::load(&p).expect_err("version 9");
        assert!(e.to_string().contains("version 9"), "{e}");
        std::fs::write(&p, "{nope").expect("write");
        let e = StateFile::load(&p).expect_err("garbage");
        assert!(e.to_string().contains("not a valid state file"), "{e}");
    }
}
