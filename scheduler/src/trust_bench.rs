//! `upglobe bench trust`: a seeded simulation of adaptive verification on the real scheduler
//! [`Core`], with honest workers, verifier nodes and cheaters, measuring what trust costs and what
//! it catches.
//!
//! The workload is many MD jobs of equal chunks, all submitted at time 0. The simulated kernel is a
//! hash chain: the state after one link of a chunk is `H(state before it)`, so every output is a pure
//! function of the task's actual input blob. A wrong input therefore propagates into every chunk
//! chained after it, exactly as a wrong MD state would; ground truth is the honest chain from each
//! job's initial state.
//!
//! Cheaters, and what cheating saves them (the economic reason to cheat):
//! - **always wrong**: forges every result from a random link `L` on. Forging saves the links it does
//!   not compute: the forged result arrives after `L / links` of an honest run's time (plus a small
//!   fixed cost), so the cheater is paid for a whole chunk and does on average half of it.
//! - **rarely wrong**: forges 1 % of its results the same way (a flaky or occasionally greedy node).
//! - **lazy copier**: computes nothing. If another node has already returned a result for the same
//!   chunk and input it copies it; otherwise it forges the whole chain (`L = 0`). Either way it
//!   answers after a few percent of a chunk's time, and it holds no intermediate state to serve.
//! - **colluding pairs**: two nodes of different owners that forge 10 % of chunks with a shared
//!   forgery (the decision and the forged chain are derived from the pair's secret, the chunk and its
//!   input), so whenever both hold the same chunk they return the same wrong result.
//! - **until trusted**: honest until its published standing says it is trusted (it reads the core's
//!   `Standing` records, as an operator reads `upglobe workers`), then forges 20 % of its results.
//!
//! A forged link is not the hash of the state before it, so a verifier that re-runs any link from `L`
//! on finds it out; asked to serve the state at the start of a link it forged, a cheater cannot (it
//! answers with an error, or, for the always-wrong kind, not at all, so serve deadlines run out).
//! States before `L` it serves honestly.
//!
//! Metrics: `cost_of_trust` is every completed execution's steps (workers, cheaters included, and
//! verifiers: audits, disputes, re-checks) over the useful steps (`chunks × chunk_steps`); the
//! baseline runs the same workload and nodes with `Verification::Quorum`, 2 replicas, no verifiers.
//! A cheater is caught when the core records its first failure (`Record::WorkerDisagreed`). Wrong
//! results accepted are chunks of the accepted chains at the end (`ChunkVerified` minus
//! `Invalidated` tails) whose state differs from ground truth.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap};

use serde::Serialize;
use upglobe_protocol::messages::{
    Assignment, Hello, JobKind, JobSpec, JobState, MdJob, Outcome, Output, Progress, Resources, Submission, Task,
    ThermoLine, ToWorker,
};
use upglobe_protocol::trust::{NodeRole, ResultStatement, SigningKey, Usage, Verification};
use upglobe_protocol::{AssignmentId, BlobHash, ChunkId, JobId, WorkerId};

use crate::core::{Action, BlobFact, Config, Core, Evidence, Finished, Record};

/// Bytes of every simulated checkpoint.
const CHECKPOINT_BYTES: u64 = 1 << 20;
/// Atoms of every simulated system: small enough that a chunk's stake is 1.
const ATOMS: u64 = 10_000;
/// Workers report their running assignments this often.
const HEARTBEAT_MS: u64 = 10_000;
/// A node answers a serve request after this long.
const SERVE_DELAY_MS: u64 = 500;
/// A forged or copied result still costs the cheater this share of an honest chunk (uploading,
/// bookkeeping).
const CHEAT_OVERHEAD: f64 = 0.02;

/// What to simulate.
#[derive(Debug, Clone, PartialEq)]
pub struct TrustBenchConfig {
    pub seed: u64,
    /// Chunks in all (rounded down to whole jobs).
    pub chunks: u64,
    pub chunks_per_job: u32,
    pub chunk_steps: u64,
    /// Simulated time of one chunk on a node of speed 1.
    pub chunk_ms: u64,
    pub honest_workers: u32,
    pub verifiers: u32,
    /// Cpus of every worker and verifier (every chunk takes one).
    pub cpus_per_node: u32,
    pub always_wrong: u32,
    pub rarely_wrong: u32,
    pub rarely_wrong_rate: f64,
    pub lazy_copiers: u32,
    pub colluding_pairs: u32,
    pub colluding_rate: f64,
    pub until_trusted: u32,
    pub until_trusted_rate: f64,
    /// The simulation stops after this many events, finished or not.
    pub events_max: u64,
    /// Calls [`Core::check_invariants`] every this many events (0: never).
    pub check_invariants_every: u64,
    /// Prints progress to stderr.
    pub progress: bool,
    pub core: Config,
}

impl Default for TrustBenchConfig {
    fn default() -> TrustBenchConfig {
        TrustBenchConfig {
            seed: 1,
            chunks: 100_000,
            chunks_per_job: 100,
            chunk_steps: 1600,
            chunk_ms: 16_000,
            // Few enough that each cheater returns hundreds of results: a "1 %" cheater must make
            // enough wrong results for its rate to mean something.
            honest_workers: 40,
            verifiers: 4,
            cpus_per_node: 4,
            always_wrong: 2,
            rarely_wrong: 4,
            rarely_wrong_rate: 0.01,
            lazy_copiers: 2,
            colluding_pairs: 2,
            colluding_rate: 0.10,
            until_trusted: 4,
            until_trusted_rate: 0.20,
            events_max: 50_000_000,
            check_invariants_every: if cfg!(debug_assertions) { 1000 } else { 0 },
            progress: false,
            core: bench_core_config(),
        }
    }
}

