//! Command-line interface: argument structs and the functions behind each command.
//! `main.rs` only parses and dispatches.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use clap::{Args, Parser, Subcommand};
use serde::Serialize;

use crate::render::{self, Mode, RenderOptions, Rendered};
use crate::spec;
use crate::validate::{self, Check, CheckStatus};

/// Bake golden images from one image spec.
#[derive(Debug, Parser)]
#[command(name = "image-builder", version, about, propagate_version = true)]
pub struct Cli {
    /// The command.
    #[command(subcommand)]
    pub command: Command,
}

/// Commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Render an image spec to cloud-init user-data (validates first).
    Render(RenderArgs),
    /// Validate an image spec: parse it, render both modes, check with the real tools.
    Validate(ValidateArgs),
    /// Bake a golden image from a spec.
    Bake(BakeArgs),
    /// Local base images.
    #[command(subcommand)]
    Base(BaseCommand),
    /// Boot a worker from a golden image on this machine (QEMU, in the background).
    RunLocal(RunLocalArgs),
    /// List local workers.
    LsLocal(LsLocalArgs),
    /// Stop a local worker and remove its overlay.
    StopLocal(StopLocalArgs),
    /// Sha-keyed build artifacts in an S3-compatible store (publish, ls, gc, pull).
    Artifact(crate::artifact::ArtifactArgs),
    /// Destroy DigitalOcean builder droplets that bakes left behind.
    Reap(crate::backend::digitalocean::cli::ReapArgs),
    /// DigitalOcean images by name prefix (ls, prune).
    #[command(subcommand)]
    Images(crate::backend::digitalocean::cli::ImagesCommand),
}

/// `image-builder bake`.
#[derive(Debug, Args)]
pub struct BakeArgs {
    /// The image spec (YAML).
    pub spec: PathBuf,
    /// Where the image goes: `qemu` (local qcow2, the default) or `digitalocean`.
    #[arg(long, value_enum, default_value_t = crate::bake::BackendKind::Qemu)]
    pub backend: crate::bake::BackendKind,
    /// Output directory (image files and manifest.json).
    #[arg(long, default_value = "image-builder-out")]
    pub out: PathBuf,
    /// The static vm-agent binary to install (default: built with vm-agent/build-static.sh
    /// in a checkout, or the static one next to this executable).
    #[arg(long)]
    pub agent_bin: Option<PathBuf>,
    /// The build sha the baked agent pulls at boot (overrides the spec's `agent.artifact.sha`).
    #[arg(long, value_parser = parse_build_sha)]
    pub sha: Option<String>,
    /// Local backend: provision in a container (fast) or a full VM.
    #[arg(long, value_enum, default_value_t = crate::backend::qemu::Way::Auto)]
    pub way: crate::backend::qemu::Way,
    /// Local backend: skip booting the golden image once to check it.
    #[arg(long)]
    pub no_boot_check: bool,
    /// Local backend: the firmware(s) the boot check boots the golden disk with, in order.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "bios")]
    pub boot_check_firmware: Vec<crate::backend::qemu::vm::Firmware>,
    /// Keep the work directory (for debugging a failed bake).
    #[arg(long)]
    pub keep_work: bool,
    /// Print the manifest as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// DigitalOcean backend flags.
    #[command(flatten, next_help_heading = "DigitalOcean")]
    pub digitalocean: crate::backend::digitalocean::cli::DoBakeArgs,
}

