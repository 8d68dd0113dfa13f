//! Publish/pull round trips, idempotency, manifest-last ordering, the CLI
//! (publish, ls, gc), and the absence of aws-chunked/checksum headers — all
//! against a real S3 server (s3s-fs) on 127.0.0.1.
// Test helpers panic on setup failures by design.
#![allow(clippy::unwrap_used)]

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;

use crate::artifact_support::*;
use artifact_store::publish::{self, PublishError, PublishOptions};
use artifact_store::{PullConfig, pull, s3};

const SHA_A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";

struct Tree {
    _dir: tempfile::TempDir,
    root: std::path::PathBuf,
    files: Vec<(String, Vec<u8>, u32)>,
}

/// out/bin/tool (0755), out/etc/app.conf (0640), out/empty (0600), big.bin (0644, 13 MiB).
fn tree(seed: u64) -> Tree {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let files = vec![
        (
            "out/bin/tool".to_string(),
            pseudo_random(300_000, seed),
            0o755,
        ),
        (
            "out/etc/app.conf".to_string(),
            b"key = value\n".to_vec(),
            0o640,
        ),
        ("out/empty".to_string(), vec![], 0o600),
        (
            "big.bin".to_string(),
            pseudo_random(13 << 20, seed + 1),
            0o644,
        ),
    ];
    for (p, data, mode) in &files {
        write_file(&root.join(p), data, *mode);
    }
    Tree {
        _dir: dir,
        root,
        files,
    }
}

fn small_parts() -> PublishOptions {
    PublishOptions {
        concurrency: 4,
        multipart_threshold: 6 << 20,
        part_size: 5 << 20,
        force: false,
    }
}

