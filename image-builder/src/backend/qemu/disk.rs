//! A whole bootable disk from a root filesystem tree, assembled without mounting
//! anything and without loop devices: the golden image (and the base's disk) boots by
//! itself under legacy BIOS (SeaBIOS, QEMU's default) and UEFI (OVMF), so it can go to
//! libvirt, Proxmox, OpenStack or a DigitalOcean custom image as it is.
//!
//! Layout (GPT, 512-byte sectors, partitions 1 MiB-aligned):
//!
//! | # | name        | GPT type                     | where            | content |
//! |---|-------------|------------------------------|------------------|---------|
//! | 14 | `bios-boot` | BIOS boot (`EF02`)          | 1 MiB, 3 MiB     | GRUB's `core.img` for legacy BIOS |
//! | 15 | `esp`       | EFI system (`EF00`)         | 4 MiB, 64 MiB    | FAT32: `/EFI/BOOT/BOOTX64.EFI` (the removable-media path, found without NVRAM entries) |
//! | 1  | `root`      | Linux x86-64 root (`8304`)  | 68 MiB to the end | ext4, label [`ROOT_LABEL`] |
//!
//! The root partition is last and numbered 1, so cloud-init's `growpart` (`growpart
//! /dev/vda 1`) and `resizefs` give a worker with a bigger disk all of it on first boot.
//!
//! How each part is written:
//! - the partition table: `sgdisk` on the image file;
//! - the root filesystem: `mkfs.ext4 -d TREE -E offset=…` straight into the partition's
//!   byte range (no copy of a separate filesystem image, nothing mounted);
//! - the EFI system partition: `mformat`/`mmd`/`mcopy` with mtools' `IMAGE@@OFFSET`;
//! - both GRUB images come from `grub-mkimage` (`x86_64-efi` and `i386-pc`), each with
//!   the modules it needs built in and the same early config: find the root filesystem
//!   by its UUID, take `/boot/grub` there as the prefix. The menu, `/boot/grub/grub.cfg`
//!   on the root filesystem, boots `/vmlinuz` and `/initrd.img`, the links Debian's
//!   kernel packages keep pointing at the newest kernel, so a kernel upgrade inside the
//!   image needs no GRUB tooling. Kernel command line: `root=UUID=… rw`, console on
//!   `tty0` and the serial port `ttyS0` (the last one is `/dev/console`).
//! - the BIOS stage: GRUB's `boot.img` goes into the MBR's code area and `core.img`
//!   into the BIOS boot partition, with the two sector pointers set the way
//!   `grub-bios-setup` sets them for a GPT disk (`--no-rs-codes`); see [`embed_bios`].
//!   `grub-bios-setup` itself cannot write an image file: it looks for the root device
//!   of the host directory holding `core.img` and fails unless that directory is on a
//!   mounted filesystem of the target disk, i.e. a loop device.

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Serialize;

use super::{QemuError, require_tool, run_logged};

/// Sector size of the images (bytes).
pub const SECTOR: u64 = 512;
const MIB: u64 = 1 << 20;
/// Label of the root filesystem (also in the base's `/etc/fstab`).
pub const ROOT_LABEL: &str = "rootfs";
/// Volume label of the EFI system partition.
pub const ESP_LABEL: &str = "ESP";
/// The EFI loader on the ESP: the removable-media path firmware boots by itself.
pub const EFI_LOADER: &str = "/EFI/BOOT/BOOTX64.EFI";
/// GRUB's menu on the root filesystem.
pub const GRUB_CFG: &str = "/boot/grub/grub.cfg";
/// Where `grub-pc-bin` keeps the BIOS images and modules.
pub const GRUB_PC_DIR: &str = "/usr/lib/grub/i386-pc";
/// Where `grub-efi-amd64-bin` keeps the EFI modules.
pub const GRUB_EFI_DIR: &str = "/usr/lib/grub/x86_64-efi";
/// The smallest disk this layout makes (the root partition needs room for a system).
pub const MIN_SIZE: u64 = 256 * MIB;

/// One partition of the layout.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Partition {
    /// GPT partition number.
    pub number: u32,
    /// GPT partition name.
    pub name: &'static str,
    /// sgdisk's type code (`EF02`, `EF00`, `8304`).
    pub type_code: &'static str,
    /// The GPT partition type GUID.
    pub type_guid: &'static str,
    /// First sector.
    pub start: u64,
    /// Last sector (inclusive).
    pub end: u64,
}

