//! The fault matrix: every injected fault at every API step of a DigitalOcean
//! bake. Each case runs a whole bake against its own simulator; afterwards no
//! droplet may be left, exactly one droplet may ever have been created, and
//! exactly one image made. Transient faults must not fail the bake.
//!
//! Needs s3s-fs (`.ci/setup-s3.sh`); FAILS naming the script without it.

use std::time::{Duration, Instant};

use crate::do_bake_support::{Env, S3Server, fast_sim, spec_text};
use do_sim::{Fault, FaultRule};
use futures::StreamExt as _;
use image_builder::bake::{BackendKind, bake};

/// Every API step of a bake, as the simulator's route keys.
const STEPS: &[&str] = &[
    "GET /v2/account",
    "GET /v2/droplets",
    "GET /v2/sizes",
    "GET /v2/images/debian-12-x64",
    "POST /v2/droplets",
    "POST /v2/projects/default/resources",
    "GET /v2/droplets/{id}",
    "POST /v2/droplets/{id}/actions",
    "GET /v2/actions/{id}",
    "GET /v2/droplets/{id}/snapshots",
    "PUT /v2/images/{id}",
    "POST /v2/tags/{tag}/resources",
    "DELETE /v2/droplets/{id}",
];

fn faults() -> Vec<(&'static str, Fault, u64)> {
    vec![
        (
            "429 burst",
            Fault::RateLimit {
                retry_after_secs: 1,
            },
            2,
        ),
        ("500", Fault::ServerError { status: 500 }, 1),
        ("503 x2", Fault::ServerError { status: 503 }, 2),
        ("dropped connection", Fault::Drop, 1),
        (
            "500 after commit",
            Fault::ServerErrorAfterCommit { status: 500 },
            1,
        ),
        ("drop after commit", Fault::DropAfterCommit, 1),
        ("slow answer", Fault::Delay { ms: 400 }, 1),
    ]
}

struct Outcome {
    case: String,
    problems: Vec<String>,
    secs: f64,
}

