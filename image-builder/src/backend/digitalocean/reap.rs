//! `image-builder reap`: delete builder droplets that bakes left behind (a
//! SIGKILL, a power cut, an abandoned cleanup). A builder is any droplet
//! tagged `image-builder` that also carries an `image-builder-bake-<id>` tag;
//! only those older than a bound are touched, so a bake running right now is
//! left alone. Each delete is confirmed by polling until 404.

use std::time::Duration;

use serde::Serialize;

use do_api::{Client, DoError, Poll};

use super::{BAKE_TAG_PREFIX, TAG};

/// A builder droplet `reap` found.
#[derive(Clone, Debug, Serialize)]
pub struct Leftover {
    /// Droplet id.
    pub id: u64,
    /// Name.
    pub name: String,
    /// Its `image-builder-bake-<id>` tag.
    pub bake_tag: String,
    /// Creation time (RFC 3339).
    pub created_at: String,
    /// Age in seconds (None if `created_at` is unreadable: treated as old).
    pub age_secs: Option<u64>,
}

/// What `reap` found and did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ReapReport {
    /// Builders old enough to delete.
    pub candidates: Vec<Leftover>,
    /// Builders younger than the bound (left alone).
    pub too_young: Vec<Leftover>,
    /// Deleted and confirmed gone.
    pub deleted: Vec<u64>,
    /// Whether deletes were attempted.
    pub deleting: bool,
}

/// Find builders older than `older_than`.
pub async fn find(client: &Client, older_than: Duration) -> Result<ReapReport, DoError> {
    let now = time::OffsetDateTime::now_utc();
    let mut report = ReapReport::default();
    for d in client.list_droplets_by_tag(TAG).await? {
        let Some(bake_tag) = d
            .tags
            .iter()
            .find(|t| t.starts_with(BAKE_TAG_PREFIX))
            .cloned()
        else {
            continue;
        };
        let age_secs = d
            .created_at_time()
            .map(|t| u64::try_from((now - t).whole_seconds()).unwrap_or(0));
        let l = Leftover {
            id: d.id,
            name: d.name.clone(),
            bake_tag,
            created_at: d.created_at.clone(),
            age_secs,
        };
        if age_secs.is_none_or(|a| a >= older_than.as_secs()) {
            report.candidates.push(l);
        } else {
            report.too_young.push(l);
        }
    }
    Ok(report)
}

/// Delete every candidate, then wait for each to answer 404.
pub async fn delete(client: &Client, report: &mut ReapReport, poll: Poll) -> Result<(), DoError> {
    report.deleting = true;
    for l in &report.candidates {
        client.delete_droplet(l.id).await?;
    }
    for l in &report.candidates {
        client.wait_droplet_gone(l.id, poll).await?;
        tracing::info!("droplet {} ({}) destroyed (confirmed 404)", l.id, l.name);
        report.deleted.push(l.id);
    }
    Ok(())
}
