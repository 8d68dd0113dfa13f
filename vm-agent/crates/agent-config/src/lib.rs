//! The agent's configuration and secrets files: a **contract** with the image-builder
//! renderer, which writes both files into a worker's user-data.
//!
//! * `config.toml` (default `/etc/vm-agent/config.toml`, overridable with `--config` or
//!   `VM_AGENT_CONFIG`): every path and timer the agent uses. Unknown keys are refused.
//! * `secrets.toml` (default `/etc/vm-agent/secrets.toml`, path in `paths.secrets_file`): the
//!   DigitalOcean token, the readiness-callback bearer token and the Space (S3) keys. It must be
//!   mode 0600 (no group/other bits) and owned by the user the daemon runs as (root in
//!   production).
//!
//! One definition for both sides: image-builder, `run-local` and the Packer plugin build a
//! [`Config`] and serialize it with serde; the agent parses it with [`Config::from_toml`].
//! This crate depends only on `serde`, `toml`, `humantime` and `thiserror`.
//! Durations are strings parsed with `humantime` (`"30m"`, `"1h 30m"`); timers (`Limit`) also
//! accept `"never"`, and a zero duration is refused: `0` never means "disabled".

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Version of the config/secrets contract written by the renderer.
pub const CONFIG_VERSION: u32 = 1;
/// Default config path (where the renderer writes the config on a worker).
pub const DEFAULT_CONFIG_PATH: &str = "/etc/vm-agent/config.toml";
/// Default secrets path (`paths.secrets_file`; where the renderer writes the secrets).
pub const DEFAULT_SECRETS_PATH: &str = "/etc/vm-agent/secrets.toml";
/// Default signing region of an S3-compatible store (`us-east-1` works for Spaces).
pub const DEFAULT_S3_REGION: &str = "us-east-1";

/// The artifact contract's rule for a build sha (`builds/<sha>/` in the bucket): 7 to 64
/// lowercase hex digits. Shared by this config's `artifacts.sha` and artifact-store's manifest.
pub fn is_build_sha(sha: &str) -> bool {
    (7..=64).contains(&sha.len())
        && sha
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}
/// Environment variable overriding the config path.
pub const CONFIG_ENV: &str = "VM_AGENT_CONFIG";

/// Errors loading the config or secrets file. Every message names the file and, where the
/// parser knows it, the key (TOML errors quote the offending line).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid config {path}: field `{field}`: {message}")]
    Field {
        path: PathBuf,
        field: &'static str,
        message: String,
    },
    #[error(
        "secrets file {path} has mode {mode:04o}; it must not be readable by group or others (run `chmod 600 {path}`)"
    )]
    SecretsMode { path: PathBuf, mode: u32 },
    #[error(
        "secrets file {path} is owned by uid {owner}; it must be owned by uid {expected} (the user vm-agent runs as)"
    )]
    SecretsOwner {
        path: PathBuf,
        owner: u32,
        expected: u32,
    },
}

/// A timer limit: a positive duration or `never`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    Never,
    After(Duration),
}

impl Limit {
    pub fn duration(self) -> Option<Duration> {
        match self {
            Limit::Never => None,
            Limit::After(d) => Some(d),
        }
    }
}

impl fmt::Display for Limit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Limit::Never => f.write_str("never"),
            Limit::After(d) => write!(f, "{}", humantime::format_duration(*d)),
        }
    }
}

/// Parse a limit: `never` or a positive duration ([`parse_positive_duration`]). This is the
/// one rule for every timer: the image spec's `agent.*` timers, vm-agent's config and the
/// command-line flags that override them all parse with it.
pub fn parse_limit(s: &str) -> Result<Limit, String> {
    let t = s.trim();
    if t.eq_ignore_ascii_case("never") {
        return Ok(Limit::Never);
    }
    parse_positive_duration(t).map(Limit::After)
}

impl std::str::FromStr for Limit {
    type Err = String;
    fn from_str(s: &str) -> Result<Limit, String> {
        parse_limit(s)
    }
}

