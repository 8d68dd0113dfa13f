//! `image-builder images import` against the simulator's `POST /v2/images` (which,
//! as DigitalOcean documents, sends HEAD and then GET to the URL): from a URL the
//! caller hosts, and through a Space (the real S3 test server), whose object is
//! deleted whatever the import's outcome, Ctrl-C included. The Space's public-read
//! side is an anonymous s3s-fs over the same data (`--space-public-url`). The
//! client's create and its polls are also checked against DigitalOcean's OpenAPI
//! contract through Prism.

#![allow(clippy::unwrap_used)]

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::artifact_support::{self, ACCESS_KEY, BUCKET, SECRET_KEY};
use crate::common::require_tool;
use do_sim::{Fault, FaultRule, Sim, SimConfig};

const TOKEN: &str = "dop_v1_import_test_token";
const BIN: &str = env!("CARGO_BIN_EXE_image-builder");

/// A one-file HTTP server on 127.0.0.1 that records the methods it was asked, in order.
struct ImageServer {
    port: u16,
    seen: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for ImageServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl ImageServer {
    /// Serve `file` at `/disk.qcow2`; HEAD is answered with `head_status`.
    async fn start(file: PathBuf, head_status: u16) -> ImageServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut sock, _)) = listener.accept().await {
                let mut buf = vec![0u8; 4096];
                let n = sock.read(&mut buf).await.unwrap_or(0);
                let req = String::from_utf8_lossy(&buf[..n]).into_owned();
                let line = req.lines().next().unwrap_or_default().to_owned();
                log.lock().unwrap().push(line.clone());
                let body = tokio::fs::read(&file).await.unwrap();
                let head = |status: u16| {
                    format!(
                        "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                        if status == 200 { body.len() } else { 0 }
                    )
                };
                if line.starts_with("HEAD /disk.qcow2 ") {
                    let _ = sock.write_all(head(head_status).as_bytes()).await;
                } else if line.starts_with("GET /disk.qcow2 ") {
                    let _ = sock.write_all(head(200).as_bytes()).await;
                    let _ = sock.write_all(&body).await;
                } else {
                    let _ = sock.write_all(head(404).as_bytes()).await;
                }
                let _ = sock.shutdown().await;
            }
        });
        ImageServer { port, seen, task }
    }

    fn seen(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }
}

struct Env {
    sim: Sim,
    dir: tempfile::TempDir,
    token_file: PathBuf,
}

/// A Space: the real S3 server and a 0600 credentials file for it.
struct Space {
    s3: artifact_support::S3Server,
    creds: PathBuf,
}

impl Space {
    /// The arguments of an import of `disk` as `name` (region nyc3) through this Space.
    fn args(&self, disk: &Path, name: &str) -> Vec<String> {
        [
            disk.to_str().unwrap(),
            "--name",
            name,
            "--region",
            "nyc3",
            "--space-endpoint",
            &self.s3.endpoint(),
            "--space-bucket",
            BUCKET,
            "--space-path-style",
            "--space-credentials-file",
            self.creds.to_str().unwrap(),
        ]
        .map(String::from)
        .to_vec()
    }

    /// The objects under `imports/`.
    fn uploads(&self) -> Vec<PathBuf> {
        std::fs::read_dir(self.s3.data_dir().join(BUCKET).join("imports"))
            .map(|d| d.map(|e| e.unwrap().path()).collect())
            .unwrap_or_default()
    }

    /// The upload is gone: it was public.
    fn assert_no_upload(&self) {
        assert_eq!(
            self.uploads(),
            Vec::<PathBuf>::new(),
            "the public upload is left"
        );
    }
}

impl Env {
    async fn new() -> Env {
        Env::with_faults(Vec::new()).await
    }

    async fn with_faults(faults: Vec<FaultRule>) -> Env {
        let sim = Sim::start(SimConfig {
            token: Some(TOKEN.into()),
            faults,
            ..SimConfig::default()
        })
        .await
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let token_file = dir.path().join("token");
        s3_test_server::write_file(&token_file, TOKEN.as_bytes(), 0o600);
        Env {
            sim,
            dir,
            token_file,
        }
    }

