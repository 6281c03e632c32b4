//! The thin tokio + quinn shell around the core.
//!
//! One task owns the [`Core`] and the [`Store`]. Connection tasks turn frames into [`Input`]s; the
//! owner applies a batch of inputs, commits every record the core produced in one transaction, and
//! only then sends the core's messages and answers clients, so nothing is acknowledged before it is
//! durable. Blob transfers never pass through the owner: connection tasks serve them from the blob
//! store directly.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot, watch};
use upglobe_datasets::{BlobStore, transfer};
use upglobe_protocol::messages::limits::{
    GREETING_BYTES_MAX, RESULTS_PAGE_BYTES_MAX, RESULTS_PAGE_CHUNKS_MAX, UNAUTHENTICATED_CONNECTIONS_MAX,
    UNCLAIMED_UPLOAD_BYTES_MAX, WORKFLOW_INPUT_BYTES_MAX,
};
use upglobe_protocol::messages::{
    ClientRequest, ClientResponse, ClientWelcome, DatasetInfo, DatasetKind, DatasetRequest, FromWorker, Greeting,
    Hello, Manifest, Outcome, PaymentAnswer, PaymentInfo, PaymentRequest, ResultsPage, StreamRequest, ToWorker,
    Welcome,
};
use upglobe_protocol::tls::{SchedulerIdentity, peer_id, random_secret};
use upglobe_protocol::token::secrets_match;
use upglobe_protocol::{PROTOCOL_VERSION, Role, Token, WorkerId, WorkflowId, frame, net};

mod http;
mod metrics;

use crate::core::checks::{output_blobs, submission_blobs};
use crate::core::{Action, BlobFact, Config, Core, Evidence, Finished, Record};
use crate::store::Store;
use crate::{Result, SchedulerError};
use upglobe_protocol::trust::{NodeRole, TRUST_EVENTS_SHOWN_MAX, VerificationReport};

/// Inputs waiting for the core; senders wait when it is full.
const INPUT_QUEUE_MAX: usize = 16_384;
/// Inputs applied before the records are committed.
const BATCH_MAX: usize = 4_096;
/// A new connection must finish its handshake and say who it is within this time.
const GREETING_TIMEOUT: Duration = Duration::from_secs(10);

/// Blobs that nothing needs are looked for this often ...
const GARBAGE_INTERVAL: Duration = Duration::from_secs(600);
/// ... and removed once they have not been stored or touched for this long (an upload whose result
/// has not been recorded yet is younger).
const GARBAGE_GRACE: Duration = Duration::from_secs(3600);

pub const SOFTWARE: &str = concat!("upglobe ", env!("CARGO_PKG_VERSION"));

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    /// `host:port` written into tokens; defaults to the listening address.
    pub advertise: Option<String>,
    pub core: Config,
    pub idle_timeout: Duration,
    pub heartbeat_interval: Duration,
    /// Record how long each chunk takes from its first assignment to its verification (benchmarks).
    pub measure_latency: bool,
    /// Bytes a worker may have uploaded that no result of its own names yet.
    pub worker_unclaimed_bytes_max: u64,
    /// Bytes one client connection may upload.
    pub client_upload_bytes_max: u64,
    /// How often blobs that nothing needs are removed, and how old they must be.
    pub garbage_interval: Duration,
    pub garbage_grace: Duration,
    /// Pay funded workflows' verified chunks on this chain, as this reporter.
    pub chain: Option<ChainSettings>,
    /// Serve the dashboard and `/metrics` over HTTP here (port 0: any free port).
    pub http: Option<SocketAddr>,
    /// A new connection must finish its handshake and say who it is within this time.
    pub greeting_timeout: Duration,
}

/// The chain a scheduler settles on.
#[derive(Debug, Clone)]
pub struct ChainSettings {
    pub deployment: upglobe_contracts::Deployment,
    /// The key escrow jobs name as their reporter: the only one that may pay their chunks.
    pub reporter: upglobe_contracts::PrivateKeySigner,
    /// How often the settler looks for chunks to pay.
    pub interval: Duration,
}

/// Dispatch-to-verification latencies, in seconds, when [`ServerConfig::measure_latency`] is set.
pub type Latencies = Arc<std::sync::Mutex<Vec<f64>>>;

impl ServerConfig {
    pub fn new(data_dir: PathBuf, listen: SocketAddr) -> ServerConfig {
        ServerConfig {
            data_dir,
            listen,
            advertise: None,
            core: Config::default(),
            idle_timeout: net::IDLE_TIMEOUT_DEFAULT,
            heartbeat_interval: Duration::from_secs(2),
            measure_latency: false,
            worker_unclaimed_bytes_max: UNCLAIMED_UPLOAD_BYTES_MAX,
            client_upload_bytes_max: WORKFLOW_INPUT_BYTES_MAX,
            garbage_interval: GARBAGE_INTERVAL,
            garbage_grace: GARBAGE_GRACE,
            chain: None,
            http: None,
            greeting_timeout: GREETING_TIMEOUT,
        }
    }
}

/// A running scheduler.
pub struct Scheduler {
    pub worker_token: Token,
    pub client_token: Token,
    pub verifier_token: Token,
    pub address: SocketAddr,
    /// Whether this start created the CA (a new scheduler).
    pub created: bool,
    pub latencies: Latencies,
    /// Where the dashboard listens, if it does.
    pub http: Option<SocketAddr>,
    shutdown: watch::Sender<bool>,
    owner: tokio::task::JoinHandle<Result<()>>,
}

struct Secrets {
    worker: String,
    client: String,
    verifier: String,
}

fn load_or_create_secrets(dir: &Path) -> Result<Secrets> {
    let path = dir.join("secrets");
    let io = |context: String| move |source| SchedulerError::Io { context, cause: source };
    if !path.exists() {
        let contents = format!("worker {}\nclient {}\n", random_secret()?, random_secret()?);
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options.open(&path).map_err(io(format!("cannot create {}", path.display())))?;
        std::io::Write::write_all(&mut file, contents.as_bytes())
            .map_err(io(format!("cannot write {}", path.display())))?;
    }
    let mut text = std::fs::read_to_string(&path).map_err(io(format!("cannot read {}", path.display())))?;
    if !text.lines().any(|line| line.starts_with("verifier ")) {
        // A scheduler made before verifiers existed gets their secret now.
        let line = format!("verifier {}\n", random_secret()?);
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .map_err(io(format!("cannot write {}", path.display())))?;
        std::io::Write::write_all(&mut file, line.as_bytes())
            .map_err(io(format!("cannot write {}", path.display())))?;
        text.push_str(&line);
    }
    let mut secrets: HashMap<&str, &str> = HashMap::new();
    for line in text.lines() {
        if let Some((role, secret)) = line.split_once(' ') {
            secrets.insert(role, secret.trim());
        }
    }
    let get = |role: &str| {
        secrets
            .get(role)
            .map(|s| s.to_string())
            .ok_or_else(|| SchedulerError::Invalid(format!("{} has no {role} secret", path.display())))
    };
    Ok(Secrets { worker: get("worker")?, client: get("client")?, verifier: get("verifier")? })
}

