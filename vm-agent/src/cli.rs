//! The command line: `vm-agent daemon` and the client commands, which talk to the daemon over
//! its socket with a blocking std client (no async runtime: `status` stays fast).
//!
//! Exit codes: `status` 0 ready, 1 degraded, 2 not ready yet; `pull` 0 installed, 1 failed,
//! 2 unavailable; 3 the daemon is not reachable (every command, with a one-line hint); 64 usage
//! error; 78 bad config (`daemon`, `check-config`); 1 any other daemon startup failure. `run`
//! exits with the job's code (128+N if killed by signal N, 124 on timeout, 125 when the agent
//! itself failed or refused the job; 125 also for other agent errors, e.g. no such job).
//!
//! Failures are one [`Error`] (with `exit_code()`), printed once by `main.rs`; what a command
//! reports as its own outcome (`status`'s stage, `run`'s job code) is the `Ok` of [`run`].
//! Progress notes for humans (`cancelling job 3`, a pull's summary) go to stderr through
//! [`note`].

use crate::config::{self, Config, Secrets};
use crate::daemon;
use crate::error::Error;
use crate::protocol::{ErrorKind, Request, Response};
use crate::report::job_line;
use base64::Engine;
use clap::{Parser, Subcommand};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

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
        /// Pass this variable of vm-agent's own environment to the job (repeatable). Values
        /// never go through the command line (use it with `ssh -o SendEnv`).
        #[arg(long = "env", value_name = "NAME")]
        env: Vec<String>,
        /// Pass every variable of vm-agent's own environment whose name starts with PREFIX
        /// to the job, without the prefix (`image-builder fleet run --env` sends them so).
        #[arg(long, value_name = "PREFIX")]
        env_prefix: Option<String>,
        /// Read vm-agent's own standard input to its end and give it to the job as its
        /// stdin (a script, a heredoc: `vm-agent run --stdin -- sh -s <<EOF`).
        #[arg(long)]
        stdin: bool,
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

/// Parse arguments and run. `Ok` is the command's own exit code (0, `status`'s stage, `run`'s
/// job, ...); an `Err` is for `main` to print and exit with.
pub fn run() -> Result<i32, Error> {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        // --help and --version: answers on stdout, not errors.
        Err(e) if !e.use_stderr() => {
            let _ = e.print();
            return Ok(0);
        }
        Err(e) => return Err(Error::Cli(e)),
    };
    init_tracing(matches!(cli.cmd, Cmd::Daemon { .. } | Cmd::PullWorker));
    match &cli.cmd {
        Cmd::Daemon { dry_run } => daemon::main(&config_path(&cli), *dry_run).map(|()| 0),
        Cmd::CheckConfig => check_config(&config_path(&cli)).map(|()| 0),
        Cmd::PullWorker => crate::artifacts::child::main().map(|()| 0),
        Cmd::ExampleConfig => {
            print!("{}", Config::example_toml());
            Ok(0)
        }
        _ => client(&cli),
    }
}

