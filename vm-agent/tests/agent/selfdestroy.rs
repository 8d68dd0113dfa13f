use crate::common::*;
use do_sim::{Fault, FaultRule, Sim, SimConfig};
use std::time::Duration;
use vm_agent::config::{Dur, Limit, Provider};
use vm_agent::report::{DestroyState, Stage, StatusReport, TimerName, TimerState};

const TOKEN: &str = "dop_v1_selfdestroy_test_token_6f2a";
const DELETE: &str = "DELETE /v2/droplets/{id}";

fn secs(n: u64) -> Limit {
    Limit::After(Duration::from_secs(n))
}

fn fired(s: &StatusReport, state: DestroyState) -> bool {
    s.destroy.state == state
}

fn detail(s: &StatusReport) -> &str {
    s.destroy.detail.as_deref().unwrap_or("")
}

struct DoEnv {
    sim: Sim,
    droplet: u64,
    _rt: tokio::runtime::Runtime,
}

fn do_env(tags: &[&str]) -> DoEnv {
    let rt = tokio::runtime::Runtime::new().expect("rt");
    let sim = rt
        .block_on(Sim::start(SimConfig {
            token: Some(TOKEN.into()),
            ..SimConfig::default()
        }))
        .expect("sim");
    let url = format!("{}/v2/droplets", sim.api_url());
    let body = serde_json::json!({
        "name": "worker-1", "size": "s-1vcpu-1gb", "image": "debian-12-x64", "tags": tags,
    });
    let created: serde_json::Value = rt.block_on(async {
        reqwest::Client::new()
            .post(&url)
            .bearer_auth(TOKEN)
            .json(&body)
            .send()
            .await
            .expect("create")
            .json()
            .await
            .expect("json")
    });
    let droplet = created["droplet"]["id"].as_u64().expect("droplet id");
    sim.act_as(Some(droplet));
    sim.reset_requests();
    DoEnv {
        sim,
        droplet,
        _rt: rt,
    }
}

fn do_agent(env: &DoEnv, tweak: impl FnOnce(&mut Agent)) -> Agent {
    let mut a = Agent::new();
    a.cfg.destroy.provider = Provider::Digitalocean;
    a.cfg.destroy.api_url = env.sim.api_url();
    a.cfg.destroy.metadata_url = env.sim.metadata_url();
    a.cfg.destroy.retry_base_wait = Dur(Duration::from_millis(100));
    a.cfg.destroy.retry_max_wait = Dur(Duration::from_millis(400));
    a.write_secrets(&format!("do_token = \"{TOKEN}\"\n"));
    tweak(&mut a);
    a.cloud_init_done();
    a.start();
    a
}

fn uptime_secs() -> u64 {
    std::fs::read_to_string("/proc/uptime")
        .ok()
        .and_then(|s| s.split('.').next().and_then(|x| x.parse().ok()))
        .expect("/proc/uptime")
}

#[test]
fn idle_timer_fires_dry_run_reports_it() {
    let mut a = Agent::new();
    a.cfg.timers.idle_timeout = secs(2);
    a.cloud_init_done();
    a.start();
    let s = a.wait_status("idle timer", 15, |s| fired(s, DestroyState::DryRun));
    assert_eq!(s.destroy.timer, Some(TimerName::Idle));
    assert!(detail(&s).contains("would"), "{s:#?}");
    assert!(s.draining.is_none(), "a dry run does not keep draining");
    assert!(a.log().contains("dry run: would"));
}

