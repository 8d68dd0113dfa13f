//! The exit-code table of README.md ("Exit codes"), row by row, through the real
//! `image-builder` binary: each case asserts the code and the message on stderr.
//!
//! 0 success · 1 the operation failed · 2 not confirmed · 64 usage · 65 bad input ·
//! 69 a required tool or service is missing.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use do_api::{Client, DropletCreate, ImageSpec, RetryPolicy, Token};
use do_sim::{Sim, SimConfig};

const TOKEN: &str = "dop_v1_exit_code_test_token";

const KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFILb3Eb0C2YdLb7+iLlx5hwW9HgeO79hEiV9J8Wvqws x";

/// One row: run `args` (with `env` on top of a clean environment) and expect `code`,
/// with every one of `stderr` in its stderr.
struct Case {
    name: &'static str,
    args: Vec<String>,
    env: Vec<(&'static str, String)>,
    code: i32,
    stderr: Vec<&'static str>,
    /// Must appear on stdout (help, the list of what would be deleted).
    stdout: Vec<&'static str>,
}

impl Case {
    fn new(name: &'static str, args: &[&str], code: i32, stderr: &[&'static str]) -> Self {
        Case {
            name,
            args: args.iter().map(|a| (*a).to_owned()).collect(),
            env: vec![],
            code,
            stderr: stderr.to_vec(),
            stdout: vec![],
        }
    }

    fn env(mut self, key: &'static str, value: impl Into<String>) -> Self {
        self.env.push((key, value.into()));
        self
    }

    fn stdout(mut self, needles: &[&'static str]) -> Self {
        self.stdout = needles.to_vec();
        self
    }
}

/// A directory with everything the cases read or write.
struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let f = Fixture { dir };
        std::fs::write(
            f.path("good.yaml"),
            format!(
                "name: t\nbase:\n  qemu: bookworm\nbuild_user:\n  name: builder\n  ssh_authorized_keys: [\"{KEY}\"]\n"
            ),
        )
        .unwrap();
        std::fs::write(
            f.path("bad.yaml"),
            "name: t\nbase:\n  qemu: bookworm\nbuild_user:\n  name: builder\n  sudo: ALL\n",
        )
        .unwrap();
        std::fs::write(f.path("token"), TOKEN).unwrap();
        std::fs::set_permissions(f.path("token"), std::fs::Permissions::from_mode(0o600)).unwrap();
        // PATH without any tool.
        std::fs::create_dir(f.path("no-tools")).unwrap();
        std::fs::create_dir(f.path("cache")).unwrap();
        f
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn arg(&self, name: &str) -> String {
        self.path(name).display().to_string()
    }

    fn run(&self, case: &Case) -> Output {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_image-builder"));
        cmd.args(&case.args)
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .env("IMAGE_BUILDER_LOG", "warn")
            .env("IMAGE_BUILDER_CACHE", self.path("cache"));
        for var in [
            "DIGITALOCEAN_TOKEN",
            "DIGITALOCEAN_ACCESS_TOKEN",
            "DIGITALOCEAN_API_URL",
            "IMAGE_BUILDER_S3_ENDPOINT",
            "IMAGE_BUILDER_S3_BUCKET",
            "IMAGE_BUILDER_S3_REGION",
            "IMAGE_BUILDER_S3_PATH_STYLE",
            "IMAGE_BUILDER_S3_CREDENTIALS_FILE",
            "SPACES_ACCESS_KEY_ID",
            "SPACES_SECRET_ACCESS_KEY",
            "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY",
        ] {
            cmd.env_remove(var);
        }
        for (k, v) in &case.env {
            cmd.env(k, v);
        }
        cmd.output().expect("run image-builder")
    }
}

/// A 127.0.0.1 port with nothing listening (bound, then released).
fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

fn check(f: &Fixture, case: &Case, failures: &mut Vec<String>) {
    let out = f.run(case);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    if out.status.code() != Some(case.code) {
        failures.push(format!(
            "{}: exit {:?}, expected {}\nstderr: {stderr}",
            case.name,
            out.status.code(),
            case.code
        ));
    }
    for needle in &case.stderr {
        if !stderr.contains(needle) {
            failures.push(format!("{}: stderr lacks {needle:?}: {stderr}", case.name));
        }
    }
    for needle in &case.stdout {
        if !stdout.contains(needle) {
            failures.push(format!("{}: stdout lacks {needle:?}: {stdout}", case.name));
        }
    }
    // Exactly one error report, and only on failure.
    let reports = stderr.lines().filter(|l| l.starts_with("error:")).count();
    let expected = usize::from(case.code != 0);
    if reports != expected {
        failures.push(format!(
            "{}: {reports} error reports on stderr, expected {expected}: {stderr}",
            case.name
        ));
    }
    if stderr.contains("panicked") {
        failures.push(format!("{}: panicked: {stderr}", case.name));
    }
}

