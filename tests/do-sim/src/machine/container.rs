//! One boot of a droplet's container: `systemd-nspawn -b` on the droplet's overlay.
//!
//! Each boot runs on its own OS thread, which
//! 1. enters the droplet's network namespace,
//! 2. unshares its mount namespace and makes it private, so the overlay mount
//!    below exists only for this boot and disappears with its last process,
//! 3. mounts the overlay (image tree + the droplet's upper dir) on `root/`,
//! 4. makes the boot its own cgroup in each cgroup hierarchy systemd uses (see
//!    [`private_cgroups`]) and starts `setpriv --pdeathsig TERM -- systemd-nspawn …`
//!    in it, and waits for it.
//!
//! The thread lives exactly as long as nspawn, so nspawn's parent-death signal
//! fires only when the simulator's process dies. nspawn runs with
//! `--kill-signal=SIGKILL`: when it gets SIGTERM (that parent-death signal) or
//! SIGINT (Ctrl-C in the terminal) it kills its container at once, however far
//! the container's boot got, then exits and removes its own files on the host.
//! Only the run directory is left for the sweeper. The simulator's own orderly
//! requests go to the container's init directly ([`POWEROFF_SIGNAL`], SIGINT).
//!
//! nspawn reports on `$NOTIFY_SOCKET`: `X_NSPAWN_LEADER_PID=` when the container's
//! init runs (the droplet is `active`), `READY=1` when that systemd finished
//! booting (`--notify-ready=yes`). Its exit status says how the container ended:
//! 0 powered off or halted, 133 asked to reboot, anything else died.
//!
//! The container's init gets `ds=nocloud;s=http://169.254.169.254/nocloud/;dsmode=net`
//! as an argument. systemd ignores it, but in a container cloud-init reads its "kernel
//! command line" from `/proc/1/cmdline`, so cloud-init's NoCloud datasource fetches
//! `meta-data`, `user-data` and `vendor-data` from the droplet's own metadata
//! listener. Nothing is written into the droplet's tree for that.

use std::fs::{self, OpenOptions};
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use nix::mount::{MsFlags, mount};
use nix::sched::{CloneFlags, setns, unshare};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::net::UnixDatagram;
use tokio::sync::mpsc::UnboundedSender;

use super::rootfs::overlay_options;
use super::sweep::{LOCK_NOTE, MARKER_ENV};

/// nspawn's exit status when the container asked to reboot.
pub const EXIT_REBOOT: i32 = 133;

/// What the container's init gets as its "kernel command line" (see the module docs).
pub const INIT_ARGS: &[&str] = &[
    // `dsmode=net`: cloud-init 22.4 takes `ds=nocloud` for a local seed and would
    // drop the HTTP one at its network stage (newer ones go by the URL's scheme).
    "ds=nocloud;s=http://169.254.169.254/nocloud/;dsmode=net",
    // No fallback DHCP config: the droplet has only `lo`, set up by the simulator.
    "network-config=disabled",
];

/// Everything one boot needs.
#[derive(Debug)]
pub struct Boot {
    /// nspawn's machine name (and the first hostname).
    pub machine: String,
    /// The droplet's directory: `upper/`, `work/`, `root/`, `console.log` live here.
    pub dir: PathBuf,
    /// The image tree (the overlay's lower dir).
    pub image: PathBuf,
    /// `$NOTIFY_SOCKET` for nspawn (bound by the caller before the boot starts).
    pub notify: PathBuf,
    /// Value of [`MARKER_ENV`].
    pub marker: String,
    /// The droplet's network namespace.
    pub net: OwnedFd,
}

/// What a boot reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The container's init runs; its pid on the host.
    Leader(u32),
    /// systemd in the container finished booting.
    Booted,
    /// nspawn ended with this exit status (`None`: killed by a signal).
    Exited(Option<i32>),
    /// The boot could not start.
    Failed(String),
}

/// Shared between a boot's thread and whoever stops it: once `cancelled` is set
/// no nspawn is started, and `nspawn` is the pid of the one that was.
#[derive(Debug, Default)]
pub struct Gate {
    pub cancelled: bool,
    pub nspawn: Option<u32>,
}

/// Start a boot on its own thread (see the module docs). Its end is reported as
/// [`Event::Exited`] or [`Event::Failed`] on `events`.
pub fn launch(
    boot: Boot,
    gate: Arc<Mutex<Gate>>,
    events: UnboundedSender<Event>,
) -> io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name(format!("do-sim-{}", boot.machine))
        .spawn(move || {
            let end = match run(&boot, &gate) {
                Ok(code) => Event::Exited(code),
                Err(e) => Event::Failed(e.to_string()),
            };
            let _ = events.send(end);
        })
}

