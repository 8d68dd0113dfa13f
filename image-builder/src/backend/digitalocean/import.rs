//! `image-builder images import`: a local golden disk becomes a DigitalOcean custom
//! image, the way DigitalOcean's own Packer post-processor does it:
//!
//! 1. the disk is converted to a qcow2 any importer reads (zlib-compressed, compat
//!    1.1: the bake's zstd clusters need QEMU 5.1 or later to read);
//! 2. uploaded to the Space under `imports/<name>-<random>.qcow2` with a public-read ACL
//!    (DigitalOcean downloads it by plain URL and first sends a HEAD, which a presigned
//!    GET URL does not allow), in parts from 64 MiB on (so over the 5 GiB of one PUT
//!    too), or, with `--url`, taken from where the caller hosts it;
//! 3. `POST /v2/images` with the object's plain URL (at the Space endpoint, or at
//!    `--space-public-url`, e.g. the Space's CDN) or the caller's, then
//!    `GET /v2/images/{id}` until `available` (or its `error_message`);
//! 4. the uploaded object is deleted whatever happened (unless `--keep-upload`): it is
//!    public while it exists. SIGINT and SIGTERM stop the upload or the wait, the
//!    object is deleted, and the import fails with [`DoBakeError::Interrupted`] (as a
//!    bake does; a second signal abandons the delete, naming the object).
//!
//! The disk must be one that boots by itself (the local backend's golden disks are):
//! DigitalOcean boots custom images from their own bootloader. The command checks it
//! ([`crate::backend::qemu::disk::is_whole_disk`]) before calling [`import`].

use std::path::{Path, PathBuf};

use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::ObjectCannedAcl;
use serde::Serialize;

use artifact_store::multipart::{self, Multipart, ObjectOptions, PartOptions, SendError};
use artifact_store::s3::{self, RemoteError, S3Credentials, S3Settings};
use do_api::{Client, CustomImageCreate, ImportState, Poll};

use super::{DoBakeError, Signals, api};
use crate::backend::qemu::{self, run_logged};

/// Where the disk comes from.
#[derive(Debug)]
pub enum ImportSource {
    /// A URL the caller hosts (it must answer HEAD and GET); nothing is uploaded.
    Url(String),
    /// A local disk, uploaded to a Space first.
    Disk {
        /// The disk (the golden qcow2 of `bake --backend qemu`, or raw).
        path: PathBuf,
        /// Its virtual size in bytes ([`disk_virtual_size`]).
        virtual_size: u64,
        /// The Space.
        space: S3Settings,
        /// Its keys.
        credentials: S3Credentials,
        /// Where DigitalOcean fetches the object from: this base URL and the key
        /// (e.g. the Space's CDN endpoint) [default: the object's URL at the endpoint].
        public_url: Option<String>,
    },
}

