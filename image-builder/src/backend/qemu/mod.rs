//! The local backend: golden images built on this machine.
//!
//! - [`base`]: `image-builder base build`, a cached Debian root filesystem + disk.
//! - [`container`]: provisioning with `systemd-nspawn -b` (cloud-init done in ~2 s).
//! - [`disk`]: a whole bootable disk (GPT, GRUB for BIOS and UEFI) from a root
//!   filesystem tree, made without mounting anything.
//! - [`vm`]: a full QEMU boot of a disk by its own bootloader (the vm way, boot
//!   checks, local workers), under SeaBIOS or OVMF.
//!
//! Child processes (nspawn, QEMU) are supervised: they run in their own process
//! group, die with us (`PR_SET_PDEATHSIG`), and are killed on timeout, error,
//! Ctrl-C or SIGTERM; temporary files go with them.

pub mod base;
pub mod container;
pub mod disk;
pub mod local;
pub mod vm;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use provision::{SealReport, SealStatus};

use crate::backend::{BakeStep, Timings};

/// Errors of the local backend.
#[derive(Debug, thiserror::Error)]
pub enum QemuError {
    /// A file operation failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A required tool is missing.
    #[error("`{tool}` not found: install the `{package}` package (or run .ci/setup.sh)")]
    MissingTool {
        /// The tool.
        tool: String,
        /// The Debian package.
        package: String,
    },
    /// Root is needed.
    #[error("{what} needs root")]
    NeedsRoot {
        /// What.
        what: String,
    },
    /// A command failed.
    #[error("{what} failed ({status}); last output:\n{tail}\n(full log: {})", log.display())]
    Command {
        /// What ran.
        what: String,
        /// Exit status.
        status: String,
        /// Its last lines.
        tail: String,
        /// The full log.
        log: PathBuf,
    },
    /// Provisioning did not report in time.
    #[error("{what} did not finish within {}; console tail:\n{tail}", humantime::format_duration(*timeout))]
    Timeout {
        /// What.
        what: String,
        /// The bound.
        timeout: Duration,
        /// Console tail.
        tail: String,
    },
    /// Interrupted by a signal; everything started was stopped.
    #[error("interrupted by {signal}; stopped {what} and removed its temporary files")]
    Interrupted {
        /// Which signal.
        signal: &'static str,
        /// What was running.
        what: String,
    },
    /// Provisioning reported failure.
    #[error("provisioning failed: {reason}\n--- cloud-init log tail ---\n{tail}")]
    ProvisioningFailed {
        /// Why.
        reason: String,
        /// The step that failed (the reason names it too).
        step: Option<String>,
        /// Log tail.
        tail: String,
    },
    /// Anything else.
    #[error("{0}")]
    Other(String),
}

impl QemuError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        QemuError::Io {
            path: path.to_owned(),
            source,
        }
    }
}

const TOOL_PACKAGES: &[(&str, &str)] = &[
    ("mmdebstrap", "mmdebstrap"),
    ("mkfs.ext4", "e2fsprogs"),
    ("systemd-nspawn", "systemd-container"),
    ("qemu-system-x86_64", "qemu-system-x86"),
    ("qemu-img", "qemu-utils"),
    ("genisoimage", "genisoimage"),
    ("sgdisk", "gdisk"),
    ("mformat", "mtools"),
    ("mmd", "mtools"),
    ("mcopy", "mtools"),
    ("grub-mkimage", "grub-common"),
];

/// Fail with the package to install when `tool` is missing.
pub fn require_tool(tool: &str) -> Result<PathBuf, QemuError> {
    crate::validate::find_tool(tool).ok_or_else(|| QemuError::MissingTool {
        tool: tool.to_owned(),
        package: TOOL_PACKAGES
            .iter()
            .find(|(t, _)| *t == tool)
            .map(|(_, p)| (*p).to_owned())
            .unwrap_or_else(|| tool.to_owned()),
    })
}

/// UTC now as RFC 3339.
pub fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

fn tail_of(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Run a short command to completion, output to `log`; on failure the error carries its tail.
pub fn run_logged(
    cmd: &mut std::process::Command,
    what: &str,
    log: &Path,
) -> Result<(), QemuError> {
    let out = cmd
        .output()
        .map_err(|e| QemuError::Other(format!("cannot run {what}: {e}")))?;
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    std::fs::write(log, &text).map_err(|e| QemuError::io(log, e))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(QemuError::Command {
            what: what.to_owned(),
            status: out.status.to_string(),
            tail: tail_of(&text, 30),
            log: log.to_owned(),
        })
    }
}

