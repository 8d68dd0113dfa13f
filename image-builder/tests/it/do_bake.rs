//! `image-builder bake --backend digitalocean` against the DigitalOcean simulator
//! (which plays the builder VM) and a real S3 server (s3s-fs) as the Space.
//!
//! Needs s3s-fs: run `.ci/setup-s3.sh`. Without it these tests FAIL naming the script.

use std::time::Duration;

use crate::do_bake_support::{Env, S3Server, fast_sim, spec_text};
use do_sim::{Fault, FaultRule, OTHER_PROJECT_ID, ProvisionResult, SeedImage};
use image_builder::backend::digitalocean::DoBakeError;
use image_builder::bake::{BackendKind, BakeError, bake};

fn do_err(e: BakeError) -> DoBakeError {
    match e {
        BakeError::Digitalocean(d) => d,
        other => panic!("expected a DigitalOcean bake error, got: {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bake_makes_one_tagged_image_and_leaves_no_droplet() {
    let s3 = S3Server::start();
    let env = Env::new(fast_sim(), &spec_text("20s", ""), s3.port).await;
    let manifest = bake(BackendKind::Digitalocean, &env.request())
        .await
        .unwrap_or_else(|e| panic!("bake failed: {e}"));

    // The manifest: Packer-compatible fields, region:image-id.
    let b = &manifest.builds[0];
    assert_eq!(b.builder_type, "image-builder.digitalocean");
    let images = env.snapshot_images();
    assert_eq!(images.len(), 1, "exactly one image: {images:?}");
    let image = &images[0];
    assert_eq!(b.artifact_id, format!("nyc3:{}", image["id"]));
    assert_eq!(
        image["name"],
        b.name.as_str(),
        "the image carries the spec's name template"
    );
    assert!(b.name.starts_with("ci-worker-"), "{}", b.name);
    let desc = image["description"].as_str().expect("description");
    assert!(
        desc.contains("image-builder bake") && desc.contains(&env.agent_sha256[..12]),
        "{desc}"
    );
    let tags: Vec<&str> = image["tags"]
        .as_array()
        .expect("tags")
        .iter()
        .filter_map(|t| t.as_str())
        .collect();
    assert!(
        tags.contains(&"image-builder") && tags.contains(&"ci"),
        "{tags:?}"
    );
    assert_eq!(b.custom_data["agent_sha256"], env.agent_sha256);
    for step in [
        "preflight",
        "create",
        "provision",
        "power_off",
        "snapshot",
        "finish",
        "destroy",
    ] {
        assert!(
            b.custom_data.contains_key(&format!("time_{step}_s")),
            "timing {step} missing: {:?}",
            b.custom_data
        );
    }
    let on_disk: serde_json::Value = serde_json::from_slice(
        &std::fs::read(env.out.join("manifest.json")).expect("manifest.json"),
    )
    .expect("json");
    assert_eq!(on_disk["builds"][0]["artifact_id"], b.artifact_id.as_str());

    // One droplet was ever created, and it is gone (confirmed by 404).
    assert_eq!(env.sim.droplets_ever_created(), 1);
    assert!(
        env.sim.droplet_ids().is_empty(),
        "droplets left: {:?}",
        env.sim.droplet_ids()
    );
    let droplet = b.image_builder["details"]["droplet_id"]
        .as_u64()
        .expect("droplet id");
    let log = env.sim.requests();
    let last_get = log
        .entries
        .iter()
        .rev()
        .find(|e| e.route == "GET /v2/droplets/{id}")
        .expect("a GET droplet");
    assert_eq!(last_get.status, 404, "the destroy was confirmed with a 404");

    // The builder was assigned to the default project (the simulator drops
    // the assignment when the droplet is deleted, so look at the request log).
    let assigned: Vec<_> = log
        .entries
        .iter()
        .filter(|e| e.method == "POST" && e.uri == "/v2/projects/default/resources")
        .collect();
    assert_eq!(assigned.len(), 1, "{assigned:?}");
    assert_eq!(assigned[0].status, 200);
    // The VM got the agent through the presigned URL, checked by sha256, and reported.
    let user_data_log = log
        .entries
        .iter()
        .filter(|e| e.route == "POST /v2/droplets")
        .count();
    assert_eq!(user_data_log, 1);
    let played = env
        .sim
        .played(droplet)
        .expect("the simulator played the VM");
    assert_eq!(
        played.agent_sha256.as_deref(),
        Some(env.agent_sha256.as_str()),
        "{played:?}"
    );
    assert_eq!(played.report_status, Some(200), "{played:?}");
    // The agent is in the Space under its sha256; the report object is cleaned up.
    assert!(
        s3.object_path(&format!("agents/{}/vm-agent", env.agent_sha256))
            .is_file()
    );
    let bake_id = b.image_builder["details"]["bake_id"]
        .as_str()
        .expect("bake id");
    assert!(
        !s3.object_path(&format!("bakes/{bake_id}/seal-report.json"))
            .exists()
    );

    // The state file says done.
    let files = env.state_files();
    assert_eq!(files.len(), 1);
    let st: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&files[0]).expect("state")).expect("json");
    assert_eq!(st["phase"], "done");
    assert_eq!(st["droplet_destroyed"], true);

    eprintln!("API requests by route: {:#?}", log.by_route);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_builder_fetches_the_agent_through_a_presigned_url_and_user_data_has_no_secret() {
    let s3 = S3Server::start();
    let env = Env::new(fast_sim(), &spec_text("20s", ""), s3.port).await;
    // Hold the bake right after the create (its project assignment is not
    // answered) while the test reads the builder's user-data.
    env.sim.set_faults(vec![FaultRule {
        route: "POST /v2/projects/default/resources".into(),
        nth: 1,
        times: 1,
        fault: Fault::Hold {
            gate: "created".into(),
        },
    }]);
    let req = env.request();
    let run = tokio::spawn(async move {
        bake(BackendKind::Digitalocean, &req)
            .await
            .map(|m| m.builds[0].artifact_id.clone())
    });
    tokio::time::timeout(Duration::from_secs(60), env.sim.wait_held("created", 1))
        .await
        .expect("the bake never created its builder");
    let ids = env.sim.droplet_ids();
    assert_eq!(ids.len(), 1, "{ids:?}");
    let id = ids[0];
    let ud = env.sim.user_data(id).expect("user-data");
    assert!(
        ud.starts_with("#cloud-config"),
        "{}",
        &ud[..40.min(ud.len())]
    );
    assert!(ud.len() <= 64 * 1024);
    assert!(
        !ud.contains(crate::do_bake_support::SECRET_KEY),
        "the Space secret is in the user-data"
    );
    assert!(
        !ud.contains(crate::do_bake_support::TOKEN),
        "the DO token is in the user-data"
    );
    let (agent_url, report_url) = do_sim::bake_urls(&ud);
    let agent_url = agent_url.expect("agent URL in user-data");
    let report_url = report_url.expect("report URL in user-data");
    assert!(
        agent_url.contains(&format!("agents/{}/vm-agent", env.agent_sha256))
            && agent_url.contains("X-Amz-Signature"),
        "{agent_url}"
    );
    assert!(
        report_url.contains("seal-report.json") && report_url.contains("X-Amz-Expires"),
        "{report_url}"
    );
    assert!(
        ud.contains(&env.agent_sha256),
        "the install step checks the sha256"
    );
    // The presigned GET works without credentials and serves the agent.
    let body = reqwest::get(&agent_url)
        .await
        .expect("GET agent")
        .bytes()
        .await
        .expect("body");
    assert_eq!(
        body.len() as u64,
        std::fs::metadata(&env.agent).expect("agent").len()
    );
    env.sim.release("created");
    let artifact = run
        .await
        .expect("join")
        .unwrap_or_else(|e| panic!("bake failed: {e}"));
    assert!(artifact.starts_with("nyc3:"));
    assert_eq!(
        env.sim.played(id).and_then(|p| p.agent_sha256),
        Some(env.agent_sha256.clone())
    );
    assert!(env.sim.droplet_ids().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_provisioning_fails_with_reason_and_log_tail_and_destroys_the_builder() {
    let s3 = S3Server::start();
    let mut cfg = fast_sim();
    if let Some(p) = cfg.play_vm.as_mut() {
        p.result = ProvisionResult::Failed;
    }
    let env = Env::new(cfg, &spec_text("20s", ""), s3.port).await;
    let e = do_err(
        bake(BackendKind::Digitalocean, &env.request())
            .await
            .expect_err("must fail"),
    );
    let msg = e.to_string();
    assert!(matches!(e, DoBakeError::ProvisioningFailed { .. }), "{msg}");
    assert!(
        msg.contains("step apt-install failed") && msg.contains("(step apt-install)"),
        "{msg}"
    );
    assert!(
        msg.contains("Unable to locate package"),
        "the log tail is in the error: {msg}"
    );
    assert!(
        env.sim.droplet_ids().is_empty(),
        "the builder must be destroyed"
    );
    assert!(
        env.snapshot_images().is_empty(),
        "no snapshot of a failed build"
    );
    assert_eq!(env.sim.count("POST /v2/droplets/{id}/actions"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_builder_that_powers_off_without_a_report_fails_fast() {
    let s3 = S3Server::start();
    let mut cfg = fast_sim();
    if let Some(p) = cfg.play_vm.as_mut() {
        p.no_report = true;
    }
    let env = Env::new(cfg, &spec_text("10m", ""), s3.port).await;
    let e = do_err(
        bake(BackendKind::Digitalocean, &env.request())
            .await
            .expect_err("must fail"),
    );
    // Failing because the builder was seen off without a report, not because
    // bake.timeout (10m) ran out: that would be ProvisionTimeout.
    let DoBakeError::NoReport { droplet } = e else {
        panic!("expected NoReport, got: {e}");
    };
    assert!(
        env.sim.droplet_record(droplet).is_some(),
        "NoReport names the builder"
    );
    let played = env
        .sim
        .played(droplet)
        .expect("the simulator played the VM");
    assert_eq!(played.report_status, None, "no report was sent: {played:?}");
    assert_eq!(
        env.sim.count("POST /v2/droplets/{id}/actions"),
        0,
        "nothing after provisioning ran (no power action, no snapshot)"
    );
    assert!(env.sim.droplet_ids().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provisioning_timeout_fails_and_destroys() {
    let s3 = S3Server::start();
    let mut cfg = fast_sim();
    if let Some(p) = cfg.play_vm.as_mut() {
        p.report_after_ms = 60_000;
    }
    let env = Env::new(cfg, &spec_text("1s", ""), s3.port).await;
    let e = do_err(
        bake(BackendKind::Digitalocean, &env.request())
            .await
            .expect_err("must time out"),
    );
    assert!(matches!(e, DoBakeError::ProvisionTimeout { .. }), "{e}");
    assert!(e.to_string().contains("bake.timeout 1s"), "{e}");
    assert!(env.sim.droplet_ids().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errored_snapshot_fails_in_seconds_and_destroys() {
    let s3 = S3Server::start();
    let mut cfg = fast_sim();
    cfg.errored_actions = vec!["snapshot".into()];
    // The action ends (errored) as soon as it is sent: the first poll sees it.
    cfg.action_ms_by_type.insert("snapshot".into(), 0);
    let env = Env::new(cfg, &spec_text("20s", ""), s3.port).await;
    let e = do_err(
        bake(BackendKind::Digitalocean, &env.request())
            .await
            .expect_err("must fail"),
    );
    assert!(matches!(e, DoBakeError::SnapshotErrored { .. }), "{e}");
    assert_eq!(
        env.sim.count("GET /v2/actions/{id}"),
        1,
        "the first poll that sees `errored` ends the wait (no polling until the timeout)"
    );
    assert_eq!(
        env.sim.count("POST /v2/droplets/{id}/actions"),
        1,
        "an errored snapshot is not re-sent"
    );
    assert!(env.sim.droplet_ids().is_empty());
    assert!(env.snapshot_images().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_are_explained_and_create_nothing() {
    let s3 = S3Server::start();
    // Restricted size: listed in /v2/sizes, refused with 422 on create.
    let env = Env::new(
        fast_sim(),
        &spec_text("20s", "").replace("s-1vcpu-1gb", "g-2vcpu-8gb"),
        s3.port,
    )
    .await;
    let e = do_err(
        bake(BackendKind::Digitalocean, &env.request())
            .await
            .expect_err("restricted"),
    );
    assert!(matches!(e, DoBakeError::Refused(_)), "{e}");
    assert!(
        e.to_string().contains("support ticket")
            && e.to_string().contains(
                "This size is currently restricted please send an additional payment to unlock."
            ),
        "the advice, and DigitalOcean's words as they came: {e}"
    );
    assert_eq!(env.sim.droplets_ever_created(), 0);

    // Droplet limit reached: refused in pre-flight.
    let mut cfg = fast_sim();
    cfg.droplet_limit = 0;
    let env = Env::new(cfg, &spec_text("20s", ""), s3.port).await;
    let e = do_err(
        bake(BackendKind::Digitalocean, &env.request())
            .await
            .expect_err("limit"),
    );
    assert!(
        matches!(e, DoBakeError::Preflight(_)) && e.to_string().contains("droplet limit"),
        "{e}"
    );
    assert_eq!(
        env.sim.count("POST /v2/droplets"),
        0,
        "pre-flight must refuse before any create"
    );
    let st: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&env.state_files()[0]).expect("state"))
            .expect("json");
    assert_eq!(st["phase"], "failed", "{st}");
    assert!(
        st["error"]
            .as_str()
            .unwrap_or_default()
            .contains("droplet limit"),
        "{st}"
    );

    // Size not offered in the region.
    let spec = spec_text("20s", "")
        .replace("nyc3", "sgp1")
        .replace("s-1vcpu-1gb", "s-4vcpu-8gb");
    let env = Env::new(fast_sim(), &spec, s3.port).await;
    let e = do_err(
        bake(BackendKind::Digitalocean, &env.request())
            .await
            .expect_err("size/region"),
    );
    assert!(e.to_string().contains("not offered in region sgp1"), "{e}");
    assert_eq!(env.sim.count("POST /v2/droplets"), 0);

    // Unknown base image name.
    let spec = spec_text("20s", "").replace("debian-12-x64", "no-such-golden");
    let env = Env::new(fast_sim(), &spec, s3.port).await;
    let e = do_err(
        bake(BackendKind::Digitalocean, &env.request())
            .await
            .expect_err("image"),
    );
    assert!(
        e.to_string()
            .contains("neither a public image slug nor the name"),
        "{e}"
    );
    assert_eq!(env.sim.count("POST /v2/droplets"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_golden_image_is_found_by_name_newest_first_and_projects_by_name() {
    let s3 = S3Server::start();
    let spec =
        spec_text("20s", "  project: image-builder\n").replace("debian-12-x64", "golden-base");
    let env = Env::new(fast_sim(), &spec, s3.port).await;
    let old = env.sim.seed_private_image(SeedImage {
        name: "golden-base".into(),
        created_at: Some(time::OffsetDateTime::now_utc() - time::Duration::days(2)),
        tags: vec![],
        region: Some("nyc3".into()),
    });
    let new = env.sim.seed_private_image(SeedImage {
        name: "golden-base".into(),
        created_at: Some(time::OffsetDateTime::now_utc() - time::Duration::hours(1)),
        tags: vec![],
        region: Some("nyc3".into()),
    });
    assert!(new > old);
    let m = bake(BackendKind::Digitalocean, &env.request())
        .await
        .unwrap_or_else(|e| panic!("bake: {e}"));
    let details = &m.builds[0].image_builder["details"];
    assert!(
        details["base_image"]
            .as_str()
            .unwrap_or_default()
            .contains(&format!("id {new}")),
        "{details}"
    );
    let droplet = details["droplet_id"].as_u64().expect("droplet");
    let record = env
        .sim
        .droplet_record(droplet)
        .expect("the builder droplet");
    assert_eq!(
        record.image_id, new,
        "the builder starts from the newest golden image of that name"
    );
    assert_eq!(
        record.projects,
        vec![OTHER_PROJECT_ID.to_owned()],
        "the builder goes to project image-builder (given by name), and only there"
    );
    let uri = format!("/v2/projects/{OTHER_PROJECT_ID}/resources");
    let log = env.sim.requests();
    assert!(
        log.entries
            .iter()
            .any(|e| e.method == "POST" && e.uri == uri && e.status == 200),
        "the builder was not assigned to project image-builder: {:?}",
        log.by_route
    );
    assert!(env.sim.droplet_ids().is_empty());
}
