//! Stores and moves bytes: the content-addressed blob store every peer keeps, (with the `h5md`
//! module) trajectory files in H5MD, and the tolerance comparison of two results' output files.

pub mod blobs;
pub mod compare;
#[cfg(feature = "h5md")]
pub mod h5md;
pub mod slices;
pub mod transfer;
pub mod transfer_bench;

pub use blobs::{BlobStore, BlobWriter};

#[derive(Debug, thiserror::Error)]
pub enum DatasetError {
    /// The cause is part of the message, not a `source`, so a printed chain does not repeat it.
    #[error("{context}: {cause}")]
    Io { context: String, cause: std::io::Error },
    #[error("blob {hash} is corrupt: its contents hash to {actual}")]
    Corrupt { hash: String, actual: String },
    #[error("blob {expected} did not arrive whole: {received} of {size} bytes")]
    Incomplete { expected: String, received: u64, size: u64 },
    #[error("a slice of blob {hash} does not verify against its hash ({detail}): the source sent corrupt data")]
    CorruptSlice { hash: String, detail: String },
    #[error("the disk is full: {path} needs {needed} bytes{}", available.map(|a| format!(", {a} are free")).unwrap_or_default())]
    DiskFull { path: String, needed: u64, available: Option<u64> },
    #[error("blob {0} is not in the store")]
    Missing(String),
    #[error("transfer of blob {hash}: {message}")]
    Transfer { hash: String, message: String },
    #[error("h5md {path}: {message}")]
    H5md { path: String, message: String },
    /// Two results' output files could not be compared at all (as opposed to differing).
    #[error("comparing {file}: {message}")]
    Compare { file: String, message: String },
}

pub type Result<T, E = DatasetError> = std::result::Result<T, E>;
