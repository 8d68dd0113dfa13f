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
}

/// Copy `base_rootfs` to `work/rootfs` and put the seed (and the agent) in place.
pub fn prepare(
    base_rootfs: &Path,
    work: &Path,
    user_data: &str,
    instance_id: &str,
    agent_binary: Option<&Path>,
) -> Result<Prepared, QemuError> {
    let rootfs = work.join("rootfs");
    let mut cp = std::process::Command::new("cp");
    cp.args(["-a", "--reflink=auto"])
        .arg(base_rootfs)
        .arg(&rootfs);
    run_logged(
        &mut cp,
        "copying the base root filesystem",
        &work.join("cp.log"),
    )?;
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
    Ok(Prepared { rootfs })
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
