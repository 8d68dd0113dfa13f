//! The three self-destruct timers, evaluated as a pure function of the current facts.
//!
//! * `idle`: no running or queued job, no hold, no SSH session, for `idle_timeout`, counted
//!   from readiness (`ready` or `degraded`) or from the end of the last activity.
//! * `max-lifetime`: `max_lifetime` after the machine booted.
//! * `no-job`: no job ever submitted, `no_job_timeout` after readiness.

use crate::config::{Limit, TimersConfig};
use crate::util::ts;
use serde::{Deserialize, Serialize};
use std::time::SystemTime;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TimerStatus {
    /// `idle`, `max-lifetime` or `no-job`.
    pub name: String,
    /// The configured limit (`30m`, `never`).
    pub limit: String,
    /// When it fires if nothing changes.
    #[serde(with = "ts::opt", default)]
    pub fires_at: Option<SystemTime>,
    /// `armed`, `disabled`, `paused: <why>`, `waiting for readiness`, `satisfied`, `fired`.
    pub state: String,
}

/// The facts the timers depend on.
#[derive(Debug, Clone)]
pub struct TimerInputs {
    pub now: SystemTime,
    pub boot_time: SystemTime,
    pub ready_at: Option<SystemTime>,
    pub idle_since: Option<SystemTime>,
    /// Why the machine is not idle (job running, hold, session), if it is not.
    pub busy: Option<String>,
    pub jobs_ever: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Fired {
    pub timer: String,
    pub reason: String,
}

fn timer(
    name: &str,
    limit: Limit,
    base: Option<SystemTime>,
    not_armed: Option<String>,
    now: SystemTime,
) -> TimerStatus {
    let mut t = TimerStatus {
        name: name.into(),
        limit: limit.to_string(),
        fires_at: None,
        state: "armed".into(),
    };
    match (limit.duration(), not_armed, base) {
        (None, _, _) => t.state = "disabled".into(),
        (Some(_), Some(why), _) => t.state = why,
        (Some(_), None, None) => t.state = "waiting for readiness".into(),
        (Some(d), None, Some(b)) => {
            let at = b + d;
            t.fires_at = Some(at);
            if now >= at {
                t.state = "fired".into();
            }
        }
    }
    t
}

/// Status of every timer, and the one that fired (the earliest), if any.
pub fn evaluate(cfg: &TimersConfig, i: &TimerInputs) -> (Vec<TimerStatus>, Option<Fired>) {
    let idle = timer(
        "idle",
        cfg.idle_timeout,
        i.ready_at.and(i.idle_since),
        i.busy.as_ref().map(|b| format!("paused: {b}")),
        i.now,
    );
    let life = timer(
        "max-lifetime",
        cfg.max_lifetime,
        Some(i.boot_time),
        None,
        i.now,
    );
    let nojob = timer(
        "no-job",
        cfg.no_job_timeout,
        i.ready_at,
        i.jobs_ever.then(|| "satisfied: a job arrived".to_string()),
        i.now,
    );
    let all = vec![idle, life, nojob];
    let fired = all
        .iter()
        .filter(|t| t.state == "fired")
        .min_by_key(|t| t.fires_at)
        .map(|t| Fired {
            timer: t.name.clone(),
            reason: match t.name.as_str() {
                "idle" => format!("idle for {}", t.limit),
                "max-lifetime" => format!("maximum lifetime {} reached", t.limit),
                _ => format!("no job arrived within {} of readiness", t.limit),
            },
        });
    (all, fired)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn cfg() -> TimersConfig {
        TimersConfig {
            idle_timeout: Limit::After(Duration::from_secs(60)),
            max_lifetime: Limit::After(Duration::from_secs(3600)),
            no_job_timeout: Limit::After(Duration::from_secs(600)),
            ..TimersConfig::default()
        }
    }

    fn inputs(now_off: u64) -> TimerInputs {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        TimerInputs {
            now: t0 + Duration::from_secs(now_off),
            boot_time: t0,
            ready_at: Some(t0),
            idle_since: Some(t0),
            busy: None,
            jobs_ever: true,
        }
    }

    #[test]
    fn idle_fires_only_when_not_busy() {
        let (_, f) = evaluate(&cfg(), &inputs(30));
        assert_eq!(f, None);
        let (_, f) = evaluate(&cfg(), &inputs(61));
        assert_eq!(f.map(|f| f.timer), Some("idle".into()));
        let mut i = inputs(61);
        i.busy = Some("job 3 running".into());
        i.idle_since = None;
        let (st, f) = evaluate(&cfg(), &i);
        assert_eq!(f, None);
        assert_eq!(st[0].state, "paused: job 3 running");
    }

    #[test]
    fn no_job_and_lifetime() {
        let mut c = cfg();
        c.idle_timeout = Limit::Never;
        let mut i = inputs(700);
        i.jobs_ever = false;
        let (st, f) = evaluate(&c, &i);
        assert_eq!(st[0].state, "disabled");
        assert_eq!(f.map(|f| f.timer), Some("no-job".into()));
        i.jobs_ever = true;
        i.now += Duration::from_secs(3600);
        let (_, f) = evaluate(&c, &i);
        assert_eq!(f.map(|f| f.timer), Some("max-lifetime".into()));
    }

    #[test]
    fn not_ready_means_not_armed() {
        let mut i = inputs(10_000);
        i.ready_at = None;
        i.jobs_ever = false;
        i.boot_time = i.now;
        let (st, f) = evaluate(&cfg(), &i);
        assert_eq!(f, None);
        assert_eq!(st[0].state, "waiting for readiness");
        assert_eq!(st[2].state, "waiting for readiness");
    }
}
