//! DigitalOcean provider: delete this droplet, found by its own id from the metadata service,
//! only if it carries the ephemeral tag, never while a guard objects (re-checked before every
//! attempt). 429 (honouring `retry-after`) and 5xx are retried with exponential backoff; after
//! `max_attempts` the machine is powered off instead, and the outcome says loudly that a
//! powered-off droplet is still billed.
//!
//! HTTP goes through [`DropletApi`], one request per call. The shared client
//! (`image_builder::do_api`) was not available when this was written; [`HttpDropletApi`] is a
//! minimal single-request adapter (no retry loop of its own: the retry policy lives here, so
//! the guard can be re-checked between attempts). Swap it for the shared client when it lands.

use super::local::Local;
use super::{Destroyer, Guard, Outcome};
use futures::future::BoxFuture;
use std::time::Duration;

/// Result of one DELETE.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeleteAttempt {
    /// 204.
    Deleted,
    /// 404: already gone.
    Gone,
    /// 429 or 5xx or a transport error: worth retrying (`after` from `retry-after`).
    Retry {
        after: Option<Duration>,
        what: String,
    },
    /// Any other answer (401, 403, ...): retrying will not help.
    Fatal(String),
}

/// The DigitalOcean calls self-destroy needs.
pub trait DropletApi: Send + Sync {
    /// `GET /metadata/v1/id`.
    fn own_id(&self) -> BoxFuture<'_, Result<u64, String>>;
    /// `GET /metadata/v1/tags` (one per line).
    fn own_tags(&self) -> BoxFuture<'_, Result<Vec<String>, String>>;
    /// `DELETE /v2/droplets/{id}`, once.
    fn delete_droplet(&self, id: u64) -> BoxFuture<'_, DeleteAttempt>;
    /// Whether a token is configured.
    fn has_token(&self) -> bool;
}

pub struct HttpDropletApi {
    http: reqwest::Client,
    metadata_url: String,
    api_url: String,
    token: Option<String>,
}

impl HttpDropletApi {
    pub fn new(metadata_url: &str, api_url: &str, token: Option<String>) -> Self {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .connect_timeout(Duration::from_secs(10))
            .user_agent(concat!("vm-agent/", env!("CARGO_PKG_VERSION")))
            .build()
            .unwrap_or_default();
        HttpDropletApi {
            http,
            metadata_url: metadata_url.trim_end_matches('/').to_string(),
            api_url: api_url.trim_end_matches('/').to_string(),
            token,
        }
    }

    async fn metadata(&self, path: &str) -> Result<String, String> {
        let url = format!("{}/metadata/v1/{path}", self.metadata_url);
        let mut last = String::new();
        for attempt in 0..3u32 {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(500 << attempt)).await;
            }
            match self.http.get(&url).send().await {
                Ok(r) if r.status().is_success() => {
                    return r.text().await.map_err(|e| format!("GET {url}: {e}"));
                }
                Ok(r) if r.status().is_server_error() => {
                    last = format!("GET {url}: {}", r.status())
                }
                Ok(r) => return Err(format!("GET {url}: {}", r.status())),
                Err(e) => last = format!("GET {url}: {e}"),
            }
        }
        Err(last)
    }
}

fn retry_after(h: &reqwest::header::HeaderMap) -> Option<Duration> {
    h.get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse::<u64>()
        .ok()
        .map(|s| Duration::from_secs(s.min(300)))
}

