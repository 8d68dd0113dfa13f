//! What `fleet up` makes of its workers' readiness, the same on DigitalOcean and locally:
//! one poll's verdict on a worker ([`Readiness`]) and the `--retry` book ([`Retries`]).

use std::collections::BTreeMap;
use std::io::Write;

use agent_status::{Stage, StatusReport};

use super::FailedWorker;
use super::progress::Progress;

/// What one poll of `vm-agent status --json` says about a worker.
#[derive(Debug)]
pub enum Readiness {
    /// The agent is `ready`.
    Ready,
    /// The agent is `degraded`: its reason, and its whole report (JSON) as the last status.
    Degraded {
        /// The agent's reason.
        reason: String,
        /// The report, for when no log can be read.
        report: String,
    },
    /// Not yet.
    Pending {
        /// What the progress line shows: the stage, or that the agent did not answer.
        shown: String,
        /// The stage, or why the agent could not be asked.
        last: String,
    },
}

impl Readiness {
    /// The verdict on one answer of [`super::ssh::agent_status`].
    pub fn of(status: Result<StatusReport, String>) -> Readiness {
        match status {
            Ok(r) if r.stage == Stage::Ready => Readiness::Ready,
            Ok(r) if r.stage == Stage::Degraded => Readiness::Degraded {
                reason: r.reason.clone().unwrap_or_else(|| "degraded".to_owned()),
                report: serde_json::to_string(&r).unwrap_or_default(),
            },
            Ok(r) => Readiness::Pending {
                shown: r.stage.to_string(),
                last: r.stage.to_string(),
            },
            Err(e) => Readiness::Pending {
                shown: "no answer yet".to_owned(),
                last: e,
            },
        }
    }

    /// What the worker's progress line shows.
    pub fn shown(&self) -> String {
        match self {
            Readiness::Ready => "ready".to_owned(),
            Readiness::Degraded { reason, .. } => format!("degraded: {reason}"),
            Readiness::Pending { shown, .. } => shown.clone(),
        }
    }
}

/// `fleet up --retry N`: how often each worker was created in this run, and the workers
/// lost on the way.
#[derive(Debug)]
pub struct Retries {
    limit: u32,
    attempts: BTreeMap<String, u32>,
    failed: Vec<FailedWorker>,
}

impl Retries {
    /// Each worker may be created `1 + limit` times.
    pub fn new(limit: u32) -> Retries {
        Retries {
            limit,
            attempts: BTreeMap::new(),
            failed: Vec::new(),
        }
    }

    /// `worker` is being created (once more).
    pub fn attempt(&mut self, worker: &str) {
        *self.attempts.entry(worker.to_owned()).or_default() += 1;
    }

    /// Whether `worker` may be created once more.
    pub fn may_retry(&self, worker: &str) -> bool {
        self.attempts.get(worker).copied().unwrap_or(0) <= self.limit
    }

    /// Record `lost` workers (deleted already); returns those with tries left, to be
    /// created again (shown as being replaced). The others leave the progress display.
    pub fn lost<W: Write>(
        &mut self,
        lost: Vec<FailedWorker>,
        progress: &mut Progress<W>,
    ) -> Vec<String> {
        let mut again = Vec::new();
        for f in lost {
            if self.may_retry(&f.worker) {
                progress.set(&f.worker, &format!("replacing: {}", f.reason));
                again.push(f.worker.clone());
            } else {
                progress.remove(&f.worker);
            }
            self.failed.push(f);
        }
        again
    }

    /// The failures of the workers that are not up at the end: a replacement that came
    /// up is no failure of the fleet.
    pub fn failures(self, is_up: impl Fn(&str) -> bool) -> Vec<FailedWorker> {
        self.failed
            .into_iter()
            .filter(|f| !is_up(&f.worker))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lost(worker: &str) -> FailedWorker {
        FailedWorker {
            worker: worker.to_owned(),
            id: None,
            region: None,
            reason: "not ready within 1s".to_owned(),
            tail: String::new(),
        }
    }

    #[test]
    fn each_worker_is_created_at_most_one_plus_limit_times() {
        let mut progress = Progress::new(Vec::new(), false);
        let mut r = Retries::new(1);
        r.attempt("ci-1");
        r.attempt("ci-2");
        assert_eq!(r.lost(vec![lost("ci-1")], &mut progress), ["ci-1"]);
        r.attempt("ci-1");
        assert_eq!(
            r.lost(vec![lost("ci-1")], &mut progress),
            Vec::<String>::new()
        );
        // ci-1 failed twice and is not up; ci-2 never failed.
        let failures = r.failures(|w| w == "ci-2");
        assert_eq!(failures.len(), 2);
        assert!(failures.iter().all(|f| f.worker == "ci-1"));
        let text = String::from_utf8(progress.into_inner()).unwrap();
        assert!(
            text.contains("ci-1: replacing: not ready within 1s"),
            "{text}"
        );
    }

    #[test]
    fn a_replacement_that_came_up_is_no_failure() {
        let mut progress = Progress::new(Vec::new(), false);
        let mut r = Retries::new(2);
        r.attempt("ci-1");
        assert_eq!(r.lost(vec![lost("ci-1")], &mut progress), ["ci-1"]);
        r.attempt("ci-1");
        assert!(r.failures(|w| w == "ci-1").is_empty());
    }

    #[test]
    fn an_unreachable_agent_is_pending_with_the_reason_kept() {
        match Readiness::of(Err("Connection refused".into())) {
            Readiness::Pending { shown, last } => {
                assert_eq!(shown, "no answer yet");
                assert_eq!(last, "Connection refused");
            }
            other => panic!("{other:?}"),
        }
    }
}