#[test]
fn every_exit_code_through_the_real_binary() {
    let f = Fixture::new();
    // The DigitalOcean simulator, with a builder droplet that `reap` would destroy.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let sim = rt
        .block_on(Sim::start(SimConfig {
            token: Some(TOKEN.into()),
            ..SimConfig::default()
        }))
        .expect("simulator starts");
    let builder = rt.block_on(async {
        let client = Client::new_with_base(
            &sim.api_url(),
            Token::new(TOKEN, "test").unwrap(),
            RetryPolicy::no_retries(),
        )
        .unwrap();
        let mut req = DropletCreate::new(
            "ib-left-behind",
            "nyc3",
            "s-1vcpu-1gb",
            ImageSpec::Slug("debian-12-x64".into()),
        );
        req.tags = vec!["image-builder".into(), "image-builder-bake-0badcafe".into()];
        client.create_droplet(&req).await.unwrap().droplet.id
    });
    let conn = |args: &[&str]| -> Vec<String> {
        let mut a: Vec<String> = args.iter().map(|s| (*s).to_owned()).collect();
        a.extend([
            "--token-file".into(),
            f.arg("token"),
            "--api-backoff".into(),
            "1ms".into(),
        ]);
        a
    };
    let unreachable = format!("http://127.0.0.1:{}", closed_port());

    let cases = vec![
        // 0: success; --help and --version are answers, not errors.
        Case::new("render", &["render", "good.yaml", "-o", "out.yaml"], 0, &[]),
        Case::new("--help", &["--help"], 0, &[]).stdout(&["Usage: image-builder"]),
        Case::new("--version", &["--version"], 0, &[]).stdout(&["image-builder "]),
        // 1: the operation ran and failed.
        Case::new(
            "cannot write the output",
            &["render", "good.yaml", "-o", "good.yaml/out.yaml"],
            1,
            &["error: good.yaml/out.yaml: cannot write: "],
        ),
        Case::new(
            "no such local worker",
            &["stop-local", "nosuch"],
            1,
            &["error: no local worker named \"nosuch\""],
        ),
        // 2: a confirmation was needed, stdin is not a terminal, no --yes.
        Case {
            args: {
                let mut a = vec!["reap".to_owned()];
                a.extend(conn(&["--older-than", "0s", "--api-url", &sim.api_url()]));
                a
            },
            ..Case::new(
                "reap without --yes",
                &[],
                2,
                &["error: stdin is not a terminal: pass --yes to destroy the droplets listed above"],
            )
        }
        .stdout(&["builder droplet ", "ib-left-behind"]),
        // 64: usage.
        Case::new(
            "unknown flag",
            &["render", "good.yaml", "--bogus"],
            64,
            &["error: unexpected argument '--bogus' found", "Usage:"],
        ),
        Case::new(
            "--idle-timeout 0",
            &["run-local", "x.qcow2", "--idle-timeout", "0"],
            64,
            &[
                "error: invalid value '0' for '--idle-timeout <IDLE_TIMEOUT>'",
                "0 is not allowed (write \"never\"",
            ],
        )
        // Parsed by clap before anything runs: no QEMU needed to reach it.
        .env("PATH", f.arg("no-tools")),
        Case::new(
            "bad --idle-timeout",
            &["run-local", "x.qcow2", "--idle-timeout", "5 fortnights"],
            64,
            &[
                "error: invalid value '5 fortnights' for '--idle-timeout <IDLE_TIMEOUT>'",
                "not a duration",
            ],
        )
        .env("PATH", f.arg("no-tools")),
        Case::new(
            "--space-public-url not a URL",
            &[
                "images",
                "import",
                "x.qcow2",
                "--name",
                "golden",
                "--region",
                "nyc3",
                "--space-endpoint",
                "https://nyc3.digitaloceanspaces.com",
                "--space-bucket",
                "b",
                "--space-public-url",
                "b.nyc3.cdn.digitaloceanspaces.com",
            ],
            64,
            &[
                "error: invalid value 'b.nyc3.cdn.digitaloceanspaces.com' for '--space-public-url <BASE>'",
                "is not an http:// or https:// URL",
            ],
        ),
        Case::new(
            "no store endpoint",
            &["artifact", "ls"],
            64,
            &["error: no endpoint: pass --endpoint or set IMAGE_BUILDER_S3_ENDPOINT"],
        ),
        // 65: bad input.
        Case::new(
            "invalid spec",
            &["render", "bad.yaml"],
            65,
            &["error: bad.yaml:6:3: build_user.sudo: unknown field `sudo`"],
        ),
        Case::new(
            "invalid spec, validate",
            &["validate", "bad.yaml"],
            65,
            &["error: bad.yaml: invalid"],
        )
        .stdout(&["bad.yaml:6:3: build_user.sudo: unknown field `sudo`"]),
        // 69: a required tool or service is missing.
        Case::new(
            "no qemu",
            &["run-local", "x.qcow2"],
            69,
            &["error: `qemu-system-x86_64` not found: install the `qemu-system-x86` package"],
        )
        .env("PATH", f.arg("no-tools")),
        Case::new(
            "S3 unreachable",
            &[
                "artifact",
                "ls",
                "--endpoint",
                &unreachable,
                "--bucket",
                "b",
                "--path-style",
            ],
            69,
            &["error: ListObjectsV2 s3://b/builds/: store unreachable", "Connection refused"],
        )
        .env("SPACES_ACCESS_KEY_ID", "k")
        .env("SPACES_SECRET_ACCESS_KEY", "s"),
        Case {
            args: {
                let mut a = vec!["images".to_owned(), "ls".into()];
                a.extend(conn(&["--api-url", &unreachable]));
                a
            },
            ..Case::new(
                "DigitalOcean API unreachable",
                &[],
                69,
                &["error: listing images: DigitalOcean API GET /v2/images", "Connection refused"],
            )
        },
    ];

    let mut failures = Vec::new();
    for case in &cases {
        check(&f, case, &mut failures);
    }
    // The refused reap destroyed nothing.
    if sim.droplet_ids() != vec![builder] {
        failures.push(format!(
            "reap without --yes: droplets {:?}, expected [{builder}]",
            sim.droplet_ids()
        ));
    }
    // Every code of the table has a case.
    for code in [0, 1, 2, 64, 65, 69] {
        if !cases.iter().any(|c| c.code == code) {
            failures.push(format!("no case for exit code {code}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} problems:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(
        Path::new(&f.path("out.yaml")).is_file(),
        "render wrote out.yaml"
    );
}
