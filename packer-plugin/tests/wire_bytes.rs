//! Modern Packer (1.7+) meets the plugin, written down as bytes.
//!
//! `emulated_host.rs` drives the plugin with the plugin's own wire library, so
//! a misreading of the protocol shared by both sides would go unnoticed. This
//! file does not use that library. It starts the real binary the way modern
//! Packer does and checks `describe`, the handshake line, the yamux stream
//! opening, the mux-broker id exchange, a keepalive ping and the first net/rpc
//! calls. Every byte here is a literal derived by hand from the public sources
//! cited next to it (read, not copied):
//!
//! - hashicorp/packer-plugin-sdk @ 24d43aa0: `plugin/server.go`, `plugin/set.go`,
//!   `rpc/server.go`, `rpc/client.go`, `rpc/mux_broker.go`, `rpc/common.go`,
//!   `rpc/provisioner.go`, `rpc/cty_encode.go`. Its `go.mod` pins
//!   `github.com/hashicorp/yamux v0.1.1` (line 43) and
//!   `github.com/ugorji/go/codec v1.2.6` (line 63).
//! - hashicorp/packer @ 856572ec: `packer/plugin_client.go`, `packer/plugin.go`,
//!   `packer/plugin-getter/plugins.go`, `hcl2template/types.hcl_provisioner.go`.
//!   Its `go.mod` pins the same yamux (line 281) and ugorji codec (line 397).
//! - hashicorp/yamux v0.1.1: `const.go`, `session.go`, `stream.go`, `mux.go`.
//! - ugorji/go codec/v1.2.6: `codec/rpc.go`, `codec/msgpack.go`, `codec/encode.go`.
//! - Go's standard library: `net/rpc/client.go` and `net/rpc/server.go` (the
//!   `Request` and `Response` structs, `Client.send`, `Server.sendResponse`,
//!   `invalidRequest` and `readRequestHeader`), plus the "Encoding details"
//!   section of the `encoding/gob` package documentation.
//!
//! Modern Packer's RPC codec is msgpack, not gob. Both SDK ends build
//! `codec.MsgpackHandle{WriteExt: true}` and wrap the broker stream in
//! `codec.GoRpc` (`rpc/client.go` lines 52-55, `rpc/server.go` lines 176-180),
//! and the net/rpc client is `rpc.NewClientWithCodec` (`rpc/client.go` line 59).
//! Gob still appears *inside* one msgpack field: the HCL2 ConfigSpec
//! (`rpc/common.go` lines 96-104).

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::UnixStream;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const PLUGIN: &str = env!("CARGO_BIN_EXE_packer-plugin-vmagent");

/// SDK `plugin/server.go` lines 36-37. The SDK refuses to start without it
/// (line 66). It is written out here, not imported from the crate.
const COOKIE_KEY: &str = "PACKER_PLUGIN_MAGIC_COOKIE";
const COOKIE_VALUE: &str = "d602bf8f470bc67ca7faa0386276bbdd4330efaf76d1a219cb4d6991ca9872b2";

/// SDK `plugin/set.go` line 27. Packer gives this component the bare plugin
/// name as its type (`packer/plugin.go` lines 216-221).
const DEFAULT_NAME: &str = "-packer-default-plugin-name-";

/// Bound for every read from the plugin: a hang guard, not a speed claim.
const READ_GUARD: Duration = Duration::from_secs(30);

// ------------------------------------------------------------- describe ---

