//! Pull a published build into `<root>/artifacts/<sha>/` (the vm-agent side).
//!
//! See the module docs of the crate for the API contract. How:
//! 1. validate the sha, take `<root>/artifacts/.locks/<sha>` (flock), return at
//!    once if `<root>/artifacts/<sha>/manifest.json` exists;
//! 2. GET and strictly parse `builds/<sha>/manifest.json`;
//! 3. prepare `<root>/artifacts/.incoming-<sha>/` (kept across attempts for
//!    resume; wiped if it belongs to a different manifest), evict other shas
//!    (LRU by directory mtime) to respect the cache bound and the free space,
//!    then refuse if the filesystem still lacks room;
//! 4. download every file: small ones as one streaming GET, large ones as
//!    parallel ranged GETs whose results are consumed in order (chunks that
//!    arrive early wait in memory: [`PullConfig::buffer_budget`] bounds that by
//!    limiting how many large objects download at once); a blocking
//!    writer hashes (SHA-256) and writes as bytes arrive. Failed requests and
//!    broken bodies are retried from the byte where they stopped; an existing
//!    partial file is re-hashed and continued. A digest mismatch deletes the file
//!    and fetches it again, at most [`PullConfig::max_refetch`] times;
//! 5. one `syncfs` for the whole incoming tree, rename it to `<sha>`, fsync
//!    the parent. On a failure other than "unavailable" the incoming directory
//!    is removed.

use std::io::{BufWriter, Read as _, Seek as _, SeekFrom, Write as _};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use aws_sdk_s3::Client;
use bytes::Bytes;
use futures::{StreamExt as _, TryStreamExt as _};
use indicatif::ProgressBar;
use serde::{Deserialize, Serialize};
use sha2::Digest as _;
use tokio::sync::{Semaphore, mpsc};

use super::manifest::{
    self, FileEntry, MANIFEST_NAME, MAX_MANIFEST_BYTES, Manifest, ManifestError,
};
use super::s3::{
    self, RemoteError, RemoteKind, S3Credentials, S3Settings, SharedDnsResolver, classify,
};
use super::{fsutil, manifest_key, object_key};

/// Everything [`pull`] needs. Build with [`PullConfig::new`], then adjust fields.
#[derive(Debug, Clone)]
pub struct PullConfig {
    /// Where the store is.
    pub s3: S3Settings,
    /// Keys; `None` makes [`pull`] return [`PullError::MissingCredentials`].
    pub credentials: Option<S3Credentials>,
    /// Custom DNS resolver (default: getaddrinfo).
    pub resolver: Option<SharedDnsResolver>,
    /// GET requests in flight at most (files and ranges together). Default 64:
    /// for small objects the time is per-request latency (one round trip, plus
    /// up to 40 ms of delayed ACK on servers that leave Nagle on), so only many
    /// requests in flight fill the link.
    pub max_requests: usize,
    /// Objects larger than this are fetched as ranged GETs of this size. Default 8 MiB.
    pub chunk_size: u64,
    /// Ranged GETs in flight per object. Default 4.
    pub chunks_in_flight: usize,
    /// Memory for chunks that arrived before the ones the writer needs:
    /// `budget / (chunk_size * chunks_in_flight)` large objects download at once
    /// (at least one). Default 64 MiB.
    pub buffer_budget: u64,
    /// Attempts per request (connection errors, broken bodies, 5xx). Default 6.
    pub max_attempts: u32,
    /// First retry delay, doubled each time up to 4 s. Default 250 ms.
    pub retry_backoff: Duration,
    /// Whole-file re-downloads after a digest mismatch. Default 2.
    pub max_refetch: u32,
    /// Bound on all installed artifacts; other shas are evicted LRU. Default none.
    pub cache_max_bytes: Option<u64>,
    /// Free space to leave on the filesystem after the download. Default 64 MiB.
    pub min_free_bytes: u64,
    /// Check free space before downloading. Default true (turn off only in tests).
    pub check_free_space: bool,
}

