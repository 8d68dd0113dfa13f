//! `image-builder base build`: a minimal Debian root filesystem made with
//! mmdebstrap, and a whole bootable disk of it ([`super::disk`]: GPT, GRUB for BIOS
//! and UEFI, ext4 root).
//!
//! The result lives in a cache directory keyed by a hash over its inputs (suite,
//! package list, customize hook, format version), so a second build with the same
//! inputs is a cache hit. A build happens in a temporary sibling directory that is
//! renamed into place only when complete.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{QemuError, run_logged};

/// Bumped when the layout of a base changes (2: a whole bootable disk, no kernel and
/// initrd beside it).
const FORMAT: u32 = 2;

/// The customize hook run by mmdebstrap.
pub const CUSTOMIZE_HOOK: &str = include_str!("../../../../templates/qemu/customize-base.sh");

/// Packages of the base (besides `minbase`).
pub const PACKAGES: &[&str] = &[
    "linux-image-cloud-amd64",
    "systemd-sysv",
    "systemd-resolved",
    "udev",
    "kmod",
    "iproute2",
    "cloud-init",
    "openssh-server",
    "sudo",
    "ca-certificates",
    "curl",
    "netbase",
    "less",
    "python3",
    // growpart, for cloud-init's growpart module: a worker with a bigger disk gets
    // all of it on first boot.
    "cloud-guest-utils",
];

/// What to build.
#[derive(Clone, Debug)]
pub struct BaseSpec {
    /// Debian suite.
    pub suite: String,
    /// Extra packages.
    pub extra_packages: Vec<String>,
    /// Size of the base's disk in bytes.
    pub disk_size: u64,
}

impl Default for BaseSpec {
    fn default() -> Self {
        BaseSpec {
            suite: "bookworm".into(),
            extra_packages: Vec::new(),
            disk_size: 2 << 30,
        }
    }
}

impl BaseSpec {
    /// The cache key: a hash over everything that determines the result.
    pub fn key(&self) -> String {
        let mut h = Sha256::new();
        h.update(format!(
            "format={FORMAT}\nsuite={}\nsize={}\n",
            self.suite, self.disk_size
        ));
        for p in PACKAGES
            .iter()
            .map(|s| s.to_string())
            .chain(self.extra_packages.iter().cloned())
        {
            h.update(format!("pkg={p}\n"));
        }
        h.update(CUSTOMIZE_HOOK.as_bytes());
        // The disk's GRUB configuration (the root's UUID is the disk's own).
        h.update(super::disk::grub_cfg("{root-uuid}", "{os-name}").as_bytes());
        h.update(super::disk::early_config("{root-uuid}").as_bytes());
        hex::encode(h.finalize())[..16].to_owned()
    }
}

/// A built base.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Base {
    /// The cache key.
    pub key: String,
    /// Debian suite.
    pub suite: String,
    /// The directory holding everything below.
    pub dir: PathBuf,
    /// The root filesystem as a directory (for the container way).
    pub rootfs: PathBuf,
    /// The whole bootable disk (raw; for the vm way).
    pub disk: PathBuf,
    /// When it was built (RFC 3339).
    pub built_at: String,
    /// Whether this call reused a cached base.
    #[serde(default)]
    pub cache_hit: bool,
}

/// The cache root: `$IMAGE_BUILDER_CACHE` or `~/.cache/image-builder`.
pub fn cache_root() -> PathBuf {
    if let Some(d) = std::env::var_os("IMAGE_BUILDER_CACHE") {
        return PathBuf::from(d);
    }
    let home = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from("/var/cache"));
    home.join("image-builder")
}

/// `<dir>/base.json`: written last; a base without it is incomplete.
pub fn metadata_path(dir: &Path) -> PathBuf {
    dir.join("base.json")
}

impl Base {
    /// The layout of a base in `dir` (one definition for the builder and whoever reads it):
    /// `rootfs/`, `base.raw` (the disk), and [`metadata_path`].
    pub fn in_dir(spec: &BaseSpec, dir: &Path, built_at: String) -> Base {
        Base {
            key: spec.key(),
            suite: spec.suite.clone(),
            dir: dir.to_path_buf(),
            rootfs: dir.join("rootfs"),
            disk: dir.join("base.raw"),
            built_at,
            cache_hit: false,
        }
    }
}

/// Where the base for `spec` is cached under the cache root `root`:
/// `<root>/base/<suite>-<key>`.
pub fn cache_dir_in(root: &Path, spec: &BaseSpec) -> PathBuf {
    root.join("base")
        .join(format!("{}-{}", spec.suite, spec.key()))
}

/// The lock file held while the base for `spec` is looked up and built:
/// `<root>/base/.<suite>-<key>.lock`.
pub fn lock_path_in(root: &Path, spec: &BaseSpec) -> PathBuf {
    root.join("base")
        .join(format!(".{}-{}.lock", spec.suite, spec.key()))
}

/// Look up a cached base.
pub fn lookup(spec: &BaseSpec) -> Option<Base> {
    let dir = cache_dir_in(&cache_root(), spec);
    let text = std::fs::read_to_string(metadata_path(&dir)).ok()?;
    let mut base: Base = serde_json::from_str(&text).ok()?;
    let complete = base.disk.is_file() && base.rootfs.is_dir();
    base.cache_hit = true;
    complete.then_some(base)
}

