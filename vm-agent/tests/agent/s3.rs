//! A real S3 server for the artifact tests: s3s-fs (built by `.ci/setup-s3.sh` into
//! `~/.cache/image-builder/s3s-fs-<version>/`, or `$S3S_FS_BIN`) on 127.0.0.1, plus publishing
//! with image-builder's own publish code (the same code the host CLI runs).
#![allow(dead_code)]

use image_builder::artifact::publish::{PublishOptions, PublishReport, publish};
use image_builder::artifact::s3::{self, S3Credentials, S3Settings};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const BUCKET: &str = "builds-bucket";
const S3S_FS_VERSION: &str = "0.14.1";

/// The s3s-fs binary. Missing → the test fails, naming the setup script.
pub fn s3s_fs_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("S3S_FS_BIN") {
        let p = PathBuf::from(p);
        assert!(
            p.is_file(),
            "S3S_FS_BIN={} does not exist: run .ci/setup-s3.sh (builds s3s-fs {S3S_FS_VERSION})",
            p.display()
        );
        return p;
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .expect("HOME or XDG_CACHE_HOME must be set to find the s3s-fs cache");
    let p = cache
        .join("image-builder")
        .join(format!("s3s-fs-{S3S_FS_VERSION}"))
        .join("bin/s3s-fs");
    assert!(
        p.is_file(),
        "\n\n*** s3s-fs (the real S3 server the artifact tests need) is missing at {}.\n\
         *** Run `bash .ci/setup-s3.sh` first (or set S3S_FS_BIN). ***\n",
        p.display()
    );
    p
}

pub struct S3Server {
    /// Throwaway keys for this loopback-only server, unique per server (tests run in parallel
    /// and scan every process's argv for their own server's secret).
    pub access_key: String,
    pub secret_key: String,
    pub port: u16,
    pub data: tempfile::TempDir,
    child: Child,
}

impl S3Server {
    pub fn start() -> S3Server {
        let bin = s3s_fs_bin();
        let data = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(data.path().join(BUCKET)).expect("bucket dir");
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("ephemeral port")
            .port();
        let log = std::fs::File::create(data.path().join("server.log")).expect("log");
        let tag = data
            .path()
            .file_name()
            .map(|n| n.to_string_lossy().replace('.', ""))
            .unwrap_or_default();
        let access_key = format!("vmagent-key-{port}-{tag}");
        let secret_key = format!("vmagent-secret-{port}-{tag}");
        let child = Command::new(bin)
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--access-key", &access_key, "--secret-key", &secret_key])
            .arg(data.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn s3s-fs");
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "s3s-fs did not listen on {port}");
            std::thread::sleep(Duration::from_millis(20));
        }
        S3Server {
            access_key,
            secret_key,
            port,
            data,
            child,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn settings(&self) -> S3Settings {
        S3Settings {
            endpoint: self.endpoint(),
            region: "us-east-1".into(),
            bucket: BUCKET.into(),
            path_style: true,
        }
    }

    /// Where s3s-fs keeps `key` of the bucket (to corrupt it behind the server's back).
    pub fn object_path(&self, key: &str) -> PathBuf {
        self.data.path().join(BUCKET).join(key)
    }

    /// Publish `dir`'s entries as build `sha` with image-builder's publish (manifest last).
    pub fn publish(&self, sha: &str, paths: &[PathBuf]) -> PublishReport {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let client = s3::client(
                &self.settings(),
                &S3Credentials::new(&self.access_key, &self.secret_key),
                None,
            );
            publish(
                &client,
                BUCKET,
                sha,
                paths,
                &PublishOptions::default(),
                None,
            )
            .await
            .expect("publish")
        })
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Deterministic bytes.
pub fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// Write a file with a mode, creating parents.
pub fn write_file(path: &Path, data: &[u8], mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    if let Some(p) = path.parent() {
        std::fs::create_dir_all(p).expect("mkdir");
    }
    std::fs::write(path, data).expect("write");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}
