//! The golden image is a whole disk that boots by itself: the README's first command
//! (`image-builder bake templates/examples/worker.yaml`, the static agent found or
//! built by the bake itself) makes it, the boot check boots it under SeaBIOS and then
//! OVMF with no kernel on QEMU's command line, and the disk is checked offline: the
//! GPT, the root filesystem's label and UUID, both GRUB stages, the EFI loader, and
//! DigitalOcean's documented custom-image requirements. Needs root and .ci/setup.sh.
//!
//! [`Disk`] is the offline inspection the other local-bake tests use too.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::*;

// GPT partition types of the layout (image-builder's backend/qemu/disk.rs).
const BIOS_BOOT: &str = "21686148-6449-6E6F-744E-656564454649";
const ESP: &str = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B";
const LINUX_X86_64_ROOT: &str = "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709";

/// One partition as `sfdisk --json` reports it.
#[derive(Clone, Debug)]
pub struct Part {
    pub name: String,
    pub type_guid: String,
    pub start: u64,
    pub sectors: u64,
}

impl Part {
    pub fn offset(&self) -> u64 {
        self.start * 512
    }
}

/// A golden image converted to raw, with its partition table read by `sfdisk`.
pub struct Disk {
    pub raw: PathBuf,
    pub label: String,
    pub last_lba: u64,
    /// In table order.
    pub parts: Vec<Part>,
}

fn run_ok(cmd: &mut Command) -> Vec<u8> {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

impl Disk {
    /// `qemu-img convert` `image` to `dir/<stem>.raw` and read its partition table.
    pub fn open(image: &Path, dir: &Path) -> Disk {
        require_tool("qemu-img", "qemu-utils");
        require_tool("sfdisk", "fdisk");
        let raw = dir.join(format!(
            "{}.raw",
            image.file_stem().unwrap().to_string_lossy()
        ));
        run_ok(
            Command::new("qemu-img")
                .args(["convert", "-O", "raw"])
                .arg(image)
                .arg(&raw),
        );
        let table: serde_json::Value =
            serde_json::from_slice(&run_ok(Command::new("sfdisk").arg("--json").arg(&raw)))
                .unwrap();
        let t = &table["partitiontable"];
        assert_eq!(t["sectorsize"], 512, "{t}");
        let parts = t["partitions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| Part {
                name: p["name"].as_str().unwrap_or_default().to_owned(),
                type_guid: p["type"].as_str().unwrap().to_owned(),
                start: p["start"].as_u64().unwrap(),
                sectors: p["size"].as_u64().unwrap(),
            })
            .collect();
        Disk {
            raw,
            label: t["label"].as_str().unwrap().to_owned(),
            last_lba: t["lastlba"].as_u64().unwrap(),
            parts,
        }
    }

    /// The partition named `name`.
    pub fn part(&self, name: &str) -> &Part {
        self.parts
            .iter()
            .find(|p| p.name == name)
            .unwrap_or_else(|| panic!("no partition {name:?} in {:?}", self.parts))
    }

    /// `debugfs -R REQUEST` on the root filesystem, at its offset in the disk (nothing
    /// mounted).
    pub fn debugfs(&self, request: &str) -> String {
        let fs = format!(
            "{}?offset={}",
            self.raw.display(),
            self.part("root").offset()
        );
        let out = Command::new(require_tool("debugfs", "e2fsprogs"))
            .arg("-R")
            .arg(request)
            .arg(fs)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `blkid -p` of the partition named `name`: TYPE, LABEL, UUID, VERSION, ...
    pub fn blkid(&self, name: &str) -> std::collections::BTreeMap<String, String> {
        require_tool("blkid", "util-linux");
        let out = run_ok(
            Command::new("blkid")
                .args(["-p", "-o", "export", "-O"])
                .arg(self.part(name).offset().to_string())
                .arg(&self.raw),
        );
        String::from_utf8_lossy(&out)
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect()
    }

    /// A file from the EFI system partition (mtools, nothing mounted).
    pub fn esp_file(&self, path: &str, dir: &Path) -> Vec<u8> {
        require_tool("mcopy", "mtools");
        let dest = dir.join("esp-file");
        let _ = std::fs::remove_file(&dest);
        run_ok(
            Command::new("mcopy")
                .env("MTOOLS_SKIP_CHECK", "1")
                .arg("-i")
                .arg(format!(
                    "{}@@{}",
                    self.raw.display(),
                    self.part("esp").offset()
                ))
                .arg(format!("::{path}"))
                .arg(&dest),
        );
        std::fs::read(&dest).unwrap()
    }

    /// `len` bytes at `offset` of the raw disk.
    pub fn bytes(&self, offset: u64, len: usize) -> Vec<u8> {
        use std::io::{Read, Seek, SeekFrom};
        let mut f = std::fs::File::open(&self.raw).unwrap();
        f.seek(SeekFrom::Start(offset)).unwrap();
        let mut b = vec![0u8; len];
        f.read_exact(&mut b).unwrap();
        b
    }
}

fn require_root() {
    let root = std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(2) == Some("0"));
    assert!(
        root,
        "this test needs root (mmdebstrap, systemd-nspawn); CI runs as root"
    );
}

