//! The `image-builder` binary against the simulator: SIGKILL at every step of a
//! DigitalOcean bake followed by `reap` (zero droplets left every time),
//! `bake --resume`, Ctrl-C/SIGTERM cleanup without reap, the spending
//! confirmation, and `images ls|prune`.
//!
//! A kill point is an event, not a moment: the simulator holds the response to
//! the step's request (processed, not yet answered) until the test has killed
//! the bake, so the bake is provably inside that step when the signal lands.
//!
//! Needs s3s-fs (`.ci/setup-s3.sh`); FAILS naming the script without it.

use std::os::unix::process::ExitStatusExt as _;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use crate::do_bake_support::{Env, S3Server, TOKEN, fast_sim, spec_text};
use do_api::{Client, DropletCreate, ImageSpec, RetryPolicy, Token};
use do_sim::{Fault, FaultRule, SeedImage, Sim, SimConfig};

const BIN: &str = env!("CARGO_BIN_EXE_image-builder");

/// The simulator of a bake that is to be stopped at `point`: the first request
/// of the point's route is processed and its response held at the gate named
/// after the step.
fn sim_holding(point: &KillPoint) -> SimConfig {
    let mut c = fast_sim();
    c.faults.push(FaultRule {
        route: point.route.into(),
        nth: 1,
        times: 1,
        fault: Fault::Hold {
            gate: point.step.into(),
        },
    });
    c
}

fn spawn(env: &Env, args: &[String]) -> Child {
    let log = std::fs::File::create(
        env.dir
            .path()
            .join(format!("bake-{}.log", std::process::id())),
    )
    .expect("log file");
    Command::new(BIN)
        .args(args)
        .env("IMAGE_BUILDER_LOG", "info")
        .env_remove("DIGITALOCEAN_TOKEN")
        .env_remove("DIGITALOCEAN_ACCESS_TOKEN")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .expect("spawn image-builder")
}

fn run(args: &[String]) -> Output {
    Command::new(BIN)
        .args(args)
        .env_remove("DIGITALOCEAN_TOKEN")
        .env_remove("DIGITALOCEAN_ACCESS_TOKEN")
        .stdin(Stdio::null())
        .output()
        .expect("run image-builder")
}