impl PullConfig {
    /// Default of [`PullConfig::max_requests`] (also `artifact pull --concurrency` and
    /// vm-agent's `artifacts.concurrency`).
    pub const DEFAULT_MAX_REQUESTS: usize =
        agent_config::ArtifactsConfig::DEFAULT_CONCURRENCY as usize;
    /// Default of [`PullConfig::chunk_size`].
    pub const DEFAULT_CHUNK_SIZE: u64 = 8 << 20;
    /// Default of [`PullConfig::chunks_in_flight`].
    pub const DEFAULT_CHUNKS_IN_FLIGHT: usize = 4;
    /// Default of [`PullConfig::min_free_bytes`] (also vm-agent's `artifacts.min_free_bytes`).
    pub const DEFAULT_MIN_FREE_BYTES: u64 = agent_config::ArtifactsConfig::DEFAULT_MIN_FREE_BYTES;

    /// Defaults for everything but the store and the keys.
    pub fn new(s3: S3Settings, credentials: Option<S3Credentials>) -> Self {
        Self {
            s3,
            credentials,
            resolver: None,
            max_requests: Self::DEFAULT_MAX_REQUESTS,
            chunk_size: Self::DEFAULT_CHUNK_SIZE,
            chunks_in_flight: Self::DEFAULT_CHUNKS_IN_FLIGHT,
            buffer_budget: 64 << 20,
            max_attempts: 6,
            retry_backoff: Duration::from_millis(250),
            max_refetch: 2,
            cache_max_bytes: None,
            min_free_bytes: Self::DEFAULT_MIN_FREE_BYTES,
            check_free_space: true,
        }
    }
}

/// What [`pull`] did.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PullReport {
    /// The sha.
    pub sha: String,
    /// `<root>/artifacts/<sha>`.
    pub dir: PathBuf,
    /// It was already installed; nothing was fetched.
    pub already_installed: bool,
    /// Files in the build.
    pub files: usize,
    /// Bytes in the build.
    pub bytes_total: u64,
    /// Bytes received from the store.
    pub bytes_downloaded: u64,
    /// Bytes taken over from partial files of an earlier attempt.
    pub bytes_resumed: u64,
    /// Requests retried (connection errors, broken bodies).
    pub retries: u32,
    /// Files fetched again after a digest mismatch.
    pub refetches: u32,
    /// Other shas evicted from the cache.
    pub evicted: Vec<String>,
    /// Wall time.
    pub seconds: f64,
}

/// Why [`pull`] failed. [`PullError::is_unavailable`] separates "the store or
/// the build is not there for us" from "it is there but we could not install it".
#[derive(Debug, thiserror::Error)]
pub enum PullError {
    /// No keys configured.
    #[error(
        "artifact unavailable: no S3 credentials (SPACES_ACCESS_KEY_ID/SPACES_SECRET_ACCESS_KEY)"
    )]
    MissingCredentials,
    /// No manifest: the sha was never (completely) published.
    #[error("artifact unavailable: s3://{bucket}/{key} does not exist (sha not published)")]
    NotPublished {
        /// The bucket.
        bucket: String,
        /// The manifest key.
        key: String,
    },
    /// The store refused (403), is unreachable, or kept failing.
    #[error("artifact unavailable: {0}")]
    Remote(#[from] RemoteError),
    /// The sha is malformed.
    #[error("invalid sha: {0}")]
    InvalidSha(ManifestError),
    /// The manifest breaks the contract.
    #[error("s3://{bucket}/{key}: {source}")]
    InvalidManifest {
        /// The bucket.
        bucket: String,
        /// The key.
        key: String,
        /// What is wrong.
        source: ManifestError,
    },
    /// The content kept not matching the manifest.
    #[error(
        "{path}: sha256 mismatch after {attempts} downloads (manifest {expected}, got {actual}); not installed"
    )]
    ChecksumMismatch {
        /// Path in the build.
        path: String,
        /// Digest in the manifest.
        expected: String,
        /// Digest (or size) of the last download.
        actual: String,
        /// Downloads tried.
        attempts: u32,
    },
    /// Not enough free space, even after evicting other shas.
    #[error(
        "{}: not enough free space: need {need} bytes (+{margin} margin), {available} available",
        dir.display()
    )]
    InsufficientSpace {
        /// The artifacts directory.
        dir: PathBuf,
        /// Bytes still to download.
        need: u64,
        /// Margin kept free.
        margin: u64,
        /// Bytes available.
        available: u64,
    },
    /// The disk filled up while writing.
    #[error("{}: disk full while writing; partial download removed, nothing installed", path.display())]
    DiskFull {
        /// The file being written.
        path: PathBuf,
    },
    /// Local I/O failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// The two outcomes callers act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum PullErrorKind {
    /// Credentials, manifest or store missing: optional artifacts may be skipped.
    Unavailable,
    /// The artifact exists but could not be installed correctly.
    Failed,
}

