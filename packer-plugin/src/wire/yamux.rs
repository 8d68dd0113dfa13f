//! A hand-written yamux session (hashicorp/yamux spec), server side.
//!
//! Packer dials the plugin's socket once and multiplexes everything over it with
//! yamux; Packer is the yamux *client* (odd stream ids), the plugin the *server*
//! (even ids). Frames are a 12-byte big-endian header
//! `version(0) type flags(u16) stream_id(u32) length(u32)` plus `length` bytes
//! of payload for Data frames.
//!
//! Design: one reader thread owns the socket's read half and never blocks on the
//! application (payload is buffered per stream, bounded by the 256 KiB window we
//! grant), so Packer's keepalive `Ping`s are answered even while every
//! application thread is busy. Writers share the write half behind a mutex and
//! write each frame with a single `write_all`. Go's keepalive drops the session
//! if a ping is not answered within 10 s, and its `ConnectionWriteTimeout` is
//! 10 s, so the reader must keep draining the socket: it does.

use std::collections::{HashMap, VecDeque};
use std::io::{self, Read, Write};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Protocol version carried in every header.
pub const VERSION: u8 = 0;
/// Header length in bytes.
pub const HEADER_LEN: usize = 12;
/// Initial (and maximum) receive window per stream, as in Go's default config.
pub const INITIAL_WINDOW: u32 = 256 * 1024;
/// Largest Data frame we send.
const MAX_FRAME: u32 = 64 * 1024;

/// Frame types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameType {
    Data = 0,
    WindowUpdate = 1,
    Ping = 2,
    GoAway = 3,
}

/// Flag bits.
pub mod flags {
    pub const SYN: u16 = 1;
    pub const ACK: u16 = 2;
    pub const FIN: u16 = 4;
    pub const RST: u16 = 8;
}

/// A decoded frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub ty: FrameType,
    pub flags: u16,
    pub stream_id: u32,
    /// Payload length (Data), window delta (WindowUpdate), opaque value (Ping)
    /// or error code (GoAway).
    pub length: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("yamux: unsupported protocol version {0}")]
    Version(u8),
    #[error("yamux: unknown frame type {0}")]
    Type(u8),
}

impl Header {
    pub fn new(ty: FrameType, flags: u16, stream_id: u32, length: u32) -> Header {
        Header {
            ty,
            flags,
            stream_id,
            length,
        }
    }

    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0] = VERSION;
        b[1] = self.ty as u8;
        b[2..4].copy_from_slice(&self.flags.to_be_bytes());
        b[4..8].copy_from_slice(&self.stream_id.to_be_bytes());
        b[8..12].copy_from_slice(&self.length.to_be_bytes());
        b
    }

    pub fn decode(b: &[u8; HEADER_LEN]) -> Result<Header, FrameError> {
        if b[0] != VERSION {
            return Err(FrameError::Version(b[0]));
        }
        let ty = match b[1] {
            0 => FrameType::Data,
            1 => FrameType::WindowUpdate,
            2 => FrameType::Ping,
            3 => FrameType::GoAway,
            t => return Err(FrameError::Type(t)),
        };
        Ok(Header {
            ty,
            flags: u16::from_be_bytes([b[2], b[3]]),
            stream_id: u32::from_be_bytes([b[4], b[5], b[6], b[7]]),
            length: u32::from_be_bytes([b[8], b[9], b[10], b[11]]),
        })
    }
}

/// Why a session or stream stopped.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("yamux session closed: {0}")]
    Closed(String),
    #[error("yamux stream {0} was reset by the peer")]
    Reset(u32),
    #[error("yamux stream {0}: write after close")]
    WriteClosed(u32),
    #[error("yamux stream {0}: timed out after {1:?}")]
    Timeout(u32, Duration),
}

impl From<SessionError> for io::Error {
    fn from(e: SessionError) -> io::Error {
        let kind = match e {
            SessionError::Timeout(..) => io::ErrorKind::TimedOut,
            SessionError::Reset(_) => io::ErrorKind::ConnectionReset,
            _ => io::ErrorKind::BrokenPipe,
        };
        io::Error::new(kind, e)
    }
}

