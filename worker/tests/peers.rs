//! Workers serving their caches to each other over real QUIC on loopback: only a holder of the
//! cluster's worker secret is served, and only the worker the scheduler named is accepted.

use upglobe_datasets::{BlobStore, transfer};
use upglobe_protocol::messages::PeerSource;
use upglobe_protocol::tls::PeerIdentity;
use upglobe_worker::peers;

fn serving(secret: &str) -> (tempfile::TempDir, PeerIdentity, BlobStore, u16) {
    let dir = tempfile::tempdir().unwrap();
    let store = BlobStore::open(dir.path()).unwrap();
    let identity = PeerIdentity::generate("server").unwrap();
    let listen = "127.0.0.1:0".parse().unwrap();
    let port =
        peers::serve(&identity, store.clone(), listen, secret.into(), std::time::Duration::from_secs(5)).unwrap();
    (dir, identity, store, port)
}

#[tokio::test]
async fn a_peer_with_the_secret_is_served_and_others_are_refused() {
    let (_dir, server, store, port) = serving("cluster secret");
    let hash = store.put(&vec![7u8; 300_000]).unwrap();
    let source = PeerSource { blob: hash, worker: server.id().unwrap(), address: format!("127.0.0.1:{port}") };
    let client = PeerIdentity::generate("client").unwrap();

    let connection = peers::connect(&client, "cluster secret", &source).await.unwrap();
    let local = tempfile::tempdir().unwrap();
    let cache = BlobStore::open(local.path()).unwrap();
    let peer = transfer::Source { name: "peer".into(), connection };
    let report = transfer::download_from(&[peer], &cache, hash, &transfer::Options::default()).await.unwrap();
    assert_eq!(report.per_source, vec![("peer".to_string(), 300_000)]);
    assert_eq!(cache.get(&hash).unwrap(), vec![7u8; 300_000]);

    // Without the secret: refused, with the reason.
    let error = peers::connect(&client, "another cluster", &source).await.unwrap_err().to_string();
    assert!(error.contains("not a worker of this cluster") || error.contains("closed"), "{error}");

    // A server other than the one named: the client does not talk to it.
    let impostor = PeerSource { worker: client.id().unwrap(), ..source.clone() };
    let error = peers::connect(&client, "cluster secret", &impostor).await.unwrap_err().to_string();
    assert!(error.contains("not the worker the scheduler named"), "{error}");

    // One worker may hold a few connections, not every slot.
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(peers::connect(&client, "cluster secret", &source).await.unwrap());
    }
    let error = peers::connect(&client, "cluster secret", &source).await.unwrap_err().to_string();
    assert!(error.contains("too many connections"), "{error}");
    drop(held);
}
