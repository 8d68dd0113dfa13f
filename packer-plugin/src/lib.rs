//! Packer plugin protocol in Rust.
