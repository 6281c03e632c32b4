//! `upglobe worker` and `upglobe verify`: the same node, running chunks or audits.

use std::ops::RangeInclusive;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use upglobe_kernels::Device;
use upglobe_protocol::Role;
use upglobe_protocol::trust::NodeRole;
use upglobe_worker::{WorkerConfig, describe_device};

use super::scheduler::IDLE_TIMEOUT_SECONDS;
use super::{Context, stop_signal};
use crate::client::parse_token;
use crate::flags;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    node: NodeArgs,
    /// Run `command` jobs. They are not isolated: only enable this for workflows you trust.
    #[arg(long)]
    allow_commands: bool,
    /// Run no `container` jobs, even if a dockerd answers (DOCKER_HOST, or /var/run/docker.sock).
    /// Containers are hardened: no network, no capabilities, a read-only root, a non-root user,
    /// pids, memory and CPU limits.
    #[arg(long)]
    no_containers: bool,
    /// Give a network to container jobs that ask for one (`network = true`).
    #[arg(long)]
    allow_network: bool,
    /// The hub (its Ethereum address) to be paid for this worker's verified chunks; the hub must
    /// also attach this worker's id (`upglobe hub attach`).
    #[arg(long, env = "UPGLOBE_HUB", value_parser = hub_address)]
    hub: Option<[u8; 20]>,
}

fn hub_address(text: &str) -> Result<[u8; 20], String> {
    text.trim()
        .parse::<upglobe_contracts::Address>()
        .map(|a| a.0.0)
        .map_err(|_| format!("{text:?} is not an Ethereum address (0x and 40 hex digits)"))
}

#[derive(clap::Args)]
pub struct VerifyArgs {
    #[command(flatten)]
    node: NodeArgs,
}

/// What a worker and a verifier both take.
#[derive(clap::Args)]
pub struct NodeArgs {
    /// The token printed by the scheduler for this role (or a file holding it).
    #[arg(long, env = "UPGLOBE_JOIN")]
    join: String,
    /// State directory (identity and signing keys, blob cache). Default: HOME/worker or HOME/verifier.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Name shown to the scheduler's operator. Default: the host name.
    #[arg(long)]
    name: Option<String>,
    /// The hub (lab, operator) this node belongs to: nodes of one owner never verify each other.
    #[arg(long, value_parser = owner_name)]
    owner: Option<String>,
    /// Cores to offer (1 to 65536). Default: all.
    #[arg(long, value_parser = flags::integer(CPUS))]
    cpus: Option<u32>,
    /// Memory to offer, in bytes. Default: all.
    #[arg(long)]
    memory: Option<u64>,
    /// What runs MD chunks: cpu, wgpu, or wgpu:N for the N-th adapter. Default: cpu for a worker;
    /// for a verifier wgpu where an adapter exists, else cpu.
    #[arg(long)]
    device: Option<String>,
    /// Size of the blob cache in bytes (1 MiB to 1 PiB); least recently used blobs are evicted
    /// first, never those of running tasks.
    #[arg(long, value_name = "BYTES", default_value_t = upglobe_worker::CACHE_BYTES_DEFAULT, value_parser = flags::integer(CACHE_BYTES))]
    cache_size: u64,
    /// UDP address to serve this worker's cache to other workers on (they fetch inputs from each
    /// other, verified, beside the scheduler). Default: any address, a free port.
    #[arg(long, value_name = "ADDR", default_value = "0.0.0.0:0", conflicts_with = "no_peers")]
    serve_peers: std::net::SocketAddr,
    /// Do not serve the cache to other workers.
    #[arg(long)]
    no_peers: bool,
    /// IP:PORT other workers should dial to reach this one (behind NAT: the public address and
    /// forwarded port). Default: the address this worker reaches the scheduler from, with the port
    /// it serves on.
    #[arg(long, value_name = "IP:PORT")]
    peer_advertise: Option<std::net::SocketAddr>,
    /// Hold downloads to this rate (e.g. 50MB, 10MiB: bytes per second), on a link shared with
    /// people. Default: as fast as the path allows.
    #[arg(long, value_name = "BYTES_PER_S", value_parser = flags::bytes(DOWNLOAD_RATE))]
    download_rate: Option<u64>,
    /// Seconds of silence after which the connection is considered dead (1 to 86400).
    #[arg(long, value_name = "SECONDS", default_value = "15", value_parser = flags::seconds(IDLE_TIMEOUT_SECONDS))]
    idle_timeout: Duration,
}

/// Download rates a worker may be held to: 64 KiB/s to 1 TiB/s.
pub const DOWNLOAD_RATE: RangeInclusive<u64> = 1 << 16..=1 << 40;

/// Sizes the blob cache may be given.
pub const CACHE_BYTES: RangeInclusive<u64> = 1 << 20..=1 << 50;

/// Cores a worker may offer.
pub const CPUS: RangeInclusive<u32> = 1..=65_536;

