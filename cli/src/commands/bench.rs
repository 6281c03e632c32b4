//! `upglobe bench md`, `scheduler`, `trust`, `transfer` and `gas`: measurements printed as JSON, so
//! anyone can reproduce a figure in a README.

use std::ops::ControlFlow;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use serde_json::{Value, json};
use upglobe_kernels::lattice::FccLattice;
use upglobe_kernels::system::STEP_MAX;
use upglobe_kernels::{Checkpoint, Device, RunOptions, State, engine};
use upglobe_protocol::messages::limits::{CHUNKS_PER_JOB_MAX, REPLICAS_MAX};
use upglobe_protocol::messages::{ClientRequest, ClientResponse, JobKind, JobSpec, Resources, Submission};
use upglobe_protocol::tls::PeerIdentity;
use upglobe_protocol::trust::Verification;
use upglobe_scheduler::server::{Scheduler, ServerConfig};
use upglobe_worker::WorkerConfig;

use super::Context;
use super::md::LATTICE_CELLS;
use super::status::fetch;
use crate::client::Client;
use crate::flags;
use crate::output::{self, Format};

#[derive(clap::Subcommand)]
pub enum Command {
    /// The LAMMPS in.lj system on CPU (1 thread, all threads), each wgpu adapter, and LAMMPS.
    Md(MdArgs),
    /// Chunk dispatch through the real QUIC shell, with in-process workers doing empty chunks.
    Scheduler(SchedulerArgs),
    /// A seeded simulation of verification on the real scheduler core: honest workers, verifiers and
    /// cheaters of five kinds; what trust costs and what it catches, against a quorum of two.
    Trust(TrustArgs),
    /// The same bytes over the verified QUIC path (slices checked against the root, written to
    /// disk) and over plain TCP on loopback, in one run; the last line is
    /// `{"quic_mb_s":…,"tcp_mb_s":…,"ratio":…}`.
    Transfer(TransferArgs),
    /// Gas of the escrow's payBatch on a local anvil (run `npm ci` in contracts/ first), one
    /// batch of consecutive chunks per size after a warm-up batch; one line per batch:
    /// `{"batch":…,"gas_per_chunk":…,"gas_used":…}`.
    Gas(GasArgs),
}

#[derive(clap::Args)]
pub struct GasArgs {
    /// Chunks per batch, paid in this order.
    #[arg(long, value_delimiter = ',', default_value = "1,10,100,1000", value_parser = flags::integer(1..=upglobe_contracts::bench::BATCH_CHUNKS_MAX))]
    sizes: Vec<usize>,
}

#[derive(clap::Args)]
pub struct TransferArgs {
    #[arg(long, default_value = "1GiB", value_parser = flags::bytes(1..=upglobe_protocol::messages::limits::BLOB_BYTES_MAX))]
    size: u64,
    /// QUIC connections the download uses (each is a source of its own).
    #[arg(long, default_value_t = 1, value_parser = flags::integer(1..=64usize))]
    connections: usize,
    /// Streams per connection serving pieces at once.
    #[arg(long, default_value_t = 4, value_parser = flags::integer(1..=256usize))]
    streams: usize,
    /// Where the sender's and receivers' files go (a temporary directory by default).
    #[arg(long)]
    dir: Option<std::path::PathBuf>,
    /// Runs of each path; the fastest counts.
    #[arg(long, default_value_t = 3, value_parser = flags::integer(1..=REPEAT_MAX))]
    repeat: u32,
}