/// The core settings the bench runs with by default: the scheduler's, with a challenge window
/// longer than the run, so a cheater caught at any time still gets every result it holds re-checked
/// (with an hour, results of a cheater caught later than that would stay).
pub fn bench_core_config() -> Config {
    Config { settle_after_ms: 6 * 3_600_000, ..Config::default() }
}

/// What one run found.
#[derive(Debug, Clone, Serialize)]
pub struct TrustBenchReport {
    pub seed: u64,
    pub chunks: u64,
    pub chunk_steps: u64,
    /// Executed steps (workers and verifiers) over useful steps, adaptive verification.
    pub cost_of_trust: f64,
    /// Share of the cheaters that cheat on at least 1 % of chunks and returned a wrong result that
    /// the core caught.
    pub detection_rate: f64,
    /// Accepted chunks at the end whose state differs from ground truth.
    pub wrong_results_accepted: u64,
    pub wrong_final_per_chunk: f64,
    /// Over caught cheaters: results it returned before it was caught.
    pub mean_chunks_to_detection: f64,
    /// The same workload under a quorum of 2 and no verifiers.
    pub baseline_quorum2_cost: f64,
    pub baseline_quorum2_wrong_results_accepted: u64,
    pub cheaters: u32,
    pub cheaters_counted: u32,
    pub cheaters_caught: u32,
    pub adaptive: RunReport,
    pub baseline_quorum2: RunReport,
}

/// One simulated run in detail.
#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    pub policy: String,
    /// Nothing was left outstanding (no event, no timer) within the event bound.
    pub finished: bool,
    pub jobs_completed: u64,
    pub jobs_failed: u64,
    pub cost: f64,
    pub worker_steps: u64,
    pub verifier_interval_steps: u64,
    pub verifier_recheck_steps: u64,
    /// Steps of executions cancelled before they finished (not counted in the cost).
    pub cancelled_steps: u64,
    pub executions: u64,
    pub verifier_executions: u64,
    pub audits_ordered: u64,
    pub audits_passed: u64,
    pub audits_failed: u64,
    pub disputes: u64,
    pub rechecks: u64,
    pub invalidations: u64,
    pub invalidated_chunks: u64,
    pub wrong_results_returned: u64,
    pub wrong_results_accepted: u64,
    /// The first wrong accepted chunk of each job whose chain went wrong, by how the core accepted
    /// (and finalized) it: where wrong results get through.
    pub wrong_roots_by_decision: BTreeMap<String, u64>,
    /// Honest workers the core counted a failure against (false accusations).
    pub honest_workers_accused: u64,
    pub detection_rate: f64,
    pub mean_chunks_to_detection: f64,
    pub per_kind: BTreeMap<String, KindReport>,
    /// When the last chunk was accepted (the makespan), and when the last challenge window closed.
    pub last_accepted_ms: u64,
    pub simulated_ms: u64,
    pub events: u64,
}

/// The cheaters of one kind.
#[derive(Debug, Clone, Default, Serialize)]
pub struct KindReport {
    pub nodes: u32,
    /// Those that returned at least one wrong result.
    pub cheated: u32,
    pub caught: u32,
    pub results: u64,
    pub wrong_results: u64,
    /// Results returned before being caught, summed over the caught ones.
    pub results_before_caught: u64,
}

/// Runs the adaptive simulation and its quorum-of-2 baseline.
pub fn run(config: &TrustBenchConfig) -> TrustBenchReport {
    let adaptive = simulate(config, Policy::Adaptive);
    let baseline = simulate(config, Policy::Quorum2);
    let counted: Vec<&SimNode> = adaptive.nodes.iter().filter(|n| n.counted()).collect();
    let caught: Vec<&&SimNode> = counted.iter().filter(|n| n.caught_after.is_some()).collect();
    TrustBenchReport {
        seed: config.seed,
        chunks: adaptive.chunks,
        chunk_steps: config.chunk_steps,
        cost_of_trust: adaptive.report.cost,
        detection_rate: adaptive.report.detection_rate,
        wrong_results_accepted: adaptive.report.wrong_results_accepted,
        wrong_final_per_chunk: adaptive.report.wrong_results_accepted as f64 / adaptive.chunks.max(1) as f64,
        mean_chunks_to_detection: adaptive.report.mean_chunks_to_detection,
        baseline_quorum2_cost: baseline.report.cost,
        baseline_quorum2_wrong_results_accepted: baseline.report.wrong_results_accepted,
        cheaters: adaptive.nodes.iter().filter(|n| n.kind.is_cheater()).count() as u32,
        cheaters_counted: counted.len() as u32,
        cheaters_caught: caught.len() as u32,
        adaptive: adaptive.report,
        baseline_quorum2: baseline.report,
    }
}

// ---------------------------------------------------------------------------------------------
// The simulated kernel

type State = [u8; 32];

fn hash(parts: &[&[u8]]) -> State {
    let mut hasher = blake3::Hasher::new();
    for part in parts {
        hasher.update(&(part.len() as u64).to_le_bytes());
        hasher.update(part);
    }
    *hasher.finalize().as_bytes()
}

