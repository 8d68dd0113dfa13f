//! Full QEMU boots: the boot check of a golden image, the `vm` way of provisioning,
//! and local workers. Every disk boots with its own bootloader (no `-kernel`), under
//! legacy BIOS (SeaBIOS, QEMU's default firmware) or UEFI (OVMF).
//!
//! Acceleration: `/dev/kvm` exists on these machines but is a nested hypervisor
//! without hardware virtualisation that crashes stock kernels, so `auto` uses KVM
//! only when `/dev/kvm` exists *and* the CPU advertises vmx/svm; otherwise TCG
//! (`-accel tcg,thread=multi -cpu max`).
//!
//! CPU model: workers and provisioning VMs get the best the accelerator offers
//! ([`CpuModel::Best`]); the boot check boots on the x86-64 baseline
//! ([`CpuModel::Baseline`]).

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{QemuError, SuperviseOpts, Supervised, require_tool, run_logged, supervise};
use crate::spec::Accel;

/// Pick the accelerator.
pub fn resolve_accel(accel: Accel) -> Accel {
    match accel {
        Accel::Auto => {
            let cpu = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
            let hw = cpu
                .lines()
                .any(|l| l.starts_with("flags") && (l.contains(" vmx") || l.contains(" svm")));
            if Path::new("/dev/kvm").exists() && hw {
                Accel::Kvm
            } else {
                Accel::Tcg
            }
        }
        other => other,
    }
}

/// The CPU a VM gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CpuModel {
    /// All the accelerator offers: the host's CPU under KVM (`-cpu host`), QEMU's `max`
    /// under TCG. Workers and provisioning VMs get it: their jobs may use any extension.
    Best,
    /// QEMU's `qemu64`: x86-64 with no extension past SSE3, Debian amd64's baseline. The
    /// boot check's: an image that boots on it needs nothing a x86-64 machine may lack.
    /// Under TCG it is also the cheaper CPU to emulate (no AVX, no XSAVE state to switch):
    /// a boot to cloud-init takes ~12% less than with `max` on this project's CI machine.
    Baseline,
}

impl CpuModel {
    /// QEMU's `-cpu` value for this model under `accel` (already resolved).
    pub fn qemu_cpu(self, accel: Accel) -> &'static str {
        match (self, accel) {
            (CpuModel::Baseline, _) => "qemu64",
            (CpuModel::Best, Accel::Kvm) => "host",
            (CpuModel::Best, _) => "max",
        }
    }
}

/// The firmware a VM boots with.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    clap::ValueEnum,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum Firmware {
    /// Legacy BIOS: SeaBIOS, QEMU's default (and DigitalOcean's).
    #[default]
    Bios,
    /// UEFI: OVMF (`ovmf` package), with a copy of its variable store per VM.
    Uefi,
}

impl Firmware {
    /// `bios` / `uefi`.
    pub fn as_str(self) -> &'static str {
        match self {
            Firmware::Bios => "bios",
            Firmware::Uefi => "uefi",
        }
    }
}

