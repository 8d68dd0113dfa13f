//! Process startup: argument handling, the handshake, and serving `Provisioner`.
//!
//! Start-up order (as the Go SDK does it): check the magic cookie, ignore
//! SIGINT/SIGTERM (Ctrl-C reaches the whole process group; cancellation comes as
//! an RPC), listen on a fresh Unix socket, print the handshake line, accept
//! Packer's one connection, run yamux + the mux broker over it, accept broker
//! stream 0 and serve net/rpc on it until Packer goes away.

use std::io::Write;
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::provisioner::Provisioner;
use crate::wire::broker::{Broker, BrokerError};
use crate::wire::handshake::{self, HandshakeError, Invocation, Protocol};
use crate::wire::netrpc::{self, RpcError};
use crate::wire::yamux::Session;

/// How long we wait for Packer to connect after printing the handshake line.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Handshake(#[from] HandshakeError),
    #[error(
        "this binary is a Packer plugin and is not meant to be executed directly: \
         install it where Packer finds it and run packer (the {} variable is missing or wrong)",
        handshake::MAGIC_COOKIE_KEY
    )]
    NoCookie,
    #[error("creating the plugin socket under {path}: {source}")]
    Socket {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("writing the handshake line to stdout: {0}")]
    Stdout(std::io::Error),
    #[error("Packer did not connect to {0} within {CONNECT_TIMEOUT:?}")]
    NoConnection(PathBuf),
    #[error("blocking SIGINT/SIGTERM: {0}")]
    Signals(nix::Error),
    #[error(transparent)]
    Broker(#[from] BrokerError),
    #[error(transparent)]
    Rpc(#[from] RpcError),
}

/// Run the plugin for `args` (without the program name).
pub fn run(args: &[String]) -> Result<(), ServerError> {
    let inv = handshake::parse_args(args)?;
    match inv {
        Invocation::Describe => {
            println!("{}", handshake::describe(env!("CARGO_PKG_VERSION")));
            return Ok(());
        }
        Invocation::Version => {
            println!("packer-plugin-vmagent {}", env!("CARGO_PKG_VERSION"));
            return Ok(());
        }
        Invocation::Start { protobuf: true, .. } => return Err(HandshakeError::Protobuf.into()),
        Invocation::Single | Invocation::Start { .. } => {}
    }
    if std::env::var(handshake::MAGIC_COOKIE_KEY).as_deref() != Ok(handshake::MAGIC_COOKIE_VALUE) {
        return Err(ServerError::NoCookie);
    }
    let env = std::env::var(handshake::PROTOCOL_ENV).ok();
    let proto = handshake::choose(&inv, env.as_deref())?;
    tracing::info!(?inv, ?proto, "starting");
    block_interrupts()?;
    serve(proto)
}

fn block_interrupts() -> Result<(), ServerError> {
    use nix::sys::signal::{SigSet, Signal};
    let mut set = SigSet::empty();
    set.add(Signal::SIGINT);
    set.add(Signal::SIGTERM);
    set.thread_block().map_err(ServerError::Signals)
}

/// A private directory for the socket (0700), removed once Packer connected.
fn socket_dir() -> Result<PathBuf, ServerError> {
    use std::os::unix::fs::DirBuilderExt;
    let dir = std::env::temp_dir().join(format!(
        "packer-plugin-vmagent.{}.{:08x}",
        std::process::id(),
        rand::random::<u32>()
    ));
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&dir)
        .map_err(|source| ServerError::Socket {
            path: dir.clone(),
            source,
        })?;
    Ok(dir)
}

fn serve(proto: Protocol) -> Result<(), ServerError> {
    let dir = socket_dir()?;
    let path = dir.join("plugin.sock");
    let sock_err = |source| ServerError::Socket {
        path: path.clone(),
        source,
    };
    let listener = UnixListener::bind(&path).map_err(sock_err)?;
    listener.set_nonblocking(true).map_err(sock_err)?;

    let line = handshake::line(proto, "unix", &path.to_string_lossy());
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{line}")
        .and_then(|()| stdout.flush())
        .map_err(ServerError::Stdout)?;
    drop(stdout);

    let deadline = Instant::now() + CONNECT_TIMEOUT;
    let conn = loop {
        match listener.accept() {
            Ok((c, _)) => break c,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if Instant::now() >= deadline {
                    let _ = std::fs::remove_dir_all(&dir);
                    return Err(ServerError::NoConnection(path));
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => return Err(sock_err(e)),
        }
    };
    drop(listener);
    let _ = std::fs::remove_dir_all(&dir);
    conn.set_nonblocking(false).map_err(sock_err)?;
    let reader = conn.try_clone().map_err(sock_err)?;
    let session = Session::server(reader, conn);
    let broker = Broker::start(session.clone());

    // Packer dials broker id 0 for the main RPC channel right after connecting.
    let main = loop {
        match broker.accept(0) {
            Ok(s) => break s,
            Err(BrokerError::AcceptTimeout(..)) if session.closed_reason().is_none() => continue,
            Err(e) => return Err(e.into()),
        }
    };
    let prov = Provisioner::new(broker);
    let handler: netrpc::Handler = Arc::new(move |method, args| prov.handle(method, args));
    netrpc::serve(main, handler)?;
    tracing::info!("Packer closed the RPC channel; exiting");
    Ok(())
}