/// Parse a positive duration with a unit (`"90s"`, `"30m"`, `"1h30m"`). Zero is refused (a
/// zero timeout is a classic way to say "never" by accident), and so is a bare number, whose
/// unit would be a guess.
pub fn parse_positive_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let zero = || {
        format!(
            "invalid duration {s:?}: 0 is not allowed (write \"never\" where that is meant and allowed)"
        )
    };
    if !t.is_empty() && t.chars().all(|c| c.is_ascii_digit()) {
        if t.chars().all(|c| c == '0') {
            return Err(zero());
        }
        return Err(format!(
            "invalid duration {s:?}: no unit: a unit is required, e.g. \"{t}s\" or \"{t}m\""
        ));
    }
    let d = humantime::parse_duration(t).map_err(|e| {
        format!(
            "invalid duration {s:?}: not a duration: {e} (expected e.g. \"90s\", \"30m\", \"1h30m\")"
        )
    })?;
    if d.is_zero() {
        return Err(zero());
    }
    Ok(d)
}

/// Parse a duration where zero is allowed (`"0"`, `"0s"`, `"500ms"`, `"10s"`); a bare number
/// other than 0 is refused because its unit would be a guess.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    if !t.is_empty() && t.chars().all(|c| c == '0') {
        return Ok(Duration::ZERO);
    }
    if t.eq_ignore_ascii_case("never") {
        return Err(format!(
            "invalid duration {s:?}: \"never\" is not allowed here: expected a duration such as \"30m\""
        ));
    }
    match parse_positive_duration(t) {
        Ok(d) => Ok(d),
        Err(_) if humantime::parse_duration(t).is_ok_and(|d| d.is_zero()) => Ok(Duration::ZERO),
        Err(e) => Err(e),
    }
}

struct DurationVisitor {
    limit: bool,
}

/// Either a `Duration` or a `Limit`, depending on the visitor.
enum Parsed {
    Duration(Duration),
    Limit(Limit),
}

impl serde::de::Visitor<'_> for DurationVisitor {
    type Value = Parsed;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.limit {
            f.write_str("a duration string like \"30m\", or \"never\"")
        } else {
            f.write_str("a duration string like \"10s\"")
        }
    }
    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Parsed, E> {
        if self.limit {
            parse_limit(v).map(Parsed::Limit).map_err(E::custom)
        } else {
            parse_duration(v).map(Parsed::Duration).map_err(E::custom)
        }
    }
    // YAML and TOML hand unquoted numbers over as integers: the same rules as for the text.
    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Parsed, E> {
        self.visit_str(&v.to_string())
    }
    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Parsed, E> {
        self.visit_str(&v.to_string())
    }
    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Parsed, E> {
        self.visit_i64(i64::try_from(v).unwrap_or(i64::MAX))
    }
}

impl<'de> Deserialize<'de> for Limit {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match d.deserialize_any(DurationVisitor { limit: true })? {
            Parsed::Limit(l) => Ok(l),
            Parsed::Duration(_) => Err(serde::de::Error::custom("expected a limit")),
        }
    }
}

impl Serialize for Limit {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// A plain duration (zero allowed where the field says so).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dur(pub Duration);

impl fmt::Display for Dur {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_zero() {
            f.write_str("0s")
        } else {
            write!(f, "{}", humantime::format_duration(self.0))
        }
    }
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match d.deserialize_any(DurationVisitor { limit: false })? {
            Parsed::Duration(v) => Ok(Dur(v)),
            Parsed::Limit(_) => Err(serde::de::Error::custom("expected a duration")),
        }
    }
}

impl Serialize for Dur {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

fn secs(n: u64) -> Dur {
    Dur(Duration::from_secs(n))
}

/// The whole config file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Contract version; must be 1.
    #[serde(default = "default_version")]
    pub version: u32,
    #[serde(default)]
    pub paths: Paths,
    #[serde(default)]
    pub socket: SocketConfig,
    #[serde(default)]
    pub cloud_init: CloudInitConfig,
    #[serde(default)]
    pub readiness: ReadinessConfig,
    #[serde(default)]
    pub jobs: JobsConfig,
    #[serde(default)]
    pub timers: TimersConfig,
    #[serde(default)]
    pub sessions: SessionsConfig,
    #[serde(default)]
    pub destroy: DestroyConfig,
    /// Sha-keyed build artifacts pulled from an S3-compatible store. Absent: no artifacts
    /// (`status` shows `none`, `vm-agent pull` is refused).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifacts: Option<ArtifactsConfig>,
}

fn default_version() -> u32 {
    CONFIG_VERSION
}

