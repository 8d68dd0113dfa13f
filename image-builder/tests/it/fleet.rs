//! Fleets on DigitalOcean against the simulator (no machine runs here: the workers'
//! agents are not reached, so `up` returns once the droplets are active): batches of
//! `names[]`, tags, the worker contract in the user-data, idempotence, faults at every
//! create, `ls`/`down`/`reap` from tags alone, and the spending guardrails.

use std::time::Duration;

use do_api::{Client, Poll, RetryPolicy, Token};
use do_sim::{Fault, FaultRule, SeedImage, Sim, SimConfig};
use image_builder::fleet::digitalocean::{self, UpRequest};
use image_builder::fleet::policy::UserConfig;
use image_builder::fleet::state::StateDir;
use image_builder::fleet::userdata::WorkerSecrets;
use image_builder::fleet::{FleetError, FleetName};
use image_builder::spec;

const TOKEN: &str = "dop_v1_host_token_can_create";
const WORKER_TOKEN: &str = "dop_v1_worker_token_can_only_delete";
const SPACE_SECRET: &str = "worker-space-secret-9f8e7d";

struct Env {
    sim: Sim,
    dir: tempfile::TempDir,
    spec: spec::LoadedSpec,
    image: u64,
}

impl Env {
    async fn start(config: SimConfig, spec_extra: &str) -> Env {
        let sim = Sim::start(SimConfig {
            token: Some(TOKEN.into()),
            droplet_boot_ms: 50,
            action_ms: 50,
            ..config
        })
        .await
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let spec_path = dir.path().join("worker.yaml");
        std::fs::write(
            &spec_path,
            format!(
                "name: ci-worker\nbase:\n  digitalocean: debian-12-x64\nbuild_user:\n  name: builder\n\
                 agent:\n  max_lifetime: 2h\n  artifact:\n    bucket: builds\n    endpoint: http://127.0.0.1:9\n    path_style: true\n    required: true\n\
                 snapshot:\n  name: \"{{name}}-{{timestamp}}\"\n\
                 digitalocean:\n  region: nyc3\n  size: s-1vcpu-1gb\n{spec_extra}"
            ),
        )
        .unwrap();
        let spec = spec::load(&spec_path).unwrap();
        // The golden image a bake made (tagged), and a neighbour of another family.
        let image = sim.seed_private_image(SeedImage {
            name: "ci-worker-20260101-000000".into(),
            created_at: None,
            tags: vec!["image-builder".into()],
            region: Some("nyc3".into()),
        });
        Env {
            sim,
            dir,
            spec,
            image,
        }
    }

    fn client(&self) -> Client {
        Client::new_with_base(
            &self.sim.api_url(),
            Token::new(TOKEN, "test").unwrap(),
            RetryPolicy::default()
                .with_backoff(Duration::from_millis(20), Duration::from_millis(100)),
        )
        .unwrap()
    }

    fn states(&self) -> StateDir {
        StateDir::at(self.dir.path().join("state"))
    }

    fn request(&self, count: usize) -> UpRequest<'_> {
        UpRequest {
            spec: &self.spec,
            name: "ci".parse().unwrap(),
            count,
            image: None,
            size: None,
            region: None,
            sha: Some("0123abcd".into()),
            secrets: WorkerSecrets {
                worker_token: Some(WORKER_TOKEN.into()),
                space_key: Some(("DO00READKEY".into(), SPACE_SECRET.into())),
                callback_token: None,
            },
            power_off_only: false,
            one_shot: false,
            yes: true,
            wait_ready: None,
            worker_api_url: None,
            worker_metadata_url: None,
            poll: Duration::from_millis(20),
            retry: 0,
            callback_url: None,
        }
    }

    async fn up(&self, count: usize) -> Result<digitalocean::UpReport, FleetError> {
        self.up_with(&self.request(count)).await
    }

    async fn up_with(&self, req: &UpRequest<'_>) -> Result<digitalocean::UpReport, FleetError> {
        digitalocean::up(&self.client(), &self.states(), &UserConfig::default(), req).await
    }

    fn workers(&self) -> Vec<u64> {
        self.sim.droplets_tagged("image-builder-fleet-ci")
    }
}

