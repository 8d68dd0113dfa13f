//! The local backend for real: `base build` (cached), a container-way bake with real
//! cloud-init and systemd in systemd-nspawn, the golden disk inspected offline
//! (`golden_disk::Disk`), and a real QEMU boot check. Needs root and the tools from
//! .ci/setup.sh.

#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::Command;

use crate::common::*;
use crate::golden_disk::{Disk, assert_bootable_disk};

const CANARY: &str = "CANARY-7f3a9c-BUILD-SECRET";

fn require_root() {
    assert!(
        nix_euid_is_root(),
        "local bake tests need root (mmdebstrap, systemd-nspawn, mkfs.ext4 -d); CI runs as root"
    );
}

fn nix_euid_is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .and_then(|l| l.split_whitespace().nth(2).map(|u| u == "0"))
        .unwrap_or(false)
}

fn spec(dir: &Path, commands: &str) -> std::path::PathBuf {
    let p = dir.join("spec.yaml");
    std::fs::write(
        &p,
        format!(
            "name: local-test\nbase: {{qemu: bookworm}}\nbuild_user:\n  name: builder\n  ssh_authorized_keys: [\"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFILb3Eb0C2YdLb7+iLlx5hwW9HgeO79hEiV9J8Wvqws t\"]\nfiles:\n  - {{path: /etc/image-note, content: \"baked\\n\"}}\ncommands:\n{commands}agent: {{install: false}}\nsnapshot: {{name: \"{{name}}\"}}\nbake: {{timeout: 10m}}\n"
        ),
    )
    .unwrap();
    p
}

#[test]
fn container_bake_produces_a_sealed_image_that_boots() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let spec = spec(
        dir.path(),
        &format!(
            "  - name: uses-a-secret\n    run: echo {CANARY} > /root/build-secret && rm /root/build-secret\n  - test -f /etc/image-note\n"
        ),
    );
    let out = dir.path().join("out");
    let r = image_builder(
        &[
            "bake",
            spec.to_str().unwrap(),
            "--backend",
            "qemu",
            "--out",
            out.to_str().unwrap(),
            "--json",
        ],
        dir.path(),
    );
    let stderr = String::from_utf8_lossy(&r.stderr);
    assert!(r.status.success(), "bake failed:\n{stderr}");
    let manifest: serde_json::Value = serde_json::from_slice(&r.stdout).unwrap();
    let b = &manifest["builds"][0];
    assert_eq!(b["builder_type"], "image-builder.qemu");
    assert_eq!(b["name"], "local-test");
    let qcow = Path::new(b["artifact_id"].as_str().unwrap()).to_owned();
    assert!(qcow.is_file());
    assert_eq!(b["image_builder"]["seal_report"]["status"], "ok");
    let steps: Vec<&str> = b["image_builder"]["seal_report"]["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        steps,
        ["wait-apt-idle", "sudoers", "uses-a-secret", "command-2"]
    );
    assert_eq!(b["image_builder"]["details"]["boot_check"]["sudoers"], "ok");
    let on_disk: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(on_disk, manifest, "manifest.json and --json agree");

    // Inspect the golden disk offline.
    let disk = Disk::open(&qcow, dir.path());
    assert_bootable_disk(
        &disk,
        b["image_builder"]["details"]["disk"]["root_uuid"]
            .as_str()
            .unwrap(),
        dir.path(),
    );
    let raw = disk.raw.clone();
    let debugfs = |_: &Path, request: &str| disk.debugfs(request);
    let sudoers = debugfs(&raw, "stat /etc/sudoers.d/90-builder");
    assert!(
        sudoers.contains("Mode:  0440") || sudoers.contains("Mode:  00440"),
        "{sudoers}"
    );
    assert!(
        sudoers.contains("User:     0") && sudoers.contains("Group:     0"),
        "{sudoers}"
    );
    let content = debugfs(&raw, "cat /etc/sudoers.d/90-builder");
    assert!(
        validate_sudoers(&content),
        "visudo rejects the baked drop-in:\n{content}"
    );
    assert!(
        debugfs(&raw, "cat /etc/apt/apt.conf.d/90image-builder-dpkg-lock")
            .contains("DPkg::Lock::Timeout")
    );
    assert_eq!(debugfs(&raw, "cat /etc/image-note"), "baked\n");
    assert!(
        debugfs(&raw, "ls -l /var/lib/cloud")
            .lines()
            .all(|l| !l.contains("instance")),
        "cloud-init state left"
    );
    assert!(
        !debugfs(&raw, "ls /etc/ssh").contains("ssh_host_ed25519_key"),
        "host keys left in the image"
    );
    assert!(
        debugfs(&raw, "cat /etc/image-builder/baked.json").contains("\"image\": \"local-test\"")
    );
    // The canary was in the user-data, a step script and the logs: none of it may remain.
    let grep = Command::new("grep")
        .args(["-c", "-a", CANARY])
        .arg(&raw)
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&grep.stdout).trim(),
        "0",
        "the build secret is in the golden image"
    );
    // Nothing of the bake's work directory is left behind.
    let leftovers: Vec<_> = std::fs::read_dir(out)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(
        leftovers
            .iter()
            .all(|n| !n.to_string_lossy().ends_with(".tmp")),
        "{leftovers:?}"
    );
}

fn validate_sudoers(content: &str) -> bool {
    image_builder::validate::visudo(content) == image_builder::validate::CheckStatus::Passed
}

