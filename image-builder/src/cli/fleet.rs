//! `image-builder fleet …`: argument types only (the commands are in `commands::fleet`).

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand};

use crate::fleet::FleetName;
use crate::fleet::state::FleetBackend;

/// `image-builder fleet`.
#[derive(Debug, Args)]
pub struct FleetArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: FleetCommand,
}

/// The fleet verbs.
#[derive(Debug, Subcommand)]
pub enum FleetCommand {
    /// Boot workers from the golden image and wait until they are ready (idempotent).
    Up(Box<UpArgs>),
    /// List workers, from the cloud's tags (works with no local state).
    Ls(LsArgs),
    /// Run a command on a worker (or all) through `vm-agent run` over pinned SSH.
    Run(RunArgs),
    /// SSH to a worker with its pinned host key.
    Ssh(SshArgs),
    /// Print an ssh_config block for the fleet (for `Include` in ~/.ssh/config).
    SshConfig(SshConfigArgs),
    /// Delete a fleet's workers, each confirmed gone.
    Down(DownArgs),
    /// Delete workers past their deadline or powered off too long (for a timer).
    Reap(ReapArgs),
    /// Render the worker user-data (for fleets declared in Terraform).
    UserData(UserDataArgs),
}

/// How to reach the DigitalOcean API, and how often to poll it.
#[derive(Clone, Debug, Default, Args)]
pub struct Api {
    /// API access (the same flags as `bake` and `reap`).
    #[command(flatten)]
    pub conn: super::digitalocean::ConnArgs,
    /// How often droplets and agents are polled.
    #[arg(long, hide = true, default_value = "5s", value_parser = humantime::parse_duration)]
    pub poll: Duration,
}

/// Where the workers' secrets come from (files are 0600; never argv).
#[derive(Clone, Debug, Default, Args)]
pub struct SecretArgs {
    /// The workers' own token, able to delete droplets [default: $DIGITALOCEAN_WORKER_TOKEN].
    #[arg(long, value_name = "FILE")]
    pub worker_token_file: Option<PathBuf>,
    /// Workers get no token: an idle worker only powers off (it still bills until
    /// `fleet reap` deletes it).
    #[arg(long)]
    pub power_off_only: bool,
    /// A TOML file (0600) with `access_key_id` and `secret_access_key` of a read-only
    /// Space key for the workers [default: $WORKER_SPACES_ACCESS_KEY_ID and
    /// $WORKER_SPACES_SECRET_ACCESS_KEY; none: the workers pull without a key].
    #[arg(long, value_name = "FILE")]
    pub worker_space_key_file: Option<PathBuf>,
    /// Each worker's agent POSTs its readiness report (JSON, `vm-agent status --json`'s)
    /// here, with a bearer token when one is given.
    #[arg(long, value_name = "URL")]
    pub callback_url: Option<String>,
    /// A 0600 file holding the callback's bearer token
    /// [default: $IMAGE_BUILDER_CALLBACK_TOKEN].
    #[arg(long, value_name = "FILE", requires = "callback_url")]
    pub callback_token_file: Option<PathBuf>,
}

/// `fleet up`.
#[derive(Debug, Args)]
pub struct UpArgs {
    /// The image spec the golden image was baked from.
    pub spec: PathBuf,
    /// Workers wanted in all (existing healthy workers count).
    #[arg(short = 'n', long = "count", default_value_t = 1)]
    pub count: usize,
    /// The golden image: DigitalOcean image id or name, or a qcow2 path (qemu)
    /// [default: the newest image of the spec's name].
    #[arg(long)]
    pub image: Option<String>,
    /// Droplet size [default: the spec's digitalocean.size].
    #[arg(long)]
    pub size: Option<String>,
    /// Region [default: the spec's digitalocean.region].
    #[arg(long)]
    pub region: Option<String>,
    /// The fleet's name [default: the spec's name].
    #[arg(long)]
    pub name: Option<FleetName>,
    /// The build sha the workers pull [default: the spec's agent.artifact.sha, else
    /// `git rev-parse HEAD` of the spec's repository].
    #[arg(long)]
    pub sha: Option<String>,
    /// Where the workers run.
    #[arg(long, value_enum, default_value_t = FleetBackend::Digitalocean)]
    pub backend: FleetBackend,
    /// Confirm the spending without asking.
    #[arg(long)]
    pub yes: bool,
    /// Return once the workers are active, without waiting for their agents.
    #[arg(long)]
    pub no_wait: bool,
    /// Each worker takes one job and then deletes itself (whatever the idle timer says).
    #[arg(long)]
    pub one_shot: bool,
    /// How long a worker may take to become ready before it is deleted.
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    pub ready_timeout: Duration,
    /// Create a worker that failed again, up to this many times: one not ready in time
    /// or degraded is deleted and replaced; a batch whose region refuses the size moves
    /// to the next region that offers it and holds the image (DigitalOcean).
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub retry: u32,
    /// Print the fleet as JSON on stdout at the end.
    #[arg(long)]
    pub json: bool,
    /// The API URL the workers delete themselves through [default: the one used here].
    #[arg(long, hide = true)]
    pub worker_api_url: Option<String>,
    /// The metadata service URL the workers use [default: DigitalOcean's].
    #[arg(long, hide = true)]
    pub worker_metadata_url: Option<String>,
    #[command(flatten)]
    pub secrets: SecretArgs,
    #[command(flatten)]
    pub api: Api,
}