impl Default for Config {
    fn default() -> Self {
        Config {
            version: CONFIG_VERSION,
            paths: Paths::default(),
            socket: SocketConfig::default(),
            cloud_init: CloudInitConfig::default(),
            readiness: ReadinessConfig::default(),
            jobs: JobsConfig::default(),
            timers: TimersConfig::default(),
            sessions: SessionsConfig::default(),
            destroy: DestroyConfig::default(),
            artifacts: None,
        }
    }
}

/// The `[artifacts]` table: where builds are published (`builds/<sha>/…` +
/// `builds/<sha>/manifest.json`, see image-builder's ARTIFACTS.md) and what to pull at boot.
/// The keys are in the secrets file (`spaces_access_key_id`, `spaces_secret_access_key`), else
/// in the environment (`SPACES_ACCESS_KEY_ID`/`SPACES_SECRET_ACCESS_KEY`, then `AWS_*`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArtifactsConfig {
    /// Bucket (Space) name.
    pub bucket: String,
    /// Endpoint URL, e.g. `https://fra1.digitaloceanspaces.com`.
    pub endpoint: String,
    /// Signing region (`us-east-1` works for Spaces).
    #[serde(default = "default_region")]
    pub region: String,
    /// Path-style addressing (`endpoint/bucket/key`) instead of virtual-host style.
    #[serde(default)]
    pub path_style: bool,
    /// The build pulled during `fetching-artifacts` (a git sha, 7–64 lowercase hex digits).
    /// Unset: nothing is pulled at boot; `vm-agent pull SHA` still works.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha: Option<String>,
    /// `true`: an unavailable or failed boot pull makes readiness `degraded`. `false`: readiness
    /// continues to `ready` and `status` says "artifact unavailable: <reason>".
    #[serde(default)]
    pub required: bool,
    /// Bound on all installed builds under `<state_dir>/artifacts/`; other shas are evicted,
    /// least recently used first. Unset: no bound (free space still checked).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_max_bytes: Option<u64>,
    /// Free space to leave on the state filesystem after a download.
    #[serde(default = "default_min_free_bytes")]
    pub min_free_bytes: u64,
    /// GET requests in flight at most (files and ranged parts together).
    #[serde(default = "default_concurrency")]
    pub concurrency: u32,
    /// Limit on one pull (boot or on demand), `never` allowed; when it passes the pull counts
    /// as failed (partial files are kept and resumed by the next pull).
    #[serde(default = "default_pull_timeout")]
    pub timeout: Limit,
}

/// [`DEFAULT_S3_REGION`] as an owned string (serde default).
pub fn default_region() -> String {
    DEFAULT_S3_REGION.into()
}
fn default_min_free_bytes() -> u64 {
    ArtifactsConfig::DEFAULT_MIN_FREE_BYTES
}
fn default_concurrency() -> u32 {
    ArtifactsConfig::DEFAULT_CONCURRENCY
}
fn default_pull_timeout() -> Limit {
    Limit::After(Duration::from_secs(3600))
}

impl ArtifactsConfig {
    /// GET requests in flight at most (the pull engine's default too).
    pub const DEFAULT_CONCURRENCY: u32 = 64;
    /// Free space left on the state filesystem after a download (the pull engine's default too).
    pub const DEFAULT_MIN_FREE_BYTES: u64 = 64 << 20;

    /// A section with every optional field at its default.
    pub fn new(bucket: String, endpoint: String) -> ArtifactsConfig {
        ArtifactsConfig {
            bucket,
            endpoint,
            region: default_region(),
            path_style: false,
            sha: None,
            required: false,
            cache_max_bytes: None,
            min_free_bytes: default_min_free_bytes(),
            concurrency: default_concurrency(),
            timeout: default_pull_timeout(),
        }
    }

    /// An example section (documentation and tests).
    pub fn example() -> ArtifactsConfig {
        ArtifactsConfig {
            bucket: "my-space".into(),
            endpoint: "https://fra1.digitaloceanspaces.com".into(),
            region: default_region(),
            path_style: false,
            sha: None,
            required: false,
            cache_max_bytes: None,
            min_free_bytes: default_min_free_bytes(),
            concurrency: default_concurrency(),
            timeout: default_pull_timeout(),
        }
    }
}

