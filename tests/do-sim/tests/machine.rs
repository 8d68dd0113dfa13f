//! Machine mode: droplets are real `systemd-nspawn` containers.
//!
//! Needs root, systemd-container, iproute2, util-linux and a base root
//! filesystem: `$DO_SIM_BASE_ROOTFS`, or the one `image-builder base build
//! --json` prints (built and cached under ~/.cache/image-builder on first use,
//! ~2 min). Without them these tests FAIL naming what is missing; they never skip.
//!
//! Every wait is for an event (a state change the containers report, a file),
//! never for a time. [`HANG_LIMIT`] only turns a hang into a failure.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use do_sim::{MachineConfig, Power, Sim, SimConfig};
use serde_json::{Value, json};

const TOKEN: &str = "machine-token";
/// A test that waits longer than this is stuck, not slow.
const HANG_LIMIT: Duration = Duration::from_secs(300);

/// The base root filesystem (see the module docs), found once per test binary.
fn base_rootfs() -> PathBuf {
    static BASE: OnceLock<PathBuf> = OnceLock::new();
    BASE.get_or_init(|| {
        if let Some(dir) = std::env::var_os("DO_SIM_BASE_ROOTFS") {
            return PathBuf::from(dir);
        }
        let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../Cargo.toml");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
        let out = Command::new(cargo)
            .args(["run", "--quiet", "-p", "image-builder", "--manifest-path"])
            .arg(&manifest)
            .args(["--", "base", "build", "--json"])
            .output()
            .expect("running `cargo run -p image-builder -- base build --json`");
        assert!(
            out.status.success(),
            "`image-builder base build --json` failed (it needs root, mmdebstrap and a Debian mirror): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let base: Value = serde_json::from_slice(&out.stdout).expect("base build prints JSON");
        PathBuf::from(base["rootfs"].as_str().expect("base JSON has rootfs"))
    })
    .clone()
}

fn machine_config() -> MachineConfig {
    MachineConfig::new(base_rootfs())
}

async fn start(machines: MachineConfig) -> Sim {
    let config = SimConfig {
        token: Some(TOKEN.to_owned()),
        machines: Some(machines),
        ..SimConfig::default()
    };
    Sim::start(config)
        .await
        .unwrap_or_else(|e| panic!("machine mode cannot start: {e}"))
}

struct Api {
    http: reqwest::Client,
    base: String,
}

impl Api {
    fn new(sim: &Sim) -> Self {
        Self {
            http: reqwest::Client::new(),
            base: sim.api_url(),
        }
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(TOKEN);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.expect("request reaches the simulator");
        let status = resp.status().as_u16();
        let text = resp.text().await.expect("body");
        let v = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).expect("JSON body")
        };
        (status, v)
    }

    async fn create(&self, body: Value) -> Value {
        let (s, v) = self
            .call(reqwest::Method::POST, "/v2/droplets", Some(body))
            .await;
        assert_eq!(s, 202, "{v}");
        v
    }

    async fn create_one(&self, name: &str, image: Value, user_data: Option<&str>) -> u64 {
        let v = self
            .create(
                json!({"name": name, "size": "s-1vcpu-1gb", "image": image, "region": "nyc3",
                            "tags": ["machine-test"], "user_data": user_data}),
            )
            .await;
        v["droplet"]["id"].as_u64().expect("droplet id")
    }

    async fn action(&self, id: u64, body: Value) -> u64 {
        let (s, v) = self
            .call(
                reqwest::Method::POST,
                &format!("/v2/droplets/{id}/actions"),
                Some(body),
            )
            .await;
        assert_eq!(s, 201, "{v}");
        v["action"]["id"].as_u64().expect("action id")
    }

    async fn delete(&self, path: &str) {
        let (s, v) = self.call(reqwest::Method::DELETE, path, None).await;
        assert_eq!(s, 204, "DELETE {path}: {v}");
    }
}