/// `image-builder run-local`.
#[derive(Debug, Args)]
pub struct RunLocalArgs {
    /// The golden image (qcow2) made by `bake --backend qemu`: a whole disk that boots by itself.
    pub image: PathBuf,
    /// Boot with legacy BIOS (SeaBIOS, QEMU's default) or UEFI (OVMF).
    #[arg(long, value_enum, default_value_t)]
    pub firmware: crate::backend::qemu::vm::Firmware,
    /// The worker's disk size, e.g. `20G` (default: the image's); the root filesystem
    /// grows into it on first boot.
    #[arg(long, value_parser = parse_disk_size)]
    pub disk_size: Option<u64>,
    /// The image's spec: build user, VM size and agent timers (defaults otherwise).
    #[arg(long)]
    pub spec: Option<PathBuf>,
    /// Worker name.
    #[arg(long, default_value = "worker")]
    pub name: String,
    /// A public key file to authorize for the build user (repeatable).
    #[arg(long = "ssh-key")]
    pub ssh_keys: Vec<PathBuf>,
    /// Forward this 127.0.0.1 port to the worker's SSH (default: a free port).
    #[arg(long)]
    pub ssh_port: Option<u16>,
    /// Override the agent's idle timeout (e.g. `2m`, or `never`).
    #[arg(long)]
    pub idle_timeout: Option<agent_config::Limit>,
    /// The build sha the agent pulls at boot (overrides the spec's `agent.artifact.sha`).
    #[arg(long, value_parser = parse_build_sha)]
    pub sha: Option<String>,
    /// A complete vm-agent config file to use instead of the one built from the spec
    /// (checked with the agent's own parser; errors name the key).
    #[arg(long, conflicts_with_all = ["idle_timeout", "sha"])]
    pub agent_config: Option<PathBuf>,
    /// The agent's secrets file (must be mode 0600); written to /etc/vm-agent/secrets.toml.
    #[arg(long)]
    pub agent_secrets: Option<PathBuf>,
    /// Print the worker as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

/// `image-builder ls-local`.
#[derive(Debug, Args)]
pub struct LsLocalArgs {
    /// JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

/// `image-builder stop-local`.
#[derive(Debug, Args)]
pub struct StopLocalArgs {
    /// Worker name.
    pub name: String,
}

/// `image-builder base ...`.
#[derive(Debug, Subcommand)]
pub enum BaseCommand {
    /// Build (or reuse from the cache) a minimal Debian base for local bakes.
    Build(BaseBuildArgs),
}

/// `image-builder base build`.
#[derive(Debug, Args)]
pub struct BaseBuildArgs {
    /// Debian suite.
    #[arg(long, default_value = "bookworm")]
    pub suite: String,
    /// Also copy the disk (base.raw) here.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Print the base description as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

/// `image-builder render`.
#[derive(Debug, Args)]
pub struct RenderArgs {
    /// The image spec (YAML).
    pub spec: PathBuf,
    /// Write here (atomically) instead of stdout.
    #[arg(short, long)]
    pub output: Option<PathBuf>,
    /// Worker user-data, or bake user-data ending with the seal.
    #[arg(long, value_enum, default_value_t = Mode::Worker)]
    pub mode: Mode,
}

/// `image-builder validate`.
#[derive(Debug, Args)]
pub struct ValidateArgs {
    /// The image spec (YAML).
    pub spec: PathBuf,
    /// Print a JSON report on stdout.
    #[arg(long)]
    pub json: bool,
}

/// Errors of the CLI commands.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The spec is invalid.
    #[error(transparent)]
    Spec(#[from] spec::SpecError),
    /// Rendering failed.
    #[error(transparent)]
    Render(#[from] render::RenderError),
    /// A real tool rejected the output.
    #[error("{spec}: {check} rejected the rendered {mode} user-data:\n{detail}")]
    Check {
        /// The spec.
        spec: String,
        /// Which check.
        check: String,
        /// Which mode.
        mode: Mode,
        /// The tool's output.
        detail: String,
    },
    /// Writing the output failed.
    #[error("{}: cannot write: {source}", path.display())]
    Write {
        /// The output file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A bake failed.
    #[error(transparent)]
    Bake(#[from] crate::bake::BakeError),
    /// The spec failed validation (details already reported).
    #[error("{0}: invalid")]
    Invalid(String),
}

fn warn_unavailable(checks: &[Check]) {
    for c in checks {
        if let CheckStatus::Unavailable { hint } = &c.status {
            tracing::warn!("{} skipped: tool not found ({hint})", c.name);
        }
    }
}

fn first_failure(spec: &Path, mode: Mode, checks: &[Check]) -> Result<(), CliError> {
    for c in checks {
        if let CheckStatus::Failed { detail } = &c.status {
            return Err(CliError::Check {
                spec: spec.display().to_string(),
                check: c.name.clone(),
                mode,
                detail: detail.clone(),
            });
        }
    }
    Ok(())
}

/// `render`: load, render, check with the real tools where present, write.
pub fn render_cmd(args: &RenderArgs) -> Result<(), CliError> {
    let loaded = spec::load(&args.spec)?;
    let rendered = render::render(&loaded, &RenderOptions::new(args.mode))?;
    for n in &rendered.notes {
        tracing::warn!("{n}");
    }
    let checks = validate::external_checks(&rendered);
    warn_unavailable(&checks);
    first_failure(&args.spec, args.mode, &checks)?;
    match &args.output {
        Some(path) => artifact_store::fsutil::write_atomic(path, rendered.text.as_bytes(), 0o600)
            .map_err(|source| CliError::Write {
                path: path.clone(),
                source,
            }),
        None => {
            let mut out = std::io::stdout().lock();
            out.write_all(rendered.text.as_bytes())
                .and_then(|()| out.flush())
                .map_err(|source| CliError::Write {
                    path: "<stdout>".into(),
                    source,
                })
        }
    }
}

/// The JSON report of `validate`.
#[derive(Debug, Serialize)]
pub struct ValidateReport {
    /// The spec file.
    pub spec: String,
    /// Overall verdict.
    pub valid: bool,
    /// The spec error, if it did not load.
    pub error: Option<String>,
    /// Per mode: size, steps and external checks.
    pub modes: Vec<ModeReport>,
}

/// One mode's part of the report.
#[derive(Debug, Serialize)]
pub struct ModeReport {
    /// Worker or bake.
    pub mode: Mode,
    /// Rendered size in bytes.
    pub bytes: usize,
    /// Steps in run order.
    pub steps: Vec<String>,
    /// Notes.
    pub notes: Vec<String>,
    /// External checks.
    pub checks: Vec<Check>,
    /// Render error, if any.
    pub error: Option<String>,
}

/// Build the validate report (no printing).
pub fn validate_report(path: &Path) -> ValidateReport {
    let mut report = ValidateReport {
        spec: path.display().to_string(),
        valid: true,
        error: None,
        modes: Vec::new(),
    };
    let loaded = match spec::load(path) {
        Ok(l) => l,
        Err(e) => {
            report.valid = false;
            report.error = Some(e.to_string());
            return report;
        }
    };
    for mode in [Mode::Worker, Mode::Bake] {
        let result: Result<Rendered, _> = render::render(&loaded, &RenderOptions::new(mode));
        let mr = match result {
            Ok(r) => {
                let checks = validate::external_checks(&r);
                if checks
                    .iter()
                    .any(|c| matches!(c.status, CheckStatus::Failed { .. }))
                {
                    report.valid = false;
                }
                ModeReport {
                    mode,
                    bytes: r.text.len(),
                    steps: r.steps,
                    notes: r.notes,
                    checks,
                    error: None,
                }
            }
            Err(e) => {
                report.valid = false;
                ModeReport {
                    mode,
                    bytes: 0,
                    steps: vec![],
                    notes: vec![],
                    checks: vec![],
                    error: Some(e.to_string()),
                }
            }
        };
        report.modes.push(mr);
    }
    report
}

/// `validate`: print the report (human or JSON); error if the spec is invalid.
pub fn validate_cmd(args: &ValidateArgs) -> Result<(), CliError> {
    let report = validate_report(&args.spec);
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).unwrap_or_default()
        );
    } else {
        print_human(&report);
    }
    if report.valid {
        Ok(())
    } else {
        Err(CliError::Invalid(report.spec))
    }
}

fn print_human(r: &ValidateReport) {
    if let Some(e) = &r.error {
        println!("{e}");
        return;
    }
    for m in &r.modes {
        match &m.error {
            Some(e) => println!("{} mode: {e}", m.mode),
            None => {
                println!(
                    "{} mode: {} bytes, {} steps: {}",
                    m.mode,
                    m.bytes,
                    m.steps.len(),
                    m.steps.join(", ")
                );
                for n in &m.notes {
                    println!("  note: {n}");
                }
                for c in &m.checks {
                    match &c.status {
                        CheckStatus::Passed => println!("  ok      {}", c.name),
                        CheckStatus::Failed { detail } => {
                            println!("  FAILED  {}: {detail}", c.name)
                        }
                        CheckStatus::Unavailable { hint } => {
                            println!("  skipped {} ({hint})", c.name)
                        }
                    }
                }
            }
        }
    }
    println!("{}: {}", r.spec, if r.valid { "valid" } else { "INVALID" });
}

/// `--disk-size`: a size as the spec's `qemu.disk_size` is written (`20G`), by the
/// spec's own rule.
fn parse_disk_size(s: &str) -> Result<u64, String> {
    serde_json::from_value::<spec::ByteSize>(serde_json::Value::String(s.to_owned()))
        .map(|size| size.0)
        .map_err(|e| e.to_string())
}

/// `--sha`: the artifact contract's rule for a build sha.
fn parse_build_sha(s: &str) -> Result<String, String> {
    if agent_config::is_build_sha(s) {
        Ok(s.to_owned())
    } else {
        Err(format!(
            "invalid sha {s:?}: expected 7 to 64 lowercase hex digits (a git sha)"
        ))
    }
}

fn runtime() -> Result<tokio::runtime::Runtime, CliError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|source| CliError::Write {
            path: "<tokio runtime>".into(),
            source,
        })
}

/// `bake`.
pub fn bake_cmd(args: &BakeArgs) -> Result<(), CliError> {
    let req = crate::bake::BakeRequest {
        spec: args.spec.clone(),
        out_dir: args.out.clone(),
        agent_bin: args.agent_bin.clone(),
        artifact_sha: args.sha.clone(),
        qemu: crate::backend::qemu::QemuBakeOptions {
            way: args.way,
            no_boot_check: args.no_boot_check,
            boot_check_firmware: args.boot_check_firmware.clone(),
            keep_work: args.keep_work,
        },
        digitalocean: args.digitalocean.options()?,
    };
    let manifest = runtime()?.block_on(crate::bake::bake(args.backend, &req))?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&manifest).unwrap_or_default()
        );
    } else {
        for b in &manifest.builds {
            println!("baked {} ({})", b.name, b.builder_type);
            println!("  artifact: {}", b.artifact_id);
            for f in &b.files {
                println!("  file:     {} ({} MiB)", f.name, f.size >> 20);
            }
            let t: Vec<String> = b
                .custom_data
                .iter()
                .filter(|(k, _)| k.starts_with("time_"))
                .map(|(k, v)| format!("{}={v}s", &k[5..k.len() - 2]))
                .collect();
            println!("  timings:  {}", t.join(" "));
            println!("  manifest: {}", args.out.join("manifest.json").display());
            if args.backend == crate::bake::BackendKind::Qemu {
                // The golden disk boots by itself (BIOS or UEFI); this boots a worker from it.
                let me = std::env::args()
                    .next()
                    .unwrap_or_else(|| "image-builder".into());
                println!(
                    "  next:     boot a worker from it (in the background; stop-local stops it):"
                );
                println!(
                    "            {me} run-local {} --spec {} --ssh-key ~/.ssh/id_ed25519.pub",
                    b.artifact_id,
                    args.spec.display()
                );
            }
        }
    }
    Ok(())
}

