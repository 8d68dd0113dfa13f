//! The DigitalOcean path on machines that really run: do-sim's machine mode (droplets are
//! systemd-nspawn containers of the real base tree), s3s-fs as the Space, the real
//! image-builder and the static vm-agent.
//!
//! 1. `bake --backend digitalocean`: the builder container runs the real bake user-data
//!    (apt waits, sudoers through visudo, the agent fetched through the presigned URL and
//!    its sha256 checked, the spec's commands, the seal report through the presigned PUT,
//!    `cloud-init clean`, power-off); the snapshot is taken and the builder deleted; the
//!    snapshot's tree is then inspected.
//! 2. A failing command fails the bake naming the step, with the log tail; nothing is left.
//! 3. `fleet up -n 3` from that snapshot: workers boot, their agents pull the published
//!    artifact and are ready over pinned SSH; `fleet run --all` and `--get` use it; idle,
//!    each agent deletes its own droplet with the worker token: 0 droplets left.
//!
//! The builders have no network but loopback and their namespace (as every test here):
//! the spec installs no package from a mirror.
//!
//! Needs root (nspawn, network namespaces). Fails, never skips, without it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use do_sim::{MachineConfig, ScopedToken, Sim, SimConfig};
use s3_test_server::{BUCKET, S3Server};
use workspace_tests::{image_builder, require, run, static_agent};

const TOKEN: &str = "dop_v1_machines_host_token_1f2e";
const WORKER_TOKEN: &str = "dop_v1_machines_worker_token_3d4c";
const S3_KEY: &str = "machines-s3-key";
const S3_SECRET: &str = "machines-s3-secret-5b6a";
const CANARY: &str = "CANARY-machines-7e8f-BAKE-SECRET";
const SHA: &str = "d0c0ffee00000000000000000000000000000042";
/// A test that waits longer than this is stuck, not slow.
const HANG_LIMIT: Duration = Duration::from_secs(600);

fn require_root() {
    assert!(
        nix_is_root(),
        "the machine-mode tests need root (systemd-nspawn, network namespaces): run the suite as root, as CI does"
    );
}

