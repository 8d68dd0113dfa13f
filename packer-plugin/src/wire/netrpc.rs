//! Go `net/rpc` over msgpack (ugorji `GoRpc` codec), both directions.
//!
//! Every message is two back-to-back msgpack values with no length prefix:
//! - request: `{"ServiceMethod": str, "Seq": uint}` then the argument value;
//! - response: `{"ServiceMethod": str, "Seq": uint, "Error": str}` then the reply
//!   (an empty map when `Error` is set; Go skips it).
//!
//! [`serve`] answers requests concurrently (Packer sends `Provisioner.Cancel`
//! while `Provisioner.Provision` is outstanding) and [`Client`] matches responses
//! to callers by `Seq`, so any number of threads may call at once.

use std::collections::HashMap;
use std::io::{BufReader, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use super::msgpack::{self, DecodeError, Value};
use super::yamux::Stream;

#[derive(Debug, thiserror::Error)]
pub enum RpcError {
    #[error("net/rpc: {0}")]
    Decode(#[from] DecodeError),
    #[error("net/rpc: write failed: {0}")]
    Write(#[source] std::io::Error),
    #[error("net/rpc: malformed {0} header")]
    Header(&'static str),
    #[error("net/rpc: connection closed while waiting for {0}")]
    Closed(String),
    /// The remote method returned an error (the `Error` field).
    #[error("{method}: {message}")]
    Remote { method: String, message: String },
}

/// A request header.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    pub method: String,
    pub seq: u64,
}

/// A response header.
#[derive(Debug, Clone, PartialEq)]
pub struct Response {
    pub method: String,
    pub seq: u64,
    pub error: String,
}

/// Encode a request (header + args).
pub fn encode_request(method: &str, seq: u64, args: &Value) -> Vec<u8> {
    let mut out = msgpack::to_vec(&Value::map([
        ("ServiceMethod", Value::str(method)),
        ("Seq", Value::Uint(seq)),
    ]));
    msgpack::encode(args, &mut out);
    out
}

/// Encode a response (header + reply). An error sends an empty map as body.
pub fn encode_response(method: &str, seq: u64, result: &Result<Value, String>) -> Vec<u8> {
    let (error, body) = match result {
        Ok(v) => (String::new(), v.clone()),
        Err(e) => (e.clone(), Value::Map(vec![])),
    };
    let mut out = msgpack::to_vec(&Value::map([
        ("ServiceMethod", Value::str(method)),
        ("Seq", Value::Uint(seq)),
        ("Error", Value::Str(error)),
    ]));
    msgpack::encode(&body, &mut out);
    out
}

/// Parse a request header value.
pub fn parse_request(v: &Value) -> Result<Request, RpcError> {
    Ok(Request {
        method: v
            .get("ServiceMethod")
            .and_then(Value::as_str)
            .ok_or(RpcError::Header("request"))?
            .to_string(),
        seq: v
            .get("Seq")
            .and_then(Value::as_u64)
            .ok_or(RpcError::Header("request"))?,
    })
}

/// Parse a response header value (a missing `Error` means none).
pub fn parse_response(v: &Value) -> Result<Response, RpcError> {
    Ok(Response {
        method: v
            .get("ServiceMethod")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string(),
        seq: v
            .get("Seq")
            .and_then(Value::as_u64)
            .ok_or(RpcError::Header("response"))?,
        error: match v.get("Error") {
            None | Some(Value::Nil) => String::new(),
            Some(e) => e.as_str().ok_or(RpcError::Header("response"))?.to_string(),
        },
    })
}

/// What a served method returns: a reply value or an error string for Packer.
pub type Handler = Arc<dyn Fn(&str, Value) -> Result<Value, String> + Send + Sync>;

/// Serve net/rpc on `stream` until it closes; each request runs on its own thread.
pub fn serve(stream: Stream, handler: Handler) -> Result<(), RpcError> {
    let writer = Arc::new(Mutex::new(stream.clone()));
    let mut reader = BufReader::new(stream);
    loop {
        let header = match msgpack::read_value(&mut reader) {
            Ok(v) => v,
            Err(e) if e.is_clean_eof() => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        let req = parse_request(&header)?;
        let args = msgpack::read_value(&mut reader)?;
        tracing::debug!(method = %req.method, seq = req.seq, "rpc request");
        let handler = Arc::clone(&handler);
        let writer = Arc::clone(&writer);
        let spawned = std::thread::Builder::new()
            .name(format!("rpc-{}", req.method))
            .spawn(move || {
                let result = handler(&req.method, args);
                if let Err(e) = &result {
                    tracing::debug!(method = %req.method, error = %e, "rpc error reply");
                }
                let bytes = encode_response(&req.method, req.seq, &result);
                let mut w = writer.lock().unwrap_or_else(|p| p.into_inner());
                if let Err(e) = w.write_all(&bytes) {
                    tracing::warn!(method = %req.method, error = %e, "rpc: cannot send reply");
                }
            });
        if let Err(e) = spawned {
            return Err(RpcError::Write(e));
        }
    }
}

type Pending = Arc<Mutex<Option<HashMap<u64, mpsc::Sender<Result<Value, RpcError>>>>>>;

/// A net/rpc client on one stream.
#[derive(Clone)]
pub struct Client {
    writer: Arc<Mutex<Stream>>,
    pending: Pending,
    seq: Arc<AtomicU64>,
}

impl Client {
    /// Start a client: spawns the thread that reads responses.
    pub fn new(stream: Stream) -> Client {
        let pending: Pending = Arc::new(Mutex::new(Some(HashMap::new())));
        let for_reader = Arc::clone(&pending);
        let reader_stream = stream.clone();
        let spawned = std::thread::Builder::new()
            .name("rpc-client".into())
            .spawn(move || {
                let reason = match read_responses(reader_stream, &for_reader) {
                    Ok(()) => "stream closed".to_string(),
                    Err(e) => e.to_string(),
                };
                let waiting = for_reader
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .take()
                    .unwrap_or_default();
                for (_, tx) in waiting {
                    let _ = tx.send(Err(RpcError::Closed(reason.clone())));
                }
            });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "rpc: cannot spawn the client reader");
            pending.lock().unwrap_or_else(|p| p.into_inner()).take();
        }
        Client {
            writer: Arc::new(Mutex::new(stream)),
            pending,
            seq: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Call `method` and wait for its reply.
    pub fn call(&self, method: &str, args: &Value) -> Result<Value, RpcError> {
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel();
        match self
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_mut()
        {
            Some(map) => map.insert(seq, tx),
            None => return Err(RpcError::Closed(method.to_string())),
        };
        let bytes = encode_request(method, seq, args);
        let written = self
            .writer
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .write_all(&bytes);
        if let Err(e) = written {
            if let Some(map) = self
                .pending
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .as_mut()
            {
                map.remove(&seq);
            }
            return Err(RpcError::Write(e));
        }
        match rx.recv() {
            Ok(result) => result.map_err(|e| match e {
                RpcError::Remote { message, .. } => RpcError::Remote {
                    method: method.to_string(),
                    message,
                },
                other => other,
            }),
            Err(_) => Err(RpcError::Closed(method.to_string())),
        }
    }
}

fn read_responses(stream: Stream, pending: &Pending) -> Result<(), RpcError> {
    let mut reader = BufReader::new(stream);
    loop {
        let header = match msgpack::read_value(&mut reader) {
            Ok(v) => v,
            Err(e) if e.is_clean_eof() => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        let resp = parse_response(&header)?;
        let body = msgpack::read_value(&mut reader)?;
        let tx = pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_mut()
            .and_then(|m| m.remove(&resp.seq));
        let Some(tx) = tx else {
            tracing::warn!(seq = resp.seq, "rpc: response for an unknown seq");
            continue;
        };
        let result = if resp.error.is_empty() {
            Ok(body)
        } else {
            Err(RpcError::Remote {
                method: resp.method,
                message: resp.error,
            })
        };
        let _ = tx.send(result);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::yamux::Session;
    use std::os::unix::net::UnixStream;

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    #[test]
    fn request_golden_bytes() {
        let bytes = encode_request("Ui.Say", 3, &Value::str("hi"));
        // {"ServiceMethod":"Ui.Say","Seq":3} "hi"
        assert_eq!(
            hex(&bytes),
            "82ad536572766963654d6574686f64a655692e536179a353657103a26869"
        );
    }

    #[test]
    fn response_golden_bytes_ok_and_error() {
        let ok = encode_response("Provisioner.Prepare", 1, &Ok(Value::Nil));
        assert_eq!(
            hex(&ok),
            "83ad536572766963654d6574686f64b350726f766973696f6e65722e50726570617265\
             a353657101a54572726f72a0c0"
        );
        let err = encode_response("Provisioner.Prepare", 1, &Err("bad".into()));
        assert!(
            hex(&err).ends_with("a54572726f72a362616480"),
            "{}",
            hex(&err)
        );
    }

    #[test]
    fn parses_headers_with_any_int_width() {
        // Seq sent as uint64 (0xcf), as ugorji may.
        let mut bytes = vec![0x82];
        msgpack::encode(&Value::str("ServiceMethod"), &mut bytes);
        msgpack::encode(&Value::str("Provisioner.Cancel"), &mut bytes);
        msgpack::encode(&Value::str("Seq"), &mut bytes);
        bytes.extend_from_slice(&[0xcf, 0, 0, 0, 0, 0, 0, 0, 9]);
        let (v, _) = msgpack::decode_slice(&bytes).unwrap();
        assert_eq!(
            parse_request(&v).unwrap(),
            Request {
                method: "Provisioner.Cancel".into(),
                seq: 9
            }
        );
        let bad = Value::map([("Seq", Value::str("x"))]);
        assert!(parse_request(&bad).is_err());
        let resp = Value::map([("Seq", Value::Uint(2)), ("Error", Value::Nil)]);
        assert_eq!(parse_response(&resp).unwrap().error, "");
    }

    #[test]
    fn concurrent_calls_are_matched_by_seq() {
        let (a, b) = UnixStream::pair().unwrap();
        let server = Session::server(a.try_clone().unwrap(), a);
        let client = Session::client(b.try_clone().unwrap(), b);
        let s = client.open().unwrap();
        let srv = server.accept().unwrap();
        // The server answers "Slow" after "Fast" even though it arrived first.
        let handler: Handler = Arc::new(|method, args| match method {
            "T.Slow" => {
                std::thread::sleep(std::time::Duration::from_millis(200));
                Ok(args)
            }
            "T.Fast" => Ok(args),
            _ => Err(format!("unknown method {method}")),
        });
        std::thread::spawn(move || serve(srv, handler));
        let c = Client::new(s);
        let c2 = c.clone();
        let slow = std::thread::spawn(move || c2.call("T.Slow", &Value::Uint(1)));
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert_eq!(c.call("T.Fast", &Value::Uint(2)).unwrap(), Value::Uint(2));
        assert_eq!(slow.join().unwrap().unwrap(), Value::Uint(1));
        let err = c.call("T.Nope", &Value::Nil).unwrap_err();
        assert_eq!(err.to_string(), "T.Nope: unknown method T.Nope");
    }
}
