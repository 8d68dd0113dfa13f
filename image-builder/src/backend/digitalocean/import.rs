//! `image-builder images import`: a local golden disk becomes a DigitalOcean custom
//! image, the way DigitalOcean's own Packer post-processor does it:
//!
//! 1. the disk is converted to a qcow2 any importer reads (zlib-compressed, compat
//!    1.1: the bake's zstd clusters need QEMU 5.1 or later to read);
//! 2. uploaded to the Space under `imports/<name>-<random>.qcow2` with a public-read ACL
//!    (DigitalOcean downloads it by plain URL and first sends a HEAD, which a presigned
//!    GET URL does not allow), or, with `--url`, taken from where the caller hosts it;
//! 3. `POST /v2/images` with that URL, then `GET /v2/images/{id}` until `available` (or
//!    its `error_message`);
//! 4. the uploaded object is deleted whatever happened (unless `--keep-upload`): it is
//!    public while it exists.
//!
//! The disk must be one that boots by itself (the local backend's golden disks are):
//! DigitalOcean boots custom images from their own bootloader.

use std::path::{Path, PathBuf};
use std::time::Duration;

use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::ObjectCannedAcl;
use clap::Args;
use serde::Serialize;

use artifact_store::s3::{self, S3Credentials, S3Settings};
use do_api::{Client, CustomImageCreate, ImportState, Poll};

use super::DoBakeError;
use super::cli::ConnArgs;
use crate::backend::qemu::{self, run_logged};

/// A single PUT carries at most this much (S3's limit).
const MAX_SINGLE_PUT: u64 = 5 << 30;