/// Packer runs `<plugin> describe` without the cookie and `json.Unmarshal`s
/// stdout into the SDK's `SetDescription` (`packer/plugin-getter/plugins.go`
/// lines 966-976).
#[test]
fn describe_prints_the_set_description_modern_packer_parses() {
    let out = Command::new(PLUGIN)
        .arg("describe")
        .env_remove(COOKIE_KEY)
        .env_remove("PACKER_PLUGIN_VMAGENT_PROTOCOL")
        .stdin(Stdio::null())
        .output()
        .expect("run describe");
    // `exec.Command(..).Output()` fails on a non-zero exit, and then every
    // packer command fails.
    assert!(out.status.success(), "describe failed: {out:?}");
    // `json.Unmarshal` needs exactly one JSON value, with nothing else on stdout.
    let desc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "describe output is not one JSON value ({e}): {:?}",
            String::from_utf8_lossy(&out.stdout)
        )
    });
    let obj = desc.as_object().expect("describe prints a JSON object");

    // The JSON tags of `SetDescription` (SDK `plugin/set.go` lines 52-61).
    let keys: BTreeSet<&str> = obj.keys().map(String::as_str).collect();
    let expected: BTreeSet<&str> = [
        "version",
        "sdk_version",
        "api_version",
        "builders",
        "post_processors",
        "provisioners",
        "datasources",
        "protocol_version",
    ]
    .into();
    assert_eq!(keys, expected, "{desc}");

    // `"x" + APIVersionMajor + "." + APIVersionMinor` (set.go line 70), with
    // "5" and "0" (server.go line 57). Packer 1.11+ compares this with the
    // `_x5.0_` in the installed file name (plugins.go lines 315-318).
    assert_eq!(desc["api_version"], "x5.0");

    // Packer 1.11+ requires the described version to equal the `vX.Y.Z` in the
    // installed file name, spelled canonically (plugins.go lines 284 and 299-306).
    assert_eq!(desc["version"], env!("CARGO_PKG_VERSION"));
    let version = desc["version"].as_str().expect("version is a string");
    let parts: Vec<&str> = version.split('.').collect();
    assert!(
        parts.len() == 3
            && parts.iter().all(|p| !p.is_empty()
                && p.bytes().all(|b| b.is_ascii_digit())
                && (*p == "0" || !p.starts_with('0'))),
        "version {version:?} is not a canonical X.Y.Z"
    );
    assert!(desc["sdk_version"].is_string(), "{desc}");

    // One provisioner, under the default name. The SDK never writes null for
    // an empty list: `out := []string{}` (set.go lines 204-238).
    assert_eq!(desc["provisioners"], serde_json::json!([DEFAULT_NAME]));
    for empty in ["builders", "post_processors", "datasources"] {
        assert_eq!(desc[empty], serde_json::json!([]), "{empty}");
    }

    // Packer 1.12+ switches to protobuf only for "v2" (packer/plugin.go line
    // 141) and then passes `--protobuf`. This plugin speaks only msgpack with
    // gob inside, so it must not claim v2.
    let protocol = desc["protocol_version"]
        .as_str()
        .expect("protocol_version is a string");
    assert_ne!(protocol, "v2", "{desc}");
}

// ------------------------------------------------------- start + socket ---

/// The plugin process, killed on drop, as Packer's `Client.Kill` does.
struct Plugin {
    child: Child,
}

impl Drop for Plugin {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One yamux frame: the 12-byte header and, for Data, its payload.
struct Frame {
    header: [u8; 12],
    payload: Vec<u8>,
}

/// Packer's end of the socket, held byte by byte.
struct Wire {
    sock: UnixStream,
    /// Bytes received on yamux stream 1 and not consumed yet.
    stream1: Vec<u8>,
}

impl Wire {
    fn send(&mut self, bytes: &[u8]) {
        self.sock
            .write_all(bytes)
            .expect("write to the plugin socket");
    }

