//! Length-prefixed postcard frames: a little-endian `u32` length, then the message.

use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::messages::limits::FRAME_BYTES_MAX;
use crate::{ProtocolError, Result};

/// Appends one frame to `out` (so several frames can go out in one write).
pub fn encode_into<T: Serialize>(message: &T, out: &mut Vec<u8>) -> Result<()> {
    let start = out.len();
    out.extend_from_slice(&[0; 4]);
    let mut bytes = std::mem::take(out);
    bytes = postcard::to_extend(message, bytes).map_err(|e| ProtocolError::Malformed(e.to_string()))?;
    *out = bytes;
    let size = out.len() - start - 4;
    if size > FRAME_BYTES_MAX {
        out.truncate(start);
        return Err(ProtocolError::FrameTooLarge { size, limit: FRAME_BYTES_MAX });
    }
    out[start..start + 4].copy_from_slice(&(size as u32).to_le_bytes());
    Ok(())
}

pub async fn write<T: Serialize, W: AsyncWrite + Unpin>(writer: &mut W, message: &T) -> Result<()> {
    let mut bytes = Vec::new();
    encode_into(message, &mut bytes)?;
    writer.write_all(&bytes).await.map_err(|_| ProtocolError::Closed)
}

/// Reads one frame; `Ok(None)` at a clean end of stream.
pub async fn read<T: DeserializeOwned, R: AsyncRead + Unpin>(reader: &mut R) -> Result<Option<T>> {
    read_limited(reader, FRAME_BYTES_MAX).await
}

/// Reads one frame of at most `limit` bytes (a greeting, before the peer has proven anything);
/// `Ok(None)` at a clean end of stream. Nothing is allocated for a frame over the limit.
pub async fn read_limited<T: DeserializeOwned, R: AsyncRead + Unpin>(
    reader: &mut R,
    limit: usize,
) -> Result<Option<T>> {
    let mut length = [0u8; 4];
    match reader.read_exact(&mut length).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(_) => return Err(ProtocolError::Closed),
    }
    let size = u32::from_le_bytes(length) as usize;
    if size > limit.min(FRAME_BYTES_MAX) {
        return Err(ProtocolError::FrameTooLarge { size, limit: limit.min(FRAME_BYTES_MAX) });
    }
    let mut bytes = vec![0u8; size];
    reader.read_exact(&mut bytes).await.map_err(|_| ProtocolError::Closed)?;
    decode(&bytes).map(Some)
}

/// Decodes one frame's body. The whole body must be the message: trailing bytes are malformed.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T> {
    match postcard::take_from_bytes(bytes) {
        Ok((message, [])) => Ok(message),
        Ok((_, rest)) => Err(ProtocolError::Malformed(format!("{} bytes after the message", rest.len()))),
        Err(e) => Err(ProtocolError::Malformed(e.to_string())),
    }
}

/// Writes the messages that arrive on `messages` to `send` until either side closes, several frames
/// per write when they pile up (a busy control stream then costs one packet, not one per message).
pub async fn pump<T: Serialize>(mut send: quinn::SendStream, mut messages: tokio::sync::mpsc::UnboundedReceiver<T>) {
    let mut bytes = Vec::new();
    let mut batch = Vec::new();
    while messages.recv_many(&mut batch, 256).await > 0 {
        bytes.clear();
        for message in batch.drain(..) {
            if let Err(e) = encode_into(&message, &mut bytes) {
                tracing::error!(error = %e, "a message could not be encoded");
            }
        }
        if send.write_all(&bytes).await.is_err() {
            return;
        }
    }
}

/// Reads one frame that must be there.
pub async fn expect<T: DeserializeOwned, R: AsyncRead + Unpin>(reader: &mut R) -> Result<T> {
    read(reader).await?.ok_or(ProtocolError::Closed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::AssignmentId;
    use crate::messages::{FromWorker, Progress};

    #[tokio::test]
    async fn frames_round_trip_back_to_back() {
        let first = FromWorker::Heartbeat { running: vec![Progress { assignment: AssignmentId(3), steps_done: 9 }] };
        let second = FromWorker::Heartbeat { running: vec![] };
        let mut bytes = Vec::new();
        encode_into(&first, &mut bytes).unwrap();
        encode_into(&second, &mut bytes).unwrap();
        let mut reader = &bytes[..];
        assert_eq!(read::<FromWorker, _>(&mut reader).await.unwrap(), Some(first));
        assert_eq!(read::<FromWorker, _>(&mut reader).await.unwrap(), Some(second));
        assert_eq!(read::<FromWorker, _>(&mut reader).await.unwrap(), None);
    }

    #[tokio::test]
    async fn rejects_oversized_and_malformed_frames() {
        let mut huge = (u32::MAX).to_le_bytes().to_vec();
        huge.extend([0; 8]);
        assert!(matches!(read::<FromWorker, _>(&mut &huge[..]).await, Err(ProtocolError::FrameTooLarge { .. })));
        let garbage = [3u8, 0, 0, 0, 0xff, 0xff, 0xff];
        assert!(matches!(read::<FromWorker, _>(&mut &garbage[..]).await, Err(ProtocolError::Malformed(_))));
        let mut trailing = Vec::new();
        encode_into(&FromWorker::Heartbeat { running: vec![] }, &mut trailing).unwrap();
        trailing[0] += 1;
        trailing.push(0);
        assert!(matches!(read::<FromWorker, _>(&mut &trailing[..]).await, Err(ProtocolError::Malformed(_))));
    }

    #[tokio::test]
    async fn a_greeting_over_its_limit_is_refused_before_it_is_read() {
        let mut bytes = Vec::new();
        encode_into(
            &FromWorker::Heartbeat {
                running: vec![Progress { assignment: AssignmentId(u64::MAX), steps_done: u64::MAX }; 600],
            },
            &mut bytes,
        )
        .unwrap();
        assert!(bytes.len() > 4096);
        let result = read_limited::<FromWorker, _>(&mut &bytes[..], 4096).await;
        assert!(matches!(result, Err(ProtocolError::FrameTooLarge { limit: 4096, .. })), "{result:?}");
        assert!(read_limited::<FromWorker, _>(&mut &bytes[..], 1 << 20).await.unwrap().is_some());
    }
}
