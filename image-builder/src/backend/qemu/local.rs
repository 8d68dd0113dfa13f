//! Local workers: `run-local` boots a worker from a golden image (a qcow2 overlay,
//! so the image is never modified), `ls-local` lists them, `stop-local` stops one.
//!
//! State of each worker lives in `~/.cache/image-builder/local/<name>/`:
//! `info.json` (pid, ssh port, image), the overlay, the seed ISO and the console log.
//! Inside the guest, QEMU's user networking maps the host's 127.0.0.1 to 10.0.2.2.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::vm::{self, VmSpec};
use super::{QemuError, require_tool, run_logged};

/// The host as seen from a QEMU user-networking guest.
pub const HOST_FROM_GUEST: &str = "10.0.2.2";

/// A running (or stopped) local worker.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LocalWorker {
    /// Name.
    pub name: String,
    /// QEMU's pid.
    pub pid: u32,
    /// SSH is forwarded from 127.0.0.1:ssh_port.
    pub ssh_port: u16,
    /// The golden image.
    pub image: PathBuf,
    /// The firmware it booted with.
    #[serde(default)]
    pub firmware: vm::Firmware,
    /// Console log.
    pub console: PathBuf,
    /// When it started.
    pub started_at: String,
    /// Whether QEMU is still running (filled in by `list`).
    #[serde(default)]
    pub running: bool,
}

/// The root of local worker state.
pub fn local_root() -> PathBuf {
    super::base::cache_root().join("local")
}

/// A free TCP port on 127.0.0.1 (bound and released; QEMU binds it right after).
pub fn free_port() -> Result<u16, QemuError> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")
        .map_err(|e| QemuError::Other(format!("no free port: {e}")))?;
    l.local_addr()
        .map(|a| a.port())
        .map_err(|e| QemuError::Other(e.to_string()))
}

fn alive(pid: u32) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| String::from_utf8_lossy(&c).contains("qemu-system"))
        .unwrap_or(false)
}

/// Options of `run-local`.
#[derive(Clone, Debug)]
pub struct RunLocal {
    /// The golden image (a whole disk with its own bootloader; qcow2 or raw).
    pub image: PathBuf,
    /// BIOS (QEMU's default, SeaBIOS) or UEFI (OVMF).
    pub firmware: vm::Firmware,
    /// The worker's disk size in bytes (`None`: the image's); the root filesystem
    /// grows into it on first boot.
    pub disk_size: Option<u64>,
    /// Worker name (unique).
    pub name: String,
    /// The worker user-data.
    pub user_data: String,
    /// Memory in MiB.
    pub memory_mib: u64,
    /// vCPUs.
    pub cpus: u32,
    /// Accelerator.
    pub accel: crate::spec::Accel,
    /// SSH port on 127.0.0.1 (None: pick a free one).
    pub ssh_port: Option<u16>,
}

/// Boot a worker in the background and return once QEMU is running.
pub fn run(opts: &RunLocal) -> Result<LocalWorker, QemuError> {
    let dir = local_root().join(&opts.name);
    if let Ok(text) = std::fs::read_to_string(dir.join("info.json"))
        && let Ok(w) = serde_json::from_str::<LocalWorker>(&text)
        && alive(w.pid)
    {
        return Err(QemuError::Other(format!(
            "a local worker named {:?} is already running (pid {}): stop it with `image-builder stop-local {}`",
            w.name, w.pid, w.name
        )));
    }
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| QemuError::io(&dir, e))?;
    let result = start(opts, &dir);
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    result
}

fn start(opts: &RunLocal, dir: &Path) -> Result<LocalWorker, QemuError> {
    let image = std::fs::canonicalize(&opts.image).map_err(|e| QemuError::io(&opts.image, e))?;
    if !super::disk::is_whole_disk(&image)? {
        return Err(QemuError::Other(format!(
            "{} is {}",
            image.display(),
            super::disk::NOT_A_WHOLE_DISK
        )));
    }
    let iso = vm::make_seed_iso(
        dir,
        &opts.user_data,
        &format!(
            "instance-id: {}\nlocal-hostname: {}\n",
            opts.name, opts.name
        ),
    )?;
    let overlay = dir.join("overlay.qcow2");
    vm::make_overlay(&image, &overlay, opts.disk_size)?;
    let ssh_port = match opts.ssh_port {
        Some(p) => p,
        None => free_port()?,
    };
    let spec = VmSpec {
        disk: image.clone(),
        firmware: opts.firmware,
        memory_mib: opts.memory_mib,
        cpus: opts.cpus,
        accel: opts.accel,
        cpu: vm::CpuModel::Best,
        ssh_port: Some(ssh_port),
    };
    let pidfile = dir.join("qemu.pid");
    let console = dir.join("console.log");
    let (qemu, mut args) =
        vm::qemu_args(&spec, &overlay, &iso, &pidfile, vm::Serial::File(&console))?;
    // Detached: the worker outlives this command by design; `stop-local` ends it.
    args.push("-daemonize".into());
    let mut daemon = std::process::Command::new(qemu);
    daemon.args(args);
    run_logged(
        &mut daemon,
        "qemu-system-x86_64 -daemonize",
        &dir.join("qemu.log"),
    )?;
    let pid: u32 = std::fs::read_to_string(&pidfile)
        .map_err(|e| QemuError::io(&pidfile, e))?
        .trim()
        .parse()
        .map_err(|e| QemuError::Other(format!("{}: {e}", pidfile.display())))?;
    let w = LocalWorker {
        name: opts.name.clone(),
        pid,
        ssh_port,
        image,
        firmware: opts.firmware,
        console,
        started_at: super::now_rfc3339(),
        running: true,
    };
    let info = serde_json::to_vec_pretty(&w).map_err(|e| QemuError::Other(e.to_string()))?;
    artifact_store::fsutil::write_atomic(&dir.join("info.json"), &info, 0o644)
        .map_err(|e| QemuError::io(dir, e))?;
    Ok(w)
}

/// Every local worker, with `running` filled in.
pub fn list() -> Vec<LocalWorker> {
    let mut out: Vec<LocalWorker> = std::fs::read_dir(local_root())
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .filter_map(|e| std::fs::read_to_string(e.path().join("info.json")).ok())
        .filter_map(|t| serde_json::from_str::<LocalWorker>(&t).ok())
        .map(|mut w| {
            w.running = alive(w.pid);
            w
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// Stop a worker (SIGTERM, then SIGKILL after `grace`) and remove its state.
pub fn stop(name: &str, grace: Duration) -> Result<LocalWorker, QemuError> {
    let dir = local_root().join(name);
    let text = std::fs::read_to_string(dir.join("info.json")).map_err(|_| {
        QemuError::Other(format!(
            "no local worker named {name:?} (see `image-builder ls-local`)"
        ))
    })?;
    let mut w: LocalWorker =
        serde_json::from_str(&text).map_err(|e| QemuError::Other(e.to_string()))?;
    if alive(w.pid) {
        let pid = nix::unistd::Pid::from_raw(w.pid as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = std::time::Instant::now() + grace;
        while alive(w.pid) && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        if alive(w.pid) {
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
        }
    }
    w.running = alive(w.pid);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(w)
}

/// Is `qemu-system-x86_64` there? (For a clear error before any work.)
pub fn preflight() -> Result<(), QemuError> {
    require_tool("qemu-system-x86_64").map(|_| ())?;
    require_tool("qemu-img").map(|_| ())?;
    require_tool("genisoimage").map(|_| ())
}