fn assert_installed(dir: &Path, t: &Tree) {
    for (p, data, mode) in &t.files {
        let got = std::fs::read(dir.join(p)).unwrap_or_else(|e| panic!("{p}: {e}"));
        assert!(got == *data, "{p}: content differs");
        let m = std::fs::metadata(dir.join(p)).unwrap().permissions().mode() & 0o777;
        assert_eq!(m, *mode, "{p}: mode");
    }
    assert!(dir.join("manifest.json").is_file());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_trip_preserves_files_modes_and_digests_and_republish_skips() {
    let server = S3Server::start();
    let client = s3::client(&server.settings(), &creds(), None);
    let t = tree(1);
    let paths = vec![t.root.join("out"), t.root.join("big.bin")];

    let r = publish::publish(&client, BUCKET, SHA_A, &paths, &small_parts(), None)
        .await
        .unwrap();
    assert_eq!(
        (r.files, r.uploaded, r.skipped, r.multipart),
        (4, 4, 0, 1),
        "{r:?}"
    );
    assert_eq!(r.manifest, "written");

    // The manifest in the bucket lists paths, sizes, digests and modes.
    let m = publish::fetch_manifest(&client, BUCKET, SHA_A)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    for (p, data, mode) in &t.files {
        let e = m.files.iter().find(|f| f.path == *p).expect(p);
        assert_eq!((e.size, e.mode), (data.len() as u64, *mode), "{p}");
        assert_eq!(e.sha256, sha256_hex(data), "{p}");
    }

    let root = tempfile::tempdir().unwrap();
    let mut cfg = PullConfig::new(server.settings(), Some(creds()));
    cfg.chunk_size = 1 << 20; // big.bin: 13 ranged GETs
    let pr = pull(&cfg, SHA_A, root.path(), None).await.unwrap();
    assert!(!pr.already_installed);
    assert_eq!(
        pr.bytes_total,
        t.files.iter().map(|f| f.1.len() as u64).sum::<u64>()
    );
    assert_eq!(pr.bytes_downloaded, pr.bytes_total);
    assert_eq!(pr.dir, root.path().join("artifacts").join(SHA_A));
    assert_installed(&pr.dir, &t);
    // Nothing but the installed sha (and the lock dir) is left in artifacts/.
    assert_eq!(names(&root.path().join("artifacts")), [".locks", SHA_A]);

    let again = pull(&cfg, SHA_A, root.path(), None).await.unwrap();
    assert!(again.already_installed);
    assert_eq!(again.bytes_downloaded, 0);

    // Publishing the same build again uploads nothing and keeps the manifest.
    let r2 = publish::publish(&client, BUCKET, SHA_A, &paths, &small_parts(), None)
        .await
        .unwrap();
    assert_eq!(
        (r2.uploaded, r2.skipped, r2.bytes_uploaded),
        (0, 4, 0),
        "{r2:?}"
    );
    assert_eq!(r2.manifest, "unchanged");

    // Different content under the same sha is refused (a sha names one build)...
    write_file(&t.root.join("out/etc/app.conf"), b"changed\n", 0o640);
    let e = publish::publish(&client, BUCKET, SHA_A, &paths, &small_parts(), None)
        .await
        .unwrap_err();
    assert!(matches!(e, PublishError::Conflict { .. }), "{e}");
    // ...unless forced, and then only the changed object is uploaded.
    let forced = PublishOptions {
        force: true,
        ..small_parts()
    };
    let r3 = publish::publish(&client, BUCKET, SHA_A, &paths, &forced, None)
        .await
        .unwrap();
    assert_eq!((r3.uploaded, r3.skipped), (1, 3), "{r3:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_sends_no_aws_chunked_or_checksum_trailers_and_writes_manifest_last() {
    let server = S3Server::start();
    let proxy = Proxy::start(server.port);
    let client = s3::client(&proxy.settings(), &creds(), None);
    let t = tree(2);
    let paths = vec![t.root.join("out"), t.root.join("big.bin")];
    publish::publish(&client, BUCKET, SHA_A, &paths, &small_parts(), None)
        .await
        .unwrap();
    let root = tempfile::tempdir().unwrap();
    let mut cfg = PullConfig::new(proxy.settings(), Some(creds()));
    cfg.chunk_size = 4 << 20;
    pull(&cfg, SHA_A, root.path(), None).await.unwrap();

    let seen = proxy.seen();
    let puts: Vec<_> = seen.iter().filter(|s| s.method == "PUT").collect();
    // 3 small files + 3 parts of big.bin + the manifest.
    assert_eq!(puts.len(), 7, "{puts:#?}");
    for s in &seen {
        let ctx = format!("{} {} {:?}", s.method, s.target, s.headers);
        assert!(
            s.header("transfer-encoding").is_none(),
            "chunked body: {ctx}"
        );
        assert!(
            !s.header("content-encoding")
                .unwrap_or("")
                .contains("aws-chunked"),
            "aws-chunked: {ctx}"
        );
        assert!(s.header("x-amz-trailer").is_none(), "trailer: {ctx}");
        assert!(
            s.header("x-amz-checksum-mode").is_none(),
            "checksum mode: {ctx}"
        );
        assert!(
            !s.headers
                .iter()
                .any(|(n, _)| n.starts_with("x-amz-checksum-")
                    || n == "x-amz-sdk-checksum-algorithm"),
            "checksum header: {ctx}"
        );
        assert!(
            !s.header("x-amz-content-sha256")
                .unwrap_or("")
                .starts_with("STREAMING-"),
            "streaming signature: {ctx}"
        );
        if s.method == "PUT" {
            assert!(
                s.header("content-length").is_some(),
                "no content-length: {ctx}"
            );
        }
    }
    let last_put = puts.last().unwrap();
    assert!(
        last_put
            .target
            .split('?')
            .next()
            .unwrap_or_default()
            .ends_with(&format!("/builds/{SHA_A}/manifest.json")),
        "last PUT was {}",
        last_put.target
    );
    // Every object PUT carries the sha256 user metadata.
    for p in &puts {
        if p.target.contains("uploadId") {
            continue; // parts: the metadata is on CreateMultipartUpload
        }
        assert_eq!(
            p.header("x-amz-meta-sha256").map(str::len),
            Some(64),
            "{}",
            p.target
        );
    }
}

fn json(out: &std::process::Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON on stdout")
}

fn listed(endpoint: &str, cwd: &Path, all: bool) -> Vec<String> {
    let mut args = vec!["ls", "--json"];
    if all {
        args.push("--all");
    }
    json(&cli(endpoint, SECRET_KEY, &args, cwd))
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["sha"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn cli_interrupted_publish_is_not_listed_until_completed() {
    let server = S3Server::start();
    let proxy = Proxy::start(server.port);
    let ep = format!("http://127.0.0.1:{}", proxy.port);
    let t = tree(3);
    let sha = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";
    // Every upload of out/etc/app.conf dies with a cut connection.
    proxy.fail("PUT", "/out/etc/app.conf");
    let out = cli(
        &ep,
        SECRET_KEY,
        &["publish", "--sha", sha, "out", "big.bin"],
        &t.root,
    );
    assert!(!out.status.success(), "publish should have failed");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("out/etc/app.conf"), "{err}");
    assert!(
        !server
            .object_path(&format!("builds/{sha}/manifest.json"))
            .exists(),
        "manifest written although a file failed"
    );
    assert!(
        server
            .object_path(&format!("builds/{sha}/big.bin"))
            .exists()
    );
    assert!(
        !proxy
            .seen()
            .iter()
            .any(|s| s.target.ends_with("manifest.json") && s.method == "PUT")
    );
    assert!(listed(&ep, &t.root, false).is_empty());
    assert_eq!(listed(&ep, &t.root, true), [sha]);

    // Publishing again finishes the job and skips what is already there.
    proxy.fail("NONE", "");
    let r = json(&cli(
        &ep,
        SECRET_KEY,
        &["publish", "--json", "--sha", sha, "out", "big.bin"],
        &t.root,
    ));
    assert_eq!(r["uploaded"], 1, "{r}");
    assert_eq!(r["skipped"], 3, "{r}");
    assert_eq!(listed(&ep, &t.root, false), [sha]);
}

#[test]
fn cli_publish_default_sha_ls_and_gc() {
    let server = S3Server::start();
    let ep = server.endpoint();
    let t = tree(4);
    // A git repository: the default sha is HEAD.
    let git = |args: &[&str]| {
        let o = std::process::Command::new("git")
            .args(args)
            .current_dir(&t.root)
            .env("GIT_AUTHOR_NAME", "t")
            .env("GIT_AUTHOR_EMAIL", "t@example.invalid")
            .env("GIT_COMMITTER_NAME", "t")
            .env("GIT_COMMITTER_EMAIL", "t@example.invalid")
            .output()
            .expect("git (apt-get install git)");
        assert!(
            o.status.success(),
            "git {args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    };
    git(&["init", "-q"]);
    git(&["add", "out"]);
    git(&["commit", "-q", "-m", "x"]);
    let head = git(&["rev-parse", "HEAD"]);
    let r = json(&cli(
        &ep,
        SECRET_KEY,
        &["publish", "--json", "out"],
        &t.root,
    ));
    assert_eq!(r["sha"], head.as_str());
    assert_eq!(r["files"], 3);

    let older = [
        "1111111111111111111111111111111111111111",
        "2222222222222222222222222222222222222222",
    ];
    for sha in older {
        json(&cli(
            &ep,
            SECRET_KEY,
            &["publish", "--json", "--sha", sha, "out/bin"],
            &t.root,
        ));
    }
    // Newest first.
    assert_eq!(
        listed(&ep, &t.root, false),
        [older[1], older[0], head.as_str()]
    );

    let files = cli(&ep, SECRET_KEY, &["ls", "--sha", &head], &t.root);
    let text = String::from_utf8_lossy(&files.stdout);
    assert!(files.status.success());
    assert!(
        text.contains("0755") && text.contains("out/bin/tool"),
        "{text}"
    );
    assert!(
        text.contains("0640") && text.contains("out/etc/app.conf"),
        "{text}"
    );

    let missing = cli(&ep, SECRET_KEY, &["ls", "--sha", "3333333"], &t.root);
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("not published"));

    let dry = json(&cli(
        &ep,
        SECRET_KEY,
        &["gc", "--keep", "1", "--dry-run", "--json"],
        &t.root,
    ));
    assert_eq!(dry["deleted"].as_array().unwrap().len(), 2);
    assert_eq!(listed(&ep, &t.root, false).len(), 3);

    let gc = json(&cli(
        &ep,
        SECRET_KEY,
        &["gc", "--keep", "1", "--json"],
        &t.root,
    ));
    assert_eq!(gc["kept"], serde_json::json!([older[1]]));
    assert_eq!(gc["deleted"], serde_json::json!([older[0], head.as_str()]));
    assert_eq!(listed(&ep, &t.root, true), [older[1]]);
    assert!(
        !server
            .object_path(&format!("builds/{head}/out/bin/tool"))
            .exists()
    );
}

#[test]
fn cli_gc_removes_stale_incomplete_uploads_only() {
    let server = S3Server::start();
    let proxy = Proxy::start(server.port);
    let ep = format!("http://127.0.0.1:{}", proxy.port);
    let t = tree(5);
    let sha = "cccccccccccccccccccccccccccccccccccccccc";
    proxy.fail("PUT", "manifest.json");
    let out = cli(&ep, SECRET_KEY, &["publish", "--sha", sha, "out"], &t.root);
    assert!(!out.status.success());
    // Recent: maybe a publish in progress, kept.
    let gc = json(&cli(
        &ep,
        SECRET_KEY,
        &["gc", "--keep", "0", "--json"],
        &t.root,
    ));
    assert_eq!(gc["incomplete_kept"], serde_json::json!([sha]));
    assert_eq!(listed(&ep, &t.root, true), [sha]);
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let gc = json(&cli(
        &ep,
        SECRET_KEY,
        &[
            "gc",
            "--keep",
            "0",
            "--incomplete-older-than",
            "1s",
            "--json",
        ],
        &t.root,
    ));
    assert_eq!(gc["deleted_incomplete"], serde_json::json!([sha]));
    assert!(listed(&ep, &t.root, true).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hickory_resolver_reaches_the_store_by_host_name() {
    let server = S3Server::start();
    let t = tree(6);
    let mut settings = server.settings();
    // "localhost" comes from /etc/hosts, read by hickory itself (no NSS).
    settings.endpoint = format!("http://localhost:{}", server.port);
    let dns = s3::HickoryDns::from_system_conf().unwrap().shared();
    let client = s3::client(&settings, &creds(), Some(dns.clone()));
    publish::publish(
        &client,
        BUCKET,
        SHA_A,
        &[t.root.join("out")],
        &small_parts(),
        None,
    )
    .await
    .unwrap();
    let root = tempfile::tempdir().unwrap();
    let mut cfg = PullConfig::new(settings, Some(creds()));
    cfg.resolver = Some(dns);
    let r = pull(&cfg, SHA_A, root.path(), None).await.unwrap();
    assert_eq!(r.files, 3);
}
