//! Custom images: `POST /v2/images` imports a disk image that DigitalOcean downloads
//! from a URL (raw, qcow2, vhdx, vdi or vmdk, optionally gzip/bzip2, under 100 GB);
//! the image starts as `NEW` and is usable once `available`.

use std::time::Instant;

use reqwest::Method;
use serde::{Deserialize, Serialize};

use super::client::{Client, Idempotency};
use super::droplets::Poll;
use super::error::DoError;
use super::models::Image;

/// Body of `POST /v2/images` (`image_new_custom`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CustomImageCreate {
    /// The image's name.
    pub name: String,
    /// Where DigitalOcean downloads the image from (it sends HEAD, then GET).
    pub url: String,
    /// The region the image is imported into.
    pub region: String,
    /// e.g. `Debian`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub distribution: Option<String>,
    /// Free text.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Tags applied to the image.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
}

#[derive(Deserialize)]
struct ImageEnvelope {
    image: Image,
}

/// Where an import stands, from the image's `status` and `error_message`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImportState {
    /// `NEW` or `pending`: still downloading or converting.
    InProgress,
    /// `available`: droplets can be created from it.
    Available,
    /// An `error_message`, or `deleted`/`retired`: the import failed.
    Failed,
}

impl ImportState {
    /// The state of `image`.
    pub fn of(image: &Image) -> ImportState {
        let failed = image
            .error_message
            .as_deref()
            .is_some_and(|m| !m.is_empty());
        match image.status.as_deref() {
            _ if failed => ImportState::Failed,
            Some("available") => ImportState::Available,
            Some("deleted" | "retired") => ImportState::Failed,
            _ => ImportState::InProgress,
        }
    }
}

impl Client {
    /// `POST /v2/images`: sent once (a create; re-sent only when provably not
    /// processed). The image comes back `NEW`.
    pub async fn create_custom_image(&self, req: &CustomImageCreate) -> Result<Image, DoError> {
        let env: ImageEnvelope = self
            .write(Method::POST, "/v2/images", req, Idempotency::Once)
            .await?;
        Ok(env.image)
    }

    /// Poll `GET /v2/images/{id}` until the import is settled ([`ImportState`] not
    /// `InProgress`) and return the image; the caller reads its state. Times out
    /// after `poll.timeout`.
    pub async fn wait_custom_image(&self, id: u64, poll: Poll) -> Result<Image, DoError> {
        let start = Instant::now();
        loop {
            let image = self.get_image(id).await?;
            if ImportState::of(&image) != ImportState::InProgress {
                return Ok(image);
            }
            if start.elapsed() >= poll.timeout {
                return Err(DoError::Timeout {
                    what: format!("custom image {id} to be imported"),
                    after: poll.timeout,
                });
            }
            tokio::time::sleep(poll.interval).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(status: Option<&str>, error: Option<&str>) -> Image {
        serde_json::from_value(serde_json::json!({
            "id": 1, "name": "n", "created_at": "2026-01-01T00:00:00Z",
            "status": status, "error_message": error,
        }))
        .unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn an_import_is_settled_when_available_or_failed() {
        assert_eq!(
            ImportState::of(&image(Some("NEW"), Some(""))),
            ImportState::InProgress
        );
        assert_eq!(
            ImportState::of(&image(Some("pending"), None)),
            ImportState::InProgress
        );
        assert_eq!(
            ImportState::of(&image(Some("available"), Some(""))),
            ImportState::Available
        );
        assert_eq!(
            ImportState::of(&image(Some("NEW"), Some("invalid image format"))),
            ImportState::Failed
        );
        assert_eq!(
            ImportState::of(&image(Some("deleted"), None)),
            ImportState::Failed
        );
    }

    #[test]
    fn the_create_body_is_the_api_s_image_new_custom() {
        let body = CustomImageCreate {
            name: "golden".into(),
            url: "https://space.nyc3.digitaloceanspaces.com/imports/golden.qcow2".into(),
            region: "nyc3".into(),
            distribution: Some("Debian".into()),
            description: None,
            tags: vec![],
        };
        assert_eq!(
            serde_json::to_value(&body).unwrap_or_default(),
            serde_json::json!({
                "name": "golden",
                "url": "https://space.nyc3.digitaloceanspaces.com/imports/golden.qcow2",
                "region": "nyc3",
                "distribution": "Debian",
            })
        );
    }
}