    /// A real S3 server on 127.0.0.1 and a 0600 credentials file for it.
    fn space(&self) -> Space {
        let s3 = artifact_support::S3Server::start();
        let creds = self.dir.path().join("space.env");
        s3_test_server::write_file(
            &creds,
            format!("SPACES_ACCESS_KEY_ID={ACCESS_KEY}\nSPACES_SECRET_ACCESS_KEY={SECRET_KEY}\n")
                .as_bytes(),
            0o600,
        );
        Space { s3, creds }
    }

    /// A small disk: GPT (so a protective MBR), zstd-compressed qcow2 like a bake's.
    fn disk(&self) -> PathBuf {
        self.disk_with_noise(0)
    }

    /// The same, 64 MiB bigger, with `noise` random (incompressible) bytes in its
    /// partition.
    fn disk_with_noise(&self, noise: u64) -> PathBuf {
        require_tool("qemu-img", "qemu-utils");
        require_tool("sgdisk", "gdisk");
        let raw = self.dir.path().join("disk.raw");
        let file = std::fs::File::create(&raw).unwrap();
        file.set_len((64 << 20) + noise).unwrap();
        let ok = std::process::Command::new("sgdisk")
            .args(["--clear", "--new=1:2048:0"])
            .arg(&raw)
            .output()
            .unwrap();
        assert!(ok.status.success(), "{ok:?}");
        if noise > 0 {
            use rand::RngCore as _;
            use std::os::unix::fs::FileExt as _;
            let mut bytes = vec![0u8; usize::try_from(noise).unwrap()];
            rand::rng().fill_bytes(&mut bytes);
            file.write_all_at(&bytes, 1 << 20).unwrap();
        }
        let qcow = self.dir.path().join("golden.qcow2");
        let ok = std::process::Command::new("qemu-img")
            .args([
                "convert",
                "-O",
                "qcow2",
                "-c",
                "-o",
                "compression_type=zstd",
            ])
            .arg(&raw)
            .arg(&qcow)
            .output()
            .unwrap();
        assert!(ok.status.success(), "{ok:?}");
        qcow
    }

    /// Run `image-builder images import ARGS` against the simulator.
    async fn import(
        &self,
        args: impl IntoIterator<Item = impl AsRef<OsStr>>,
    ) -> std::process::Output {
        self.command(args).output().await.unwrap()
    }

    /// `image-builder images import ARGS --yes --out DIR/out` against the simulator, to
    /// be run.
    fn command(
        &self,
        args: impl IntoIterator<Item = impl AsRef<OsStr>>,
    ) -> tokio::process::Command {
        let mut cmd = self.unconfirmed(args);
        cmd.arg("--yes");
        cmd
    }

    /// The same without `--yes`.
    fn unconfirmed(
        &self,
        args: impl IntoIterator<Item = impl AsRef<OsStr>>,
    ) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new(BIN);
        cmd.args(["images", "import"])
            .args(args)
            .arg("--out")
            .arg(self.dir.path().join("out"))
            .stdin(std::process::Stdio::null())
            .arg("--api-url")
            .arg(self.sim.api_url())
            .arg("--token-file")
            .arg(&self.token_file)
            .args([
                "--api-backoff",
                "20ms",
                "--poll-interval",
                "50ms",
                "--timeout",
                "2m",
            ])
            .env("IMAGE_BUILDER_LOG", "warn");
        cmd
    }

    /// The image as the simulator shows it (`GET /v2/images/{id}`).
    async fn image(&self, id: u64) -> serde_json::Value {
        let got: serde_json::Value = reqwest::Client::new()
            .get(format!("{}/v2/images/{id}", self.sim.api_url()))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        got["image"].clone()
    }
}

