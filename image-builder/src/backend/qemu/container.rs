//! Provisioning in a container: `systemd-nspawn -b` boots a copy of the base's root
//! filesystem with the bake user-data as a NoCloud seed; cloud-init runs the same
//! steps it would run in a VM, the finisher prints the seal report on the console
//! and powers the container off. The disk image is then made from the result.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{QemuError, SuperviseOpts, Supervised, require_tool, run_logged, supervise};

/// Where the local backend copies the agent binary inside the root filesystem
/// (the agent-install step installs it from there after checking its sha256).
pub const AGENT_STAGING: &str = "/var/lib/image-builder/agent/vm-agent";

/// A root filesystem prepared for one provisioning run.
pub struct Prepared {
    /// The copy of the base's root filesystem.
    pub rootfs: PathBuf,
    /// Where that copy came from.
    pub from: RootfsFrom,
}

/// Where a bake's copy of the base tree came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RootfsFrom {
    /// The spare copy an earlier bake made ([`spare_path`]), moved into place.
    Spare,
    /// Copied now (`cp -a`).
    Copied,
}

/// The spare copy of a base tree: a pristine `cp -a` of `<base>/rootfs`, made by a bake
/// in the background while its disk is checked ([`spare_copy`]) and taken by the next
/// bake of that base with one rename. The copy is the one step of a bake that writes
/// ~16,000 files: 0.8 s on a settled disk, 4 to 11 s while the disk still writes back
/// what came before (bench/README.md). It costs the base's cache one more tree.
pub fn spare_path(base_rootfs: &Path) -> PathBuf {
    base_rootfs.with_file_name("rootfs.spare")
}

/// Move the spare copy of `base_rootfs` to `work/rootfs`, or copy the tree there, then
/// put the seed (and the agent) in place.
pub fn prepare(
    base_rootfs: &Path,
    work: &Path,
    user_data: &str,
    instance_id: &str,
    agent_binary: Option<&Path>,
) -> Result<Prepared, QemuError> {
    let rootfs = work.join("rootfs");
    // A rename is atomic: of two bakes at once, one takes the spare, the other copies.
    let from = if std::fs::rename(spare_path(base_rootfs), &rootfs).is_ok() {
        RootfsFrom::Spare
    } else {
        let mut cp = std::process::Command::new("cp");
        cp.args(["-a", "--reflink=auto"])
            .arg(base_rootfs)
            .arg(&rootfs);
        run_logged(
            &mut cp,
            "copying the base root filesystem",
            &work.join("cp.log"),
        )?;
        RootfsFrom::Copied
    };
    let seed = rootfs.join("var/lib/cloud/seed/nocloud");
    std::fs::create_dir_all(&seed).map_err(|e| QemuError::io(&seed, e))?;
    let ud = seed.join("user-data");
    std::fs::write(&ud, user_data).map_err(|e| QemuError::io(&ud, e))?;
    let md = seed.join("meta-data");
    std::fs::write(
        &md,
        format!("instance-id: {instance_id}\nlocal-hostname: {instance_id}\n"),
    )
    .map_err(|e| QemuError::io(&md, e))?;
    if let Some(agent) = agent_binary {
        let dest = rootfs.join(AGENT_STAGING.trim_start_matches('/'));
        if let Some(d) = dest.parent() {
            std::fs::create_dir_all(d).map_err(|e| QemuError::io(d, e))?;
        }
        std::fs::copy(agent, &dest).map_err(|e| QemuError::io(agent, e))?;
    }
    Ok(Prepared { rootfs, from })
}

/// Make the spare copy of a base tree ([`spare_path`]) on another thread, at the lowest
/// CPU and IO priority (`nice -n 19 ionice -c 3 cp -a`, beside a boot check it takes
/// nothing measurable from it), into a temporary name in the base's directory, renamed
/// only once it is complete; nothing when the spare exists. Joined when dropped, so a
/// bake ends with the spare made or its temporary copy removed. A temporary copy left by
/// a killed bake is removed by the next one.
pub fn spare_copy(base_rootfs: &Path) -> super::Background {
    let (base, spare) = (base_rootfs.to_owned(), spare_path(base_rootfs));
    super::Background::spawn(move || {
        remove_stale_spares(&base);
        if spare.exists() {
            return;
        }
        let tmp = base.with_file_name(format!(
            ".rootfs.spare-{}-{}",
            std::process::id(),
            uuid::Uuid::new_v4().simple()
        ));
        let mut cmd = std::process::Command::new("nice");
        cmd.args(["-n", "19"]);
        if require_tool("ionice").is_ok() {
            cmd.args(["ionice", "-c", "3"]);
        }
        cmd.args(["cp", "-a", "--reflink=auto"])
            .arg(&base)
            .arg(&tmp)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        let copied = cmd.status().map(|s| s.success()).unwrap_or(false);
        // Renaming onto an existing spare (another bake's) fails: ours goes.
        if !copied || std::fs::rename(&tmp, &spare).is_err() {
            let _ = std::fs::remove_dir_all(&tmp);
            if !copied {
                tracing::debug!("could not copy {} to its spare", base.display());
            }
        }
    })
}

