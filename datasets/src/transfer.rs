//! Moving blobs over QUIC streams, verified end to end. Downloads come as verified slices (see
//! [`crate::slices`]) from one or several sources at once, resume from what an earlier attempt
//! verified, and drop a source that sends one corrupt byte. Uploads (results, submitted inputs)
//! are hashed whole by the receiver and kept only if they match the hash promised.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bao_tree::ChunkRanges;
use bytes::{Bytes, BytesMut};
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;
use upglobe_protocol::messages::limits::BLOB_BYTES_MAX;
use upglobe_protocol::messages::{BlobReply, StreamRequest};
use upglobe_protocol::{BlobHash, frame};

use crate::slices::{self, Partial};
use crate::{BlobStore, DatasetError, Result};

const BUFFER_BYTES: usize = 1 << 20;
/// A transfer that receives nothing for this long has stalled.
const STALL_TIMEOUT: Duration = Duration::from_secs(60);
/// The slowest a source may deliver a piece before it is dropped for the download.
const MIN_RATE_BYTES_PER_S: u64 = 16 << 10;
/// How long an upload the peer stopped waits for the peer's reason.
const REFUSAL_WAIT: Duration = Duration::from_secs(5);
/// The smallest piece a download splits a blob into to give every stream one.
const PIECE_BYTES_MIN: u64 = 1 << 20;
/// Encoded bytes handed from the encoding thread to the stream at once, and how many such pieces
/// may wait: the sender hashes nothing and copies each byte once, into these buffers.
const PIECE_BYTES: usize = 1 << 20;
const PIECES_QUEUED: usize = 8;
/// Encodings served at once by this process (each has a thread and up to ~10 MiB of buffers).
const SERVES_MAX: usize = 32;
static SERVES: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(SERVES_MAX);
/// Received buffers (about a packet's data each) handed to the decoding thread at once, at most.
const CHUNKS_PER_HANDOFF: usize = 64;

fn failed(hash: &BlobHash, message: impl Into<String>) -> DatasetError {
    DatasetError::Transfer { hash: hash.short(), message: message.into() }
}

/// Counters a download updates as it goes (for a progress bar or a log line).
#[derive(Debug, Clone, Default)]
pub struct Progress {
    /// The blob's size, once a source has proved it.
    pub size: Arc<AtomicU64>,
    /// Data bytes verified, including those an earlier attempt had verified.
    pub verified: Arc<AtomicU64>,
    /// Bytes received from the network in this attempt (data and hash pairs).
    pub received: Arc<AtomicU64>,
}

/// How a download fetches: how many streams each source serves at once, how large a piece one
/// stream asks for, and an optional limit on the rate (for workers on a shared lab or home link).
#[derive(Debug, Clone)]
pub struct Options {
    pub streams_per_source: usize,
    pub piece_bytes: u64,
    pub rate_bytes_per_s: Option<u64>,
    pub progress: Progress,
    /// Only these bytes (one frame of a trajectory, say): they are fetched and verified into the
    /// partial, which stays partial unless that was all that was missing ([`BlobStore::read_range`]).
    pub only: Option<std::ops::Range<u64>>,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            streams_per_source: 4,
            piece_bytes: 8 << 20,
            rate_bytes_per_s: None,
            progress: Progress::default(),
            only: None,
        }
    }
}

/// A peer that holds blobs, as a download sees it.
#[derive(Debug, Clone)]
pub struct Source {
    pub name: String,
    pub connection: quinn::Connection,
}

/// What a download did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    pub size: u64,
    /// Data bytes an earlier attempt had already verified (not fetched again).
    pub resumed_bytes: u64,
    /// Bytes received from the network (data and hash pairs).
    pub received_bytes: u64,
    /// Sources dropped for this download, with the reason.
    pub dropped: Vec<(String, String)>,
    /// Data bytes each source delivered (verified), by name, in the order the sources were given.
    pub per_source: Vec<(String, u64)>,
}

/// Sends a blob from the local store to the peer, which verifies and stores it.
pub async fn upload(connection: &quinn::Connection, store: &BlobStore, hash: BlobHash) -> Result<()> {
    upload_path(connection, &store.path(&hash), hash, &AtomicU64::new(0)).await
}