impl Scheduler {
    /// Opens (or creates) the data directory, restores the core, and starts listening.
    pub async fn start(config: ServerConfig) -> Result<Scheduler> {
        let dir = &config.data_dir;
        std::fs::create_dir_all(dir).map_err(|source| SchedulerError::Io {
            context: format!("cannot create {}", dir.display()),
            cause: source,
        })?;
        let (identity, created) = SchedulerIdentity::load_or_create(dir)?;
        let secrets = load_or_create_secrets(dir)?;
        let blobs = BlobStore::open(dir.join("blobs"))?;
        let mut store = Store::open(&dir.join("scheduler.db"))?;
        let epoch = store.next_epoch()?;
        let clock = Instant::now();
        let snapshot = store.load(epoch)?;
        let mut core_config = config.core.clone();
        // Audits are drawn from this secret and each committed result: workers cannot predict them,
        // and a restarted scheduler draws the same ones.
        core_config.audit_secret = store.secret("audit", || {
            let mut secret = [0u8; 32];
            ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut secret).expect("system random");
            secret
        })?;
        let core = Core::restore(core_config, snapshot, 0);
        let chain = match &config.chain {
            Some(settings) => {
                let chain = upglobe_contracts::Chain::connect(&settings.deployment, settings.reporter.clone())
                    .await
                    .map_err(|e| SchedulerError::Invalid(format!("the payment chain: {e}")))?;
                tracing::info!(rpc = %settings.deployment.rpc, reporter = %chain.account(), escrow = %settings.deployment.escrow, "settling verified chunks on chain");
                Some(chain)
            }
            None => None,
        };
        let endpoint = net::server_endpoint(&identity, config.listen, config.idle_timeout)?;
        let address = endpoint
            .local_addr()
            .map_err(|source| SchedulerError::Io { context: "listening socket".into(), cause: source })?;
        let advertised = config.advertise.clone().unwrap_or_else(|| advertised_address(address));
        let token = |role, secret: &str| Token {
            address: advertised.clone(),
            role,
            ca_fingerprint: identity.ca_fingerprint(),
            secret: secret.to_string(),
        };
        let worker_token = token(Role::Worker, &secrets.worker);
        let client_token = token(Role::Client, &secrets.client);
        let verifier_token = token(Role::Verifier, &secrets.verifier);
        write_token(&dir.join("worker.token"), &worker_token)?;
        write_token(&dir.join("client.token"), &client_token)?;
        write_token(&dir.join("verifier.token"), &verifier_token)?;

        let (inputs, receiver) = mpsc::channel(INPUT_QUEUE_MAX);
        let weak_inputs = inputs.downgrade();
        let (shutdown, watcher) = watch::channel(false);
        let uploads = Arc::new(Uploads::default());
        let metrics = Arc::new(metrics::Metrics::new());
        let secrets_client = secrets.client.clone();
        let shared = Arc::new(Shared {
            uploads: uploads.clone(),
            worker_unclaimed_bytes_max: config.worker_unclaimed_bytes_max,
            client_upload_bytes_max: config.client_upload_bytes_max,
            secrets,
            unauthenticated: Arc::new(tokio::sync::Semaphore::new(UNAUTHENTICATED_CONNECTIONS_MAX)),
            blobs: blobs.clone(),
            inputs: inputs.clone(),
            heartbeat_interval_ms: config.heartbeat_interval.as_millis() as u64,
            greeting_timeout: config.greeting_timeout,
            sessions: AtomicU64::new(1),
            metrics: metrics.clone(),
        });
        tokio::spawn(accept_loop(endpoint, shared, watcher.clone()));
        let http = match config.http {
            Some(listen) => {
                let listener = tokio::net::TcpListener::bind(listen).await.map_err(|cause| SchedulerError::Io {
                    context: format!(
                        "cannot serve the dashboard on {listen} (choose another with --http ADDR, or --no-http)"
                    ),
                    cause,
                })?;
                let bound = listener
                    .local_addr()
                    .map_err(|cause| SchedulerError::Io { context: "the dashboard's socket".into(), cause })?;
                // Open on loopback; anywhere else it shows only to holders of the client token.
                let secret = (!bound.ip().is_loopback()).then(|| secrets_client.clone());
                let dashboard = http::Dashboard { inputs: inputs.clone(), secret, metrics: metrics.clone() };
                tokio::spawn(http::serve(listener, dashboard, watcher.clone()));
                Some(bound)
            }
            None => None,
        };
        let latencies = Latencies::default();
        let probe = LatencyProbe {
            assigned: HashMap::new(),
            latencies: config.measure_latency.then(|| latencies.clone()),
            metrics: metrics.clone(),
        };
        tokio::spawn(collect_garbage(
            dir.join("scheduler.db"),
            blobs.clone(),
            config.garbage_interval,
            config.garbage_grace,
            watcher.clone(),
        ));
        if let (Some(chain), Some(settings)) = (&chain, &config.chain) {
            tokio::spawn(crate::settle::run(
                dir.join("scheduler.db"),
                chain.clone(),
                settings.interval,
                watcher.clone(),
            ));
        }
        let sessions = HashMap::new();
        let logs = crate::logs::LiveLogs::default();
        let owner = Owner {
            core,
            store,
            blobs,
            clock,
            sessions,
            probe,
            uploads,
            inputs: weak_inputs,
            logs,
            chain,
            database: dir.join("scheduler.db"),
            metrics,
        };
        let owner = tokio::spawn(owner.run(receiver, watcher));
        tracing::info!(%address, epoch, "scheduler listening");
        Ok(Scheduler { worker_token, client_token, verifier_token, address, created, latencies, http, shutdown, owner })
    }

    /// Stops accepting work and waits for the state to be committed.
    pub async fn shutdown(self) -> Result<()> {
        let _ = self.shutdown.send(true);
        self.owner.await.map_err(|e| SchedulerError::Invalid(format!("scheduler task failed: {e}")))?
    }

    /// Runs until the owner task ends (an error, or [`Scheduler::shutdown`] from elsewhere).
    pub async fn wait_for(self, stop: impl std::future::Future<Output = ()>) -> Result<()> {
        let Scheduler { shutdown, mut owner, .. } = self;
        let failed = |e: tokio::task::JoinError| SchedulerError::Invalid(format!("scheduler task failed: {e}"));
        tokio::select! {
            _ = stop => {
                let _ = shutdown.send(true);
                owner.await.map_err(failed)?
            }
            result = &mut owner => result.map_err(failed)?,
        }
    }
}