/// Markers around the seal report on the console.
pub use provision::{REPORT_BEGIN, REPORT_END};

/// What a supervised run saw.
#[derive(Debug)]
pub struct Supervised {
    /// The seal report, if one was printed.
    pub report: Option<SealReport>,
    /// The last console lines.
    pub tail: String,
    /// How long it ran.
    pub elapsed: Duration,
    /// Lines matching the caller's `watch` string, in order.
    pub watched: Vec<String>,
}

/// Options for [`supervise`].
pub struct SuperviseOpts<'a> {
    /// Human name ("container bake", "boot check").
    pub what: &'a str,
    /// Kill after this long.
    pub timeout: Duration,
    /// Console log file.
    pub log: &'a Path,
    /// Stop (kill) as soon as a line containing this appears (e.g. a boot marker).
    pub stop_on: Option<&'a str>,
    /// Collect lines containing this.
    pub watch: Option<&'a str>,
}

/// Run `cmd` (stdout+stderr = console) until it exits, a stop line appears, the
/// timeout passes, or we get SIGINT/SIGTERM. The child runs in its own process
/// group, gets SIGKILL if we die, and is killed when this function returns.
pub async fn supervise(
    mut cmd: tokio::process::Command,
    opts: SuperviseOpts<'_>,
) -> Result<Supervised, QemuError> {
    use tokio::signal::unix::{SignalKind, signal};

    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd.process_group(0);
    set_pdeathsig(&mut cmd);
    let started = Instant::now();
    let mut child = cmd
        .spawn()
        .map_err(|e| QemuError::Other(format!("cannot start {}: {e}", opts.what)))?;
    let pid = child.id();
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| QemuError::Other("no stdout".into()))?;
    let stderr = child
        .stderr
        .take()
        .ok_or_else(|| QemuError::Other("no stderr".into()))?;
    // Lines as bytes: a console is not always UTF-8 (GRUB's menu frame under UEFI is
    // code page 437), and a reader that stopped at the first bad byte would leave QEMU
    // blocked on a full pipe with the guest frozen.
    let mut out_lines = BufReader::new(stdout).split(b'\n');
    let mut err_lines = BufReader::new(stderr).split(b'\n');
    let mut log = tokio::fs::File::create(opts.log)
        .await
        .map_err(|e| QemuError::io(opts.log, e))?;
    let mut sigint =
        signal(SignalKind::interrupt()).map_err(|e| QemuError::Other(e.to_string()))?;
    let mut sigterm =
        signal(SignalKind::terminate()).map_err(|e| QemuError::Other(e.to_string()))?;
    let deadline = tokio::time::sleep(opts.timeout);
    tokio::pin!(deadline);

    let mut tail: Vec<String> = Vec::new();
    let mut watched = Vec::new();
    let mut in_report: Option<String> = None;
    let mut report = None;
    let (mut out_open, mut err_open) = (true, true);
    let kill_group = |pid: Option<u32>| {
        if let Some(pid) = pid {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    };

    loop {
        let line = tokio::select! {
            l = out_lines.next_segment(), if out_open => match l {
                Ok(Some(l)) => Some(l),
                _ => { out_open = false; None }
            },
            l = err_lines.next_segment(), if err_open => match l {
                Ok(Some(l)) => Some(l),
                _ => { err_open = false; None }
            },
            status = child.wait(), if !out_open && !err_open => {
                let _ = status;
                break;
            }
            _ = &mut deadline => {
                kill_group(pid);
                let _ = child.kill().await;
                return Err(QemuError::Timeout { what: opts.what.to_owned(), timeout: opts.timeout, tail: tail.join("\n") });
            }
            _ = sigint.recv() => {
                kill_group(pid);
                let _ = child.kill().await;
                return Err(QemuError::Interrupted { signal: "SIGINT", what: opts.what.to_owned() });
            }
            _ = sigterm.recv() => {
                kill_group(pid);
                let _ = child.kill().await;
                return Err(QemuError::Interrupted { signal: "SIGTERM", what: opts.what.to_owned() });
            }
        };
        let Some(line) = line else { continue };
        let _ = log.write_all(&line).await;
        let _ = log.write_all(b"\n").await;
        let clean = strip_ansi(&String::from_utf8_lossy(&line));
        if let Some(buf) = in_report.as_mut() {
            if clean.contains(REPORT_END) {
                report = serde_json::from_str::<SealReport>(buf.trim()).ok();
                in_report = None;
            } else {
                buf.push_str(&clean);
            }
        } else if clean.contains(REPORT_BEGIN) {
            in_report = Some(String::new());
        }
        if let Some(w) = opts.watch
            && clean.contains(w)
        {
            watched.push(clean.clone());
        }
        tail.push(clean.clone());
        if tail.len() > 60 {
            tail.remove(0);
        }
        if let Some(stop) = opts.stop_on
            && clean.contains(stop)
        {
            kill_group(pid);
            let _ = child.kill().await;
            break;
        }
    }
    let _ = log.flush().await;
    Ok(Supervised {
        report,
        tail: tail.join("\n"),
        elapsed: started.elapsed(),
        watched,
    })
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.peek() == Some(&'[') {
                chars.next();
                for c in chars.by_ref() {
                    if c.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
        } else if c != '\r' {
            out.push(c);
        }
    }
    out
}

