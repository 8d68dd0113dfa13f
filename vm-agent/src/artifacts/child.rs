//! Pulls run in a child process: the daemon re-executes its own binary as
//! `vm-agent pull-worker` (hidden), hands it one [`PullJob`] as JSON on stdin (the S3 keys
//! travel over that pipe: never argv, never the environment of other processes, never logs),
//! and reads [`Line`]s back from its stdout: progress while it runs, then one result. The
//! child's stderr is the daemon's (the journal).
//!
//! Why a process and not a thread: everything a pull touches (the S3 SDK's code pages, TLS,
//! a multi-thread runtime, tens of MiB of buffers) goes away with the child, so the daemon's
//! RSS after a pull is what it was before it; and a panic in a pull (the static agent is built
//! with `panic = "abort"`) ends the pull, not the daemon.
//!
//! The protocol is private to one binary (parent and child are always the same build), but it
//! is still one definition: [`PullJob`] and [`Line`], used by both sides.

use crate::error::Error;
use artifact_store::s3::HickoryDns;
use artifact_store::{PullConfig, PullReport, S3Credentials, S3Settings, pull};
use indicatif::ProgressBar;
use serde::{Deserialize, Serialize};
use std::io::Write as _;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};

/// The hidden subcommand the daemon starts.
pub const SUBCOMMAND: &str = "pull-worker";

/// One pull, as the daemon asks for it. No `Debug`: it holds the secret key.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PullJob {
    pub s3: S3Settings,
    /// `None`: no keys configured (the pull then reports "artifact unavailable").
    pub keys: Option<Keys>,
    pub sha: String,
    /// The state directory (`<root>/artifacts/<sha>/` is installed).
    pub root: PathBuf,
    pub max_requests: usize,
    pub cache_max_bytes: Option<u64>,
    pub min_free_bytes: u64,
}

/// An access key pair on the wire.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Keys {
    pub access_key_id: String,
    pub secret_access_key: String,
}

impl From<&S3Credentials> for Keys {
    fn from(c: &S3Credentials) -> Keys {
        Keys {
            access_key_id: c.access_key_id().to_string(),
            secret_access_key: c.secret_access_key().to_string(),
        }
    }
}

/// What the child prints, one JSON object per line.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Line {
    /// Bytes of the build and bytes done so far.
    Progress { len: u64, pos: u64 },
    /// Installed and verified.
    Installed(PullReport),
    /// The pull ended without installing.
    Failed(Failure),
}

/// Why a pull ended without installing.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Failure {
    /// "Not there for us" (no keys, no manifest, 403) rather than "there but could not be
    /// installed".
    pub unavailable: bool,
    /// Starts with "artifact unavailable: " or "artifact failed: ".
    pub message: String,
}

