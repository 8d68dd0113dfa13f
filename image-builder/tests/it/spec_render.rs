//! Rendering: golden files for the example spec, tricky YAML 1.1 values in every
//! string position read back with the real PyYAML, and real `cloud-init schema`.

#![allow(clippy::unwrap_used)]

use std::path::Path;

use crate::common::*;
use image_builder::render::{self, Mode, RenderOptions};
use image_builder::spec;
use image_builder::validate::{self, CheckStatus};
use serde_json::Value;

fn example() -> std::path::PathBuf {
    workspace().join("templates/examples/worker.yaml")
}

fn assert_schema_ok(text: &str, what: &str) {
    require_tool("cloud-init", "cloud-init");
    match validate::cloud_init_schema(text) {
        CheckStatus::Passed => {}
        other => panic!("cloud-init schema rejected {what}: {other:?}\n{text}"),
    }
}

/// Golden files: `UPDATE_GOLDEN=1 cargo test -p image-builder --test it spec_render::` rewrites them.
#[test]
fn example_spec_matches_golden_files_in_both_modes() {
    let loaded = spec::load(&example()).unwrap();
    for mode in [Mode::Worker, Mode::Bake] {
        let r = render::render(&loaded, &RenderOptions::new(mode)).unwrap();
        let golden = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join(format!("tests/golden/worker.{mode}.user-data"));
        if std::env::var_os("UPDATE_GOLDEN").is_some() {
            std::fs::write(&golden, &r.text).unwrap();
        }
        let want = std::fs::read_to_string(&golden).unwrap_or_else(|e| {
            panic!(
                "{}: {e} (run with UPDATE_GOLDEN=1 to create)",
                golden.display()
            )
        });
        assert_eq!(
            r.text,
            want,
            "{mode} output differs from {}",
            golden.display()
        );
        assert!(r.text.starts_with("#cloud-config\n"));
        assert_schema_ok(&r.text, &format!("the example in {mode} mode"));
    }
}

#[test]
fn example_spec_reads_back_identically_with_pyyaml() {
    let loaded = spec::load(&example()).unwrap();
    for mode in [Mode::Worker, Mode::Bake] {
        let r = render::render(&loaded, &RenderOptions::new(mode)).unwrap();
        let got = pyyaml_load(&r.text);
        let want = serde_json::to_value(&r.config).unwrap();
        assert_eq!(
            got, want,
            "{mode}: PyYAML reads something else than was meant"
        );
    }
}

#[test]
fn worker_and_bake_modes_differ_only_by_the_seal() {
    let loaded = spec::load(&example()).unwrap();
    let w = render::render(&loaded, &RenderOptions::new(Mode::Worker)).unwrap();
    let b = render::render(&loaded, &RenderOptions::new(Mode::Bake)).unwrap();
    let paths = |r: &render::Rendered| {
        r.config
            .write_files
            .iter()
            .map(|f| f.path.clone())
            .collect::<Vec<_>>()
    };
    assert!(
        !paths(&w).iter().any(|p| p.contains("seal")),
        "worker mode must not seal"
    );
    assert!(w.config.bootcmd.is_empty());
    assert!(!w.text.contains("cloud-init clean"));
    assert!(paths(&b).contains(&"/var/lib/image-builder/seal.sh".to_owned()));
    assert!(paths(&b).contains(&"/var/lib/image-builder/seal.py".to_owned()));
    assert!(b.text.contains("cloud-init clean --logs"));
    assert_eq!(b.config.bootcmd.len(), 1);
    assert_eq!(
        w.steps, b.steps,
        "both modes run the same provisioning steps"
    );
    // The apt drop-in is written before any step runs, and the sudoers file is only staged.
    assert_eq!(
        w.config.write_files[0].path,
        "/etc/apt/apt.conf.d/90image-builder-dpkg-lock"
    );
    assert!(
        w.config.write_files[0]
            .content
            .contains("DPkg::Lock::Timeout \"600\";")
    );
    assert!(!paths(&w).iter().any(|p| p.starts_with("/etc/sudoers.d")));
    // Nothing calls `cloud-init status --wait` from inside cloud-init.
    for r in [&w, &b] {
        assert!(!r.text.contains("status --wait"));
    }
}