#[test]
fn no_job_timer_fires_and_a_job_satisfies_it() {
    let mut a = Agent::new();
    a.cfg.timers.no_job_timeout = secs(2);
    a.cloud_init_done();
    a.start();
    let s = a.wait_status("no-job timer", 15, |s| fired(s, DestroyState::DryRun));
    assert_eq!(s.destroy.timer, Some(TimerName::NoJob));

    // A job submitted before readiness (so before the no-job timer starts) satisfies it. The
    // idle timer is the witness that the no-job deadline passed: it counts from the end of
    // that job, after readiness, so it fires later than no-job would have, and the earliest
    // timer due is the one that fires.
    let mut b = Agent::new();
    b.cfg.timers.no_job_timeout = secs(2);
    b.cfg.timers.idle_timeout = secs(2);
    b.start();
    assert_eq!(b.run_detached(&["true"]), 1);
    b.cloud_init_done();
    b.wait_job(1, 15, |j| j["state"] == "succeeded");
    let s = b.wait_status("the idle timer", 15, |s| fired(s, DestroyState::DryRun));
    assert_eq!(s.destroy.timer, Some(TimerName::Idle), "{s:#?}");
    let t = s.timers.iter().find(|t| t.name == TimerName::NoJob);
    assert!(matches!(t.expect("no-job").state, TimerState::Satisfied(_)));
}

#[test]
fn max_lifetime_fires_and_local_provider_powers_off() {
    let mut a = Agent::new();
    a.cfg.timers.max_lifetime = secs(uptime_secs() + 3);
    a.cfg.destroy.provider = Provider::Local;
    a.start(); // cloud-init never finishes: max lifetime applies anyway
    let s = a.wait_status("max-lifetime", 20, |s| fired(s, DestroyState::Destroyed));
    assert_eq!(s.destroy.timer, Some(TimerName::MaxLifetime));
    assert!(a.path("powered-off").exists(), "poweroff command ran");
}

#[test]
fn hold_blocks_the_idle_timer_until_released() {
    let mut a = Agent::new();
    a.cfg.timers.idle_timeout = secs(2);
    // Held before readiness, so before the idle timer starts.
    a.start();
    assert_eq!(code(&a.cli(&["hold", "--reason", "debug"])), 0);
    a.cloud_init_done();
    let s = a.wait_ready();
    // A tick past the moment the idle timer would have fired without the hold.
    let due = stage_entered(&s, Stage::Ready) + Duration::from_millis(2001);
    let s = a.wait_tick_after(due);
    assert_eq!(s.destroy.state, DestroyState::Armed, "{s:#?}");
    assert_eq!(
        s.timers[0].state,
        TimerState::Paused("hold".into()),
        "{s:#?}"
    );
    assert_eq!(code(&a.cli(&["release"])), 0);
    let s = a.wait_status("idle after release", 15, |s| fired(s, DestroyState::DryRun));
    assert_eq!(s.destroy.timer, Some(TimerName::Idle), "{s:#?}");
}

#[test]
fn open_session_blocks_idle_and_is_warned_on_max_lifetime() {
    let mut a = Agent::new();
    a.cfg.timers.idle_timeout = secs(1);
    // The witness that the idle deadline passed: no job ever comes, so the no-job timer fires
    // a second after idle would have, whatever the session; had idle fired by then, it would
    // be the timer named (the earliest due fires).
    a.cfg.timers.no_job_timeout = secs(2);
    a.cfg.destroy.provider = Provider::Local;
    a.open_session(4242, "alice", "pts/5");
    std::fs::write(a.path("dev/pts/5"), "").expect("fake tty");
    a.cloud_init_done();
    a.start();
    let s = a.wait_status("the no-job timer, blocked", 15, |s| {
        fired(s, DestroyState::Blocked)
    });
    assert_eq!(s.destroy.timer, Some(TimerName::NoJob), "{s:#?}");
    assert!(detail(&s).contains("session"), "{s:#?}");
    assert!(s.timers[0].state.to_string().contains("session"), "{s:#?}");
    assert_eq!(s.sessions[0].user, "alice");
    assert!(!a.path("powered-off").exists());
    a.kill();
    std::fs::write(a.path("dev/pts/5"), "").expect("clear the fake tty");

    // Max lifetime fires regardless of idleness: users are warned, the guard still blocks.
    a.cfg.timers.no_job_timeout = Limit::Never;
    a.cfg.timers.max_lifetime = secs(1);
    a.start();
    let s = a.wait_status("blocked", 15, |s| fired(s, DestroyState::Blocked));
    assert_eq!(s.destroy.timer, Some(TimerName::MaxLifetime), "{s:#?}");
    assert!(detail(&s).contains("session"), "{s:#?}");
    let tty = std::fs::read_to_string(a.path("dev/pts/5")).expect("tty");
    assert!(
        tty.contains("will be destroyed") && tty.contains("max-lifetime"),
        "warning written: {tty:?}"
    );
    assert!(
        !a.path("powered-off").exists(),
        "guard blocked the power-off"
    );
    a.close_session(4242);
    a.wait_status("destroyed once the session closed", 15, |s| {
        fired(s, DestroyState::Destroyed)
    });
    assert!(a.path("powered-off").exists());
}

