//! `upglobe scheduler`

use std::net::SocketAddr;
use std::ops::RangeInclusive;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Result, bail};
use upglobe_scheduler::server::{ChainSettings, Scheduler, ServerConfig};

use super::{Context, stop_signal};
use crate::flags;
use crate::output::{Format, json};

/// Worker heartbeats: more often than 20 a second is load without information, rarer than hourly
/// leaves a lost worker's chunks waiting for no reason.
pub const HEARTBEAT_SECONDS: RangeInclusive<f64> = 0.05..=3600.0;
/// A lease can last from a second to a week.
pub const LEASE_TIMEOUT_SECONDS: RangeInclusive<f64> = 1.0..=604_800.0;
/// Connection silence from a second to a day (QUIC's limit is far beyond).
pub const IDLE_TIMEOUT_SECONDS: RangeInclusive<f64> = 1.0..=86_400.0;
/// Failed attempts of one chunk before its job fails.
pub const ATTEMPTS: RangeInclusive<u32> = 1..=1000;
/// Confirmed results before a worker runs md chunks alone (0: at once, for tests and closed labs).
pub const TRUST_AFTER: RangeInclusive<u64> = 0..=1_000_000;
pub const AUDIT_RATE: RangeInclusive<f64> = 0.0..=1.0;
pub const CHAIN_LINKS: RangeInclusive<u32> = 1..=upglobe_protocol::trust::CHAIN_LINKS_MAX as u32;
/// A worker serves an intermediate state within a second to an hour.
pub const SERVE_DEADLINE_SECONDS: RangeInclusive<f64> = 1.0..=3600.0;
/// Settlement passes from ten a second to hourly.
pub const SETTLE_INTERVAL_SECONDS: RangeInclusive<f64> = 0.1..=3600.0;
/// Challenge windows from a second to 90 days.
pub const SETTLE_AFTER_SECONDS: RangeInclusive<f64> = 1.0..=7_776_000.0;

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
    /// Seconds without a heartbeat after which a running chunk is given to another worker (1 to 604800).
    #[arg(long, value_name = "SECONDS", default_value = "30", value_parser = flags::seconds(LEASE_TIMEOUT_SECONDS))]
    lease_timeout: Duration,
    /// Seconds of silence after which a connection is considered dead (1 to 86400).
    #[arg(long, value_name = "SECONDS", default_value = "15", value_parser = flags::seconds(IDLE_TIMEOUT_SECONDS))]
    idle_timeout: Duration,
    /// Seconds between worker heartbeats (0.05 to 3600), shorter than the lease timeout.
    #[arg(long, value_name = "SECONDS", default_value = "2", value_parser = flags::seconds(HEARTBEAT_SECONDS))]
    heartbeat: Duration,
    /// Failed attempts of one chunk before its job fails (1 to 1000).
    #[arg(long, default_value_t = 5, value_parser = flags::integer(ATTEMPTS))]
    attempts: u32,
    /// Confirmed results after which a worker runs md chunks alone, under random audits (0 to 1000000).
    #[arg(long, default_value_t = 10, value_parser = flags::integer(TRUST_AFTER))]
    trust_after: u64,
    /// Lowest probability that a trusted worker's single execution is audited (0 to 1).
    #[arg(long, default_value_t = 1.0, value_parser = flags::number(AUDIT_RATE))]
    audit_rate_min: f64,
    /// Links of an md chunk's hash chain at most: an audit re-runs one link (1 to 1024).
    #[arg(long, default_value_t = 32, value_parser = flags::integer(CHAIN_LINKS))]
    chain_links: u32,
    /// Seconds a worker has to serve an intermediate state before it fails the audit (1 to 3600).
    #[arg(long, value_name = "SECONDS", default_value = "30", value_parser = flags::seconds(SERVE_DEADLINE_SECONDS))]
    serve_deadline: Duration,
    /// Seconds after which an unaudited provisional result becomes final (1 to 7776000).
    #[arg(long, value_name = "SECONDS", default_value = "3600", value_parser = flags::seconds(SETTLE_AFTER_SECONDS))]
    settle_after: Duration,
    /// Pay funded workflows' final chunks on this chain: a deployment file from `upglobe chain deploy`.
    #[arg(long, value_name = "FILE", requires = "reporter_key")]
    chain: Option<PathBuf>,
    /// The key escrow jobs name as this scheduler's reporter (64 hex digits, or a file holding them).
    #[arg(long, env = "UPGLOBE_REPORTER_KEY", value_name = "KEY", hide_env_values = true)]
    reporter_key: Option<String>,
    /// Serve the dashboard (live jobs, thermo plots, workers) and /metrics here. Bound anywhere but
    /// loopback, it asks for the client token's secret (?token=SECRET).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:7412", overrides_with = "http")]
    http: SocketAddr,
    /// Serve no dashboard.
    #[arg(long)]
    no_http: bool,
    /// Seconds between settlement passes (0.1 to 3600).
    #[arg(long, value_name = "SECONDS", default_value = "5", value_parser = flags::seconds(SETTLE_INTERVAL_SECONDS))]
    settle_interval: Duration,
}

