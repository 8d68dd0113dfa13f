//! Publish a build: upload files under `builds/<sha>/`, then the manifest, last.
//!
//! - Files already present with the same SHA-256 (user metadata `sha256`) and size
//!   are skipped, so publishing again is cheap and repairs a half-done upload.
//! - Files at or above [`PublishOptions::multipart_threshold`] go as multipart
//!   uploads (parts in parallel); all requests share one concurrency bound.
//! - A sha whose manifest already exists with a different file list is refused
//!   unless [`PublishOptions::force`] (a sha names one build).

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Instant;

use aws_sdk_s3::Client;
use aws_sdk_s3::primitives::{ByteStream, Length};
use futures::{StreamExt as _, TryStreamExt as _};
use indicatif::ProgressBar;
use serde::Serialize;
use sha2::Digest as _;
use tokio::sync::Semaphore;

use super::manifest::{self, FileEntry, Manifest, ManifestError};
use super::multipart::{Multipart, ObjectOptions, PartOptions, SendError};
use super::s3::{RemoteError, RemoteKind, classify};
use super::{META_SHA256, manifest_key, object_key};

/// Tuning of [`publish`].
#[derive(Debug, Clone)]
pub struct PublishOptions {
    /// Requests in flight at most.
    pub concurrency: usize,
    /// Files of at least this size use multipart upload.
    pub multipart_threshold: u64,
    /// Part size of multipart uploads (S3 wants ≥ 5 MiB except the last part).
    pub part_size: u64,
    /// Overwrite a manifest that lists different files.
    pub force: bool,
}

impl Default for PublishOptions {
    fn default() -> Self {
        Self {
            concurrency: 8,
            multipart_threshold: 64 << 20,
            part_size: 16 << 20,
            force: false,
        }
    }
}

/// A local file to publish.
#[derive(Debug, Clone)]
pub struct LocalFile {
    /// Path in the build (manifest path).
    pub rel: String,
    /// Where it is on disk.
    pub abs: PathBuf,
    /// Size.
    pub size: u64,
    /// Permission bits.
    pub mode: u32,
}

/// What [`publish`] did (printed by `--json`).
#[derive(Debug, Clone, Serialize)]
pub struct PublishReport {
    /// The build sha.
    pub sha: String,
    /// The bucket.
    pub bucket: String,
    /// The manifest key.
    pub manifest_key: String,
    /// Files in the build.
    pub files: usize,
    /// Files uploaded now.
    pub uploaded: usize,
    /// Files already present with the same sha256.
    pub skipped: usize,
    /// Of the uploaded files, how many went multipart.
    pub multipart: usize,
    /// Bytes uploaded now.
    pub bytes_uploaded: u64,
    /// Bytes in the build.
    pub bytes_total: u64,
    /// "written" or "unchanged".
    pub manifest: &'static str,
    /// Wall time.
    pub seconds: f64,
}

/// Why a publish failed.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// A path cannot be read.
    #[error("{}: {source}", path.display())]
    Local {
        /// The path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Not a regular file or directory.
    #[error("{}: not a regular file or directory (symlinked directories are not followed)", .0.display())]
    Unsupported(PathBuf),
    /// Nothing to publish.
    #[error("no files to publish")]
    NoFiles,
    /// A path cannot be a manifest path (non-UTF-8, unsafe, or duplicate).
    #[error("{}: {reason}", path.display())]
    BadPath {
        /// The local path.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The manifest rules rejected the build.
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    /// The store refused or failed.
    #[error(transparent)]
    Remote(#[from] RemoteError),
    /// Another build is already published under this sha.
    #[error(
        "sha {sha} is already published with different files ({existing} files); a sha names one build — use --force to overwrite"
    )]
    Conflict {
        /// The sha.
        sha: String,
        /// Files in the existing manifest.
        existing: usize,
    },
    /// `git rev-parse HEAD` failed.
    #[error("cannot determine the build sha with `git rev-parse HEAD` in {}: {detail} (pass --sha)", dir.display())]
    Git {
        /// Where git ran.
        dir: PathBuf,
        /// Git's message.
        detail: String,
    },
}

