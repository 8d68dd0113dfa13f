//! The end-to-end proof, as a user would run it: build (or reuse) the base, bake a
//! golden image from `templates/examples/worker.yaml` with the static vm-agent,
//! boot a worker from it under QEMU (the disk's own bootloader, QEMU's default
//! firmware, no kernel on the command line, a disk bigger than the image), and over
//! SSH watch the agent reach `ready`, run jobs with their output and exit codes, then
//! power the VM off by itself once idle. The golden disk is also inspected offline.
//!
//! Needs root and the tools from `.ci/setup.sh`; takes minutes under TCG.

#![allow(clippy::unwrap_used)]

use agent_status::{ArtifactState, Stage, StatusReport};
use s3_test_server::{BUCKET, S3Server};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};
use workspace_tests::{image_builder, require, run, static_agent, workspace};

const CANARY: &str = "CANARY-e2e-51c0ffee-BAKE-SECRET";

/// Stops the local worker whatever happens to the test.
struct Worker {
    ib: PathBuf,
    name: String,
    pid: u32,
    port: u16,
    key: PathBuf,
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = Command::new(&self.ib)
            .args(["stop-local", &self.name])
            .output();
    }
}

impl Worker {
    fn ssh(&self, remote: &str) -> Output {
        run(Command::new("ssh")
            .args([
                "-o",
                "StrictHostKeyChecking=no",
                "-o",
                "UserKnownHostsFile=/dev/null",
                "-o",
                "LogLevel=ERROR",
            ])
            .args(["-o", "ConnectTimeout=10", "-o", "BatchMode=yes", "-i"])
            .arg(&self.key)
            .args(["-p", &self.port.to_string(), "builder@127.0.0.1", remote]))
    }

    /// `remote` over SSH, which must exit 0; its stdout.
    fn ssh_ok(&self, remote: &str) -> String {
        let o = self.ssh(remote);
        let out = String::from_utf8_lossy(&o.stdout).into_owned();
        assert_eq!(
            o.status.code(),
            Some(0),
            "{remote}: {out}\n{}",
            String::from_utf8_lossy(&o.stderr)
        );
        out
    }

    fn alive(&self) -> bool {
        Path::new(&format!("/proc/{}", self.pid)).exists()
    }
}

// The worker's artifact store: a real S3 server (s3s-fs, built by .ci/setup-s3.sh)
// on 127.0.0.1, with fixed keys the test then looks for where they must not be.
const S3_KEY: &str = "e2e-access-key";
const S3_SECRET: &str = "e2e-secret-key-never-logged";
fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            eprintln!("e2e: {what} after {:.0}s", start.elapsed().as_secs_f64());
            return v;
        }
        assert!(
            start.elapsed() < timeout,
            "e2e: timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_secs(3));
    }
}

