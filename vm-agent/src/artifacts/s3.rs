//! [`S3Fetcher`]: pulls builds from the `[artifacts]` store with
//! `artifact_store::pull`.
//!
//! Each pull runs in a child process (module [`child`]: `vm-agent pull-worker`, on its own
//! short-lived multi-thread runtime): the daemon's runtime is single-threaded (small idle RSS),
//! a pull wants several threads for TLS, hashing and writing, and nothing of it (code pages,
//! buffers, threads) is left in the daemon once it ends. A hidden [`ProgressBar`] carries the
//! byte count the child reports, which `status` shows while a pull runs.
//!
//! Names are resolved with hickory (`artifact_store::s3::HickoryDns`: reads
//! `/etc/resolv.conf` and `/etc/hosts` itself), not with glibc's `getaddrinfo`, so the
//! statically linked agent never enters NSS.

use super::child;
use super::{
    ArtifactFetcher, ArtifactItem, ArtifactOutcome, ArtifactReport, ArtifactState, ArtifactTrigger,
    PullRefused,
};
use crate::config::{ArtifactsConfig, Secrets};
use artifact_store::{S3Credentials, S3Settings};
use futures::future::BoxFuture;
use indicatif::ProgressBar;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Instant, SystemTime};

/// Most items kept in the report (oldest dropped first).
const MAX_ITEMS: usize = 20;

/// The S3 keys and where they came from. `Debug` is redacted (by `S3Credentials`).
#[derive(Debug, Clone)]
pub struct Credentials {
    /// `Err`: why there are none usable (e.g. half a pair in the environment).
    pub keys: Result<Option<S3Credentials>, String>,
    /// `secrets-file`, `environment` or `none`.
    pub source: &'static str,
}

/// Keys from the secrets file (`spaces_access_key_id`/`spaces_secret_access_key`), else from
/// the environment (`SPACES_ACCESS_KEY_ID`/`SPACES_SECRET_ACCESS_KEY`, then the `AWS_*` names).
pub fn credentials(secrets: &Secrets) -> Credentials {
    if let (Some(id), Some(secret)) = (
        &secrets.spaces_access_key_id,
        &secrets.spaces_secret_access_key,
    ) {
        return Credentials {
            keys: Ok(Some(S3Credentials::new(id.clone(), secret.clone()))),
            source: "secrets-file",
        };
    }
    match S3Credentials::from_env() {
        Ok(Some(c)) => Credentials {
            keys: Ok(Some(c)),
            source: "environment",
        },
        Ok(None) => Credentials {
            keys: Ok(None),
            source: "none",
        },
        // The message names variables, never values.
        Err(e) => Credentials {
            keys: Err(format!("S3 credentials in the environment: {e}")),
            source: "environment",
        },
    }
}

struct State {
    boot_state: ArtifactState,
    boot_detail: Option<String>,
    items: Vec<ArtifactItem>,
    live: HashMap<String, ProgressBar>,
}

/// Pulls from an S3-compatible store into `<state_dir>/artifacts/<sha>/`.
pub struct S3Fetcher {
    cfg: ArtifactsConfig,
    root: PathBuf,
    creds: Credentials,
    state: Arc<Mutex<State>>,
}