fn run(boot: &Boot, gate: &Mutex<Gate>) -> io::Result<Option<i32>> {
    let root = boot.dir.join("root");
    setns(&boot.net, CloneFlags::CLONE_NEWNET).map_err(io::Error::from)?;
    unshare(CloneFlags::CLONE_NEWNS).map_err(io::Error::from)?;
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(|e| io::Error::other(format!("making a private mount namespace: {e}")))?;
    let options = overlay_options(&boot.image, &boot.dir.join("upper"), &boot.dir.join("work"))?;
    mount(
        Some("overlay"),
        &root,
        Some("overlay"),
        MsFlags::empty(),
        Some(options.as_str()),
    )
    .map_err(|e| io::Error::other(format!("mounting the overlay on {}: {e}", root.display())))?;
    // nspawn locks the root by device and inode; a killed nspawn leaves the lock
    // file behind, so note its name for the cleanup.
    let meta = fs::metadata(&root)?;
    fs::write(
        boot.dir.join(LOCK_NOTE),
        format!(
            "/run/systemd/nspawn/locks/inode-{}:{}\n",
            meta.dev(),
            meta.ino()
        ),
    )?;
    let console = OpenOptions::new()
        .create(true)
        .append(true)
        .open(boot.dir.join("console.log"))?;
    let cgroups = private_cgroups(&boot.machine)?;
    // A shell moves itself into the boot's cgroups, then becomes setpriv/nspawn, so the
    // container starts there (nspawn --keep-unit gives the container its own cgroup).
    let mut cmd = Command::new("sh");
    cmd.args([
        "-c",
        "IFS=:; for g in $DO_SIM_CGROUPS; do echo $$ > \"$g/cgroup.procs\" || exit 125; done; unset IFS; exec \"$@\"",
        "do-sim-boot",
        "setpriv",
        "--pdeathsig",
        "TERM",
        "--",
        "systemd-nspawn",
        "--quiet",
        "-D",
    ])
    .env(
        "DO_SIM_CGROUPS",
        cgroups
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(":"),
    )
    .arg(&root)
    .args(["--boot", "--machine", &boot.machine])
    // No machined on hosts without systemd as PID 1; nothing to register with.
    .args(["--register=no", "--keep-unit"])
    .args([
        "--console=read-only",
        "--notify-ready=yes",
        "--kill-signal=SIGKILL",
    ])
    // Nothing of the host is copied into the droplet's tree.
    .args(["--resolv-conf=off", "--timezone=off", "--link-journal=no"])
    // The namespace this thread is in: the droplet's.
    .arg("--network-namespace-path=/proc/self/ns/net")
    .arg(format!("--setenv={MARKER_ENV}={}", boot.marker))
    .arg("--")
    .args(INIT_ARGS)
    .env(MARKER_ENV, &boot.marker)
    .env("NOTIFY_SOCKET", &boot.notify)
    .stdin(Stdio::null())
    .stdout(console.try_clone()?)
    .stderr(console);
    let mut child = {
        let mut gate = gate.lock().unwrap_or_else(|e| e.into_inner());
        if gate.cancelled {
            return Ok(None);
        }
        let child = cmd.spawn().map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("starting setpriv (package util-linux) and systemd-nspawn: {e}"),
            )
        })?;
        gate.nspawn = Some(child.id());
        child
    };
    let code = child.wait()?.code();
    for g in &cgroups {
        remove_cgroup(g);
    }
    Ok(code)
}

/// The boot's own cgroup in each hierarchy systemd uses (cgroup v2, or the named v1
/// `systemd` one and the `unified` one of a hybrid host), under the simulator's own.
///
/// Without it every container's systemd works in the one cgroup nspawn started in
/// (there is no systemd on the host to give nspawn a unit of its own) and they race
/// on the same paths: seen as units failing with `status=219/CGROUP` when several
/// droplets boot at once.
fn private_cgroups(machine: &str) -> io::Result<Vec<PathBuf>> {
    let dirs: Vec<PathBuf> = cgroup_parents()?
        .into_iter()
        .map(|parent| parent.join(format!("{CGROUP_PREFIX}{machine}")))
        .collect();
    for dir in &dirs {
        fs::create_dir_all(dir).map_err(|e| {
            io::Error::new(e.kind(), format!("making cgroup {}: {e}", dir.display()))
        })?;
    }
    Ok(dirs)
}

/// Boots' cgroups are named with this prefix (the sweeper removes abandoned ones).
pub(super) const CGROUP_PREFIX: &str = "do-sim-";