#[test]
fn bake_with_an_agent_installs_and_enables_it() {
    let loaded = spec::load(&example()).unwrap();
    let mut opts = RenderOptions::new(Mode::Bake);
    opts.agent = Some(render::AgentBinary {
        source: provision::AgentSource::Url(
            "https://example.invalid/agent?X-Amz-Signature=abc".into(),
        ),
        sha256: "ab".repeat(32),
        config_toml: "[agent]\n".into(),
        unit: "[Unit]\nDescription=vm-agent\n".into(),
    });
    opts.report_url = Some("https://example.invalid/report?sig=1".into());
    let r = render::render(&loaded, &opts).unwrap();
    assert!(r.steps.contains(&"agent-install".to_owned()));
    assert!(r.notes.is_empty(), "{:?}", r.notes);
    assert!(r.text.contains("systemctl enable vm-agent.service"));
    assert!(r.text.contains(&"ab".repeat(32)));
    assert_schema_ok(&r.text, "bake user-data with the agent");
    assert_eq!(
        pyyaml_load(&r.text),
        serde_json::to_value(&r.config).unwrap()
    );
}

const KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFILb3Eb0C2YdLb7+iLlx5hwW9HgeO79hEiV9J8Wvqws x";

/// Values PyYAML would turn into bools, ints, floats, nulls or dates if left bare.
const TRICKY: &[&str] = &[
    "on",
    "no",
    "yes",
    "off",
    "y",
    "n",
    "true",
    "False",
    "12:30",
    "1_000",
    "0x10",
    "0777",
    "2024-01-02",
    "~",
    "null",
    "1.5",
    ".inf",
    "190:20:30",
    "0b101",
    "<<",
    "=",
];

fn tricky_spec(v: &str, dir: &Path) -> std::path::PathBuf {
    // User/group names and hostnames are validated, so use the tricky values that are
    // also valid names there; strings everywhere else take every value.
    let name_ok = v
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && v.chars().next().is_some_and(|c| c.is_ascii_lowercase());
    let user = if name_ok {
        v.to_owned()
    } else {
        "builder".to_owned()
    };
    let host_ok = v.chars().all(|c| c.is_ascii_alphanumeric()) && !v.is_empty();
    let host = if host_ok {
        v.to_owned()
    } else {
        "host".to_owned()
    };
    let pkg_ok = v.len() >= 2
        && v.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    let q = |s: &str| serde_json::to_string(s).unwrap(); // JSON strings are valid YAML
    let text = format!(
        r#"name: tricky
description: {d}
base: {{ qemu: bookworm }}
hostname: {host}
build_user:
  name: {user}
  groups: [{user}]
  ssh_authorized_keys: [{key}]
apt:
  packages: [{pkg}, "git={pv}"]
files:
  - path: {path}
    content: {c}
  - path: /etc/tricky-multiline
    content: {cm}
commands:
  - {c}
  - name: {c}
    run: {ce}
snapshot:
  name: {snap}
"#,
        d = q(v),
        host = q(&host),
        user = q(&user),
        key = q(KEY),
        pkg = q(if pkg_ok { v } else { "curl" }),
        pv = if v
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "+-.:~_".contains(c))
        {
            v
        } else {
            "1.0"
        },
        path = q(&format!("/etc/tricky/{}", v.replace('/', "_"))),
        c = q(v),
        ce = q(&format!("echo {v}")),
        cm = q(&format!("{v}\n{v}\n")),
        snap = q(&format!("{{name}}-{}", v.replace(['{', '}'], "")))
    );
    let p = dir.join(format!(
        "tricky-{}.yaml",
        TRICKY.iter().position(|t| *t == v).unwrap()
    ));
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn tricky_values_survive_pyyaml_in_every_string_position() {
    require_pyyaml();
    let dir = tempfile::tempdir().unwrap();
    for v in TRICKY {
        let path = tricky_spec(v, dir.path());
        let loaded = spec::load(&path).unwrap_or_else(|e| panic!("{v:?}: {e}"));
        for mode in [Mode::Worker, Mode::Bake] {
            let r = render::render(&loaded, &RenderOptions::new(mode))
                .unwrap_or_else(|e| panic!("{v:?}: {e}"));
            let got = pyyaml_load(&r.text);
            let want = serde_json::to_value(&r.config).unwrap();
            assert_eq!(
                got, want,
                "value {v:?} in {mode} mode changed type or text under PyYAML"
            );
            // Spot-check the positions by hand, too.
            let files = got["write_files"].as_array().unwrap();
            let f = files
                .iter()
                .find(|f| f["path"] == Value::String(format!("/etc/tricky/{v}")))
                .unwrap();
            assert_eq!(
                f["content"],
                Value::String((*v).to_owned()),
                "file content {v:?}"
            );
            let contents: Vec<&str> = files.iter().filter_map(|f| f["content"].as_str()).collect();
            assert!(
                contents
                    .iter()
                    .any(|c| c.ends_with(&format!("set -eu\n{v}\n"))),
                "command {v:?}"
            );
            assert!(
                contents
                    .iter()
                    .any(|c| c.ends_with(&format!("set -eu\necho {v}\n"))),
                "named command {v:?}"
            );
            if v.chars().all(|c| c.is_ascii_lowercase()) && v.len() > 1 {
                assert_eq!(
                    got["users"][0]["name"],
                    Value::String((*v).to_owned()),
                    "user name {v:?}"
                );
                assert_eq!(
                    got["hostname"],
                    Value::String((*v).to_owned()),
                    "hostname {v:?}"
                );
            }
        }
    }
}

