//! The scheduler's decisions, as a pure state machine.
//!
//! Events go in through `handle_*(now, …)` methods, with the time passed in (milliseconds on the
//! shell's monotonic clock); decisions come out as [`Action`]s from [`Core::poll_action`], and the next
//! moment at which time alone will change something from [`Core::poll_timeout`]. There is no I/O, no
//! clock and no randomness here, so a seeded simulation can drive it through millions of events and a
//! failure replays exactly (see `tests/simulation.rs`).
//!
//! The shell must carry out every [`Action::Persist`] (in order, durably) before it sends any message
//! that follows it; a restarted core rebuilt with [`Core::restore`] from those records continues where
//! it was.
//!
//! One chunk's life: a job starts when every job it runs after has completed; its chunks become ready
//! (a chained job's chunk k only once chunk k-1 is verified, starting from what that one handed on:
//! an MD job's verified state, a checkpointed command's verified checkpoint files);
//! a ready chunk is assigned to distinct workers until `replicas` results agree on a digest, and is then
//! verified exactly once. Disagreement asks for further replicas up to a bound; failures and expired
//! leases put the chunk back, up to a bounded number of attempts.

pub mod checks;
mod state;
mod tolerance;
pub mod trust;

pub use checks::{BlobFact, Evidence};
pub use state::{Snapshot, SnapshotJob, SnapshotResult};
pub use trust::{Provisional, Standing};

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

use trust::{Check, CheckId, TrustTimer};
use upglobe_protocol::messages::{
    Assignment, CommandJob, Failure, FileRef, GpuRequest, Hello, JobKind, JobSpec, JobState, JobStatus, Outcome,
    Output, PeerSource, Progress, Resources, Submission, Task, ToWorker, WorkerStatus,
};
use upglobe_protocol::trust::{
    Finality, NodeRole, PublicKey, ResultStatement, Signature, TrustEvent, TrustEventKind, Usage, Verification,
};
use upglobe_protocol::{AssignmentId, BlobHash, ChunkId, Digest, JobId, WorkerId, WorkflowId};

/// Limits and timings of the core.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// A running assignment whose worker has not sent a heartbeat for this long is lost.
    pub lease_timeout_ms: u64,
    /// Failed attempts of one chunk (errors, lost workers, expired leases) before its job fails.
    pub attempts_max: u32,
    /// Replicas beyond `replicas` that disagreement may ask for.
    pub extra_replicas_max: u32,
    /// A worker whose results disagreed with the verified ones (or failed checks) this often gets no
    /// more work.
    pub disagreements_max: u64,
    /// Confirmed results after which a worker runs adaptive chunks alone, under audit.
    pub trust_after: u64,
    /// The lowest audit probability of a trusted worker's single execution.
    pub audit_rate_min: f64,
    /// The scheduler's secret for choosing audits; the shell keeps it across restarts.
    pub audit_secret: [u8; 32],
    /// Links of a chunk's hash chain, at most (the most that divide the chunk's steps).
    pub chain_links: u32,
    /// How long a worker has to serve an intermediate state.
    pub serve_deadline_ms: u64,
    /// A provisional result with no audit becomes final after this challenge window.
    pub settle_after_ms: u64,
    /// A chunk of this many atom-steps has stake 1; larger ones are audited more often.
    pub stake_reference_atom_steps: u64,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            lease_timeout_ms: 30_000,
            attempts_max: 5,
            extra_replicas_max: 3,
            disagreements_max: 3,
            trust_after: 10,
            // Every single execution is audited on one link (1/32 of a chunk): a cheater that skips
            // work is caught at about every second wrong result (`upglobe bench trust`). Lower it to
            // let the rate fall with a worker's record.
            audit_rate_min: 1.0,
            audit_secret: [0; 32],
            chain_links: 32,
            serve_deadline_ms: 30_000,
            settle_after_ms: 3_600_000,
            stake_reference_atom_steps: 1_000_000_000,
        }
    }
}

/// Chunks of an array job (Empty, Command) open at once, at least: the rest wait behind a cursor,
/// so the core's memory and the ready set do not grow with the job's size. The window also grows
/// to twice the connected cpus, so a large cluster never starves.
const CHUNK_WINDOW_MIN: u64 = 4_096;

/// Failure reasons are kept per job, up to this many.
const FAILURES_KEPT_MAX: usize = 100;
/// Assignment ids are `epoch << ASSIGNMENT_COUNTER_BITS | counter`: a trillion assignments per start.
const ASSIGNMENT_COUNTER_BITS: u32 = 40;

/// A worker's signed answer for an assignment.
#[derive(Debug, Clone, PartialEq)]
pub struct Finished {
    pub assignment: AssignmentId,
    pub outcome: Outcome,
    pub usage: Usage,
    pub signature: Signature,
}

/// What the core asks the shell to do.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    Send {
        worker: WorkerId,
        message: ToWorker,
    },
    Persist(Record),
    /// Compare two command results' output files by the rules; answer with
    /// [`Core::handle_compared`].
    Compare {
        id: u64,
        rules: Vec<upglobe_protocol::trust::ToleranceRule>,
        a: Vec<upglobe_protocol::messages::FileRef>,
        b: Vec<upglobe_protocol::messages::FileRef>,
    },
}

/// A durable fact. The store keeps every record; [`Core::restore`] rebuilds the state from them.
#[derive(Debug, Clone, PartialEq)]
pub enum Record {
    WorkflowSubmitted {
        id: WorkflowId,
        name: String,
        source: String,
        jobs: Vec<(JobId, JobSpec, Vec<JobId>)>,
    },
    /// A result that did not (yet) complete a quorum.
    ResultReported {
        chunk: ChunkId,
        worker: WorkerId,
        assignment: AssignmentId,
        digest: Digest,
        output: Output,
    },
    AttemptFailed {
        chunk: ChunkId,
        worker: Option<WorkerId>,
        reason: String,
    },
    ChunkVerified {
        chunk: ChunkId,
        digest: Digest,
        output: Output,
        agreeing: Vec<WorkerId>,
        disagreeing: Vec<WorkerId>,
        /// Accepted on its worker's record: it may still be overturned.
        provisional: Option<Box<Provisional>>,
    },
    /// A provisional chunk became final.
    Finalized {
        chunk: ChunkId,
    },
    /// Chunks of a chained job from `from_chunk` on are no longer accepted (the job runs again from
    /// there).
    Invalidated {
        job: JobId,
        from_chunk: u32,
        reason: String,
    },
    /// A worker's record changed.
    Standing {
        worker: WorkerId,
        standing: Standing,
    },
    /// A verification decision, for the record.
    Trust(TrustEvent),
    /// A result with a valid signature: evidence of what the worker asserted.
    Signed {
        chunk: ChunkId,
        worker: WorkerId,
        key: PublicKey,
        statement_hash: [u8; 32],
        signature: Signature,
        usage: Usage,
    },
    JobFinished {
        job: JobId,
        state: JobState,
    },
    WorkerDisagreed {
        worker: WorkerId,
    },
}

/// A worker as the core sees it.
#[derive(Debug, Clone)]
struct Worker {
    name: String,
    connected: bool,
    capacity: Resources,
    free: Resources,
    allow_commands: bool,
    /// The dockerd version of a worker that runs container jobs; whether it gives them a network
    /// when they ask.
    containers: Option<String>,
    allow_network: bool,
    device: String,
    running: BTreeSet<AssignmentId>,
    completed: u64,
    /// The id of the last assignment it was given (0: none since it joined): among equally loaded
    /// workers the one that waited longest goes first, so every capable worker gets work.
    last_assigned: u64,
    role: NodeRole,
    /// Nodes of one owner never verify each other.
    owner: String,
    signing_key: PublicKey,
    standing: Standing,
    /// Blobs it probably holds in its cache, for placing chunks where their inputs are.
    holding: Holding,
    /// Where it serves its cache to other workers, if it does.
    peer_address: Option<String>,
    gpus: Vec<upglobe_protocol::messages::GpuDevice>,
    /// Which of `gpus` a running assignment holds: a GPU goes to one task at a time, so its
    /// memory is never shared by two.
    gpu_busy: Vec<bool>,
    adapters: Vec<String>,
}

/// Blobs a worker probably holds: what it said it held when it joined, and (confirmed) what it
/// produced or fetched for a task it completed. A guess (its cache may have evicted some), bounded:
/// the oldest is forgotten first. Only confirmed holdings weigh in placing chunks, so a worker
/// cannot draw work to itself by claiming inputs; any holding makes it a peer source, where every
/// slice is verified and a false claim costs the fetcher one refused request.
#[derive(Debug, Clone, Default)]
struct Holding {
    order: std::collections::VecDeque<BlobHash>,
    confirmed: HashMap<BlobHash, bool>,
}

