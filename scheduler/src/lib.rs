//! The scheduler: a pure decision [`core`], its SQLite [`store`], and the QUIC [`server`] shell that
//! feeds the core events and carries out its actions.

pub mod core;
pub mod logs;
pub mod server;
pub mod settle;
pub mod store;
pub mod trust_bench;

#[derive(Debug, thiserror::Error)]
pub enum SchedulerError {
    #[error("state store: {0}")]
    Store(String),
    #[error(transparent)]
    Protocol(#[from] upglobe_protocol::ProtocolError),
    #[error(transparent)]
    Dataset(#[from] upglobe_datasets::DatasetError),
    /// The cause is part of the message, not a `source`, so a printed chain does not repeat it.
    #[error("{context}: {cause}")]
    Io { context: String, cause: std::io::Error },
    #[error("{0}")]
    Invalid(String),
}

impl From<rusqlite::Error> for SchedulerError {
    fn from(e: rusqlite::Error) -> SchedulerError {
        SchedulerError::Store(e.to_string())
    }
}

pub type Result<T, E = SchedulerError> = std::result::Result<T, E>;
