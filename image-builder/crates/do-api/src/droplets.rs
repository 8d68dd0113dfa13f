//! Droplets, droplet actions, and waiting on them.

use std::time::{Duration, Instant};

use reqwest::Method;
use serde::Deserialize;

use super::client::{Client, Idempotency};
use super::error::DoError;
use super::models::{
    Action, ActionLink, ActionStatus, CreatedDroplet, Droplet, DropletAction, DropletCreate,
    DropletSnapshot, DropletStatus,
};

/// How often and how long to poll.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Poll {
    pub interval: Duration,
    pub timeout: Duration,
}

impl Poll {
    pub fn new(interval: Duration, timeout: Duration) -> Self {
        Self { interval, timeout }
    }
}

impl Default for Poll {
    /// Every 5 s (as godo), for at most 10 minutes.
    fn default() -> Self {
        Self::new(Duration::from_secs(5), Duration::from_secs(600))
    }
}

/// What a delete found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deleted {
    /// 204: the delete was accepted now.
    Deleted,
    /// 404: it was already gone.
    AlreadyGone,
}

#[derive(Deserialize)]
struct DropletEnvelope {
    droplet: Droplet,
}

#[derive(Deserialize)]
struct CreateEnvelope {
    droplet: Droplet,
    #[serde(default)]
    links: CreateLinks,
}

#[derive(Deserialize)]
struct CreateManyEnvelope {
    droplets: Vec<Droplet>,
}

/// At most this many names in one `POST /v2/droplets` (`names[]`), as the contract says.
pub const MAX_NAMES_PER_CREATE: usize = 10;

#[derive(Deserialize, Default)]
struct CreateLinks {
    #[serde(default)]
    actions: Vec<ActionLink>,
}

#[derive(Deserialize)]
struct ActionEnvelope {
    action: Action,
}

/// Transient errors tolerated in a row while polling (as godo's WaitForActive).
const POLL_ERRORS_TOLERATED: u32 = 3;

impl Client {
    /// `POST /v2/droplets`, sent once (re-sent only on 429 or a refused
    /// connection, which were provably not processed). After any other
    /// failure the droplet may or may not exist; prefer
    /// [`Client::create_droplet_reconciled`].
    pub async fn create_droplet(&self, req: &DropletCreate) -> Result<CreatedDroplet, DoError> {
        let env: CreateEnvelope = self
            .write(Method::POST, "/v2/droplets", req, Idempotency::Once)
            .await?;
        Ok(CreatedDroplet {
            droplet: env.droplet,
            action_id: env
                .links
                .actions
                .iter()
                .find(|a| a.rel == "create")
                .or(env.links.actions.first())
                .map(|a| a.id),
            reconciled: false,
            attempts: 1,
        })
    }

    /// Create a droplet so that a retry can never make a second one.
    ///
    /// `reconcile_tag` must be in `req.tags` and name only this create (e.g.
    /// `image-builder-bake-<id>`). When a create fails with an unknown outcome
    /// (5xx, connection lost after sending), the droplets carrying the tag are
    /// listed first: if one exists it is returned (`reconciled: true`);
    /// only if none exists is the create sent again, up to the policy's retries.
    /// Refusals (4xx such as 422 size restricted or droplet limit) return at once.
    pub async fn create_droplet_reconciled(
        &self,
        req: &DropletCreate,
        reconcile_tag: &str,
    ) -> Result<CreatedDroplet, DoError> {
        if !req.tags.iter().any(|t| t == reconcile_tag) {
            return Err(DoError::MissingReconcileTag {
                name: req.name.clone(),
                tag: reconcile_tag.to_owned(),
            });
        }
        let mut attempt = 0u32;
        loop {
            let err = match self.create_droplet(req).await {
                Ok(mut created) => {
                    created.attempts = attempt + 1;
                    return Ok(created);
                }
                Err(e) => e,
            };
            let unknown_outcome = match &err {
                DoError::Api { status, .. } => *status >= 500,
                DoError::Transport { .. } | DoError::Decode { .. } => true,
                _ => false,
            };
            if !unknown_outcome {
                return Err(err);
            }
            // Give the API a moment to show a droplet the failed call may have made.
            tokio::time::sleep(self.policy().delay(attempt)).await;
            let existing = self.list_droplets_by_tag(reconcile_tag).await?;
            if let Some(droplet) = pick(existing, &req.name) {
                tracing::warn!(droplet_id = droplet.id, tag = reconcile_tag, error = %err, "droplet create failed with an unknown outcome, but the droplet exists: using it");
                return Ok(CreatedDroplet {
                    droplet,
                    action_id: None,
                    reconciled: true,
                    attempts: attempt + 1,
                });
            }
            if !self.policy().allows_retry(attempt) {
                return Err(DoError::CreateNotReconciled {
                    name: req.name.clone(),
                    tag: reconcile_tag.to_owned(),
                    attempts: attempt + 1,
                    last: Box::new(err),
                });
            }
            tracing::warn!(tag = reconcile_tag, error = %err, "droplet create failed and no droplet carries the tag: creating again");
            attempt += 1;
        }
    }

