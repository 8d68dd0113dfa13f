//! Modern Packer (1.7+) is not installable here, so these tests play its part
//! with our own wire library: start the binary the way modern Packer does
//! (`start provisioner NAME`, magic cookie set), check the 4-field handshake
//! line, connect, and call the provisioner over yamux + broker + net/rpc.

use std::io::{BufRead, BufReader};
use std::os::unix::net::UnixStream;
use std::process::{Child, Command, Stdio};

use packer_plugin::config;
use packer_plugin::wire::broker::Broker;
use packer_plugin::wire::gob;
use packer_plugin::wire::handshake::{MAGIC_COOKIE_KEY, MAGIC_COOKIE_VALUE, PROTOCOL_ENV};
use packer_plugin::wire::msgpack::Value;
use packer_plugin::wire::netrpc::Client;
use packer_plugin::wire::yamux::Session;

const PLUGIN: &str = env!("CARGO_BIN_EXE_packer-plugin-vmagent");

struct Plugin {
    child: Child,
    line: String,
}

impl Drop for Plugin {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(args: &[&str], protocol_env: Option<&str>) -> Plugin {
    let mut cmd = Command::new(PLUGIN);
    cmd.args(args)
        .env(MAGIC_COOKIE_KEY, MAGIC_COOKIE_VALUE)
        .env_remove(PROTOCOL_ENV)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    if let Some(v) = protocol_env {
        cmd.env(PROTOCOL_ENV, v);
    }
    let mut child = cmd.spawn().expect("start plugin");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("handshake line");
    Plugin {
        child,
        line: line.trim_end().to_string(),
    }
}

fn connect(addr: &str) -> Client {
    let conn = UnixStream::connect(addr).expect("connect to the plugin socket");
    let session = Session::client(conn.try_clone().expect("clone"), conn);
    let broker = Broker::start(session);
    Client::new(broker.dial(0).expect("dial broker id 0"))
}

#[test]
fn modern_start_prints_the_four_field_line_and_serves_rpc() {
    let p = start(&["start", "provisioner", "vmagent"], None);
    let fields: Vec<&str> = p.line.split('|').collect();
    assert_eq!(fields.len(), 4, "{}", p.line);
    assert_eq!(&fields[..3], ["5", "0", "unix"]);
    let rpc = connect(fields[3]);

    let spec = rpc
        .call("Provisioner.ConfigSpec", &Value::Nil)
        .expect("ConfigSpec");
    assert_eq!(
        spec.get("ConfigSpec"),
        Some(&Value::Bin(gob::encode_object_spec(&config::spec())))
    );

    let ok = rpc.call(
        "Provisioner.Prepare",
        &Value::map([(
            "Configs",
            Value::Array(vec![
                Value::map([("packer_build_name", Value::str("x"))]),
                Value::Bin(
                    br#"{"value":{"seal":false,"build_user":null},"type":["object",{}]}"#.to_vec(),
                ),
                Value::Nil,
            ]),
        )]),
    );
    assert_eq!(ok.expect("Prepare"), Value::Nil);

    let err = rpc
        .call(
            "Provisioner.Prepare",
            &Value::map([(
                "Configs",
                Value::Array(vec![Value::map([("step_timeout", Value::str("later"))])]),
            )]),
        )
        .expect_err("bad duration");
    assert!(
        err.to_string()
            .contains("step_timeout: \"later\" is not a duration"),
        "{err}"
    );
    let err = rpc
        .call("Provisioner.Nope", &Value::Nil)
        .expect_err("unknown method");
    assert!(err.to_string().contains("can't find method"), "{err}");
    // Cancel with nothing running is a no-op that succeeds.
    assert_eq!(
        rpc.call("Provisioner.Cancel", &Value::Nil).unwrap(),
        Value::Nil
    );
}

#[test]
fn single_component_mode_uses_the_legacy_line_unless_overridden() {
    let p = start(&[], None);
    let fields: Vec<&str> = p.line.split('|').collect();
    assert_eq!(fields.len(), 3, "{}", p.line);
    assert_eq!(&fields[..2], ["5", "unix"]);
    // The legacy line still leads to a working RPC server.
    let rpc = connect(fields[2]);
    assert!(rpc.call("Provisioner.ConfigSpec", &Value::Nil).is_ok());

    let p = start(&[], Some("modern"));
    assert!(p.line.starts_with("5|0|unix|"), "{}", p.line);
    let p = start(
        &["start", "provisioner", "-packer-default-plugin-name-"],
        Some("legacy"),
    );
    assert!(p.line.starts_with("5|unix|"), "{}", p.line);
}

#[test]
fn describe_runs_without_the_cookie_and_start_requires_it() {
    let out = Command::new(PLUGIN)
        .arg("describe")
        .env_remove(MAGIC_COOKIE_KEY)
        .output()
        .expect("describe");
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("describe JSON");
    assert_eq!(v["api_version"], "x5.0");
    assert_eq!(v["provisioners"][0], "-packer-default-plugin-name-");
    assert_eq!(v["version"], env!("CARGO_PKG_VERSION"));

    let out = Command::new(PLUGIN)
        .args(["start", "provisioner", "vmagent"])
        .env_remove(MAGIC_COOKIE_KEY)
        .output()
        .expect("start");
    assert!(!out.status.success());
    assert!(
        out.stdout.is_empty(),
        "no handshake line without the cookie"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not meant to be executed directly"), "{err}");

    let out = Command::new(PLUGIN)
        .args(["start", "--protobuf", "provisioner", "vmagent"])
        .env(MAGIC_COOKIE_KEY, MAGIC_COOKIE_VALUE)
        .output()
        .expect("start --protobuf");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("protobuf"));
}
