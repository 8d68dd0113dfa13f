//! Packer's "mux broker" on top of yamux (`rpc/mux_broker.go`).
//!
//! Logical u32 ids name streams: `dial(id)` opens a yamux stream, writes `id` as
//! 4 little-endian bytes and waits for the same 4 bytes back; the accepting
//! side reads the id of every inbound stream, parks the stream under it, and
//! `accept(id)` claims it and echoes the id. Both waits are bounded by 5 s, and a
//! parked stream nobody claims within 5 s is closed — exactly Go's behaviour.
//!
//! [`Broker::expect`] is the non-blocking form of `accept`: register interest
//! first, make the RPC call that makes the peer dial, then collect the stream.
//! Packer's `Communicator.Start` dials stdout, stderr and response one after
//! the other and each dial waits for our echo, so a registered interest echoes
//! as soon as the stream arrives, without a thread per id.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::yamux::{Session, SessionError, Stream};

/// Go's broker timeout, used for dial acks, accepts and parked streams.
pub const TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("mux broker: {0}")]
    Session(#[from] SessionError),
    #[error("mux broker: stream id {id}: {source}")]
    Io { id: u32, source: std::io::Error },
    #[error("mux broker: dial {id}: peer acknowledged id {got}")]
    BadAck { id: u32, got: u32 },
    #[error("mux broker: no stream for id {0} arrived within {1:?}")]
    AcceptTimeout(u32, Duration),
}

#[derive(Default)]
struct State {
    parked: HashMap<u32, Stream>,
    /// Ids someone is waiting for: arriving streams are echoed at once.
    expected: HashMap<u32, Option<Stream>>,
}

struct Inner {
    session: Session,
    next_id: AtomicU32,
    state: Mutex<State>,
    cond: Condvar,
    timeout: Duration,
}

fn lock(m: &Mutex<State>) -> MutexGuard<'_, State> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The broker; clone freely.
#[derive(Clone)]
pub struct Broker {
    inner: Arc<Inner>,
}

/// A registered interest in a stream id (see [`Broker::expect`]).
pub struct Expected {
    broker: Broker,
    id: u32,
}

impl Broker {
    /// Start the broker: spawns the thread that accepts inbound streams.
    pub fn start(session: Session) -> Broker {
        Broker::with_timeout(session, TIMEOUT)
    }

    /// As [`Broker::start`] with another timeout (tests).
    pub fn with_timeout(session: Session, timeout: Duration) -> Broker {
        let broker = Broker {
            inner: Arc::new(Inner {
                session,
                next_id: AtomicU32::new(1),
                state: Mutex::new(State::default()),
                cond: Condvar::new(),
                timeout,
            }),
        };
        let run = broker.clone();
        std::thread::Builder::new()
            .name("mux-broker".into())
            .spawn(move || run.run())
            .expect("spawning the mux broker thread must succeed");
        broker
    }

    pub fn session(&self) -> &Session {
        &self.inner.session
    }

    /// Our side's id counter (starts at 1; independent of the peer's).
    pub fn next_id(&self) -> u32 {
        self.inner.next_id.fetch_add(1, Ordering::Relaxed)
    }

    fn run(&self) {
        while let Ok(stream) = self.inner.session.accept() {
            let me = self.clone();
            let spawned = std::thread::Builder::new()
                .name("mux-broker-id".into())
                .spawn(move || me.handle_inbound(stream));
            if let Err(e) = spawned {
                tracing::error!(error = %e, "mux broker: cannot spawn a thread");
            }
        }
    }

    fn handle_inbound(&self, mut stream: Stream) {
        let mut id = [0u8; 4];
        stream.set_read_timeout(Some(self.inner.timeout));
        if let Err(e) = stream.read_exact(&mut id) {
            tracing::warn!(stream = stream.id(), error = %e, "mux broker: no id on inbound stream");
            stream.reset();
            return;
        }
        stream.set_read_timeout(None);
        let id = u32::from_le_bytes(id);
        let mut st = lock(&self.inner.state);
        if let Some(slot) = st.expected.get_mut(&id)
            && slot.is_none()
        {
            if let Err(e) = stream.write_all(&id.to_le_bytes()) {
                tracing::warn!(id, error = %e, "mux broker: echo failed");
            }
            *slot = Some(stream);
            drop(st);
            self.inner.cond.notify_all();
            return;
        }
        st.parked.insert(id, stream);
        drop(st);
        self.inner.cond.notify_all();
        // Go closes parked streams nobody claims within the timeout.
        let me = self.clone();
        let sid = id;
        let _ = std::thread::Builder::new()
            .name("mux-broker-expire".into())
            .spawn(move || {
                std::thread::sleep(me.inner.timeout);
                if let Some(s) = lock(&me.inner.state).parked.remove(&sid) {
                    tracing::warn!(id = sid, "mux broker: closing unclaimed stream");
                    s.reset();
                }
            });
    }

    /// Open a stream to the peer's `accept(id)`.
    pub fn dial(&self, id: u32) -> Result<Stream, BrokerError> {
        let mut stream = self.inner.session.open()?;
        let io = |source| BrokerError::Io { id, source };
        stream.write_all(&id.to_le_bytes()).map_err(io)?;
        let mut ack = [0u8; 4];
        stream.set_read_timeout(Some(self.inner.timeout));
        stream.read_exact(&mut ack).map_err(io)?;
        stream.set_read_timeout(None);
        let got = u32::from_le_bytes(ack);
        if got != id {
            stream.reset();
            return Err(BrokerError::BadAck { id, got });
        }
        Ok(stream)
    }