impl Partition {
    /// Byte offset of the partition in the disk.
    pub fn offset(&self) -> u64 {
        self.start * SECTOR
    }

    /// Size in bytes.
    pub fn size(&self) -> u64 {
        (self.end + 1 - self.start) * SECTOR
    }
}

/// The disk that [`assemble`] made.
#[derive(Clone, Debug, Serialize)]
pub struct DiskLayout {
    /// Size of the disk in bytes.
    pub size: u64,
    /// Partition table type.
    pub table: &'static str,
    /// GRUB's `core.img` for legacy BIOS.
    pub bios_boot: Partition,
    /// The EFI system partition.
    pub esp: Partition,
    /// The root filesystem.
    pub root: Partition,
    /// UUID of the root filesystem (GRUB finds it by this; `root=UUID=…`).
    pub root_uuid: String,
    /// Label of the root filesystem.
    pub root_label: &'static str,
    /// Firmwares it boots with.
    pub boots_with: [&'static str; 2],
}

impl DiskLayout {
    /// The layout of a disk of `size` bytes (rounded down to whole MiB) whose root
    /// filesystem has `root_uuid`.
    pub fn new(size: u64, root_uuid: String) -> Result<DiskLayout, QemuError> {
        let size = size / MIB * MIB;
        if size < MIN_SIZE {
            return Err(QemuError::Other(format!(
                "disk size {size} bytes is too small for a bootable disk (at least {} MiB)",
                MIN_SIZE / MIB
            )));
        }
        let sectors = size / SECTOR;
        // The backup GPT: 32 sectors of entries and the header, at the end.
        let last_usable = sectors - 34;
        let s = |mib: u64| mib * MIB / SECTOR;
        Ok(DiskLayout {
            size,
            table: "gpt",
            bios_boot: Partition {
                number: 14,
                name: "bios-boot",
                type_code: "EF02",
                type_guid: "21686148-6449-6E6F-744E-656564454649",
                start: s(1),
                end: s(4) - 1,
            },
            esp: Partition {
                number: 15,
                name: "esp",
                type_code: "EF00",
                type_guid: "C12A7328-F81F-11D2-BA4B-00A0C93EC93B",
                start: s(4),
                end: s(68) - 1,
            },
            root: Partition {
                number: 1,
                name: "root",
                type_code: "8304",
                type_guid: "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709",
                start: s(68),
                end: last_usable,
            },
            root_uuid,
            root_label: ROOT_LABEL,
            boots_with: ["bios", "uefi"],
        })
    }

