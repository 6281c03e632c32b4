//! `upglobe bench transfer`: the same bytes over our verified QUIC path and over plain TCP on
//! loopback, in one run, so that the ratio is measured on the same machine at the same moment.
//!
//! Both ends write what they receive to a file in the same directory and sync it; the QUIC path
//! also verifies every 16 KiB group against the root (on a thread of its own) and keeps the
//! outboard. The sender's outboard is made before the clock starts (a store makes it once, when a
//! blob is first served).

use std::io::Write;
use std::path::Path;
use std::time::Instant;

use serde::Serialize;
use upglobe_protocol::BlobHash;
use upglobe_protocol::net;
use upglobe_protocol::tls::{PeerIdentity, SchedulerIdentity};

use crate::transfer::{self, Options, Source};
use crate::{BlobStore, DatasetError, Result};

#[derive(Debug, Clone, Serialize)]
pub struct TransferReport {
    pub size: u64,
    pub quic_s: f64,
    pub tcp_s: f64,
    pub quic_mb_s: f64,
    pub tcp_mb_s: f64,
    pub ratio: f64,
    /// Bytes the QUIC download received (data, hash pairs).
    pub quic_received_bytes: u64,
    pub streams: usize,
    pub connections: usize,
    /// CPU time the process spent (all threads, user and system) during each transfer: a figure
    /// near twice the wall time on two cores means the path is CPU-bound.
    pub quic_cpu_s: f64,
    pub tcp_cpu_s: f64,
}

/// CPU seconds this process has used, all threads, user and system.
fn cpu_seconds() -> f64 {
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `usage` is a writable rusage.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    let time = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    time(usage.ru_utime) + time(usage.ru_stime)
}

fn io(context: &str) -> impl FnOnce(std::io::Error) -> DatasetError + '_ {
    move |cause| DatasetError::Io { context: context.to_string(), cause }
}

/// Writes `size` bytes of a fast pseudo-random sequence into the store; returns their hash.
fn make_blob(store: &BlobStore, size: u64) -> Result<BlobHash> {
    let path = store.root().join("tmp").join("bench-input");
    let mut file = std::io::BufWriter::with_capacity(4 << 20, std::fs::File::create(&path).map_err(io("bench input"))?);
    let mut hasher = blake3::Hasher::new();
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    let mut block = vec![0u8; 4 << 20];
    let mut left = size;
    while left > 0 {
        for word in block.chunks_exact_mut(8) {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            word.copy_from_slice(&state.to_le_bytes());
        }
        let n = left.min(block.len() as u64) as usize;
        hasher.update(&block[..n]);
        file.write_all(&block[..n]).map_err(io("bench input"))?;
        left -= n as u64;
    }
    file.flush().map_err(io("bench input"))?;
    drop(file);
    let hash = BlobHash(*hasher.finalize().as_bytes());
    let target = store.path(&hash);
    std::fs::create_dir_all(target.parent().expect("blob paths have a parent")).map_err(io("bench store"))?;
    std::fs::rename(&path, &target).map_err(io("bench store"))?;
    Ok(hash)
}

/// Moves `size` bytes both ways, `repeat` times each; the fastest run of each counts (which
/// filters out other work on the machine). `dir` holds the sender's and the receivers' files.
pub async fn run(dir: &Path, size: u64, connections: usize, streams: usize, repeat: u32) -> Result<TransferReport> {
    let sender = BlobStore::open(dir.join("sender"))?;
    let hash = make_blob(&sender, size)?;
    let outboard = sender.clone();
    tokio::task::spawn_blocking(move || outboard.outboard(&hash).map(|_| ()))
        .await
        .map_err(|e| DatasetError::Transfer { hash: hash.short(), message: e.to_string() })??;

    let (mut best_tcp, mut best_quic) = ((f64::INFINITY, 0.0), (f64::INFINITY, 0.0, 0));
    for _ in 0..repeat.max(1) {
        // TCP first: the QUIC endpoints' tasks are then not yet there to share the cores with it.
        let _ = std::fs::remove_file(dir.join("tcp-received"));
        let cpu = cpu_seconds();
        let seconds = tcp(dir, &sender, hash).await?;
        let used = cpu_seconds() - cpu;
        if seconds < best_tcp.0 {
            best_tcp = (seconds, used);
        }
        let _ = std::fs::remove_file(dir.join("tcp-received"));

        let _ = std::fs::remove_dir_all(dir.join("quic-receiver"));
        let cpu = cpu_seconds();
        let (seconds, received) = quic(dir, &sender, hash, connections, streams).await?;
        let used = cpu_seconds() - cpu;
        if seconds < best_quic.0 {
            best_quic = (seconds, used, received);
        }
        let _ = std::fs::remove_dir_all(dir.join("quic-receiver"));
    }
    let mb_s = |seconds: f64| size as f64 / seconds / 1e6;
    Ok(TransferReport {
        size,
        quic_s: best_quic.0,
        tcp_s: best_tcp.0,
        quic_mb_s: mb_s(best_quic.0),
        tcp_mb_s: mb_s(best_tcp.0),
        ratio: best_tcp.0 / best_quic.0,
        quic_received_bytes: best_quic.2,
        streams,
        connections,
        quic_cpu_s: best_quic.1,
        tcp_cpu_s: best_tcp.1,
    })
}

