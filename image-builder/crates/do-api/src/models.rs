//! Typed models for the fields our code reads, named as in DigitalOcean's
//! OpenAPI contract (`droplet.yml`, `action.yml`, `image.yml`, ...). Responses
//! are decoded leniently (unknown fields ignored: the API grows); request
//! bodies only carry what we send.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

fn parse_time(s: &str) -> Option<OffsetDateTime> {
    OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()
}

/// `droplet.status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DropletStatus {
    New,
    Active,
    Off,
    Archive,
    #[serde(other)]
    Unknown,
}

impl std::fmt::Display for DropletStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::New => "new",
            Self::Active => "active",
            Self::Off => "off",
            Self::Archive => "archive",
            Self::Unknown => "unknown",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct RegionRef {
    pub slug: String,
    #[serde(default)]
    pub name: String,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct DropletImage {
    #[serde(default)]
    pub id: Option<u64>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub slug: Option<String>,
    #[serde(default)]
    pub distribution: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct NetworkV4 {
    pub ip_address: String,
    #[serde(rename = "type")]
    pub kind: String,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct Networks {
    #[serde(default)]
    pub v4: Vec<NetworkV4>,
}

/// A droplet (`droplets/models/droplet.yml`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Droplet {
    pub id: u64,
    pub name: String,
    pub memory: u64,
    pub vcpus: u64,
    pub disk: u64,
    pub locked: bool,
    pub status: DropletStatus,
    pub created_at: String,
    #[serde(default)]
    pub snapshot_ids: Vec<u64>,
    #[serde(default, deserialize_with = "null_as_empty")]
    pub tags: Vec<String>,
    pub size_slug: String,
    pub region: RegionRef,
    #[serde(default)]
    pub image: DropletImage,
    #[serde(default)]
    pub networks: Networks,
}

fn null_as_empty<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    Ok(Option::<Vec<String>>::deserialize(d)?.unwrap_or_default())
}

impl Droplet {
    pub fn public_ipv4(&self) -> Option<&str> {
        self.networks
            .v4
            .iter()
            .find(|n| n.kind == "public")
            .map(|n| n.ip_address.as_str())
    }

    pub fn created_at_time(&self) -> Option<OffsetDateTime> {
        parse_time(&self.created_at)
    }

    pub fn has_tag(&self, tag: &str) -> bool {
        self.tags.iter().any(|t| t == tag)
    }
}

/// `image` in a droplet create: a slug or an image id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum ImageSpec {
    Id(u64),
    Slug(String),
}

/// An ssh key in a droplet create: its id or fingerprint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum SshKeySpec {
    Id(u64),
    Fingerprint(String),
}

/// Body of `POST /v2/droplets` (single create). There is no project here:
/// assign the droplet afterwards with `Client::assign_to_project`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DropletCreate {
    pub name: String,
    pub region: String,
    pub size: String,
    pub image: ImageSpec,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ssh_keys: Vec<SshKeySpec>,
    pub tags: Vec<String>,
    /// Plain text, at most 64 KiB.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_data: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vpc_uuid: Option<String>,
    pub monitoring: bool,
    pub ipv6: bool,
}

impl DropletCreate {
    pub fn new(name: &str, region: &str, size: &str, image: ImageSpec) -> Self {
        Self {
            name: name.to_owned(),
            region: region.to_owned(),
            size: size.to_owned(),
            image,
            ssh_keys: Vec::new(),
            tags: Vec::new(),
            user_data: None,
            vpc_uuid: None,
            monitoring: false,
            ipv6: false,
        }
    }
}

/// Result of a droplet create.
#[derive(Debug, Clone, PartialEq)]
pub struct CreatedDroplet {
    pub droplet: Droplet,
    /// The `create` action from `links.actions` (absent when the droplet was
    /// found by reconciling instead of from the create response).
    pub action_id: Option<u64>,
    /// True when the create's outcome was unknown and the droplet was found by tag.
    pub reconciled: bool,
    /// POSTs sent (1 unless a create had to be retried).
    pub attempts: u32,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct ActionLink {
    pub id: u64,
    #[serde(default)]
    pub rel: String,
    #[serde(default)]
    pub href: String,
}

/// `action.status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ActionStatus {
    #[serde(rename = "in-progress")]
    InProgress,
    #[serde(rename = "completed")]
    Completed,
    #[serde(rename = "errored")]
    Errored,
    #[serde(other)]
    Unknown,
}

