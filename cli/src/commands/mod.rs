//! One module per subcommand. Each returns the process exit code.

pub mod bench;
pub mod dataset;
pub mod demo;
pub mod image;
pub mod md;
pub mod pay;
pub mod results;
pub mod run;
pub mod scheduler;
pub mod status;
pub mod submit;
pub mod worker;
pub mod workflow;

use std::path::PathBuf;

use crate::output::Format;

pub struct Context {
    pub home: PathBuf,
    pub format: Format,
}

/// Resolves when the process is asked to stop (Ctrl-C or SIGTERM).
pub async fn stop_signal() {
    #[cfg(unix)]
    {
        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("a SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}