pub fn parse_device(text: &str) -> Result<Device> {
    Ok(match text {
        "cpu" => Device::Cpu { threads: 0 },
        "wgpu" | "gpu" => Device::Wgpu { adapter: None },
        other => match other.strip_prefix("wgpu:") {
            Some(n) => {
                Device::Wgpu { adapter: Some(n.parse().with_context(|| format!("'{n}' is not an adapter number"))?) }
            }
            None => bail!("unknown device '{other}': use cpu, wgpu or wgpu:N"),
        },
    })
}

fn owner_name(text: &str) -> Result<String, String> {
    upglobe_protocol::messages::check_name(text).map(|()| text.to_string()).map_err(|e| format!("the owner name {e}"))
}

pub async fn run(context: &Context, args: Args) -> Result<i32> {
    let mut config = node_config(context, args.node, NodeRole::Worker)?;
    config.allow_commands = args.allow_commands;
    config.containers = !args.no_containers;
    config.allow_network = args.allow_network;
    config.hub = args.hub;
    tracing::info!(name = %config.name, cpus = config.resources.cpus, device = %describe_device(&config.device), "worker starting");
    upglobe_worker::run(config, None, stop_signal()).await?;
    Ok(0)
}

/// `upglobe verify`: a node that runs audits and dispute intervals on the reference kernel, never
/// ordinary chunks.
pub async fn verify(context: &Context, args: VerifyArgs) -> Result<i32> {
    let config = node_config(context, args.node, NodeRole::Verifier)?;
    tracing::info!(name = %config.name, cpus = config.resources.cpus, device = %describe_device(&config.device), "verifier starting");
    upglobe_worker::run(config, None, stop_signal()).await?;
    Ok(0)
}

fn node_config(context: &Context, args: NodeArgs, role: NodeRole) -> Result<WorkerConfig> {
    let token = parse_token(&args.join).context("--join")?;
    let (wanted, directory) = match role {
        NodeRole::Worker => (Role::Worker, "worker"),
        NodeRole::Verifier => (Role::Verifier, "verifier"),
    };
    if token.role != wanted {
        bail!(
            "--join needs the {} token printed by `upglobe scheduler`, not a {} token",
            wanted.as_str(),
            token.role.as_str()
        );
    }
    let data_dir = args.data_dir.unwrap_or_else(|| context.home.join(directory));
    let mut config = WorkerConfig::new(data_dir, token);
    config.role = role;
    config.owner = args.owner;
    if let Some(name) = args.name {
        config.name = name;
    }
    if let Some(cpus) = args.cpus {
        config.resources.cpus = cpus;
    }
    if let Some(memory) = args.memory {
        config.resources.memory_bytes = memory;
    }
    // GPUs: NVML's (or, in a test build, fake ones); without the driver, said once.
    let gpus = match upglobe_worker::cheat::fake_gpus() {
        Some(fake) => fake.map_err(anyhow::Error::msg)?,
        None => upglobe_worker::resources::detect_gpus().unwrap_or_else(|reason| {
            tracing::info!("{reason}; this node offers no GPU");
            Vec::new()
        }),
    };
    config.resources.gpus = gpus.len() as u32;
    config.gpus = gpus;
    config.adapters = upglobe_kernels::gpu::adapters()
        .iter()
        .take(upglobe_protocol::messages::limits::ADAPTERS_MAX)
        .map(|a| upglobe_worker::fit_description(&a.to_string()))
        .collect();
    config.device = match (args.device, role) {
        (Some(device), _) => parse_device(&device)?,
        // The reference kernel: a GPU where there is one (faster), the CPU engine otherwise; both give
        // the same bytes.
        (None, NodeRole::Verifier) if !upglobe_kernels::gpu::adapters().is_empty() => Device::Wgpu { adapter: None },
        (None, _) => Device::Cpu { threads: 0 },
    };
    config.idle_timeout = args.idle_timeout;
    config.cache_bytes_max = args.cache_size;
    config.download_rate = args.download_rate;
    config.peer_listen = (!args.no_peers).then_some(args.serve_peers);
    config.peer_advertise = args.peer_advertise.map(|a| a.to_string());
    Ok(config)
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

    fn error(flags: &[&str]) -> String {
        let all = ["worker", "--join", "token"].into_iter().chain(flags.iter().copied());
        Command::try_parse_from(all)
            .err()
            .map(|error| error.to_string())
            .unwrap_or_else(|| panic!("{flags:?} was accepted"))
    }

    #[test]
    fn flags_are_checked() {
        let args = Command::try_parse_from(["worker", "--join", "token", "--idle-timeout", "3"]).unwrap().args.node;
        assert_eq!(args.idle_timeout.as_secs(), 3);
        assert!(error(&["--owner", "a lab"]).contains("the owner name contains ' '"));
        assert!(error(&["--idle-timeout", "18446744073709551615"]).contains("must be between 1 and 86400 seconds"));
        assert!(error(&["--idle-timeout", "inf"]).contains("must be between 1 and 86400 seconds"));
        assert!(error(&["--cpus", "0"]).contains("'--cpus <CPUS>': must be between 1 and 65536"));
        assert_eq!(args.cache_size, upglobe_worker::CACHE_BYTES_DEFAULT);
        assert!(error(&["--cache-size", "10"]).contains("must be between 1048576 and"));
    }
}