fn advertised_address(address: SocketAddr) -> String {
    if address.ip().is_unspecified() { format!("127.0.0.1:{}", address.port()) } else { address.to_string() }
}

fn write_token(path: &Path, token: &Token) -> Result<()> {
    std::fs::write(path, format!("{token}\n"))
        .map_err(|source| SchedulerError::Io { context: format!("cannot write {}", path.display()), cause: source })
}

/// The least time an escrow job must have left when it funds a workflow: the chunks must have
/// a chance to be computed and paid before the requester may take the deposit back.
const FUNDING_DEADLINE_MARGIN_S: u64 = 3600;

/// Whether escrow job `id` can pay every one of `chunks` chunks of `workflow`, reported by this
/// scheduler: its requester signed the funding, it is open, in ETH, untouched, with a deposit
/// for every chunk at its price and time left.
async fn check_escrow_job(
    chain: &upglobe_contracts::Chain,
    id: u64,
    workflow: WorkflowId,
    chunks: u64,
    signature: &[u8],
) -> std::result::Result<(), String> {
    use upglobe_contracts::{Address, JobStatus, U256};
    let job = chain.job(id).await.map_err(|e| e.to_string())?;
    if job.status == JobStatus::None {
        return Err(format!("there is no escrow job {id}"));
    }
    let signer =
        upglobe_contracts::funding_signer(chain.deployment(), id, workflow.0, signature).map_err(|e| e.to_string())?;
    if signer != job.requester {
        return Err(format!(
            "the funding was signed by {signer}, but escrow job {id} belongs to {}; only its requester may tie it to a workflow",
            job.requester
        ));
    }
    if job.status != JobStatus::Open {
        return Err(format!("escrow job {id} is {:?}, not open", job.status).to_lowercase());
    }
    if job.token != Address::ZERO {
        return Err(format!("escrow job {id} pays in token {}; this scheduler pays in ETH only", job.token));
    }
    if !job.paid.is_zero() {
        return Err(format!("escrow job {id} has paid chunks already; fund a workflow with a new escrow job"));
    }
    if job.units_per_chunk_max != 1 {
        return Err(format!("escrow job {id} is priced per metered unit; this scheduler pays per chunk"));
    }
    let cost = job.price_per_unit * U256::from(chunks);
    if job.deposit < cost {
        return Err(format!(
            "escrow job {id} holds {} but the workflow's {chunks} chunks cost {} at {} each",
            upglobe_contracts::amount::format(job.deposit),
            upglobe_contracts::amount::format(cost),
            upglobe_contracts::amount::format(job.price_per_unit)
        ));
    }
    if job.reporter != chain.account() {
        return Err(format!(
            "escrow job {id} names {} as its reporter; this scheduler reports as {}",
            job.reporter,
            chain.account()
        ));
    }
    if u64::from(job.chunks_max) < chunks {
        return Err(format!("escrow job {id} has room for {} chunks; the workflow has {chunks}", job.chunks_max));
    }
    let now = chain.now().await.map_err(|e| e.to_string())?;
    if job.deadline < now + FUNDING_DEADLINE_MARGIN_S {
        return Err(format!("escrow job {id}'s deadline is less than an hour away"));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The owner of the core

enum Input {
    /// A worker whose secret was right; the core answers whether its hello is acceptable.
    WorkerJoined {
        worker: WorkerId,
        session: u64,
        hello: Hello,
        outbox: mpsc::UnboundedSender<ToWorker>,
        reply: oneshot::Sender<std::result::Result<(), String>>,
    },
    FromWorker {
        worker: WorkerId,
        session: u64,
        message: FromWorker,
    },
    WorkerGone {
        worker: WorkerId,
        session: u64,
        reason: String,
    },
    Client {
        request: ClientRequest,
        reply: oneshot::Sender<ClientResponse>,
    },
    /// The answer to a comparison the core asked for.
    Compared {
        id: u64,
        agree: bool,
    },
    /// An escrow job checked on chain for funding a workflow.
    FundChecked {
        funding: crate::store::Funding,
        checked: std::result::Result<(), String>,
        reply: oneshot::Sender<ClientResponse>,
    },
}

struct Session {
    id: u64,
    outbox: mpsc::UnboundedSender<ToWorker>,
}

/// A client's answer, or a question answered once the batch's records are in the store.
enum Reply {
    Ready(oneshot::Sender<ClientResponse>, ClientResponse),
    AfterCommit(oneshot::Sender<ClientResponse>, ClientRequest),
}

/// What one batch decided, waiting for its records to be committed.
#[derive(Default)]
struct Pending {
    records: Vec<Record>,
    sends: Vec<(WorkerId, Option<mpsc::UnboundedSender<ToWorker>>, ToWorker)>,
}

struct Owner {
    uploads: Arc<Uploads>,
    core: Core,
    store: Store,
    blobs: BlobStore,
    clock: Instant,
    sessions: HashMap<WorkerId, Session>,
    probe: LatencyProbe,
    metrics: Arc<metrics::Metrics>,
    /// For answers of work done off the owner task (comparisons); weak, so that the input channel
    /// still closes when every connection is gone.
    inputs: mpsc::WeakSender<Input>,
    logs: crate::logs::LiveLogs,
    /// The reporter's account on the payment chain, if the scheduler pays.
    chain: Option<upglobe_contracts::Chain>,
    /// The store's file, for questions answered on a read-only connection off this task.
    database: PathBuf,
}

/// Times each chunk from its first assignment to its verification, for `/metrics` (and for the
/// scheduler benchmark's list when it asks).
struct LatencyProbe {
    assigned: HashMap<upglobe_protocol::ChunkId, Instant>,
    latencies: Option<Latencies>,
    metrics: Arc<metrics::Metrics>,
}

impl LatencyProbe {
    fn observe(&mut self, records: &[Record], sends: &[(WorkerId, Option<mpsc::UnboundedSender<ToWorker>>, ToWorker)]) {
        let now = Instant::now();
        for (_, _, message) in sends {
            if let ToWorker::Assign(assignment) = message {
                self.assigned.entry(assignment.chunk).or_insert(now);
            }
        }
        for record in records {
            match record {
                Record::ChunkVerified { chunk, .. } => {
                    if let Some(assigned) = self.assigned.remove(chunk) {
                        let seconds = (now - assigned).as_secs_f64();
                        self.metrics.dispatch_seconds.observe(seconds);
                        if let Some(latencies) = &self.latencies {
                            latencies.lock().expect("latency list").push(seconds);
                        }
                    }
                }
                // A job that ends with chunks never verified (failed, cancelled) leaves nothing
                // behind.
                Record::JobFinished { job, .. } => self.assigned.retain(|chunk, _| chunk.job != *job),
                _ => {}
            }
        }
    }
}

impl Owner {
    fn now(&self) -> u64 {
        self.clock.elapsed().as_millis() as u64
    }

    async fn run(mut self, mut inputs: mpsc::Receiver<Input>, mut shutdown: watch::Receiver<bool>) -> Result<()> {
        // Records from restoring (jobs whose fate was decided by what was already stored).
        let mut pending = Pending::default();
        self.collect(&mut pending);
        self.commit(pending, Vec::new())?;
        let mut batch = Vec::with_capacity(BATCH_MAX);
        loop {
            let deadline = self.core.poll_timeout().map(|ms| self.clock + Duration::from_millis(ms));
            // Inputs before the timer: after a stall, heartbeats already queued are applied before
            // the leases they renew are judged, not after.
            tokio::select! {
                biased;
                _ = shutdown.changed() => {
                    tracing::info!("scheduler shutting down");
                    return Ok(());
                }
                received = inputs.recv_many(&mut batch, BATCH_MAX) => {
                    if received == 0 {
                        return Ok(());
                    }
                }
                _ = sleep_until(deadline) => {}
            }
            let mut replies = Vec::new();
            let mut pending = Pending::default();
            for input in batch.drain(..) {
                self.handle(input, &mut replies);
                self.collect(&mut pending);
            }
            let now = self.now();
            if self.core.poll_timeout().is_some_and(|t| t <= now) {
                self.core.handle_timeout(now);
                self.collect(&mut pending);
            }
            self.commit(pending, replies)?;
        }
    }

    fn handle(&mut self, input: Input, replies: &mut Vec<Reply>) {
        let now = self.now();
        match input {
            Input::WorkerJoined { worker, session, hello, outbox, reply } => {
                let joined = self.core.handle_worker_joined(now, worker, &hello);
                if joined.is_ok() {
                    tracing::info!(worker = %worker.short(), name = %hello.name, cpus = hello.resources.cpus, device = %hello.device, "worker joined");
                    // Not a scheduling decision: who is paid for the worker's chunks, read by
                    // the settler. The authenticated connection is the worker's word for it.
                    if let Err(e) = self.store.set_worker_hub(worker, hello.hub) {
                        tracing::error!(worker = %worker.short(), error = %e, "cannot record the worker's hub");
                    }
                    self.sessions.insert(worker, Session { id: session, outbox });
                }
                let _ = reply.send(joined);
            }
            Input::FromWorker { worker, session, message } => {
                if self.sessions.get(&worker).is_none_or(|s| s.id != session) {
                    return;
                }
                match message {
                    FromWorker::Heartbeat { running } => self.core.handle_heartbeat(now, worker, &running),
                    FromWorker::Holding { blobs } => self.core.handle_holding(worker, &blobs),
                    FromWorker::Log { assignment, stderr, bytes } => {
                        // Only output of a task the worker holds, filed under that task's job.
                        if let Some(chunk) = self.core.running_chunk(worker, assignment) {
                            let core = &self.core;
                            self.logs.append(chunk.job, assignment, stderr, bytes, |a| core.is_running(a));
                        }
                    }
                    FromWorker::Finished { assignment, outcome, usage, signature } => {
                        let evidence = match &outcome {
                            Outcome::Completed(output) => self.evidence(output_blobs(output)),
                            Outcome::Failed { .. } => Evidence::default(),
                        };
                        // Whatever the verdict, these uploads are accounted for: kept if the result
                        // is, garbage otherwise.
                        self.uploads.claim(worker, evidence.sizes().sum());
                        let finished = Finished { assignment, outcome, usage, signature };
                        self.core.handle_finished(now, worker, finished, &evidence);
                    }
                    FromWorker::StateServed { request, served } => {
                        let evidence = match &served {
                            Ok(blob) => self.evidence(vec![*blob]),
                            Err(_) => Evidence::default(),
                        };
                        self.uploads.claim(worker, evidence.sizes().sum());
                        self.core.handle_state_served(now, worker, request, served, &evidence);
                    }
                }
            }
            Input::WorkerGone { worker, session, reason } => {
                if self.sessions.get(&worker).is_some_and(|s| s.id == session) {
                    tracing::info!(worker = %worker.short(), %reason, "worker left");
                    self.sessions.remove(&worker);
                    self.core.handle_worker_left(now, worker, &reason);
                }
            }
            // Questions about results read the store, which holds this batch's decisions only
            // once it is committed: they are answered after that, so the status and the rows of
            // one answer describe the same moment.
            Input::Client {
                request:
                    request @ (ClientRequest::Results { .. }
                    | ClientRequest::Verification { .. }
                    | ClientRequest::Usage { .. }),
                reply,
            } => {
                replies.push(Reply::AfterCommit(reply, request));
            }
            Input::Client {
                request: ClientRequest::Payments(PaymentRequest::Fund { workflow, escrow_job, signature }),
                reply,
            } => {
                if let Err(message) = self.fund(now, workflow, escrow_job, signature, reply) {
                    tracing::debug!(%message, "funding refused");
                }
            }
            Input::Client { request: ClientRequest::Payments(PaymentRequest::Status), reply } => {
                self.payments_status(reply);
            }
            Input::Client { request, reply } => {
                let response = self.answer(now, request);
                replies.push(Reply::Ready(reply, response));
            }
            Input::Compared { id, agree } => self.core.handle_compared(now, id, agree),
            Input::FundChecked { funding, checked, reply } => {
                match checked.and_then(|()| {
                    self.store
                        .fund(funding.workflow, funding.escrow_job, funding.chunks, &funding.offsets)
                        .map_err(|e| e.to_string())
                }) {
                    Ok(()) => {
                        tracing::info!(workflow = %funding.workflow, escrow_job = funding.escrow_job, chunks = funding.chunks, "workflow funded");
                        self.payments_status(reply);
                    }
                    Err(message) => replies.push(Reply::Ready(reply, ClientResponse::Error { message })),
                }
            }
        }
    }

    /// Compares two results' files on a blocking thread (they may be large) and hands the answer
    /// back as an input.
    fn compare(
        &self,
        id: u64,
        rules: Vec<upglobe_protocol::trust::ToleranceRule>,
        a: Vec<upglobe_protocol::messages::FileRef>,
        b: Vec<upglobe_protocol::messages::FileRef>,
    ) {
        let (blobs, inputs) = (self.blobs.clone(), self.inputs.clone());
        tokio::spawn(async move {
            let compared =
                tokio::task::spawn_blocking(move || upglobe_datasets::compare::compare_outputs(&blobs, &rules, &a, &b))
                    .await;
            let agree = match compared {
                Ok(Ok(upglobe_datasets::compare::Agreement::Agree)) => true,
                Ok(Ok(upglobe_datasets::compare::Agreement::Differ(why))) => {
                    tracing::info!(comparison = id, %why, "results differ beyond the tolerances");
                    false
                }
                Ok(Err(e)) => {
                    tracing::warn!(comparison = id, error = %e, "results could not be compared; counted as different");
                    false
                }
                Err(e) => {
                    tracing::error!(comparison = id, error = %e, "the comparison panicked; counted as different");
                    false
                }
            };
            if let Some(inputs) = inputs.upgrade() {
                let _ = inputs.send(Input::Compared { id, agree }).await;
            }
        });
    }

    /// What the blob store holds of the named blobs: the evidence the core decides on.
    fn evidence(&self, hashes: Vec<upglobe_protocol::BlobHash>) -> Evidence {
        Evidence::gather(hashes, |hash| {
            let size = self.blobs.size(hash)?;
            let tail = self.blobs.tail(hash, 32).ok()?;
            Some(BlobFact { size, tail })
        })
    }

    fn answer(&mut self, now: u64, request: ClientRequest) -> ClientResponse {
        let error = |message: String| ClientResponse::Error { message };
        match request {
            ClientRequest::Submit(submission) => {
                let evidence = self.evidence(submission_blobs(&submission));
                match self.core.handle_submit(now, submission, &evidence) {
                    Ok((workflow, jobs)) => {
                        tracing::info!(%workflow, jobs = jobs.len(), "workflow submitted");
                        ClientResponse::Submitted { workflow, jobs }
                    }
                    Err(message) => error(format!("workflow refused: {message}")),
                }
            }
            ClientRequest::Status { job: None } => ClientResponse::Status { jobs: self.core.job_statuses(now) },
            ClientRequest::Status { job: Some(text) } => match self.core.find_job(&text) {
                Some(id) => ClientResponse::Status { jobs: self.core.job_status(now, id).into_iter().collect() },
                None => error(format!("no job '{text}' (give a job id or WORKFLOW.JOB)")),
            },
            ClientRequest::Cancel { job } => match self.core.find_job(&job) {
                Some(id) if self.core.handle_cancel(now, id) => ClientResponse::Cancelled { job: id },
                Some(id) => error(format!("job {id} has already finished")),
                None => error(format!("no job '{job}' (give a job id or WORKFLOW.JOB)")),
            },
            ClientRequest::Results { job, first_chunk } => match self.core.find_job(&job) {
                Some(id) => match self.results(now, id, first_chunk) {
                    Ok(results) => ClientResponse::Results(Box::new(results)),
                    Err(e) => error(e.to_string()),
                },
                None => error(format!("no job '{job}' (give a job id or WORKFLOW.JOB)")),
            },
            ClientRequest::Workers => ClientResponse::Workers(self.core.workers()),
            ClientRequest::Usage { job } => match self.core.find_job(&job) {
                Some(id) => match self.store.usage(id, upglobe_protocol::messages::limits::USAGE_ROWS_MAX) {
                    Ok(rows) => ClientResponse::Usage(rows),
                    Err(e) => error(e.to_string()),
                },
                None => error(format!("no job '{job}' (give a job id or WORKFLOW.JOB)")),
            },
            ClientRequest::Logs { job, from } => match self.core.find_job(&job) {
                Some(id) => {
                    let mut page = self.logs.read(id, from);
                    // Polled while a run is followed: the job's state alone, not its whole status.
                    page.done = self.core.job_finished(id).unwrap_or(true);
                    ClientResponse::Logs(page)
                }
                None => error(format!("no job '{job}' (give a job id or WORKFLOW.JOB)")),
            },
            ClientRequest::Payments(PaymentRequest::Info) => {
                let info = self.chain.as_ref().map(|chain| {
                    let deployment = chain.deployment();
                    PaymentInfo {
                        chain_id: deployment.chain_id,
                        registry: deployment.registry.0.0,
                        escrow: deployment.escrow.0.0,
                        reporter: chain.account().0.0,
                    }
                });
                ClientResponse::Payments(PaymentAnswer::Info(info))
            }
            ClientRequest::Payments(PaymentRequest::Status | PaymentRequest::Fund { .. }) => {
                unreachable!("funding and settlement status are answered off the owner task (see handle)")
            }
            ClientRequest::Datasets(request) => match self.datasets(request) {
                Ok(datasets) => ClientResponse::Datasets(datasets),
                Err(message) => error(message),
            },
            ClientRequest::Verification { job } => match self.core.find_job(&job) {
                Some(id) => match self.verification(id) {
                    Ok(report) => ClientResponse::Verification(Box::new(report)),
                    Err(e) => error(e.to_string()),
                },
                None => error(format!("no job '{job}' (give a job id or WORKFLOW.JOB)")),
            },
        }
    }

    /// Settlement progress, counted over the outbox on a read-only connection off the owner
    /// task: a large workflow's counts must not hold up scheduling.
    fn payments_status(&self, reply: oneshot::Sender<ClientResponse>) {
        let database = self.database.clone();
        tokio::task::spawn_blocking(move || {
            let answer = Store::open_read_only(&database).and_then(|store| store.funded_workflows());
            let response = match answer {
                Ok(funded) => ClientResponse::Payments(PaymentAnswer::Funded(funded)),
                Err(e) => ClientResponse::Error { message: e.to_string() },
            };
            let _ = reply.send(response);
        });
    }

    /// Funds a workflow from an escrow job once the chain confirms the job can pay it: open,
    /// naming this scheduler as reporter, with room for every chunk. The check runs off the
    /// owner task; its answer comes back as [`Input::FundChecked`].
    fn fund(
        &mut self,
        now: u64,
        workflow: WorkflowId,
        escrow_job: u64,
        signature: Vec<u8>,
        reply: oneshot::Sender<ClientResponse>,
    ) -> std::result::Result<(), String> {
        let refuse = |reply: oneshot::Sender<ClientResponse>, message: String| {
            let _ = reply.send(ClientResponse::Error { message: message.clone() });
            Err(message)
        };
        let Some(chain) = self.chain.clone() else {
            return refuse(reply, "this scheduler was started without --chain; it pays no one".into());
        };
        if signature.len() != 65 {
            return refuse(reply, "the funding signature must be 65 bytes (r, s, v)".into());
        }
        let statuses = self.core.job_statuses(now);
        let mut jobs: Vec<_> = statuses.iter().filter(|s| s.workflow == workflow).collect();
        if jobs.is_empty() {
            return refuse(reply, format!("no workflow {workflow}"));
        }
        jobs.sort_by_key(|s| s.id);
        let mut offsets = std::collections::BTreeMap::new();
        let mut chunks = 0u64;
        for job in jobs {
            offsets.insert(job.id.0, chunks);
            chunks += job.chunks_total;
        }
        let funding = crate::store::Funding { workflow, escrow_job, chunks, offsets, completed: false };
        let inputs = self.inputs.clone();
        tokio::spawn(async move {
            let checked = check_escrow_job(&chain, escrow_job, workflow, chunks, &signature).await;
            if let Some(inputs) = inputs.upgrade() {
                let _ = inputs.send(Input::FundChecked { funding, checked, reply }).await;
            }
        });
        Ok(())
    }

    /// The datasets kept by name. Not a scheduling decision: the table is the store's alone, and
    /// garbage collection keeps what it names.
    fn datasets(&mut self, request: DatasetRequest) -> std::result::Result<Vec<DatasetInfo>, String> {
        use upglobe_protocol::messages::limits::{DATASET_NAME_BYTES_MAX, DATASETS_MAX, MANIFEST_BYTES_MAX};
        let store_error = |e: SchedulerError| format!("the scheduler's store failed: {e}");
        match request {
            DatasetRequest::List => self.store.datasets(None).map_err(store_error),
            DatasetRequest::Remove { hash } => {
                let removed = self.store.remove_dataset(hash).map_err(store_error)?;
                if removed.is_empty() {
                    return Err(format!("no dataset {} (see `upglobe dataset ls`)", hash.to_hex()));
                }
                tracing::info!(dataset = %hash.short(), entries = removed.len(), "dataset removed");
                Ok(removed)
            }
            DatasetRequest::Add { hash, name, kind, directory } => {
                if name.is_empty() || name.len() > DATASET_NAME_BYTES_MAX || name.chars().any(char::is_control) {
                    return Err(format!(
                        "a dataset's name must be 1 to {DATASET_NAME_BYTES_MAX} bytes without control characters"
                    ));
                }
                let Some(size) = self.blobs.size(&hash) else {
                    return Err(format!("the scheduler does not hold blob {}: upload it first", hash.to_hex()));
                };
                if self.store.dataset_count().map_err(store_error)? >= DATASETS_MAX {
                    return Err(format!("the scheduler keeps at most {DATASETS_MAX} datasets; remove some first"));
                }
                if let Some(directory) = directory
                    && self.blobs.size(&directory).is_none()
                {
                    return Err(format!("the scheduler does not hold the manifest {}", directory.to_hex()));
                }
                if kind == DatasetKind::Directory {
                    // A manifest names files that must all be here, whole. It is read on this
                    // loop, so its size is bounded first.
                    if size > MANIFEST_BYTES_MAX {
                        return Err(format!(
                            "dataset {name}: a manifest of {size} bytes; at most {MANIFEST_BYTES_MAX}"
                        ));
                    }
                    let bytes = self.blobs.get(&hash).map_err(|e| e.to_string())?;
                    let manifest = Manifest::decode(&bytes).map_err(|e| format!("dataset {name}: {e}"))?;
                    if let Some(file) = manifest.files.iter().find(|f| self.blobs.size(&f.blob) != Some(f.size)) {
                        return Err(format!("dataset {name}: file {:?} was not uploaded whole", file.name));
                    }
                }
                let added = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0);
                let info = DatasetInfo { hash, name, kind, size, added, directory };
                self.store.add_dataset(&info).map_err(store_error)?;
                tracing::info!(dataset = %hash.short(), name = %info.name, size, "dataset added");
                Ok(vec![info])
            }
        }
    }

    fn verification(&self, id: upglobe_protocol::JobId) -> Result<VerificationReport> {
        let (policy, chunks_final, chunks_provisional) = self.core.verification_summary(id).expect("found job");
        let events = self.store.trust_events(id, TRUST_EVENTS_SHOWN_MAX)?;
        Ok(VerificationReport { job: id, policy, chunks_final, chunks_provisional, events })
    }

    /// One page of a job's verified results, cut at a chunk count and a size.
    fn results(&self, now: u64, id: upglobe_protocol::JobId, first_chunk: u32) -> Result<ResultsPage> {
        let status = self.core.job_status(now, id).expect("found job");
        // One row more than a page holds tells whether another page follows.
        let mut chunks = self.store.verified_chunks(id, first_chunk, RESULTS_PAGE_CHUNKS_MAX + 1)?;
        let mut bytes = 0;
        let fits = chunks
            .iter()
            .take(RESULTS_PAGE_CHUNKS_MAX as usize)
            .take_while(|chunk| {
                bytes += chunk.encoded_bytes_max();
                bytes <= RESULTS_PAGE_BYTES_MAX
            })
            .count()
            .max(1);
        let next_chunk = chunks.get(fits).map(|chunk| chunk.index);
        chunks.truncate(fits);
        Ok(ResultsPage {
            workflow_hash: self.store.workflow_hash(status.workflow)?,
            spec: (first_chunk == 0).then(|| self.core.job_spec(id).expect("found job").clone()),
            chunks,
            next_chunk,
            status,
        })
    }

    /// Takes the core's actions after one input. A message is bound to the worker's session of this
    /// moment: if the worker joins again later in the batch, the old session's messages must not
    /// reach the new one.
    fn collect(&mut self, pending: &mut Pending) {
        while let Some(action) = self.core.poll_action() {
            match action {
                Action::Persist(record) => pending.records.push(record),
                Action::Compare { id, rules, a, b } => self.compare(id, rules, a, b),
                Action::Send { worker, message } => {
                    let outbox = self.sessions.get(&worker).map(|s| s.outbox.clone());
                    pending.sends.push((worker, outbox, message));
                }
            }
        }
    }

    /// Persists what the core decided, then sends its messages and the replies.
    fn commit(&mut self, pending: Pending, replies: Vec<Reply>) -> Result<()> {
        let Pending { records, sends } = pending;
        log_records(&records);
        let started = Instant::now();
        self.store.apply(&records)?;
        if !records.is_empty() {
            self.metrics.commit_seconds.observe(started.elapsed().as_secs_f64());
        }
        self.metrics.observe_records(&records);
        self.probe.observe(&records, &sends);
        for (_, outbox, message) in sends {
            if let Some(outbox) = outbox {
                let _ = outbox.send(message);
            }
        }
        let now = self.now();
        for reply in replies {
            let (reply, response) = match reply {
                Reply::Ready(reply, response) => (reply, response),
                Reply::AfterCommit(reply, request) => (reply, self.answer(now, request)),
            };
            let _ = reply.send(response);
        }
        Ok(())
    }
}

fn log_records(records: &[Record]) {
    for record in records {
        match record {
            Record::JobFinished { job, state } => {
                tracing::info!(%job, state = state.label(), "job finished")
            }
            Record::AttemptFailed { chunk, reason, .. } => {
                tracing::warn!(%chunk, %reason, "attempt failed")
            }
            Record::ChunkVerified { chunk, disagreeing, .. } if !disagreeing.is_empty() => {
                tracing::warn!(%chunk, disagreeing = disagreeing.len(), "chunk verified against disagreeing workers")
            }
            _ => {}
        }
    }
}

/// Bytes each worker has uploaded that no result of its own has named yet: bounded, so a worker
/// cannot fill the scheduler's disk with blobs nothing will ever use (garbage collection removes
/// those; the bound keeps the pile small until it does).
#[derive(Default)]
struct Uploads {
    unclaimed: std::sync::Mutex<HashMap<WorkerId, u64>>,
}

impl Uploads {
    fn reserve(&self, worker: WorkerId, bytes: u64, limit: u64) -> std::result::Result<(), String> {
        let mut unclaimed = self.unclaimed.lock().expect("upload accounts");
        let held = unclaimed.entry(worker).or_default();
        if held.saturating_add(bytes) > limit {
            return Err(format!(
                "this worker has {held} bytes of uploads that no result names; {bytes} more would pass the limit of {limit}"
            ));
        }
        *held += bytes;
        Ok(())
    }

    fn claim(&self, worker: WorkerId, bytes: u64) {
        let mut unclaimed = self.unclaimed.lock().expect("upload accounts");
        if let Some(held) = unclaimed.get_mut(&worker) {
            *held = held.saturating_sub(bytes);
        }
    }
}

/// Removes, every `interval`, the blobs that no job spec and no pending or verified result names
/// and that have not been stored or touched for `grace`. It reads the database through its own
/// read-only connection, off the owner task.
async fn collect_garbage(
    database: PathBuf,
    blobs: BlobStore,
    interval: Duration,
    grace: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = shutdown.changed() => return,
        }
        let (database, blobs) = (database.clone(), blobs.clone());
        let collected = tokio::task::spawn_blocking(move || {
            // Anything younger than this may be an upload whose result is still on its way.
            let spare_after = std::time::SystemTime::now() - grace;
            let referenced = Store::open_read_only(&database)?.referenced_blobs()?;
            Ok::<_, SchedulerError>(blobs.collect_garbage(|hash| referenced.contains(hash), spare_after)?)
        })
        .await;
        match collected {
            Ok(Ok(c)) if c.blobs + c.temporary > 0 => {
                tracing::info!(blobs = c.blobs, bytes = c.bytes, temporary = c.temporary, "removed blobs nothing needs")
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "garbage collection failed"),
            Err(e) => tracing::warn!(error = %e, "garbage collection panicked"),
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline.into()).await,
        None => std::future::pending().await,
    }
}