/// One link of the kernel: the state after `chain_every` steps.
fn advance(state: &State) -> State {
    hash(&[b"link", state])
}

fn checkpoint_of(state: &State) -> BlobHash {
    BlobHash(hash(&[b"checkpoint", state]))
}

/// A value in [0, 1) from a hash.
fn unit(state: &State) -> f64 {
    (u64::from_le_bytes(state[..8].try_into().expect("8 bytes")) >> 11) as f64 / (1u64 << 53) as f64
}

/// How a result is made: honestly from its input state, or with links forged from `from_link` on.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Recipe {
    input: State,
    forgery: Option<Forgery>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
struct Forgery {
    key: State,
    from_link: u32,
}

impl Recipe {
    /// The states at the ends of the first `links` links.
    fn chain(&self, links: u32) -> Vec<State> {
        let mut chain = Vec::with_capacity(links as usize);
        let mut state = self.input;
        for link in 0..links {
            state = match self.forgery {
                Some(f) if link >= f.from_link => hash(&[b"forged", &f.key, &link.to_le_bytes()]),
                _ => advance(&state),
            };
            chain.push(state);
        }
        chain
    }

    /// The state at the start of `link`, if the maker computed it (forged states it cannot serve).
    fn start_of(&self, link: u32) -> Option<State> {
        if self.forgery.is_some_and(|f| link > f.from_link) {
            return None;
        }
        let mut state = self.input;
        for _ in 0..link {
            state = advance(&state);
        }
        Some(state)
    }
}

/// The output of an MD task made by `recipe`: its chain, checkpoint and thermo lines.
fn md_output(recipe: &Recipe, chunk: ChunkId, task: &Task, chunk_steps: u64) -> Output {
    let Task::Md { steps, thermo_every, thermo_at_start, chain_every, .. } = *task else {
        unreachable!("the bench runs md tasks only")
    };
    let links = (steps / chain_every.max(1)) as u32;
    let chain = recipe.chain(links);
    let state_hash = *chain.last().expect("at least one link");
    let mut thermo = Vec::new();
    if thermo_every > 0 {
        let start = chunk.index as u64 * chunk_steps;
        let first = if thermo_at_start { start } else { start + thermo_every };
        let mut step = first;
        while step <= start + steps {
            thermo.push(thermo_line(recipe, start, chain_every, step));
            step += thermo_every;
        }
    }
    Output::Md { state_hash, checkpoint: checkpoint_of(&state_hash), checkpoint_bytes: CHECKPOINT_BYTES, thermo, chain }
}

fn thermo_line(recipe: &Recipe, start: u64, chain_every: u64, step: u64) -> ThermoLine {
    let link = ((step - start) / chain_every.max(1)) as u32;
    let seed = match recipe.forgery {
        Some(f) if link > f.from_link => f.key,
        _ => recipe.input,
    };
    let value = unit(&hash(&[b"thermo", &seed, &step.to_le_bytes()]));
    ThermoLine { step, temp: value, pe: -value, ke: value / 2.0, etotal: value / 2.0, press: value }
}

// ---------------------------------------------------------------------------------------------
// Nodes

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Honest,
    Verifier,
    AlwaysWrong,
    RarelyWrong,
    LazyCopier,
    Colluder,
    UntilTrusted,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Honest => "honest",
            Kind::Verifier => "verifier",
            Kind::AlwaysWrong => "always_wrong",
            Kind::RarelyWrong => "rarely_wrong",
            Kind::LazyCopier => "lazy_copier",
            Kind::Colluder => "colluder",
            Kind::UntilTrusted => "until_trusted",
        }
    }

    fn is_cheater(self) -> bool {
        !matches!(self, Kind::Honest | Kind::Verifier)
    }
}

struct Running {
    chunk: ChunkId,
    task: Task,
    recipe: Recipe,
    /// Whether it can serve the states of its chain later (a copier has none).
    servable: bool,
    started_ms: u64,
}

struct Held {
    recipe: Recipe,
    servable: bool,
}

struct SimNode {
    id: WorkerId,
    key: SigningKey,
    kind: Kind,
    /// The cheating rate of its kind, for the detection count.
    rate: f64,
    speed: f64,
    /// The secret a colluding pair shares (or the node's own).
    secret: State,
    running: HashMap<AssignmentId, Running>,
    /// Finished assignments whose intermediate states it keeps until they settle.
    held: HashMap<AssignmentId, Held>,
    trusted: bool,
    results: u64,
    wrong_results: u64,
    caught_after: Option<u64>,
}

