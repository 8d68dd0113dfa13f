//! `.ci/setup.sh` names the Debian package of every tool the code and the tests run, so a
//! fresh machine passes the suite the same way this one does. The tools are found in the
//! sources themselves: `Command::new("tool")`, `require("tool", "package")`,
//! `require_tool("tool", "package")`, the local backend's tool table and the shell scripts'
//! `command -v`/direct uses listed below. A tool missing from the table here fails the
//! test, naming where it is run, until its package is added to both.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// Tool → Debian package. Tools of Debian's essential set (always installed) map to "".
const TOOLS: &[(&str, &str)] = &[
    // essential: present on every Debian system
    ("sh", ""),
    ("bash", ""),
    ("cp", ""),
    ("nice", ""),
    ("grep", ""),
    ("find", ""),
    ("id", ""),
    ("umount", ""),
    ("cat", ""),
    ("sha256sum", ""),
    // named in .ci/setup.sh
    ("kill", "procps"),
    ("unshare", "util-linux"),
    ("nsenter", "util-linux"),
    ("setpriv", "util-linux"),
    ("ionice", "util-linux"),
    ("ip", "iproute2"),
    ("python3", "python3"),
    ("cloud-init", "cloud-init"),
    ("visudo", "sudo"),
    ("packer", "packer"),
    ("ssh", "openssh-client"),
    ("scp", "openssh-client"),
    ("ssh-keygen", "openssh-client"),
    ("sshd", "openssh-server"),
    ("git", "git"),
    ("qemu-img", "qemu-utils"),
    ("qemu-system-x86_64", "qemu-system-x86"),
    ("systemd-nspawn", "systemd-container"),
    ("machinectl", "systemd-container"),
    ("systemd-analyze", "systemd"),
    ("mmdebstrap", "mmdebstrap"),
    ("mkfs.ext4", "e2fsprogs"),
    ("debugfs", "e2fsprogs"),
    ("genisoimage", "genisoimage"),
    ("readelf", "binutils"),
    ("strings", "binutils"),
    ("curl", "curl"),
    ("sgdisk", "gdisk"),
    ("sfdisk", "fdisk"),
    ("blkid", "util-linux"),
    ("mformat", "mtools"),
    ("mmd", "mtools"),
    ("mcopy", "mtools"),
    ("grub-mkimage", "grub-common"),
    // not a Debian package: on this machine kind (its providers cannot be downloaded)
    ("terraform", "-"),
];

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn setup_packages() -> BTreeSet<String> {
    let text = std::fs::read_to_string(workspace().join(".ci/setup.sh")).unwrap();
    let start = text.find("PACKAGES=(").expect("PACKAGES=( in .ci/setup.sh");
    let end = start + text[start..].find(')').unwrap();
    text[start + "PACKAGES=(".len()..end]
        .split_whitespace()
        .map(str::to_owned)
        .collect()
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap().filter_map(|e| e.ok()) {
        let p = e.path();
        let name = e.file_name();
        if name == "target" || name == ".git" || name == "fuzz" {
            continue;
        }
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// Every `NAME("tool"` (or `NAME("tool", "package"`) in `text`.
fn calls<'a>(text: &'a str, name: &str) -> Vec<(&'a str, Option<&'a str>)> {
    let pat = format!("{name}(\"");
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find(&pat) {
        let after = &rest[i + pat.len()..];
        let Some(end) = after.find('"') else { break };
        let tool = &after[..end];
        let tail = &after[end + 1..];
        let package = tail
            .strip_prefix(", \"")
            .and_then(|t| t.find('"').map(|e| &t[..e]));
        out.push((tool, package));
        rest = &after[end..];
    }
    out
}

#[test]
fn setup_installs_every_tool_the_suite_runs() {
    let packages = setup_packages();
    let table: std::collections::BTreeMap<&str, &str> = TOOLS.iter().copied().collect();
    let mut files = Vec::new();
    for d in ["image-builder", "vm-agent", "packer-plugin", "tests"] {
        rust_files(&workspace().join(d), &mut files);
    }
    let mut problems = Vec::new();
    let mut seen = 0;
    for f in files.iter().filter(|f| !f.ends_with("tests/ci_setup.rs")) {
        let text = std::fs::read_to_string(f).unwrap();
        let mut found: Vec<(&str, Option<&str>)> = calls(&text, "Command::new");
        found.extend(calls(&text, "require"));
        found.extend(calls(&text, "require_tool"));
        // The local backend's table: ("tool", "package") pairs.
        if let Some(start) = text.find("const TOOL_PACKAGES") {
            let table_text = &text[start..];
            let table_text = &table_text[..table_text.find("];").unwrap_or(table_text.len())];
            found.extend(calls(table_text, ""));
        }
        for (tool, package) in found {
            if tool.starts_with('/') || tool.contains(' ') || tool.is_empty() {
                continue; // absolute paths (our own binaries, /usr/sbin/sshd) and non-tools
            }
            seen += 1;
            let want = package.or_else(|| table.get(tool).copied());
            match want {
                None => problems.push(format!(
                    "{}: runs `{tool}`, which the table in tests/tests/ci_setup.rs does not know: add it with its package, and the package to .ci/setup.sh",
                    f.display()
                )),
                Some("") | Some("-") => {}
                Some(p) if !packages.contains(p) => problems.push(format!(
                    "{}: runs `{tool}` from package `{p}`, which .ci/setup.sh does not install",
                    f.display()
                )),
                Some(_) => {}
            }
        }
    }
    // Tools the shell scripts run.
    for (script, tools) in [
        ("vm-agent/build-static.sh", &["readelf", "strings"][..]),
        (".ci/setup-prism.sh", &[][..]),
    ] {
        let text = std::fs::read_to_string(workspace().join(script)).unwrap();
        for tool in tools {
            assert!(
                text.contains(tool),
                "{script} no longer runs {tool}: update this test"
            );
            let p = table[tool];
            if !packages.contains(p) {
                problems.push(format!(
                    "{script}: runs `{tool}` from `{p}`, not in .ci/setup.sh"
                ));
            }
        }
    }
    assert!(
        seen > 20,
        "the scan found only {seen} tool uses: is it still reading the sources?"
    );
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    for bench_only in ["hyperfine", "rclone"] {
        assert!(
            !packages.contains(bench_only),
            "{bench_only} is for the benchmarks: it belongs in bench/setup.sh"
        );
    }
}