#[allow(unsafe_code)]
fn set_pdeathsig(cmd: &mut tokio::process::Command) {
    // SAFETY: the closure runs between fork and exec and only calls prctl(2), which
    // is async-signal-safe; it allocates nothing and touches no locks.
    unsafe {
        cmd.pre_exec(|| {
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
                .map_err(std::io::Error::from)
        });
    }
}

/// Turn a seal report into success or a `ProvisioningFailed` error.
pub fn check_report(
    report: Option<SealReport>,
    console_tail: &str,
) -> Result<SealReport, QemuError> {
    match report {
        Some(r) if r.status == SealStatus::Ok => Ok(r),
        Some(r) => Err(QemuError::ProvisioningFailed {
            reason: r.reason.clone().unwrap_or_else(|| "unknown".into()),
            step: r.failed_step.clone(),
            tail: if r.log_tail.is_empty() {
                console_tail.to_owned()
            } else {
                r.log_tail.join("\n")
            },
        }),
        None => Err(QemuError::ProvisioningFailed {
            reason: "the builder stopped without a seal report".into(),
            step: None,
            tail: console_tail.to_owned(),
        }),
    }
}

/// How the local backend provisions.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Way {
    /// `container` for bases built by `base build`, `vm` for other images.
    #[default]
    Auto,
    /// `systemd-nspawn -b` on the base's root filesystem (fast), then a boot check.
    Container,
    /// A full QEMU boot.
    Vm,
}

/// Options of a local bake.
#[derive(Clone, Debug, Default)]
pub struct QemuBakeOptions {
    /// Container or VM.
    pub way: Way,
    /// Skip the boot check after a container bake.
    pub no_boot_check: bool,
    /// The firmwares the boot check boots the golden disk with, in order (empty:
    /// BIOS only).
    pub boot_check_firmware: Vec<vm::Firmware>,
    /// Keep the work directory (debugging).
    pub keep_work: bool,
}

fn file_size(p: &Path) -> u64 {
    std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)
}