/// Files and directories.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Paths {
    /// Per-boot state: the ready file (`<runtime_dir>/ready`).
    pub runtime_dir: PathBuf,
    /// Persistent state: job records and logs (`<state_dir>/jobs/`), the hold.
    pub state_dir: PathBuf,
    /// The secrets file (TOML, mode 0600, owned by the daemon's user).
    pub secrets_file: PathBuf,
    /// Where jobs' build user and the socket group are looked up (parsed directly, no NSS).
    pub passwd_file: PathBuf,
    pub group_file: PathBuf,
    /// Directory holding `ssh_host_*_key.pub`, fingerprinted into the readiness report.
    pub ssh_host_key_dir: PathBuf,
}

impl Default for Paths {
    fn default() -> Self {
        Paths {
            runtime_dir: "/run/vm-agent".into(),
            state_dir: "/var/lib/vm-agent".into(),
            secrets_file: DEFAULT_SECRETS_PATH.into(),
            passwd_file: "/etc/passwd".into(),
            group_file: "/etc/group".into(),
            ssh_host_key_dir: "/etc/ssh".into(),
        }
    }
}

/// The unix socket the CLI talks to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SocketConfig {
    pub path: PathBuf,
    /// Group owning the socket; its members (and root) may submit jobs. Unset: the daemon's gid.
    pub group: Option<String>,
    /// Octal file mode, e.g. "0660". "0666" lets every local user read status (not submit jobs).
    pub mode: String,
}

impl Default for SocketConfig {
    fn default() -> Self {
        SocketConfig {
            path: "/run/vm-agent/agent.sock".into(),
            group: None,
            mode: "0660".into(),
        }
    }
}

impl SocketConfig {
    pub fn mode_bits(&self) -> Result<u32, String> {
        let m = u32::from_str_radix(self.mode.trim_start_matches("0o"), 8)
            .map_err(|_| format!("`{}` is not an octal mode like \"0660\"", self.mode))?;
        if m > 0o777 {
            return Err(format!("`{}` is larger than 0777", self.mode));
        }
        if m & 0o600 != 0o600 {
            return Err(format!("`{}` must let the owner read and write", self.mode));
        }
        Ok(m)
    }
}

/// Waiting for cloud-init.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CloudInitConfig {
    /// Wait for cloud-init at all (false: skip the stage, e.g. on an image without cloud-init).
    pub wait: bool,
    /// Directories searched in order for `status.json` / `result.json`.
    pub status_dirs: Vec<PathBuf>,
    /// Give up after this long: readiness becomes `degraded`.
    pub timeout: Limit,
    /// How often the files are read.
    pub poll_interval: Dur,
}

impl Default for CloudInitConfig {
    fn default() -> Self {
        CloudInitConfig {
            wait: true,
            status_dirs: vec!["/run/cloud-init".into(), "/var/lib/cloud/data".into()],
            timeout: Limit::After(Duration::from_secs(15 * 60)),
            poll_interval: secs(1),
        }
    }
}

/// What happens when the worker reaches a final readiness stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReadinessConfig {
    /// POST the readiness report (JSON) here when `ready` or `degraded`. The bearer token is
    /// `callback_token` in the secrets file.
    pub callback_url: Option<String>,
    pub callback_timeout: Dur,
    pub callback_attempts: u32,
}

impl Default for ReadinessConfig {
    fn default() -> Self {
        ReadinessConfig {
            callback_url: None,
            callback_timeout: secs(10),
            callback_attempts: 3,
        }
    }
}

/// Jobs submitted with `vm-agent run`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JobsConfig {
    /// Build user jobs run as (looked up in `paths.passwd_file`). Unset: the daemon's own user.
    /// Ignored (with a note in status) when the daemon is not root.
    pub user: Option<String>,
    /// Jobs running at once; more are queued.
    pub max_concurrent: u32,
    /// SIGTERM → SIGKILL grace period on cancel or timeout.
    pub kill_grace: Dur,
    /// Timeout for jobs submitted without `--timeout`.
    pub default_timeout: Limit,
    /// PATH given to jobs.
    pub path_env: String,
}

impl Default for JobsConfig {
    fn default() -> Self {
        JobsConfig {
            user: None,
            max_concurrent: 2,
            kill_grace: secs(10),
            default_timeout: Limit::Never,
            path_env: "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
        }
    }
}

