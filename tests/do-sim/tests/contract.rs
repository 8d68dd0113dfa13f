//! Contract conformance: every simulator route, success and error answers,
//! driven through Prism's contract proxy (`prism proxy SPEC SIM --errors`).
//! Any request or response that breaks DigitalOcean's OpenAPI contract comes
//! back as `application/problem+json` and fails the test.
//!
//! Needs prism: run `.ci/setup-prism.sh` first (node + npm). Without it this
//! test FAILS with a message naming the script; it never skips.

use std::time::Duration;

use do_sim::prism::{PROBLEM_JSON, Prism};
use do_sim::{Fault, FaultRule, Sim, SimConfig};
use reqwest::Method;
use serde_json::{Value, json};

const TOKEN: &str = "contract-token";

struct Through<'a> {
    http: reqwest::Client,
    prism: &'a Prism,
}

impl Through<'_> {
    /// Send through prism; fail on any contract violation; return status and body.
    async fn call_as(
        &self,
        token: &str,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut req = self
            .http
            .request(method.clone(), format!("{}{path}", self.prism.url()))
            .bearer_auth(token);
        if let Some(b) = &body {
            req = req
                .header("content-type", "application/json")
                .body(b.to_string());
        }
        let resp = req
            .send()
            .await
            .unwrap_or_else(|e| panic!("{method} {path} through prism: {e}"));
        let status = resp.status().as_u16();
        let ctype = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        let text = resp.text().await.expect("body");
        assert!(
            !ctype.starts_with(PROBLEM_JSON),
            "contract violation on {method} {path} (body {body:?}): {status} {text}\nprism said:\n{}",
            self.prism.violations().join("\n")
        );
        let v = if text.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        (status, v)
    }

    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> (u16, Value) {
        self.call_as(TOKEN, method, path, body).await
    }

    async fn expect(&self, method: Method, path: &str, body: Option<Value>, want: u16) -> Value {
        let (status, v) = self.call(method.clone(), path, body).await;
        assert_eq!(status, want, "{method} {path}: {v}");
        v
    }

    async fn wait_droplet(&self, id: u64, status: &str) {
        for _ in 0..100 {
            let v = self
                .expect(Method::GET, &format!("/v2/droplets/{id}"), None, 200)
                .await;
            if v["droplet"]["status"] == status && v["droplet"]["locked"] == false {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("droplet {id} never became {status}");
    }

    async fn wait_action(&self, id: u64) -> Value {
        for _ in 0..100 {
            let v = self
                .expect(Method::GET, &format!("/v2/actions/{id}"), None, 200)
                .await;
            if v["action"]["status"] != "in-progress" {
                return v["action"].clone();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("action {id} never finished");
    }
}

fn fault(route: &str, fault: Fault) -> FaultRule {
    FaultRule {
        route: route.to_owned(),
        nth: 1,
        times: 1,
        fault,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_simulator_route_conforms_to_the_digitalocean_contract() {
    let sim = Sim::start(SimConfig {
        token: Some(TOKEN.into()),
        droplet_boot_ms: 100,
        action_ms: 100,
        droplet_limit: 4,
        ..SimConfig::default()
    })
    .await
    .expect("simulator starts");
    let prism = match Prism::proxy(&sim.api_url()).await {
        Ok(p) => p,
        Err(e) => panic!("contract check cannot run: {e}"),
    };
    let t = Through {
        http: reqwest::Client::new(),
        prism: &prism,
    };
    use Method as M;

    // Account, sizes, regions (with pagination in both directions), 401 from the simulator.
    t.expect(M::GET, "/v2/account", None, 200).await;
    let (s, e) = t
        .call_as("not-the-token", M::GET, "/v2/account", None)
        .await;
    assert_eq!((s, e["id"].as_str()), (401, Some("Unauthorized")));
    t.expect(M::GET, "/v2/sizes", None, 200).await;
    let page = t
        .expect(M::GET, "/v2/sizes?per_page=2&page=2", None, 200)
        .await;
    assert!(
        page["links"]["pages"]["next"].is_string() && page["links"]["pages"]["prev"].is_string(),
        "{page}"
    );
    t.expect(M::GET, "/v2/regions", None, 200).await;

    // SSH keys.
    let key = t
        .expect(
            M::POST,
            "/v2/account/keys",
            Some(json!({"name": "k", "public_key": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB test"})),
            201,
        )
        .await;
    let key_id = key["ssh_key"]["id"].as_u64().expect("key id");
    let fp = key["ssh_key"]["fingerprint"]
        .as_str()
        .expect("fingerprint")
        .to_owned();
    t.expect(M::GET, "/v2/account/keys", None, 200).await;
    t.expect(M::GET, &format!("/v2/account/keys/{key_id}"), None, 200)
        .await;
    t.expect(M::GET, &format!("/v2/account/keys/{fp}"), None, 200)
        .await;
    t.expect(
        M::POST,
        "/v2/account/keys",
        Some(json!({"name": "k2", "public_key": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB test"})),
        422,
    )
    .await;
    t.expect(M::DELETE, &format!("/v2/account/keys/{key_id}"), None, 204)
        .await;
    t.expect(M::GET, &format!("/v2/account/keys/{key_id}"), None, 404)
        .await;

    // Tags.
    t.expect(
        M::POST,
        "/v2/tags",
        Some(json!({"name": "image-builder"})),
        201,
    )
    .await;
    t.expect(M::GET, "/v2/tags", None, 200).await;
    t.expect(M::GET, "/v2/tags/image-builder", None, 200).await;
    t.expect(M::GET, "/v2/tags/nope", None, 404).await;

    // Droplets: single and multi create, get, lists, pagination.
    let created = t
        .expect(
            M::POST,
            "/v2/droplets",
            Some(json!({"name": "builder-1", "region": "nyc3", "size": "s-1vcpu-1gb", "image": "debian-12-x64",
                "tags": ["image-builder", "image-builder-bake-1"], "user_data": "#cloud-config\n", "monitoring": true, "ipv6": false})),
            202,
        )
        .await;
    let id = created["droplet"]["id"].as_u64().expect("droplet id");
    assert_eq!(created["droplet"]["status"], "new");
    t.expect(
        M::POST,
        "/v2/droplets",
        Some(json!({"names": ["m-1", "m-2"], "size": "s-1vcpu-1gb", "image": 100_001})),
        202,
    )
    .await;
    t.expect(
        M::GET,
        "/v2/droplets?tag_name=image-builder-bake-1",
        None,
        200,
    )
    .await;
    let p2 = t
        .expect(M::GET, "/v2/droplets?page=2&per_page=1", None, 200)
        .await;
    assert_eq!(p2["meta"]["total"], 3);
    t.expect(M::GET, "/v2/droplets/999999", None, 404).await;
    t.wait_droplet(id, "active").await;

    // 422s: restricted size, size not in region, invalid image, droplet limit.
    for body in [
        json!({"name": "x", "size": "g-2vcpu-8gb", "image": "debian-12-x64", "region": "nyc3"}),
        json!({"name": "x", "size": "s-4vcpu-8gb", "image": "debian-12-x64", "region": "sgp1"}),
        json!({"name": "x", "size": "s-1vcpu-1gb", "image": "my-golden-image", "region": "nyc3"}),
        json!({"names": ["a", "b"], "size": "s-1vcpu-1gb", "image": "debian-12-x64"}),
    ] {
        let e = t.expect(M::POST, "/v2/droplets", Some(body), 422).await;
        assert_eq!(e["id"], "unprocessable_entity");
    }

    // Actions: 201, 422 while locked, lists and gets.
    let a = t
        .expect(
            M::POST,
            &format!("/v2/droplets/{id}/actions"),
            Some(json!({"type": "shutdown"})),
            201,
        )
        .await;
    let aid = a["action"]["id"].as_u64().expect("action id");
    t.expect(
        M::POST,
        &format!("/v2/droplets/{id}/actions"),
        Some(json!({"type": "power_off"})),
        422,
    )
    .await;
    t.expect(M::GET, &format!("/v2/droplets/{id}/actions"), None, 200)
        .await;
    t.expect(
        M::GET,
        &format!("/v2/droplets/{id}/actions/{aid}"),
        None,
        200,
    )
    .await;
    assert_eq!(t.wait_action(aid).await["status"], "completed");
    t.wait_droplet(id, "off").await;
    let a = t
        .expect(
            M::POST,
            &format!("/v2/droplets/{id}/actions"),
            Some(json!({"type": "power_on"})),
            201,
        )
        .await;
    t.wait_action(a["action"]["id"].as_u64().expect("id")).await;
    let a = t
        .expect(
            M::POST,
            &format!("/v2/droplets/{id}/actions"),
            Some(json!({"type": "power_off"})),
            201,
        )
        .await;
    t.wait_action(a["action"]["id"].as_u64().expect("id")).await;

    // Snapshot -> private image; images and snapshots routes.
    let a = t
        .expect(
            M::POST,
            &format!("/v2/droplets/{id}/actions"),
            Some(json!({"type": "snapshot", "name": "golden-1"})),
            201,
        )
        .await;
    assert_eq!(
        t.wait_action(a["action"]["id"].as_u64().expect("id")).await["status"],
        "completed"
    );
    let snaps = t
        .expect(M::GET, &format!("/v2/droplets/{id}/snapshots"), None, 200)
        .await;
    let image = snaps["snapshots"][0]["id"].as_u64().expect("image id");
    t.expect(M::GET, "/v2/images?private=true", None, 200).await;
    t.expect(M::GET, "/v2/images?type=distribution", None, 200)
        .await;
    t.expect(M::GET, "/v2/images", None, 200).await;
    t.expect(M::GET, &format!("/v2/images/{image}"), None, 200)
        .await;
    t.expect(M::GET, "/v2/images/debian-12-x64", None, 200)
        .await;
    t.expect(
        M::PUT,
        &format!("/v2/images/{image}"),
        Some(json!({"name": "golden-1", "distribution": "Debian", "description": "baked"})),
        200,
    )
    .await;
    t.expect(M::GET, "/v2/snapshots", None, 200).await;
    t.expect(M::GET, "/v2/snapshots?resource_type=droplet", None, 200)
        .await;
    t.expect(M::GET, &format!("/v2/snapshots/{image}"), None, 200)
        .await;

    // Tag resources.
    let res = json!({"resources": [{"resource_id": id.to_string(), "resource_type": "droplet"}, {"resource_id": image.to_string(), "resource_type": "image"}]});
    t.expect(
        M::POST,
        "/v2/tags/image-builder/resources",
        Some(res.clone()),
        204,
    )
    .await;
    t.expect(
        M::DELETE,
        "/v2/tags/image-builder/resources",
        Some(res),
        204,
    )
    .await;

    // Projects.
    t.expect(M::GET, "/v2/projects", None, 200).await;
    t.expect(M::GET, "/v2/projects/default", None, 200).await;
    let r = t
        .expect(
            M::POST,
            &format!("/v2/projects/{}/resources", do_sim::OTHER_PROJECT_ID),
            Some(json!({"resources": [format!("do:droplet:{id}")]})),
            200,
        )
        .await;
    assert_eq!(r["resources"][0]["status"], "ok");
    t.expect(
        M::GET,
        &format!("/v2/projects/{}/resources", do_sim::OTHER_PROJECT_ID),
        None,
        200,
    )
    .await;
    t.expect(
        M::POST,
        "/v2/projects/default/resources",
        Some(json!({"resources": [format!("do:droplet:{id}")]})),
        200,
    )
    .await;
    t.expect(M::GET, "/v2/projects/default/resources", None, 200)
        .await;
    t.expect(
        M::POST,
        "/v2/projects/6b5d6e0a-7c1b-4f0e-9a3e-2f6c1d0a0fff/resources",
        Some(json!({"resources": ["do:droplet:1"]})),
        404,
    )
    .await;

    // Injected faults: 429 with retry-after, 500, 503.
    sim.set_faults(vec![
        fault(
            "GET /v2/account",
            Fault::RateLimit {
                retry_after_secs: 1,
            },
        ),
        fault("GET /v2/droplets/{id}", Fault::ServerError { status: 500 }),
        fault("GET /v2/droplets", Fault::ServerError { status: 503 }),
    ]);
    let e = t.expect(M::GET, "/v2/account", None, 429).await;
    assert_eq!(e["id"], "too_many_requests");
    t.expect(M::GET, &format!("/v2/droplets/{id}"), None, 500)
        .await;
    t.expect(M::GET, "/v2/droplets", None, 503).await;
    sim.clear_faults();

    // Deletes: 204 then 404.
    t.expect(M::DELETE, &format!("/v2/snapshots/{image}"), None, 204)
        .await;
    t.expect(M::DELETE, &format!("/v2/snapshots/{image}"), None, 404)
        .await;
    let a = t
        .expect(
            M::POST,
            &format!("/v2/droplets/{id}/actions"),
            Some(json!({"type": "snapshot", "name": "golden-2"})),
            201,
        )
        .await;
    t.wait_action(a["action"]["id"].as_u64().expect("id")).await;
    let snaps = t
        .expect(M::GET, &format!("/v2/droplets/{id}/snapshots"), None, 200)
        .await;
    let image2 = snaps["snapshots"][0]["id"].as_u64().expect("image id");
    t.expect(M::DELETE, &format!("/v2/images/{image2}"), None, 204)
        .await;
    t.expect(M::GET, &format!("/v2/images/{image2}"), None, 404)
        .await;
    t.expect(M::DELETE, &format!("/v2/droplets/{id}"), None, 204)
        .await;
    t.expect(M::GET, &format!("/v2/droplets/{id}"), None, 404)
        .await;
    t.expect(M::DELETE, &format!("/v2/droplets/{id}"), None, 404)
        .await;
    t.expect(M::GET, &format!("/v2/droplets/{id}/snapshots"), None, 404)
        .await;
    t.expect(M::DELETE, "/v2/droplets?tag_name=image-builder", None, 204)
        .await;
    t.expect(M::DELETE, "/v2/tags/image-builder", None, 204)
        .await;
    assert!(
        sim.droplet_ids().len() == 2,
        "the two multi-created droplets remain"
    );

    let before_controls = prism.violations();
    assert!(
        before_controls.is_empty(),
        "prism reported problems:\n{}",
        before_controls.join("\n")
    );

    // Negative controls: the checker must catch a bad response and a bad request.
    sim.set_faults(vec![fault(
        "GET /v2/account",
        Fault::Respond {
            status: 200,
            body: json!({"account": {"droplet_limit": "many"}}),
        },
    )]);
    let resp = t
        .http
        .get(format!("{}/v2/account", prism.url()))
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("send");
    let ctype = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    assert!(
        ctype.starts_with(PROBLEM_JSON),
        "prism let a contract-breaking response through ({ctype})"
    );
    let resp = t
        .http
        .post(format!("{}/v2/droplets", prism.url()))
        .bearer_auth(TOKEN)
        .header("content-type", "application/json")
        .body(json!({"name": "no-size", "image": "debian-12-x64"}).to_string())
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status().as_u16(), 422);
    let ctype = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    assert!(
        ctype.starts_with(PROBLEM_JSON),
        "prism let a contract-breaking request through ({ctype})"
    );
}