    /// Create droplets `names` (at most [`MAX_NAMES_PER_CREATE`]) in one `POST /v2/droplets`
    /// with `names[]`, everything else as in `template` (whose `name` is ignored), so that a
    /// retry never makes a second droplet of one name.
    ///
    /// `reconcile_tag` must be in `template.tags` and carried only by this batch's droplets
    /// (e.g. a fleet's tag: droplets of earlier batches carry it too, which is what makes
    /// the create idempotent). Before each POST the tagged droplets are listed and only the
    /// names none of them has are sent; after an unknown outcome (5xx, a lost connection)
    /// the list is read again. Refusals (4xx) return at once. Returns the batch's droplets,
    /// found or created, in the order of `names`. `tagged`: the droplets the caller has
    /// just listed by that tag, which spares the first listing (None: list them).
    pub async fn create_droplets_reconciled(
        &self,
        template: &DropletCreate,
        names: &[String],
        reconcile_tag: &str,
        tagged: Option<Vec<Droplet>>,
    ) -> Result<Vec<Droplet>, DoError> {
        if !template.tags.iter().any(|t| t == reconcile_tag) {
            return Err(DoError::MissingReconcileTag {
                name: names.join(","),
                tag: reconcile_tag.to_owned(),
            });
        }
        assert!(
            names.len() <= MAX_NAMES_PER_CREATE,
            "create_droplets_reconciled: at most {MAX_NAMES_PER_CREATE} names per POST"
        );
        let mut attempt = 0u32;
        let mut tagged = tagged;
        loop {
            let existing = match tagged.take() {
                Some(known) => known,
                None => self.list_droplets_by_tag(reconcile_tag).await?,
            };
            let missing: Vec<&String> = names
                .iter()
                .filter(|n| !existing.iter().any(|d| &d.name == *n))
                .collect();
            if missing.is_empty() {
                return Ok(in_order(existing, names));
            }
            let mut body = serde_json::to_value(template).map_err(|source| DoError::Decode {
                method: "POST".into(),
                path: "/v2/droplets".into(),
                status: 0,
                source,
            })?;
            if let Some(obj) = body.as_object_mut() {
                obj.remove("name");
                obj.insert("names".into(), serde_json::json!(missing));
            }
            let err = match self
                .write::<_, CreateManyEnvelope>(
                    Method::POST,
                    "/v2/droplets",
                    &body,
                    Idempotency::Once,
                )
                .await
            {
                Ok(created) => {
                    let mut all = existing;
                    all.extend(created.droplets);
                    return Ok(in_order(all, names));
                }
                Err(e) => e,
            };
            let unknown_outcome = match &err {
                DoError::Api { status, .. } => *status >= 500,
                DoError::Transport { .. } | DoError::Decode { .. } => true,
                _ => false,
            };
            if !unknown_outcome || !self.policy().allows_retry(attempt) {
                return Err(err);
            }
            tracing::warn!(tag = reconcile_tag, error = %err, "droplets create failed with an unknown outcome: listing by tag before sending the missing names again");
            tokio::time::sleep(self.policy().delay(attempt)).await;
            attempt += 1;
        }
    }

    pub async fn get_droplet(&self, id: u64) -> Result<Droplet, DoError> {
        let env: DropletEnvelope = self.get(&format!("/v2/droplets/{id}"), &[]).await?;
        Ok(env.droplet)
    }