#[derive(clap::Args)]
pub struct TrustArgs {
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Chunks in all, in jobs of 100 (the goals are stated for 100 000 or more).
    #[arg(long, default_value_t = 100_000, value_parser = flags::integer(100..=10_000_000u64))]
    chunks: u64,
    /// Confirmed results before a worker runs alone (the scheduler's --trust-after).
    #[arg(long, value_parser = flags::integer(super::scheduler::TRUST_AFTER))]
    trust_after: Option<u64>,
    /// Lowest audit probability of a trusted worker's single execution (the scheduler's --audit-rate-min).
    #[arg(long, value_parser = flags::number(super::scheduler::AUDIT_RATE))]
    audit_rate_min: Option<f64>,
    /// Links of each chunk's hash chain (the scheduler's --chain-links).
    #[arg(long, value_parser = flags::integer(super::scheduler::CHAIN_LINKS))]
    chain_links: Option<u32>,
    /// Failures after which a worker gets no more work.
    #[arg(long, value_parser = flags::integer(1..=1000u64))]
    failures_max: Option<u64>,
    /// Honest workers (cheaters and verifiers come in addition).
    #[arg(long, value_parser = flags::integer(1..=10_000u32))]
    honest_workers: Option<u32>,
    #[arg(long, value_parser = flags::integer(1..=1000u32))]
    verifiers: Option<u32>,
}

#[derive(clap::Args)]
pub struct MdArgs {
    /// fcc unit cells per edge for each size (20 = in.lj's 32 000 atoms; 40 = 256 000; 80 = 2 048 000).
    #[arg(long, value_delimiter = ',', default_value = "20", value_parser = flags::integer(LATTICE_CELLS))]
    cells: Vec<usize>,
    #[arg(long, default_value_t = 100, value_parser = flags::integer(1..=STEP_MAX))]
    steps: u64,
    /// Skip LAMMPS even if `lmp` is installed.
    #[arg(long)]
    no_lammps: bool,
    /// Skip wgpu adapters.
    #[arg(long)]
    no_gpu: bool,
    /// Run the CPU engines only on the first size (large systems are slow on CPU).
    #[arg(long)]
    cpu_first_size_only: bool,
    /// Runs of each engine; the fastest counts (for UpGlobe and LAMMPS alike), which filters out
    /// interference from other work on the machine.
    #[arg(long, default_value_t = 3, value_parser = flags::integer(1..=REPEAT_MAX))]
    repeat: u32,
}

/// Runs of each engine in `bench md`.
const REPEAT_MAX: u32 = 1000;
/// In-process workers of `bench scheduler`, each with its own QUIC connection.
const WORKERS_MAX: u32 = 1024;
/// Concurrent chunks per in-process worker.
const SLOTS_MAX: u32 = 65_536;

#[derive(clap::Args)]
pub struct SchedulerArgs {
    #[arg(long, default_value_t = 20_000, value_parser = flags::integer(1..=CHUNKS_PER_JOB_MAX as u32))]
    chunks: u32,
    #[arg(long, default_value_t = 4, value_parser = flags::integer(1..=WORKERS_MAX))]
    workers: u32,
    /// Concurrent chunks per worker.
    #[arg(long, default_value_t = 64, value_parser = flags::integer(1..=SLOTS_MAX))]
    slots: u32,
    /// Replicas of each chunk, at most the workers.
    #[arg(long, default_value_t = 1, value_parser = flags::integer(1..=REPLICAS_MAX))]
    replicas: u32,
    /// Also fetch the job's results at the end and report their time and size (or the error).
    #[arg(long)]
    results: bool,
}

pub async fn run(context: &Context, command: Command) -> Result<i32> {
    let report = match command {
        Command::Md(args) => tokio::task::spawn_blocking(move || bench_md(&args)).await??,
        Command::Scheduler(args) => bench_scheduler(&args).await?,
        Command::Trust(args) => tokio::task::spawn_blocking(move || bench_trust(&args)).await??,
        Command::Transfer(args) => bench_transfer(&args).await?,
        Command::Gas(args) => return bench_gas(context, &args).await,
    };
    match context.format {
        Format::Json => output::json(&report),
        Format::Text => println!("{}", serde_json::to_string_pretty(&report)?),
    }
    Ok(0)
}

