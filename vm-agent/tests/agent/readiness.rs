use crate::common::*;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use vm_agent::config::Limit;
use vm_agent::report::{ArtifactState, CloudInitState, Stage, StatusReport};

#[test]
fn stages_advance_with_cloud_init_and_status_exit_codes_follow() {
    let mut a = Agent::new();
    std::fs::write(
        a.path("ci-run/status.json"),
        r#"{"v1":{"stage":"modules-config","datasource":"DataSourceNoCloud","init":{"errors":[]}}}"#,
    )
    .expect("status.json");
    a.start();
    // The stage changes before the agent first reads cloud-init's status: wait for that read.
    let s = a.wait_status("the agent to read cloud-init's status", 10, |s| {
        s.stage == Stage::WaitingCloudInit && s.cloud_init.state != CloudInitState::NotStarted
    });
    assert_eq!(s.cloud_init.state, CloudInitState::Running);
    assert_eq!(s.cloud_init.stage.as_deref(), Some("modules-config"));
    let out = a.cli(&["status"]);
    assert_eq!(code(&out), 2, "not ready yet -> 2");
    assert!(text(&out.stdout).contains("waiting-cloud-init"));
    assert!(!a.path("run/ready").exists());

    a.cloud_init_done();
    let s = a.wait_ready();
    assert_eq!(s.stage, Stage::Ready);
    let stages = history_stages(&s);
    assert_eq!(
        stages,
        [
            Stage::Booting,
            Stage::WaitingCloudInit,
            Stage::FetchingArtifacts,
            Stage::Ready
        ]
    );
    let times: Vec<std::time::SystemTime> = s.history.iter().map(|h| h.at).collect();
    assert!(
        times.windows(2).all(|w| w[0] <= w[1]),
        "timestamps ordered: {times:?}"
    );
    assert_eq!(s.cloud_init.state, CloudInitState::Done);
    assert_eq!(s.artifacts.state, ArtifactState::None);
    assert_eq!(
        s.ssh_host_keys[0].fingerprint,
        "SHA256:LPJNul+wow4m6DsqxbninhsWHlwfp0JecwQzYpOLmCQ"
    );
    let out = a.cli(&["status"]);
    assert_eq!(code(&out), 0, "ready -> 0");
    let human = text(&out.stdout);
    for line in human.lines() {
        assert!(line.chars().count() <= 80, "line over 80 columns: {line:?}");
    }
    for needle in [
        "stage: ready",
        "cloud-init: done",
        "timer idle",
        "hostkey ssh-ed25519",
        "load ",
    ] {
        assert!(human.contains(needle), "missing {needle:?} in:\n{human}");
    }
    // The ready file holds the same report.
    let ready = StatusReport::from_json(&std::fs::read(a.path("run/ready")).expect("ready file"))
        .expect("a status report");
    assert_eq!(ready.stage, Stage::Ready);
    assert!(ready.system.mem_total_bytes > 0);
}

#[test]
fn cloud_init_errors_give_degraded_with_the_reason() {
    let mut a = Agent::new();
    std::fs::write(
        a.path("ci-run/result.json"),
        r#"{"v1":{"datasource":"DataSourceNoCloud","errors":["('locale', ProcessExecutionError('update-locale'))"]}}"#,
    )
    .expect("result.json");
    a.start();
    let s = a.wait_ready();
    assert_eq!(s.stage, Stage::Degraded);
    assert!(
        s.reason.as_deref().unwrap_or("").contains("locale"),
        "{s:#?}"
    );
    assert_eq!(code(&a.cli(&["status"])), 1, "degraded -> 1");
    assert!(a.path("run/degraded").exists());
}

#[test]
fn cloud_init_timeout_gives_degraded() {
    let mut a = Agent::new();
    a.cfg.cloud_init.timeout = Limit::After(Duration::from_secs(1));
    a.start();
    let s = a.wait_ready();
    assert_eq!(s.stage, Stage::Degraded);
    assert_eq!(s.cloud_init.state, CloudInitState::TimedOut);
    assert!(
        s.reason
            .as_deref()
            .unwrap_or("")
            .contains("did not finish within 1s"),
        "{s:#?}"
    );
}