/// The root partition of a raw disk: (byte offset, table label), from `sfdisk --json`.
fn root_partition(raw: &Path) -> (u64, String) {
    let out = run(Command::new("sfdisk").arg("--json").arg(raw));
    assert!(out.status.success(), "sfdisk: {out:?}");
    let t: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let t = &t["partitiontable"];
    let root = t["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "root")
        .unwrap_or_else(|| panic!("no root partition: {t}"));
    (
        root["start"].as_u64().unwrap() * 512,
        t["label"].as_str().unwrap().to_owned(),
    )
}

/// `debugfs -R REQUEST` on the root filesystem of a whole raw disk (nothing mounted).
fn debugfs(raw: &Path, request: &str) -> String {
    let (offset, _) = root_partition(raw);
    let fs = format!("{}?offset={offset}", raw.display());
    let out = run(Command::new("debugfs").arg("-R").arg(request).arg(fs));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn bake_boot_and_watch_the_agent_do_its_whole_job() {
    assert!(
        std::fs::read_to_string("/proc/self/status")
            .unwrap()
            .lines()
            .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(2) == Some("0")),
        "the end-to-end test needs root (mmdebstrap, systemd-nspawn, mkfs.ext4 -d); CI runs as root"
    );
    for (t, p) in [
        ("qemu-system-x86_64", "qemu-system-x86"),
        ("systemd-nspawn", "systemd-container"),
        ("mmdebstrap", "mmdebstrap"),
        ("ssh", "openssh-client"),
        ("debugfs", "e2fsprogs"),
        ("genisoimage", "genisoimage"),
        ("sfdisk", "fdisk"),
        ("blkid", "util-linux"),
    ] {
        require(t, p);
    }
    let t0 = Instant::now();
    let ib = image_builder();
    let agent = static_agent();
    eprintln!(
        "e2e: built image-builder and the static agent in {:.0}s",
        t0.elapsed().as_secs_f64()
    );

    // The worker's artifact store: a real S3 server on 127.0.0.1 (the guest reaches it
    // as 10.0.2.2). The build sha is published below, after the bake.
    let s3 = S3Server::start_with_keys(S3_KEY, S3_SECRET);
    let sha = "e2e0c0ffee0000000000000000000000000000aa";

    // The example spec, with a canary secret in a bake command, and its `agent.artifact`
    // pointed at that store: the worker pulls the build because the spec says so.
    let dir = tempfile::tempdir().unwrap();
    let example =
        std::fs::read_to_string(workspace().join("templates/examples/worker.yaml")).unwrap();
    let with_canary = example.replace(
        "  - git --version\n",
        &format!("  - git --version\n  - echo {CANARY} > /dev/null\n"),
    );
    let example_artifact = "  artifact:\n    bucket: ci-artifacts\n    endpoint: https://nyc3.digitaloceanspaces.com\n    region: nyc3\n    required: false      # if unavailable, become ready anyway and build on the worker\n";
    let with_canary = with_canary.replacen(
        example_artifact,
        &format!(
            "  artifact:\n    bucket: {BUCKET}\n    endpoint: http://10.0.2.2:{}\n    region: us-east-1\n    path_style: true\n    sha: {sha}\n    required: true\n",
            s3.port
        ),
        1,
    );
    assert!(
        with_canary.contains(CANARY) && with_canary.contains(&format!("sha: {sha}")),
        "the example spec changed: update the canary and artifact insertions"
    );
    std::fs::create_dir_all(dir.path().join("files")).unwrap();
    std::fs::copy(
        workspace().join("templates/examples/files/motd"),
        dir.path().join("files/motd"),
    )
    .unwrap();
    let spec = dir.path().join("worker.yaml");
    std::fs::write(&spec, with_canary).unwrap();

    // Bake (base build or cache hit, container provisioning, golden qcow2, boot check).
    let out_dir = dir.path().join("out");
    let t = Instant::now();
    let bake = run(Command::new(&ib)
        .arg("bake")
        .arg(&spec)
        .args(["--backend", "qemu", "--json", "--out"])
        .arg(&out_dir)
        .arg("--agent-bin")
        .arg(&agent));
    assert!(
        bake.status.success(),
        "bake failed:\n{}",
        String::from_utf8_lossy(&bake.stderr)
    );
    eprintln!("e2e: bake took {:.0}s", t.elapsed().as_secs_f64());
    let manifest: serde_json::Value = serde_json::from_slice(&bake.stdout).unwrap();
    let build = &manifest["builds"][0];
    assert_eq!(
        build["image_builder"]["details"]["boot_check"]["agent_enabled"],
        "enabled"
    );
    let golden = PathBuf::from(build["artifact_id"].as_str().unwrap());

    // Build once: publish an artifact to that store, keyed by the spec's git sha.
    let art = dir.path().join("build");
    std::fs::create_dir_all(art.join("bin")).unwrap();
    std::fs::write(
        art.join("bin/hello.sh"),
        "#!/bin/sh\necho artifact-says-hi\n",
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(
        art.join("bin/hello.sh"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    std::fs::write(art.join("data.txt"), "prebuilt-data-0123\n").unwrap();
    let publish = run(Command::new(&ib)
        .args(["artifact", "publish", "--sha", sha, "bin", "data.txt"])
        .current_dir(&art)
        .env(
            "IMAGE_BUILDER_S3_ENDPOINT",
            format!("http://127.0.0.1:{}", s3.port),
        )
        .env("IMAGE_BUILDER_S3_BUCKET", BUCKET)
        .env("IMAGE_BUILDER_S3_REGION", "us-east-1")
        .env("IMAGE_BUILDER_S3_PATH_STYLE", "true")
        .env("SPACES_ACCESS_KEY_ID", S3_KEY)
        .env("SPACES_SECRET_ACCESS_KEY", S3_SECRET));
    assert!(
        publish.status.success(),
        "artifact publish failed:\n{}",
        String::from_utf8_lossy(&publish.stderr)
    );
    let secrets = dir.path().join("secrets.toml");
    std::fs::write(
        &secrets,
        format!(
            "spaces_access_key_id = \"{S3_KEY}\"\nspaces_secret_access_key = \"{S3_SECRET}\"\n"
        ),
    )
    .unwrap();
    std::fs::set_permissions(&secrets, std::fs::Permissions::from_mode(0o600)).unwrap();

    // Boot a worker from it.
    let key = dir.path().join("id_ed25519");
    assert!(
        run(Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-f"])
            .arg(&key))
        .status
        .success()
    );
    let name = format!("e2e-{}", std::process::id());
    let started = run(Command::new(&ib)
        .arg("run-local")
        .arg(&golden)
        .arg("--spec")
        .arg(&spec)
        .args([
            "--name",
            &name,
            "--idle-timeout",
            "90s",
            "--disk-size",
            "6G",
            "--json",
            "--ssh-key",
        ])
        .arg(key.with_extension("pub"))
        .arg("--agent-secrets")
        .arg(&secrets));
    assert!(
        started.status.success(),
        "run-local failed:\n{}",
        String::from_utf8_lossy(&started.stderr)
    );
    let info: serde_json::Value = serde_json::from_slice(&started.stdout).unwrap();
    let worker = Worker {
        ib: ib.clone(),
        name: name.clone(),
        pid: info["pid"].as_u64().unwrap() as u32,
        port: info["ssh_port"].as_u64().unwrap() as u16,
        key: key.clone(),
    };
    let console = PathBuf::from(info["console"].as_str().unwrap());
    let boot = Instant::now();

    // Over SSH: the agent reaches `ready`.
    wait_for("ssh", Duration::from_secs(300), || {
        assert!(
            worker.alive(),
            "QEMU exited during boot; console:\n{}",
            std::fs::read_to_string(&console).unwrap_or_default()
        );
        worker.ssh("true").status.success().then_some(())
    });
    let status = wait_for("vm-agent ready", Duration::from_secs(300), || {
        let o = worker.ssh("vm-agent status --json");
        let r = StatusReport::from_json(&o.stdout).ok()?;
        match r.stage {
            Stage::Ready => Some((o, r)),
            Stage::Degraded => panic!("agent is degraded: {r:#?}"),
            _ => None,
        }
    });
    eprintln!(
        "e2e: QEMU start to agent ready: {:.0}s",
        boot.elapsed().as_secs_f64()
    );
    assert_eq!(
        status.0.status.code(),
        Some(0),
        "`vm-agent status` exits 0 when ready"
    );
    let human = worker.ssh("vm-agent status");
    assert!(
        String::from_utf8_lossy(&human.stdout)
            .lines()
            .all(|l| l.chars().count() <= 80),
        "status fits 80 columns"
    );

    // The artifact was pulled at boot and verified.
    let art_status = &status.1.artifacts;
    assert_eq!(
        art_status.state,
        ArtifactState::Installed,
        "{art_status:#?}"
    );
    let item = art_status.items.iter().find(|i| i.sha == sha).unwrap();
    assert!(item.verified, "{item:#?}");
    assert_eq!(item.files, 2, "{item:#?}");
    let art_path = item.path.clone().unwrap();
    assert!(
        !status.0.stdout.is_empty()
            && !String::from_utf8_lossy(&status.0.stdout).contains(S3_SECRET)
    );
    let uses_out = worker.ssh_ok(&format!("vm-agent run --name uses-artifact -- sh -c '{art_path}/bin/hello.sh; cat {art_path}/data.txt'"));
    assert!(
        uses_out.contains("artifact-says-hi") && uses_out.contains("prebuilt-data-0123"),
        "{uses_out}"
    );

    // Jobs: output and exit codes come back as if run over SSH directly.
    let job_out = worker
        .ssh_ok("vm-agent run --name hello -- sh -c 'echo hello-from-job; id -un; git --version'");
    assert!(job_out.contains("hello-from-job"), "{job_out}");
    assert!(
        job_out.contains("builder"),
        "the job runs as the build user: {job_out}"
    );
    assert!(
        job_out.contains("git version"),
        "packages from the spec are in the image: {job_out}"
    );
    let failing = worker.ssh("vm-agent run -- sh -c 'echo failing >&2; exit 3'");
    assert_eq!(
        failing.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&failing.stderr)
    );
    let jobs = worker.ssh("vm-agent jobs");
    assert!(String::from_utf8_lossy(&jobs.stdout).contains("hello"));

    // Booted by GRUB from the disk (BOOT_IMAGE= is GRUB's), and the root filesystem
    // grew into the worker's 6 GiB disk (the image is 4 GiB) on first boot.
    let cmdline = worker.ssh_ok("cat /proc/cmdline");
    assert!(
        cmdline.starts_with("BOOT_IMAGE=/vmlinuz root=UUID="),
        "{cmdline}"
    );
    let root_size: u64 = worker.ssh_ok("findmnt -bno SIZE /").trim().parse().unwrap();
    assert!(
        root_size > 5 << 30,
        "the root filesystem did not grow into the 6 GiB disk: {root_size} bytes"
    );

    // Stop sending work: the idle timer powers the VM off by itself.
    let idle = Instant::now();
    wait_for(
        "the worker to power itself off",
        Duration::from_secs(420),
        || (!worker.alive()).then_some(()),
    );
    eprintln!(
        "e2e: powered off {:.0}s after the last job",
        idle.elapsed().as_secs_f64()
    );
    let console_text = std::fs::read_to_string(&console).unwrap_or_default();
    // It was the agent's idle timer, with no job running, that ended the machine (not a
    // crash, a panic or another timer): the agent's own record, on the serial console.
    let record = console_text
        .lines()
        .find(|l| l.contains("vm-agent: destroying this machine"))
        .unwrap_or_else(|| {
            panic!(
                "the agent left no destroy record on the console: the VM ended for another reason\n{}",
                console_text
                    .lines()
                    .rev()
                    .take(40)
                    .collect::<Vec<_>>()
                    .into_iter()
                    .rev()
                    .collect::<Vec<_>>()
                    .join("\n")
            )
        });
    assert!(
        record.contains("(local): idle timer fired") && record.contains("jobs running 0, queued 0"),
        "{record}"
    );
    assert!(
        !console_text.contains("ordering cycle"),
        "systemd reported an ordering cycle:\n{console_text}"
    );

    // A local fleet of two from the same golden image: both ready over pinned SSH (their
    // agents pulled the spec's artifact), a job on each, then down.
    let fleet_state = dir.path().join("fleet-state");
    // Local workers live in one registry per machine: the fleet's name is this run's own.
    let fleet_name = format!("e2ef{}", std::process::id());
    let (w1, w2) = (format!("{fleet_name}-1"), format!("{fleet_name}-2"));
    let fleet = |args: &[&str]| {
        run(Command::new(&ib)
            .arg("fleet")
            .args(args)
            .env("IMAGE_BUILDER_STATE_DIR", &fleet_state)
            .env("IMAGE_BUILDER_CONFIG", dir.path().join("no-config.toml"))
            .env("WORKER_SPACES_ACCESS_KEY_ID", S3_KEY)
            .env("WORKER_SPACES_SECRET_ACCESS_KEY", S3_SECRET)
            .env_remove("CI")
            .stdin(std::process::Stdio::null()))
    };
    let up = fleet(&[
        "up",
        spec.to_str().unwrap(),
        "--backend",
        "qemu",
        "-n",
        "2",
        "--name",
        &fleet_name,
        "--image",
        golden.to_str().unwrap(),
        "--ready-timeout",
        "10m",
    ]);
    let jobs = up.status.success().then(|| {
        fleet(&[
            "run",
            "--fleet",
            &fleet_name,
            "--all",
            "--",
            "sh",
            "-c",
            &format!("cat /var/lib/vm-agent/artifacts/{sha}/data.txt"),
        ])
    });
    // Down whatever happened above, then judge.
    let stopped = fleet(&["down", &fleet_name, "--backend", "qemu", "--yes"]);
    assert!(
        up.status.success(),
        "fleet up --backend qemu -n 2:\n{}",
        String::from_utf8_lossy(&up.stderr)
    );
    let up_err = String::from_utf8_lossy(&up.stderr);
    assert!(
        up_err.contains(&format!("{w1}: ready")) && up_err.contains(&format!("{w2}: ready")),
        "{up_err}"
    );
    let jobs = jobs.expect("ran after a successful up");
    let out = String::from_utf8_lossy(&jobs.stdout);
    assert!(
        jobs.status.success()
            && out.contains(&format!("{w1}: prebuilt-data-0123"))
            && out.contains(&format!("{w2}: prebuilt-data-0123")),
        "fleet run --all:\n{out}{}",
        String::from_utf8_lossy(&jobs.stderr)
    );
    assert!(
        stopped.status.success(),
        "{}",
        String::from_utf8_lossy(&stopped.stderr)
    );

    // A worker not ready in time is stopped and reported with its console's tail;
    // --retry 1 starts it once more, then the command fails naming both attempts, and no
    // worker of that fleet is left running.
    let late_fleet = format!("{fleet_name}late");
    let late = fleet(&[
        "up",
        spec.to_str().unwrap(),
        "--backend",
        "qemu",
        "-n",
        "1",
        "--name",
        &late_fleet,
        "--image",
        golden.to_str().unwrap(),
        "--ready-timeout",
        "1s",
        "--retry",
        "1",
    ]);
    let late_err = String::from_utf8_lossy(&late.stderr);
    assert_eq!(late.status.code(), Some(1), "{late_err}");
    assert!(
        late_err.contains("2 worker(s) did not become ready"),
        "{late_err}"
    );
    assert!(
        late_err.contains(&format!("{late_fleet}-1: replacing: not ready within 1s")),
        "{late_err}"
    );
    let late_ls = run(Command::new(&ib).args(["ls-local", "--json"]));
    let local_workers: serde_json::Value =
        serde_json::from_slice(&late_ls.stdout).unwrap_or_else(|e| {
            panic!(
                "ls-local --json: {e}: {}",
                String::from_utf8_lossy(&late_ls.stderr)
            )
        });
    let left: Vec<&serde_json::Value> = local_workers
        .as_array()
        .expect("ls-local --json is a list")
        .iter()
        .filter(|w| {
            w["name"]
                .as_str()
                .is_some_and(|n| n.starts_with(&late_fleet))
                && w["running"] == true
        })
        .collect();
    assert!(
        left.is_empty(),
        "a worker that never became ready is still running: {left:?}"
    );

    // The golden disk, offline: a GPT disk whose root filesystem is labelled `rootfs`.
    let raw = dir.path().join("golden.raw");
    assert!(
        run(Command::new("qemu-img")
            .args(["convert", "-O", "raw"])
            .arg(&golden)
            .arg(&raw))
        .status
        .success()
    );
    let (root_offset, table) = root_partition(&raw);
    assert_eq!(table, "gpt");
    let blkid = run(Command::new("blkid")
        .args(["-p", "-o", "export", "-O"])
        .arg(root_offset.to_string())
        .arg(&raw));
    let blkid = String::from_utf8_lossy(&blkid.stdout);
    assert!(
        blkid.lines().any(|l| l == "TYPE=ext4") && blkid.lines().any(|l| l == "LABEL=rootfs"),
        "{blkid}"
    );
    let sudoers = debugfs(&raw, "stat /etc/sudoers.d/90-builder");
    assert!(sudoers.contains("Mode:  0440"), "{sudoers}");
    let content = debugfs(&raw, "cat /etc/sudoers.d/90-builder");
    assert_eq!(image_builder_visudo(&content), "ok", "{content}");
    assert!(
        debugfs(&raw, "cat /etc/apt/apt.conf.d/90image-builder-dpkg-lock")
            .contains("DPkg::Lock::Timeout")
    );
    let wants = debugfs(&raw, "ls -l /etc/systemd/system/cloud-init.target.wants");
    assert!(
        wants.contains("vm-agent.service"),
        "the agent unit is not enabled:\n{wants}"
    );
    // The baked agent config, read back with vm-agent's own parser: its `[artifacts]` table
    // is the spec's `agent.artifact`.
    let baked = debugfs(&raw, "cat /etc/vm-agent/config.toml");
    let baked = vm_agent::config::Config::from_toml(&baked, Path::new("config.toml"))
        .unwrap_or_else(|e| panic!("the baked agent config does not parse: {e}\n{baked}"));
    let baked_art = baked
        .artifacts
        .expect("the spec's agent.artifact is baked as [artifacts]");
    assert_eq!(baked_art.bucket, BUCKET);
    assert_eq!(baked_art.endpoint, format!("http://10.0.2.2:{}", s3.port));
    assert_eq!(baked_art.sha.as_deref(), Some(sha));
    assert!(baked_art.required && baked_art.path_style);
    assert_eq!(baked.destroy.provider, vm_agent::config::Provider::Local);
    let resolv = debugfs(&raw, "stat /etc/resolv.conf");
    assert!(
        resolv.contains("Type: symlink"),
        "the bake must leave the image's resolv.conf as it was:\n{resolv}"
    );
    let grep = run(Command::new("grep").args(["-c", "-a", CANARY]).arg(&raw));
    assert_eq!(
        String::from_utf8_lossy(&grep.stdout).trim(),
        "0",
        "the bake's canary secret is in the golden image"
    );
    eprintln!("e2e: total {:.0}s", t0.elapsed().as_secs_f64());
}

fn image_builder_visudo(content: &str) -> &'static str {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("sudoers");
    std::fs::write(&p, content).unwrap();
    let st = Command::new("visudo").arg("-cf").arg(&p).output();
    if st.is_ok_and(|o| o.status.success()) {
        "ok"
    } else {
        "bad"
    }
}