// ---------------------------------------------------------------------------------------------
// Connections

struct Shared {
    uploads: Arc<Uploads>,
    worker_unclaimed_bytes_max: u64,
    client_upload_bytes_max: u64,
    secrets: Secrets,
    /// Permits for connections that have not yet proven their secret.
    unauthenticated: Arc<tokio::sync::Semaphore>,
    blobs: BlobStore,
    inputs: mpsc::Sender<Input>,
    heartbeat_interval_ms: u64,
    greeting_timeout: Duration,
    sessions: AtomicU64,
    metrics: Arc<metrics::Metrics>,
}

async fn accept_loop(endpoint: quinn::Endpoint, shared: Arc<Shared>, mut shutdown: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            incoming = endpoint.accept() => match incoming {
                Some(incoming) => match shared.unauthenticated.clone().try_acquire_owned() {
                    Ok(permit) => { tokio::spawn(serve_connection(incoming, shared.clone(), permit)); }
                    Err(_) => {
                        tracing::warn!(remote = %incoming.remote_address(), limit = UNAUTHENTICATED_CONNECTIONS_MAX, "too many connections still unauthenticated; refusing");
                        incoming.refuse();
                    }
                },
                None => return,
            },
            _ = shutdown.changed() => {
                endpoint.close(0u32.into(), b"scheduler shutting down");
                return;
            }
        }
    }
}