impl PullError {
    /// See [`PullErrorKind`].
    pub fn kind(&self) -> PullErrorKind {
        match self {
            Self::MissingCredentials | Self::NotPublished { .. } | Self::Remote(_) => {
                PullErrorKind::Unavailable
            }
            _ => PullErrorKind::Failed,
        }
    }

    /// `kind() == Unavailable`.
    pub fn is_unavailable(&self) -> bool {
        self.kind() == PullErrorKind::Unavailable
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> PullError + '_ {
    move |source| {
        if source.raw_os_error() == Some(libc_enospc()) {
            PullError::DiskFull {
                path: path.to_path_buf(),
            }
        } else {
            PullError::Io {
                path: path.to_path_buf(),
                source,
            }
        }
    }
}

fn libc_enospc() -> i32 {
    nix::errno::Errno::ENOSPC as i32
}

/// `<root>/artifacts/<sha>` if that sha is installed (complete).
pub fn installed_dir(root: &Path, sha: &str) -> Option<PathBuf> {
    if manifest::validate_sha(sha).is_err() {
        return None;
    }
    let dir = root.join("artifacts").join(sha);
    dir.join(MANIFEST_NAME).is_file().then_some(dir)
}

struct Shared<'a> {
    client: Client,
    bucket: &'a str,
    sha: &'a str,
    cfg: &'a PullConfig,
    sem: Semaphore,
    /// Large objects (ranged GETs) downloading at once, from the buffer budget.
    large: Semaphore,
    progress: Option<&'a ProgressBar>,
    downloaded: AtomicU64,
    resumed: AtomicU64,
    retries: AtomicU32,
    refetches: AtomicU32,
    /// Every writer thread holds a read guard; taking the write lock waits until
    /// all files are closed (so removing the incoming dir really frees space).
    writers: std::sync::Arc<tokio::sync::RwLock<()>>,
}

