//! Pull under faults, against a real S3 server (s3s-fs) on 127.0.0.1: server
//! killed mid-download (in-call retry and cross-call resume), corrupted object,
//! missing manifest, missing/wrong credentials, full disk, cache eviction.
//!
//! "Mid-download" is made, not hoped for: the downloads go through a proxy that
//! holds the responses after a number of bytes, so the server is stopped while
//! the pull provably has more to fetch, and the held responses are cut off with
//! it; the server comes back once the pull has failed to reach it. Cache use is
//! ordered by set mtimes, not by sleeps.
// Test helpers panic on setup failures by design.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::time::Duration;

use crate::artifact_support::*;
use artifact_store::publish::{self, PublishOptions};
use artifact_store::pull::PullErrorKind;
use artifact_store::s3::{RemoteKind, S3Credentials};
use artifact_store::{PullConfig, PullError, pull, s3};
use indicatif::ProgressBar;

async fn publish_files(
    server: &S3Server,
    sha: &str,
    files: &[(&str, Vec<u8>)],
) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let mut paths = vec![];
    for (name, data) in files {
        write_file(&dir.path().join(name), data, 0o644);
        paths.push(dir.path().join(name));
    }
    let client = s3::client(&server.settings(), &creds(), None);
    publish::publish(
        &client,
        BUCKET,
        sha,
        &paths,
        &PublishOptions::default(),
        None,
    )
    .await
    .unwrap();
    dir
}

fn cfg(server: &S3Server) -> PullConfig {
    let mut c = PullConfig::new(server.settings(), Some(creds()));
    c.retry_backoff = Duration::from_millis(100);
    c
}

/// Wait until the bar has passed `at` bytes (or panic after 60 s).
async fn wait_progress(bar: &ProgressBar, at: u64) {
    wait_until(&format!("the download reaching {at} bytes"), || {
        bar.position() >= at
    })
    .await;
}