/// The whole-disk checks every golden image of a base built by `base build` passes:
/// GPT with BIOS boot, ESP and root (last, to the end of the disk); ext4 labelled
/// `rootfs` with `root_uuid`; GRUB's boot.img in the MBR pointing at core.img in the
/// BIOS boot partition; GRUB's x86_64 EFI loader at the removable path; the menu on the
/// root filesystem booting the kernel links with a serial console.
pub fn assert_bootable_disk(disk: &Disk, root_uuid: &str, dir: &Path) {
    assert_eq!(disk.label, "gpt");
    let names: Vec<&str> = disk.parts.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(
        names,
        ["root", "bios-boot", "esp"],
        "table order is by number"
    );
    assert_eq!(disk.part("bios-boot").type_guid, BIOS_BOOT);
    assert_eq!(disk.part("esp").type_guid, ESP);
    let root = disk.part("root");
    assert_eq!(root.type_guid, LINUX_X86_64_ROOT);
    assert_eq!(
        root.start + root.sectors - 1,
        disk.last_lba,
        "the root partition is last on the disk, so growpart can grow it"
    );

    let fs = disk.blkid("root");
    assert_eq!(fs.get("TYPE").map(String::as_str), Some("ext4"), "{fs:?}");
    assert_eq!(
        fs.get("LABEL").map(String::as_str),
        Some("rootfs"),
        "{fs:?}"
    );
    assert_eq!(
        fs.get("UUID").map(String::as_str),
        Some(root_uuid),
        "{fs:?}"
    );
    let esp = disk.blkid("esp");
    assert_eq!(esp.get("TYPE").map(String::as_str), Some("vfat"), "{esp:?}");
    assert_eq!(
        esp.get("VERSION").map(String::as_str),
        Some("FAT32"),
        "{esp:?}"
    );

    // Legacy BIOS: GRUB's boot.img code in sector 0, pointing at the BIOS boot partition,
    // whose first sector is diskboot.img with a blocklist for the rest of core.img.
    let grub_boot = std::fs::read("/usr/lib/grub/i386-pc/boot.img")
        .expect("grub-pc-bin is installed (.ci/setup.sh)");
    let mbr = disk.bytes(0, 512);
    assert_eq!(&mbr[..3], &grub_boot[..3], "boot.img's jump");
    assert_eq!(
        &mbr[0x68..0x1b8],
        &grub_boot[0x68..0x1b8],
        "boot.img's code"
    );
    assert_eq!(&mbr[0x1fe..], &[0x55, 0xaa]);
    assert_eq!(mbr[0x1c2], 0xee, "the protective MBR entry is kept");
    let bios = disk.part("bios-boot");
    assert_eq!(&mbr[0x5c..0x64], &bios.start.to_le_bytes());
    let diskboot = std::fs::read("/usr/lib/grub/i386-pc/diskboot.img").unwrap();
    let core = disk.bytes(bios.offset(), 512);
    assert_eq!(&core[..0x100], &diskboot[..0x100], "diskboot.img");
    assert_eq!(&core[0x1f4..0x1fc], &(bios.start + 1).to_le_bytes());
    assert_eq!(&core[0x1fe..0x200], &0x820u16.to_le_bytes());

    // UEFI: an x86-64 PE image at the removable-media path.
    let efi = disk.esp_file("/EFI/BOOT/BOOTX64.EFI", dir);
    assert_eq!(&efi[..2], b"MZ");
    let pe = u32::from_le_bytes(efi[0x3c..0x40].try_into().unwrap()) as usize;
    assert_eq!(&efi[pe..pe + 4], b"PE\0\0");
    assert_eq!(
        u16::from_le_bytes([efi[pe + 4], efi[pe + 5]]),
        0x8664,
        "x86-64"
    );

    // The menu boots the kernel links on this root filesystem, console on ttyS0.
    let cfg = disk.debugfs("cat /boot/grub/grub.cfg");
    assert!(
        cfg.contains(&format!("linux /vmlinuz root=UUID={root_uuid} rw "))
            && cfg.contains("console=ttyS0,115200n8")
            && cfg.contains("initrd /initrd.img"),
        "{cfg}"
    );
    for link in ["/vmlinuz", "/initrd.img"] {
        let stat = disk.debugfs(&format!("stat {link}"));
        assert!(stat.contains("Type: symlink"), "{link}: {stat}");
        let target = stat
            .lines()
            .find_map(|l| l.trim().strip_prefix("Fast link dest: "))
            .unwrap_or_else(|| panic!("{link}: {stat}"))
            .trim_matches('"')
            .to_owned();
        let file = disk.debugfs(&format!("stat /{target}"));
        assert!(file.contains("Type: regular"), "{link} -> {target}: {file}");
    }
    assert!(
        disk.debugfs("cat /etc/fstab")
            .starts_with("LABEL=rootfs / ext4 "),
        "fstab"
    );
}