fn require_root(what: &str) -> Result<(), QemuError> {
    if nix::unistd::geteuid().is_root() {
        Ok(())
    } else {
        Err(QemuError::NeedsRoot {
            what: what.to_owned(),
        })
    }
}

/// Exclusive lock on one base key ([`lock_path_in`]), held while that base is looked up
/// and built: concurrent bakes on a fresh machine wait for one build instead of each
/// building it and the last one replacing the directory another is copying from.
fn lock_key(root: &Path, spec: &BaseSpec) -> Result<nix::fcntl::Flock<std::fs::File>, QemuError> {
    use nix::fcntl::{Flock, FlockArg};
    let path = lock_path_in(root, spec);
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| QemuError::io(&path, e))?;
    match Flock::lock(f, FlockArg::LockExclusiveNonblock) {
        Ok(l) => Ok(l),
        Err((f, nix::errno::Errno::EWOULDBLOCK)) => {
            tracing::info!(
                "base {}-{} is being built by another process; waiting for it",
                spec.suite,
                spec.key()
            );
            Flock::lock(f, FlockArg::LockExclusive)
                .map_err(|(_, e)| QemuError::io(&path, std::io::Error::from(e)))
        }
        Err((_, e)) => Err(QemuError::io(&path, std::io::Error::from(e))),
    }
}

/// Build (or reuse) a base.
pub fn build(spec: &BaseSpec) -> Result<Base, QemuError> {
    if let Some(b) = lookup(spec) {
        tracing::info!("base {} is cached in {}", b.key, b.dir.display());
        return Ok(b);
    }
    require_root("building a base image (mmdebstrap in root mode, mkfs.ext4 -d)")?;
    super::require_tool("mmdebstrap")?;
    super::disk::preflight()?;
    let key = spec.key();
    let root = cache_root();
    let parent = root.join("base");
    std::fs::create_dir_all(&parent).map_err(|e| QemuError::io(&parent, e))?;
    let _lock = lock_key(&root, spec)?;
    // Another process may have finished it while this one waited for the lock.
    if let Some(b) = lookup(spec) {
        tracing::info!("base {} is cached in {}", b.key, b.dir.display());
        return Ok(b);
    }
    let dir = cache_dir_in(&root, spec);
    let tmp = tempfile::Builder::new()
        .prefix(&format!(".{}-{key}.", spec.suite))
        .tempdir_in(&parent)
        .map_err(|e| QemuError::io(&parent, e))?;
    let work = tmp.path();
    let hook = work.join("customize.sh");
    std::fs::write(&hook, CUSTOMIZE_HOOK).map_err(|e| QemuError::io(&hook, e))?;
    let staged = Base::in_dir(spec, work, String::new());
    let rootfs = staged.rootfs.clone();
    let include: Vec<String> = PACKAGES
        .iter()
        .map(|s| s.to_string())
        .chain(spec.extra_packages.iter().cloned())
        .collect();

    tracing::info!(
        "building base {key}: mmdebstrap {} ({} packages), takes ~2 min",
        spec.suite,
        include.len()
    );
    let mut mm = Command::new("mmdebstrap");
    mm.args(["--variant=minbase", "--mode=root"])
        .arg(format!("--include={}", include.join(",")))
        .args([
            "--dpkgopt=path-exclude=/usr/share/doc/*",
            "--dpkgopt=path-exclude=/usr/share/man/*",
            "--dpkgopt=path-exclude=/usr/share/locale/*",
        ])
        .arg(format!("--customize-hook=sh {} \"$1\"", hook.display()))
        .arg(&spec.suite)
        .arg(&rootfs);
    run_logged(&mut mm, "mmdebstrap", &work.join("mmdebstrap.log"))?;

    let assembly = work.join("assembly");
    std::fs::create_dir_all(&assembly).map_err(|e| QemuError::io(&assembly, e))?;
    super::disk::assemble(&rootfs, &staged.disk, spec.disk_size, &assembly)?;
    std::fs::remove_dir_all(&assembly).map_err(|e| QemuError::io(&assembly, e))?;

    let base = Base::in_dir(spec, &dir, super::now_rfc3339());
    let meta = serde_json::to_vec_pretty(&base).map_err(|e| QemuError::Other(e.to_string()))?;
    std::fs::write(metadata_path(work), meta).map_err(|e| QemuError::io(work, e))?;
    // Replace any incomplete leftover of an earlier run (under the lock, and `lookup`
    // never hands out an incomplete one), then move into place.
    if dir.exists() {
        std::fs::remove_dir_all(&dir).map_err(|e| QemuError::io(&dir, e))?;
    }
    let work = tmp.keep();
    std::fs::rename(&work, &dir).map_err(|e| QemuError::io(&dir, e))?;
    // The first bake of this base takes a spare copy of its tree instead of copying it.
    drop(super::container::spare_copy(&base.rootfs));
    tracing::info!("base {key} ready in {}", dir.display());
    Ok(base)
}