/// Wait for a condition the code under test brings about (the deadline only
/// turns "never" into a failure instead of a hang).
async fn wait_until(what: &str, done: impl Fn() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !done() {
        assert!(
            std::time::Instant::now() < deadline,
            "never happened: {what}"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// A pull config that reaches `server` through `proxy`.
fn through(proxy: &Proxy) -> PullConfig {
    let mut c = PullConfig::new(proxy.settings(), Some(creds()));
    c.retry_backoff = Duration::from_millis(100);
    c
}

const SIZE: usize = 48 << 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_killed_mid_download_then_restarted_resumes_in_the_same_pull() {
    let mut server = S3Server::start();
    let sha = "1111111111111111111111111111111111111111";
    let data = pseudo_random(SIZE, 11);
    let _src = publish_files(&server, sha, &[("big.bin", data.clone())]).await;
    let proxy = Proxy::start(server.port);
    // At most 12 MiB of the 48 MiB get through until the server is stopped.
    proxy.hold_after(12 << 20);
    let root = tempfile::tempdir().unwrap();
    let mut c = through(&proxy);
    c.chunk_size = 2 << 20;
    c.chunks_in_flight = 2;
    c.max_attempts = 20;
    let bar = ProgressBar::hidden();
    let (c2, bar2, r) = (c.clone(), bar.clone(), root.path().to_path_buf());
    let task = tokio::spawn(async move { pull(&c2, sha, &r, Some(&bar2)).await });

    wait_progress(&bar, 8 << 20).await;
    wait_until("the proxy holding the download", || proxy.holding()).await;
    server.stop();
    let at_kill = bar.position();
    assert!(at_kill < SIZE as u64, "held, so not finished: {at_kill}");
    // The responses in flight die with the server (s3s-fs may have handed them
    // to the kernel whole: the proxy cuts them where they were held), and the
    // pull must then fail to reach the stopped server before it comes back.
    proxy.cut_held();
    wait_until("a retry against the stopped server", || {
        proxy.refused() >= 1
    })
    .await;
    server.restart();

    let rep = task.await.unwrap().unwrap();
    assert!(rep.retries >= 1, "{rep:?}");
    // Resumed where it stopped: far less than a second full download.
    assert!(rep.bytes_downloaded < (SIZE as u64) * 3 / 2, "{rep:?}");
    let got = std::fs::read(rep.dir.join("big.bin")).unwrap();
    assert!(got == data, "content differs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interrupted_pull_leaves_nothing_installed_and_the_next_pull_resumes_from_the_partial_file()
{
    let mut server = S3Server::start();
    let sha = "2222222222222222222222222222222222222222";
    let data = pseudo_random(SIZE, 12);
    let _src = publish_files(&server, sha, &[("big.bin", data.clone())]).await;
    let proxy = Proxy::start(server.port);
    // At most 20 MiB of the 48 MiB get through until the server is stopped.
    proxy.hold_after(20 << 20);
    let root = tempfile::tempdir().unwrap();
    let mut c = through(&proxy);
    c.chunk_size = 2 << 20;
    c.chunks_in_flight = 2;
    c.max_attempts = 2;
    let bar = ProgressBar::hidden();
    let (c2, bar2, r) = (c.clone(), bar.clone(), root.path().to_path_buf());
    let task = tokio::spawn(async move { pull(&c2, sha, &r, Some(&bar2)).await });
    wait_progress(&bar, 16 << 20).await;
    wait_until("the proxy holding the download", || proxy.holding()).await;
    server.stop();
    proxy.cut_held();
    let err = task.await.unwrap().unwrap_err();
    assert!(err.is_unavailable(), "{err}");
    let art = root.path().join("artifacts");
    assert!(
        !art.join(sha).exists(),
        "half-downloaded artifact is visible"
    );
    let partial = art.join(format!(".incoming-{sha}")).join("big.bin");
    let kept = std::fs::metadata(&partial)
        .expect("partial file kept")
        .len();
    assert!(kept >= 16 << 20 && kept < SIZE as u64, "partial {kept}");

    server.restart();
    let rep = pull(&c, sha, root.path(), None).await.unwrap();
    assert_eq!(rep.bytes_resumed, kept, "{rep:?}");
    assert_eq!(rep.bytes_downloaded, SIZE as u64 - kept, "{rep:?}");
    assert!(std::fs::read(rep.dir.join("big.bin")).unwrap() == data);
    assert!(!art.join(format!(".incoming-{sha}")).exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupted_object_is_refused_nothing_installed_and_refetch_is_bounded() {
    let server = S3Server::start();
    let proxy = Proxy::start(server.port);
    let sha = "3333333333333333333333333333333333333333";
    let good = pseudo_random(1 << 20, 13);
    let _src = publish_files(
        &server,
        sha,
        &[("ok.txt", b"fine".to_vec()), ("lib.so", good.clone())],
    )
    .await;
    // Same size, different bytes, behind the server's back.
    let obj = server.object_path(&format!("builds/{sha}/lib.so"));
    std::fs::write(&obj, pseudo_random(1 << 20, 99)).unwrap();

    let root = tempfile::tempdir().unwrap();
    let mut c = PullConfig::new(proxy.settings(), Some(creds()));
    c.max_refetch = 2;
    let err = pull(&c, sha, root.path(), None).await.unwrap_err();
    match &err {
        PullError::ChecksumMismatch {
            path,
            expected,
            actual,
            attempts,
        } => {
            assert_eq!(path, "lib.so");
            assert_eq!(*expected, sha256_hex(&good));
            assert_eq!(*actual, sha256_hex(&std::fs::read(&obj).unwrap()));
            assert_eq!(*attempts, 3);
        }
        other => panic!("expected a checksum mismatch, got {other}"),
    }
    assert_eq!(err.kind(), PullErrorKind::Failed);
    assert!(err.to_string().contains("not installed"), "{err}");
    let gets = proxy
        .seen()
        .iter()
        .filter(|s| s.method == "GET" && s.target.contains("/lib.so"))
        .count();
    assert_eq!(gets, 3, "downloads of the bad object");
    let art = root.path().join("artifacts");
    assert_eq!(names(&art), [".locks"], "something was left behind");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_manifest_or_credentials_is_unavailable() {
    let server = S3Server::start();
    let root = tempfile::tempdir().unwrap();
    let sha = "4444444444444444444444444444444444444444";
    // Files uploaded, manifest never written: not published.
    std::fs::create_dir_all(server.object_path(&format!("builds/{sha}"))).unwrap();
    std::fs::write(server.object_path(&format!("builds/{sha}/f")), b"x").unwrap();
    let err = pull(&cfg(&server), sha, root.path(), None)
        .await
        .unwrap_err();
    assert!(matches!(err, PullError::NotPublished { .. }), "{err}");
    assert!(err.is_unavailable());
    assert!(err.to_string().contains("artifact unavailable"), "{err}");
    assert!(
        err.to_string()
            .contains(&format!("builds/{sha}/manifest.json")),
        "{err}"
    );

    let mut c = cfg(&server);
    c.credentials = None;
    let err = pull(&c, sha, root.path(), None).await.unwrap_err();
    assert!(matches!(err, PullError::MissingCredentials), "{err}");
    assert!(err.is_unavailable());
    assert!(!root.path().join("artifacts").join(sha).exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_credentials_give_a_clear_403_and_never_print_the_secret() {
    let server = S3Server::start();
    let sha = "5555555555555555555555555555555555555555";
    let _src = publish_files(&server, sha, &[("f", b"data".to_vec())]).await;
    let root = tempfile::tempdir().unwrap();
    let mut c = cfg(&server);
    c.credentials = Some(S3Credentials::new(ACCESS_KEY, "not-the-secret-xyz"));
    let err = pull(&c, sha, root.path(), None).await.unwrap_err();
    match &err {
        PullError::Remote(r) => {
            assert_eq!(r.kind, RemoteKind::AccessDenied, "{r:?}");
            assert_eq!(r.status, Some(403), "{r:?}");
        }
        other => panic!("expected access denied, got {other}"),
    }
    assert!(err.is_unavailable());
    let msg = err.to_string();
    assert!(
        msg.contains("access denied") && msg.contains("HTTP 403"),
        "{msg}"
    );
    assert!(!msg.contains("not-the-secret-xyz"));

    // The CLI says the same on stderr, without the secret.
    let dir = tempfile::tempdir().unwrap();
    let out = cli(
        &server.endpoint(),
        "not-the-secret-xyz",
        &["ls"],
        dir.path(),
    );
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("access denied") && stderr.contains("HTTP 403"),
        "{stderr}"
    );
    assert!(!stderr.contains("not-the-secret-xyz"), "{stderr}");
}

/// A small filesystem mounted at a temp dir: tmpfs, else a loop-mounted ext4.
/// Fails loudly when neither works (needs root).
struct SmallFs {
    dir: tempfile::TempDir,
    _image: Option<tempfile::TempDir>,
}

impl SmallFs {
    fn mount(mib: u64) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let run = |cmd: &str, args: &[&str]| {
            std::process::Command::new(cmd)
                .args(args)
                .output()
                .map(|o| {
                    (
                        o.status.success(),
                        String::from_utf8_lossy(&o.stderr).to_string(),
                    )
                })
                .unwrap_or_else(|e| (false, e.to_string()))
        };
        let target = dir.path().to_str().unwrap();
        let size = format!("size={mib}m");
        let (ok, tmpfs_err) = run("mount", &["-t", "tmpfs", "-o", &size, "tmpfs", target]);
        if ok {
            return Self { dir, _image: None };
        }
        let img_dir = tempfile::tempdir().unwrap();
        let img = img_dir.path().join("fs.img");
        let img_s = img.to_str().unwrap();
        let (ok1, e1) = run("truncate", &["-s", &format!("{mib}M"), img_s]);
        let (ok2, e2) = run("mkfs.ext4", &["-q", "-F", img_s]);
        let (ok3, e3) = run("mount", &["-o", "loop", img_s, target]);
        assert!(
            ok1 && ok2 && ok3,
            "the disk-full test needs a small filesystem: `mount -t tmpfs` failed ({tmpfs_err}) \
             and a loop-mounted ext4 failed ({e1}{e2}{e3}); run as root (e2fsprogs for mkfs.ext4)"
        );
        Self {
            dir,
            _image: Some(img_dir),
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        // Not an assertion: a panic in drop would abort the test run. Say it instead.
        match std::process::Command::new("umount")
            .arg(self.dir.path())
            .status()
        {
            Ok(s) if s.success() => {}
            other => eprintln!("umount {} failed: {other:?}", self.dir.path().display()),
        }
    }
}

fn free(p: &Path) -> u64 {
    let s = nix::sys::statvfs::statvfs(p).unwrap();
    s.blocks_available() as u64 * s.fragment_size() as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_disk_is_a_clean_error_with_no_partial_install() {
    let server = S3Server::start();
    let sha = "6666666666666666666666666666666666666666";
    let files: Vec<(&str, Vec<u8>)> = vec![
        ("a.bin", pseudo_random(6 << 20, 1)),
        ("b.bin", pseudo_random(6 << 20, 2)),
        ("c.bin", pseudo_random(6 << 20, 3)),
    ];
    let _src = publish_files(&server, sha, &files).await;
    let fs = SmallFs::mount(12);
    let free_before = free(fs.path());

    // With the free-space check: refused before anything is downloaded.
    let mut c = cfg(&server);
    c.min_free_bytes = 0;
    let err = pull(&c, sha, fs.path(), None).await.unwrap_err();
    assert!(matches!(err, PullError::InsufficientSpace { .. }), "{err}");
    assert_eq!(err.kind(), PullErrorKind::Failed);
    assert_eq!(names(&fs.path().join("artifacts")), [".locks"]);

    // Without it (the disk fills up during the download): a clean error, the
    // partial files are removed, nothing is installed.
    c.check_free_space = false;
    let err = pull(&c, sha, fs.path(), None).await.unwrap_err();
    assert!(matches!(err, PullError::DiskFull { .. }), "{err}");
    assert!(err.to_string().contains("disk full"), "{err}");
    assert_eq!(names(&fs.path().join("artifacts")), [".locks"]);
    assert!(
        free(fs.path()) + (64 << 10) >= free_before,
        "space not given back"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_evicts_the_least_recently_used_other_sha() {
    let server = S3Server::start();
    let shas = ["7777777", "8888888", "9999999"];
    let mut srcs = vec![];
    for (i, sha) in shas.iter().enumerate() {
        srcs.push(
            publish_files(&server, sha, &[("f.bin", pseudo_random(1 << 20, i as u64))]).await,
        );
    }
    let root = tempfile::tempdir().unwrap();
    let mut c = cfg(&server);
    c.cache_max_bytes = Some((2 << 20) + (512 << 10)); // room for two
    let art = root.path().join("artifacts");
    // Each use is dated explicitly (an hour apart, in the past), so the order
    // does not hang on the clock's resolution; a use by the pull itself stamps "now".
    let now = std::time::SystemTime::now();
    let used_at = |sha: &str, hours_ago: u64| {
        std::fs::File::open(art.join(sha))
            .unwrap()
            .set_modified(now - Duration::from_secs(3600 * hours_ago))
            .unwrap();
    };
    let last_use = |sha: &str| {
        std::fs::metadata(art.join(sha))
            .unwrap()
            .modified()
            .unwrap()
    };
    pull(&c, shas[0], root.path(), None).await.unwrap();
    used_at(shas[0], 3);
    pull(&c, shas[1], root.path(), None).await.unwrap();
    used_at(shas[1], 2);
    // Use the first again: the second becomes the least recently used.
    assert!(
        pull(&c, shas[0], root.path(), None)
            .await
            .unwrap()
            .already_installed
    );
    assert!(
        last_use(shas[0]) > last_use(shas[1]),
        "using an installed artifact marks it used"
    );
    let rep = pull(&c, shas[2], root.path(), None).await.unwrap();
    assert_eq!(rep.evicted, [shas[1]]);
    assert_eq!(names(&art), [".locks", shas[0], shas[2]]);
}