fn json(out: &std::process::Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "images import failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_at_a_url_is_fetched_head_first_and_becomes_available() {
    let env = Env::new().await;
    let server = ImageServer::start(env.disk(), 200).await;
    let url = format!("http://127.0.0.1:{}/disk.qcow2", server.port);
    let out = env
        .import(&[
            "--url",
            &url,
            "--name",
            "golden-url",
            "--region",
            "nyc3",
            "--tag",
            "golden",
            "--json",
        ])
        .await;
    let report = json(&out);
    assert_eq!(report["status"], "available");
    assert_eq!(report["regions"], serde_json::json!(["nyc3"]));
    assert_eq!(report["url"], url);
    assert!(report["uploaded"].is_null(), "nothing uploaded with --url");
    let methods: Vec<String> = server
        .seen()
        .iter()
        .map(|l| l.split(' ').next().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(methods, ["HEAD", "GET"], "{:?}", server.seen());
    let image = env.image(report["image_id"].as_u64().unwrap()).await;
    assert_eq!(image["name"], "golden-url");
    assert_eq!(
        image["tags"],
        serde_json::json!(["image-builder", "golden"])
    );
    assert_eq!(env.sim.count("POST /v2/images"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_url_that_refuses_head_fails_the_import_with_the_reason() {
    let env = Env::new().await;
    let server = ImageServer::start(env.disk(), 405).await;
    let url = format!("http://127.0.0.1:{}/disk.qcow2", server.port);
    let out = env
        .import(&["--url", &url, "--name", "golden-nohead", "--region", "nyc3"])
        .await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("did not import custom image") && stderr.contains("HEAD"),
        "{stderr}"
    );
    assert_eq!(server.seen().len(), 1, "no GET after a refused HEAD");
}

/// Through a Space end to end: the disk is converted to a zlib qcow2 (any importer
/// reads it; a bake's zstd clusters need QEMU 5.1) and uploaded, signed, under
/// `imports/`; DigitalOcean fetches it unsigned at `--space-public-url`, here an
/// anonymous s3s-fs over the same data (the public-read side of a real Space) behind
/// a recording proxy. The image becomes available and the upload is deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disk_goes_through_the_space_and_is_fetched_unsigned_at_the_public_url() {
    let env = Env::new().await;
    let space = env.space();
    let reader = space.s3.anonymous_reader();
    let public = artifact_support::Proxy::start(reader.port);
    let base = format!("http://127.0.0.1:{}/{BUCKET}", public.port);
    let mut args = space.args(&env.disk(), "golden-space");
    args.extend(
        [
            "--space-public-url",
            &base,
            "--tag",
            "golden",
            "--description",
            "a golden disk",
            "--json",
        ]
        .map(String::from),
    );
    let report = json(&env.import(&args).await);
    assert_eq!(report["status"], "available");
    assert_eq!(report["regions"], serde_json::json!(["nyc3"]));
    let object = report["uploaded"]["object"].as_str().unwrap();
    let key = object.strip_prefix(&format!("s3://{BUCKET}/")).unwrap();
    assert!(
        key.starts_with("imports/golden-space-") && key.ends_with(".qcow2"),
        "{key}"
    );
    assert_eq!(report["url"], format!("{base}/{key}"));
    assert!(report["uploaded"]["size"].as_u64().unwrap() > 0, "{report}");
    assert_eq!(report["uploaded"]["deleted"], true);

    let seen = public.seen();
    let target = format!("/{BUCKET}/{key}");
    let fetched: Vec<(&str, &str)> = seen
        .iter()
        .map(|r| (r.method.as_str(), r.target.as_str()))
        .collect();
    assert_eq!(fetched, [("HEAD", &*target), ("GET", &*target)]);
    assert!(
        seen.iter().all(|r| r.header("authorization").is_none()),
        "DigitalOcean's fetch is unsigned: {seen:?}"
    );
    space.assert_no_upload();

    let image = env.image(report["image_id"].as_u64().unwrap()).await;
    assert_eq!(image["name"], "golden-space");
    assert_eq!(image["status"], "available");
    assert_eq!(image["regions"], serde_json::json!(["nyc3"]));
    assert_eq!(
        image["tags"],
        serde_json::json!(["image-builder", "golden"])
    );
    assert_eq!(image["distribution"], "Debian");
    assert_eq!(image["description"], "a golden disk");
    assert_eq!(env.sim.count("POST /v2/images"), 1);

    // The same Packer-compatible manifest a DigitalOcean bake writes.
    let path = env.dir.path().join("out/manifest.json");
    assert_eq!(report["manifest"], path.display().to_string());
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).expect("manifest.json")).unwrap();
    let build = &manifest["builds"][0];
    assert_eq!(build["builder_type"], "image-builder.digitalocean");
    assert_eq!(build["name"], "golden-space");
    assert_eq!(
        build["artifact_id"],
        format!("nyc3:{}", report["image_id"].as_u64().unwrap())
    );
    assert_eq!(build["custom_data"]["imported_from"], report["url"]);
    assert_eq!(build["packer_run_uuid"], manifest["last_run_uuid"]);
    let disk = env.dir.path().join("golden.qcow2");
    assert_eq!(build["files"][0]["name"], disk.display().to_string());
}

