//! The thin tokio + quinn shell around the core.
//!
//! One task owns the [`Core`] and the [`Store`]. Connection tasks turn frames into [`Input`]s; the
//! owner applies a batch of inputs, commits every record the core produced in one transaction, and
//! only then sends the core's messages and answers clients, so nothing is acknowledged before it is
//! durable. Blob transfers never pass through the owner: connection tasks serve them from the blob
//! store directly.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot, watch};
use upglobe_datasets::{BlobStore, transfer};
use upglobe_protocol::messages::limits::{CHUNKS_PER_JOB_MAX, JOBS_PER_WORKFLOW_MAX, REPLICAS_MAX};
use upglobe_protocol::messages::{
    ClientRequest, ClientResponse, ClientWelcome, FromWorker, Greeting, Hello, JobKind, JobResults, Outcome, Output,
    StreamRequest, Submission, ToWorker, Welcome,
};
use upglobe_protocol::tls::{SchedulerIdentity, peer_id, random_secret};
use upglobe_protocol::token::secrets_match;
use upglobe_protocol::{PROTOCOL_VERSION, Role, Token, WorkerId, frame, net};

use crate::core::{Action, Config, Core, Record};
use crate::store::Store;
use crate::{Result, SchedulerError};

/// Inputs waiting for the core; senders wait when it is full.
const INPUT_QUEUE_MAX: usize = 16_384;
/// Inputs applied before the records are committed.
const BATCH_MAX: usize = 4_096;
/// A new connection must say who it is within this time.
const GREETING_TIMEOUT: Duration = Duration::from_secs(10);

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
        }
    }
}

/// A running scheduler.
pub struct Scheduler {
    pub worker_token: Token,
    pub client_token: Token,
    pub address: SocketAddr,
    /// Whether this start created the CA (a new scheduler).
    pub created: bool,
    pub latencies: Latencies,
    shutdown: watch::Sender<bool>,
    owner: tokio::task::JoinHandle<Result<()>>,
}

struct Secrets {
    worker: String,
    client: String,
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
    let text = std::fs::read_to_string(&path).map_err(io(format!("cannot read {}", path.display())))?;
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
    Ok(Secrets { worker: get("worker")?, client: get("client")? })
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
        let core = Core::restore(config.core.clone(), snapshot, 0);
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
        write_token(&dir.join("worker.token"), &worker_token)?;
        write_token(&dir.join("client.token"), &client_token)?;