/// DigitalOcean's documented requirements for custom images, checked offline: ext4
/// (checked with the disk), cloud-init ≥ 0.7.7 with NoCloud not listed before
/// ConfigDrive and no NoCloud seed left behind, sshd enabled at boot, under 100 GB.
/// Plus growpart for a droplet's bigger disk.
pub fn assert_digitalocean_ready(disk: &Disk) {
    let size = std::fs::metadata(&disk.raw).unwrap().len();
    assert!(size < 100_000_000_000, "{size} bytes");
    // The effective datasource_list: cloud.cfg, then cloud.cfg.d/*.cfg in name order,
    // the last one that sets it wins.
    let mut files = vec!["/etc/cloud/cloud.cfg".to_owned()];
    let mut dropins: Vec<String> = disk
        .debugfs("ls -p /etc/cloud/cloud.cfg.d")
        .lines()
        .filter_map(|l| l.split('/').nth(5).map(str::to_owned))
        .filter(|n| n.ends_with(".cfg"))
        .map(|n| format!("/etc/cloud/cloud.cfg.d/{n}"))
        .collect();
    dropins.sort();
    assert!(!dropins.is_empty(), "no cloud.cfg.d drop-ins found");
    files.extend(dropins);
    let mut list: Option<(String, Vec<String>)> = None;
    for f in &files {
        let doc = pyyaml_load(&disk.debugfs(&format!("cat {f}")));
        if let Some(l) = doc.get("datasource_list").and_then(|v| v.as_array()) {
            let names = l.iter().map(|v| v.as_str().unwrap().to_owned()).collect();
            list = Some((f.clone(), names));
        }
    }
    let (from, list) = list.expect("a datasource_list is set");
    let pos = |n: &str| list.iter().position(|d| d == n);
    let config_drive = pos("ConfigDrive").unwrap_or_else(|| panic!("{from}: {list:?}"));
    if let Some(nocloud) = pos("NoCloud") {
        assert!(
            config_drive < nocloud,
            "{from}: NoCloud before ConfigDrive: {list:?}"
        );
    }
    let seed = disk.debugfs("ls -p /var/lib/cloud/seed");
    assert!(
        !seed.contains("nocloud"),
        "a NoCloud seed is left in the image: {seed}"
    );
    let version = disk.debugfs("cat /usr/lib/python3/dist-packages/cloudinit/version.py");
    let v = version
        .lines()
        .find_map(|l| l.strip_prefix("__VERSION__ = "))
        .unwrap_or_else(|| panic!("{version}"))
        .trim_matches('"');
    let major: u32 = v.split('.').next().unwrap().parse().unwrap();
    assert!(major >= 1, "cloud-init {v} (DigitalOcean needs >= 0.7.7)");
    let sshd = disk.debugfs("stat /etc/systemd/system/multi-user.target.wants/ssh.service");
    assert!(
        sshd.contains("Type: symlink"),
        "sshd is not enabled: {sshd}"
    );
    let growpart = disk.debugfs("stat /usr/bin/growpart");
    assert!(growpart.contains("Type: regular"), "{growpart}");
}