#[derive(Default)]
struct StreamState {
    recv: VecDeque<u8>,
    /// Credit the peer still has for sending to us.
    recv_window: u32,
    /// Bytes consumed by the application but not yet returned as credit.
    consumed: u32,
    send_window: u32,
    remote_fin: bool,
    local_fin: bool,
    reset: bool,
}

struct StreamShared {
    id: u32,
    state: Mutex<StreamState>,
    cond: Condvar,
}

struct SessionState {
    streams: HashMap<u32, Arc<StreamShared>>,
    accept_queue: VecDeque<Stream>,
    next_id: u32,
    closed: Option<String>,
}

struct Shared {
    writer: Mutex<Box<dyn Write + Send>>,
    state: Mutex<SessionState>,
    accept_cond: Condvar,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A poisoned lock means a thread panicked mid-update; the data is still
    // the best we have, and the plugin must keep answering pings.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Shared {
    fn send(&self, h: Header, payload: &[u8]) -> Result<(), SessionError> {
        if let Some(reason) = &lock(&self.state).closed {
            return Err(SessionError::Closed(reason.clone()));
        }
        let mut frame = Vec::with_capacity(HEADER_LEN + payload.len());
        frame.extend_from_slice(&h.encode());
        frame.extend_from_slice(payload);
        let mut w = lock(&self.writer);
        let res = w.write_all(&frame).and_then(|()| w.flush());
        drop(w);
        res.map_err(|e| {
            let reason = format!("write failed: {e}");
            self.close(&reason);
            SessionError::Closed(reason)
        })
    }

    fn close(&self, reason: &str) {
        let mut st = lock(&self.state);
        if st.closed.is_none() {
            tracing::debug!(reason, "yamux session closing");
            st.closed = Some(reason.to_string());
        }
        let streams: Vec<_> = st.streams.values().cloned().collect();
        drop(st);
        self.accept_cond.notify_all();
        for s in streams {
            let _guard = lock(&s.state);
            s.cond.notify_all();
        }
    }

    fn closed_reason(&self) -> Option<String> {
        lock(&self.state).closed.clone()
    }
}

/// A yamux session over one connection.
#[derive(Clone)]
pub struct Session {
    shared: Arc<Shared>,
}

impl Session {
    /// Start a server-side session: spawns the reader thread.
    pub fn server<R, W>(reader: R, writer: W) -> Session
    where
        R: Read + Send + 'static,
        W: Write + Send + 'static,
    {
        Session::new(reader, writer, 2)
    }

    /// Start a client-side session (odd ids); used by tests that play Packer.
    pub fn client<R, W>(reader: R, writer: W) -> Session
    where
        R: Read + Send + 'static,
        W: Write + Send + 'static,
    {
        Session::new(reader, writer, 1)
    }

    fn new<R, W>(reader: R, writer: W, first_id: u32) -> Session
    where
        R: Read + Send + 'static,
        W: Write + Send + 'static,
    {
        let shared = Arc::new(Shared {
            writer: Mutex::new(Box::new(writer)),
            state: Mutex::new(SessionState {
                streams: HashMap::new(),
                accept_queue: VecDeque::new(),
                next_id: first_id,
                closed: None,
            }),
            accept_cond: Condvar::new(),
        });
        let for_reader = Arc::clone(&shared);
        std::thread::Builder::new()
            .name("yamux-reader".into())
            .spawn(move || {
                // Mark the session closed however this thread ends (even by a
                // panic), so no reader or acceptor waits forever.
                struct CloseOnExit(Arc<Shared>, String);
                impl Drop for CloseOnExit {
                    fn drop(&mut self) {
                        self.0.close(&self.1);
                    }
                }
                let mut guard = CloseOnExit(
                    Arc::clone(&for_reader),
                    "yamux reader thread ended unexpectedly".to_string(),
                );
                guard.1 = match read_loop(&for_reader, reader) {
                    Ok(()) => "peer closed the connection".to_string(),
                    Err(e) => e.to_string(),
                };
            })
            .expect("spawning the yamux reader thread must succeed");
        Session { shared }
    }

