//! A whole DigitalOcean bake through Prism's contract proxy in front of the
//! simulator: every request the bake sends and every response it reads must
//! follow DigitalOcean's OpenAPI contract (`prism proxy SPEC SIM --errors`).
//! One create fault is injected so the reconcile path is checked as well.
//!
//! Needs prism (`.ci/setup-prism.sh`, node + npm) and s3s-fs (`.ci/setup-s3.sh`);
//! FAILS naming the script when either is missing.

use crate::do_bake_support::{Env, S3Server, fast_sim, spec_text};
use do_sim::prism::Prism;
use do_sim::{Fault, FaultRule};
use image_builder::bake::{BackendKind, bake};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bake_through_the_contract_proxy_has_no_violations() {
    let s3 = S3Server::start();
    let env = Env::new(
        fast_sim(),
        &spec_text("60s", "  project: image-builder\n"),
        s3.port,
    )
    .await;
    let prism = match Prism::proxy(&env.sim.api_url()).await {
        Ok(p) => p,
        Err(e) => panic!("contract check cannot run: {e}"),
    };
    env.sim.set_faults(vec![FaultRule {
        route: "POST /v2/droplets".into(),
        nth: 1,
        times: 1,
        fault: Fault::ServerErrorAfterCommit { status: 500 },
    }]);
    let mut req = env.request();
    req.digitalocean.connection.api_url = Some(prism.url().to_owned());
    req.digitalocean.poll = std::time::Duration::from_millis(100);
    let m = bake(BackendKind::Digitalocean, &req)
        .await
        .unwrap_or_else(|e| {
            panic!(
                "bake through prism failed: {e}\nprism output:\n{}",
                prism.output().join("\n")
            )
        });
    assert!(m.builds[0].artifact_id.starts_with("nyc3:"));
    assert!(env.sim.droplet_ids().is_empty());
    assert_eq!(env.sim.droplets_ever_created(), 1);
    let violations = prism.violations();
    assert!(
        violations.is_empty(),
        "prism reported contract problems:\n{}",
        violations.join("\n")
    );
    eprintln!(
        "bake through prism: {} API requests",
        env.sim.requests().total
    );
}