async fn run_case(
    s3_port: u16,
    route: &'static str,
    name: &'static str,
    fault: Fault,
    times: u64,
) -> Outcome {
    let case = format!("{name} at {route}");
    let env = Env::new(fast_sim(), &spec_text("20s", ""), s3_port).await;
    env.sim.set_faults(vec![FaultRule {
        route: route.to_owned(),
        nth: 1,
        times,
        fault,
    }]);
    let t = Instant::now();
    let result = bake(BackendKind::Digitalocean, &env.request()).await;
    let secs = t.elapsed().as_secs_f64();
    let mut problems = Vec::new();
    if let Err(e) = &result {
        problems.push(format!("bake failed: {e}"));
    }
    let fired = env
        .sim
        .requests()
        .entries
        .iter()
        .filter(|e| e.fault.is_some())
        .count();
    if fired == 0 {
        problems.push("the fault never fired (the step was not reached?)".into());
    }
    if !env.sim.droplet_ids().is_empty() {
        problems.push(format!("droplets left: {:?}", env.sim.droplet_ids()));
    }
    if env.sim.droplets_ever_created() != 1 {
        problems.push(format!(
            "{} droplets were created",
            env.sim.droplets_ever_created()
        ));
    }
    let images = env.snapshot_images().len();
    if images != 1 {
        problems.push(format!("{images} images were made"));
    }
    Outcome {
        case,
        problems,
        secs,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_fault_at_every_step_still_bakes_one_image_and_leaves_no_droplet() {
    let s3 = S3Server::start();
    let port = s3.port;
    let mut cases = Vec::new();
    for route in STEPS {
        for (name, fault, times) in faults() {
            cases.push((*route, name, fault, times));
        }
    }
    let total = cases.len();
    let outcomes: Vec<Outcome> = futures::stream::iter(cases)
        .map(|(route, name, fault, times)| run_case(port, route, name, fault, times))
        .buffer_unordered(8)
        .collect()
        .await;
    let mut failed = Vec::new();
    let mut slowest = 0f64;
    for o in &outcomes {
        slowest = slowest.max(o.secs);
        if !o.problems.is_empty() {
            failed.push(format!("{}: {}", o.case, o.problems.join("; ")));
        }
    }
    eprintln!("{total} fault cases, slowest bake {slowest:.1}s");
    assert!(
        failed.is_empty(),
        "{} of {total} cases failed:\n{}",
        failed.len(),
        failed.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_actions_and_slow_boot_still_bake() {
    let s3 = S3Server::start();
    let mut cfg = fast_sim();
    cfg.droplet_boot_ms = 800;
    cfg.action_ms_by_type.insert("snapshot".into(), 1500);
    let env = Env::new(cfg, &spec_text("20s", ""), s3.port).await;
    let m = bake(BackendKind::Digitalocean, &env.request())
        .await
        .unwrap_or_else(|e| panic!("bake: {e}"));
    assert!(m.builds[0].artifact_id.starts_with("nyc3:"));
    assert!(env.sim.droplet_ids().is_empty());
    // The snapshot was polled, not re-sent.
    assert_eq!(env.sim.count("POST /v2/droplets/{id}/actions"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_droplet_that_does_not_power_off_is_shut_down_then_powered_off() {
    let s3 = S3Server::start();
    let mut cfg = fast_sim();
    // The VM reports but never powers itself off.
    if let Some(p) = cfg.play_vm.as_mut() {
        p.after_ms = 3_600_000;
    }
    // And ignores the shutdown (errored), so power_off is needed.
    cfg.errored_actions = vec!["shutdown".into()];
    let env = Env::new(cfg, &spec_text("20s", ""), s3.port).await;
    let mut req = env.request();
    req.digitalocean.power_off_after = Duration::from_millis(500);
    let m = bake(BackendKind::Digitalocean, &req)
        .await
        .unwrap_or_else(|e| panic!("bake: {e}"));
    assert!(m.builds[0].artifact_id.starts_with("nyc3:"));
    let kinds: Vec<String> = env.sim.state()["actions"]
        .as_array()
        .expect("actions")
        .iter()
        .filter_map(|a| a["type"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(
        kinds,
        vec!["create", "shutdown", "power_off", "snapshot"],
        "{kinds:?}"
    );
    assert!(env.sim.droplet_ids().is_empty());
}

/// DigitalOcean's 422 for an action on a busy droplet (full body in
/// hashicorp/packer#1814): the bake tries again. Any other 422 is a refusal
/// and is not retried.
fn refused(message: &str) -> Fault {
    Fault::Respond {
        status: 422,
        body: serde_json::json!({"id": "unprocessable_entity", "message": message}),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_refused_while_the_droplet_is_busy_is_sent_again_and_only_then() {
    let s3 = S3Server::start();
    let env = Env::new(fast_sim(), &spec_text("20s", ""), s3.port).await;
    env.sim.set_faults(vec![FaultRule {
        route: "POST /v2/droplets/{id}/actions".into(),
        nth: 1,
        times: 2,
        fault: refused("Droplet already has a pending event."),
    }]);
    let m = bake(BackendKind::Digitalocean, &env.request())
        .await
        .unwrap_or_else(|e| panic!("bake: {e}"));
    assert!(m.builds[0].artifact_id.starts_with("nyc3:"));
    assert_eq!(
        env.sim.count("POST /v2/droplets/{id}/actions"),
        3,
        "two busy refusals, then the snapshot"
    );
    assert_eq!(env.snapshot_images().len(), 1);
    assert!(env.sim.droplet_ids().is_empty());

    let env = Env::new(fast_sim(), &spec_text("20s", ""), s3.port).await;
    env.sim.set_faults(vec![FaultRule {
        route: "POST /v2/droplets/{id}/actions".into(),
        nth: 1,
        times: 1,
        fault: refused("A refusal image-builder has no special case for."),
    }]);
    let e = bake(BackendKind::Digitalocean, &env.request())
        .await
        .expect_err("a refusal that is not `busy` fails the bake");
    assert!(e.to_string().contains("no special case for"), "{e}");
    assert_eq!(
        env.sim.count("POST /v2/droplets/{id}/actions"),
        1,
        "not retried"
    );
    assert!(env.snapshot_images().is_empty());
    assert!(env.sim.droplet_ids().is_empty(), "the builder is destroyed");
}
