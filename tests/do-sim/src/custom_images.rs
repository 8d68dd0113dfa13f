//! `POST /v2/images`: custom image imports, held to what DigitalOcean documents.
//!
//! - The body is `image_new_custom`: `name`, `url` and `region` required, `distribution`
//!   one of the API's names, `tags`. The answer is 202 with the image `NEW`.
//! - Then, as DigitalOcean does, the image is fetched from the URL: a `HEAD` first
//!   (DigitalOcean: "Importing a custom image by URL fails if the image is served by a
//!   CDN that doesn't support HEAD requests"), then a `GET`. While it downloads the
//!   image is `pending`; it becomes `available` in its region when the file is one of
//!   the accepted formats (raw with an MBR or GPT, qcow2, vhdx, vdi, vmdk, optionally
//!   gzip or bzip2) and under 100 GB; otherwise it keeps its status and gets an
//!   `error_message` (the wording is the simulator's own: DigitalOcean's is not
//!   documented).
//!
//! The import's status lives in [`crate::state::World::imports`]; the image itself is
//! in `images` from the start, so lists and `GET /v2/images/{id}` show it.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Extension, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde::Deserialize;
use serde_json::json;

use crate::api::{AppState, ReqId, Shared, error_response, json_response, unprocessable};
use crate::catalog;
use crate::state::Image;

/// Largest image DigitalOcean imports (after decompression).
pub const MAX_IMAGE_BYTES: u64 = 100 * 1000 * 1000 * 1000;

/// Where an import stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Import {
    /// `NEW`, `pending` or `available`.
    pub status: &'static str,
    /// Why it failed (empty while it has not).
    pub error_message: String,
    /// The URL it was imported from.
    pub url: String,
}

#[derive(Deserialize)]
struct CustomImageCreate {
    name: Option<String>,
    url: Option<String>,
    region: Option<String>,
    distribution: Option<String>,
    description: Option<String>,
    #[serde(default)]
    tags: Vec<String>,
}

/// `POST /v2/images`.
pub async fn create(
    State(s): State<AppState>,
    Extension(rid): Extension<ReqId>,
    body: Bytes,
) -> Response {
    let req: CustomImageCreate = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return error_response(
                StatusCode::BAD_REQUEST,
                "bad_request",
                &format!("error parsing request body: {e}"),
                &rid.0,
            );
        }
    };
    let (Some(name), Some(url), Some(region)) = (req.name, req.url, req.region) else {
        return unprocessable(&rid, "name, url and region are required");
    };
    if name.is_empty() {
        return unprocessable(&rid, "name must not be empty");
    }
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return unprocessable(&rid, "url must be an http or https URL");
    }
    if !catalog::region(&region).is_some_and(|r| r.available) {
        return unprocessable(&rid, "You specified an invalid region.");
    }
    let distribution = req.distribution.unwrap_or_else(|| "Unknown".to_owned());
    if !crate::api::DISTRIBUTIONS.contains(&distribution.as_str()) {
        return unprocessable(&rid, &format!("invalid distribution {distribution:?}"));
    }
    if let Some(bad) = req.tags.iter().find(|t| !crate::api::valid_tag(t)) {
        return unprocessable(&rid, &format!("invalid tag {bad:?}"));
    }
    let (id, image_json) = {
        let mut w = s.lock();
        let id = w.alloc_image_id();
        let created_at = w.now_wall();
        for t in &req.tags {
            w.tags.insert(t.clone(), ());
        }
        w.images.insert(
            id,
            Image {
                id,
                name,
                kind: "custom",
                distribution,
                slug: None,
                public: false,
                regions: Vec::new(),
                created_at,
                min_disk_size: 0,
                size_gigabytes: 0.0,
                description: req.description.unwrap_or_default(),
                tags: req.tags,
                source_droplet: None,
            },
        );
        w.imports.insert(
            id,
            Import {
                status: "NEW",
                error_message: String::new(),
                url: url.clone(),
            },
        );
        let image = w.images.get(&id).map(|i| w.image_json(i));
        (id, image.unwrap_or_default())
    };
    tokio::spawn(fetch(s.clone(), id, url, region));
    json_response(StatusCode::ACCEPTED, &json!({"image": image_json}))
}