/// Sends the file at `path`, whose bytes hash to `hash`, to the peer, which verifies and stores
/// it; `sent` counts the bytes as they go (a progress bar). Bytes the peer already holds are not
/// sent again: it is asked first.
pub async fn upload_path(
    connection: &quinn::Connection,
    path: &std::path::Path,
    hash: BlobHash,
    sent: &AtomicU64,
) -> Result<()> {
    let file = std::fs::File::open(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => DatasetError::Missing(hash.to_hex()),
        _ => DatasetError::Io { context: format!("cannot open {}", path.display()), cause: e },
    })?;
    let size = file
        .metadata()
        .map_err(|cause| DatasetError::Io { context: format!("cannot stat {}", path.display()), cause })?
        .len();
    let (mut send, mut recv) = connection.open_bi().await.map_err(|e| failed(&hash, e.to_string()))?;
    frame::write(&mut send, &StreamRequest::PutBlob { hash, size }).await.map_err(|e| failed(&hash, e.to_string()))?;
    let first = tokio::time::timeout(STALL_TIMEOUT, frame::expect::<BlobReply, _>(&mut recv))
        .await
        .map_err(|_| failed(&hash, format!("no answer for {} s", STALL_TIMEOUT.as_secs())))?
        .map_err(|e| failed(&hash, e.to_string()))?;
    let offset = match first {
        // The peer holds it already: nothing to send.
        BlobReply::Stored => {
            sent.fetch_add(size, Ordering::Relaxed);
            let _ = send.finish();
            return Ok(());
        }
        BlobReply::Continue { offset } if offset <= size => offset,
        BlobReply::Continue { offset } => {
            return Err(failed(&hash, format!("the peer asked to continue at {offset}, past the end ({size})")));
        }
        BlobReply::Rejected { reason } => return Err(failed(&hash, format!("the peer refused it: {reason}"))),
        other => return Err(failed(&hash, format!("unexpected reply {other:?}"))),
    };
    if offset > 0 {
        tracing::info!(blob = %hash.short(), offset, size, "resuming an upload");
    }
    sent.fetch_add(offset, Ordering::Relaxed);
    let mut file = tokio::fs::File::from_std(file);
    tokio::io::AsyncSeekExt::seek(&mut file, std::io::SeekFrom::Start(offset))
        .await
        .map_err(|cause| DatasetError::Io { context: format!("cannot seek in {}", path.display()), cause })?;
    let mut buffer = vec![0u8; BUFFER_BYTES];
    let mut copied = offset;
    let outcome: std::io::Result<()> = async {
        loop {
            let n = file.read(&mut buffer).await?;
            if n == 0 {
                return Ok(());
            }
            send.write_all(&buffer[..n]).await?;
            copied += n as u64;
            sent.fetch_add(n as u64, Ordering::Relaxed);
        }
    }
    .await;
    if let Err(e) = outcome {
        // A peer that refuses an upload (a quota) says why and stops reading: its reason, if it
        // arrives, says more than the stopped stream.
        let reply = tokio::time::timeout(REFUSAL_WAIT, frame::expect::<BlobReply, _>(&mut recv)).await;
        return match reply {
            Ok(Ok(BlobReply::Rejected { reason })) => Err(failed(&hash, format!("the peer refused it: {reason}"))),
            _ => Err(failed(&hash, e.to_string())),
        };
    }
    if copied != size {
        return Err(failed(&hash, format!("the local copy changed size during the upload ({copied} of {size} bytes)")));
    }
    send.finish().map_err(|e| failed(&hash, e.to_string()))?;
    match frame::expect::<BlobReply, _>(&mut recv).await.map_err(|e| failed(&hash, e.to_string()))? {
        BlobReply::Stored => Ok(()),
        BlobReply::Rejected { reason } => Err(failed(&hash, format!("the peer refused it: {reason}"))),
        other => Err(failed(&hash, format!("unexpected reply {other:?}"))),
    }
}

/// Fetches a blob from the peer into the local store (see [`download_from`]).
pub async fn download(connection: &quinn::Connection, store: &BlobStore, hash: BlobHash) -> Result<Report> {
    let source = Source { name: "scheduler".into(), connection: connection.clone() };
    download_from(&[source], store, hash, &Options::default()).await
}

