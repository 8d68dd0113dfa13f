//! Errors of the DigitalOcean API client. Every variant names the request
//! (method and path) or the resource it is about.

use std::path::PathBuf;
use std::time::Duration;

/// Where a token could not be had from, and why.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error(
        "no DigitalOcean token: set DIGITALOCEAN_TOKEN (or DIGITALOCEAN_ACCESS_TOKEN), or use a token file with mode 0600"
    )]
    Missing,
    #[error("the DigitalOcean token from {origin} is empty")]
    Empty { origin: String },
    #[error("the DigitalOcean token from {origin} contains whitespace or control characters")]
    Invalid { origin: String },
    #[error("cannot read DigitalOcean token file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "refusing DigitalOcean token file {path}: its mode is {mode:04o}, readable by group or others; run `chmod 600 {path}`"
    )]
    Mode { path: PathBuf, mode: u32 },
}

/// An error from a DigitalOcean API call.
#[derive(Debug, thiserror::Error)]
pub enum DoError {
    /// DigitalOcean answered with an error status. `id`, `message` and
    /// `request_id` come from its error body (`request_id` falls back to the
    /// `x-request-id` header).
    #[error("DigitalOcean API {method} {path} answered {status} {id}: {message} (request id {})", request_id.as_deref().unwrap_or("none"))]
    Api {
        method: String,
        path: String,
        status: u16,
        id: String,
        message: String,
        request_id: Option<String>,
    },
    /// The request could not be sent or its response not read.
    #[error("DigitalOcean API {method} {path}: {source}")]
    Transport {
        method: String,
        path: String,
        #[source]
        source: reqwest::Error,
    },
    /// The response was not the JSON the contract promises.
    #[error("DigitalOcean API {method} {path}: cannot decode the {status} response: {source}")]
    Decode {
        method: String,
        path: String,
        status: u16,
        #[source]
        source: serde_json::Error,
    },
    #[error(transparent)]
    Token(#[from] TokenError),
    #[error("invalid DigitalOcean API base URL {url:?}: {reason}")]
    BaseUrl { url: String, reason: String },
    #[error("cannot build the HTTP client: {0}")]
    HttpClient(#[source] reqwest::Error),
    /// An action ended `errored` (reported at once, not after a timeout).
    #[error("DigitalOcean action {action_id} ({kind}) on {resource} errored")]
    ActionErrored {
        action_id: u64,
        kind: crate::models::ActionType,
        resource: String,
    },
    #[error("timed out after {after:?} waiting for {what}")]
    Timeout { what: String, after: Duration },
    /// A droplet create failed in a way that leaves its outcome unknown, and
    /// reconciling by tag found nothing after every attempt.
    #[error(
        "creating droplet {name:?} failed {attempts} times and no droplet tagged {tag:?} exists; last error: {last}"
    )]
    CreateNotReconciled {
        name: String,
        tag: String,
        attempts: u32,
        #[source]
        last: Box<DoError>,
    },
    /// A reconciled create needs a tag that names only this create.
    #[error("droplet create for {name:?} is missing its reconcile tag {tag:?} in `tags`")]
    MissingReconcileTag { name: String, tag: String },
}

impl DoError {
    /// HTTP status of an API error.
    pub fn status(&self) -> Option<u16> {
        match self {
            Self::Api { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// DigitalOcean's error id (`not_found`, `unprocessable_entity`, ...).
    pub fn api_id(&self) -> Option<&str> {
        match self {
            Self::Api { id, .. } => Some(id),
            _ => None,
        }
    }

    pub fn request_id(&self) -> Option<&str> {
        match self {
            Self::Api { request_id, .. } => request_id.as_deref(),
            _ => None,
        }
    }

    pub fn is_not_found(&self) -> bool {
        self.status() == Some(404)
    }

    /// 422: the request was understood and refused (size restricted, droplet
    /// limit, pending event, ...). Never worth a blind retry.
    pub fn is_unprocessable(&self) -> bool {
        self.status() == Some(422)
    }
}