async fn bench_gas(context: &Context, args: &GasArgs) -> Result<i32> {
    let rows = upglobe_contracts::bench::gas(&args.sizes).await?;
    match context.format {
        Format::Json => {
            for row in &rows {
                output::json(&serde_json::to_value(row)?);
            }
        }
        Format::Text => {
            let cells: Vec<Vec<String>> = rows
                .iter()
                .map(|r| vec![r.batch.to_string(), r.gas_used.to_string(), r.gas_per_chunk.to_string()])
                .collect();
            println!("{}", output::table(&["chunks", "gas used", "gas per chunk"], &cells));
        }
    }
    Ok(0)
}

async fn bench_transfer(args: &TransferArgs) -> Result<Value> {
    let dir = match &args.dir {
        Some(dir) => {
            tempfile::tempdir_in(dir).with_context(|| format!("cannot make a directory in {}", dir.display()))?
        }
        None => tempfile::tempdir().context("cannot make a temporary directory")?,
    };
    let report =
        upglobe_datasets::transfer_bench::run(dir.path(), args.size, args.connections, args.streams, args.repeat)
            .await?;
    Ok(serde_json::to_value(report)?)
}

fn bench_trust(args: &TrustArgs) -> Result<serde_json::Value> {
    use upglobe_scheduler::trust_bench::{TrustBenchConfig, run};
    let mut config = TrustBenchConfig { seed: args.seed, chunks: args.chunks, ..TrustBenchConfig::default() };
    config.core.trust_after = args.trust_after.unwrap_or(config.core.trust_after);
    config.core.audit_rate_min = args.audit_rate_min.unwrap_or(config.core.audit_rate_min);
    config.core.chain_links = args.chain_links.unwrap_or(config.core.chain_links);
    config.core.disagreements_max = args.failures_max.unwrap_or(config.core.disagreements_max);
    config.honest_workers = args.honest_workers.unwrap_or(config.honest_workers);
    config.verifiers = args.verifiers.unwrap_or(config.verifiers);
    let started = std::time::Instant::now();
    let report = run(&config);
    let mut value = serde_json::to_value(&report)?;
    value["wall_s"] = serde_json::json!(started.elapsed().as_secs_f64());
    Ok(value)
}

/// The best of `repeat` runs.
fn best<T>(repeat: u32, mut run: impl FnMut() -> Result<(f64, T)>) -> Result<(f64, T)> {
    let mut best = run()?;
    for _ in 1..repeat.max(1) {
        let next = run()?;
        if next.0 > best.0 {
            best = next;
        }
    }
    Ok(best)
}

fn measure(device: &Device, state: &State, steps: u64) -> Result<(f64, (String, String))> {
    let mut engine = engine(device)?;
    let mut started = Instant::now();
    let output = engine.run(state, &RunOptions::new(steps), &mut |event| {
        if let upglobe_kernels::Event::Ready = event {
            started = Instant::now();
        }
        ControlFlow::Continue(())
    })?;
    // Like LAMMPS' "Loop time": the steps, not the set-up.
    let seconds = started.elapsed().as_secs_f64();
    Ok((
        state.atoms() as f64 * steps as f64 / seconds,
        (engine.describe(), Checkpoint::hash(&output.state).to_string()),
    ))
}

