//! Shared helpers of the artifact tests: a real S3 server (s3s-fs, built by
//! `.ci/setup-s3.sh`) on 127.0.0.1, a transparent recording/fault-injecting TCP
//! proxy, and small file helpers.
#![allow(dead_code)]

use std::io::{Read as _, Write as _};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use image_builder::artifact::s3::{S3Credentials, S3Settings};

pub const ACCESS_KEY: &str = "test-access-key-id";
pub const SECRET_KEY: &str = "test-secret-access-key";
pub const BUCKET: &str = "artifacts";
pub const S3S_FS_VERSION: &str = "0.14.1";

/// The s3s-fs binary: `$S3S_FS_BIN`, else the cache of `.ci/setup-s3.sh`. Panics
/// loudly when missing (never skips).
pub fn s3s_fs_bin() -> PathBuf {
    if let Ok(p) = std::env::var("S3S_FS_BIN") {
        return PathBuf::from(p);
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
        "s3s-fs (the S3 server these tests run against) is missing at {}: run .ci/setup-s3.sh first",
        p.display()
    );
    p
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind an ephemeral port")
        .port()
}

/// A running s3s-fs with a temp data dir, killed on drop.
pub struct S3Server {
    pub port: u16,
    pub data: tempfile::TempDir,
    child: Option<Child>,
}

impl S3Server {
    pub fn start() -> Self {
        let data = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(data.path().join(BUCKET)).expect("create bucket dir");
        let mut s = Self {
            port: free_port(),
            data,
            child: None,
        };
        s.restart();
        s
    }

    /// (Re)start on the same port and data dir.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "server already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.data.path().join("server.log"))
            .expect("server log");
        // The test keys are throwaway values for a loopback-only server.
        let child = Command::new(s3s_fs_bin())
            .args(["--host", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY])
            .arg(self.data.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn s3s-fs");
        self.child = Some(child);
        wait_listening(self.port);
    }

    /// Kill the server (like a crash) and wait for it.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn settings(&self) -> S3Settings {
        settings_for(self.port)
    }

    /// Where s3s-fs stores `key` of the test bucket.
    pub fn object_path(&self, key: &str) -> PathBuf {
        self.data.path().join(BUCKET).join(key)
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.stop();
    }
}

pub fn settings_for(port: u16) -> S3Settings {
    S3Settings {
        endpoint: format!("http://127.0.0.1:{port}"),
        region: "us-east-1".into(),
        bucket: BUCKET.into(),
        path_style: true,
    }
}

pub fn creds() -> S3Credentials {
    S3Credentials::new(ACCESS_KEY, SECRET_KEY)
}

pub fn wait_listening(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "s3s-fs did not listen on {port}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One request head seen by the proxy.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub target: String,
    pub headers: Vec<(String, String)>,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Default)]
struct ProxyState {
    seen: Vec<Seen>,
    /// Drop the connection on requests with this method whose target contains this text.
    fail: Option<(String, String)>,
}

/// A transparent TCP proxy in front of a server: records every HTTP/1.1 request
/// head (bytes are forwarded unchanged, so signatures stay valid) and can cut
/// connections for chosen requests.
pub struct Proxy {
    pub port: u16,
    state: Arc<Mutex<ProxyState>>,
}

impl Proxy {
    pub fn start(upstream: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        let port = listener.local_addr().expect("addr").port();
        let state = Arc::new(Mutex::new(ProxyState::default()));
        let st = state.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(client) = conn else { continue };
                let st = st.clone();
                std::thread::spawn(move || {
                    let Ok(up) = TcpStream::connect(("127.0.0.1", upstream)) else {
                        let _ = client.shutdown(Shutdown::Both);
                        return;
                    };
                    let (c2, u2) = (
                        client.try_clone().expect("clone"),
                        up.try_clone().expect("clone"),
                    );
                    std::thread::spawn(move || copy_back(u2, c2));
                    pump_requests(client, up, &st);
                });
            }
        });
        Self { port, state }
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.state.lock().expect("lock").seen.clone()
    }

    pub fn fail(&self, method: &str, target_contains: &str) {
        self.state.lock().expect("lock").fail = Some((method.into(), target_contains.into()));
    }

    pub fn settings(&self) -> S3Settings {
        settings_for(self.port)
    }
}