fn droplet(state: &Value, id: u64) -> Option<&Value> {
    state["droplets"]
        .as_array()?
        .iter()
        .find(|d| d["id"].as_u64() == Some(id))
}

fn action_status(state: &Value, id: u64) -> Option<String> {
    state["actions"]
        .as_array()?
        .iter()
        .find(|a| a["id"].as_u64() == Some(id))
        .and_then(|a| a["status"].as_str())
        .map(str::to_owned)
}

/// Wait for `probe`, failing (with the simulator's state) instead of hanging.
async fn wait<T>(sim: &Sim, what: &str, probe: impl FnMut(&Sim) -> Option<T>) -> T {
    match tokio::time::timeout(HANG_LIMIT, sim.wait_until(probe)).await {
        Ok(found) => found,
        Err(_) => panic!("stuck waiting for {what}; state: {:#}", sim.state()),
    }
}

/// Wait until the droplet has `status` and no action in flight.
async fn wait_status(sim: &Sim, id: u64, status: &str) {
    wait(sim, &format!("droplet {id} {status}"), |s| {
        let state = s.state();
        let d = droplet(&state, id)?;
        (d["status"] == status && d["locked"] == false).then_some(())
    })
    .await;
}

async fn wait_action(sim: &Sim, action_id: u64) -> String {
    wait(sim, &format!("action {action_id}"), |s| {
        action_status(&s.state(), action_id).filter(|st| st != "in-progress")
    })
    .await
}

/// `argv` inside the droplet; its stdout, asserting success.
async fn run_in(sim: &Sim, id: u64, argv: &[&str]) -> String {
    let out = sim
        .exec(id, argv)
        .await
        .unwrap_or_else(|e| panic!("{argv:?} in droplet {id}: {e}"));
    assert!(
        out.status.success(),
        "{argv:?} in droplet {id}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// GET `url` from inside the droplet.
async fn curl_in(sim: &Sim, id: u64, url: &str) -> String {
    run_in(sim, id, &["curl", "-sSf", "--max-time", "20", url]).await
}

async fn metadata_in(sim: &Sim, id: u64, item: &str) -> String {
    curl_in(
        sim,
        id,
        &format!("http://169.254.169.254/metadata/v1/{item}"),
    )
    .await
}

/// The process exists and is not a zombie.
fn process_alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        let state = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next());
        !matches!(state, Some("Z" | "X") | None)
    })
}

fn report_boot(what: &str, sim: &Sim, id: u64) {
    if let Some(m) = sim.machine(id) {
        eprintln!(
            "{what}: droplet {id} boot {}: init running after {:?}, booted (READY=1) after {:?}",
            m.boots, m.up_after, m.booted_after
        );
    }
}