async fn quic(
    dir: &Path,
    sender: &BlobStore,
    hash: BlobHash,
    connections: usize,
    streams: usize,
) -> Result<(f64, u64)> {
    let failed = |message: String| DatasetError::Transfer { hash: hash.short(), message };
    let (identity, _) =
        SchedulerIdentity::load_or_create(&dir.join("quic-sender")).map_err(|e| failed(e.to_string()))?;
    let endpoint =
        net::server_endpoint(&identity, "127.0.0.1:0".parse().expect("an address"), net::IDLE_TIMEOUT_DEFAULT)
            .map_err(|e| failed(e.to_string()))?;
    let address = endpoint.local_addr().map_err(io("quic endpoint"))?;
    let server = transfer::serve_endpoint(endpoint.clone(), sender.clone());
    let receiver = BlobStore::open(dir.join("quic-receiver"))?;
    let peer = PeerIdentity::generate("bench").map_err(|e| failed(e.to_string()))?;
    let mut sources = Vec::new();
    for k in 0..connections.max(1) {
        let connection = net::connect_to(address, identity.ca_fingerprint(), &peer, net::IDLE_TIMEOUT_DEFAULT)
            .await
            .map_err(|e| failed(e.to_string()))?;
        sources.push(Source { name: format!("sender-{k}"), connection });
    }
    let options = Options { streams_per_source: streams, ..Options::default() };
    let started = Instant::now();
    let report = transfer::download_from(&sources, &receiver, hash, &options).await?;
    let seconds = started.elapsed().as_secs_f64();
    for source in &sources {
        source.connection.close(0u32.into(), b"done");
    }
    endpoint.close(0u32.into(), b"done");
    server.abort();
    Ok((seconds, report.received_bytes))
}

/// Plain TCP as a user would move a file (`nc`): blocking sockets and files, 1 MiB buffers, one
/// thread each side.
async fn tcp(dir: &Path, sender: &BlobStore, hash: BlobHash) -> Result<f64> {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(io("tcp listener"))?;
    let address = listener.local_addr().map_err(io("tcp listener"))?;
    let source = sender.path(&hash);
    let server = std::thread::spawn(move || -> std::io::Result<()> {
        let (mut socket, _) = listener.accept()?;
        let mut file = std::fs::File::open(&source)?;
        let mut buffer = vec![0u8; 1 << 20];
        loop {
            let n = file.read(&mut buffer)?;
            if n == 0 {
                return Ok(());
            }
            socket.write_all(&buffer[..n])?;
        }
    });
    let target = dir.join("tcp-received");
    let receive = move || -> std::io::Result<f64> {
        let started = Instant::now();
        let mut socket = std::net::TcpStream::connect(address)?;
        let mut file = std::fs::File::create(&target)?;
        let mut buffer = vec![0u8; 1 << 20];
        loop {
            let n = socket.read(&mut buffer)?;
            if n == 0 {
                break;
            }
            file.write_all(&buffer[..n])?;
        }
        file.sync_all()?;
        Ok(started.elapsed().as_secs_f64())
    };
    let seconds = tokio::task::spawn_blocking(receive)
        .await
        .map_err(|e| DatasetError::Transfer { hash: hash.short(), message: e.to_string() })?
        .map_err(io("tcp receiver"))?;
    server
        .join()
        .map_err(|_| DatasetError::Transfer { hash: hash.short(), message: "the tcp sender panicked".into() })?
        .map_err(io("tcp sender"))?;
    Ok(seconds)
}
