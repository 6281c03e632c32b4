//! QUIC endpoints with the transport settings UpGlobe uses.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};

use crate::tls::{PeerIdentity, SchedulerIdentity};
use crate::{ProtocolError, Result, SERVER_NAME, Token};

/// How long a silent peer is considered alive. Keep-alives go out at a third of it.
pub const IDLE_TIMEOUT_DEFAULT: Duration = Duration::from_secs(15);

/// The largest UDP payload MTU discovery tries (IPv6's maximum).
const MTU_UPPER_BOUND: u16 = 65_527;

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
    // Let MTU discovery look past Ethernet's 1500 bytes: jumbo frames in a lab, 64 KiB on
    // loopback. Every packet costs a header, an encryption and an acknowledgement, so fewer,
    // larger packets are the largest single gain in bulk throughput; a path that carries less is
    // found by the same discovery (and black holes by its detection), so this is safe anywhere.
    let mut mtu = quinn::MtuDiscoveryConfig::default();
    mtu.upper_bound(MTU_UPPER_BOUND);
    transport.mtu_discovery_config(Some(mtu));
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
    quinn::Endpoint::server(config, listen)
        .map_err(|source| ProtocolError::Io { context: format!("cannot listen on {listen}"), cause: source })
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

/// Connects to a peer at `address` whose certificate chains to the CA with `ca_fingerprint`.
pub async fn connect_to(
    address: SocketAddr,
    ca_fingerprint: [u8; 32],
    identity: &PeerIdentity,
    idle_timeout: Duration,
) -> Result<quinn::Connection> {
    let failed = |message: String| ProtocolError::Connection { peer: address.to_string(), message };
    let bind: SocketAddr = if address.is_ipv6() { "[::]:0".parse().unwrap() } else { "0.0.0.0:0".parse().unwrap() };
    let mut endpoint = quinn::Endpoint::client(bind)
        .map_err(|source| ProtocolError::Io { context: "cannot open a UDP socket".into(), cause: source })?;
    let crypto = QuicClientConfig::try_from(identity.client_config(ca_fingerprint)?)
        .map_err(|e| ProtocolError::Tls(format!("quic client config: {e}")))?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    config.transport_config(transport(idle_timeout));
    endpoint.set_default_client_config(config);
    let connecting = endpoint.connect(address, SERVER_NAME).map_err(|e| failed(e.to_string()))?;
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