/// A disk whose importable qcow2 is 64 MiB or more goes up in parts, as `artifact
/// publish` sends big files (and so past the 5 GiB of one PUT): every part, then the
/// completion, and DigitalOcean fetches the whole object. A part the Space never takes
/// aborts the upload (no parts left to bill), and nothing is imported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_big_disk_goes_up_in_parts_and_a_lost_part_aborts_the_upload() {
    let env = Env::new().await;
    let space = env.space();
    let upload = artifact_support::Proxy::start(space.s3.port);
    let reader = space.s3.anonymous_reader();
    let public = artifact_support::Proxy::start(reader.port);
    let base = format!("http://127.0.0.1:{}/{BUCKET}", public.port);
    let disk = env.disk_with_noise(72 << 20);
    let args = |name: &str| {
        let mut args = space.args(&disk, name);
        let at = args.iter().position(|a| a == "--space-endpoint").unwrap() + 1;
        args[at] = format!("http://127.0.0.1:{}", upload.port);
        args.extend(["--space-public-url", &base, "--json"].map(String::from));
        args
    };

    let report = json(&env.import(args("golden-big")).await);
    assert_eq!(report["status"], "available");
    let size = report["uploaded"]["size"].as_u64().unwrap();
    assert!(size >= 64 << 20, "{report}");
    let object = report["uploaded"]["object"].as_str().unwrap();
    let path = format!("/{}", object.strip_prefix("s3://").unwrap());
    let seen = upload.seen();
    let on_object: Vec<(&str, &str)> = seen
        .iter()
        .filter(|r| r.target.starts_with(&path))
        .map(|r| (r.method.as_str(), &r.target[path.len()..]))
        .collect();
    let created = on_object
        .iter()
        .filter(|(m, q)| *m == "POST" && q.contains("uploads"))
        .count();
    let completed = on_object
        .iter()
        .filter(|(m, q)| *m == "POST" && q.contains("uploadId="))
        .count();
    assert_eq!((created, completed), (1, 1), "{on_object:?}");
    let mut parts: Vec<u64> = on_object
        .iter()
        .filter(|(m, _)| *m == "PUT")
        .map(|(_, q)| {
            let n = q.split("partNumber=").nth(1).expect("a part");
            n.split('&').next().unwrap().parse().unwrap()
        })
        .collect();
    parts.sort_unstable();
    let part_size = artifact_store::publish::PublishOptions::default().part_size;
    assert_eq!(
        parts,
        (1..=size.div_ceil(part_size)).collect::<Vec<_>>(),
        "{on_object:?}"
    );
    let methods: Vec<String> = public.seen().into_iter().map(|r| r.method).collect();
    assert_eq!(methods, ["HEAD", "GET"]);
    space.assert_no_upload();

    // The Space never answers part 2: the upload is aborted, nothing is imported.
    upload.fail("PUT", "partNumber=2");
    let out = env.import(args("golden-lost")).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    // The Space could not be reached for that part (README "Exit codes": 69).
    assert_eq!(out.status.code(), Some(69), "{stderr}");
    assert!(stderr.contains("UploadPart"), "{stderr}");
    let aborted = upload
        .seen()
        .iter()
        .filter(|r| r.method == "DELETE" && r.target.contains("uploadId="))
        .count();
    assert_eq!(aborted, 1, "the multipart upload is aborted");
    space.assert_no_upload();
    assert_eq!(env.sim.count("POST /v2/images"), 1, "only the first import");
}

/// Off a terminal without --yes: the plan (image, tags, what is uploaded, the billing)
/// is shown and nothing is converted, uploaded or created.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_yes_off_a_terminal_nothing_is_uploaded_or_created() {
    let env = Env::new().await;
    let space = env.space();
    let out = env
        .unconfirmed(space.args(&env.disk(), "golden-unconfirmed"))
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("pass --yes"), "{stderr}");
    for shown in [
        "region nyc3",
        "golden-unconfirmed",
        "tags image-builder",
        "billed per GB-month",
        "public-read",
    ] {
        assert!(stderr.contains(shown), "{shown} not shown:\n{stderr}");
    }
    space.assert_no_upload();
    assert_eq!(env.sim.count("POST /v2/images"), 0);
    assert!(!env.dir.path().join("out/manifest.json").exists());
}