#[tokio::test]
async fn create_boots_a_container_and_power_actions_drive_it() {
    let sim = start(machine_config()).await;
    let api = Api::new(&sim);
    let user_data =
        "#cloud-config\nruncmd:\n  - [sh, -c, 'echo reached-cloud-init > /root/from-user-data']\n";
    let created = Instant::now();
    let id = api
        .create_one("power-1", json!("debian-12-x64"), Some(user_data))
        .await;
    assert_eq!(droplet(&sim.state(), id).expect("droplet")["status"], "new");

    wait_status(&sim, id, "active").await;
    eprintln!("create -> active: {:?}", created.elapsed());
    let m = sim.machine(id).expect("a machine for the droplet");
    assert_eq!(m.power, Power::Running);
    let leader = m.leader.expect("the container's init");
    assert!(process_alive(leader), "the container's init runs");
    assert_eq!(metadata_in(&sim, id, "id").await.trim(), id.to_string());
    assert_eq!(metadata_in(&sim, id, "hostname").await.trim(), "power-1");

    // The user-data reached cloud-init: its final stage ran before systemd's READY=1.
    wait(&sim, "the boot to finish", |s| {
        s.machine(id).filter(|m| m.booted)
    })
    .await;
    report_boot("first boot", &sim, id);
    let root = sim.droplet_tree(id).expect("a running droplet's tree");
    let cloud_init_log =
        || std::fs::read_to_string(root.join("var/log/cloud-init.log")).unwrap_or_default();
    assert_eq!(
        std::fs::read_to_string(root.join("root/from-user-data")).unwrap_or_else(|e| panic!(
            "runcmd wrote no file ({e}); cloud-init.log:\n{}",
            cloud_init_log()
        )),
        "reached-cloud-init\n"
    );
    assert_eq!(
        run_in(&sim, id, &["hostname"]).await.trim(),
        "power-1",
        "cloud-init set the hostname from the NoCloud meta-data"
    );

    // shutdown: orderly; the droplet is off once the container is gone.
    let a = api.action(id, json!({"type": "shutdown"})).await;
    assert_eq!(wait_action(&sim, a).await, "completed");
    wait_status(&sim, id, "off").await;
    assert_eq!(sim.machine(id).expect("machine").power, Power::Off);
    assert!(!process_alive(leader), "the container is gone");

    // power_on: a new container on the same disk.
    let a = api.action(id, json!({"type": "power_on"})).await;
    assert_eq!(wait_action(&sim, a).await, "completed");
    wait_status(&sim, id, "active").await;
    let m = sim.machine(id).expect("machine");
    assert_eq!((m.power, m.boots), (Power::Running, 2));
    report_boot("power_on", &sim, id);
    assert!(
        sim.droplet_tree(id)
            .expect("running")
            .join("root/from-user-data")
            .exists(),
        "the disk survived the power cycle"
    );

    // power_off: hard.
    let leader = m.leader.expect("init");
    let a = api.action(id, json!({"type": "power_off"})).await;
    assert_eq!(wait_action(&sim, a).await, "completed");
    wait_status(&sim, id, "off").await;
    assert!(!process_alive(leader));

    // reboot of a running droplet: the container restarts.
    let a = api.action(id, json!({"type": "power_on"})).await;
    assert_eq!(wait_action(&sim, a).await, "completed");
    let before = sim.machine(id).expect("machine");
    let a = api.action(id, json!({"type": "reboot"})).await;
    assert_eq!(wait_action(&sim, a).await, "completed");
    wait_status(&sim, id, "active").await;
    let after = sim.machine(id).expect("machine");
    assert_eq!(after.boots, before.boots + 1);
    assert_ne!(after.leader, before.leader);
    assert_eq!(after.power, Power::Running);
}

