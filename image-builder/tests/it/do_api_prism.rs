//! The DigitalOcean client's own requests, checked against DigitalOcean's
//! OpenAPI contract: the client talks to the simulator through Prism's
//! contract proxy (`prism proxy SPEC SIM --errors`), so any request the client
//! sends (or response it gets) that breaks the contract fails here.
//!
//! Needs prism: run `.ci/setup-prism.sh` (node + npm). Without it this test
//! FAILS with a message naming the script.

use std::time::Duration;

use do_api::{
    Client, DoError, DropletCreate, DropletStatus, ImageSpec, ImageUpdate, Poll, RetryPolicy,
    TagTarget, Token,
};
use do_sim::prism::Prism;
use do_sim::{Fault, FaultRule, ProvisionPlan, ProvisionResult, Sim, SimConfig};

const TOKEN: &str = "prism-token";
const TAG: &str = "image-builder-bake-prism";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_requests_conform_to_the_contract() {
    let sim = Sim::start(SimConfig {
        token: Some(TOKEN.into()),
        droplet_boot_ms: 100,
        action_ms: 100,
        ..SimConfig::default()
    })
    .await
    .expect("simulator starts");
    let prism = match Prism::proxy(&sim.api_url()).await {
        Ok(p) => p,
        Err(e) => panic!("contract check cannot run: {e}"),
    };
    let policy = RetryPolicy::default()
        .with_backoff(Duration::from_millis(20), Duration::from_millis(100))
        .with_max_retries(3);
    let c = Client::new_with_base(
        prism.url(),
        Token::new(TOKEN, "test").expect("token"),
        policy,
    )
    .expect("client")
    .with_page_size(2);
    let poll = Poll::new(Duration::from_millis(50), Duration::from_secs(60));

    // Pre-flight reads.
    let account = c.account().await.expect("account");
    assert!(account.droplet_limit > 0);
    assert!(c.sizes().await.expect("sizes, paged by 2").len() >= 5);
    assert!(c.regions().await.expect("regions").len() >= 4);
    assert!(c.list_projects().await.expect("projects").len() >= 2);
    let project = c.default_project().await.expect("default project");
    c.create_tag(TAG).await.expect("tag");

    // Create (with a 5xx-after-commit, reconciled by tag through the proxy too).
    sim.set_faults(vec![FaultRule {
        route: "POST /v2/droplets".into(),
        nth: 1,
        times: 1,
        fault: Fault::ServerErrorAfterCommit { status: 500 },
    }]);
    let mut req = DropletCreate::new(
        "builder-prism",
        "nyc3",
        "s-1vcpu-1gb",
        ImageSpec::Slug("debian-12-x64".into()),
    );
    req.tags = vec!["image-builder".into(), TAG.into()];
    req.user_data = Some("#cloud-config\nruncmd:\n  - poweroff\n".into());
    let created = c
        .create_droplet_reconciled(&req, TAG)
        .await
        .expect("reconciled create");
    assert!(created.reconciled);
    assert_eq!(sim.droplets_tagged(TAG).len(), 1);
    sim.clear_faults();
    let id = created.droplet.id;
    c.assign_to_project(&project.id, &[format!("do:droplet:{id}")])
        .await
        .expect("assign");
    c.tag_resources("image-builder", &[TagTarget::Droplet(id)])
        .await
        .expect("tag droplet");

    // Power cycle and snapshot.
    c.wait_droplet_status(id, DropletStatus::Active, poll)
        .await
        .expect("active");
    let a = c.shutdown(id).await.expect("shutdown");
    c.wait_action(a.id, poll).await.expect("shutdown completes");
    let a = c.power_on(id).await.expect("power on");
    c.wait_action(a.id, poll).await.expect("power on completes");
    sim.provision(
        id,
        ProvisionPlan {
            result: ProvisionResult::Ok,
            after_ms: 50,
        },
    )
    .expect("provision");
    c.wait_droplet_status(id, DropletStatus::Off, poll)
        .await
        .expect("off");
    let a = c.power_off(id).await.expect("power off on an off droplet");
    c.wait_action(a.id, poll)
        .await
        .expect("power off completes");
    let a = c.snapshot(id, "golden-prism").await.expect("snapshot");
    c.wait_action(a.id, poll).await.expect("snapshot completes");
    let snaps = c
        .list_droplet_snapshots(id)
        .await
        .expect("droplet snapshots");
    let image = snaps[0].id;
    c.update_image(
        image,
        &ImageUpdate {
            name: Some("golden-prism".into()),
            distribution: Some("Debian".into()),
            description: Some("baked".into()),
        },
    )
    .await
    .expect("update image");
    c.tag_resources(TAG, &[TagTarget::Image(image)])
        .await
        .expect("tag image");
    assert_eq!(
        c.newest_image_named("golden-prism")
            .await
            .expect("lookup")
            .map(|i| i.id),
        Some(image)
    );
    assert_eq!(
        c.list_droplet_snapshots_all()
            .await
            .expect("snapshots")
            .len(),
        1
    );

    // Errors through the proxy keep DO's shape.
    let err = c.get_droplet(1).await.expect_err("404");
    assert!(
        matches!(&err, DoError::Api { status: 404, id, request_id: Some(_), .. } if id == "not_found"),
        "{err}"
    );
    let mut big = req.clone();
    big.size = "g-2vcpu-8gb".into();
    let err = c.create_droplet(&big).await.expect_err("restricted");
    assert_eq!(err.api_id(), Some("unprocessable_entity"));
    assert_eq!(
        err.refusal(),
        Some(do_api::Refusal::SizeRestricted),
        "{err}"
    );

    // SSH keys.
    let key = c
        .create_ssh_key("prism", "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB prism")
        .await
        .expect("key");
    assert_eq!(c.list_ssh_keys().await.expect("keys").len(), 1);
    c.delete_ssh_key(key.id).await.expect("delete key");

    // Destroy and confirm; delete images.
    c.destroy_droplet(id, poll).await.expect("destroyed");
    c.delete_droplets_by_tag(TAG).await.expect("delete by tag");
    c.delete_image(image).await.expect("delete image");
    assert!(c.list_private_images().await.expect("images").is_empty());

    let violations = prism.violations();
    assert!(
        violations.is_empty(),
        "prism reported contract problems:\n{}",
        violations.join("\n")
    );
    println!(
        "client sent {} requests ({} retries) through prism",
        c.request_count(),
        c.retry_count()
    );
}
