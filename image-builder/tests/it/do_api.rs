//! The DigitalOcean API client against the stateful simulator (do-sim).

use std::time::{Duration, Instant};

use do_api::metadata::{MetadataClient, MetadataError};
use do_api::{
    Client, Deleted, DoError, DropletCreate, DropletStatus, ImageSpec, ImageUpdate, Poll, Refusal,
    RetryPolicy, TagTarget, Token,
};
use do_sim::{Fault, FaultRule, ProvisionPlan, ProvisionResult, SeedImage, Sim, SimConfig};

const TOKEN: &str = "sim-token";
const BAKE_TAG: &str = "image-builder-bake-t1";

fn fast_policy() -> RetryPolicy {
    RetryPolicy::default()
        .with_backoff(Duration::from_millis(10), Duration::from_millis(50))
        .with_max_retries(3)
}

fn client(sim: &Sim, policy: RetryPolicy) -> Client {
    Client::new_with_base(
        &sim.api_url(),
        Token::new(TOKEN, "test").expect("token"),
        policy,
    )
    .expect("client")
}

fn fast_sim() -> SimConfig {
    SimConfig {
        token: Some(TOKEN.into()),
        droplet_boot_ms: 100,
        action_ms: 100,
        droplet_limit: 50,
        ..SimConfig::default()
    }
}

fn builder(name: &str) -> DropletCreate {
    let mut c = DropletCreate::new(
        name,
        "nyc3",
        "s-1vcpu-1gb",
        ImageSpec::Slug("debian-12-x64".into()),
    );
    c.tags = vec!["image-builder".into(), BAKE_TAG.into()];
    c.user_data = Some("#cloud-config\n".into());
    c
}

fn poll() -> Poll {
    Poll::new(Duration::from_millis(25), Duration::from_secs(30))
}

fn on(route: &str, fault: Fault, times: u64) -> FaultRule {
    FaultRule {
        route: route.into(),
        nth: 1,
        times,
        fault,
    }
}

#[tokio::test]
async fn pagination_collects_every_page() {
    let sim = Sim::start(fast_sim()).await.expect("sim");
    let c = client(&sim, fast_policy()).with_page_size(20);
    for i in 0..25 {
        let mut req = builder(&format!("d-{i}"));
        if i % 2 == 0 {
            req.tags = vec!["even".into()];
        }
        c.create_droplet(&req).await.expect("create");
    }
    sim.reset_requests();
    let all = c.list_droplets().await.expect("list");
    assert_eq!(all.len(), 25);
    let mut ids: Vec<u64> = all.iter().map(|d| d.id).collect();
    ids.dedup();
    assert_eq!(ids.len(), 25, "no droplet twice");
    assert_eq!(
        sim.count("GET /v2/droplets"),
        2,
        "25 droplets at 20 per page = 2 requests"
    );
    let even = c.list_droplets_by_tag("even").await.expect("list by tag");
    assert_eq!(even.len(), 13);
    assert!(even.iter().all(|d| d.has_tag("even")));
    // The default page size (200) needs one request.
    sim.reset_requests();
    let c200 = client(&sim, fast_policy());
    assert_eq!(c200.list_droplets().await.expect("list").len(), 25);
    assert_eq!(sim.count("GET /v2/droplets"), 1);
}

#[tokio::test]
async fn rate_limited_call_waits_for_retry_after() {
    let sim = Sim::start(fast_sim()).await.expect("sim");
    let c = client(&sim, fast_policy());
    sim.set_faults(vec![on(
        "GET /v2/account",
        Fault::RateLimit {
            retry_after_secs: 1,
        },
        1,
    )]);
    let start = Instant::now();
    let account = c.account().await.expect("account after one 429");
    assert_eq!(account.droplet_limit, 50);
    assert!(
        start.elapsed() >= Duration::from_secs(1),
        "retry-after: 1 must be waited out, took {:?}",
        start.elapsed()
    );
    assert_eq!(sim.count("GET /v2/account"), 2);
    assert_eq!(c.request_count(), 2);
    assert_eq!(c.retry_count(), 1);
}

