//! Shared helpers of the artifact tests: the real S3 server of `s3-test-server`
//! (s3s-fs, built by `.ci/setup-s3.sh`) on 127.0.0.1 with this suite's fixed
//! keys, a transparent recording/fault-injecting TCP proxy, the CLI runner and
//! small file helpers.
#![allow(dead_code, unused_imports)] // each test binary uses a different subset

use std::io::{Read as _, Write as _};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::ops::{Deref, DerefMut};
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Condvar, Mutex};

use artifact_store::s3::{S3Credentials, S3Settings};
pub use s3_test_server::{BUCKET, pseudo_random, write_file};

/// The keys of every server in these suites (throwaway, loopback only).
pub const ACCESS_KEY: &str = "test-access-key-id";
pub const SECRET_KEY: &str = "test-secret-access-key";

/// `s3_test_server::S3Server` started with [`ACCESS_KEY`]/[`SECRET_KEY`] (what
/// [`creds`] and the callers of [`cli`] sign with); derefs to it for `port`,
/// `stop`, `restart`, `object_path`, `endpoint`.
pub struct S3Server(s3_test_server::S3Server);

impl S3Server {
    pub fn start() -> Self {
        Self(s3_test_server::S3Server::start_with_keys(
            ACCESS_KEY, SECRET_KEY,
        ))
    }

    pub fn settings(&self) -> S3Settings {
        settings_for(self.port)
    }
}

impl Deref for S3Server {
    type Target = s3_test_server::S3Server;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl DerefMut for S3Server {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
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
    /// Client connections closed because the server could not be reached.
    refused: u64,
}

/// How many response bytes the proxy may still pass to clients (all
/// connections together); `None`: no limit. Responses past the budget wait.
#[derive(Default)]
struct Budget {
    left: Option<u64>,
    /// Connections waiting for budget now.
    waiting: u64,
    /// Times the held responses were cut off.
    cuts: u64,
}

#[derive(Default)]
struct ResponseGate {
    budget: Mutex<Budget>,
    changed: Condvar,
}

impl ResponseGate {
    /// Wait until some of `want` bytes may go on; returns how many, or `None`
    /// when the response was held and then cut off.
    fn admit(&self, want: usize) -> Option<usize> {
        let mut b = self.budget.lock().expect("lock");
        let cuts = b.cuts;
        loop {
            if b.cuts != cuts {
                return None;
            }
            match b.left {
                None => return Some(want),
                Some(left) if left > 0 => {
                    let n = want.min(usize::try_from(left).unwrap_or(usize::MAX));
                    b.left = Some(left - n as u64);
                    return Some(n);
                }
                Some(_) => {
                    b.waiting += 1;
                    self.changed.notify_all();
                    b = self.changed.wait(b).expect("lock");
                    b.waiting -= 1;
                }
            }
        }
    }
}

/// A transparent TCP proxy in front of a server: records every HTTP/1.1 request
/// head (bytes are forwarded unchanged, so signatures stay valid), can cut
/// connections for chosen requests, and can hold responses after a number of
/// bytes and then cut them off (so a download is provably unfinished when a
/// test acts, and provably broken off).
pub struct Proxy {
    pub port: u16,
    state: Arc<Mutex<ProxyState>>,
    gate: Arc<ResponseGate>,
}

impl Proxy {
    pub fn start(upstream: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        let port = listener.local_addr().expect("addr").port();
        let state = Arc::new(Mutex::new(ProxyState::default()));
        let gate = Arc::new(ResponseGate::default());
        let (st, gt) = (state.clone(), gate.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(client) = conn else { continue };
                let (st, gt) = (st.clone(), gt.clone());
                std::thread::spawn(move || {
                    let Ok(up) = TcpStream::connect(("127.0.0.1", upstream)) else {
                        st.lock().expect("lock").refused += 1;
                        let _ = client.shutdown(Shutdown::Both);
                        return;
                    };
                    let (c2, u2) = (
                        client.try_clone().expect("clone"),
                        up.try_clone().expect("clone"),
                    );
                    std::thread::spawn(move || copy_back(u2, c2, &gt));
                    pump_requests(client, up, &st);
                });
            }
        });
        Self { port, state, gate }
    }

    /// Pass at most `bytes` more response bytes (all connections together),
    /// then hold every response until [`Proxy::cut_held`].
    pub fn hold_after(&self, bytes: u64) {
        self.gate.budget.lock().expect("lock").left = Some(bytes);
        self.gate.changed.notify_all();
    }

    /// Whether a response is being held (the budget of [`Proxy::hold_after`] is spent).
    pub fn holding(&self) -> bool {
        self.gate.budget.lock().expect("lock").waiting > 0
    }

    /// Cut the held responses off where they are (their connections close, as
    /// if the server had died mid-send) and stop holding.
    pub fn cut_held(&self) {
        let mut b = self.gate.budget.lock().expect("lock");
        b.left = None;
        b.cuts += 1;
        self.gate.changed.notify_all();
    }

    /// Client connections closed because the server could not be reached.
    pub fn refused(&self) -> u64 {
        self.state.lock().expect("lock").refused
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

fn copy_back(mut from: TcpStream, mut to: TcpStream, gate: &ResponseGate) {
    let mut buf = vec![0u8; 64 * 1024];
    'copy: loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let mut sent = 0;
        while sent < n {
            let Some(go) = gate.admit(n - sent) else {
                break 'copy;
            };
            if to.write_all(&buf[sent..sent + go]).is_err() {
                break 'copy;
            }
            sent += go;
        }
    }
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
