//! Command-line parts of the DigitalOcean backend: the DigitalOcean flags of
//! `bake` (flattened into `BakeArgs`), `reap`, and `images ls|prune|import`.

use std::io::IsTerminal as _;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand};

use crate::bake::BakeError;
use crate::cli::CliError;
use artifact_store::s3::{S3Credentials, S3Settings};
use do_api::Poll;

use super::{Connection, DoBakeError, DoBakeOptions, images, reap};

fn err(e: DoBakeError) -> CliError {
    CliError::Bake(BakeError::Digitalocean(e))
}

fn runtime() -> Result<tokio::runtime::Runtime, CliError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            err(DoBakeError::Internal(format!(
                "cannot start the async runtime: {e}"
            )))
        })
}

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

impl ConnArgs {
    /// The connection settings.
    pub fn connection(&self) -> Connection {
        Connection {
            api_url: self.api_url.clone(),
            token_file: self.token_file.clone(),
            api_backoff: self.api_backoff,
        }
    }
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

impl DoBakeArgs {
    /// The options of [`super::bake`].
    pub fn options(&self) -> Result<DoBakeOptions, CliError> {
        let mut o = DoBakeOptions {
            connection: self.conn.connection(),
            yes: self.yes,
            resume: self.resume.clone(),
            state_dir: self.state_dir.clone(),
            ..DoBakeOptions::default()
        };
        if let Some(p) = self.poll_interval {
            o.poll = p.max(Duration::from_millis(10));
        }
        if let Some(p) = self.power_off_after {
            o.power_off_after = p;
        }
        o.space = match (&self.space_endpoint, &self.space_bucket) {
            (Some(endpoint), Some(bucket)) => Some(S3Settings {
                endpoint: endpoint.clone(),
                region: self
                    .space_region
                    .clone()
                    .unwrap_or_else(artifact_store::s3::default_region),
                bucket: bucket.clone(),
                path_style: self.space_path_style,
            }),
            (None, None) => None,
            _ => {
                return Err(err(DoBakeError::Config(
                    "--space-endpoint and --space-bucket go together".into(),
                )));
            }
        };
        if let Some(f) = &self.space_credentials_file {
            o.space_credentials = Some(
                S3Credentials::from_file(f)
                    .map_err(|e| err(DoBakeError::Config(format!("Space credentials: {e}"))))?,
            );
        }
        Ok(o)
    }
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
    /// Delete all but the newest N images with a name prefix.
    Prune(ImagesPruneArgs),
    /// Import a local golden disk as a custom image (uploaded through a Space).
    Import(Box<super::import::ImportArgs>),
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
    /// Name prefix of the images to prune (required: never everything).
    #[arg(long)]
    pub prefix: String,
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

fn confirm(yes: bool, what: &str) -> Result<bool, CliError> {
    if yes {
        return Ok(true);
    }
    if !std::io::stdin().is_terminal() {
        return Ok(false);
    }
    eprint!("{what} [y/N] ");
    let mut line = String::new();
    std::io::stdin()
        .read_line(&mut line)
        .map_err(|e| err(DoBakeError::Internal(format!("reading the answer: {e}"))))?;
    Ok(matches!(line.trim(), "y" | "Y" | "yes"))
}

fn client(conn: &ConnArgs) -> Result<do_api::Client, CliError> {
    conn.connection().client().map_err(|source| {
        err(DoBakeError::Api {
            during: "connecting",
            source: Box::new(source),
        })
    })
}

fn api(during: &'static str) -> impl FnOnce(do_api::DoError) -> CliError {
    move |source| {
        err(DoBakeError::Api {
            during,
            source: Box::new(source),
        })
    }
}

/// `reap`: list builder droplets older than the bound and delete them.
pub fn reap_cmd(args: &ReapArgs) -> Result<(), CliError> {
    let client = client(&args.conn)?;
    runtime()?.block_on(async {
        let mut report = reap::find(&client, args.older_than)
            .await
            .map_err(api("listing builder droplets"))?;
        for l in &report.too_young {
            eprintln!(
                "leaving droplet {} ({}) alone: younger than {}",
                l.id,
                l.name,
                humantime::format_duration(args.older_than)
            );
        }
        if !args.json {
            for l in &report.candidates {
                println!(
                    "builder droplet {} {} ({}, created {})",
                    l.id, l.name, l.bake_tag, l.created_at
                );
            }
        }
        let go = !report.candidates.is_empty()
            && confirm(
                args.yes,
                &format!("Destroy {} droplet(s)?", report.candidates.len()),
            )?;
        if go {
            reap::delete(
                &client,
                &mut report,
                Poll::new(args.poll_interval, Duration::from_secs(600)),
            )
            .await
            .map_err(api("destroying builder droplets"))?;
        }
        if args.json {
            println!(
                "{}",
                serde_json::to_string_pretty(&report).unwrap_or_default()
            );
        } else if report.candidates.is_empty() {
            println!("no builder droplets to reap");
        } else if go {
            println!("destroyed {} builder droplet(s)", report.deleted.len());
        }
        if !report.candidates.is_empty() && !go {
            return Err(err(DoBakeError::Config(
                "nothing destroyed: pass --yes to destroy the droplets listed above".into(),
            )));
        }
        Ok(())
    })
}

/// `images ls` / `images prune`.
pub fn images_cmd(cmd: &ImagesCommand) -> Result<(), CliError> {
    match cmd {
        ImagesCommand::Import(a) => {
            let client = client(&a.conn)?;
            let report = runtime()?
                .block_on(super::import::import(a, &client))
                .map_err(err)?;
            if a.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&report).unwrap_or_default()
                );
            } else {
                println!(
                    "imported {} as custom image {} ({}, {})",
                    report.name,
                    report.image_id,
                    report.status,
                    report.regions.join(",")
                );
            }
            Ok(())
        }
        ImagesCommand::Ls(a) => {
            let client = client(&a.conn)?;
            let rows = runtime()?
                .block_on(images::list(&client, &a.prefix))
                .map_err(api("listing images"))?;
            if a.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&rows).unwrap_or_default()
                );
            } else {
                for r in &rows {
                    println!(
                        "{:>12}  {:<48}  {}  {:>6.2} GB  {}",
                        r.id,
                        r.name,
                        r.created_at,
                        r.size_gigabytes.unwrap_or(0.0),
                        r.regions.join(",")
                    );
                }
            }
            Ok(())
        }
        ImagesCommand::Prune(a) => {
            if a.prefix.is_empty() {
                return Err(err(DoBakeError::Config(
                    "images prune needs a non-empty --prefix".into(),
                )));
            }
            let client = client(&a.conn)?;
            let rt = runtime()?;
            let rows = rt
                .block_on(images::list(&client, &a.prefix))
                .map_err(api("listing images"))?;
            let (kept, doomed) = images::split_keep(rows, a.keep);
            if !a.json {
                for r in &kept {
                    println!("keep    {:>12}  {}  {}", r.id, r.name, r.created_at);
                }
                for r in &doomed {
                    println!("delete  {:>12}  {}  {}", r.id, r.name, r.created_at);
                }
            }
            let go = !doomed.is_empty()
                && confirm(a.yes, &format!("Delete {} image(s)?", doomed.len()))?;
            if go {
                rt.block_on(images::delete(&client, &doomed))
                    .map_err(api("deleting images"))?;
            }
            if a.json {
                println!(
                    "{}",
                    serde_json::json!({"kept": kept, "deleted": if go { doomed.clone() } else { vec![] }, "would_delete": if go { vec![] } else { doomed.clone() }})
                );
            }
            if !doomed.is_empty() && !go {
                return Err(err(DoBakeError::Config(
                    "nothing deleted: pass --yes to delete the images listed above".into(),
                )));
            }
            Ok(())
        }
    }
}
