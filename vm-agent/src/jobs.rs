//! Job records: one JSON file per job under `<state_dir>/jobs/`, written atomically, plus the
//! job's output log next to it. Records survive a daemon restart; a job that was queued or
//! running when the daemon died is marked `lost` on the next start, never dropped.

use crate::util;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// The record types, defined once in the `agent-status` crate (the status report's contract).
pub use agent_status::jobs::{JobRecord, JobState};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot create job directory {path}: {source}")]
    Dir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write job record {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The on-disk job store.
#[derive(Debug, Clone)]
pub struct JobStore {
    dir: PathBuf,
}

impl JobStore {
    pub fn open(state_dir: &Path) -> Result<JobStore, StoreError> {
        let dir = state_dir.join("jobs");
        std::fs::create_dir_all(&dir).map_err(|source| StoreError::Dir {
            path: dir.clone(),
            source,
        })?;
        Ok(JobStore { dir })
    }

    pub fn record_path(&self, id: u64) -> PathBuf {
        self.dir.join(format!("{id}.json"))
    }

    pub fn log_path(&self, id: u64) -> PathBuf {
        self.dir.join(format!("{id}.log"))
    }

    pub fn save(&self, rec: &JobRecord) -> Result<(), StoreError> {
        let path = self.record_path(rec.id);
        let mut data = serde_json::to_vec_pretty(rec).unwrap_or_default();
        data.push(b'\n');
        util::write_atomic(&path, &data, 0o640).map_err(|source| StoreError::Write { path, source })
    }

    /// Load every record, sorted by id. Records still `queued`/`running` are rewritten as
    /// `lost` (the daemon that owned them is gone). Unreadable records are logged and skipped.
    pub fn load_and_recover(&self) -> Vec<JobRecord> {
        let mut out = vec![];
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return out;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.extension().and_then(|x| x.to_str()) != Some("json") {
                continue;
            }
            let rec: Option<JobRecord> = std::fs::read(&p)
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok());
            let Some(mut rec) = rec else {
                tracing::warn!("skipping unreadable job record {}", p.display());
                continue;
            };
            if !rec.state.is_final() {
                let was = rec.state.as_str();
                rec.state = JobState::Lost;
                rec.finished_at = Some(SystemTime::now());
                rec.detail = Some(format!("was {was} when the agent stopped; outcome unknown"));
                if let Err(e) = self.save(&rec) {
                    tracing::error!("{e}");
                }
                tracing::warn!(
                    job = rec.id,
                    "job was {was} when the agent stopped: marked lost"
                );
            }
            out.push(rec);
        }
        out.sort_by_key(|r| r.id);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(id: u64, state: JobState) -> JobRecord {
        JobRecord {
            id,
            name: None,
            argv: vec!["true".into()],
            state,
            user: "u".into(),
            uid: 1,
            gid: 1,
            submitted_by: 0,
            submitted_at: SystemTime::now(),
            started_at: None,
            finished_at: None,
            pid: None,
            exit_code: None,
            signal: None,
            timeout: None,
            log: PathBuf::from("x"),
            detail: None,
        }
    }

    #[test]
    fn running_jobs_become_lost() {
        let d = tempfile::tempdir().expect("tempdir");
        let store = JobStore::open(d.path()).expect("open");
        store.save(&rec(1, JobState::Succeeded)).expect("save");
        store.save(&rec(2, JobState::Running)).expect("save");
        let all = store.load_and_recover();
        assert_eq!(all.len(), 2);
        assert_eq!(all[0].state, JobState::Succeeded);
        assert_eq!(all[1].state, JobState::Lost);
        let again = store.load_and_recover();
        assert_eq!(again[1].state, JobState::Lost, "rewritten on disk");
    }
}
