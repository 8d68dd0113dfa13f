//! Arguments of `image-builder artifact {publish,ls,gc,pull}`. Store location from
//! flags or `IMAGE_BUILDER_S3_*` variables; keys only from the environment or a 0600
//! file (never flags).

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand};

use artifact_store::pull::PullConfig;

/// `image-builder artifact`: sha-keyed build artifacts in an S3-compatible store.
#[derive(Debug, Args)]
pub struct ArtifactArgs {
    /// Where the store is.
    #[command(flatten)]
    pub store: StoreArgs,
    /// The artifact command.
    #[command(subcommand)]
    pub command: ArtifactCommand,
}

/// Store location (not secret). Keys: SPACES_ACCESS_KEY_ID/SPACES_SECRET_ACCESS_KEY
/// (or AWS_*) in the environment, or `--credentials-file`.
#[derive(Debug, Args)]
pub struct StoreArgs {
    /// S3 endpoint URL, e.g. https://fra1.digitaloceanspaces.com.
    #[arg(long, env = "IMAGE_BUILDER_S3_ENDPOINT", global = true)]
    pub endpoint: Option<String>,
    /// Signing region.
    #[arg(long, env = "IMAGE_BUILDER_S3_REGION", global = true)]
    pub region: Option<String>,
    /// Bucket (Space).
    #[arg(long, env = "IMAGE_BUILDER_S3_BUCKET", global = true)]
    pub bucket: Option<String>,
    /// Path-style addressing (endpoint/bucket/key).
    #[arg(long, env = "IMAGE_BUILDER_S3_PATH_STYLE", global = true)]
    pub path_style: bool,
    /// A 0600 KEY=VALUE file holding SPACES_ACCESS_KEY_ID and SPACES_SECRET_ACCESS_KEY.
    #[arg(long, env = "IMAGE_BUILDER_S3_CREDENTIALS_FILE", global = true)]
    pub credentials_file: Option<PathBuf>,
}

/// Artifact commands.
#[derive(Debug, Subcommand)]
pub enum ArtifactCommand {
    /// Upload files under builds/<sha>/, then the manifest (last).
    Publish(PublishArgs),
    /// List published builds (those with a manifest), or one build's files.
    Ls(LsArgs),
    /// Delete published builds beyond the newest N, and stale incomplete uploads.
    Gc(GcArgs),
    /// Download, verify and install a build into <root>/artifacts/<sha>/.
    Pull(PullArgs),
}

/// `artifact publish`.
#[derive(Debug, Args)]
pub struct PublishArgs {
    /// Build key (default: `git rev-parse HEAD` of the current directory).
    #[arg(long)]
    pub sha: Option<String>,
    /// Files and directories (a directory is published under its own name).
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
    /// Requests in flight.
    #[arg(long, default_value_t = 8)]
    pub concurrency: usize,
    /// Files of at least this many bytes use multipart upload.
    #[arg(long, default_value_t = 64 << 20)]
    pub multipart_threshold: u64,
    /// Multipart part size in bytes.
    #[arg(long, default_value_t = 16 << 20)]
    pub part_size: u64,
    /// Overwrite a published build of this sha that has different files.
    #[arg(long)]
    pub force: bool,
    /// Print a JSON summary on stdout.
    #[arg(long)]
    pub json: bool,
}

/// `artifact ls`.
#[derive(Debug, Args)]
pub struct LsArgs {
    /// Show this build's files.
    #[arg(long)]
    pub sha: Option<String>,
    /// Also show incomplete uploads (no manifest).
    #[arg(long)]
    pub all: bool,
    /// JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

/// `artifact gc`.
#[derive(Debug, Args)]
pub struct GcArgs {
    /// Published builds to keep (newest first).
    #[arg(long)]
    pub keep: usize,
    /// Delete incomplete uploads untouched for longer than this.
    #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
    pub incomplete_older_than: Duration,
    /// Only report what would be deleted.
    #[arg(long)]
    pub dry_run: bool,
    /// JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

/// `artifact pull`.
#[derive(Debug, Args)]
pub struct PullArgs {
    /// The build sha.
    pub sha: String,
    /// State directory; the build lands in <root>/artifacts/<sha>/.
    #[arg(long)]
    pub root: PathBuf,
    /// Evict other shas beyond this many bytes in total.
    #[arg(long)]
    pub cache_max_bytes: Option<u64>,
    /// Requests in flight.
    #[arg(long, default_value_t = PullConfig::DEFAULT_MAX_REQUESTS)]
    pub concurrency: usize,
    /// Ranged-GET size for large objects, bytes.
    #[arg(long, default_value_t = PullConfig::DEFAULT_CHUNK_SIZE)]
    pub chunk_size: u64,
    /// Ranged GETs in flight per object.
    #[arg(long, default_value_t = PullConfig::DEFAULT_CHUNKS_IN_FLIGHT)]
    pub chunks_in_flight: usize,
    /// JSON report on stdout.
    #[arg(long)]
    pub json: bool,
}
