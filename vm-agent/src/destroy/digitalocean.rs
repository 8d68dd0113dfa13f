//! DigitalOcean provider: delete this droplet, found by its own id from the metadata service,
//! only if it carries the ephemeral tag, and never while a guard objects (re-checked right
//! before the DELETE). HTTP goes through the shared client `do_api`, whose
//! [`RetryPolicy`] retries 429 (honouring `retry-after`) and 5xx with backoff. If the delete
//! still fails, the machine is powered off instead, and the outcome says loudly that a
//! powered-off droplet is still billed.

use super::local::Local;
use super::{Destroyer, Guard, Outcome};
use do_api::metadata::MetadataClient;
use do_api::{Client, Deleted, RetryPolicy, Token};
use futures::future::BoxFuture;
use std::time::Duration;

/// The DigitalOcean calls self-destroy needs (a seam for unit tests of the provider logic).
pub trait DropletApi: Send + Sync {
    /// `GET /metadata/v1/id`.
    fn own_id(&self) -> BoxFuture<'_, Result<u64, String>>;
    /// `GET /metadata/v1/tags`.
    fn own_tags(&self) -> BoxFuture<'_, Result<Vec<String>, String>>;
    /// `DELETE /v2/droplets/{id}` with the client's retries. `Ok(description)` on 204 or 404.
    fn delete_droplet(&self, id: u64) -> BoxFuture<'_, Result<String, String>>;
    /// Whether a usable token is configured (`Err` says why not).
    fn token_problem(&self) -> Option<String>;
}

/// [`DropletApi`] over the shared `do_api` clients.
pub struct SharedDoApi {
    metadata: Result<MetadataClient, String>,
    api: Result<Client, String>,
}

impl SharedDoApi {
    /// `attempts` DELETE attempts in all (429/5xx retried), backoff from `base` up to `max`.
    pub fn new(
        metadata_url: &str,
        api_url: &str,
        token: Option<&str>,
        attempts: u32,
        base: Duration,
        max: Duration,
    ) -> Self {
        let metadata = MetadataClient::new_with_base(metadata_url).map_err(|e| e.to_string());
        let policy = RetryPolicy::default()
            .with_max_retries(attempts.saturating_sub(1))
            .with_backoff(base, max)
            // One DELETE: pacing by `ratelimit-remaining` only delays the end of the machine.
            .with_slow_down_below(0);
        let api = match token {
            None => Err("no do_token in the secrets file".to_string()),
            Some(t) => Token::new(t, "do_token in the secrets file")
                .map_err(|e| e.to_string())
                .and_then(|t| Client::new_with_base(api_url, t, policy).map_err(|e| e.to_string())),
        };
        SharedDoApi { metadata, api }
    }
}

impl DropletApi for SharedDoApi {
    fn own_id(&self) -> BoxFuture<'_, Result<u64, String>> {
        Box::pin(async move {
            let m = self.metadata.as_ref().map_err(Clone::clone)?;
            m.droplet_id().await.map_err(|e| e.to_string())
        })
    }
    fn own_tags(&self) -> BoxFuture<'_, Result<Vec<String>, String>> {
        Box::pin(async move {
            let m = self.metadata.as_ref().map_err(Clone::clone)?;
            m.tags().await.map_err(|e| e.to_string())
        })
    }
    fn delete_droplet(&self, id: u64) -> BoxFuture<'_, Result<String, String>> {
        Box::pin(async move {
            let api = self.api.as_ref().map_err(Clone::clone)?;
            let before = api.request_count();
            let r = api.delete_droplet(id).await;
            let n = api.request_count() - before;
            match r {
                Ok(Deleted::Deleted) => Ok(format!(
                    "DELETE /v2/droplets/{id} accepted after {n} request(s)"
                )),
                Ok(Deleted::AlreadyGone) => Ok(format!("droplet {id} already gone (404)")),
                Err(e) => Err(format!("{e} (after {n} request(s))")),
            }
        })
    }
    fn token_problem(&self) -> Option<String> {
        self.api.as_ref().err().cloned()
    }
}

pub struct DigitalOcean {
    pub api: Box<dyn DropletApi>,
    pub ephemeral_tag: String,
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
            if let Some(p) = self.api.token_problem() {
                return self
                    .fall_back(format!("cannot delete droplet {id}: {p}"))
                    .await;
            }
            // Last look before the irreversible call.
            if let Err(b) = guard.check() {
                return Outcome::Blocked(b);
            }
            tracing::warn!(droplet = id, "deleting own droplet ({reason})");
            match self.api.delete_droplet(id).await {
                Ok(d) => Outcome::Destroyed(d),
                Err(e) => {
                    self.fall_back(format!("cannot delete droplet {id}: {e}"))
                        .await
                }
            }
        })
    }
}
