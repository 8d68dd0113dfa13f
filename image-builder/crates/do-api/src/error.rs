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

    /// 422 `unprocessable_entity`: DigitalOcean understood the request and
    /// refused it (size restricted, droplet limit, pending event, ...). Never
    /// worth a blind retry; [`DoError::refusal`] says which refusal it is.
    pub fn is_unprocessable(&self) -> bool {
        matches!(self, Self::Api { status: 422, id, .. } if id == UNPROCESSABLE_ENTITY)
    }

    /// Which of DigitalOcean's known refusals a 422 is (`None` for any other
    /// error). See [`Refusal`] for why this reads the message.
    pub fn refusal(&self) -> Option<Refusal> {
        match self {
            Self::Api { message, .. } if self.is_unprocessable() => Some(Refusal::of(message)),
            _ => None,
        }
    }
}

/// DigitalOcean's error `id` of every 422 (`shared/responses/unprocessable_entity.yml`
/// in digitalocean/openapi; the same in every real 422 body quoted below).
pub const UNPROCESSABLE_ENTITY: &str = "unprocessable_entity";

/// A 422 refusal the client reacts to.
///
/// DigitalOcean gives every 422 the same `id` ([`UNPROCESSABLE_ENTITY`]) and no
/// field name, so the message is the only discriminator. This is the one place
/// that reads it: each variant matches a fragment of DigitalOcean's own wording
/// (case-insensitive, as DigitalOcean's Terraform provider does in
/// `IsDigitalOceanError`, `digitalocean/util/errors.go`), quoted with where it
/// was seen. The simulator (`tests/do-sim`) emits these wordings from its own
/// copy, so a test against it cannot pass on a sentence only this crate knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// "creating this/these droplet(s) will exceed your droplet limit": full body
    /// `{"id":"unprocessable_entity","message":...}` in OpenRouterLabs/spawn#3059
    /// (2026) and #2516; pry0cc/axiom#422 (2021, through godo).
    DropletLimit,
    /// "This size is currently restricted please send an additional payment to
    /// unlock.": digitalocean/api-v2#36 (2014, after DigitalOcean dropped a
    /// stray leading "Size "). The only published wording; matched on "size is
    /// currently restricted".
    SizeRestricted,
    /// "Size is not available in this region.": full body in OpenRouterLabs/spawn#2768
    /// (2026), ChainSafe/forest-iac#437 (2024, through godo).
    SizeNotInRegion,
    /// "Region is not available": full body in digitalocean/api-v2#41 (2014);
    /// pachadotdev/analogsea#180 (2019).
    RegionNotAvailable,
    /// "You specified an invalid size for Droplet creation.": docker/machine#288,
    /// scrapoxy/scrapoxy#89 (`id=unprocessable_entity`), terraform-provider-digitalocean#60.
    InvalidSize,
    /// "You specified an invalid image for Droplet creation.": pry0cc/axiom#829
    /// (2025), digitalocean/terraform-provider-digitalocean#1035 (2023),
    /// matt-major/do-wrapper#37 (full body). Also what a private image's *name*
    /// instead of its id gets (hashicorp/terraform#4309).
    InvalidImage,
    /// "The image you specified is not available in the selected region, you can
    /// transfer it to this region from the images pages.": quoted in
    /// digitalocean/api-v2#36 (2014; the current wording is unverified).
    ImageNotInRegion,
    /// "Droplet already has a pending event.": full body in hashicorp/packer#1814
    /// (on a snapshot action), digitalocean/api-v2#129; DigitalOcean's Terraform
    /// provider retries on exactly this (`digitalocean/volume/resource_volume_attachment.go`).
    PendingEvent,
    /// "there are currently blocking events processing for one or more of the
    /// droplets": DigitalOceanPHP/Client#164 (2017, the Java client's snapshot
    /// call), hashicorp/packer#3919. The simulator does not play it.
    BlockingEvents,
    /// "Droplet is already powered off": DigitalOcean's Terraform provider
    /// ignores this error of `power_off` (`digitalocean/droplet/resource_droplet.go`;
    /// the status is not shown there). The simulator does not play it.
    AlreadyPoweredOff,
    /// A 422 with any other message.
    Other,
}