/// Serves one connection. Until its greeting carries a valid secret it holds an `unauthenticated`
/// permit, may send only one small frame, and has [`ServerConfig::greeting_timeout`] for the handshake
/// and that frame.
async fn serve_connection(incoming: quinn::Incoming, shared: Arc<Shared>, permit: tokio::sync::OwnedSemaphorePermit) {
    let remote = incoming.remote_address();
    let greeted = tokio::time::timeout(shared.greeting_timeout, async {
        let connection = incoming.await.map_err(|e| SchedulerError::Invalid(net::describe_connection_error(&e)))?;
        let peer = peer_id(&connection)?;
        let (send, mut recv) = connection.accept_bi().await.map_err(|e| SchedulerError::Invalid(e.to_string()))?;
        let greeting: Greeting = frame::read_limited(&mut recv, GREETING_BYTES_MAX)
            .await?
            .ok_or_else(|| SchedulerError::Invalid("the connection closed before its greeting".into()))?;
        Ok::<_, SchedulerError>((connection, peer, send, recv, greeting))
    })
    .await;
    let (connection, peer, send, recv, greeting) = match greeted {
        Ok(Ok(greeted)) => greeted,
        Ok(Err(e)) => {
            tracing::info!(%remote, error = %e, "connection refused before its greeting");
            return;
        }
        Err(_) => {
            tracing::info!(%remote, "no greeting within {} s", shared.greeting_timeout.as_secs());
            return;
        }
    };
    let result = match greeting {
        Greeting::Worker(hello) => serve_worker(&connection, peer, hello, send, recv, &shared, permit).await,
        Greeting::Client(hello) => serve_client(&connection, hello, send, &shared, permit).await,
    };
    if let Err(e) = result {
        tracing::info!(%remote, error = %e, "connection ended");
    }
}