#[tokio::test]
async fn a_container_that_powers_itself_off_makes_the_droplet_off() {
    let sim = start(machine_config()).await;
    let api = Api::new(&sim);
    let id = api
        .create_one("self-off", json!("debian-12-x64"), None)
        .await;
    wait_status(&sim, id, "active").await;
    // As at the end of a bake: systemctl needs the booted system's manager.
    wait(&sim, "the boot to finish", |s| {
        s.machine(id).filter(|m| m.booted)
    })
    .await;
    let leader = sim.machine(id).and_then(|m| m.leader).expect("init");
    let actions_before = sim.state()["actions"].as_array().map(Vec::len);

    let out = sim
        .exec(id, &["systemctl", "poweroff"])
        .await
        .expect("nsenter");
    // systemctl returns once the job is queued, or is killed by the shutdown it started
    // (the droplet's PID namespace ends) when that comes first on a loaded machine.
    use std::os::unix::process::ExitStatusExt as _;
    assert!(
        out.status.success() || out.status.signal() == Some(9),
        "{}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    wait_status(&sim, id, "off").await;
    assert_eq!(sim.machine(id).expect("machine").power, Power::Off);
    assert!(!process_alive(leader));
    assert_eq!(
        sim.state()["actions"].as_array().map(Vec::len),
        actions_before,
        "a guest power-off is no API action"
    );
}

#[tokio::test]
async fn snapshot_of_a_running_droplet_and_a_droplet_from_it() {
    let sim = start(machine_config()).await;
    let api = Api::new(&sim);
    let base = base_rootfs();
    let id = api.create_one("golden", json!("debian-12-x64"), None).await;
    wait_status(&sim, id, "active").await;
    run_in(
        &sim,
        id,
        &[
            "sh",
            "-c",
            "echo baked > /root/marker && echo changed >> /etc/issue && rm /etc/motd && sync",
        ],
    )
    .await;
    let leader = sim.machine(id).and_then(|m| m.leader);

    // Allowed on a running droplet (DigitalOcean recommends powering off first).
    let a = api
        .action(id, json!({"type": "snapshot", "name": "golden-1"}))
        .await;
    assert_eq!(wait_action(&sim, a).await, "completed");
    wait_status(&sim, id, "active").await;
    assert_eq!(
        sim.machine(id).and_then(|m| m.leader),
        leader,
        "the droplet kept running"
    );
    let state = sim.state();
    let image_id = droplet(&state, id).expect("droplet")["snapshot_ids"][0]
        .as_u64()
        .expect("the snapshot's image id");
    let tree = sim.image_tree(image_id).expect("the snapshot's tree");
    assert_eq!(
        std::fs::read_to_string(tree.join("root/marker")).expect("marker"),
        "baked\n"
    );
    assert!(
        std::fs::read_to_string(tree.join("etc/issue"))
            .expect("issue")
            .ends_with("changed\n")
    );
    assert!(!tree.join("etc/motd").exists(), "deleted in the droplet");
    // The base is untouched (the snapshot's changed files are new inodes).
    assert!(base.join("etc/motd").exists());
    assert!(
        !std::fs::read_to_string(base.join("etc/issue"))
            .expect("base issue")
            .contains("changed")
    );
    eprintln!(
        "snapshot tree {} copies the image as {:?}",
        tree.display(),
        sim.state()["machines"]["copy_mode"]
    );

    // A droplet from the snapshot boots the snapshot's tree.
    let from = api.create_one("from-golden", json!(image_id), None).await;
    wait_status(&sim, from, "active").await;
    assert_eq!(
        run_in(&sim, from, &["cat", "/root/marker"]).await,
        "baked\n"
    );
    assert_eq!(sim.machine(from).expect("machine").image_id, image_id);

    // Deleting the image keeps its tree while a droplet's disk sits on it...
    api.delete(&format!("/v2/images/{image_id}")).await;
    assert!(sim.image_tree(image_id).is_none(), "the image is gone");
    assert!(tree.exists(), "still the disk of droplet {from}");
    assert_eq!(
        run_in(&sim, from, &["cat", "/root/marker"]).await,
        "baked\n"
    );
    // ...and removes it with that droplet.
    api.delete(&format!("/v2/droplets/{from}")).await;
    wait(&sim, "the snapshot tree to go", |s| {
        (s.machine(from).is_none() && !tree.exists()).then_some(())
    })
    .await;
}

#[tokio::test]
async fn destroying_a_running_droplet_removes_container_and_tree() {
    let sim = start(machine_config()).await;
    let api = Api::new(&sim);
    let id = api.create_one("doomed", json!("debian-12-x64"), None).await;
    wait_status(&sim, id, "active").await;
    let m = sim.machine(id).expect("machine");
    let leader = m.leader.expect("init");
    assert!(m.dir.join("upper").is_dir());

    api.delete(&format!("/v2/droplets/{id}")).await;
    wait(&sim, "the machine to go", |s| {
        s.machine(id).is_none().then_some(())
    })
    .await;
    assert!(!process_alive(leader), "the container is gone");
    assert!(!m.dir.exists(), "the droplet's tree is gone");
    assert!(
        !Path::new("/run/systemd/nspawn/propagate")
            .join(&m.machine)
            .exists(),
        "nspawn's host directory is gone"
    );
    let (s, _) = api
        .call(reqwest::Method::GET, &format!("/v2/droplets/{id}"), None)
        .await;
    assert_eq!(s, 404);
}

#[tokio::test]
async fn ten_droplets_at_once_each_see_their_own_metadata() {
    let sim = start(machine_config()).await;
    let api = Api::new(&sim);
    let names: Vec<String> = (1..=10).map(|i| format!("worker-{i}")).collect();
    let created = Instant::now();
    let v = api
        .create(
            json!({"names": names, "size": "s-1vcpu-1gb", "image": "debian-12-x64",
                       "region": "nyc3", "tags": ["fleet"]}),
        )
        .await;
    let ids: Vec<u64> = v["droplets"]
        .as_array()
        .expect("droplets")
        .iter()
        .map(|d| d["id"].as_u64().expect("id"))
        .collect();
    assert_eq!(ids.len(), 10);
    // One more tag per droplet, so each has tags of its own.
    for (i, id) in ids.iter().enumerate() {
        let tag = format!("own-{i}");
        let (s, v) = api
            .call(
                reqwest::Method::POST,
                "/v2/tags",
                Some(json!({"name": tag})),
            )
            .await;
        assert_eq!(s, 201, "{v}");
        let (s, v) = api
            .call(
                reqwest::Method::POST,
                &format!("/v2/tags/{tag}/resources"),
                Some(json!({"resources": [{"resource_id": id.to_string(), "resource_type": "droplet"}]})),
            )
            .await;
        assert_eq!(s, 204, "{v}");
    }
    for id in &ids {
        wait_status(&sim, *id, "active").await;
    }
    eprintln!("10 droplets: create -> all active: {:?}", created.elapsed());
    let leaders: Vec<u32> = ids
        .iter()
        .map(|id| sim.machine(*id).and_then(|m| m.leader).expect("init"))
        .collect();
    assert!(leaders.iter().all(|pid| process_alive(*pid)));
    let mut distinct = leaders.clone();
    distinct.sort_unstable();
    distinct.dedup();
    assert_eq!(distinct.len(), 10, "ten containers");
    for (i, id) in ids.iter().enumerate() {
        assert_eq!(metadata_in(&sim, *id, "id").await.trim(), id.to_string());
        let tags = metadata_in(&sim, *id, "tags").await;
        assert_eq!(
            tags.lines().collect::<Vec<_>>(),
            vec!["fleet".to_owned(), format!("own-{i}")],
            "droplet {id}"
        );
        let all: Value = serde_json::from_str(
            &curl_in(&sim, *id, "http://169.254.169.254/metadata/v1.json").await,
        )
        .expect("v1.json");
        assert_eq!(all["droplet_id"].as_u64(), Some(*id));
    }
    for id in &ids {
        wait(&sim, "every boot to finish", |s| {
            s.machine(*id).filter(|m| m.booted)
        })
        .await;
        report_boot("fleet", &sim, *id);
    }
    eprintln!("10 droplets: create -> all booted: {:?}", created.elapsed());
}

#[tokio::test]
async fn a_droplet_reaches_the_api_and_the_s3_server() {
    let s3 = s3_test_server::S3Server::start();
    let key = "builds/abc/manifest.json";
    s3_test_server::write_file(&s3.object_path(key), b"{\"files\": []}", 0o644);
    let s3_addr: std::net::SocketAddr = format!("127.0.0.1:{}", s3.port).parse().expect("addr");
    let sim = start(machine_config().forward(s3_addr)).await;
    let api = Api::new(&sim);
    let id = api.create_one("client", json!("debian-12-x64"), None).await;
    wait_status(&sim, id, "active").await;

    // The same URL as on the host, signed (SigV4 covers host and port) by curl.
    let url = format!("{}/{}/{key}", s3.endpoint(), s3_test_server::BUCKET);
    let user = format!("{}:{}", s3.access_key, s3.secret_key);
    let got = run_in(
        &sim,
        id,
        &[
            "curl",
            "-sSf",
            "--max-time",
            "20",
            "--aws-sigv4",
            "aws:amz:us-east-1:s3",
            "--user",
            &user,
            // S3 wants it; curl 7.88 does not send it by itself.
            "-H",
            "x-amz-content-sha256: UNSIGNED-PAYLOAD",
            &url,
        ],
    )
    .await;
    assert_eq!(got, "{\"files\": []}");
    // The simulator's API at its own address: the droplet destroys itself.
    let self_destroy = format!(
        "curl -sSf --max-time 20 -X DELETE -H 'Authorization: Bearer {TOKEN}' {}/v2/droplets/$(curl -sSf http://169.254.169.254/metadata/v1/id)",
        sim.api_url()
    );
    // The droplet ends with its DELETE: curl may see the answer and exit 0, or be killed
    // with everything else in the droplet first (as on DigitalOcean). Either way the
    // simulator answered 204 to that one request, and the machine is gone.
    let out = sim
        .exec(id, &["sh", "-c", &self_destroy])
        .await
        .unwrap_or_else(|e| panic!("self-destroy in droplet {id}: {e}"));
    use std::os::unix::process::ExitStatusExt as _;
    assert!(
        out.status.success() || out.status.signal() == Some(9),
        "self-destroy in droplet {id}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    wait(&sim, "the self-destroyed machine to go", |s| {
        s.machine(id).is_none().then_some(())
    })
    .await;
    assert_eq!(sim.count("DELETE /v2/droplets/{id}"), 1);
    let delete = sim
        .requests()
        .entries
        .into_iter()
        .find(|e| e.route == "DELETE /v2/droplets/{id}")
        .expect("the DELETE is in the request log");
    assert_eq!(delete.status, 204, "{delete:?}");
    assert!(delete.uri.ends_with(&format!("/{id}")), "{delete:?}");
}

