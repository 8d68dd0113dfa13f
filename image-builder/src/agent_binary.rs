//! The vm-agent binary a bake installs: one static executable (the image has no Rust
//! runtime and its libc may differ from the build host's). Found or built here:
//!
//! 1. `--agent-bin PATH`, then `$IMAGE_BUILDER_AGENT_BIN`: used as given, but a
//!    dynamically linked one is refused with the command that builds the right one;
//! 2. in a source checkout: `vm-agent/build-static.sh` (cargo rebuilds only what
//!    changed; the first build takes minutes), which checks what it built is static;
//! 3. otherwise a static `vm-agent` next to this executable (an installed release).
//!
//! `target/debug/vm-agent` beside a development build is dynamically linked and is
//! never picked up.

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The command that builds the static agent, for error messages.
pub const BUILD_HINT: &str = "bash vm-agent/build-static.sh (prints the binary's path)";

/// How an executable is linked, from its ELF program headers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Linking {
    /// No program interpreter: runs without a dynamic loader or shared libraries.
    Static,
    /// Has a program interpreter (`PT_INTERP`, e.g. `/lib64/ld-linux-x86-64.so.2`).
    Dynamic,
    /// Not a 64-bit little-endian ELF file.
    NotElf,
}

/// How `path` is linked: an ELF64 file without a `PT_INTERP` program header is static
/// (static-pie included; it has a dynamic section but no loader and no `DT_NEEDED`).
pub fn linking(path: &Path) -> std::io::Result<Linking> {
    const PT_INTERP: u32 = 3;
    let mut f = std::fs::File::open(path)?;
    let mut header = [0u8; 64];
    if f.read(&mut header)? < 64 || &header[..4] != b"\x7fELF" || header[4] != 2 || header[5] != 1 {
        return Ok(Linking::NotElf);
    }
    let u16_at = |b: &[u8], o: usize| u16::from_le_bytes([b[o], b[o + 1]]);
    let phoff = u64::from_le_bytes(header[0x20..0x28].try_into().unwrap_or_default());
    let phentsize = usize::from(u16_at(&header, 0x36));
    let phnum = usize::from(u16_at(&header, 0x38));
    if phentsize < 4 {
        return Ok(Linking::NotElf);
    }
    use std::io::{Seek as _, SeekFrom};
    f.seek(SeekFrom::Start(phoff))?;
    let mut table = vec![0u8; phentsize * phnum];
    f.read_exact(&mut table)?;
    let interp = table
        .chunks_exact(phentsize)
        .any(|ph| u32::from_le_bytes(ph[..4].try_into().unwrap_or_default()) == PT_INTERP);
    Ok(if interp {
        Linking::Dynamic
    } else {
        Linking::Static
    })
}

/// `path` if it is a usable agent: static, or (with a warning) not an ELF file at all
/// (test doubles; the image's install step checks only its sha256). Dynamically linked
/// ELF files are refused.
pub fn check(path: &Path) -> Result<PathBuf, String> {
    match linking(path).map_err(|e| format!("vm-agent binary {}: {e}", path.display()))? {
        Linking::Static => Ok(path.to_owned()),
        Linking::Dynamic => Err(format!(
            "vm-agent binary {} is dynamically linked: the golden image needs the static one; \
             build it with `{BUILD_HINT}` and pass that path with --agent-bin",
            path.display()
        )),
        Linking::NotElf => {
            tracing::warn!(
                "vm-agent binary {} is not an ELF executable; installing it as given",
                path.display()
            );
            Ok(path.to_owned())
        }
    }
}

/// The workspace this binary was built from, if it is still there (a source checkout).
fn checkout() -> Option<PathBuf> {
    let ws = Path::new(env!("CARGO_MANIFEST_DIR")).parent()?;
    ws.join("vm-agent/build-static.sh")
        .is_file()
        .then(|| ws.to_owned())
}