impl SimNode {
    /// Cheaters whose detection counts: those of a kind that cheats on at least 1 % of chunks and
    /// that did return a wrong result.
    fn counted(&self) -> bool {
        self.kind.is_cheater() && self.rate >= 0.01 && self.wrong_results > 0
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Policy {
    Adaptive,
    Quorum2,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Event {
    Heartbeat,
    Finish { node: usize, assignment: AssignmentId },
    Serve { node: usize, request: u64, assignment: AssignmentId, link: u32 },
}

/// SplitMix64: a small, seeded generator for the node speeds.
struct Random(u64);

impl Random {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

fn build_nodes(config: &TrustBenchConfig) -> Vec<SimNode> {
    let mut random = Random(config.seed ^ 0x5eed);
    let mut kinds: Vec<(Kind, f64, Option<u32>)> = Vec::new();
    kinds.extend((0..config.honest_workers).map(|_| (Kind::Honest, 0.0, None)));
    kinds.extend((0..config.verifiers).map(|_| (Kind::Verifier, 0.0, None)));
    kinds.extend((0..config.always_wrong).map(|_| (Kind::AlwaysWrong, 1.0, None)));
    kinds.extend((0..config.rarely_wrong).map(|_| (Kind::RarelyWrong, config.rarely_wrong_rate, None)));
    kinds.extend((0..config.lazy_copiers).map(|_| (Kind::LazyCopier, 1.0, None)));
    for pair in 0..config.colluding_pairs {
        kinds.extend((0..2).map(|_| (Kind::Colluder, config.colluding_rate, Some(pair))));
    }
    kinds.extend((0..config.until_trusted).map(|_| (Kind::UntilTrusted, config.until_trusted_rate, None)));
    let seed = config.seed.to_le_bytes();
    kinds
        .into_iter()
        .enumerate()
        .map(|(index, (kind, rate, pair))| {
            let secret = match pair {
                Some(pair) => hash(&[b"pair", &seed, &pair.to_le_bytes()]),
                None => hash(&[b"node", &seed, &(index as u64).to_le_bytes()]),
            };
            let key = SigningKey::from_pkcs8(&SigningKey::generate()).expect("a fresh key");
            let speed = if kind == Kind::Verifier { 1.0 } else { 0.8 + 0.45 * random.unit() };
            SimNode {
                id: WorkerId(hash(&[b"worker", &seed, &(index as u64).to_le_bytes()])),
                key,
                kind,
                rate,
                speed,
                secret,
                running: HashMap::new(),
                held: HashMap::new(),
                trusted: false,
                results: 0,
                wrong_results: 0,
                caught_after: None,
            }
        })
        .collect()
}

fn hello(node: &SimNode, index: usize, cpus: u32) -> Hello {
    Hello {
        protocol: upglobe_protocol::PROTOCOL_VERSION,
        secret: String::new(),
        software: "trust-bench".into(),
        name: format!("{}-{index}", node.kind.name().replace('_', "-")),
        resources: Resources { cpus, memory_bytes: 1 << 34, gpus: 0 },
        allow_commands: false,
        device: "simulated".into(),
        role: if node.kind == Kind::Verifier { NodeRole::Verifier } else { NodeRole::Worker },
        signing_key: node.key.public(),
        // Every node is its own owner: colluders come from different owners on purpose.
        owner: Some(format!("owner-{index}")),
        peer_address: None,
        gpus: vec![],
        adapters: vec![],
        containers: None,
        allow_network: false,
        hub: None,
    }
}

// ---------------------------------------------------------------------------------------------
// The simulation

struct Simulation<'a> {
    config: &'a TrustBenchConfig,
    policy: Policy,
    core: Core,
    now: u64,
    nodes: Vec<SimNode>,
    by_id: HashMap<WorkerId, usize>,
    queue: BinaryHeap<Reverse<(u64, u64, Event)>>,
    sequence: u64,
    heartbeat_pending: bool,
    /// Events in the queue other than the heartbeat: while there are any, heartbeats go on.
    work_pending: u64,
    /// Blob store: checkpoint → the state it ends with.
    blobs: HashMap<BlobHash, State>,
    /// The last result any worker returned per chunk, for lazy copiers: its input and recipe.
    returned: HashMap<ChunkId, (BlobHash, Recipe)>,
    job_index: HashMap<JobId, usize>,
    /// Ground truth: per job, the state at the end of each chunk.
    truth: Vec<Vec<State>>,
    /// The accepted chain: per job, the state of each accepted chunk.
    accepted: Vec<Vec<State>>,
    links: u32,
    /// How the core accepted each chunk of the accepted chains.
    decisions: HashMap<(JobId, u32), String>,
    /// The kinds of the nodes whose results each accepted chunk took.
    agreeing: HashMap<(JobId, u32), String>,
    report: RunReport,
    chunks: u64,
    next_progress: u64,
}

struct RunOutput {
    report: RunReport,
    nodes: Vec<SimNode>,
    chunks: u64,
}

fn simulate(config: &TrustBenchConfig, policy: Policy) -> RunOutput {
    let mut simulation = Simulation::new(config, policy);
    simulation.start();
    simulation.run();
    simulation.finish()
}

impl<'a> Simulation<'a> {
    fn new(config: &'a TrustBenchConfig, policy: Policy) -> Simulation<'a> {
        let nodes = build_nodes(config);
        let by_id = nodes.iter().enumerate().map(|(k, n)| (n.id, k)).collect();
        let links = crate::core::trust::chain_links(config.chunk_steps, config.core.chain_links);
        let policy_name = match policy {
            Policy::Adaptive => "adaptive",
            Policy::Quorum2 => "quorum of 2",
        };
        Simulation {
            config,
            policy,
            core: Core::new(config.core.clone(), 1),
            now: 0,
            nodes,
            by_id,
            queue: BinaryHeap::new(),
            sequence: 0,
            heartbeat_pending: false,
            work_pending: 0,
            blobs: HashMap::new(),
            returned: HashMap::new(),
            job_index: HashMap::new(),
            truth: Vec::new(),
            accepted: Vec::new(),
            links,
            decisions: HashMap::new(),
            agreeing: HashMap::new(),
            report: empty_report(policy_name),
            chunks: 0,
            next_progress: 0,
        }
    }

    fn start(&mut self) {
        let jobs = (self.config.chunks / self.config.chunks_per_job as u64).max(1) as usize;
        self.chunks = jobs as u64 * self.config.chunks_per_job as u64;
        let seed = self.config.seed.to_le_bytes();
        let mut specs = Vec::with_capacity(jobs);
        for job in 0..jobs {
            let initial = hash(&[b"initial", &seed, &(job as u64).to_le_bytes()]);
            self.blobs.insert(checkpoint_of(&initial), initial);
            self.truth.push(self.true_chain(initial));
            specs.push(self.job_spec(job, checkpoint_of(&initial)));
        }
        self.accepted = vec![Vec::new(); jobs];
        for index in 0..self.nodes.len() {
            let cpus = self.config.cpus_per_node;
            let hello = hello(&self.nodes[index], index, cpus);
            let id = self.nodes[index].id;
            self.core.handle_worker_joined(0, id, &hello).expect("a valid hello");
            self.drain();
        }
        let submission = Submission { name: "trust-bench".into(), source: String::new(), jobs: specs };
        let evidence = self.evidence(submission.jobs.iter().filter_map(|j| match &j.kind {
            JobKind::Md(md) => Some(md.initial),
            _ => None,
        }));
        let (_, ids) = self.core.handle_submit(0, submission, &evidence).expect("a valid submission");
        for (name, id) in ids {
            let index: usize = name.trim_start_matches('j').parse().expect("job names are numbered");
            self.job_index.insert(id, index);
        }
        self.drain();
    }

    fn true_chain(&self, initial: State) -> Vec<State> {
        let mut state = initial;
        (0..self.config.chunks_per_job)
            .map(|_| {
                for _ in 0..self.links {
                    state = advance(&state);
                }
                state
            })
            .collect()
    }

    fn job_spec(&self, job: usize, initial: BlobHash) -> JobSpec {
        let (verification, replicas) = match self.policy {
            Policy::Adaptive => (Verification::Adaptive, 2),
            Policy::Quorum2 => (Verification::Quorum, 2),
        };
        JobSpec {
            name: format!("j{job:06}"),
            after: Vec::new(),
            replicas,
            resources: Resources { cpus: 1, memory_bytes: 0, gpus: 0 },
            kind: JobKind::Md(MdJob {
                initial,
                atoms: ATOMS,
                total_steps: self.config.chunk_steps * self.config.chunks_per_job as u64,
                chunk_steps: self.config.chunk_steps,
                thermo_every: self.config.chunk_steps,
            }),
            verification,
            gpu: Default::default(),
        }
    }

    fn evidence(&self, hashes: impl IntoIterator<Item = BlobHash>) -> Evidence {
        Evidence::gather(hashes, |h| {
            self.blobs.get(h).map(|state| BlobFact { size: CHECKPOINT_BYTES, tail: state.to_vec() })
        })
    }

    fn push(&mut self, at: u64, event: Event) {
        self.work_pending += (event != Event::Heartbeat) as u64;
        self.sequence += 1;
        self.queue.push(Reverse((at, self.sequence, event)));
    }

    /// Processes events and timeouts in time order until nothing is left or the bound is reached.
    fn run(&mut self) {
        loop {
            if self.report.events >= self.config.events_max {
                return;
            }
            let event_at = self.queue.peek().map(|Reverse((at, _, _))| *at);
            let timeout_at = self.core.poll_timeout();
            let timeout_first = match (event_at, timeout_at) {
                (None, None) => return,
                (Some(e), Some(t)) => t <= e,
                (None, Some(_)) => true,
                (Some(_), None) => false,
            };
            self.report.events += 1;
            if timeout_first {
                self.now = self.now.max(timeout_at.expect("a timeout"));
                self.core.handle_timeout(self.now);
            } else {
                let Reverse((at, _, event)) = self.queue.pop().expect("an event");
                self.work_pending -= (event != Event::Heartbeat) as u64;
                self.now = self.now.max(at);
                self.handle(event);
            }
            self.drain();
            let every = self.config.check_invariants_every;
            if every > 0 && self.report.events.is_multiple_of(every) {
                self.core.check_invariants();
            }
            self.show_progress();
        }
    }

    fn show_progress(&mut self) {
        if !self.config.progress || self.report.events < self.next_progress {
            return;
        }
        self.next_progress = self.report.events + 1_000_000;
        let accepted: usize = self.accepted.iter().map(Vec::len).sum();
        eprintln!(
            "trust bench ({}): {} events, {:.0} s simulated, {accepted} of {} chunks accepted",
            self.report.policy,
            self.report.events,
            self.now as f64 / 1000.0,
            self.chunks
        );
    }

    fn handle(&mut self, event: Event) {
        match event {
            Event::Heartbeat => self.heartbeat(),
            Event::Finish { node, assignment } => self.finish_assignment(node, assignment),
            Event::Serve { node, request, assignment, link } => self.serve(node, request, assignment, link),
        }
    }

    fn heartbeat(&mut self) {
        self.heartbeat_pending = false;
        let mut any = false;
        for index in 0..self.nodes.len() {
            let node = &self.nodes[index];
            if node.running.is_empty() {
                continue;
            }
            any = true;
            let progress: Vec<Progress> = node
                .running
                .iter()
                .map(|(assignment, r)| Progress { assignment: *assignment, steps_done: self.steps_done(r, node.speed) })
                .collect();
            let id = node.id;
            self.core.handle_heartbeat(self.now, id, &progress);
        }
        if any || self.work_pending > 0 {
            self.push(self.now + HEARTBEAT_MS, Event::Heartbeat);
            self.heartbeat_pending = true;
        }
    }

    fn steps_done(&self, running: &Running, speed: f64) -> u64 {
        let elapsed = self.now.saturating_sub(running.started_ms) as f64;
        let per_step = self.config.chunk_ms as f64 / self.config.chunk_steps as f64 / speed;
        (elapsed / per_step) as u64
    }

    /// Carries out the core's actions.
    fn drain(&mut self) {
        while let Some(action) = self.core.poll_action() {
            match action {
                Action::Persist(record) => self.record(record),
                Action::Send { worker, message } => self.deliver(worker, message),
                Action::Compare { .. } => unreachable!("the bench runs md jobs only"),
            }
        }
        if !self.heartbeat_pending && self.work_pending > 0 {
            self.push(self.now + HEARTBEAT_MS, Event::Heartbeat);
            self.heartbeat_pending = true;
        }
    }

    fn deliver(&mut self, worker: WorkerId, message: ToWorker) {
        let index = self.by_id[&worker];
        match message {
            ToWorker::Assign(assignment) => self.assigned(index, assignment),
            ToWorker::Cancel { assignment, .. } => {
                if let Some(running) = self.nodes[index].running.remove(&assignment) {
                    self.report.cancelled_steps += task_steps(&running.task);
                }
            }
            ToWorker::ServeState { request, assignment, link, .. } => {
                let silent = self.nodes[index].kind == Kind::AlwaysWrong && !self.can_serve(index, assignment, link);
                if !silent {
                    self.push(self.now + SERVE_DELAY_MS, Event::Serve { node: index, request, assignment, link });
                }
            }
            ToWorker::Settled { assignments } => {
                for assignment in assignments {
                    self.nodes[index].held.remove(&assignment);
                }
            }
            ToWorker::Welcome(_) | ToWorker::Refused { .. } => {}
        }
    }

    fn can_serve(&self, index: usize, assignment: AssignmentId, link: u32) -> bool {
        self.nodes[index].held.get(&assignment).is_some_and(|h| h.servable && h.recipe.start_of(link).is_some())
    }

    /// A node takes an assignment: it decides now how it will answer, and how long that takes.
    fn assigned(&mut self, index: usize, assignment: Assignment) {
        let Task::Md { input, steps, .. } = assignment.task else { unreachable!("md tasks only") };
        let input_state = *self.blobs.get(&input).expect("inputs are uploaded checkpoints");
        let honest = Recipe { input: input_state, forgery: None };
        let (recipe, servable, share) = match self.nodes[index].kind {
            Kind::Honest | Kind::Verifier => (honest, true, 1.0),
            Kind::LazyCopier => match self.returned.get(&assignment.chunk) {
                Some((copied_input, recipe)) if *copied_input == input => (*recipe, false, CHEAT_OVERHEAD),
                _ => {
                    let key = hash(&[b"lazy", &self.nodes[index].secret, &input.0]);
                    (Recipe { input: input_state, forgery: Some(Forgery { key, from_link: 0 }) }, false, CHEAT_OVERHEAD)
                }
            },
            _ => self.cheater_recipe(index, assignment.chunk, input, input_state),
        };
        let node = &mut self.nodes[index];
        let base = self.config.chunk_ms as f64 * steps as f64 / self.config.chunk_steps as f64 / node.speed;
        let duration = (base * share).max(1.0) as u64;
        node.running.insert(
            assignment.id,
            Running { chunk: assignment.chunk, task: assignment.task, recipe, servable, started_ms: self.now },
        );
        self.push(self.now + duration, Event::Finish { node: index, assignment: assignment.id });
    }

    /// What a forging kind returns for a chunk: the recipe, that it can serve what it computed, and
    /// the share of an honest run's time it takes.
    fn cheater_recipe(&self, index: usize, chunk: ChunkId, input: BlobHash, input_state: State) -> (Recipe, bool, f64) {
        let node = &self.nodes[index];
        let honest = Recipe { input: input_state, forgery: None };
        let cheats = match node.kind {
            Kind::UntilTrusted => node.trusted,
            _ => true,
        };
        // Colluders derive the draw from the pair's secret, so both partners forge the same chunks alike.
        let draw = hash(&[b"draw", &node.secret, &chunk.job.0.to_le_bytes(), &chunk.index.to_le_bytes(), &input.0]);
        if !cheats || unit(&draw) >= node.rate {
            return (honest, true, 1.0);
        }
        let from_link = (u64::from_le_bytes(draw[8..16].try_into().expect("8 bytes")) % self.links as u64) as u32;
        let forgery = Forgery { key: draw, from_link };
        let share = (from_link as f64 / self.links as f64 + CHEAT_OVERHEAD).min(1.0);
        (Recipe { input: input_state, forgery: Some(forgery) }, true, share)
    }

    fn finish_assignment(&mut self, index: usize, assignment: AssignmentId) {
        let Some(running) = self.nodes[index].running.remove(&assignment) else { return };
        let output = md_output(&running.recipe, running.chunk, &running.task, self.config.chunk_steps);
        let Output::Md { state_hash, checkpoint, .. } = &output else { unreachable!("md outputs") };
        self.blobs.insert(*checkpoint, *state_hash);
        let steps = task_steps(&running.task);
        let Task::Md { input, .. } = running.task else { unreachable!("md tasks only") };
        let node = &mut self.nodes[index];
        if node.kind == Kind::Verifier {
            self.report.verifier_executions += 1;
            if steps == self.config.chunk_steps && matches!(running.task, Task::Md { thermo_every: 1.., .. }) {
                self.report.verifier_recheck_steps += steps;
            } else {
                self.report.verifier_interval_steps += steps;
            }
        } else {
            self.report.executions += 1;
            self.report.worker_steps += steps;
            node.results += 1;
            let honest_end = *Recipe { forgery: None, ..running.recipe }.chain(self.links).last().expect("links");
            if *state_hash != honest_end {
                node.wrong_results += 1;
                self.report.wrong_results_returned += 1;
            }
            self.returned.insert(running.chunk, (input, running.recipe));
        }
        if node.kind != Kind::Verifier {
            node.held.insert(assignment, Held { recipe: running.recipe, servable: running.servable });
        }
        let usage = Usage { elapsed_ms: self.now - running.started_ms, cpus: 1, gpus: 0, steps, ..Usage::default() };
        let outcome = Outcome::Completed(output.clone());
        let statement =
            ResultStatement { chunk: running.chunk, assignment, input: Some(input), digest: outcome.digest(), usage };
        let signature = node.key.sign(&statement);
        let id = node.id;
        let evidence = self.evidence([*checkpoint]);
        self.core.handle_finished(self.now, id, Finished { assignment, outcome, usage, signature }, &evidence);
    }

    fn serve(&mut self, index: usize, request: u64, assignment: AssignmentId, link: u32) {
        let node = &self.nodes[index];
        let state = node.held.get(&assignment).filter(|h| h.servable).and_then(|h| h.recipe.start_of(link));
        let id = node.id;
        match state {
            Some(state) => {
                let blob = checkpoint_of(&state);
                self.blobs.insert(blob, state);
                let evidence = self.evidence([blob]);
                self.core.handle_state_served(self.now, id, request, Ok(blob), &evidence);
            }
            None => {
                let reason = format!("the state at the start of link {link} is not kept");
                self.core.handle_state_served(self.now, id, request, Err(reason), &Evidence::default());
            }
        }
    }

    /// Follows the durable records: the accepted chains, standings and verification decisions.
    fn record(&mut self, record: Record) {
        use upglobe_protocol::trust::TrustEventKind as K;
        match record {
            Record::ChunkVerified { chunk, output: Output::Md { state_hash, .. }, agreeing, .. } => {
                let kinds: Vec<&str> =
                    agreeing.iter().filter_map(|w| self.by_id.get(w)).map(|k| self.nodes[*k].kind.name()).collect();
                self.agreeing.insert((chunk.job, chunk.index), kinds.join("+"));
                self.decisions.remove(&(chunk.job, chunk.index));
                let accepted = &mut self.accepted[self.job_index[&chunk.job]];
                assert_eq!(accepted.len(), chunk.index as usize, "md chunks are accepted in order");
                accepted.push(state_hash);
                self.report.last_accepted_ms = self.now;
            }
            Record::Invalidated { job, from_chunk, .. } => {
                let accepted = &mut self.accepted[self.job_index[&job]];
                self.report.invalidations += 1;
                self.report.invalidated_chunks += accepted.len().saturating_sub(from_chunk as usize) as u64;
                accepted.truncate(from_chunk as usize);
            }
            Record::Standing { worker, standing } => {
                let trusted = standing.trusted(self.config.core.trust_after);
                let index = self.by_id[&worker];
                self.nodes[index].trusted = trusted;
            }
            Record::WorkerDisagreed { worker } => {
                let node = &mut self.nodes[self.by_id[&worker]];
                if node.caught_after.is_none() {
                    node.caught_after = Some(node.results);
                }
            }
            Record::Trust(event) => match event.what {
                K::AuditOrdered { .. } => self.report.audits_ordered += 1,
                K::AuditPassed { .. } => self.report.audits_passed += 1,
                K::AuditFailed { .. } => self.report.audits_failed += 1,
                K::Dispute { .. } => self.report.disputes += 1,
                K::Accepted { finality, how } => {
                    let (Some(job), Some(chunk)) = (event.job, event.chunk) else { return };
                    let how: String = how.chars().filter(|c| !c.is_ascii_digit()).collect();
                    let decision = self.decisions.entry((job, chunk)).or_default();
                    match finality {
                        upglobe_protocol::trust::Finality::Provisional => *decision = how,
                        upglobe_protocol::trust::Finality::Final if decision.is_empty() => *decision = how,
                        upglobe_protocol::trust::Finality::Final => {
                            *decision = format!("{decision}; then final: {how}")
                        }
                    }
                }
                _ => {}
            },
            _ => {}
        }
    }

    fn finish(mut self) -> RunOutput {
        let statuses = self.core.job_statuses(self.now);
        self.report.jobs_completed = statuses.iter().filter(|s| s.state == JobState::Completed).count() as u64;
        self.report.jobs_failed = statuses.iter().filter(|s| matches!(s.state, JobState::Failed { .. })).count() as u64;
        self.report.finished = self.queue.is_empty() && self.core.poll_timeout().is_none();
        self.report.simulated_ms = self.now;
        let useful = self.chunks * self.config.chunk_steps;
        let executed =
            self.report.worker_steps + self.report.verifier_interval_steps + self.report.verifier_recheck_steps;
        self.report.cost = executed as f64 / useful.max(1) as f64;
        self.report.rechecks = self.report.verifier_recheck_steps / self.config.chunk_steps.max(1);
        self.report.wrong_results_accepted = self
            .accepted
            .iter()
            .zip(&self.truth)
            .map(|(accepted, truth)| accepted.iter().zip(truth).filter(|(a, t)| a != t).count() as u64)
            .sum();
        self.summarize_wrong_roots();
        self.summarize_nodes();
        RunOutput { report: self.report, nodes: self.nodes, chunks: self.chunks }
    }

    fn summarize_wrong_roots(&mut self) {
        let mut jobs: Vec<(JobId, usize)> = self.job_index.iter().map(|(id, k)| (*id, *k)).collect();
        jobs.sort();
        for (id, k) in jobs {
            let Some(root) = self.accepted[k].iter().zip(&self.truth[k]).position(|(a, t)| a != t) else { continue };
            let decision = self.decisions.get(&(id, root as u32)).map_or("unknown", String::as_str);
            let agreeing = self.agreeing.get(&(id, root as u32)).map_or("a verifier", String::as_str);
            let decision = format!("{agreeing}: {decision}");
            *self.report.wrong_roots_by_decision.entry(decision).or_default() += 1;
        }
    }

    fn summarize_nodes(&mut self) {
        let mut counted = 0u64;
        let mut caught = 0u64;
        let mut results_before = 0u64;
        for node in &self.nodes {
            if node.kind == Kind::Honest && node.caught_after.is_some() {
                self.report.honest_workers_accused += 1;
            }
            if !node.kind.is_cheater() {
                continue;
            }
            let kind = self.report.per_kind.entry(node.kind.name().to_string()).or_default();
            kind.nodes += 1;
            kind.results += node.results;
            kind.wrong_results += node.wrong_results;
            kind.cheated += (node.wrong_results > 0) as u32;
            if let Some(after) = node.caught_after {
                kind.caught += 1;
                kind.results_before_caught += after;
            }
            if node.counted() {
                counted += 1;
                if let Some(after) = node.caught_after {
                    caught += 1;
                    results_before += after;
                }
            }
        }
        self.report.detection_rate = if counted == 0 { 1.0 } else { caught as f64 / counted as f64 };
        self.report.mean_chunks_to_detection = results_before as f64 / caught.max(1) as f64;
    }
}

fn task_steps(task: &Task) -> u64 {
    match task {
        Task::Md { steps, .. } => *steps,
        _ => 0,
    }
}

fn empty_report(policy: &str) -> RunReport {
    RunReport {
        policy: policy.to_string(),
        finished: false,
        jobs_completed: 0,
        jobs_failed: 0,
        cost: 0.0,
        worker_steps: 0,
        verifier_interval_steps: 0,
        verifier_recheck_steps: 0,
        cancelled_steps: 0,
        executions: 0,
        verifier_executions: 0,
        audits_ordered: 0,
        audits_passed: 0,
        audits_failed: 0,
        disputes: 0,
        rechecks: 0,
        invalidations: 0,
        invalidated_chunks: 0,
        wrong_results_returned: 0,
        wrong_results_accepted: 0,
        wrong_roots_by_decision: BTreeMap::new(),
        honest_workers_accused: 0,
        detection_rate: 0.0,
        mean_chunks_to_detection: 0.0,
        per_kind: BTreeMap::new(),
        last_accepted_ms: 0,
        simulated_ms: 0,
        events: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small run: the core stays consistent (invariants every 100 events), every job completes,
    /// and the cheaters that cheat are caught.
    #[test]
    fn a_small_seeded_run_completes_and_catches_cheaters() {
        let config = TrustBenchConfig {
            chunks: 2_000,
            chunks_per_job: 20,
            honest_workers: 20,
            verifiers: 3,
            check_invariants_every: 100,
            ..TrustBenchConfig::default()
        };
        let report = run(&config);
        assert!(report.adaptive.finished, "{report:#?}");
        assert!(report.baseline_quorum2.finished, "{report:#?}");
        assert_eq!(report.adaptive.jobs_completed, 100);
        assert!(report.cost_of_trust > 1.0 && report.cost_of_trust < report.baseline_quorum2_cost, "{report:#?}");
        assert!(report.cheaters_counted > 0);
        assert_eq!(report.adaptive.honest_workers_accused, 0, "{report:#?}");
    }

    #[test]
    fn a_forged_chain_cannot_serve_what_it_forged() {
        let recipe = Recipe { input: [7; 32], forgery: Some(Forgery { key: [1; 32], from_link: 3 }) };
        let honest = Recipe { forgery: None, ..recipe };
        let (forged, true_chain) = (recipe.chain(8), honest.chain(8));
        assert_eq!(forged[..3], true_chain[..3]);
        assert!(forged[3..].iter().zip(&true_chain[3..]).all(|(f, t)| f != t));
        assert_eq!(recipe.start_of(3), Some(true_chain[2]));
        assert_eq!(recipe.start_of(4), None);
        assert_eq!(honest.start_of(0), Some([7; 32]));
    }
}