impl Refusal {
    /// Each refusal with the fragment of DigitalOcean's message it is known by (lower case).
    const WORDINGS: &[(&str, Refusal)] = &[
        ("will exceed your droplet limit", Refusal::DropletLimit),
        ("size is currently restricted", Refusal::SizeRestricted),
        (
            "size is not available in this region",
            Refusal::SizeNotInRegion,
        ),
        ("region is not available", Refusal::RegionNotAvailable),
        ("invalid size for droplet creation", Refusal::InvalidSize),
        ("invalid image for droplet creation", Refusal::InvalidImage),
        (
            "image you specified is not available in the selected region",
            Refusal::ImageNotInRegion,
        ),
        ("already has a pending event", Refusal::PendingEvent),
        (
            "currently blocking events processing",
            Refusal::BlockingEvents,
        ),
        ("droplet is already powered off", Refusal::AlreadyPoweredOff),
    ];

    /// The refusal a 422's message names.
    pub fn of(message: &str) -> Refusal {
        let message = message.to_lowercase();
        Self::WORDINGS
            .iter()
            .find(|(fragment, _)| message.contains(fragment))
            .map_or(Refusal::Other, |(_, refusal)| *refusal)
    }

    /// The droplet is busy with another action: the same request can succeed
    /// once that action ends.
    pub fn is_busy(self) -> bool {
        matches!(self, Refusal::PendingEvent | Refusal::BlockingEvents)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(status: u16, id: &str, message: &str) -> DoError {
        DoError::Api {
            method: "POST".into(),
            path: "/v2/droplets".into(),
            status,
            id: id.into(),
            message: message.into(),
            request_id: None,
        }
    }

    #[test]
    fn digitaloceans_own_wordings_name_their_refusal() {
        for (message, want) in [
            (
                "creating this/these droplet(s) will exceed your droplet limit",
                Refusal::DropletLimit,
            ),
            (
                "This size is currently restricted please send an additional payment to unlock.",
                Refusal::SizeRestricted,
            ),
            (
                "Size is not available in this region.",
                Refusal::SizeNotInRegion,
            ),
            ("Region is not available", Refusal::RegionNotAvailable),
            (
                "You specified an invalid size for Droplet creation.",
                Refusal::InvalidSize,
            ),
            (
                "You specified an invalid image for Droplet creation.",
                Refusal::InvalidImage,
            ),
            (
                "The image you specified is not available in the selected region, you can transfer it to this region from the images pages.",
                Refusal::ImageNotInRegion,
            ),
            (
                "Droplet already has a pending event.",
                Refusal::PendingEvent,
            ),
            (
                "there are currently blocking events processing for one or more of the droplets",
                Refusal::BlockingEvents,
            ),
            (
                "Droplet is already powered off.",
                Refusal::AlreadyPoweredOff,
            ),
            (
                "Only valid hostname characters are allowed. (a-z, A-Z, 0-9, . and -)",
                Refusal::Other,
            ),
        ] {
            let e = api(422, UNPROCESSABLE_ENTITY, message);
            assert!(e.is_unprocessable(), "{message}");
            assert_eq!(e.refusal(), Some(want), "{message}");
        }
        assert!(Refusal::PendingEvent.is_busy() && Refusal::BlockingEvents.is_busy());
        assert!(!Refusal::DropletLimit.is_busy());
    }

    #[test]
    fn only_a_422_unprocessable_entity_is_a_refusal() {
        let limit = "creating this/these droplet(s) will exceed your droplet limit";
        assert_eq!(api(500, "server_error", limit).refusal(), None);
        assert_eq!(api(422, "validation_failed", limit).refusal(), None);
        assert!(!api(403, "forbidden", limit).is_unprocessable());
    }
}