/// A `do-sim` process in machine mode with one running droplet.
struct Orphaned {
    child: tokio::process::Child,
    state_dir: PathBuf,
    config_file: PathBuf,
    run_dir: PathBuf,
    machine: String,
    needle: Vec<u8>,
}

impl Orphaned {
    async fn start(label: &str) -> Orphaned {
        let state_dir = PathBuf::from(format!(
            "{}/{label}-{}",
            do_sim::machine::DEFAULT_STATE_DIR,
            std::process::id()
        ));
        let config = json!({"token": TOKEN, "machines": {
            "base_rootfs": base_rootfs(), "state_dir": state_dir}});
        let config_file =
            std::env::temp_dir().join(format!("do-sim-{label}-{}.json", std::process::id()));
        std::fs::write(&config_file, config.to_string()).expect("config");
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_do-sim"))
            .arg("--config")
            .arg(&config_file)
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("do-sim starts");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(stdout));
        let first = tokio::time::timeout(HANG_LIMIT, lines.next_line())
            .await
            .expect("do-sim prints its URLs")
            .expect("stdout")
            .expect("a line");
        let urls: Value = serde_json::from_str(&first).expect("JSON");
        let api = Api {
            http: reqwest::Client::new(),
            base: urls["api_url"].as_str().expect("api_url").to_owned(),
        };
        let id = api.create_one("orphan", json!("debian-12-x64"), None).await;
        // Another process: its API is all there is, polled as a DigitalOcean client would.
        let deadline = Instant::now() + HANG_LIMIT;
        let (run_dir, machine) = loop {
            let (_, state) = api.call(reqwest::Method::GET, "/_sim/state", None).await;
            if droplet(&state, id).is_some_and(|d| d["status"] == "active") {
                let run_dir =
                    PathBuf::from(state["machines"]["run_dir"].as_str().expect("run_dir"));
                let machine = state["machines"]["machines"][0]["machine"]
                    .as_str()
                    .expect("machine name")
                    .to_owned();
                break (run_dir, machine);
            }
            assert!(Instant::now() < deadline, "droplet never active: {state:#}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert!(run_dir.is_dir());
        let run_name = run_dir
            .file_name()
            .and_then(|n| n.to_str())
            .expect("run name");
        let needle = do_sim::machine::sweep::needle(run_name, None);
        assert!(
            do_sim::machine::sweep::kill_marked(&b"no such marker"[..]).is_empty(),
            "marker scan works"
        );
        Orphaned {
            child,
            state_dir,
            config_file,
            run_dir,
            machine,
            needle,
        }
    }

    /// The run left nothing: no process, no tree, no nspawn files.
    fn assert_nothing_left(&self) {
        assert!(!self.run_dir.exists(), "the run's trees are gone");
        assert!(
            do_sim::machine::sweep::kill_marked(&self.needle).is_empty(),
            "no process of the run is left"
        );
        assert!(
            !Path::new("/run/systemd/nspawn/propagate")
                .join(&self.machine)
                .exists()
        );
        std::fs::remove_dir_all(&self.state_dir).expect("empty state dir");
        std::fs::remove_file(&self.config_file).expect("config file");
    }
}

/// Pids of processes whose argv contains `needle`.
fn pids_with_arg(needle: &str) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| {
            let pid = e.file_name().to_str()?.parse::<u32>().ok()?;
            let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
            cmdline
                .split(|b| *b == 0)
                .any(|arg| arg == needle.as_bytes())
                .then_some(pid)
        })
        .collect()
}