/// Bake with the local backend: provision, make the golden qcow2, boot-check it.
pub async fn bake(
    loaded: &crate::spec::LoadedSpec,
    name: &str,
    agent: Option<&crate::backend::AgentArtifact>,
    out_dir: &Path,
    opts: &QemuBakeOptions,
) -> Result<crate::backend::BakeResult, QemuError> {
    use crate::render::{self, AgentBinary, Mode, RenderOptions};

    let spec = &loaded.spec;
    let mut timings = Timings::default();
    let mut lap = Instant::now();
    let mut mark = |timings: &mut Timings, step: BakeStep| {
        timings.push(step, lap.elapsed().as_secs_f64());
        lap = Instant::now();
    };

    let base_name = spec.base.qemu.clone().ok_or_else(|| {
        QemuError::Other(format!(
            "{}: base.qemu is not set: the local backend needs a base",
            loaded.path.display()
        ))
    })?;
    // A suite name means a base built by `base build`; anything else is an image file.
    let is_suite = !base_name.contains('/') && !base_name.contains('.');
    let way = match (opts.way, is_suite) {
        (Way::Auto | Way::Container, true) => Way::Container,
        (Way::Container, false) => {
            return Err(QemuError::Other(format!(
                "base.qemu {base_name:?} is an image file: the container way needs a base built by `image-builder base build`"
            )));
        }
        (_, _) => Way::Vm,
    };
    // The base: built/cached, or the user's image. Either is a disk with its own bootloader.
    if way == Way::Container {
        // The disk assembly's tools and the disk size, before minutes of provisioning.
        disk::preflight()?;
        disk::DiskLayout::new(spec.qemu.disk_size.0, String::new())?;
    }
    let (base_rootfs, base_disk, base_cached) = if is_suite {
        let base = base::build(&base::BaseSpec {
            suite: base_name.clone(),
            ..Default::default()
        })?;
        (Some(base.rootfs), base.disk, base.cache_hit)
    } else {
        let p = loaded
            .path
            .parent()
            .map(|d| d.join(&base_name))
            .unwrap_or_else(|| base_name.clone().into());
        if !p.is_file() {
            return Err(QemuError::Other(format!(
                "base.qemu: {} does not exist",
                p.display()
            )));
        }
        (None, p, false)
    };
    mark(
        &mut timings,
        if base_cached {
            BakeStep::BaseCached
        } else {
            BakeStep::Base
        },
    );

    let work_parent = base::cache_root().join("work");
    std::fs::create_dir_all(&work_parent).map_err(|e| io_err(&work_parent, e))?;
    let work_dir = tempfile::Builder::new()
        .prefix("bake-")
        .tempdir_in(&work_parent)
        .map_err(|e| io_err(&work_parent, e))?;
    let work = work_dir.path().to_owned();
    let instance = format!("bake-{}", &loaded.spec_hash()[..8]);

    // The agent: copied into the root filesystem (container) or fetched over HTTP
    // from a one-file server on the host (vm); its sha256 is checked either way.
    let mut _file_server = None;
    let agent_source = match (way, agent) {
        (_, None) => None,
        (Way::Container, Some(_)) => Some(provision::AgentSource::Path(
            container::AGENT_STAGING.to_owned(),
        )),
        (_, Some(a)) => {
            let server = vm::FileServer::start(a.path.clone(), "vm-agent".into()).await?;
            let url = format!("http://{}:{}/vm-agent", local::HOST_FROM_GUEST, server.port);
            _file_server = Some(server);
            Some(provision::AgentSource::Url(url))
        }
    };
    let mut ropts = RenderOptions::new(Mode::Bake);
    ropts.agent = agent.zip(agent_source).map(|(a, source)| AgentBinary {
        source,
        sha256: a.sha256.clone(),
        config_toml: a.config_toml.clone(),
        unit: a.unit.clone(),
    });
    let rendered = render::render(loaded, &ropts).map_err(|e| QemuError::Other(e.to_string()))?;

    // Reported (manifest, `next:` command) as an absolute path.
    let out_dir = &std::path::absolute(out_dir).map_err(|e| io_err(out_dir, e))?;
    let qcow = out_dir.join(format!("{name}.qcow2"));
    let tmp_qcow = out_dir.join(format!(".{name}.qcow2.tmp"));
    let vm_spec = |disk: PathBuf, firmware: vm::Firmware, cpu: vm::CpuModel| vm::VmSpec {
        disk,
        firmware,
        memory_mib: spec.qemu.memory.0 >> 20,
        cpus: spec.qemu.cpus,
        accel: spec.qemu.accel,
        cpu,
        ssh_port: None,
    };
    let timeout = spec.bake.timeout.0;
    // Flatten + compress into the output, atomically.
    let convert = |src: &Path, log: &Path| -> Result<(), QemuError> {
        let qemu_img = require_tool("qemu-img")?;
        let mut convert = std::process::Command::new(qemu_img);
        // -W -m 8: out-of-order writes with 8 coroutines, so compression runs on
        // every core instead of one.
        convert.args(["convert", "-W", "-m", "8", "-O", "qcow2"]);
        match spec.qemu.compression {
            crate::spec::Compression::Zstd => {
                convert.args(["-c", "-o", "compression_type=zstd"]);
            }
            crate::spec::Compression::Zlib => {
                convert.arg("-c");
            }
            crate::spec::Compression::None => {}
        }
        convert.arg(src).arg(&tmp_qcow);
        if let Err(e) = run_logged(&mut convert, "qemu-img convert", log) {
            let _ = std::fs::remove_file(&tmp_qcow);
            return Err(e);
        }
        std::fs::rename(&tmp_qcow, &qcow).map_err(|e| io_err(&qcow, e))
    };
    let mut layout = None;
    let mut rootfs_from = None;
    // Declared after `work_dir`, so dropped (joined) before it is removed.
    let mut _removing = None;
    let mut _spare = None;
    let report = if way == Way::Container {
        let rootfs = base_rootfs
            .as_deref()
            .ok_or_else(|| QemuError::Other("no root filesystem".into()))?;
        let prepared = container::prepare(
            rootfs,
            &work,
            &rendered.text,
            &instance,
            agent.map(|a| a.path.as_path()),
        )?;
        rootfs_from = Some(prepared.from);
        mark(&mut timings, BakeStep::Prepare);
        tracing::info!(
            "provisioning {name} in a container (timeout {})",
            humantime::format_duration(timeout)
        );
        let log = work.join("console.log");
        let seen = container::run(
            &prepared,
            &format!("ib-{}", &loaded.spec_hash()[..10]),
            timeout,
            &log,
        )
        .await?;
        let report = check_report(seen.report, &seen.tail)?;
        mark(&mut timings, BakeStep::Provision);
        // Only the disk assembly differs from the base's: the provisioned tree becomes a
        // whole bootable disk (the `disk` step's time is the assembly's own).
        let raw = work.join("golden.raw");
        let assembly = work.join("disk");
        std::fs::create_dir_all(&assembly).map_err(|e| io_err(&assembly, e))?;
        layout = Some(disk::assemble(
            &prepared.rootfs,
            &raw,
            spec.qemu.disk_size.0,
            &assembly,
        )?);
        mark(&mut timings, BakeStep::Disk);
        // The provisioned tree is on the disk now; its copy goes while the disk is
        // converted and boot-checked, instead of after.
        if !opts.keep_work {
            _removing = Some(remove_in_background(prepared.rootfs.clone()));
        }
        // The next bake of this base takes a spare copy instead of copying.
        _spare = Some(container::spare_copy(rootfs));
        convert(&raw, &work.join("convert.log"))?;
        let _ = std::fs::remove_file(&raw);
        mark(&mut timings, BakeStep::Image);
        report
    } else {
        tracing::info!(
            "provisioning {name} in a QEMU VM (timeout {})",
            humantime::format_duration(timeout)
        );
        let vm = vm_spec(base_disk.clone(), vm::Firmware::Bios, vm::CpuModel::Best);
        // The VM's disk has the spec's size; growpart grows the root into it while
        // provisioning, so the golden image has that size as the container way's does.
        let (overlay, seen) = vm::provision(
            &vm,
            &work,
            &rendered.text,
            &instance,
            timeout,
            Some(spec.qemu.disk_size.0),
        )
        .await?;
        let report = check_report(seen.report, &seen.tail)?;
        mark(&mut timings, BakeStep::Provision);
        convert(&overlay, &work.join("convert.log"))?;
        mark(&mut timings, BakeStep::Image);
        report
    };

    let mut details =
        serde_json::json!({"way": way, "base": base_disk, "base_cache_hit": base_cached});
    if let Some(from) = rootfs_from {
        details["rootfs_from"] = serde_json::to_value(from).unwrap_or_default();
    }
    if let Some(layout) = &layout {
        details["disk"] = serde_json::to_value(layout).unwrap_or_default();
    }
    // The vm way booted the image for real already; the container way gets a boot
    // check, once per firmware asked for (BIOS by default).
    if way == Way::Container && !opts.no_boot_check {
        let firmwares = if opts.boot_check_firmware.is_empty() {
            vec![vm::Firmware::Bios]
        } else {
            opts.boot_check_firmware.clone()
        };
        let mut checks = Vec::new();
        for firmware in firmwares {
            tracing::info!(
                "boot check: booting {} under QEMU ({firmware})",
                qcow.display()
            );
            let check = vm::boot_check(
                &vm_spec(qcow.clone(), firmware, vm::CpuModel::Baseline),
                &work,
                Duration::from_secs(300),
            )
            .await?;
            check_boot(&check, agent.is_some(), layout.as_ref())?;
            checks.push(serde_json::to_value(&check).unwrap_or_default());
            mark(
                &mut timings,
                match firmware {
                    vm::Firmware::Bios => BakeStep::BootCheck,
                    vm::Firmware::Uefi => BakeStep::BootCheckUefi,
                },
            );
        }
        details["boot_check"] = checks.first().cloned().unwrap_or_default();
        details["boot_checks"] = serde_json::Value::Array(checks);
    }
    if opts.keep_work {
        let kept = work_dir.keep();
        tracing::info!("work directory kept: {}", kept.display());
    }
    let files = vec![(qcow.clone(), file_size(&qcow))];
    Ok(crate::backend::BakeResult {
        artifact_id: qcow.display().to_string(),
        builder_type: "image-builder.qemu".into(),
        files,
        timings,
        report,
        details,
    })
}