/// `fleet ls`.
#[derive(Debug, Args)]
pub struct LsArgs {
    /// The fleet [default: every fleet].
    pub fleet: Option<FleetName>,
    /// Also ask each agent for its status (over pinned SSH).
    #[arg(long)]
    pub status: bool,
    /// JSON on stdout.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub api: Api,
}

/// `fleet run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// The fleet (the only one with local state when there is one).
    #[arg(long)]
    pub fleet: Option<FleetName>,
    /// The worker [default: a ready one with the fewest running jobs].
    #[arg(long, conflicts_with = "all")]
    pub worker: Option<String>,
    /// Every worker, output prefixed by worker; exits with the first non-zero code.
    #[arg(long)]
    pub all: bool,
    /// Copy this remote path back after the job (repeatable); with --all into `<worker>/`.
    #[arg(long = "get", value_name = "REMOTE_PATH")]
    pub get: Vec<String>,
    /// Pass this variable of your environment to the job (repeatable). Its value goes
    /// through the SSH protocol (`SendEnv`), never on a command line.
    #[arg(long = "env", value_name = "NAME")]
    pub env: Vec<String>,
    /// Give the job this command's standard input (a script, a heredoc:
    /// `fleet run --stdin -- sh -s <<EOF`); with --all, each worker gets a copy.
    /// Without it the job's stdin is empty.
    #[arg(long)]
    pub stdin: bool,
    /// The command and its arguments.
    #[arg(required = true, allow_hyphen_values = true, last = true)]
    pub argv: Vec<String>,
}

/// `fleet ssh`.
#[derive(Debug, Args)]
pub struct SshArgs {
    /// The worker (`<fleet>-<n>`).
    pub worker: String,
    /// A command to run instead of a shell.
    #[arg(allow_hyphen_values = true, last = true)]
    pub argv: Vec<String>,
}

/// `fleet ssh-config`.
#[derive(Debug, Args)]
pub struct SshConfigArgs {
    /// The fleet [default: every fleet with local state].
    pub fleet: Option<FleetName>,
}

/// `fleet down`.
#[derive(Debug, Args)]
pub struct DownArgs {
    /// The fleet.
    #[arg(required_unless_present = "all")]
    pub fleet: Option<FleetName>,
    /// Every fleet.
    #[arg(long, conflicts_with = "fleet")]
    pub all: bool,
    /// Where the fleet runs.
    #[arg(long, value_enum, default_value_t = FleetBackend::Digitalocean)]
    pub backend: FleetBackend,
    /// Confirm without asking (needed off a terminal).
    #[arg(long)]
    pub yes: bool,
    /// Delete workers whose agent reports a running job too.
    #[arg(long)]
    pub force: bool,
    /// JSON on stdout.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub api: Api,
}

/// `fleet reap`.
#[derive(Debug, Args)]
pub struct ReapArgs {
    /// Delete (without it: report what would be deleted).
    #[arg(long)]
    pub yes: bool,
    /// A worker powered off this long is deleted (it still bills).
    #[arg(long, default_value = "15m", value_parser = humantime::parse_duration)]
    pub off_grace: Duration,
    /// A worker whose agent is unreachable over pinned SSH this long is deleted (fleets
    /// with local state only).
    #[arg(long, default_value = "30m", value_parser = humantime::parse_duration)]
    pub unreachable_grace: Duration,
    /// JSON on stdout.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub api: Api,
}

/// `fleet user-data`.
#[derive(Debug, Args)]
pub struct UserDataArgs {
    /// The image spec.
    pub spec: PathBuf,
    /// Write it here (0600: it holds the workers' secrets) instead of stdout.
    #[arg(short = 'o', long)]
    pub output: Option<PathBuf>,
    /// The fleet whose identity and pinned host key it gets [default: the spec's name].
    #[arg(long)]
    pub name: Option<FleetName>,
    /// The build sha the workers pull.
    #[arg(long)]
    pub sha: Option<String>,
    /// Each worker takes one job and then deletes itself.
    #[arg(long)]
    pub one_shot: bool,
    #[command(flatten)]
    pub secrets: SecretArgs,
}