fn bench_md(args: &MdArgs) -> Result<Value> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let lammps = (!args.no_lammps).then(lammps_binary).flatten();
    let adapters = if args.no_gpu { Vec::new() } else { upglobe_kernels::gpu::adapters() };
    let mut sizes = Vec::new();
    for (k, &cells) in args.cells.iter().enumerate() {
        let state = State::from_physical(FccLattice::in_lj(cells).build())?;
        let mut results = Vec::new();
        let mut hashes = Vec::new();
        let mut record = |name: String, rate: f64, hash: Option<String>| {
            if let Some(hash) = &hash {
                hashes.push(hash.clone());
            }
            results.push(json!({"engine": name, "atom_steps_per_s": rate, "state_hash": hash}));
            rate
        };
        let mut cpu_one = None;
        if k == 0 || !args.cpu_first_size_only {
            let (rate, (name, hash)) = best(args.repeat, || measure(&Device::Cpu { threads: 1 }, &state, args.steps))?;
            cpu_one = Some(record(name, rate, Some(hash)));
            if threads > 1 {
                let (rate, (name, hash)) = best(args.repeat, || measure(&Device::Cpu { threads }, &state, args.steps))?;
                record(name, rate, Some(hash));
            }
        }
        for adapter in &adapters {
            let device = Device::Wgpu { adapter: Some(adapter.index) };
            let (rate, (name, hash)) = best(args.repeat, || measure(&device, &state, args.steps))?;
            record(name, rate, Some(hash));
        }
        let mut lammps_opt = None;
        if let Some(lmp) = &lammps {
            for (name, suffix) in [("lammps", None), ("lammps -sf opt", Some("opt"))] {
                match best(args.repeat, || Ok((run_lammps(lmp, &state, args.steps, suffix)?, ()))) {
                    Ok((rate, ())) => {
                        let rate = record(name.into(), rate, None);
                        if suffix.is_some() {
                            lammps_opt = Some(rate);
                        }
                    }
                    Err(e) => {
                        eprintln!("{name}: {e:#}");
                        record(format!("{name} (failed: {e:#})"), 0.0, None);
                    }
                }
            }
        }
        let identical = hashes.windows(2).all(|w| w[0] == w[1]);
        sizes.push(json!({
            "atoms": state.atoms(),
            "steps": args.steps,
            "results": results,
            "bit_identical_across_engines": identical,
            "cpu_1_thread_over_lammps_opt": cpu_one.zip(lammps_opt).map(|(a, b)| a / b),
        }));
    }
    Ok(json!({
        "benchmark": "md",
        "system": "LAMMPS in.lj (fcc 0.8442, T 1.44, lj/cut 2.5, dt 0.005, NVE)",
        "cpu_threads": threads,
        "repeat": args.repeat,
        "lammps": lammps,
        "sizes": sizes,
    }))
}

fn lammps_binary() -> Option<String> {
    ["lmp", "lmp_serial", "lmp_mpi"].iter().find_map(|name| {
        std::process::Command::new(name)
            .arg("-h")
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|_| name.to_string())
    })
}

/// Runs LAMMPS on exactly our system (written as a data file) and returns its atom-steps/s.
pub fn run_lammps(lmp: &str, state: &State, steps: u64, suffix: Option<&str>) -> Result<f64> {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("system.data");
    upglobe_kernels::lammps::write(&data, state)?;
    let cutoff = state.params.cutoff_max();
    let input = format!(
        "units lj\natom_style atomic\npair_style lj/cut {cutoff}\nread_data {}\nneighbor 0.3 bin\n\
         neigh_modify delay 0 every 20 check no\nfix 1 all nve\nthermo {steps}\nrun {steps}\n",
        data.display()
    );
    let script = dir.path().join("in.bench");
    std::fs::write(&script, input)?;
    let mut command = std::process::Command::new(lmp);
    command.arg("-in").arg(&script).arg("-log").arg(dir.path().join("log.lammps")).current_dir(dir.path());
    if let Some(suffix) = suffix {
        command.args(["-sf", suffix]);
    }
    // One process, one thread: a per-core comparison.
    command.env("OMP_NUM_THREADS", "1");
    let output = command.output().with_context(|| format!("cannot run {lmp}"))?;
    let text = String::from_utf8_lossy(&output.stdout);
    loop_rate(&text).with_context(|| format!("{lmp} printed no loop time: {}", String::from_utf8_lossy(&output.stderr)))
}

/// atom-steps/s from "Loop time of T on P procs for S steps with N atoms".
pub fn loop_rate(log: &str) -> Option<f64> {
    let line = log.lines().find(|l| l.starts_with("Loop time of"))?;
    let words: Vec<&str> = line.split_whitespace().collect();
    let seconds: f64 = words.get(3)?.parse().ok()?;
    let steps: f64 = words.get(8)?.parse().ok()?;
    let atoms: f64 = words.get(11)?.parse().ok()?;
    Some(atoms * steps / seconds)
}

