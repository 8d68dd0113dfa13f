//! Fuzz entry points for the decoders, shared by the `cargo fuzz` targets in
//! `packer-plugin/fuzz/` and the bounded random test that runs on stable
//! (`tests/fuzz_smoke.rs`). Each must return (not panic, not hang) on any input.

use std::io::Read;

use super::{gob, msgpack, yamux};

/// msgpack: decode; whatever decodes must re-encode and decode again.
pub fn msgpack(data: &[u8]) {
    let mut rest = data;
    while let Ok(v) = msgpack::read_value(&mut rest) {
        let bytes = msgpack::to_vec(&v);
        let again = msgpack::decode_slice(&bytes);
        assert!(again.is_ok(), "re-encoded value does not decode: {v:?}");
        if rest.is_empty() {
            break;
        }
    }
}

/// gob: the generic decoder and the CommandFinished reader.
pub fn gob(data: &[u8]) {
    let _ = gob::decode(data);
    let _ = gob::decode_command_finished(data);
}

/// yamux: feed `data` as everything the peer ever sends; read every stream it opens.
pub fn yamux(data: &[u8]) {
    let session = yamux::Session::server(std::io::Cursor::new(data.to_vec()), std::io::sink());
    while let Ok(mut s) = session.accept() {
        let mut buf = Vec::new();
        let _ = s.read_to_end(&mut buf);
    }
    for chunk in data.chunks_exact(yamux::HEADER_LEN) {
        let mut h = [0u8; yamux::HEADER_LEN];
        h.copy_from_slice(chunk);
        if let Ok(hdr) = yamux::Header::decode(&h) {
            assert_eq!(hdr.encode(), h);
        }
    }
}
