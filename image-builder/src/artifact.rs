//! `image-builder artifact {publish,ls,gc,pull}`: argument structs and command
//! functions. Store location from flags or `IMAGE_BUILDER_S3_*` variables; keys
//! only from the environment or a 0600 file (never flags).

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand};

use crate::cli::CliError;
use artifact_store::progress::{Progress, mib};
use artifact_store::publish::{self, PublishError, PublishOptions};
use artifact_store::pull::{self, PullConfig, PullError};
use artifact_store::remote::{self, GcOptions};
use artifact_store::s3::{self, CredentialsError, RemoteError, S3Credentials, S3Settings};

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

/// Errors of the artifact commands.
#[derive(Debug, thiserror::Error)]
pub enum ArtifactCliError {
    /// A required setting is missing.
    #[error("{0}")]
    Config(String),
    /// Keys.
    #[error(transparent)]
    Credentials(#[from] CredentialsError),
    /// Publish failed.
    #[error(transparent)]
    Publish(#[from] PublishError),
    /// The store failed.
    #[error(transparent)]
    Remote(#[from] RemoteError),
    /// Pull failed.
    #[error(transparent)]
    Pull(#[from] PullError),
    /// The sha has no manifest.
    #[error("sha {0} is not published (no manifest)")]
    NotPublished(String),
    /// The manifest is invalid.
    #[error("sha {sha}: invalid manifest: {detail}")]
    InvalidManifest {
        /// The sha.
        sha: String,
        /// Why.
        detail: String,
    },
    /// Runtime setup.
    #[error("cannot start the async runtime: {0}")]
    Runtime(std::io::Error),
}

impl StoreArgs {
    /// The settings, or which flag/variable is missing.
    pub fn settings(&self) -> Result<S3Settings, ArtifactCliError> {
        let endpoint = self.endpoint.clone().ok_or_else(|| {
            ArtifactCliError::Config(
                "no endpoint: pass --endpoint or set IMAGE_BUILDER_S3_ENDPOINT".into(),
            )
        })?;
        let bucket = self.bucket.clone().ok_or_else(|| {
            ArtifactCliError::Config(
                "no bucket: pass --bucket or set IMAGE_BUILDER_S3_BUCKET".into(),
            )
        })?;
        Ok(S3Settings {
            endpoint,
            region: self.region.clone().unwrap_or_else(s3::default_region),
            bucket,
            path_style: self.path_style,
        })
    }

    /// Keys from `--credentials-file`, else the environment; `None` if neither.
    pub fn credentials(&self) -> Result<Option<S3Credentials>, ArtifactCliError> {
        match &self.credentials_file {
            Some(p) => Ok(Some(S3Credentials::from_file(p)?)),
            None => Ok(S3Credentials::from_env()?),
        }
    }

    fn client(&self) -> Result<(aws_sdk_s3::Client, S3Settings), ArtifactCliError> {
        let settings = self.settings()?;
        let creds = self.credentials()?.ok_or(CredentialsError::Missing)?;
        Ok((s3::client(&settings, &creds, None), settings))
    }
}

/// Run an artifact command. Prints its own error; `main` only sets the exit code.
// `CliError` (owned by the CLI module) is large; its size is not ours to change here.
#[allow(clippy::result_large_err)]
pub fn run(args: &ArtifactArgs) -> Result<(), CliError> {
    let result = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(ArtifactCliError::Runtime)
        .and_then(|rt| rt.block_on(run_async(args)));
    result.map_err(|e| {
        eprintln!("error: {e}");
        CliError::Invalid("artifact".into())
    })
}

/// The async body of [`run`] (usable from an existing runtime).
pub async fn run_async(args: &ArtifactArgs) -> Result<(), ArtifactCliError> {
    match &args.command {
        ArtifactCommand::Publish(a) => publish_cmd(&args.store, a).await,
        ArtifactCommand::Ls(a) => ls_cmd(&args.store, a).await,
        ArtifactCommand::Gc(a) => gc_cmd(&args.store, a).await,
        ArtifactCommand::Pull(a) => pull_cmd(&args.store, a).await,
    }
}

fn print_json<T: serde::Serialize>(v: &T) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

async fn publish_cmd(store: &StoreArgs, a: &PublishArgs) -> Result<(), ArtifactCliError> {
    let (client, settings) = store.client()?;
    let sha = match &a.sha {
        Some(s) => s.clone(),
        None => publish::git_head_sha(&std::env::current_dir().unwrap_or_else(|_| ".".into()))?,
    };
    let opts = PublishOptions {
        concurrency: a.concurrency,
        multipart_threshold: a.multipart_threshold,
        part_size: a.part_size,
        force: a.force,
    };
    let progress = Progress::new("publish");
    let report = publish::publish(
        &client,
        &settings.bucket,
        &sha,
        &a.paths,
        &opts,
        Some(progress.bar()),
    )
    .await;
    progress.finish();
    let report = report?;
    if a.json {
        print_json(&report);
    } else {
        println!(
            "published {} to s3://{}/builds/{}/: {} files ({} uploaded, {} skipped), {:.1} MiB uploaded in {:.1}s, manifest {}",
            report.sha,
            report.bucket,
            report.sha,
            report.files,
            report.uploaded,
            report.skipped,
            mib(report.bytes_uploaded),
            report.seconds,
            report.manifest
        );
    }
    Ok(())
}

async fn ls_cmd(store: &StoreArgs, a: &LsArgs) -> Result<(), ArtifactCliError> {
    let (client, settings) = store.client()?;
    if let Some(sha) = &a.sha {
        artifact_store::manifest::validate_sha(sha)
            .map_err(|e| ArtifactCliError::Config(e.to_string()))?;
        let m = publish::fetch_manifest(&client, &settings.bucket, sha)
            .await?
            .ok_or_else(|| ArtifactCliError::NotPublished(sha.clone()))?
            .map_err(|e| ArtifactCliError::InvalidManifest {
                sha: sha.clone(),
                detail: e.to_string(),
            })?;
        if a.json {
            print_json(&m);
        } else {
            println!(
                "{} created {} ({} files)",
                m.sha,
                m.created_at,
                m.files.len()
            );
            for f in &m.files {
                println!("{f}");
            }
        }
        return Ok(());
    }
    let builds = if a.all {
        remote::list_all(&client, &settings.bucket).await?
    } else {
        remote::list_builds(&client, &settings.bucket).await?
    };
    if a.json {
        print_json(&builds);
    } else {
        for b in &builds {
            match (b.complete, &b.manifest_error) {
                (true, None) => println!(
                    "{}  {}  {:>5} files  {:>10.1} MiB",
                    b.sha,
                    b.created_at.as_deref().unwrap_or("-"),
                    b.files.unwrap_or(0),
                    mib(b.manifest_bytes.unwrap_or(0))
                ),
                (true, Some(e)) => println!("{}  INVALID MANIFEST: {e}", b.sha),
                (false, _) => println!(
                    "{}  incomplete ({} objects, last write {})",
                    b.sha,
                    b.objects,
                    b.last_modified.as_deref().unwrap_or("-")
                ),
            }
        }
    }
    Ok(())
}

async fn gc_cmd(store: &StoreArgs, a: &GcArgs) -> Result<(), ArtifactCliError> {
    let (client, settings) = store.client()?;
    let report = remote::gc(
        &client,
        &settings.bucket,
        &GcOptions {
            keep: a.keep,
            incomplete_older_than: a.incomplete_older_than,
            dry_run: a.dry_run,
        },
    )
    .await?;
    if a.json {
        print_json(&report);
    } else {
        let verb = if a.dry_run { "would delete" } else { "deleted" };
        println!(
            "kept {} builds; {verb} {} builds and {} incomplete uploads ({} objects, {:.1} MiB)",
            report.kept.len(),
            report.deleted.len(),
            report.deleted_incomplete.len(),
            report.objects_deleted,
            mib(report.bytes_freed)
        );
    }
    Ok(())
}

async fn pull_cmd(store: &StoreArgs, a: &PullArgs) -> Result<(), ArtifactCliError> {
    let mut cfg = PullConfig::new(store.settings()?, store.credentials()?);
    cfg.cache_max_bytes = a.cache_max_bytes;
    cfg.max_requests = a.concurrency;
    cfg.chunk_size = a.chunk_size;
    cfg.chunks_in_flight = a.chunks_in_flight;
    let progress = Progress::new("pull");
    let report = pull::pull(&cfg, &a.sha, &a.root, Some(progress.bar())).await;
    progress.finish();
    let report = report?;
    if a.json {
        print_json(&report);
    } else if report.already_installed {
        println!(
            "{} already installed in {}",
            report.sha,
            report.dir.display()
        );
    } else {
        println!(
            "installed {} in {}: {} files, {:.1} MiB in {:.2}s ({:.1} MiB/s)",
            report.sha,
            report.dir.display(),
            report.files,
            mib(report.bytes_total),
            report.seconds,
            mib(report.bytes_total) / report.seconds.max(0.001)
        );
    }
    Ok(())
}
