//! Test support: a real S3 server (s3s-fs, built once by `.ci/setup-s3.sh`) on
//! 127.0.0.1, shared by the artifact tests of image-builder, vm-agent and the
//! end-to-end test.
//!
//! - [`s3s_fs_bin`]: the server binary (`$S3S_FS_BIN`, else the cache of
//!   `.ci/setup-s3.sh`); panics naming the script when it is missing, so a test
//!   never skips silently.
//! - [`S3Server::start`]: s3s-fs on a free port with a temp data dir holding the
//!   bucket [`BUCKET`] and throwaway keys unique to this instance (tests scan
//!   `/proc/*/cmdline` for their own server's secret, and run in parallel).
//!   [`S3Server::start_with_keys`] takes fixed keys instead. The server is
//!   killed on drop; [`S3Server::stop`] / [`S3Server::restart`] crash and revive
//!   it on the same port and data for fault tests; [`S3Server::object_path`]
//!   is where s3s-fs keeps an object, to corrupt it behind the server's back.
//! - [`S3Server::anonymous_reader`]: a second s3s-fs, without keys, over the same
//!   data dir: the public-read side of a real Space (its stored objects readable
//!   without a signature), which a server with keys never serves.
//! - [`free_port`], [`wait_listening`], [`pseudo_random`], [`write_file`]:
//!   small helpers the artifact tests share.
//!
//! Addressing is path-style at [`S3Server::endpoint`]; s3s-fs accepts any
//! region in the signature. Conversion into image-builder's S3 settings stays
//! in the callers, so this crate depends on std and `tempfile` only.
//!
//! The keys are passed on s3s-fs's command line: they are throwaway values for a
//! loopback-only server, never real credentials. The server's stderr (and its
//! anonymous readers') is appended to `server.log` in its data dir.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// The s3s-fs version `.ci/setup-s3.sh` builds (and the cache directory is keyed by).
pub const S3S_FS_VERSION: &str = "0.14.1";

/// The bucket every server starts with (a directory in its data dir).
pub const BUCKET: &str = "artifacts";

/// How long a server may take to accept connections after it is spawned.
const LISTEN_TIMEOUT: Duration = Duration::from_secs(30);

/// The s3s-fs binary: `$S3S_FS_BIN`, else
/// `${XDG_CACHE_HOME:-$HOME/.cache}/image-builder/s3s-fs-<version>/bin/s3s-fs`
/// (where `.ci/setup-s3.sh` installs it). Panics, naming the script, when missing.
pub fn s3s_fs_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("S3S_FS_BIN") {
        let p = PathBuf::from(p);
        assert!(
            p.is_file(),
            "S3S_FS_BIN={} does not exist: run `bash .ci/setup-s3.sh` (builds s3s-fs {S3S_FS_VERSION})",
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
        "\n\n*** s3s-fs (the real S3 server these tests run against) is missing at {}.\n\
         *** Run `bash .ci/setup-s3.sh` first (or set S3S_FS_BIN). ***\n",
        p.display()
    );
    p
}

/// A free ephemeral port on 127.0.0.1 (bound, then released for the caller).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind an ephemeral port on 127.0.0.1")
        .port()
}

