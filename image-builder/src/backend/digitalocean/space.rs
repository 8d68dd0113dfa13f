//! The Space (S3-compatible store) side of a bake. The builder VM never sees
//! Space credentials: it gets a presigned GET URL for the agent binary and a
//! presigned PUT URL for its seal report.
//!
//! Keys:
//! - `agents/<sha256>/vm-agent`: the static agent, uploaded once per sha256
//!   (skipped when an object with that key and size is already there);
//! - `bakes/<bake-id>/seal-report.json`: the seal report of one bake, read by
//!   the bake and deleted when it ends.

use std::path::Path;
use std::time::Duration;

use aws_sdk_s3::presigning::PresigningConfig;
use aws_sdk_s3::primitives::ByteStream;

use artifact_store::s3::{self, RemoteError, RemoteKind, S3Credentials, S3Settings};
use provision::SealReport;

/// Longest validity S3 allows for a presigned URL (SigV4: 7 days).
pub const MAX_PRESIGN: Duration = Duration::from_secs(7 * 24 * 3600);

/// `agents/<sha256>/vm-agent`.
pub fn agent_key(sha256: &str) -> String {
    format!("agents/{sha256}/vm-agent")
}

/// `bakes/<bake-id>/seal-report.json`.
pub fn report_key(bake_id: &str) -> String {
    format!("bakes/{bake_id}/seal-report.json")
}

/// Errors of the Space side.
#[derive(Debug, thiserror::Error)]
pub enum SpaceError {
    /// An S3 call failed.
    #[error(transparent)]
    Remote(#[from] RemoteError),
    /// Presigning failed.
    #[error("cannot presign {method} s3://{bucket}/{key}: {reason}")]
    Presign {
        /// GET or PUT.
        method: &'static str,
        /// Bucket.
        bucket: String,
        /// Key.
        key: String,
        /// Why.
        reason: String,
    },
    /// The local agent binary cannot be read.
    #[error("{}: cannot read the agent binary: {source}", path.display())]
    Agent {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The seal report is not the JSON the finisher writes.
    #[error("s3://{bucket}/{key}: the seal report is not valid: {source}")]
    BadReport {
        /// Bucket.
        bucket: String,
        /// Key.
        key: String,
        /// Why.
        source: serde_json::Error,
    },
}

/// A bucket the bake uses.
#[derive(Clone, Debug)]
pub struct Space {
    client: aws_sdk_s3::Client,
    bucket: String,
    endpoint: String,
}

impl Space {
    /// A client for `settings` with the Spaces-safe settings of [`artifact_store::s3::client`].
    pub fn new(settings: &S3Settings, creds: &S3Credentials) -> Self {
        Space {
            client: s3::client(settings, creds, None),
            bucket: settings.bucket.clone(),
            endpoint: settings.endpoint.clone(),
        }
    }

    /// `s3://bucket` at endpoint, for messages.
    pub fn describe(&self) -> String {
        format!("s3://{} at {}", self.bucket, self.endpoint)
    }

    /// Upload the agent binary to `agents/<sha256>/vm-agent` unless an object of
    /// the same size is already there. Returns the key and whether it uploaded.
    pub async fn ensure_agent(
        &self,
        path: &Path,
        sha256: &str,
    ) -> Result<(String, bool), SpaceError> {
        let key = agent_key(sha256);
        let size = std::fs::metadata(path)
            .map_err(|source| SpaceError::Agent {
                path: path.to_owned(),
                source,
            })?
            .len();
        match self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(&key)
            .send()
            .await
        {
            Ok(h) if h.content_length().and_then(|l| u64::try_from(l).ok()) == Some(size) => {
                return Ok((key, false));
            }
            Ok(_) => {}
            Err(e) => {
                let e = s3::classify(&e, "HeadObject", &self.bucket, &key);
                if e.kind != RemoteKind::NotFound {
                    return Err(e.into());
                }
            }
        }
        let bytes = std::fs::read(path).map_err(|source| SpaceError::Agent {
            path: path.to_owned(),
            source,
        })?;
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(&key)
            .metadata(artifact_store::META_SHA256, sha256)
            .content_type("application/octet-stream")
            .body(ByteStream::from(bytes))
            .send()
            .await
            .map_err(|e| s3::classify(&e, "PutObject", &self.bucket, &key))?;
        Ok((key, true))
    }

    fn presign_config(
        &self,
        method: &'static str,
        key: &str,
        valid: Duration,
    ) -> Result<PresigningConfig, SpaceError> {
        PresigningConfig::expires_in(valid.min(MAX_PRESIGN)).map_err(|e| SpaceError::Presign {
            method,
            bucket: self.bucket.clone(),
            key: key.to_owned(),
            reason: e.to_string(),
        })
    }

    /// A presigned GET URL for `key`, valid for `valid` (at most 7 days).
    pub async fn presign_get(&self, key: &str, valid: Duration) -> Result<String, SpaceError> {
        let cfg = self.presign_config("GET", key, valid)?;
        let req = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .presigned(cfg)
            .await
            .map_err(|e| SpaceError::Presign {
                method: "GET",
                bucket: self.bucket.clone(),
                key: key.to_owned(),
                reason: s3::error_chain(&e),
            })?;
        Ok(req.uri().to_owned())
    }

    /// A presigned PUT URL for `key`, valid for `valid` (at most 7 days). No
    /// header is signed besides `host`, so the finisher may send any content type.
    pub async fn presign_put(&self, key: &str, valid: Duration) -> Result<String, SpaceError> {
        let cfg = self.presign_config("PUT", key, valid)?;
        let req = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .presigned(cfg)
            .await
            .map_err(|e| SpaceError::Presign {
                method: "PUT",
                bucket: self.bucket.clone(),
                key: key.to_owned(),
                reason: s3::error_chain(&e),
            })?;
        Ok(req.uri().to_owned())
    }

    /// The seal report at `key`, or `None` when it is not there (yet).
    pub async fn read_report(&self, key: &str) -> Result<Option<SealReport>, SpaceError> {
        let out = match self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
        {
            Ok(o) => o,
            Err(e) => {
                let e = s3::classify(&e, "GetObject", &self.bucket, key);
                return if e.kind == RemoteKind::NotFound {
                    Ok(None)
                } else {
                    Err(e.into())
                };
            }
        };
        let body = out.body.collect().await.map_err(|e| RemoteError {
            kind: RemoteKind::Unreachable,
            operation: "GetObject",
            bucket: self.bucket.clone(),
            key: key.to_owned(),
            status: None,
            code: None,
            message: s3::error_chain(&e),
        })?;
        serde_json::from_slice(&body.into_bytes())
            .map(Some)
            .map_err(|source| SpaceError::BadReport {
                bucket: self.bucket.clone(),
                key: key.to_owned(),
                source,
            })
    }

    /// Delete `key` (absent is fine).
    pub async fn delete(&self, key: &str) -> Result<(), SpaceError> {
        self.client
            .delete_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| s3::classify(&e, "DeleteObject", &self.bucket, key))?;
        Ok(())
    }
}