#[test]
fn digitalocean_deletes_its_own_tagged_droplet_and_never_leaks_the_token() {
    let env = do_env(&["ephemeral", "ci"]);
    let a = do_agent(&env, |a| a.cfg.timers.idle_timeout = secs(2));
    let s = a.wait_status("destroyed", 20, |s| fired(s, DestroyState::Destroyed));
    assert!(detail(&s).contains(&env.droplet.to_string()), "{s:#?}");
    assert_eq!(env.sim.count(DELETE), 1);
    wait_until("droplet gone", 10, || {
        !env.sim.droplet_ids().contains(&env.droplet)
    });
    // Once destroyed: stays drained and destroyed, no second attempt (a tick after it would
    // have started one).
    let s = a.wait_tick_after(std::time::SystemTime::now());
    assert_eq!(s.destroy.state, DestroyState::Destroyed, "{s:#?}");
    assert!(s.draining.is_some());
    assert_eq!(env.sim.count(DELETE), 1);
    assert_eq!(code(&a.cli(&["run", "--", "true"])), 125, "drained");
    // The token: never in any argv, the log or the status.
    for e in std::fs::read_dir("/proc").expect("proc").flatten() {
        if let Ok(cmdline) = std::fs::read(e.path().join("cmdline")) {
            assert!(
                !String::from_utf8_lossy(&cmdline).contains(TOKEN),
                "token in /proc/{}/cmdline",
                e.file_name().to_string_lossy()
            );
        }
    }
    assert!(!a.log().contains(TOKEN), "token in the daemon log");
    assert!(
        !text(&a.cli(&["status", "--json"]).stdout).contains(TOKEN),
        "token in status --json"
    );
    assert!(!text(&a.cli(&["status"]).stdout).contains(TOKEN));
}

#[test]
fn digitalocean_refuses_without_the_ephemeral_tag() {
    let env = do_env(&["ci"]);
    let a = do_agent(&env, |a| a.cfg.timers.idle_timeout = secs(1));
    let s = a.wait_status("refused", 20, |s| fired(s, DestroyState::Refused));
    assert!(detail(&s).contains("not tagged `ephemeral`"), "{s:#?}");
    assert_eq!(env.sim.count(DELETE), 0);
    assert!(env.sim.droplet_ids().contains(&env.droplet));
    assert!(
        !a.path("powered-off").exists(),
        "refusal does not power off"
    );
    assert!(a.log().contains("SELF-DESTROY REFUSED"));
}

#[test]
fn running_job_blocks_the_delete_until_it_ends() {
    let env = do_env(&["ephemeral"]);
    // Max lifetime is over from the start; an open session (no terminal) blocks the delete
    // until the job runs, so the timer cannot win a race against the job's start.
    let a = do_agent(&env, |a| {
        a.cfg.timers.max_lifetime = secs(1);
        a.open_session(4242, "alice", "notty");
    });
    let s = a.wait_status("blocked by the session", 20, |s| {
        fired(s, DestroyState::Blocked)
    });
    assert_eq!(s.destroy.timer, Some(TimerName::MaxLifetime), "{s:#?}");
    assert!(detail(&s).contains("session"), "{s:#?}");
    a.wait_ready();
    let id = submit_between_rechecks(&a, &["sleep", "300"]);
    a.wait_job(id, 10, |j| j["state"] == "running");
    a.close_session(4242);
    let s = a.wait_status("the re-check after the session closed", 20, |s| {
        !matches!(
            s.destroy.state,
            DestroyState::Armed | DestroyState::Draining | DestroyState::Destroying
        ) && !detail(s).contains("session")
    });
    assert_eq!(s.destroy.state, DestroyState::Blocked, "{s:#?}");
    assert!(detail(&s).contains("running"), "{s:#?}");
    assert_eq!(env.sim.count(DELETE), 0);
    let c = a.cli(&["cancel", &id.to_string()]);
    assert_eq!(code(&c), 0, "{}", text(&c.stderr));
    a.wait_status("destroyed", 20, |s| fired(s, DestroyState::Destroyed));
    assert_eq!(env.sim.count(DELETE), 1);
}