#[tokio::test]
async fn server_errors_on_get_are_retried_then_reported() {
    let sim = Sim::start(fast_sim()).await.expect("sim");
    let c = client(&sim, fast_policy());
    sim.set_faults(vec![on(
        "GET /v2/sizes",
        Fault::ServerError { status: 503 },
        2,
    )]);
    let sizes = c.sizes().await.expect("sizes after two 503s");
    assert!(
        sizes
            .iter()
            .any(|s| s.slug == "s-1vcpu-1gb" && s.price_hourly > 0.0)
    );
    assert_eq!(sim.count("GET /v2/sizes"), 3);

    sim.set_faults(vec![on(
        "GET /v2/regions",
        Fault::ServerError { status: 500 },
        100,
    )]);
    let err = c.regions().await.expect_err("persistent 500");
    assert_eq!(sim.count("GET /v2/regions"), 4, "1 try + 3 retries");
    match &err {
        DoError::Api {
            status,
            id,
            method,
            path,
            request_id,
            ..
        } => {
            assert_eq!(
                (*status, id.as_str(), method.as_str(), path.as_str()),
                (500, "server_error", "GET", "/v2/regions")
            );
            let last = sim.requests().entries.last().cloned().expect("logged");
            assert_eq!(
                request_id.as_deref(),
                Some(last.request_id.as_str()),
                "request id of the last attempt"
            );
        }
        other => panic!("unexpected error {other:?}"),
    }

    // Dropped connections are retried for GETs too.
    sim.set_faults(vec![on("GET /v2/account", Fault::Drop, 1)]);
    c.account()
        .await
        .expect("account after a dropped connection");
    assert_eq!(sim.count("GET /v2/account"), 2);
}

#[tokio::test]
async fn create_after_commit_5xx_is_reconciled_to_exactly_one_droplet() {
    for fault in [
        Fault::ServerErrorAfterCommit { status: 500 },
        Fault::DropAfterCommit,
    ] {
        let sim = Sim::start(fast_sim()).await.expect("sim");
        let c = client(&sim, fast_policy());
        sim.set_faults(vec![on("POST /v2/droplets", fault.clone(), 1)]);
        let created = c
            .create_droplet_reconciled(&builder("builder-1"), BAKE_TAG)
            .await
            .expect("reconciled");
        assert!(
            created.reconciled,
            "{fault:?}: found by tag, not created twice"
        );
        assert_eq!(
            sim.count("POST /v2/droplets"),
            1,
            "{fault:?}: the create is not re-sent"
        );
        assert_eq!(
            sim.droplets_tagged(BAKE_TAG),
            vec![created.droplet.id],
            "{fault:?}: exactly one droplet"
        );
    }
}

#[tokio::test]
async fn create_failing_before_commit_is_sent_again_once() {
    let sim = Sim::start(fast_sim()).await.expect("sim");
    let c = client(&sim, fast_policy());
    sim.set_faults(vec![on(
        "POST /v2/droplets",
        Fault::ServerError { status: 502 },
        1,
    )]);
    let created = c
        .create_droplet_reconciled(&builder("builder-1"), BAKE_TAG)
        .await
        .expect("created on 2nd try");
    assert!(!created.reconciled);
    assert_eq!(created.attempts, 2);
    assert_eq!(sim.count("POST /v2/droplets"), 2);
    assert_eq!(
        sim.count("GET /v2/droplets"),
        1,
        "checked by tag before re-sending"
    );
    assert_eq!(sim.droplets_tagged(BAKE_TAG).len(), 1);

    // 429 on create: refused before processing, retried without reconciling.
    sim.set_faults(vec![on(
        "POST /v2/droplets",
        Fault::RateLimit {
            retry_after_secs: 0,
        },
        1,
    )]);
    sim.reset_requests();
    let mut req = builder("builder-2");
    req.tags = vec!["image-builder-bake-t2".into()];
    c.create_droplet_reconciled(&req, "image-builder-bake-t2")
        .await
        .expect("created after 429");
    assert_eq!(sim.count("POST /v2/droplets"), 2);
    assert_eq!(sim.count("GET /v2/droplets"), 0);

    // A plain create is never re-sent after an unknown outcome.
    sim.set_faults(vec![on(
        "POST /v2/droplets",
        Fault::ServerErrorAfterCommit { status: 500 },
        1,
    )]);
    sim.reset_requests();
    let err = c
        .create_droplet(&builder("builder-3"))
        .await
        .expect_err("500");
    assert_eq!(err.status(), Some(500));
    assert_eq!(sim.count("POST /v2/droplets"), 1);

    let err = c
        .create_droplet_reconciled(&builder("b"), "not-in-tags")
        .await
        .expect_err("tag required");
    assert!(matches!(err, DoError::MissingReconcileTag { .. }), "{err}");
}