impl Holding {
    fn insert(&mut self, blob: BlobHash, confirmed: bool) {
        if let Some(known) = self.confirmed.get_mut(&blob) {
            *known |= confirmed;
            return;
        }
        self.confirmed.insert(blob, confirmed);
        self.order.push_back(blob);
        if self.order.len() > upglobe_protocol::messages::limits::HOLDING_MAX {
            let oldest = self.order.pop_front().expect("over the bound");
            self.confirmed.remove(&oldest);
        }
    }

    fn contains(&self, blob: &BlobHash) -> bool {
        self.confirmed.contains_key(blob)
    }

    fn confirmed(&self, blob: &BlobHash) -> bool {
        self.confirmed.get(blob).copied().unwrap_or(false)
    }
}

#[derive(Debug, Clone)]
struct Job {
    workflow: WorkflowId,
    name: String,
    spec: JobSpec,
    after: Vec<JobId>,
    state: JobState,
    chunks_total: u64,
    verified: IndexSet,
    /// Array jobs: indexes below this have been opened (or were verified already).
    next_open: u64,
    /// Chunks of this job open now.
    open: u64,
    /// What the accepted chunks of a chained job hand on, in order (the last is the next chunk's
    /// start).
    chain: Vec<Handoff>,
    /// Accepted chunks that may still be overturned.
    provisional: BTreeMap<u32, Provisional>,
    started_ms: Option<u64>,
    failures: Vec<Failure>,
    disagreements: u64,
    /// Assignments of its chunks since this scheduler started, and how many of them went to a
    /// worker that already held every input.
    placed: u64,
    placed_local: u64,
}

impl Job {
    /// The checkpoint files that chunk `index` of a checkpointed command starts from: those of the
    /// accepted chunk before it (none for chunk 0, or for jobs that are not checkpointed commands).
    fn checkpoint_files(&self, index: u32) -> &[FileRef] {
        match index.checked_sub(1).and_then(|previous| self.chain.get(previous as usize)) {
            Some(Handoff::Files(files)) => files,
            _ => &[],
        }
    }
}

/// What an accepted chunk of a chained job hands to the next one.
#[derive(Debug, Clone, PartialEq)]
enum Handoff {
    /// An MD job's state after the chunk.
    State(BlobHash),
    /// A checkpointed program's checkpoint files, in the order its contract names them.
    Files(Vec<FileRef>),
}

impl Handoff {
    /// What an accepted `output` of a job of `kind` hands on; `None` for jobs that are not chained.
    fn of(kind: &JobKind, output: &Output) -> Option<Handoff> {
        match (kind, output) {
            (JobKind::Md(_), Output::Md { checkpoint, .. }) => Some(Handoff::State(*checkpoint)),
            (JobKind::Command(CommandJob { checkpoint: Some(contract), .. }), Output::Command { files, .. }) => {
                // `checks::check_output` refused results without every checkpoint file, so each
                // name is found; the files beside them (thermo, logs) are not handed on.
                let handed = contract.files.iter().filter_map(|name| files.iter().find(|f| f.name == *name));
                Some(Handoff::Files(handed.cloned().collect()))
            }
            _ => None,
        }
    }
}

/// One worker's result for a chunk.
#[derive(Debug, Clone)]
struct ResultEntry {
    worker: WorkerId,
    assignment: AssignmentId,
    digest: Digest,
    output: Output,
}

#[derive(Debug, Clone, Default)]
struct Chunk {
    /// MD input checkpoint.
    input: Option<BlobHash>,
    results: Vec<ResultEntry>,
    /// The dispute that settles its disagreeing results.
    dispute: Option<CheckId>,
    /// Workers that lost a dispute over this chunk: they never run it again.
    excluded: BTreeSet<WorkerId>,
    /// Tolerance jobs: results (by index) in groups that agree, and the comparison awaited.
    groups: Vec<Vec<usize>>,
    comparing: Option<tolerance::Comparing>,
    running: BTreeMap<AssignmentId, WorkerId>,
    attempts_failed: u32,
    /// Workers on which an attempt failed; others are preferred.
    failed_by: BTreeSet<WorkerId>,
    /// How many results this chunk should collect (grows on disagreement).
    target: u32,
}

#[derive(Debug, Clone)]
struct Lease {
    chunk: ChunkId,
    worker: WorkerId,
    resources: Resources,
    deadline_ms: u64,
    steps_done: u64,
    /// The input blob the worker must sign for (MD).
    input: Option<BlobHash>,
    /// For a verifier: the check it runs.
    check: Option<CheckId>,
    /// Indices of the worker's GPUs it holds.
    gpus: Vec<usize>,
}

#[derive(Debug, Clone)]
struct Workflow {
    name: String,
}

pub struct Core {
    config: Config,
    workflows: BTreeMap<WorkflowId, Workflow>,
    jobs: BTreeMap<JobId, Job>,
    chunks: BTreeMap<ChunkId, Chunk>,
    /// Chunks that want more assignments, in priority order (older jobs first).
    ready: BTreeSet<ChunkId>,
    workers: BTreeMap<WorkerId, Worker>,
    leases: BTreeMap<AssignmentId, Lease>,
    /// Leases by deadline, for timeouts.
    deadlines: BTreeSet<(u64, AssignmentId)>,
    next_workflow: u64,
    next_job: u64,
    /// Assignment ids carry the epoch, so ids from before a restart never match new ones.
    next_assignment: u64,
    actions: VecDeque<Action>,
    checks: BTreeMap<CheckId, Check>,
    checks_by_chunk: BTreeSet<(ChunkId, CheckId)>,
    /// Checks whose start state is known and that wait for a verifier.
    checks_waiting: BTreeSet<CheckId>,
    /// Serve requests in flight, by request id.
    serve_requests: BTreeMap<u64, CheckId>,
    trust_timers: BTreeSet<(u64, TrustTimer)>,
    next_check: CheckId,
    next_request: u64,
    /// Comparisons asked of the shell, by id.
    comparisons: BTreeMap<u64, ChunkId>,
}

