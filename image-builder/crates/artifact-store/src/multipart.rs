//! One local file as an S3 multipart upload: [`Multipart::create`], then
//! [`Multipart::upload`] (the parts, several at a time, and the completion; aborted when
//! any of it fails). A caller that stops an upload midway (a signal) calls
//! [`Multipart::abort`], so no parts are left in the bucket (stores keep and bill the
//! parts of an unfinished upload). Used by [`crate::publish`] for big build files and by
//! `images import` for disks over the 5 GiB a single PUT carries.

use std::path::Path;

use aws_sdk_s3::Client;
use aws_sdk_s3::primitives::{ByteStream, Length};
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart, ObjectCannedAcl};
use futures::{StreamExt as _, TryStreamExt as _};
use indicatif::ProgressBar;
use tokio::sync::Semaphore;

use super::s3::{RemoteError, RemoteKind, classify};

/// S3's smallest part (all but the last).
pub const MIN_PART_SIZE: u64 = 5 << 20;
/// S3's most parts in one upload.
pub const MAX_PARTS: u64 = 10_000;

/// What the object is created with.
#[derive(Debug, Clone, Default)]
pub struct ObjectOptions {
    /// `Content-Type`.
    pub content_type: Option<String>,
    /// A canned ACL (`public-read` for an import DigitalOcean fetches by URL).
    pub acl: Option<ObjectCannedAcl>,
    /// User metadata (`x-amz-meta-*`).
    pub metadata: Vec<(String, String)>,
}

/// How the parts are sent.
#[derive(Debug, Clone, Copy)]
pub struct PartOptions<'a> {
    /// Bytes per part (raised to [`MIN_PART_SIZE`], and so that there are at most
    /// [`MAX_PARTS`]).
    pub part_size: u64,
    /// Parts in flight at most.
    pub concurrency: usize,
    /// Shared with the caller's other requests, when it bounds them all.
    pub sem: Option<&'a Semaphore>,
    /// Advanced by each part's bytes once it is stored.
    pub progress: Option<&'a ProgressBar>,
}

/// A started multipart upload.
#[derive(Debug, Clone)]
pub struct Multipart {
    client: Client,
    bucket: String,
    key: String,
    upload_id: String,
}

impl Multipart {
    /// `CreateMultipartUpload` of `bucket/key`.
    pub async fn create(
        client: &Client,
        bucket: &str,
        key: &str,
        object: &ObjectOptions,
    ) -> Result<Multipart, RemoteError> {
        let mut req = client
            .create_multipart_upload()
            .bucket(bucket)
            .key(key)
            .set_content_type(object.content_type.clone())
            .set_acl(object.acl.clone());
        for (k, v) in &object.metadata {
            req = req.metadata(k, v);
        }
        let created = req
            .send()
            .await
            .map_err(|err| classify(&err, "CreateMultipartUpload", bucket, key))?;
        let upload_id = created
            .upload_id()
            .map(str::to_owned)
            .ok_or_else(|| RemoteError {
                kind: RemoteKind::Other,
                operation: "CreateMultipartUpload",
                bucket: bucket.to_owned(),
                key: key.to_owned(),
                status: None,
                code: None,
                message: "no upload id in the answer".into(),
            })?;
        Ok(Multipart {
            client: client.clone(),
            bucket: bucket.to_owned(),
            key: key.to_owned(),
            upload_id,
        })
    }

    /// Upload the `size` bytes of `path` as parts, then complete the upload (the object
    /// exists from then on). Whatever fails, the upload is aborted first.
    pub async fn upload(
        &self,
        path: &Path,
        size: u64,
        opts: PartOptions<'_>,
    ) -> Result<(), SendError> {
        let done = match self.send(path, size, opts).await {
            Ok(sent) => {
                let _permit = match opts.sem {
                    Some(s) => s.acquire().await.ok(),
                    None => None,
                };
                self.complete(sent).await.map_err(SendError::from)
            }
            Err(e) => Err(e),
        };
        if done.is_err() {
            self.abort().await;
        }
        done
    }

