//! `image-builder images import` against the simulator's `POST /v2/images` (which,
//! as DigitalOcean documents, sends HEAD and then GET to the URL): from a URL the
//! caller hosts, and through a Space (the real S3 test server), whose object is
//! deleted whatever the import's outcome. The client's create and its polls are
//! also checked against DigitalOcean's OpenAPI contract through Prism.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::artifact_support::{self, ACCESS_KEY, SECRET_KEY};
use crate::common::require_tool;
use do_sim::{Sim, SimConfig};

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

impl Env {
    async fn new() -> Env {
        let sim = Sim::start(SimConfig {
            token: Some(TOKEN.into()),
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
    fn space(&self) -> (artifact_support::S3Server, PathBuf) {
        let s3 = artifact_support::S3Server::start();
        let creds = self.dir.path().join("space.env");
        s3_test_server::write_file(
            &creds,
            format!("SPACES_ACCESS_KEY_ID={ACCESS_KEY}\nSPACES_SECRET_ACCESS_KEY={SECRET_KEY}\n")
                .as_bytes(),
            0o600,
        );
        (s3, creds)
    }

    /// A small disk: GPT (so a protective MBR), zstd-compressed qcow2 like a bake's.
    fn disk(&self) -> PathBuf {
        require_tool("qemu-img", "qemu-utils");
        require_tool("sgdisk", "gdisk");
        let raw = self.dir.path().join("disk.raw");
        std::fs::File::create(&raw)
            .unwrap()
            .set_len(64 << 20)
            .unwrap();
        let ok = std::process::Command::new("sgdisk")
            .args(["--clear", "--new=1:2048:0"])
            .arg(&raw)
            .output()
            .unwrap();
        assert!(ok.status.success(), "{ok:?}");
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
    async fn import(&self, args: &[&str]) -> std::process::Output {
        tokio::process::Command::new(BIN)
            .args(["images", "import"])
            .args(args)
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
            .env("IMAGE_BUILDER_LOG", "warn")
            .output()
            .await
            .unwrap()
    }

    fn image(&self, id: u64) -> serde_json::Value {
        self.sim.state()["images"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["id"] == id)
            .cloned()
            .unwrap_or_else(|| panic!("no image {id} in {}", self.sim.state()))
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
    let image = env.image(report["image_id"].as_u64().unwrap());
    assert_eq!(image["name"], "golden-url");
    assert_eq!(image["tags"], serde_json::json!(["golden"]));
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

/// Through a Space: the disk is converted to a zlib qcow2 (any importer reads it; a
/// bake's zstd clusters need QEMU 5.1), uploaded under `imports/`, and the plain URL
/// of the object goes to DigitalOcean. The S3 test server serves nothing unsigned
/// (a real Space serves the public-read object), so here the import fails at HEAD,
/// and the object must be gone anyway: it would be public.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disk_goes_through_the_space_and_its_upload_never_outlives_the_import() {
    let env = Env::new().await;
    let (s3, creds) = env.space();
    let disk = env.disk();
    let endpoint = format!("http://127.0.0.1:{}", s3.port);
    let space = |keep: bool| {
        let mut a = vec![
            disk.display().to_string(),
            "--name".into(),
            "golden-space".into(),
            "--region".into(),
            "nyc3".into(),
            "--space-endpoint".into(),
            endpoint.clone(),
            "--space-bucket".into(),
            s3_test_server::BUCKET.into(),
            "--space-path-style".into(),
            "--space-credentials-file".into(),
            creds.display().to_string(),
        ];
        if keep {
            a.push("--keep-upload".into());
        }
        a
    };
    let imports = s3.data_dir().join(s3_test_server::BUCKET).join("imports");
    let objects = || -> Vec<PathBuf> {
        std::fs::read_dir(&imports)
            .map(|d| d.map(|e| e.unwrap().path()).collect())
            .unwrap_or_default()
    };

    // Kept: the object is what DigitalOcean would fetch.
    let args = space(true);
    let out = env
        .import(&args.iter().map(String::as_str).collect::<Vec<_>>())
        .await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("HEAD with 403"), "{stderr}");
    let kept = objects();
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
    let args = space(false);
    let out = env
        .import(&args.iter().map(String::as_str).collect::<Vec<_>>())
        .await;
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        objects(),
        Vec::<PathBuf>::new(),
        "the public upload is left"
    );
    assert_eq!(env.sim.count("POST /v2/images"), 2);
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
    let (s3, creds) = env.space();
    let bare = env.dir.path().join("bare.qcow2");
    let ok = std::process::Command::new(require_tool("qemu-img", "qemu-utils"))
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&bare)
        .arg("64M")
        .output()
        .unwrap();
    assert!(ok.status.success(), "{ok:?}");
    let endpoint = format!("http://127.0.0.1:{}", s3.port);
    let out = env
        .import(&[
            bare.to_str().unwrap(),
            "--name",
            "golden-bare",
            "--region",
            "nyc3",
            "--space-endpoint",
            &endpoint,
            "--space-bucket",
            s3_test_server::BUCKET,
            "--space-path-style",
            "--space-credentials-file",
            creds.to_str().unwrap(),
        ])
        .await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(65), "bad input: {stderr}");
    assert!(stderr.contains("not a whole disk"), "{stderr}");
    assert_eq!(env.sim.count("POST /v2/images"), 0);
    assert!(
        !s3.data_dir()
            .join(s3_test_server::BUCKET)
            .join("imports")
            .exists(),
        "nothing is uploaded"
    );
}
