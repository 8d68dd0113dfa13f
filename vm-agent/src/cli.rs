//! The command line: `vm-agent daemon` and the client commands, which talk to the daemon over
//! its socket with a blocking std client (no async runtime: `status` stays fast).
//!
//! Exit codes: `status` 0 ready, 1 degraded, 2 not ready yet; `pull` 0 installed, 1 failed,
//! 2 unavailable; 3 the daemon is not reachable (every command, with a one-line hint); 64 usage
//! error; 78 bad config (`daemon`, `check-config`). `run` exits with the job's code (128+N if killed by signal N, 124 on
//! timeout, 125 when the agent itself failed or refused the job).

use crate::config::{self, Config, Secrets};
use crate::daemon;
use crate::protocol::{ErrorKind, Request, Response};
use crate::report::job_line;
use base64::Engine;
use clap::{Parser, Subcommand};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

pub const EXIT_NOT_RUNNING: i32 = 3;
pub const EXIT_USAGE: i32 = 64;
pub const EXIT_AGENT_ERROR: i32 = 125;
const DEFAULT_SOCKET: &str = "/run/vm-agent/agent.sock";

#[derive(Debug, Parser)]
#[command(
    name = "vm-agent",
    version,
    about = "Worker agent: readiness, jobs over SSH, idle self-destruct"
)]
pub struct Cli {
    /// Config file (TOML).
    #[arg(long, global = true, env = "VM_AGENT_CONFIG")]
    pub config: Option<PathBuf>,
    /// Daemon socket (default: from the config, else /run/vm-agent/agent.sock).
    #[arg(long, global = true, env = "VM_AGENT_SOCKET")]
    pub socket: Option<PathBuf>,
    #[command(subcommand)]
    pub cmd: Cmd,
}

#[derive(Debug, Subcommand)]
pub enum Cmd {
    /// Run the daemon (what the systemd unit starts).
    Daemon {
        /// Log what self-destroy would do instead of doing it.
        #[arg(long)]
        dry_run: bool,
    },
    /// Readiness, jobs, timers, holds. Exit 0 ready, 1 degraded, 2 not ready, 3 no daemon.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Run a job as the build user; streams its output and exits with its code.
    Run {
        #[arg(long)]
        name: Option<String>,
        /// Kill the job after this long (`30m`, `never`).
        #[arg(long)]
        timeout: Option<String>,
        /// Print the job id and return at once.
        #[arg(long)]
        detach: bool,
        /// The command and its arguments (after `--`).
        #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
        argv: Vec<String>,
    },
    /// List jobs.
    Jobs {
        #[arg(long)]
        json: bool,
    },
    /// Print a job's output.
    Logs {
        id: u64,
        /// Keep printing until the job ends.
        #[arg(short = 'f', long)]
        follow: bool,
    },
    /// Cancel a job (SIGTERM to its process group, SIGKILL after the grace period).
    Cancel { id: u64 },
    /// Keep the machine: timers that need idleness do not fire while held.
    Hold {
        /// Hold for this long (default: until `release`).
        #[arg(long = "for")]
        duration: Option<String>,
        #[arg(long)]
        reason: Option<String>,
    },
    /// Drop the hold.
    Release,
    /// Pull a build into <state_dir>/artifacts/SHA/ through the daemon (verified, atomic).
    /// Prints the directory. Exit 0 installed, 1 failed, 2 unavailable, 3 no daemon.
    Pull {
        /// The build's git sha (7-64 lowercase hex digits).
        sha: String,
        #[arg(long)]
        json: bool,
    },
    /// Validate the config and secrets files (exit 78 naming the problem).
    CheckConfig,
    /// Print the default config as TOML (every field, documented in the README).
    ExampleConfig,
    /// Internal: one artifact pull, started by the daemon (job on stdin, JSON lines on stdout).
    #[command(name = "pull-worker", hide = true)]
    PullWorker,
}

fn config_path(cli: &Cli) -> PathBuf {
    cli.config
        .clone()
        .unwrap_or_else(|| PathBuf::from(config::DEFAULT_CONFIG_PATH))
}

fn socket_path(cli: &Cli) -> PathBuf {
    if let Some(s) = &cli.socket {
        return s.clone();
    }
    match Config::load(&config_path(cli)) {
        Ok(c) => c.socket.path,
        Err(_) => PathBuf::from(DEFAULT_SOCKET),
    }
}

/// Parse arguments and run. Returns the process exit code.
pub fn main() -> i32 {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { EXIT_USAGE } else { 0 };
            let _ = e.print();
            return code;
        }
    };
    init_tracing(matches!(cli.cmd, Cmd::Daemon { .. } | Cmd::PullWorker));
    match &cli.cmd {
        Cmd::Daemon { dry_run } => daemon::main(&config_path(&cli), *dry_run),
        Cmd::CheckConfig => check_config(&config_path(&cli)),
        Cmd::PullWorker => crate::artifacts::child::main(),
        Cmd::ExampleConfig => {
            print!("{}", Config::example_toml());
            0
        }
        _ => client(&cli),
    }
}