fn text(o: &Output) -> String {
    format!(
        "status {}\n--- stdout\n{}\n--- stderr\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Wait until the bake is held at `point` (the deadline only turns a bake that
/// never gets there into a failure instead of a hang).
async fn reached(sim: &Sim, point: &KillPoint) {
    tokio::time::timeout(Duration::from_secs(60), sim.wait_held(point.step, 1))
        .await
        .unwrap_or_else(|_| panic!("the bake never reached: {}", point.step));
}

/// SIGKILL the bake and wait for it; it must have died of that signal.
fn kill(child: &mut Child, step: &str) {
    child.kill().expect("SIGKILL");
    let status = child.wait().expect("wait for the killed bake");
    assert_eq!(
        status.signal(),
        Some(nix::sys::signal::Signal::SIGKILL as i32),
        "kill at {step}: the bake ended on its own ({status}) before the kill"
    );
}

fn reap_args(env: &Env, older_than: &str, yes: bool) -> Vec<String> {
    let mut a = vec![
        "reap".to_owned(),
        "--older-than".into(),
        older_than.into(),
        "--poll-interval".into(),
        "50ms".into(),
    ];
    if yes {
        a.push("--yes".into());
    }
    a.extend(env.conn_args());
    a
}

/// A step of the bake and the request that puts the bake inside it.
struct KillPoint {
    step: &'static str,
    route: &'static str,
}

const fn point(step: &'static str, route: &'static str) -> KillPoint {
    KillPoint { step, route }
}

/// Kill points, in the bake's order.
const KILL_POINTS: &[KillPoint] = &[
    point("pre-flight", "GET /v2/sizes"),
    point("create sent", "POST /v2/droplets"),
    point("provisioning", "POST /v2/projects/default/resources"),
    point("snapshot sent", "POST /v2/droplets/{id}/actions"),
    point("snapshot wait", "GET /v2/actions/{id}"),
    point("finishing", "PUT /v2/images/{id}"),
    point("destroying", "DELETE /v2/droplets/{id}"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_every_step_then_reap_leaves_zero_droplets() {
    let s3 = S3Server::start();
    let mut report = Vec::new();
    for point in KILL_POINTS {
        let step = point.step;
        let env = Env::new(sim_holding(point), &spec_text("30s", ""), s3.port).await;
        let mut child = spawn(
            &env,
            &env.bake_args()
                .iter()
                .chain([&"--yes".to_owned()])
                .cloned()
                .collect::<Vec<_>>(),
        );
        reached(&env.sim, point).await;
        kill(&mut child, step);
        env.sim.release(step);
        let before = env.sim.droplet_ids().len();
        let out = run(&reap_args(&env, "0s", true));
        assert!(
            out.status.success(),
            "reap after a kill at {step}: {}",
            text(&out)
        );
        assert!(
            env.sim.droplet_ids().is_empty(),
            "kill at {step}: droplets left after reap: {:?}\n{}",
            env.sim.droplet_ids(),
            text(&out)
        );
        assert!(
            env.sim.droplets_ever_created() <= 1,
            "kill at {step}: more than one droplet created"
        );
        report.push(format!("{step}: {before} droplet(s) before reap, 0 after"));
        // Held responses are of processed requests: before the create, and
        // once the DELETE went through, there is no builder; in between there is.
        let builders = usize::from(!matches!(step, "pre-flight" | "destroying"));
        assert_eq!(before, builders, "kill at {step}: builders before reap");
    }
    eprintln!("{}", report.join("\n"));
}

fn only_state_file(env: &Env) -> std::path::PathBuf {
    let files = env.state_files();
    assert_eq!(files.len(), 1, "{files:?}");
    files[0].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_after_sigkill_while_provisioning_and_while_snapshotting() {
    let s3 = S3Server::start();
    for point in [&KILL_POINTS[2], &KILL_POINTS[4]] {
        let step = point.step;
        let env = Env::new(sim_holding(point), &spec_text("30s", ""), s3.port).await;
        let mut args = env.bake_args();
        args.push("--yes".into());
        let mut child = spawn(&env, &args);
        reached(&env.sim, point).await;
        kill(&mut child, step);
        env.sim.release(step);
        let state = only_state_file(&env);
        let st: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&state).expect("state")).expect("json");
        assert!(st["droplet_id"].is_u64(), "{st}");
        let mut resume = env.bake_args();
        resume.extend([
            "--resume".to_owned(),
            state.display().to_string(),
            "--json".into(),
        ]);
        let out = run(&resume);
        assert!(
            out.status.success(),
            "resume after a kill at {step}: {}",
            text(&out)
        );
        let manifest: serde_json::Value =
            serde_json::from_slice(&out.stdout).expect("manifest JSON");
        let b = &manifest["builds"][0];
        assert_eq!(
            b["name"], st["image_name"],
            "the resumed bake keeps the recorded image name"
        );
        assert_eq!(b["image_builder"]["details"]["resumed"], true);
        assert!(env.sim.droplet_ids().is_empty(), "{step}: droplets left");
        assert_eq!(
            env.sim.droplets_ever_created(),
            1,
            "{step}: resume must reuse the builder"
        );
        assert_eq!(env.snapshot_images().len(), 1, "{step}: exactly one image");
        assert_eq!(
            env.sim.count("POST /v2/droplets/{id}/actions"),
            1,
            "{step}: one snapshot action"
        );
        let st: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&state).expect("state")).expect("json");
        assert_eq!(st["phase"], "done");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_and_sigint_destroy_the_builder_without_reap() {
    let s3 = S3Server::start();
    for (sig, point) in [
        (nix::sys::signal::Signal::SIGTERM, &KILL_POINTS[2]),
        (nix::sys::signal::Signal::SIGINT, &KILL_POINTS[4]),
    ] {
        let step = point.step;
        let env = Env::new(sim_holding(point), &spec_text("30s", ""), s3.port).await;
        let mut args = env.bake_args();
        args.push("--yes".into());
        let child = spawn(&env, &args);
        reached(&env.sim, point).await;
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), sig).expect("signal");
        // The held call is never answered while the bake runs: it must act on
        // the signal from inside that step.
        let out = child.wait_with_output().expect("wait");
        env.sim.release(step);
        assert!(!out.status.success());
        let log = std::fs::read_dir(env.dir.path())
            .expect("dir")
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("bake-"))
            })
            .map(|p| std::fs::read_to_string(p).unwrap_or_default())
            .unwrap_or_default();
        assert!(
            log.contains(&format!("interrupted by {sig}")),
            "{sig}: {log}"
        );
        assert!(log.contains("destroyed (confirmed 404)"), "{sig}: {log}");
        assert!(
            env.sim.droplet_ids().is_empty(),
            "{sig} at {step}: droplets left: {:?}",
            env.sim.droplet_ids()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spending_needs_yes_when_stdin_is_not_a_terminal() {
    let s3 = S3Server::start();
    let env = Env::new(fast_sim(), &spec_text("30m", ""), s3.port).await;
    let out = run(&env.bake_args());
    // 2: not confirmed (README.md, "Exit codes").
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("pass --yes"), "{err}");
    assert!(
        err.contains("s-1vcpu-1gb") && err.contains("$0.00893/hour") && err.contains("nyc3"),
        "{err}"
    );
    assert_eq!(
        env.sim.count("POST /v2/droplets"),
        0,
        "nothing may be created without --yes"
    );
    assert_eq!(env.sim.droplets_ever_created(), 0);
}

