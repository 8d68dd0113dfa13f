//! The one error of the `vm-agent` binary. Every command returns it; `main.rs` prints it
//! once ([`Error::report`]: `vm-agent: MESSAGE` on stderr) and exits with
//! [`Error::exit_code`]. The exit-code table is in `cli.rs` and the README; outcomes that are
//! not failures of the agent (`status`'s stage, `run`'s job code) are the `Ok` of
//! [`crate::cli::run`], not errors.

use std::path::PathBuf;

use crate::artifacts::ArtifactItem;
use crate::config::ConfigError;
use crate::daemon::StartError;
use crate::jobs::JobRecord;

/// Any other startup failure of the daemon (systemd restarts it); also `pull-worker` without
/// a job.
pub const EXIT_FAILURE: i32 = 1;
/// The daemon is not reachable.
pub const EXIT_NOT_RUNNING: i32 = 3;
/// Usage error (not clap's 2, which would read as "not ready").
pub const EXIT_USAGE: i32 = 64;
/// A config/secrets problem. The systemd unit lists it in `RestartPreventExitStatus=` so a
/// bad config does not restart-loop.
pub const EXIT_CONFIG: i32 = 78;
/// The agent itself failed or refused the request (`run`: the job never ran).
pub const EXIT_AGENT_ERROR: i32 = 125;

/// Why a `vm-agent` command failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// clap rejected the command line; its message carries the usage line.
    #[error("{}", .0.to_string().trim_end())]
    Cli(#[from] clap::Error),
    /// A bad flag value (`--for`, `--timeout`, no command for `run`), or a request the daemon
    /// refused as malformed (a bad sha, no `[artifacts]` section).
    #[error("{0}")]
    Usage(String),
    /// `check-config`: the config or secrets file is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The config names something that cannot be used (`check-config`: the build user), or
    /// the daemon could not serve (bind the socket, handle signals).
    #[error(transparent)]
    Start(#[from] StartError),
    /// The daemon refused to start: a bad config or secrets file (78), or anything else (1).
    #[error("refusing to start: {0}")]
    Refused(StartError),
    /// The async runtime could not be started.
    #[error("cannot start the runtime: {0}")]
    Runtime(#[source] std::io::Error),
    /// The daemon's socket cannot be reached.
    #[error("cannot connect to {}: {source}; {hint}", path.display())]
    NotRunning {
        /// The socket.
        path: PathBuf,
        /// What `connect` said.
        source: std::io::Error,
        /// What to check.
        hint: &'static str,
    },
    /// The connection to the daemon broke.
    #[error("lost the daemon: {0}")]
    LostDaemon(#[source] std::io::Error),
    /// The daemon closed the connection before answering.
    #[error("the daemon closed the connection")]
    Closed,
    /// The daemon answered something this client does not understand.
    #[error("bad answer from the daemon: {0}")]
    BadAnswer(String),
    /// The daemon failed or refused the request.
    #[error("{0}")]
    Agent(String),
    /// `run`: the daemon went away before the job ended.
    #[error("the daemon went away before job {0} ended")]
    JobLost(u64),
    /// `run`: the job was cancelled, timed out or lost, with a reason; exits with the job's
    /// code like any other job.
    #[error("job {} {}: {}", .0.id, .0.state.as_str(), .0.detail.as_deref().unwrap_or_default())]
    Job(Box<JobRecord>),
    /// `pull`: the build was not installed (failed, or unavailable).
    #[error("{} {}: {}", .0.sha, .0.state, .0.reason.as_deref().unwrap_or_default())]
    Pull(Box<ArtifactItem>),
    /// `pull-worker` run by hand: there is no pull job on stdin.
    #[error(
        "{}: cannot read the pull job from stdin ({}); this command is started by the daemon, not by hand",
        crate::artifacts::child::SUBCOMMAND,
        .0
    )]
    PullJob(#[source] serde_json::Error),
}

impl Error {
    /// The process exit code for this error.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Cli(_) | Error::Usage(_) => EXIT_USAGE,
            Error::Config(_) => EXIT_CONFIG,
            Error::Start(e) | Error::Refused(e) => e.exit_code(),
            Error::Runtime(_) | Error::PullJob(_) => EXIT_FAILURE,
            Error::NotRunning { .. } | Error::LostDaemon(_) | Error::Closed => EXIT_NOT_RUNNING,
            Error::BadAnswer(_) | Error::Agent(_) | Error::JobLost(_) => EXIT_AGENT_ERROR,
            Error::Job(job) => job.cli_exit_code(),
            Error::Pull(item) => item.exit_code(),
        }
    }

    /// The message for stderr: `vm-agent: ` and the error (clap's own errors come as clap
    /// formats them). Only the message, not the `source()` chain: every variant that has a
    /// cause names it in its message, and the secrets file's errors must never grow the
    /// parser's text (which quotes the line, secret and all).
    pub fn report(&self) -> String {
        match self {
            Error::Cli(_) => self.to_string(),
            _ => format!("vm-agent: {self}"),
        }
    }
}
