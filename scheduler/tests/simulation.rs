//! Seeded deterministic simulation of the scheduler core with its real SQLite store.
//!
//! Random workers join, crash, stall, answer late, twice, or wrongly; the scheduler itself restarts
//! from its store. After every event the core's own invariants are checked, and across the whole run:
//! - no chunk is accepted without a quorum of distinct agreeing workers;
//! - no chunk is verified twice (the store's primary key would also refuse it);
//! - an MD chunk only ever starts from the verified checkpoint of the chunk before, and a
//!   checkpointed command's chunk from the verified checkpoint files of the chunk before;
//! - once the faults stop, every job completes (enough honest workers remain).
//!
//! A failing seed replays exactly: `SIMULATION_SEED=1234 cargo nextest run -p upglobe-scheduler simulation`.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use common::{hello, uploaded};

use upglobe_protocol::messages::{
    CommandJob, FileRef, Hello, JobKind, JobSpec, JobState, MdJob, Outcome, Output, Progress, Resources, Submission,
    Task, ThermoLine, ToWorker,
};
use upglobe_protocol::{AssignmentId, BlobHash, ChunkId, JobId, WorkerId};
use upglobe_scheduler::core::checks::check_output;
use upglobe_scheduler::core::{Action, BlobFact, Config, Core, Evidence, Record};
use upglobe_scheduler::store::Store;