/// An action (`actions/models/action.yml`). For a snapshot action,
/// `resource_id` is the droplet, not the image.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Action {
    pub id: u64,
    pub status: ActionStatus,
    #[serde(rename = "type")]
    pub kind: ActionType,
    #[serde(default)]
    pub started_at: Option<String>,
    #[serde(default)]
    pub completed_at: Option<String>,
    #[serde(default)]
    pub resource_id: Option<u64>,
    #[serde(default)]
    pub resource_type: Option<String>,
    #[serde(default)]
    pub region_slug: Option<String>,
}

/// A droplet action request (`droplets/models/droplet_actions.yml`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum DropletAction {
    Shutdown,
    PowerOff,
    PowerOn,
    Reboot,
    PowerCycle,
    Snapshot { name: String },
}

impl DropletAction {
    /// The `type` this request sends (and its action reports).
    pub fn kind(&self) -> ActionType {
        match self {
            Self::Shutdown => ActionType::Shutdown,
            Self::PowerOff => ActionType::PowerOff,
            Self::PowerOn => ActionType::PowerOn,
            Self::Reboot => ActionType::Reboot,
            Self::PowerCycle => ActionType::PowerCycle,
            Self::Snapshot { .. } => ActionType::Snapshot,
        }
    }
}

impl std::fmt::Display for DropletAction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.kind().as_str())
    }
}

/// `action.type`: the ones our code sends or looks for; any other type is kept as
/// it was spelled.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ActionType {
    Create,
    Destroy,
    Shutdown,
    PowerOff,
    PowerOn,
    Reboot,
    PowerCycle,
    Snapshot,
    #[serde(untagged)]
    Other(String),
}

impl ActionType {
    /// The contract's spelling (`power_off`).
    pub fn as_str(&self) -> &str {
        match self {
            Self::Create => "create",
            Self::Destroy => "destroy",
            Self::Shutdown => "shutdown",
            Self::PowerOff => "power_off",
            Self::PowerOn => "power_on",
            Self::Reboot => "reboot",
            Self::PowerCycle => "power_cycle",
            Self::Snapshot => "snapshot",
            Self::Other(other) => other,
        }
    }
}

impl std::fmt::Display for ActionType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An image (`images/models/image.yml`). Private images are addressed by id only.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Image {
    pub id: u64,
    pub name: String,
    #[serde(rename = "type", default)]
    pub kind: Option<String>,
    #[serde(default)]
    pub distribution: Option<String>,
    #[serde(default)]
    pub slug: Option<String>,
    #[serde(default)]
    pub public: bool,
    #[serde(default)]
    pub regions: Vec<String>,
    pub created_at: String,
    #[serde(default)]
    pub min_disk_size: Option<u64>,
    #[serde(default)]
    pub size_gigabytes: Option<f64>,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default, deserialize_with = "null_as_empty")]
    pub tags: Vec<String>,
    #[serde(default)]
    pub status: Option<String>,
    #[serde(default)]
    pub error_message: Option<String>,
}

impl Image {
    pub fn created_at_time(&self) -> Option<OffsetDateTime> {
        parse_time(&self.created_at)
    }
}

/// Body of `PUT /v2/images/{id}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ImageUpdate {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub distribution: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// A droplet's snapshot (`GET /v2/droplets/{id}/snapshots`): `id` is the image id (integer).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct DropletSnapshot {
    pub id: u64,
    pub name: String,
    pub created_at: String,
    #[serde(default)]
    pub regions: Vec<String>,
    #[serde(default)]
    pub min_disk_size: Option<u64>,
    #[serde(default)]
    pub size_gigabytes: Option<f64>,
    #[serde(rename = "type", default)]
    pub kind: Option<String>,
}

/// A snapshot from `GET /v2/snapshots`: there `id` is a **string**.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Snapshot {
    pub id: String,
    pub name: String,
    pub created_at: String,
    #[serde(default)]
    pub regions: Vec<String>,
    #[serde(default)]
    pub resource_id: String,
    #[serde(default)]
    pub resource_type: String,
    #[serde(default)]
    pub min_disk_size: Option<u64>,
    #[serde(default)]
    pub size_gigabytes: Option<f64>,
    #[serde(default, deserialize_with = "null_as_empty")]
    pub tags: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Project {
    pub id: String,
    pub name: String,
    #[serde(default)]
    pub is_default: bool,
    #[serde(default)]
    pub environment: Option<String>,
}