impl std::fmt::Display for Firmware {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// OVMF's code (read-only flash), from Debian's `ovmf` package.
pub const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
/// OVMF's variable store template; each VM writes to its own copy.
pub const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";

/// A VM to boot.
#[derive(Clone, Debug)]
pub struct VmSpec {
    /// Disk image (qcow2 or raw) with its own bootloader; an overlay on it is what the
    /// VM writes to.
    pub disk: PathBuf,
    /// BIOS or UEFI.
    pub firmware: Firmware,
    /// Memory in MiB.
    pub memory_mib: u64,
    /// vCPUs.
    pub cpus: u32,
    /// Accelerator.
    pub accel: Accel,
    /// CPU model.
    pub cpu: CpuModel,
    /// Forward this host port on 127.0.0.1 to the guest's port 22.
    pub ssh_port: Option<u16>,
}

/// A NoCloud seed ISO (volume id `cidata`).
pub fn make_seed_iso(dir: &Path, user_data: &str, meta_data: &str) -> Result<PathBuf, QemuError> {
    let geniso = require_tool("genisoimage")?;
    let seed = dir.join("seed");
    std::fs::create_dir_all(&seed).map_err(|e| QemuError::io(&seed, e))?;
    std::fs::write(seed.join("user-data"), user_data).map_err(|e| QemuError::io(&seed, e))?;
    std::fs::write(seed.join("meta-data"), meta_data).map_err(|e| QemuError::io(&seed, e))?;
    let iso = dir.join("seed.iso");
    let mut cmd = std::process::Command::new(geniso);
    cmd.arg("-output")
        .arg(&iso)
        .args(["-volid", "cidata", "-joliet", "-rock"])
        .arg(seed.join("user-data"))
        .arg(seed.join("meta-data"));
    run_logged(&mut cmd, "genisoimage", &dir.join("genisoimage.log"))?;
    Ok(iso)
}

/// `qemu-img create -f qcow2 -b BASE -F FMT OVERLAY [SIZE]`: with `size`, the VM sees a
/// disk of that many bytes (never less than the base's), which cloud-init's growpart
/// and resizefs give to the root filesystem on first boot.
pub fn make_overlay(base: &Path, overlay: &Path, size: Option<u64>) -> Result<(), QemuError> {
    let qemu_img = require_tool("qemu-img")?;
    let fmt = image_format(base)?;
    let base_abs = std::fs::canonicalize(base).map_err(|e| QemuError::io(base, e))?;
    let mut cmd = std::process::Command::new(qemu_img);
    cmd.args(["create", "-q", "-f", "qcow2", "-b"])
        .arg(&base_abs)
        .args(["-F", &fmt])
        .arg(overlay);
    if let Some(size) = size {
        let base_size = virtual_size(&base_abs)?;
        cmd.arg(size.max(base_size).to_string());
    }
    run_logged(&mut cmd, "qemu-img create", &overlay.with_extension("log"))
}

/// The size of the disk a VM sees for `image` (`qemu-img info`'s virtual size).
pub fn virtual_size(image: &Path) -> Result<u64, QemuError> {
    let out = std::process::Command::new(require_tool("qemu-img")?)
        .args(["info", "--output=json"])
        .arg(image)
        .output()
        .map_err(|e| QemuError::Other(format!("cannot run qemu-img info: {e}")))?;
    let info: serde_json::Value = serde_json::from_slice(&out.stdout).map_err(|e| {
        QemuError::Other(format!(
            "qemu-img info {}: {e}: {}",
            image.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    })?;
    info["virtual-size"].as_u64().ok_or_else(|| {
        QemuError::Other(format!(
            "qemu-img info {}: no virtual-size",
            image.display()
        ))
    })
}

/// The QEMU arguments for `firmware`. UEFI: OVMF's code read-only and a copy of its
/// variable store at `vars` (made if absent, kept with the VM's other files).
pub fn firmware_args(firmware: Firmware, vars: &Path) -> Result<Vec<String>, QemuError> {
    match firmware {
        Firmware::Bios => Ok(Vec::new()),
        Firmware::Uefi => {
            for f in [OVMF_CODE, OVMF_VARS] {
                if !Path::new(f).is_file() {
                    return Err(QemuError::MissingTool {
                        tool: f.to_owned(),
                        package: "ovmf".into(),
                    });
                }
            }
            if !vars.exists() {
                std::fs::copy(OVMF_VARS, vars).map_err(|e| QemuError::io(vars, e))?;
            }
            Ok(vec![
                "-drive".into(),
                format!("if=pflash,format=raw,unit=0,readonly=on,file={OVMF_CODE}"),
                "-drive".into(),
                format!("if=pflash,format=raw,unit=1,file={}", vars.display()),
            ])
        }
    }
}

/// `raw` or `qcow2`, by magic.
pub fn image_format(path: &Path) -> Result<String, QemuError> {
    use std::io::Read as _;
    let mut magic = [0u8; 4];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut magic))
        .map_err(|e| QemuError::io(path, e))?;
    Ok(if &magic == b"QFI\xfb" { "qcow2" } else { "raw" }.to_owned())
}

/// Where the guest's serial console goes.
pub enum Serial<'a> {
    /// QEMU's stdout (supervised runs read it).
    Stdio,
    /// A file (detached workers).
    File(&'a Path),
}

/// The QEMU program and arguments for `vm` with the seed `iso` attached. Under UEFI the
/// VM's variable store is `<overlay>.ovmf-vars.fd`.
pub fn qemu_args(
    vm: &VmSpec,
    overlay: &Path,
    iso: &Path,
    pidfile: &Path,
    serial: Serial<'_>,
) -> Result<(PathBuf, Vec<String>), QemuError> {
    let qemu = require_tool("qemu-system-x86_64")?;
    let mut a: Vec<String> = Vec::new();
    let mut push = |xs: &[&str]| a.extend(xs.iter().map(|x| (*x).to_owned()));
    let accel = resolve_accel(vm.accel);
    match accel {
        Accel::Kvm => push(&["-accel", "kvm"]),
        _ => push(&["-accel", "tcg,thread=multi"]),
    }
    push(&["-cpu", vm.cpu.qemu_cpu(accel)]);
    push(&[
        "-smp",
        &vm.cpus.to_string(),
        "-m",
        &vm.memory_mib.to_string(),
    ]);
    push(&[
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-monitor",
        "none",
    ]);
    let serial = match serial {
        Serial::Stdio => "stdio".to_owned(),
        Serial::File(p) => format!("file:{}", p.display()),
    };
    push(&[
        "-serial",
        &serial,
        "-pidfile",
        &pidfile.display().to_string(),
    ]);
    let firmware = firmware_args(vm.firmware, &overlay.with_extension("ovmf-vars.fd"))?;
    push(&firmware.iter().map(String::as_str).collect::<Vec<_>>());
    push(&[
        "-drive",
        &format!(
            "file={},if=virtio,format=qcow2,cache=unsafe,discard=unmap",
            overlay.display()
        ),
    ]);
    push(&[
        "-drive",
        &format!("file={},if=virtio,format=raw,readonly=on", iso.display()),
    ]);
    let fwd = vm
        .ssh_port
        .map(|p| format!(",hostfwd=tcp:127.0.0.1:{p}-:22"))
        .unwrap_or_default();
    push(&[
        "-netdev",
        &format!("user,id=n0{fwd}"),
        "-device",
        "virtio-net-pci,netdev=n0",
    ]);
    push(&["-device", "virtio-rng-pci"]);
    Ok((qemu, a))
}

/// A supervised QEMU command (console on stdout).
pub fn command(
    vm: &VmSpec,
    overlay: &Path,
    iso: &Path,
    pidfile: &Path,
) -> Result<tokio::process::Command, QemuError> {
    let (qemu, args) = qemu_args(vm, overlay, iso, pidfile, Serial::Stdio)?;
    let mut cmd = tokio::process::Command::new(qemu);
    cmd.args(args);
    Ok(cmd)
}

/// The marker the boot check's user-data prints (from `bootcmd`) once cloud-init runs it.
pub const BOOT_OK: &str = "IMAGE-BUILDER-BOOT-CHECK";

/// What the boot check saw inside the booted golden image.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BootCheck {
    /// The firmware it booted with.
    pub firmware: Firmware,
    /// QEMU's CPU model it booted on (`qemu64`: [`CpuModel::Baseline`]).
    pub cpu: String,
    /// Seconds from QEMU start to the marker.
    pub seconds: f64,
    /// `systemctl is-enabled vm-agent`.
    pub agent_enabled: UnitEnabled,
    /// `visudo -c` result.
    pub sudoers: SudoersCheck,
    /// Number of failed units.
    pub failed_units: u32,
    /// The kernel command line it booted with (`/proc/cmdline`).
    pub cmdline: String,
}