/// `run --detach ARGV` on an agent whose blocked self-destroy is re-checked every few ticks:
/// each re-check drains the agent for a moment (jobs refused with 125), so a submission that
/// meets one waits for that drain to end and is made again.
fn submit_between_rechecks(a: &Agent, argv: &[&str]) -> u64 {
    for _ in 0..20 {
        let out = a.cli(&[&["run", "--detach", "--"], argv].concat());
        if code(&out) == 0 {
            return text(&out.stdout).trim().parse().expect("job id");
        }
        assert_eq!(code(&out), 125, "{}", text(&out.stderr));
        assert!(
            text(&out.stderr).contains("not accepting jobs"),
            "{}",
            text(&out.stderr)
        );
        a.wait_status("the re-check's drain to end", 10, |s| s.draining.is_none());
    }
    panic!("every submission met a drain:\n{}", a.log());
}

#[test]
fn digitalocean_retries_429_and_5xx() {
    let env = do_env(&["ephemeral"]);
    env.sim.set_faults(vec![
        FaultRule {
            route: DELETE.into(),
            nth: 1,
            times: 1,
            fault: Fault::RateLimit {
                retry_after_secs: 1,
            },
        },
        FaultRule {
            route: DELETE.into(),
            nth: 2,
            times: 1,
            fault: Fault::ServerError { status: 503 },
        },
    ]);
    let a = do_agent(&env, |a| a.cfg.timers.idle_timeout = secs(1));
    let s = a.wait_status("destroyed", 30, |s| fired(s, DestroyState::Destroyed));
    assert!(detail(&s).contains("after 3 request(s)"), "{s:#?}");
    assert_eq!(env.sim.count(DELETE), 3);
    assert!(!env.sim.droplet_ids().contains(&env.droplet));
}

#[test]
fn digitalocean_falls_back_to_power_off_loudly() {
    let env = do_env(&["ephemeral"]);
    env.sim.set_faults(vec![FaultRule {
        route: DELETE.into(),
        nth: 1,
        times: 100,
        fault: Fault::ServerError { status: 500 },
    }]);
    let a = do_agent(&env, |a| {
        a.cfg.timers.idle_timeout = secs(1);
        a.cfg.destroy.max_attempts = 3;
    });
    let s = a.wait_status("powered off", 30, |s| fired(s, DestroyState::PoweredOff));
    assert_eq!(env.sim.count(DELETE), 3);
    assert!(a.path("powered-off").exists());
    assert!(detail(&s).contains("still billed"), "{s:#?}");
    assert!(a.log().contains("STILL BILLED"));
    let human = text(&a.cli(&["status"]).stdout);
    assert!(human.contains("SELF-DESTROY POWERED-OFF"), "{human}");
}

#[test]
fn draining_refuses_new_jobs() {
    let mut a = Agent::new();
    a.cfg.timers.idle_timeout = secs(1);
    // Drains for the whole test: the grace outlasts any test run.
    a.cfg.timers.warn_grace = Dur(Duration::from_secs(24 * 3600));
    a.cloud_init_done();
    a.start();
    a.wait_status("draining", 15, |s| s.draining.is_some());
    let out = a.cli(&["run", "--", "true"]);
    assert_eq!(code(&out), 125);
    assert!(
        text(&out.stderr).contains("not accepting jobs"),
        "{}",
        text(&out.stderr)
    );
}