/// Self-destruct timers. Any of them firing ends the machine.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TimersConfig {
    /// No running job, no hold, no SSH session for this long (counted from readiness).
    pub idle_timeout: Limit,
    /// Since the machine booted.
    pub max_lifetime: Limit,
    /// No job was ever submitted this long after readiness.
    pub no_job_timeout: Limit,
    /// Between warning logged-in users and destroying.
    pub warn_grace: Dur,
    /// How often the timers and guards are evaluated.
    pub tick: Dur,
    /// One-shot worker: once its first job has ended (and no other runs or waits), the
    /// machine ends, whatever the idle timer says (the shape of ephemeral CI runners).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub one_shot: bool,
}

impl Default for TimersConfig {
    fn default() -> Self {
        TimersConfig {
            idle_timeout: Limit::After(Duration::from_secs(30 * 60)),
            max_lifetime: Limit::After(Duration::from_secs(12 * 3600)),
            no_job_timeout: Limit::After(Duration::from_secs(60 * 60)),
            warn_grace: secs(60),
            tick: secs(1),
            one_shot: false,
        }
    }
}

/// How logged-in SSH sessions are found (no utmp): logind's session files plus a scan of
/// `/proc` for `sshd: user@tty` session processes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SessionsConfig {
    pub logind_dir: PathBuf,
    pub proc_dir: PathBuf,
    /// Where session ttys live (`<dev_dir>/pts/N`), for the shutdown warning.
    pub dev_dir: PathBuf,
    /// Write a warning to logged-in users' terminals before destroying.
    pub warn_users: bool,
}

impl Default for SessionsConfig {
    fn default() -> Self {
        SessionsConfig {
            logind_dir: "/run/systemd/sessions".into(),
            proc_dir: "/proc".into(),
            dev_dir: "/dev".into(),
            warn_users: true,
        }
    }
}

/// How the machine ends itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Provider {
    /// DELETE its own droplet through the DigitalOcean API.
    Digitalocean,
    /// Run `poweroff_command` (QEMU workers).
    Local,
    /// Log and report what would happen; do nothing.
    DryRun,
}

impl fmt::Display for Provider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Provider::Digitalocean => "digitalocean",
            Provider::Local => "local",
            Provider::DryRun => "dry-run",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DestroyConfig {
    pub provider: Provider,
    /// DigitalOcean: refuse to delete unless the droplet carries this tag.
    pub ephemeral_tag: String,
    /// DigitalOcean metadata service base URL.
    pub metadata_url: String,
    /// DigitalOcean API base URL.
    pub api_url: String,
    /// DELETE attempts (429 and 5xx are retried) before falling back to power-off.
    pub max_attempts: u32,
    /// First retry wait; doubles each attempt up to `retry_max_wait` (429 uses `retry-after`).
    pub retry_base_wait: Dur,
    pub retry_max_wait: Dur,
    /// Command run by the `local` provider and as DigitalOcean's last resort (argv, no shell).
    pub poweroff_command: Vec<String>,
    /// A file (opened for appending, not created) the agent writes one line to just before
    /// it destroys the machine: which timer fired, why, and the jobs running and queued.
    /// image-builder's workers use `/dev/console`, so the reason is on the serial console.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub record_file: Option<PathBuf>,
}

impl Default for DestroyConfig {
    fn default() -> Self {
        DestroyConfig {
            provider: Provider::DryRun,
            ephemeral_tag: "ephemeral".into(),
            metadata_url: "http://169.254.169.254".into(),
            api_url: "https://api.digitalocean.com".into(),
            max_attempts: 5,
            retry_base_wait: secs(1),
            retry_max_wait: secs(30),
            poweroff_command: vec!["systemctl".into(), "poweroff".into()],
            record_file: None,
        }
    }
}

impl Config {
    /// The default config, which doubles as a documented example.
    pub fn example() -> Config {
        Config::default()
    }

    /// The default config plus a commented-out `[artifacts]` example (`vm-agent example-config`).
    pub fn example_toml() -> String {
        #[derive(Serialize)]
        struct Section {
            artifacts: ArtifactsConfig,
        }
        let mut out = Config::example().to_toml();
        out.push_str(
            "\n## Sha-keyed build artifacts (optional): uncomment to pull a build at boot.\n\
             ## Keys go in the secrets file (spaces_access_key_id, spaces_secret_access_key).\n",
        );
        let section = toml::to_string_pretty(&Section {
            artifacts: ArtifactsConfig::example(),
        })
        .unwrap_or_default();
        for line in section.lines() {
            out.push_str("# ");
            out.push_str(line);
            out.push('\n');
        }
        out
    }