/// `systemctl is-enabled` of a unit, as the boot check prints it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum UnitEnabled {
    /// Starts on every boot.
    Enabled,
    /// No such unit (the boot check's own spelling).
    Absent,
    /// Anything else `systemctl is-enabled` says (`disabled`, `masked`, `static`, ...).
    #[serde(untagged)]
    Other(String),
}

impl UnitEnabled {
    fn parse(word: &str) -> Self {
        match word {
            "enabled" => UnitEnabled::Enabled,
            "absent" => UnitEnabled::Absent,
            other => UnitEnabled::Other(other.to_owned()),
        }
    }
}

impl std::fmt::Display for UnitEnabled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            UnitEnabled::Enabled => "enabled",
            UnitEnabled::Absent => "absent",
            UnitEnabled::Other(other) => other,
        })
    }
}

/// `visudo -c` in the booted image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SudoersCheck {
    /// Every sudoers file parses.
    Ok,
    /// `visudo -c` failed (or printed nothing).
    Bad,
}

impl std::fmt::Display for SudoersCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SudoersCheck::Ok => "ok",
            SudoersCheck::Bad => "bad",
        })
    }
}

/// Boot the golden image once with a tiny seed and check it came up: no kernel on
/// QEMU's command line, the disk's own bootloader under `vm.firmware`. Its files go to
/// `work/boot-check-<firmware>/`.
///
/// The marker comes from `bootcmd`, in cloud-init's network stage: by then the
/// firmware ran the disk's bootloader, GRUB booted the kernel and initrd from the
/// root filesystem, systemd brought the system up to cloud-init, the NoCloud
/// datasource was found and this user-data was processed, which is what a worker's
/// first boot depends on. Waiting for the config and final stages as well would add
/// ~30 s under TCG and check nothing the image decides (the worker's own user-data
/// runs there). QEMU is stopped at the marker. The VM's CPU is `vm.cpu` (the bake
/// asks for [`CpuModel::Baseline`]).
pub async fn boot_check(
    vm: &VmSpec,
    work: &Path,
    timeout: Duration,
) -> Result<BootCheck, QemuError> {
    let dir = work.join(format!("boot-check-{}", vm.firmware));
    std::fs::create_dir_all(&dir).map_err(|e| QemuError::io(&dir, e))?;
    let user_data = format!(
        "#cloud-config\nbootcmd:\n  - [sh, -c, 'echo \"{BOOT_OK} agent=$(systemctl is-enabled vm-agent.service 2>/dev/null || echo absent) sudoers=$(visudo -c >/dev/null 2>&1 && echo ok || echo bad) failed=$(systemctl --failed --no-legend | wc -l) cmdline=$(cat /proc/cmdline)\" > /dev/console']\n"
    );
    let iso = make_seed_iso(
        &dir,
        &user_data,
        "instance-id: boot-check\nlocal-hostname: boot-check\n",
    )?;
    let overlay = dir.join("boot-check.qcow2");
    make_overlay(&vm.disk, &overlay, None)?;
    let cmd = command(vm, &overlay, &iso, &dir.join("qemu.pid"))?;
    let log = dir.join("console.log");
    let what = format!("boot check ({})", vm.firmware);
    let seen: Supervised = supervise(
        cmd,
        SuperviseOpts {
            what: &what,
            timeout,
            log: &log,
            stop_on: Some(BOOT_OK),
            watch: Some(BOOT_OK),
        },
    )
    .await?;
    let line = seen.watched.last().cloned().ok_or_else(|| {
        QemuError::Other(format!(
            "{what}: the VM stopped before cloud-init ran; console tail:\n{}",
            seen.tail
        ))
    })?;
    let field = |k: &str| {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(&format!("{k}=")).map(str::to_owned))
            .unwrap_or_default()
    };
    Ok(BootCheck {
        firmware: vm.firmware,
        cpu: vm.cpu.qemu_cpu(resolve_accel(vm.accel)).to_owned(),
        seconds: seen.elapsed.as_secs_f64(),
        agent_enabled: UnitEnabled::parse(&field("agent")),
        sudoers: if field("sudoers") == "ok" {
            SudoersCheck::Ok
        } else {
            SudoersCheck::Bad
        },
        failed_units: field("failed").parse().unwrap_or(0),
        // Last on the line, spaces and all.
        cmdline: line
            .split_once(" cmdline=")
            .map(|(_, c)| c.trim().to_owned())
            .unwrap_or_default(),
    })
}