/// Download the image and settle the import.
async fn fetch(shared: Arc<Shared>, id: u64, url: String, region: String) {
    set_status(&shared, id, "pending");
    let result = download(&url).await;
    let mut w = shared.lock();
    match result {
        Ok(bytes) => {
            if let Some(image) = w.images.get_mut(&id) {
                image.regions = vec![region];
                image.size_gigabytes = (bytes as f64 / 1e9 * 100.0).ceil() / 100.0;
                image.min_disk_size = (bytes / 1_000_000_000 + 1).max(1);
            }
            if let Some(import) = w.imports.get_mut(&id) {
                import.status = "available";
            }
        }
        Err(message) => {
            if let Some(import) = w.imports.get_mut(&id) {
                import.error_message = message;
            }
        }
    }
}

fn set_status(shared: &Shared, id: u64, status: &'static str) {
    if let Some(import) = shared.lock().imports.get_mut(&id) {
        import.status = status;
    }
}

/// HEAD, then GET `url`; the image's size in bytes, or why it cannot be imported.
async fn download(url: &str) -> Result<u64, String> {
    let http = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(600))
        .build()
        .map_err(|e| format!("cannot fetch the image: {e}"))?;
    let head = http
        .head(url)
        .send()
        .await
        .map_err(|e| format!("cannot reach the image URL: {e}"))?;
    if !head.status().is_success() {
        return Err(format!(
            "the image URL answered HEAD with {}; it must answer HEAD requests",
            head.status()
        ));
    }
    let got = http
        .get(url)
        .send()
        .await
        .map_err(|e| format!("cannot download the image: {e}"))?;
    if !got.status().is_success() {
        return Err(format!("downloading the image failed: {}", got.status()));
    }
    let body = got
        .bytes()
        .await
        .map_err(|e| format!("downloading the image failed: {e}"))?;
    check_format(&body)?;
    Ok(body.len() as u64)
}

/// Accept what DigitalOcean accepts, by magic bytes: raw with an MBR/GPT, qcow2
/// (virtual size under 100 GB), vhdx, vdi, vmdk, or gzip/bzip2 of any of them.
pub fn check_format(b: &[u8]) -> Result<(), String> {
    let at = |off: usize, magic: &[u8]| b.get(off..off + magic.len()) == Some(magic);
    if at(0, b"QFI\xfb") {
        let size = b
            .get(24..32)
            .and_then(|s| s.try_into().ok())
            .map(u64::from_be_bytes)
            .unwrap_or(0);
        return if size < MAX_IMAGE_BYTES {
            Ok(())
        } else {
            Err(format!(
                "the image is {size} bytes when decompressed; the limit is 100 GB"
            ))
        };
    }
    let known = at(0, b"\x1f\x8b") // gzip
        || at(0, b"BZh") // bzip2
        || at(0, b"vhdxfile")
        || at(0, b"KDMV") // vmdk
        || at(0x40, b"\x7f\x10\xda\xbe") // vdi
        || (b.len() >= 1024 && b.len().is_multiple_of(512) && at(510, b"\x55\xaa")); // raw, MBR or protective MBR
    if known {
        Ok(())
    } else {
        Err("the image is not in a supported format (raw with a partition table, qcow2, vhdx, vdi or vmdk, optionally gzip or bzip2)".to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_are_recognised_by_their_magic() {
        let mut qcow = b"QFI\xfb\0\0\0\x03".to_vec();
        qcow.resize(64, 0);
        qcow[24..32].copy_from_slice(&(4u64 << 30).to_be_bytes());
        assert_eq!(check_format(&qcow), Ok(()));
        qcow[24..32].copy_from_slice(&(200u64 << 30).to_be_bytes());
        assert!(check_format(&qcow).is_err_and(|e| e.contains("100 GB")));
        let mut raw = vec![0u8; 4096];
        assert!(check_format(&raw).is_err(), "no partition table");
        raw[510] = 0x55;
        raw[511] = 0xaa;
        assert_eq!(check_format(&raw), Ok(()));
        assert_eq!(check_format(b"\x1f\x8b\x08\0"), Ok(()));
        assert!(check_format(b"<html>not an image</html>").is_err());
    }
}
