//! Arguments of the DigitalOcean backend: its flags of `bake` (flattened into
//! `BakeArgs`), `reap`, and `images ls|prune|import`.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand};

/// How to reach the DigitalOcean API.
#[derive(Clone, Debug, Default, Args)]
pub struct ConnArgs {
    /// DigitalOcean API base URL [default: $DIGITALOCEAN_API_URL, else https://api.digitalocean.com].
    #[arg(long, value_name = "URL")]
    pub api_url: Option<String>,
    /// File with the DigitalOcean token, mode 0600 [default: $DIGITALOCEAN_TOKEN or $DIGITALOCEAN_ACCESS_TOKEN].
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// First retry backoff of API calls (tests).
    #[arg(long, hide = true, value_parser = humantime::parse_duration)]
    pub api_backoff: Option<Duration>,
}

/// The DigitalOcean flags of `image-builder bake`.
#[derive(Clone, Debug, Default, Args)]
pub struct DoBakeArgs {
    /// API access.
    #[command(flatten)]
    pub conn: ConnArgs,
    /// DigitalOcean: create the builder droplet without asking (required when stdin is not a terminal).
    #[arg(long)]
    pub yes: bool,
    /// DigitalOcean: continue the bake recorded in this state file (after the process was killed).
    #[arg(long, value_name = "STATE")]
    pub resume: Option<PathBuf>,
    /// DigitalOcean: S3 endpoint of the Space for the agent and the seal report
    /// [default: the spec's agent.artifact endpoint].
    #[arg(long, value_name = "URL")]
    pub space_endpoint: Option<String>,
    /// DigitalOcean: the Space (bucket) [default: the spec's agent.artifact bucket].
    #[arg(long, value_name = "NAME")]
    pub space_bucket: Option<String>,
    /// DigitalOcean: signing region of the Space.
    #[arg(long, value_name = "REGION")]
    pub space_region: Option<String>,
    /// DigitalOcean: path-style Space URLs (self-hosted S3 servers).
    #[arg(long)]
    pub space_path_style: bool,
    /// DigitalOcean: KEY=VALUE file (mode 0600) with SPACES_ACCESS_KEY_ID and SPACES_SECRET_ACCESS_KEY
    /// [default: those environment variables].
    #[arg(long, value_name = "FILE")]
    pub space_credentials_file: Option<PathBuf>,
    /// DigitalOcean: directory of bake state files [default: ~/.cache/image-builder/bakes].
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// DigitalOcean: how often to poll [default: 5s].
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub poll_interval: Option<Duration>,
    /// DigitalOcean: wait this long for `off` before shutdown, and again before power_off [default: 2m].
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub power_off_after: Option<Duration>,
}

/// `image-builder reap`.
#[derive(Debug, Args)]
pub struct ReapArgs {
    /// API access.
    #[command(flatten)]
    pub conn: ConnArgs,
    /// Only builders older than this (a running bake's builder is younger).
    #[arg(long, value_name = "DURATION", default_value = "3h", value_parser = humantime::parse_duration)]
    pub older_than: Duration,
    /// Delete without asking (required when stdin is not a terminal).
    #[arg(long)]
    pub yes: bool,
    /// Print the report as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// How often to poll for the 404 that confirms a delete.
    #[arg(long, value_name = "DURATION", default_value = "2s", value_parser = humantime::parse_duration)]
    pub poll_interval: Duration,
}

/// `image-builder images ...`.
#[derive(Debug, Subcommand)]
pub enum ImagesCommand {
    /// List private images by name prefix, newest first.
    Ls(ImagesLsArgs),
    /// Delete all but the newest N images of one spec (tagged `image-builder`, named by its `snapshot.name`).
    Prune(ImagesPruneArgs),
    /// Import a local golden disk as a custom image (uploaded through a Space).
    Import(Box<ImagesImportArgs>),
}