/// Run `vm-agent/build-static.sh` in `workspace` (its progress on our stderr) and
/// return the binary it printed.
fn build_static(workspace: &Path) -> Result<PathBuf, String> {
    tracing::info!(
        "building the static vm-agent with vm-agent/build-static.sh (cargo; the first build takes minutes)"
    );
    let mut cmd = Command::new("bash");
    cmd.arg(workspace.join("vm-agent/build-static.sh"))
        .current_dir(workspace);
    // Build into the target directory this executable came from (the script's
    // default is the checkout's `target/`), unless the caller chose one.
    if std::env::var_os("CARGO_TARGET_DIR").is_none()
        && let Some(target) = std::env::current_exe()
            .ok()
            .and_then(|exe| Some(exe.parent()?.parent()?.to_owned()))
            .filter(|dir| dir.join("CACHEDIR.TAG").is_file())
    {
        cmd.env("CARGO_TARGET_DIR", target);
    }
    let out = cmd
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("cannot run vm-agent/build-static.sh: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "vm-agent/build-static.sh failed ({}); see its output above, or pass a static agent with --agent-bin",
            out.status
        ));
    }
    let printed = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let path = workspace.join(&printed);
    if !path.is_file() {
        return Err(format!(
            "vm-agent/build-static.sh printed {printed:?}, which is not a file"
        ));
    }
    Ok(path)
}

/// Find (or build) the static agent, in the order of the module docs.
pub fn find_or_build(explicit: Option<&Path>) -> Result<PathBuf, String> {
    if let Some(p) = explicit {
        return check(p);
    }
    if let Some(p) = std::env::var_os("IMAGE_BUILDER_AGENT_BIN") {
        return check(Path::new(&p));
    }
    if let Some(ws) = checkout() {
        let built = build_static(&ws)?;
        return match linking(&built) {
            Ok(Linking::Static) => Ok(built),
            _ => Err(format!(
                "vm-agent/build-static.sh produced {}, which is not a static executable",
                built.display()
            )),
        };
    }
    let sibling = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|d| d.join("vm-agent")))
        .filter(|p| p.is_file());
    match sibling {
        Some(p) if linking(&p).is_ok_and(|l| l == Linking::Static) => Ok(p),
        Some(p) => Err(format!(
            "agent.install is true but {} is not a static executable; build the static agent \
             with `{BUILD_HINT}` and pass it with --agent-bin PATH (or set IMAGE_BUILDER_AGENT_BIN)",
            p.display()
        )),
        None => Err(format!(
            "agent.install is true but no vm-agent binary was found: build it with `{BUILD_HINT}` \
             and pass it with --agent-bin PATH (or set IMAGE_BUILDER_AGENT_BIN)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An ELF64 header with one program header of type `p_type`.
    fn elf(p_type: u32) -> Vec<u8> {
        let mut b = vec![0u8; 64 + 56];
        b[..4].copy_from_slice(b"\x7fELF");
        b[4] = 2; // 64-bit
        b[5] = 1; // little-endian
        b[0x20..0x28].copy_from_slice(&64u64.to_le_bytes()); // e_phoff
        b[0x36..0x38].copy_from_slice(&56u16.to_le_bytes()); // e_phentsize
        b[0x38..0x3a].copy_from_slice(&1u16.to_le_bytes()); // e_phnum
        b[64..68].copy_from_slice(&p_type.to_le_bytes());
        b
    }

    #[test]
    fn an_interpreter_makes_an_executable_dynamic() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let cases = [
            ("static", elf(1), Linking::Static), // PT_LOAD only
            ("dynamic", elf(3), Linking::Dynamic),
            ("random", b"not an executable".to_vec(), Linking::NotElf),
        ];
        for (name, bytes, want) in cases {
            let p = dir.path().join(name);
            std::fs::write(&p, bytes).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(linking(&p).ok(), Some(want), "{name}");
        }
        let refused = check(&dir.path().join("dynamic")).err().unwrap_or_default();
        assert!(
            refused.contains("dynamically linked") && refused.contains("vm-agent/build-static.sh"),
            "{refused}"
        );
        assert!(check(&dir.path().join("static")).is_ok());
    }

    /// This test binary itself is dynamically linked (cargo's default): exactly what a
    /// bake used to install by mistake from target/debug.
    #[test]
    fn the_test_binary_is_recognised_as_dynamic() {
        let exe = std::env::current_exe().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(linking(&exe).ok(), Some(Linking::Dynamic));
    }
}
