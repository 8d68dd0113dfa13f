//! `ls` and `gc` over the bucket.
//!
//! A sha is a published build exactly when `builds/<sha>/manifest.json` exists.
//! `gc --keep N` keeps the N newest published builds (by the manifest's
//! `created_at`), deletes the others (manifest first, so a build disappears
//! atomically for pullers, then its files), and deletes incomplete prefixes
//! (no manifest) whose newest object is older than a bound, so a publish in
//! progress is left alone.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use aws_sdk_s3::Client;
use futures::{StreamExt as _, TryStreamExt as _};
use serde::Serialize;
use tokio::sync::Semaphore;

use super::manifest::{self, Manifest};
use super::publish::fetch_manifest;
use super::s3::{RemoteError, classify};
use super::{BUILDS_PREFIX, MANIFEST_NAME, build_prefix, manifest_key};

/// One sha's prefix in the bucket.
#[derive(Debug, Clone, Serialize)]
pub struct BuildInfo {
    /// The sha.
    pub sha: String,
    /// The manifest exists (published).
    pub complete: bool,
    /// `created_at` from the manifest (published builds).
    pub created_at: Option<String>,
    /// Files in the manifest (published builds).
    pub files: Option<usize>,
    /// Bytes in the manifest (published builds).
    pub manifest_bytes: Option<u64>,
    /// Objects under the prefix (including the manifest).
    pub objects: usize,
    /// Bytes under the prefix.
    pub stored_bytes: u64,
    /// Newest object's modification time (RFC 3339).
    pub last_modified: Option<String>,
    /// Why the manifest could not be read, if it exists but is invalid.
    pub manifest_error: Option<String>,
    #[serde(skip)]
    keys: Vec<String>,
    #[serde(skip)]
    newest: Option<SystemTime>,
}

fn rfc3339(t: SystemTime) -> Option<String> {
    time::OffsetDateTime::from(t)
        .format(&time::format_description::well_known::Rfc3339)
        .ok()
}

/// Every sha prefix under `builds/`, newest published first, incomplete ones last.
pub async fn list_all(client: &Client, bucket: &str) -> Result<Vec<BuildInfo>, RemoteError> {
    let mut by_sha: BTreeMap<String, BuildInfo> = BTreeMap::new();
    let mut pages = client
        .list_objects_v2()
        .bucket(bucket)
        .prefix(BUILDS_PREFIX)
        .into_paginator()
        .send();
    while let Some(page) = pages.next().await {
        let page = page.map_err(|e| classify(&e, "ListObjectsV2", bucket, BUILDS_PREFIX))?;
        for obj in page.contents() {
            let Some(key) = obj.key() else { continue };
            let Some(rest) = key.strip_prefix(BUILDS_PREFIX) else {
                continue;
            };
            let Some((sha, path)) = rest.split_once('/') else {
                continue;
            };
            if manifest::validate_sha(sha).is_err() {
                continue;
            }
            let b = by_sha.entry(sha.to_string()).or_insert_with(|| BuildInfo {
                sha: sha.to_string(),
                complete: false,
                created_at: None,
                files: None,
                manifest_bytes: None,
                objects: 0,
                stored_bytes: 0,
                last_modified: None,
                manifest_error: None,
                keys: Vec::new(),
                newest: None,
            });
            if path == MANIFEST_NAME {
                b.complete = true;
            }
            b.objects += 1;
            b.stored_bytes += obj.size().unwrap_or(0).max(0) as u64;
            b.keys.push(key.to_string());
            if let Some(t) = obj
                .last_modified()
                .and_then(|t| SystemTime::try_from(*t).ok())
                && b.newest.is_none_or(|n| t > n)
            {
                b.newest = Some(t);
                b.last_modified = rfc3339(t);
            }
        }
    }
    let mut builds: Vec<BuildInfo> = by_sha.into_values().collect();
    // Read the published manifests (for created_at and the file list size).
    let reads = futures::stream::iter(builds.iter().filter(|b| b.complete).map(|b| {
        let sha = b.sha.clone();
        async move { (sha.clone(), fetch_manifest(client, bucket, &sha).await) }
    }))
    .buffer_unordered(8)
    .collect::<Vec<_>>()
    .await;
    for (sha, res) in reads {
        let Some(b) = builds.iter_mut().find(|b| b.sha == sha) else {
            continue;
        };
        match res? {
            Some(Ok(m)) => fill(b, &m),
            Some(Err(e)) => b.manifest_error = Some(e.to_string()),
            // Deleted between the listing and the read.
            None => b.complete = false,
        }
    }
    builds.sort_by(|a, b| {
        b.complete
            .cmp(&a.complete)
            .then_with(|| b.created_at.cmp(&a.created_at))
            .then_with(|| b.newest.cmp(&a.newest))
    });
    Ok(builds)
}

