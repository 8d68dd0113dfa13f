//! Fleets: workers booted from a golden image, reached over pinned SSH, torn down by tag.
//!
//! A fleet is named (`--name`, default: the spec's name) and lives in the cloud's tags,
//! so `ls`, `down` and `reap` work with no local state:
//! - every worker carries `image-builder`, `image-builder-fleet-<name>`, the spec's
//!   ephemeral tag (the agent deletes only droplets that carry it) and
//!   `image-builder-deadline-<unix time>` (boot + `max_lifetime`: `reap` deletes a worker
//!   past it when its agent could not);
//! - workers are named `<fleet>-<n>`; a create is reconciled by the fleet tag and the
//!   names, so a retried POST never makes a second worker of one name.
//!
//! The local state (`state`) adds what tags cannot hold: the pinned host keys' public
//! halves, the SSH identity's path, the spec hash, image and sha. No secret is in it.
//!
//! Modules: [`keys`] (host keys and the fleet's SSH identity), [`ssh`] (every SSH the
//! tool makes, pinned), [`userdata`] (the worker contract), [`policy`] (spending caps and
//! the human-only policy), [`state`], [`digitalocean`] (up/ls/down/reap on DigitalOcean),
//! [`local`] (QEMU workers on this machine), [`progress`] (what `up` shows while workers
//! come up), [`readiness`] (a poll's verdict on a worker, and `--retry`'s book).

pub mod digitalocean;
pub mod keys;
pub mod local;
pub mod policy;
pub mod progress;
pub mod readiness;
pub mod ssh;
pub mod state;
pub mod userdata;

use std::fmt;
use std::path::PathBuf;

/// Every resource this tool makes carries this tag.
pub use crate::backend::digitalocean::TAG;
/// `image-builder-fleet-<name>`: the fleet a worker belongs to.
pub const FLEET_TAG_PREFIX: &str = "image-builder-fleet-";
/// `image-builder-deadline-<unix seconds>`: when `reap` may delete the worker.
pub const DEADLINE_TAG_PREFIX: &str = "image-builder-deadline-";

/// A fleet's name: 1 to 40 of `a-z`, `0-9`, `-`, starting with a letter (it becomes part
/// of droplet names, tags and file names).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct FleetName(String);

impl FleetName {
    /// The fleet's tag.
    pub fn tag(&self) -> String {
        format!("{FLEET_TAG_PREFIX}{}", self.0)
    }

    /// The name of worker `n` (from 1).
    pub fn worker(&self, n: usize) -> String {
        format!("{}-{n}", self.0)
    }

    /// The number of a worker of this fleet, from its name.
    pub fn worker_number(&self, worker: &str) -> Option<usize> {
        worker
            .strip_prefix(&self.0)?
            .strip_prefix('-')?
            .parse()
            .ok()
            .filter(|n| *n > 0)
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// A fleet name derived from a spec name (lowercased, other characters as `-`).
    pub fn from_spec_name(name: &str) -> Result<FleetName, String> {
        let cleaned: String = name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_lowercase()
                } else {
                    '-'
                }
            })
            .take(40)
            .collect();
        cleaned.trim_matches('-').parse()
    }
}

impl std::str::FromStr for FleetName {
    type Err = String;
    fn from_str(s: &str) -> Result<FleetName, String> {
        let ok = !s.is_empty()
            && s.len() <= 40
            && s.starts_with(|c: char| c.is_ascii_lowercase())
            && !s.ends_with('-')
            && s.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        if ok {
            Ok(FleetName(s.to_owned()))
        } else {
            Err(format!(
                "invalid fleet name {s:?}: expected 1 to 40 of a-z, 0-9 and '-', starting with a letter"
            ))
        }
    }
}

impl TryFrom<String> for FleetName {
    type Error = String;
    fn try_from(s: String) -> Result<FleetName, String> {
        s.parse()
    }
}

impl From<FleetName> for String {
    fn from(n: FleetName) -> String {
        n.0
    }
}

impl fmt::Display for FleetName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The fleet a droplet belongs to, from its tags.
pub fn fleet_of(tags: &[String]) -> Option<FleetName> {
    tags.iter()
        .find_map(|t| t.strip_prefix(FLEET_TAG_PREFIX))
        .and_then(|n| n.parse().ok())
}

/// A worker's deadline (unix seconds), from its tags: the earliest, if an operator
/// tagged it with an earlier one.
pub fn deadline_of(tags: &[String]) -> Option<i64> {
    tags.iter()
        .filter_map(|t| t.strip_prefix(DEADLINE_TAG_PREFIX))
        .filter_map(|n| n.parse().ok())
        .min()
}