/// Links of an md job's chain with the default configuration.
fn chain_links(kind: &JobKind) -> u32 {
    match kind {
        JobKind::Md(md) => upglobe_scheduler::core::trust::chain_links(md.chunk_steps, Config::default().chain_links),
        _ => 0,
    }
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// What an honest worker computes: a pure function of the task (and the chunk, whose last step the
/// thermo line is at).
fn honest_output(chunk: ChunkId, task: &Task) -> Output {
    match task {
        Task::Md { input, steps, chain_every, .. } => {
            let state = *blake3::hash(&[&input.0[..], &steps.to_le_bytes()].concat()).as_bytes();
            let step = (chunk.index as u64 + 1) * steps;
            let links = steps / chain_every;
            let mut chain: Vec<[u8; 32]> =
                (1..links).map(|j| *blake3::hash(&[&state[..], &j.to_le_bytes()].concat()).as_bytes()).collect();
            chain.push(state);
            Output::Md {
                state_hash: state,
                checkpoint: BlobHash(*blake3::hash(&state).as_bytes()),
                checkpoint_bytes: 100,
                thermo: vec![ThermoLine { step, temp: 1.0, pe: -1.0, ke: 1.0, etotal: 0.0, press: 0.0 }],
                chain,
            }
        }
        Task::Empty { value } => Output::Empty { value: *value },
        Task::Command { argv, inputs, .. } => {
            // A checkpointing program: its thermo and checkpoint depend on everything it was given.
            let mut given = blake3::Hasher::new();
            for argument in argv {
                given.update(argument.as_bytes()).update(&[0]);
            }
            for input in inputs {
                given.update(input.name.as_bytes()).update(&input.blob.0);
            }
            let given = *given.finalize().as_bytes();
            let file = |name: &str| {
                let blob = BlobHash(*blake3::hash(&[name.as_bytes(), &given].concat()).as_bytes());
                FileRef { name: name.into(), blob, size: 0xf100 + name.len() as u64 }
            };
            Output::Command {
                exit_code: 0,
                files: vec![file(CHECKPOINT_FILE), file("thermo.dat")],
                stdout: file("stdout"),
                stderr: file("stderr"),
            }
        }
    }
}

/// The checkpoint file of the simulation's checkpointed command job.
const CHECKPOINT_FILE: &str = "state.restart";

/// A consistent lie: a wrong state, uploaded as a checkpoint that ends with it.
fn wrong_output(chunk: ChunkId, task: &Task, rng: &mut Rng) -> Output {
    match honest_output(chunk, task) {
        Output::Md { checkpoint_bytes, thermo, mut chain, .. } => {
            let state_hash = [rng.next() as u8 | 1; 32];
            let checkpoint = BlobHash(*blake3::hash(&state_hash).as_bytes());
            *chain.last_mut().expect("a chain") = state_hash;
            Output::Md { state_hash, checkpoint, checkpoint_bytes, thermo, chain }
        }
        Output::Empty { value } => Output::Empty { value: value + 1 + rng.below(5) },
        Output::Command { exit_code, mut files, stdout, stderr } => {
            // A checkpoint that is not what the program would write from its inputs.
            files[0].blob.0[0] ^= 1 + rng.below(255) as u8;
            Output::Command { exit_code, files, stdout, stderr }
        }
    }
}

/// A result the core must refuse whatever the votes: a checkpoint never uploaded, or one that is
/// not the claimed state, thermo outside the chunk, or the wrong kind of result.
fn malformed_output(chunk: ChunkId, task: &Task, rng: &mut Rng) -> (Output, Evidence) {
    let honest = honest_output(chunk, task);
    let consistent = uploaded(&honest);
    match (honest, rng.below(4)) {
        (Output::Command { exit_code, mut files, stdout, stderr }, roll) if roll < 2 => {
            // Without its checkpoint file: the next chunk would have nothing to resume from.
            files.retain(|f| f.name != CHECKPOINT_FILE);
            let output = Output::Command { exit_code, files, stdout, stderr };
            let evidence = uploaded(&output);
            (output, evidence)
        }
        (Output::Md { .. }, 0) | (Output::Empty { .. }, _) | (Output::Command { .. }, _) => (
            Output::Md {
                state_hash: [1; 32],
                checkpoint: BlobHash([2; 32]),
                checkpoint_bytes: 1,
                thermo: vec![],
                chain: vec![[1; 32]],
            },
            Evidence::default(),
        ),
        (Output::Md { state_hash, checkpoint, checkpoint_bytes, thermo, chain }, 1) => {
            let evidence =
                Evidence::gather([checkpoint], |_| Some(BlobFact { size: checkpoint_bytes, tail: vec![0; 32] }));
            (Output::Md { state_hash, checkpoint, checkpoint_bytes, thermo, chain }, evidence)
        }
        (Output::Md { state_hash, checkpoint, checkpoint_bytes, mut thermo, chain }, 2) => {
            thermo[0].step += 1_000_000;
            (Output::Md { state_hash, checkpoint, checkpoint_bytes, thermo, chain }, consistent)
        }
        (_, _) => (Output::Empty { value: 0 }, Evidence::default()),
    }
}

/// The initial MD state every simulated job starts from, as uploaded.
const INITIAL: BlobHash = BlobHash([9; 32]);

fn submit(core: &mut Core, now: u64, jobs: Vec<JobSpec>) -> Result<Vec<(String, JobId)>, String> {
    let submission = Submission { name: "sim".into(), source: "# source".into(), jobs };
    let evidence = Evidence::gather(upglobe_scheduler::core::checks::submission_blobs(&submission), |hash| {
        (*hash == INITIAL || hash.0[0] == 0xf1).then_some(BlobFact { size: 100, tail: vec![0; 32] })
    });
    core.handle_submit(now, submission, &evidence).map(|(_, ids)| ids)
}

struct SimWorker {
    id: WorkerId,
    honest: bool,
    connected: bool,
    /// Assignments in hand: (assignment, chunk, task, time it will answer).
    tasks: Vec<(AssignmentId, ChunkId, Task, u64)>,
}

struct Simulation {
    rng: Rng,
    now: u64,
    config: Config,
    core: Core,
    store: Store,
    workers: Vec<SimWorker>,
    /// Answers in flight: (deliver at, worker, assignment, outcome, what it uploaded), possibly from
    /// before a restart.
    network: Vec<(u64, WorkerId, AssignmentId, Outcome, Evidence)>,
    jobs: BTreeMap<JobId, JobSpec>,
    verified: BTreeMap<ChunkId, Output>,
    /// The task each chunk was last assigned as (every replica of a chunk gets the same one).
    assigned: BTreeMap<ChunkId, Task>,
    restarts: u32,
    faults: bool,
}

impl Simulation {
    fn new(seed: u64) -> Simulation {
        let config = Config {
            lease_timeout_ms: 5_000,
            attempts_max: 1_000,
            extra_replicas_max: 3,
            disagreements_max: 3,
            ..Config::default()
        };
        let mut store = Store::in_memory().unwrap();
        let epoch = store.next_epoch().unwrap();
        let workers = (0..6)
            .map(|k| SimWorker { id: WorkerId([k as u8 + 1; 32]), honest: k != 5, connected: false, tasks: Vec::new() })
            .collect();
        Simulation {
            rng: Rng(seed),
            now: 0,
            core: Core::new(config.clone(), epoch),
            config,
            store,
            workers,
            network: Vec::new(),
            jobs: BTreeMap::new(),
            verified: BTreeMap::new(),
            assigned: BTreeMap::new(),
            restarts: 0,
            faults: true,
        }
    }

    fn submit(&mut self) {
        let md = |name: &str, chunks: u64, replicas: u32, after: Vec<String>| JobSpec {
            name: name.into(),
            after,
            replicas,
            gpu: Default::default(),
            verification: upglobe_protocol::trust::Verification::Quorum,
            resources: Resources { cpus: 1, memory_bytes: 0, gpus: 0 },
            kind: JobKind::Md(MdJob {
                initial: INITIAL,
                atoms: 10,
                total_steps: chunks * 10,
                chunk_steps: 10,
                thermo_every: 10,
            }),
        };
        let empty = JobSpec {
            name: "sweep".into(),
            after: vec![],
            replicas: 2,
            gpu: Default::default(),
            verification: upglobe_protocol::trust::Verification::Quorum,
            resources: Resources { cpus: 1, memory_bytes: 0, gpus: 0 },
            kind: JobKind::Empty { chunks: 12 },
        };
        let specs = vec![
            md("melt", 8, 2, vec![]),
            md("anneal", 5, 3, vec!["melt".into()]),
            empty,
            md("solo", 4, 1, vec![]),
            checkpointed_spec("program", 6, 2),
        ];
        let ids = submit(&mut self.core, self.now, specs.clone()).unwrap();
        for (name, id) in ids {
            self.jobs.insert(id, specs.iter().find(|s| s.name == name).unwrap().clone());
        }
        self.drain();
    }

    /// Carries out the core's actions, checking the global invariants on the way.
    fn drain(&mut self) {
        let mut records = Vec::new();
        while let Some(action) = self.core.poll_action() {
            match action {
                Action::Persist(record) => {
                    self.check_record(&record);
                    records.push(record);
                }
                Action::Send { worker, message } => {
                    // Persist before sending, as the shell does.
                    self.store.apply(&std::mem::take(&mut records)).unwrap();
                    self.deliver(worker, message);
                }
                Action::Compare { .. } => panic!("no tolerance jobs in the simulation"),
            }
        }
        self.store.apply(&records).unwrap();
        self.core.check_invariants();
    }

    fn check_record(&mut self, record: &Record) {
        if let Record::ChunkVerified { chunk, digest, output, agreeing, .. } = record {
            let replicas = self.jobs[&chunk.job].replicas as usize;
            let distinct: BTreeSet<&WorkerId> = agreeing.iter().collect();
            assert!(
                agreeing.len() >= replicas && distinct.len() == agreeing.len(),
                "{chunk} accepted without a quorum"
            );
            assert_eq!(output.digest(), *digest);
            let kind = &self.jobs[&chunk.job].kind;
            assert_eq!(
                check_output(kind, *chunk, output, &uploaded(output), chain_links(kind)),
                Ok(()),
                "{chunk}: a malformed result was verified"
            );
            assert!(self.verified.insert(*chunk, output.clone()).is_none(), "{chunk} verified twice");
        }
    }

    fn deliver(&mut self, worker: WorkerId, message: ToWorker) {
        let answer_at = self.now + 100 + self.rng.below(3_000);
        let w = self.workers.iter_mut().find(|w| w.id == worker).expect("known worker");
        if !w.connected {
            // The scheduler has not noticed the crash yet; the message is lost.
            return;
        }
        match message {
            ToWorker::Assign(assignment) => {
                if let Task::Md { input, .. } = &assignment.task {
                    let expected = match assignment.chunk.index {
                        0 => INITIAL,
                        k => match &self.verified[&ChunkId { job: assignment.chunk.job, index: k - 1 }] {
                            Output::Md { checkpoint, .. } => *checkpoint,
                            _ => unreachable!(),
                        },
                    };
                    assert_eq!(*input, expected, "{} did not start from the verified checkpoint", assignment.chunk);
                }
                if let Task::Command { inputs, .. } = &assignment.task {
                    let (job, index) = (assignment.chunk.job, assignment.chunk.index);
                    let expected = match index.checked_sub(1) {
                        None => None,
                        Some(previous) => match &self.verified[&ChunkId { job, index: previous }] {
                            Output::Command { files, .. } => files.iter().find(|f| f.name == CHECKPOINT_FILE),
                            _ => unreachable!(),
                        },
                    };
                    let handed: Vec<&FileRef> = inputs.iter().filter(|f| f.name == CHECKPOINT_FILE).collect();
                    assert_eq!(
                        handed,
                        Vec::from_iter(expected),
                        "{} did not start from the verified checkpoint files",
                        assignment.chunk
                    );
                }
                self.assigned.insert(assignment.chunk, assignment.task.clone());
                w.tasks.push((assignment.id, assignment.chunk, assignment.task, answer_at));
            }
            // Quorum jobs never ask for served states; settled chunks need nothing.
            ToWorker::ServeState { .. } | ToWorker::Settled { .. } => {}
            ToWorker::Cancel { assignment, .. } => w.tasks.retain(|(a, _, _, _)| *a != assignment),
            ToWorker::Welcome(_) | ToWorker::Refused { .. } => {}
        }
    }

    fn join(&mut self, k: usize) {
        let id = self.workers[k].id;
        self.workers[k].connected = true;
        self.workers[k].tasks.clear();
        self.core.handle_worker_joined(self.now, id, &hello(&format!("w{k}"), 1 + (k as u32 % 3), true)).unwrap();
    }

    fn step(&mut self) {
        self.now += 1 + self.rng.below(400);
        let k = self.rng.below(self.workers.len() as u64) as usize;
        let roll = self.rng.below(100);
        match roll {
            0..=2 if self.faults => {
                // A crash: the worker vanishes (its connection drops now or only by lease expiry).
                let id = self.workers[k].id;
                self.workers[k].connected = false;
                self.workers[k].tasks.clear();
                if self.rng.chance(50) {
                    self.core.handle_worker_left(self.now, id, "connection lost");
                }
            }
            3 if self.faults => self.restart(),
            _ => {}
        }
        for k in 0..self.workers.len() {
            if !self.workers[k].connected && self.rng.chance(if self.faults { 5 } else { 100 }) {
                self.join(k);
            }
        }
        self.work();
        self.deliver_network();
        if self.core.poll_timeout().is_some_and(|t| t <= self.now) {
            self.core.handle_timeout(self.now);
        }
        self.drain();
    }

    /// Workers heartbeat (unless stalled) and answer tasks that are due.
    fn work(&mut self) {
        for k in 0..self.workers.len() {
            if !self.workers[k].connected {
                continue;
            }
            let stalled = self.faults && self.rng.chance(3);
            if !stalled {
                let running: Vec<Progress> = self.workers[k]
                    .tasks
                    .iter()
                    .map(|(a, _, _, _)| Progress { assignment: *a, steps_done: 1 })
                    .collect();
                self.core.handle_heartbeat(self.now, self.workers[k].id, &running);
            }
            let (due, later): (Vec<_>, Vec<_>) =
                self.workers[k].tasks.drain(..).partition(|(_, _, _, at)| *at <= self.now);
            self.workers[k].tasks = later;
            for (assignment, chunk, task, _) in due {
                let (outcome, evidence) = if self.faults && self.rng.chance(5) {
                    (Outcome::Failed { reason: "simulated failure".into() }, Evidence::default())
                } else if !self.workers[k].honest && self.rng.chance(60) {
                    let output = wrong_output(chunk, &task, &mut self.rng);
                    (Outcome::Completed(output.clone()), uploaded(&output))
                } else if !self.workers[k].honest && self.rng.chance(20) {
                    let (output, evidence) = malformed_output(chunk, &task, &mut self.rng);
                    (Outcome::Completed(output), evidence)
                } else {
                    let output = honest_output(chunk, &task);
                    (Outcome::Completed(output.clone()), uploaded(&output))
                };
                let delay = if self.faults && self.rng.chance(10) { 8_000 } else { 0 };
                let copies = if self.faults && self.rng.chance(5) { 2 } else { 1 };
                for _ in 0..copies {
                    let message = (self.now + delay, self.workers[k].id, assignment, outcome.clone(), evidence.clone());
                    self.network.push(message);
                }
            }
        }
    }

    fn deliver_network(&mut self) {
        let (due, later): (Vec<_>, Vec<_>) = self.network.drain(..).partition(|(at, _, _, _, _)| *at <= self.now);
        self.network = later;
        for (_, worker, assignment, outcome, evidence) in due {
            self.core.handle_finished(self.now, worker, common::sign(&self.core, assignment, outcome), &evidence);
            self.drain();
        }
    }

    fn restart(&mut self) {
        self.restarts += 1;
        let epoch = self.store.next_epoch().unwrap();
        let snapshot = self.store.load(epoch).unwrap();
        self.core = Core::restore(self.config.clone(), snapshot, self.now);
        for w in &mut self.workers {
            // Connections die with the scheduler; answers already in the network may still arrive.
            w.connected = false;
            w.tasks.clear();
        }
        self.drain();
    }

    fn all_finished(&self) -> bool {
        self.core.job_statuses(self.now).iter().all(|s| s.state.is_finished())
    }
}

fn run(seed: u64) {
    let mut sim = Simulation::new(seed);
    sim.submit();
    for _ in 0..3_000 {
        sim.step();
    }
    // Calm: no more faults; the honest majority must finish everything.
    sim.faults = false;
    for _ in 0..20_000 {
        if sim.all_finished() {
            break;
        }
        sim.step();
    }
    for status in sim.core.job_statuses(sim.now) {
        assert_eq!(
            status.state,
            JobState::Completed,
            "seed {seed}: job {} ({}) did not complete: {:?}",
            status.name,
            status.id,
            status.failures.last()
        );
        assert_eq!(status.chunks_verified, status.chunks_total);
    }
    let total: u64 = sim.jobs.values().map(|s| s.kind.chunks()).sum();
    assert_eq!(sim.verified.len() as u64, total, "seed {seed}");
    // Everything verified was persisted exactly once and survives a restart.
    let snapshot = sim.store.load(99).unwrap();
    assert_eq!(snapshot.verified.len() as u64, total);
    let restored = Core::restore(sim.config.clone(), snapshot, sim.now);
    assert!(restored.job_statuses(0).iter().all(|s| s.state == JobState::Completed));
}

#[test]
fn seeded_simulations_keep_the_invariants() {
    let seeds: Vec<u64> = match std::env::var("SIMULATION_SEED") {
        Ok(seed) => vec![seed.parse().expect("SIMULATION_SEED is a number")],
        Err(_) => (1..=40).collect(),
    };
    for seed in seeds {
        run(seed);
    }
}

#[test]
fn dishonest_worker_is_outvoted_and_quarantined() {
    let mut sim = Simulation::new(7);
    sim.faults = false;
    sim.submit();
    for _ in 0..20_000 {
        if sim.all_finished() {
            break;
        }
        sim.step();
    }
    assert!(sim.all_finished());
    let liar = sim.core.workers().into_iter().find(|w| w.id == WorkerId([6; 32])).unwrap();
    assert!(liar.disagreements >= 1, "the dishonest worker was never caught");
    // With two or more replicas, only honest results are ever verified (a single replica is trusted).
    for (chunk, output) in &sim.verified {
        let spec = &sim.jobs[&chunk.job];
        if spec.replicas < 2 {
            continue;
        }
        let task = match &spec.kind {
            JobKind::Md(md) => {
                let input = match chunk.index {
                    0 => md.initial,
                    k => match &sim.verified[&ChunkId { job: chunk.job, index: k - 1 }] {
                        Output::Md { checkpoint, .. } => *checkpoint,
                        _ => unreachable!(),
                    },
                };
                Task::Md {
                    input,
                    steps: md.chunk_steps,
                    thermo_every: md.thermo_every,
                    thermo_at_start: chunk.index == 0,
                    chain_every: md.chunk_steps / chain_links(&JobKind::Md(md.clone())) as u64,
                }
            }
            JobKind::Command(_) => sim.assigned[chunk].clone(),
            _ => Task::Empty { value: chunk.index as u64 },
        };
        assert_eq!(output, &honest_output(*chunk, &task), "a wrong result was verified for {chunk}");
    }
}

/// With few attempts allowed, jobs may fail; nothing else may go wrong (a worker leaving while its
/// chunks' job fails must not trip the core).
#[test]
fn simulations_with_few_attempts_keep_the_invariants() {
    for seed in 100..120 {
        let mut sim = Simulation::new(seed);
        sim.config.attempts_max = 2;
        sim.core = Core::new(sim.config.clone(), 1);
        sim.submit();
        for _ in 0..3_000 {
            sim.step();
        }
        sim.faults = false;
        for _ in 0..20_000 {
            if sim.all_finished() {
                break;
            }
            sim.step();
        }
        assert!(sim.all_finished(), "seed {seed}: jobs left unfinished");
    }
}

fn md_spec(name: &str, chunks: u64, after: Vec<String>) -> JobSpec {
    JobSpec {
        name: name.into(),
        after,
        replicas: 1,
        gpu: Default::default(),
        verification: upglobe_protocol::trust::Verification::Quorum,
        resources: Resources { cpus: 1, memory_bytes: 0, gpus: 0 },
        kind: JobKind::Md(MdJob {
            initial: INITIAL,
            atoms: 10,
            total_steps: chunks * 10,
            chunk_steps: 10,
            thermo_every: 10,
        }),
    }
}

fn assignments(core: &mut Core) -> Vec<(WorkerId, upglobe_protocol::messages::Assignment)> {
    let mut out = Vec::new();
    while let Some(action) = core.poll_action() {
        if let Action::Send { worker, message: ToWorker::Assign(a) } = action {
            out.push((worker, a));
        }
    }
    out
}

#[test]
fn cancelling_a_job_fails_the_jobs_after_it() {
    let mut core = Core::new(Config::default(), 1);
    let ids = submit(&mut core, 0, vec![md_spec("a", 3, vec![]), md_spec("b", 1, vec!["a".into()])]).unwrap();
    let id = |name: &str| ids.iter().find(|(n, _)| n == name).unwrap().1;
    assert!(core.handle_cancel(1, id("a")));
    let b = core.job_status(1, id("b")).unwrap();
    assert!(matches!(b.state, JobState::Failed { .. }), "{:?}", b.state);
    assert!(!core.handle_cancel(2, id("a")), "cancelling twice");
}

#[test]
fn a_broken_worker_does_not_use_up_the_attempts() {
    let config = Config { attempts_max: 3, ..Config::default() };
    let mut core = Core::new(config, 1);
    let (broken, healthy) = (WorkerId([1; 32]), WorkerId([2; 32]));
    core.handle_worker_joined(0, broken, &hello("broken", 1, false)).unwrap();
    core.handle_worker_joined(0, healthy, &hello("healthy", 1, false)).unwrap();
    let ids = submit(&mut core, 0, vec![md_spec("a", 2, vec![])]).unwrap();
    let mut now = 1;
    // The broken worker fails whatever it gets at once; the healthy one is slow but succeeds.
    let mut healthy_task = None;
    for _ in 0..20 {
        for (worker, assignment) in assignments(&mut core) {
            if worker == broken {
                let failed = Outcome::Failed { reason: "no GPU".into() };
                core.handle_finished(now, broken, common::sign(&core, assignment.id, failed), &Evidence::default());
            } else {
                healthy_task = Some(assignment);
            }
        }
        if let Some(assignment) = healthy_task.take() {
            let output = honest_output(assignment.chunk, &assignment.task);
            let evidence = uploaded(&output);
            core.handle_finished(
                now,
                healthy,
                common::sign(&core, assignment.id, Outcome::Completed(output)),
                &evidence,
            );
        }
        now += 1;
        core.check_invariants();
    }
    let status = core.job_status(now, ids[0].1).unwrap();
    assert_eq!(status.state, JobState::Completed, "{:?}", status.failures);
}

#[test]
fn heartbeats_renew_only_the_leases_they_report() {
    let config = Config { lease_timeout_ms: 1_000, ..Config::default() };
    let mut core = Core::new(config, 1);
    let worker = WorkerId([1; 32]);
    core.handle_worker_joined(0, worker, &hello("w", 2, false)).unwrap();
    submit(&mut core, 0, vec![md_spec("a", 1, vec![]), md_spec("b", 1, vec![])]).unwrap();
    let given = assignments(&mut core);
    assert_eq!(given.len(), 2);
    // The worker only knows about the first assignment (the second was lost on the way).
    for t in (200..=2_000).step_by(200) {
        core.handle_heartbeat(t, worker, &[Progress { assignment: given[0].1.id, steps_done: 1 }]);
        core.handle_timeout(t);
    }
    let statuses = core.job_statuses(2_000);
    assert_eq!(statuses[0].failures.len(), 0, "the reported lease stays alive");
    // It expired (and, given again to the same worker that still does not report it, expired again).
    assert!(!statuses[1].failures.is_empty(), "the unreported lease expired");
    assert!(statuses[1].failures[0].reason.contains("lease expired"));
}

#[test]
fn a_worker_leaving_while_its_job_fails_is_handled() {
    let config = Config { attempts_max: 2, ..Config::default() };
    let mut core = Core::new(config, 1);
    let worker = WorkerId([1; 32]);
    core.handle_worker_joined(0, worker, &hello("w", 2, false)).unwrap();
    let sweep = JobSpec {
        name: "sweep".into(),
        after: vec![],
        replicas: 1,
        gpu: Default::default(),
        verification: upglobe_protocol::trust::Verification::Quorum,
        resources: Resources { cpus: 1, memory_bytes: 0, gpus: 0 },
        kind: JobKind::Empty { chunks: 3 },
    };
    let ids = submit(&mut core, 0, vec![sweep]).unwrap();
    let first = assignments(&mut core);
    assert_eq!(first.len(), 2, "chunks 0 and 1");
    // Chunk 0 fails once and comes straight back; chunk 1 completes, which lets chunk 2 in. The worker
    // now holds chunk 0 (one failure left) and, with a later id, chunk 2.
    core.handle_finished(
        1,
        worker,
        common::sign(&core, first[0].1.id, Outcome::Failed { reason: "flaky".into() }),
        &Evidence::default(),
    );
    assert_eq!(assignments(&mut core).len(), 1);
    core.handle_finished(
        2,
        worker,
        common::sign(&core, first[1].1.id, Outcome::Completed(Output::Empty { value: 1 })),
        &Evidence::default(),
    );
    assert_eq!(assignments(&mut core).len(), 1);
    // Leaving fails chunk 0 a second time, which fails the job and releases chunk 2's lease while the
    // worker's leases are still being failed one by one.
    core.handle_worker_left(3, worker, "connection lost");
    core.check_invariants();
    assert!(matches!(core.job_status(3, ids[0].1).unwrap().state, JobState::Failed { .. }));
}

fn command_spec(name: &str, tasks: Vec<i64>) -> JobSpec {
    JobSpec {
        name: name.into(),
        after: vec![],
        replicas: 1,
        gpu: Default::default(),
        verification: upglobe_protocol::trust::Verification::Quorum,
        resources: Resources { cpus: 1, memory_bytes: 0, gpus: 0 },
        kind: JobKind::Command(CommandJob {
            argv: vec!["echo".into(), "{task}".into()],
            tasks: upglobe_protocol::messages::TaskIds::from_ids(tasks),
            inputs: vec![],
            outputs: vec!["out/*.csv".into()],
            timeout_s: 60,
            container: None,
            checkpoint: None,
        }),
    }
}

/// A program that checkpoints into [`CHECKPOINT_FILE`] and resumes from it.
fn checkpointed_spec(name: &str, chunks: u32, replicas: u32) -> JobSpec {
    JobSpec {
        name: name.into(),
        after: vec![],
        replicas,
        gpu: Default::default(),
        verification: upglobe_protocol::trust::Verification::Quorum,
        resources: Resources { cpus: 1, memory_bytes: 0, gpus: 0 },
        kind: JobKind::Command(CommandJob {
            argv: vec!["start".into(), "{chunk}/{chunks}".into()],
            tasks: upglobe_protocol::messages::TaskIds::from_ids([]),
            inputs: vec![],
            outputs: vec!["thermo.dat".into(), CHECKPOINT_FILE.into()],
            timeout_s: 60,
            container: None,
            checkpoint: Some(upglobe_protocol::messages::CheckpointContract {
                chunks,
                resume: vec!["resume".into(), "{chunk}/{chunks}".into()],
                files: vec![CHECKPOINT_FILE.into()],
            }),
        }),
    }
}

fn file(name: &str, seed: u8) -> FileRef {
    FileRef { name: name.into(), blob: BlobHash([seed; 32]), size: seed as u64 }
}

/// A worker may name the files of a command's result anything; the core accepts only plain relative
/// paths, so `upglobe results` can never be made to write outside the task's directory.
#[test]
fn command_results_with_escaping_file_names_are_refused() {
    let mut core = Core::new(Config { attempts_max: 100, ..Config::default() }, 1);
    let worker = WorkerId([1; 32]);
    core.handle_worker_joined(0, worker, &hello("w", 1, true)).unwrap();
    let ids = submit(&mut core, 0, vec![command_spec("c", vec![])]).unwrap();
    let hostile = ["../../x", "/etc/x", "out/../../x", "a\\..\\x", "", "out//x", "./x", "stdout"];
    for (k, name) in hostile.iter().enumerate() {
        let (_, assignment) = assignments(&mut core).pop().expect("the chunk is given out again");
        let output = Output::Command {
            exit_code: 0,
            files: vec![file(name, 3)],
            stdout: file("stdout", 4),
            stderr: file("stderr", 5),
        };
        let evidence = uploaded(&output);
        core.handle_finished(
            k as u64 + 1,
            worker,
            common::sign(&core, assignment.id, Outcome::Completed(output)),
            &evidence,
        );
        core.check_invariants();
        let status = core.job_status(k as u64 + 1, ids[0].1).unwrap();
        assert_eq!(status.chunks_verified, 0, "{name:?} was accepted");
        assert!(status.failures[k].reason.contains("file"), "{name:?}: {}", status.failures[k].reason);
    }
    // A well-formed result with the sizes it claims is accepted.
    let (_, assignment) = assignments(&mut core).pop().unwrap();
    let output = Output::Command {
        exit_code: 0,
        files: vec![file("out/a.csv", 3)],
        stdout: file("stdout", 4),
        stderr: file("stderr", 5),
    };
    let mut lying = output.clone();
    if let Output::Command { files, .. } = &mut lying {
        files[0].size = 1 << 40;
    }
    core.handle_finished(20, worker, common::sign(&core, assignment.id, Outcome::Completed(lying)), &uploaded(&output));
    assert_eq!(core.job_status(20, ids[0].1).unwrap().chunks_verified, 0, "a file size that is not the upload's");
    let (_, assignment) = assignments(&mut core).pop().unwrap();
    let evidence = uploaded(&output);
    core.handle_finished(21, worker, common::sign(&core, assignment.id, Outcome::Completed(output)), &evidence);
    assert_eq!(core.job_status(21, ids[0].1).unwrap().state, JobState::Completed);
}

/// Submissions come from the network: every one the core refuses changes nothing, and none panics.
#[test]
fn hostile_submissions_are_refused_whole() {
    let md = |name: &str| md_spec(name, 2, vec![]);
    let with = |mut spec: JobSpec, change: &dyn Fn(&mut JobSpec)| {
        change(&mut spec);
        spec
    };
    let md_with = |change: &dyn Fn(&mut MdJob)| {
        with(md("m"), &|spec| {
            if let JobKind::Md(m) = &mut spec.kind {
                change(m)
            }
        })
    };
    let command_with = |change: &dyn Fn(&mut CommandJob)| {
        with(command_spec("c", vec![1, 2]), &|spec| {
            if let JobKind::Command(c) = &mut spec.kind {
                change(c)
            }
        })
    };
    let cases: Vec<(Vec<JobSpec>, &str)> = vec![
        (vec![], "0 jobs"),
        (vec![md("a"), md("a")], "unique"),
        (vec![md("a.b")], "contains '.'"),
        (vec![md("")], "is empty"),
        (vec![md(&"x".repeat(65))], "bytes long"),
        (vec![with(md("a"), &|s| s.after = vec!["a".into()])], "not another job"),
        (vec![with(md("a"), &|s| s.after = vec!["zz".into()])], "not another job"),
        (vec![with(md("a"), &|s| s.after = vec!["b".into()]), with(md("b"), &|s| s.after = vec!["a".into()])], "cycle"),
        (vec![with(md("a"), &|s| s.replicas = 0)], "replicas"),
        (vec![with(md("a"), &|s| s.replicas = u32::MAX)], "replicas"),
        (vec![with(md("a"), &|s| s.resources.cpus = 0)], "cpus"),
        (vec![with(md("a"), &|s| s.resources.memory_bytes = u64::MAX)], "memory"),
        (vec![md_with(&|m| m.chunk_steps = 0)], "does not divide"),
        (vec![md_with(&|m| m.chunk_steps = 3)], "does not divide"),
        (vec![md_with(&|m| m.thermo_every = 0)], "does not divide"),
        (vec![md_with(&|m| m.total_steps = u64::MAX)], "chunks"),
        (vec![md_with(&|m| (m.total_steps, m.chunk_steps, m.thermo_every) = (1 << 30, 1 << 30, 1))], "thermo"),
        (vec![md_with(&|m| (m.total_steps, m.chunk_steps) = (100_000_000, 1))], "chunks"),
        (vec![md_with(&|m| m.initial = BlobHash([7; 32]))], "was not uploaded"),
        (vec![md_with(&|m| m.atoms = 0)], "atoms"),
        (vec![with(md("e"), &|s| s.kind = JobKind::Empty { chunks: 0 })], "chunks"),
        (vec![command_with(&|c| c.argv.clear())], "arguments"),
        (vec![command_with(&|c| c.argv = vec!["x".repeat(300 << 10)])], "arguments"),
        (vec![command_with(&|c| c.tasks = upglobe_protocol::messages::TaskIds::from_ids([1, 2, 1]))], "unique"),
        (vec![command_with(&|c| c.timeout_s = 0)], "timeout"),
        (vec![command_with(&|c| c.outputs = vec!["../*".into()])], "output pattern"),
        (vec![command_with(&|c| c.inputs = vec![file("/etc/passwd", 0xf1)])], "absolute"),
        (vec![command_with(&|c| c.inputs = vec![file("a", 0xf1), file("a", 0xf1)])], "twice"),
        (vec![command_with(&|c| c.inputs = vec![file("a", 0xf2)])], "was not uploaded"),
        (
            (0..101)
                .map(|k| {
                    with(command_spec(&format!("c{k}"), vec![]), &|s| {
                        if let JobKind::Command(c) = &mut s.kind {
                            c.inputs = (0..1000).map(|n| file(&format!("f{n}"), 0xf1)).collect();
                        }
                    })
                })
                .collect(),
            "input files in all",
        ),
        (vec![command_with(&|c| c.inputs = vec![FileRef { size: 5, ..file("a", 0xf1) }])], "bytes"),
    ];
    for (jobs, expected) in cases {
        let mut core = Core::new(Config::default(), 1);
        let error = submit(&mut core, 0, jobs.clone()).expect_err(&format!("{jobs:?} was accepted"));
        assert!(error.contains(expected), "expected {expected:?} in {error:?}");
        assert!(core.poll_action().is_none(), "a refused submission left a record");
        assert!(core.job_statuses(0).is_empty());
    }
    let mut core = Core::new(Config::default(), 1);
    let long_name = Submission { name: "w.x".into(), source: String::new(), jobs: vec![md("a")] };
    assert!(core.handle_submit(0, long_name, &Evidence::default()).unwrap_err().contains("workflow name"));
}

#[test]
fn hostile_hellos_are_refused() {
    let mut core = Core::new(Config::default(), 1);
    let worker = WorkerId([1; 32]);
    let cases = [
        Hello { name: "n".repeat(65), ..hello("w", 1, false) },
        Hello { device: "d".repeat(1000), ..hello("w", 1, false) },
        Hello { name: "w\u{1b}[2J".into(), ..hello("w", 1, false) },
        hello("w", 0, false),
        Hello { resources: Resources { cpus: 1, memory_bytes: u64::MAX, gpus: 0 }, ..hello("w", 1, false) },
    ];
    for case in cases {
        assert!(core.handle_worker_joined(0, worker, &case).is_err(), "{case:?}");
    }
    assert!(core.workers().is_empty());
}

/// Every capable worker gets work: with more workers than replicas, the chunks of a chain rotate
/// over all of them rather than going to the same two.
#[test]
fn replicas_spread_over_every_capable_worker() {
    let mut core = Core::new(Config::default(), 1);
    let workers: Vec<WorkerId> = (1..=3).map(|k| WorkerId([k; 32])).collect();
    for (k, worker) in workers.iter().enumerate() {
        core.handle_worker_joined(0, *worker, &hello(&format!("w{k}"), 4, false)).unwrap();
    }
    let mut spec = md_spec("chain", 6, vec![]);
    spec.replicas = 2;
    submit(&mut core, 0, vec![spec]).unwrap();
    let mut given: BTreeMap<WorkerId, u32> = BTreeMap::new();
    for now in 1..=6 {
        for (worker, assignment) in assignments(&mut core) {
            *given.entry(worker).or_default() += 1;
            let output = honest_output(assignment.chunk, &assignment.task);
            let evidence = uploaded(&output);
            core.handle_finished(
                now,
                worker,
                common::sign(&core, assignment.id, Outcome::Completed(output)),
                &evidence,
            );
        }
    }
    assert_eq!(given.values().sum::<u32>(), 12);
    assert_eq!(given.len(), 3, "a worker got nothing: {given:?}");
    assert!(given.values().all(|&n| n == 4), "uneven: {given:?}");
}

/// A worker that holds a chunk's large input gets the chunk while it has room; small inputs do
/// not pull work together, nor do inputs a worker only claims to hold. `status` counts the
/// assignments that found their inputs in place.
#[test]
fn chunks_go_where_their_large_inputs_are() {
    use upglobe_scheduler::core::LOCALITY_BYTES_MIN;
    let run = |size: u64, claimed_only: bool| {
        let mut core = Core::new(Config::default(), 1);
        let (a, b) = (WorkerId([1; 32]), WorkerId([2; 32]));
        let input = FileRef { name: "traj.h5md".into(), blob: BlobHash([0xb1; 32]), size };
        let job = |name: &str, tasks: Vec<i64>| {
            let mut spec = command_spec(name, tasks);
            let JobKind::Command(command) = &mut spec.kind else { unreachable!() };
            command.inputs = vec![input.clone()];
            spec
        };
        let submit = |core: &mut Core, spec: JobSpec| {
            let submission = Submission { name: "sim".into(), source: "# source".into(), jobs: vec![spec] };
            let evidence = Evidence::gather(upglobe_scheduler::core::checks::submission_blobs(&submission), |hash| {
                (*hash == input.blob).then_some(BlobFact { size, tail: vec![0; 32] })
            });
            core.handle_submit(0, submission, &evidence).unwrap().1[0].1
        };
        core.handle_worker_joined(0, b, &hello("b", 4, true)).unwrap();
        if claimed_only {
            core.handle_holding(b, &[input.blob]);
        } else {
            // B runs a task on the input first: then it surely holds it.
            submit(&mut core, job("first", vec![0]));
            for (worker, assignment) in assignments(&mut core) {
                let output = Output::Command {
                    exit_code: 0,
                    files: vec![file("out/a.csv", 3)],
                    stdout: file("stdout", 4),
                    stderr: file("stderr", 5),
                };
                let evidence = uploaded(&output);
                core.handle_finished(
                    1,
                    worker,
                    common::sign(&core, assignment.id, Outcome::Completed(output)),
                    &evidence,
                );
            }
        }
        core.handle_worker_joined(2, a, &hello("a", 4, true)).unwrap();
        let id = submit(&mut core, job("sum", vec![1, 2, 3, 4]));
        let given: Vec<WorkerId> = assignments(&mut core).into_iter().map(|(worker, _)| worker).collect();
        (given, core.job_status(3, id).unwrap())
    };
    let (given, status) = run(LOCALITY_BYTES_MIN, false);
    assert_eq!(given, vec![WorkerId([2; 32]); 4], "every task where the input is");
    assert_eq!((status.assignments, status.assignments_local), (4, 4));
    let (given, status) = run(1024, false);
    assert_eq!(given.iter().filter(|w| **w == WorkerId([1; 32])).count(), 2, "small inputs spread: {given:?}");
    assert_eq!((status.assignments, status.assignments_local), (4, 2));
    let (given, _) = run(LOCALITY_BYTES_MIN, true);
    assert_eq!(given.iter().filter(|w| **w == WorkerId([1; 32])).count(), 2, "a claim draws nothing: {given:?}");
}

fn gpu_hello(name: &str, gpus: usize) -> upglobe_protocol::messages::Hello {
    let mut hello = hello(name, 4, true);
    hello.resources.gpus = gpus as u32;
    hello.gpus = (0..gpus)
        .map(|k| upglobe_protocol::messages::GpuDevice {
            name: "A100".into(),
            uuid: format!("GPU-{k}"),
            vram_total_bytes: 80 << 30,
            vram_free_bytes: 80 << 30,
            driver: "550".into(),
            utilisation_percent: 0,
        })
        .collect();
    hello
}

/// Jobs asking for GPUs go to workers that have them, and a job no worker can ever hold says why
/// it waits; a hello whose GPU count and descriptions disagree is refused.
#[test]
fn gpu_jobs_go_to_gpu_workers_and_say_why_they_wait() {
    let mut core = Core::new(Config::default(), 1);
    let (plain, gpu) = (WorkerId([1; 32]), WorkerId([2; 32]));
    core.handle_worker_joined(0, plain, &hello("plain", 4, true)).unwrap();
    core.handle_worker_joined(0, gpu, &gpu_hello("gpu", 2)).unwrap();
    let mut one = command_spec("one", vec![1, 2]);
    one.resources.gpus = 1;
    let mut four = command_spec("four", vec![1]);
    four.resources.gpus = 4;
    let ids = submit(&mut core, 0, vec![one, four]).unwrap();
    let given: Vec<WorkerId> = assignments(&mut core).into_iter().map(|(worker, _)| worker).collect();
    assert_eq!(given, vec![gpu, gpu], "both tasks on the GPU worker, one GPU each");
    let id = |name: &str| ids.iter().find(|(n, _)| n.ends_with(name)).unwrap().1;
    let waiting = core.job_status(1, id("four")).unwrap().waiting;
    assert_eq!(waiting.as_deref(), Some("no worker has 4 GPUs (the most any has is 2)"));
    assert_eq!(core.job_status(1, id("one")).unwrap().waiting, None, "running jobs do not wait");
    let workers = core.workers();
    let described = workers.iter().find(|w| w.id == gpu).unwrap();
    assert_eq!((described.gpus.len(), described.gpus[0].name.as_str()), (2, "A100"));

    let mut lying = gpu_hello("liar", 1);
    lying.resources.gpus = 8;
    let refused = core.handle_worker_joined(2, WorkerId([3; 32]), &lying).unwrap_err();
    assert!(refused.contains("offers 8 GPUs but describes 1"), "{refused}");
}

/// A job's GPU requests: each task gets GPUs of its own with the memory it asks (two tasks never
/// share one, so a GPU's memory is never oversubscribed), the scheduler names them by UUID and
/// gives them back when the task ends, and a request no worker can meet says why it waits.
#[test]
fn gpu_memory_and_backend_requests_are_met_or_explained() {
    let mut core = Core::new(Config::default(), 1);
    let gpu = WorkerId([2; 32]);
    let mut hello = gpu_hello("gpu", 2);
    hello.gpus[1].vram_free_bytes = 10 << 30;
    hello.adapters = vec!["NVIDIA A100 (vulkan, discretegpu, NVIDIA 550)".into()];
    core.handle_worker_joined(0, gpu, &hello).unwrap();
    let mut big = command_spec("big", vec![1, 2, 3]);
    big.resources.gpus = 1;
    big.gpu.vram_bytes = 40 << 30;
    big.gpu.backend = Some("vulkan".into());
    let mut huge = command_spec("huge", vec![1]);
    huge.resources.gpus = 1;
    huge.gpu.vram_bytes = 100 << 30;
    let mut metal = command_spec("metal", vec![1]);
    metal.resources.gpus = 1;
    metal.gpu.backend = Some("metal".into());
    let ids = submit(&mut core, 0, vec![big, huge, metal]).unwrap();
    let id = |name: &str| ids.iter().find(|(n, _)| n.ends_with(name)).unwrap().1;
    // Only GPU-0 has 40 GiB free: one task at a time, on it.
    let given = assignments(&mut core);
    assert_eq!(given.len(), 1, "{given:?}");
    assert_eq!(given[0].1.gpus, ["GPU-0"]);
    assert_eq!(given[0].1.backend.as_deref(), Some("vulkan"));
    assert_eq!(core.job_status(1, id("big")).unwrap().waiting, None, "big waits only for a busy GPU");
    assert_eq!(
        core.job_status(1, id("huge")).unwrap().waiting.as_deref(),
        Some("no worker has a GPU with 100.0 GiB free (the most any GPU has is 80.0 GiB)")
    );
    assert_eq!(
        core.job_status(1, id("metal")).unwrap().waiting.as_deref(),
        Some("no worker has a GPU adapter on the metal backend")
    );
    assert_eq!(core.workers()[0].busy.gpus, 1);
    // The GPU comes back when the task ends (here it failed), and goes to the next attempt.
    let failed = Outcome::Failed { reason: "out of GPU memory".into() };
    core.handle_finished(2, gpu, common::sign(&core, given[0].1.id, failed), &Evidence::default());
    let next = assignments(&mut core);
    assert_eq!(next.len(), 1, "{next:?}");
    assert_eq!(next[0].1.gpus, ["GPU-0"]);
}