/// At the Space endpoint (the default URL) the S3 test server serves nothing
/// unsigned, so the import fails at HEAD: the upload is the qcow2 DigitalOcean
/// would fetch (kept with `--keep-upload`), and without that flag it is gone
/// although the import failed: it would be public.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_import_leaves_no_upload_unless_it_is_kept() {
    let env = Env::new().await;
    let space = env.space();
    let args = space.args(&env.disk(), "golden-space");

    // Kept: the object is what DigitalOcean would fetch.
    let out = env
        .import(args.iter().chain(&["--keep-upload".into()]))
        .await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("HEAD with 403"), "{stderr}");
    let kept = space.uploads();
    assert_eq!(kept.len(), 1, "{kept:?}");
    let name = kept[0].file_name().unwrap().to_string_lossy().into_owned();
    assert!(
        name.starts_with("golden-space-") && name.ends_with(".qcow2"),
        "{name}"
    );
    let info = qemu_img_info(&kept[0]);
    assert_eq!(info["format"], "qcow2");
    assert_eq!(info["virtual-size"], 64 << 20);
    assert_eq!(
        info["format-specific"]["data"]["compression-type"], "zlib",
        "{info}"
    );
    assert_eq!(info["format-specific"]["data"]["compat"], "1.1", "{info}");
    std::fs::remove_file(&kept[0]).unwrap();

    // Not kept: deleted although the import failed.
    let out = env.import(&args).await;
    assert_eq!(out.status.code(), Some(1));
    space.assert_no_upload();
    assert_eq!(env.sim.count("POST /v2/images"), 2);
}

/// Ctrl-C while the import waits for the image: the simulator holds the answer to
/// the first status poll, so the signal provably lands in the wait. The import
/// deletes its upload and fails as an interrupted bake does (exit 1, README.md
/// "Exit codes"), naming the image it leaves with DigitalOcean.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_during_the_wait_deletes_the_upload_and_fails_as_interrupted() {
    const GATE: &str = "status wait";
    let env = Env::with_faults(vec![FaultRule {
        route: "GET /v2/images/{id}".into(),
        nth: 1,
        times: 1,
        fault: Fault::Hold { gate: GATE.into() },
    }])
    .await;
    let space = env.space();
    let child = spawn(&mut env.command(space.args(&env.disk(), "golden-ctrl-c")));
    tokio::time::timeout(Duration::from_secs(120), env.sim.wait_held(GATE, 1))
        .await
        .expect("the import never polled the image");
    assert_eq!(space.uploads().len(), 1, "uploaded before the wait");
    // The held poll is never answered while the import runs: it must act on the
    // signal from inside the wait.
    let stderr = interrupt(child, false).await;
    env.sim.release(GATE);
    let id = env.sim.state()["images"].as_array().unwrap()[0]["id"].clone();
    assert!(
        stderr.contains(&format!("custom image {id} stays")),
        "{stderr}"
    );
    space.assert_no_upload();
    assert_eq!(env.sim.count("POST /v2/images"), 1);
}

/// Ctrl-C at a terminal during the conversion reaches the whole foreground process
/// group, qemu-img too: the import fails as interrupted, not as a failed qemu-img, and
/// nothing is uploaded or created. A `qemu-img` on PATH stands in for the conversion
/// (the real one answers the rest): it opens a FIFO when it starts converting, which
/// is the test's cue, then waits to be stopped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_during_the_conversion_fails_as_interrupted_before_anything_is_uploaded() {
    let env = Env::new().await;
    let space = env.space();
    let disk = env.disk();
    let real = require_tool("qemu-img", "qemu-utils");
    let converting = env.dir.path().join("converting");
    nix::unistd::mkfifo(&converting, nix::sys::stat::Mode::S_IRWXU).unwrap();
    let bin = env.dir.path().join("bin");
    s3_test_server::write_file(
        &bin.join("qemu-img"),
        format!(
            "#!/bin/sh\nif [ \"$1\" = convert ]; then echo converting > '{}'; exec sleep 600; fi\nexec '{}' \"$@\"\n",
            converting.display(),
            real.display()
        )
        .as_bytes(),
        0o755,
    );
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let child = spawn(
        env.command(space.args(&disk, "golden-converting"))
            .env("PATH", path)
            .process_group(0),
    );
    let cue = tokio::task::spawn_blocking(move || std::fs::read_to_string(converting));
    let cue = tokio::time::timeout(Duration::from_secs(120), cue)
        .await
        .expect("the import never started converting");
    assert_eq!(cue.unwrap().unwrap(), "converting\n");
    interrupt(child, true).await;
    assert!(
        !space.s3.data_dir().join(BUCKET).join("imports").exists(),
        "nothing is uploaded"
    );
    assert_eq!(env.sim.count("POST /v2/images"), 0);
}

