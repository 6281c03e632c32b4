//! Mutual TLS over real QUIC on loopback: a pinned CA is accepted, another is refused.

use std::time::Duration;

use upglobe_protocol::net::{connect, server_endpoint};
use upglobe_protocol::tls::{PeerIdentity, SchedulerIdentity, peer_id};
use upglobe_protocol::{Role, Token};

#[tokio::test]
async fn pinned_ca_is_required() {
    let dir = tempfile::tempdir().unwrap();
    let (identity, created) = SchedulerIdentity::load_or_create(dir.path()).unwrap();
    assert!(created);
    let (again, created) = SchedulerIdentity::load_or_create(dir.path()).unwrap();
    assert!(!created);
    assert_eq!(again.ca_fingerprint(), identity.ca_fingerprint());

    let endpoint = server_endpoint(&identity, "127.0.0.1:0".parse().unwrap(), Duration::from_secs(5)).unwrap();
    let address = endpoint.local_addr().unwrap();
    let server = tokio::spawn(async move {
        while let Some(incoming) = endpoint.accept().await {
            if let Ok(connection) = incoming.await {
                let id = peer_id(&connection).unwrap();
                connection.close(0u32.into(), b"done");
                return Some(id);
            }
        }
        None
    });

    let worker = PeerIdentity::generate("w1").unwrap();
    let token = |fingerprint| Token {
        address: address.to_string(),
        role: Role::Worker,
        ca_fingerprint: fingerprint,
        secret: "00".repeat(32),
    };
    let wrong = connect(&token([7; 32]), &worker, Duration::from_secs(5)).await.unwrap_err().to_string();
    assert!(wrong.contains("does not match the join token"), "{wrong}");
    let connection = connect(&token(identity.ca_fingerprint()), &worker, Duration::from_secs(5)).await.unwrap();
    assert_eq!(server.await.unwrap(), Some(worker.id().unwrap()));
    drop(connection);
}