/// Fetches a blob into the local store from the sources, in verified slices: several sources and
/// several streams per source serve different pieces at once; a source that sends a corrupt
/// slice or breaks off is dropped for this download and its piece fetched elsewhere; a partial
/// left by an earlier attempt is resumed. A blob already stored is only touched, so a cache
/// evicts it last.
pub async fn download_from(sources: &[Source], store: &BlobStore, hash: BlobHash, options: &Options) -> Result<Report> {
    // One download of a blob at a time in this process: the partial is one file. A second waits,
    // then finds the blob stored (or the partial to resume).
    let lock = download_lock(store, hash);
    let _held = lock.lock().await;
    if store.contains(&hash) {
        store.touch(&hash)?;
        let size = store.size(&hash).unwrap_or(0);
        options.progress.size.store(size, Ordering::Relaxed);
        options.progress.verified.store(size, Ordering::Relaxed);
        return Ok(Report { size, resumed_bytes: size, ..Report::default() });
    }
    let alive: Vec<Arc<AtomicBool>> = sources.iter().map(|_| Arc::new(AtomicBool::new(true))).collect();
    let delivered: Vec<Arc<AtomicU64>> = sources.iter().map(|_| Arc::new(AtomicU64::new(0))).collect();
    let dropped = Arc::new(Mutex::new(Vec::new()));
    let pacer = options.rate_bytes_per_s.map(|rate| Arc::new(Pacer::new(rate)));
    let drop_source = |k: usize, reason: String| {
        tracing::warn!(source = %sources[k].name, blob = %hash.short(), %reason, "source dropped for this download");
        alive[k].store(false, Ordering::Relaxed);
        dropped.lock().expect("dropped sources").push((sources[k].name.clone(), reason));
    };
    let everyone_failed = |dropped: &Mutex<Vec<(String, String)>>| {
        let reasons = dropped.lock().expect("dropped sources");
        if reasons.is_empty() {
            return failed(&hash, "no source holds it");
        }
        let reasons: Vec<String> = reasons.iter().map(|(name, why)| format!("{name}: {why}")).collect();
        failed(&hash, format!("every source failed ({})", reasons.join("; ")))
    };

    // The size first, proved by the last group: from the partial of an earlier attempt, or from
    // the first source that proves it. (Hashing a partial again is file work: off the runtime.)
    let resumable = {
        let store = store.clone();
        blocking(hash, move || match store.existing_partial(&hash)? {
            Some(partial) => {
                let missing = partial.missing()?;
                if partial.proved_by(&missing) {
                    return Ok(Some((partial, missing)));
                }
                store.remove_partial(&hash);
                Ok(None)
            }
            None => Ok(None),
        })
        .await?
    };
    let mut resumed_bytes = 0;
    let mut partial = None;
    if let Some((found, missing)) = resumable {
        resumed_bytes = found.size() - slices::bytes_in(&missing, found.size());
        tracing::info!(blob = %hash.short(), verified = resumed_bytes, size = found.size(), "resuming a download");
        partial = Some(Arc::new(found));
    }
    let received = options.progress.received.clone();
    for (k, source) in sources.iter().enumerate() {
        if partial.is_some() {
            break;
        }
        let last = slices::last_group();
        let proved = async {
            let (size, recv) = ask(&source.connection, hash, &last).await?;
            // The size is the source's claim until its last group verifies: a full disk here may
            // be its lie, so it fails this source, not the download.
            let store = store.clone();
            let made = Arc::new(blocking(hash, move || store.partial(&hash, size)).await?);
            let outcome = decode_stream(recv, made.clone(), last, received.clone(), None, |_| {}).await;
            Ok::<_, DatasetError>((made, outcome))
        };
        match proved.await {
            Ok((made, Ok(decoded))) => {
                delivered[k].fetch_add(decoded.verified_bytes, Ordering::Relaxed);
                partial = Some(made);
            }
            Ok((_, Err((_, e)))) | Err(e) => {
                store.remove_partial(&hash);
                drop_source(k, e.to_string());
            }
        }
    }
    let Some(partial) = partial else { return Err(everyone_failed(&dropped)) };
    let size = partial.size();
    let progress = &options.progress;
    progress.size.store(size, Ordering::Relaxed);
    let mut missing = {
        let partial = partial.clone();
        blocking(hash, move || partial.missing()).await?
    };
    if let Some(only) = &options.only {
        missing &= slices::resolve(&slices::chunks_of(only), size);
    }
    progress.verified.store(size - slices::bytes_in(&missing, size), Ordering::Relaxed);
    // Pieces small enough that every stream of every source has one to start with, down to a
    // floor below which a request's round trip costs more than the piece carries.
    let streams_per_source = options.streams_per_source.max(1);
    let share = slices::bytes_in(&missing, size) / (sources.len() * streams_per_source) as u64;
    let piece_bytes = options.piece_bytes.min(share.max(PIECE_BYTES_MIN));
    let pieces = slices::split(&missing, (piece_bytes / slices::CHUNK_BYTES).max(16), size);
    let queue = Arc::new(Mutex::new(pieces.into_iter().collect::<VecDeque<_>>()));
    let fatal: Arc<Mutex<Option<DatasetError>>> = Arc::default();

    // Streams pull pieces until the queue is empty or their source is dropped; a dropped source's
    // piece goes back, less what it verified, so rounds repeat while pieces and sources remain.
    // Each stream's first piece is dealt out before any runs, a source at a time, so every live
    // source serves (and is checked) however the tasks happen to be scheduled.
    while !queue.lock().expect("piece queue").is_empty() {
        let live: Vec<usize> = (0..sources.len()).filter(|&k| alive[k].load(Ordering::Relaxed)).collect();
        if live.is_empty() {
            return Err(everyone_failed(&dropped));
        }
        let dealt: Vec<(usize, ChunkRanges)> = {
            let mut queue = queue.lock().expect("piece queue");
            let turns = (0..streams_per_source).flat_map(|_| live.iter().copied());
            turns.map_while(|k| Some((k, queue.pop_front()?))).collect()
        };
        let mut streams = tokio::task::JoinSet::new();
        for (k, first) in dealt {
            let (connection, name) = (sources[k].connection.clone(), sources[k].name.clone());
            let (queue, partial, alive, dropped, fatal) =
                (queue.clone(), partial.clone(), alive[k].clone(), dropped.clone(), fatal.clone());
            let (received, verified, pacer) = (received.clone(), progress.verified.clone(), pacer.clone());
            let delivered = delivered[k].clone();
            streams.spawn(async move {
                    let mut next = Some(first);
                    loop {
                        let Some(piece) = next.take().or_else(|| queue.lock().expect("piece queue").pop_front()) else {
                            break;
                        };
                        if !alive.load(Ordering::Relaxed) || fatal.lock().expect("fatal").is_some() {
                            queue.lock().expect("piece queue").push_back(piece);
                            break;
                        }
                        let verified = verified.clone();
                        let count = move |n: u64| _ = verified.fetch_add(n, Ordering::Relaxed);
                        let outcome = match ask(&connection, hash, &piece).await {
                            Ok((claimed, _)) if claimed != partial.size() => Err((
                                slices::Decoded::default(),
                                failed(&hash, format!("says {claimed} bytes; the blob is {}", partial.size())),
                            )),
                            Ok((_, recv)) => {
                                decode_stream(recv, partial.clone(), piece.clone(), received.clone(), pacer.clone(), count)
                                    .await
                            }
                            Err(e) => Err((slices::Decoded::default(), e)),
                        };
                        let verified_here = match &outcome {
                            Ok(decoded) | Err((decoded, _)) => decoded.verified_bytes,
                        };
                        delivered.fetch_add(verified_here, Ordering::Relaxed);
                        if let Err((decoded, e)) = outcome {
                            let rest = piece - decoded.verified;
                            if !rest.is_empty() {
                                queue.lock().expect("piece queue").push_back(rest);
                            }
                            if is_local(&e) {
                                *fatal.lock().expect("fatal") = Some(e);
                            } else if alive.swap(false, Ordering::Relaxed) {
                                tracing::warn!(source = %name, blob = %hash.short(), reason = %e, "source dropped for this download");
                                dropped.lock().expect("dropped sources").push((name.clone(), e.to_string()));
                            }
                            break;
                        }
                    }
                });
        }
        while streams.join_next().await.is_some() {}
        if let Some(e) = fatal.lock().expect("fatal").take() {
            return Err(e);
        }
    }
    {
        let store = store.clone();
        let whole = options.only.is_none();
        blocking(hash, move || {
            // A range alone leaves the partial partial, unless nothing else was missing.
            if whole || partial.missing()?.is_empty() { partial.finish(&store) } else { Ok(()) }
        })
        .await?;
    }
    let dropped = dropped.lock().expect("dropped sources").clone();
    let per_source =
        sources.iter().zip(&delivered).map(|(s, bytes)| (s.name.clone(), bytes.load(Ordering::Relaxed))).collect();
    Ok(Report { size, resumed_bytes, received_bytes: received.load(Ordering::Relaxed), dropped, per_source })
}