/// `image-builder images import`.
#[derive(Debug, Args)]
pub struct ImagesImportArgs {
    /// The disk to import (the golden qcow2 of `bake --backend qemu`, or raw).
    #[arg(required_unless_present = "url")]
    pub disk: Option<PathBuf>,
    /// Import from this URL instead (it must answer HEAD and GET), uploading nothing.
    #[arg(long, value_name = "URL", conflicts_with = "disk")]
    pub url: Option<String>,
    /// The custom image's name.
    #[arg(long)]
    pub name: String,
    /// The region to import into (e.g. nyc3).
    #[arg(long)]
    pub region: String,
    /// The distribution DigitalOcean shows.
    #[arg(long, default_value = "Debian")]
    pub distribution: String,
    /// A description.
    #[arg(long)]
    pub description: Option<String>,
    /// A tag for the image (repeatable).
    #[arg(long = "tag", value_name = "TAG")]
    pub tags: Vec<String>,
    /// S3 endpoint of the Space the disk is uploaded to (e.g. https://nyc3.digitaloceanspaces.com).
    #[arg(long, value_name = "URL", required_unless_present = "url")]
    pub space_endpoint: Option<String>,
    /// The Space (bucket).
    #[arg(long, value_name = "NAME", required_unless_present = "url")]
    pub space_bucket: Option<String>,
    /// Signing region of the Space.
    #[arg(long, value_name = "REGION")]
    pub space_region: Option<String>,
    /// Path-style Space URLs (self-hosted S3 servers).
    #[arg(long)]
    pub space_path_style: bool,
    /// Base URL DigitalOcean fetches the upload from, the object's key appended
    /// (e.g. the Space's CDN endpoint https://BUCKET.REGION.cdn.digitaloceanspaces.com)
    /// [default: the object's URL at --space-endpoint]. The object is public-read
    /// for the import's duration only.
    #[arg(long, value_name = "BASE", conflicts_with = "url", value_parser = http_url)]
    pub space_public_url: Option<String>,
    /// KEY=VALUE file (mode 0600) with SPACES_ACCESS_KEY_ID and SPACES_SECRET_ACCESS_KEY
    /// [default: those environment variables].
    #[arg(long, value_name = "FILE")]
    pub space_credentials_file: Option<PathBuf>,
    /// Leave the uploaded (public) object in the Space.
    #[arg(long)]
    pub keep_upload: bool,
    /// Output directory of manifest.json (the same Packer-compatible manifest a bake writes).
    #[arg(long, default_value = "image-builder-out")]
    pub out: PathBuf,
    /// Confirm without asking (the image bills as storage while it exists).
    #[arg(long)]
    pub yes: bool,
    /// Give up waiting for `available` after this long.
    #[arg(long, default_value = "30m", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    /// How often to poll the image.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub poll_interval: Duration,
    /// Print the result as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// API access.
    #[command(flatten)]
    pub conn: ConnArgs,
}

/// A URL DigitalOcean can fetch from: http:// or https://.
fn http_url(s: &str) -> Result<String, String> {
    if s.starts_with("http://") || s.starts_with("https://") {
        Ok(s.to_owned())
    } else {
        Err(format!("{s:?} is not an http:// or https:// URL"))
    }
}

/// `image-builder images ls`.
#[derive(Debug, Args)]
pub struct ImagesLsArgs {
    /// API access.
    #[command(flatten)]
    pub conn: ConnArgs,
    /// Name prefix (e.g. the spec's name) [default: every private image].
    #[arg(long, default_value = "")]
    pub prefix: String,
    /// JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

/// `image-builder images prune`.
#[derive(Debug, Args)]
pub struct ImagesPruneArgs {
    /// API access.
    #[command(flatten)]
    pub conn: ConnArgs,
    /// The spec whose images to prune: only private images tagged `image-builder`
    /// whose whole name fits its `snapshot.name` template (`{name}` filled in) are candidates.
    pub spec: PathBuf,
    /// How many of the newest to keep.
    #[arg(long)]
    pub keep: usize,
    /// Delete without asking (required when stdin is not a terminal).
    #[arg(long)]
    pub yes: bool,
    /// JSON on stdout.
    #[arg(long)]
    pub json: bool,
}