fn copy_back(mut from: TcpStream, mut to: TcpStream) {
    let _ = std::io::copy(&mut from, &mut to);
    let _ = to.shutdown(Shutdown::Both);
    let _ = from.shutdown(Shutdown::Both);
}

fn pump_requests(mut client: TcpStream, mut up: TcpStream, st: &Mutex<ProxyState>) {
    let mut buf: Vec<u8> = Vec::new();
    let mut tmp = vec![0u8; 64 * 1024];
    loop {
        let end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            match client.read(&mut tmp) {
                Ok(0) | Err(_) => {
                    let _ = up.shutdown(Shutdown::Both);
                    return;
                }
                Ok(n) => buf.extend_from_slice(&tmp[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..end]).to_string();
        let mut lines = head.split("\r\n");
        let mut first = lines.next().unwrap_or_default().split(' ');
        let seen = Seen {
            method: first.next().unwrap_or_default().to_string(),
            target: first.next().unwrap_or_default().to_string(),
            headers: lines
                .filter_map(|l| l.split_once(':'))
                .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
                .collect(),
        };
        let chunked = seen
            .header("transfer-encoding")
            .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
        let len: u64 = seen
            .header("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let cut = {
            let mut s = st.lock().expect("lock");
            let cut = s
                .fail
                .as_ref()
                .is_some_and(|(m, t)| *m == seen.method && seen.target.contains(t.as_str()));
            s.seen.push(seen);
            cut
        };
        if cut {
            let _ = client.shutdown(Shutdown::Both);
            let _ = up.shutdown(Shutdown::Both);
            return;
        }
        if up.write_all(&buf[..end]).is_err() {
            return;
        }
        buf.drain(..end);
        if chunked {
            // Cannot frame further requests: forward the rest raw.
            let _ = up.write_all(&buf);
            let _ = std::io::copy(&mut client, &mut up);
            return;
        }
        let mut left = len;
        let take = (left as usize).min(buf.len());
        if up.write_all(&buf[..take]).is_err() {
            return;
        }
        buf.drain(..take);
        left -= take as u64;
        while left > 0 {
            match client.read(&mut tmp) {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    let body = n.min(left as usize);
                    if up.write_all(&tmp[..body]).is_err() {
                        return;
                    }
                    left -= body as u64;
                    buf.extend_from_slice(&tmp[body..n]);
                }
            }
        }
    }
}

/// Deterministic pseudo-random bytes (xorshift), so content differs per seed.
pub fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    v
}

pub fn write_file(path: &Path, data: &[u8], mode: u32) {
    use std::os::unix::fs::PermissionsExt as _;
    if let Some(p) = path.parent() {
        std::fs::create_dir_all(p).expect("mkdir");
    }
    std::fs::write(path, data).expect("write");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

pub fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(data))
}

/// Entries of a directory, sorted (names only).
pub fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Run the CLI binary with the store settings in the environment.
pub fn cli(endpoint: &str, secret: &str, args: &[&str], cwd: &Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_image-builder"))
        .arg("artifact")
        .args(args)
        .current_dir(cwd)
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .env("IMAGE_BUILDER_S3_ENDPOINT", endpoint)
        .env("IMAGE_BUILDER_S3_BUCKET", BUCKET)
        .env("IMAGE_BUILDER_S3_PATH_STYLE", "true")
        .env("SPACES_ACCESS_KEY_ID", ACCESS_KEY)
        .env("SPACES_SECRET_ACCESS_KEY", secret)
        .output()
        .expect("run image-builder")
}