/// Errors of the fleet commands. Each names the fleet, the worker or the file.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    /// A DigitalOcean API call failed.
    #[error("{during}: {source}")]
    Api {
        /// What the command was doing.
        during: String,
        /// The error.
        source: Box<do_api::DoError>,
    },
    /// Pre-flight refused the request before anything was created.
    #[error("pre-flight: {0}")]
    Preflight(String),
    /// A spending cap or the human-only policy refused the request.
    #[error("{0}")]
    Policy(String),
    /// Not confirmed, and no terminal to ask on.
    #[error("stdin is not a terminal: pass --yes to confirm the resources shown above")]
    NeedsConfirmation,
    /// The user said no.
    #[error("not confirmed: nothing was created")]
    Declined,
    /// The workers would get no token to delete themselves.
    #[error(
        "no worker token: set DIGITALOCEAN_WORKER_TOKEN or pass --worker-token-file (a token whose scopes allow \
         deleting droplets, separate from the host's token), or pass --power-off-only to let idle workers only \
         power off (a powered-off droplet still bills until `fleet reap` deletes it)"
    )]
    NoWorkerToken,
    /// Reading a secret or key file failed.
    #[error("{}: {message}", path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        message: String,
    },
    /// A tool this command runs is missing or failed.
    #[error("{tool}: {message}")]
    Tool {
        /// The program.
        tool: &'static str,
        /// What happened.
        message: String,
    },
    /// The state file.
    #[error(transparent)]
    State(#[from] state::StateError),
    /// Rendering the worker user-data failed.
    #[error(transparent)]
    Render(#[from] crate::render::RenderError),
    /// The spec.
    #[error(transparent)]
    Spec(#[from] crate::spec::SpecError),
    /// Workers did not become ready; each was deleted (the others are up).
    #[error("{}", not_ready(.0))]
    NotReady(Vec<FailedWorker>),
    /// No such worker or fleet.
    #[error("{0}")]
    NotFound(String),
    /// A worker has a running job and `--force` was not given.
    #[error("{0}")]
    Busy(String),
    /// The local backend.
    #[error(transparent)]
    Qemu(#[from] crate::backend::qemu::QemuError),
    /// The async runtime could not be started.
    #[error("cannot start the async runtime: {0}")]
    Runtime(#[source] std::io::Error),
}

impl FleetError {
    /// The shared confirmation's refusals, as fleet errors.
    pub(crate) fn from_confirm(e: crate::backend::digitalocean::DoBakeError) -> FleetError {
        use crate::backend::digitalocean::DoBakeError;
        match e {
            DoBakeError::NeedsConfirmation { .. } => FleetError::NeedsConfirmation,
            DoBakeError::Declined { .. } => FleetError::Declined,
            other => FleetError::Tool {
                tool: "stdin",
                message: other.to_string(),
            },
        }
    }

    pub(crate) fn api(during: impl Into<String>) -> impl FnOnce(do_api::DoError) -> FleetError {
        let during = during.into();
        move |source| FleetError::Api {
            during,
            source: Box::new(source),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_tags_and_workers() {
        let f: FleetName = "ci".parse().unwrap();
        assert_eq!(f.tag(), "image-builder-fleet-ci");
        assert_eq!(f.worker(3), "ci-3");
        assert_eq!(f.worker_number("ci-3"), Some(3));
        assert_eq!(f.worker_number("ci-gpu-3"), None);
        assert_eq!(f.worker_number("ci-0"), None);
        for bad in ["", "Ci", "1ci", "ci-", "c_i", &"a".repeat(41)] {
            assert!(bad.parse::<FleetName>().is_err(), "{bad}");
        }
        assert_eq!(
            FleetName::from_spec_name("Build Worker.v2")
                .unwrap()
                .as_str(),
            "build-worker-v2"
        );
        let tags = vec![
            "image-builder".to_owned(),
            "image-builder-fleet-ci".to_owned(),
            "image-builder-deadline-1700000000".to_owned(),
        ];
        assert_eq!(fleet_of(&tags), Some(f));
        assert_eq!(deadline_of(&tags), Some(1_700_000_000));
    }
}

/// How many lines of a failed worker's log its report carries, on either backend.
pub const FAILURE_TAIL_LINES: usize = 40;

/// A worker that did not become ready: deleted (confirmed gone), with why and the tail of
/// its log.
#[derive(Clone, Debug, serde::Serialize)]
pub struct FailedWorker {
    /// `<fleet>-<n>`.
    pub worker: String,
    /// Its droplet (DigitalOcean).
    pub id: Option<u64>,
    /// Its region (DigitalOcean).
    pub region: Option<String>,
    /// Why: the agent's `degraded` reason, or the time it was given.
    pub reason: String,
    /// The last [`FAILURE_TAIL_LINES`] lines of its cloud-init output (DigitalOcean, over
    /// pinned SSH) or of its console (local); its last status when neither could be read.
    pub tail: String,
}

fn not_ready(failed: &[FailedWorker]) -> String {
    let mut out = format!(
        "{} worker(s) did not become ready and were deleted; `fleet up` again creates them anew",
        failed.len()
    );
    for f in failed {
        out.push_str(&format!(
            "\n{}{}: {}\n--- last lines ---\n{}",
            f.worker,
            f.region
                .as_deref()
                .map(|r| format!(" ({r})"))
                .unwrap_or_default(),
            f.reason,
            f.tail
        ));
    }
    out
}
