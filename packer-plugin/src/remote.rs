//! Typed clients for the services Packer serves back to a provisioner during
//! `Provision`: `Ui` (messages) and `Communicator` (run commands, upload files).
//!
//! Both live on the broker stream whose id Packer passes in
//! `Provisioner.Provision{StreamID}`; we dial it and act as the net/rpc client.

use std::io::{Read, Write};
use std::path::Path;

use crate::wire::broker::{Broker, BrokerError};
use crate::wire::gob::{self, GobError};
use crate::wire::msgpack::Value;
use crate::wire::netrpc::{Client, RpcError};

#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    #[error(transparent)]
    Rpc(#[from] RpcError),
    #[error(transparent)]
    Broker(#[from] BrokerError),
    #[error("reading the result of {what}: {source}")]
    Io {
        what: &'static str,
        source: std::io::Error,
    },
    #[error("cannot read local file {path}: {source}")]
    Local {
        path: String,
        source: std::io::Error,
    },
    #[error("decoding CommandFinished: {0}")]
    Gob(#[from] GobError),
}

/// Where a line of remote output goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Channel {
    Stdout,
    Stderr,
}

/// Packer's Ui and Communicator for one `Provision` call.
#[derive(Clone)]
pub struct Remote {
    rpc: Client,
    broker: Broker,
    /// The stdin stream of the running command (see [`Remote::close_stdin`]).
    stdin: std::sync::Arc<std::sync::Mutex<Option<crate::wire::yamux::Stream>>>,
}

/// Longest line forwarded before it is split.
const MAX_LINE: usize = 64 * 1024;

impl Remote {
    /// Dial the stream Packer serves Ui/Communicator on.
    pub fn connect(broker: &Broker, stream_id: u32) -> Result<Remote, RemoteError> {
        let stream = broker.dial(stream_id)?;
        Ok(Remote {
            rpc: Client::new(stream),
            broker: broker.clone(),
            stdin: Default::default(),
        })
    }

    fn ui(&self, method: &str, text: &str) -> Result<(), RemoteError> {
        self.rpc.call(method, &Value::str(text))?;
        Ok(())
    }

    /// `Ui.Say`: a highlighted line (`==> null: …`).
    pub fn say(&self, text: &str) -> Result<(), RemoteError> {
        self.ui("Ui.Say", text)
    }

    /// `Ui.Message`: an indented line.
    pub fn message(&self, text: &str) -> Result<(), RemoteError> {
        self.ui("Ui.Message", text)
    }

    /// `Ui.Error`: an error line.
    pub fn error(&self, text: &str) -> Result<(), RemoteError> {
        self.ui("Ui.Error", text)
    }

    /// Run `command` remotely; every output line goes to `on_line`; returns the exit status.
    ///
    /// The command's stdin is a stream we hold open until it exits: closing it
    /// early ([`Remote::close_stdin`], or Packer dropping the SSH connection)
    /// gives the remote side an EOF it can act on (the step wrapper kills the step).
    pub fn run(
        &self,
        command: &str,
        on_line: impl Fn(Channel, &str) + Send + Sync + Clone + 'static,
    ) -> Result<i64, RemoteError> {
        let (in_id, out_id, err_id, resp_id) = (
            self.broker.next_id(),
            self.broker.next_id(),
            self.broker.next_id(),
            self.broker.next_id(),
        );
        let (in_e, out_e, err_e, resp_e) = (
            self.broker.expect(in_id),
            self.broker.expect(out_id),
            self.broker.expect(err_id),
            self.broker.expect(resp_id),
        );
        self.rpc.call(
            "Communicator.Start",
            &Value::map([
                ("Command", Value::str(command)),
                ("StdinStreamId", Value::Uint(u64::from(in_id))),
                ("StdoutStreamId", Value::Uint(u64::from(out_id))),
                ("StderrStreamId", Value::Uint(u64::from(err_id))),
                ("ResponseStreamId", Value::Uint(u64::from(resp_id))),
            ]),
        )?;
        let stdin = in_e.wait()?;
        *self.stdin.lock().unwrap_or_else(|p| p.into_inner()) = Some(stdin);
        let out = out_e.wait()?;
        let err = err_e.wait()?;
        let mut resp = resp_e.wait()?;
        let pumps: Vec<_> = [(out, Channel::Stdout), (err, Channel::Stderr)]
            .into_iter()
            .map(|(stream, ch)| {
                let f = on_line.clone();
                std::thread::spawn(move || pump_lines(stream, |line| f(ch, line)))
            })
            .collect();
        let mut finished = Vec::new();
        let read = resp.read_to_end(&mut finished);
        self.close_stdin();
        for p in pumps {
            let _ = p.join();
        }
        read.map_err(|source| RemoteError::Io {
            what: "Communicator.Start",
            source,
        })?;
        Ok(gob::decode_command_finished(&finished)?)
    }

    /// Close the running command's stdin (EOF on the remote side).
    pub fn close_stdin(&self) {
        if let Some(s) = self.stdin.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = s.close_write();
        }
    }

    /// Upload a local file to `remote_path` (`Communicator.Upload`).
    pub fn upload(&self, local: &Path, remote_path: &str) -> Result<(), RemoteError> {
        let mut file = std::fs::File::open(local).map_err(|source| RemoteError::Local {
            path: local.display().to_string(),
            source,
        })?;
        let id = self.broker.next_id();
        let expected = self.broker.expect(id);
        let (tx, rx) = std::sync::mpsc::channel();
        let writer = std::thread::spawn(move || -> std::io::Result<u64> {
            let mut stream = expected.wait().map_err(std::io::Error::other)?;
            let _ = tx.send(stream.clone());
            let n = std::io::copy(&mut file, &mut stream)?;
            stream.flush()?;
            stream.close_write().map_err(std::io::Error::from)?;
            Ok(n)
        });
        let result = self.rpc.call(
            "Communicator.Upload",
            &Value::map([
                ("Path", Value::str(remote_path)),
                ("ReaderStreamId", Value::Uint(u64::from(id))),
                ("FileInfo", Value::Nil),
            ]),
        );
        if result.is_err() {
            // Packer gave up: unblock a writer waiting for window credit.
            if let Ok(s) = rx.try_recv() {
                s.reset();
            }
        }
        let written = writer.join();
        result?;
        match written {
            Ok(Ok(n)) => {
                tracing::debug!(bytes = n, remote_path, "uploaded");
                Ok(())
            }
            Ok(Err(source)) => Err(RemoteError::Io {
                what: "Communicator.Upload",
                source,
            }),
            Err(_) => Err(RemoteError::Io {
                what: "Communicator.Upload",
                source: std::io::Error::other("upload writer panicked"),
            }),
        }
    }
}

