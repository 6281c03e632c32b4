//! `upglobe scheduler`

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;
use upglobe_scheduler::server::{Scheduler, ServerConfig};

use super::{Context, stop_signal};
use crate::output::{Format, json};

#[derive(clap::Args)]
pub struct Args {
    /// State directory (CA, tokens, database, blobs). Default: HOME/scheduler.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// UDP address to listen on.
    #[arg(long, default_value = "0.0.0.0:7411")]
    listen: SocketAddr,
    /// HOST:PORT that workers should dial, written into the tokens. Default: the listening address.
    #[arg(long)]
    advertise: Option<String>,
    /// Seconds without a heartbeat after which a running chunk is given to another worker.
    #[arg(long, default_value_t = 30)]
    lease_timeout: u64,
    /// Seconds of silence after which a connection is considered dead.
    #[arg(long, default_value_t = 15)]
    idle_timeout: u64,
    /// Seconds between worker heartbeats.
    #[arg(long, default_value_t = 2.0)]
    heartbeat: f64,
    /// Failed attempts of one chunk before its job fails.
    #[arg(long, default_value_t = 5)]
    attempts: u32,
}

pub async fn run(context: &Context, args: Args) -> Result<i32> {
    let data_dir = args.data_dir.unwrap_or_else(|| context.home.join("scheduler"));
    let mut config = ServerConfig::new(data_dir.clone(), args.listen);
    config.advertise = args.advertise;
    config.core.lease_timeout_ms = args.lease_timeout * 1000;
    config.core.attempts_max = args.attempts.max(1);
    config.idle_timeout = Duration::from_secs(args.idle_timeout.max(1));
    config.heartbeat_interval = Duration::from_secs_f64(args.heartbeat.max(0.05));
    let scheduler = Scheduler::start(config).await?;
    match context.format {
        Format::Json => json(&serde_json::json!({
            "address": scheduler.address.to_string(),
            "worker_token": scheduler.worker_token.to_string(),
            "client_token": scheduler.client_token.to_string(),
            "data_dir": data_dir,
        })),
        Format::Text => {
            println!("scheduler listening on {} (data in {})", scheduler.address, data_dir.display());
            if scheduler.created {
                println!("created a new certificate authority");
            }
            println!("join workers with:\n  upglobe worker --join {}", scheduler.worker_token);
            println!(
                "client token (submit, status, results), also in {}:\n  {}",
                data_dir.join("client.token").display(),
                scheduler.client_token
            );
        }
    }
    scheduler.wait_for(stop_signal()).await?;
    Ok(0)
}
