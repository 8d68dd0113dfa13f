//! The VM player: the in-VM part of an `image-builder bake`, played by the
//! simulator so a bake (or a benchmark) runs end to end without a real VM.
//!
//! A bake's user-data carries two presigned URLs (see `provision`): the agent
//! download (the `AGENT_URL` parameter of the agent-install step) and the seal
//! report upload (`report_url` in the finisher's config, a `provision::FinisherConfig`).
//! The player reads them, GETs the agent (recording its sha256), PUTs a seal report
//! (a `provision::SealReport`), and then lets the droplet power itself off, as the
//! real finisher does.

use std::sync::Arc;
use std::time::Duration;

use provision::{SealReport, SealStatus, StepResult, Versions};
use serde::{Deserialize, Serialize};
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

/// The part of cloud-config user-data the player reads.
#[derive(Deserialize)]
struct UserData {
    #[serde(default)]
    write_files: Vec<WrittenFile>,
}

#[derive(Deserialize)]
struct WrittenFile {
    path: String,
    #[serde(default)]
    content: String,
}

/// The `(agent_url, report_url)` an image-builder bake put into user-data.
pub fn bake_urls(user_data: &str) -> (Option<String>, Option<String>) {
    let Ok(user_data) = serde_saphyr::from_str::<UserData>(user_data) else {
        return (None, None);
    };
    let files = &user_data.write_files;
    let agent_url = files
        .iter()
        .find_map(|f| provision::script_param(&f.content, provision::AGENT_URL_PARAM))
        .filter(|url| !url.is_empty());
    let report_url = files
        .iter()
        .find(|f| f.path == provision::FINISHER_CONFIG_PATH)
        .and_then(|f| serde_json::from_str::<provision::FinisherConfig>(&f.content).ok())
        .and_then(|config| config.report_url);
    (agent_url, report_url)
}

/// The seal report the player sends.
fn report(result: ProvisionResult) -> SealReport {
    let step = |name: &str, exit_code, seconds| StepResult {
        name: name.to_owned(),
        exit_code,
        seconds,
    };
    let finished_at = Some("2026-01-01T00:00:00Z".to_owned());
    match result {
        ProvisionResult::Ok => SealReport {
            steps: vec![step("apt-update", 0, 1), step("agent-install", 0, 1)],
            log_tail: vec!["image-builder: sealed".to_owned()],
            versions: Versions {
                cloud_init: "do-sim".to_owned(),
                kernel: String::new(),
                os: "Debian GNU/Linux 12 (bookworm)".to_owned(),
            },
            finished_at,
            ..SealReport::new(SealStatus::Ok)
        },
        ProvisionResult::Failed => SealReport {
            failed_step: Some("apt-install".to_owned()),
            steps: vec![step("apt-install", 100, 2)],
            log_tail: vec!["E: Unable to locate package no-such-package".to_owned()],
            finished_at,
            ..SealReport::failed("step apt-install failed")
        },
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
                    // A report of plain strings and numbers always serializes.
                    let body = serde_json::to_string(&report(play.result)).unwrap_or_default();
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
    use provision::{AgentSource, BakedInfo, FinisherConfig};

    /// user-data shaped as `image-builder render` writes it: the step and the
    /// finisher config as literal blocks.
    fn user_data(agent: &provision::Step, finisher: &FinisherConfig) -> String {
        let block = |text: &str| {
            text.lines()
                .map(|l| format!("    {l}\n"))
                .collect::<String>()
        };
        format!(
            "#cloud-config\nwrite_files:\n- path: /var/lib/image-builder/steps/05-agent-install.sh\n  content: |\n{}  permissions: \"0700\"\n- path: {}\n  content: |\n{}runcmd:\n- [/bin/sh, /x]\n",
            block(&agent.script),
            provision::FINISHER_CONFIG_PATH,
            block(&finisher.to_json()),
        )
    }

    #[test]
    fn urls_are_read_from_the_rendered_scripts() {
        let agent_url = "http://127.0.0.1:9/a?X-Amz-Signature=1&b=\"q'";
        let report_url = "http://127.0.0.1:9/r?s=2";
        let agent =
            provision::agent_install(&AgentSource::Url(agent_url.into()), "ab", "[Unit]\n", "");
        let baked = BakedInfo {
            image: "i".into(),
            spec_sha256: "s".into(),
            image_builder_version: "v".into(),
        };
        let finisher = FinisherConfig::new(Some(report_url.into()), baked.clone());
        let (a, r) = bake_urls(&user_data(&agent, &finisher));
        assert_eq!(a.as_deref(), Some(agent_url));
        assert_eq!(r.as_deref(), Some(report_url));

        // A local bake: the agent is a file, no report URL.
        let agent = provision::agent_install(&AgentSource::Path("/x".into()), "ab", "[Unit]\n", "");
        let finisher = FinisherConfig::new(None, baked);
        assert_eq!(bake_urls(&user_data(&agent, &finisher)), (None, None));
        assert_eq!(
            bake_urls("#!/bin/sh\necho not cloud-config\n"),
            (None, None)
        );
    }

    #[test]
    fn reports_are_seal_reports() {
        for result in [ProvisionResult::Ok, ProvisionResult::Failed] {
            let json = serde_json::to_string(&report(result)).unwrap_or_default();
            let back: SealReport = serde_json::from_str(&json).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(back, report(result));
        }
        assert_eq!(report(ProvisionResult::Ok).status, SealStatus::Ok);
        assert_eq!(report(ProvisionResult::Failed).status, SealStatus::Failed);
    }
}