/// The simulator's own cgroup in each hierarchy systemd uses: where boots' cgroups go.
pub(super) fn cgroup_parents() -> io::Result<Vec<PathBuf>> {
    let own = fs::read_to_string("/proc/self/cgroup")?;
    let mut dirs = Vec::new();
    for line in own.lines() {
        // `ID:CONTROLLERS:PATH`; v2 is `0::PATH`, the named v1 one `N:name=systemd:PATH`.
        let mut parts = line.splitn(3, ':');
        let (Some(_), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let mount = match controllers {
            "name=systemd" => "/sys/fs/cgroup/systemd",
            "" if std::path::Path::new("/sys/fs/cgroup/unified/cgroup.procs").exists() => {
                "/sys/fs/cgroup/unified"
            }
            "" => "/sys/fs/cgroup",
            _ => continue,
        };
        if !PathBuf::from(mount).join("cgroup.procs").exists() {
            continue;
        }
        dirs.push(PathBuf::from(mount).join(path.trim_start_matches('/')));
    }
    Ok(dirs)
}

/// Whether no process is left in the cgroup `dir` or below it.
pub(super) fn cgroup_unused(dir: &std::path::Path) -> bool {
    let procs = fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
    procs.trim().is_empty()
        && fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .all(|e| !e.file_type().is_ok_and(|t| t.is_dir()) || cgroup_unused(&e.path()))
}

/// Remove a boot's cgroup and what the container's systemd made below it, deepest
/// first (a cgroup directory is removed with rmdir once it has no process).
pub(super) fn remove_cgroup(dir: &std::path::Path) {
    if let Ok(entries) = fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_cgroup(&e.path());
            }
        }
    }
    let _gone = fs::remove_dir(dir);
}

/// Forward nspawn's notifications on `socket` as events until the socket fails
/// or the receiver is gone.
pub async fn read_notifications(socket: UnixDatagram, events: UnboundedSender<Event>) {
    let mut buf = vec![0u8; 4096];
    loop {
        let n = match socket.recv(&mut buf).await {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(error = %e, "reading nspawn's notifications failed");
                return;
            }
        };
        for line in String::from_utf8_lossy(&buf[..n]).lines() {
            let event = if let Some(pid) = line.strip_prefix("X_NSPAWN_LEADER_PID=") {
                pid.trim().parse().ok().map(Event::Leader)
            } else if line == "READY=1" {
                Some(Event::Booted)
            } else {
                None
            };
            if let Some(event) = event
                && events.send(event).is_err()
            {
                return;
            }
        }
    }
}

/// systemd's "power off" signal, `SIGRTMIN+4` (glibc's SIGRTMIN is 34).
pub const POWEROFF_SIGNAL: u32 = 38;

/// Send signal number `signo` with procps' `kill`: realtime signals have no safe
/// Rust API (nix has none, rustix's needs `unsafe`).
pub fn send_numbered(pid: u32, signo: u32) -> io::Result<()> {
    let out = Command::new("kill")
        .args(["-s", &signo.to_string(), &pid.to_string()])
        .output()
        .map_err(|e| io::Error::new(e.kind(), format!("running kill (package procps): {e}")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "kill -s {signo} {pid}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

/// Whether process `pid` takes signal number `signo`: it has a handler (`SigCgt`
/// in `/proc/<pid>/status`) or blocks it to read it from a signalfd (`SigBlk`,
/// what systemd does). PID 1 of a namespace never gets a signal it does neither
/// with, so an orderly request sent before systemd set its signals up early in
/// the boot would be lost.
pub fn takes_signal(pid: u32, signo: u32) -> bool {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return false;
    };
    let mask = |field: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|mask| u64::from_str_radix(mask.trim(), 16).ok())
            .unwrap_or(0)
    };
    let bit = signo
        .checked_sub(1)
        .and_then(|b| 1u64.checked_shl(b))
        .unwrap_or(0);
    (mask("SigCgt:") | mask("SigBlk:")) & bit != 0
}

/// Send `signal` to a process.
pub fn signal(pid: u32, signal: Signal) -> io::Result<()> {
    let pid =
        i32::try_from(pid).map_err(|_| io::Error::other(format!("pid {pid} out of range")))?;
    kill(Pid::from_raw(pid), signal).map_err(io::Error::from)
}

/// Run `argv` inside a running container (all its namespaces, its root, the
/// working directory of its init) with `nsenter`, and collect its output.
pub async fn exec(leader: u32, argv: &[&str]) -> io::Result<std::process::Output> {
    tokio::process::Command::new("nsenter")
        .arg(format!("--target={leader}"))
        .args([
            "--mount", "--uts", "--ipc", "--net", "--pid", "--root", "--wd", "--",
        ])
        .args(argv)
        .env_clear()
        .env(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        )
        .env("LANG", "C.UTF-8")
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("running nsenter (package util-linux): {e}"),
            )
        })
}
