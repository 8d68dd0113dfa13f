//! The VM player: the in-VM part of an `image-builder bake`, played by the
//! simulator so a bake (or a benchmark) runs end to end without a real VM.
//!
//! A bake's user-data carries two presigned URLs (see `provision`):
//! the agent download (`url = "..."` in the agent-install step) and the seal
//! report upload (`REPORT_URL = "..."` in the finisher). The player reads them,
//! GETs the agent (recording its sha256), PUTs a seal report, and then lets the
//! droplet power itself off, as the real finisher does.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::api::Shared;
use crate::config::{PlayVm, ProvisionPlan, ProvisionResult};

/// What the player did for one droplet.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Played {
    /// sha256 (hex) of the agent binary fetched through the presigned GET URL.
    pub agent_sha256: Option<String>,
    /// Why the agent could not be fetched.
    pub agent_error: Option<String>,
    /// HTTP status of the report PUT.
    pub report_status: Option<u16>,
    /// Why the report could not be sent.
    pub report_error: Option<String>,
    /// The report URL found in the user-data.
    pub report_url: Option<String>,
}

/// The `(agent_url, report_url)` an image-builder bake put into user-data.
pub fn bake_urls(user_data: &str) -> (Option<String>, Option<String>) {
    (
        python_string_after(user_data, "url = "),
        python_string_after(user_data, "REPORT_URL = "),
    )
}

/// The JSON/Python string literal following `prefix` at the start of a line
/// (leading whitespace allowed).
fn python_string_after(text: &str, prefix: &str) -> Option<String> {
    text.lines().find_map(|line| {
        let rest = line.trim_start().strip_prefix(prefix)?;
        let mut it = serde_json::Deserializer::from_str(rest.trim()).into_iter::<String>();
        it.next()?.ok()
    })
}

/// The seal report the player sends (same shape as `provision::SealReport`).
fn report(result: ProvisionResult) -> serde_json::Value {
    match result {
        ProvisionResult::Ok => json!({
            "version": 1, "status": "ok",
            "steps": [{"name": "apt-update", "exit_code": 0, "seconds": 1},
                      {"name": "agent-install", "exit_code": 0, "seconds": 1}],
            "log_tail": ["image-builder: sealed"],
            "versions": {"cloud_init": "do-sim", "os": "Debian GNU/Linux 12 (bookworm)"},
            "finished_at": "2026-01-01T00:00:00Z"
        }),
        ProvisionResult::Failed => json!({
            "version": 1, "status": "failed",
            "reason": "step apt-install failed", "failed_step": "apt-install",
            "steps": [{"name": "apt-install", "exit_code": 100, "seconds": 2}],
            "log_tail": ["E: Unable to locate package no-such-package"],
            "finished_at": "2026-01-01T00:00:00Z"
        }),
    }
}

/// Start the player for a freshly created droplet.
pub fn spawn_player(shared: Arc<Shared>, id: u64, user_data: String, play: PlayVm, boot: Duration) {
    tokio::spawn(async move {
        tokio::time::sleep(boot + Duration::from_millis(play.report_after_ms)).await;
        let (agent_url, report_url) = bake_urls(&user_data);
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap_or_default();
        let mut played = Played {
            report_url: report_url.clone(),
            ..Played::default()
        };
        if play.fetch_agent {
            match agent_url {
                Some(url) => match http.get(&url).send().await {
                    Ok(r) if r.status().is_success() => match r.bytes().await {
                        Ok(b) => played.agent_sha256 = Some(hex::encode(Sha256::digest(&b))),
                        Err(e) => played.agent_error = Some(e.to_string()),
                    },
                    Ok(r) => played.agent_error = Some(format!("GET answered {}", r.status())),
                    Err(e) => played.agent_error = Some(e.to_string()),
                },
                None => played.agent_error = Some("no agent URL in the user-data".to_owned()),
            }
        }
        if !play.no_report {
            match &report_url {
                Some(url) => {
                    let body = report(play.result).to_string();
                    match http
                        .put(url)
                        .header("content-type", "application/json")
                        .body(body)
                        .send()
                        .await
                    {
                        Ok(r) => played.report_status = Some(r.status().as_u16()),
                        Err(e) => played.report_error = Some(e.to_string()),
                    }
                }
                None => played.report_error = Some("no report URL in the user-data".to_owned()),
            }
        }
        let mut w = shared.lock();
        w.played.insert(id, played);
        if w.droplets.contains_key(&id) {
            w.provision(
                id,
                ProvisionPlan {
                    result: play.result,
                    after_ms: play.after_ms,
                },
            );
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_read_from_the_rendered_scripts() {
        let ud = "write_files:\n  - content: |\n      import sys\n      url = \"http://127.0.0.1:9/a?X-Amz-Signature=1&b=\\\"q\"\n      REPORT_URL = \"http://127.0.0.1:9/r?s=2\"\n";
        let (a, r) = bake_urls(ud);
        assert_eq!(
            a.as_deref(),
            Some("http://127.0.0.1:9/a?X-Amz-Signature=1&b=\"q")
        );
        assert_eq!(r.as_deref(), Some("http://127.0.0.1:9/r?s=2"));
        assert_eq!(bake_urls("REPORT_URL = None\n"), (None, None));
    }
}