impl Core {
    /// A core without history. `epoch` must differ between starts of the same scheduler.
    pub fn new(config: Config, epoch: u32) -> Core {
        Core {
            config,
            workflows: BTreeMap::new(),
            jobs: BTreeMap::new(),
            chunks: BTreeMap::new(),
            ready: BTreeSet::new(),
            workers: BTreeMap::new(),
            leases: BTreeMap::new(),
            deadlines: BTreeSet::new(),
            next_workflow: 1,
            next_job: 1,
            next_assignment: {
                assert!(epoch < 1 << (64 - ASSIGNMENT_COUNTER_BITS), "epoch {epoch} out of range");
                (epoch as u64) << ASSIGNMENT_COUNTER_BITS
            },
            actions: VecDeque::new(),
            checks: BTreeMap::new(),
            checks_by_chunk: BTreeSet::new(),
            checks_waiting: BTreeSet::new(),
            serve_requests: BTreeMap::new(),
            trust_timers: BTreeSet::new(),
            next_check: 1,
            next_request: 1,
            comparisons: BTreeMap::new(),
        }
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    // -----------------------------------------------------------------------------------------
    // Output

    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// The earliest lease deadline, serve deadline or end of a challenge window: call
    /// [`Core::handle_timeout`] then.
    pub fn poll_timeout(&self) -> Option<u64> {
        let lease = self.deadlines.first().map(|(deadline, _)| *deadline);
        let trust = self.trust_timers.first().map(|(at, _)| *at);
        lease.into_iter().chain(trust).min()
    }

    fn persist(&mut self, record: Record) {
        self.actions.push_back(Action::Persist(record));
    }

    fn send(&mut self, worker: WorkerId, message: ToWorker) {
        self.actions.push_back(Action::Send { worker, message });
    }

    // -----------------------------------------------------------------------------------------
    // Events

    /// A new workflow from a client. It is checked whole ([`checks::check_submission`]: names,
    /// bounds, dependencies, and the uploaded blobs it names as `evidence` shows them); a refused
    /// one changes nothing. Returns the ids.
    pub fn handle_submit(
        &mut self,
        now: u64,
        submission: Submission,
        evidence: &Evidence,
    ) -> Result<(WorkflowId, Vec<(String, JobId)>), String> {
        checks::check_submission(&submission, evidence)?;
        let Submission { name, source, jobs: specs } = submission;
        let workflow = WorkflowId(self.next_workflow);
        self.next_workflow += 1;
        let ids: BTreeMap<String, JobId> =
            specs.iter().enumerate().map(|(k, spec)| (spec.name.clone(), JobId(self.next_job + k as u64))).collect();
        self.next_job += specs.len() as u64;
        let mut jobs = Vec::with_capacity(specs.len());
        for spec in specs {
            let after: Vec<JobId> = spec.after.iter().map(|n| ids[n]).collect();
            jobs.push((ids[&spec.name], spec, after));
        }
        self.persist(Record::WorkflowSubmitted { id: workflow, name: name.clone(), source, jobs: jobs.clone() });
        self.workflows.insert(workflow, Workflow { name });
        for (id, spec, after) in jobs {
            self.insert_job(workflow, id, spec, after);
        }
        self.start_jobs(now);
        self.schedule(now);
        Ok((workflow, ids.into_iter().collect()))
    }

    /// A worker whose secret the shell has checked. Its hello is checked here
    /// ([`checks::check_hello`]); a refused one changes nothing.
    pub fn handle_worker_joined(&mut self, now: u64, worker: WorkerId, hello: &Hello) -> Result<(), String> {
        checks::check_hello(hello)?;
        // A worker that joins again starts clean: whatever it ran is lost with its old session.
        if self.workers.get(&worker).is_some_and(|w| w.connected) {
            self.handle_worker_left(now, worker, "it joined again");
        }
        // What it holds survives a reconnection (its cache is on its disk).
        let (completed, standing, holding) = self
            .workers
            .get(&worker)
            .map_or((0, Standing::default(), Holding::default()), |w| (w.completed, w.standing, w.holding.clone()));
        let entry = Worker {
            name: hello.name.clone(),
            connected: true,
            capacity: hello.resources,
            free: hello.resources,
            allow_commands: hello.allow_commands,
            containers: hello.containers.clone(),
            allow_network: hello.allow_network,
            device: hello.device.clone(),
            running: BTreeSet::new(),
            completed,
            last_assigned: 0,
            role: hello.role,
            owner: hello.owner.clone().unwrap_or_else(|| worker.to_string()),
            signing_key: hello.signing_key,
            standing,
            holding,
            peer_address: hello.peer_address.clone(),
            gpus: hello.gpus.clone(),
            gpu_busy: vec![false; hello.gpus.len()],
            adapters: hello.adapters.clone(),
        };
        self.workers.insert(worker, entry);
        // More cpus may widen the windows of running array jobs.
        let running: Vec<JobId> =
            self.jobs.iter().filter(|(_, j)| j.state == JobState::Running).map(|(id, _)| *id).collect();
        for id in running {
            self.fill_window(id);
        }
        self.unpark_checks(now, worker);
        self.schedule(now);
        Ok(())
    }

    pub fn handle_worker_left(&mut self, now: u64, worker: WorkerId, reason: &str) {
        let Some(entry) = self.workers.get_mut(&worker) else {
            return;
        };
        entry.connected = false;
        let running: Vec<AssignmentId> = entry.running.iter().copied().collect();
        self.park_checks(now, worker);
        for assignment in running {
            self.fail_lease(now, assignment, format!("worker {} left: {reason}", worker.short()));
        }
        self.schedule(now);
    }

    /// What a worker's cache holds, as it says when it joins (bounded by the message check).
    pub fn handle_holding(&mut self, worker: WorkerId, blobs: &[BlobHash]) {
        let Some(w) = self.workers.get_mut(&worker) else { return };
        for blob in blobs.iter().take(upglobe_protocol::messages::limits::HOLDING_MAX) {
            w.holding.insert(*blob, false);
        }
    }

    /// Renews the leases the worker reports as running. A lease it does not mention (a task that died
    /// without an answer, an assignment that never arrived) is not renewed and expires in its time.
    pub fn handle_heartbeat(&mut self, now: u64, worker: WorkerId, running: &[Progress]) {
        let deadline = now + self.config.lease_timeout_ms;
        for progress in running {
            let Some(lease) = self.leases.get_mut(&progress.assignment) else { continue };
            if lease.worker != worker {
                continue;
            }
            let chunk_steps = match self.jobs.get(&lease.chunk.job).map(|j| &j.spec.kind) {
                Some(JobKind::Md(md)) => md.chunk_steps,
                _ => 0,
            };
            self.deadlines.remove(&(lease.deadline_ms, progress.assignment));
            lease.deadline_ms = deadline;
            // A worker's count is only a progress hint, so it is bounded by the chunk it is about.
            lease.steps_done = progress.steps_done.min(chunk_steps);
            self.deadlines.insert((deadline, progress.assignment));
        }
    }

    /// A worker's answer for an assignment, with what the blob store holds of the blobs it names.
    /// Answers for unknown or foreign assignments (duplicates, answers from before a restart, answers
    /// after a lease expired) are ignored; a result that fails [`checks::check_output`] is a failed
    /// attempt with the reason.
    ///
    /// The result must carry the worker's signature over its [`ResultStatement`]; one that does not
    /// is a failed attempt. A valid signature is persisted as evidence.
    pub fn handle_finished(&mut self, now: u64, worker: WorkerId, finished: Finished, evidence: &Evidence) {
        let Finished { assignment, outcome, usage, signature } = finished;
        let Some(lease) = self.leases.get(&assignment) else {
            return;
        };
        if lease.worker != worker {
            return;
        }
        let (chunk_id, check, input, gpus_held) = (lease.chunk, lease.check, lease.input, lease.resources.gpus);
        self.release(assignment);
        let statement = ResultStatement { chunk: chunk_id, assignment, input, digest: outcome.digest(), usage };
        let key = self.workers[&worker].signing_key;
        let signed = statement.verify(&key, &signature);
        if signed {
            let statement_hash = statement.hash();
            self.persist(Record::Signed { chunk: chunk_id, worker, key, statement_hash, signature, usage });
        }
        if let Some(id) = check {
            let output = match outcome {
                Outcome::Completed(output) if signed => self.checked_verifier_output(id, output, evidence),
                _ => None,
            };
            self.check_finished(now, id, output);
            self.schedule(now);
            return;
        }
        let Some(job) = self.jobs.get(&chunk_id.job) else {
            return;
        };
        if job.state != JobState::Running || !self.chunks.contains_key(&chunk_id) {
            self.schedule(now);
            return;
        }
        let links = self.chain_links_of(chunk_id.job);
        let checked = match (&outcome, signed) {
            (_, false) => Err("the result's signature does not verify with the worker's key".to_string()),
            (Outcome::Completed(output), true) => {
                let output_checked = checks::check_usage(&usage, gpus_held)
                    .and_then(|()| checks::check_output(&job.spec.kind, chunk_id, output, evidence, links));
                output_checked.and_then(|()| checks::check_progress(job.checkpoint_files(chunk_id.index), output))
            }
            (Outcome::Failed { .. }, true) => Ok(()),
        };
        match (outcome, checked) {
            (Outcome::Failed { reason }, Ok(())) => self.attempt_failed(now, chunk_id, Some(worker), truncate(reason)),
            (_, Err(reason)) => self.attempt_failed(now, chunk_id, Some(worker), truncate(reason)),
            (Outcome::Completed(output), Ok(())) => {
                let inputs = self.chunk_inputs(chunk_id);
                if let Some(w) = self.workers.get_mut(&worker) {
                    w.completed += 1;
                    // It fetched the inputs and made the outputs: both are in its cache now.
                    for blob in output.blobs().into_iter().chain(inputs.into_iter().map(|(blob, _)| blob)) {
                        w.holding.insert(blob, true);
                    }
                }
                self.add_result(now, chunk_id, worker, assignment, output);
            }
        }
        self.schedule(now);
    }

    /// The statement a worker signs for `outcome` of an assignment it holds (None if the assignment
    /// is not running): what an honest worker computes on its side.
    pub fn result_statement(
        &self,
        assignment: AssignmentId,
        outcome: &Outcome,
        usage: Usage,
    ) -> Option<ResultStatement> {
        let lease = self.leases.get(&assignment)?;
        Some(ResultStatement { chunk: lease.chunk, assignment, input: lease.input, digest: outcome.digest(), usage })
    }

    /// A verifier's output if it is a well-formed answer to its check (a chain of the interval's
    /// links ending at the uploaded state).
    fn checked_verifier_output(&self, id: CheckId, output: Output, evidence: &Evidence) -> Option<Output> {
        let check = self.checks.get(&id)?;
        let links = match check.purpose {
            trust::Purpose::Recheck => self.chain_links_of(check.chunk.job),
            _ => check.links,
        };
        let kind = &self.jobs.get(&check.chunk.job)?.spec.kind;
        let ok = match check.purpose {
            trust::Purpose::Recheck => checks::check_output(kind, check.chunk, &output, evidence, links).is_ok(),
            _ => checks::check_interval(&output, evidence, links).is_ok(),
        };
        ok.then_some(output)
    }

    /// Expires leases and serve requests whose deadline has passed, and settles provisional results
    /// whose challenge window has.
    pub fn handle_timeout(&mut self, now: u64) {
        self.handle_trust_timers(now);
        while let Some(&(deadline, assignment)) = self.deadlines.first() {
            if deadline > now {
                break;
            }
            let worker = self.leases[&assignment].worker;
            let seconds = self.config.lease_timeout_ms as f64 / 1000.0;
            self.send(worker, ToWorker::Cancel { assignment, reason: "lease expired".into() });
            self.fail_lease(
                now,
                assignment,
                format!("lease expired: no heartbeat from worker {} for {seconds}s", worker.short()),
            );
        }
        self.schedule(now);
    }

    /// Cancels a job (and fails the jobs that run after it). Returns false if it had already finished.
    pub fn handle_cancel(&mut self, now: u64, job: JobId) -> bool {
        let finished = self.jobs.get(&job).is_none_or(|j| j.state.is_finished());
        if finished {
            return false;
        }
        self.finish_job(job, JobState::Cancelled);
        // Jobs that run after it can no longer run.
        self.start_jobs(now);
        self.schedule(now);
        true
    }

    // -----------------------------------------------------------------------------------------
    // Jobs

    fn insert_job(&mut self, workflow: WorkflowId, id: JobId, spec: JobSpec, after: Vec<JobId>) {
        let chunks_total = spec.kind.chunks();
        let job = Job {
            workflow,
            name: spec.name.clone(),
            spec,
            after,
            state: JobState::Waiting,
            chunks_total,
            verified: IndexSet::default(),
            next_open: 0,
            open: 0,
            chain: Vec::new(),
            provisional: BTreeMap::new(),
            started_ms: None,
            failures: Vec::new(),
            disagreements: 0,
            placed: 0,
            placed_local: 0,
        };
        self.jobs.insert(id, job);
    }

    /// Starts every waiting job whose dependencies have completed, and fails those whose dependencies
    /// cannot complete.
    fn start_jobs(&mut self, now: u64) {
        loop {
            let mut changed = false;
            let waiting: Vec<JobId> =
                self.jobs.iter().filter(|(_, j)| j.state == JobState::Waiting).map(|(id, _)| *id).collect();
            for id in waiting {
                let after = self.jobs[&id].after.clone();
                let blocked =
                    after.iter().find(|a| matches!(self.jobs[a].state, JobState::Failed { .. } | JobState::Cancelled));
                if let Some(blocker) = blocked {
                    let reason = format!("job '{}' it runs after did not complete", self.jobs[blocker].name);
                    self.finish_job(id, JobState::Failed { reason });
                    changed = true;
                } else if after.iter().all(|a| self.jobs[a].state == JobState::Completed) {
                    self.start_job(now, id);
                    changed = true;
                }
            }
            if !changed {
                return;
            }
        }
    }

    fn start_job(&mut self, now: u64, id: JobId) {
        let job = self.jobs.get_mut(&id).expect("starting a known job");
        job.state = JobState::Running;
        job.started_ms = Some(now);
        if job.verified.len() as u64 == job.chunks_total {
            self.finish_job(id, JobState::Completed);
            return;
        }
        if job.spec.kind.chained() {
            // Accepted chunks of a chain are always its first ones, so the next is the count.
            let index = job.verified.len() as u32;
            self.open_chunk(ChunkId { job: id, index });
        } else {
            self.fill_window(id);
        }
    }

    fn window(&self) -> u64 {
        let cpus: u64 = self.workers.values().filter(|w| w.connected).map(|w| w.capacity.cpus as u64).sum();
        CHUNK_WINDOW_MIN.max(2 * cpus)
    }

    /// Opens the next chunks of a running array job until its window is full.
    fn fill_window(&mut self, id: JobId) {
        let window = self.window();
        loop {
            let job = self.jobs.get_mut(&id).expect("filling a known job");
            if job.state != JobState::Running
                || job.spec.kind.chained()
                || job.open >= window
                || job.next_open >= job.chunks_total
            {
                return;
            }
            let index = job.next_open as u32;
            job.next_open += 1;
            if !job.verified.contains(&index) {
                self.open_chunk(ChunkId { job: id, index });
            }
        }
    }

    fn open_chunk(&mut self, chunk_id: ChunkId) {
        let job = &self.jobs[&chunk_id.job];
        assert!(
            !job.spec.kind.chained() || job.chain.len() == chunk_id.index as usize,
            "chunk {chunk_id} opened while {} chunks of its chain are accepted",
            job.chain.len()
        );
        let input = match (&job.spec.kind, job.chain.last()) {
            (JobKind::Md(md), None) => Some(md.initial),
            (JobKind::Md(_), Some(Handoff::State(state))) => Some(*state),
            _ => None,
        };
        let target = match job.spec.verification {
            Verification::Metered => 1,
            // Set on the first assignment, from that worker's standing.
            Verification::Adaptive if matches!(job.spec.kind, JobKind::Md(_)) => 1,
            _ => job.spec.replicas,
        };
        if !self.chunks.contains_key(&chunk_id) {
            self.jobs.get_mut(&chunk_id.job).expect("known job").open += 1;
        }
        let chunk = self.chunks.entry(chunk_id).or_default();
        chunk.input = input;
        chunk.target = chunk.target.max(target);
        self.refresh_ready(chunk_id);
    }

    fn finish_job(&mut self, id: JobId, state: JobState) {
        let job = self.jobs.get_mut(&id).expect("finishing a known job");
        assert!(!job.state.is_finished(), "job {id} finished twice");
        job.state = state.clone();
        self.persist(Record::JobFinished { job: id, state });
        let open: Vec<ChunkId> = self
            .chunks
            .range(ChunkId { job: id, index: 0 }..=ChunkId { job: id, index: u32::MAX })
            .map(|(c, _)| *c)
            .collect();
        self.jobs.get_mut(&id).expect("known job").open = 0;
        if !matches!(self.jobs[&id].state, JobState::Completed) {
            let checks: Vec<CheckId> = self
                .checks_by_chunk
                .range((ChunkId { job: id, index: 0 }, 0)..=(ChunkId { job: id, index: u32::MAX }, u64::MAX))
                .map(|(_, check)| *check)
                .collect();
            for check in checks {
                self.drop_check(check);
            }
        }
        for chunk_id in open {
            let chunk = self.chunks.remove(&chunk_id).expect("listed chunk");
            self.ready.remove(&chunk_id);
            for (assignment, worker) in chunk.running {
                self.release(assignment);
                self.send(worker, ToWorker::Cancel { assignment, reason: format!("job {id} finished") });
            }
        }
    }

    // -----------------------------------------------------------------------------------------
    // Results

    fn add_result(&mut self, now: u64, chunk_id: ChunkId, worker: WorkerId, assignment: AssignmentId, output: Output) {
        let spec = &self.jobs[&chunk_id.job].spec;
        let quorum = match spec.verification {
            Verification::Metered => 1,
            _ => spec.replicas,
        };
        let bound = quorum + self.config.extra_replicas_max;
        let digest = output.digest();
        let chunk = self.chunks.get_mut(&chunk_id).expect("results arrive for open chunks");
        assert!(chunk.results.iter().all(|r| r.worker != worker), "a worker produced two results for {chunk_id}");
        chunk.results.push(ResultEntry { worker, assignment, digest, output: output.clone() });
        if self.adaptive(chunk_id.job) {
            self.persist(Record::ResultReported { chunk: chunk_id, worker, assignment, digest, output });
            self.settle_adaptive(now, chunk_id);
            return;
        }
        if self.tolerance_rules(chunk_id).is_some() {
            self.persist(Record::ResultReported { chunk: chunk_id, worker, assignment, digest, output });
            self.pump_comparisons(now, chunk_id, 0);
            return;
        }
        let chunk = &self.chunks[&chunk_id];
        let votes = chunk.results.iter().filter(|r| r.digest == digest).count() as u32;
        if votes >= quorum {
            let how = match self.jobs[&chunk_id.job].spec.verification {
                Verification::Metered => "metered: one signed execution".to_string(),
                _ => format!("quorum of {quorum}"),
            };
            self.verify(now, chunk_id, digest, None, &how);
            return;
        }
        self.persist(Record::ResultReported { chunk: chunk_id, worker, assignment, digest, output });
        let chunk = self.chunks.get_mut(&chunk_id).expect("still open");
        let distinct = chunk.widen_on_disagreement(quorum, bound);
        if chunk.results.len() as u32 >= bound {
            let reason = format!(
                "no quorum: {} results with {distinct} different digests, none reached {quorum}",
                chunk.results.len()
            );
            self.fail_job_for_chunk(now, chunk_id, reason);
            return;
        }
        self.refresh_ready(chunk_id);
    }

    /// Accepts a chunk with the results of `digest`: final, or `provisional` on its worker's record.
    fn verify(&mut self, now: u64, chunk_id: ChunkId, digest: Digest, provisional: Option<Provisional>, how: &str) {
        let chunk = self.chunks.remove(&chunk_id).expect("verifying an open chunk");
        self.ready.remove(&chunk_id);
        let job = self.jobs.get_mut(&chunk_id.job).expect("chunk of a known job");
        assert!(job.verified.insert(chunk_id.index), "chunk {chunk_id} verified twice");
        job.open -= 1;
        let output = chunk.results.iter().find(|r| r.digest == digest).expect("a quorum digest").output.clone();
        let agreeing: Vec<WorkerId> = chunk.results.iter().filter(|r| r.digest == digest).map(|r| r.worker).collect();
        let disagreeing: Vec<WorkerId> =
            chunk.results.iter().filter(|r| r.digest != digest).map(|r| r.worker).collect();
        job.disagreements += disagreeing.len() as u64;
        if let Some(handoff) = Handoff::of(&job.spec.kind, &output) {
            assert_eq!(job.chain.len(), chunk_id.index as usize, "chained chunks are accepted in order");
            job.chain.push(handoff);
        }
        let complete = job.verified.len() as u64 == job.chunks_total;
        let next_in_chain = job.spec.kind.chained() && !complete;
        let finality = if provisional.is_some() { Finality::Provisional } else { Finality::Final };
        let is_md = matches!(output, Output::Md { .. });
        // A container's exit code is part of its verified result; one that is not 0 fails the job
        // (as jobs after it expect), with the output kept for `upglobe results`.
        let exited = match (&job.spec.kind, &output) {
            (JobKind::Command(CommandJob { container: Some(_), .. }), Output::Command { exit_code, .. })
                if *exit_code != 0 =>
            {
                Some(*exit_code)
            }
            _ => None,
        };
        self.persist(Record::ChunkVerified {
            chunk: chunk_id,
            digest,
            output,
            agreeing: agreeing.clone(),
            disagreeing: disagreeing.clone(),
            provisional: provisional.clone().map(Box::new),
        });
        let first = agreeing.first().copied();
        self.event(
            now,
            Some(chunk_id.job),
            Some(chunk_id.index),
            first,
            TrustEventKind::Accepted { finality, how: how.to_string() },
        );
        if let Some(provisional) = provisional {
            self.hold_provisional(now, chunk_id, provisional);
        } else if is_md {
            // Final at once: the workers may drop the chunk's intermediate states.
            for entry in &chunk.results {
                self.send(entry.worker, ToWorker::Settled { assignments: vec![entry.assignment] });
            }
        }
        for worker in disagreeing {
            self.record_disagreement(worker);
        }
        // Replicas still running are no longer needed.
        for (assignment, worker) in chunk.running {
            self.release(assignment);
            self.send(worker, ToWorker::Cancel { assignment, reason: format!("chunk {chunk_id} already verified") });
        }
        if let Some(code) = exited {
            let reason = format!("chunk {} exited with code {code}; its output is kept", chunk_id.index);
            self.fail_job_for_chunk(now, chunk_id, reason);
        } else if complete {
            self.finish_job(chunk_id.job, JobState::Completed);
            self.start_jobs(now);
        } else if next_in_chain {
            self.open_chunk(ChunkId { job: chunk_id.job, index: chunk_id.index + 1 });
        } else {
            self.fill_window(chunk_id.job);
        }
    }

    /// A worker's result disagreed with the accepted one: a failure on its record, as a failed
    /// check is (see [`trust`]).
    fn record_disagreement(&mut self, worker: WorkerId) {
        self.persist(Record::WorkerDisagreed { worker });
        // The failure count lives in the disagreements the store counts; see `Core::restore`.
        if let Some(w) = self.workers.get_mut(&worker) {
            w.standing.failures += 1;
        }
    }

    fn attempt_failed(&mut self, now: u64, chunk_id: ChunkId, worker: Option<WorkerId>, reason: String) {
        self.persist(Record::AttemptFailed { chunk: chunk_id, worker, reason: reason.clone() });
        let job = self.jobs.get_mut(&chunk_id.job).expect("known job");
        if job.failures.len() < FAILURES_KEPT_MAX {
            job.failures.push(Failure { chunk: chunk_id.index, worker, reason: reason.clone() });
        }
        let Some(chunk) = self.chunks.get_mut(&chunk_id) else {
            return;
        };
        chunk.attempts_failed += 1;
        chunk.failed_by.extend(worker);
        if chunk.attempts_failed >= self.config.attempts_max {
            let attempts = chunk.attempts_failed;
            self.fail_job_for_chunk(
                now,
                chunk_id,
                format!("chunk {} failed {attempts} times; last: {reason}", chunk_id.index),
            );
        } else {
            self.refresh_ready(chunk_id);
        }
    }

    fn fail_job_for_chunk(&mut self, now: u64, chunk_id: ChunkId, reason: String) {
        self.finish_job(chunk_id.job, JobState::Failed { reason });
        // Jobs after this one can no longer run.
        self.start_jobs(now);
    }

    // -----------------------------------------------------------------------------------------
    // Leases and dispatch

    fn release(&mut self, assignment: AssignmentId) {
        let lease = self.leases.remove(&assignment).expect("releasing a known lease");
        self.deadlines.remove(&(lease.deadline_ms, assignment));
        if let Some(worker) = self.workers.get_mut(&lease.worker) {
            worker.running.remove(&assignment);
            worker.free = worker.free.plus(&lease.resources);
            for &index in &lease.gpus {
                if let Some(busy) = worker.gpu_busy.get_mut(index) {
                    *busy = false;
                }
            }
        }
        if let Some(chunk) = self.chunks.get_mut(&lease.chunk) {
            chunk.running.remove(&assignment);
        }
    }

    /// Fails a lease; one already released (its job finished while others of its worker failed) is
    /// left alone.
    fn fail_lease(&mut self, now: u64, assignment: AssignmentId, reason: String) {
        let Some(lease) = self.leases.get(&assignment) else { return };
        let (chunk, worker, check) = (lease.chunk, lease.worker, lease.check);
        self.release(assignment);
        if let Some(id) = check {
            // A verifier that could not finish: the check waits for another.
            self.check_finished(now, id, None);
            return;
        }
        if self.jobs.get(&chunk.job).is_some_and(|j| j.state == JobState::Running) {
            self.attempt_failed(now, chunk, Some(worker), reason);
        }
    }

    /// Keeps `ready` in step with whether the chunk wants more assignments.
    fn refresh_ready(&mut self, chunk_id: ChunkId) {
        let chunk = &self.chunks[&chunk_id];
        if wanted(chunk) > 0 {
            self.ready.insert(chunk_id);
        } else {
            self.ready.remove(&chunk_id);
        }
    }

    /// Assigns ready chunks to workers with room, oldest jobs first, each replica to a different worker.
    fn schedule(&mut self, now: u64) {
        if !self.checks_waiting.is_empty() {
            self.place_checks(now);
        }
        // Walk the ready set with a cursor rather than a copy: when workers are full this returns at
        // once, however many chunks wait.
        let mut cursor = self.ready.first().copied();
        while let Some(chunk_id) = cursor {
            // Only workers that may run chunks count: a verifier's or a quarantined worker's free
            // cpus would otherwise make every call walk the whole ready set.
            let max = self.config.disagreements_max;
            let room =
                |w: &Worker| w.connected && w.role == NodeRole::Worker && w.standing.failures < max && w.free.cpus > 0;
            if !self.workers.values().any(room) {
                return;
            }
            while wanted(&self.chunks[&chunk_id]) > 0 {
                let Some(worker) = self.pick_worker(chunk_id) else {
                    break;
                };
                self.assign(now, chunk_id, worker);
            }
            self.refresh_ready(chunk_id);
            // A chunk left wanting may mean no worker has room for its job: then skip the rest of the
            // job's chunks in one step.
            let stuck = self.chunks.get(&chunk_id).is_some_and(|c| wanted(c) > 0);
            let next = if !stuck || self.placeable(chunk_id.job) {
                std::ops::Bound::Excluded(chunk_id)
            } else {
                std::ops::Bound::Included(ChunkId { job: JobId(chunk_id.job.0 + 1), index: 0 })
            };
            cursor = self.ready.range((next, std::ops::Bound::Unbounded)).next().copied();
        }
    }

    /// Whether a worker may run a job's chunks at all (not counting its free resources).
    fn may_run(&self, worker: &Worker, kind: &JobKind) -> bool {
        worker.connected
            && worker.role == NodeRole::Worker
            && worker.standing.failures < self.config.disagreements_max
            && match kind {
                JobKind::Command(CommandJob { container: Some(container), .. }) => {
                    worker.containers.is_some() && (!container.network || worker.allow_network)
                }
                JobKind::Command(_) => worker.allow_commands,
                JobKind::Md(_) | JobKind::Empty { .. } => true,
            }
    }

    fn pick_worker(&self, chunk_id: ChunkId) -> Option<WorkerId> {
        let job = &self.jobs[&chunk_id.job];
        let chunk = &self.chunks[&chunk_id];
        let needs = &job.spec.resources;
        // Replicas of one chunk come from different owners: a lab's workers never confirm each other.
        let owners: BTreeSet<&str> = chunk
            .results
            .iter()
            .map(|r| r.worker)
            .chain(chunk.running.values().copied())
            .filter_map(|w| self.workers.get(&w))
            .map(|w| w.owner.as_str())
            .collect();
        let eligible = |id: &WorkerId, w: &Worker| {
            self.may_run(w, &job.spec.kind)
                && !chunk.results.iter().any(|r| r.worker == *id)
                && !chunk.running.values().any(|r| r == id)
                && !chunk.excluded.contains(id)
                && !owners.contains(w.owner.as_str())
        };
        // A worker that failed this chunk runs it again only when no other could: otherwise one broken
        // worker, freed at once by its failures, would use up every attempt while healthy ones are busy.
        let others_exist = self.workers.iter().any(|(id, w)| eligible(id, w) && !chunk.failed_by.contains(id));
        // The chunk's inputs once, not per comparison.
        let inputs = self.chunk_inputs(chunk_id);
        let held = |w: &Worker| {
            let bytes = Self::held_bytes(w, &inputs);
            if bytes >= LOCALITY_BYTES_MIN { bytes } else { 0 }
        };
        self.workers
            .iter()
            .filter(|(id, w)| {
                eligible(id, w)
                    && needs.fits_in(&w.free)
                    && gpus_for(w, needs.gpus, &job.spec.gpu).is_some()
                    && (!others_exist || !chunk.failed_by.contains(id))
            })
            // Locality first, where it matters: bytes of the chunk's inputs the worker already holds
            // need not move. Below LOCALITY_BYTES_MIN moving them costs less than piling work on one
            // worker (and replicas of small MD chains should meet different workers).
            .min_by(|(a_id, a), (b_id, b)| {
                let (held_a, held_b) = (held(a), held(b));
                held_b.cmp(&held_a).then(placement_order(a, b)).then(a_id.cmp(b_id))
            })
            .map(|(id, _)| *id)
    }

    /// A chunk's input blobs with their sizes (an MD state's, estimated from its atoms).
    fn chunk_inputs(&self, chunk_id: ChunkId) -> Vec<(BlobHash, u64)> {
        match &self.jobs[&chunk_id.job].spec.kind {
            JobKind::Md(md) => {
                let size = md.atoms.saturating_mul(STATE_BYTES_PER_ATOM);
                self.chunks.get(&chunk_id).and_then(|c| c.input).map(|i| (i, size)).into_iter().collect()
            }
            JobKind::Command(command) => {
                let handed = self.jobs[&chunk_id.job].checkpoint_files(chunk_id.index);
                command.inputs.iter().chain(handed).map(|f| (f.blob, f.size.max(1))).collect()
            }
            JobKind::Empty { .. } => Vec::new(),
        }
    }

    /// Bytes of `inputs` a worker holds.
    fn held_bytes(worker: &Worker, inputs: &[(BlobHash, u64)]) -> u64 {
        inputs.iter().filter(|(blob, _)| worker.holding.confirmed(blob)).map(|(_, size)| size).sum()
    }

    /// Why no worker takes a job's chunks, when none could even if it were idle: the resource no
    /// connected worker has enough of, and the most any has. `None` when some worker could (it is
    /// only busy).
    fn why_waiting(&self, job: JobId) -> Option<String> {
        let spec = &self.jobs[&job].spec;
        let able: Vec<&Worker> = self.workers.values().filter(|w| self.may_run(w, &spec.kind)).collect();
        if able.is_empty() {
            return Some(match &spec.kind {
                JobKind::Command(CommandJob { container: Some(container), .. }) if container.network => {
                    "no connected worker runs containers with a network (workers need a dockerd and --allow-network)"
                        .into()
                }
                JobKind::Command(CommandJob { container: Some(_), .. }) => {
                    "no connected worker runs containers (workers need a dockerd they can reach)".into()
                }
                JobKind::Command(_) => "no connected worker runs commands (workers need --allow-commands)".into(),
                _ => "no worker is connected".into(),
            });
        }
        let needs = &spec.resources;
        if let Some(reason) = why_no_gpu(&able, needs.gpus, &spec.gpu) {
            return Some(reason);
        }
        if able.iter().any(|w| needs.fits_in(&w.capacity)) {
            return None;
        }
        let most = |of: fn(&Resources) -> u64| able.iter().map(|w| of(&w.capacity)).max().unwrap_or(0);
        let reasons = [
            (needs.gpus as u64 > most(|r| r.gpus as u64)).then(|| {
                format!("no worker has {} GPUs (the most any has is {})", needs.gpus, most(|r| r.gpus as u64))
            }),
            (needs.cpus as u64 > most(|r| r.cpus as u64)).then(|| {
                format!("no worker has {} cpus (the most any has is {})", needs.cpus, most(|r| r.cpus as u64))
            }),
            (needs.memory_bytes > most(|r| r.memory_bytes)).then(|| {
                format!(
                    "no worker has {} of memory (the most any has is {})",
                    gib(needs.memory_bytes),
                    gib(most(|r| r.memory_bytes))
                )
            }),
        ];
        let reasons: Vec<String> = reasons.into_iter().flatten().collect();
        Some(if reasons.is_empty() {
            "no single worker has all of the cpus, memory and GPUs it asks for".into()
        } else {
            reasons.join("; ")
        })
    }

    /// Whether some worker has room for a job's chunks right now.
    fn placeable(&self, job: JobId) -> bool {
        let spec = &self.jobs[&job].spec;
        self.workers.values().any(|w| {
            self.may_run(w, &spec.kind)
                && spec.resources.fits_in(&w.free)
                && gpus_for(w, spec.resources.gpus, &spec.gpu).is_some()
        })
    }

    fn assign(&mut self, now: u64, chunk_id: ChunkId, worker: WorkerId) {
        let chunk = &self.chunks[&chunk_id];
        if self.adaptive(chunk_id.job) && chunk.results.is_empty() && chunk.running.is_empty() {
            // The first worker's standing decides: a trusted one runs the chunk alone.
            let target = self.adaptive_target(chunk_id, worker);
            self.chunks.get_mut(&chunk_id).expect("open").target = target;
        }
        let inputs = self.chunk_inputs(chunk_id);
        let w = &self.workers[&worker];
        let local = inputs.iter().all(|(blob, _)| w.holding.confirmed(blob));
        if let Some(job) = self.jobs.get_mut(&chunk_id.job) {
            job.placed += 1;
            job.placed_local += u64::from(local && !inputs.is_empty());
        }
        let task = self.task(chunk_id);
        let id = self.lease(now, chunk_id, worker, task, None);
        self.chunks.get_mut(&chunk_id).expect("assigning an open chunk").running.insert(id, worker);
    }

    /// Takes the resources of an assignment on a worker and sends it.
    fn lease(
        &mut self,
        now: u64,
        chunk_id: ChunkId,
        worker: WorkerId,
        task: Task,
        check: Option<CheckId>,
    ) -> AssignmentId {
        let id = AssignmentId(self.next_assignment);
        self.next_assignment += 1;
        assert!(self.next_assignment & ((1 << ASSIGNMENT_COUNTER_BITS) - 1) != 0, "assignment counter exhausted");
        let resources = match check {
            Some(_) => check_resources(&self.jobs[&chunk_id.job].spec.resources),
            None => self.jobs[&chunk_id.job].spec.resources,
        };
        let deadline_ms = now + self.config.lease_timeout_ms;
        let input = match &task {
            Task::Md { input, .. } => Some(*input),
            _ => None,
        };
        let sources = self.peer_sources(worker, &task);
        let request = &self.jobs[&chunk_id.job].spec.gpu;
        let backend = request.backend.clone();
        let gpus = gpus_for(&self.workers[&worker], resources.gpus, request)
            .expect("a task is placed only where its GPUs are free");
        let w = self.workers.get_mut(&worker).expect("assigning to a known worker");
        w.free = w.free.minus(&resources);
        w.running.insert(id);
        w.last_assigned = id.0;
        for &index in &gpus {
            w.gpu_busy[index] = true;
        }
        let uuids = gpus.iter().map(|&index| w.gpus[index].uuid.clone()).collect();
        let lease = Lease { chunk: chunk_id, worker, resources, deadline_ms, steps_done: 0, input, check, gpus };
        self.leases.insert(id, lease);
        self.deadlines.insert((deadline_ms, id));
        let assignment = Assignment { id, chunk: chunk_id, task, resources, sources, gpus: uuids, backend };
        self.send(worker, ToWorker::Assign(assignment));
        id
    }

    /// Other connected workers that hold a task's inputs and serve peers: the assignee fetches
    /// from them beside the scheduler (each slice verified, a bad source dropped), so a popular
    /// input leaves the scheduler once per few workers, not once per worker.
    fn peer_sources(&self, assignee: WorkerId, task: &Task) -> Vec<PeerSource> {
        let inputs: Vec<BlobHash> = match task {
            Task::Md { input, .. } => vec![*input],
            Task::Command { inputs, .. } => inputs.iter().map(|f| f.blob).collect(),
            Task::Empty { .. } => Vec::new(),
        };
        let mut sources = Vec::new();
        for blob in inputs {
            for (id, w) in &self.workers {
                if sources.len() >= upglobe_protocol::messages::limits::PEER_SOURCES_MAX {
                    return sources;
                }
                if *id == assignee || !w.connected || !w.holding.contains(&blob) {
                    continue;
                }
                if let Some(address) = &w.peer_address {
                    sources.push(PeerSource { blob, worker: *id, address: address.clone() });
                }
            }
        }
        sources
    }

    fn task(&self, chunk_id: ChunkId) -> Task {
        let job = &self.jobs[&chunk_id.job];
        let chunk = &self.chunks[&chunk_id];
        match &job.spec.kind {
            JobKind::Md(md) => Task::Md {
                input: chunk.input.expect("md chunks have an input"),
                steps: md.chunk_steps,
                thermo_every: md.thermo_every,
                thermo_at_start: chunk_id.index == 0,
                chain_every: md.chunk_steps / self.chain_links_of(chunk_id.job) as u64,
            },
            JobKind::Command(command) => {
                // The job's inputs, then (a checkpointed job's chunk k > 0) the checkpoint files of
                // accepted chunk k-1, whose names the submission check keeps apart from the inputs'.
                let inputs = command.inputs.iter().chain(job.checkpoint_files(chunk_id.index)).cloned().collect();
                Task::Command {
                    argv: command_argv(command, chunk_id.index),
                    inputs,
                    outputs: command.outputs.clone(),
                    timeout_s: command.timeout_s,
                    container: command.container.clone(),
                }
            }
            JobKind::Empty { .. } => Task::Empty { value: chunk_id.index as u64 },
        }
    }

    // -----------------------------------------------------------------------------------------
    // Queries

    /// Resolves a job given by id or by `workflow.job` name (the newest such job).
    pub fn find_job(&self, text: &str) -> Option<JobId> {
        if text.len() > upglobe_protocol::messages::limits::QUERY_BYTES_MAX {
            return None;
        }
        if let Ok(id) = text.parse::<u64>() {
            return self.jobs.contains_key(&JobId(id)).then_some(JobId(id));
        }
        let (workflow, job) = text.split_once('.')?;
        self.jobs
            .iter()
            .rev()
            .find(|(_, j)| j.name == job && self.workflows[&j.workflow].name == workflow)
            .map(|(id, _)| *id)
    }

    /// Whether `assignment` still runs.
    pub fn is_running(&self, assignment: AssignmentId) -> bool {
        self.leases.contains_key(&assignment)
    }

    /// The chunk `worker` runs under `assignment`, if it does.
    pub fn running_chunk(&self, worker: WorkerId, assignment: AssignmentId) -> Option<ChunkId> {
        self.leases.get(&assignment).filter(|lease| lease.worker == worker).map(|lease| lease.chunk)
    }

    /// Whether a job has finished (completed, failed or cancelled); `None` for an unknown job.
    pub fn job_finished(&self, id: JobId) -> Option<bool> {
        self.jobs.get(&id).map(|job| job.state.is_finished())
    }

    pub fn job_status(&self, now: u64, id: JobId) -> Option<JobStatus> {
        self.status_with(now, id, &self.in_flight())
    }

    pub fn job_statuses(&self, now: u64) -> Vec<JobStatus> {
        let in_flight = self.in_flight();
        self.jobs.keys().filter_map(|id| self.status_with(now, *id, &in_flight)).collect()
    }

    /// Running chunks with their furthest replica's steps, from the leases (bounded by the workers'
    /// slots), not the open chunks (up to the job's size): a status poll must not cost more as jobs grow.
    fn in_flight(&self) -> BTreeMap<ChunkId, u64> {
        let mut in_flight: BTreeMap<ChunkId, u64> = BTreeMap::new();
        for lease in self.leases.values() {
            let steps = in_flight.entry(lease.chunk).or_default();
            *steps = (*steps).max(lease.steps_done);
        }
        in_flight
    }

    fn status_with(&self, now: u64, id: JobId, in_flight: &BTreeMap<ChunkId, u64>) -> Option<JobStatus> {
        let job = self.jobs.get(&id)?;
        let mut running = 0;
        let mut steps_in_flight = 0;
        for (_, steps) in in_flight.range(ChunkId { job: id, index: 0 }..=ChunkId { job: id, index: u32::MAX }) {
            running += 1;
            steps_in_flight += steps;
        }
        Some(JobStatus {
            id,
            workflow: job.workflow,
            workflow_name: self.workflows[&job.workflow].name.clone(),
            name: job.name.clone(),
            kind: job.spec.kind.name().to_string(),
            state: job.state.clone(),
            chunks_total: job.chunks_total,
            chunks_verified: job.verified.len() as u64,
            chunks_final: job.verified.len() as u64 - job.provisional.len() as u64,
            chunks_running: running,
            steps_in_flight,
            running_ms: job.started_ms.map_or(0, |s| now.saturating_sub(s)),
            failures: job.failures.clone(),
            disagreements: job.disagreements,
            assignments: job.placed,
            assignments_local: job.placed_local,
            waiting: (job.state == JobState::Running && running == 0 && job.open > 0)
                .then(|| self.why_waiting(id))
                .flatten(),
        })
    }

    pub fn job_spec(&self, id: JobId) -> Option<&JobSpec> {
        self.jobs.get(&id).map(|j| &j.spec)
    }

    pub fn workers(&self) -> Vec<WorkerStatus> {
        self.workers
            .iter()
            .map(|(id, w)| WorkerStatus {
                id: *id,
                name: w.name.clone(),
                connected: w.connected,
                device: w.device.clone(),
                resources: w.capacity,
                running: w.running.len() as u64,
                completed: w.completed,
                disagreements: w.standing.failures,
                quarantined: w.standing.failures >= self.config.disagreements_max,
                role: w.role,
                owner: w.owner.clone(),
                standing: self.standing_label(w),
                audits_passed: w.standing.audits_passed,
                audits_failed: w.standing.audits_failed,
                gpus: w.gpus.clone(),
                adapters: w.adapters.clone(),
                containers: w.containers.clone(),
                busy: w.capacity.minus(&w.free),
            })
            .collect()
    }

    /// A job's verification policy and how many of its chunks are final and provisional.
    pub fn verification_summary(&self, id: JobId) -> Option<(Verification, u64, u64)> {
        let job = self.jobs.get(&id)?;
        let provisional = job.provisional.len() as u64;
        Some((job.spec.verification.clone(), job.verified.len() as u64 - provisional, provisional))
    }

    /// Checks that the indexes agree with each other; for tests (the simulation calls it after every
    /// event).
    pub fn check_invariants(&self) {
        for (id, lease) in &self.leases {
            assert!(self.deadlines.contains(&(lease.deadline_ms, *id)), "lease {id} without deadline");
            assert!(self.workers[&lease.worker].running.contains(id), "lease {id} unknown to its worker");
            if let Some(check) = lease.check {
                assert_eq!(self.checks[&check].verifier, Some(*id), "lease {id} of check {check}");
                continue;
            }
            let chunk = self.chunks.get(&lease.chunk).unwrap_or_else(|| panic!("lease {id} of a closed chunk"));
            assert_eq!(chunk.running.get(id), Some(&lease.worker));
        }
        assert_eq!(self.deadlines.len(), self.leases.len());
        for (id, worker) in &self.workers {
            let used = worker.running.iter().fold(Resources::default(), |sum, a| sum.plus(&self.leases[a].resources));
            assert_eq!(worker.free.plus(&used), worker.capacity, "worker {} resources", id.short());
            // Each described GPU is held by at most one lease, and the busy marks are exactly theirs.
            let mut held = vec![false; worker.gpus.len()];
            for index in worker.running.iter().flat_map(|a| &self.leases[a].gpus) {
                assert!(!std::mem::replace(&mut held[*index], true), "GPU {index} of {} held twice", id.short());
            }
            assert_eq!(held, worker.gpu_busy, "GPU marks of worker {}", id.short());
            assert!(worker.connected || worker.running.is_empty());
        }
        for (id, job) in &self.jobs {
            let open =
                self.chunks.range(ChunkId { job: *id, index: 0 }..=ChunkId { job: *id, index: u32::MAX }).count();
            assert_eq!(job.open, open as u64, "open count of job {id}");
        }
        for (chunk_id, chunk) in &self.chunks {
            let job = &self.jobs[&chunk_id.job];
            assert_eq!(job.state, JobState::Running, "open chunk {chunk_id} of a job that is not running");
            assert!(!job.verified.contains(&chunk_id.index), "open chunk {chunk_id} already verified");
            assert_eq!(self.ready.contains(chunk_id), wanted(chunk) > 0, "ready set out of step for {chunk_id}");
            let mut workers: Vec<WorkerId> =
                chunk.results.iter().map(|r| r.worker).chain(chunk.running.values().copied()).collect();
            let count = workers.len();
            workers.sort();
            workers.dedup();
            assert_eq!(workers.len(), count, "chunk {chunk_id} has two replicas on one worker");
        }
        self.check_trust_invariants();
    }
}

impl Chunk {
    /// On disagreement, asks for enough further results to let the leading digest reach a quorum
    /// (never beyond `bound`, never fewer than already asked). Returns how many digests differ.
    fn widen_on_disagreement(&mut self, quorum: u32, bound: u32) -> usize {
        let distinct = self.results.iter().map(|r| r.digest).collect::<BTreeSet<_>>().len();
        if distinct > 1 {
            let best = best_votes(&self.results);
            self.target = (self.results.len() as u32 + quorum - best).min(bound).max(self.target);
        }
        distinct
    }
}

/// Inputs a worker holds count for placing a chunk from this size on (about a second on a home
/// link); smaller ones move faster than the work they would pile on one worker.
pub const LOCALITY_BYTES_MIN: u64 = 64 << 20;
/// About what an MD state takes per atom (positions, velocities, images: integers).
const STATE_BYTES_PER_ATOM: u64 = 56;

/// Which of two workers should take the next chunk: the less loaded (the smaller share of its cpus
/// in use), then the one that has waited longer since its last assignment.
fn placement_order(a: &Worker, b: &Worker) -> std::cmp::Ordering {
    let used = |w: &Worker| (w.capacity.cpus - w.free.cpus) as u64;
    // used_a / capacity_a against used_b / capacity_b, without division.
    let load_a = used(a) * b.capacity.cpus.max(1) as u64;
    let load_b = used(b) * a.capacity.cpus.max(1) as u64;
    load_a.cmp(&load_b).then(a.last_assigned.cmp(&b.last_assigned))
}

/// A set of chunk indexes, one bit each (125 KB for a million chunks, against ~10 MB as a BTreeSet).
#[derive(Debug, Clone, Default)]
struct IndexSet {
    words: Vec<u64>,
    len: u64,
}

impl IndexSet {
    /// Whether the index was not yet in the set.
    fn insert(&mut self, index: u32) -> bool {
        let word = (index / 64) as usize;
        if self.words.len() <= word {
            self.words.resize(word + 1, 0);
        }
        let mask = 1u64 << (index % 64);
        let new = self.words[word] & mask == 0;
        self.words[word] |= mask;
        self.len += new as u64;
        new
    }