/// Remove temporary spare copies whose bake no longer runs (`.rootfs.spare-<pid>-…`).
fn remove_stale_spares(base_rootfs: &Path) {
    let Some(dir) = base_rootfs.parent() else {
        return;
    };
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix(".rootfs.spare-")
            .and_then(|rest| rest.split('-').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// What `/etc/resolv.conf` was in the image before provisioning.
enum ResolvConf {
    Symlink(PathBuf),
    File(Vec<u8>),
    Absent,
}

fn save_resolv_conf(rootfs: &Path) -> ResolvConf {
    let p = rootfs.join("etc/resolv.conf");
    match std::fs::symlink_metadata(&p) {
        Ok(m) if m.file_type().is_symlink() => std::fs::read_link(&p)
            .map(ResolvConf::Symlink)
            .unwrap_or(ResolvConf::Absent),
        Ok(_) => std::fs::read(&p)
            .map(ResolvConf::File)
            .unwrap_or(ResolvConf::Absent),
        Err(_) => ResolvConf::Absent,
    }
}

fn restore_resolv_conf(rootfs: &Path, saved: ResolvConf) -> Result<(), QemuError> {
    let p = rootfs.join("etc/resolv.conf");
    let _ = std::fs::remove_file(&p);
    match saved {
        ResolvConf::Symlink(target) => {
            std::os::unix::fs::symlink(&target, &p).map_err(|e| QemuError::io(&p, e))
        }
        ResolvConf::File(data) => std::fs::write(&p, data).map_err(|e| QemuError::io(&p, e)),
        ResolvConf::Absent => Ok(()),
    }
}

/// Boot the prepared root filesystem with `systemd-nspawn -b` until it powers off.
///
/// DNS: the image's `/etc/resolv.conf` points at systemd-resolved's stub, which has
/// no upstream servers inside a container sharing the host's network, so the host's
/// resolv.conf is used while provisioning (`--resolv-conf=replace-host`) and the
/// image's own file (usually that symlink) is put back afterwards.
pub async fn run(
    prepared: &Prepared,
    machine: &str,
    timeout: Duration,
    log: &Path,
) -> Result<Supervised, QemuError> {
    let saved = save_resolv_conf(&prepared.rootfs);
    let result = run_nspawn(prepared, machine, timeout, log).await;
    restore_resolv_conf(&prepared.rootfs, saved)?;
    result
}

async fn run_nspawn(
    prepared: &Prepared,
    machine: &str,
    timeout: Duration,
    log: &Path,
) -> Result<Supervised, QemuError> {
    let nspawn = require_tool("systemd-nspawn")?;
    let mut cmd = tokio::process::Command::new(nspawn);
    cmd.arg("-D")
        .arg(&prepared.rootfs)
        // --register=no --keep-unit: this host's PID 1 is not systemd (no machined).
        // --console=read-only: the container's console (with the seal report) is our stdout.
        .args([
            "-b",
            "--register=no",
            "--keep-unit",
            "--console=read-only",
            "--resolv-conf=replace-host",
            "-M",
            machine,
        ]);
    supervise(
        cmd,
        SuperviseOpts {
            what: "container provisioning",
            timeout,
            log,
            stop_on: None,
            watch: None,
        },
    )
    .await
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    fn tree(base: &Path) {
        std::fs::create_dir_all(base.join("etc/ssh")).unwrap();
        std::fs::write(base.join("etc/hostname"), "base\n").unwrap();
        let secret = base.join("etc/ssh/key");
        std::fs::write(&secret, "k").unwrap();
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::os::unix::fs::symlink("hostname", base.join("etc/name")).unwrap();
        std::fs::hard_link(base.join("etc/hostname"), base.join("etc/hostname2")).unwrap();
    }

    #[test]
    fn a_bake_takes_the_spare_copy_the_one_before_made_and_else_copies() {
        let d = tempfile::tempdir().unwrap();
        let base = d.path().join("base/rootfs");
        tree(&base);
        // A temporary copy left by a bake that no longer runs goes; one of a running
        // bake (this process) stays.
        let stale = d.path().join("base/.rootfs.spare-4194304-x");
        let running = d
            .path()
            .join(format!("base/.rootfs.spare-{}-y", std::process::id()));
        std::fs::create_dir_all(&stale).unwrap();
        std::fs::create_dir_all(&running).unwrap();

        drop(spare_copy(&base));
        let spare = spare_path(&base);
        assert!(!stale.exists() && running.exists());
        assert_eq!(
            std::fs::read(spare.join("etc/hostname")).unwrap(),
            b"base\n"
        );
        assert_eq!(
            std::fs::metadata(spare.join("etc/ssh/key"))
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o600
        );
        assert_eq!(
            std::fs::read_link(spare.join("etc/name")).unwrap(),
            Path::new("hostname")
        );

        let work = d.path().join("w1");
        std::fs::create_dir_all(&work).unwrap();
        let first = prepare(&base, &work, "#cloud-config\n", "i-1", None).unwrap();
        assert_eq!(first.from, RootfsFrom::Spare);
        assert!(!spare.exists(), "the spare is taken, not shared");
        assert!(
            first
                .rootfs
                .join("var/lib/cloud/seed/nocloud/user-data")
                .is_file()
        );
        // The base itself is untouched.
        assert!(!base.join("var/lib/cloud").exists());

        let work = d.path().join("w2");
        std::fs::create_dir_all(&work).unwrap();
        let second = prepare(&base, &work, "#cloud-config\n", "i-2", None).unwrap();
        assert_eq!(second.from, RootfsFrom::Copied);
        assert_eq!(
            std::fs::read(second.rootfs.join("etc/hostname2")).unwrap(),
            b"base\n"
        );

        // With a spare in place, another is not made.
        drop(spare_copy(&base));
        std::fs::write(spare.join("marker"), "").unwrap();
        drop(spare_copy(&base));
        assert!(spare.join("marker").exists());
    }
}