/// A note for the human at the terminal (not an error, not data): `vm-agent: MESSAGE` on
/// stderr.
fn note(message: impl std::fmt::Display) {
    eprintln!("vm-agent: {message}");
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

fn check_config(path: &Path) -> Result<(), Error> {
    let cfg = Config::load(path)?;
    let euid = nix::unistd::geteuid().as_raw();
    Secrets::load(&cfg.paths.secrets_file, euid)?;
    daemon::resolve_run_as(&cfg, euid)?;
    println!("{}: ok", path.display());
    Ok(())
}

struct Conn {
    reader: BufReader<UnixStream>,
    stream: UnixStream,
}

impl Conn {
    fn open(path: &Path) -> Result<Conn, Error> {
        let stream = UnixStream::connect(path).map_err(|source| Error::NotRunning {
            path: path.to_owned(),
            hint: match source.kind() {
                std::io::ErrorKind::PermissionDenied => {
                    "permission denied: run as root or as a member of the socket's group"
                }
                _ => "the daemon is not running: see `systemctl status vm-agent` and `journalctl -u vm-agent`",
            },
            source,
        })?;
        let reader = BufReader::new(stream.try_clone().map_err(Error::LostDaemon)?);
        Ok(Conn { reader, stream })
    }

    fn send(&mut self, req: &Request) -> Result<(), Error> {
        let mut line = serde_json::to_vec(req)
            .map_err(|e| Error::Agent(format!("cannot encode the request: {e}")))?;
        line.push(b'\n');
        self.stream.write_all(&line).map_err(Error::LostDaemon)
    }

    /// Next response; `None` at end of stream.
    fn next(&mut self) -> Result<Option<Response>, Error> {
        let mut line = String::new();
        match self.reader.read_line(&mut line) {
            Ok(0) => Ok(None),
            Ok(_) => serde_json::from_str(&line)
                .map(Some)
                .map_err(|e| Error::BadAnswer(e.to_string())),
            Err(e) => Err(Error::LostDaemon(e)),
        }
    }

    fn one(&mut self, req: &Request) -> Result<Response, Error> {
        self.send(req)?;
        match self.next()? {
            Some(Response::Error { kind, message }) => Err(match kind {
                ErrorKind::BadRequest => Error::Usage(message),
                _ => Error::Agent(message),
            }),
            Some(r) => Ok(r),
            None => Err(Error::Closed),
        }
    }
}

/// The daemon answered, but not with what `what` expects.
fn unexpected(what: &str) -> Error {
    Error::BadAnswer(format!("expected {what}"))
}

/// Flag values the client can judge itself: a usage error comes before any talk with the
/// daemon (64 whether or not it is running).
fn check_args(cmd: &Cmd) -> Result<(), Error> {
    match cmd {
        Cmd::Hold {
            duration: Some(d), ..
        } => config::parse_limit(d)
            .map(|_| ())
            .map_err(|e| Error::Usage(format!("--for: {e}"))),
        Cmd::Run { timeout, argv, .. } => {
            if command_of(argv).is_empty() {
                return Err(Error::Usage("run: no command given".into()));
            }
            match timeout {
                Some(t) => config::parse_limit(t)
                    .map(|_| ())
                    .map_err(|e| Error::Usage(format!("--timeout: {e}"))),
                None => Ok(()),
            }
        }
        _ => Ok(()),
    }
}

/// The job's environment from vm-agent's own: `--env NAME` and `--env-prefix PREFIX`.
fn job_env(names: &[String], prefix: Option<&str>) -> Result<crate::protocol::JobEnv, Error> {
    let mut env = Vec::new();
    for name in names {
        if let Some(p) = crate::protocol::JobEnv::name_problem(name) {
            return Err(Error::Usage(format!("--env: {p}")));
        }
        let value = std::env::var(name).map_err(|_| {
            Error::Usage(format!("--env {name}: not set in vm-agent's environment"))
        })?;
        env.push((name.clone(), value));
    }
    if let Some(prefix) = prefix.filter(|p| !p.is_empty()) {
        for (k, v) in std::env::vars() {
            if let Some(name) = k.strip_prefix(prefix).filter(|n| !n.is_empty()) {
                env.push((name.to_owned(), v));
            }
        }
    }
    Ok(crate::protocol::JobEnv(env))
}

/// `run`'s command: its arguments without the `--` that may lead them.
fn command_of(argv: &[String]) -> &[String] {
    match argv.first().map(String::as_str) {
        Some("--") => &argv[1..],
        _ => argv,
    }
}

fn client(cli: &Cli) -> Result<i32, Error> {
    check_args(&cli.cmd)?;
    let mut conn = Conn::open(&socket_path(cli))?;
    let mut out = std::io::stdout().lock();
    match &cli.cmd {
        Cmd::Status { json } => {
            let Response::Status { report } = conn.one(&Request::Status)? else {
                return Err(unexpected("a status report"));
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
                return Err(unexpected("the job list"));
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
            note(format_args!("cancelling job {id}"));
            Ok(0)
        }
        Cmd::Hold { duration, reason } => {
            if let Response::Ok { message } = conn.one(&Request::Hold {
                duration: duration.clone(),
                reason: reason.clone(),
            })? {
                note(message);
            }
            Ok(0)
        }
        Cmd::Release => {
            conn.one(&Request::Release)?;
            note("released");
            Ok(0)
        }
        Cmd::Pull { sha, json } => {
            let Response::Artifact { item } = conn.one(&Request::Pull { sha: sha.clone() })? else {
                return Err(unexpected("an artifact"));
            };
            if *json {
                let _ = writeln!(
                    out,
                    "{}",
                    serde_json::to_string_pretty(&item).unwrap_or_default()
                );
            }
            if item.exit_code() != 0 {
                return Err(Error::Pull(item));
            }
            if !*json {
                if let Some(p) = &item.path {
                    let _ = writeln!(out, "{p}");
                }
                note(format_args!(
                    "{} {}: {} files, {}, verified, {:.1}s{}",
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
                ));
            }
            Ok(0)
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
            env,
            env_prefix,
            stdin,
            argv,
        } => {
            let stdin = if *stdin {
                let mut text = String::new();
                std::io::Read::read_to_string(&mut std::io::stdin(), &mut text).map_err(|e| {
                    Error::Usage(format!("--stdin: cannot read text from stdin: {e}"))
                })?;
                Some(crate::protocol::JobStdin(text))
            } else {
                None
            };
            let req = Request::Run {
                argv: command_of(argv).to_vec(),
                name: name.clone(),
                timeout: timeout.clone(),
                detach: *detach,
                env: job_env(env, env_prefix.as_deref())?,
                stdin,
            };
            let Response::Job { job } = conn.one(&req)? else {
                return Err(unexpected("a job"));
            };
            if *detach {
                let _ = writeln!(out, "{}", job.id);
                note(format_args!(
                    "job {} submitted; `vm-agent logs -f {}` to follow",
                    job.id, job.id
                ));
                return Ok(0);
            }
            let Some(rec) = stream(&mut conn, &mut out)? else {
                return Err(Error::JobLost(job.id));
            };
            // Cancelled, timed out or lost with a reason: say why, with the job's own code.
            if rec.detail.is_some()
                && !matches!(
                    rec.state,
                    crate::jobs::JobState::Succeeded | crate::jobs::JobState::Failed
                )
            {
                return Err(Error::Job(Box::new(rec)));
            }
            Ok(rec.cli_exit_code())
        }
        Cmd::Daemon { .. } | Cmd::CheckConfig | Cmd::ExampleConfig | Cmd::PullWorker => Ok(0),
    }
}

/// Copy `output` lines to `out` until `exit`; returns the final record.
fn stream(conn: &mut Conn, out: &mut impl Write) -> Result<Option<crate::jobs::JobRecord>, Error> {
    loop {
        match conn.next()? {
            Some(Response::Output { data }) => {
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(data)
                    .map_err(|e| Error::BadAnswer(format!("job output: {e}")))?;
                let _ = out.write_all(&bytes);
                let _ = out.flush();
            }
            Some(Response::Warning { message }) => note(message),
            Some(Response::Exit { job }) => return Ok(Some(job)),
            Some(Response::Error { message, .. }) => return Err(Error::Agent(message)),
            Some(_) => {}
            None => return Ok(None),
        }
    }
}
