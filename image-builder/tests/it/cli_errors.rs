//! Bad input never crashes and never writes output: each case runs the real binary
//! with `-o`, and asserts the message (file, line, column, field, expectation), exit
//! code 65 (bad input), and that the output file did not appear (or, if it existed,
//! is unchanged).

#![allow(clippy::unwrap_used)]

use crate::common::*;

const KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFILb3Eb0C2YdLb7+iLlx5hwW9HgeO79hEiV9J8Wvqws x";

fn good() -> String {
    format!(
        "name: t\nbase:\n  qemu: bookworm\nbuild_user:\n  name: builder\n  ssh_authorized_keys: [\"{KEY}\"]\nfiles:\n  - path: /etc/a\n    content: a\n"
    )
}

struct Case {
    name: &'static str,
    spec: String,
    /// Every one of these must appear in stderr.
    expect: Vec<&'static str>,
    /// Extra files next to the spec.
    extra: Vec<(&'static str, Vec<u8>)>,
}

fn cases() -> Vec<Case> {
    let noise: Vec<u8> = {
        // Incompressible bytes (xorshift), so gzip can't bring them under the limit.
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        (0..100_000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect()
    };
    vec![
        Case {
            name: "malformed YAML",
            spec: "name: t\nbase: {qemu: bookworm\nbuild_user: {name: b}\n".into(),
            expect: vec![
                "spec.yaml:3:11",
                "while parsing a flow mapping",
                "expected ',' or '}'",
            ],
            extra: vec![],
        },
        Case {
            name: "unknown field",
            spec: good().replace("  name: builder\n", "  name: builder\n  sudo: ALL\n"),
            expect: vec![
                "spec.yaml:6:3",
                "build_user",
                "unknown field `sudo`",
                "expected one of",
            ],
            extra: vec![],
        },
        Case {
            name: "unknown top-level field",
            spec: format!("{}pakages: [curl]\n", good()),
            expect: vec!["spec.yaml:10:1", "unknown field `pakages`"],
            extra: vec![],
        },
        Case {
            name: "wrong type",
            spec: format!("{}apt:\n  packages: curl\n", good()),
            expect: vec!["spec.yaml:11:13", "apt.packages", "expected sequence"],
            extra: vec![],
        },
        Case {
            name: "wrong type for a bool",
            spec: good().replace(
                "  name: builder\n",
                "  name: builder\n  passwordless_sudo: sometimes\n",
            ),
            expect: vec!["spec.yaml:6:22", "build_user.passwordless_sudo"],
            extra: vec![],
        },
        Case {
            name: "mode 0999",
            spec: format!("{}    mode: \"0999\"\n", good()),
            expect: vec!["spec.yaml:10:11", "files[0].mode", "not octal digits"],
            extra: vec![],
        },
        Case {
            name: "unquoted mode 0999",
            spec: format!("{}    mode: 0999\n", good()),
            expect: vec!["spec.yaml:10:11", "files[0].mode", "not octal digits"],
            extra: vec![],
        },
        Case {
            name: "relative path",
            spec: good().replace("path: /etc/a", "path: etc/a"),
            expect: vec![
                "spec.yaml:8:11",
                "files[0].path",
                "relative",
                "absolute path",
            ],
            extra: vec![],
        },
        Case {
            name: "duplicate file path",
            spec: format!("{}  - path: /etc/a\n    content: b\n", good()),
            expect: vec![
                "spec.yaml:10:11",
                "files[1].path",
                "duplicate file path /etc/a",
                "line 8",
            ],
            extra: vec![],
        },
        Case {
            name: "invalid ssh key",
            spec: good().replace(KEY, "ssh-ed25519 AAAAC3NzaC1yc2EAAAADAQAB x"),
            expect: vec![
                "spec.yaml:6:25",
                "build_user.ssh_authorized_keys[0]",
                "invalid ssh public key",
            ],
            extra: vec![],
        },
        Case {
            name: "ssh key that is not a key",
            spec: good().replace(KEY, "hello"),
            expect: vec!["build_user.ssh_authorized_keys[0]", "TYPE BASE64 [COMMENT]"],
            extra: vec![],
        },
        Case {
            name: "over-size user-data",
            spec: format!("{}  - path: /etc/blob\n    source: blob.bin\n", good()),
            expect: vec![
                "over the 65536-byte limit",
                "largest parts",
                "write_files /etc/blob",
            ],
            extra: vec![("blob.bin", noise)],
        },
        Case {
            name: "zero duration",
            spec: format!("{}agent:\n  idle_timeout: 0\n", good()),
            expect: vec![
                "spec.yaml:11:17",
                "agent.idle_timeout",
                "0 is not allowed",
                "never",
            ],
            extra: vec![],
        },
        Case {
            name: "duration without unit",
            spec: format!("{}agent:\n  max_lifetime: \"30\"\n", good()),
            expect: vec!["agent.max_lifetime", "unit is required"],
            extra: vec![],
        },
        Case {
            name: "never where a duration is required",
            spec: format!("{}apt:\n  lock_timeout: never\n", good()),
            expect: vec!["apt.lock_timeout", "is not allowed here"],
            extra: vec![],
        },
        Case {
            name: "unknown snapshot placeholder",
            spec: format!("{}snapshot:\n  name: \"{{name}}-{{sha}}\"\n", good()),
            expect: vec![
                "spec.yaml:11:9",
                "snapshot.name",
                "unknown placeholder {sha}",
            ],
            extra: vec![],
        },
        Case {
            name: "missing source file",
            spec: good().replace("content: a", "source: nope.txt"),
            expect: vec!["spec.yaml:9:13", "files[0].source", "nope.txt"],
            extra: vec![],
        },
        Case {
            name: "content and source",
            spec: format!("{}    source: a.txt\n", good()),
            expect: vec!["files[0].source", "both `content` and `source`"],
            extra: vec![("a.txt", b"x".to_vec())],
        },
        Case {
            name: "invalid user name",
            spec: good().replace("name: builder", "name: Bob Smith"),
            expect: vec!["spec.yaml:5:9", "build_user.name", "invalid user name"],
            extra: vec![],
        },
        Case {
            name: "missing required field",
            spec: "name: t\nbase: {qemu: bookworm}\n".into(),
            expect: vec!["missing field `build_user`"],
            extra: vec![],
        },
        Case {
            name: "duplicate key",
            spec: format!("{}name: again\n", good()),
            expect: vec!["spec.yaml:10:1", "duplicate"],
            extra: vec![],
        },
        Case {
            name: "unknown qcow2 compression",
            spec: format!("{}qemu:\n  compression: gzip\n", good()),
            expect: vec!["spec.yaml:11:16", "qemu.compression", "zstd"],
            extra: vec![],
        },
        Case {
            name: "no base image",
            spec: good().replace("base:\n  qemu: bookworm\n", "base: {}\n"),
            expect: vec!["base", "no base image"],
            extra: vec![],
        },
    ]
}

#[test]
fn good_spec_renders_to_the_output_file() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("spec.yaml"), good()).unwrap();
    let out = image_builder(&["render", "spec.yaml", "-o", "out.yaml"], dir.path());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(dir.path().join("out.yaml")).unwrap();
    assert!(text.starts_with("#cloud-config\n"));
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(dir.path().join("out.yaml"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(
        mode & 0o777,
        0o600,
        "user-data may carry secrets: not world-readable"
    );
}

#[test]
fn bad_inputs_get_located_errors_and_write_nothing() {
    let mut failures = Vec::new();
    for case in cases() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("spec.yaml"), &case.spec).unwrap();
        for (name, data) in &case.extra {
            std::fs::write(dir.path().join(name), data).unwrap();
        }
        // 1. No output file appears.
        let out = image_builder(&["render", "spec.yaml", "-o", "out.yaml"], dir.path());
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        // 65: bad input (README.md, "Exit codes").
        if out.status.code() != Some(65) {
            failures.push(format!(
                "{}: exit {:?}, stderr: {stderr}",
                case.name,
                out.status.code()
            ));
        }
        if stderr.contains("panicked") {
            failures.push(format!("{}: panicked: {stderr}", case.name));
        }
        for e in &case.expect {
            if !stderr.contains(e) {
                failures.push(format!("{}: stderr lacks {e:?}: {stderr}", case.name));
            }
        }
        if dir.path().join("out.yaml").exists() {
            failures.push(format!("{}: out.yaml was written", case.name));
        }
        // 2. An existing output file is left exactly as it was.
        std::fs::write(dir.path().join("out.yaml"), "previous").unwrap();
        let out = image_builder(&["render", "spec.yaml", "-o", "out.yaml"], dir.path());
        assert!(!out.status.success());
        if std::fs::read_to_string(dir.path().join("out.yaml")).unwrap() != "previous" {
            failures.push(format!("{}: existing out.yaml was changed", case.name));
        }
        let leftovers: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".tmp"))
            .collect();
        if !leftovers.is_empty() {
            failures.push(format!("{}: temp files left: {leftovers:?}", case.name));
        }
        // 3. `validate` reports the same problem, also as JSON.
        let out = image_builder(&["validate", "--json", "spec.yaml"], dir.path());
        if out.status.code() != Some(65) {
            failures.push(format!(
                "{}: validate exit {:?}",
                case.name,
                out.status.code()
            ));
        }
        let report: serde_json::Value = match serde_json::from_slice(&out.stdout) {
            Ok(v) => v,
            Err(e) => {
                failures.push(format!("{}: validate --json is not JSON: {e}", case.name));
                continue;
            }
        };
        assert_eq!(report["valid"], false, "{}", case.name);
        let text = report.to_string();
        for e in case.expect.iter().filter(|e| !e.contains("spec.yaml:")) {
            if !text.contains(e) {
                failures.push(format!(
                    "{}: validate --json lacks {e:?}: {text}",
                    case.name
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} problems:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