#[tokio::test]
async fn a_killed_run_cleans_up_after_itself() {
    let mut run = Orphaned::start("reaped").await;
    run.child.kill().await.expect("SIGKILL do-sim");
    // The reaper notices at once; wait for its last step, the run directory going.
    let deadline = Instant::now() + HANG_LIMIT;
    while run.run_dir.exists() {
        assert!(
            Instant::now() < deadline,
            "the reaper never removed {}",
            run.run_dir.display()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    run.assert_nothing_left();
}

#[tokio::test]
async fn a_killed_run_is_swept() {
    let mut run = Orphaned::start("swept").await;
    // Kill the reaper too, as a machine going down would: only the sweeper is left.
    let reapers = pids_with_arg(run.run_dir.to_str().expect("utf-8"));
    assert_eq!(reapers.len(), 1, "one reaper per run");
    for pid in reapers {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(i32::try_from(pid).expect("pid")),
            nix::sys::signal::Signal::SIGKILL,
        )
        .expect("SIGKILL the reaper");
    }
    run.child.kill().await.expect("SIGKILL do-sim");
    let swept = do_sim::machine::sweep(&run.state_dir).expect("sweep");
    assert_eq!(swept.runs, vec![run.run_dir.clone()]);
    run.assert_nothing_left();
}

#[test]
fn a_test_that_panics_leaves_nothing() {
    let seen: std::sync::Arc<std::sync::Mutex<Option<(PathBuf, String, u32)>>> =
        std::sync::Arc::default();
    let slot = seen.clone();
    let failed = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let sim = start(machine_config()).await;
            let api = Api::new(&sim);
            let id = api.create_one("panics", json!("debian-12-x64"), None).await;
            wait_status(&sim, id, "active").await;
            let run_dir = sim.machine_run_dir().expect("machine mode").to_owned();
            let machine = sim.machine(id).expect("machine");
            *slot.lock().expect("slot") =
                Some((run_dir, machine.machine, machine.leader.expect("init")));
            panic!("a test failing while its droplet runs");
        })
    })
    .join();
    assert!(failed.is_err(), "the inner test panicked");
    let (run_dir, machine, leader) = seen
        .lock()
        .expect("slot")
        .clone()
        .expect("the droplet was up before the panic");
    assert!(!process_alive(leader), "the container is gone");
    assert!(!run_dir.exists(), "the run directory is gone");
    let run_name = run_dir.file_name().and_then(|n| n.to_str()).expect("name");
    assert_eq!(
        do_sim::machine::sweep::kill_marked(&do_sim::machine::sweep::needle(run_name, None)).len(),
        0,
        "no process of the run is left"
    );
    assert!(
        !Path::new("/run/systemd/nspawn/propagate")
            .join(machine)
            .exists()
    );
}