/// `image-builder images import`.
#[derive(Debug, Args)]
pub struct ImportArgs {
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
    /// KEY=VALUE file (mode 0600) with SPACES_ACCESS_KEY_ID and SPACES_SECRET_ACCESS_KEY
    /// [default: those environment variables].
    #[arg(long, value_name = "FILE")]
    pub space_credentials_file: Option<PathBuf>,
    /// Leave the uploaded (public) object in the Space.
    #[arg(long)]
    pub keep_upload: bool,
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

/// What an import did.
#[derive(Debug, Serialize)]
pub struct ImportReport {
    /// The custom image's id.
    pub image_id: u64,
    /// Its name.
    pub name: String,
    /// `available`.
    pub status: String,
    /// Its regions.
    pub regions: Vec<String>,
    /// The URL DigitalOcean downloaded it from.
    pub url: String,
    /// The Space object it was uploaded to, if any, and whether it was deleted.
    pub uploaded: Option<Uploaded>,
}

/// The object an import uploaded.
#[derive(Debug, Clone, Serialize)]
pub struct Uploaded {
    /// `s3://bucket/key`.
    pub object: String,
    /// Bytes.
    pub size: u64,
    /// Deleted after the import.
    pub deleted: bool,
}

fn config(message: String) -> DoBakeError {
    DoBakeError::Config(message)
}

/// Convert `disk` to a zlib-compressed qcow2 (compat 1.1) at `out`.
fn importable_qcow2(disk: &Path, out: &Path) -> Result<u64, DoBakeError> {
    let size = qemu::vm::virtual_size(disk).map_err(|e| config(e.to_string()))?;
    if size >= 100_000_000_000 {
        return Err(config(format!(
            "{}: {size} bytes; DigitalOcean imports images under 100 GB",
            disk.display()
        )));
    }
    let qemu_img = qemu::require_tool("qemu-img").map_err(|e| config(e.to_string()))?;
    let mut cmd = std::process::Command::new(qemu_img);
    cmd.args(["convert", "-W", "-m", "8", "-O", "qcow2", "-c", "-o"])
        .arg("compression_type=zlib,compat=1.1")
        .arg(disk)
        .arg(out);
    run_logged(&mut cmd, "qemu-img convert", &out.with_extension("log"))
        .map_err(|e| config(e.to_string()))?;
    std::fs::metadata(out)
        .map(|m| m.len())
        .map_err(|e| config(format!("{}: {e}", out.display())))
}

/// The plain (unsigned) URL of `key`: what DigitalOcean fetches.
fn object_url(settings: &S3Settings, key: &str) -> String {
    let endpoint = settings.endpoint.trim_end_matches('/');
    if settings.path_style {
        return format!("{endpoint}/{}/{key}", settings.bucket);
    }
    match endpoint.split_once("://") {
        Some((scheme, host)) => format!("{scheme}://{}.{host}/{key}", settings.bucket),
        None => format!("https://{}.{endpoint}/{key}", settings.bucket),
    }
}

/// Run `images import`.
pub async fn import(args: &ImportArgs, client: &Client) -> Result<ImportReport, DoBakeError> {
    let (url, upload) = match (&args.url, &args.disk) {
        (Some(url), _) => (url.clone(), None),
        (None, Some(disk)) => {
            let settings = S3Settings {
                endpoint: args.space_endpoint.clone().unwrap_or_default(),
                region: args.space_region.clone().unwrap_or_else(s3::default_region),
                bucket: args.space_bucket.clone().unwrap_or_default(),
                path_style: args.space_path_style,
            };
            let creds = match &args.space_credentials_file {
                Some(f) => S3Credentials::from_file(f),
                None => S3Credentials::from_env()
                    .and_then(|c| c.ok_or(artifact_store::s3::CredentialsError::Missing)),
            }
            .map_err(|e| config(format!("Space credentials: {e}")))?;
            let work = tempfile::tempdir().map_err(|e| config(format!("temp dir: {e}")))?;
            let file = work.path().join(format!("{}.qcow2", args.name));
            tracing::info!("converting {} for import", disk.display());
            let size = importable_qcow2(disk, &file)?;
            if size > MAX_SINGLE_PUT {
                return Err(config(format!(
                    "{}: the importable qcow2 is {size} bytes, more than one upload takes (5 GiB); host it yourself and pass --url",
                    disk.display()
                )));
            }
            let suffix = &uuid::Uuid::new_v4().simple().to_string()[..8];
            let key = format!("imports/{}-{suffix}.qcow2", args.name);
            let s3 = s3::client(&settings, &creds, None);
            tracing::info!(
                "uploading {size} bytes to s3://{}/{key} (public-read until the import ends)",
                settings.bucket
            );
            let body = ByteStream::from_path(&file)
                .await
                .map_err(|e| config(format!("{}: {e}", file.display())))?;
            s3.put_object()
                .bucket(&settings.bucket)
                .key(&key)
                .acl(ObjectCannedAcl::PublicRead)
                .content_type("application/octet-stream")
                .content_length(i64::try_from(size).unwrap_or(i64::MAX))
                .body(body)
                .send()
                .await
                .map_err(|e| DoBakeError::Space {
                    during: "uploading the disk",
                    source: Box::new(s3::classify(&e, "PutObject", &settings.bucket, &key).into()),
                })?;
            let url = object_url(&settings, &key);
            (url, Some((s3, settings, key, size)))
        }
        (None, None) => return Err(config("give a DISK or --url".into())),
    };

    let result = create_and_wait(args, client, &url).await;

    let uploaded = match upload {
        None => None,
        Some((s3, settings, key, size)) => {
            let deleted = if args.keep_upload {
                false
            } else {
                match s3
                    .delete_object()
                    .bucket(&settings.bucket)
                    .key(&key)
                    .send()
                    .await
                {
                    Ok(_) => true,
                    Err(e) => {
                        tracing::warn!(
                            "could not delete the uploaded disk: {}; delete s3://{}/{key} yourself (it is public)",
                            s3::error_chain(&e),
                            settings.bucket
                        );
                        false
                    }
                }
            };
            Some(Uploaded {
                object: format!("s3://{}/{key}", settings.bucket),
                size,
                deleted,
            })
        }
    };
    let image = result?;
    Ok(ImportReport {
        image_id: image.id,
        name: image.name,
        status: image.status.unwrap_or_default(),
        regions: image.regions,
        url,
        uploaded,
    })
}

async fn create_and_wait(
    args: &ImportArgs,
    client: &Client,
    url: &str,
) -> Result<do_api::Image, DoBakeError> {
    let api = |during: &'static str| {
        move |source| DoBakeError::Api {
            during,
            source: Box::new(source),
        }
    };
    let created = client
        .create_custom_image(&CustomImageCreate {
            name: args.name.clone(),
            url: url.to_owned(),
            region: args.region.clone(),
            distribution: Some(args.distribution.clone()),
            description: args.description.clone(),
            tags: args.tags.clone(),
        })
        .await
        .map_err(api("creating the custom image"))?;
    tracing::info!(
        "custom image {} created ({}); waiting for DigitalOcean to import it",
        created.id,
        created.status.as_deref().unwrap_or("NEW")
    );
    let image = client
        .wait_custom_image(
            created.id,
            Poll::new(
                args.poll_interval.max(Duration::from_millis(10)),
                args.timeout,
            ),
        )
        .await
        .map_err(api("waiting for the custom image"))?;
    match ImportState::of(&image) {
        ImportState::Available => Ok(image),
        _ => Err(DoBakeError::Refused(format!(
            "DigitalOcean did not import custom image {} ({}): {}",
            image.id,
            image.status.as_deref().unwrap_or("no status"),
            image.error_message.as_deref().unwrap_or("no error message")
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_object_url_is_unsigned_in_either_addressing_style() {
        let mut s = S3Settings {
            endpoint: "https://nyc3.digitaloceanspaces.com".into(),
            region: "us-east-1".into(),
            bucket: "ci-artifacts".into(),
            path_style: false,
        };
        assert_eq!(
            object_url(&s, "imports/golden-1.qcow2"),
            "https://ci-artifacts.nyc3.digitaloceanspaces.com/imports/golden-1.qcow2"
        );
        s.endpoint = "http://127.0.0.1:9000/".into();
        s.path_style = true;
        assert_eq!(
            object_url(&s, "imports/golden-1.qcow2"),
            "http://127.0.0.1:9000/ci-artifacts/imports/golden-1.qcow2"
        );
    }
}