/// What `images import` does.
#[derive(Debug)]
pub struct ImportOptions {
    /// The disk or URL.
    pub source: ImportSource,
    /// The custom image's name.
    pub name: String,
    /// The region it is imported into.
    pub region: String,
    /// The distribution DigitalOcean shows (e.g. Debian).
    pub distribution: String,
    /// A description.
    pub description: Option<String>,
    /// Tags for the image.
    pub tags: Vec<String>,
    /// Leave the uploaded (public) object in the Space.
    pub keep_upload: bool,
    /// How often and how long to wait for `available`.
    pub poll: Poll,
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
    /// The manifest written for it (`--out`).
    pub manifest: Option<std::path::PathBuf>,
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

/// The virtual size of `disk` in bytes, refused at DigitalOcean's limit: custom images
/// must be under 100 GB.
pub fn disk_virtual_size(disk: &Path) -> Result<u64, DoBakeError> {
    let size = qemu::vm::virtual_size(disk).map_err(|e| config(e.to_string()))?;
    if size >= 100_000_000_000 {
        return Err(config(format!(
            "{}: {size} bytes; DigitalOcean imports images under 100 GB",
            disk.display()
        )));
    }
    Ok(size)
}

/// Convert `disk` to a zlib-compressed qcow2 (compat 1.1) at `out`.
fn importable_qcow2(disk: &Path, out: &Path) -> Result<u64, DoBakeError> {
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

/// The plain (unsigned) URL of `key`: what DigitalOcean fetches. Under `public_url`
/// when given, else at the Space endpoint.
fn object_url(settings: &S3Settings, public_url: Option<&str>, key: &str) -> String {
    if let Some(base) = public_url {
        return format!("{}/{key}", base.trim_end_matches('/'));
    }
    let endpoint = settings.endpoint.trim_end_matches('/');
    if settings.path_style {
        return format!("{endpoint}/{}/{key}", settings.bucket);
    }
    match endpoint.split_once("://") {
        Some((scheme, host)) => format!("{scheme}://{}.{host}/{key}", settings.bucket),
        None => format!("https://{}.{endpoint}/{key}", settings.bucket),
    }
}

/// The object an import uploads, deleted when the import ends.
struct Upload {
    s3: aws_sdk_s3::Client,
    bucket: String,
    key: String,
    size: u64,
}

impl Upload {
    /// Delete the object (unless `keep`); a second signal abandons the delete.
    async fn end(self, keep: bool, signals: &mut Signals) -> Uploaded {
        let object = format!("s3://{}/{}", self.bucket, self.key);
        let deleted = if keep {
            false
        } else {
            let delete = self
                .s3
                .delete_object()
                .bucket(&self.bucket)
                .key(&self.key)
                .send();
            let outcome = tokio::select! {
                r = delete => r.map(drop).map_err(|e| s3::error_chain(&e)),
                s = signals.recv() => Err(format!("the delete was abandoned on {s}")),
            };
            match outcome {
                Ok(()) => true,
                Err(why) => {
                    tracing::warn!(
                        "could not delete the uploaded disk: {why}; delete {object} yourself (it is public)"
                    );
                    false
                }
            }
        };
        Uploaded {
            object,
            size: self.size,
            deleted,
        }
    }
}

/// How long a failed conversion waits for the signal that may have stopped qemu-img.
const SIGNAL_GRACE: std::time::Duration = std::time::Duration::from_millis(200);

/// Run `images import`. SIGINT and SIGTERM are handled from the start: one during the
/// conversion stops the import once qemu-img ends (at once when it got the signal too,
/// as from a terminal), before anything is uploaded.
pub async fn import(opts: &ImportOptions, client: &Client) -> Result<ImportReport, DoBakeError> {
    let mut signals = Signals::new()?;
    let (url, upload) = match &opts.source {
        ImportSource::Url(url) => (url.clone(), None),
        ImportSource::Disk {
            path: disk,
            space: settings,
            credentials,
            public_url,
            virtual_size: _,
        } => {
            let work = tempfile::tempdir().map_err(|e| config(format!("temp dir: {e}")))?;
            let file = work.path().join(format!("{}.qcow2", opts.name));
            tracing::info!("converting {} for import", disk.display());
            let converted = importable_qcow2(disk, &file);
            if converted.is_err() {
                // Ctrl-C at a terminal stops qemu-img too: its failure is then the interruption.
                let signalled = tokio::time::timeout(SIGNAL_GRACE, signals.recv()).await;
                if let Ok(s) = signalled {
                    return Err(DoBakeError::Interrupted(s));
                }
            }
            let size = converted?;
            let suffix = &uuid::Uuid::new_v4().simple().to_string()[..8];
            let upload = Upload {
                s3: s3::client(settings, credentials, None),
                bucket: settings.bucket.clone(),
                key: format!("imports/{}-{suffix}.qcow2", opts.name),
                size,
            };
            let put = if size >= multipart_threshold() {
                put_public_parts(&upload, &file, &mut signals).await
            } else {
                tokio::select! {
                    biased;
                    s = signals.recv() => Err(DoBakeError::Interrupted(s)),
                    r = put_public(&upload, &file) => r,
                }
            };
            match put {
                Ok(()) => {}
                // The object may exist (the PUT was sent): it is public.
                Err(e @ DoBakeError::Interrupted(_)) => {
                    upload.end(opts.keep_upload, &mut signals).await;
                    return Err(e);
                }
                Err(e) => return Err(e),
            }
            let url = object_url(settings, public_url.as_deref(), &upload.key);
            (url, Some(upload))
        }
    };

    let mut created = None;
    let result = tokio::select! {
        r = create_and_wait(opts, client, &url, &mut created) => r,
        s = signals.recv() => Err(DoBakeError::Interrupted(s)),
    };
    if let (Err(DoBakeError::Interrupted(s)), Some(id)) = (&result, created) {
        tracing::warn!(
            "{s}: stopping the import; custom image {id} stays with DigitalOcean (delete it if unwanted)"
        );
    }
    let uploaded = match upload {
        None => None,
        Some(u) => Some(u.end(opts.keep_upload, &mut signals).await),
    };
    let image = result?;
    Ok(ImportReport {
        image_id: image.id,
        name: image.name,
        status: image.status.unwrap_or_default(),
        regions: image.regions,
        url,
        uploaded,
        manifest: None,
    })
}

/// Disks from this size on go up as a multipart upload, in parts sent several at a time
/// (and over the 5 GiB one PUT carries): the same threshold as `artifact publish`.
fn multipart_threshold() -> u64 {
    artifact_store::publish::PublishOptions::default().multipart_threshold
}

/// Upload `file` as the upload's object, public-read, in parts (as `artifact publish`
/// sends big files). A signal, or a failed part, aborts the multipart upload: no part
/// is left in the Space.
async fn put_public_parts(
    upload: &Upload,
    file: &Path,
    signals: &mut Signals,
) -> Result<(), DoBakeError> {
    let space = |source: RemoteError| DoBakeError::Space {
        during: "uploading the disk",
        source: Box::new(source.into()),
    };
    let tuning = artifact_store::publish::PublishOptions::default();
    tracing::info!(
        "uploading {} bytes to s3://{}/{} in parts of {} (public-read until the import ends)",
        upload.size,
        upload.bucket,
        upload.key,
        multipart::part_size(upload.size, tuning.part_size)
    );
    let object = ObjectOptions {
        content_type: Some("application/octet-stream".into()),
        acl: Some(ObjectCannedAcl::PublicRead),
        metadata: Vec::new(),
    };
    let parts = Multipart::create(&upload.s3, &upload.bucket, &upload.key, &object)
        .await
        .map_err(space)?;
    let options = PartOptions {
        part_size: tuning.part_size,
        concurrency: tuning.concurrency,
        sem: None,
        progress: None,
    };
    // A failed part or completion aborts the upload itself; a signal stops it here.
    let done = tokio::select! {
        biased;
        s = signals.recv() => Err(DoBakeError::Interrupted(s)),
        r = parts.upload(file, upload.size, options) => r.map_err(|e| match e {
            SendError::Local(e) => config(format!("{}: {e}", file.display())),
            SendError::Remote(r) => space(r),
        }),
    };
    if let Err(DoBakeError::Interrupted(_)) = done {
        parts.abort().await;
    }
    done
}

/// PUT `file` as the upload's object, public-read.
async fn put_public(upload: &Upload, file: &Path) -> Result<(), DoBakeError> {
    tracing::info!(
        "uploading {} bytes to s3://{}/{} (public-read until the import ends)",
        upload.size,
        upload.bucket,
        upload.key
    );
    let body = ByteStream::from_path(file)
        .await
        .map_err(|e| config(format!("{}: {e}", file.display())))?;
    upload
        .s3
        .put_object()
        .bucket(&upload.bucket)
        .key(&upload.key)
        .acl(ObjectCannedAcl::PublicRead)
        .content_type("application/octet-stream")
        .content_length(i64::try_from(upload.size).unwrap_or(i64::MAX))
        .body(body)
        .send()
        .await
        .map_err(|e| DoBakeError::Space {
            during: "uploading the disk",
            source: Box::new(s3::classify(&e, "PutObject", &upload.bucket, &upload.key).into()),
        })?;
    Ok(())
}

/// The image's tags: [`super::TAG`] like every image a bake makes (so `images ls`,
/// `images prune` and `fleet up` know it), then the caller's, each once.
pub fn image_tags(extra: &[String]) -> Vec<String> {
    let mut tags = vec![super::TAG.to_owned()];
    for t in extra {
        if !tags.contains(t) {
            tags.push(t.clone());
        }
    }
    tags
}

/// Create the custom image (its id goes to `created`) and wait for it.
async fn create_and_wait(
    opts: &ImportOptions,
    client: &Client,
    url: &str,
    created_id: &mut Option<u64>,
) -> Result<do_api::Image, DoBakeError> {
    let created = client
        .create_custom_image(&CustomImageCreate {
            name: opts.name.clone(),
            url: url.to_owned(),
            region: opts.region.clone(),
            distribution: Some(opts.distribution.clone()),
            description: opts.description.clone(),
            tags: image_tags(&opts.tags),
        })
        .await
        .map_err(api("creating the custom image"))?;
    *created_id = Some(created.id);
    tracing::info!(
        "custom image {} created ({}); waiting for DigitalOcean to import it",
        created.id,
        created.status.as_deref().unwrap_or("NEW")
    );
    let image = client
        .wait_custom_image(created.id, opts.poll)
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
            object_url(&s, None, "imports/golden-1.qcow2"),
            "https://ci-artifacts.nyc3.digitaloceanspaces.com/imports/golden-1.qcow2"
        );
        s.endpoint = "http://127.0.0.1:9000/".into();
        s.path_style = true;
        assert_eq!(
            object_url(&s, None, "imports/golden-1.qcow2"),
            "http://127.0.0.1:9000/ci-artifacts/imports/golden-1.qcow2"
        );
    }

    #[test]
    fn a_public_url_is_the_base_the_key_is_appended_to() {
        let s = S3Settings {
            endpoint: "https://nyc3.digitaloceanspaces.com".into(),
            region: "us-east-1".into(),
            bucket: "ci-artifacts".into(),
            path_style: false,
        };
        for base in [
            "https://ci-artifacts.nyc3.cdn.digitaloceanspaces.com",
            "https://ci-artifacts.nyc3.cdn.digitaloceanspaces.com/",
        ] {
            assert_eq!(
                object_url(&s, Some(base), "imports/golden-1.qcow2"),
                "https://ci-artifacts.nyc3.cdn.digitaloceanspaces.com/imports/golden-1.qcow2"
            );
        }
    }
}