    /// Wait for the peer to open a stream.
    pub fn accept(&self) -> Result<Stream, SessionError> {
        let mut st = lock(&self.shared.state);
        loop {
            if let Some(s) = st.accept_queue.pop_front() {
                return Ok(s);
            }
            if let Some(reason) = &st.closed {
                return Err(SessionError::Closed(reason.clone()));
            }
            st = self
                .shared
                .accept_cond
                .wait(st)
                .unwrap_or_else(|p| p.into_inner());
        }
    }

    /// Open a new stream (WindowUpdate+SYN, delta 0, like Go).
    pub fn open(&self) -> Result<Stream, SessionError> {
        let mut st = lock(&self.shared.state);
        if let Some(reason) = &st.closed {
            return Err(SessionError::Closed(reason.clone()));
        }
        let id = st.next_id;
        st.next_id = st.next_id.wrapping_add(2);
        let stream = new_stream(id);
        st.streams.insert(id, Arc::clone(&stream));
        drop(st);
        self.shared
            .send(Header::new(FrameType::WindowUpdate, flags::SYN, id, 0), &[])?;
        Ok(Stream {
            inner: stream,
            session: Arc::clone(&self.shared),
            read_timeout: None,
        })
    }

    /// Send a ping (tests use it to check the peer answers).
    pub fn ping(&self, opaque: u32) -> Result<(), SessionError> {
        self.shared
            .send(Header::new(FrameType::Ping, flags::SYN, 0, opaque), &[])
    }

    /// Why the session closed, if it did.
    pub fn closed_reason(&self) -> Option<String> {
        self.shared.closed_reason()
    }

    /// Send GoAway and mark the session closed.
    pub fn close(&self) {
        let _ = self
            .shared
            .send(Header::new(FrameType::GoAway, 0, 0, 0), &[]);
        self.shared.close("closed locally");
    }
}

fn new_stream(id: u32) -> Arc<StreamShared> {
    Arc::new(StreamShared {
        id,
        state: Mutex::new(StreamState {
            recv_window: INITIAL_WINDOW,
            send_window: INITIAL_WINDOW,
            ..StreamState::default()
        }),
        cond: Condvar::new(),
    })
}

