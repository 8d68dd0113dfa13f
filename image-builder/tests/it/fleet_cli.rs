//! `image-builder fleet` through the real binary against the simulator: the spending
//! guardrails (no creation without `--yes` off a terminal, caps, the human-only policy
//! under `CI=true`), secrets never in any argv, output, log or state, and `down` without
//! local state leaving no droplet.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use do_sim::{Fault, FaultRule, SeedImage, Sim, SimConfig};

const TOKEN: &str = "dop_v1_fleet_cli_host_token_3c4d";
const WORKER_TOKEN: &str = "dop_v1_fleet_cli_worker_token_7e8f";
const SPACE_ID: &str = "DO00FLEETREADKEY";
const SPACE_SECRET: &str = "fleet-cli-space-secret-5a6b";

struct Env {
    sim: Sim,
    dir: tempfile::TempDir,
    spec: PathBuf,
}

impl Env {
    async fn start() -> Env {
        let sim = Sim::start(SimConfig {
            token: Some(TOKEN.into()),
            droplet_boot_ms: 50,
            action_ms: 50,
            ..SimConfig::default()
        })
        .await
        .unwrap();
        sim.seed_private_image(SeedImage {
            name: "ci-worker-20260101-000000".into(),
            created_at: None,
            tags: vec!["image-builder".into()],
            region: Some("nyc3".into()),
        });
        let dir = tempfile::tempdir().unwrap();
        let spec = dir.path().join("worker.yaml");
        std::fs::write(
            &spec,
            "name: ci-worker\nbase:\n  digitalocean: debian-12-x64\nbuild_user:\n  name: builder\n\
             agent:\n  artifact:\n    bucket: builds\n    endpoint: http://127.0.0.1:9\n    sha: 0123abcd\n\
             snapshot:\n  name: \"{name}-{timestamp}\"\ndigitalocean:\n  region: nyc3\n  size: s-1vcpu-1gb\n",
        )
        .unwrap();
        Env { sim, dir, spec }
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_image-builder"));
        c.args(args)
            .arg("--api-url")
            .arg(self.sim.api_url())
            .current_dir(self.dir.path())
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", self.dir.path())
            .env("IMAGE_BUILDER_STATE_DIR", self.dir.path().join("state"))
            .env("IMAGE_BUILDER_CONFIG", self.dir.path().join("config.toml"))
            .env("IMAGE_BUILDER_LOG", "debug")
            .env("DIGITALOCEAN_TOKEN", TOKEN)
            .env("DIGITALOCEAN_WORKER_TOKEN", WORKER_TOKEN)
            .env("WORKER_SPACES_ACCESS_KEY_ID", SPACE_ID)
            .env("WORKER_SPACES_SECRET_ACCESS_KEY", SPACE_SECRET)
            .stdin(Stdio::null());
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().unwrap()
    }

    fn up(&self, extra: &[&str]) -> Output {
        self.up_command(extra).output().unwrap()
    }

