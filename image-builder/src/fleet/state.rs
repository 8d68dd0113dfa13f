//! The fleet's local state: `$XDG_STATE_HOME/image-builder/fleets/<name>.json` (default
//! `~/.local/state/…`; `IMAGE_BUILDER_STATE_DIR` overrides the `image-builder` directory),
//! mode 0600, written atomically after every change. Beside it, `<name>/` holds the
//! fleet's `known_hosts` (the pinned host keys), its SSH identity (`id_ed25519`, 0600) and
//! `ssh_config` (for `Include`).
//!
//! No secret is in the state file: ids, addresses, host keys' public halves, the spec
//! hash, the image and the build sha. Lost state is rebuilt from the cloud's tags.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::FleetName;

/// Version of the state file format.
pub const STATE_VERSION: u32 = 1;

/// Where the fleet's workers run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum FleetBackend {
    /// Droplets from a DigitalOcean snapshot.
    Digitalocean,
    /// QEMU on this machine, from a golden qcow2.
    Qemu,
}

/// One worker as the tool knows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerRecord {
    /// `<fleet>-<n>`; also the `HostKeyAlias` its host key is pinned under.
    pub name: String,
    /// Droplet id (DigitalOcean).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<u64>,
    /// Address SSH connects to.
    pub address: String,
    /// SSH port.
    pub port: u16,
    /// The pinned host key (`ssh-ed25519 AAAA…`).
    pub host_key: String,
    /// When it was created (RFC 3339).
    pub created_at: String,
}

/// The state of one fleet.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FleetState {
    /// [`STATE_VERSION`].
    pub version: u32,
    /// The fleet.
    pub name: FleetName,
    /// Where it runs.
    pub backend: FleetBackend,
    /// The build user SSH logs in as.
    pub user: String,
    /// sha256 of the spec the workers were rendered from.
    pub spec_sha256: String,
    /// The golden image (id, name or qcow2 path).
    pub image: String,
    /// The build sha the workers pull.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha: Option<String>,
    /// Region (DigitalOcean).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// Size (DigitalOcean).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<String>,
    /// The workers.
    pub workers: Vec<WorkerRecord>,
    /// A host key pinned for every worker of the fleet (`<fleet>-*`): the one in the
    /// user-data `fleet user-data` rendered for workers declared elsewhere (Terraform).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shared_host_key: Option<String>,
}

/// Errors of the state directory.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// Reading or writing a state file failed.
    #[error("fleet state {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// A state file is not what this version writes.
    #[error("fleet state {}: {message}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

/// The directory of every fleet's state.
#[derive(Clone, Debug)]
pub struct StateDir {
    root: PathBuf,
}

impl StateDir {
    /// `IMAGE_BUILDER_STATE_DIR`, else `$XDG_STATE_HOME/image-builder`, else
    /// `~/.local/state/image-builder`; fleets live in its `fleets/`.
    pub fn from_env() -> StateDir {
        let root = std::env::var_os("IMAGE_BUILDER_STATE_DIR")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .or_else(|| {
                std::env::var_os("XDG_STATE_HOME")
                    .filter(|v| !v.is_empty())
                    .map(|d| PathBuf::from(d).join("image-builder"))
            })
            .or_else(|| {
                std::env::var_os("HOME")
                    .map(|h| PathBuf::from(h).join(".local/state/image-builder"))
            })
            .unwrap_or_else(|| PathBuf::from(".image-builder-state"));
        StateDir::at(root)
    }

    /// A state directory rooted at `root`.
    pub fn at(root: PathBuf) -> StateDir {
        StateDir { root }
    }

    fn fleets(&self) -> PathBuf {
        self.root.join("fleets")
    }

    /// `fleets/<name>.json`.
    pub fn state_file(&self, name: &FleetName) -> PathBuf {
        self.fleets().join(format!("{name}.json"))
    }

    /// `fleets/<name>/`: known_hosts, the SSH identity, ssh_config (created 0700).
    pub fn fleet_dir(&self, name: &FleetName) -> Result<PathBuf, StateError> {
        let dir = self.fleets().join(name.as_str());
        create_private_dir(&dir)?;
        Ok(dir)
    }

    /// The fleet's state, if it has any.
    pub fn load(&self, name: &FleetName) -> Result<Option<FleetState>, StateError> {
        let path = self.state_file(name);
        let text = match std::fs::read(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(StateError::Io { path, source }),
        };
        let state: FleetState = serde_json::from_slice(&text).map_err(|e| StateError::Invalid {
            path: path.clone(),
            message: e.to_string(),
        })?;
        if state.version != STATE_VERSION {
            return Err(StateError::Invalid {
                path,
                message: format!(
                    "version {} (this image-builder reads {STATE_VERSION})",
                    state.version
                ),
            });
        }
        Ok(Some(state))
    }

