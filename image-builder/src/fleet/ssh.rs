//! Every SSH the tool makes to a worker, pinned: the fleet's own `known_hosts` (the host
//! keys the tool generated and handed to the workers), `StrictHostKeyChecking=yes`, the
//! fleet's identity with `IdentitiesOnly=yes`, `BatchMode=yes`, and each worker's name as
//! its `HostKeyAlias` (so a reused address can never match another worker's key). Never
//! trust on first use.
//!
//! The same settings are written as an `ssh_config` block (`fleet ssh-config`) that users
//! `Include` in `~/.ssh/config`, so `ssh WORKER` and `scp WORKER:…` work by name.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use agent_status::StatusReport;

use super::FleetError;
use super::keys::{self, KeyPair};
use super::state::{FleetState, StateDir};

/// The fleet's SSH files.
#[derive(Clone, Debug)]
pub struct Pinned {
    /// `ssh_config` with one `Host` block per worker.
    pub config: PathBuf,
    /// The pinned host keys.
    pub known_hosts: PathBuf,
    /// The fleet's private key (0600).
    pub identity: PathBuf,
}

impl Pinned {
    /// The fleet's files under its state directory (nothing is written).
    pub fn paths(states: &StateDir, state: &FleetState) -> Result<Pinned, FleetError> {
        let dir = states.fleet_dir(&state.name)?;
        Ok(Pinned {
            config: dir.join("ssh_config"),
            known_hosts: dir.join("known_hosts"),
            identity: dir.join("id_ed25519"),
        })
    }

    /// The fleet's identity: made once per fleet, its public half returned.
    pub fn ensure_identity(&self, comment: &str) -> Result<String, FleetError> {
        let public = self.identity.with_extension("pub");
        if let Ok(text) = std::fs::read_to_string(&public)
            && self.identity.is_file()
        {
            return Ok(text.trim().to_owned());
        }
        let KeyPair { private, public: p } = keys::generate(comment)?;
        write_file(&self.identity, private.as_bytes(), 0o600)?;
        write_file(&public, format!("{p}\n").as_bytes(), 0o644)?;
        Ok(p)
    }

    /// Write `known_hosts` and `ssh_config` for the fleet's workers.
    pub fn write(&self, state: &FleetState) -> Result<(), FleetError> {
        let mut known = String::new();
        for w in &state.workers {
            let _ = writeln!(known, "{} {}", w.name, w.host_key);
        }
        if let Some(key) = &state.shared_host_key {
            let _ = writeln!(known, "{}-* {key}", state.name);
        }
        write_file(&self.known_hosts, known.as_bytes(), 0o600)?;
        write_file(&self.config, self.config_text(state).as_bytes(), 0o600)
    }

    /// One `Host` block per worker.
    pub fn config_text(&self, state: &FleetState) -> String {
        let mut out = format!(
            "# Fleet {} (written by image-builder; host keys pinned, never trust on first use).\n\
             # Use it with `Include {}` in ~/.ssh/config.\n",
            state.name,
            self.config.display()
        );
        for w in &state.workers {
            let _ = write!(
                out,
                "\nHost {name}\n  HostName {addr}\n  Port {port}\n  User {user}\n  IdentityFile {id}\n  \
                 IdentitiesOnly yes\n  UserKnownHostsFile {kh}\n  GlobalKnownHostsFile /dev/null\n  \
                 StrictHostKeyChecking yes\n  HostKeyAlias {name}\n  BatchMode yes\n  \
                 ConnectTimeout 10\n  ServerAliveInterval 15\n",
                name = w.name,
                addr = w.address,
                port = w.port,
                user = state.user,
                id = self.identity.display(),
                kh = self.known_hosts.display(),
            );
        }
        out
    }

    /// `ssh -F <fleet ssh_config> WORKER`, to which the caller adds the remote command.
    pub fn ssh(&self, worker: &str) -> Command {
        let mut c = Command::new("ssh");
        c.arg("-F").arg(&self.config).arg(worker);
        c
    }

