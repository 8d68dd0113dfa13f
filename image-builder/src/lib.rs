//! image-builder: turn one image spec into cloud-init user-data, golden images and
//! sha-keyed build artifacts.
//!
//! The crate is a library first; `main.rs` is a thin CLI over it. With
//! `default-features = false` only the contracts shared with `vm-agent` are built.
