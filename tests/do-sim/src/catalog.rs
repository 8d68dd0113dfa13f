//! The fixed catalogue the simulator offers: sizes, regions and public base images.

use serde_json::{Value, json};

/// A size slug and its numbers (memory MiB, vCPUs, disk GiB, prices USD).
#[derive(Debug, Clone, Copy)]
pub struct Size {
    pub slug: &'static str,
    pub memory: u64,
    pub vcpus: u64,
    pub disk: u64,
    pub transfer: f64,
    pub price_monthly: f64,
    pub price_hourly: f64,
    pub description: &'static str,
}

pub const SIZES: &[Size] = &[
    Size {
        slug: "s-1vcpu-1gb",
        memory: 1024,
        vcpus: 1,
        disk: 25,
        transfer: 1.0,
        price_monthly: 6.0,
        price_hourly: 0.00893,
        description: "Basic",
    },
    Size {
        slug: "s-1vcpu-2gb",
        memory: 2048,
        vcpus: 1,
        disk: 50,
        transfer: 2.0,
        price_monthly: 12.0,
        price_hourly: 0.01786,
        description: "Basic",
    },
    Size {
        slug: "s-2vcpu-4gb",
        memory: 4096,
        vcpus: 2,
        disk: 80,
        transfer: 4.0,
        price_monthly: 24.0,
        price_hourly: 0.03571,
        description: "Basic",
    },
    Size {
        slug: "s-4vcpu-8gb",
        memory: 8192,
        vcpus: 4,
        disk: 160,
        transfer: 5.0,
        price_monthly: 48.0,
        price_hourly: 0.07143,
        description: "Basic",
    },
    Size {
        slug: "g-2vcpu-8gb",
        memory: 8192,
        vcpus: 2,
        disk: 25,
        transfer: 4.0,
        price_monthly: 63.0,
        price_hourly: 0.09375,
        description: "General Purpose",
    },
];

/// A region: slug, name, whether it takes new droplets, and the sizes it offers.
#[derive(Debug, Clone, Copy)]
pub struct Region {
    pub slug: &'static str,
    pub name: &'static str,
    pub available: bool,
    pub sizes: &'static [&'static str],
}

const ALL_SIZES: &[&str] = &[
    "s-1vcpu-1gb",
    "s-1vcpu-2gb",
    "s-2vcpu-4gb",
    "s-4vcpu-8gb",
    "g-2vcpu-8gb",
];

pub const REGIONS: &[Region] = &[
    Region {
        slug: "nyc3",
        name: "New York 3",
        available: true,
        sizes: ALL_SIZES,
    },
    Region {
        slug: "fra1",
        name: "Frankfurt 1",
        available: true,
        sizes: ALL_SIZES,
    },
    Region {
        slug: "ams3",
        name: "Amsterdam 3",
        available: true,
        sizes: ALL_SIZES,
    },
    // Offers only the small sizes: creating s-4vcpu-8gb here answers 422.
    Region {
        slug: "sgp1",
        name: "Singapore 1",
        available: true,
        sizes: &["s-1vcpu-1gb", "s-1vcpu-2gb"],
    },
    // Closed for new droplets.
    Region {
        slug: "nyc1",
        name: "New York 1",
        available: false,
        sizes: &[],
    },
];

pub const REGION_FEATURES: &[&str] = &[
    "backups",
    "ipv6",
    "metadata",
    "install_agent",
    "storage",
    "image_transfer",
];

/// A public distribution image.
#[derive(Debug, Clone, Copy)]
pub struct BaseImage {
    pub id: u64,
    pub name: &'static str,
    pub slug: &'static str,
    pub distribution: &'static str,
}

pub const BASE_IMAGES: &[BaseImage] = &[
    BaseImage {
        id: 100_001,
        name: "12 x64",
        slug: "debian-12-x64",
        distribution: "Debian",
    },
    BaseImage {
        id: 100_002,
        name: "24.04 (LTS) x64",
        slug: "ubuntu-24-04-x64",
        distribution: "Ubuntu",
    },
];

pub fn size(slug: &str) -> Option<&'static Size> {
    SIZES.iter().find(|s| s.slug == slug)
}

/// A region by slug, or by prefix (`nyc` picks the first available `nyc*`), as DO accepts.
pub fn region(slug: &str) -> Option<&'static Region> {
    REGIONS.iter().find(|r| r.slug == slug).or_else(|| {
        REGIONS
            .iter()
            .find(|r| r.available && r.slug.starts_with(slug))
    })
}

pub fn regions_offering(size: &str) -> Vec<&'static str> {
    REGIONS
        .iter()
        .filter(|r| r.available && r.sizes.contains(&size))
        .map(|r| r.slug)
        .collect()
}

pub fn size_json(s: &Size) -> Value {
    json!({
        "slug": s.slug,
        "memory": s.memory,
        "vcpus": s.vcpus,
        "disk": s.disk,
        "transfer": s.transfer,
        "price_monthly": s.price_monthly,
        "price_hourly": s.price_hourly,
        "regions": regions_offering(s.slug),
        "available": true,
        "description": s.description,
        "disk_info": [{"type": "local", "size": {"amount": s.disk, "unit": "gib"}}],
    })
}

pub fn region_json(r: &Region) -> Value {
    json!({
        "name": r.name,
        "slug": r.slug,
        "features": REGION_FEATURES,
        "available": r.available,
        "sizes": r.sizes,
    })
}