/// Download, verify and install build `sha` under `root`. See the module docs.
pub async fn pull(
    cfg: &PullConfig,
    sha: &str,
    root: &Path,
    progress: Option<&ProgressBar>,
) -> Result<PullReport, PullError> {
    let start = Instant::now();
    manifest::validate_sha(sha).map_err(PullError::InvalidSha)?;
    let creds = cfg
        .credentials
        .as_ref()
        .ok_or(PullError::MissingCredentials)?;
    let art = root.join("artifacts");
    let locks = art.join(".locks");
    std::fs::create_dir_all(&locks).map_err(io_err(&locks))?;
    let _lock = lock(&locks.join(sha)).await?;

    let dir = art.join(sha);
    let mut report = PullReport {
        sha: sha.to_string(),
        dir: dir.clone(),
        already_installed: false,
        files: 0,
        bytes_total: 0,
        bytes_downloaded: 0,
        bytes_resumed: 0,
        retries: 0,
        refetches: 0,
        evicted: vec![],
        seconds: 0.0,
    };
    if dir.join(MANIFEST_NAME).is_file() {
        touch(&dir);
        if let Ok(m) = std::fs::read(dir.join(MANIFEST_NAME))
            && let Ok(m) = Manifest::from_json(&m, sha)
        {
            report.files = m.files.len();
            report.bytes_total = m.total_bytes();
        }
        report.already_installed = true;
        report.seconds = start.elapsed().as_secs_f64();
        return Ok(report);
    }

    let client = s3::client(&cfg.s3, creds, cfg.resolver.clone());
    let m = get_manifest(&client, &cfg.s3.bucket, sha).await?;
    let total = m.total_bytes();
    report.files = m.files.len();
    report.bytes_total = total;

    let staging = art.join(format!(".incoming-{sha}"));
    prepare_staging(&staging, &m)?;
    let present: u64 = m
        .files
        .iter()
        .map(|f| {
            std::fs::metadata(staging.join(&f.path))
                .map(|md| md.len().min(f.size))
                .unwrap_or(0)
        })
        .sum();
    let need = total - present;

    if let Some(max) = cfg.cache_max_bytes {
        let budget = max.saturating_sub(total);
        evict(&art, sha, &mut report.evicted, |others| others <= budget)?;
    }
    if cfg.check_free_space {
        let margin = cfg.min_free_bytes;
        let enough = |_: u64| free_bytes(&art).is_ok_and(|a| a >= need + margin);
        evict(&art, sha, &mut report.evicted, enough)?;
        let available = free_bytes(&art).map_err(io_err(&art))?;
        if available < need + margin {
            if present == 0 {
                let _ = std::fs::remove_dir_all(&staging);
            }
            return Err(PullError::InsufficientSpace {
                dir: art,
                need,
                margin,
                available,
            });
        }
    }

    if let Some(p) = progress {
        p.set_length(total);
        p.set_position(0);
    }
    let sh = Shared {
        client,
        bucket: &cfg.s3.bucket,
        sha,
        cfg,
        sem: Semaphore::new(cfg.max_requests.max(1)),
        large: Semaphore::new(large_permits(cfg)),
        progress,
        downloaded: AtomicU64::new(0),
        resumed: AtomicU64::new(0),
        retries: AtomicU32::new(0),
        refetches: AtomicU32::new(0),
        writers: std::sync::Arc::new(tokio::sync::RwLock::new(())),
    };
    // Owned items (not `&FileEntry`) keep the future `Send` for `tokio::spawn`.
    let (shr, stg) = (&sh, staging.as_path());
    let res = futures::stream::iter(m.files.clone())
        .map(|f| async move { fetch_file(shr, &f, stg).await })
        .buffer_unordered(cfg.max_requests.max(1))
        .try_collect::<Vec<()>>()
        .await;
    report.bytes_downloaded = sh.downloaded.load(Ordering::Relaxed);
    report.bytes_resumed = sh.resumed.load(Ordering::Relaxed);
    report.retries = sh.retries.load(Ordering::Relaxed);
    report.refetches = sh.refetches.load(Ordering::Relaxed);
    if let Err(e) = res {
        // Writers of the cancelled downloads finish once their channel closes.
        let _all_closed = sh.writers.write().await;
        if !e.is_unavailable() {
            // Nothing half-done stays behind (and a full disk gets its space back).
            let _ = std::fs::remove_dir_all(&staging);
        } else {
            tracing::info!("{}: kept partial download for resume", staging.display());
        }
        return Err(e);
    }

    // One syncfs for every file and directory of the staging tree (instead of an
    // fsync per file: 1,000 small files cost 1,000 journal commits otherwise), so
    // the rename below never publishes data that is not on disk yet.
    std::fs::File::open(&staging)
        .and_then(|d| nix::unistd::syncfs(&d).map_err(std::io::Error::from))
        .map_err(io_err(&staging))?;
    std::fs::rename(&staging, &dir).map_err(io_err(&dir))?;
    std::fs::File::open(&art)
        .and_then(|d| d.sync_all())
        .map_err(io_err(&art))?;
    touch(&dir);
    if let Some(max) = cfg.cache_max_bytes {
        let budget = max.saturating_sub(total);
        evict(&art, sha, &mut report.evicted, |others| others <= budget)?;
    }
    report.seconds = start.elapsed().as_secs_f64();
    Ok(report)
}

