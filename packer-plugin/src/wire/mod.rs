//! Packer's plugin wire protocol, layer by layer (the facts, with their sources in the Go SDK, are in `packer-plugin/README.md`):
//!
//! - [`handshake`]: the line the plugin prints on stdout (format differs between
//!   Packer 1.6.6 and 1.7+), the magic cookie, `describe` output and naming.
//! - [`yamux`]: the multiplexer Packer runs over the one connection (Packer is the client).
//! - [`broker`]: Packer's mux broker: logical u32 stream ids (little-endian on the wire).
//! - [`msgpack`] + [`netrpc`]: Go `net/rpc` requests/responses encoded as msgpack.
//! - [`gob`]: the gob pieces still on the wire (HCL2 ConfigSpec, CommandFinished).
pub mod broker;
pub mod fuzzing;
pub mod gob;
pub mod handshake;
pub mod msgpack;
pub mod netrpc;
pub mod yamux;