async fn bench_scheduler(args: &SchedulerArgs) -> Result<Value> {
    if args.replicas > args.workers {
        bail!("--replicas {} needs at least as many --workers, not {}", args.replicas, args.workers);
    }
    let dir = tempfile::tempdir()?;
    let mut config = ServerConfig::new(dir.path().join("scheduler"), "127.0.0.1:0".parse()?);
    config.measure_latency = true;
    config.heartbeat_interval = Duration::from_secs(1);
    let scheduler = Scheduler::start(config).await?;
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut workers = Vec::new();
    for k in 0..args.workers {
        let mut config = WorkerConfig::new(dir.path().join(format!("worker-{k}")), scheduler.worker_token.clone());
        config.name = format!("bench-{k}");
        config.resources = Resources { cpus: args.slots, memory_bytes: 1 << 30, gpus: 0 };
        let identity = PeerIdentity::generate(&config.name)?;
        let mut stopped = stopped.clone();
        workers.push(tokio::spawn(upglobe_worker::run(config, Some(identity), async move {
            let _ = stopped.changed().await;
        })));
    }
    let client = Client::connect(&scheduler.client_token, &dir.path().join("client")).await?;
    client.wait_for_workers(args.workers, Duration::from_secs(10)).await?;
    let job = JobSpec {
        name: "empty".into(),
        after: vec![],
        replicas: args.replicas,
        resources: Resources { cpus: 1, memory_bytes: 0, gpus: 0 },
        kind: JobKind::Empty { chunks: args.chunks },
        gpu: Default::default(),
        verification: Verification::Quorum,
    };
    let submission = Submission { name: "bench".into(), source: String::new(), jobs: vec![job] };
    let started = Instant::now();
    let ClientResponse::Submitted { jobs, .. } = client.request(ClientRequest::Submit(submission)).await? else {
        bail!("the submission was refused");
    };
    let id = jobs[0].1;
    loop {
        let status = fetch(&client, Some(id.0.to_string())).await?.remove(0);
        if status.state.is_finished() {
            if status.chunks_verified != status.chunks_total {
                bail!("the benchmark job ended {}: {:?}", status.state.label(), status.failures.last());
            }
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let seconds = started.elapsed().as_secs_f64();
    let results = if args.results {
        let asked = Instant::now();
        let answer = super::results::fetch(&client, &id.0.to_string()).await;
        let took = asked.elapsed().as_secs_f64();
        match answer {
            Ok(results) => json!({"seconds": took, "chunks": results.chunks.len()}),
            Err(e) => json!({"seconds": took, "error": format!("{e:#}")}),
        }
    } else {
        Value::Null
    };
    let mut latencies = scheduler.latencies.lock().expect("latencies").clone();
    latencies.sort_by(|a, b| a.total_cmp(b));
    let percentile =
        |p: f64| latencies.get(((latencies.len() as f64 - 1.0) * p).round() as usize).map_or(0.0, |s| s * 1000.0);
    client.close();
    let _ = stop.send(true);
    for worker in workers {
        let _ = worker.await;
    }
    scheduler.shutdown().await?;
    Ok(json!({
        "benchmark": "scheduler",
        "chunks": args.chunks,
        "workers": args.workers,
        "slots_per_worker": args.slots,
        "replicas": args.replicas,
        "seconds": seconds,
        "chunks_per_s": args.chunks as f64 / seconds,
        "p50_ms": percentile(0.5),
        "p99_ms": percentile(0.99),
        "cpus": std::thread::available_parallelism().map_or(1, |n| n.get()),
        "results": results,
    }))
}

#[cfg(test)]
mod tests {
    #[test]
    fn parses_lammps_loop_time() {
        let log = "Loop time of 1.14967 on 1 procs for 100 steps with 32000 atoms\n";
        let rate = super::loop_rate(log).unwrap();
        assert!((rate - 32000.0 * 100.0 / 1.14967).abs() < 1e-6);
        assert_eq!(super::loop_rate("nothing"), None);
    }
}