    /// Wait (bounded) for the peer to dial `id`, then echo the id.
    pub fn accept(&self, id: u32) -> Result<Stream, BrokerError> {
        let deadline = Instant::now() + self.inner.timeout;
        let mut st = lock(&self.inner.state);
        loop {
            if let Some(mut s) = st.parked.remove(&id) {
                drop(st);
                s.write_all(&id.to_le_bytes())
                    .map_err(|source| BrokerError::Io { id, source })?;
                return Ok(s);
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(BrokerError::AcceptTimeout(id, self.inner.timeout));
            }
            st = self
                .inner
                .cond
                .wait_timeout(st, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// Register interest in `id` before making the peer dial it.
    pub fn expect(&self, id: u32) -> Expected {
        let mut st = lock(&self.inner.state);
        let early = st.parked.remove(&id);
        if let Some(mut s) = early.clone() {
            // Already there: echo now.
            if let Err(e) = s.write_all(&id.to_le_bytes()) {
                tracing::warn!(id, error = %e, "mux broker: echo failed");
            }
        }
        st.expected.insert(id, early);
        Expected {
            broker: self.clone(),
            id,
        }
    }
}

impl Expected {
    pub fn id(&self) -> u32 {
        self.id
    }

    /// Collect the stream, waiting at most the broker timeout.
    pub fn wait(self) -> Result<Stream, BrokerError> {
        let inner = &self.broker.inner;
        let deadline = Instant::now() + inner.timeout;
        let mut st = lock(&inner.state);
        loop {
            if let Some(Some(_)) = st.expected.get(&self.id)
                && let Some(Some(s)) = st.expected.remove(&self.id)
            {
                return Ok(s);
            }
            let now = Instant::now();
            if now >= deadline {
                st.expected.remove(&self.id);
                return Err(BrokerError::AcceptTimeout(self.id, inner.timeout));
            }
            st = inner
                .cond
                .wait_timeout(st, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }
}

impl Drop for Expected {
    fn drop(&mut self) {
        let mut st = lock(&self.broker.inner.state);
        if let Some(Some(s)) = st.expected.remove(&self.id) {
            s.reset();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;

    fn pair() -> (Broker, Broker) {
        let (a, b) = UnixStream::pair().unwrap();
        let server = Session::server(a.try_clone().unwrap(), a);
        let client = Session::client(b.try_clone().unwrap(), b);
        (
            Broker::with_timeout(server, Duration::from_millis(500)),
            Broker::with_timeout(client, Duration::from_millis(500)),
        )
    }

    #[test]
    fn dial_writes_le_id_and_checks_the_echo_on_raw_yamux() {
        // Play the accepting side by hand on the peer session.
        let (a, b) = UnixStream::pair().unwrap();
        let plugin = Broker::start(Session::server(a.try_clone().unwrap(), a));
        let packer = Session::client(b.try_clone().unwrap(), b);
        let t = std::thread::spawn(move || plugin.dial(0x0102_0304).map(|s| s.id()));
        let mut s = packer.accept().unwrap();
        let mut id = [0u8; 4];
        s.read_exact(&mut id).unwrap();
        assert_eq!(id, [0x04, 0x03, 0x02, 0x01], "little-endian id");
        s.write_all(&id).unwrap();
        assert_eq!(t.join().unwrap().unwrap(), 2, "plugin streams are even");
    }

    #[test]
    fn dial_rejects_a_wrong_echo() {
        let (a, b) = UnixStream::pair().unwrap();
        let plugin = Broker::start(Session::server(a.try_clone().unwrap(), a));
        let packer = Session::client(b.try_clone().unwrap(), b);
        let t = std::thread::spawn(move || plugin.dial(5));
        let mut s = packer.accept().unwrap();
        let mut id = [0u8; 4];
        s.read_exact(&mut id).unwrap();
        s.write_all(&6u32.to_le_bytes()).unwrap();
        let err = t.join().unwrap().err().unwrap();
        assert!(
            matches!(err, BrokerError::BadAck { id: 5, got: 6 }),
            "{err}"
        );
    }

    #[test]
    fn accept_after_dial_and_expect_before_dial() {
        let (plugin, packer) = pair();
        // Packer dials first; the stream is parked until accept.
        let p2 = packer.clone();
        let t = std::thread::spawn(move || p2.dial(0).map(|s| s.id()));
        let mut s = plugin.accept(0).unwrap();
        assert_eq!(t.join().unwrap().unwrap(), 1);
        // Interest registered first; a later dial is echoed immediately.
        let e1 = plugin.expect(7);
        let e2 = plugin.expect(8);
        let mut d1 = packer.dial(7).unwrap();
        let d2 = packer.dial(8).unwrap();
        let mut s7 = e1.wait().unwrap();
        let _s8 = e2.wait().unwrap();
        d1.write_all(b"x").unwrap();
        let mut got = [0u8; 1];
        s7.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"x");
        drop(d2);
        s.write_all(b"main").unwrap();
    }

    #[test]
    fn accept_and_dial_time_out() {
        let (plugin, packer) = pair();
        let err = plugin.accept(42).err().unwrap();
        assert!(matches!(err, BrokerError::AcceptTimeout(42, _)), "{err}");
        // Nobody claims id 9 on the plugin side: the dial's ack never comes.
        // (Depending on timing: the ack read times out, or the parked stream
        // is reset when its own 5 s, here 500 ms, expire.)
        let err = packer.dial(9).err().unwrap();
        assert!(matches!(err, BrokerError::Io { id: 9, .. }), "{err}");
    }
}