    /// Upload the `size` bytes of `path` as parts; their receipts, in order, for
    /// [`Multipart::complete`].
    async fn send(
        &self,
        path: &Path,
        size: u64,
        opts: PartOptions<'_>,
    ) -> Result<Vec<CompletedPart>, SendError> {
        let part = part_size(size, opts.part_size);
        let parts: Vec<(i32, u64, u64)> = (0..size.div_ceil(part).max(1))
            .map(|i| {
                let off = i * part;
                // The part numbers are 1..=MAX_PARTS, which fit an i32.
                (
                    i32::try_from(i + 1).unwrap_or(i32::MAX),
                    off,
                    part.min(size - off),
                )
            })
            .collect();
        let mut done = futures::stream::iter(parts)
            .map(|(n, off, len)| async move {
                let _permit = match opts.sem {
                    Some(s) => s.acquire().await.ok(),
                    None => None,
                };
                let body = ByteStream::read_from()
                    .path(path)
                    .offset(off)
                    .length(Length::Exact(len))
                    .build()
                    .await
                    .map_err(|err| SendError::Local(std::io::Error::other(err)))?;
                let out = self
                    .client
                    .upload_part()
                    .bucket(&self.bucket)
                    .key(&self.key)
                    .upload_id(&self.upload_id)
                    .part_number(n)
                    .content_length(i64::try_from(len).unwrap_or(i64::MAX))
                    .body(body)
                    .send()
                    .await
                    .map_err(|err| classify(&err, "UploadPart", &self.bucket, &self.key))?;
                if let Some(p) = opts.progress {
                    p.inc(len);
                }
                Ok::<_, SendError>(
                    CompletedPart::builder()
                        .part_number(n)
                        .set_e_tag(out.e_tag().map(str::to_owned))
                        .build(),
                )
            })
            .buffer_unordered(opts.concurrency.max(1))
            .try_collect::<Vec<_>>()
            .await?;
        done.sort_by_key(|p| p.part_number());
        Ok(done)
    }

    /// `CompleteMultipartUpload`: the object exists from here on.
    async fn complete(&self, parts: Vec<CompletedPart>) -> Result<(), RemoteError> {
        self.client
            .complete_multipart_upload()
            .bucket(&self.bucket)
            .key(&self.key)
            .upload_id(&self.upload_id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(parts))
                    .build(),
            )
            .send()
            .await
            .map_err(|err| classify(&err, "CompleteMultipartUpload", &self.bucket, &self.key))?;
        Ok(())
    }

    /// `AbortMultipartUpload`: the parts sent so far are dropped. A failure is logged
    /// (naming the upload, which the store's lifecycle rules or a retry can remove).
    pub async fn abort(&self) {
        if let Err(err) = self
            .client
            .abort_multipart_upload()
            .bucket(&self.bucket)
            .key(&self.key)
            .upload_id(&self.upload_id)
            .send()
            .await
        {
            tracing::warn!(
                upload_id = %self.upload_id,
                "{}",
                classify(&err, "AbortMultipartUpload", &self.bucket, &self.key)
            );
        }
    }
}

/// Why the parts were not all sent.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// The file could not be read.
    #[error("{0}")]
    Local(std::io::Error),
    /// The store refused or failed.
    #[error(transparent)]
    Remote(#[from] RemoteError),
}

/// The part size for `size` bytes: `wanted`, raised to S3's minimum and so that the
/// parts are at most [`MAX_PARTS`].
pub fn part_size(size: u64, wanted: u64) -> u64 {
    wanted.max(MIN_PART_SIZE).max(size.div_ceil(MAX_PARTS))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_are_at_least_s3s_minimum_and_at_most_ten_thousand() {
        assert_eq!(part_size(1 << 30, 1), MIN_PART_SIZE);
        assert_eq!(part_size(1 << 30, 64 << 20), 64 << 20);
        // 100 GB in 5 MiB parts would be ~19,000 parts.
        let size = 100_000_000_000;
        let p = part_size(size, MIN_PART_SIZE);
        assert!(size.div_ceil(p) <= MAX_PARTS, "{p}");
    }
}