fn nix_is_root() -> bool {
    let out = Command::new("id").arg("-u").output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim() == "0"
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn secret_file(path: &Path, content: &str) {
    std::fs::write(path, content).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// The base root filesystem (built and cached by `image-builder base build`).
fn base_rootfs(ib: &Path) -> PathBuf {
    let out = run(Command::new(ib).args(["base", "build", "--json"]));
    assert!(out.status.success(), "base build: {}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    PathBuf::from(v["rootfs"].as_str().expect("rootfs in base build's JSON"))
}

struct Env {
    ib: PathBuf,
    agent: PathBuf,
    sim: Sim,
    s3: S3Server,
    dir: tempfile::TempDir,
}

impl Env {
    async fn start() -> Env {
        require_root();
        for (t, p) in [
            ("systemd-nspawn", "systemd-container"),
            ("nsenter", "util-linux"),
            ("ssh", "openssh-client"),
            ("visudo", "sudo"),
        ] {
            require(t, p);
        }
        let ib = image_builder();
        let agent = static_agent();
        let rootfs = base_rootfs(&ib);
        let s3 = S3Server::start_with_keys(S3_KEY, S3_SECRET);
        let s3_addr: SocketAddr = ([127, 0, 0, 1], s3.port).into();
        let sim = Sim::start(SimConfig {
            token: Some(TOKEN.into()),
            scoped_tokens: vec![ScopedToken {
                name: "worker".into(),
                token: WORKER_TOKEN.into(),
                scopes: vec!["droplet:read".into(), "droplet:delete".into()],
            }],
            machines: Some(MachineConfig::new(rootfs).forward(s3_addr)),
            ..SimConfig::default()
        })
        .await
        .unwrap_or_else(|e| panic!("machine mode cannot start: {e}"));
        let dir = tempfile::tempdir().unwrap();
        secret_file(&dir.path().join("token"), TOKEN);
        secret_file(
            &dir.path().join("space.env"),
            &format!("SPACES_ACCESS_KEY_ID={S3_KEY}\nSPACES_SECRET_ACCESS_KEY={S3_SECRET}\n"),
        );
        Env {
            ib,
            agent,
            sim,
            s3,
            dir,
        }
    }

    fn spec(&self, name: &str, commands: &str) -> PathBuf {
        let p = self.dir.path().join(format!("{name}.yaml"));
        std::fs::write(
            &p,
            format!(
                "name: {name}\nbase:\n  digitalocean: debian-12-x64\nbuild_user:\n  name: builder\n\
                 commands:\n{commands}\
                 agent:\n  idle_timeout: 20s\n  no_job_timeout: 10m\n  artifact:\n    bucket: {BUCKET}\n    \
                 endpoint: http://127.0.0.1:{port}\n    region: us-east-1\n    path_style: true\n    sha: {SHA}\n    required: true\n\
                 snapshot:\n  name: \"{{name}}-{{timestamp}}\"\n\
                 digitalocean:\n  region: nyc3\n  size: s-1vcpu-1gb\nbake:\n  timeout: 10m\n",
                port = self.s3.port
            ),
        )
        .unwrap();
        p
    }

    fn command(&self) -> Command {
        let mut c = Command::new(&self.ib);
        c.env("DIGITALOCEAN_TOKEN", TOKEN)
            .env("DIGITALOCEAN_WORKER_TOKEN", WORKER_TOKEN)
            .env("WORKER_SPACES_ACCESS_KEY_ID", S3_KEY)
            .env("WORKER_SPACES_SECRET_ACCESS_KEY", S3_SECRET)
            .env("IMAGE_BUILDER_STATE_DIR", self.dir.path().join("state"))
            .env(
                "IMAGE_BUILDER_CONFIG",
                self.dir.path().join("no-config.toml"),
            )
            .env_remove("CI")
            .stdin(Stdio::null());
        c
    }

    /// `fleet up SPEC --name NAME --image ID --yes --json` against the simulator, the
    /// caller adding the rest.
    fn fleet_up(&self, spec: &Path, name: &str, image: u64) -> Command {
        let mut c = self.command();
        c.args(["fleet", "up"])
            .arg(spec)
            .args([
                "--name",
                name,
                "--image",
                &image.to_string(),
                "--yes",
                "--json",
            ])
            .args([
                "--ready-timeout",
                "5m",
                "--poll",
                "500ms",
                "--api-url",
                &self.sim.api_url(),
            ]);
        c
    }

    fn bake(&self, spec: &Path) -> Output {
        run(self
            .command()
            .arg("bake")
            .arg(spec)
            .args(["--backend", "digitalocean", "--yes", "--json", "--out"])
            .arg(self.dir.path().join("out"))
            .arg("--agent-bin")
            .arg(&self.agent)
            .arg("--state-dir")
            .arg(self.dir.path().join("bakes"))
            .args(["--poll-interval", "200ms", "--space-endpoint"])
            .arg(self.s3.endpoint())
            .args([
                "--space-bucket",
                BUCKET,
                "--space-path-style",
                "--space-credentials-file",
            ])
            .arg(self.dir.path().join("space.env"))
            .args(["--api-url", &self.sim.api_url()])
            .arg("--token-file")
            .arg(self.dir.path().join("token")))
    }
}

fn file_mode(p: &Path) -> u32 {
    std::fs::symlink_metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .permissions()
        .mode()
        & 0o7777
}

/// Whether `needle` is in any regular file under `dir` (not following links).
fn grep_tree(dir: &Path, needle: &str) -> Vec<PathBuf> {
    let out = Command::new("grep")
        .args(["-r", "-l", "-a", "--no-messages", "-F", needle])
        .arg(dir)
        .output()
        .unwrap();
    text(&out.stdout).lines().map(PathBuf::from).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_digitalocean_bake_and_its_fleet_on_machines_that_really_run() {
    let env = Env::start().await;
    let spec = env.spec(
        "mworker",
        &format!("  - echo {CANARY} > /dev/null\n  - name: marker\n    run: echo baked-by-image-builder > /etc/baked-marker\n"),
    );

    // 1. The bake, for real.
    let bake = env.bake(&spec);
    assert!(
        bake.status.success(),
        "bake failed:\n{}",
        text(&bake.stderr)
    );
    let manifest: serde_json::Value = serde_json::from_slice(&bake.stdout).unwrap();
    let artifact_id = manifest["builds"][0]["artifact_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let image_id: u64 = artifact_id.rsplit(':').next().unwrap().parse().unwrap();
    assert!(
        env.sim.droplet_ids().is_empty(),
        "the builder droplet is gone"
    );
    let report = &manifest["builds"][0]["image_builder"]["seal_report"];
    assert_eq!(report["status"], "ok", "{report:#}");

    let tree = env
        .sim
        .image_tree(image_id)
        .expect("the snapshot has a tree");
    let sudoers = tree.join("etc/sudoers.d/90-builder");
    assert_eq!(file_mode(&sudoers), 0o440);
    let visudo = Command::new("visudo")
        .arg("-cf")
        .arg(&sudoers)
        .output()
        .unwrap();
    assert!(visudo.status.success(), "{}", text(&visudo.stdout));
    assert!(
        std::fs::read_to_string(tree.join("etc/apt/apt.conf.d/90image-builder-dpkg-lock"))
            .unwrap()
            .contains("DPkg::Lock::Timeout")
    );
    // The link's target is absolute inside the image: look at the link, not through it.
    let wants = tree.join("etc/systemd/system/cloud-init.target.wants/vm-agent.service");
    assert!(
        std::fs::symlink_metadata(&wants).is_ok(),
        "the agent unit is enabled: {}",
        text(
            &Command::new("find")
                .arg(tree.join("etc/systemd/system"))
                .args(["-maxdepth", "2"])
                .output()
                .unwrap()
                .stdout
        )
    );
    assert_eq!(
        std::fs::read_to_string(tree.join("etc/baked-marker")).unwrap(),
        "baked-by-image-builder\n",
        "the spec's commands ran in the builder"
    );
    assert_eq!(
        file_mode(&tree.join("usr/local/bin/vm-agent")) & 0o111,
        0o111
    );
    assert!(
        !tree.join("var/lib/cloud/instances").exists(),
        "cloud-init state is clean"
    );
    let host_keys: Vec<_> = std::fs::read_dir(tree.join("etc/ssh"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("ssh_host_"))
        .collect();
    assert!(host_keys.is_empty(), "host keys are removed: {host_keys:?}");
    // An empty machine-id: each worker makes its own, without systemd's first-boot mode.
    assert_eq!(
        std::fs::read(tree.join("etc/machine-id")).expect("etc/machine-id exists"),
        b"",
        "the machine ID is emptied by the seal"
    );
    for place in [
        "var/lib/cloud",
        "var/log",
        "etc",
        "var/lib/image-builder",
        "root",
        "home",
        "tmp",
    ] {
        let found = grep_tree(&tree.join(place), CANARY);
        assert!(
            found.is_empty(),
            "the bake's canary secret is in the image: {found:?}"
        );
    }

    // 3. Build once: the artifact the workers pull.
    let art = env.dir.path().join("build");
    std::fs::create_dir_all(&art).unwrap();
    std::fs::write(art.join("data.txt"), "prebuilt-data-on-a-machine\n").unwrap();
    let publish = run(env
        .command()
        .args(["artifact", "publish", "--sha", SHA, "data.txt"])
        .current_dir(&art)
        .env("IMAGE_BUILDER_S3_ENDPOINT", env.s3.endpoint())
        .env("IMAGE_BUILDER_S3_BUCKET", BUCKET)
        .env("IMAGE_BUILDER_S3_PATH_STYLE", "true")
        .env("SPACES_ACCESS_KEY_ID", S3_KEY)
        .env("SPACES_SECRET_ACCESS_KEY", S3_SECRET));
    assert!(publish.status.success(), "{}", text(&publish.stderr));

    // Workers from the snapshot, ready over pinned SSH with the artifact pulled.
    let up = run(env.fleet_up(&spec, "mf", image_id).args(["-n", "3"]));
    assert!(
        up.status.success(),
        "fleet up failed:\n{}",
        text(&up.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&up.stdout).unwrap();
    assert_eq!(report["workers"].as_array().unwrap().len(), 3);
    assert_eq!(
        env.sim.count("POST /v2/droplets"),
        2,
        "one POST for the builder, one names[] POST for 3 workers"
    );

    let all = run(env
        .command()
        .args([
            "fleet",
            "run",
            "--fleet",
            "mf",
            "--all",
            "--get",
            "/tmp/result.txt",
            "--",
            "sh",
            "-c",
            &format!("cat /var/lib/vm-agent/artifacts/{SHA}/data.txt | tee /tmp/result.txt"),
        ])
        .current_dir(env.dir.path()));
    assert!(
        all.status.success(),
        "fleet run --all:\n{}{}",
        text(&all.stdout),
        text(&all.stderr)
    );
    for n in 1..=3 {
        assert!(
            text(&all.stdout).contains(&format!("mf-{n}: prebuilt-data-on-a-machine")),
            "{}",
            text(&all.stdout)
        );
        assert_eq!(
            std::fs::read_to_string(env.dir.path().join(format!("mf-{n}/result.txt"))).unwrap(),
            "prebuilt-data-on-a-machine\n"
        );
    }
    let failing = run(env.command().args([
        "fleet", "run", "--fleet", "mf", "--worker", "mf-2", "--", "sh", "-c", "exit 7",
    ]));
    assert_eq!(
        failing.status.code(),
        Some(7),
        "fleet run exits with the job's code"
    );
    let ssh = run(env
        .command()
        .args(["fleet", "ssh", "mf-1", "--", "cat", "/etc/baked-marker"]));
    assert!(
        text(&ssh.stdout).contains("baked-by-image-builder"),
        "{}",
        text(&ssh.stderr)
    );

    // Stop sending work: each agent deletes its own droplet with the worker token.
    let workers: Vec<u64> = report["workers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["id"].as_u64().unwrap())
        .collect();
    tokio::time::timeout(
        HANG_LIMIT,
        env.sim
            .wait_until(|s| s.droplet_ids().is_empty().then_some(())),
    )
    .await
    .expect("the idle workers deleted themselves");
    let log = env.sim.requests();
    for id in &workers {
        let delete = log
            .entries
            .iter()
            .find(|e| {
                e.route == "DELETE /v2/droplets/{id}"
                    && e.uri.ends_with(&format!("/{id}"))
                    && e.status == 204
            })
            .unwrap_or_else(|| panic!("no accepted DELETE of droplet {id}"));
        assert_eq!(
            delete.token.as_deref(),
            Some("worker"),
            "droplet {id} was deleted with the worker token"
        );
    }
    let ls = run(env
        .command()
        .args(["fleet", "ls", "--json", "--api-url", &env.sim.api_url()]));
    assert_eq!(text(&ls.stdout).trim(), "[]", "{}", text(&ls.stderr));
    assert!(
        !env.sim.state()["droplets"]
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d["status"] == "off"),
        "no worker is left powered off"
    );

    // A worker that cannot become ready (its required build was never published): it is
    // deleted and reported with the agent's reason and the tail of its cloud-init output;
    // --retry 1 replaces it once, the same way, then gives up. Nothing is left behind.
    let posts_before = env.sim.count("POST /v2/droplets");
    let unpublished = "feedfacefeedfacefeedfacefeedfacefeedface";
    let bad = run(env.fleet_up(&spec, "mbad", image_id).args([
        "-n",
        "1",
        "--sha",
        unpublished,
        "--retry",
        "1",
    ]));
    let stderr = text(&bad.stderr);
    assert_eq!(bad.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("did not become ready"), "{stderr}");
    assert!(stderr.contains("mbad-1"), "{stderr}");
    let report: serde_json::Value = serde_json::from_slice(&bad.stdout).unwrap();
    let failed = report["failed"].as_array().unwrap();
    assert_eq!(
        failed.len(),
        2,
        "the worker and its one replacement: {report}"
    );
    for f in failed {
        assert_eq!(f["worker"], "mbad-1");
        let reason = f["reason"].as_str().unwrap();
        assert!(
            reason.contains(unpublished) || reason.contains("artifact"),
            "{reason}"
        );
        // The tail is the worker's own cloud-init output, read over pinned SSH.
        let tail = f["tail"].as_str().unwrap();
        assert!(
            tail.contains("Cloud-init"),
            "not cloud-init's output: {tail}"
        );
    }
    assert_ne!(
        failed[0]["id"], failed[1]["id"],
        "the replacement is a new droplet"
    );
    assert_eq!(
        report["created"],
        serde_json::json!(["mbad-1"]),
        "a replaced worker is listed once"
    );
    assert_eq!(
        env.sim.count("POST /v2/droplets") - posts_before,
        2,
        "one create and one replacement"
    );
    assert!(
        env.sim
            .droplets_tagged("image-builder-fleet-mbad")
            .is_empty(),
        "a failed worker was left: {:?}",
        env.sim.state()["droplets"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_command_fails_the_bake_naming_the_step_and_leaves_nothing() {
    let env = Env::start().await;
    let spec = env.spec(
        "mfail",
        "  - echo before\n  - name: breaks\n    run: echo about-to-fail; exit 3\n  - echo never-reached\n",
    );
    let bake = env.bake(&spec);
    let err = text(&bake.stderr);
    assert_eq!(bake.status.code(), Some(1), "{err}");
    assert!(err.contains("breaks"), "the failing step is named: {err}");
    assert!(
        err.contains("about-to-fail"),
        "the log tail is shown: {err}"
    );
    assert!(env.sim.droplet_ids().is_empty(), "no droplet is left");
    assert!(
        env.sim.state()["images"].as_array().unwrap().is_empty(),
        "no image is left: {}",
        env.sim.state()["images"]
    );
}