/// Runs file work (hashing a partial, allocating one, syncing it) on a blocking thread.
async fn blocking<T: Send + 'static>(hash: BlobHash, work: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(work).await.map_err(|e| failed(&hash, format!("file work failed: {e}")))?
}

/// The lock that serialises downloads of one blob into one store, within this process.
fn download_lock(store: &BlobStore, hash: BlobHash) -> Arc<tokio::sync::Mutex<()>> {
    type Locks = std::collections::HashMap<(std::path::PathBuf, BlobHash), std::sync::Weak<tokio::sync::Mutex<()>>>;
    static LOCKS: std::sync::LazyLock<Mutex<Locks>> = std::sync::LazyLock::new(Mutex::default);
    let mut locks = LOCKS.lock().expect("download locks");
    locks.retain(|_, lock| lock.strong_count() > 0);
    let key = (store.root().to_path_buf(), hash);
    if let Some(lock) = locks.get(&key).and_then(std::sync::Weak::upgrade) {
        return lock;
    }
    let lock = Arc::new(tokio::sync::Mutex::new(()));
    locks.insert(key, Arc::downgrade(&lock));
    lock
}

/// Failures of this machine (a full disk, a file that cannot be written), not of a source.
fn is_local(e: &DatasetError) -> bool {
    matches!(e, DatasetError::DiskFull { .. } | DatasetError::Io { .. })
}