#[tokio::test]
async fn refusals_carry_do_error_fields_and_are_not_retried() {
    let sim = Sim::start(SimConfig {
        droplet_limit: 1,
        ..fast_sim()
    })
    .await
    .expect("sim");
    let c = client(&sim, fast_policy());
    let mut req = builder("big");
    req.size = "g-2vcpu-8gb".into();
    let err = c
        .create_droplet_reconciled(&req, BAKE_TAG)
        .await
        .expect_err("restricted size");
    assert_eq!(err.status(), Some(422));
    assert_eq!(err.api_id(), Some("unprocessable_entity"));
    assert_eq!(err.refusal(), Some(Refusal::SizeRestricted), "{err}");
    let logged = sim.requests().entries.last().cloned().expect("logged");
    assert_eq!(err.request_id(), Some(logged.request_id.as_str()));
    let text = err.to_string();
    assert!(
        text.contains("POST /v2/droplets")
            && text.contains("422")
            && text.contains("restricted")
            && text.contains(&logged.request_id),
        "{text}"
    );
    assert_eq!(sim.count("POST /v2/droplets"), 1, "a 422 is never retried");

    c.create_droplet(&builder("one")).await.expect("first fits");
    let err = c
        .create_droplet_reconciled(&builder("two"), BAKE_TAG)
        .await
        .expect_err("limit");
    assert_eq!(err.refusal(), Some(Refusal::DropletLimit), "{err}");
    assert!(err.to_string().contains("droplet limit"), "{err}");

    let bad = Client::new_with_base(
        &sim.api_url(),
        Token::new("wrong", "test").expect("token"),
        fast_policy(),
    )
    .expect("client");
    let err = bad.account().await.expect_err("401");
    assert_eq!(
        (err.status(), err.api_id()),
        (Some(401), Some("Unauthorized"))
    );
    let err = c.get_droplet(12345).await.expect_err("404");
    assert!(err.is_not_found());
}

#[tokio::test]
async fn errored_snapshot_fails_fast() {
    let sim = Sim::start(SimConfig {
        errored_actions: vec!["snapshot".into()],
        ..fast_sim()
    })
    .await
    .expect("sim");
    let c = client(&sim, fast_policy());
    let d = c
        .create_droplet(&builder("b"))
        .await
        .expect("create")
        .droplet;
    c.wait_droplet_status(d.id, DropletStatus::Active, poll())
        .await
        .expect("active");
    let action = c.snapshot(d.id, "golden").await.expect("snapshot accepted");
    let err = c
        .wait_action(
            action.id,
            Poll::new(Duration::from_millis(50), Duration::from_secs(3600)),
        )
        .await
        .expect_err("errored");
    match err {
        DoError::ActionErrored {
            action_id,
            kind,
            resource,
        } => {
            assert_eq!((action_id, kind.as_str()), (action.id, "snapshot"));
            assert_eq!(resource, format!("droplet {}", d.id));
        }
        other => panic!("expected ActionErrored, got {other}"),
    }
    assert!(
        sim.count("GET /v2/actions/{id}") < 20,
        "stopped polling at the first errored answer"
    );
}

