//! The socket protocol: newline-delimited JSON. The client writes one [`Request`] line; the
//! daemon answers with one or more [`Response`] lines. `run` (without `detach`) and
//! `logs --follow` stream `output` lines (base64 chunks of the job's log) and end with `exit`.
//! A client that disconnects during a non-detached `run` cancels the job, as an SSH session
//! that drops would end a command it ran.

use crate::artifacts::ArtifactItem;
use crate::jobs::JobRecord;
use crate::report::StatusReport;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Request {
    Status,
    Jobs,
    Run {
        argv: Vec<String>,
        #[serde(default)]
        name: Option<String>,
        /// Duration string (`"10m"`, `"never"`).
        #[serde(default)]
        timeout: Option<String>,
        #[serde(default)]
        detach: bool,
        /// Variables for the job's environment (values may be secrets: they travel over
        /// the socket, live in the daemon's memory only, and are never logged or stored).
        #[serde(default, skip_serializing_if = "JobEnv::is_empty")]
        env: JobEnv,
        /// The job's standard input (`run --stdin`: a script, a heredoc), written to it and
        /// then closed; kept in memory only. Without it the job's stdin is empty.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        stdin: Option<JobStdin>,
    },
    Logs {
        id: u64,
        #[serde(default)]
        follow: bool,
    },
    Cancel {
        id: u64,
    },
    Hold {
        /// Duration string; unset holds until `release`.
        #[serde(default)]
        duration: Option<String>,
        #[serde(default)]
        reason: Option<String>,
    },
    Release,
    /// Pull a build now into `<state_dir>/artifacts/<sha>/`.
    Pull {
        sha: String,
    },
}

impl Request {
    /// Whether the request changes state (needs root or the socket group).
    pub fn is_privileged(&self) -> bool {
        matches!(
            self,
            Request::Run { .. }
                | Request::Cancel { .. }
                | Request::Hold { .. }
                | Request::Release
                | Request::Pull { .. }
        )
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum Response {
    Status {
        report: Box<StatusReport>,
    },
    Jobs {
        jobs: Vec<JobRecord>,
    },
    /// A job was accepted (or cancelled); its record.
    Job {
        job: JobRecord,
    },
    /// A chunk of the job's output (base64).
    Output {
        data: String,
    },
    /// The job ended; its final record.
    Exit {
        job: JobRecord,
    },
    Warning {
        message: String,
    },
    /// A pull ended (installed, unavailable or failed).
    Artifact {
        item: Box<ArtifactItem>,
    },
    Ok {
        message: String,
    },
    Error {
        kind: ErrorKind,
        message: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ErrorKind {
    BadRequest,
    PermissionDenied,
    NotFound,
    Draining,
    Internal,
}

/// A job's extra environment: names and values. `Debug` shows the names only.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct JobEnv(pub Vec<(String, String)>);

impl JobEnv {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Why `name` cannot be an environment variable's name, if it cannot.
    pub fn name_problem(name: &str) -> Option<String> {
        let mut chars = name.chars();
        let ok = chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
        (!ok).then(|| format!("{name:?} is not a variable name (letters, digits, _)"))
    }
}

impl std::fmt::Debug for JobEnv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.0.iter().map(|(k, _)| format!("{k}=<redacted>")))
            .finish()
    }
}

/// A job's standard input. `Debug` shows its size only.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct JobStdin(pub String);

impl std::fmt::Debug for JobStdin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "JobStdin({} bytes)", self.0.len())
    }
}