    /// Every droplet of the account (all pages).
    pub async fn list_droplets(&self) -> Result<Vec<Droplet>, DoError> {
        self.get_all("/v2/droplets", &[], "droplets").await
    }

    /// Droplets carrying `tag` (all pages).
    pub async fn list_droplets_by_tag(&self, tag: &str) -> Result<Vec<Droplet>, DoError> {
        self.get_all("/v2/droplets", &[("tag_name", tag.to_owned())], "droplets")
            .await
    }

    /// `DELETE /v2/droplets/{id}`: one request (plus retries on 429/5xx/network
    /// errors); a 404 counts as success. Cheap enough for a droplet to call on itself.
    pub async fn delete_droplet(&self, id: u64) -> Result<Deleted, DoError> {
        match self
            .write_no_content::<()>(
                Method::DELETE,
                &format!("/v2/droplets/{id}"),
                None,
                Idempotency::Idempotent,
            )
            .await
        {
            Ok(()) => Ok(Deleted::Deleted),
            Err(e) if e.is_not_found() => Ok(Deleted::AlreadyGone),
            Err(e) => Err(e),
        }
    }

    /// `DELETE /v2/droplets?tag_name=TAG`.
    pub async fn delete_droplets_by_tag(&self, tag: &str) -> Result<(), DoError> {
        self.send(
            Method::DELETE,
            "/v2/droplets",
            &[("tag_name", tag.to_owned())],
            None,
            Idempotency::Idempotent,
        )
        .await?;
        Ok(())
    }