#[tokio::test]
async fn full_bake_sequence_against_the_simulator() {
    let sim = Sim::start(fast_sim()).await.expect("sim");
    let c = client(&sim, fast_policy());
    let account = c.account().await.expect("account");
    assert!(account.droplet_limit > 0);
    let regions = c.regions().await.expect("regions");
    assert!(
        regions
            .iter()
            .any(|r| r.slug == "nyc3" && r.sizes.contains(&"s-1vcpu-1gb".to_owned()))
    );
    c.create_tag(BAKE_TAG).await.expect("tag");

    let created = c
        .create_droplet_reconciled(&builder("builder-1"), BAKE_TAG)
        .await
        .expect("create");
    assert!(created.action_id.is_some());
    let id = created.droplet.id;
    let project = c
        .list_projects()
        .await
        .expect("projects")
        .into_iter()
        .find(|p| !p.is_default)
        .expect("second project");
    let assigned = c
        .assign_to_project(&project.id, &[format!("do:droplet:{id}")])
        .await
        .expect("assign");
    assert_eq!(assigned[0].status.as_deref(), Some("ok"));
    assert!(c.default_project().await.expect("default").is_default);
    c.wait_action(created.action_id.expect("create action"), poll())
        .await
        .expect("create action completes");

    // Provisioning powers the droplet off; then shutdown is unnecessary.
    sim.provision(
        id,
        ProvisionPlan {
            result: ProvisionResult::Ok,
            after_ms: 50,
        },
    )
    .expect("provision");
    let off = c
        .wait_droplet_status(id, DropletStatus::Off, poll())
        .await
        .expect("off");
    assert_eq!(off.public_ipv4(), Some("127.0.0.1"));
    let snap = c.snapshot(id, "golden-2026").await.expect("snapshot");
    let done = c
        .wait_action(snap.id, poll())
        .await
        .expect("snapshot completes");
    assert_eq!(done.resource_id, Some(id));
    let snaps = c.list_droplet_snapshots(id).await.expect("snapshots");
    assert_eq!(snaps.len(), 1);
    let image_id = snaps[0].id;
    let image = c
        .update_image(
            image_id,
            &ImageUpdate {
                description: Some("spec sha256 abc".into()),
                ..ImageUpdate::default()
            },
        )
        .await
        .expect("describe");
    assert_eq!(image.description.as_deref(), Some("spec sha256 abc"));
    c.create_tag("golden").await.expect("tag");
    c.tag_resources("golden", &[TagTarget::Image(image_id)])
        .await
        .expect("tag image");
    assert_eq!(
        c.get_image(image_id).await.expect("image").tags,
        vec!["golden".to_owned()]
    );
    assert_eq!(
        c.list_droplet_snapshots_all()
            .await
            .expect("snapshots")
            .len(),
        1
    );

    // Destroy and confirm.
    c.destroy_droplet(id, poll()).await.expect("destroyed");
    assert!(c.get_droplet(id).await.expect_err("gone").is_not_found());
    assert_eq!(
        c.delete_droplet(id).await.expect("idempotent delete"),
        Deleted::AlreadyGone
    );
    assert!(sim.droplet_ids().is_empty());

    // Newest-first lookup by name.
    let old = sim.seed_private_image(SeedImage {
        name: "golden-2026".into(),
        created_at: Some(time_2025()),
        tags: vec![],
        region: None,
    });
    let named = c.images_named("golden-2026").await.expect("by name");
    assert_eq!(
        named.iter().map(|i| i.id).collect::<Vec<_>>(),
        vec![image_id, old]
    );
    assert_eq!(
        c.newest_image_named("golden-2026")
            .await
            .expect("newest")
            .map(|i| i.id),
        Some(image_id)
    );
    assert_eq!(
        c.images_with_prefix("golden-").await.expect("prefix").len(),
        2
    );
    c.delete_image(old).await.expect("delete image");
    assert_eq!(c.list_private_images().await.expect("private").len(), 1);

    let key = c
        .create_ssh_key("bake", "ssh-ed25519 AAAAC3Nza bake")
        .await
        .expect("key");
    assert_eq!(c.list_ssh_keys().await.expect("keys"), vec![key.clone()]);
    c.delete_ssh_key(key.id).await.expect("delete key");
}

fn time_2025() -> time::OffsetDateTime {
    time::OffsetDateTime::from_unix_timestamp(1_735_689_600).expect("valid timestamp")
}