/// A one-file HTTP server on 127.0.0.1 (reachable from a QEMU user-networking guest
/// as 10.0.2.2): serves `GET /<name>` with the file and nothing else. Dropped with
/// the bake.
pub struct FileServer {
    /// The port on 127.0.0.1.
    pub port: u16,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FileServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FileServer {
    /// Serve `file` as `/name`.
    pub async fn start(file: PathBuf, name: String) -> Result<FileServer, QemuError> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| QemuError::Other(format!("cannot listen on 127.0.0.1: {e}")))?;
        let port = listener
            .local_addr()
            .map_err(|e| QemuError::Other(e.to_string()))?
            .port();
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut sock, _)) = listener.accept().await else {
                    continue;
                };
                let file = file.clone();
                let want = format!("GET /{name} ");
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    let n = sock.read(&mut buf).await.unwrap_or(0);
                    let req = String::from_utf8_lossy(&buf[..n]);
                    match (req.starts_with(&want), tokio::fs::read(&file).await) {
                        (true, Ok(body)) => {
                            let head = format!(
                                "HTTP/1.0 200 OK\r\nContent-Length: {}\r\nContent-Type: application/octet-stream\r\n\r\n",
                                body.len()
                            );
                            let _ = sock.write_all(head.as_bytes()).await;
                            let _ = sock.write_all(&body).await;
                        }
                        _ => {
                            let _ = sock
                                .write_all(b"HTTP/1.0 404 Not Found\r\nContent-Length: 0\r\n\r\n")
                                .await;
                        }
                    }
                    let _ = sock.shutdown().await;
                });
            }
        });
        Ok(FileServer { port, task })
    }
}

/// Provision by booting the image in QEMU with the bake user-data as a NoCloud seed;
/// returns when the finisher has powered the VM off (or on timeout/error/signal,
/// with QEMU killed). The overlay then holds the provisioned disk; with `disk_size` it
/// is that big (growpart grows the image's root partition into it while provisioning).
pub async fn provision(
    vm: &VmSpec,
    work: &Path,
    user_data: &str,
    instance_id: &str,
    timeout: Duration,
    disk_size: Option<u64>,
) -> Result<(PathBuf, Supervised), QemuError> {
    let iso = make_seed_iso(
        work,
        user_data,
        &format!("instance-id: {instance_id}\nlocal-hostname: {instance_id}\n"),
    )?;
    let overlay = work.join("provision.qcow2");
    make_overlay(&vm.disk, &overlay, disk_size)?;
    let cmd = command(vm, &overlay, &iso, &work.join("qemu.pid"))?;
    let log = work.join("console.log");
    let seen = supervise(
        cmd,
        SuperviseOpts {
            what: "VM provisioning",
            timeout,
            log: &log,
            stop_on: None,
            watch: None,
        },
    )
    .await?;
    Ok((overlay, seen))
}