/// What a boot check must have seen: the agent enabled (when one was installed), valid
/// sudoers, and a kernel that GRUB booted from this disk (`BOOT_IMAGE=` is GRUB's, and
/// the root is the one the assembly made).
fn check_boot(
    check: &vm::BootCheck,
    agent_installed: bool,
    layout: Option<&disk::DiskLayout>,
) -> Result<(), QemuError> {
    let what = format!("boot check ({})", check.firmware);
    if agent_installed && check.agent_enabled != vm::UnitEnabled::Enabled {
        return Err(QemuError::Other(format!(
            "{what}: vm-agent.service is {} in the booted image, expected enabled",
            check.agent_enabled
        )));
    }
    if check.sudoers != vm::SudoersCheck::Ok {
        return Err(QemuError::Other(format!(
            "{what}: visudo -c in the booted image says {}",
            check.sudoers
        )));
    }
    if let Some(layout) = layout
        && !(check.cmdline.starts_with("BOOT_IMAGE=/vmlinuz ")
            && check
                .cmdline
                .contains(&format!("root=UUID={} ", layout.root_uuid)))
    {
        return Err(QemuError::Other(format!(
            "{what}: the kernel was not booted by the disk's GRUB from its root filesystem {}: /proc/cmdline is {:?}",
            layout.root_uuid, check.cmdline
        )));
    }
    Ok(())
}