/// Refuses a peer: says why on the stream and in the close frame, so the reason arrives either way.
async fn refuse(
    connection: &quinn::Connection,
    mut send: quinn::SendStream,
    message: impl serde::Serialize,
    reason: &str,
) {
    let _ = frame::write(&mut send, &message).await;
    let _ = send.finish();
    let _ = tokio::time::timeout(Duration::from_secs(1), connection.closed()).await;
    connection.close(1u32.into(), reason.as_bytes());
}

/// Why a peer claiming `role` is refused, if it is: an incompatible protocol, or a secret that is
/// not this role's (a secret of another role is named, so a mixed-up token is easy to spot).
fn admission_error(protocol: u32, secret: &str, secrets: &Secrets, role: Role) -> Option<String> {
    if protocol != PROTOCOL_VERSION {
        return Some(format!(
            "protocol version {protocol}; this scheduler speaks version {PROTOCOL_VERSION} ({SOFTWARE})"
        ));
    }
    let roles = [(Role::Worker, &secrets.worker), (Role::Verifier, &secrets.verifier), (Role::Client, &secrets.client)];
    // Every secret is compared, in time independent of where they differ.
    let matched: Vec<Role> = roles.iter().filter(|(_, s)| secrets_match(secret, s)).map(|(r, _)| *r).collect();
    match matched.first() {
        Some(found) if *found == role => None,
        Some(found) => Some(format!("this token is not a {} token (it is a {} token)", role.as_str(), found.as_str())),
        None => Some("the join token's secret is not valid for this scheduler".into()),
    }
}

