//! Moving blobs over QUIC streams, verified end to end: the receiver hashes what arrives and keeps it
//! only if it matches the hash that was asked for (or promised).

use tokio::io::AsyncReadExt;
use upglobe_protocol::messages::limits::BLOB_BYTES_MAX;
use upglobe_protocol::messages::{BlobReply, StreamRequest};
use upglobe_protocol::{BlobHash, frame};

use crate::{BlobStore, DatasetError, Result};

const BUFFER_BYTES: usize = 1 << 20;
/// A transfer that receives nothing for this long has stalled.
const STALL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);
/// How long an upload the peer stopped waits for the peer's reason.
const REFUSAL_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

fn failed(hash: &BlobHash, message: impl Into<String>) -> DatasetError {
    DatasetError::Transfer { hash: hash.short(), message: message.into() }
}

/// Sends a blob from the local store to the peer, which verifies and stores it.
pub async fn upload(connection: &quinn::Connection, store: &BlobStore, hash: BlobHash) -> Result<()> {
    let (file, size) = store.open_blob(&hash)?;
    let (mut send, mut recv) = connection.open_bi().await.map_err(|e| failed(&hash, e.to_string()))?;
    frame::write(&mut send, &StreamRequest::PutBlob { hash, size }).await.map_err(|e| failed(&hash, e.to_string()))?;
    let mut file = tokio::fs::File::from_std(file);
    let copied = match tokio::io::copy(&mut file, &mut send).await {
        Ok(copied) => copied,
        // A peer that refuses an upload (a quota) says why and stops reading: its reason, if it
        // arrives, says more than the stopped stream.
        Err(e) => {
            let reply = tokio::time::timeout(REFUSAL_WAIT, frame::expect::<BlobReply, _>(&mut recv)).await;
            return match reply {
                Ok(Ok(BlobReply::Rejected { reason })) => Err(failed(&hash, format!("the peer refused it: {reason}"))),
                _ => Err(failed(&hash, e.to_string())),
            };
        }
    };
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

/// Fetches a blob from the peer into the local store. One already there is only touched, so a cache
/// evicts it last.
pub async fn download(connection: &quinn::Connection, store: &BlobStore, hash: BlobHash) -> Result<()> {
    if store.contains(&hash) {
        return store.touch(&hash);
    }
    let (mut send, mut recv) = connection.open_bi().await.map_err(|e| failed(&hash, e.to_string()))?;
    frame::write(&mut send, &StreamRequest::GetBlob { hash }).await.map_err(|e| failed(&hash, e.to_string()))?;
    send.finish().map_err(|e| failed(&hash, e.to_string()))?;
    let size = match frame::expect::<BlobReply, _>(&mut recv).await.map_err(|e| failed(&hash, e.to_string()))? {
        BlobReply::Sending { size } if size <= BLOB_BYTES_MAX => size,
        BlobReply::Sending { size } => {
            return Err(failed(&hash, format!("{size} bytes exceeds the blob limit")));
        }
        BlobReply::Missing => return Err(failed(&hash, "the peer does not have it")),
        other => return Err(failed(&hash, format!("unexpected reply {other:?}"))),
    };
    receive(&mut recv, store, hash, size).await
}

async fn receive(recv: &mut quinn::RecvStream, store: &BlobStore, hash: BlobHash, size: u64) -> Result<()> {
    let mut writer = store.writer(hash, size)?;
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

/// Answers a [`StreamRequest::GetBlob`].
pub async fn serve_get(send: &mut quinn::SendStream, store: &BlobStore, hash: BlobHash) -> Result<()> {
    let io = |e: upglobe_protocol::ProtocolError| failed(&hash, e.to_string());
    let (file, size) = match store.open_blob(&hash) {
        Ok(found) => found,
        Err(DatasetError::Missing(_)) => {
            return frame::write(send, &BlobReply::Missing).await.map_err(io);
        }
        Err(e) => return Err(e),
    };
    frame::write(send, &BlobReply::Sending { size }).await.map_err(io)?;
    let mut file = tokio::fs::File::from_std(file);
    let mut buffer = vec![0u8; BUFFER_BYTES];
    loop {
        let n = file.read(&mut buffer).await.map_err(|e| failed(&hash, e.to_string()))?;
        if n == 0 {
            break;
        }
        send.write_all(&buffer[..n]).await.map_err(|e| failed(&hash, e.to_string()))?;
    }
    send.finish().map_err(|e| failed(&hash, e.to_string()))?;
    Ok(())
}

/// Refuses a [`StreamRequest::PutBlob`] without reading it (a quota, say), with the reason.
pub async fn refuse_put(send: &mut quinn::SendStream, hash: BlobHash, reason: String) -> Result<()> {
    frame::write(send, &BlobReply::Rejected { reason }).await.map_err(|e| failed(&hash, e.to_string()))?;
    let _ = send.finish();
    Ok(())
}

/// Answers a [`StreamRequest::PutBlob`]: receives, verifies, stores, and says so.
pub async fn serve_put(
    send: &mut quinn::SendStream,
    recv: &mut quinn::RecvStream,
    store: &BlobStore,
    hash: BlobHash,
    size: u64,
) -> Result<()> {
    let reply = if size > BLOB_BYTES_MAX {
        BlobReply::Rejected { reason: format!("{size} bytes exceeds the limit of {BLOB_BYTES_MAX}") }
    } else if store.contains(&hash) {
        // Drain what is sent; the copy we hold is already verified. Touching it tells garbage
        // collection that it is wanted again.
        let mut sink = tokio::io::sink();
        let _ = tokio::io::copy(&mut recv.take(size), &mut sink).await;
        match store.touch(&hash) {
            Ok(()) => BlobReply::Stored,
            Err(e) => BlobReply::Rejected { reason: e.to_string() },
        }
    } else {
        match receive(recv, store, hash, size).await {
            Ok(()) => BlobReply::Stored,
            Err(e) => BlobReply::Rejected { reason: e.to_string() },
        }
    };
    frame::write(send, &reply).await.map_err(|e| failed(&hash, e.to_string()))?;
    let _ = send.finish();
    Ok(())
}