/// Start `cmd` with its output captured.
fn spawn(cmd: &mut tokio::process::Command) -> tokio::process::Child {
    cmd.stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// SIGINT to `child` (to its whole process group with `group`, as from a terminal),
/// then its end: it must fail as an interrupted bake does (exit 1, README.md "Exit
/// codes", `interrupted by SIGINT`). Its stderr.
async fn interrupt(child: tokio::process::Child, group: bool) -> String {
    use nix::sys::signal::{Signal, kill, killpg};
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id().unwrap()).unwrap());
    if group {
        killpg(pid, Signal::SIGINT)
    } else {
        kill(pid, Signal::SIGINT)
    }
    .unwrap();
    let out = child.wait_with_output().await.unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("error: interrupted by SIGINT"), "{stderr}");
    stderr
}

fn qemu_img_info(p: &Path) -> serde_json::Value {
    let out = std::process::Command::new("qemu-img")
        .args(["info", "--output=json"])
        .arg(p)
        .output()
        .unwrap();
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The client's custom-image calls (create, then polls until `available`), through
/// Prism's contract proxy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn custom_image_calls_conform_to_the_contract() {
    use do_api::{Client, CustomImageCreate, ImportState, Poll, RetryPolicy, Token};
    let env = Env::new().await;
    let server = ImageServer::start(env.disk(), 200).await;
    let prism = match do_sim::prism::Prism::proxy(&env.sim.api_url()).await {
        Ok(p) => p,
        Err(e) => panic!("contract check cannot run: {e}"),
    };
    let c = Client::new_with_base(
        prism.url(),
        Token::new(TOKEN, "test").unwrap(),
        RetryPolicy::default().with_max_retries(0),
    )
    .unwrap();
    let created = c
        .create_custom_image(&CustomImageCreate {
            name: "golden-prism".into(),
            url: format!("http://127.0.0.1:{}/disk.qcow2", server.port),
            region: "nyc3".into(),
            distribution: Some("Debian".into()),
            description: Some("a golden disk".into()),
            tags: vec!["golden".into()],
        })
        .await
        .unwrap();
    assert_eq!(created.status.as_deref(), Some("NEW"));
    let image = c
        .wait_custom_image(
            created.id,
            Poll::new(Duration::from_millis(50), Duration::from_secs(60)),
        )
        .await
        .unwrap();
    assert_eq!(ImportState::of(&image), ImportState::Available);
    let methods: Vec<String> = server.seen();
    assert_eq!(methods.len(), 2, "{methods:?}");
}

/// A disk without a partition table (a golden image from before whole disks) would not
/// boot as a droplet: refused before anything is converted, uploaded or created.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disk_without_a_partition_table_is_refused_before_anything_is_uploaded() {
    let env = Env::new().await;
    let space = env.space();
    let bare = env.dir.path().join("bare.qcow2");
    let ok = std::process::Command::new(require_tool("qemu-img", "qemu-utils"))
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&bare)
        .arg("64M")
        .output()
        .unwrap();
    assert!(ok.status.success(), "{ok:?}");
    let out = env.import(space.args(&bare, "golden-bare")).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(65), "bad input: {stderr}");
    assert!(stderr.contains("not a whole disk"), "{stderr}");
    assert_eq!(env.sim.count("POST /v2/images"), 0);
    assert!(
        !space.s3.data_dir().join(BUCKET).join("imports").exists(),
        "nothing is uploaded"
    );
}
