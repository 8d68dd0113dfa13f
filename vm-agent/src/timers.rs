//! The three self-destruct timers, evaluated as a pure function of the current facts.
//!
//! * `idle`: no running or queued job, no hold, no SSH session, for `idle_timeout`, counted
//!   from readiness (`ready` or `degraded`) or from the end of the last activity.
//! * `max-lifetime`: `max_lifetime` after the machine booted.
//! * `no-job`: no job ever submitted, `no_job_timeout` after readiness.
//! * `one-shot` (`timers.one_shot`): a job has ended and none runs or waits: the worker
//!   took its one job, so it ends now, whatever the idle timer says (ephemeral CI runners).

use crate::config::{Limit, TimersConfig};
use std::time::SystemTime;

/// The report types, defined once in the `agent-status` crate (the status report's contract).
pub use agent_status::timers::{TimerName, TimerState, TimerStatus};

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
    /// A job has ended (succeeded, failed, cancelled, timed out).
    pub job_ended: bool,
    /// Jobs running or queued.
    pub jobs_active: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Fired {
    pub timer: TimerName,
    pub reason: String,
}

fn timer(
    name: TimerName,
    limit: Limit,
    base: Option<SystemTime>,
    not_armed: Option<TimerState>,
    now: SystemTime,
) -> TimerStatus {
    let mut t = TimerStatus {
        name,
        limit: limit.to_string(),
        fires_at: None,
        state: TimerState::Armed,
    };
    match (limit.duration(), not_armed, base) {
        (None, _, _) => t.state = TimerState::Disabled,
        (Some(_), Some(why), _) => t.state = why,
        (Some(_), None, None) => t.state = TimerState::WaitingForReadiness,
        (Some(d), None, Some(b)) => {
            let at = b + d;
            t.fires_at = Some(at);
            if now >= at {
                t.state = TimerState::Fired;
            }
        }
    }
    t
}

/// Status of every timer, and the one that fired (the earliest), if any.
pub fn evaluate(cfg: &TimersConfig, i: &TimerInputs) -> (Vec<TimerStatus>, Option<Fired>) {
    let idle = timer(
        TimerName::Idle,
        cfg.idle_timeout,
        i.ready_at.and(i.idle_since),
        i.busy.clone().map(TimerState::Paused),
        i.now,
    );
    let life = timer(
        TimerName::MaxLifetime,
        cfg.max_lifetime,
        Some(i.boot_time),
        None,
        i.now,
    );
    let nojob = timer(
        TimerName::NoJob,
        cfg.no_job_timeout,
        i.ready_at,
        i.jobs_ever
            .then(|| TimerState::Satisfied("a job arrived".to_string())),
        i.now,
    );
    let oneshot = TimerStatus {
        name: TimerName::OneShot,
        limit: if cfg.one_shot { "first job" } else { "off" }.to_owned(),
        fires_at: None,
        state: match (cfg.one_shot, i.job_ended, i.jobs_active) {
            (false, _, _) => TimerState::Disabled,
            (true, true, false) => TimerState::Fired,
            (true, true, true) => TimerState::Paused("a job runs or waits".to_owned()),
            (true, false, _) => TimerState::Armed,
        },
    };
    let all = vec![idle, life, nojob, oneshot];
    let fired = all
        .iter()
        .filter(|t| t.state == TimerState::Fired)
        .min_by_key(|t| t.fires_at)
        .map(|t| Fired {
            timer: t.name,
            reason: match t.name {
                TimerName::Idle => format!("idle for {}", t.limit),
                TimerName::MaxLifetime => format!("maximum lifetime {} reached", t.limit),
                TimerName::NoJob => format!("no job arrived within {} of readiness", t.limit),
                TimerName::OneShot => "its one job ended (one-shot worker)".to_owned(),
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
            job_ended: false,
            jobs_active: false,
        }
    }

    #[test]
    fn idle_fires_only_when_not_busy() {
        let (_, f) = evaluate(&cfg(), &inputs(30));
        assert_eq!(f, None);
        let (_, f) = evaluate(&cfg(), &inputs(61));
        assert_eq!(f.map(|f| f.timer), Some(TimerName::Idle));
        let mut i = inputs(61);
        i.busy = Some("job 3 running".into());
        i.idle_since = None;
        let (st, f) = evaluate(&cfg(), &i);
        assert_eq!(f, None);
        assert_eq!(st[0].state, TimerState::Paused("job 3 running".into()));
        assert_eq!(
            serde_json::to_value(&st[0].state).unwrap_or_default(),
            "paused: job 3 running"
        );
    }

    #[test]
    fn no_job_and_lifetime() {
        let mut c = cfg();
        c.idle_timeout = Limit::Never;
        let mut i = inputs(700);
        i.jobs_ever = false;
        let (st, f) = evaluate(&c, &i);
        assert_eq!(st[0].state, TimerState::Disabled);
        assert_eq!(f.map(|f| f.timer), Some(TimerName::NoJob));
        i.jobs_ever = true;
        i.now += Duration::from_secs(3600);
        let (_, f) = evaluate(&c, &i);
        assert_eq!(f.map(|f| f.timer), Some(TimerName::MaxLifetime));
    }

    #[test]
    fn not_ready_means_not_armed() {
        let mut i = inputs(10_000);
        i.ready_at = None;
        i.jobs_ever = false;
        i.boot_time = i.now;
        let (st, f) = evaluate(&cfg(), &i);
        assert_eq!(f, None);
        assert_eq!(st[0].state, TimerState::WaitingForReadiness);
        assert_eq!(st[2].state, TimerState::WaitingForReadiness);
    }

    #[test]
    fn one_shot_fires_once_the_first_job_ended_and_nothing_else_runs() {
        let mut c = cfg();
        let i = inputs(1);
        assert_eq!(evaluate(&c, &i).1, None, "one-shot is off by default");
        c.one_shot = true;
        assert_eq!(evaluate(&c, &i).1, None, "no job has ended yet");
        let running = TimerInputs {
            job_ended: true,
            jobs_active: true,
            ..i.clone()
        };
        assert_eq!(evaluate(&c, &running).1, None, "another job still runs");
        let done = TimerInputs {
            job_ended: true,
            ..i
        };
        let fired = evaluate(&c, &done).1.expect("fires");
        assert_eq!(fired.timer, TimerName::OneShot);
    }
}
