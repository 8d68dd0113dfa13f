//! The HTTP core: auth, retries, pacing, pagination, error decoding, counting.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderMap, RETRY_AFTER};
use reqwest::{Method, StatusCode};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use url::Url;

use super::error::DoError;
use super::models::RateLimit;
use super::retry::RetryPolicy;
use super::token::Token;

/// DigitalOcean's API.
pub const DEFAULT_API_URL: &str = "https://api.digitalocean.com";
/// Environment variable that overrides the base URL (as Packer's `api_url`).
pub const API_URL_ENV: &str = "DIGITALOCEAN_API_URL";
/// Items per page when collecting lists (the contract's maximum).
pub const DEFAULT_PAGE_SIZE: u32 = 200;

const USER_AGENT: &str = concat!("image-builder/", env!("CARGO_PKG_VERSION"));

/// Whether a call may be re-sent after an error whose outcome is unknown
/// (5xx, connection lost mid-request).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Idempotency {
    /// GET, PUT, DELETE, and POSTs whose repetition changes nothing more.
    Idempotent,
    /// Creates: re-sent only when the request provably was not processed
    /// (429, connection refused).
    Once,
}

/// Counters for benchmarks and tests.
#[derive(Debug, Default)]
struct Stats {
    requests: AtomicU64,
    retries: AtomicU64,
}

/// A DigitalOcean API client. Cheap to clone (clones share the connection
/// pool, counters and rate-limit state).
#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    base: Url,
    token: Token,
    policy: RetryPolicy,
    page_size: u32,
    stats: Arc<Stats>,
    rate: Arc<Mutex<Option<RateLimit>>>,
}

/// A response that made it back (any status).
pub(crate) struct Raw {
    pub status: StatusCode,
    pub body: bytes::Bytes,
}

impl Client {
    /// A client for `https://api.digitalocean.com` with the default policy.
    pub fn new(token: Token) -> Result<Self, DoError> {
        Self::new_with_base(DEFAULT_API_URL, token, RetryPolicy::default())
    }