/// The AWS SDK's own debug output prints the S3 access key id (the identity of every
/// request); `VM_AGENT_LOG=debug` must not put it in the journal, so the `aws*` crates stay at
/// `info` unless a directive names them explicitly (a longer target wins in `EnvFilter`).
const QUIET_SDK: &str = "aws=info";

fn init_tracing(daemon: bool) {
    let default = if daemon { "info" } else { "warn" };
    let spec = std::env::var("VM_AGENT_LOG")
        .ok()
        .filter(|v| !v.trim().is_empty())
        .unwrap_or_else(|| default.to_string());
    let filter = tracing_subscriber::EnvFilter::try_new(format!("{QUIET_SDK},{spec}"))
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(format!("{QUIET_SDK},{default}")))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
}

fn check_config(path: &Path) -> i32 {
    let cfg = match Config::load(path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("vm-agent: {e}");
            return daemon::EXIT_CONFIG;
        }
    };
    let euid = nix::unistd::geteuid().as_raw();
    if let Err(e) = Secrets::load(&cfg.paths.secrets_file, euid) {
        eprintln!("vm-agent: {e}");
        return daemon::EXIT_CONFIG;
    }
    if let Err(e) = daemon::resolve_run_as(&cfg, euid) {
        eprintln!("vm-agent: {e}");
        return daemon::EXIT_CONFIG;
    }
    println!("{}: ok", path.display());
    0
}

struct Conn {
    reader: BufReader<UnixStream>,
    stream: UnixStream,
}

impl Conn {
    fn open(path: &Path) -> Result<Conn, i32> {
        let stream = UnixStream::connect(path).map_err(|e| {
            let hint = match e.kind() {
                std::io::ErrorKind::PermissionDenied => {
                    "permission denied: run as root or as a member of the socket's group".to_string()
                }
                _ => "the daemon is not running: see `systemctl status vm-agent` and `journalctl -u vm-agent`".to_string(),
            };
            eprintln!("vm-agent: cannot connect to {}: {e}; {hint}", path.display());
            EXIT_NOT_RUNNING
        })?;
        let reader = BufReader::new(stream.try_clone().map_err(|_| EXIT_NOT_RUNNING)?);
        Ok(Conn { reader, stream })
    }

    fn send(&mut self, req: &Request) -> Result<(), i32> {
        let mut line = serde_json::to_vec(req).map_err(|_| EXIT_AGENT_ERROR)?;
        line.push(b'\n');
        self.stream.write_all(&line).map_err(|e| {
            eprintln!("vm-agent: lost the daemon: {e}");
            EXIT_NOT_RUNNING
        })
    }

    /// Next response; `None` at end of stream.
    fn next(&mut self) -> Result<Option<Response>, i32> {
        let mut line = String::new();
        match self.reader.read_line(&mut line) {
            Ok(0) => Ok(None),
            Ok(_) => serde_json::from_str(&line).map(Some).map_err(|e| {
                eprintln!("vm-agent: bad answer from the daemon: {e}");
                EXIT_AGENT_ERROR
            }),
            Err(e) => {
                eprintln!("vm-agent: lost the daemon: {e}");
                Err(EXIT_NOT_RUNNING)
            }
        }
    }

    fn one(&mut self, req: &Request) -> Result<Response, i32> {
        self.send(req)?;
        match self.next()? {
            Some(Response::Error { kind, message }) => {
                eprintln!("vm-agent: {message}");
                Err(match kind {
                    ErrorKind::BadRequest => EXIT_USAGE,
                    _ => EXIT_AGENT_ERROR,
                })
            }
            Some(r) => Ok(r),
            None => {
                eprintln!("vm-agent: the daemon closed the connection");
                Err(EXIT_NOT_RUNNING)
            }
        }
    }
}

fn client(cli: &Cli) -> i32 {
    let path = socket_path(cli);
    match client_inner(cli, &path) {
        Ok(code) | Err(code) => code,
    }
}