/// `base build`.
pub fn base_build_cmd(args: &BaseBuildArgs) -> Result<(), CliError> {
    use crate::backend::qemu::{QemuError, base};
    let spec = base::BaseSpec {
        suite: args.suite.clone(),
        ..Default::default()
    };
    let b = base::build(&spec).map_err(|e| CliError::Bake(e.into()))?;
    if let Some(out) = &args.out {
        std::fs::create_dir_all(out).map_err(|source| CliError::Write {
            path: out.clone(),
            source,
        })?;
        let dest = out.join(b.disk.file_name().unwrap_or_default());
        std::fs::copy(&b.disk, &dest)
            .map_err(|e| CliError::Bake(QemuError::io(&dest, e).into()))?;
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&b).unwrap_or_default());
    } else {
        println!(
            "base {} ({}){}: {}",
            b.key,
            b.suite,
            if b.cache_hit {
                ", cache hit"
            } else {
                ", built"
            },
            b.dir.display()
        );
    }
    Ok(())
}

fn local_err(e: crate::backend::qemu::QemuError) -> CliError {
    CliError::Bake(e.into())
}

/// `run-local`.
pub fn run_local_cmd(args: &RunLocalArgs) -> Result<(), CliError> {
    use crate::backend::qemu::{QemuError, local};
    use crate::render::ExtraFile;
    use agent_config::{Config as AgentConfig, Provider};
    use std::os::unix::fs::PermissionsExt as _;

    local::preflight().map_err(local_err)?;
    let loaded = args.spec.as_deref().map(spec::load).transpose()?;
    let agent = match &args.agent_config {
        Some(path) => AgentConfig::load(path).map_err(crate::bake::BakeError::AgentConfig)?,
        None => {
            let mut config = match &loaded {
                Some(l) => crate::bake::agent_config_for(l, Provider::Local, args.sha.as_deref()),
                None => crate::bake::agent_config(
                    "builder",
                    &spec::Agent::default(),
                    Provider::Local,
                    args.sha.as_deref(),
                ),
            };
            if let Some(idle) = args.idle_timeout {
                config.timers.idle_timeout = idle;
            }
            config
        }
    };
    let user = agent.jobs.user.clone().unwrap_or_else(|| "builder".into());
    let mut files = vec![ExtraFile {
        path: provision::AGENT_CONFIG_PATH.into(),
        content: crate::bake::agent_config_toml(&agent)?.into_bytes(),
        mode: 0o644,
    }];
    if let Some(p) = &args.agent_secrets {
        let meta = std::fs::metadata(p).map_err(|e| local_err(QemuError::io(p, e)))?;
        if meta.permissions().mode() & 0o077 != 0 {
            return Err(local_err(QemuError::Other(format!(
                "{}: secrets file is mode {:04o}; it must not be readable by others (chmod 600)",
                p.display(),
                meta.permissions().mode() & 0o777
            ))));
        }
        let content = std::fs::read(p).map_err(|e| local_err(QemuError::io(p, e)))?;
        files.push(ExtraFile {
            path: provision::AGENT_SECRETS_PATH.into(),
            content,
            mode: 0o600,
        });
    }
    let mut keys = Vec::new();
    for k in &args.ssh_keys {
        let text = std::fs::read_to_string(k).map_err(|e| local_err(QemuError::io(k, e)))?;
        let key: spec::SshPublicKey = text
            .trim()
            .parse()
            .map_err(|m: String| local_err(QemuError::Other(format!("{}: {m}", k.display()))))?;
        keys.push(key.to_string());
    }
    let user_data = render::worker_boot(&user, &keys, &files)?;
    let q = loaded.as_ref().map(|l| &l.spec.qemu);
    let opts = local::RunLocal {
        image: args.image.clone(),
        firmware: args.firmware,
        disk_size: args.disk_size,
        name: args.name.clone(),
        user_data,
        memory_mib: q.map(|q| q.memory.0 >> 20).unwrap_or(2048),
        cpus: q.map(|q| q.cpus).unwrap_or(2),
        accel: q.map(|q| q.accel).unwrap_or_default(),
        ssh_port: args.ssh_port,
    };
    let w = local::run(&opts).map_err(local_err)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&w).unwrap_or_default());
    } else {
        println!("worker {} started (qemu pid {})", w.name, w.pid);
        println!("  ssh:     ssh -p {} {user}@127.0.0.1", w.ssh_port);
        println!("  console: {}", w.console.display());
        println!("  stop:    image-builder stop-local {}", w.name);
    }
    Ok(())
}

/// `ls-local`.
pub fn ls_local_cmd(args: &LsLocalArgs) -> Result<(), CliError> {
    let ws = crate::backend::qemu::local::list();
    if args.json {
        println!("{}", serde_json::to_string_pretty(&ws).unwrap_or_default());
    } else if ws.is_empty() {
        println!("no local workers");
    } else {
        println!(
            "{:<16} {:<8} {:>8} {:>6}  IMAGE",
            "NAME", "STATE", "PID", "SSH"
        );
        for w in ws {
            println!(
                "{:<16} {:<8} {:>8} {:>6}  {}",
                w.name,
                if w.running { "running" } else { "stopped" },
                w.pid,
                w.ssh_port,
                w.image.display()
            );
        }
    }
    Ok(())
}

/// `stop-local`.
pub fn stop_local_cmd(args: &StopLocalArgs) -> Result<(), CliError> {
    let w = crate::backend::qemu::local::stop(&args.name, std::time::Duration::from_secs(10))
        .map_err(local_err)?;
    println!("stopped {} (pid {})", w.name, w.pid);
    Ok(())
}