    /// The partitions in disk order.
    pub fn partitions(&self) -> [&Partition; 3] {
        [&self.bios_boot, &self.esp, &self.root]
    }
}

/// GRUB's early config, built into both GRUB images: find the root filesystem and
/// read the menu from its `/boot/grub`.
pub fn early_config(root_uuid: &str) -> String {
    format!("search --no-floppy --fs-uuid --set=root {root_uuid}\nset prefix=($root)/boot/grub\n")
}

/// The kernel command line of the disk.
pub fn kernel_cmdline(root_uuid: &str) -> String {
    format!("root=UUID={root_uuid} rw console=tty0 console=ttyS0,115200n8 quiet")
}

/// `/boot/grub/grub.cfg`: the console on the serial port (and the screen), one entry.
pub fn grub_cfg(root_uuid: &str, os_name: &str) -> String {
    format!(
        r#"# Written by image-builder when it assembled this disk. It boots the kernel that
# /vmlinuz and /initrd.img point at (Debian's kernel packages keep them current).
# Its GRUB has its modules built in; there is no /boot/grub/<platform>/ to insmod from.
set default=0
# No wait: a disk for machines nobody sits at boots at once. (Not timeout_style=hidden:
# under QEMU that style idles ~3 s before it boots; the menu style with 0 does not.)
set timeout=0
if [ "$grub_platform" = efi ]; then
  # UEFI firmware sends its console to the serial port and the screen already.
  terminal_input console
  terminal_output console
else
  serial --unit=0 --speed=115200
  terminal_input serial console
  terminal_output serial console
fi
menuentry '{os_name}' --id default {{
  search --no-floppy --fs-uuid --set=root {root_uuid}
  linux /vmlinuz {cmdline}
  initrd /initrd.img
}}
"#,
        cmdline = kernel_cmdline(root_uuid)
    )
}

/// GRUB modules both images carry.
const GRUB_MODULES: &[&str] = &[
    "part_gpt",
    "ext2",
    "search",
    "search_fs_uuid",
    "search_label",
    "normal",
    "linux",
    "serial",
    "terminal",
    "configfile",
    "echo",
    "test",
    "boot",
    "reboot",
    "halt",
];

/// The name of the OS in `rootfs/etc/os-release` (`PRETTY_NAME`), for the menu.
fn os_name(rootfs: &Path) -> String {
    std::fs::read_to_string(rootfs.join("etc/os-release"))
        .ok()
        .and_then(|text| {
            text.lines().find_map(|l| {
                l.strip_prefix("PRETTY_NAME=")
                    .map(|v| v.trim_matches('"').replace('\'', ""))
            })
        })
        .unwrap_or_else(|| "Linux".into())
}

fn require_file(path: &str, package: &str) -> Result<PathBuf, QemuError> {
    let p = PathBuf::from(path);
    if p.exists() {
        Ok(p)
    } else {
        Err(QemuError::MissingTool {
            tool: path.to_owned(),
            package: package.to_owned(),
        })
    }
}

/// Fail early, naming the package, when a tool the assembly needs is missing.
pub fn preflight() -> Result<(), QemuError> {
    for tool in [
        "sgdisk",
        "mkfs.ext4",
        "mformat",
        "mmd",
        "mcopy",
        "grub-mkimage",
    ] {
        require_tool(tool)?;
    }
    require_file(&format!("{GRUB_PC_DIR}/boot.img"), "grub-pc-bin")?;
    require_file(&format!("{GRUB_EFI_DIR}/linux.mod"), "grub-efi-amd64-bin")?;
    Ok(())
}

/// Make `disk` (raw, `size` bytes) from the tree `rootfs`: partition table, root
/// filesystem, EFI system partition, both GRUB stages. Writes `/boot/grub/grub.cfg` into
/// `rootfs` first (the tree is the caller's copy). `work` holds the GRUB images and logs.
pub fn assemble(
    rootfs: &Path,
    disk: &Path,
    size: u64,
    work: &Path,
) -> Result<DiskLayout, QemuError> {
    preflight()?;
    let layout = DiskLayout::new(size, uuid::Uuid::new_v4().to_string())?;
    let (root, esp) = (&layout.root, &layout.esp);

    let cfg = rootfs.join(GRUB_CFG.trim_start_matches('/'));
    if let Some(dir) = cfg.parent() {
        std::fs::create_dir_all(dir).map_err(|e| QemuError::io(dir, e))?;
    }
    std::fs::write(&cfg, grub_cfg(&layout.root_uuid, &os_name(rootfs)))
        .map_err(|e| QemuError::io(&cfg, e))?;

    // A sparse file of the full size; every writer below stays inside its range.
    let _ = std::fs::remove_file(disk);
    std::fs::File::create(disk)
        .and_then(|f| f.set_len(layout.size))
        .map_err(|e| QemuError::io(disk, e))?;

    let mut sgdisk = Command::new(require_tool("sgdisk")?);
    sgdisk.arg("--clear");
    for p in layout.partitions() {
        sgdisk
            .arg(format!("--new={}:{}:{}", p.number, p.start, p.end))
            .arg(format!("--typecode={}:{}", p.number, p.type_code))
            .arg(format!("--change-name={}:{}", p.number, p.name));
    }
    sgdisk.arg(disk);
    run_logged(&mut sgdisk, "sgdisk", &work.join("sgdisk.log"))?;

    let mut mkfs = Command::new(require_tool("mkfs.ext4")?);
    mkfs.args(["-q", "-F", "-b", "4096", "-L", ROOT_LABEL, "-U"])
        .arg(&layout.root_uuid)
        .arg("-E")
        .arg(format!("offset={},nodiscard", root.offset()))
        .arg("-d")
        .arg(rootfs)
        .arg(disk)
        .arg(format!("{}k", root.size() / 4096 * 4));
    run_logged(
        &mut mkfs,
        "mkfs.ext4 -d (root filesystem)",
        &work.join("mkfs.log"),
    )?;

    let early = work.join("grub-early.cfg");
    std::fs::write(&early, early_config(&layout.root_uuid))
        .map_err(|e| QemuError::io(&early, e))?;
    let grub_mkimage = |format: &str, dir: &str, out: &Path, extra: &[&str]| {
        let mut cmd = Command::new(require_tool("grub-mkimage")?);
        cmd.args(["-O", format, "-d", dir, "-p", "/boot/grub", "-c"])
            .arg(&early)
            .arg("-o")
            .arg(out)
            .args(GRUB_MODULES)
            .args(extra);
        run_logged(
            &mut cmd,
            &format!("grub-mkimage -O {format}"),
            &work.join(format!("grub-mkimage-{format}.log")),
        )
    };

    // UEFI: the EFI system partition with GRUB at the removable-media path.
    let efi_image = work.join("BOOTX64.EFI");
    grub_mkimage("x86_64-efi", GRUB_EFI_DIR, &efi_image, &["efi_gop"])?;
    let image_at = format!("{}@@{}", disk.display(), esp.offset());
    let mtools = |tool: &str, args: &[&str], extra: Option<&Path>| {
        let mut cmd = Command::new(require_tool(tool)?);
        // No geometry checks (this is an image file); no user or system mtools config.
        cmd.env("MTOOLS_SKIP_CHECK", "1")
            .env("MTOOLSRC", "/dev/null")
            .arg("-i")
            .arg(&image_at)
            .args(args);
        if let Some(p) = extra {
            cmd.arg(p).arg(format!("::{EFI_LOADER}"));
        }
        run_logged(&mut cmd, tool, &work.join(format!("{tool}.log")))
    };
    let esp_sectors = (esp.size() / SECTOR).to_string();
    mtools(
        "mformat",
        &[
            "-F",
            "-v",
            ESP_LABEL,
            "-T",
            &esp_sectors,
            "-h",
            "64",
            "-s",
            "32",
            "::",
        ],
        None,
    )?;
    mtools("mmd", &["::/EFI", "::/EFI/BOOT"], None)?;
    mtools("mcopy", &[], Some(&efi_image))?;

    // Legacy BIOS: boot.img in the MBR, core.img in the BIOS boot partition.
    let core = work.join("core.img");
    grub_mkimage("i386-pc", GRUB_PC_DIR, &core, &["biosdisk"])?;
    let boot_path = Path::new(GRUB_PC_DIR).join("boot.img");
    let boot_img = std::fs::read(&boot_path).map_err(|e| QemuError::io(&boot_path, e))?;
    let core_img = std::fs::read(&core).map_err(|e| QemuError::io(&core, e))?;
    embed_bios(disk, &boot_img, &core_img, &layout.bios_boot)?;
    Ok(layout)
}

/// Why an image that is not a whole disk is refused (the caller names the image).
pub const NOT_A_WHOLE_DISK: &str = "not a whole disk (no GPT partition table): it was made before golden \
     images became disks that boot by themselves; bake it again with `image-builder bake SPEC`";

/// Whether `image` is a whole disk: its first two sectors hold an MBR signature and a
/// GPT header (what [`assemble`] writes). Golden images made before whole disks were a
/// bare ext4 filesystem that boots only with the kernel beside it. Read with
/// `qemu-img dd`, so qcow2 and raw both work.
pub fn is_whole_disk(image: &Path) -> Result<bool, QemuError> {
    let dir = tempfile::tempdir().map_err(|e| QemuError::io(Path::new("/tmp"), e))?;
    let head = dir.path().join("head.raw");
    let mut dd = Command::new(require_tool("qemu-img")?);
    dd.args(["dd", "-O", "raw", "bs=512", "count=2"])
        .arg(format!("if={}", image.display()))
        .arg(format!("of={}", head.display()));
    run_logged(&mut dd, "qemu-img dd", &dir.path().join("dd.log"))?;
    let bytes = std::fs::read(&head).map_err(|e| QemuError::io(&head, e))?;
    Ok(bytes.len() >= 1024 && bytes[510..512] == [0x55, 0xaa] && &bytes[512..520] == b"EFI PART")
}

// Offsets in GRUB's boot.img and core.img (grub's include/grub/i386/pc/boot.h).
/// The BIOS parameter block, kept from the disk's sector 0.
const BPB: std::ops::Range<usize> = 0x03..0x5a;
/// LBA of core.img's first sector (little-endian u64).
const KERNEL_SECTOR: usize = 0x5c;
/// The boot drive (0xff: use the drive the BIOS booted from).
const BOOT_DRIVE: usize = 0x64;
/// A jump that skips the boot-drive check; `nop nop` for hard disks.
const DRIVE_CHECK: usize = 0x66;
/// Disk signature and partition table, kept from the disk's sector 0.
const PART_TABLE: std::ops::Range<usize> = 0x1b8..0x1fe;
/// Size of a blocklist entry in core.img's first sector: start (u64), length in
/// sectors (u16), load segment (u16).
const BLOCKLIST_ENTRY: usize = 12;
/// Where the rest of core.img is loaded: GRUB_BOOT_I386_PC_KERNEL_SEG + one sector.
const CORE_SEGMENT: u16 = 0x820;

/// Write GRUB's BIOS stage the way `grub-bios-setup --no-rs-codes` does for a GPT disk
/// with a BIOS boot partition:
/// - `core.img` (padded to whole sectors) at the partition's first sector; its first
///   sector (`diskboot.img`) gets one blocklist entry (at 0x200 - 12) pointing at the
///   rest of it (start + 1, sectors - 1, segment 0x820) and a zero terminator below it;
/// - `boot.img` at sector 0 with the BPB, the disk signature and the (protective)
///   partition table kept from what is there, the boot-drive check turned into `nop`s,
///   the boot drive 0xff and the kernel sector pointing at the partition.
pub fn embed_bios(
    disk: &Path,
    boot_img: &[u8],
    core_img: &[u8],
    bios_boot: &Partition,
) -> Result<(), QemuError> {
    let sector = SECTOR as usize;
    if boot_img.len() != sector {
        return Err(QemuError::Other(format!(
            "GRUB's boot.img is {} bytes, expected {sector}",
            boot_img.len()
        )));
    }
    let core_sectors = core_img.len().div_ceil(sector);
    if core_img.len() < 2 * sector || core_sectors as u64 > bios_boot.size() / SECTOR {
        return Err(QemuError::Other(format!(
            "GRUB's core.img is {} bytes: it must be at least 2 sectors and fit the {} MiB BIOS boot partition",
            core_img.len(),
            bios_boot.size() / MIB
        )));
    }
    let mut core = core_img.to_vec();
    core.resize(core_sectors * sector, 0);
    // Clear the blocklist grub-mkimage left, downwards from the first entry.
    let first = sector - BLOCKLIST_ENTRY;
    let mut entry = first;
    while u16::from_le_bytes([core[entry + 8], core[entry + 9]]) != 0 {
        core[entry..entry + BLOCKLIST_ENTRY].fill(0);
        entry = entry.checked_sub(BLOCKLIST_ENTRY).ok_or_else(|| {
            QemuError::Other("GRUB's core.img has no blocklist terminator".into())
        })?;
    }
    let rest = u16::try_from(core_sectors - 1)
        .map_err(|_| QemuError::Other("GRUB's core.img is too large".into()))?;
    core[first..first + 8].copy_from_slice(&(bios_boot.start + 1).to_le_bytes());
    core[first + 8..first + 10].copy_from_slice(&rest.to_le_bytes());
    core[first + 10..first + 12].copy_from_slice(&CORE_SEGMENT.to_le_bytes());
    core[first - BLOCKLIST_ENTRY..first].fill(0);

    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(disk)
        .map_err(|e| QemuError::io(disk, e))?;
    let mut mbr = vec![0u8; sector];
    f.read_exact(&mut mbr).map_err(|e| QemuError::io(disk, e))?;
    let mut boot = boot_img.to_vec();
    boot[BPB].copy_from_slice(&mbr[BPB]);
    boot[DRIVE_CHECK] = 0x90;
    boot[DRIVE_CHECK + 1] = 0x90;
    boot[PART_TABLE].copy_from_slice(&mbr[PART_TABLE]);
    boot[BOOT_DRIVE] = 0xff;
    boot[KERNEL_SECTOR..KERNEL_SECTOR + 8].copy_from_slice(&bios_boot.start.to_le_bytes());

    f.seek(SeekFrom::Start(bios_boot.offset()))
        .and_then(|_| f.write_all(&core))
        .and_then(|()| f.seek(SeekFrom::Start(0)))
        .and_then(|_| f.write_all(&boot))
        .and_then(|()| f.sync_all())
        .map_err(|e| QemuError::io(disk, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_layout_puts_root_last_and_fills_the_disk() {
        let l = DiskLayout::new(4 << 30, "u".into()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(l.size, 4 << 30);
        let numbers = l.partitions().map(|p| p.number);
        assert_eq!(numbers, [14, 15, 1]);
        for pair in l.partitions().windows(2) {
            assert_eq!(pair[0].end + 1, pair[1].start, "contiguous, no overlap");
        }
        for p in l.partitions() {
            assert_eq!(p.offset() % MIB, 0, "{} is 1 MiB-aligned", p.name);
        }
        assert_eq!(l.root.end, (4 << 30) / SECTOR - 34, "up to the backup GPT");
        assert_eq!(l.bios_boot.size(), 3 * MIB);
        assert_eq!(l.esp.size(), 64 * MIB);
        // Rounded down to whole MiB; too small is an error.
        assert_eq!(
            DiskLayout::new((1 << 30) + 5, "u".into())
                .map(|l| l.size)
                .ok(),
            Some(1 << 30)
        );
        assert!(DiskLayout::new(MIN_SIZE - MIB, "u".into()).is_err());
    }

    #[test]
    fn grub_finds_the_root_by_uuid_and_boots_the_kernel_links_with_a_serial_console() {
        let uuid = "0b7e0a8e-5f0e-4d4e-9a44-5a1d2b3c4d5e";
        let early = early_config(uuid);
        assert_eq!(
            early,
            format!(
                "search --no-floppy --fs-uuid --set=root {uuid}\nset prefix=($root)/boot/grub\n"
            )
        );
        let cfg = grub_cfg(uuid, "Debian GNU/Linux 12 (bookworm)");
        assert!(cfg.contains(&format!(
            "linux /vmlinuz root=UUID={uuid} rw console=tty0 console=ttyS0,115200n8"
        )));
        assert!(cfg.contains("initrd /initrd.img\n"));
        assert!(cfg.contains("menuentry 'Debian GNU/Linux 12 (bookworm)'"));
        assert!(cfg.contains("serial --unit=0 --speed=115200"));
        // Boots at once, and not with the hidden style (which idles ~3 s under QEMU).
        assert!(cfg.contains("\nset timeout=0\n"));
        assert!(!cfg.contains("set timeout_style"));
    }

    /// The bytes `embed_bios` writes, checked on a synthetic disk: the partition table
    /// survives, boot.img points at the partition, core.img's blocklist at the rest.
    #[test]
    fn the_bios_stage_points_boot_img_at_core_img_and_core_img_at_itself() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let disk = dir.path().join("d.raw");
        let mut mbr = vec![0u8; 512];
        mbr[0x1be..0x1ce].copy_from_slice(&[0xee; 16]); // a protective entry
        mbr[0x1fe] = 0x55;
        mbr[0x1ff] = 0xaa;
        mbr[0x10] = 0x42; // something in the BPB area
        let mut image = mbr.clone();
        image.resize(8 << 20, 0);
        std::fs::write(&disk, &image).unwrap_or_else(|e| panic!("{e}"));

        let mut boot = vec![0xb0u8; 512];
        boot[0x1fe] = 0x55;
        boot[0x1ff] = 0xaa;
        // core.img: 3.5 sectors, with a stale two-entry blocklist from grub-mkimage.
        let mut core = vec![0xc0u8; 1792];
        core[500..512].copy_from_slice(&[1, 0, 0, 0, 0, 0, 0, 0, 7, 0, 0x20, 0x08]);
        core[488..500].copy_from_slice(&[9, 0, 0, 0, 0, 0, 0, 0, 3, 0, 0x20, 0x08]);
        core[476..488].fill(0);
        let part = DiskLayout::new(MIN_SIZE, "u".into())
            .unwrap_or_else(|e| panic!("{e}"))
            .bios_boot;
        embed_bios(&disk, &boot, &core, &part).unwrap_or_else(|e| panic!("{e}"));

        let out = std::fs::read(&disk).unwrap_or_else(|e| panic!("{e}"));
        let s0 = &out[..512];
        assert_eq!(
            &s0[0x1b8..0x200],
            &mbr[0x1b8..0x200],
            "partition table kept"
        );
        assert_eq!(s0[0x10], 0x42, "BPB kept");
        assert_eq!(&s0[0x5c..0x64], &2048u64.to_le_bytes(), "kernel sector");
        assert_eq!(s0[0x64], 0xff, "boot drive");
        assert_eq!(&s0[0x66..0x68], &[0x90, 0x90], "drive check");
        assert_eq!(s0[0x70], 0xb0, "boot.img code");
        let c = &out[2048 * 512..2048 * 512 + 2048];
        assert_eq!(
            &c[500..512],
            &[0x01, 0x08, 0, 0, 0, 0, 0, 0, 3, 0, 0x20, 0x08],
            "one entry: sectors 2049.. (3 of them) at segment 0x820"
        );
        assert_eq!(&c[488..500], &[0u8; 12], "terminator");
        assert_eq!(&c[512..1792], &core[512..1792], "the rest of core.img");
        assert_eq!(&c[1792..2048], &[0u8; 256], "padded to whole sectors");
    }
}
