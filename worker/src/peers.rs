//! Workers serving their caches to each other. The scheduler names, with each assignment, other
//! workers that hold its inputs; the worker fetches verified slices from them beside the
//! scheduler. A peer is admitted only with proof of the cluster's worker secret (bound to both
//! ends, so it cannot be replayed elsewhere), and a server only if its key is the one the scheduler
//! named; what a peer sends is verified slice by slice like anything else, and a peer that sends
//! one bad slice is dropped for the download.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use upglobe_datasets::{BlobStore, transfer};
use upglobe_protocol::messages::limits::PEER_CONNECTIONS_MAX;
use upglobe_protocol::messages::{BlobReply, PeerHello, PeerSource};
use upglobe_protocol::tls::{PeerIdentity, peer_id};
use upglobe_protocol::token::peer_proof;
use upglobe_protocol::{WorkerId, frame, net};

use crate::{Result, WorkerError};

/// How long a peer has to answer before a download goes on without it.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The largest first frame a peer may send.
const HELLO_BYTES_MAX: usize = 256;
/// Connections one peer may hold at once (a download uses one; a few allow for retries): no
/// single worker can take every slot.
const CONNECTIONS_PER_PEER_MAX: usize = 4;

/// Listens for peers on `listen`; returns the port it serves on. Each admitted peer is served
/// slices of this worker's cache until it goes; at most [`PEER_CONNECTIONS_MAX`] at once.
pub fn serve(
    identity: &PeerIdentity,
    blobs: BlobStore,
    listen: SocketAddr,
    secret: String,
    idle_timeout: Duration,
) -> Result<u16> {
    let endpoint = net::peer_endpoint(identity, listen, idle_timeout)?;
    let port = endpoint.local_addr().map_err(|e| WorkerError::Session(format!("peer endpoint: {e}")))?.port();
    let me = identity.id()?;
    let slots = Arc::new(tokio::sync::Semaphore::new(PEER_CONNECTIONS_MAX));
    let per_peer: Arc<std::sync::Mutex<std::collections::HashMap<WorkerId, usize>>> = Arc::default();
    tokio::spawn(async move {
        while let Some(incoming) = endpoint.accept().await {
            let Ok(permit) = slots.clone().try_acquire_owned() else {
                incoming.refuse();
                continue;
            };
            let (blobs, secret, per_peer) = (blobs.clone(), secret.clone(), per_peer.clone());
            tokio::spawn(async move {
                let _permit = permit;
                let Ok(connection) = incoming.await else { return };
                let admitted = async {
                    let (peer, mut send) = admit(&connection, &secret, me).await?;
                    let counted = PeerCount::take(&per_peer, peer).ok_or("too many connections from this worker")?;
                    frame::write(&mut send, &BlobReply::Stored).await.map_err(|e| e.to_string())?;
                    let _ = send.finish();
                    Ok::<_, String>((peer, counted))
                };
                match admitted.await {
                    Ok((peer, _counted)) => {
                        tracing::debug!(peer = %peer.short(), "serving a peer");
                        if crate::cheat::corrupts_peers() {
                            crate::cheat::serve_corrupt(connection, blobs).await;
                        } else {
                            transfer::serve_connection(connection, blobs).await;
                        }
                    }
                    Err(reason) => {
                        tracing::info!(%reason, "refused a peer");
                        connection.close(1u32.into(), reason.as_bytes());
                    }
                }
            });
        }
    });
    Ok(port)
}

/// The address this machine uses to reach `remote` (the route's source address; nothing is sent).
pub fn local_ip_towards(remote: SocketAddr) -> Option<std::net::IpAddr> {
    let bind: SocketAddr = if remote.is_ipv6() { "[::]:0".parse().ok()? } else { "0.0.0.0:0".parse().ok()? };
    let socket = std::net::UdpSocket::bind(bind).ok()?;
    socket.connect(remote).ok()?;
    socket.local_addr().ok().map(|a| a.ip()).filter(|ip| !ip.is_unspecified())
}

/// One of a peer's connections, counted while it lasts.
struct PeerCount {
    counts: Arc<std::sync::Mutex<std::collections::HashMap<WorkerId, usize>>>,
    peer: WorkerId,
}

impl PeerCount {
    fn take(
        counts: &Arc<std::sync::Mutex<std::collections::HashMap<WorkerId, usize>>>,
        peer: WorkerId,
    ) -> Option<PeerCount> {
        let mut map = counts.lock().expect("peer counts");
        let count = map.entry(peer).or_default();
        if *count >= CONNECTIONS_PER_PEER_MAX {
            return None;
        }
        *count += 1;
        Some(PeerCount { counts: counts.clone(), peer })
    }
}

impl Drop for PeerCount {
    fn drop(&mut self) {
        let mut map = self.counts.lock().expect("peer counts");
        if let Some(count) = map.get_mut(&self.peer) {
            *count -= 1;
            if *count == 0 {
                map.remove(&self.peer);
            }
        }
    }
}

/// Checks a peer's proof of the worker secret on its first stream; returns who it is and the
/// stream to acknowledge it on.
async fn admit(
    connection: &quinn::Connection,
    secret: &str,
    me: WorkerId,
) -> std::result::Result<(WorkerId, quinn::SendStream), String> {
    let peer = peer_id(connection).map_err(|e| e.to_string())?;
    let (send, mut recv) = tokio::time::timeout(CONNECT_TIMEOUT, connection.accept_bi())
        .await
        .map_err(|_| "no greeting in time".to_string())?
        .map_err(|e| e.to_string())?;
    let hello: PeerHello = tokio::time::timeout(CONNECT_TIMEOUT, frame::read_limited(&mut recv, HELLO_BYTES_MAX))
        .await
        .map_err(|_| "no greeting in time".to_string())?
        .map_err(|e| e.to_string())?
        .ok_or("no greeting")?;
    let expected = peer_proof(secret, &peer, &me);
    let same = hello.proof.iter().zip(expected.iter()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0;
    if !same {
        return Err("not a worker of this cluster".into());
    }
    Ok((peer, send))
}

/// Connects to a peer the scheduler named and proves membership; the connection then serves
/// slices (see [`transfer::download_from`]).
pub async fn connect(identity: &PeerIdentity, secret: &str, source: &PeerSource) -> Result<quinn::Connection> {
    let me = identity.id()?;
    let attempt = async {
        let connection = net::connect_peer(&source.address, source.worker, identity, net::IDLE_TIMEOUT_DEFAULT).await?;
        let (mut send, mut recv) = connection.open_bi().await.map_err(|e| WorkerError::Session(e.to_string()))?;
        frame::write(&mut send, &PeerHello { proof: peer_proof(secret, &me, &source.worker) }).await?;
        let _ = send.finish();
        let answer = frame::expect::<BlobReply, _>(&mut recv).await;
        match answer {
            Ok(BlobReply::Stored) => Ok(connection),
            Ok(other) => Err(WorkerError::Session(format!("the peer answered {other:?}"))),
            // A refusal closes the connection with the reason: say it rather than "closed".
            Err(e) => {
                // The close may arrive a moment after the stream ends.
                let closed = tokio::time::timeout(Duration::from_millis(500), connection.closed()).await;
                Err(WorkerError::Session(match closed {
                    Ok(reason) => format!("the peer refused: {}", net::describe_connection_error(&reason)),
                    Err(_) => e.to_string(),
                }))
            }
        }
    };
    tokio::time::timeout(CONNECT_TIMEOUT, attempt)
        .await
        .map_err(|_| WorkerError::Session(format!("peer {} did not answer in time", source.address)))?
}