    fn contains(&self, index: &u32) -> bool {
        self.words.get((*index / 64) as usize).is_some_and(|w| w >> (*index % 64) & 1 == 1)
    }

    fn len(&self) -> usize {
        self.len as usize
    }

    /// Removes every index from `first` on.
    fn truncate(&mut self, first: u32) {
        let word = (first / 64) as usize;
        if word < self.words.len() {
            self.words[word] &= (1u64 << (first % 64)) - 1;
            self.words.truncate(word + 1);
        }
        self.len = self.words.iter().map(|w| w.count_ones() as u64).sum();
    }
}

/// The arguments of a command's chunk: an array task's with `{task}` replaced by its id; a
/// checkpointed job's `argv` for chunk 0 and `resume` after it, with `{chunk}` replaced by the index
/// and `{chunks}` by their number. Neither number is longer than its placeholder (at most
/// `CHUNKS_PER_JOB_MAX`, eight digits), so the arguments stay within the bounds they were checked
/// against.
fn command_argv(command: &CommandJob, index: u32) -> Vec<String> {
    if let Some(contract) = &command.checkpoint {
        let template = if index == 0 { &command.argv } else { &contract.resume };
        let (chunk, chunks) = (index.to_string(), contract.chunks.to_string());
        return template.iter().map(|a| a.replace("{chunks}", &chunks).replace("{chunk}", &chunk)).collect();
    }
    match command.tasks.get(index as u64) {
        Some(task) => command.argv.iter().map(|a| a.replace("{task}", &task.to_string())).collect(),
        None => command.argv.clone(),
    }
}

fn wanted(chunk: &Chunk) -> u32 {
    if chunk.dispute.is_some() {
        return 0;
    }
    chunk.target.saturating_sub(chunk.results.len() as u32 + chunk.running.len() as u32)
}

fn best_votes(results: &[ResultEntry]) -> u32 {
    let mut counts: BTreeMap<Digest, u32> = BTreeMap::new();
    for result in results {
        *counts.entry(result.digest).or_default() += 1;
    }
    counts.values().copied().max().unwrap_or(0)
}

fn truncate(mut reason: String) -> String {
    let limit = upglobe_protocol::messages::limits::REASON_BYTES_MAX;
    if reason.len() > limit {
        let mut end = limit;
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        reason.truncate(end);
        reason.push('…');
    }
    reason
}

/// What a verifier's check of a job's chunk holds: the job's cpus and memory, not its GPUs (the
/// check runs on the verifier's own reference device).
fn check_resources(job: &Resources) -> Resources {
    Resources { gpus: 0, ..*job }
}

/// Whether one of a worker's adapters, as workers describe them (`NAME (backend, type, driver)`,
/// where the name and the driver may hold parentheses of their own), runs on `backend`.
fn has_backend(worker: &Worker, backend: &str) -> bool {
    let marker = format!("({backend}, ");
    worker.adapters.iter().any(|adapter| adapter.contains(&marker))
}

/// Bytes in GiB, for the reasons a job waits.
fn gib(bytes: u64) -> String {
    format!("{:.1} GiB", bytes as f64 / (1u64 << 30) as f64)
}

/// The worker's GPUs a task of a job may take now: `count` free ones with the memory the job asks
/// for, on a worker with an adapter of its backend. A worker that counts GPUs without describing
/// them (no NVML) offers them only to jobs that ask nothing of their memory. `None`: not here.
fn gpus_for(worker: &Worker, count: u32, request: &GpuRequest) -> Option<Vec<usize>> {
    if count == 0 {
        return Some(Vec::new());
    }
    if let Some(backend) = &request.backend
        && !has_backend(worker, backend)
    {
        return None;
    }
    if worker.gpus.is_empty() {
        return (request.vram_bytes == 0).then(Vec::new);
    }
    let free: Vec<usize> = (0..worker.gpus.len())
        .filter(|&i| !worker.gpu_busy[i] && worker.gpus[i].vram_free_bytes >= request.vram_bytes)
        .take(count as usize)
        .collect();
    (free.len() == count as usize).then_some(free)
}

/// Why no worker able to run a job could ever give it GPUs as it asks, if that is why it waits.
fn why_no_gpu(able: &[&Worker], count: u32, request: &GpuRequest) -> Option<String> {
    if count == 0 {
        return None;
    }
    if let Some(backend) = &request.backend
        && !able.iter().any(|w| has_backend(w, backend))
    {
        return Some(format!("no worker has a GPU adapter on the {backend} backend"));
    }
    if request.vram_bytes == 0 {
        return None;
    }
    let enough = |w: &Worker| w.gpus.iter().filter(|g| g.vram_free_bytes >= request.vram_bytes).count();
    if able.iter().any(|w| enough(w) >= count as usize) {
        return None;
    }
    let most = able.iter().flat_map(|w| w.gpus.iter().map(|g| g.vram_free_bytes)).max().unwrap_or(0);
    let gpus = if count == 1 { "a GPU".to_string() } else { format!("{count} GPUs") };
    Some(format!("no worker has {gpus} with {} free (the most any GPU has is {})", gib(request.vram_bytes), gib(most)))
}
