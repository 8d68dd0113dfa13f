//! Behaviour of the simulator itself, talked to directly over HTTP.

use std::time::Duration;

use do_sim::api::refusal;
use do_sim::{Fault, FaultRule, ProvisionPlan, ProvisionResult, SeedImage, Sim, SimConfig};
use serde_json::{Value, json};

const TOKEN: &str = "test-token";

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

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, reqwest::header::HeaderMap, Value) {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .header("authorization", format!("Bearer {TOKEN}"));
        if let Some(b) = body {
            req = req
                .header("content-type", "application/json")
                .body(b.to_string());
        }
        let resp = req.send().await.expect("request reaches the simulator");
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let text = resp.text().await.expect("body");
        let v = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).expect("JSON body")
        };
        (status, headers, v)
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        let (s, _, v) = self.call(reqwest::Method::GET, path, None).await;
        (s, v)
    }

    async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let (s, _, v) = self.call(reqwest::Method::POST, path, Some(body)).await;
        (s, v)
    }

    async fn create(&self, name: &str) -> u64 {
        let (s, v) = self
            .post("/v2/droplets", json!({"name": name, "size": "s-1vcpu-1gb", "image": "debian-12-x64", "region": "nyc3", "tags": ["image-builder", "bake-1"]}))
            .await;
        assert_eq!(s, 202, "{v}");
        v["droplet"]["id"].as_u64().expect("droplet id")
    }

    async fn wait_droplet(&self, id: u64, status: &str) -> Value {
        for _ in 0..200 {
            let (s, v) = self.get(&format!("/v2/droplets/{id}")).await;
            assert_eq!(s, 200, "{v}");
            if v["droplet"]["status"] == status && v["droplet"]["locked"] == false {
                return v["droplet"].clone();
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("droplet {id} never became {status}");
    }

    async fn wait_action(&self, id: u64) -> Value {
        for _ in 0..200 {
            let (_, v) = self.get(&format!("/v2/actions/{id}")).await;
            if v["action"]["status"] != "in-progress" {
                return v["action"].clone();
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("action {id} never finished");
    }
}

fn fast() -> SimConfig {
    SimConfig {
        droplet_boot_ms: 100,
        action_ms: 100,
        ..SimConfig::default()
    }
}

#[tokio::test]
async fn droplet_lifecycle_actions_and_snapshots() {
    let sim = Sim::start(fast()).await.expect("sim starts");
    let api = Api::new(&sim);
    let id = api.create("builder-1").await;
    let (_, v) = api.get(&format!("/v2/droplets/{id}")).await;
    assert_eq!(v["droplet"]["status"], "new");
    api.wait_droplet(id, "active").await;

    // Locked while an action runs; a second action is refused with 422.
    sim.update_config(|c| c.action_ms = 400);
    let (s, v) = api
        .post(
            &format!("/v2/droplets/{id}/actions"),
            json!({"type": "shutdown"}),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    let action = v["action"]["id"].as_u64().expect("action id");
    assert_eq!(v["action"]["status"], "in-progress");
    let (_, d) = api.get(&format!("/v2/droplets/{id}")).await;
    assert_eq!(d["droplet"]["locked"], true);
    let (s, e) = api
        .post(
            &format!("/v2/droplets/{id}/actions"),
            json!({"type": "power_off"}),
        )
        .await;
    assert_eq!(
        (s, e["id"].as_str(), e["message"].as_str()),
        (
            422,
            Some("unprocessable_entity"),
            Some(refusal::PENDING_EVENT)
        ),
        "{e}"
    );
    assert_eq!(
        refusal::PENDING_EVENT,
        "Droplet already has a pending event.",
        "DigitalOcean's wording (hashicorp/packer#1814)"
    );
    assert_eq!(api.wait_action(action).await["status"], "completed");
    api.wait_droplet(id, "off").await;

    // A snapshot becomes a private image, visible three ways.
    sim.update_config(|c| c.action_ms = 50);
    let (s, v) = api
        .post(
            &format!("/v2/droplets/{id}/actions"),
            json!({"type": "snapshot", "name": "golden-1"}),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    let a = api
        .wait_action(v["action"]["id"].as_u64().expect("id"))
        .await;
    assert_eq!(a["status"], "completed");
    assert_eq!(
        a["resource_id"].as_u64(),
        Some(id),
        "a snapshot action's resource is the droplet"
    );
    let (_, snaps) = api.get(&format!("/v2/droplets/{id}/snapshots")).await;
    let image_id = snaps["snapshots"][0]["id"]
        .as_u64()
        .expect("integer image id");
    assert_eq!(snaps["snapshots"][0]["name"], "golden-1");
    let (_, imgs) = api.get("/v2/images?private=true").await;
    assert_eq!(imgs["images"].as_array().map(Vec::len), Some(1));
    assert_eq!(imgs["images"][0]["id"].as_u64(), Some(image_id));
    let (_, all) = api.get("/v2/snapshots").await;
    assert_eq!(
        all["snapshots"][0]["id"],
        image_id.to_string(),
        "/v2/snapshots ids are strings"
    );
    let (_, d) = api.get(&format!("/v2/droplets/{id}")).await;
    assert_eq!(d["droplet"]["snapshot_ids"], json!([image_id]));

    // Delete: 204, then 404 for the droplet; the image stays.
    let (s, _, _) = api
        .call(reqwest::Method::DELETE, &format!("/v2/droplets/{id}"), None)
        .await;
    assert_eq!(s, 204);
    let (s, e) = api.get(&format!("/v2/droplets/{id}")).await;
    assert_eq!((s, e["id"].as_str()), (404, Some("not_found")));
    let (s, _, _) = api
        .call(reqwest::Method::DELETE, &format!("/v2/droplets/{id}"), None)
        .await;
    assert_eq!(s, 404);
    let (s, _) = api.get(&format!("/v2/images/{image_id}")).await;
    assert_eq!(s, 200);
}

#[tokio::test]
async fn errored_snapshot_and_provisioning() {
    let mut cfg = fast();
    cfg.errored_actions = vec!["snapshot".into()];
    let sim = Sim::start(cfg).await.expect("sim starts");
    let api = Api::new(&sim);
    let id = api.create("builder-2").await;
    api.wait_droplet(id, "active").await;

    sim.provision(
        id,
        ProvisionPlan {
            result: ProvisionResult::Failed,
            after_ms: 50,
        },
    )
    .expect("droplet exists");
    api.wait_droplet(id, "off").await;
    assert_eq!(sim.provision_result(id), Some(ProvisionResult::Failed));
    let state = sim.state();
    assert_eq!(state["droplets"][0]["provision"]["result"], "failed");

    let (_, v) = api
        .post(
            &format!("/v2/droplets/{id}/actions"),
            json!({"type": "snapshot", "name": "x"}),
        )
        .await;
    let a = api
        .wait_action(v["action"]["id"].as_u64().expect("id"))
        .await;
    assert_eq!(a["status"], "errored");
    let (_, snaps) = api.get(&format!("/v2/droplets/{id}/snapshots")).await;
    assert_eq!(
        snaps["snapshots"],
        json!([]),
        "an errored snapshot makes no image"
    );
    assert!(
        sim.provision(
            999,
            ProvisionPlan {
                result: ProvisionResult::Ok,
                after_ms: 0
            }
        )
        .is_err()
    );
}

#[tokio::test]
async fn auto_provision_powers_droplets_off() {
    let mut cfg = fast();
    cfg.auto_provision = Some(ProvisionPlan {
        result: ProvisionResult::Ok,
        after_ms: 100,
    });
    let sim = Sim::start(cfg).await.expect("sim starts");
    let api = Api::new(&sim);
    let id = api.create("builder-3").await;
    api.wait_droplet(id, "off").await;
    assert_eq!(sim.provision_result(id), Some(ProvisionResult::Ok));
}

#[tokio::test]
async fn pagination_links_and_meta() {
    let sim = Sim::start(SimConfig {
        droplet_limit: 100,
        ..fast()
    })
    .await
    .expect("sim starts");
    let api = Api::new(&sim);
    for i in 0..45 {
        api.create(&format!("d-{i}")).await;
    }
    let (_, p1) = api.get("/v2/droplets").await;
    assert_eq!(
        p1["droplets"].as_array().map(Vec::len),
        Some(20),
        "per_page defaults to 20"
    );
    assert_eq!(p1["meta"]["total"], 45);
    let next = p1["links"]["pages"]["next"].as_str().expect("next link");
    assert!(next.contains("page=2"), "{next}");
    assert!(p1["links"]["pages"].get("prev").is_none());
    let (_, p3) = api.get("/v2/droplets?page=3").await;
    assert_eq!(p3["droplets"].as_array().map(Vec::len), Some(5));
    assert!(p3["links"]["pages"].get("next").is_none());
    assert!(
        p3["links"]["pages"]["first"]
            .as_str()
            .is_some_and(|l| l.contains("page=1"))
    );
    let (_, big) = api.get("/v2/droplets?per_page=500").await;
    assert_eq!(
        big["droplets"].as_array().map(Vec::len),
        Some(45),
        "per_page is capped at 200"
    );
    let (_, tagged) = api
        .get("/v2/droplets?tag_name=bake-1&per_page=10&page=5")
        .await;
    assert_eq!(tagged["droplets"].as_array().map(Vec::len), Some(5));
    assert_eq!(
        tagged["links"]["pages"]["first"]
            .as_str()
            .map(|l| l.contains("tag_name=bake-1")),
        Some(true)
    );
}

#[tokio::test]
async fn auth_headers_errors_and_limits() {
    let sim = Sim::start(SimConfig {
        token: Some(TOKEN.into()),
        droplet_limit: 1,
        ..fast()
    })
    .await
    .expect("sim starts");
    let api = Api::new(&sim);
    let resp = reqwest::Client::new()
        .get(format!("{}/v2/account", sim.api_url()))
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status().as_u16(), 401);
    let resp = reqwest::Client::new()
        .get(format!("{}/v2/account", sim.api_url()))
        .bearer_auth("wrong")
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status().as_u16(), 401);

    let (s, h, v) = api.call(reqwest::Method::GET, "/v2/account", None).await;
    assert_eq!(s, 200);
    assert_eq!(v["account"]["droplet_limit"], 1);
    for name in [
        "ratelimit-limit",
        "ratelimit-remaining",
        "ratelimit-reset",
        "x-request-id",
    ] {
        assert!(h.contains_key(name), "missing header {name}");
    }
    // Each create refusal: 422, DO's error shape, and DigitalOcean's own words
    // (spelled out here as well as in the simulator: the constants must not drift).
    let golden = sim.seed_private_image(SeedImage {
        name: "golden-sfo".into(),
        created_at: None,
        tags: vec![],
        region: Some("sfo3".into()),
    });
    let cases = [
        (
            json!({"name": "a", "size": "g-2vcpu-8gb", "image": "debian-12-x64", "region": "nyc3"}),
            refusal::SIZE_RESTRICTED,
            "This size is currently restricted please send an additional payment to unlock.",
        ),
        (
            json!({"name": "a", "size": "s-4vcpu-8gb", "image": "debian-12-x64", "region": "sgp1"}),
            refusal::SIZE_NOT_IN_REGION,
            "Size is not available in this region.",
        ),
        (
            json!({"name": "a", "size": "s-1vcpu-1gb", "image": "debian-12-x64", "region": "nyc1"}),
            refusal::REGION_NOT_AVAILABLE,
            "Region is not available",
        ),
        (
            json!({"name": "a", "size": "s-0vcpu-0gb", "image": "debian-12-x64", "region": "nyc3"}),
            refusal::INVALID_SIZE,
            "You specified an invalid size for Droplet creation.",
        ),
        (
            json!({"name": "a", "size": "s-1vcpu-1gb", "image": "golden-snapshot-name", "region": "nyc3"}),
            refusal::INVALID_IMAGE,
            "You specified an invalid image for Droplet creation.",
        ),
        (
            json!({"name": "a", "size": "s-1vcpu-1gb", "image": golden, "region": "nyc3"}),
            refusal::IMAGE_NOT_IN_REGION,
            "The image you specified is not available in the selected region, you can transfer it to this region from the images pages.",
        ),
        (
            json!({"name": "a_b", "size": "s-1vcpu-1gb", "image": "debian-12-x64", "region": "nyc3"}),
            refusal::INVALID_HOSTNAME,
            "Only valid hostname characters are allowed. (a-z, A-Z, 0-9, . and -)",
        ),
    ];
    for (body, message, digitaloceans) in cases {
        assert_eq!(message, digitaloceans);
        let (s, h, e) = api
            .call(reqwest::Method::POST, "/v2/droplets", Some(body))
            .await;
        assert_eq!(s, 422, "{e}");
        assert_eq!(e["id"], "unprocessable_entity");
        assert_eq!(e["message"].as_str(), Some(message), "{e}");
        assert_eq!(
            e["request_id"].as_str(),
            h.get("x-request-id").and_then(|v| v.to_str().ok())
        );
    }
    api.create("one").await;
    let (s, e) = api
        .post(
            "/v2/droplets",
            json!({"name": "two", "size": "s-1vcpu-1gb", "image": "debian-12-x64"}),
        )
        .await;
    assert_eq!(s, 422);
    assert_eq!(
        e["message"].as_str(),
        Some("creating this/these droplet(s) will exceed your droplet limit"),
        "{e}"
    );
}

#[tokio::test]
async fn faults_and_request_log() {
    let sim = Sim::start(fast()).await.expect("sim starts");
    let api = Api::new(&sim);
    sim.set_faults(vec![
        FaultRule {
            route: "GET /v2/account".into(),
            nth: 2,
            times: 2,
            fault: Fault::RateLimit {
                retry_after_secs: 7,
            },
        },
        FaultRule {
            route: "GET /v2/sizes".into(),
            nth: 1,
            times: 1,
            fault: Fault::ServerError { status: 503 },
        },
        FaultRule {
            route: "POST /v2/droplets".into(),
            nth: 1,
            times: 1,
            fault: Fault::ServerErrorAfterCommit { status: 500 },
        },
        FaultRule {
            route: "GET /v2/regions".into(),
            nth: 1,
            times: 1,
            fault: Fault::Drop,
        },
    ]);
    let statuses: Vec<u16> = {
        let mut v = Vec::new();
        for _ in 0..4 {
            let (s, h, _) = api.call(reqwest::Method::GET, "/v2/account", None).await;
            if s == 429 {
                assert_eq!(
                    h.get("retry-after").and_then(|v| v.to_str().ok()),
                    Some("7")
                );
            }
            v.push(s);
        }
        v
    };
    assert_eq!(statuses, vec![200, 429, 429, 200]);
    assert_eq!(api.get("/v2/sizes").await.0, 503);
    assert_eq!(api.get("/v2/sizes").await.0, 200);

    let (s, e) = api
        .post(
            "/v2/droplets",
            json!({"name": "x", "size": "s-1vcpu-1gb", "image": "debian-12-x64"}),
        )
        .await;
    assert_eq!((s, e["id"].as_str()), (500, Some("server_error")));
    assert_eq!(sim.droplets_tagged("image-builder").len(), 0);
    assert_eq!(
        sim.droplet_ids().len(),
        1,
        "the create was committed before the 500"
    );

    let dropped = reqwest::Client::new()
        .get(format!("{}/v2/regions", sim.api_url()))
        .bearer_auth(TOKEN)
        .send()
        .await;
    assert!(
        dropped.is_err(),
        "the connection must close without a response"
    );

    let log = sim.requests();
    assert_eq!(log.by_route.get("GET /v2/account"), Some(&4));
    assert_eq!(log.by_route.get("POST /v2/droplets"), Some(&1));
    assert_eq!(log.by_route.get("GET /v2/regions"), Some(&1));
    assert!(log.entries.iter().any(|e| e.route == "GET /v2/regions"
        && e.status == 0
        && e.fault.as_deref() == Some("drop")));
    assert_eq!(log.total, 8);
    sim.reset_requests();
    assert_eq!(sim.requests().total, 0);
}

#[tokio::test]
async fn a_held_response_waits_for_its_gate_and_the_request_is_processed_first() {
    let sim = Sim::start(fast()).await.expect("sim starts");
    sim.set_faults(vec![FaultRule {
        route: "POST /v2/droplets".into(),
        nth: 1,
        times: 1,
        fault: Fault::Hold {
            gate: "create".into(),
        },
    }]);
    let api = Api::new(&sim);
    let create = tokio::spawn(async move { api.create("held").await });
    tokio::time::timeout(Duration::from_secs(30), sim.wait_held("create", 1))
        .await
        .expect("the create is held at its gate");
    // Held: processed (the droplet exists), not answered, not yet logged.
    assert_eq!(sim.droplet_ids().len(), 1);
    assert!(
        !create.is_finished(),
        "the response went out before the release"
    );
    assert_eq!(sim.requests().entries.len(), 0);
    assert_eq!(
        sim.gates().get("create").map(|g| (g.held, g.released)),
        Some((1, false))
    );
    sim.release("create");
    let id = create.await.expect("the create answers once released");
    assert_eq!(sim.droplet_ids(), vec![id]);
    let log = sim.requests();
    assert_eq!(
        log.entries
            .iter()
            .map(|e| (e.status, e.fault.as_deref()))
            .collect::<Vec<_>>(),
        vec![(202, Some("hold"))]
    );
    // Only the rule's calls are held: the next create answers at once.
    let api = Api::new(&sim);
    api.create("not-held").await;
    assert_eq!(sim.gates().get("create").map(|g| g.held), Some(1));
}

#[tokio::test]
async fn rate_limit_window_runs_out() {
    let mut cfg = fast();
    cfg.ratelimit.remaining = 2;
    cfg.ratelimit.reset_secs = 30;
    let sim = Sim::start(cfg).await.expect("sim starts");
    let api = Api::new(&sim);
    let (_, h, _) = api.call(reqwest::Method::GET, "/v2/account", None).await;
    assert_eq!(
        h.get("ratelimit-remaining").and_then(|v| v.to_str().ok()),
        Some("1")
    );
    assert_eq!(api.get("/v2/account").await.0, 200);
    let (s, h, e) = api.call(reqwest::Method::GET, "/v2/account", None).await;
    assert_eq!((s, e["id"].as_str()), (429, Some("too_many_requests")));
    let ra: u64 = h
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .expect("retry-after");
    assert!((1..=30).contains(&ra), "{ra}");
}

#[tokio::test]
async fn projects_tags_keys_images() {
    let sim = Sim::start(fast()).await.expect("sim starts");
    let api = Api::new(&sim);
    let id = api.create("p-1").await;
    let (_, p) = api.get("/v2/projects/default").await;
    assert_eq!(p["project"]["is_default"], true);
    let (s, r) = api
        .post(
            &format!("/v2/projects/{}/resources", do_sim::OTHER_PROJECT_ID),
            json!({"resources": [format!("do:droplet:{id}"), "do:droplet:1"]}),
        )
        .await;
    assert_eq!(s, 200, "{r}");
    assert_eq!(r["resources"][0]["status"], "ok");
    assert_eq!(r["resources"][1]["status"], "not_found");
    let (_, l) = api
        .get(&format!(
            "/v2/projects/{}/resources",
            do_sim::OTHER_PROJECT_ID
        ))
        .await;
    assert_eq!(l["resources"][0]["urn"], format!("do:droplet:{id}"));

    let (s, t) = api.post("/v2/tags", json!({"name": "golden"})).await;
    assert_eq!((s, t["tag"]["name"].as_str()), (201, Some("golden")));
    let (s, _) = api.post("/v2/tags", json!({"name": "bad tag!"})).await;
    assert_eq!(s, 422);
    let (s, _, _) = api
        .call(
            reqwest::Method::POST,
            "/v2/tags/golden/resources",
            Some(
                json!({"resources": [{"resource_id": id.to_string(), "resource_type": "droplet"}]}),
            ),
        )
        .await;
    assert_eq!(s, 204);
    let (_, d) = api.get(&format!("/v2/droplets/{id}")).await;
    assert!(
        d["droplet"]["tags"]
            .as_array()
            .is_some_and(|t| t.contains(&json!("golden")))
    );

    let (s, k) = api
        .post(
            "/v2/account/keys",
            json!({"name": "k", "public_key": "ssh-ed25519 AAAAC3Nza test"}),
        )
        .await;
    assert_eq!(s, 201);
    let (s, e) = api
        .post(
            "/v2/account/keys",
            json!({"name": "k2", "public_key": "ssh-ed25519 AAAAC3Nza test"}),
        )
        .await;
    assert_eq!(
        (s, e["message"].as_str()),
        (422, Some("SSH Key is already in use on your account")),
        "same key twice"
    );
    let fp = k["ssh_key"]["fingerprint"].as_str().expect("fingerprint");
    assert_eq!(api.get(&format!("/v2/account/keys/{fp}")).await.0, 200);

    let old = sim.seed_private_image(SeedImage {
        name: "golden".into(),
        created_at: Some(time::macros::datetime!(2025-01-01 0:00 UTC)),
        tags: vec![],
        region: None,
    });
    let (s, v) = api
        .call(
            reqwest::Method::PUT,
            &format!("/v2/images/{old}"),
            Some(json!({"name": "golden-old", "description": "d"})),
        )
        .await
        .into_pair();
    assert_eq!(s, 200);
    assert_eq!(v["image"]["name"], "golden-old");
    assert_eq!(
        api.get("/v2/images/debian-12-x64").await.0,
        200,
        "public images by slug"
    );
    let (s, _, _) = api
        .call(reqwest::Method::DELETE, &format!("/v2/images/{old}"), None)
        .await;
    assert_eq!(s, 204);
    assert_eq!(api.get(&format!("/v2/images/{old}")).await.0, 404);
}

trait IntoPair {
    fn into_pair(self) -> (u16, Value);
}
impl IntoPair for (u16, reqwest::header::HeaderMap, Value) {
    fn into_pair(self) -> (u16, Value) {
        (self.0, self.2)
    }
}

#[tokio::test]
async fn metadata_service_answers_as_a_droplet() {
    let sim = Sim::start(fast()).await.expect("sim starts");
    let api = Api::new(&sim);
    let id = api.create("meta-1").await;
    let md = sim.metadata_url();
    let http = reqwest::Client::new();
    assert_eq!(
        http.get(format!("{md}/metadata/v1/id"))
            .send()
            .await
            .expect("send")
            .status()
            .as_u16(),
        404,
        "not acting as any droplet yet"
    );
    sim.act_as(Some(id));
    let body = http
        .get(format!("{md}/metadata/v1/id"))
        .send()
        .await
        .expect("send")
        .text()
        .await
        .expect("text");
    assert_eq!(body, id.to_string());
    let tags = http
        .get(format!("{md}/metadata/v1/tags"))
        .send()
        .await
        .expect("send")
        .text()
        .await
        .expect("text");
    assert_eq!(
        tags.lines().collect::<Vec<_>>(),
        vec!["image-builder", "bake-1"]
    );
    let all: Value = http
        .get(format!("{md}/metadata/v1.json"))
        .send()
        .await
        .expect("send")
        .json()
        .await
        .expect("json object");
    assert_eq!(all["droplet_id"].as_u64(), Some(id));
    assert_eq!(all["tags"], json!(["image-builder", "bake-1"]));
    // Destroyed droplets have no metadata service.
    api.call(reqwest::Method::DELETE, &format!("/v2/droplets/{id}"), None)
        .await;
    assert_eq!(
        http.get(format!("{md}/metadata/v1/id"))
            .send()
            .await
            .expect("send")
            .status()
            .as_u16(),
        404
    );
}

/// A scoped token (a fleet's worker token: `droplet:read` + `droplet:delete`) may read and
/// delete droplets and nothing else (403, DigitalOcean's wording); the log names it.
#[tokio::test]
async fn scoped_tokens_are_held_to_their_scopes_and_named_in_the_log() {
    let sim = Sim::start(SimConfig {
        token: Some(TOKEN.into()),
        scoped_tokens: vec![do_sim::ScopedToken {
            name: "worker".into(),
            token: "worker-token".into(),
            scopes: vec!["droplet:read".into(), "droplet:delete".into()],
        }],
        ..SimConfig::default()
    })
    .await
    .unwrap();
    let api = Api::new(&sim);
    let id = api.create("w-1").await;
    let http = reqwest::Client::new();
    let as_worker = |m: reqwest::Method, path: &str| {
        http.request(m, format!("{}{path}", sim.api_url()))
            .header("authorization", "Bearer worker-token")
    };
    let created = as_worker(reqwest::Method::POST, "/v2/droplets")
        .header("content-type", "application/json")
        .body(
            json!({"name": "x", "size": "s-1vcpu-1gb", "image": "debian-12-x64", "region": "nyc3"})
                .to_string(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(created.status().as_u16(), 403);
    let body: Value = created.json().await.unwrap();
    assert_eq!(body["id"], "Forbidden");
    let read = as_worker(reqwest::Method::GET, &format!("/v2/droplets/{id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(read.status().as_u16(), 200);
    let deleted = as_worker(reqwest::Method::DELETE, &format!("/v2/droplets/{id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status().as_u16(), 204);
    let log = sim.requests();
    let delete = log
        .entries
        .iter()
        .find(|e| e.route == "DELETE /v2/droplets/{id}")
        .expect("the delete is logged");
    assert_eq!(delete.token.as_deref(), Some("worker"), "{delete:?}");
    let create = log
        .entries
        .iter()
        .find(|e| e.route == "POST /v2/droplets" && e.status == 202)
        .unwrap();
    assert_eq!(create.token, None, "the full token is not a scoped one");
    assert_eq!(sim.count("POST /v2/droplets"), 2);
    assert!(sim.droplet_ids().is_empty());
}
