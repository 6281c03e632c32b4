//! QUIC endpoints with the transport settings UpGlobe uses.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};

use crate::tls::{PeerIdentity, SchedulerIdentity};
use crate::{ProtocolError, Result, SERVER_NAME, Token};

/// How long a silent peer is considered alive. Keep-alives go out at a third of it.
pub const IDLE_TIMEOUT_DEFAULT: Duration = Duration::from_secs(15);

fn transport(idle_timeout: Duration) -> Arc<quinn::TransportConfig> {
    let mut transport = quinn::TransportConfig::default();
    transport
        .max_idle_timeout(Some(idle_timeout.try_into().expect("idle timeout fits in a QUIC varint")))
        .keep_alive_interval(Some(idle_timeout / 3))
        .max_concurrent_bidi_streams(1024u32.into())
        .max_concurrent_uni_streams(0u32.into())
        // Large windows: checkpoints and input files are megabytes to gigabytes.
        .stream_receive_window((16u32 << 20).into())
        .receive_window((64u32 << 20).into())
        .send_window(64 << 20);
    Arc::new(transport)
}

pub fn server_endpoint(
    identity: &SchedulerIdentity,
    listen: SocketAddr,
    idle_timeout: Duration,
) -> Result<quinn::Endpoint> {
    let crypto = QuicServerConfig::try_from(identity.server_config()?)
        .map_err(|e| ProtocolError::Tls(format!("quic server config: {e}")))?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    config.transport_config(transport(idle_timeout));
    endpoint(listen, Some(config))
        .map_err(|source| ProtocolError::Io { context: format!("cannot listen on {listen}"), cause: source })
}

/// Socket buffers asked for: a window's worth of 64 KiB datagrams, so that a burst is not dropped
/// (the kernel caps them at `net.core.rmem_max` / `wmem_max`).
const SOCKET_BUFFER_BYTES: libc::c_int = 16 << 20;

/// An endpoint on its own UDP socket with large socket buffers. MTU discovery keeps quinn's
/// Ethernet bound (1452): larger bounds (loopback, jumbo frames) measured no faster here, and a
/// receiver that falls behind loses large packets in bursts, which quinn reads as a black hole and
/// answers by falling back to 1200 bytes.
fn endpoint(bind: SocketAddr, server: Option<quinn::ServerConfig>) -> std::io::Result<quinn::Endpoint> {
    let socket = std::net::UdpSocket::bind(bind)?;
    // Best effort: a smaller buffer is slower, not wrong. The FORCE options pass the system's cap
    // where the process may (CAP_NET_ADMIN); the plain ones take what the cap allows.
    for options in [[libc::SO_RCVBUFFORCE, libc::SO_RCVBUF], [libc::SO_SNDBUFFORCE, libc::SO_SNDBUF]] {
        for option in options {
            // SAFETY: the descriptor is a live socket and the value a c_int of the size given.
            let set = unsafe {
                libc::setsockopt(
                    std::os::fd::AsRawFd::as_raw_fd(&socket),
                    libc::SOL_SOCKET,
                    option,
                    (&SOCKET_BUFFER_BYTES as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                )
            };
            if set == 0 {
                break;
            }
        }
    }
    quinn::Endpoint::new(quinn::EndpointConfig::default(), server, socket, Arc::new(quinn::TokioRuntime))
}

/// Connects to the scheduler named by `token`, verifying its certificate against the pinned CA.
pub async fn connect(token: &Token, identity: &PeerIdentity, idle_timeout: Duration) -> Result<quinn::Connection> {
    let peer = token.address.clone();
    let failed = |message: String| ProtocolError::Connection { peer: peer.clone(), message };
    let address: SocketAddr = tokio::net::lookup_host(&token.address)
        .await
        .map_err(|e| failed(format!("cannot resolve: {e}")))?
        .next()
        .ok_or_else(|| failed("the name resolves to no address".into()))?;
    connect_to(address, token.ca_fingerprint, identity, idle_timeout).await.map_err(|e| match e {
        ProtocolError::Connection { message, .. } if message.contains(crate::tls::WRONG_SCHEDULER) => {
            ProtocolError::WrongScheduler { peer: peer.clone(), message }
        }
        ProtocolError::Connection { message, .. } => failed(message),
        other => other,
    })
}

/// An endpoint on which a worker serves its cache to other workers.
pub fn peer_endpoint(identity: &PeerIdentity, listen: SocketAddr, idle_timeout: Duration) -> Result<quinn::Endpoint> {
    let crypto = QuicServerConfig::try_from(identity.peer_server_config()?)
        .map_err(|e| ProtocolError::Tls(format!("quic peer server config: {e}")))?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    config.transport_config(transport(idle_timeout));
    endpoint(listen, Some(config))
        .map_err(|source| ProtocolError::Io { context: format!("cannot listen for peers on {listen}"), cause: source })
}

/// Connects to the worker with id `peer` at `address`, an `IP:PORT` (as the scheduler named it:
/// never a name to resolve).
pub async fn connect_peer(
    address: &str,
    peer: crate::WorkerId,
    identity: &PeerIdentity,
    idle_timeout: Duration,
) -> Result<quinn::Connection> {
    let resolved: SocketAddr = address
        .parse()
        .map_err(|_| ProtocolError::Connection { peer: address.to_string(), message: "not an IP:PORT".into() })?;
    dial(resolved, identity.peer_client_config(peer)?, "upglobe-peer", idle_timeout).await
}

/// Connects to a peer at `address` whose certificate chains to the CA with `ca_fingerprint`.
pub async fn connect_to(
    address: SocketAddr,
    ca_fingerprint: [u8; 32],
    identity: &PeerIdentity,
    idle_timeout: Duration,
) -> Result<quinn::Connection> {
    dial(address, identity.client_config(ca_fingerprint)?, SERVER_NAME, idle_timeout).await
}

/// A client endpoint of its own, and a connection from it to `address` with `crypto`.
async fn dial(
    address: SocketAddr,
    crypto: rustls::ClientConfig,
    server_name: &str,
    idle_timeout: Duration,
) -> Result<quinn::Connection> {
    let failed = |message: String| ProtocolError::Connection { peer: address.to_string(), message };
    let bind: SocketAddr = if address.is_ipv6() { "[::]:0".parse().unwrap() } else { "0.0.0.0:0".parse().unwrap() };
    let mut endpoint = endpoint(bind, None)
        .map_err(|source| ProtocolError::Io { context: "cannot open a UDP socket".into(), cause: source })?;
    let crypto =
        QuicClientConfig::try_from(crypto).map_err(|e| ProtocolError::Tls(format!("quic client config: {e}")))?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    config.transport_config(transport(idle_timeout));
    endpoint.set_default_client_config(config);
    let connecting = endpoint.connect(address, server_name).map_err(|e| failed(e.to_string()))?;
    connecting.await.map_err(|e| failed(describe_connection_error(&e)))
}

/// Connection errors in words an operator can act on.
pub fn describe_connection_error(error: &quinn::ConnectionError) -> String {
    match error {
        quinn::ConnectionError::TimedOut => "no answer (is the scheduler running and reachable over UDP?)".into(),
        quinn::ConnectionError::TransportError(e) => format!("{e}"),
        quinn::ConnectionError::ConnectionClosed(c) => format!("closed by the peer: {c}"),
        quinn::ConnectionError::ApplicationClosed(c) => {
            format!("closed by the peer: {}", String::from_utf8_lossy(&c.reason))
        }
        other => other.to_string(),
    }
}