    /// `fleet up SPEC --name ci --no-wait --poll 20ms EXTRA...`, to be run.
    fn up_command(&self, extra: &[&str]) -> Command {
        let spec = self.spec.to_str().unwrap().to_owned();
        let mut args = vec![
            "fleet",
            "up",
            &spec,
            "--name",
            "ci",
            "--no-wait",
            "--poll",
            "20ms",
        ];
        args.extend_from_slice(extra);
        self.command(&args)
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn assert_no_secret(what: &str, s: &str) {
    for secret in [TOKEN, WORKER_TOKEN, SPACE_SECRET] {
        assert!(!s.contains(secret), "a secret is in {what}:\n{s}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn off_a_terminal_nothing_is_created_without_yes() {
    let env = Env::start().await;
    let out = env.up(&["-n", "2"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("pass --yes"),
        "{}",
        text(&out.stderr)
    );
    assert!(
        text(&out.stderr).contains("2 × s-1vcpu-1gb"),
        "the spending is shown first"
    );
    assert_eq!(env.sim.count("POST /v2/droplets"), 0);
    assert!(env.sim.droplet_ids().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caps_and_the_human_only_policy_refuse_through_the_binary() {
    let env = Env::start().await;
    let cfg = env.dir.path().join("config.toml");
    std::fs::write(&cfg, "[spending]\nmax_workers_per_fleet = 1\n").unwrap();
    let out = env.up(&["-n", "2", "--yes"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(
        err.contains("spending.max_workers_per_fleet") && err.contains("config.toml"),
        "{err}"
    );

    std::fs::write(&cfg, "[spending]\nhuman_only = true\n").unwrap();
    let out = env
        .command(&[
            "fleet",
            "up",
            env.spec.to_str().unwrap(),
            "--name",
            "ci",
            "--yes",
            "--no-wait",
        ])
        .env("CI", "true")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(err.contains("human_only") && err.contains("$CI"), "{err}");
    assert!(
        err.contains("refused by the human-only policy"),
        "the refusal is logged: {err}"
    );
    // Off a terminal without CI it is refused too, --yes or not.
    let out = env.up(&["--yes"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("stdin is not a terminal"),
        "{}",
        text(&out.stderr)
    );

    // No worker token: a usage error, unless workers may only power off.
    std::fs::remove_file(&cfg).unwrap();
    let out = env
        .command(&[
            "fleet",
            "up",
            env.spec.to_str().unwrap(),
            "--name",
            "ci",
            "--yes",
            "--no-wait",
        ])
        .env_remove("DIGITALOCEAN_WORKER_TOKEN")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("DIGITALOCEAN_WORKER_TOKEN"));
    assert_eq!(env.sim.count("POST /v2/droplets"), 0, "nothing was created");
}

/// The ids of processes whose command line holds a secret.
fn secrets_in_argv() -> Vec<String> {
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().filter_map(|e| e.ok()) {
        let Ok(cmdline) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline);
        for secret in [TOKEN, WORKER_TOKEN, SPACE_SECRET, SPACE_ID] {
            if cmdline.contains(secret) {
                found.push(format!(
                    "{}: {}",
                    e.file_name().to_string_lossy(),
                    cmdline.replace('\0', " ")
                ));
            }
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_stay_out_of_argv_output_logs_and_state_and_down_needs_no_state() {
    let env = Env::start().await;
    // Hold the create open while /proc is scanned: the POST is answered only after a pause.
    env.sim.set_faults(vec![FaultRule {
        route: "POST /v2/droplets".into(),
        nth: 1,
        times: 1,
        fault: Fault::Delay { ms: 1500 },
    }]);
    let mut child = env
        .up_command(&["-n", "3", "--yes", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut scans = 0;
    while env.sim.count("POST /v2/droplets") == 0 && child.try_wait().unwrap().is_none() {
        let found = secrets_in_argv();
        assert!(found.is_empty(), "secrets in argv: {found:?}");
        scans += 1;
        std::thread::sleep(Duration::from_millis(20));
    }
    // The POST is in flight (held by the simulator): scan once more while it is.
    let found = secrets_in_argv();
    assert!(
        found.is_empty(),
        "secrets in argv during the create: {found:?}"
    );
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(scans > 0 || env.sim.count("POST /v2/droplets") == 1);
    assert_no_secret("fleet up's stdout", &text(&out.stdout));
    assert_no_secret("fleet up's stderr (debug log)", &text(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["workers"].as_array().unwrap().len(), 3);
    let state = std::fs::read_to_string(env.dir.path().join("state/fleets/ci.json")).unwrap();
    assert_no_secret("the state file", &state);

    let ls = env.run(&["fleet", "ls", "ci", "--json"]);
    assert!(ls.status.success(), "{}", text(&ls.stderr));
    assert_no_secret("fleet ls --json", &text(&ls.stdout));
    let listed: serde_json::Value = serde_json::from_slice(&ls.stdout).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 3);

    // Without local state, `down` finds the workers by tag and confirms each gone.
    let down = env
        .command(&["fleet", "down", "ci", "--yes", "--json", "--poll", "20ms"])
        .env("IMAGE_BUILDER_STATE_DIR", env.dir.path().join("lost-state"))
        .output()
        .unwrap();
    assert!(down.status.success(), "{}", text(&down.stderr));
    assert!(env.sim.droplet_ids().is_empty(), "droplets left after down");
    let off = env.run(&["fleet", "down", "ci"]);
    assert_eq!(
        off.status.code(),
        Some(2),
        "down off a terminal needs --yes: {}",
        text(&off.stderr)
    );
}

/// `fleet user-data SPEC --name tf -o OUT` with the worker token in the environment.
fn user_data_command(env: &Env, out: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_image-builder"));
    c.args([
        "fleet",
        "user-data",
        env.spec.to_str().unwrap(),
        "--name",
        "tf",
        "-o",
    ])
    .arg(out)
    .env("IMAGE_BUILDER_STATE_DIR", env.dir.path().join("state"))
    .env("DIGITALOCEAN_WORKER_TOKEN", WORKER_TOKEN)
    .stdin(Stdio::null());
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_data_for_terraform_is_0600_and_pins_the_fleet() {
    let env = Env::start().await;
    let out_file = env.dir.path().join("user-data.yaml");
    let out = env
        .command(&[
            "fleet",
            "user-data",
            env.spec.to_str().unwrap(),
            "--name",
            "tf",
            "-o",
            out_file.to_str().unwrap(),
        ])
        .env_remove("DIGITALOCEAN_TOKEN")
        .output()
        .unwrap();
    // `fleet user-data` takes no --api-url; the flag above is refused as a usage error.
    assert_eq!(out.status.code(), Some(64), "{}", text(&out.stderr));
    let out = user_data_command(&env, &out_file).output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(&out_file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let ud = std::fs::read_to_string(&out_file).unwrap();
    assert!(ud.contains(WORKER_TOKEN) && ud.contains("ed25519_private"));
    let known =
        std::fs::read_to_string(env.dir.path().join("state/fleets/tf/known_hosts")).unwrap();
    assert!(known.starts_with("tf-* ssh-ed25519 "), "{known}");
    assert!(Path::new(&env.dir.path().join("state/fleets/tf/id_ed25519")).is_file());

    // The readiness callback's token comes from a 0600 file: one readable by others is
    // refused naming the file, and nothing is written; the token never reaches stderr.
    let token_file = env.dir.path().join("callback-token");
    std::fs::write(&token_file, "cb-token-77aa\n").unwrap();
    std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let cb_out = env.dir.path().join("cb-user-data.yaml");
    let with_callback = |out_path: &Path| {
        user_data_command(&env, out_path)
            .args(["--callback-url", "https://ci.example.test/ready"])
            .arg("--callback-token-file")
            .arg(&token_file)
            .output()
            .unwrap()
    };
    let refused = with_callback(&cb_out);
    assert_eq!(refused.status.code(), Some(65), "{}", text(&refused.stderr));
    assert!(
        text(&refused.stderr).contains("callback-token"),
        "{}",
        text(&refused.stderr)
    );
    assert!(
        text(&refused.stderr).contains("chmod 600"),
        "{}",
        text(&refused.stderr)
    );
    assert!(!text(&refused.stderr).contains("cb-token-77aa"));
    assert!(
        !cb_out.exists(),
        "user-data written after a refused secret file"
    );
    std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let ok = with_callback(&cb_out);
    assert!(ok.status.success(), "{}", text(&ok.stderr));
    let ud = std::fs::read_to_string(&cb_out).unwrap();
    assert!(
        ud.contains("cb-token-77aa"),
        "the token is in the worker's secrets"
    );
}

/// SIGKILL of `fleet up` at each API step (the step's request processed, its answer held
/// by the simulator until the kill), then `fleet down` with no local state: 0 droplets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_of_fleet_up_at_every_step_then_down_without_state_leaves_nothing() {
    for (route, nth) in [
        ("GET /v2/account", 1),
        ("POST /v2/droplets", 1),
        ("GET /v2/droplets", 3),
    ] {
        let env = Env::start().await;
        env.sim.set_faults(vec![FaultRule {
            route: route.into(),
            nth,
            times: 1,
            fault: Fault::Hold {
                gate: "kill-point".into(),
            },
        }]);
        let mut child = env
            .up_command(&["-n", "3", "--yes"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        tokio::time::timeout(Duration::from_secs(120), env.sim.wait_held("kill-point", 1))
            .await
            .unwrap_or_else(|_| panic!("fleet up never reached {route} #{nth}"));
        child.kill().unwrap();
        use std::os::unix::process::ExitStatusExt as _;
        assert_eq!(child.wait().unwrap().signal(), Some(9), "{route}");
        env.sim.release("kill-point");
        let down = env
            .command(&["fleet", "down", "ci", "--yes", "--poll", "20ms"])
            .env("IMAGE_BUILDER_STATE_DIR", env.dir.path().join("no-state"))
            .output()
            .unwrap();
        assert!(down.status.success(), "{route}: {}", text(&down.stderr));
        assert!(
            env.sim.droplet_ids().is_empty(),
            "{route}: droplets left after down"
        );
    }
}
