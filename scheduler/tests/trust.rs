//! Verification of MD chunks, scenario by scenario, on the real core: disputes settled by one
//! re-run link, audits that catch a forged link or a worker that does not serve its state, and
//! chunks chained after an overturned result that run again.

mod common;

use std::collections::HashMap;

use common::{hello, sign, uploaded};
use upglobe_protocol::messages::{
    JobKind, JobSpec, JobState, MdJob, Outcome, Output, Resources, Submission, Task, ToWorker,
};
use upglobe_protocol::trust::{NodeRole, TrustEventKind, Verification};
use upglobe_protocol::{AssignmentId, BlobHash, JobId, WorkerId};
use upglobe_scheduler::core::{Action, BlobFact, Config, Core, Evidence, Record};

const INITIAL: BlobHash = BlobHash([9; 32]);
const CHUNK_STEPS: u64 = 1600;
const LINKS: u64 = 16;
const _: () = assert!(CHUNK_STEPS.is_multiple_of(LINKS));

/// One link of honest dynamics: the next state is a pure function of the state.
fn advance(state: [u8; 32]) -> [u8; 32] {
    *blake3::hash(&[&state[..], b"link"].concat()).as_bytes()
}

fn blob_of(state: [u8; 32]) -> BlobHash {
    BlobHash(*blake3::hash(&[&state[..], b"blob"].concat()).as_bytes())
}

#[derive(Clone, Copy, PartialEq)]
enum Behaviour {
    Honest,
    /// The state is corrupted at the end of this link of every chunk; later links follow from it.
    WrongFrom(usize),
    /// This link's hash is forged; the states are honest.
    ForgeLink(usize),
    /// Like honest, but never serves a state.
    Mute,
}

struct World {
    core: Core,
    now: u64,
    /// The state in each blob the scheduler holds.
    states: HashMap<BlobHash, [u8; 32]>,
    behaviour: HashMap<WorkerId, Behaviour>,
    /// What each worker computed for each assignment: its input state and the states it really
    /// reached after each link (what it can serve, whatever its chain claims).
    computed: HashMap<AssignmentId, ([u8; 32], Vec<[u8; 32]>)>,
    /// Assignments handed out and not yet answered.
    inbox: Vec<(WorkerId, upglobe_protocol::messages::Assignment)>,
    serve: Vec<(WorkerId, u64, AssignmentId, u32)>,
    records: Vec<Record>,
    verifier_steps: u64,
}

impl World {
    fn new(config: Config) -> World {
        let mut states = HashMap::new();
        states.insert(INITIAL, [7; 32]);
        World {
            core: Core::new(config, 1),
            now: 0,
            states,
            behaviour: HashMap::new(),
            computed: HashMap::new(),
            inbox: Vec::new(),
            serve: Vec::new(),
            records: Vec::new(),
            verifier_steps: 0,
        }
    }

    fn join(&mut self, id: u8, role: NodeRole, behaviour: Behaviour) -> WorkerId {
        let worker = WorkerId([id; 32]);
        let hello = upglobe_protocol::messages::Hello { role, ..hello(&format!("w{id}"), 1, false) };
        self.core.handle_worker_joined(self.now, worker, &hello).unwrap();
        self.behaviour.insert(worker, behaviour);
        self.drain();
        worker
    }

    fn submit(&mut self, chunks: u64) -> JobId {
        let md = MdJob {
            initial: INITIAL,
            atoms: 1000,
            total_steps: chunks * CHUNK_STEPS,
            chunk_steps: CHUNK_STEPS,
            thermo_every: CHUNK_STEPS,
        };
        let spec = JobSpec {
            name: "melt".into(),
            after: vec![],
            replicas: 2,
            resources: Resources { cpus: 1, memory_bytes: 0, gpus: 0 },
            kind: JobKind::Md(md),
            gpu: Default::default(),
            verification: Verification::Adaptive,
        };
        let submission = Submission { name: "trust".into(), source: String::new(), jobs: vec![spec] };
        let evidence = Evidence::gather([INITIAL], |_| Some(BlobFact { size: 100, tail: vec![7; 32] }));
        let (_, ids) = self.core.handle_submit(self.now, submission, &evidence).unwrap();
        self.drain();
        ids[0].1
    }

