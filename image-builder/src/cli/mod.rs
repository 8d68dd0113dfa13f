//! The command line: clap argument types only. The functions behind the commands live
//! in [`crate::commands`]; nothing here imports from there.

pub mod artifact;
pub mod digitalocean;
pub mod fleet;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::render::Mode;

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
    Artifact(artifact::ArtifactArgs),
    /// Destroy DigitalOcean builder droplets that bakes left behind.
    Reap(digitalocean::ReapArgs),
    /// DigitalOcean images: ls by name prefix, prune one spec's images.
    #[command(subcommand)]
    Images(digitalocean::ImagesCommand),
    /// Workers from the golden image: up, ls, run, ssh, ssh-config, down, reap, user-data.
    Fleet(fleet::FleetArgs),
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
    pub digitalocean: digitalocean::DoBakeArgs,
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

/// `--disk-size`: a size as the spec's `qemu.disk_size` is written (`20G`), by the
/// spec's own rule.
fn parse_disk_size(s: &str) -> Result<u64, String> {
    serde_json::from_value::<crate::spec::ByteSize>(serde_json::Value::String(s.to_owned()))
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

#[cfg(test)]
mod tests {
    #[test]
    fn every_command_line_definition_is_consistent() {
        use clap::CommandFactory as _;
        super::Cli::command().debug_assert();
    }
}