/// Split a byte stream into lines (lossy UTF-8, `\r\n` trimmed) until EOF.
pub fn pump_lines<R: Read>(mut r: R, mut emit: impl FnMut(&str)) {
    let mut pending: Vec<u8> = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        let n = match r.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        pending.extend_from_slice(&buf[..n]);
        while let Some(pos) = pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = pending.drain(..=pos).collect();
            emit_line(&line[..line.len() - 1], &mut emit);
        }
        if pending.len() >= MAX_LINE {
            let line = std::mem::take(&mut pending);
            emit_line(&line, &mut emit);
        }
    }
    if !pending.is_empty() {
        emit_line(&pending, &mut emit);
    }
}

fn emit_line(line: &[u8], emit: &mut impl FnMut(&str)) {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    emit(&String::from_utf8_lossy(line));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_split_across_reads_and_flushed_at_eof() {
        struct Chunks(Vec<&'static [u8]>);
        impl Read for Chunks {
            fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
                if self.0.is_empty() {
                    return Ok(0);
                }
                let c = self.0.remove(0);
                buf[..c.len()].copy_from_slice(c);
                Ok(c.len())
            }
        }
        let mut got = Vec::new();
        pump_lines(
            Chunks(vec![b"he", b"llo\r\nwor", b"ld\n\nlast \xff"]),
            |l| got.push(l.to_string()),
        );
        assert_eq!(got, ["hello", "world", "", "last \u{fffd}"]);
    }
}