    /// Render as TOML (what the image-builder renderer writes).
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot render: {e}\n"))
    }

    /// Parse and validate config text. `path` is only used in messages.
    pub fn from_toml(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let cfg: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string().trim_end().to_string(),
        })?;
        cfg.validate(path)?;
        Ok(cfg)
    }

    /// Read, parse and validate the config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Config::from_toml(&text, path)
    }

    fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let field = |field: &'static str, message: String| ConfigError::Field {
            path: path.to_path_buf(),
            field,
            message,
        };
        if self.version != CONFIG_VERSION {
            return Err(field(
                "version",
                format!(
                    "unsupported version {}; this agent reads version {CONFIG_VERSION}",
                    self.version
                ),
            ));
        }
        self.socket
            .mode_bits()
            .map_err(|m| field("socket.mode", m))?;
        if self.jobs.max_concurrent == 0 {
            return Err(field("jobs.max_concurrent", "must be at least 1".into()));
        }
        if self.cloud_init.poll_interval.0.is_zero() {
            return Err(field(
                "cloud_init.poll_interval",
                "must be more than 0".into(),
            ));
        }
        if self.timers.tick.0.is_zero() {
            return Err(field("timers.tick", "must be more than 0".into()));
        }
        if self.destroy.max_attempts == 0 {
            return Err(field("destroy.max_attempts", "must be at least 1".into()));
        }
        if self.destroy.poweroff_command.is_empty() {
            return Err(field(
                "destroy.poweroff_command",
                "must not be empty".into(),
            ));
        }
        for (name, url) in [
            ("destroy.metadata_url", Some(&self.destroy.metadata_url)),
            ("destroy.api_url", Some(&self.destroy.api_url)),
            (
                "readiness.callback_url",
                self.readiness.callback_url.as_ref(),
            ),
        ] {
            if let Some(u) = url
                && !(u.starts_with("http://") || u.starts_with("https://"))
            {
                return Err(field(name, format!("`{u}` is not an http(s) URL")));
            }
        }
        if let Some(a) = &self.artifacts {
            if a.bucket.trim().is_empty() {
                return Err(field("artifacts.bucket", "must not be empty".into()));
            }
            if a.region.trim().is_empty() {
                return Err(field("artifacts.region", "must not be empty".into()));
            }
            if !(a.endpoint.starts_with("http://") || a.endpoint.starts_with("https://")) {
                return Err(field(
                    "artifacts.endpoint",
                    format!("`{}` is not an http(s) URL", a.endpoint),
                ));
            }
            if let Some(sha) = &a.sha
                && !is_build_sha(sha)
            {
                return Err(field(
                    "artifacts.sha",
                    format!("invalid sha {sha:?}: expected 7 to 64 lowercase hex digits"),
                ));
            }
            if a.concurrency == 0 {
                return Err(field("artifacts.concurrency", "must be at least 1".into()));
            }
            if a.cache_max_bytes == Some(0) {
                return Err(field(
                    "artifacts.cache_max_bytes",
                    "0 is refused: leave it unset for no bound".into(),
                ));
            }
        }
        for (name, p) in [
            ("paths.runtime_dir", &self.paths.runtime_dir),
            ("paths.state_dir", &self.paths.state_dir),
            ("paths.secrets_file", &self.paths.secrets_file),
            ("socket.path", &self.socket.path),
        ] {
            if !p.is_absolute() {
                return Err(field(
                    name,
                    format!("`{}` must be an absolute path", p.display()),
                ));
            }
        }
        Ok(())
    }
}

/// The secrets file. `Debug` never prints values.
#[derive(Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Secrets {
    /// DigitalOcean token able to delete this droplet (`destroy.provider = "digitalocean"`).
    #[serde(default)]
    pub do_token: Option<String>,
    /// Bearer token for `readiness.callback_url`.
    #[serde(default)]
    pub callback_token: Option<String>,
    /// Space (S3) access key id for `[artifacts]`; else `SPACES_ACCESS_KEY_ID`/`AWS_ACCESS_KEY_ID`.
    #[serde(default)]
    pub spaces_access_key_id: Option<String>,
    /// Space (S3) secret key for `[artifacts]`; else `SPACES_SECRET_ACCESS_KEY`/`AWS_SECRET_ACCESS_KEY`.
    #[serde(default)]
    pub spaces_secret_access_key: Option<String>,
}

