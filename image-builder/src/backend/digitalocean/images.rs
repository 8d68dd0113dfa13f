//! `image-builder images ls` (the account's private images whose name starts
//! with a prefix, newest first) and `images prune SPEC --keep N`.
//!
//! Prune deletes only what a bake of that spec made: private images that carry
//! the [`TAG`] tag *and* whose whole name fits the spec's `snapshot.name`
//! template ([`Family`]). A name prefix alone is not enough: `ci-worker` is a
//! prefix of the neighbour family `ci-worker-gpu-*` and of images no bake made.

use serde::Serialize;

use crate::spec::ImageSpec;
use do_api::{Client, DoError, Image};

use super::TAG;

/// One piece of a `snapshot.name` template.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Part {
    /// Text every name of the family has here (including the filled `{name}`).
    Fixed(String),
    /// `{timestamp}`: UTC `YYYYMMDD-HHMMSS`.
    Timestamp,
    /// `{date}`: `YYYYMMDD`.
    Date,
    /// `{git_sha}`: 12 hex digits, or `nogit`.
    GitSha,
    /// `{spec_hash}`: 12 hex digits (it changes with every edit of the spec, and
    /// the family spans those edits).
    SpecHash,
}

/// The names one spec's bakes give their images: the `snapshot.name` template
/// with `{name}` filled in, each other placeholder standing for the exact shape
/// [`crate::bake::image_name`] fills it with. A name matches only as a whole.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Family {
    template: String,
    parts: Vec<Part>,
}

impl Family {
    /// The family of a spec's images.
    pub fn of_spec(spec: &ImageSpec) -> Family {
        Family::new(&spec.snapshot.name.value, &spec.name.value)
    }

    /// The family of `template` (a checked `snapshot.name`) for a spec named `name`.
    pub fn new(template: &str, name: &str) -> Family {
        let mut parts = Vec::new();
        let mut fixed = String::new();
        let mut rest = template;
        while let Some(open) = rest.find('{') {
            fixed.push_str(&rest[..open]);
            let after = &rest[open + 1..];
            let Some(close) = after.find('}') else {
                fixed.push_str(&rest[open..]);
                rest = "";
                break;
            };
            let variable = match &after[..close] {
                "name" => {
                    fixed.push_str(name);
                    None
                }
                "timestamp" => Some(Part::Timestamp),
                "date" => Some(Part::Date),
                "git_sha" => Some(Part::GitSha),
                "spec_hash" => Some(Part::SpecHash),
                // Not a placeholder (the spec check rejects these): kept as text,
                // as filling the template keeps it.
                other => {
                    fixed.push('{');
                    fixed.push_str(other);
                    fixed.push('}');
                    None
                }
            };
            if let Some(part) = variable {
                if !fixed.is_empty() {
                    parts.push(Part::Fixed(std::mem::take(&mut fixed)));
                }
                parts.push(part);
            }
            rest = &after[close + 1..];
        }
        fixed.push_str(rest);
        if !fixed.is_empty() {
            parts.push(Part::Fixed(fixed));
        }
        Family {
            template: template.replace("{name}", name),
            parts,
        }
    }

    /// Whether `image_name` is a name of this family.
    pub fn matches(&self, image_name: &str) -> bool {
        fits(&self.parts, image_name)
    }
}

impl std::fmt::Display for Family {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.template)
    }
}

fn fits(parts: &[Part], name: &str) -> bool {
    let Some((part, rest)) = parts.split_first() else {
        return name.is_empty();
    };
    if let Part::Fixed(text) = part {
        return name
            .strip_prefix(text.as_str())
            .is_some_and(|tail| fits(rest, tail));
    }
    part.lengths().iter().any(|&len| {
        name.get(..len)
            .is_some_and(|head| part.shaped(head) && fits(rest, &name[len..]))
    })
}