async fn lock(path: &Path) -> Result<nix::fcntl::Flock<std::fs::File>, PullError> {
    let p = path.to_path_buf();
    tokio::task::spawn_blocking(move || {
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&p)
            .map_err(io_err(&p))?;
        nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusive).map_err(|(_, e)| {
            PullError::Io {
                path: p.clone(),
                source: std::io::Error::from(e),
            }
        })
    })
    .await
    .map_err(|e| PullError::Io {
        path: path.to_path_buf(),
        source: std::io::Error::other(e),
    })?
}

async fn get_manifest(client: &Client, bucket: &str, sha: &str) -> Result<Manifest, PullError> {
    let key = manifest_key(sha);
    let out = match client.get_object().bucket(bucket).key(&key).send().await {
        Ok(o) => o,
        Err(e) => {
            let r = classify(&e, "GetObject", bucket, &key);
            return Err(if r.kind == RemoteKind::NotFound {
                PullError::NotPublished {
                    bucket: bucket.to_string(),
                    key,
                }
            } else {
                r.into()
            });
        }
    };
    let invalid = |source| PullError::InvalidManifest {
        bucket: bucket.to_string(),
        key: key.clone(),
        source,
    };
    if out.content_length().unwrap_or(0) as u64 > MAX_MANIFEST_BYTES {
        return Err(invalid(ManifestError::Syntax(format!(
            "larger than {MAX_MANIFEST_BYTES} bytes"
        ))));
    }
    let body = out.body.collect().await.map_err(|e| RemoteError {
        kind: RemoteKind::Unreachable,
        operation: "GetObject",
        bucket: bucket.to_string(),
        key: key.clone(),
        status: None,
        code: None,
        message: s3::error_chain(&e),
    })?;
    Manifest::from_json(&body.into_bytes(), sha).map_err(invalid)
}

/// Create the incoming dir with the manifest inside; wipe it if it holds
/// another manifest's partial files.
fn prepare_staging(staging: &Path, m: &Manifest) -> Result<(), PullError> {
    let mpath = staging.join(MANIFEST_NAME);
    if staging.exists() {
        let same = std::fs::read(&mpath)
            .ok()
            .and_then(|b| Manifest::from_json(&b, &m.sha).ok())
            .is_some_and(|old| old.files == m.files);
        if same {
            return Ok(());
        }
        std::fs::remove_dir_all(staging).map_err(io_err(staging))?;
    }
    std::fs::create_dir_all(staging).map_err(io_err(staging))?;
    fsutil::write_atomic(&mpath, &m.to_json(), 0o644).map_err(io_err(&mpath))
}

fn free_bytes(dir: &Path) -> std::io::Result<u64> {
    let s = nix::sys::statvfs::statvfs(dir).map_err(std::io::Error::from)?;
    Ok(s.blocks_available() as u64 * s.fragment_size() as u64)
}

fn touch(dir: &Path) {
    if let Err(e) = std::fs::File::open(dir).and_then(|d| d.set_modified(SystemTime::now())) {
        tracing::debug!("{}: cannot update mtime: {e}", dir.display());
    }
}

fn dir_size(p: &Path) -> u64 {
    let Ok(rd) = std::fs::read_dir(p) else {
        return 0;
    };
    rd.flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => dir_size(&e.path()),
            _ => e.metadata().map(|m| m.len()).unwrap_or(0),
        })
        .sum()
}

/// Installed shas other than `current`, oldest use first: (mtime, sha, bytes).
fn installed_others(art: &Path, current: &str) -> Vec<(SystemTime, String, u64)> {
    let Ok(rd) = std::fs::read_dir(art) else {
        return vec![];
    };
    let mut v: Vec<_> = rd
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            if name == current || manifest::validate_sha(&name).is_err() {
                return None;
            }
            let mtime = e.metadata().ok()?.modified().ok()?;
            Some((mtime, name, dir_size(&e.path())))
        })
        .collect();
    v.sort();
    v
}