/// Asks a source for ranges of a blob; returns the size it claims and the stream of the encoding.
async fn ask(connection: &quinn::Connection, hash: BlobHash, ranges: &ChunkRanges) -> Result<(u64, quinn::RecvStream)> {
    // A source that grants no stream, or never answers, is given up on.
    tokio::time::timeout(STALL_TIMEOUT, ask_now(connection, hash, ranges))
        .await
        .map_err(|_| failed(&hash, format!("no answer for {} s", STALL_TIMEOUT.as_secs())))?
}

async fn ask_now(
    connection: &quinn::Connection,
    hash: BlobHash,
    ranges: &ChunkRanges,
) -> Result<(u64, quinn::RecvStream)> {
    let (mut send, mut recv) = connection.open_bi().await.map_err(|e| failed(&hash, e.to_string()))?;
    let request = StreamRequest::GetSlices { hash, ranges: slices::to_wire(ranges) };
    frame::write(&mut send, &request).await.map_err(|e| failed(&hash, e.to_string()))?;
    send.finish().map_err(|e| failed(&hash, e.to_string()))?;
    match frame::expect::<BlobReply, _>(&mut recv).await.map_err(|e| failed(&hash, e.to_string()))? {
        BlobReply::Sending { size } if size <= BLOB_BYTES_MAX => Ok((size, recv)),
        BlobReply::Sending { size } => Err(failed(&hash, format!("{size} bytes exceeds the blob limit"))),
        BlobReply::Missing => Err(failed(&hash, "the peer does not have it")),
        BlobReply::Rejected { reason } => Err(failed(&hash, format!("the peer refused: {reason}"))),
        other => Err(failed(&hash, format!("unexpected reply {other:?}"))),
    }
}

