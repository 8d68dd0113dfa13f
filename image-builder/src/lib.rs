//! image-builder: turn one image spec into cloud-init user-data, golden images and
//! sha-keyed build artifacts.
//!
//! The crate is a library first; `main.rs` is a thin CLI over [`cli`]. With
//! `default-features = false` only what `vm-agent` and `packer-plugin` share is
//! built: the in-VM provisioning [`steps`] (and, with `do-api`, the DigitalOcean
//! API client).

pub mod digest;
pub mod steps;

#[cfg(feature = "artifact")]
pub mod artifact;

#[cfg(feature = "do-api")]
pub mod do_api;

#[cfg(feature = "host")]
pub mod backend;
#[cfg(feature = "host")]
pub mod bake;
#[cfg(feature = "host")]
pub mod cli;
#[cfg(feature = "host")]
pub mod fsutil;
#[cfg(feature = "host")]
pub mod render;
#[cfg(feature = "host")]
pub mod spec;
#[cfg(feature = "host")]
pub mod validate;