    /// The next frame the plugin sends, other than keepalive pings.
    ///
    /// The yamux header is `version(u8) type(u8) flags(u16) streamID(u32)
    /// length(u32)`, big-endian (yamux `const.go` lines 139-147 and 176-182).
    /// Only Data frames (type 0) carry `length` payload bytes.
    ///
    /// The plugin may ping Packer as the Go server does every 30 s
    /// (`mux.go` lines 61-62). Packer answers with Ping+ACK and the same opaque
    /// value, written here as literal bytes (yamux `session.go` lines 613-627).
    fn frame(&mut self) -> Frame {
        loop {
            let mut header = [0u8; 12];
            self.sock
                .read_exact(&mut header)
                .expect("read a yamux header from the plugin");
            assert_eq!(header[0], 0, "yamux version byte (const.go line 83)");
            if header[1] == 2 && header[2..4] == [0x00, 0x01] {
                let mut ack = [0x00, 0x02, 0x00, 0x02, 0, 0, 0, 0, 0, 0, 0, 0];
                ack[8..12].copy_from_slice(&header[8..12]);
                self.send(&ack);
                continue;
            }
            let payload = if header[1] == 0 {
                let len = u32::from_be_bytes([header[8], header[9], header[10], header[11]]);
                let mut payload = vec![0u8; len as usize];
                self.sock
                    .read_exact(&mut payload)
                    .expect("read a Data payload");
                payload
            } else {
                Vec::new()
            };
            return Frame { header, payload };
        }
    }

    /// Exactly `n` bytes of stream 1, however the plugin split them into Data
    /// frames. Window updates from the plugin are read and ignored: the test
    /// sends far less than the 256 KiB initial window (const.go line 125).
    fn stream1(&mut self, n: usize) -> Vec<u8> {
        while self.stream1.len() < n {
            let f = self.frame();
            match f.header[1] {
                // Data on stream 1, no FIN or RST: the RPC channel stays open.
                0 => {
                    assert_eq!(
                        f.header[2..8],
                        [0x00, 0x00, 0x00, 0x00, 0x00, 0x01],
                        "Data frame: flags 0 and stream 1"
                    );
                    self.stream1.extend_from_slice(&f.payload);
                }
                // WindowUpdate: flags 0 (no FIN/RST) on stream 1.
                1 => assert_eq!(
                    f.header[2..8],
                    [0x00, 0x00, 0x00, 0x00, 0x00, 0x01],
                    "unexpected WindowUpdate {:02x?}",
                    f.header
                ),
                _ => panic!("unexpected yamux frame {:02x?}", f.header),
            }
        }
        self.stream1.drain(..n).collect()
    }

    /// The next bytes of stream 1 must be exactly `expected`.
    fn expect(&mut self, expected: &[u8], what: &str) {
        let got = self.stream1(expected.len());
        assert!(
            got == expected,
            "{what}:\n  got      b\"{}\"\n  expected b\"{}\"",
            got.escape_ascii(),
            expected.escape_ascii()
        );
    }

    /// One msgpack `str` from stream 1, decoded by hand from its marker byte:
    /// fixstr `0xa0 | len` for fewer than 32 bytes, str8 `0xd9 len`, str16
    /// `0xda len(u16 BE)` (ugorji `msgpack.go` lines 154-156 and 391-403).
    fn str(&mut self) -> String {
        let marker = self.stream1(1)[0];
        let len = match marker {
            0xa0..=0xbf => usize::from(marker & 0x1f),
            0xd9 => usize::from(self.stream1(1)[0]),
            0xda => {
                let b = self.stream1(2);
                usize::from(u16::from_be_bytes([b[0], b[1]]))
            }
            other => panic!("expected a msgpack str, got marker {other:#04x}"),
        };
        String::from_utf8(self.stream1(len)).expect("str is UTF-8")
    }