/// The sha of `HEAD` in `dir` (the default build key).
pub fn git_head_sha(dir: &Path) -> Result<String, PublishError> {
    let git_err = |detail: String| PublishError::Git {
        dir: dir.to_path_buf(),
        detail,
    };
    let out = std::process::Command::new("git")
        .args(["rev-parse", "HEAD"])
        .current_dir(dir)
        .output()
        .map_err(|e| git_err(e.to_string()))?;
    if !out.status.success() {
        return Err(git_err(
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ));
    }
    let sha = String::from_utf8_lossy(&out.stdout).trim().to_string();
    manifest::validate_sha(&sha)?;
    Ok(sha)
}

/// Expand `paths` into files: a file contributes its base name, a directory its
/// files under the directory's own name (`cp -r PATH... dest/` semantics).
pub fn collect_files(paths: &[PathBuf]) -> Result<Vec<LocalFile>, PublishError> {
    let mut out = Vec::new();
    for p in paths {
        let meta = std::fs::metadata(p).map_err(|source| PublishError::Local {
            path: p.clone(),
            source,
        })?;
        let canon = std::fs::canonicalize(p).map_err(|source| PublishError::Local {
            path: p.clone(),
            source,
        })?;
        let name = canon
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| PublishError::BadPath {
                path: p.clone(),
                reason: "has no UTF-8 file name".into(),
            })?
            .to_string();
        if meta.is_file() {
            out.push(local_file(p, name, &meta));
        } else if meta.is_dir() {
            walk(p, &name, &mut out)?;
        } else {
            return Err(PublishError::Unsupported(p.clone()));
        }
    }
    if out.is_empty() {
        return Err(PublishError::NoFiles);
    }
    out.sort_by(|a, b| a.rel.cmp(&b.rel));
    for w in out.windows(2) {
        if w[0].rel == w[1].rel {
            return Err(PublishError::BadPath {
                path: w[1].abs.clone(),
                reason: format!("maps to {:?}, like {}", w[1].rel, w[0].abs.display()),
            });
        }
    }
    for f in &out {
        if let Some(reason) = manifest::path_problem(&f.rel) {
            return Err(PublishError::BadPath {
                path: f.abs.clone(),
                reason: format!("artifact path {:?} {reason}", f.rel),
            });
        }
    }
    Ok(out)
}

fn local_file(abs: &Path, rel: String, meta: &std::fs::Metadata) -> LocalFile {
    LocalFile {
        rel,
        abs: abs.to_path_buf(),
        size: meta.len(),
        mode: meta.permissions().mode() & 0o777,
    }
}

fn walk(dir: &Path, rel: &str, out: &mut Vec<LocalFile>) -> Result<(), PublishError> {
    let local = |source| PublishError::Local {
        path: dir.to_path_buf(),
        source,
    };
    for entry in std::fs::read_dir(dir).map_err(local)? {
        let entry = entry.map_err(local)?;
        let path = entry.path();
        let name = entry
            .file_name()
            .into_string()
            .map_err(|_| PublishError::BadPath {
                path: path.clone(),
                reason: "file name is not UTF-8".into(),
            })?;
        let child_rel = format!("{rel}/{name}");
        let lmeta = entry.metadata().map_err(local)?;
        if lmeta.is_dir() {
            walk(&path, &child_rel, out)?;
            continue;
        }
        // Follow symlinks to files, not to directories (no loops).
        let meta = std::fs::metadata(&path).map_err(|source| PublishError::Local {
            path: path.clone(),
            source,
        })?;
        if meta.is_file() {
            out.push(local_file(&path, child_rel, &meta));
        } else {
            return Err(PublishError::Unsupported(path));
        }
    }
    Ok(())
}

pub use crate::digest::sha256_file;

async fn hash_all(files: &[LocalFile], concurrency: usize) -> Result<Vec<FileEntry>, PublishError> {
    futures::stream::iter(files.iter().cloned())
        .map(|f| async move {
            let abs = f.abs.clone();
            let digest = tokio::task::spawn_blocking(move || sha256_file(&abs))
                .await
                .map_err(|e| PublishError::Local {
                    path: f.abs.clone(),
                    source: std::io::Error::other(e),
                })?
                .map_err(|source| PublishError::Local {
                    path: f.abs.clone(),
                    source,
                })?;
            Ok::<_, PublishError>(FileEntry {
                path: f.rel,
                size: f.size,
                sha256: digest,
                mode: f.mode,
            })
        })
        .buffered(concurrency.max(1))
        .try_collect()
        .await
}

