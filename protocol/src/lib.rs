//! The only place that knows the wire format.
//!
//! Peers talk over QUIC (quinn) with mutual TLS. The scheduler has its own certificate authority; a
//! join token carries the scheduler's address, the CA's fingerprint and a secret. A worker refuses a
//! scheduler whose certificate chain does not lead to the pinned CA, and the scheduler refuses a peer
//! whose first message does not carry a valid secret. Each worker has its own key pair; the BLAKE3 hash
//! of its public key is its [`WorkerId`], to which results (and later payments) are bound.
//!
//! Streams carry length-prefixed postcard frames ([`frame`]). The TLS application protocol (ALPN)
//! names the major protocol version, so an incompatible peer fails the handshake with a clear error
//! instead of hanging; [`PROTOCOL_VERSION`] in the hello covers compatible revisions.

pub mod amount;
pub mod frame;
pub mod ids;
pub mod messages;
pub mod net;
pub mod tls;
pub mod token;
pub mod trust;

pub use ids::{AssignmentId, BlobHash, ChunkId, Digest, JobId, WorkerId, WorkflowId};
pub use token::{Role, Token};

/// Revision of the messages; peers must agree exactly.
pub const PROTOCOL_VERSION: u32 = 5;
/// TLS application protocol: the major version of the wire format.
pub const ALPN: &[u8] = b"upglobe/1";
/// Name in the scheduler's certificate; workers check it.
pub const SERVER_NAME: &str = "upglobe-scheduler";

#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    #[error("invalid token: {0}")]
    Token(String),
    #[error("tls: {0}")]
    Tls(String),
    #[error("connection to {peer}: {message}")]
    Connection { peer: String, message: String },
    /// The peer is not the scheduler the token names: retrying cannot help.
    #[error("connection to {peer}: {message}")]
    WrongScheduler { peer: String, message: String },
    #[error("frame of {size} bytes exceeds the limit of {limit} bytes")]
    FrameTooLarge { size: usize, limit: usize },
    #[error("malformed message: {0}")]
    Malformed(String),
    #[error("stream closed")]
    Closed,
    #[error("refused by {peer}: {reason}")]
    Refused { peer: String, reason: String },
    /// The cause is part of the message, not a `source`, so a printed chain does not repeat it.
    #[error("{context}: {cause}")]
    Io { context: String, cause: std::io::Error },
}

pub type Result<T, E = ProtocolError> = std::result::Result<T, E>;
