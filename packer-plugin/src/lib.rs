//! packer-plugin: a Packer plugin written in Rust (provisioner `vmagent`).
//!
//! - [`wire`]: the protocol library (handshake, yamux, mux broker, net/rpc over
//!   msgpack, gob) — no Packer-specific provisioner logic.
//! - [`config`]: the provisioner's attributes (ConfigSpec for HCL2, Prepare decoding
//!   and validation).
//! - [`remote`]: typed clients for Packer's `Ui` and `Communicator` services.
//! - [`provisioner`]: Provision/Cancel: runs `provision` through the communicator.
//! - [`server`]: process startup (`describe`, `start provisioner`, single-component mode).
pub mod config;
pub mod provisioner;
pub mod remote;
pub mod server;
pub mod wire;