/// Read an existing manifest; `Ok(None)` when there is none.
pub async fn fetch_manifest(
    client: &Client,
    bucket: &str,
    sha: &str,
) -> Result<Option<Result<Manifest, ManifestError>>, RemoteError> {
    let key = manifest_key(sha);
    match client.get_object().bucket(bucket).key(&key).send().await {
        Ok(out) => {
            let body = out.body.collect().await.map_err(|e| RemoteError {
                kind: RemoteKind::Unreachable,
                operation: "GetObject",
                bucket: bucket.to_string(),
                key: key.clone(),
                status: None,
                code: None,
                message: super::s3::error_chain(&e),
            })?;
            Ok(Some(Manifest::from_json(&body.into_bytes(), sha)))
        }
        Err(e) => {
            let r = classify(&e, "GetObject", bucket, &key);
            if r.kind == RemoteKind::NotFound {
                Ok(None)
            } else {
                Err(r)
            }
        }
    }
}

struct Ctx<'a> {
    client: &'a Client,
    bucket: &'a str,
    sha: &'a str,
    opts: &'a PublishOptions,
    sem: Arc<Semaphore>,
    progress: Option<&'a ProgressBar>,
    uploaded: AtomicUsize,
    multipart: AtomicUsize,
    bytes: AtomicU64,
}

/// Publish `paths` as build `sha` to `bucket`. The manifest goes last.
pub async fn publish(
    client: &Client,
    bucket: &str,
    sha: &str,
    paths: &[PathBuf],
    opts: &PublishOptions,
    progress: Option<&ProgressBar>,
) -> Result<PublishReport, PublishError> {
    let start = Instant::now();
    manifest::validate_sha(sha)?;
    let files = collect_files(paths)?;
    let entries = hash_all(&files, opts.concurrency).await?;
    let manifest = Manifest::new(sha, entries.clone())?;

    let existing = fetch_manifest(client, bucket, sha).await?;
    let unchanged = match &existing {
        Some(Ok(m)) if m.files == manifest.files => true,
        Some(Ok(m)) if !opts.force => {
            return Err(PublishError::Conflict {
                sha: sha.to_string(),
                existing: m.files.len(),
            });
        }
        _ => false,
    };

    let total: u64 = files.iter().map(|f| f.size).sum();
    if let Some(p) = progress {
        p.set_length(total);
    }
    let ctx = Ctx {
        client,
        bucket,
        sha,
        opts,
        sem: Arc::new(Semaphore::new(opts.concurrency.max(1))),
        progress,
        uploaded: AtomicUsize::new(0),
        multipart: AtomicUsize::new(0),
        bytes: AtomicU64::new(0),
    };
    let by_path: std::collections::HashMap<&str, &FileEntry> =
        entries.iter().map(|e| (e.path.as_str(), e)).collect();
    // Owned items keep the future `Send` for `tokio::spawn`.
    let jobs: Vec<(LocalFile, FileEntry)> = files
        .iter()
        .filter_map(|f| {
            by_path
                .get(f.rel.as_str())
                .map(|e| (f.clone(), (*e).clone()))
        })
        .collect();
    let ctx_ref = &ctx;
    futures::stream::iter(jobs)
        .map(|(f, e)| async move { upload_file(ctx_ref, &f, &e).await })
        .buffer_unordered(opts.concurrency.max(1))
        .try_collect::<Vec<()>>()
        .await?;

    // Every file is in place: now (and only now) make the build visible.
    if !unchanged {
        let body = manifest.to_json();
        let digest = hex::encode(sha2::Sha256::digest(&body));
        let key = manifest_key(sha);
        client
            .put_object()
            .bucket(bucket)
            .key(&key)
            .content_type("application/json")
            .metadata(META_SHA256, digest)
            .body(ByteStream::from(body))
            .send()
            .await
            .map_err(|e| classify(&e, "PutObject", bucket, &key))?;
    }
    let uploaded = ctx.uploaded.load(Ordering::Relaxed);
    Ok(PublishReport {
        sha: sha.to_string(),
        bucket: bucket.to_string(),
        manifest_key: manifest_key(sha),
        files: files.len(),
        uploaded,
        skipped: files.len() - uploaded,
        multipart: ctx.multipart.load(Ordering::Relaxed),
        bytes_uploaded: ctx.bytes.load(Ordering::Relaxed),
        bytes_total: total,
        manifest: if unchanged { "unchanged" } else { "written" },
        seconds: start.elapsed().as_secs_f64(),
    })
}