    /// The test seam: any base URL (a simulator, a contract proxy), any policy.
    pub fn new_with_base(base: &str, token: Token, policy: RetryPolicy) -> Result<Self, DoError> {
        let base = Url::parse(base).map_err(|e| DoError::BaseUrl {
            url: base.to_owned(),
            reason: e.to_string(),
        })?;
        if !matches!(base.scheme(), "http" | "https") || base.cannot_be_a_base() {
            return Err(DoError::BaseUrl {
                url: base.to_string(),
                reason: "expected an http(s) URL".to_owned(),
            });
        }
        // CA roots compiled in (Mozilla's, from webpki-root-certs), merged with the system
        // store that reqwest's platform verifier reads: the static vm-agent verifies
        // api.digitalocean.com even on an image without ca-certificates.
        let roots = webpki_root_certs::TLS_SERVER_ROOT_CERTS
            .iter()
            .filter_map(|der| reqwest::Certificate::from_der(der.as_ref()).ok());
        let http = reqwest::Client::builder()
            .user_agent(USER_AGENT)
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(60))
            .tls_certs_merge(roots)
            .build()
            .map_err(DoError::HttpClient)?;
        Ok(Self {
            http,
            base,
            token,
            policy,
            page_size: DEFAULT_PAGE_SIZE,
            stats: Arc::default(),
            rate: Arc::default(),
        })
    }

    /// Token from `DIGITALOCEAN_TOKEN`/`DIGITALOCEAN_ACCESS_TOKEN`, base URL from
    /// `DIGITALOCEAN_API_URL` (default [`DEFAULT_API_URL`]).
    pub fn from_env() -> Result<Self, DoError> {
        let token = Token::from_env()?;
        let base = std::env::var(API_URL_ENV)
            .ok()
            .filter(|v| !v.trim().is_empty())
            .unwrap_or_else(|| DEFAULT_API_URL.to_owned());
        Self::new_with_base(&base, token, RetryPolicy::default())
    }

    /// Items requested per page when collecting lists (1..=200).
    pub fn with_page_size(mut self, n: u32) -> Self {
        self.page_size = n.clamp(1, 200);
        self
    }

    pub fn base_url(&self) -> &Url {
        &self.base
    }

    pub fn policy(&self) -> &RetryPolicy {
        &self.policy
    }

    /// HTTP requests sent so far (every attempt counts), by this client and its clones.
    pub fn request_count(&self) -> u64 {
        self.stats.requests.load(Ordering::Relaxed)
    }

    /// How many of those were retries.
    pub fn retry_count(&self) -> u64 {
        self.stats.retries.load(Ordering::Relaxed)
    }

    /// The rate-limit headers of the last response, if any were seen.
    pub fn rate_limit(&self) -> Option<RateLimit> {
        *self.rate.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn url(&self, path: &str, query: &[(&str, String)]) -> Result<Url, DoError> {
        let joined = format!("{}{}", self.base.as_str().trim_end_matches('/'), path);
        let mut url = Url::parse(&joined).map_err(|e| DoError::BaseUrl {
            url: joined.clone(),
            reason: e.to_string(),
        })?;
        if !query.is_empty() {
            let mut pairs = url.query_pairs_mut();
            for (k, v) in query {
                pairs.append_pair(k, v);
            }
        }
        Ok(url)
    }

    async fn pace(&self) {
        let Some(rate) = self.rate_limit() else {
            return;
        };
        if let Some(wait) = self
            .policy
            .pace(rate.remaining, rate.reset, SystemTime::now())
        {
            tracing::debug!(
                remaining = rate.remaining,
                wait_ms = wait.as_millis() as u64,
                "pacing DigitalOcean API requests"
            );
            tokio::time::sleep(wait).await;
        }
    }

    fn record_rate(&self, headers: &HeaderMap) {
        let num = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<i64>().ok())
        };
        if let (Some(limit), Some(remaining), Some(reset)) = (
            num("ratelimit-limit"),
            num("ratelimit-remaining"),
            num("ratelimit-reset"),
        ) {
            *self.rate.lock().unwrap_or_else(|e| e.into_inner()) = Some(RateLimit {
                limit: u64::try_from(limit).unwrap_or(0),
                remaining: u64::try_from(remaining).unwrap_or(0),
                reset,
            });
        }
    }

    /// Send one request with the retry policy. Returns the successful (2xx)
    /// response, or the error of the last attempt.
    pub(crate) async fn send(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<&Value>,
        idempotency: Idempotency,
    ) -> Result<Raw, DoError> {
        let url = self.url(path, query)?;
        let mut attempt = 0u32;
        loop {
            self.pace().await;
            self.stats.requests.fetch_add(1, Ordering::Relaxed);
            if attempt > 0 {
                self.stats.retries.fetch_add(1, Ordering::Relaxed);
            }
            let mut req = self
                .http
                .request(method.clone(), url.clone())
                .header(AUTHORIZATION, format!("Bearer {}", self.token.expose()));
            if let Some(b) = body {
                req = req
                    .header(CONTENT_TYPE, "application/json")
                    .body(b.to_string());
            }
            let outcome = match req.send().await {
                Ok(resp) => {
                    let status = resp.status();
                    let headers = resp.headers().clone();
                    self.record_rate(&headers);
                    match resp.bytes().await {
                        Ok(body) => Ok((status, headers, body)),
                        Err(e) => Err(e),
                    }
                }
                Err(e) => Err(e),
            };
            let (wait, err) = match outcome {
                Ok((status, _, body)) if status.is_success() => return Ok(Raw { status, body }),
                Ok((status, headers, body)) => {
                    let err = api_error(&method, path, status, &headers, &body);
                    let wait = if status == StatusCode::TOO_MANY_REQUESTS {
                        // Refused before processing: safe to re-send, whatever the method.
                        let ra = headers.get(RETRY_AFTER).and_then(|v| v.to_str().ok());
                        Some(
                            self.policy
                                .rate_limited_delay(ra, attempt, SystemTime::now()),
                        )
                    } else if status.is_server_error()
                        && status != StatusCode::NOT_IMPLEMENTED
                        && idempotency == Idempotency::Idempotent
                    {
                        Some(self.policy.delay(attempt))
                    } else {
                        None
                    };
                    (wait, err)
                }
                Err(e) => {
                    // A refused connection never reached the server.
                    let safe = idempotency == Idempotency::Idempotent || e.is_connect();
                    let wait = safe.then(|| self.policy.delay(attempt));
                    (
                        wait,
                        DoError::Transport {
                            method: method.to_string(),
                            path: path.to_owned(),
                            source: e,
                        },
                    )
                }
            };
            match wait {
                Some(wait) if self.policy.allows_retry(attempt) => {
                    tracing::warn!(%method, path, attempt = attempt + 1, wait_ms = wait.as_millis() as u64, error = %err, "retrying DigitalOcean API call");
                    tokio::time::sleep(wait).await;
                    attempt += 1;
                }
                _ => return Err(err),
            }
        }
    }

    pub(crate) fn decode<T: DeserializeOwned>(
        method: &Method,
        path: &str,
        raw: &Raw,
    ) -> Result<T, DoError> {
        serde_json::from_slice(&raw.body).map_err(|source| DoError::Decode {
            method: method.to_string(),
            path: path.to_owned(),
            status: raw.status.as_u16(),
            source,
        })
    }

    pub(crate) async fn get<T: DeserializeOwned>(
        &self,
        path: &str,
        query: &[(&str, String)],
    ) -> Result<T, DoError> {
        let raw = self
            .send(Method::GET, path, query, None, Idempotency::Idempotent)
            .await?;
        Self::decode(&Method::GET, path, &raw)
    }

    pub(crate) async fn write<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: &B,
        idempotency: Idempotency,
    ) -> Result<T, DoError> {
        let body = serde_json::to_value(body).map_err(|source| DoError::Decode {
            method: method.to_string(),
            path: path.to_owned(),
            status: 0,
            source,
        })?;
        let raw = self
            .send(method.clone(), path, &[], Some(&body), idempotency)
            .await?;
        Self::decode(&method, path, &raw)
    }

    /// A write whose success answer has no body we read (204 or ignored).
    pub(crate) async fn write_no_content<B: Serialize>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
        idempotency: Idempotency,
    ) -> Result<(), DoError> {
        let body = match body {
            Some(b) => Some(serde_json::to_value(b).map_err(|source| DoError::Decode {
                method: method.to_string(),
                path: path.to_owned(),
                status: 0,
                source,
            })?),
            None => None,
        };
        self.send(method, path, &[], body.as_ref(), idempotency)
            .await?;
        Ok(())
    }

    /// Collect every page of a list: items under `key`, following
    /// `links.pages.next` (its `page` number, against our own base URL, so a
    /// proxy in front of the API stays in the path).
    pub(crate) async fn get_all<T: DeserializeOwned>(
        &self,
        path: &str,
        query: &[(&str, String)],
        key: &str,
    ) -> Result<Vec<T>, DoError> {
        let mut out = Vec::new();
        let mut page: u64 = 1;
        loop {
            let mut q: Vec<(&str, String)> = query.to_vec();
            q.push(("page", page.to_string()));
            q.push(("per_page", self.page_size.to_string()));
            let raw = self
                .send(Method::GET, path, &q, None, Idempotency::Idempotent)
                .await?;
            let mut v: Value = Self::decode(&Method::GET, path, &raw)?;
            let items = v
                .get_mut(key)
                .map(Value::take)
                .unwrap_or(Value::Array(Vec::new()));
            let items: Vec<T> =
                serde_json::from_value(items).map_err(|source| DoError::Decode {
                    method: "GET".to_owned(),
                    path: path.to_owned(),
                    status: raw.status.as_u16(),
                    source,
                })?;
            out.extend(items);
            let next = v
                .pointer("/links/pages/next")
                .and_then(Value::as_str)
                .and_then(|u| Url::parse(u).ok())
                .and_then(|u| {
                    u.query_pairs()
                        .find(|(k, _)| k == "page")
                        .and_then(|(_, p)| p.parse::<u64>().ok())
                });
            match next {
                Some(n) if n > page => page = n,
                _ => return Ok(out),
            }
        }
    }
}

/// Build the error for a non-2xx answer: DO's `{id, message, request_id}` when
/// the body has it (request id falling back to `x-request-id`), else the body text.
fn api_error(
    method: &Method,
    path: &str,
    status: StatusCode,
    headers: &HeaderMap,
    body: &[u8],
) -> DoError {
    #[derive(serde::Deserialize)]
    struct ErrorBody {
        id: Option<String>,
        message: Option<String>,
        request_id: Option<String>,
    }
    let parsed: Option<ErrorBody> = serde_json::from_slice(body).ok();
    let header_rid = headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let (id, message, request_id) = match parsed {
        Some(ErrorBody {
            id: Some(id),
            message,
            request_id,
        }) => (id, message.unwrap_or_default(), request_id.or(header_rid)),
        _ => {
            let text = String::from_utf8_lossy(body);
            let text: String = text.chars().take(2000).collect();
            (
                status
                    .canonical_reason()
                    .unwrap_or("error")
                    .to_lowercase()
                    .replace(' ', "_"),
                text,
                header_rid,
            )
        }
    };
    DoError::Api {
        method: method.to_string(),
        path: path.to_owned(),
        status: status.as_u16(),
        id,
        message,
        request_id,
    }
}