impl Args {
    /// Checks what one flag's range cannot: a heartbeat must come before the lease it renews expires.
    fn check(&self) -> Result<()> {
        if self.heartbeat >= self.lease_timeout {
            bail!(
                "--heartbeat ({} s) must be shorter than --lease-timeout ({} s), or every lease expires between two heartbeats",
                self.heartbeat.as_secs_f64(),
                self.lease_timeout.as_secs_f64()
            );
        }
        Ok(())
    }
}

pub async fn run(context: &Context, args: Args) -> Result<i32> {
    args.check()?;
    let data_dir = args.data_dir.unwrap_or_else(|| context.home.join("scheduler"));
    let mut config = ServerConfig::new(data_dir.clone(), args.listen);
    config.advertise = args.advertise;
    // At most a week in milliseconds: far from overflowing.
    config.core.lease_timeout_ms = args.lease_timeout.as_millis() as u64;
    config.core.attempts_max = args.attempts;
    config.core.trust_after = args.trust_after;
    config.core.audit_rate_min = args.audit_rate_min;
    config.core.chain_links = args.chain_links;
    config.core.serve_deadline_ms = args.serve_deadline.as_millis() as u64;
    config.core.settle_after_ms = args.settle_after.as_millis() as u64;
    config.idle_timeout = args.idle_timeout;
    config.heartbeat_interval = args.heartbeat;
    config.http = (!args.no_http).then_some(args.http);
    if let Some(path) = &args.chain {
        let key = args.reporter_key.as_deref().expect("clap requires --reporter-key with --chain");
        if !std::path::Path::new(key).exists() {
            tracing::warn!(
                "--reporter-key was given as the key itself, which other users of this machine can read in the process list; \
                 give a file (or set UPGLOBE_REPORTER_KEY)"
            );
        }
        config.chain = Some(ChainSettings {
            deployment: upglobe_contracts::Deployment::read(path)?,
            reporter: upglobe_contracts::read_key(key)?,
            interval: args.settle_interval,
        });
    }
    let scheduler = Scheduler::start(config).await?;
    match context.format {
        Format::Json => json(&serde_json::json!({
            "address": scheduler.address.to_string(),
            "worker_token": scheduler.worker_token.to_string(),
            "client_token": scheduler.client_token.to_string(),
            "verifier_token": scheduler.verifier_token.to_string(),
            "data_dir": data_dir,
            "http": scheduler.http.map(|a| a.to_string()),
        })),
        Format::Text => {
            println!("scheduler listening on {} (data in {})", scheduler.address, data_dir.display());
            if scheduler.created {
                println!("created a new certificate authority");
            }
            if let Some(http) = scheduler.http {
                let note = if http.ip().is_loopback() { "" } else { " (add ?token= and the client token's secret)" };
                println!("dashboard: http://{http}/{note}, metrics: http://{http}/metrics");
            }
            println!("join workers with:\n  upglobe worker --join {}", scheduler.worker_token);
            println!(
                "join verifiers (audits on a reference kernel) with:\n  upglobe verify --join {}",
                scheduler.verifier_token
            );
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

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::Args;

    #[derive(Parser)]
    struct Command {
        #[command(flatten)]
        args: Args,
    }

    fn parse(flags: &[&str]) -> Result<Args, String> {
        let command = Command::try_parse_from(std::iter::once("scheduler").chain(flags.iter().copied()))
            .map_err(|error| error.to_string())?;
        command.args.check().map_err(|error| error.to_string())?;
        Ok(command.args)
    }

    #[test]
    fn durations_are_checked() {
        let args = parse(&[]).unwrap();
        assert_eq!((args.lease_timeout.as_secs(), args.idle_timeout.as_secs(), args.attempts), (30, 15, 5));
        let args = parse(&["--heartbeat", "0.3", "--lease-timeout", "4", "--idle-timeout", "3"]).unwrap();
        assert_eq!(args.heartbeat.as_millis(), 300);
        let cases: &[(&[&str], &str)] = &[
            (
                &["--heartbeat", "inf"],
                "invalid value 'inf' for '--heartbeat <SECONDS>': must be between 0.05 and 3600 seconds",
            ),
            (&["--heartbeat", "NaN"], "must be between 0.05 and 3600 seconds"),
            (&["--heartbeat", "1e300"], "must be between 0.05 and 3600 seconds"),
            (&["--heartbeat=-1"], "must be between 0.05 and 3600 seconds"),
            (
                &["--idle-timeout", "18446744073709551615"],
                "'--idle-timeout <SECONDS>': must be between 1 and 86400 seconds",
            ),
            (
                &["--lease-timeout", "18446744073709551615"],
                "'--lease-timeout <SECONDS>': must be between 1 and 604800 seconds",
            ),
            (&["--lease-timeout", "0"], "must be between 1 and 604800 seconds"),
            (&["--attempts", "0"], "'--attempts <ATTEMPTS>': must be between 1 and 1000"),
            (&["--heartbeat", "40"], "--heartbeat (40 s) must be shorter than --lease-timeout (30 s)"),
        ];
        for (flags, expected) in cases {
            let error = parse(flags).err().unwrap_or_else(|| panic!("{flags:?} was accepted"));
            assert!(error.contains(expected), "{flags:?}: {error}");
        }
    }
}