    fn drain(&mut self) {
        while let Some(action) = self.core.poll_action() {
            match action {
                Action::Persist(record) => self.records.push(record),
                Action::Send { worker, message: ToWorker::Assign(assignment) } => self.inbox.push((worker, assignment)),
                Action::Send { worker, message: ToWorker::ServeState { request, assignment, link, .. } } => {
                    self.serve.push((worker, request, assignment, link))
                }
                Action::Send { .. } | Action::Compare { .. } => {}
            }
        }
        self.core.check_invariants();
    }

    /// Runs an MD task as `worker` would, remembering what it claims.
    fn compute(&mut self, worker: WorkerId, assignment: &upglobe_protocol::messages::Assignment) -> Output {
        let Task::Md { input, steps, chain_every, .. } = assignment.task else { panic!("md tasks only") };
        let start = self.states[&input];
        let behaviour = self.behaviour[&worker];
        let (mut state, mut chain, mut reached) = (start, Vec::new(), Vec::new());
        for link in 0..(steps / chain_every) as usize {
            state = advance(state);
            if behaviour == Behaviour::WrongFrom(link) {
                state[0] ^= 1;
            }
            let claimed = if behaviour == Behaviour::ForgeLink(link) { [0xee; 32] } else { state };
            self.states.insert(blob_of(state), state);
            chain.push(claimed);
            reached.push(state);
        }
        self.computed.insert(assignment.id, (start, reached));
        let step = (assignment.chunk.index as u64 + 1) * CHUNK_STEPS;
        let thermo = if steps == CHUNK_STEPS {
            vec![upglobe_protocol::messages::ThermoLine { step, temp: 1.0, pe: 0.0, ke: 0.0, etotal: 0.0, press: 0.0 }]
        } else {
            vec![]
        };
        Output::Md { state_hash: state, checkpoint: blob_of(state), checkpoint_bytes: 100, thermo, chain }
    }

    /// Answers every assignment and serve request in hand, until nothing is left.
    fn run(&mut self) {
        for _ in 0..1000 {
            if self.inbox.is_empty() && self.serve.is_empty() {
                return;
            }
            self.now += 10;
            for (worker, request, assignment, link) in std::mem::take(&mut self.serve) {
                if self.behaviour[&worker] == Behaviour::Mute {
                    continue;
                }
                let (input, reached) = &self.computed[&assignment];
                let state = if link == 0 { *input } else { reached[link as usize - 1] };
                let blob = blob_of(state);
                let evidence = Evidence::gather([blob], |_| Some(BlobFact { size: 100, tail: state.to_vec() }));
                self.core.handle_state_served(self.now, worker, request, Ok(blob), &evidence);
                self.drain();
            }
            for (worker, assignment) in std::mem::take(&mut self.inbox) {
                let output = self.compute(worker, &assignment);
                if let Task::Md { steps, .. } = assignment.task
                    && self.behaviour[&worker] == Behaviour::Honest
                    && self.core.workers().iter().any(|w| w.id == worker && w.role == NodeRole::Verifier)
                {
                    self.verifier_steps += steps;
                }
                let evidence = uploaded(&output);
                let finished = sign(&self.core, assignment.id, Outcome::Completed(output));
                self.core.handle_finished(self.now, worker, finished, &evidence);
                self.drain();
            }
        }
        panic!("the scenario did not settle");
    }

    fn pass_time(&mut self, ms: u64) {
        self.now += ms;
        self.core.handle_timeout(self.now);
        self.drain();
    }

    fn events(&self) -> Vec<&TrustEventKind> {
        self.records.iter().filter_map(|r| if let Record::Trust(e) = r { Some(&e.what) } else { None }).collect()
    }

