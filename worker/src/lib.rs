//! The worker: joins a scheduler, advertises what it offers, runs the chunks it is given and returns
//! results with their blobs, heartbeats while it works, and reconnects with backoff whenever the
//! connection is lost (network trouble, a scheduler restart).
//!
//! What runs a task lives in [`execute`]; this module is the session around it.

pub mod cheat;
pub mod container;
pub mod execute;
pub mod peers;
pub mod resources;
mod retained;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use upglobe_datasets::{BlobStore, transfer};
use upglobe_kernels::Device;
use upglobe_protocol::messages::{
    Assignment, FromWorker, Greeting, Hello, Outcome, Progress, Resources, Task, ToWorker,
};
use upglobe_protocol::tls::PeerIdentity;
use upglobe_protocol::trust::{NodeRole, ResultStatement, SigningKey, Usage};

use retained::Retained;
use upglobe_protocol::{AssignmentId, BlobHash, PROTOCOL_VERSION, Token, frame, net};

pub const SOFTWARE: &str = concat!("upglobe ", env!("CARGO_PKG_VERSION"));

const BACKOFF_START: Duration = Duration::from_millis(250);

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("refused by the scheduler at {address}: {reason}")]
    Refused { address: String, reason: String },
    #[error(transparent)]
    Protocol(#[from] upglobe_protocol::ProtocolError),
    #[error(transparent)]
    Dataset(#[from] upglobe_datasets::DatasetError),
    #[error("{0}")]
    Session(String),
}

pub type Result<T, E = WorkerError> = std::result::Result<T, E>;

#[derive(Debug, Clone)]
pub struct WorkerConfig {
    pub data_dir: PathBuf,
    pub token: Token,
    pub name: String,
    pub resources: Resources,
    pub allow_commands: bool,
    pub device: Device,
    pub idle_timeout: Duration,
    /// Longest wait between reconnection attempts.
    pub backoff_max: Duration,
    /// The blob cache (inputs, checkpoints, outputs) is kept within this size, least recently used
    /// first out; what running tasks use is never evicted, nor the intermediate states of chunks
    /// that are not settled.
    pub cache_bytes_max: u64,
    /// NVIDIA GPUs (their number is `resources.gpus`) and wgpu adapters, as reported to the
    /// scheduler.
    pub gpus: Vec<upglobe_protocol::messages::GpuDevice>,
    pub adapters: Vec<String>,
    /// Where to serve this worker's cache to other workers (`None`: not at all), and the
    /// `HOST:PORT` they should dial (default: the address this worker reaches the scheduler from,
    /// with the port it listens on).
    pub peer_listen: Option<std::net::SocketAddr>,
    pub peer_advertise: Option<String>,
    /// Holds downloads (inputs, states) to this many bytes per second, for a worker on a link it
    /// shares with people; `None`: as fast as the path allows.
    pub download_rate: Option<u64>,
    /// A worker runs chunks; a verifier runs audits and dispute intervals.
    pub role: NodeRole,
    /// The hub (lab, operator) this node belongs to: nodes of one owner never verify each other.
    pub owner: Option<String>,
    /// Runs container jobs through the local dockerd, if one answers.
    pub containers: bool,
    /// Gives a network to containers that ask for one.
    pub allow_network: bool,
    /// The hub (Ethereum address) paid for this worker's chunks (`--hub`).
    pub hub: Option<[u8; 20]>,
}

/// A cache large enough for a few large MD systems' checkpoints and their inputs.
pub const CACHE_BYTES_DEFAULT: u64 = 20 << 30;

impl WorkerConfig {
    pub fn new(data_dir: PathBuf, token: Token) -> WorkerConfig {
        WorkerConfig {
            data_dir,
            token,
            name: resources::host_name(),
            resources: resources::detect(),
            allow_commands: false,
            device: Device::Cpu { threads: 0 },
            idle_timeout: net::IDLE_TIMEOUT_DEFAULT,
            backoff_max: Duration::from_secs(10),
            cache_bytes_max: CACHE_BYTES_DEFAULT,
            download_rate: None,
            gpus: Vec::new(),
            adapters: Vec::new(),
            peer_listen: Some(std::net::SocketAddr::from(([0, 0, 0, 0], 0))),
            peer_advertise: None,
            role: NodeRole::Worker,
            owner: None,
            containers: true,
            allow_network: false,
            hub: None,
        }
    }
}

/// The node's Ed25519 signing key, `data_dir/signing.key` (PKCS#8), made on first start.
pub fn load_or_create_key(data_dir: &std::path::Path) -> Result<SigningKey> {
    let path = data_dir.join("signing.key");
    let io = |e: std::io::Error| WorkerError::Session(format!("{}: {e}", path.display()));
    if !path.exists() {
        std::fs::create_dir_all(data_dir).map_err(io)?;
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options.open(&path).map_err(io)?;
        std::io::Write::write_all(&mut file, &SigningKey::generate()).map_err(io)?;
    }
    let bytes = std::fs::read(&path).map_err(io)?;
    SigningKey::from_pkcs8(&bytes).map_err(|e| WorkerError::Session(format!("{}: {e}", path.display())))
}

/// Runs the worker until `shutdown` resolves or the scheduler refuses it.
pub async fn run(
    config: WorkerConfig,
    identity: Option<PeerIdentity>,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<()> {
    cheat::check_environment().map_err(WorkerError::Session)?;
    let identity = match identity {
        Some(identity) => identity,
        None => PeerIdentity::load_or_create(&config.data_dir, &config.name)?,
    };
    let key = Arc::new(load_or_create_key(&config.data_dir)?);
    let blobs = BlobStore::open(config.data_dir.join("blobs"))?;
    let peer_port = match config.peer_listen {
        Some(listen) => {
            let port =
                peers::serve(&identity, blobs.clone(), listen, config.token.secret.clone(), config.idle_timeout)?;
            tracing::info!(port, "serving the cache to peers");
            Some(port)
        }
        None => None,
    };
    let containers = if config.containers && config.role == NodeRole::Worker {
        match container::Containers::connect(&identity.id()?).await {
            Ok(containers) => {
                tracing::info!(docker = %containers.version, "running container jobs");
                containers.remove_stale().await;
                Some(containers)
            }
            Err(reason) => {
                tracing::warn!(%reason, "no container jobs on this worker");
                None
            }
        }
    } else {
        None
    };
    let identity = Arc::new(identity);
    let config = Arc::new(config);
    // Intermediate states outlive a session: a scheduler that restarts may still audit them.
    let retained = Retained::default();
    let serving = Arc::new(tokio::sync::Semaphore::new(SERVES_AT_ONCE_MAX));
    let node = Node {
        config: config.clone(),
        key,
        blobs: blobs.clone(),
        retained,
        serving,
        identity: identity.clone(),
        peer_port,
        containers,
    };
    tokio::pin!(shutdown);
    let mut backoff = BACKOFF_START;
    loop {
        let started = Instant::now();
        let outcome = tokio::select! {
            outcome = session(&node, &identity) => outcome,
            _ = &mut shutdown => return Ok(()),
        };
        let reason = match outcome {
            Ok(reason) => reason,
            Err(refused @ WorkerError::Refused { .. }) => return Err(refused),
            Err(wrong @ WorkerError::Protocol(upglobe_protocol::ProtocolError::WrongScheduler { .. })) => {
                return Err(wrong);
            }
            Err(e) => e.to_string(),
        };
        // A session that lasted a while was healthy: start the backoff over.
        if started.elapsed() > Duration::from_secs(10) {
            backoff = BACKOFF_START;
        }
        tracing::warn!(%reason, retry_in = ?backoff, "disconnected from the scheduler");
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = &mut shutdown => return Ok(()),
        }
        backoff = (backoff * 2).min(config.backoff_max);
    }
}

/// A task in progress.
struct Running {
    cancel: Arc<AtomicBool>,
    steps_done: Arc<AtomicU64>,
    /// Blobs the task reads and writes: pinned in the cache until its results are uploaded.
    pinned: Arc<Mutex<Vec<BlobHash>>>,
}

type RunningMap = Arc<Mutex<HashMap<AssignmentId, Running>>>;

/// Intermediate states served at once; a request beyond is answered "busy" rather than queued, so
/// a scheduler cannot make a worker open uploads without limit.
pub const SERVES_AT_ONCE_MAX: usize = 16;

/// What every session of this node shares.
#[derive(Clone)]
struct Node {
    config: Arc<WorkerConfig>,
    key: Arc<SigningKey>,
    blobs: BlobStore,
    retained: Retained,
    serving: Arc<tokio::sync::Semaphore>,
    identity: Arc<PeerIdentity>,
    /// The port it serves peers on, if it does.
    peer_port: Option<u16>,
    /// The local dockerd, when this worker runs container jobs.
    containers: Option<container::Containers>,
}

/// One connection to the scheduler; returns why it ended.
async fn session(node: &Node, identity: &PeerIdentity) -> Result<String> {
    let config = &node.config;
    let connection = net::connect(&config.token, identity, config.idle_timeout).await?;
    let (mut send, mut recv) = connection.open_bi().await.map_err(|e| WorkerError::Session(e.to_string()))?;
    let hello = Hello {
        protocol: PROTOCOL_VERSION,
        secret: config.token.secret.clone(),
        software: SOFTWARE.into(),
        name: config.name.clone(),
        resources: config.resources,
        allow_commands: config.allow_commands && config.role == NodeRole::Worker,
        device: describe_device(&config.device),
        role: config.role,
        signing_key: node.key.public(),
        owner: config.owner.clone(),
        peer_address: match (&config.peer_advertise, node.peer_port) {
            (Some(advertised), Some(_)) => Some(advertised.clone()),
            // Where peers reach it: the address it reaches the scheduler from.
            (None, Some(port)) => peers::local_ip_towards(connection.remote_address())
                .map(|ip| std::net::SocketAddr::new(ip, port).to_string()),
            (_, None) => None,
        },
        gpus: config.gpus.clone(),
        adapters: config.adapters.clone(),
        containers: node.containers.as_ref().map(|c| c.version.clone()),
        allow_network: config.allow_network,
        hub: config.hub,
    };
    frame::write(&mut send, &Greeting::Worker(hello)).await?;
    let welcome = match frame::read::<ToWorker, _>(&mut recv).await {
        Ok(Some(ToWorker::Welcome(welcome))) => welcome,
        Ok(Some(ToWorker::Refused { reason })) => return Err(refused(config, reason)),
        Ok(_) => {
            return Err(WorkerError::Session("the scheduler closed the connection before welcoming".into()));
        }
        Err(e) => {
            return match connection.close_reason() {
                Some(quinn::ConnectionError::ApplicationClosed(close)) => {
                    Err(refused(config, String::from_utf8_lossy(&close.reason).into_owned()))
                }
                _ => Err(e.into()),
            };
        }
    };
    tracing::info!(scheduler = %config.token.address, id = %welcome.peer.short(), "joined");
    let running: RunningMap = Arc::default();
    let (outbox, messages) = mpsc::unbounded_channel();
    let writer = tokio::spawn(frame::pump(send, messages));
    // What the cache holds, most recently used first: the scheduler places chunks where their
    // inputs already are.
    let mut cached = node.blobs.list().unwrap_or_default();
    cached.sort_by_key(|entry| std::cmp::Reverse(entry.2));
    let blobs =
        cached.into_iter().take(upglobe_protocol::messages::limits::HOLDING_MAX).map(|(hash, ..)| hash).collect();
    let _ = outbox.send(FromWorker::Holding { blobs });
    let heartbeat = tokio::spawn(heartbeats(
        outbox.clone(),
        running.clone(),
        Duration::from_millis(welcome.heartbeat_interval_ms.max(100)),
    ));
    let reason = loop {
        match frame::read::<ToWorker, _>(&mut recv).await {
            Ok(Some(ToWorker::Assign(assignment))) => start_task(node, &connection, &running, &outbox, assignment),
            Ok(Some(ToWorker::ServeState { request, assignment, link, .. })) => {
                serve_state(node, &connection, &outbox, request, assignment, link)
            }
            Ok(Some(ToWorker::Settled { assignments })) => node.retained.settle(&assignments),
            Ok(Some(ToWorker::Cancel { assignment, reason })) => {
                if let Some(task) = running.lock().expect("running map").get(&assignment) {
                    tracing::info!(%assignment, %reason, "cancelled");
                    task.cancel.store(true, Ordering::Relaxed);
                }
            }
            Ok(Some(other)) => tracing::warn!(?other, "unexpected message"),
            Ok(None) => break "the scheduler closed the control stream".to_string(),
            Err(e) => {
                break connection.close_reason().map_or(e.to_string(), |r| net::describe_connection_error(&r));
            }
        }
    };
    // Whatever runs now belongs to a session the scheduler has given up on.
    for task in running.lock().expect("running map").values() {
        task.cancel.store(true, Ordering::Relaxed);
    }
    heartbeat.abort();
    writer.abort();
    Ok(reason)
}

fn refused(config: &WorkerConfig, reason: String) -> WorkerError {
    WorkerError::Refused { address: config.token.address.clone(), reason }
}

/// Free text a node describes itself with, cut (at a character) to what the scheduler accepts.
pub fn fit_description(text: &str) -> String {
    let limit = upglobe_protocol::messages::limits::DESCRIPTION_BYTES_MAX;
    let mut end = text.len().min(limit);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_string()
}

pub fn describe_device(device: &Device) -> String {
    fit_description(&match device {
        Device::Cpu { threads: 0 } => "cpu".into(),
        Device::Cpu { threads } => format!("cpu ({threads} threads)"),
        Device::Wgpu { .. } => match upglobe_kernels::gpu::adapters().first() {
            Some(adapter) => format!("wgpu: {adapter}"),
            None => "wgpu (no adapter found)".into(),
        },
    })
}

async fn heartbeats(outbox: mpsc::UnboundedSender<FromWorker>, running: RunningMap, interval: Duration) {
    let mut ticker = tokio::time::interval(interval);
    loop {
        ticker.tick().await;
        let progress: Vec<Progress> = running
            .lock()
            .expect("running map")
            .iter()
            .map(|(assignment, task)| Progress {
                assignment: *assignment,
                steps_done: task.steps_done.load(Ordering::Relaxed),
            })
            .collect();
        if outbox.send(FromWorker::Heartbeat { running: progress }).is_err() {
            return;
        }
    }
}

fn start_task(
    node: &Node,
    connection: &quinn::Connection,
    running: &RunningMap,
    outbox: &mpsc::UnboundedSender<FromWorker>,
    assignment: Assignment,
) {
    let cancel = Arc::new(AtomicBool::new(false));
    let steps_done = Arc::new(AtomicU64::new(0));
    let pinned = Arc::new(Mutex::new(match &assignment.task {
        Task::Md { input, .. } => vec![*input],
        Task::Command { inputs, .. } => inputs.iter().map(|f| f.blob).collect(),
        Task::Empty { .. } => Vec::new(),
    }));
    running.lock().expect("running map").insert(
        assignment.id,
        Running { cancel: cancel.clone(), steps_done: steps_done.clone(), pinned: pinned.clone() },
    );
    let (node, connection, running, outbox) = (node.clone(), connection.clone(), running.clone(), outbox.clone());
    tokio::spawn(async move {
        let started = Instant::now();
        let (id, chunk, resources) = (assignment.id, assignment.chunk, assignment.resources);
        let (input, steps) = match &assignment.task {
            Task::Md { input, steps, .. } => (Some(*input), *steps),
            _ => (None, 0),
        };
        tracing::debug!(assignment = %id, %chunk, "started");
        let (config, blobs) = (&node.config, &node.blobs);
        let fetched = AtomicU64::new(0);
        let log_sink = container::LogSink { assignment: id, outbox: outbox.clone() };
        let fetcher = execute::Fetcher {
            config,
            connection: &connection,
            blobs,
            identity: &node.identity,
            peers: &[],
            fetched: &fetched,
            containers: node.containers.as_ref(),
            logs: Some(&log_sink),
        };
        let sources = assignment.sources.clone();
        let fetcher = execute::Fetcher { peers: &sources, ..fetcher };
        let executed = execute::run(&fetcher, assignment, cancel.clone(), steps_done, pinned).await;
        if cancel.load(Ordering::Relaxed) {
            running.lock().expect("running map").remove(&id);
            return;
        }
        let mut measured = execute::Measured::default();
        let mut bytes_out = 0;
        let outcome = match executed {
            Ok(executed) => match upload_outputs(&connection, blobs, &executed.output).await {
                Ok(()) => {
                    measured = executed.measured;
                    bytes_out = executed.output.blobs().iter().filter_map(|b| blobs.size(b)).sum();
                    node.retained.keep(id, executed.link_starts);
                    Outcome::Completed(executed.output)
                }
                Err(e) => Outcome::Failed { reason: format!("uploading the result: {e}") },
            },
            Err(reason) => Outcome::Failed { reason },
        };
        // Uploaded and, for MD, kept for audits: the task's pins may go.
        running.lock().expect("running map").remove(&id);
        if let Outcome::Failed { reason } = &outcome {
            tracing::warn!(assignment = %id, %reason, "task failed");
        }
        let computed = if matches!(outcome, Outcome::Completed(_)) { steps } else { 0 };
        let elapsed_ms = started.elapsed().as_millis() as u64;
        let usage = Usage {
            elapsed_ms,
            cpus: resources.cpus,
            gpus: resources.gpus,
            steps: computed,
            cpu_ms: measured.cpu_ms,
            peak_memory_bytes: measured.peak_memory_bytes,
            bytes_in: fetched.load(Ordering::Relaxed),
            bytes_out,
            gpu_ms: measured.gpu_ms,
        };
        let statement = ResultStatement { chunk, assignment: id, input, digest: outcome.digest(), usage };
        let signature = node.key.sign(&statement);
        let _ = outbox.send(FromWorker::Finished { assignment: id, outcome, usage, signature });
        evict(&node, &running);
    });
}

/// Uploads the state at the start of `link` of a finished assignment's chain, and says so (or why
/// not). Runs beside the control loop, which must never wait on a transfer.
fn serve_state(
    node: &Node,
    connection: &quinn::Connection,
    outbox: &mpsc::UnboundedSender<FromWorker>,
    request: u64,
    assignment: AssignmentId,
    link: u32,
) {
    if cheat::refuses_to_serve() {
        tracing::warn!(%assignment, link, "cheating: not serving the state");
        return;
    }
    let Ok(permit) = node.serving.clone().try_acquire_owned() else {
        let busy = format!("busy: already serving {SERVES_AT_ONCE_MAX} states");
        let _ = outbox.send(FromWorker::StateServed { request, served: Err(busy) });
        return;
    };
    let (node, connection, outbox) = (node.clone(), connection.clone(), outbox.clone());
    tokio::spawn(async move {
        let _permit = permit;
        let served = match node.retained.link_start(assignment, link) {
            Ok(blob) => {
                transfer::upload(&connection, &node.blobs, blob).await.map(|()| blob).map_err(|e| e.to_string())
            }
            Err(reason) => Err(reason),
        };
        if let Err(reason) = &served {
            tracing::warn!(%assignment, link, %reason, "cannot serve an intermediate state");
        }
        let _ = outbox.send(FromWorker::StateServed { request, served });
    });
}

/// Keeps the blob cache within its size once a task's results are uploaded, sparing the inputs of
/// tasks still running and the states of chunks not yet settled.
fn evict(node: &Node, running: &RunningMap) {
    let (config, blobs) = (&node.config, &node.blobs);
    let mut pinned: std::collections::HashSet<BlobHash> =
        running.lock().expect("running map").values().flat_map(|r| r.pinned.lock().expect("pinned").clone()).collect();
    pinned.extend(node.retained.pinned());
    match blobs.evict_to(config.cache_bytes_max, |hash| pinned.contains(hash)) {
        Ok(evicted) if evicted.blobs > 0 => {
            tracing::info!(blobs = evicted.blobs, bytes = evicted.bytes, "evicted from the blob cache")
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "cannot evict from the blob cache"),
    }
    // Partial downloads nobody resumed within a day (the input's job ended, or went elsewhere).
    let day_ago = std::time::SystemTime::now() - PARTIALS_KEPT;
    match blobs.remove_stale_temporary(day_ago) {
        Ok(removed) if removed > 0 => tracing::info!(files = removed, "removed stale partial downloads"),
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "cannot clean the cache's temporary files"),
    }
}

/// How long a partial download waits to be resumed before it is removed.
const PARTIALS_KEPT: Duration = Duration::from_secs(24 * 3600);

async fn upload_outputs(
    connection: &quinn::Connection,
    blobs: &BlobStore,
    output: &upglobe_protocol::messages::Output,
) -> std::result::Result<(), upglobe_datasets::DatasetError> {
    for hash in output.blobs() {
        transfer::upload(connection, blobs, hash).await?;
    }
    Ok(())
}