#[test]
fn status_without_daemon_gives_exit_3_and_a_hint() {
    let a = Agent::new();
    a.write_config();
    let out = a.cli(&["status"]);
    assert_eq!(code(&out), 3);
    let err = text(&out.stderr);
    assert!(err.contains("daemon is not running"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "one-line hint: {err}");
}

/// (Authorization header, body) of each callback POST.
type Captured = Arc<Mutex<Vec<(Option<String>, axum::body::Bytes)>>>;

#[test]
fn readiness_callback_posts_the_report_with_the_bearer_token() {
    let got: Captured = Arc::default();
    let rt = tokio::runtime::Runtime::new().expect("rt");
    let sink = got.clone();
    let url = rt.block_on(async move {
        use axum::{Router, body::Bytes, http::HeaderMap, routing::post};
        let app = Router::new().route(
            "/ready",
            post(move |h: HeaderMap, v: Bytes| {
                let sink = sink.clone();
                async move {
                    let auth = h
                        .get("authorization")
                        .and_then(|v| v.to_str().ok())
                        .map(String::from);
                    sink.lock().expect("lock").push((auth, v));
                    "ok"
                }
            }),
        );
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = l.local_addr().expect("addr");
        tokio::spawn(async move { axum::serve(l, app).await.expect("callback server") });
        format!("http://{addr}/ready")
    });
    let mut a = Agent::new();
    a.cfg.readiness.callback_url = Some(url);
    a.write_secrets("callback_token = \"cb-secret-123\"\n");
    a.cloud_init_done();
    a.start();
    a.wait_ready();
    wait_until("callback", 10, || !got.lock().expect("lock").is_empty());
    let (auth, body) = got.lock().expect("lock")[0].clone();
    assert_eq!(auth.as_deref(), Some("Bearer cb-secret-123"));
    let body = StatusReport::from_json(&body).expect("the callback's body is a status report");
    assert_eq!(body.stage, Stage::Ready);
    assert!(body.ssh_host_keys[0].fingerprint.starts_with("SHA256:"));
    let s = a.wait_status("callback result", 15, |s| s.callback.is_some());
    assert!(
        s.callback.as_deref().unwrap_or("").contains("200"),
        "{s:#?}"
    );
    assert!(
        !a.log().contains("cb-secret-123"),
        "token leaked into the log"
    );
    assert!(
        !text(&a.cli(&["status", "--json"]).stdout).contains("cb-secret-123"),
        "token leaked into status"
    );
}

#[test]
fn host_key_fingerprint_matches_ssh_keygen() {
    let Ok(_) = std::process::Command::new("ssh-keygen").arg("-?").output() else {
        panic!("ssh-keygen not found: install the `openssh-client` package");
    };
    let mut a = Agent::new();
    let key = a.path("ssh/ssh_host_ed25519_key");
    std::fs::remove_file(a.path("ssh/ssh_host_ed25519_key.pub")).expect("remove the fake key");
    let st = std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&key)
        .status()
        .expect("ssh-keygen");
    assert!(st.success());
    let out = std::process::Command::new("ssh-keygen")
        .arg("-lf")
        .arg(a.path("ssh/ssh_host_ed25519_key.pub"))
        .output()
        .expect("ssh-keygen -l");
    assert!(out.status.success(), "ssh-keygen -l: {}", text(&out.stderr));
    let expected = text(&out.stdout)
        .split_whitespace()
        .nth(1)
        .unwrap_or("")
        .to_string();
    assert!(expected.starts_with("SHA256:"), "{}", text(&out.stdout));
    a.cloud_init_done();
    a.start();
    let s = a.wait_ready();
    assert_eq!(s.ssh_host_keys[0].fingerprint, expected);
}