/// Run one pull in a child process and follow it. `limit`: kill it after this long.
/// A child that dies or says nothing is a [`Failure`] with the reason.
pub async fn run(
    job: &PullJob,
    bar: &ProgressBar,
    limit: Option<Duration>,
) -> Result<PullReport, Failure> {
    let failed = |message: String| {
        Err(Failure {
            unavailable: false,
            message,
        })
    };
    let input = match serde_json::to_vec(job) {
        Ok(v) => v,
        Err(e) => return failed(format!("artifact failed: cannot encode the pull job: {e}")),
    };
    // /proc/self/exe: the running binary even if a package upgrade replaced the file.
    let mut child = match tokio::process::Command::new("/proc/self/exe")
        .arg(SUBCOMMAND)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
    {
        Ok(c) => c,
        Err(e) => {
            return failed(format!(
                "artifact failed: cannot start the pull process: {e}"
            ));
        }
    };
    let (Some(mut stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
        return failed("artifact failed: the pull process has no pipes".into());
    };
    let follow = async {
        // A child that dies before reading its job shows up below as "no result".
        let _ = stdin.write_all(&input).await;
        drop(stdin);
        let mut lines = BufReader::new(stdout).lines();
        let mut result = None;
        while let Ok(Some(l)) = lines.next_line().await {
            match serde_json::from_str::<Line>(&l) {
                Ok(Line::Progress { len, pos }) => {
                    bar.set_length(len);
                    bar.set_position(pos);
                }
                Ok(Line::Installed(r)) => result = Some(Ok(r)),
                Ok(Line::Failed(f)) => result = Some(Err(f)),
                Err(e) => tracing::warn!("pull process: unreadable line ({e}): {l:.200}"),
            }
        }
        result
    };
    let result = match limit {
        None => follow.await,
        Some(d) => match tokio::time::timeout(d, follow).await {
            Ok(r) => r,
            Err(_) => {
                let _ = child.kill().await;
                return failed(format!(
                    "artifact failed: pull did not finish within {} (artifacts.timeout); \
                     partial files are kept for the next pull",
                    crate::config::Dur(d)
                ));
            }
        },
    };
    let status = child.wait().await;
    match (result, status) {
        (Some(r), _) => r,
        (None, Ok(st)) => failed(format!(
            "artifact failed: the pull process ended without a result ({st})"
        )),
        (None, Err(e)) => failed(format!("artifact failed: the pull process: {e}")),
    }
}

/// `vm-agent pull-worker`: read one [`PullJob`] from stdin, pull, print [`Line`]s. `Ok` (exit
/// 0) when a result line was printed (whatever the result), an error (exit 1) when the job
/// could not be read.
pub fn main() -> Result<(), Error> {
    // Die with the daemon: a daemon killed mid-pull (SIGKILL, OOM) must not leave a pull
    // running on its own. (The daemon's runtime is current-thread on its main thread, and the
    // signal follows the thread that started us; a daemon gone before this line shows up as
    // an unreadable job below.)
    if let Err(e) = nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL) {
        tracing::warn!("{SUBCOMMAND}: cannot tie this process to the daemon's life: {e}");
    }
    let job: PullJob = serde_json::from_reader(std::io::stdin().lock()).map_err(Error::PullJob)?;
    let workers = std::thread::available_parallelism()
        .map(|n| n.get().clamp(2, 4))
        .unwrap_or(2);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .thread_name("pull")
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            emit(&Line::Failed(Failure {
                unavailable: false,
                message: format!("artifact failed: cannot start a runtime: {e}"),
            }));
            return Ok(());
        }
    };
    let line = rt.block_on(async move {
        let keys = job
            .keys
            .map(|k| S3Credentials::new(k.access_key_id, k.secret_access_key));
        let mut pc = PullConfig::new(job.s3, keys);
        pc.max_requests = job.max_requests.max(1);
        pc.cache_max_bytes = job.cache_max_bytes;
        pc.min_free_bytes = job.min_free_bytes;
        pc.resolver = match HickoryDns::from_system_conf() {
            Ok(r) => Some(r.shared()),
            Err(e) => {
                tracing::warn!("{e}; resolving names with getaddrinfo");
                None
            }
        };
        let bar = ProgressBar::hidden();
        let ticker = {
            let bar = bar.clone();
            tokio::spawn(async move {
                let mut last = None;
                loop {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    let now = (bar.length().unwrap_or(0), bar.position());
                    if last != Some(now) {
                        last = Some(now);
                        emit(&Line::Progress {
                            len: now.0,
                            pos: now.1,
                        });
                    }
                }
            })
        };
        let r = pull(&pc, &job.sha, &job.root, Some(&bar)).await;
        ticker.abort();
        match r {
            Ok(report) => Line::Installed(report),
            Err(e) => Line::Failed(Failure {
                unavailable: e.is_unavailable(),
                message: if e.is_unavailable() {
                    // The library's message already starts with "artifact unavailable: ".
                    e.to_string()
                } else {
                    format!("artifact failed: {e}")
                },
            }),
        }
    });
    emit(&line);
    Ok(())
}

/// One line on stdout. A parent that went away ends the child.
fn emit(line: &Line) {
    let Ok(mut text) = serde_json::to_string(line) else {
        return;
    };
    text.push('\n');
    let mut out = std::io::stdout().lock();
    if out
        .write_all(text.as_bytes())
        .and_then(|_| out.flush())
        .is_err()
    {
        std::process::exit(1);
    }
}