    /// Write the fleet's state atomically (0600).
    pub fn save(&self, state: &FleetState) -> Result<(), StateError> {
        create_private_dir(&self.fleets())?;
        let path = self.state_file(&state.name);
        let text = serde_json::to_vec_pretty(state).map_err(|e| StateError::Invalid {
            path: path.clone(),
            message: e.to_string(),
        })?;
        artifact_store::fsutil::write_atomic(&path, &text, 0o600)
            .map_err(|source| StateError::Io { path, source })
    }

    /// Forget a fleet (after `down`): its state file and directory.
    pub fn remove(&self, name: &FleetName) -> Result<(), StateError> {
        let path = self.state_file(name);
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => return Err(StateError::Io { path, source }),
        }
        let dir = self.fleets().join(name.as_str());
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(StateError::Io { path: dir, source }),
        }
    }

    /// `reap`'s record of since when each droplet (by id) was seen powered off.
    pub fn reap_seen_file(&self) -> PathBuf {
        self.root.join("reap-seen-off.json")
    }

    /// `reap`'s record (a missing or unreadable file is an empty record: reap then waits
    /// one grace period more, never less).
    pub fn load_reap_seen(&self, path: &Path) -> std::collections::BTreeMap<u64, i64> {
        std::fs::read(path)
            .ok()
            .and_then(|t| serde_json::from_slice(&t).ok())
            .unwrap_or_default()
    }

    /// Write `reap`'s record atomically (0600).
    pub fn save_reap_seen(
        &self,
        seen: &std::collections::BTreeMap<u64, i64>,
    ) -> Result<(), StateError> {
        create_private_dir(&self.root)?;
        let path = self.reap_seen_file();
        let text = serde_json::to_vec(seen).map_err(|e| StateError::Invalid {
            path: path.clone(),
            message: e.to_string(),
        })?;
        artifact_store::fsutil::write_atomic(&path, &text, 0o600)
            .map_err(|source| StateError::Io { path, source })
    }

    /// Every fleet with a state file.
    pub fn list(&self) -> Result<Vec<FleetName>, StateError> {
        let dir = self.fleets();
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => return Err(StateError::Io { path: dir, source }),
        };
        let mut names: Vec<FleetName> = entries
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().to_str()?.strip_suffix(".json")?.parse().ok())
            .collect();
        names.sort();
        Ok(names)
    }
}

fn create_private_dir(dir: &Path) -> Result<(), StateError> {
    use std::os::unix::fs::{DirBuilderExt as _, PermissionsExt as _};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .and_then(|()| std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)))
        .map_err(|source| StateError::Io {
            path: dir.to_owned(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    #[test]
    fn round_trip_is_0600_and_lists() {
        let dir = tempfile::tempdir().unwrap();
        let states = StateDir::at(dir.path().to_owned());
        let name: FleetName = "ci".parse().unwrap();
        assert_eq!(states.load(&name).unwrap(), None);
        let state = FleetState {
            version: STATE_VERSION,
            name: name.clone(),
            backend: FleetBackend::Digitalocean,
            user: "builder".into(),
            spec_sha256: "ab".repeat(32),
            image: "123".into(),
            sha: Some("0123abc".into()),
            region: Some("nyc3".into()),
            size: Some("s-1vcpu-1gb".into()),
            workers: vec![WorkerRecord {
                name: "ci-1".into(),
                id: Some(7),
                address: "203.0.113.7".into(),
                port: 22,
                host_key: "ssh-ed25519 AAAA".into(),
                created_at: "2026-01-01T00:00:00Z".into(),
            }],
            shared_host_key: None,
        };
        states.save(&state).unwrap();
        let mode = std::fs::metadata(states.state_file(&name))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(states.load(&name).unwrap(), Some(state));
        assert_eq!(states.list().unwrap(), vec![name.clone()]);
        let fleet_dir = states.fleet_dir(&name).unwrap();
        assert_eq!(
            std::fs::metadata(&fleet_dir).unwrap().permissions().mode() & 0o777,
            0o700
        );
        states.remove(&name).unwrap();
        assert_eq!(states.load(&name).unwrap(), None);
        assert!(!fleet_dir.exists());
    }
}