impl fmt::Debug for Secrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let r = |o: &Option<String>| if o.is_some() { "<redacted>" } else { "<unset>" };
        f.debug_struct("Secrets")
            .field("do_token", &r(&self.do_token))
            .field("callback_token", &r(&self.callback_token))
            .field("spaces_access_key_id", &r(&self.spaces_access_key_id))
            .field(
                "spaces_secret_access_key",
                &r(&self.spaces_secret_access_key),
            )
            .finish()
    }
}

impl Secrets {
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_default()
    }

    /// Load the secrets file, refusing it unless it is mode 0600 (no group/other bits) and owned
    /// by `expected_owner` (the daemon's effective uid: root in production). A missing file is
    /// an empty set of secrets.
    pub fn load(path: &Path, expected_owner: u32) -> Result<Secrets, ConfigError> {
        use std::os::unix::fs::MetadataExt;
        let meta = match std::fs::metadata(path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Secrets::default()),
            Err(source) => {
                return Err(ConfigError::Read {
                    path: path.to_path_buf(),
                    source,
                });
            }
        };
        let mode = meta.mode() & 0o7777;
        if mode & 0o077 != 0 {
            return Err(ConfigError::SecretsMode {
                path: path.to_path_buf(),
                mode,
            });
        }
        if meta.uid() != expected_owner {
            return Err(ConfigError::SecretsOwner {
                path: path.to_path_buf(),
                owner: meta.uid(),
                expected: expected_owner,
            });
        }
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        // toml's error quotes the offending line, which could hold a secret: keep only the
        // first line of the message (position + key).
        let secrets: Secrets = toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: redact_toml_error(&e),
        })?;
        match (
            &secrets.spaces_access_key_id,
            &secrets.spaces_secret_access_key,
        ) {
            (Some(_), None) => Err(ConfigError::Field {
                path: path.to_path_buf(),
                field: "spaces_secret_access_key",
                message: "missing: spaces_access_key_id is set, so its secret must be too".into(),
            }),
            (None, Some(_)) => Err(ConfigError::Field {
                path: path.to_path_buf(),
                field: "spaces_access_key_id",
                message: "missing: spaces_secret_access_key is set, so its key id must be too"
                    .into(),
            }),
            _ => Ok(secrets),
        }
    }
}

