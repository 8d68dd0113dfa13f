//! Bake backends. Each backend turns rendered bake user-data into an image and
//! returns a [`BakeResult`]; the common parts (naming, agent, manifest) live in
//! [`crate::bake`]. Dispatch is one `match` in `bake::bake`.

pub mod digitalocean;
pub mod qemu;

use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use provision::SealReport;

/// The vm-agent binary a bake installs.
#[derive(Clone, Debug)]
pub struct AgentArtifact {
    /// The static binary on this host.
    pub path: PathBuf,
    /// Its sha256 (hex).
    pub sha256: String,
    /// The agent config (TOML) to bake in.
    pub config_toml: String,
    /// The systemd unit.
    pub unit: String,
}

/// What a backend produced.
#[derive(Clone, Debug, Serialize)]
pub struct BakeResult {
    /// Backend-specific id: a path (qemu) or `region:image-id` (DigitalOcean).
    pub artifact_id: String,
    /// e.g. `image-builder.qemu`.
    pub builder_type: String,
    /// Files produced, with sizes.
    pub files: Vec<(PathBuf, u64)>,
    /// How long each phase took, in order.
    pub timings: Timings,
    /// The seal report from the builder.
    pub report: SealReport,
    /// Backend-specific details (boot check, droplet id, …).
    pub details: serde_json::Value,
}

/// A timed phase of a bake: the `step` of the manifest's `timings`, and the
/// `<step>` of its Packer-style `time_<step>_s` custom data.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BakeStep {
    /// DigitalOcean: the pre-flight checks (and the confirmation).
    Preflight,
    /// DigitalOcean: uploads, user-data and the builder droplet's create.
    Create,
    /// Local: building (or finding) the base image.
    Base,
    /// Local: the base image came from the cache.
    BaseCached,
    /// Local: the container's root filesystem and seed.
    Prepare,
    /// Until the seal report (both backends).
    Provision,
    /// Local: assembling the golden disk (GPT, root filesystem, ESP, GRUB) from the tree.
    Disk,
    /// Local: the golden qcow2 (convert and compress).
    Image,
    /// Local: booting the golden disk once under QEMU (BIOS).
    BootCheck,
    /// Local: booting the golden disk once more, under UEFI (OVMF).
    BootCheckUefi,
    /// DigitalOcean: until the builder is off.
    PowerOff,
    /// DigitalOcean: the snapshot action.
    Snapshot,
    /// DigitalOcean: tags, image checks.
    Finish,
    /// DigitalOcean: deleting the builder and the bake's objects.
    Destroy,
}

impl BakeStep {
    /// The wire name (`boot_check`).
    pub fn as_str(self) -> &'static str {
        match self {
            BakeStep::Preflight => "preflight",
            BakeStep::Create => "create",
            BakeStep::Base => "base",
            BakeStep::BaseCached => "base_cached",
            BakeStep::Prepare => "prepare",
            BakeStep::Provision => "provision",
            BakeStep::Disk => "disk",
            BakeStep::Image => "image",
            BakeStep::BootCheck => "boot_check",
            BakeStep::BootCheckUefi => "boot_check_uefi",
            BakeStep::PowerOff => "power_off",
            BakeStep::Snapshot => "snapshot",
            BakeStep::Finish => "finish",
            BakeStep::Destroy => "destroy",
        }
    }
}

impl fmt::Display for BakeStep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How long each phase of a bake took (seconds), in order. Serialized as a list of
/// `[step, seconds]` pairs (the DigitalOcean bake state file keeps it so).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Timings(Vec<(BakeStep, f64)>);

impl Timings {
    /// Record that `step` took `seconds`.
    pub fn push(&mut self, step: BakeStep, seconds: f64) {
        self.0.push((step, seconds));
    }

    /// The phases and their seconds, in order.
    pub fn iter(&self) -> impl Iterator<Item = (BakeStep, f64)> + '_ {
        self.0.iter().copied()
    }
}

/// `prepare=1.2s provision=30.5s ...`
impl fmt::Display for Timings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (step, seconds)) in self.iter().enumerate() {
            let sep = if i == 0 { "" } else { " " };
            write!(f, "{sep}{step}={seconds:.1}s")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timings_keep_their_wire_names() {
        let mut t = Timings::default();
        t.push(BakeStep::BootCheck, 1.26);
        t.push(BakeStep::PowerOff, 3.0);
        assert_eq!(t.to_string(), "boot_check=1.3s power_off=3.0s");
        let json = serde_json::to_string(&t).unwrap_or_default();
        assert_eq!(json, r#"[["boot_check",1.26],["power_off",3.0]]"#);
        let back: Timings = serde_json::from_str(&json).unwrap_or_default();
        assert_eq!(back, t);
        for step in [
            BakeStep::Preflight,
            BakeStep::Create,
            BakeStep::Base,
            BakeStep::BaseCached,
            BakeStep::Prepare,
            BakeStep::Provision,
            BakeStep::Disk,
            BakeStep::Image,
            BakeStep::BootCheck,
            BakeStep::BootCheckUefi,
            BakeStep::PowerOff,
            BakeStep::Snapshot,
            BakeStep::Finish,
            BakeStep::Destroy,
        ] {
            assert_eq!(
                serde_json::to_value(step).unwrap_or_default(),
                step.as_str(),
                "{step:?}"
            );
        }
    }
}