impl S3Fetcher {
    pub fn new(cfg: ArtifactsConfig, state_dir: PathBuf, creds: Credentials) -> S3Fetcher {
        let (boot_state, boot_detail) = match &cfg.sha {
            Some(_) => (ArtifactState::Pending, None),
            None => (
                ArtifactState::None,
                Some("no artifacts.sha configured: pull on demand with `vm-agent pull SHA`".into()),
            ),
        };
        S3Fetcher {
            cfg,
            root: state_dir,
            creds,
            state: Arc::new(Mutex::new(State {
                boot_state,
                boot_detail,
                items: vec![],
                live: HashMap::new(),
            })),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn settings(&self) -> S3Settings {
        S3Settings {
            endpoint: self.cfg.endpoint.clone(),
            region: self.cfg.region.clone(),
            bucket: self.cfg.bucket.clone(),
            path_style: self.cfg.path_style,
        }
    }

    /// Replace (or add) the item for its sha.
    fn put_item(&self, item: ArtifactItem) {
        let mut st = self.lock();
        st.items.retain(|i| i.sha != item.sha);
        st.items.push(item);
        let excess = st.items.len().saturating_sub(MAX_ITEMS);
        st.items.drain(..excess);
    }

    /// One pull, start to finish; never fails (the item says how it ended).
    async fn pull_one(&self, sha: &str, trigger: ArtifactTrigger) -> ArtifactItem {
        let mut item = ArtifactItem::fetching(sha, trigger);
        let bar = ProgressBar::hidden();
        {
            self.put_item(item.clone());
            self.lock().live.insert(sha.to_string(), bar.clone());
        }
        let start = Instant::now();
        tracing::info!(sha, %trigger, bucket = %self.cfg.bucket, "artifact pull: started");
        let result = match &self.creds.keys {
            Err(msg) => Err(child::Failure {
                unavailable: true,
                message: format!("artifact unavailable: {msg}"),
            }),
            Ok(keys) => {
                let job = child::PullJob {
                    s3: self.settings(),
                    keys: keys.as_ref().map(child::Keys::from),
                    sha: sha.to_string(),
                    root: self.root.clone(),
                    max_requests: self.cfg.concurrency.max(1) as usize,
                    cache_max_bytes: self.cfg.cache_max_bytes,
                    min_free_bytes: self.cfg.min_free_bytes,
                };
                child::run(&job, &bar, self.cfg.timeout.duration()).await
            }
        };
        self.lock().live.remove(sha);
        item.duration_secs = start.elapsed().as_secs_f64();
        match result {
            Ok(r) => {
                item.state = ArtifactState::Installed;
                item.verified = true;
                item.path = Some(r.dir.display().to_string());
                item.files = r.files as u64;
                item.bytes = r.bytes_total;
                item.bytes_done = r.bytes_downloaded;
                item.bytes_resumed = r.bytes_resumed;
                item.already_installed = r.already_installed;
                item.retries = r.retries;
                item.refetches = r.refetches;
                item.evicted = r.evicted;
                tracing::info!(
                    sha,
                    files = item.files,
                    bytes = item.bytes,
                    downloaded = item.bytes_done,
                    already_installed = item.already_installed,
                    "artifact pull: installed and verified in {:.2}s at {}",
                    item.duration_secs,
                    r.dir.display()
                );
            }
            Err(child::Failure {
                unavailable,
                message,
            }) => {
                item.bytes = bar.length().unwrap_or(0);
                item.bytes_done = bar.position();
                item.state = if unavailable {
                    ArtifactState::Unavailable
                } else {
                    ArtifactState::Failed
                };
                item.reason = Some(message);
            }
        }
        if let Some(r) = &item.reason {
            tracing::warn!(sha, %trigger, "artifact pull: {}: {r}", item.state);
        }
        self.put_item(item.clone());
        item
    }
}

impl ArtifactFetcher for S3Fetcher {
    fn fetch(&self) -> BoxFuture<'_, ArtifactOutcome> {
        Box::pin(async move {
            let Some(sha) = self.cfg.sha.clone() else {
                return ArtifactOutcome::default();
            };
            {
                let mut st = self.lock();
                st.boot_state = ArtifactState::Fetching;
            }
            let item = self.pull_one(&sha, ArtifactTrigger::Boot).await;
            {
                let mut st = self.lock();
                st.boot_state = item.state;
                st.boot_detail = item.reason.clone();
            }
            let degraded = match (&item.reason, self.cfg.required) {
                (Some(r), true) => Some(format!("required artifact {sha}: {r}")),
                _ => None,
            };
            ArtifactOutcome { degraded }
        })
    }

    fn pull(&self, sha: String) -> BoxFuture<'_, Result<ArtifactItem, PullRefused>> {
        Box::pin(async move {
            if let Err(e) = artifact_store::manifest::validate_sha(&sha) {
                return Err(PullRefused::InvalidSha {
                    sha,
                    reason: e.to_string(),
                });
            }
            Ok(self.pull_one(&sha, ArtifactTrigger::Pull).await)
        })
    }

    fn report(&self) -> ArtifactReport {
        let st = self.lock();
        let mut items = st.items.clone();
        for it in items
            .iter_mut()
            .filter(|i| i.state == ArtifactState::Fetching)
        {
            if let Some(bar) = st.live.get(&it.sha) {
                it.bytes = bar.length().unwrap_or(0);
                it.bytes_done = bar.position();
                it.duration_secs = SystemTime::now()
                    .duration_since(it.started_at)
                    .map(|d| d.as_secs_f64())
                    .unwrap_or(0.0);
            }
        }
        ArtifactReport {
            state: st.boot_state,
            detail: st.boot_detail.clone(),
            sha: self.cfg.sha.clone(),
            required: self.cfg.required,
            store: Some(format!(
                "s3://{} at {}",
                self.cfg.bucket,
                self.cfg.endpoint.trim_end_matches('/')
            )),
            credentials: Some(self.creds.source.to_string()),
            items,
        }
    }

    fn busy(&self) -> Option<String> {
        let st = self.lock();
        let n = st.live.len();
        (n > 0).then(|| format!("{n} artifact pull(s) running"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_file_keys_win_over_the_environment() {
        let s = Secrets {
            spaces_access_key_id: Some("id-from-file".into()),
            spaces_secret_access_key: Some("secret-from-file".into()),
            ..Default::default()
        };
        let c = credentials(&s);
        assert_eq!(c.source, "secrets-file");
        let keys = c.keys.clone().expect("ok").expect("some");
        assert_eq!(keys.access_key_id(), "id-from-file");
        assert!(!format!("{c:?}").contains("secret-from-file"));
    }

    #[test]
    fn hickory_resolves_localhost_without_nss() {
        use artifact_store::s3::{HickoryDns, ResolveDns};
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let addrs = rt.block_on(async {
            let r = HickoryDns::from_system_conf().expect("resolver from /etc/resolv.conf");
            r.resolve_dns("localhost")
                .await
                .expect("localhost resolves")
        });
        assert!(!addrs.is_empty());
        assert!(addrs.iter().all(|a| a.is_loopback()), "{addrs:?}");
    }

    #[test]
    fn report_without_boot_sha_says_how_to_pull() {
        let f = S3Fetcher::new(
            ArtifactsConfig::example(),
            "/tmp/x".into(),
            Credentials {
                keys: Ok(None),
                source: "none",
            },
        );
        let r = f.report();
        assert_eq!(r.state, ArtifactState::None);
        assert!(r.detail.as_deref().unwrap_or("").contains("vm-agent pull"));
        assert_eq!(
            r.store.as_deref(),
            Some("s3://my-space at https://fra1.digitaloceanspaces.com")
        );
        assert!(f.busy().is_none());
    }
}