#[tokio::test]
async fn low_ratelimit_remaining_slows_down_instead_of_hitting_429() {
    let mut cfg = fast_sim();
    cfg.ratelimit.limit = 100;
    cfg.ratelimit.remaining = 3;
    cfg.ratelimit.reset_secs = 1;
    let sim = Sim::start(cfg).await.expect("sim");
    let c = client(&sim, fast_policy().with_slow_down_below(5));
    for _ in 0..6 {
        c.account().await.expect("account");
    }
    let statuses: Vec<u16> = sim.requests().entries.iter().map(|e| e.status).collect();
    assert_eq!(statuses, vec![200; 6], "pacing must avoid every 429");
    assert!(c.rate_limit().is_some_and(|r| r.limit == 100));
}

#[tokio::test]
async fn wait_droplet_gone_and_delete_by_tag() {
    let sim = Sim::start(fast_sim()).await.expect("sim");
    let c = client(&sim, fast_policy());
    let a = c.create_droplet(&builder("a")).await.expect("a").droplet.id;
    c.create_droplet(&builder("b")).await.expect("b");
    // The first delete fails for good (retries exhausted); waiting re-sends it
    // while the droplet is still there, and times out while deletes keep failing.
    sim.set_faults(vec![on(
        "DELETE /v2/droplets/{id}",
        Fault::ServerError { status: 500 },
        1000,
    )]);
    assert!(c.delete_droplet(a).await.is_err());
    let short = Poll::new(Duration::from_millis(10), Duration::from_millis(300));
    assert!(matches!(
        c.wait_droplet_gone(a, short).await,
        Err(DoError::Timeout { .. })
    ));
    // Once deletes work again, waiting re-sends one and sees the 404.
    sim.clear_faults();
    c.wait_droplet_gone(a, poll()).await.expect("gone");
    assert!(!sim.droplet_ids().contains(&a));
    // A transient 500 on delete is retried.
    let b = c.create_droplet(&builder("c")).await.expect("c").droplet.id;
    sim.set_faults(vec![on(
        "DELETE /v2/droplets/{id}",
        Fault::ServerError { status: 500 },
        1,
    )]);
    sim.reset_requests();
    assert_eq!(
        c.delete_droplet(b).await.expect("retried delete"),
        Deleted::Deleted
    );
    assert_eq!(sim.count("DELETE /v2/droplets/{id}"), 2);
    c.delete_droplets_by_tag(BAKE_TAG)
        .await
        .expect("delete by tag");
    assert!(
        c.list_droplets_by_tag(BAKE_TAG)
            .await
            .expect("list")
            .is_empty()
    );
}

#[tokio::test]
async fn metadata_client_reads_id_and_tags() {
    let sim = Sim::start(fast_sim()).await.expect("sim");
    let c = client(&sim, fast_policy());
    let id = c
        .create_droplet(&builder("worker-1"))
        .await
        .expect("create")
        .droplet
        .id;
    let md = MetadataClient::new_with_base(&sim.metadata_url()).expect("metadata client");
    assert!(matches!(
        md.droplet_id().await,
        Err(MetadataError::Status { status: 404, .. })
    ));
    sim.act_as(Some(id));
    assert_eq!(md.droplet_id().await.expect("id"), id);
    assert_eq!(
        md.tags().await.expect("tags"),
        vec!["image-builder".to_owned(), BAKE_TAG.to_owned()]
    );
    assert_eq!(md.hostname().await.expect("hostname"), "worker-1");
    assert_eq!(md.region().await.expect("region"), "nyc3");
}

#[test]
fn token_debug_never_shows_the_secret() {
    let sim_token = Token::new("dop_v1_very_secret", "test").expect("token");
    let c = Client::new_with_base("http://127.0.0.1:9", sim_token, RetryPolicy::no_retries())
        .expect("client");
    let shown = format!("{c:?}");
    assert!(!shown.contains("very_secret"), "{shown}");
    assert!(
        Client::new_with_base(
            "ftp://x",
            Token::new("t", "t").expect("token"),
            RetryPolicy::no_retries()
        )
        .is_err()
    );
}
