//! Sha-keyed build artifacts in an S3-compatible store ("build once, load many").
//!
//! # Layout (the contract)
//! ```text
//! s3://<bucket>/builds/<sha>/<path>          one object per file, user metadata sha256=<hex>
//! s3://<bucket>/builds/<sha>/manifest.json   [`manifest::Manifest`], uploaded LAST
//! ```
//! A sha is published exactly when its manifest exists; everything else under
//! `builds/<sha>/` without a manifest is an incomplete upload (listed by nobody,
//! collected by `gc`).
//!
//! # Pull API (for vm-agent)
//! ```ignore
//! use artifact_store::{pull, PullConfig, PullError, S3Settings, S3Credentials};
//!
//! let mut cfg = PullConfig::new(
//!     S3Settings { endpoint, region, bucket, path_style },
//!     Some(S3Credentials::new(id, secret)),   // None → PullError::MissingCredentials
//! );
//! cfg.cache_max_bytes = Some(20 << 30);       // LRU-evict other shas beyond this
//! match pull(&cfg, &sha, Path::new("/var/lib/vm-agent"), None).await {
//!     Ok(report) => { /* files are in report.dir == <root>/artifacts/<sha>/ */ }
//!     Err(e) if e.is_unavailable() => { /* optional artifacts: continue; required: degraded */ }
//!     Err(e) => { /* failed: checksum mismatch after re-fetches, disk full, bad manifest */ }
//! }
//! ```
//! - [`pull()`] is idempotent: an installed sha returns at once (`already_installed`).
//! - The result is either absent or complete: files are downloaded into
//!   `<root>/artifacts/.incoming-<sha>/`, verified, fsynced, and that directory is
//!   renamed to `<root>/artifacts/<sha>/` (with `manifest.json` inside).
//! - An interrupted pull (crash, network loss) leaves the partial files in the
//!   incoming directory; the next pull resumes from them (re-hashing what is there).
//! - Concurrent pulls of the same sha (daemon and `vm-agent pull`) serialize on a
//!   lock file in `<root>/artifacts/.locks/`.
//! - [`PullError::is_unavailable`] is true for: no credentials, no manifest (not
//!   published), access denied (401/403), store unreachable or failing. Everything
//!   else ([`PullError::ChecksumMismatch`], [`PullError::DiskFull`],
//!   [`PullError::InsufficientSpace`], invalid manifest, local I/O) is a failure.
//! - `progress`: an [`indicatif::ProgressBar`] (hidden or drawn, the caller
//!   chooses); its position/length can also be polled for a status report.
//!
//! # Publish, ls, gc (host)
//! [`publish::publish`], [`remote::list_builds`], [`remote::gc`]; the CLI is
//! `image-builder artifact {publish,ls,gc,pull}`.

pub mod manifest;
pub mod multipart;
pub mod progress;
pub mod publish;
pub mod pull;
pub mod remote;
pub mod s3;

pub mod digest;
pub mod fsutil;

pub use manifest::{FileEntry, MANIFEST_NAME, Manifest, ManifestError};
pub use pull::{PullConfig, PullError, PullReport, pull};
pub use s3::{S3Credentials, S3Settings};

/// Prefix of every build in the bucket.
pub const BUILDS_PREFIX: &str = "builds/";

/// User-metadata key holding the object's SHA-256 (`x-amz-meta-sha256`).
pub const META_SHA256: &str = "sha256";

/// `builds/<sha>/`.
pub fn build_prefix(sha: &str) -> String {
    format!("{BUILDS_PREFIX}{sha}/")
}

/// `builds/<sha>/<path>`.
pub fn object_key(sha: &str, path: &str) -> String {
    format!("{BUILDS_PREFIX}{sha}/{path}")
}

/// `builds/<sha>/manifest.json`.
pub fn manifest_key(sha: &str) -> String {
    object_key(sha, MANIFEST_NAME)
}
