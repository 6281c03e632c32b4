//! Verified slices over real QUIC connections on loopback: several sources, a corrupting source,
//! a download that dies and resumes.

use std::time::Duration;

use upglobe_datasets::BlobStore;
use upglobe_datasets::transfer::{self, Options, Source};
use upglobe_protocol::BlobHash;
use upglobe_protocol::net;
use upglobe_protocol::tls::{PeerIdentity, SchedulerIdentity};

/// Larger than one stream's and one connection's flow-control windows (16 and 64 MiB).
const SIZE: usize = 80 << 20;

fn data(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed | 1;
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.extend_from_slice(&state.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// A peer that serves the slices of its store, with its own certificate authority.
struct Peer {
    _dir: tempfile::TempDir,
    store: BlobStore,
    endpoint: quinn::Endpoint,
    ca: [u8; 32],
}

impl Peer {
    fn start() -> Peer {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path().join("blobs")).unwrap();
        let (identity, _) = SchedulerIdentity::load_or_create(dir.path()).unwrap();
        let endpoint =
            net::server_endpoint(&identity, "127.0.0.1:0".parse().unwrap(), net::IDLE_TIMEOUT_DEFAULT).unwrap();
        transfer::serve_endpoint(endpoint.clone(), store.clone());
        Peer { _dir: dir, store, ca: identity.ca_fingerprint(), endpoint }
    }

    async fn source(&self, name: &str) -> Source {
        let identity = PeerIdentity::generate("receiver").unwrap();
        let address = self.endpoint.local_addr().unwrap();
        let connection = net::connect_to(address, self.ca, &identity, net::IDLE_TIMEOUT_DEFAULT).await.unwrap();
        Source { name: name.into(), connection }
    }
}

fn receiver() -> (tempfile::TempDir, BlobStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = BlobStore::open(dir.path()).unwrap();
    (dir, store)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_sources_serve_one_download_in_parallel() {
    let bytes = data(SIZE, 1);
    let (a, b) = (Peer::start(), Peer::start());
    let hash = a.store.put(&bytes).unwrap();
    b.store.put(&bytes).unwrap();
    let sources = [a.source("a").await, b.source("b").await];
    let (_dir, store) = receiver();
    let options = Options { piece_bytes: 1 << 20, streams_per_source: 2, ..Options::default() };
    let report = transfer::download_from(&sources, &store, hash, &options).await.unwrap();
    assert_eq!(report.dropped, vec![]);
    assert_eq!(report.size, SIZE as u64);
    assert_eq!(BlobHash::of(&std::fs::read(store.path(&hash)).unwrap()), hash);
    // Each stream of each source was dealt a piece of its own (later pieces go to whichever stream
    // is free, so how evenly the rest is shared depends on the links).
    for (name, delivered) in &report.per_source {
        assert!(*delivered >= 2 << 20, "{name} delivered only {delivered} bytes");
    }
    // Hash pairs cost 64 bytes per 16 KiB group, and nothing was fetched twice.
    assert!(report.received_bytes < SIZE as u64 + SIZE as u64 / 100, "{}", report.received_bytes);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupting_source_is_dropped_and_its_pieces_fetched_elsewhere() {
    let bytes = data(SIZE / 4, 2);
    let (honest, corrupt) = (Peer::start(), Peer::start());
    let hash = honest.store.put(&bytes).unwrap();
    corrupt.store.put(&bytes).unwrap();
    // The corrupting source's disk flips a byte in every MiB after its outboard was made: it
    // serves the true hash pairs with wrong data, whichever piece it is asked for.
    corrupt.store.outboard(&hash).unwrap();
    let path = corrupt.store.path(&hash);
    let mut on_disk = std::fs::read(&path).unwrap();
    for at in (1000..on_disk.len()).step_by(1 << 20) {
        on_disk[at] ^= 0x40;
    }
    std::fs::write(&path, on_disk).unwrap();

    // Alone, it cannot deliver: the download fails, names the reason, and the store holds nothing
    // under the hash.
    let (_dir, store) = receiver();
    let options = Options { piece_bytes: 1 << 20, ..Options::default() };
    let alone = [corrupt.source("corrupt").await];
    let error = transfer::download_from(&alone, &store, hash, &options).await.unwrap_err();
    assert!(error.to_string().contains("corrupt"), "{error}");
    assert!(!store.contains(&hash));

    // With an honest source beside it, the download completes and says whom it dropped.
    let (_dir, store) = receiver();
    let sources = [corrupt.source("corrupt").await, honest.source("honest").await];
    let report = transfer::download_from(&sources, &store, hash, &options).await.unwrap();
    assert_eq!(report.dropped.len(), 1, "{:?}", report.dropped);
    assert_eq!(report.dropped[0].0, "corrupt");
    assert!(report.dropped[0].1.contains("does not verify"), "{:?}", report.dropped);
    assert_eq!(store.get(&hash).unwrap(), bytes);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_download_that_dies_resumes_from_its_last_verified_slice() {
    let bytes = data(SIZE, 3);
    let peer = Peer::start();
    let hash = peer.store.put(&bytes).unwrap();
    let (_dir, store) = receiver();
    // Slow enough to be cut half-way: 20 MiB/s for 80 MiB, cut after 2 s.
    let slow = Options { rate_bytes_per_s: Some(20 << 20), ..Options::default() };
    let sources = [peer.source("peer").await];
    let cut =
        tokio::time::timeout(Duration::from_secs(2), transfer::download_from(&sources, &store, hash, &slow)).await;
    assert!(cut.is_err(), "the download should still be running");
    let verified = slow.progress.verified.load(std::sync::atomic::Ordering::Relaxed);
    assert!(verified > 0 && verified < SIZE as u64, "{verified}");

    let options = Options::default();
    let report = transfer::download_from(&sources, &store, hash, &options).await.unwrap();
    assert!(report.resumed_bytes >= verified * 9 / 10, "resumed {} of {verified}", report.resumed_bytes);
    let needed = (SIZE as u64 - report.resumed_bytes) as f64;
    assert!((report.received_bytes as f64) < needed * 1.02, "{} for {needed}", report.received_bytes);
    assert_eq!(store.get(&hash).unwrap(), bytes);
}

/// A receiver that takes uploads as the scheduler takes a client's: resumable.
fn upload_receiver() -> (tempfile::TempDir, BlobStore, quinn::Endpoint, [u8; 32]) {
    use upglobe_protocol::frame;
    use upglobe_protocol::messages::StreamRequest;
    let dir = tempfile::tempdir().unwrap();
    let store = BlobStore::open(dir.path().join("blobs")).unwrap();
    let (identity, _) = SchedulerIdentity::load_or_create(dir.path()).unwrap();
    let endpoint = net::server_endpoint(&identity, "127.0.0.1:0".parse().unwrap(), net::IDLE_TIMEOUT_DEFAULT).unwrap();
    let (accepting, serving) = (endpoint.clone(), store.clone());
    tokio::spawn(async move {
        while let Some(incoming) = accepting.accept().await {
            let store = serving.clone();
            tokio::spawn(async move {
                let Ok(connection) = incoming.await else { return };
                while let Ok((mut send, mut recv)) = connection.accept_bi().await {
                    let store = store.clone();
                    tokio::spawn(async move {
                        if let Ok(StreamRequest::PutBlob { hash, size }) = frame::expect(&mut recv).await {
                            let _ = transfer::serve_put(&mut send, &mut recv, &store, hash, size, true).await;
                        }
                    });
                }
            });
        }
    });
    (dir, store, endpoint, identity.ca_fingerprint())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_upload_resumes_where_it_stopped() {
    use upglobe_protocol::frame;
    use upglobe_protocol::messages::{BlobReply, StreamRequest};
    let (_dir, store, endpoint, ca) = upload_receiver();
    let identity = PeerIdentity::generate("uploader").unwrap();
    let connection =
        net::connect_to(endpoint.local_addr().unwrap(), ca, &identity, net::IDLE_TIMEOUT_DEFAULT).await.unwrap();
    let local = tempfile::tempdir().unwrap();
    let path = local.path().join("big.bin");
    let bytes = data(SIZE / 2, 4);
    std::fs::write(&path, &bytes).unwrap();
    let hash = BlobHash::of(&bytes);

    // The first attempt sends 30 MiB and breaks off.
    let (mut send, mut recv) = connection.open_bi().await.unwrap();
    frame::write(&mut send, &StreamRequest::PutBlob { hash, size: bytes.len() as u64 }).await.unwrap();
    assert_eq!(frame::expect::<BlobReply, _>(&mut recv).await.unwrap(), BlobReply::Continue { offset: 0 });
    send.write_all(&bytes[..30 << 20]).await.unwrap();
    // Reset only once the receiver has written all of it: a reset drops what it has not read yet.
    let partial = store.root().join("tmp").join(format!("{}.upload", hash.to_hex()));
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while std::fs::metadata(&partial).map_or(0, |m| m.len()) < 30 << 20 {
        assert!(std::time::Instant::now() < deadline, "the receiver never wrote the first 30 MiB");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    send.reset(0u32.into()).unwrap();
    let _ = frame::expect::<BlobReply, _>(&mut recv).await;
    assert!(!store.contains(&hash));

    // The second sends only the rest.
    let before = connection.stats().udp_tx.bytes;
    let sent = std::sync::atomic::AtomicU64::new(0);
    transfer::upload_path(&connection, &path, hash, &sent).await.unwrap();
    let carried = connection.stats().udp_tx.bytes - before;
    assert!(carried < (bytes.len() as u64 - (30 << 20)) * 11 / 10, "{carried} bytes for the rest");
    assert_eq!(sent.load(std::sync::atomic::Ordering::Relaxed), bytes.len() as u64);
    assert_eq!(store.get(&hash).unwrap(), bytes);

    // Once stored, an upload of the same bytes sends nothing.
    let before = connection.stats().udp_tx.bytes;
    transfer::upload_path(&connection, &path, hash, &sent).await.unwrap();
    assert!(connection.stats().udp_tx.bytes - before < 10_000);
}

/// Two tasks that need the same input at once share one download: the second waits and finds the
/// blob stored (the partial is one file; two writers would ruin it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_downloads_of_one_blob_at_once_both_end_with_it() {
    let bytes = data(SIZE / 4, 5);
    let peer = Peer::start();
    let hash = peer.store.put(&bytes).unwrap();
    let (_dir, store) = receiver();
    let sources = [peer.source("peer").await];
    let options = Options { piece_bytes: 1 << 20, ..Options::default() };
    let (a, b) = tokio::join!(
        transfer::download_from(&sources, &store, hash, &options),
        transfer::download_from(&sources, &store, hash, &options),
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(a.received_bytes.min(b.received_bytes), 0, "one of them fetched nothing");
    assert_eq!(store.get(&hash).unwrap(), bytes);
    assert!(store.existing_partial(&hash).unwrap().is_none());
}

/// One frame of a trajectory: a byte range is fetched and verified alone, without the rest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_range_is_fetched_and_verified_alone() {
    let bytes = data(SIZE / 4, 6);
    let peer = Peer::start();
    let hash = peer.store.put(&bytes).unwrap();
    let (_dir, store) = receiver();
    let sources = [peer.source("peer").await];
    let frame = 7_000_123..7_500_000u64;
    let options = Options { only: Some(frame.clone()), ..Options::default() };
    let report = transfer::download_from(&sources, &store, hash, &options).await.unwrap();
    assert!(report.received_bytes < 600_000, "{} bytes for a 0.5 MB range", report.received_bytes);
    assert!(!store.contains(&hash), "a range is not the blob");
    let read = store.read_range(&hash, frame.clone()).unwrap();
    assert_eq!(read, bytes[frame.start as usize..frame.end as usize]);
    assert!(store.read_range(&hash, 0..1000).is_err(), "bytes not fetched are not handed out");
    // The rest later: the blob is whole and the range was not fetched twice.
    let report = transfer::download_from(&sources, &store, hash, &Options::default()).await.unwrap();
    assert!(report.resumed_bytes >= frame.end - frame.start, "{}", report.resumed_bytes);
    assert_eq!(store.get(&hash).unwrap(), bytes);
}