fn redact_toml_error(e: &toml::de::Error) -> String {
    let msg = e.message();
    match e.span() {
        Some(span) => format!("{msg} (at byte {})", span.start),
        None => msg.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_round_trips() {
        let cfg = Config::example();
        let text = cfg.to_toml();
        let back = Config::from_toml(&text, Path::new("x.toml")).expect("example parses");
        assert_eq!(cfg, back);
        assert!(text.contains("idle_timeout = \"30m\""), "{text}");
    }

    #[test]
    fn zero_and_bare_numbers_are_refused() {
        for (text, needle) in [
            ("[timers]\nidle_timeout = \"0\"\n", "never"),
            ("[timers]\nidle_timeout = \"0s\"\n", "never"),
            ("[timers]\nidle_timeout = 0\n", "never"),
            ("[timers]\nmax_lifetime = 30\n", "no unit"),
            ("[timers]\nno_job_timeout = \"soon\"\n", "not a duration"),
        ] {
            let err = Config::from_toml(text, Path::new("c.toml"))
                .expect_err(text)
                .to_string();
            assert!(err.contains(needle), "{text}: {err}");
            let key = text
                .lines()
                .nth(1)
                .and_then(|l| l.split(' ').next())
                .unwrap_or("");
            assert!(
                err.contains(key),
                "{text}: error does not name {key}: {err}"
            );
        }
    }

    #[test]
    fn never_is_spelled_out() {
        let cfg = Config::from_toml("[timers]\nidle_timeout = \"never\"\n", Path::new("c"))
            .expect("never parses");
        assert_eq!(cfg.timers.idle_timeout, Limit::Never);
        assert_eq!(
            parse_limit("1h 30m"),
            Ok(Limit::After(Duration::from_secs(5400)))
        );
    }

    #[test]
    fn unknown_keys_are_refused() {
        let err = Config::from_toml("[timers]\nidle_timout = \"3m\"\n", Path::new("c"))
            .expect_err("typo")
            .to_string();
        assert!(err.contains("idle_timout"), "{err}");
        let err = Config::from_toml("[socket]\nmode = \"0999\"\n", Path::new("c"))
            .expect_err("bad mode")
            .to_string();
        assert!(err.contains("socket.mode"), "{err}");
    }

    #[test]
    fn secrets_debug_is_redacted() {
        let s = Secrets {
            do_token: Some("dop_v1_secret".into()),
            callback_token: None,
            spaces_access_key_id: Some("DO00KEYID".into()),
            spaces_secret_access_key: Some("s3-secret-value".into()),
        };
        let d = format!("{s:?}");
        for v in ["dop_v1_secret", "DO00KEYID", "s3-secret-value"] {
            assert!(!d.contains(v), "{d}");
        }
    }

    #[test]
    fn artifacts_section_parses_with_defaults_and_round_trips() {
        let text = "[artifacts]\nbucket = \"b\"\nendpoint = \"http://127.0.0.1:9000\"\nsha = \"0123abc\"\n";
        let cfg = Config::from_toml(text, Path::new("c")).expect("parses");
        let a = cfg.artifacts.clone().expect("section");
        assert_eq!(a.region, "us-east-1");
        assert!(!a.path_style && !a.required);
        assert_eq!(a.concurrency, 64);
        assert_eq!(a.cache_max_bytes, None);
        assert_eq!(a.timeout, Limit::After(Duration::from_secs(3600)));
        let back = Config::from_toml(&cfg.to_toml(), Path::new("c")).expect("round trip");
        assert_eq!(cfg, back);
        // The example (printed by `example-config`, commented out) parses too.
        let mut ex = Config::example();
        ex.artifacts = Some(ArtifactsConfig::example());
        Config::from_toml(&ex.to_toml(), Path::new("c")).expect("example parses");
        let commented = Config::example_toml();
        assert!(
            Config::from_toml(&commented, Path::new("c"))
                .expect("commented example parses")
                .artifacts
                .is_none()
        );
        let uncommented = commented.replace("\n# ", "\n");
        let a = Config::from_toml(&uncommented, Path::new("c"))
            .expect("uncommented example parses")
            .artifacts
            .expect("section");
        assert_eq!(a, ArtifactsConfig::example());
    }

    #[test]
    fn artifacts_section_errors_name_the_field() {
        let base = "[artifacts]\nbucket = \"b\"\nendpoint = \"http://127.0.0.1:9000\"\n";
        for (extra, needle) in [
            ("buckett = \"x\"\n", "buckett"),
            ("sha = \"XYZ\"\n", "artifacts.sha"),
            ("concurrency = 0\n", "artifacts.concurrency"),
            ("cache_max_bytes = 0\n", "artifacts.cache_max_bytes"),
            ("timeout = \"0s\"\n", "never"),
        ] {
            let text = format!("{base}{extra}");
            let err = Config::from_toml(&text, Path::new("c"))
                .expect_err(&text)
                .to_string();
            assert!(err.contains(needle), "{text}: {err}");
        }
        let err = Config::from_toml(
            "[artifacts]\nbucket = \"b\"\nendpoint = \"s3.example.com\"\n",
            Path::new("c"),
        )
        .expect_err("scheme")
        .to_string();
        assert!(err.contains("artifacts.endpoint"), "{err}");
        let err = Config::from_toml("[artifacts]\nbucket = \"b\"\n", Path::new("c"))
            .expect_err("endpoint missing")
            .to_string();
        assert!(err.contains("endpoint"), "{err}");
    }

    #[test]
    fn half_a_key_pair_in_secrets_is_refused_without_quoting_it() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("secrets.toml");
        std::fs::write(&p, "spaces_access_key_id = \"DO00HALFKEY\"\n").expect("write");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        let me = nix::unistd::geteuid().as_raw();
        let err = Secrets::load(&p, me).expect_err("half pair").to_string();
        assert!(err.contains("spaces_secret_access_key"), "{err}");
        assert!(!err.contains("DO00HALFKEY"), "{err}");
        std::fs::write(
            &p,
            "spaces_access_key_id = \"DO00KEY\"\nspaces_secret_access_key = \"sec\"\n",
        )
        .expect("write");
        let s = Secrets::load(&p, me).expect("pair loads");
        assert_eq!(s.spaces_access_key_id.as_deref(), Some("DO00KEY"));
    }
}