    /// The state an honest run reaches after `chunks` chunks.
    fn truth(&self, chunks: u64) -> [u8; 32] {
        let links = self.core.config().chain_links as u64;
        (0..chunks * links).fold([7; 32], |s, _| advance(s))
    }

    fn final_state(&self, job: JobId) -> [u8; 32] {
        let mut latest: HashMap<u32, [u8; 32]> = HashMap::new();
        for record in &self.records {
            match record {
                Record::ChunkVerified { chunk, output: Output::Md { state_hash, .. }, .. } if chunk.job == job => {
                    latest.insert(chunk.index, *state_hash);
                }
                Record::Invalidated { job: j, from_chunk, .. } if *j == job => latest.retain(|k, _| k < from_chunk),
                _ => {}
            }
        }
        latest[&latest.keys().max().copied().unwrap()]
    }
}

fn config() -> Config {
    Config { chain_links: LINKS as u32, trust_after: 2, ..Config::default() }
}

#[test]
fn a_disagreement_is_settled_by_bisection_and_one_rerun_link() {
    let mut world = World::new(config());
    let honest = world.join(1, NodeRole::Worker, Behaviour::Honest);
    let cheat = world.join(2, NodeRole::Worker, Behaviour::WrongFrom(5));
    world.join(3, NodeRole::Verifier, Behaviour::Honest);
    let job = world.submit(1);
    world.run();
    let settled: Vec<_> = world
        .events()
        .into_iter()
        .filter_map(|e| {
            if let TrustEventKind::DisputeSettled { link, winner, loser, steps, .. } = e {
                Some((*link, *winner, loser.clone(), *steps))
            } else {
                None
            }
        })
        .collect();
    assert_eq!(settled, vec![(5, Some(honest), vec![cheat], CHUNK_STEPS / LINKS)], "one link re-run, the cheater lost");
    let rounds = world
        .events()
        .into_iter()
        .find_map(|e| if let TrustEventKind::Dispute { rounds, .. } = e { Some(*rounds) } else { None });
    assert!(rounds.unwrap() <= 4, "bisection over 16 links takes at most log2(16) rounds");
    assert_eq!(world.core.job_status(world.now, job).unwrap().state, JobState::Completed);
    assert_eq!(world.final_state(job), world.truth(1));
    let status = world.core.workers().into_iter().find(|w| w.id == cheat).unwrap();
    assert_eq!(status.disagreements, 1);
}

#[test]
fn an_audit_finds_a_forged_link_and_the_chunk_runs_again() {
    // Trusted from the start and always audited: the forging worker runs alone. With two links, the
    // audit of either finds the forged first link (the forged hash itself, or a served state that is
    // not the one the chain claims).
    let mut world = World::new(Config { trust_after: 0, audit_rate_min: 1.0, chain_links: 2, ..config() });
    let forger = world.join(1, NodeRole::Worker, Behaviour::ForgeLink(0));
    world.join(3, NodeRole::Verifier, Behaviour::Honest);
    let job = world.submit(1);
    world.run();
    // The audit of link 0 finds the forged hash; of link 1, a served state that is not the chain's.
    assert!(world.events().iter().any(|e| matches!(e, TrustEventKind::AuditFailed { .. })), "{:?}", world.events());
    assert!(world.events().iter().any(|e| matches!(e, TrustEventKind::Invalidated { .. })));
    let status = world.core.workers().into_iter().find(|w| w.id == forger).unwrap();
    assert!(status.audits_failed >= 1 || status.disagreements >= 1);
    // An honest worker arrives and the job completes on the true chain.
    world.join(4, NodeRole::Worker, Behaviour::Honest);
    world.join(5, NodeRole::Worker, Behaviour::Honest);
    world.run();
    world.pass_time(config().settle_after_ms + 1);
    world.run();
    assert_eq!(world.core.job_status(world.now, job).unwrap().state, JobState::Completed);
    assert_eq!(world.final_state(job), world.truth(1));
}