/// One entry of a project assignment answer; `status` is `ok`, `not_found`, ...
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct AssignedResource {
    pub urn: String,
    #[serde(default)]
    pub assigned_at: Option<String>,
    #[serde(default)]
    pub status: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Account {
    pub droplet_limit: u64,
    pub floating_ip_limit: u64,
    pub email: String,
    pub uuid: String,
    pub email_verified: bool,
    pub status: String,
    #[serde(default)]
    pub status_message: String,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Size {
    pub slug: String,
    pub memory: u64,
    pub vcpus: u64,
    pub disk: u64,
    pub price_monthly: f64,
    pub price_hourly: f64,
    #[serde(default)]
    pub regions: Vec<String>,
    pub available: bool,
    #[serde(default)]
    pub description: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Region {
    pub slug: String,
    pub name: String,
    pub available: bool,
    #[serde(default)]
    pub sizes: Vec<String>,
    #[serde(default)]
    pub features: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Tag {
    pub name: String,
}

/// What `POST /v2/tags/{tag}/resources` tags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TagTarget {
    Droplet(u64),
    Image(u64),
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct SshKey {
    pub id: u64,
    pub fingerprint: String,
    pub public_key: String,
    pub name: String,
}

/// The last rate-limit headers seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    pub limit: u64,
    pub remaining: u64,
    /// Epoch seconds at which the oldest counted request leaves the window.
    pub reset: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn action_bodies_match_the_contract() {
        let body = serde_json::to_value(DropletAction::Snapshot {
            name: "golden-1".into(),
        })
        .expect("serialise");
        assert_eq!(
            body,
            serde_json::json!({"type": "snapshot", "name": "golden-1"})
        );
        let body = serde_json::to_value(DropletAction::PowerOff).expect("serialise");
        assert_eq!(body, serde_json::json!({"type": "power_off"}));
    }

    #[test]
    fn action_types_match_the_requests_and_keep_unknown_spellings() {
        for action in [
            DropletAction::Shutdown,
            DropletAction::PowerOff,
            DropletAction::PowerOn,
            DropletAction::Reboot,
            DropletAction::PowerCycle,
            DropletAction::Snapshot { name: "x".into() },
        ] {
            let body = serde_json::to_value(&action).expect("serialise");
            assert_eq!(body["type"], action.kind().as_str());
            let back: ActionType = serde_json::from_value(body["type"].clone()).expect("decode");
            assert_eq!(back, action.kind());
        }
        let t: ActionType = serde_json::from_str("\"enable_ipv6\"").expect("decode");
        assert_eq!(t, ActionType::Other("enable_ipv6".into()));
        assert_eq!(t.to_string(), "enable_ipv6");
        assert_eq!(
            serde_json::to_value(&t).expect("serialise"),
            serde_json::json!("enable_ipv6")
        );
    }

    #[test]
    fn create_body_takes_slug_or_id() {
        let mut c = DropletCreate::new("b-1", "nyc3", "s-1vcpu-1gb", ImageSpec::Id(42));
        c.tags = vec!["image-builder".into()];
        let v = serde_json::to_value(&c).expect("serialise");
        assert_eq!(v["image"], 42);
        assert!(v.get("user_data").is_none() && v.get("ssh_keys").is_none());
        c.image = ImageSpec::Slug("debian-12-x64".into());
        assert_eq!(
            serde_json::to_value(&c).expect("serialise")["image"],
            "debian-12-x64"
        );
    }

    #[test]
    fn unknown_statuses_do_not_break_decoding() {
        let a: Action = serde_json::from_value(serde_json::json!({
            "id": 1, "status": "paused", "type": "snapshot", "resource_id": null
        }))
        .expect("decode");
        assert_eq!(a.status, ActionStatus::Unknown);
        let s: DropletStatus = serde_json::from_str("\"archive\"").expect("decode");
        assert_eq!(s, DropletStatus::Archive);
    }
}
