//! `image-builder images ls` and `images prune --keep N`: the account's private
//! images whose name starts with a prefix, newest first.

use serde::Serialize;

use do_api::{Client, DoError, Image};

/// An image as `images ls` shows it.
#[derive(Clone, Debug, Serialize)]
pub struct ImageRow {
    /// Id.
    pub id: u64,
    /// Name.
    pub name: String,
    /// Created (RFC 3339).
    pub created_at: String,
    /// Size in GB.
    pub size_gigabytes: Option<f64>,
    /// Regions.
    pub regions: Vec<String>,
    /// Tags.
    pub tags: Vec<String>,
    /// Description.
    pub description: Option<String>,
}

impl From<&Image> for ImageRow {
    fn from(i: &Image) -> Self {
        ImageRow {
            id: i.id,
            name: i.name.clone(),
            created_at: i.created_at.clone(),
            size_gigabytes: i.size_gigabytes,
            regions: i.regions.clone(),
            tags: i.tags.clone(),
            description: i.description.clone(),
        }
    }
}

/// Private images named `prefix*`, newest first.
pub async fn list(client: &Client, prefix: &str) -> Result<Vec<ImageRow>, DoError> {
    Ok(client
        .images_with_prefix(prefix)
        .await?
        .iter()
        .map(ImageRow::from)
        .collect())
}

/// Split images (newest first) into the `keep` newest and the rest.
pub fn split_keep(images: Vec<ImageRow>, keep: usize) -> (Vec<ImageRow>, Vec<ImageRow>) {
    let mut images = images;
    let rest = images.split_off(keep.min(images.len()));
    (images, rest)
}

/// Delete the given images.
pub async fn delete(client: &Client, images: &[ImageRow]) -> Result<(), DoError> {
    for i in images {
        match client.delete_image(i.id).await {
            Ok(()) => tracing::info!("image {} ({}) deleted", i.id, i.name),
            Err(e) if e.is_not_found() => {
                tracing::info!("image {} ({}) was already gone", i.id, i.name)
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