impl DropletApi for HttpDropletApi {
    fn own_id(&self) -> BoxFuture<'_, Result<u64, String>> {
        Box::pin(async move {
            let text = self.metadata("id").await?;
            text.trim()
                .parse()
                .map_err(|_| format!("metadata id `{}` is not a number", text.trim()))
        })
    }
    fn own_tags(&self) -> BoxFuture<'_, Result<Vec<String>, String>> {
        Box::pin(async move {
            let text = self.metadata("tags").await?;
            Ok(text
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(String::from)
                .collect())
        })
    }
    fn has_token(&self) -> bool {
        self.token.is_some()
    }
    fn delete_droplet(&self, id: u64) -> BoxFuture<'_, DeleteAttempt> {
        Box::pin(async move {
            let Some(token) = &self.token else {
                return DeleteAttempt::Fatal("no do_token in the secrets file".into());
            };
            let url = format!("{}/v2/droplets/{id}", self.api_url);
            match self.http.delete(&url).bearer_auth(token).send().await {
                Ok(r) => {
                    let status = r.status();
                    let after = retry_after(r.headers());
                    let body: String = r
                        .text()
                        .await
                        .unwrap_or_default()
                        .chars()
                        .take(200)
                        .collect();
                    match status.as_u16() {
                        200..=299 => DeleteAttempt::Deleted,
                        404 => DeleteAttempt::Gone,
                        429 | 500..=599 => DeleteAttempt::Retry {
                            after,
                            what: format!("DELETE {url}: {status} {body}"),
                        },
                        _ => DeleteAttempt::Fatal(format!("DELETE {url}: {status} {body}")),
                    }
                }
                Err(e) => DeleteAttempt::Retry {
                    after: None,
                    what: format!("DELETE {url}: {e}"),
                },
            }
        })
    }
}

pub struct DigitalOcean {
    pub api: Box<dyn DropletApi>,
    pub ephemeral_tag: String,
    pub max_attempts: u32,
    pub base_wait: Duration,
    pub max_wait: Duration,
    pub poweroff: Local,
}

impl DigitalOcean {
    async fn fall_back(&self, why: String) -> Outcome {
        tracing::error!(
            "SELF-DESTROY FAILED: {why}; powering off instead. A powered-off droplet is STILL BILLED until someone deletes it"
        );
        match self.poweroff.power_off().await {
            Ok(d) => Outcome::PoweredOff(format!(
                "{why}; fell back to power-off ({d}); the droplet is still billed until deleted"
            )),
            Err(e) => Outcome::Failed(format!("{why}; power-off also failed: {e}")),
        }
    }
}

impl Destroyer for DigitalOcean {
    fn provider(&self) -> &'static str {
        "digitalocean"
    }

    fn destroy<'a>(&'a self, guard: &'a dyn Guard, reason: &'a str) -> BoxFuture<'a, Outcome> {
        Box::pin(async move {
            let id = match self.api.own_id().await {
                Ok(id) => id,
                Err(e) => return Outcome::Refused(format!("cannot read own droplet id: {e}")),
            };
            let tags = match self.api.own_tags().await {
                Ok(t) => t,
                Err(e) => return Outcome::Refused(format!("cannot read droplet tags: {e}")),
            };
            if !tags.iter().any(|t| t == &self.ephemeral_tag) {
                return Outcome::Refused(format!(
                    "droplet {id} is not tagged `{}` (tags: [{}]); refusing to delete it",
                    self.ephemeral_tag,
                    tags.join(", ")
                ));
            }
            if !self.api.has_token() {
                return self
                    .fall_back(format!(
                        "cannot delete droplet {id}: no do_token in the secrets file"
                    ))
                    .await;
            }
            let mut wait = self.base_wait;
            let mut last = String::new();
            for attempt in 1..=self.max_attempts {
                if let Err(b) = guard.check() {
                    return Outcome::Blocked(b);
                }
                tracing::warn!(droplet = id, attempt, "deleting own droplet ({reason})");
                match self.api.delete_droplet(id).await {
                    DeleteAttempt::Deleted => {
                        return Outcome::Destroyed(format!(
                            "DELETE /v2/droplets/{id} accepted (attempt {attempt})"
                        ));
                    }
                    DeleteAttempt::Gone => {
                        return Outcome::Destroyed(format!("droplet {id} already gone (404)"));
                    }
                    DeleteAttempt::Fatal(e) => {
                        return self
                            .fall_back(format!("cannot delete droplet {id}: {e}"))
                            .await;
                    }
                    DeleteAttempt::Retry { after, what } => {
                        tracing::warn!(droplet = id, attempt, "{what}");
                        last = what;
                        if attempt < self.max_attempts {
                            let sleep = after.unwrap_or(wait);
                            tokio::time::sleep(sleep).await;
                            wait = (wait * 2).min(self.max_wait);
                        }
                    }
                }
            }
            self.fall_back(format!(
                "cannot delete droplet {id} after {} attempts (last: {last})",
                self.max_attempts
            ))
            .await
        })
    }
}