#[test]
fn a_worker_that_does_not_serve_its_state_in_time_fails_the_audit() {
    let mut world = World::new(Config { trust_after: 0, audit_rate_min: 1.0, ..config() });
    let mute = world.join(1, NodeRole::Worker, Behaviour::Mute);
    world.join(3, NodeRole::Verifier, Behaviour::Honest);
    world.submit(1);
    world.run();
    let audit_link = world
        .events()
        .iter()
        .find_map(|e| if let TrustEventKind::AuditOrdered { link } = e { Some(*link) } else { None });
    // Link 0 starts from the verified input, which the scheduler holds: nothing to serve. The draw is
    // keyed by the (fixed) test secret and the result, so it is always the same link.
    assert!(audit_link.is_some_and(|link| link > 0), "the draw picked link {audit_link:?}; pick another secret");
    assert!(!world.events().iter().any(|e| matches!(e, TrustEventKind::AuditFailed { .. })));
    world.pass_time(config().serve_deadline_ms + 1);
    let failed = world
        .events()
        .into_iter()
        .find_map(|e| if let TrustEventKind::AuditFailed { reason, .. } = e { Some(reason.clone()) } else { None });
    assert!(failed.unwrap().contains("no answer within"), "the deadline passed");
    assert_eq!(world.core.workers().into_iter().find(|w| w.id == mute).unwrap().disagreements, 1);
}

#[test]
fn chunks_chained_after_an_overturned_result_run_again() {
    // A trusted cheater's first chunk is accepted provisionally while no verifier is there; two more
    // chunks run on its wrong output. When a verifier arrives, the audit fails and all three go.
    // One link per chunk: the audit re-runs the whole chunk, so it catches any wrong state.
    let mut world = World::new(Config { trust_after: 0, audit_rate_min: 1.0, chain_links: 1, ..config() });
    world.join(1, NodeRole::Worker, Behaviour::WrongFrom(0));
    let job = world.submit(3);
    world.run();
    assert_eq!(world.core.job_status(world.now, job).unwrap().chunks_verified, 3);
    assert_eq!(world.core.job_status(world.now, job).unwrap().chunks_final, 0, "all provisional");
    world.join(3, NodeRole::Verifier, Behaviour::Honest);
    world.join(4, NodeRole::Worker, Behaviour::Honest);
    world.run();
    let invalidated = world.records.iter().filter(|r| matches!(r, Record::Invalidated { from_chunk: 0, .. })).count();
    assert!(invalidated >= 1, "chunk 0 and everything after it were overturned");
    world.run();
    world.pass_time(config().settle_after_ms + 1);
    world.run();
    let status = world.core.job_status(world.now, job).unwrap();
    assert_eq!(status.state, JobState::Completed);
    assert_eq!(world.final_state(job), world.truth(3));
}