async fn upload_file(ctx: &Ctx<'_>, f: &LocalFile, e: &FileEntry) -> Result<(), PublishError> {
    let key = object_key(ctx.sha, &e.path);
    {
        let _permit = ctx.sem.acquire().await.ok();
        match ctx
            .client
            .head_object()
            .bucket(ctx.bucket)
            .key(&key)
            .send()
            .await
        {
            Ok(h) => {
                let same_digest = h
                    .metadata()
                    .and_then(|m| m.get(META_SHA256))
                    .is_some_and(|d| d == &e.sha256);
                if same_digest && h.content_length() == Some(e.size as i64) {
                    tracing::debug!("{key}: present with the same sha256, skipped");
                    if let Some(p) = ctx.progress {
                        p.inc(e.size);
                    }
                    return Ok(());
                }
            }
            Err(err) => {
                let r = classify(&err, "HeadObject", ctx.bucket, &key);
                if r.kind != RemoteKind::NotFound {
                    return Err(r.into());
                }
            }
        }
    }
    if e.size >= ctx.opts.multipart_threshold && e.size > ctx.opts.part_size {
        upload_multipart(ctx, f, e, &key).await?;
        ctx.multipart.fetch_add(1, Ordering::Relaxed);
    } else {
        let _permit = ctx.sem.acquire().await.ok();
        let body = ByteStream::read_from()
            .path(&f.abs)
            .length(Length::Exact(e.size))
            .build()
            .await
            .map_err(|err| PublishError::Local {
                path: f.abs.clone(),
                source: std::io::Error::other(err),
            })?;
        ctx.client
            .put_object()
            .bucket(ctx.bucket)
            .key(&key)
            .content_length(e.size as i64)
            .content_type("application/octet-stream")
            .metadata(META_SHA256, &e.sha256)
            .body(body)
            .send()
            .await
            .map_err(|err| classify(&err, "PutObject", ctx.bucket, &key))?;
        if let Some(p) = ctx.progress {
            p.inc(e.size);
        }
    }
    ctx.uploaded.fetch_add(1, Ordering::Relaxed);
    ctx.bytes.fetch_add(e.size, Ordering::Relaxed);
    Ok(())
}

async fn upload_multipart(
    ctx: &Ctx<'_>,
    f: &LocalFile,
    e: &FileEntry,
    key: &str,
) -> Result<(), PublishError> {
    let object = ObjectOptions {
        content_type: Some("application/octet-stream".into()),
        acl: None,
        metadata: vec![(META_SHA256.to_owned(), e.sha256.clone())],
    };
    let upload = {
        let _permit = ctx.sem.acquire().await.ok();
        Multipart::create(ctx.client, ctx.bucket, key, &object).await?
    };
    let parts = PartOptions {
        part_size: ctx.opts.part_size,
        concurrency: ctx.opts.concurrency,
        sem: Some(&*ctx.sem),
        progress: ctx.progress,
    };
    upload
        .upload(&f.abs, e.size, parts)
        .await
        .map_err(|err| match err {
            SendError::Local(source) => PublishError::Local {
                path: f.abs.clone(),
                source,
            },
            SendError::Remote(r) => r.into(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collects_files_and_directories_with_cp_semantics() {
        let d = tempfile::tempdir().unwrap();
        let out = d.path().join("out");
        std::fs::create_dir_all(out.join("sub")).unwrap();
        std::fs::write(out.join("a"), "a").unwrap();
        std::fs::write(out.join("sub/b"), "bb").unwrap();
        std::fs::write(d.path().join("tool"), "t").unwrap();
        std::fs::set_permissions(
            d.path().join("tool"),
            std::fs::Permissions::from_mode(0o755),
        )
        .unwrap();
        let files = collect_files(&[out.clone(), d.path().join("tool")]).unwrap();
        let rels: Vec<_> = files.iter().map(|f| (f.rel.as_str(), f.size)).collect();
        assert_eq!(rels, [("out/a", 1), ("out/sub/b", 2), ("tool", 1)]);
        assert_eq!(files[2].mode, 0o755);
        let e = collect_files(&[d.path().join("tool"), d.path().join("tool")]).unwrap_err();
        assert!(e.to_string().contains("maps to \"tool\""), "{e}");
        let e = collect_files(&[d.path().join("missing")]).unwrap_err();
        assert!(e.to_string().contains("missing"), "{e}");
    }
}