async fn make_droplet(sim: &Sim, name: &str, tags: &[&str]) -> u64 {
    let c = Client::new_with_base(
        &sim.api_url(),
        Token::new(TOKEN, "test").expect("token"),
        RetryPolicy::no_retries(),
    )
    .expect("client");
    let mut req = DropletCreate::new(
        name,
        "nyc3",
        "s-1vcpu-1gb",
        ImageSpec::Slug("debian-12-x64".into()),
    );
    req.tags = tags.iter().map(|t| (*t).to_owned()).collect();
    c.create_droplet(&req).await.expect("create").droplet.id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reap_takes_only_old_bake_builders_and_asks_first() {
    let s3 = S3Server::start();
    let env = Env::new(fast_sim(), &spec_text("30m", ""), s3.port).await;
    let builder = make_droplet(
        &env.sim,
        "ib-old",
        &["image-builder", "image-builder-bake-0badf00d"],
    )
    .await;
    let worker = make_droplet(&env.sim, "worker", &["image-builder"]).await;
    let other = make_droplet(&env.sim, "other", &["web"]).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;

    let out = run(&reap_args(&env, "1h", true));
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        env.sim.droplet_ids().len(),
        3,
        "a young builder is left alone: {}",
        text(&out)
    );

    let out = run(&reap_args(&env, "0s", false));
    assert_eq!(
        out.status.code(),
        Some(2),
        "without --yes and no terminal nothing is deleted: {}",
        text(&out)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&builder.to_string()),
        "{}",
        text(&out)
    );
    assert_eq!(env.sim.droplet_ids().len(), 3);

    let out = run(&reap_args(&env, "1s", true));
    assert!(out.status.success(), "{}", text(&out));
    let mut left = env.sim.droplet_ids();
    left.sort_unstable();
    assert_eq!(
        left,
        vec![worker, other],
        "only the bake builder goes: {}",
        text(&out)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn images_ls_by_prefix_and_prune_only_the_specs_tagged_family() {
    let s3 = S3Server::start();
    // The spec's snapshot.name is "{name}-{timestamp}-{spec_hash}", name ci-worker.
    let env = Env::new(fast_sim(), &spec_text("30m", ""), s3.port).await;
    let now = time::OffsetDateTime::now_utc();
    let seed = |name: &str, days: i64, tags: &[&str]| {
        env.sim.seed_private_image(SeedImage {
            name: name.to_owned(),
            created_at: Some(now - time::Duration::days(days)),
            tags: tags.iter().map(|t| (*t).to_owned()).collect(),
            region: None,
        })
    };
    // Four bakes of this spec (two spec versions), oldest first.
    let family: Vec<u64> = [
        ("ci-worker-20260801-100000-aaaaaaaaaaaa", 4),
        ("ci-worker-20260802-100000-aaaaaaaaaaaa", 3),
        ("ci-worker-20260803-100000-bbbbbbbbbbbb", 2),
        ("ci-worker-20260804-100000-bbbbbbbbbbbb", 1),
    ]
    .iter()
    .map(|(name, days)| seed(name, *days, &["image-builder", "ci"]))
    .collect();
    // Older than all of them, so a prefix rule with --keep 2 would delete them.
    let neighbour = seed(
        "ci-worker-gpu-20260701-100000-cccccccccccc",
        9,
        &["image-builder"],
    );
    let untagged_same_name = seed("ci-worker-20260702-100000-aaaaaaaaaaaa", 10, &[]);
    let untagged_prefix = seed("ci-worker-manual-backup", 11, &["ci"]);
    let unrelated = seed("web-1", 12, &["image-builder"]);

    let ls = |prefix: &str| {
        let mut a = vec![
            "images".to_owned(),
            "ls".into(),
            "--prefix".into(),
            prefix.into(),
            "--json".into(),
        ];
        a.extend(env.conn_args());
        let out = run(&a);
        assert!(out.status.success(), "{}", text(&out));
        serde_json::from_slice::<Vec<serde_json::Value>>(&out.stdout)
            .expect("json")
            .iter()
            .filter_map(|i| i["id"].as_u64())
            .collect::<Vec<u64>>()
    };
    assert_eq!(
        ls("ci-worker"),
        vec![
            family[3],
            family[2],
            family[1],
            family[0],
            neighbour,
            untagged_same_name,
            untagged_prefix
        ],
        "newest first"
    );

    let mut prune = vec![
        "images".to_owned(),
        "prune".into(),
        env.spec.display().to_string(),
        "--keep".into(),
        "2".into(),
        "--json".into(),
    ];
    prune.extend(env.conn_args());
    let out = run(&prune);
    assert_eq!(
        out.status.code(),
        Some(2),
        "no --yes, no terminal: refuse: {}",
        text(&out)
    );
    assert_eq!(ls("").len(), 8, "nothing deleted without --yes");
    prune.push("--yes".into());
    let out = run(&prune);
    assert!(out.status.success(), "{}", text(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json report");
    let ids = |key: &str| {
        report[key].as_array().map(|a| {
            a.iter()
                .filter_map(|i| i["id"].as_u64())
                .collect::<Vec<u64>>()
        })
    };
    assert_eq!(ids("kept"), Some(vec![family[3], family[2]]), "{report}");
    assert_eq!(ids("deleted"), Some(vec![family[1], family[0]]), "{report}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("leaving image {untagged_same_name}"))
            && stderr.contains("not tagged image-builder"),
        "an untagged image named like the family is left alone, and said so: {stderr}"
    );
    // The neighbour family, the untagged images of the same prefix and name
    // shape, and the unrelated image all survive.
    let mut left = ls("");
    left.sort_unstable();
    let mut want = vec![
        family[3],
        family[2],
        neighbour,
        untagged_same_name,
        untagged_prefix,
        unrelated,
    ];
    want.sort_unstable();
    assert_eq!(left, want);
    // Pruning again finds nothing more to delete.
    let out = run(&prune);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(ls("").len(), 6);
}