fn io_err(p: &Path, e: std::io::Error) -> QemuError {
    QemuError::io(p, e)
}

/// Work on another thread, joined (waited for) when dropped: a bake ends with it done.
pub struct Background(Option<std::thread::JoinHandle<()>>);

impl Background {
    /// Run `work` on another thread.
    pub fn spawn(work: impl FnOnce() + Send + 'static) -> Background {
        Background(Some(std::thread::spawn(work)))
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        if let Some(h) = self.0.take() {
            let _ = h.join();
        }
    }
}

/// Remove `dir` on another thread.
fn remove_in_background(dir: PathBuf) -> Background {
    Background::spawn(move || {
        if let Err(e) = std::fs::remove_dir_all(&dir) {
            tracing::debug!("removing {}: {e}", dir.display());
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// GRUB's menu under UEFI reaches the console as code page 437: bytes that are not
    /// UTF-8 must not stop the reader (QEMU would block on the full pipe, the guest
    /// with it). Here the lines after them are still seen, and the watched line stops it.
    #[tokio::test]
    async fn a_console_that_is_not_utf8_is_read_to_the_end() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let log = dir.path().join("console.log");
        let mut cmd = tokio::process::Command::new("sh");
        // 64 KiB of CP437 box drawing first: more than a pipe holds.
        cmd.args([
            "-c",
            r#"i=0; while [ $i -lt 4096 ]; do printf '\332\304\304\304\304\304\304\304\304\304\304\304\304\304\304\277\n'; i=$((i+1)); done; echo 'MARK ok'; sleep 600"#,
        ]);
        let seen = supervise(
            cmd,
            SuperviseOpts {
                what: "test console",
                timeout: Duration::from_secs(60),
                log: &log,
                stop_on: Some("MARK"),
                watch: Some("MARK"),
            },
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(seen.watched, ["MARK ok"]);
        let logged = std::fs::read(&log).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            logged.len(),
            4096 * 17 + "MARK ok\n".len(),
            "the log keeps the bytes"
        );
        assert!(logged.starts_with(b"\xda\xc4"));
    }
}