#[test]
fn tolerance_results_agree_by_comparison_and_a_disagreement_asks_for_more() {
    use upglobe_protocol::messages::{CommandJob, FileRef, TaskIds};
    use upglobe_protocol::trust::{Compared, ToleranceRule};
    let mut core = Core::new(config(), 1);
    for id in 1..=3u8 {
        core.handle_worker_joined(0, WorkerId([id; 32]), &hello(&format!("w{id}"), 1, true)).unwrap();
    }
    let rule =
        ToleranceRule { file: "energy.txt".into(), values: Compared::Columns(vec![2]), absolute: 1e-6, relative: 0.0 };
    let command = CommandJob {
        argv: vec!["run".into()],
        tasks: TaskIds::default(),
        inputs: vec![],
        outputs: vec!["energy.txt".into()],
        timeout_s: 60,
        container: None,
        checkpoint: None,
    };
    let spec = JobSpec {
        name: "fp".into(),
        after: vec![],
        replicas: 2,
        resources: Resources { cpus: 1, memory_bytes: 0, gpus: 0 },
        kind: JobKind::Command(command),
        gpu: Default::default(),
        verification: Verification::Tolerance(vec![rule]),
    };
    let submission = Submission { name: "tol".into(), source: String::new(), jobs: vec![spec] };
    let (_, ids) = core.handle_submit(0, submission, &Evidence::default()).unwrap();
    let job = ids[0].1;
    let file = |seed: u8| FileRef { name: "energy.txt".into(), blob: BlobHash([seed; 32]), size: 10 };
    let std = |name: &str, seed: u8| FileRef { name: name.into(), blob: BlobHash([seed; 32]), size: 1 };
    let output = |seed: u8| Output::Command {
        exit_code: 0,
        files: vec![file(seed)],
        stdout: std("stdout", 100 + seed),
        stderr: std("stderr", 200),
    };
    let mut compares = Vec::new();
    let answer = |core: &mut Core, now: u64, compares: &mut Vec<u64>| {
        let mut assigned = Vec::new();
        while let Some(action) = core.poll_action() {
            match action {
                Action::Send { worker, message: ToWorker::Assign(a) } => assigned.push((worker, a)),
                Action::Compare { id, .. } => compares.push(id),
                _ => {}
            }
        }
        for (worker, assignment) in assigned {
            let seed = worker.0[0];
            let out = output(seed);
            let evidence = uploaded(&out);
            let finished = sign(core, assignment.id, Outcome::Completed(out));
            core.handle_finished(now, worker, finished, &evidence);
        }
        core.check_invariants();
    };
    answer(&mut core, 1, &mut compares);
    answer(&mut core, 2, &mut compares);
    // Two results with different bytes: the core asks the shell to compare them.
    assert_eq!(compares.len(), 1);
    assert_eq!(core.job_status(2, job).unwrap().chunks_verified, 0);
    // They differ beyond the tolerance: a third replica is asked for, and compared in turn.
    core.handle_compared(3, compares.pop().unwrap(), false);
    answer(&mut core, 4, &mut compares);
    answer(&mut core, 5, &mut compares);
    assert_eq!(compares.len(), 1, "the third result is compared with the first group");
    core.handle_compared(6, compares.pop().unwrap(), true);
    let status = core.job_status(6, job).unwrap();
    assert_eq!(status.state, JobState::Completed, "two results agree within the tolerances");
}

#[test]
fn a_worker_away_when_its_state_is_asked_for_is_not_blamed() {
    let mut world = World::new(Config { trust_after: 0, audit_rate_min: 1.0, ..config() });
    let worker = world.join(1, NodeRole::Worker, Behaviour::Honest);
    world.join(3, NodeRole::Verifier, Behaviour::Honest);
    let job = world.submit(1);
    // The worker answers its chunk, then is gone before it can serve the audited link's start.
    world.now += 10;
    let (_, assignment) = world.inbox.pop().unwrap();
    let output = world.compute(worker, &assignment);
    let evidence = uploaded(&output);
    let finished = sign(&world.core, assignment.id, Outcome::Completed(output));
    world.core.handle_finished(world.now, worker, finished, &evidence);
    world.drain();
    assert_eq!(world.serve.len(), 1, "the audit asks for a state: {:?}", world.events());
    world.serve.clear();
    world.core.handle_worker_left(world.now, worker, "network");
    world.drain();
    world.pass_time(config().serve_deadline_ms + 1);
    assert!(!world.events().iter().any(|e| matches!(e, TrustEventKind::AuditFailed { .. })), "not blamed while away");
    // It never comes back: the verifier starts from the chunk's input instead, and the audit passes.
    world.pass_time(4 * config().lease_timeout_ms + 1);
    world.run();
    let passed = world.events().into_iter().find_map(|e| match e {
        TrustEventKind::AuditPassed { steps, .. } => Some(*steps),
        _ => None,
    });
    assert!(passed.is_some_and(|steps| steps > CHUNK_STEPS / LINKS), "re-run from the input: {passed:?}");
    assert_eq!(world.core.workers().into_iter().find(|w| w.id == worker).unwrap().disagreements, 0);
    world.pass_time(config().settle_after_ms + 1);
    assert_eq!(world.core.job_status(world.now, job).unwrap().chunks_final, 1);
}