#[test]
fn the_example_spec_bakes_into_a_disk_that_boots_under_bios_and_uefi() {
    require_root();
    for (tool, package) in [
        ("qemu-system-x86_64", "qemu-system-x86"),
        ("systemd-nspawn", "systemd-container"),
        ("mmdebstrap", "mmdebstrap"),
        ("sgdisk", "gdisk"),
        ("mformat", "mtools"),
        ("grub-mkimage", "grub-common"),
    ] {
        require_tool(tool, package);
    }
    assert!(
        Path::new("/usr/share/OVMF/OVMF_CODE_4M.fd").is_file(),
        "OVMF is required by this test: apt-get install ovmf (or run .ci/setup.sh)"
    );
    let dir = tempfile::tempdir().unwrap();
    let examples = workspace().join("templates/examples");
    let spec = dir.path().join("worker.yaml");
    std::fs::copy(examples.join("worker.yaml"), &spec).unwrap();
    std::fs::create_dir_all(dir.path().join("files")).unwrap();
    std::fs::copy(examples.join("files/motd"), dir.path().join("files/motd")).unwrap();
    let out = dir.path().join("out");

    // No --agent-bin: the bake builds the static agent itself (vm-agent/build-static.sh,
    // without fat LTO as the end-to-end test builds it, so both share cargo's cache).
    let r = Command::new(env!("CARGO_BIN_EXE_image-builder"))
        .arg("bake")
        .arg(&spec)
        .args(["--out"])
        .arg(&out)
        .args(["--boot-check-firmware", "bios,uefi", "--json"])
        .current_dir(dir.path())
        .env("IMAGE_BUILDER_LOG", "info")
        .env("CARGO_PROFILE_RELEASE_LTO", "off")
        .env("CARGO_PROFILE_RELEASE_CODEGEN_UNITS", "16")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&r.stderr);
    assert!(r.status.success(), "bake failed:\n{stderr}");
    let manifest: serde_json::Value = serde_json::from_slice(&r.stdout).unwrap();
    let b = &manifest["builds"][0];
    let details = &b["image_builder"]["details"];
    assert_eq!(details["way"], "container");
    let root_uuid = details["disk"]["root_uuid"].as_str().unwrap().to_owned();

    // Booted twice, BIOS then UEFI, each time by GRUB from this disk (BOOT_IMAGE= is
    // GRUB's), up to cloud-init running the check with the agent enabled.
    let checks = details["boot_checks"].as_array().unwrap();
    let firmwares: Vec<&str> = checks
        .iter()
        .map(|c| c["firmware"].as_str().unwrap())
        .collect();
    assert_eq!(firmwares, ["bios", "uefi"]);
    for c in checks {
        assert_eq!(c["agent_enabled"], "enabled", "{c}");
        assert_eq!(c["sudoers"], "ok", "{c}");
        // On the x86-64 baseline CPU: the image needs no extension past it.
        assert_eq!(c["cpu"], "qemu64", "{c}");
        let cmdline = c["cmdline"].as_str().unwrap();
        assert!(
            cmdline.starts_with("BOOT_IMAGE=/vmlinuz ")
                && cmdline.contains(&format!("root=UUID={root_uuid} "))
                && cmdline.contains("console=ttyS0"),
            "{c}"
        );
    }
    let steps: Vec<&str> = b["image_builder"]["timings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["step"].as_str().unwrap())
        .collect();
    let tail: Vec<&str> = steps
        .iter()
        .copied()
        .skip_while(|s| *s != "provision")
        .collect();
    assert_eq!(
        tail,
        [
            "provision",
            "disk",
            "image",
            "boot_check",
            "boot_check_uefi"
        ],
        "{steps:?}"
    );
    // One file: the disk. No kernel or initrd beside it.
    let files: Vec<&str> = b["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap())
        .collect();
    assert_eq!(files, [b["artifact_id"].as_str().unwrap()]);

    let disk = Disk::open(Path::new(b["artifact_id"].as_str().unwrap()), dir.path());
    assert_bootable_disk(&disk, &root_uuid, dir.path());
    assert_digitalocean_ready(&disk);
    // The seal leaves /etc/machine-id empty: each machine makes its own ID on its first
    // boot without systemd's first-boot `preset-all` (missing or "uninitialized" would
    // trigger it, and it would enable ssh.socket beside ssh.service).
    let machine_id = disk.debugfs("stat /etc/machine-id");
    assert!(
        machine_id.contains("Type: regular") && machine_id.contains("Size: 0\n"),
        "{machine_id}"
    );
    let socket = disk.debugfs("stat /etc/systemd/system/sockets.target.wants/ssh.socket");
    assert!(!socket.contains("Type: symlink"), "{socket}");
    assert_eq!(
        disk.part("root").start,
        details["disk"]["root"]["start"].as_u64().unwrap()
    );
    // The agent in the image is the static one.
    let agent_path = dir.path().join("vm-agent");
    disk.debugfs(&format!(
        "dump /usr/local/bin/vm-agent {}",
        agent_path.display()
    ));
    assert_eq!(
        image_builder::agent_binary::linking(&agent_path).unwrap(),
        image_builder::agent_binary::Linking::Static
    );
}

/// `run-local` boots a disk by its own bootloader: an image without a partition table
/// (made before golden images were whole disks) is refused, naming the fix, before
/// QEMU starts, and leaves no worker behind.
#[test]
fn run_local_refuses_an_image_that_is_not_a_whole_disk() {
    require_tool("qemu-img", "qemu-utils");
    require_tool("qemu-system-x86_64", "qemu-system-x86");
    require_tool("genisoimage", "genisoimage");
    let dir = tempfile::tempdir().unwrap();
    let bare = dir.path().join("old-golden.qcow2");
    run_ok(
        Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2"])
            .arg(&bare)
            .arg("64M"),
    );
    let cache = dir.path().join("cache");
    let out = Command::new(env!("CARGO_BIN_EXE_image-builder"))
        .arg("run-local")
        .arg(&bare)
        .args(["--name", "old"])
        .env("IMAGE_BUILDER_CACHE", &cache)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(65), "bad input: {stderr}");
    assert!(
        stderr.contains("not a whole disk") && stderr.contains("image-builder bake"),
        "{stderr}"
    );
    let ls = Command::new(env!("CARGO_BIN_EXE_image-builder"))
        .args(["ls-local", "--json"])
        .env("IMAGE_BUILDER_CACHE", &cache)
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&ls.stdout).trim(), "[]");
}
