//! Root filesystem trees: images, droplet disks and snapshots.
//!
//! * An **image** is a plain directory tree, read-only by convention: the base
//!   root filesystem for public slugs, and one tree per snapshot under the run
//!   directory. Nothing ever writes into an image tree once it is made.
//! * A **droplet's disk** is an overlayfs: its image tree as the only lower dir
//!   and the droplet's own `upper/` for everything it writes. Creating a
//!   droplet copies nothing. The overlay is mounted inside the container's
//!   private mount namespace (see `container.rs`), so no mount exists on the
//!   host and none can be left behind.
//! * A **snapshot** flattens the two: a copy of the image tree (see [`CopyMode`];
//!   on this project's ext4 CI disks it is a tree of hard links, ~1 s and a few
//!   MB of directories for the Debian base) with the droplet's upper dir applied
//!   on top (whiteouts delete, opaque dirs replace, everything else is copied).
//!   A file the droplet changed is always written as a new inode (the hard link
//!   is unlinked first), so a snapshot never changes the tree it was made from.
//!   The disk cost of a snapshot is what the droplet wrote plus the directories.
//!
//! Overlay options: `redirect_dir=off,metacopy=off,index=off,xino=off`, so the
//! upper dir holds whole files and plain directories and stays readable on its
//! own (a renamed directory is copied up whole).

use std::fs;
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Serialize;

/// How an image tree is copied when a snapshot is made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum CopyMode {
    /// `cp --reflink=always`: copy-on-write clones (btrfs, XFS).
    Reflink,
    /// `cp -l`: a tree of hard links to the image's files (same filesystem).
    HardLinks,
    /// `cp -a`: a full copy (the state directory is on another filesystem).
    Copy,
}

impl CopyMode {
    /// The best mode for trees made in `state_dir` from images under `base`:
    /// reflinks when `cp --reflink=always` works there, else hard links when both
    /// are on one filesystem, else full copies.
    pub fn probe(state_dir: &Path, base: &Path) -> io::Result<CopyMode> {
        let probe = tempfile_dir(state_dir, ".reflink-probe")?;
        let a = probe.join("a");
        fs::write(&a, b"reflink probe")?;
        let reflink = Command::new("cp")
            .arg("--reflink=always")
            .arg(&a)
            .arg(probe.join("b"))
            .output()
            .is_ok_and(|o| o.status.success());
        fs::remove_dir_all(&probe)?;
        if reflink {
            return Ok(CopyMode::Reflink);
        }
        let same_fs = fs::metadata(state_dir)?.dev() == fs::metadata(base)?.dev();
        Ok(if same_fs {
            CopyMode::HardLinks
        } else {
            CopyMode::Copy
        })
    }
}