/// Feeds a stream's bytes to a decoding thread (hashing stays off the I/O path): the network side
/// forwards quinn's buffers as they are, the thread verifies and writes them.
async fn decode_stream(
    mut recv: quinn::RecvStream,
    partial: Arc<Partial>,
    ranges: ChunkRanges,
    received: Arc<AtomicU64>,
    pacer: Option<Arc<Pacer>>,
    progress: impl FnMut(u64) + Send + 'static,
) -> std::result::Result<slices::Decoded, (slices::Decoded, DatasetError)> {
    let hash = partial.hash();
    // A source that trickles (a packet a minute keeps a plain stall timeout quiet) loses the piece
    // once it is slower than MIN_RATE over the whole of it.
    let expected = slices::bytes_in(&slices::resolve(&ranges, partial.size()), partial.size());
    let budget = STALL_TIMEOUT.max(Duration::from_secs_f64(expected as f64 / MIN_RATE_BYTES_PER_S as f64));
    let deadline = tokio::time::Instant::now() + budget;
    let (tx, rx) = mpsc::channel::<Vec<Bytes>>(PIECES_QUEUED);
    let decoder = tokio::task::spawn_blocking(move || {
        let reader = ChannelReader { rx, pending: std::collections::VecDeque::new() };
        partial.decode(reader, &ranges, progress)
    });
    let mut broke = None;
    // Whatever quinn holds at once goes over in one hand-off (a packet's data each, zero copies):
    // one wake-up of the decoder per batch, not per packet.
    let mut chunks = vec![Bytes::new(); CHUNKS_PER_HANDOFF];
    loop {
        let wait = STALL_TIMEOUT.min(deadline.saturating_duration_since(tokio::time::Instant::now()));
        let read = if wait.is_zero() {
            Err(())
        } else {
            tokio::time::timeout(wait, recv.read_chunks(&mut chunks)).await.map_err(|_| ())
        };
        match read {
            Ok(Ok(Some(count))) => {
                let batch: Vec<Bytes> = chunks[..count].iter_mut().map(std::mem::take).collect();
                let bytes: u64 = batch.iter().map(|b| b.len() as u64).sum();
                received.fetch_add(bytes, Ordering::Relaxed);
                if let Some(pacer) = &pacer {
                    pacer.take(bytes).await;
                }
                if tx.send(batch).await.is_err() {
                    // The decoder stopped: it found something wrong, and says what.
                    let _ = recv.stop(0u32.into());
                    break;
                }
            }
            Ok(Ok(None)) => break,
            Ok(Err(e)) => {
                broke = Some(e.to_string());
                break;
            }
            Err(()) if tokio::time::Instant::now() >= deadline => {
                let rate = MIN_RATE_BYTES_PER_S >> 10;
                broke = Some(format!("slower than {rate} KiB/s over a piece of {expected} bytes"));
                let _ = recv.stop(0u32.into());
                break;
            }
            Err(()) => {
                broke = Some(format!("no data for {} s", STALL_TIMEOUT.as_secs()));
                let _ = recv.stop(0u32.into());
                break;
            }
        }
    }
    drop(tx);
    match decoder.await {
        Ok(Ok(decoded)) => Ok(decoded),
        // The network's reason says more than the decoder's "ended early".
        Ok(Err((decoded, DatasetError::Transfer { .. }))) if broke.is_some() => {
            Err((decoded, failed(&hash, broke.expect("checked"))))
        }
        Ok(Err(failure)) => Err(failure),
        Err(e) => Err((slices::Decoded::default(), failed(&hash, format!("the decoder failed: {e}")))),
    }
}

/// `Read` over batches of buffers arriving on a channel, for the decoding thread.
struct ChannelReader {
    rx: mpsc::Receiver<Vec<Bytes>>,
    pending: VecDeque<Bytes>,
}

impl std::io::Read for ChannelReader {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        loop {
            while self.pending.front().is_some_and(|b| b.is_empty()) {
                self.pending.pop_front();
            }
            if !self.pending.is_empty() {
                break;
            }
            match self.rx.blocking_recv() {
                Some(batch) => self.pending.extend(batch),
                None => return Ok(0),
            }
        }
        // Fill `out` from as many buffers as are here (the decoder asks for a whole group).
        let mut filled = 0;
        while filled < out.len() {
            let Some(current) = self.pending.front_mut() else { break };
            let n = (out.len() - filled).min(current.len());
            out[filled..filled + n].copy_from_slice(&current.split_to(n));
            filled += n;
            if current.is_empty() {
                self.pending.pop_front();
            }
        }
        Ok(filled)
    }
}

/// `Write` that hands full buffers to a channel, for the encoding thread.
struct ChannelWriter {
    tx: mpsc::Sender<Bytes>,
    buffer: BytesMut,
}

impl std::io::Write for ChannelWriter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.buffer.extend_from_slice(bytes);
        if self.buffer.len() >= PIECE_BYTES {
            self.flush()?;
        }
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let piece = self.buffer.split().freeze();
        self.buffer.reserve(PIECE_BYTES);
        self.tx
            .blocking_send(piece)
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the stream closed"))
    }
}