fn fill(b: &mut BuildInfo, m: &Manifest) {
    b.created_at = Some(m.created_at.clone());
    b.files = Some(m.files.len());
    b.manifest_bytes = Some(m.total_bytes());
}

/// Published builds only (what `ls` shows), newest first.
pub async fn list_builds(client: &Client, bucket: &str) -> Result<Vec<BuildInfo>, RemoteError> {
    Ok(list_all(client, bucket)
        .await?
        .into_iter()
        .filter(|b| b.complete)
        .collect())
}

/// Options of [`gc`].
#[derive(Debug, Clone)]
pub struct GcOptions {
    /// Published builds to keep (newest first).
    pub keep: usize,
    /// Incomplete prefixes untouched for longer than this are deleted.
    pub incomplete_older_than: Duration,
    /// Only report what would be deleted.
    pub dry_run: bool,
}

/// What [`gc`] did.
#[derive(Debug, Clone, Serialize)]
pub struct GcReport {
    /// Published builds kept.
    pub kept: Vec<String>,
    /// Published builds deleted.
    pub deleted: Vec<String>,
    /// Incomplete prefixes deleted.
    pub deleted_incomplete: Vec<String>,
    /// Incomplete prefixes left alone (recent: maybe a publish in progress).
    pub incomplete_kept: Vec<String>,
    /// Objects deleted.
    pub objects_deleted: usize,
    /// Bytes freed.
    pub bytes_freed: u64,
    /// Nothing was deleted (dry run).
    pub dry_run: bool,
}

/// Delete old builds; see the module docs.
pub async fn gc(client: &Client, bucket: &str, opts: &GcOptions) -> Result<GcReport, RemoteError> {
    let all = list_all(client, bucket).await?;
    let now = SystemTime::now();
    let mut report = GcReport {
        kept: vec![],
        deleted: vec![],
        deleted_incomplete: vec![],
        incomplete_kept: vec![],
        objects_deleted: 0,
        bytes_freed: 0,
        dry_run: opts.dry_run,
    };
    let mut doomed: Vec<&BuildInfo> = Vec::new();
    let mut published = 0usize;
    for b in &all {
        if b.complete {
            published += 1;
            if published <= opts.keep {
                report.kept.push(b.sha.clone());
            } else {
                report.deleted.push(b.sha.clone());
                doomed.push(b);
            }
        } else {
            let age = b
                .newest
                .and_then(|t| now.duration_since(t).ok())
                .unwrap_or_default();
            if age > opts.incomplete_older_than {
                report.deleted_incomplete.push(b.sha.clone());
                doomed.push(b);
            } else {
                report.incomplete_kept.push(b.sha.clone());
            }
        }
    }
    for b in &doomed {
        report.objects_deleted += b.objects;
        report.bytes_freed += b.stored_bytes;
    }
    if opts.dry_run {
        return Ok(report);
    }
    let sem = Arc::new(Semaphore::new(8));
    for b in doomed {
        // The manifest first: the build stops being published before its files go.
        let mkey = manifest_key(&b.sha);
        if b.complete {
            delete(client, bucket, &mkey).await?;
        }
        futures::stream::iter(b.keys.iter().filter(|k| **k != mkey))
            .map(|k| {
                let sem = sem.clone();
                async move {
                    let _p = sem.acquire().await.ok();
                    delete(client, bucket, k).await
                }
            })
            .buffer_unordered(8)
            .try_collect::<Vec<()>>()
            .await?;
        tracing::info!("gc: deleted {}", build_prefix(&b.sha));
    }
    Ok(report)
}

async fn delete(client: &Client, bucket: &str, key: &str) -> Result<(), RemoteError> {
    client
        .delete_object()
        .bucket(bucket)
        .key(key)
        .send()
        .await
        .map(|_| ())
        .map_err(|e| classify(&e, "DeleteObject", bucket, key))
}