    /// One msgpack `bin` from stream 1: bin8 `0xc4`, bin16 `0xc5`, bin32 `0xc6`
    /// (ugorji `msgpack.go` lines 157-159; a Go `[]byte` is bin when
    /// `WriteExt` is set, lines 376-389).
    fn bin(&mut self) -> Vec<u8> {
        let marker = self.stream1(1)[0];
        let len = match marker {
            0xc4 => usize::from(self.stream1(1)[0]),
            0xc5 => {
                let b = self.stream1(2);
                usize::from(u16::from_be_bytes([b[0], b[1]]))
            }
            0xc6 => {
                let b = self.stream1(4);
                u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize
            }
            other => panic!("expected a msgpack bin, got marker {other:#04x}"),
        };
        self.stream1(len)
    }
}

/// Start the plugin as Packer 1.7+ does and return it with the handshake line.
///
/// Packer runs `<plugin> start provisioner NAME`, with no `--protobuf` unless
/// every plugin described itself as v2 (`packer/plugin.go` lines 227-235 and
/// 274-277). It adds the cookie and the port range to its own environment and
/// gives the plugin its stdin (`packer/plugin_client.go` lines 223-235).
fn start_like_modern_packer() -> (Plugin, Vec<u8>) {
    let mut child = Command::new(PLUGIN)
        .args(["start", "provisioner", DEFAULT_NAME])
        .env_remove("PACKER_PLUGIN_VMAGENT_PROTOCOL")
        .env(COOKIE_KEY, COOKIE_VALUE)
        .env("PACKER_PLUGIN_MIN_PORT", "10000")
        .env("PACKER_PLUGIN_MAX_PORT", "25000")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the plugin");
    let stdout = child.stdout.take().expect("piped stdout");
    let plugin = Plugin { child };
    let mut line = Vec::new();
    BufReader::new(stdout)
        .read_until(b'\n', &mut line)
        .expect("read the handshake line");
    (plugin, line)
}

#[test]
fn modern_handshake_yamux_broker_and_first_rpc_calls_are_the_sdk_bytes() {
    let (_plugin, line) = start_like_modern_packer();

    // --- 1. Handshake line -------------------------------------------------
    // The SDK prints `major|minor|network|addr\n` with "5" and "0" (SDK
    // `plugin/server.go` lines 57 and 84-89). Off Windows it listens on a Unix
    // socket (lines 116-122). Packer trims the line and splits it into 4
    // fields: 3 fields is "protocol version 4" and rejected, major must be "5",
    // minor must not exceed "0", and the network must be tcp or unix
    // (`packer/plugin_client.go` lines 326-360).
    let prefix = b"5|0|unix|";
    assert!(
        line.starts_with(prefix) && line.ends_with(b"\n"),
        "handshake line {:?}",
        String::from_utf8_lossy(&line)
    );
    let addr = std::str::from_utf8(&line[prefix.len()..line.len() - 1]).expect("UTF-8 path");
    assert!(
        addr.starts_with('/') && !addr.contains(['|', ' ', '\t', '\r']),
        "socket address {addr:?}"
    );
    let meta = std::fs::metadata(addr).expect("the advertised socket exists");
    assert!(meta.file_type().is_socket(), "{addr} is not a socket");

    // Packer dials the address once (`plugin_client.go` lines 396-415) and
    // runs yamux as the client over it (SDK `rpc/mux_broker.go` lines 43-50).
    let sock = UnixStream::connect(addr).expect("connect like Packer");
    sock.set_read_timeout(Some(READ_GUARD)).expect("read guard");
    let mut wire = Wire {
        sock,
        stream1: Vec::new(),
    };

    // --- 2. yamux stream 1 and broker id 0 ---------------------------------
    // `rpc.NewClient` dials broker id 0 (SDK `rpc/client.go` lines 29-36 and
    // 46-50). `muxBroker.Dial` opens a yamux stream (`mux_broker.go` line 95).
    // A yamux client's first stream id is 1 (`session.go` lines 113-117).
    // `OpenStream` announces it with a WindowUpdate carrying SYN and delta 0
    // (`session.go` lines 185-197, `stream.go` lines 238-251 and 255-282):
    // recvWindow already equals MaxStreamWindowSize, 256 KiB (`mux.go` line
    // 64), so the delta is 0.
    wire.send(&[
        0x00, // version 0
        0x01, // type: WindowUpdate
        0x00, 0x01, // flags: SYN
        0x00, 0x00, 0x00, 0x01, // stream id 1
        0x00, 0x00, 0x00, 0x00, // window delta 0
    ]);
    // Dial then writes the id as a little-endian u32 (`mux_broker.go` line
    // 101). The stream is already in the SYN-sent state, so this Data frame
    // has no flags (`stream.go` lines 198 and 238-251).
    wire.send(&[
        0x00, // version 0
        0x00, // type: Data
        0x00, 0x00, // no flags
        0x00, 0x00, 0x00, 0x01, // stream 1
        0x00, 0x00, 0x00, 0x04, // 4 payload bytes
        0x00, 0x00, 0x00, 0x00, // broker id 0, little-endian
    ]);

    // The server acknowledges the stream. Go's server does this when it accepts
    // the stream: a WindowUpdate with ACK and delta 0 (`session.go` lines
    // 241-247, `stream.go` lines 246-248 and 266). The mux broker accepts every
    // inbound stream at once (`mux_broker.go` lines 127-151).
    let ack = wire.frame();
    assert_eq!(
        ack.header,
        [
            0x00, // version 0
            0x01, // type: WindowUpdate
            0x00, 0x02, // flags: ACK
            0x00, 0x00, 0x00, 0x01, // stream 1
            0x00, 0x00, 0x00, 0x00, // delta 0
        ],
        "the stream-1 ACK"
    );
    // `Accept(0)` echoes the id, the same 4 little-endian bytes (`mux_broker.go`
    // lines 78-82). Dial then requires `ack == id` (lines 106-115). A stream in
    // the established state sends Data with no flags.
    let echo = wire.frame();
    assert_eq!(
        echo.header,
        [
            0x00, // version 0
            0x00, // type: Data
            0x00, 0x00, // no flags
            0x00, 0x00, 0x00, 0x01, // stream 1
            0x00, 0x00, 0x00, 0x04, // 4 payload bytes
        ],
        "the broker's echo frame"
    );
    assert_eq!(echo.payload, [0x00, 0x00, 0x00, 0x00], "broker id 0 echoed");

    // --- 3. Keepalive ------------------------------------------------------
    // Packer's yamux pings every 30 s (`mux.go` lines 61-62, `session.go`
    // lines 347-363). Ping ids start at 0 (`session.go` lines 314-323). A ping
    // is Ping+SYN on stream 0 with the id in the length field. The answer is
    // Ping+ACK with the same id (lines 613-627). Without an answer within
    // ConnectionWriteTimeout (10 s, `mux.go` line 63; `session.go` lines
    // 330-336), Packer drops the whole session (lines 351-357).
    wire.send(&[
        0x00, // version 0
        0x02, // type: Ping
        0x00, 0x01, // flags: SYN
        0x00, 0x00, 0x00, 0x00, // stream 0
        0x00, 0x00, 0x00, 0x00, // opaque ping id 0
    ]);
    let mut pong = [0u8; 12];
    wire.sock
        .read_exact(&mut pong)
        .expect("read the ping answer");
    assert_eq!(
        pong,
        [
            0x00, // version 0
            0x02, // type: Ping
            0x00, 0x02, // flags: ACK
            0x00, 0x00, 0x00, 0x00, // stream 0
            0x00, 0x00, 0x00, 0x00, // the same id
        ],
        "Ping+ACK echoing the id"
    );

    // --- 4. net/rpc over msgpack: ConfigSpec, Packer's first call ------------
    // With an HCL2 template Packer's first call to a provisioner is ConfigSpec.
    // `startProvisioner` -> `HCL2Prepare` -> `decodeHCL2Spec` -> ConfigSpec
    // comes before Prepare (`hcl2template/types.build.provisioners.go` lines
    // 172-206, `hcl2template/types.hcl_provisioner.go` lines 56-68). The client
    // calls `client.Call(endpoint+".ConfigSpec", new(interface{}), resp)`
    // (SDK `rpc/common.go` lines 59-60).
    //
    // Framing (ugorji `codec/rpc.go` lines 84-114 and 167-169): a request is
    // the `rpc.Request` header value and then the args value, each a complete
    // msgpack value, back to back, with no length prefix. Both go through one
    // bufio.Writer flushed after the pair (lines 59-66 and 89-96), so Go sends
    // them in one stream write, one Data frame here.
    //
    // `rpc.Request` is `{ServiceMethod string; Seq uint64; next *Request}`
    // (net/rpc server.go). ugorji writes a struct as a map of its exported
    // fields in source order (`encode.go` lines 497-526). Keys are `str`
    // because `WriteExt` is set (`msgpack.go` lines 359-374), and the map
    // header is fixmap `0x80 | n` (lines 163-165 and 391-393). Seq is the
    // client's counter, starting at 0 (net/rpc client.go `Client.send`), and a
    // uint up to 127 is one positive-fixint byte (`msgpack.go` lines 221-227).
    // `new(interface{})` points to a nil interface, so it is encoded as nil
    // 0xc0 (`encode.go` lines 1257-1270).
    wire.send(&cat(&[
        &[0x00, 0x00, 0x00, 0x00], // yamux: version 0, Data, no flags
        &[0x00, 0x00, 0x00, 0x01], // stream 1
        &[0x00, 0x00, 0x00, 0x2c], // 44 payload bytes:
        &[0x82],                   // header: fixmap, 2 entries
        &[0xad],                   // fixstr, 13 bytes
        b"ServiceMethod",
        &[0xb6], // fixstr, 22 bytes
        b"Provisioner.ConfigSpec",
        &[0xa3], // fixstr, 3 bytes
        b"Seq",
        &[0x00], // positive fixint 0
        &[0xc0], // args: nil
    ]));

    // The reply header is `rpc.Response` `{ServiceMethod; Seq; Error; next}`
    // (net/rpc server.go): the method and Seq echoed, and Error "" on success
    // (`Server.sendResponse`).
    wire.expect(
        &cat(&[
            &[0x83], // fixmap, 3 entries
            &[0xad],
            b"ServiceMethod",
            &[0xb6],
            b"Provisioner.ConfigSpec",
            &[0xa3],
            b"Seq",
            &[0x00], // 0
            &[0xa5],
            b"Error",
            &[0xa0], // "" (fixstr, 0 bytes)
        ]),
        "ConfigSpec response header",
    );
    // The body is `ConfigSpecResponse{ConfigSpec []byte}` (`rpc/common.go`
    // lines 50-52): a one-entry map whose value is `bin`.
    wire.expect(
        &cat(&[
            &[0x81], // fixmap, 1 entry
            &[0xaa], // fixstr, 10 bytes
            b"ConfigSpec",
        ]),
        "ConfigSpec response body",
    );
    let spec = wire.bin();
    assert_gob_object_spec(&spec);

    // --- 5. Prepare as HCL2 Packer calls it ---------------------------------
    // `Prepare(builderVariables, flatProvisionerCfg, override)`
    // (`types.hcl_provisioner.go` line 68). The cty value travels as its JSON
    // with the type, in a `[]byte` (SDK `rpc/cty_encode.go` lines 13-24). No
    // override is nil. Args are `ProvisionerPrepareArgs{Configs []interface{}}`
    // (`rpc/provisioner.go` lines 29-40).
    wire.send(&cat(&[
        &[0x00, 0x00, 0x00, 0x00], // yamux: version 0, Data, no flags
        &[0x00, 0x00, 0x00, 0x01], // stream 1
        &[0x00, 0x00, 0x00, 0xa8], // 168 payload bytes:
        &[0x82],                   // header: fixmap, 2 entries
        &[0xad],
        b"ServiceMethod",
        &[0xb3], // fixstr, 19 bytes
        b"Provisioner.Prepare",
        &[0xa3],
        b"Seq",
        &[0x01], // 1
        &[0x81], // args: fixmap, 1 entry
        &[0xa7], // fixstr, 7 bytes
        b"Configs",
        &[0x93], // fixarray, 3 elements
        &[0x82], // [0] builder variables: fixmap, 2 entries
        &[0xb1], // fixstr, 17 bytes
        b"packer_build_name",
        &[0xac], // fixstr, 12 bytes
        b"null.example",
        &[0xb3], // fixstr, 19 bytes
        b"packer_builder_type",
        &[0xa4], // fixstr, 4 bytes
        b"null",
        &[0xc4, 0x3a], // [1] bin8, 58 bytes of go-cty JSON
        br#"{"value":{"seal":false},"type":["object",{"seal":"bool"}]}"#,
        &[0xc0], // [2] override: nil
    ]));
    // Success: Error "", and the reply `*interface{}` left nil is encoded as
    // nil (`rpc/provisioner.go` line 72, `encode.go` lines 1257-1270).
    wire.expect(
        &cat(&[
            &[0x83], // fixmap, 3 entries
            &[0xad],
            b"ServiceMethod",
            &[0xb3],
            b"Provisioner.Prepare",
            &[0xa3],
            b"Seq",
            &[0x01], // 1
            &[0xa5],
            b"Error",
            &[0xa0], // ""
            &[0xc0], // body: nil
        ]),
        "Prepare (HCL2 arguments) response",
    );

    // --- 6. An error reply -------------------------------------------------
    // JSON-template style Prepare with one bad attribute.
    wire.send(&cat(&[
        &[0x00, 0x00, 0x00, 0x00], // yamux: version 0, Data, no flags
        &[0x00, 0x00, 0x00, 0x01], // stream 1
        &[0x00, 0x00, 0x00, 0x46], // 70 payload bytes:
        &[0x82],                   // header: fixmap, 2 entries
        &[0xad],
        b"ServiceMethod",
        &[0xb3],
        b"Provisioner.Prepare",
        &[0xa3],
        b"Seq",
        &[0x02], // 2
        &[0x81], // args: fixmap, 1 entry
        &[0xa7],
        b"Configs",
        &[0x91], // fixarray, 1 element
        &[0x81], // fixmap, 1 entry
        &[0xac], // fixstr, 12 bytes
        b"step_timeout",
        &[0xa5], // fixstr, 5 bytes
        b"later",
    ]));
    wire.expect(
        &cat(&[
            &[0x83], // fixmap, 3 entries
            &[0xad],
            b"ServiceMethod",
            &[0xb3],
            b"Provisioner.Prepare",
            &[0xa3],
            b"Seq",
            &[0x02], // 2
            &[0xa5],
            b"Error", // then a non-empty str
        ]),
        "Prepare error response header",
    );
    let message = wire.str();
    assert!(
        message.contains("step_timeout: \"later\" is not a duration"),
        "{message:?}"
    );
    // With an error, net/rpc sends `invalidRequest`, an empty struct, as the
    // body (`Server.sendResponse`), which ugorji writes as an empty map: fixmap
    // 0x80. The Go client reads and discards exactly one value there
    // (`Client.input`, `ReadResponseBody(nil)`). Any other byte would
    // desynchronise the stream.
    wire.expect(&[0x80], "error body: empty map");

    // --- 7. An unknown method ----------------------------------------------
    // net/rpc's own text: "rpc: can't find method " + ServiceMethod
    // (server.go `readRequestHeader`), with the args discarded and the reply
    // built as above.
    wire.send(&cat(&[
        &[0x00, 0x00, 0x00, 0x00], // yamux: version 0, Data, no flags
        &[0x00, 0x00, 0x00, 0x01], // stream 1
        &[0x00, 0x00, 0x00, 0x26], // 38 payload bytes:
        &[0x82],                   // header: fixmap, 2 entries
        &[0xad],
        b"ServiceMethod",
        &[0xb0], // fixstr, 16 bytes
        b"Provisioner.Nope",
        &[0xa3],
        b"Seq",
        &[0x03], // 3
        &[0xc0], // args: nil
    ]));
    wire.expect(
        &cat(&[
            &[0x83], // fixmap, 3 entries
            &[0xad],
            b"ServiceMethod",
            &[0xb0],
            b"Provisioner.Nope",
            &[0xa3],
            b"Seq",
            &[0x03], // 3
            &[0xa5],
            b"Error",
            &[0xd9, 0x27], // str8, 39 bytes (32 or more do not fit a fixstr)
            b"rpc: can't find method Provisioner.Nope",
            &[0x80], // body: empty map
        ]),
        "unknown-method response",
    );

    // --- 8. Cancel ---------------------------------------------------------
    // `client.Call(endpoint+".Cancel", new(interface{}), new(interface{}))`
    // (`rpc/provisioner.go` line 61). With nothing running it succeeds.
    wire.send(&cat(&[
        &[0x00, 0x00, 0x00, 0x00], // yamux: version 0, Data, no flags
        &[0x00, 0x00, 0x00, 0x01], // stream 1
        &[0x00, 0x00, 0x00, 0x28], // 40 payload bytes:
        &[0x82],                   // header: fixmap, 2 entries
        &[0xad],
        b"ServiceMethod",
        &[0xb2], // fixstr, 18 bytes
        b"Provisioner.Cancel",
        &[0xa3],
        b"Seq",
        &[0x04], // 4
        &[0xc0], // args: nil
    ]));
    wire.expect(
        &cat(&[
            &[0x83], // fixmap, 3 entries
            &[0xad],
            b"ServiceMethod",
            &[0xb2],
            b"Provisioner.Cancel",
            &[0xa3],
            b"Seq",
            &[0x04], // 4
            &[0xa5],
            b"Error",
            &[0xa0], // ""
            &[0xc0], // body: nil
        ]),
        "Cancel response",
    );
}

/// Hand-written pieces (markers, lengths, string bytes) joined in order.
fn cat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

/// The ConfigSpec field must hold a complete gob stream of an
/// `hcldec.ObjectSpec` (SDK `rpc/common.go` lines 96-104; Packer decodes it
/// with `gob.NewDecoder(..).Decode(&res)`, lines 74-81). This is checked from
/// gob's documented framing ("Encoding details", `encoding/gob`), without
/// decoding types:
/// - a stream is a sequence of messages, each prefixed by its byte count as an
///   unsigned integer;
/// - each message begins with a signed type id: negative for a type
///   definition, positive for a value;
/// - an unsigned integer under 128 is one byte; otherwise one byte holding the
///   negated byte count (`256 - n`), then n big-endian bytes;
/// - a signed integer is an unsigned one whose low bit says whether to
///   complement the rest.
fn assert_gob_object_spec(gob: &[u8]) {
    fn uint(b: &[u8]) -> (u64, usize) {
        match b.first() {
            Some(&x) if x < 0x80 => (u64::from(x), 1),
            Some(&x) => {
                let n = 256 - usize::from(x);
                assert!((1..=8).contains(&n) && b.len() > n, "bad gob uint {b:02x?}");
                let v = b[1..=n]
                    .iter()
                    .fold(0u64, |acc, &byte| (acc << 8) | u64::from(byte));
                (v, n + 1)
            }
            None => panic!("gob stream ends inside a count"),
        }
    }
    fn int(b: &[u8]) -> i64 {
        let (u, _) = uint(b);
        let magnitude = (u >> 1) as i64;
        if u & 1 == 1 { !magnitude } else { magnitude }
    }

    let mut ids = Vec::new();
    let mut at = 0;
    while at < gob.len() {
        let (len, used) = uint(&gob[at..]);
        at += used;
        let end = at + usize::try_from(len).expect("message length");
        assert!(
            end <= gob.len(),
            "gob message of {len} bytes overruns the {}-byte field",
            gob.len()
        );
        ids.push(int(&gob[at..end]));
        at = end;
    }
    // The messages account for every byte of the field.
    assert_eq!(at, gob.len());
    // Type definitions first, then the one value message.
    let (value, definitions) = ids.split_last().expect("at least one gob message");
    assert!(
        *value > 0 && !definitions.is_empty() && definitions.iter().all(|id| *id < 0),
        "gob type ids {ids:?}"
    );
    // The attributes travel as interface values of the type hcldec registers
    // with gob as `(*AttrSpec)(nil)` (hashicorp/hcl `hcldec/gob.go`). gob sends
    // the registered name, which is `*hcldec.AttrSpec` on the wire (see
    // shared/reference/packer-plugin-protocol.md §3, checked against Packer 1.6.6).
    assert!(
        gob.windows(16).any(|w| w == b"*hcldec.AttrSpec"),
        "no *hcldec.AttrSpec in the spec"
    );
}