impl Part {
    /// The lengths a variable part can have.
    fn lengths(&self) -> &'static [usize] {
        match self {
            Part::Fixed(_) => &[],
            Part::Timestamp => &[15],
            Part::Date => &[8],
            Part::GitSha => &[12, 5],
            Part::SpecHash => &[12],
        }
    }

    /// Whether `text` is what [`crate::bake::image_name`] fills this part with.
    fn shaped(&self, text: &str) -> bool {
        let bytes = text.as_bytes();
        let digits = |b: &[u8]| b.iter().all(u8::is_ascii_digit);
        let hex = |b: &[u8]| b.iter().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'));
        match self {
            Part::Fixed(fixed) => text == fixed,
            Part::Timestamp => {
                bytes.len() == 15 && digits(&bytes[..8]) && bytes[8] == b'-' && digits(&bytes[9..])
            }
            Part::Date => bytes.len() == 8 && digits(bytes),
            Part::GitSha => (bytes.len() == 12 && hex(bytes)) || text == "nogit",
            Part::SpecHash => bytes.len() == 12 && hex(bytes),
        }
    }
}

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

/// Private images named `prefix*`, newest first (any tags).
pub async fn list(client: &Client, prefix: &str) -> Result<Vec<ImageRow>, DoError> {
    Ok(client
        .images_with_prefix(prefix)
        .await?
        .iter()
        .map(ImageRow::from)
        .collect())
}

/// The private images of a family, newest first: `tagged` carry [`TAG`] (a
/// bake made them; prune may delete them), `untagged` only have a family name
/// (never deleted; listed so the user knows why they stay).
pub struct FamilyImages {
    pub tagged: Vec<ImageRow>,
    pub untagged: Vec<ImageRow>,
}

/// The account's private images of `family`.
pub async fn family(client: &Client, family: &Family) -> Result<FamilyImages, DoError> {
    let (tagged, untagged) = client
        .images_with_prefix("")
        .await?
        .iter()
        .filter(|i| family.matches(&i.name))
        .map(ImageRow::from)
        .partition(|i| i.tags.iter().any(|t| t == TAG));
    Ok(FamilyImages { tagged, untagged })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_family_is_its_template_with_name_filled_and_placeholders_shaped() {
        let f = Family::new("{name}-{timestamp}-{spec_hash}", "ci-worker");
        assert_eq!(f.to_string(), "ci-worker-{timestamp}-{spec_hash}");
        assert!(f.matches("ci-worker-20260101-120000-0123456789ab"));
        // A neighbour family, a name no bake makes, a prefix or an extension of one.
        for other in [
            "ci-worker-gpu-20260101-120000-0123456789ab",
            "ci-worker-manual-backup",
            "ci-worker-20260101-120000",
            "ci-worker-20260101-120000-0123456789ab-old",
            "ci-worker-20260101-1200000-123456789ab",
            "ci-worker-20260101-120000-0123456789AB",
            "xci-worker-20260101-120000-0123456789ab",
        ] {
            assert!(!f.matches(other), "{other}");
        }
    }

    #[test]
    fn every_placeholder_has_the_shape_a_bake_fills_it_with() {
        let f = Family::new("{date}.{name}.{git_sha}", "web");
        assert!(f.matches("20260101.web.0123456789ab"));
        assert!(f.matches("20260101.web.nogit"));
        assert!(!f.matches("20260101.web.main"));
        assert!(!f.matches("2026011.web.nogit"));
        // Placeholders next to each other.
        let f = Family::new("{name}{date}{spec_hash}", "w");
        assert!(f.matches("w20260101abcdefabcdef"));
        assert!(!f.matches("w20260101abcdefabcde"));
        // No variable part: the family is one name.
        let f = Family::new("golden-{name}", "base");
        assert!(f.matches("golden-base"));
        assert!(!f.matches("golden-base-2"));
    }

    #[test]
    fn the_names_a_bake_gives_are_in_its_family() {
        let text = "name: ci-worker\nbase:\n  digitalocean: debian-12-x64\nbuild_user:\n  name: builder\n\
                    snapshot:\n  name: \"{name}-{timestamp}.{date}.{git_sha}.{spec_hash}\"\n";
        let loaded = crate::spec::load_str(
            std::path::Path::new("spec.yaml"),
            text,
            std::path::Path::new("."),
        )
        .expect("spec");
        let family = Family::of_spec(&loaded.spec);
        for git in [Some("0123456789abcdef0123456789abcdef01234567"), None] {
            let name = crate::bake::image_name(&loaded, git);
            assert!(family.matches(&name), "{name} is not in {family}");
        }
    }
}