    /// `scp -F <fleet ssh_config> WORKER:REMOTE LOCAL`.
    pub fn scp_from(&self, worker: &str, remote: &str, local: &Path) -> Command {
        let mut c = Command::new("scp");
        c.arg("-F")
            .arg(&self.config)
            .arg("-q")
            .arg(format!("{worker}:{remote}"))
            .arg(local);
        c
    }
}

/// `vm-agent status --json` on `worker` over the fleet's pinned SSH, parsed as the agent's
/// own [`StatusReport`] type. A report of another `report_version`, or one that does not
/// parse, is an error that says what was wrong.
pub fn agent_status(pinned: &Pinned, worker: &str) -> Result<StatusReport, String> {
    let out = pinned
        .ssh(worker)
        .args(["vm-agent", "status", "--json"])
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| format!("cannot run ssh: {e}"))?;
    // vm-agent status exits 1 when degraded and 2 when not ready yet, with the report
    // on stdout either way; ssh itself exits 255.
    if out.status.code() == Some(255) {
        return Err(String::from_utf8_lossy(&out.stderr).trim().to_owned());
    }
    parse_status(&out.stdout, &out.stderr)
}

/// The report on `stdout`; what went wrong, with `stderr`, if there is none.
fn parse_status(stdout: &[u8], stderr: &[u8]) -> Result<StatusReport, String> {
    StatusReport::from_json(stdout).map_err(|e| match String::from_utf8_lossy(stderr).trim() {
        "" => e.to_string(),
        stderr => format!("{e}: {stderr}"),
    })
}

fn write_file(path: &Path, data: &[u8], mode: u32) -> Result<(), FleetError> {
    artifact_store::fsutil::write_atomic(path, data, mode).map_err(|e| FleetError::File {
        path: path.to_owned(),
        message: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::state::{FleetBackend, STATE_VERSION, WorkerRecord};

    #[test]
    fn config_pins_every_worker_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let states = StateDir::at(dir.path().to_owned());
        let state = FleetState {
            version: STATE_VERSION,
            name: "ci".parse().unwrap(),
            backend: FleetBackend::Qemu,
            user: "builder".into(),
            spec_sha256: String::new(),
            image: "golden.qcow2".into(),
            sha: None,
            region: None,
            size: None,
            workers: vec![WorkerRecord {
                name: "ci-1".into(),
                id: None,
                address: "127.0.0.1".into(),
                port: 2222,
                host_key: "ssh-ed25519 AAAAkey".into(),
                created_at: String::new(),
            }],
            shared_host_key: None,
        };
        let pinned = Pinned::paths(&states, &state).unwrap();
        pinned.write(&state).unwrap();
        let text = std::fs::read_to_string(&pinned.config).unwrap();
        for needle in [
            "Host ci-1\n",
            "StrictHostKeyChecking yes",
            "HostKeyAlias ci-1",
            "BatchMode yes",
            "IdentitiesOnly yes",
            "Port 2222",
        ] {
            assert!(text.contains(needle), "{needle}\n{text}");
        }
        assert!(!text.contains("accept-new") && !text.contains("StrictHostKeyChecking no"));
        assert_eq!(
            std::fs::read_to_string(&pinned.known_hosts).unwrap(),
            "ci-1 ssh-ed25519 AAAAkey\n"
        );
        let public = pinned.ensure_identity("fleet ci").unwrap();
        assert_eq!(pinned.ensure_identity("fleet ci").unwrap(), public);
    }

    #[test]
    fn a_status_that_is_no_report_of_this_version_says_why() {
        let e = parse_status(b"", b"bash: vm-agent: command not found\n").unwrap_err();
        assert!(
            e.starts_with("no status report") && e.ends_with(": bash: vm-agent: command not found"),
            "{e}"
        );
        let e = parse_status(br#"{"report_version": 7, "stage": "ready"}"#, b"").unwrap_err();
        assert!(e.contains("report_version 7"), "{e}");
        let e = parse_status(br#"{"report_version": 1, "stage": "ready"}"#, b"").unwrap_err();
        assert!(e.contains("missing field"), "{e}");
    }
}
