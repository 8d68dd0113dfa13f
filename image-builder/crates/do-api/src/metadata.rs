//! A tiny client for the droplet metadata service (`http://169.254.169.254`,
//! no auth, plain text): the droplet's own id and tags. vm-agent uses it to
//! learn which droplet it runs on before deleting itself.

use std::time::Duration;

use url::Url;

/// Where the metadata service answers on a droplet.
pub const DEFAULT_METADATA_URL: &str = "http://169.254.169.254";

#[derive(Debug, thiserror::Error)]
pub enum MetadataError {
    #[error("invalid metadata service URL {url:?}: {reason}")]
    BaseUrl { url: String, reason: String },
    #[error("metadata service {url}: {source}")]
    Transport {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("metadata service {url} answered {status}")]
    Status { url: String, status: u16 },
    #[error("metadata service {url} answered {body:?}, which is not a droplet id")]
    BadId { url: String, body: String },
    #[error("cannot build the HTTP client: {0}")]
    HttpClient(#[source] reqwest::Error),
}

/// Client of the droplet metadata service.
#[derive(Debug, Clone)]
pub struct MetadataClient {
    http: reqwest::Client,
    base: Url,
}

const ATTEMPTS: u32 = 3;

impl MetadataClient {
    /// The real service at [`DEFAULT_METADATA_URL`].
    pub fn new() -> Result<Self, MetadataError> {
        Self::new_with_base(DEFAULT_METADATA_URL)
    }

    /// Test seam: any base URL (paths start with `/metadata/v1/`).
    pub fn new_with_base(base: &str) -> Result<Self, MetadataError> {
        let base = Url::parse(base).map_err(|e| MetadataError::BaseUrl {
            url: base.to_owned(),
            reason: e.to_string(),
        })?;
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(5))
            .build()
            .map_err(MetadataError::HttpClient)?;
        Ok(Self { http, base })
    }

    async fn text(&self, path: &str) -> Result<String, MetadataError> {
        let url = format!("{}{}", self.base.as_str().trim_end_matches('/'), path);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let result = match self.http.get(&url).send().await {
                Ok(resp) if resp.status().is_success() => {
                    resp.text()
                        .await
                        .map_err(|source| MetadataError::Transport {
                            url: url.clone(),
                            source,
                        })
                }
                Ok(resp) => Err(MetadataError::Status {
                    url: url.clone(),
                    status: resp.status().as_u16(),
                }),
                Err(source) => Err(MetadataError::Transport {
                    url: url.clone(),
                    source,
                }),
            };
            match result {
                // A 4xx is an answer, not a hiccup.
                Err(MetadataError::Status { status, .. }) if status < 500 => return result,
                Err(e) if attempt < ATTEMPTS => {
                    tracing::debug!(error = %e, attempt, "metadata request failed; retrying");
                    tokio::time::sleep(Duration::from_millis(200 * u64::from(attempt))).await;
                }
                other => return other,
            }
        }
    }

    /// `/metadata/v1/id`.
    pub async fn droplet_id(&self) -> Result<u64, MetadataError> {
        let body = self.text("/metadata/v1/id").await?;
        body.trim().parse().map_err(|_| MetadataError::BadId {
            url: format!("{}metadata/v1/id", self.base),
            body,
        })
    }

    /// `/metadata/v1/tags`, one tag per line.
    pub async fn tags(&self) -> Result<Vec<String>, MetadataError> {
        let body = self.text("/metadata/v1/tags").await?;
        Ok(body
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect())
    }

    /// `/metadata/v1/hostname`.
    pub async fn hostname(&self) -> Result<String, MetadataError> {
        Ok(self.text("/metadata/v1/hostname").await?.trim().to_owned())
    }

    /// `/metadata/v1/region`.
    pub async fn region(&self) -> Result<String, MetadataError> {
        Ok(self.text("/metadata/v1/region").await?.trim().to_owned())
    }
}