    /// Poll until `GET /v2/droplets/{id}` answers 404, re-sending the delete
    /// every few polls while the droplet is still there.
    pub async fn wait_droplet_gone(&self, id: u64, poll: Poll) -> Result<(), DoError> {
        let start = Instant::now();
        let mut polls = 0u32;
        loop {
            match self.get_droplet(id).await {
                Err(e) if e.is_not_found() => return Ok(()),
                Ok(_) if polls % 4 == 3 => {
                    if let Err(e) = self.delete_droplet(id).await {
                        tracing::warn!(droplet_id = id, error = %e, "re-sending droplet delete failed");
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(droplet_id = id, error = %e, "checking that the droplet is gone failed")
                }
            }
            if start.elapsed() >= poll.timeout {
                return Err(DoError::Timeout {
                    what: format!("droplet {id} to be gone (404)"),
                    after: poll.timeout,
                });
            }
            polls += 1;
            tokio::time::sleep(poll.interval).await;
        }
    }

    /// Delete and confirm: [`Client::delete_droplet`] then [`Client::wait_droplet_gone`].
    pub async fn destroy_droplet(&self, id: u64, poll: Poll) -> Result<(), DoError> {
        if self.delete_droplet(id).await? == Deleted::AlreadyGone {
            return Ok(());
        }
        self.wait_droplet_gone(id, poll).await
    }

    /// Post a droplet action. Not re-sent after an unknown outcome (a second
    /// snapshot would be a second image); 429 and refused connections are retried.
    pub async fn droplet_action(
        &self,
        droplet_id: u64,
        action: &DropletAction,
    ) -> Result<Action, DoError> {
        let env: ActionEnvelope = self
            .write(
                Method::POST,
                &format!("/v2/droplets/{droplet_id}/actions"),
                action,
                Idempotency::Once,
            )
            .await?;
        Ok(env.action)
    }

    pub async fn shutdown(&self, droplet_id: u64) -> Result<Action, DoError> {
        self.droplet_action(droplet_id, &DropletAction::Shutdown)
            .await
    }

    pub async fn power_off(&self, droplet_id: u64) -> Result<Action, DoError> {
        self.droplet_action(droplet_id, &DropletAction::PowerOff)
            .await
    }

    pub async fn power_on(&self, droplet_id: u64) -> Result<Action, DoError> {
        self.droplet_action(droplet_id, &DropletAction::PowerOn)
            .await
    }

    pub async fn snapshot(&self, droplet_id: u64, name: &str) -> Result<Action, DoError> {
        self.droplet_action(
            droplet_id,
            &DropletAction::Snapshot {
                name: name.to_owned(),
            },
        )
        .await
    }

    /// `GET /v2/droplets/{id}/actions` (all pages): how a caller learns whether
    /// an action whose POST had an unknown outcome was started.
    pub async fn list_droplet_actions(&self, droplet_id: u64) -> Result<Vec<Action>, DoError> {
        self.get_all(
            &format!("/v2/droplets/{droplet_id}/actions"),
            &[],
            "actions",
        )
        .await
    }

    pub async fn get_action(&self, action_id: u64) -> Result<Action, DoError> {
        let env: ActionEnvelope = self.get(&format!("/v2/actions/{action_id}"), &[]).await?;
        Ok(env.action)
    }

    /// Poll an action until `completed`. `errored` fails at once (like godo,
    /// unlike Packer which polls an errored snapshot until its timeout).
    pub async fn wait_action(&self, action_id: u64, poll: Poll) -> Result<Action, DoError> {
        let start = Instant::now();
        let mut errors = 0u32;
        loop {
            match self.get_action(action_id).await {
                Ok(a) => {
                    errors = 0;
                    match a.status {
                        ActionStatus::Completed => return Ok(a),
                        ActionStatus::Errored => {
                            return Err(DoError::ActionErrored {
                                action_id,
                                kind: a.kind,
                                resource: match (a.resource_type, a.resource_id) {
                                    (Some(t), Some(id)) => format!("{t} {id}"),
                                    _ => "unknown resource".to_owned(),
                                },
                            });
                        }
                        ActionStatus::InProgress | ActionStatus::Unknown => {}
                    }
                }
                Err(e) if e.status().is_some_and(|s| s < 500 && s != 429) => return Err(e),
                Err(e) => {
                    errors += 1;
                    if errors > POLL_ERRORS_TOLERATED {
                        return Err(e);
                    }
                    tracing::warn!(action_id, error = %e, "polling action failed; trying again");
                }
            }
            if start.elapsed() >= poll.timeout {
                return Err(DoError::Timeout {
                    what: format!("action {action_id} to complete"),
                    after: poll.timeout,
                });
            }
            tokio::time::sleep(poll.interval).await;
        }
    }

    /// Poll a droplet until it has `status` and is not locked.
    pub async fn wait_droplet_status(
        &self,
        id: u64,
        status: DropletStatus,
        poll: Poll,
    ) -> Result<Droplet, DoError> {
        let start = Instant::now();
        loop {
            let d = self.get_droplet(id).await?;
            if d.status == status && !d.locked {
                return Ok(d);
            }
            if start.elapsed() >= poll.timeout {
                return Err(DoError::Timeout {
                    what: format!(
                        "droplet {id} to be {status:?} and unlocked (it is {:?})",
                        d.status
                    ),
                    after: poll.timeout,
                });
            }
            tokio::time::sleep(poll.interval).await;
        }
    }

    /// `GET /v2/droplets/{id}/snapshots` (all pages): where a snapshot's image id is found.
    pub async fn list_droplet_snapshots(
        &self,
        droplet_id: u64,
    ) -> Result<Vec<DropletSnapshot>, DoError> {
        self.get_all(
            &format!("/v2/droplets/{droplet_id}/snapshots"),
            &[],
            "snapshots",
        )
        .await
    }
}

/// The droplets named `names`, in that order (the oldest of a name if several).
fn in_order(mut found: Vec<Droplet>, names: &[String]) -> Vec<Droplet> {
    found.sort_by_key(|d| d.id);
    names
        .iter()
        .filter_map(|n| found.iter().find(|d| &d.name == n).cloned())
        .collect()
}

/// The droplet a reconciled create made: the one with the requested name,
/// the oldest if several.
fn pick(mut found: Vec<Droplet>, name: &str) -> Option<Droplet> {
    found.sort_by_key(|d| d.id);
    let idx = found
        .iter()
        .position(|d| d.name == name)
        .or(if found.is_empty() { None } else { Some(0) })?;
    if found.len() > 1 {
        tracing::warn!(
            count = found.len(),
            "more than one droplet carries the reconcile tag"
        );
    }
    Some(found.swap_remove(idx))
}