#[test]
fn tricky_values_pass_cloud_init_schema() {
    let dir = tempfile::tempdir().unwrap();
    // cloud-init schema takes ~1 s per run: check a representative subset in both modes.
    for v in ["on", "no", "12:30", "1_000", "0x10", "2024-01-02", "~"] {
        let loaded = spec::load(&tricky_spec(v, dir.path())).unwrap();
        for mode in [Mode::Worker, Mode::Bake] {
            let r = render::render(&loaded, &RenderOptions::new(mode)).unwrap();
            assert_schema_ok(&r.text, &format!("tricky value {v:?} ({mode})"));
        }
    }
}

#[test]
fn real_visudo_accepts_our_dropin_and_rejects_a_broken_one() {
    require_tool("visudo", "sudo");
    assert_eq!(
        validate::visudo(&provision::sudoers_content("builder")),
        CheckStatus::Passed
    );
    assert!(matches!(
        validate::visudo("builder ALL=(ALL NOPASSWD:ALL\n"),
        CheckStatus::Failed { .. }
    ));
}

#[test]
fn large_files_are_gzip_base64_encoded_and_decode_to_the_same_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let big: String = (0..4000)
        .map(|i| format!("line {i}: on no 12:30\n"))
        .collect();
    std::fs::write(dir.path().join("big.txt"), &big).unwrap();
    std::fs::write(
        dir.path().join("spec.yaml"),
        "name: big\nbase: {qemu: bookworm}\nbuild_user: {name: builder}\nfiles:\n  - {path: /etc/big.txt, source: big.txt}\n",
    )
    .unwrap();
    let loaded = spec::load(&dir.path().join("spec.yaml")).unwrap();
    let r = render::render(&loaded, &RenderOptions::new(Mode::Worker)).unwrap();
    let f = r
        .config
        .write_files
        .iter()
        .find(|f| f.path == "/etc/big.txt")
        .unwrap();
    assert_eq!(f.encoding, Some("gz+b64"));
    assert!(
        r.text.len() < big.len() / 4,
        "compression did not help: {} bytes",
        r.text.len()
    );
    // Decode the way cloud-init does (Python's base64 + gzip).
    let got = pyyaml_load(&r.text);
    let content = got["write_files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["path"] == "/etc/big.txt")
        .unwrap()["content"]
        .as_str()
        .unwrap()
        .to_owned();
    let out = std::process::Command::new("python3")
        .args(["-c", "import base64,gzip,sys;sys.stdout.write(gzip.decompress(base64.b64decode(sys.argv[1])).decode())", &content])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8(out.stdout).unwrap(), big);
    assert_schema_ok(&r.text, "gz+b64 file");
}