/// Block until something accepts connections on 127.0.0.1:`port`; panics after 30 s.
pub fn wait_listening(port: u16) {
    let deadline = Instant::now() + LISTEN_TIMEOUT;
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "nothing listens on 127.0.0.1:{port} after {LISTEN_TIMEOUT:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A running s3s-fs on 127.0.0.1 with its own temp data dir (or the one of the
/// server it reads for, [`S3Server::anonymous_reader`]); killed on drop, the data
/// dir removed with the last server over it.
pub struct S3Server {
    /// The port it listens on (kept across [`S3Server::restart`]).
    pub port: u16,
    /// Its access key id (empty: anonymous).
    pub access_key: String,
    /// Its secret access key (empty: anonymous).
    pub secret_key: String,
    data: Arc<tempfile::TempDir>,
    child: Option<Child>,
}

impl S3Server {
    /// Start a server with throwaway keys unique to this instance (they contain the
    /// port, this process's id, a counter and the data dir's random name).
    pub fn start() -> S3Server {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let data = data_dir();
        let port = free_port();
        let tag = data
            .path()
            .file_name()
            .map(|n| n.to_string_lossy().replace('.', ""))
            .unwrap_or_default();
        let id = format!(
            "{port}-{}-{}-{tag}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        S3Server::launch(
            data,
            port,
            format!("s3test-key-{id}"),
            format!("s3test-secret-{id}"),
        )
    }

    /// Start a server with the given keys (for suites whose helpers use constant keys).
    pub fn start_with_keys(access_key: &str, secret_key: &str) -> S3Server {
        S3Server::launch(
            data_dir(),
            free_port(),
            access_key.into(),
            secret_key.into(),
        )
    }

    /// Another s3s-fs on its own port over this server's data dir, without keys:
    /// it answers unsigned requests, so a test reads this server's objects as
    /// anyone reads a public-read object of a real Space. For reading only (it
    /// would also take unsigned writes).
    pub fn anonymous_reader(&self) -> S3Server {
        S3Server::launch(self.data.clone(), free_port(), String::new(), String::new())
    }

    fn launch(
        data: Arc<tempfile::TempDir>,
        port: u16,
        access_key: String,
        secret_key: String,
    ) -> Self {
        let mut s = S3Server {
            port,
            access_key,
            secret_key,
            data,
            child: None,
        };
        s.restart();
        s
    }

    /// (Re)start the server on the same port, data dir and keys; returns once it listens.
    /// Panics if it is already running.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "s3s-fs is already running");
        let log_path = self.data.path().join("server.log");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .unwrap_or_else(|e| panic!("open {}: {e}", log_path.display()));
        let mut cmd = Command::new(s3s_fs_bin());
        cmd.args(["--host", "127.0.0.1", "--port", &self.port.to_string()]);
        if !self.access_key.is_empty() {
            cmd.args(["--access-key", &self.access_key])
                .args(["--secret-key", &self.secret_key]);
        }
        let child = cmd
            .arg(self.data.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn s3s-fs");
        let child = self.child.insert(child);
        let deadline = Instant::now() + LISTEN_TIMEOUT;
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                panic!(
                    "s3s-fs exited ({status}) before listening on 127.0.0.1:{}:\n{}",
                    self.port,
                    std::fs::read_to_string(&log_path).unwrap_or_default()
                );
            }
            assert!(
                Instant::now() < deadline,
                "s3s-fs did not listen on 127.0.0.1:{} within {LISTEN_TIMEOUT:?} (log: {})",
                self.port,
                log_path.display()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kill the server (like a crash) and reap it. No-op when it is not running.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Its process id. Panics when it is stopped.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("s3s-fs is stopped").id()
    }

    /// `http://127.0.0.1:<port>` (path-style addressing).
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Its data dir: one directory per bucket, plus `server.log`.
    pub fn data_dir(&self) -> &Path {
        self.data.path()
    }

    /// The file in which s3s-fs keeps `key` of [`BUCKET`].
    pub fn object_path(&self, key: &str) -> PathBuf {
        self.data.path().join(BUCKET).join(key)
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.stop();
    }
}

fn data_dir() -> Arc<tempfile::TempDir> {
    let data = tempfile::tempdir().expect("create the s3s-fs data dir");
    std::fs::create_dir(data.path().join(BUCKET)).expect("create the bucket dir");
    Arc::new(data)
}

/// `len` deterministic pseudo-random bytes (xorshift64); different seeds give
/// different content.
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

/// Write `data` to `path` with permission bits `mode`, creating parent dirs.
pub fn write_file(path: &Path, data: &[u8], mode: u32) {
    use std::os::unix::fs::PermissionsExt as _;
    if let Some(p) = path.parent() {
        std::fs::create_dir_all(p).unwrap_or_else(|e| panic!("mkdir {}: {e}", p.display()));
    }
    std::fs::write(path, data).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {}: {e}", path.display()));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pseudo_random_is_deterministic_and_seeded() {
        assert_eq!(pseudo_random(1000, 5), pseudo_random(1000, 5));
        assert_ne!(pseudo_random(1000, 5), pseudo_random(1000, 6));
        assert_eq!(pseudo_random(13, 1).len(), 13);
        assert_eq!(pseudo_random(0, 1), Vec::<u8>::new());
    }

    #[test]
    fn write_file_creates_parents_with_the_mode() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("a/b/c.sh");
        write_file(&p, b"#!/bin/sh\n", 0o750);
        assert_eq!(std::fs::read(&p).expect("read"), b"#!/bin/sh\n");
        let mode = std::fs::metadata(&p).expect("stat").permissions().mode();
        assert_eq!(mode & 0o777, 0o750);
    }

    /// Needs s3s-fs (`.ci/setup-s3.sh`); fails naming the script without it.
    #[test]
    fn servers_have_unique_keys_and_survive_a_restart() {
        let mut a = S3Server::start();
        let b = S3Server::start();
        assert_ne!(a.port, b.port);
        assert_ne!(a.secret_key, b.secret_key);
        assert!(!a.secret_key.contains(&b.secret_key) && !b.secret_key.contains(&a.secret_key));
        assert_ne!(a.access_key, b.access_key);
        assert!(a.object_path("x/y").starts_with(a.data_dir().join(BUCKET)));
        let cmdline = std::fs::read(format!("/proc/{}/cmdline", a.pid())).expect("cmdline");
        assert!(String::from_utf8_lossy(&cmdline).contains(&a.secret_key));

        let port = a.port;
        a.stop();
        assert!(
            TcpStream::connect(("127.0.0.1", port)).is_err(),
            "still listening"
        );
        a.restart();
        assert_eq!(a.port, port);
        assert!(TcpStream::connect(("127.0.0.1", port)).is_ok());
        let pid = a.pid();
        drop(a);
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "s3s-fs survived its drop"
        );
    }

    /// The status line and body of an unsigned `method` of `/BUCKET/key` on `port`.
    fn unsigned(port: u16, method: &str, key: &str) -> (String, String) {
        use std::io::{Read as _, Write as _};
        let mut c = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        write!(
            c,
            "{method} /{BUCKET}/{key} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
        )
        .expect("send");
        let mut answer = String::new();
        c.read_to_string(&mut answer).expect("read");
        let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
        (
            head.lines().next().unwrap_or_default().to_owned(),
            body.to_owned(),
        )
    }

    #[test]
    fn an_anonymous_reader_serves_the_same_objects_unsigned() {
        let s = S3Server::start();
        write_file(&s.object_path("imports/a.qcow2"), b"the disk", 0o644);
        let r = s.anonymous_reader();
        assert_ne!(r.port, s.port);
        assert_eq!(r.data_dir(), s.data_dir());
        assert!(r.access_key.is_empty() && r.secret_key.is_empty());
        assert!(
            unsigned(s.port, "HEAD", "imports/a.qcow2")
                .0
                .contains(" 403 ")
        );
        assert!(
            unsigned(r.port, "HEAD", "imports/a.qcow2")
                .0
                .contains(" 200 ")
        );
        let (status, body) = unsigned(r.port, "GET", "imports/a.qcow2");
        assert!(status.contains(" 200 "), "{status}");
        assert_eq!(body, "the disk");

        // The data dir lives as long as one of them.
        let (dir, pid) = (s.data_dir().to_owned(), r.pid());
        drop(s);
        assert!(dir.is_dir());
        assert!(
            unsigned(r.port, "HEAD", "imports/a.qcow2")
                .0
                .contains(" 200 ")
        );
        drop(r);
        assert!(!dir.exists(), "the data dir outlived its servers");
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "the reader survived its drop"
        );
    }

    #[test]
    fn fixed_keys_are_used_as_given() {
        let s = S3Server::start_with_keys("fixed-access", "fixed-secret");
        assert_eq!(
            (s.access_key.as_str(), s.secret_key.as_str()),
            ("fixed-access", "fixed-secret")
        );
        assert_eq!(s.endpoint(), format!("http://127.0.0.1:{}", s.port));
    }
}