fn poll() -> Poll {
    Poll::new(Duration::from_millis(20), Duration::from_secs(30))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_creates_in_batches_of_ten_with_the_whole_worker_contract() {
    let env = Env::start(SimConfig::default(), "").await;
    let report = env.up(12).await.unwrap();
    assert_eq!(report.created.len(), 12);
    assert_eq!(env.workers().len(), 12);
    assert_eq!(
        env.sim.count("POST /v2/droplets"),
        2,
        "12 workers are two names[] POSTs (10 + 2)"
    );

    let state = env
        .states()
        .load(&"ci".parse().unwrap())
        .unwrap()
        .expect("state written");
    assert_eq!(state.workers.len(), 12);
    let state_text =
        std::fs::read_to_string(env.states().state_file(&"ci".parse().unwrap())).unwrap();
    for secret in [TOKEN, WORKER_TOKEN, SPACE_SECRET] {
        assert!(
            !state_text.contains(secret),
            "a secret is in the state file"
        );
    }

    let droplet = env.workers()[0];
    let tags = env.sim.state()["droplets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["id"] == droplet)
        .unwrap()["tags"]
        .clone();
    let tags: Vec<String> = serde_json::from_value(tags).unwrap();
    for t in ["image-builder", "image-builder-fleet-ci", "ephemeral"] {
        assert!(tags.contains(&t.to_owned()), "{t} missing from {tags:?}");
    }
    let deadline = image_builder::fleet::deadline_of(&tags).expect("a deadline tag");
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    assert!(
        (now + 7000..=now + 7300).contains(&deadline),
        "boot + max_lifetime 2h: {deadline}"
    );

    // The user-data: vm-agent's own config (artifacts from the spec and the sha, destroy
    // through DigitalOcean), the worker token (never the host's) in the 0600 secrets, the
    // pinned host key, within DigitalOcean's limit and accepted by cloud-init's schema.
    let ud = env.sim.user_data(droplet).expect("user-data");
    assert!(ud.len() <= 64 * 1024);
    assert!(ud.contains(WORKER_TOKEN) && !ud.contains(TOKEN));
    let host_key = &state.workers[0].host_key;
    assert!(
        ud.contains(host_key.as_str()),
        "the pinned host key is in the user-data"
    );
    assert!(ud.contains("ed25519_private"));
    match image_builder::validate::cloud_init_schema(&ud) {
        image_builder::validate::CheckStatus::Passed => {}
        other => panic!("cloud-init schema: {other:?}\n{ud}"),
    }
    let config = worker_file(&ud, "/etc/vm-agent/config.toml");
    let config =
        agent_config::Config::from_toml(&config, std::path::Path::new("config.toml")).unwrap();
    assert_eq!(
        config.destroy.provider,
        agent_config::Provider::Digitalocean
    );
    assert_eq!(
        config.destroy.api_url,
        env.sim.api_url().trim_end_matches('/')
    );
    let art = config.artifacts.expect("[artifacts] from the spec");
    assert_eq!(
        (art.bucket.as_str(), art.sha.as_deref(), art.required),
        ("builds", Some("0123abcd"), true)
    );
    assert!(
        ud.contains("permissions: '0600'") || ud.contains("permissions: \"0600\""),
        "{ud}"
    );
    let _ = env.image;
}

/// The content of a `write_files` entry of rendered user-data (plain or b64/gz+b64).
fn worker_file(user_data: &str, path: &str) -> String {
    let doc: serde_json::Value = {
        let body = user_data.trim_start_matches("#cloud-config\n");
        let v: serde_json::Value = serde_saphyr_yaml(body);
        v
    };
    let entry = doc["write_files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["path"] == path)
        .unwrap_or_else(|| panic!("{path} not in write_files"));
    let content = entry["content"].as_str().unwrap();
    match entry["encoding"].as_str() {
        None => content.to_owned(),
        Some(enc) => {
            use base64::Engine as _;
            let raw = base64::engine::general_purpose::STANDARD
                .decode(content.replace(['\n', ' '], ""))
                .unwrap();
            if enc.starts_with("gz") {
                use std::io::Read as _;
                let mut out = String::new();
                flate2::read::GzDecoder::new(&raw[..])
                    .read_to_string(&mut out)
                    .unwrap();
                out
            } else {
                String::from_utf8(raw).unwrap()
            }
        }
    }
}

fn serde_saphyr_yaml(text: &str) -> serde_json::Value {
    serde_saphyr::from_str(text).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readiness_callback_and_its_token_reach_each_worker_and_nothing_else() {
    let env = Env::start(SimConfig::default(), "").await;
    let callback_token = "callback-bearer-5a4b3c";
    let mut req = env.request(1);
    req.callback_url = Some("https://ci.example.test/ready".into());
    req.secrets.callback_token = Some(callback_token.into());
    env.up_with(&req).await.unwrap();
    let ud = env.sim.user_data(env.workers()[0]).expect("user-data");
    let config = agent_config::Config::from_toml(
        &worker_file(&ud, "/etc/vm-agent/config.toml"),
        std::path::Path::new("config.toml"),
    )
    .unwrap();
    assert_eq!(
        config.readiness.callback_url.as_deref(),
        Some("https://ci.example.test/ready")
    );
    // The token only in the root-only secrets file, not in the config or the state.
    let secrets: toml::Value =
        toml::from_str(&worker_file(&ud, "/etc/vm-agent/secrets.toml")).unwrap();
    assert_eq!(secrets["callback_token"].as_str(), Some(callback_token));
    assert!(!worker_file(&ud, "/etc/vm-agent/config.toml").contains(callback_token));
    let state_text =
        std::fs::read_to_string(env.states().state_file(&"ci".parse().unwrap())).unwrap();
    assert!(!state_text.contains(callback_token));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_is_idempotent_and_grows_by_the_difference() {
    let env = Env::start(SimConfig::default(), "").await;
    env.up(3).await.unwrap();
    let posts = env.sim.count("POST /v2/droplets");
    let again = env.up(3).await.unwrap();
    assert!(again.created.is_empty(), "{:?}", again.created);
    assert_eq!(
        env.sim.count("POST /v2/droplets"),
        posts,
        "nothing was sent"
    );
    assert_eq!(again.workers.len(), 3);
    let grown = env.up(5).await.unwrap();
    assert_eq!(grown.created, vec!["ci-4".to_owned(), "ci-5".to_owned()]);
    assert_eq!(env.workers().len(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_at_every_create_never_make_a_second_worker_of_one_name() {
    for fault in [
        Fault::RateLimit {
            retry_after_secs: 0,
        },
        Fault::ServerError { status: 503 },
        Fault::ServerErrorAfterCommit { status: 500 },
        Fault::Drop,
        Fault::DropAfterCommit,
    ] {
        let env = Env::start(SimConfig::default(), "").await;
        env.sim.set_faults(vec![FaultRule {
            route: "POST /v2/droplets".into(),
            nth: 1,
            times: 1,
            fault: fault.clone(),
        }]);
        env.up(3).await.unwrap_or_else(|e| panic!("{fault:?}: {e}"));
        let mut names: Vec<String> = env.sim.state()["droplets"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["name"].as_str().unwrap().to_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["ci-1", "ci-2", "ci-3"], "{fault:?}");
        // And `down` without any local state leaves nothing.
        let report = digitalocean::down(
            &env.client(),
            &StateDir::at(env.dir.path().join("no-state")),
            Some(&"ci".parse().unwrap()),
            false,
            poll(),
        )
        .await
        .unwrap();
        assert_eq!(report.deleted.len(), 3, "{fault:?}");
        assert!(env.sim.droplet_ids().is_empty(), "{fault:?}: droplets left");
    }
}

/// DigitalOcean's 422 when a region is out of a size it lists (its own wording).
fn size_not_in_region() -> FaultRule {
    FaultRule {
        route: "POST /v2/droplets".into(),
        nth: 1,
        times: 1,
        fault: Fault::Respond {
            status: 422,
            body: serde_json::json!({
                "id": "unprocessable_entity",
                "message": do_sim::api::refusal::SIZE_NOT_IN_REGION,
            }),
        },
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_region_refusing_the_size_moves_the_batch_to_the_next_region_with_the_image() {
    // Without --retry the refusal is the answer, explained, and nothing exists.
    let env = Env::start(SimConfig::default(), "").await;
    env.sim.set_faults(vec![size_not_in_region()]);
    let err = env.up(3).await.unwrap_err();
    assert!(
        matches!(&err, FleetError::Preflight(m) if m.contains("refused size s-1vcpu-1gb in region nyc3")),
        "{err}"
    );
    assert!(env.sim.droplet_ids().is_empty());

    // With --retry 1, the batch goes to the next region that offers the size AND holds
    // the golden image (fra1 offers it but has no copy; ams3 has both).
    let env = Env::start(SimConfig::default(), "").await;
    env.sim.add_image_region(env.image, "ams3");
    env.sim.set_faults(vec![size_not_in_region()]);
    let report = env
        .up_with(&UpRequest {
            retry: 1,
            ..env.request(3)
        })
        .await
        .unwrap();
    assert_eq!(report.created, ["ci-1", "ci-2", "ci-3"]);
    assert!(report.failed.is_empty());
    let regions: Vec<&str> = report.workers.iter().map(|w| w.region.as_str()).collect();
    assert_eq!(regions, ["ams3", "ams3", "ams3"]);
    assert_eq!(
        env.sim.count("POST /v2/droplets"),
        2,
        "the refused POST and one in ams3"
    );
    assert_eq!(env.workers().len(), 3);

    // A refusal in the last region that could take the batch is the answer again.
    let env = Env::start(SimConfig::default(), "").await;
    env.sim.set_faults(vec![size_not_in_region()]);
    let err = env
        .up_with(&UpRequest {
            retry: 3,
            ..env.request(2)
        })
        .await
        .unwrap_err();
    assert!(matches!(&err, FleetError::Preflight(_)), "{err}");
    assert!(env.sim.droplet_ids().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ls_and_down_work_from_tags_alone_and_leave_other_droplets() {
    let env = Env::start(SimConfig::default(), "").await;
    env.up(2).await.unwrap();
    // Another fleet and a droplet this tool did not make.
    let mut other = env.request(1);
    other.name = "other".parse().unwrap();
    digitalocean::up(&env.client(), &env.states(), &UserConfig::default(), &other)
        .await
        .unwrap();
    let foreign = env
        .client()
        .create_droplet(&do_api::DropletCreate::new(
            "web-1",
            "nyc3",
            "s-1vcpu-1gb",
            do_api::ImageSpec::Slug("debian-12-x64".into()),
        ))
        .await
        .unwrap()
        .droplet
        .id;
    let empty = StateDir::at(env.dir.path().join("elsewhere"));
    let ci: FleetName = "ci".parse().unwrap();
    let listed = digitalocean::ls(&env.client(), Some(&ci)).await.unwrap();
    assert_eq!(
        listed.iter().map(|w| w.name.as_str()).collect::<Vec<_>>(),
        ["ci-1", "ci-2"]
    );
    assert!(
        listed
            .iter()
            .all(|w| w.size == "s-1vcpu-1gb" && w.region == "nyc3")
    );
    let all = digitalocean::ls(&env.client(), None).await.unwrap();
    assert_eq!(all.len(), 3, "both fleets, not the foreign droplet");
    let down = digitalocean::down(&env.client(), &empty, Some(&ci), false, poll())
        .await
        .unwrap();
    assert_eq!(down.deleted, ["ci-1", "ci-2"]);
    let left = env.sim.droplet_ids();
    assert!(
        left.contains(&foreign),
        "a droplet no fleet made was deleted"
    );
    assert_eq!(
        left.len(),
        2,
        "the other fleet and the foreign droplet stay"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reap_deletes_workers_past_their_deadline_and_off_too_long() {
    let env = Env::start(SimConfig::default(), "").await;
    env.up(3).await.unwrap();
    let client = env.client();
    let ids = env.workers();
    // ci-1 past its deadline: retag it as a reaper would find a stale worker.
    let stale = ids[0];
    client.create_tag("image-builder-deadline-1").await.unwrap();
    client
        .tag_resources(
            "image-builder-deadline-1",
            &[do_api::TagTarget::Droplet(stale)],
        )
        .await
        .unwrap();
    // ci-2 powered off (it still bills).
    let off = ids[1];
    let action = client.power_off(off).await.unwrap();
    client.wait_action(action.id, poll()).await.unwrap();

    let states = env.states();
    // A dry run deletes nothing; a grace not yet passed keeps the off worker.
    let dry = digitalocean::reap(&client, &states, Duration::ZERO, HOUR, false, poll())
        .await
        .unwrap();
    assert!(dry.deleted.is_empty());
    assert_eq!(env.workers().len(), 3);
    let first = digitalocean::reap(&client, &states, HOUR, HOUR, true, poll())
        .await
        .unwrap();
    assert_eq!(first.deleted.len(), 1, "{first:?}");
    assert!(first.deleted[0].starts_with("ci-1 "), "{first:?}");
    assert!(!env.sim.droplet_ids().contains(&stale));
    assert!(
        env.sim.droplet_ids().contains(&off),
        "off, but not for the grace period yet"
    );
    let second = digitalocean::reap(&client, &states, Duration::ZERO, HOUR, true, poll())
        .await
        .unwrap();
    assert_eq!(second.deleted.len(), 1, "{second:?}");
    assert!(second.deleted[0].starts_with("ci-2 "), "{second:?}");
    assert_eq!(
        env.workers(),
        vec![ids[2]],
        "a running worker is not reaped while its agent has not been unreachable for the grace"
    );
    // Its agent cannot be reached (nothing answers SSH at the simulator's address): once
    // that has lasted the grace, it goes too.
    let third = digitalocean::reap(&client, &states, HOUR, Duration::ZERO, true, poll())
        .await
        .unwrap();
    assert_eq!(third.deleted.len(), 1, "{third:?}");
    assert!(
        third.deleted[0].starts_with("ci-3 (its agent unreachable"),
        "{third:?}"
    );
    assert!(env.workers().is_empty());
}

const HOUR: Duration = Duration::from_secs(3600);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guardrails_refuse_before_anything_is_created() {
    let env = Env::start(SimConfig::default(), "").await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("config.toml");
    std::fs::write(&cfg, "[spending]\nmax_workers_per_fleet = 2\n").unwrap();
    let policy = UserConfig::load_from(&cfg).unwrap();
    let e = digitalocean::up(&env.client(), &env.states(), &policy, &env.request(3))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("spending.max_workers_per_fleet") && e.contains("config.toml"),
        "{e}"
    );

    std::fs::write(&cfg, "[spending]\nallowed_sizes = [\"s-2vcpu-4gb\"]\n").unwrap();
    let policy = UserConfig::load_from(&cfg).unwrap();
    let e = digitalocean::up(&env.client(), &env.states(), &policy, &env.request(1))
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("spending.allowed_sizes"), "{e}");

    // No worker token and no --power-off-only: refused.
    let mut req = env.request(1);
    req.secrets.worker_token = None;
    let e = digitalocean::up(&env.client(), &env.states(), &UserConfig::default(), &req)
        .await
        .unwrap_err();
    assert!(matches!(e, FleetError::NoWorkerToken), "{e}");

    // The droplet limit, counted with what is in use.
    env.sim.update_config(|c| c.droplet_limit = 2);
    let e = env.up(3).await.unwrap_err().to_string();
    assert!(e.contains("do not fit"), "{e}");

    assert_eq!(env.sim.count("POST /v2/droplets"), 0, "nothing was created");
    assert!(env.sim.droplet_ids().is_empty());

    // Told that workers may only power off: created, with the local provider.
    env.sim.update_config(|c| c.droplet_limit = 25);
    req.power_off_only = true;
    digitalocean::up(&env.client(), &env.states(), &UserConfig::default(), &req)
        .await
        .unwrap();
    let ud = env.sim.user_data(env.workers()[0]).unwrap();
    let config = worker_file(&ud, "/etc/vm-agent/config.toml");
    assert!(config.contains("provider = \"local\""), "{config}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_shot_workers_carry_the_one_shot_timer() {
    let env = Env::start(SimConfig::default(), "").await;
    let mut req = env.request(1);
    req.one_shot = true;
    digitalocean::up(&env.client(), &env.states(), &UserConfig::default(), &req)
        .await
        .unwrap();
    let ud = env.sim.user_data(env.workers()[0]).unwrap();
    let config = agent_config::Config::from_toml(
        &worker_file(&ud, "/etc/vm-agent/config.toml"),
        std::path::Path::new("config.toml"),
    )
    .unwrap();
    assert!(config.timers.one_shot);
}