#[derive(Debug, thiserror::Error)]
enum ReadLoopError {
    #[error("yamux: read failed: {0}")]
    Io(#[from] io::Error),
    #[error(transparent)]
    Frame(#[from] FrameError),
    #[error("yamux: stream {0} sent {1} bytes over its window of {2}")]
    Window(u32, u32, u32),
    #[error("yamux: peer sent GoAway (code {0})")]
    GoAway(u32),
    #[error(transparent)]
    Send(#[from] SessionError),
}

fn read_loop<R: Read>(shared: &Arc<Shared>, mut reader: R) -> Result<(), ReadLoopError> {
    let mut hdr = [0u8; HEADER_LEN];
    loop {
        match reader.read_exact(&mut hdr) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e.into()),
        }
        let h = Header::decode(&hdr)?;
        match h.ty {
            FrameType::Ping => {
                if h.flags & flags::SYN != 0 {
                    shared.send(Header::new(FrameType::Ping, flags::ACK, 0, h.length), &[])?;
                }
            }
            FrameType::GoAway => return Err(ReadLoopError::GoAway(h.length)),
            FrameType::Data | FrameType::WindowUpdate => {
                let stream = lookup_or_accept(shared, &h)?;
                let payload_len = if h.ty == FrameType::Data { h.length } else { 0 };
                let Some(stream) = stream else {
                    // Unknown (already closed) stream: drain and drop the payload.
                    io::copy(
                        &mut (&mut reader).take(u64::from(payload_len)),
                        &mut io::sink(),
                    )?;
                    continue;
                };
                let mut st = lock(&stream.state);
                if h.ty == FrameType::Data {
                    if payload_len > st.recv_window {
                        return Err(ReadLoopError::Window(
                            stream.id,
                            payload_len,
                            st.recv_window,
                        ));
                    }
                    let mut buf = vec![0u8; payload_len as usize];
                    drop(st);
                    reader.read_exact(&mut buf)?;
                    st = lock(&stream.state);
                    st.recv_window -= payload_len;
                    st.recv.extend(buf);
                } else {
                    st.send_window = st.send_window.saturating_add(h.length);
                }
                if h.flags & flags::FIN != 0 {
                    st.remote_fin = true;
                }
                if h.flags & flags::RST != 0 {
                    st.reset = true;
                }
                let done = st.reset || (st.remote_fin && st.local_fin);
                drop(st);
                stream.cond.notify_all();
                if done {
                    lock(&shared.state).streams.remove(&stream.id);
                }
            }
        }
    }
}

/// Find the stream a frame is for; a SYN opens (and ACKs) a new inbound one.
fn lookup_or_accept(
    shared: &Arc<Shared>,
    h: &Header,
) -> Result<Option<Arc<StreamShared>>, SessionError> {
    let mut st = lock(&shared.state);
    if h.flags & flags::SYN != 0 {
        if st.streams.contains_key(&h.stream_id) {
            tracing::warn!(id = h.stream_id, "yamux: duplicate SYN ignored");
            return Ok(st.streams.get(&h.stream_id).cloned());
        }
        let stream = new_stream(h.stream_id);
        st.streams.insert(h.stream_id, Arc::clone(&stream));
        st.accept_queue.push_back(Stream {
            inner: Arc::clone(&stream),
            session: Arc::clone(shared),
            read_timeout: None,
        });
        drop(st);
        shared.accept_cond.notify_all();
        shared.send(
            Header::new(FrameType::WindowUpdate, flags::ACK, h.stream_id, 0),
            &[],
        )?;
        return Ok(Some(stream));
    }
    Ok(st.streams.get(&h.stream_id).cloned())
}

/// One multiplexed stream. Cloning gives another handle to the same stream
/// (one thread may read while another writes).
#[derive(Clone)]
pub struct Stream {
    inner: Arc<StreamShared>,
    session: Arc<Shared>,
    read_timeout: Option<Duration>,
}

impl Stream {
    pub fn id(&self) -> u32 {
        self.inner.id
    }

    /// Bound every later `read` on this handle.
    pub fn set_read_timeout(&mut self, t: Option<Duration>) {
        self.read_timeout = t;
    }

    /// Half-close: send FIN. Reading stays possible.
    pub fn close_write(&self) -> Result<(), SessionError> {
        let mut st = lock(&self.inner.state);
        if st.local_fin || st.reset {
            return Ok(());
        }
        st.local_fin = true;
        let done = st.remote_fin;
        drop(st);
        if done {
            lock(&self.session.state).streams.remove(&self.inner.id);
        }
        self.session.send(
            Header::new(FrameType::WindowUpdate, flags::FIN, self.inner.id, 0),
            &[],
        )
    }

    /// Abort the stream (RST).
    pub fn reset(&self) {
        lock(&self.inner.state).reset = true;
        self.inner.cond.notify_all();
        lock(&self.session.state).streams.remove(&self.inner.id);
        let _ = self.session.send(
            Header::new(FrameType::WindowUpdate, flags::RST, self.inner.id, 0),
            &[],
        );
    }