#[test]
fn a_failing_step_fails_the_bake_with_its_name_and_log_and_leaves_no_image() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let spec = spec(
        dir.path(),
        "  - echo before\n  - name: breaks\n    run: echo about to fail; exit 3\n  - echo never-reached\n",
    );
    let out = dir.path().join("out");
    let r = image_builder(
        &[
            "bake",
            spec.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--no-boot-check",
        ],
        dir.path(),
    );
    let stderr = String::from_utf8_lossy(&r.stderr);
    assert_eq!(r.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("provisioning failed: step breaks failed"),
        "{stderr}"
    );
    assert!(
        stderr.contains("about to fail"),
        "the log tail should show the step's output:\n{stderr}"
    );
    assert!(!stderr.contains("never-reached\n"), "{stderr}");
    let files: Vec<_> = std::fs::read_dir(&out)
        .map(|d| d.map(|e| e.unwrap().file_name()).collect())
        .unwrap_or_default();
    assert!(files.is_empty(), "a failed bake left {files:?}");
}

#[test]
fn vm_way_provisions_with_a_real_boot_and_the_same_report() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let spec = spec(
        dir.path(),
        "  - name: marker\n    run: echo vm-way > /etc/vm-way-marker\n",
    );
    let out = dir.path().join("out");
    let r = image_builder(
        &[
            "bake",
            spec.to_str().unwrap(),
            "--way",
            "vm",
            "--out",
            out.to_str().unwrap(),
            "--json",
        ],
        dir.path(),
    );
    assert!(
        r.status.success(),
        "vm-way bake failed:\n{}",
        String::from_utf8_lossy(&r.stderr)
    );
    let manifest: serde_json::Value = serde_json::from_slice(&r.stdout).unwrap();
    let b = &manifest["builds"][0];
    assert_eq!(b["image_builder"]["details"]["way"], "vm");
    assert_eq!(b["image_builder"]["seal_report"]["status"], "ok");
    let qcow = Path::new(b["artifact_id"].as_str().unwrap()).to_owned();
    // Flattened: no backing file.
    let info = Command::new("qemu-img")
        .args(["info", "--output=json"])
        .arg(&qcow)
        .output()
        .unwrap();
    let info: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
    assert!(
        info.get("backing-filename").is_none(),
        "golden image still has a backing file: {info}"
    );
    // A whole disk of the spec's size (the base's 2 GiB grown while provisioning).
    let disk = Disk::open(&qcow, dir.path());
    assert_eq!(disk.label, "gpt");
    assert_eq!(
        std::fs::metadata(&disk.raw).unwrap().len(),
        4 << 30,
        "qemu.disk_size"
    );
    let root = disk.part("root");
    assert_eq!(root.start + root.sectors - 1, disk.last_lba, "root grown");
    assert_eq!(disk.debugfs("cat /etc/vm-way-marker"), "vm-way\n");
    assert!(
        disk.debugfs("stat /etc/sudoers.d/90-builder")
            .contains("Mode:  0440")
    );
    assert!(
        !disk.debugfs("ls /etc/ssh").contains("ssh_host_ed25519_key"),
        "host keys left in the image"
    );
}

/// Two bakes on a fresh machine must not both build the base and then replace the
/// directory the other is copying from: a second `base build` waits on the first's
/// lock and then reuses its result. Checked without a 2-minute mmdebstrap: the test
/// holds the lock itself, puts a complete base in place, and lets go.
#[test]
fn a_second_base_build_waits_for_the_first_and_reuses_it() {
    use image_builder::backend::qemu::base::{
        Base, BaseSpec, cache_dir_in, lock_path_in, metadata_path,
    };
    use nix::fcntl::{Flock, FlockArg};
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;

    require_root();
    let cache = tempfile::tempdir().unwrap();
    let spec = BaseSpec::default();
    let lock_file = lock_path_in(cache.path(), &spec);
    std::fs::create_dir_all(lock_file.parent().unwrap()).unwrap();
    let held = Flock::lock(
        std::fs::File::create(&lock_file).unwrap(),
        FlockArg::LockExclusive,
    )
    .map_err(|(_, e)| e)
    .unwrap();

    let mut child = Command::new(env!("CARGO_BIN_EXE_image-builder"))
        .args(["base", "build", "--json"])
        .env("IMAGE_BUILDER_CACHE", cache.path())
        .env("IMAGE_BUILDER_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = BufReader::new(child.stderr.take().unwrap());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in stderr.lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut seen = Vec::new();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !seen
        .iter()
        .any(|l: &String| l.contains("being built by another process"))
    {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(left) {
            Ok(l) => seen.push(l),
            Err(_) => {
                let _ = child.kill();
                panic!("`base build` never said it waits for the lock:\n{seen:#?}");
            }
        }
    }
    // It is waiting, and has built nothing.
    let dir = cache_dir_in(cache.path(), &spec);
    assert!(
        !dir.exists(),
        "it must not build while another holds the lock"
    );

    // "The other process" finishes: a complete base, then the lock is released.
    let base = Base::in_dir(&spec, &dir, "2026-11-22T00:00:00Z".into());
    std::fs::create_dir_all(base.rootfs.join("etc")).unwrap();
    std::fs::write(&base.disk, "made by the other process").unwrap();
    std::fs::write(
        metadata_path(&dir),
        serde_json::to_vec_pretty(&base).unwrap(),
    )
    .unwrap();
    drop(held);

    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{out:?}\n{seen:#?}");
    let got: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(got["cache_hit"], true, "{got}");
    assert_eq!(got["dir"], dir.display().to_string());
    assert_eq!(
        std::fs::read(&base.disk).unwrap(),
        b"made by the other process",
        "the finished base must be reused, not rebuilt or replaced"
    );
}