fn tempfile_dir(parent: &Path, name: &str) -> io::Result<PathBuf> {
    let dir = parent.join(format!("{name}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// `lowerdir=…,upperdir=…,workdir=…` plus the options in the module docs.
/// Paths with `,`, `:` or `\` would need escaping and are refused.
pub fn overlay_options(lower: &Path, upper: &Path, work: &Path) -> io::Result<String> {
    for p in [lower, upper, work] {
        let s = p.to_str().ok_or_else(|| {
            io::Error::other(format!("{} is not UTF-8; overlayfs needs it", p.display()))
        })?;
        if s.contains([',', ':', '\\']) {
            return Err(io::Error::other(format!(
                "{s} contains ',', ':' or '\\', which overlayfs options cannot carry"
            )));
        }
    }
    Ok(format!(
        "lowerdir={},upperdir={},workdir={},redirect_dir=off,metacopy=off,index=off,xino=off",
        lower.display(),
        upper.display(),
        work.display()
    ))
}

/// Make `out` (which must not exist) a copy of `image` with `upper` applied: the
/// tree of a snapshot. On error `out` may be partly written; the caller removes it.
pub fn flatten(mode: CopyMode, image: &Path, upper: &Path, out: &Path) -> io::Result<()> {
    let mut cp = Command::new("cp");
    cp.arg("-a");
    match mode {
        CopyMode::Reflink => {
            cp.arg("--reflink=always");
        }
        CopyMode::HardLinks => {
            cp.arg("--link");
        }
        CopyMode::Copy => {}
    }
    run_cp(cp.arg("-T").arg(image).arg(out), false)?;
    apply_upper(upper, out)
}

/// Apply an overlay upper dir to `out` (see the module docs). The droplet may be
/// running: entries that vanish while this runs are skipped, as a crash-consistent
/// copy would.
pub fn apply_upper(upper: &Path, out: &Path) -> io::Result<()> {
    clear_for_upper(upper, out)?;
    // Copy everything; --remove-destination never opens an existing file, so a
    // hard link into the image is replaced, not written through.
    let mut cp = Command::new("cp");
    cp.args(["-a", "--remove-destination", "-T"])
        .arg(upper)
        .arg(out);
    run_cp(&mut cp, true)?;
    // cp also copied the whiteouts (0:0 character devices) and overlayfs's own
    // xattrs; neither belongs to the result.
    scrub_overlay_marks(upper, out)
}

/// Pre-pass: delete from `out` what the upper dir deletes or replaces, and every
/// non-directory the upper dir has (so cp creates a new inode).
fn clear_for_upper(upper: &Path, out: &Path) -> io::Result<()> {
    for entry in read_dir_if_present(upper)? {
        let src = entry.path();
        let dst = out.join(entry.file_name());
        let Some(meta) = metadata_if_present(&src)? else {
            continue;
        };
        let existing = metadata_if_present(&dst)?;
        if meta.is_dir() {
            let replace = is_opaque(&src) || existing.as_ref().is_some_and(|m| !m.is_dir());
            if replace {
                remove_any(&dst)?;
            } else if existing.is_some() {
                clear_for_upper(&src, &dst)?;
            }
        } else if existing.is_some() {
            remove_any(&dst)?;
        }
    }
    Ok(())
}

/// Post-pass: remove the whiteouts cp copied and strip `trusted.overlay.*` xattrs.
fn scrub_overlay_marks(upper: &Path, out: &Path) -> io::Result<()> {
    for entry in read_dir_if_present(upper)? {
        let src = entry.path();
        let dst = out.join(entry.file_name());
        let Some(meta) = metadata_if_present(&src)? else {
            continue;
        };
        if is_whiteout(&meta) {
            if metadata_if_present(&dst)?.is_some_and(|m| is_whiteout(&m)) {
                fs::remove_file(&dst)?;
            }
            continue;
        }
        strip_overlay_xattrs(&dst)?;
        if meta.is_dir() {
            scrub_overlay_marks(&src, &dst)?;
        }
    }
    Ok(())
}

fn is_whiteout(meta: &fs::Metadata) -> bool {
    meta.file_type().is_char_device() && meta.rdev() == 0
}

fn is_opaque(dir: &Path) -> bool {
    let mut value = [0u8; 8];
    rustix::fs::lgetxattr(dir, "trusted.overlay.opaque", &mut value[..])
        .is_ok_and(|n| value.get(..n) == Some(b"y"))
}

fn strip_overlay_xattrs(path: &Path) -> io::Result<()> {
    let mut names = vec![0u8; 4096];
    let len = match rustix::fs::llistxattr(path, &mut names[..]) {
        Ok(n) => n,
        // No such file (vanished) or a filesystem without xattrs: nothing to strip.
        Err(_) => return Ok(()),
    };
    for name in names[..len].split(|b| *b == 0).filter(|n| !n.is_empty()) {
        if name.starts_with(b"trusted.overlay.") {
            let name = String::from_utf8_lossy(name).into_owned();
            rustix::fs::lremovexattr(path, name.as_str()).map_err(io::Error::from)?;
        }
    }
    Ok(())
}

fn read_dir_if_present(dir: &Path) -> io::Result<Vec<fs::DirEntry>> {
    match fs::read_dir(dir) {
        Ok(entries) => entries.collect(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}

fn metadata_if_present(path: &Path) -> io::Result<Option<fs::Metadata>> {
    match fs::symlink_metadata(path) {
        Ok(m) => Ok(Some(m)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Remove a file, symlink or whole directory; absent is fine.
pub fn remove_any(path: &Path) -> io::Result<()> {
    let result = match metadata_if_present(path)? {
        Some(m) if m.is_dir() => fs::remove_dir_all(path),
        Some(_) => fs::remove_file(path),
        None => return Ok(()),
    };
    match result {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

/// Run cp. With `vanishing_ok`, errors that only say a source file disappeared
/// (a running droplet deleted it mid-copy) are not failures.
fn run_cp(cp: &mut Command, vanishing_ok: bool) -> io::Result<()> {
    let out = cp.output()?;
    if out.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    let only_vanished = stderr
        .lines()
        .filter(|l| !l.trim().is_empty())
        .all(|l| l.contains("No such file or directory"));
    if vanishing_ok && only_vanished {
        tracing::debug!(stderr = %stderr.trim(), "files vanished during a live snapshot");
        return Ok(());
    }
    Err(io::Error::other(format!(
        "{cp:?} failed: {}",
        stderr.trim()
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn tree(root: &Path, files: &[(&str, &str)]) {
        for (path, content) in files {
            let p = root.join(path);
            fs::create_dir_all(p.parent().expect("parent")).expect("dirs");
            fs::write(&p, content).expect("write");
        }
    }

    fn read(p: PathBuf) -> Option<String> {
        fs::read_to_string(p).ok()
    }

    #[test]
    fn overlay_options_refuse_separators() {
        let ok = overlay_options(Path::new("/a"), Path::new("/b"), Path::new("/c"));
        assert!(ok.is_ok_and(|o| o.starts_with("lowerdir=/a,upperdir=/b,workdir=/c,")));
        assert!(overlay_options(Path::new("/a:b"), Path::new("/b"), Path::new("/c")).is_err());
    }

    /// An upper dir written by hand the way overlayfs writes one (a whiteout needs
    /// mknod, so root); the image must be untouched and the result must be the merge.
    #[test]
    fn flatten_applies_an_upper_dir_without_touching_the_image() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!(
                "flatten test needs root (mknod of a whiteout); run the machine tests as root"
            );
            return;
        }
        let base = tempfile_dir(&std::env::temp_dir(), "do-sim-flatten").expect("tmp");
        let image = base.join("image");
        let upper = base.join("upper");
        let out = base.join("out");
        tree(
            &image,
            &[
                ("etc/issue", "Debian\n"),
                ("etc/motd", "hello\n"),
                ("opt/old/a", "a\n"),
                ("srv/f", "was a file\n"),
                ("usr/bin/tool", "unchanged\n"),
            ],
        );
        symlink("issue", image.join("etc/issue.link")).expect("symlink");
        tree(
            &upper,
            &[
                ("etc/issue", "Debian changed\n"),
                ("root/new", "new\n"),
                ("opt/old/b", "b\n"),
                ("srv/f/inside", "now a dir\n"),
            ],
        );
        // etc/motd deleted: a whiteout.
        rustix::fs::mknodat(
            rustix::fs::CWD,
            upper.join("etc/motd"),
            rustix::fs::FileType::CharacterDevice,
            rustix::fs::Mode::from_raw_mode(0o600),
            0,
        )
        .expect("mknod whiteout");
        // opt/old replaced by a new directory: opaque.
        rustix::fs::lsetxattr(
            upper.join("opt/old"),
            "trusted.overlay.opaque",
            b"y",
            rustix::fs::XattrFlags::empty(),
        )
        .expect("opaque xattr");

        flatten(CopyMode::HardLinks, &image, &upper, &out).expect("flatten");

        assert_eq!(
            read(out.join("etc/issue")).as_deref(),
            Some("Debian changed\n")
        );
        assert_eq!(read(image.join("etc/issue")).as_deref(), Some("Debian\n"));
        assert!(!out.join("etc/motd").exists(), "whiteout applied");
        assert!(image.join("etc/motd").exists());
        assert_eq!(read(out.join("root/new")).as_deref(), Some("new\n"));
        assert!(!out.join("opt/old/a").exists(), "opaque dir replaced");
        assert_eq!(read(out.join("opt/old/b")).as_deref(), Some("b\n"));
        assert_eq!(
            read(out.join("srv/f/inside")).as_deref(),
            Some("now a dir\n")
        );
        assert_eq!(
            read(out.join("etc/issue.link")).as_deref(),
            Some("Debian changed\n")
        );
        let mut value = [0u8; 8];
        assert!(
            rustix::fs::lgetxattr(
                out.join("opt/old"),
                "trusted.overlay.opaque",
                &mut value[..]
            )
            .is_err(),
            "overlay xattrs stripped"
        );
        // Unchanged files are shared with the image (hard links), changed ones are not.
        let ino = |p: PathBuf| fs::metadata(p).expect("stat").ino();
        assert_eq!(
            ino(out.join("usr/bin/tool")),
            ino(image.join("usr/bin/tool"))
        );
        assert_ne!(ino(out.join("etc/issue")), ino(image.join("etc/issue")));
        fs::remove_dir_all(&base).expect("cleanup");
    }
}
