//! A droplet's own network namespace.
//!
//! The namespace is unnamed (it is not under `/run/netns`): the simulator holds
//! it by a file descriptor, the sockets it binds inside it hold it, and the
//! container runs in it. When all three are gone the kernel frees it, so a
//! killed run cannot leave one behind.
//!
//! Inside there is only `lo`, up, with `127.0.0.1/8` and `169.254.169.254/32`
//! (DigitalOcean's metadata address). Nothing routes anywhere else. The
//! simulator reaches into the namespace by creating sockets there: a thread
//! enters it (`setns`), binds or connects, and ends; the socket stays in the
//! namespace it was created in and is then served from the async runtime like
//! any other socket.

use std::fs::File;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::OwnedFd;
use std::process::Command;

use nix::sched::{CloneFlags, setns, unshare};

/// DigitalOcean's link-local metadata address, on `lo` inside every droplet.
pub const METADATA_IP: Ipv4Addr = Ipv4Addr::new(169, 254, 169, 254);

/// One droplet's network namespace (see the module docs).
#[derive(Debug)]
pub struct DropletNet {
    ns: OwnedFd,
}

impl DropletNet {
    /// A new namespace with `lo` up and the metadata address on it (`ip` from iproute2).
    pub fn create() -> io::Result<DropletNet> {
        on_own_thread(|| {
            unshare(CloneFlags::CLONE_NEWNET).map_err(io::Error::from)?;
            let ns = OwnedFd::from(File::open("/proc/thread-self/ns/net")?);
            // A child started from this thread inherits its network namespace.
            ip(&["link", "set", "lo", "up"])?;
            ip(&["addr", "add", &format!("{METADATA_IP}/32"), "dev", "lo"])?;
            Ok(DropletNet { ns })
        })
    }

    /// Run `f` on a fresh thread inside this namespace.
    pub fn enter<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> io::Result<T> + Send + 'static,
    ) -> io::Result<T> {
        let ns = self.ns.try_clone()?;
        on_own_thread(move || {
            setns(&ns, CloneFlags::CLONE_NEWNET).map_err(io::Error::from)?;
            f()
        })
    }

    /// Bind TCP listeners inside the namespace (non-blocking, ready for tokio).
    pub fn bind(&self, addrs: Vec<SocketAddr>) -> io::Result<Vec<TcpListener>> {
        self.enter(move || {
            addrs
                .iter()
                .map(|addr| {
                    let l = TcpListener::bind(addr).map_err(|e| {
                        io::Error::new(e.kind(), format!("binding {addr} in a droplet: {e}"))
                    })?;
                    l.set_nonblocking(true)?;
                    Ok(l)
                })
                .collect()
        })
    }

    /// Connect to `addr` as seen from inside the namespace (non-blocking stream).
    pub fn connect(&self, addr: SocketAddr) -> io::Result<TcpStream> {
        self.enter(move || {
            let s = TcpStream::connect(addr)?;
            s.set_nonblocking(true)?;
            Ok(s)
        })
    }

    /// A handle to the namespace for a thread that enters it itself.
    pub fn handle(&self) -> io::Result<OwnedFd> {
        self.ns.try_clone()
    }
}

/// Run `f` on a new OS thread and wait for it. Namespace changes are per thread,
/// so the caller's thread (a runtime worker) never leaves the host's namespaces.
pub fn on_own_thread<T: Send + 'static>(
    f: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    std::thread::Builder::new()
        .name("do-sim-ns".into())
        .spawn(f)?
        .join()
        .map_err(|_| io::Error::other("a namespace thread panicked"))?
}

fn ip(args: &[&str]) -> io::Result<()> {
    let out = Command::new("ip").args(args).output().map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("running `ip` (package iproute2) failed: {e}"),
        )
    })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}