/// Holds a download to a rate, over all its streams. Time left unused is saved up for a short
/// burst only: a download slowed by its disk or its sources does not then run at full speed to
/// catch up with the rate's average.
struct Pacer {
    rate: u64,
    /// When the bytes taken so far are due; `None` before the first.
    due: Mutex<Option<Instant>>,
}

/// The most unused time a [`Pacer`] saves up.
const PACER_BURST: Duration = Duration::from_millis(250);

impl Pacer {
    fn new(rate: u64) -> Pacer {
        Pacer { rate: rate.max(1), due: Mutex::new(None) }
    }

    async fn take(&self, bytes: u64) {
        let wait = {
            let mut due = self.due.lock().expect("pacer");
            let now = Instant::now();
            let earliest = now.checked_sub(PACER_BURST).unwrap_or(now);
            let from = due.map_or(now, |due| due.max(earliest));
            let next = from + Duration::from_secs_f64(bytes as f64 / self.rate as f64);
            *due = Some(next);
            next.saturating_duration_since(now)
        };
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
}

/// Answers a [`StreamRequest::GetSlices`]: the encoding is made on a blocking thread and handed
/// to the stream in large buffers.
pub async fn serve_slices(
    send: &mut quinn::SendStream,
    store: &BlobStore,
    hash: BlobHash,
    ranges: &[(u64, u64)],
) -> Result<u64> {
    let io = |e: upglobe_protocol::ProtocolError| failed(&hash, e.to_string());
    let ranges = match slices::from_wire(ranges) {
        Ok(ranges) => ranges,
        Err(reason) => {
            frame::write(send, &BlobReply::Rejected { reason }).await.map_err(io)?;
            let _ = send.finish();
            return Ok(0);
        }
    };
    let Some(size) = store.size(&hash) else {
        frame::write(send, &BlobReply::Missing).await.map_err(io)?;
        let _ = send.finish();
        return Ok(0);
    };
    // A bounded number of encodings at once, each with its thread and a few MiB of buffers: a
    // peer that opens many streams and reads none waits here, holding nothing.
    let _serving = SERVES.acquire().await.map_err(|_| failed(&hash, "the server is stopping"))?;
    // The outboard is made once per blob (the first request hashes the blob; the others wait for
    // it), before the answer starts, so no receiver waits on a silent stream. Once it exists,
    // requests take no lock.
    if !store.outboard_path(&hash).exists() {
        let lock = download_lock(store, hash);
        let _held = lock.lock().await;
        let made = store.clone();
        blocking(hash, move || made.outboard(&hash).map(|_| ())).await?;
    }
    frame::write(send, &BlobReply::Sending { size }).await.map_err(io)?;
    let (tx, mut rx) = mpsc::channel::<Bytes>(PIECES_QUEUED);
    let encoding = store.clone();
    let encoder = tokio::task::spawn_blocking(move || {
        let mut out = ChannelWriter { tx, buffer: BytesMut::with_capacity(PIECE_BYTES) };
        encoding.encode(&hash, &ranges, &mut out)?;
        std::io::Write::flush(&mut out).map_err(|e| failed(&hash, e.to_string()))
    });
    let mut sent = 0;
    let mut broke = None;
    while let Some(piece) = rx.recv().await {
        sent += piece.len() as u64;
        // A receiver that stops reading (flow control never opens) is given up on.
        match tokio::time::timeout(STALL_TIMEOUT, send.write_chunk(piece)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                broke = Some(e.to_string());
                break;
            }
            Err(_) => {
                broke = Some(format!("it read nothing for {} s", STALL_TIMEOUT.as_secs()));
                let _ = send.reset(0u32.into());
                break;
            }
        }
    }
    drop(rx);
    let encoded = encoder.await.map_err(|e| failed(&hash, format!("the encoder failed: {e}")))?;
    if let Some(e) = broke {
        tracing::debug!(blob = %hash.short(), bytes = sent, "serving slices stopped");
        return Err(failed(&hash, format!("the receiver stopped after {sent} bytes: {e}")));
    }
    encoded?;
    send.finish().map_err(|e| failed(&hash, e.to_string()))?;
    tracing::debug!(blob = %hash.short(), bytes = sent, "served slices");
    Ok(sent)
}