fn client_inner(cli: &Cli, path: &Path) -> Result<i32, i32> {
    let mut conn = Conn::open(path)?;
    let mut out = std::io::stdout().lock();
    match &cli.cmd {
        Cmd::Status { json } => {
            let Response::Status { report } = conn.one(&Request::Status)? else {
                return Err(EXIT_AGENT_ERROR);
            };
            if *json {
                let _ = writeln!(
                    out,
                    "{}",
                    serde_json::to_string_pretty(&report).unwrap_or_default()
                );
            } else {
                let _ = write!(out, "{}", report.render());
            }
            Ok(report.stage.exit_code())
        }
        Cmd::Jobs { json } => {
            let Response::Jobs { jobs } = conn.one(&Request::Jobs)? else {
                return Err(EXIT_AGENT_ERROR);
            };
            if *json {
                let _ = writeln!(
                    out,
                    "{}",
                    serde_json::to_string_pretty(&jobs).unwrap_or_default()
                );
            } else {
                let now = std::time::SystemTime::now();
                let _ = writeln!(
                    out,
                    "{:>5}  {:<10} {:>7} {:<7} COMMAND",
                    "ID", "STATE", "TIME", "RESULT"
                );
                for j in &jobs {
                    let _ = writeln!(out, "{}", job_line(j, now));
                }
            }
            Ok(0)
        }
        Cmd::Cancel { id } => {
            conn.one(&Request::Cancel { id: *id })?;
            eprintln!("vm-agent: cancelling job {id}");
            Ok(0)
        }
        Cmd::Hold { duration, reason } => {
            if let Some(d) = duration {
                config::parse_limit(d).map_err(|e| {
                    eprintln!("vm-agent: --for: {e}");
                    EXIT_USAGE
                })?;
            }
            if let Response::Ok { message } = conn.one(&Request::Hold {
                duration: duration.clone(),
                reason: reason.clone(),
            })? {
                eprintln!("vm-agent: {message}");
            }
            Ok(0)
        }
        Cmd::Release => {
            conn.one(&Request::Release)?;
            eprintln!("vm-agent: released");
            Ok(0)
        }
        Cmd::Pull { sha, json } => {
            let Response::Artifact { item } = conn.one(&Request::Pull { sha: sha.clone() })? else {
                return Err(EXIT_AGENT_ERROR);
            };
            if *json {
                let _ = writeln!(
                    out,
                    "{}",
                    serde_json::to_string_pretty(&item).unwrap_or_default()
                );
            } else if let Some(p) = item.path.as_deref().filter(|_| item.state == "installed") {
                let _ = writeln!(out, "{p}");
                eprintln!(
                    "vm-agent: {} {}: {} files, {}, verified, {:.1}s{}",
                    item.sha,
                    if item.already_installed {
                        "already installed"
                    } else {
                        "installed"
                    },
                    item.files,
                    crate::report::human_bytes(item.bytes),
                    item.duration_secs,
                    if item.evicted.is_empty() {
                        String::new()
                    } else {
                        format!(" (evicted {})", item.evicted.join(", "))
                    }
                );
            } else {
                eprintln!(
                    "vm-agent: {} {}: {}",
                    item.sha,
                    item.state,
                    item.reason.as_deref().unwrap_or("")
                );
            }
            Ok(item.exit_code())
        }
        Cmd::Logs { id, follow } => {
            conn.send(&Request::Logs {
                id: *id,
                follow: *follow,
            })?;
            stream(&mut conn, &mut out).map(|_| 0)
        }
        Cmd::Run {
            name,
            timeout,
            detach,
            argv,
        } => {
            let argv: Vec<String> = match argv.first().map(String::as_str) {
                Some("--") => argv[1..].to_vec(),
                _ => argv.clone(),
            };
            if argv.is_empty() {
                eprintln!("vm-agent: run: no command given");
                return Err(EXIT_USAGE);
            }
            if let Some(t) = timeout {
                config::parse_limit(t).map_err(|e| {
                    eprintln!("vm-agent: --timeout: {e}");
                    EXIT_USAGE
                })?;
            }
            let req = Request::Run {
                argv,
                name: name.clone(),
                timeout: timeout.clone(),
                detach: *detach,
            };
            let Response::Job { job } = conn.one(&req)? else {
                return Err(EXIT_AGENT_ERROR);
            };
            if *detach {
                let _ = writeln!(out, "{}", job.id);
                eprintln!(
                    "vm-agent: job {} submitted; `vm-agent logs -f {}` to follow",
                    job.id, job.id
                );
                return Ok(0);
            }
            match stream(&mut conn, &mut out)? {
                Some(rec) => {
                    if let Some(d) = &rec.detail
                        && !matches!(
                            rec.state,
                            crate::jobs::JobState::Succeeded | crate::jobs::JobState::Failed
                        )
                    {
                        eprintln!("vm-agent: job {} {}: {d}", rec.id, rec.state.as_str());
                    }
                    Ok(rec.cli_exit_code())
                }
                None => {
                    eprintln!("vm-agent: the daemon went away before job {} ended", job.id);
                    Err(EXIT_AGENT_ERROR)
                }
            }
        }
        Cmd::Daemon { .. } | Cmd::CheckConfig | Cmd::ExampleConfig | Cmd::PullWorker => Ok(0),
    }
}

/// Copy `output` lines to `out` until `exit`; returns the final record.
fn stream(conn: &mut Conn, out: &mut impl Write) -> Result<Option<crate::jobs::JobRecord>, i32> {
    loop {
        match conn.next()? {
            Some(Response::Output { data }) => {
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(data)
                    .map_err(|_| EXIT_AGENT_ERROR)?;
                let _ = out.write_all(&bytes);
                let _ = out.flush();
            }
            Some(Response::Warning { message }) => eprintln!("vm-agent: {message}"),
            Some(Response::Exit { job }) => return Ok(Some(job)),
            Some(Response::Error { message, .. }) => {
                eprintln!("vm-agent: {message}");
                return Err(EXIT_AGENT_ERROR);
            }
            Some(_) => {}
            None => return Ok(None),
        }
    }
}