async fn serve_worker(
    connection: &quinn::Connection,
    worker: WorkerId,
    hello: Hello,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    shared: &Arc<Shared>,
    permit: tokio::sync::OwnedSemaphorePermit,
) -> Result<()> {
    let role = match hello.role {
        NodeRole::Worker => Role::Worker,
        NodeRole::Verifier => Role::Verifier,
    };
    if let Some(reason) = admission_error(hello.protocol, &hello.secret, &shared.secrets, role) {
        tracing::warn!(worker = %worker.short(), %reason, "worker refused");
        refuse(connection, send, ToWorker::Refused { reason: reason.clone() }, &reason).await;
        return Ok(());
    }
    drop(permit);
    let session = shared.sessions.fetch_add(1, Ordering::Relaxed);
    let (outbox, messages) = mpsc::unbounded_channel();
    let (reply, answer) = oneshot::channel();
    let joined = Input::WorkerJoined { worker, session, hello, outbox, reply };
    let stopped = || SchedulerError::Invalid("scheduler stopped".into());
    shared.inputs.send(joined).await.map_err(|_| stopped())?;
    if let Err(reason) = answer.await.map_err(|_| stopped())? {
        tracing::warn!(worker = %worker.short(), %reason, "worker refused");
        let reason = format!("the worker's hello was refused: {reason}");
        refuse(connection, send, ToWorker::Refused { reason: reason.clone() }, &reason).await;
        return Ok(());
    }
    // The welcome goes out before the pump starts, so it precedes every message for this session.
    let welcome =
        Welcome { peer: worker, software: SOFTWARE.into(), heartbeat_interval_ms: shared.heartbeat_interval_ms };
    frame::write(&mut send, &ToWorker::Welcome(welcome)).await?;
    tokio::spawn(frame::pump(send, messages));
    tokio::spawn(serve_streams(connection.clone(), shared.clone(), Peer::Worker(worker)));
    let reason = loop {
        match frame::read::<FromWorker, _>(&mut recv).await {
            Ok(Some(message)) => {
                let input = Input::FromWorker { worker, session, message };
                if shared.inputs.send(input).await.is_err() {
                    return Ok(());
                }
            }
            Ok(None) => break "the worker closed its control stream".to_string(),
            Err(e) => {
                break connection.close_reason().map_or(e.to_string(), |r| net::describe_connection_error(&r));
            }
        }
    };
    let _ = shared.inputs.send(Input::WorkerGone { worker, session, reason }).await;
    Ok(())
}