async fn receive(recv: &mut quinn::RecvStream, mut writer: crate::BlobWriter, hash: BlobHash, size: u64) -> Result<()> {
    let mut buffer = vec![0u8; BUFFER_BYTES];
    while writer.received() < size {
        let wanted = (size - writer.received()).min(BUFFER_BYTES as u64) as usize;
        let read = tokio::time::timeout(STALL_TIMEOUT, recv.read(&mut buffer[..wanted]))
            .await
            .map_err(|_| failed(&hash, format!("no data for {} s", STALL_TIMEOUT.as_secs())))?
            .map_err(|e| failed(&hash, e.to_string()))?;
        match read {
            Some(n) => writer.write(&buffer[..n])?,
            None => break,
        }
    }
    writer.finish()?;
    Ok(())
}

/// Serves slices of `store` to every connection `endpoint` accepts, until it closes (a test's or a
/// benchmark's source).
pub fn serve_endpoint(endpoint: quinn::Endpoint, store: BlobStore) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while let Some(incoming) = endpoint.accept().await {
            let store = store.clone();
            tokio::spawn(async move {
                if let Ok(connection) = incoming.await {
                    serve_connection(connection, store).await;
                }
            });
        }
    })
}

/// Serves requests for slices on one connection until it closes: a worker serving its cache to
/// another, a test's or a benchmark's source. Anything but [`StreamRequest::GetSlices`] is refused.
pub async fn serve_connection(connection: quinn::Connection, store: BlobStore) {
    while let Ok((mut send, mut recv)) = connection.accept_bi().await {
        let store = store.clone();
        tokio::spawn(async move {
            match frame::expect::<StreamRequest, _>(&mut recv).await {
                Ok(StreamRequest::GetSlices { hash, ranges }) => {
                    if let Err(e) = serve_slices(&mut send, &store, hash, &ranges).await {
                        tracing::debug!(error = %e, "serving slices failed");
                    }
                }
                _ => {
                    let reason = "this peer serves only slices of blobs".to_string();
                    let _ = frame::write(&mut send, &BlobReply::Rejected { reason }).await;
                    let _ = send.finish();
                }
            }
        });
    }
}

/// Refuses a [`StreamRequest::PutBlob`] without reading it (a quota, say), with the reason.
pub async fn refuse_put(send: &mut quinn::SendStream, hash: BlobHash, reason: String) -> Result<()> {
    frame::write(send, &BlobReply::Rejected { reason }).await.map_err(|e| failed(&hash, e.to_string()))?;
    let _ = send.finish();
    Ok(())
}

/// Answers a [`StreamRequest::PutBlob`]: says where to start, receives, verifies, stores, and
/// says so. `resumable`: what a broken transfer delivered is kept for the next attempt (a
/// client's datasets); otherwise (a worker's results) it is dropped with the transfer.
pub async fn serve_put(
    send: &mut quinn::SendStream,
    recv: &mut quinn::RecvStream,
    store: &BlobStore,
    hash: BlobHash,
    size: u64,
    resumable: bool,
) -> Result<()> {
    let io = |e: upglobe_protocol::ProtocolError| failed(&hash, e.to_string());
    if size > BLOB_BYTES_MAX {
        let reason = format!("{size} bytes exceeds the limit of {BLOB_BYTES_MAX}");
        return refuse_put(send, hash, reason).await;
    }
    if store.contains(&hash) {
        // The copy we hold is verified; touching it tells garbage collection it is wanted again.
        let reply = match store.touch(&hash) {
            Ok(()) => BlobReply::Stored,
            Err(e) => BlobReply::Rejected { reason: e.to_string() },
        };
        frame::write(send, &reply).await.map_err(io)?;
        let _ = send.finish();
        return Ok(());
    }
    let writer = match resumable.then(|| store.resumable_writer(hash, size)).transpose() {
        Ok(Some(Some(writer))) => writer,
        // Not resumable, or another transfer of it is writing the resumable file: a fresh one.
        Ok(_) => match store.writer(hash, size) {
            Ok(writer) => writer,
            Err(e) => return refuse_put(send, hash, e.to_string()).await,
        },
        Err(e) => return refuse_put(send, hash, e.to_string()).await,
    };
    frame::write(send, &BlobReply::Continue { offset: writer.received() }).await.map_err(io)?;
    let reply = match receive(recv, writer, hash, size).await {
        Ok(()) => BlobReply::Stored,
        Err(e) => BlobReply::Rejected { reason: e.to_string() },
    };
    frame::write(send, &reply).await.map_err(io)?;
    let _ = send.finish();
    Ok(())
}