    fn read_inner(&self, buf: &mut [u8]) -> Result<usize, SessionError> {
        if buf.is_empty() {
            return Ok(0);
        }
        let deadline = self.read_timeout.map(|t| Instant::now() + t);
        let mut st = lock(&self.inner.state);
        loop {
            if !st.recv.is_empty() {
                let n = buf.len().min(st.recv.len());
                for (slot, byte) in buf.iter_mut().zip(st.recv.drain(..n)) {
                    *slot = byte;
                }
                st.consumed += n as u32;
                // Return credit once half the window is used, as Go does.
                let update = if st.consumed >= INITIAL_WINDOW / 2 && !st.remote_fin {
                    let delta = st.consumed;
                    st.consumed = 0;
                    st.recv_window += delta;
                    Some(delta)
                } else {
                    None
                };
                drop(st);
                if let Some(delta) = update {
                    self.session.send(
                        Header::new(FrameType::WindowUpdate, 0, self.inner.id, delta),
                        &[],
                    )?;
                }
                return Ok(n);
            }
            if st.reset {
                return Err(SessionError::Reset(self.inner.id));
            }
            if st.remote_fin {
                return Ok(0);
            }
            if let Some(reason) = self.session.closed_reason() {
                return Err(SessionError::Closed(reason));
            }
            st = match deadline {
                None => self.inner.cond.wait(st).unwrap_or_else(|p| p.into_inner()),
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        return Err(SessionError::Timeout(
                            self.inner.id,
                            self.read_timeout.unwrap_or_default(),
                        ));
                    }
                    self.inner
                        .cond
                        .wait_timeout(st, d - now)
                        .unwrap_or_else(|p| p.into_inner())
                        .0
                }
            };
        }
    }

    fn write_inner(&self, buf: &[u8]) -> Result<usize, SessionError> {
        if buf.is_empty() {
            return Ok(0);
        }
        let mut st = lock(&self.inner.state);
        loop {
            if st.reset {
                return Err(SessionError::Reset(self.inner.id));
            }
            if st.local_fin {
                return Err(SessionError::WriteClosed(self.inner.id));
            }
            if let Some(reason) = self.session.closed_reason() {
                return Err(SessionError::Closed(reason));
            }
            if st.send_window > 0 {
                break;
            }
            st = self.inner.cond.wait(st).unwrap_or_else(|p| p.into_inner());
        }
        let n = (buf.len() as u64)
            .min(u64::from(st.send_window))
            .min(u64::from(MAX_FRAME)) as u32;
        st.send_window -= n;
        drop(st);
        self.session.send(
            Header::new(FrameType::Data, 0, self.inner.id, n),
            &buf[..n as usize],
        )?;
        Ok(n as usize)
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        Ok(self.read_inner(buf)?)
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        Ok(self.write_inner(buf)?)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;

    fn pair() -> (Session, Session) {
        let (a, b) = UnixStream::pair().unwrap();
        let server = Session::server(a.try_clone().unwrap(), a);
        let client = Session::client(b.try_clone().unwrap(), b);
        (server, client)
    }

    #[test]
    fn header_golden_bytes() {
        // Go opens stream 1 with WindowUpdate+SYN, delta 0.
        let h = Header::new(FrameType::WindowUpdate, flags::SYN, 1, 0);
        assert_eq!(h.encode(), [0, 1, 0, 1, 0, 0, 0, 1, 0, 0, 0, 0]);
        // Ping ACK with opaque 7.
        let h = Header::new(FrameType::Ping, flags::ACK, 0, 7);
        assert_eq!(h.encode(), [0, 2, 0, 2, 0, 0, 0, 0, 0, 0, 0, 7]);
        let back = Header::decode(&[0, 0, 0, 4, 0, 0, 0, 3, 0, 0, 1, 0]).unwrap();
        assert_eq!(back, Header::new(FrameType::Data, flags::FIN, 3, 256));
        assert!(matches!(
            Header::decode(&[1; 12]),
            Err(FrameError::Version(1))
        ));
        assert!(matches!(
            Header::decode(&[0, 9, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
            Err(FrameError::Type(9))
        ));
    }

    #[test]
    fn answers_ping_with_same_opaque_on_the_raw_socket() {
        let (a, mut b) = UnixStream::pair().unwrap();
        let _server = Session::server(a.try_clone().unwrap(), a);
        b.write_all(&Header::new(FrameType::Ping, flags::SYN, 0, 0xdead).encode())
            .unwrap();
        let mut reply = [0u8; HEADER_LEN];
        b.read_exact(&mut reply).unwrap();
        assert_eq!(
            Header::decode(&reply).unwrap(),
            Header::new(FrameType::Ping, flags::ACK, 0, 0xdead)
        );
    }

    #[test]
    fn inbound_syn_is_acked_and_data_flows_both_ways() {
        let (a, mut b) = UnixStream::pair().unwrap();
        let server = Session::server(a.try_clone().unwrap(), a);
        b.write_all(&Header::new(FrameType::WindowUpdate, flags::SYN, 1, 0).encode())
            .unwrap();
        let mut frame = Header::new(FrameType::Data, 0, 1, 5).encode().to_vec();
        frame.extend_from_slice(b"hello");
        b.write_all(&frame).unwrap();
        let mut s = server.accept().unwrap();
        assert_eq!(s.id(), 1);
        let mut got = [0u8; 5];
        s.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"hello");
        let mut ack = [0u8; HEADER_LEN];
        b.read_exact(&mut ack).unwrap();
        assert_eq!(
            Header::decode(&ack).unwrap(),
            Header::new(FrameType::WindowUpdate, flags::ACK, 1, 0)
        );
        s.write_all(b"hi").unwrap();
        let mut hdr = [0u8; HEADER_LEN];
        b.read_exact(&mut hdr).unwrap();
        assert_eq!(
            Header::decode(&hdr).unwrap(),
            Header::new(FrameType::Data, 0, 1, 2)
        );
        let mut body = [0u8; 2];
        b.read_exact(&mut body).unwrap();
        assert_eq!(&body, b"hi");
    }

    #[test]
    fn large_transfer_respects_windows_both_ways() {
        let (server, client) = pair();
        let payload: Vec<u8> = (0..(3 * INITIAL_WINDOW as usize + 17))
            .map(|i| (i % 251) as u8)
            .collect();
        let expected = payload.clone();
        let writer = std::thread::spawn(move || {
            let mut s = client.open().unwrap();
            s.write_all(&payload).unwrap();
            s.close_write().unwrap();
            let mut echo = Vec::new();
            s.read_to_end(&mut echo).unwrap();
            echo
        });
        let mut s = server.accept().unwrap();
        let mut got = Vec::new();
        s.read_to_end(&mut got).unwrap();
        assert_eq!(got, expected);
        s.write_all(&got).unwrap();
        s.close_write().unwrap();
        assert_eq!(writer.join().unwrap(), expected);
    }

    #[test]
    fn data_over_the_window_closes_the_session() {
        let (a, mut b) = UnixStream::pair().unwrap();
        let server = Session::server(a.try_clone().unwrap(), a);
        b.write_all(&Header::new(FrameType::WindowUpdate, flags::SYN, 1, 0).encode())
            .unwrap();
        b.write_all(&Header::new(FrameType::Data, 0, 1, INITIAL_WINDOW + 1).encode())
            .unwrap();
        let mut s = server.accept().unwrap();
        let err = s.read(&mut [0u8; 4]).unwrap_err();
        assert!(err.to_string().contains("over its window"), "{err}");
    }

    #[test]
    fn read_timeout_fires() {
        let (server, client) = pair();
        let _c = client.open().unwrap();
        let mut s = server.accept().unwrap();
        s.set_read_timeout(Some(Duration::from_millis(50)));
        let err = s.read(&mut [0u8; 1]).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    }

    #[test]
    fn rst_and_goaway_surface_as_errors() {
        let (server, client) = pair();
        let c = client.open().unwrap();
        let mut s = server.accept().unwrap();
        c.reset();
        let err = s.read(&mut [0u8; 1]).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::ConnectionReset);
        client.close();
        let err = server.accept().err().unwrap();
        assert!(err.to_string().contains("GoAway"), "{err}");
    }
}