async fn serve_client(
    connection: &quinn::Connection,
    hello: upglobe_protocol::messages::ClientHello,
    mut send: quinn::SendStream,
    shared: &Arc<Shared>,
    permit: tokio::sync::OwnedSemaphorePermit,
) -> Result<()> {
    if let Some(reason) = admission_error(hello.protocol, &hello.secret, &shared.secrets, Role::Client) {
        refuse(connection, send, ClientWelcome::Refused { reason: reason.clone() }, &reason).await;
        return Ok(());
    }
    drop(permit);
    frame::write(&mut send, &ClientWelcome::Welcome { software: SOFTWARE.into() }).await?;
    let _ = send.finish();
    serve_streams(connection.clone(), shared.clone(), Peer::Client(Arc::new(AtomicU64::new(0)))).await;
    Ok(())
}

/// Streams after the first: blob transfers for everyone, requests for clients.
/// Who is on the other end of a connection's further streams.
#[derive(Clone)]
enum Peer {
    Worker(WorkerId),
    /// A client, with the bytes its connection has uploaded.
    Client(Arc<AtomicU64>),
}

/// Receives an upload within the peer's allowance: a worker's unclaimed uploads, a client
/// connection's total. A blob already held costs nothing.
async fn receive_upload(
    send: &mut quinn::SendStream,
    recv: &mut quinn::RecvStream,
    shared: &Shared,
    peer: &Peer,
    hash: upglobe_protocol::BlobHash,
    size: u64,
) -> std::result::Result<(), upglobe_datasets::DatasetError> {
    // A client's dataset may be large and its link flaky: what a broken upload delivered is kept
    // for the next attempt. A worker's results are not (a worker could leave partials about).
    let resumable = matches!(peer, Peer::Client(_));
    if shared.blobs.contains(&hash) {
        return transfer::serve_put(send, recv, &shared.blobs, hash, size, resumable).await;
    }
    let allowed = match peer {
        Peer::Worker(worker) => shared.uploads.reserve(*worker, size, shared.worker_unclaimed_bytes_max),
        Peer::Client(uploaded) => {
            let total = uploaded.fetch_add(size, Ordering::Relaxed).saturating_add(size);
            if total > shared.client_upload_bytes_max {
                uploaded.fetch_sub(size, Ordering::Relaxed);
                Err(format!(
                    "this connection's uploads would pass the limit of {} bytes",
                    shared.client_upload_bytes_max
                ))
            } else {
                Ok(())
            }
        }
    };
    if let Err(reason) = allowed {
        return transfer::refuse_put(send, hash, reason).await;
    }
    let result = transfer::serve_put(send, recv, &shared.blobs, hash, size, resumable).await;
    // A transfer that stored nothing (broken, or not the promised bytes) costs nothing.
    if !shared.blobs.contains(&hash) {
        match peer {
            Peer::Worker(worker) => shared.uploads.claim(*worker, size),
            Peer::Client(uploaded) => _ = uploaded.fetch_sub(size, Ordering::Relaxed),
        }
    }
    result
}

async fn serve_streams(connection: quinn::Connection, shared: Arc<Shared>, peer: Peer) {
    let client = matches!(peer, Peer::Client(_));
    while let Ok((mut send, mut recv)) = connection.accept_bi().await {
        let shared = shared.clone();
        let peer = peer.clone();
        tokio::spawn(async move {
            let result = async {
                match frame::expect::<StreamRequest, _>(&mut recv).await? {
                    StreamRequest::GetSlices { hash, ranges } => {
                        let sent = transfer::serve_slices(&mut send, &shared.blobs, hash, &ranges).await?;
                        shared.metrics.bytes_sent.inc_by(sent);
                    }
                    StreamRequest::PutBlob { hash, size } => {
                        receive_upload(&mut send, &mut recv, &shared, &peer, hash, size).await?;
                        shared.metrics.bytes_received.inc_by(size);
                    }
                    StreamRequest::Client(request) => {
                        let response = if client {
                            let (reply, answer) = oneshot::channel();
                            shared
                                .inputs
                                .send(Input::Client { request, reply })
                                .await
                                .map_err(|_| SchedulerError::Invalid("scheduler stopped".into()))?;
                            answer.await.map_err(|_| SchedulerError::Invalid("scheduler stopped".into()))?
                        } else {
                            ClientResponse::Error { message: "workers cannot make client requests".into() }
                        };
                        frame::write(&mut send, &response).await?;
                        let _ = send.finish();
                    }
                }
                Ok::<(), SchedulerError>(())
            }
            .await;
            if let Err(e) = result {
                tracing::debug!(error = %e, "stream failed");
            }
        });
    }
}