        let (inputs, receiver) = mpsc::channel(INPUT_QUEUE_MAX);
        let (shutdown, watcher) = watch::channel(false);
        let shared = Arc::new(Shared {
            secrets,
            blobs: blobs.clone(),
            inputs,
            heartbeat_interval_ms: config.heartbeat_interval.as_millis() as u64,
            sessions: AtomicU64::new(1),
        });
        tokio::spawn(accept_loop(endpoint, shared, watcher.clone()));
        let latencies = Latencies::default();
        let probe =
            config.measure_latency.then(|| LatencyProbe { assigned: HashMap::new(), latencies: latencies.clone() });
        let owner = Owner { core, store, blobs, clock, sessions: HashMap::new(), probe };
        let owner = tokio::spawn(owner.run(receiver, watcher));
        tracing::info!(%address, epoch, "scheduler listening");
        Ok(Scheduler { worker_token, client_token, address, created, latencies, shutdown, owner })
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

// ---------------------------------------------------------------------------------------------
// The owner of the core

enum Input {
    WorkerJoined { worker: WorkerId, session: u64, hello: Hello, outbox: mpsc::UnboundedSender<ToWorker> },
    FromWorker { worker: WorkerId, session: u64, message: FromWorker },
    WorkerGone { worker: WorkerId, session: u64, reason: String },
    Client { request: ClientRequest, reply: oneshot::Sender<ClientResponse> },
}

struct Session {
    id: u64,
    outbox: mpsc::UnboundedSender<ToWorker>,
}

/// What one batch decided, waiting for its records to be committed.
#[derive(Default)]
struct Pending {
    records: Vec<Record>,
    sends: Vec<(WorkerId, Option<mpsc::UnboundedSender<ToWorker>>, ToWorker)>,
}

struct Owner {
    core: Core,
    store: Store,
    blobs: BlobStore,
    clock: Instant,
    sessions: HashMap<WorkerId, Session>,
    probe: Option<LatencyProbe>,
}

struct LatencyProbe {
    assigned: HashMap<upglobe_protocol::ChunkId, Instant>,
    latencies: Latencies,
}

impl LatencyProbe {
    fn observe(&mut self, records: &[Record], sends: &[(WorkerId, Option<mpsc::UnboundedSender<ToWorker>>, ToWorker)]) {
        let now = Instant::now();
        for (_, _, message) in sends {
            if let ToWorker::Assign(assignment) = message {
                self.assigned.entry(assignment.chunk).or_insert(now);
            }
        }
        let mut latencies = self.latencies.lock().expect("latency list");
        for record in records {
            if let Record::ChunkVerified { chunk, .. } = record
                && let Some(assigned) = self.assigned.remove(chunk)
            {
                latencies.push((now - assigned).as_secs_f64());
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
            tokio::select! {
                received = inputs.recv_many(&mut batch, BATCH_MAX) => {
                    if received == 0 {
                        return Ok(());
                    }
                }
                _ = sleep_until(deadline) => {}
                _ = shutdown.changed() => {
                    tracing::info!("scheduler shutting down");
                    return Ok(());
                }
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

    fn handle(&mut self, input: Input, replies: &mut Vec<(oneshot::Sender<ClientResponse>, ClientResponse)>) {
        let now = self.now();
        match input {
            Input::WorkerJoined { worker, session, hello, outbox } => {
                tracing::info!(worker = %worker.short(), name = %hello.name, cpus = hello.resources.cpus, device = %hello.device, "worker joined");
                self.sessions.insert(worker, Session { id: session, outbox });
                self.core.handle_worker_joined(
                    now,
                    worker,
                    hello.name,
                    hello.resources,
                    hello.allow_commands,
                    hello.device,
                );
            }
            Input::FromWorker { worker, session, message } => {
                if self.sessions.get(&worker).is_none_or(|s| s.id != session) {
                    return;
                }
                match message {
                    FromWorker::Heartbeat { running } => self.core.handle_heartbeat(now, worker, &running),
                    FromWorker::Finished { assignment, outcome, .. } => {
                        let outcome = self.check_blobs(outcome);
                        self.core.handle_finished(now, worker, assignment, outcome);
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
            Input::Client { request, reply } => {
                let response = self.answer(now, request);
                replies.push((reply, response));
            }
        }
    }

    /// A result may only name blobs the scheduler holds (workers upload them first), and an MD
    /// checkpoint must be the state the result claims: its size, and the hash it ends with.
    fn check_blobs(&self, outcome: Outcome) -> Outcome {
        let Outcome::Completed(output) = &outcome else { return outcome };
        if let Some(missing) = output.blobs().iter().find(|b| !self.blobs.contains(b)) {
            return Outcome::Failed {
                reason: format!("the result names blob {} that was never uploaded", missing.short()),
            };
        }
        if let Output::Md { state_hash, checkpoint, checkpoint_bytes, .. } = output {
            let size = self.blobs.size(checkpoint);
            let tail = self.blobs.tail(checkpoint, 32).unwrap_or_default();
            if size != Some(*checkpoint_bytes) || tail != state_hash {
                return Outcome::Failed {
                    reason: format!("checkpoint {} is not the state the result claims", checkpoint.short()),
                };
            }
        }
        outcome
    }

    fn answer(&mut self, now: u64, request: ClientRequest) -> ClientResponse {
        let error = |message: String| ClientResponse::Error { message };
        match request {
            ClientRequest::Submit(submission) => match validate(&submission, &self.blobs) {
                Ok(()) => {
                    let (workflow, jobs) =
                        self.core.handle_submit(now, submission.name, submission.source, submission.jobs);
                    tracing::info!(%workflow, jobs = jobs.len(), "workflow submitted");
                    ClientResponse::Submitted { workflow, jobs }
                }
                Err(message) => error(format!("workflow refused: {message}")),
            },
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
            ClientRequest::Results { job } => match self.core.find_job(&job) {
                Some(id) => match self.results(now, id) {
                    Ok(results) => ClientResponse::Results(Box::new(results)),
                    Err(e) => error(e.to_string()),
                },
                None => error(format!("no job '{job}' (give a job id or WORKFLOW.JOB)")),
            },
            ClientRequest::Workers => ClientResponse::Workers(self.core.workers()),
        }
    }

    fn results(&self, now: u64, id: upglobe_protocol::JobId) -> Result<JobResults> {
        let status = self.core.job_status(now, id).expect("found job");
        Ok(JobResults {
            workflow_hash: self.store.workflow_hash(status.workflow)?,
            spec: self.core.job_spec(id).expect("found job").clone(),
            chunks: self.store.verified_chunks(id)?,
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
                Action::Send { worker, message } => {
                    let outbox = self.sessions.get(&worker).map(|s| s.outbox.clone());
                    pending.sends.push((worker, outbox, message));
                }
            }
        }
    }

    /// Persists what the core decided, then sends its messages and the replies.
    fn commit(
        &mut self,
        pending: Pending,
        replies: Vec<(oneshot::Sender<ClientResponse>, ClientResponse)>,
    ) -> Result<()> {
        let Pending { records, sends } = pending;
        log_records(&records);
        self.store.apply(&records)?;
        if let Some(probe) = &mut self.probe {
            probe.observe(&records, &sends);
        }
        for (_, outbox, message) in sends {
            if let Some(outbox) = outbox {
                let _ = outbox.send(message);
            }
        }
        for (reply, response) in replies {
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

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline.into()).await,
        None => std::future::pending().await,
    }
}

/// Checks a submission from the wire; clients check workflow files far more thoroughly, but the
/// scheduler trusts no peer with its invariants.
pub fn validate(submission: &Submission, blobs: &BlobStore) -> std::result::Result<(), String> {
    let jobs = &submission.jobs;
    if jobs.is_empty() || jobs.len() > JOBS_PER_WORKFLOW_MAX {
        return Err(format!("{} jobs; between 1 and {JOBS_PER_WORKFLOW_MAX} are allowed", jobs.len()));
    }
    let names: BTreeMap<&str, usize> = jobs.iter().enumerate().map(|(k, j)| (j.name.as_str(), k)).collect();
    if names.len() != jobs.len() || names.contains_key("") {
        return Err("job names must be unique and non-empty".into());
    }
    for job in jobs {
        let name = &job.name;
        if let Some(unknown) = job.after.iter().find(|a| !names.contains_key(a.as_str()) || *a == name) {
            return Err(format!("job '{name}' runs after '{unknown}', which is not another job of the workflow"));
        }
        if !(1..=REPLICAS_MAX).contains(&job.replicas) {
            return Err(format!("job '{name}' asks for {} replicas; 1 to {REPLICAS_MAX} are allowed", job.replicas));
        }
        if job.resources.cpus == 0 {
            return Err(format!("job '{name}' must ask for at least one cpu"));
        }
        let chunks = job.kind.chunks();
        if chunks == 0 || chunks > CHUNKS_PER_JOB_MAX {
            return Err(format!("job '{name}' has {chunks} chunks; 1 to {CHUNKS_PER_JOB_MAX} are allowed"));
        }
        validate_kind(name, &job.kind, blobs)?;
    }
    if let Some(cycle) =
        find_cycle(jobs.iter().map(|j| (j.name.as_str(), j.after.iter().map(String::as_str).collect())).collect())
    {
        return Err(format!("cycle in 'after': {}", cycle.join(" -> ")));
    }
    Ok(())
}

fn validate_kind(name: &str, kind: &JobKind, blobs: &BlobStore) -> std::result::Result<(), String> {
    match kind {
        JobKind::Md(md) => {
            if md.chunk_steps == 0 || md.total_steps % md.chunk_steps != 0 {
                return Err(format!(
                    "job '{name}': chunk_steps {} does not divide steps {}",
                    md.chunk_steps, md.total_steps
                ));
            }
            if md.thermo_every == 0 || md.chunk_steps % md.thermo_every != 0 {
                return Err(format!(
                    "job '{name}': thermo {} does not divide chunk_steps {}",
                    md.thermo_every, md.chunk_steps
                ));
            }
            if !blobs.contains(&md.initial) {
                return Err(format!("job '{name}': the initial state {} was not uploaded", md.initial.short()));
            }
        }
        JobKind::Command(command) => {
            if command.argv.is_empty() {
                return Err(format!("job '{name}' has an empty argv"));
            }
            if let Some(input) = command.inputs.iter().find(|f| !blobs.contains(&f.blob)) {
                return Err(format!("job '{name}': input '{}' was not uploaded", input.name));
            }
        }
        JobKind::Empty { .. } => {}
    }
    Ok(())
}

/// A cycle in a dependency graph, as the names along it, if there is one.
pub fn find_cycle(graph: BTreeMap<&str, Vec<&str>>) -> Option<Vec<String>> {
    fn visit<'a>(
        node: &'a str,
        graph: &BTreeMap<&'a str, Vec<&'a str>>,
        path: &mut Vec<&'a str>,
        done: &mut BTreeSet<&'a str>,
    ) -> Option<Vec<String>> {
        if let Some(start) = path.iter().position(|n| *n == node) {
            let mut cycle: Vec<String> = path[start..].iter().map(|n| n.to_string()).collect();
            cycle.push(node.to_string());
            return Some(cycle);
        }
        if !done.insert(node) {
            return None;
        }
        path.push(node);
        for next in graph.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, graph, path, done) {
                return Some(cycle);
            }
        }
        path.pop();
        None
    }
    let mut done = BTreeSet::new();
    for node in graph.keys() {
        if let Some(cycle) = visit(node, &graph, &mut Vec::new(), &mut done) {
            return Some(cycle);
        }
    }
    None
}

// ---------------------------------------------------------------------------------------------
// Connections

struct Shared {
    secrets: Secrets,
    blobs: BlobStore,
    inputs: mpsc::Sender<Input>,
    heartbeat_interval_ms: u64,
    sessions: AtomicU64,
}

async fn accept_loop(endpoint: quinn::Endpoint, shared: Arc<Shared>, mut shutdown: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            incoming = endpoint.accept() => match incoming {
                Some(incoming) => { tokio::spawn(serve_connection(incoming, shared.clone())); }
                None => return,
            },
            _ = shutdown.changed() => {
                endpoint.close(0u32.into(), b"scheduler shutting down");
                return;
            }
        }
    }
}

async fn serve_connection(incoming: quinn::Incoming, shared: Arc<Shared>) {
    let remote = incoming.remote_address();
    let connection = match incoming.await {
        Ok(connection) => connection,
        Err(e) => {
            tracing::info!(%remote, error = %net::describe_connection_error(&e), "handshake failed");
            return;
        }
    };
    let result = async {
        let peer = peer_id(&connection)?;
        let (send, mut recv) = tokio::time::timeout(GREETING_TIMEOUT, connection.accept_bi())
            .await
            .map_err(|_| SchedulerError::Invalid("no greeting".into()))?
            .map_err(|e| SchedulerError::Invalid(e.to_string()))?;
        let greeting: Greeting = tokio::time::timeout(GREETING_TIMEOUT, frame::expect(&mut recv))
            .await
            .map_err(|_| SchedulerError::Invalid("no greeting".into()))??;
        match greeting {
            Greeting::Worker(hello) => serve_worker(&connection, peer, hello, send, recv, &shared).await,
            Greeting::Client(hello) => serve_client(&connection, hello, send, &shared).await,
        }
    }
    .await;
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

fn admission_error(protocol: u32, secret: &str, expected: &str, other: &str, role: &str) -> Option<String> {
    if protocol != PROTOCOL_VERSION {
        return Some(format!(
            "protocol version {protocol}; this scheduler speaks version {PROTOCOL_VERSION} ({SOFTWARE})"
        ));
    }
    if secrets_match(secret, expected) {
        return None;
    }
    if secrets_match(secret, other) {
        return Some(format!("this token is not a {role} token"));
    }
    Some("the join token's secret is not valid for this scheduler".into())
}

async fn serve_worker(
    connection: &quinn::Connection,
    worker: WorkerId,
    hello: Hello,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    shared: &Arc<Shared>,
) -> Result<()> {
    if let Some(reason) =
        admission_error(hello.protocol, &hello.secret, &shared.secrets.worker, &shared.secrets.client, "worker")
    {
        tracing::warn!(worker = %worker.short(), name = %hello.name, %reason, "worker refused");
        refuse(connection, send, ToWorker::Refused { reason: reason.clone() }, &reason).await;
        return Ok(());
    }
    let welcome =
        Welcome { peer: worker, software: SOFTWARE.into(), heartbeat_interval_ms: shared.heartbeat_interval_ms };
    frame::write(&mut send, &ToWorker::Welcome(welcome)).await?;
    let session = shared.sessions.fetch_add(1, Ordering::Relaxed);
    let (outbox, messages) = mpsc::unbounded_channel();
    let joined = Input::WorkerJoined { worker, session, hello, outbox };
    shared.inputs.send(joined).await.map_err(|_| SchedulerError::Invalid("scheduler stopped".into()))?;
    tokio::spawn(frame::pump(send, messages));
    tokio::spawn(serve_streams(connection.clone(), shared.clone(), false));
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
) -> Result<()> {
    if let Some(reason) =
        admission_error(hello.protocol, &hello.secret, &shared.secrets.client, &shared.secrets.worker, "client")
    {
        refuse(connection, send, ClientWelcome::Refused { reason: reason.clone() }, &reason).await;
        return Ok(());
    }
    frame::write(&mut send, &ClientWelcome::Welcome { software: SOFTWARE.into() }).await?;
    let _ = send.finish();
    serve_streams(connection.clone(), shared.clone(), true).await;
    Ok(())
}

/// Streams after the first: blob transfers for everyone, requests for clients.
async fn serve_streams(connection: quinn::Connection, shared: Arc<Shared>, client: bool) {
    while let Ok((mut send, mut recv)) = connection.accept_bi().await {
        let shared = shared.clone();
        tokio::spawn(async move {
            let result = async {
                match frame::expect::<StreamRequest, _>(&mut recv).await? {
                    StreamRequest::GetBlob { hash } => transfer::serve_get(&mut send, &shared.blobs, hash).await?,
                    StreamRequest::PutBlob { hash, size } => {
                        transfer::serve_put(&mut send, &mut recv, &shared.blobs, hash, size).await?
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