/// Evict the least recently used other shas until `enough(bytes of the rest)`.
fn evict(
    art: &Path,
    current: &str,
    evicted: &mut Vec<String>,
    enough: impl Fn(u64) -> bool,
) -> Result<(), PullError> {
    let others = installed_others(art, current);
    let mut rest: u64 = others.iter().map(|o| o.2).sum();
    for (_, sha, bytes) in others {
        if enough(rest) {
            break;
        }
        // Rename first: a half-deleted directory never carries a sha's name.
        let trash = art.join(format!(".trash-{sha}-{}", std::process::id()));
        std::fs::rename(art.join(&sha), &trash).map_err(io_err(&trash))?;
        std::fs::remove_dir_all(&trash).map_err(io_err(&trash))?;
        tracing::info!("evicted artifact {sha} ({bytes} bytes) from the cache");
        rest -= bytes;
        evicted.push(sha);
    }
    Ok(())
}

enum Sink<'a> {
    Writer(&'a mpsc::Sender<Bytes>),
    Buffer(&'a mut Vec<Bytes>),
}

/// Internal: the writer went away (its error is reported instead).
const WRITER_GONE: &str = "writer stopped";

async fn fetch_file(sh: &Shared<'_>, f: &FileEntry, staging: &Path) -> Result<(), PullError> {
    let dest = staging.join(&f.path);
    if let Some(parent) = dest.parent() {
        std::fs::create_dir_all(parent).map_err(io_err(parent))?;
    }
    let key = object_key(sh.sha, &f.path);
    let attempts = sh.cfg.max_refetch + 1;
    let mut actual = String::new();
    for attempt in 1..=attempts {
        let have = match std::fs::metadata(&dest) {
            Ok(m) if m.len() <= f.size => m.len(),
            Ok(_) => {
                std::fs::remove_file(&dest).map_err(io_err(&dest))?;
                0
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(e) => return Err(io_err(&dest)(e)),
        };
        let (digest, len) = download_into(sh, &key, &dest, f.size, have).await?;
        if digest == f.sha256 && len == f.size {
            std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(f.mode))
                .map_err(io_err(&dest))?;
            return Ok(());
        }
        actual = if len == f.size {
            digest
        } else {
            format!("{len} bytes instead of {}", f.size)
        };
        tracing::warn!(
            "{key}: sha256 mismatch (attempt {attempt}/{attempts}: expected {}, got {actual}); discarded",
            f.sha256
        );
        std::fs::remove_file(&dest).map_err(io_err(&dest))?;
        if let Some(p) = sh.progress {
            p.set_position(p.position().saturating_sub(len));
        }
        if attempt < attempts {
            sh.refetches.fetch_add(1, Ordering::Relaxed);
        }
    }
    Err(PullError::ChecksumMismatch {
        path: f.path.clone(),
        expected: f.sha256.clone(),
        actual,
        attempts,
    })
}

/// Continue `dest` from byte `have` to `size`; returns (sha256 hex, final length).
async fn download_into(
    sh: &Shared<'_>,
    key: &str,
    dest: &Path,
    size: u64,
    have: u64,
) -> Result<(String, u64), PullError> {
    if have > 0 {
        sh.resumed.fetch_add(have, Ordering::Relaxed);
        tracing::info!("{key}: resuming at byte {have} of {size}");
    }
    let remaining = size - have;
    let ranged = remaining > sh.cfg.chunk_size && sh.cfg.chunks_in_flight > 1;
    // A large object waits for its share of the buffer budget before its writer
    // thread starts, so waiting objects do not hold blocking threads.
    let _large = if ranged {
        sh.large.acquire().await.ok()
    } else {
        None
    };
    let (tx, rx) = mpsc::channel::<Bytes>(16);
    let (d, bar) = (dest.to_path_buf(), sh.progress.cloned());
    let guard = sh.writers.clone().read_owned().await;
    let writer = tokio::task::spawn_blocking(move || {
        let r = write_and_hash(&d, have, rx, bar.as_ref());
        drop(guard);
        r
    });
    let net = async {
        if !ranged {
            return get_range(sh, key, have, size, &mut Sink::Writer(&tx)).await;
        }
        let step = sh.cfg.chunk_size.max(1);
        let ranges = (0..remaining.div_ceil(step)).map(|i| {
            let a = have + i * step;
            (a, (a + step).min(size))
        });
        let mut chunks = futures::stream::iter(ranges)
            .map(|(a, b)| async move {
                let mut buf = Vec::new();
                get_range(sh, key, a, b, &mut Sink::Buffer(&mut buf)).await?;
                Ok::<_, PullError>(buf)
            })
            .buffered(sh.cfg.chunks_in_flight);
        while let Some(chunk) = chunks.next().await {
            for b in chunk? {
                tx.send(b).await.map_err(|_| writer_gone(dest))?;
            }
        }
        Ok(())
    };
    let net_res = net.await;
    drop(tx);
    let written = writer.await.map_err(|e| PullError::Io {
        path: dest.to_path_buf(),
        source: std::io::Error::other(e),
    })?;
    match (net_res, written) {
        (_, Err(e)) => Err(io_err(dest)(e)),
        (Err(e), Ok(_)) => Err(e),
        (Ok(()), Ok(r)) => Ok(r),
    }
}

/// How many large objects may download at once within the buffer budget.
fn large_permits(cfg: &PullConfig) -> usize {
    let per_object = cfg
        .chunk_size
        .max(1)
        .saturating_mul(cfg.chunks_in_flight.max(1) as u64);
    usize::try_from(cfg.buffer_budget / per_object)
        .unwrap_or(usize::MAX)
        .clamp(1, Semaphore::MAX_PERMITS)
}

fn writer_gone(dest: &Path) -> PullError {
    PullError::Io {
        path: dest.to_path_buf(),
        source: std::io::Error::other(WRITER_GONE),
    }
}

fn write_and_hash(
    dest: &Path,
    have: u64,
    mut rx: mpsc::Receiver<Bytes>,
    progress: Option<&ProgressBar>,
) -> std::io::Result<(String, u64)> {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(dest)?;
    let mut h = sha2::Sha256::new();
    if have > 0 {
        let mut buf = vec![0u8; 1 << 20];
        let mut left = have;
        let mut r = (&f).take(have);
        while left > 0 {
            let n = r.read(&mut buf)?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
            left -= n as u64;
        }
        if let Some(p) = progress {
            p.inc(have - left);
        }
    }
    f.set_len(have)?;
    f.seek(SeekFrom::Start(have))?;
    let mut w = BufWriter::with_capacity(1 << 20, &f);
    let mut len = have;
    while let Some(b) = rx.blocking_recv() {
        h.update(&b);
        w.write_all(&b)?;
        len += b.len() as u64;
        if let Some(p) = progress {
            p.inc(b.len() as u64);
        }
    }
    w.flush()?;
    // No fsync here: the digest is checked against the manifest, and the whole
    // staging tree is synced once before it is renamed into place.
    Ok((hex::encode(h.finalize()), len))
}

/// GET bytes `[start, end)` of `key` into `sink`, retrying from where a failed
/// attempt stopped.
async fn get_range(
    sh: &Shared<'_>,
    key: &str,
    start: u64,
    end: u64,
    sink: &mut Sink<'_>,
) -> Result<(), PullError> {
    let mut pos = start;
    let mut attempt = 0u32;
    let mut delay = sh.cfg.retry_backoff;
    loop {
        if pos >= end {
            return Ok(());
        }
        attempt += 1;
        let last_err = {
            let _permit = sh.sem.acquire().await.ok();
            match sh
                .client
                .get_object()
                .bucket(sh.bucket)
                .key(key)
                .range(format!("bytes={pos}-{}", end - 1))
                .send()
                .await
            {
                Ok(out) => {
                    let mut body = out.body;
                    let mut broken = None;
                    while let Some(item) = body.next().await {
                        match item {
                            Ok(b) => {
                                pos += b.len() as u64;
                                sh.downloaded.fetch_add(b.len() as u64, Ordering::Relaxed);
                                match sink {
                                    Sink::Writer(tx) => {
                                        tx.send(b).await.map_err(|_| writer_gone(Path::new(key)))?
                                    }
                                    Sink::Buffer(v) => v.push(b),
                                }
                            }
                            Err(e) => {
                                broken = Some(RemoteError {
                                    kind: RemoteKind::Unreachable,
                                    operation: "GetObject",
                                    bucket: sh.bucket.to_string(),
                                    key: key.to_string(),
                                    status: None,
                                    code: None,
                                    message: format!(
                                        "body broken at byte {pos}: {}",
                                        s3::error_chain(&e)
                                    ),
                                });
                                break;
                            }
                        }
                    }
                    match broken {
                        None if pos >= end => return Ok(()),
                        None => RemoteError {
                            kind: RemoteKind::Unreachable,
                            operation: "GetObject",
                            bucket: sh.bucket.to_string(),
                            key: key.to_string(),
                            status: None,
                            code: None,
                            message: format!("body ended early at byte {pos} of {end}"),
                        },
                        Some(e) => e,
                    }
                }
                Err(e) => {
                    let r = classify(&e, "GetObject", sh.bucket, key);
                    match r.kind {
                        RemoteKind::NotFound | RemoteKind::AccessDenied => return Err(r.into()),
                        _ if r.status == Some(416) => return Err(r.into()),
                        _ => r,
                    }
                }
            }
        };
        if attempt >= sh.cfg.max_attempts {
            return Err(last_err.into());
        }
        sh.retries.fetch_add(1, Ordering::Relaxed);
        tracing::warn!("{last_err}; retrying from byte {pos} in {delay:?}");
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(4));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffer_budget_bounds_large_objects_in_flight() {
        let mut cfg = PullConfig::new(
            S3Settings {
                endpoint: "http://127.0.0.1:1".into(),
                region: "us-east-1".into(),
                bucket: "b".into(),
                path_style: true,
            },
            None,
        );
        // 64 MiB / (8 MiB x 4) = 2 objects, each with at most 32 MiB waiting.
        assert_eq!(large_permits(&cfg), 2);
        cfg.buffer_budget = 0;
        assert_eq!(large_permits(&cfg), 1, "always at least one");
        cfg.buffer_budget = 1 << 30;
        cfg.chunk_size = 1 << 20;
        cfg.chunks_in_flight = 2;
        assert_eq!(large_permits(&cfg), 512);
        // Zero sizes count as one byte / one chunk instead of dividing by zero.
        cfg.chunk_size = 0;
        cfg.chunks_in_flight = 0;
        assert_eq!(large_permits(&cfg), 1 << 30);
    }

    #[test]
    fn error_kinds() {
        assert!(PullError::MissingCredentials.is_unavailable());
        assert!(
            PullError::NotPublished {
                bucket: "b".into(),
                key: "k".into()
            }
            .is_unavailable()
        );
        assert!(!PullError::DiskFull { path: "/x".into() }.is_unavailable());
        assert!(
            !PullError::ChecksumMismatch {
                path: "p".into(),
                expected: "e".into(),
                actual: "a".into(),
                attempts: 3
            }
            .is_unavailable()
        );
    }

    #[test]
    fn eviction_is_lru_and_renames_first() {
        let d = tempfile::tempdir().unwrap();
        let art = d.path();
        for (i, sha) in ["aaaaaaa", "bbbbbbb", "ccccccc"].iter().enumerate() {
            let p = art.join(sha);
            std::fs::create_dir(&p).unwrap();
            std::fs::write(p.join("f"), vec![0u8; 100]).unwrap();
            let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000 + i as u64 * 10);
            std::fs::File::open(&p).unwrap().set_modified(t).unwrap();
        }
        // Use "aaaaaaa" recently: it becomes the newest.
        touch(&art.join("aaaaaaa"));
        let mut ev = vec![];
        evict(art, "ddddddd", &mut ev, |rest| rest <= 150).unwrap();
        assert_eq!(ev, ["bbbbbbb", "ccccccc"]);
        assert!(art.join("aaaaaaa/f").exists());
        let left: Vec<_> = std::fs::read_dir(art)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left.len(), 1, "{left:?}");
    }
}
