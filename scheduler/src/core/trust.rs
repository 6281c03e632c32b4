//! Verification of bit-deterministic (MD) chunks: the standing of workers, audits, disputes,
//! re-checks and finality.
//!
//! Every MD result carries a hash chain: the state hash every `chain_every` steps. Because honest
//! workers produce identical bytes, any interval ("link") of a chain can be re-run from the state at
//! its start and compared. That makes three cheap checks, all run by verifier nodes on their reference
//! kernel:
//! - an **audit** re-runs one link of a single execution, chosen by a keyed hash of the scheduler's
//!   secret and the committed result, so a worker cannot know it before it commits;
//! - a **dispute** between two results bisects their chains to a link where they diverge from an
//!   agreed state and re-runs only that link;
//! - a **re-check** re-runs a whole chunk of a worker that was caught, from its verified input.
//!
//! The state at a link's start comes from the worker that claimed it (it keeps its intermediate
//! states until the chunk settles); not serving it within the deadline, or serving a state that is
//! not the one its chain claims, fails the check.
//!
//! Policy: a worker runs replicated until `trust_after` of its results were confirmed; then alone,
//! audited with a probability that falls with its record and rises with the value at stake. One
//! failure resets it to replication, re-checks its provisional results and invalidates every chunk
//! chained after a result that turns out wrong. A provisional result becomes final when a check
//! confirms it or when its challenge window passes.

use std::collections::BTreeSet;

use upglobe_protocol::messages::{JobKind, JobState, Output, Task, ToWorker};
use upglobe_protocol::trust::{Finality, NodeRole, TrustEvent, TrustEventKind, Verification};
use upglobe_protocol::{AssignmentId, BlobHash, ChunkId, Digest, JobId, WorkerId};

use super::{Action, Core, Lease, Record, Worker};

/// A worker's record, as the trust policy sees it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Standing {
    /// Results confirmed (by agreement, a check or a passed challenge window) since the last failure.
    pub clean: u64,
    /// Checks failed and disputes lost, ever.
    pub failures: u64,
    pub audits_passed: u64,
    pub audits_failed: u64,
}

impl Standing {
    pub fn trusted(&self, trust_after: u64) -> bool {
        self.clean >= trust_after
    }
}

/// A result accepted on its worker's record: it may still be overturned.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Provisional {
    pub worker: WorkerId,
    /// Further workers that returned the same result: they stand or fall with it.
    #[serde(default)]
    pub others: Vec<WorkerId>,
    pub assignment: AssignmentId,
    pub input: BlobHash,
    pub digest: Digest,
    pub output: Output,
    pub accepted_ms: u64,
    /// The link an audit re-runs, if the policy chose one.
    pub audit_link: Option<u32>,
}

pub(super) type CheckId = u64;

#[derive(Debug, Clone, PartialEq)]
pub(super) enum Purpose {
    /// One link of a provisional result.
    Audit,
    /// The first diverging link of two (or more) results of an open chunk.
    Dispute { rounds: u32 },
    /// A whole chunk of a worker that was caught.
    Recheck,
}

/// One claim a check settles: a worker's result and the hash it claims at the end of the interval.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Claim {
    pub worker: WorkerId,
    pub assignment: AssignmentId,
    pub end: [u8; 32],
}

/// Where the state the verifier starts from comes from.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Start {
    Known(BlobHash),
    /// Asked of `claims[from]`; the served blob must end with `expected` (the agreed state hash).
    Awaiting {
        from: usize,
        request: u64,
        deadline_ms: u64,
        expected: [u8; 32],
    },
    /// To be asked of `claims[from]`, which is not connected: asked when it joins again, and if it does
    /// not by `until_ms`, the verifier starts from the chunk's input instead (nobody is blamed for
    /// being away).
    Parked {
        from: usize,
        until_ms: u64,
        expected: [u8; 32],
    },
}

#[derive(Debug, Clone, PartialEq)]
pub(super) struct Check {
    pub chunk: ChunkId,
    pub purpose: Purpose,
    /// The interval re-run: links `link .. link + links`.
    pub link: u32,
    pub links: u32,
    pub start: Start,
    /// The chunk's verified input: where a verifier starts when no claimant can serve a later state.
    pub input: BlobHash,
    pub claims: Vec<Claim>,
    /// Workers whose serving failed: they lose.
    pub unserved: Vec<WorkerId>,
    pub verifier: Option<AssignmentId>,
    /// The verifier node that ran it (for the record).
    pub verified_by: Option<WorkerId>,
}

/// Timers of the trust machinery, beside the leases.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum TrustTimer {
    /// A worker must have served a check's start state by now.
    Serve(CheckId),
    /// A provisional result's challenge window ends.
    Settle(ChunkId),
    /// A parked check stops waiting for its claimant.
    Unpark(CheckId),
}

/// Links of a chunk's chain: the most, up to `target`, that divide the chunk's steps evenly.
pub fn chain_links(chunk_steps: u64, target: u32) -> u32 {
    let target = target.clamp(1, upglobe_protocol::trust::CHAIN_LINKS_MAX as u32) as u64;
    (1..=target.min(chunk_steps.max(1))).rev().find(|l| chunk_steps.is_multiple_of(*l)).unwrap_or(1) as u32
}

/// A value in [0, 1) and a link index, derived from the scheduler's secret and a committed result:
/// unknowable to the worker before it committed, the same for the scheduler after a restart.
fn keyed_draw(secret: &[u8; 32], chunk: ChunkId, digest: &Digest, links: u32) -> (f64, u32) {
    let mut hasher = blake3::Hasher::new_keyed(secret);
    hasher.update(b"audit");
    hasher.update(&chunk.job.0.to_le_bytes());
    hasher.update(&chunk.index.to_le_bytes());
    hasher.update(&digest.0);
    let bytes = hasher.finalize();
    let bytes = bytes.as_bytes();
    let draw = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes")) >> 11;
    let link = u64::from_le_bytes(bytes[8..16].try_into().expect("8 bytes")) % links.max(1) as u64;
    (draw as f64 / (1u64 << 53) as f64, link as u32)
}

/// The first link at which two chains diverge from an agreed state, by bisection when their ends
/// differ (a wrong state propagates, so "agree before, differ at" is monotone), else by a scan (a
/// forged link in an otherwise honest chain). Returns the link and the rounds of bisection.
pub fn diverging_link(a: &[[u8; 32]], b: &[[u8; 32]]) -> Option<(u32, u32)> {
    let links = a.len().min(b.len());
    if links == 0 {
        return None;
    }
    if a[links - 1] == b[links - 1] {
        return (0..links).find(|&j| a[j] != b[j]).map(|j| (j as u32, 0));
    }
    // Invariant: links before `low` agree up to the state at `low` (all of them agree at the input);
    // link `high` differs.
    let (mut low, mut high, mut rounds) = (0usize, links - 1, 0u32);
    while low < high {
        let middle = (low + high) / 2;
        rounds += 1;
        if a[middle] == b[middle] {
            low = middle + 1;
        } else {
            high = middle;
        }
    }
    Some((high as u32, rounds))
}

fn chain_of(output: &Output) -> &[[u8; 32]] {
    match output {
        Output::Md { chain, .. } => chain,
        _ => &[],
    }
}

impl Core {
    pub(super) fn standing_label(&self, worker: &Worker) -> String {
        let standing = &worker.standing;
        if worker.role == NodeRole::Verifier {
            return "verifier".into();
        }
        if worker.standing.failures >= self.config.disagreements_max {
            return format!("quarantined ({} failures)", standing.failures);
        }
        if standing.trusted(self.config.trust_after) {
            format!("trusted, audits at {:.0} %", 100.0 * self.audit_probability(standing, 1.0))
        } else {
            format!("replicated ({} of {} clean results)", standing.clean, self.config.trust_after)
        }
    }

    /// How likely a trusted worker's single execution is audited: `trust_after / clean` of the time
    /// (so every result while the record is short), never below the floor, scaled by the stake.
    pub(super) fn audit_probability(&self, standing: &Standing, stake: f64) -> f64 {
        let record = self.config.trust_after.max(1) as f64 / standing.clean.max(1) as f64;
        (record.max(self.config.audit_rate_min) * stake).min(1.0)
    }

    /// The value at stake in a chunk, relative to the reference: at least 1, at most 4.
    fn stake(&self, job: JobId) -> f64 {
        match &self.jobs[&job].spec.kind {
            JobKind::Md(md) => {
                let work = md.atoms as f64 * md.chunk_steps as f64;
                (work / self.config.stake_reference_atom_steps.max(1) as f64).clamp(1.0, 4.0)
            }
            _ => 1.0,
        }
    }

    pub(super) fn adaptive(&self, job: JobId) -> bool {
        let spec = &self.jobs[&job].spec;
        matches!(spec.kind, JobKind::Md(_)) && spec.verification == Verification::Adaptive
    }

    pub(super) fn chain_links_of(&self, job: JobId) -> u32 {
        match &self.jobs[&job].spec.kind {
            JobKind::Md(md) => chain_links(md.chunk_steps, self.config.chain_links),
            _ => 0,
        }
    }

    pub(super) fn is_trusted(&self, worker: WorkerId) -> bool {
        self.workers.get(&worker).is_some_and(|w| w.standing.trusted(self.config.trust_after))
    }

    pub(super) fn event(
        &mut self,
        now: u64,
        job: Option<JobId>,
        chunk: Option<u32>,
        worker: Option<WorkerId>,
        what: TrustEventKind,
    ) {
        self.persist(Record::Trust(TrustEvent { time_ms: now, job, chunk, worker, what }));
    }

    // -----------------------------------------------------------------------------------------
    // Accepting adaptive results

    /// How many results an adaptive chunk wants: one from a trusted worker, otherwise the job's
    /// replicas (a job that asks for one replica relies on audits alone, even for new workers).
    pub(super) fn adaptive_target(&self, chunk_id: ChunkId, first: WorkerId) -> u32 {
        if self.is_trusted(first) { 1 } else { self.jobs[&chunk_id.job].spec.replicas }
    }

    /// Decides what to do with an adaptive chunk's results: accept, wait for more, or dispute.
    pub(super) fn settle_adaptive(&mut self, now: u64, chunk_id: ChunkId) {
        let chunk = &self.chunks[&chunk_id];
        if chunk.dispute.is_some() {
            return;
        }
        let digests: BTreeSet<Digest> = chunk.results.iter().map(|r| r.digest).collect();
        if digests.len() > 1 {
            self.start_dispute(now, chunk_id);
            return;
        }
        let Some(digest) = digests.first().copied() else { return };
        let agreeing: Vec<WorkerId> = chunk.results.iter().map(|r| r.worker).collect();
        let any_trusted = agreeing.iter().any(|w| self.is_trusted(*w));
        let quorum = self.jobs[&chunk_id.job].spec.replicas as usize;
        if agreeing.len() >= quorum || (any_trusted && agreeing.len() == 1) {
            self.accept_adaptive(now, chunk_id, digest);
        } else {
            // Fewer agreeing results than the job asks for, none of them trusted: ask for more.
            let chunk = self.chunks.get_mut(&chunk_id).expect("open");
            chunk.target = chunk.target.max(quorum as u32);
            self.refresh_ready(chunk_id);
        }
    }

    /// Accepts an adaptive chunk with the agreeing results: final when a trusted worker is among
    /// several that agree, otherwise provisional with an audit when the policy draws one.
    fn accept_adaptive(&mut self, now: u64, chunk_id: ChunkId, digest: Digest) {
        let chunk = &self.chunks[&chunk_id];
        let agreeing: Vec<WorkerId> = chunk.results.iter().filter(|r| r.digest == digest).map(|r| r.worker).collect();
        let all_trusted = agreeing.iter().all(|w| self.is_trusted(*w));
        if agreeing.len() >= 2 && all_trusted {
            for worker in &agreeing {
                self.confirm(now, *worker);
            }
            let how = format!("{} agreeing results of trusted workers", agreeing.len());
            self.verify(now, chunk_id, digest, None, &how);
            return;
        }
        let first = chunk.results.iter().find(|r| r.digest == digest).expect("agreeing").clone();
        let links = self.chain_links_of(chunk_id.job);
        let (draw, link) = keyed_draw(&self.config.audit_secret, chunk_id, &digest, links);
        let probability = if all_trusted {
            let standing = self.workers[&first.worker].standing;
            self.audit_probability(&standing, self.stake(chunk_id.job))
        } else {
            // A worker without a record is confirmed only under audit, whoever agrees with it: a
            // colluder must not vouch for its partner.
            1.0
        };
        let audit_link = (draw < probability).then_some(link);
        let provisional = Provisional {
            worker: first.worker,
            others: agreeing.iter().copied().filter(|w| *w != first.worker).collect(),
            assignment: first.assignment,
            input: chunk.input.expect("md chunks have an input"),
            digest,
            output: first.output.clone(),
            accepted_ms: now,
            audit_link,
        };
        let how = match audit_link {
            Some(link) => format!("{} result(s), audit of link {link} ordered", agreeing.len()),
            None => {
                format!("single execution by a trusted worker; final after {} s", self.config.settle_after_ms / 1000)
            }
        };
        self.verify(now, chunk_id, digest, Some(provisional), &how);
    }

    /// A worker's result was confirmed.
    fn confirm(&mut self, now: u64, worker: WorkerId) {
        let trust_after = self.config.trust_after;
        let Some(w) = self.workers.get_mut(&worker) else { return };
        let was = w.standing.trusted(trust_after);
        w.standing.clean += 1;
        let standing = w.standing;
        self.persist(Record::Standing { worker, standing });
        if !was && standing.trusted(trust_after) {
            let to = self.standing_label(&self.workers[&worker]);
            let reason = format!("{} results confirmed", standing.clean);
            self.event(
                now,
                None,
                None,
                Some(worker),
                TrustEventKind::Reputation { from: "replicated".into(), to, reason },
            );
        }
    }

    /// Called by [`Core::verify`] for a provisional acceptance: remembers it and orders its audit or
    /// starts its challenge window.
    pub(super) fn hold_provisional(&mut self, now: u64, chunk_id: ChunkId, provisional: Provisional) {
        let audit = provisional.audit_link;
        let job = self.jobs.get_mut(&chunk_id.job).expect("known job");
        job.provisional.insert(chunk_id.index, provisional.clone());
        match audit {
            Some(link) => self.order_audit(now, chunk_id, &provisional, link),
            None => {
                let at = provisional.accepted_ms + self.config.settle_after_ms;
                self.trust_timers.insert((at, TrustTimer::Settle(chunk_id)));
            }
        }
    }

    fn order_audit(&mut self, now: u64, chunk_id: ChunkId, provisional: &Provisional, link: u32) {
        let chain = chain_of(&provisional.output);
        let Some(end) = chain.get(link as usize).copied() else { return };
        let claim = Claim { worker: provisional.worker, assignment: provisional.assignment, end };
        let start = if link == 0 { None } else { Some(chain[link as usize - 1]) };
        let check = Check {
            chunk: chunk_id,
            purpose: Purpose::Audit,
            link,
            links: 1,
            start: Start::Known(provisional.input),
            input: provisional.input,
            claims: vec![claim],
            unserved: Vec::new(),
            verifier: None,
            verified_by: None,
        };
        let id = self.add_check(now, check, start);
        let _ = id;
        self.event(
            now,
            Some(chunk_id.job),
            Some(chunk_id.index),
            Some(provisional.worker),
            TrustEventKind::AuditOrdered { link },
        );
    }

    /// Registers a check; when its start is an intermediate state (`expected` is its hash), asks the
    /// first claimant to serve it.
    fn add_check(&mut self, now: u64, mut check: Check, expected: Option<[u8; 32]>) -> CheckId {
        let id = self.next_check;
        self.next_check += 1;
        if let Some(expected) = expected {
            check.start = Start::Awaiting { from: 0, request: 0, deadline_ms: 0, expected };
        }
        self.checks.insert(id, check);
        self.checks_by_chunk.insert((self.checks[&id].chunk, id));
        if expected.is_some() {
            self.ask_to_serve(now, id, 0);
        } else {
            self.checks_waiting.insert(id);
        }
        id
    }

    fn ask_to_serve(&mut self, now: u64, id: CheckId, from: usize) {
        let deadline_ms = now + self.config.serve_deadline_ms;
        let request = self.next_request;
        self.next_request += 1;
        let connected = |worker: &WorkerId| self.workers.get(worker).is_some_and(|w| w.connected);
        let claimant_connected = connected(&self.checks[&id].claims[from].worker);
        let park_ms = 4 * self.config.lease_timeout_ms.max(self.config.serve_deadline_ms);
        let check = self.checks.get_mut(&id).expect("known check");
        let expected = match check.start {
            Start::Awaiting { expected, .. } | Start::Parked { expected, .. } => expected,
            Start::Known(_) => unreachable!("asked to serve a known start"),
        };
        if !claimant_connected {
            // A scheduler that restarted, or a worker between connections: wait for it a while.
            let until_ms = now + park_ms;
            check.start = Start::Parked { from, until_ms, expected };
            self.trust_timers.insert((until_ms, TrustTimer::Unpark(id)));
            return;
        }
        check.start = Start::Awaiting { from, request, deadline_ms, expected };
        let claim = check.claims[from].clone();
        let link = check.link;
        self.serve_requests.insert(request, id);
        self.trust_timers.insert((deadline_ms, TrustTimer::Serve(id)));
        self.send(
            claim.worker,
            ToWorker::ServeState {
                request,
                assignment: claim.assignment,
                link,
                deadline_ms: self.config.serve_deadline_ms,
            },
        );
    }

    /// A worker's answer to a serve request, with what the store holds of the blob it names (its
    /// trailing bytes must be the agreed state hash).
    pub fn handle_state_served(
        &mut self,
        now: u64,
        worker: WorkerId,
        request: u64,
        served: Result<BlobHash, String>,
        evidence: &super::Evidence,
    ) {
        let Some(&id) = self.serve_requests.get(&request) else { return };
        let check = &self.checks[&id];
        let Start::Awaiting { from, deadline_ms, expected, .. } = check.start else { return };
        if check.claims[from].worker != worker {
            return;
        }
        self.serve_requests.remove(&request);
        self.trust_timers.remove(&(deadline_ms, TrustTimer::Serve(id)));
        let outcome = served.and_then(|blob| match evidence.fact(&blob) {
            None => Err(format!("the served state {} was never uploaded", blob.short())),
            Some(fact) if fact.tail != expected => {
                Err(format!("the served state {} is not the state its chain claims", blob.short()))
            }
            Some(_) => Ok(blob),
        });
        match outcome {
            Ok(blob) => {
                let check = self.checks.get_mut(&id).expect("known");
                check.start = Start::Known(blob);
                self.checks_waiting.insert(id);
                self.schedule(now);
            }
            Err(reason) => self.serving_failed(now, id, reason),
        }
    }

    /// The claimant asked for a check's start state did not serve it: it loses; another claimant of
    /// the same agreed state may serve it instead.
    fn serving_failed(&mut self, now: u64, id: CheckId, reason: String) {
        let check = self.checks.get_mut(&id).expect("known check");
        let Start::Awaiting { from, .. } = check.start else { return };
        let loser = check.claims[from].worker;
        check.unserved.push(loser);
        let chunk = check.chunk;
        let link = check.link;
        self.event(
            now,
            Some(chunk.job),
            Some(chunk.index),
            Some(loser),
            TrustEventKind::AuditFailed {
                link,
                reason: format!("did not serve the state at the start of link {link}: {reason}"),
            },
        );
        let next = from + 1;
        if next < self.checks[&id].claims.len() {
            self.ask_to_serve(now, id, next);
        } else {
            self.resolve_check(now, id, None);
        }
        self.schedule(now);
    }

    pub(super) fn handle_trust_timers(&mut self, now: u64) {
        while let Some(&(at, timer)) = self.trust_timers.first() {
            if at > now {
                break;
            }
            self.trust_timers.remove(&(at, timer));
            match timer {
                TrustTimer::Serve(id) => {
                    let seconds = self.config.serve_deadline_ms as f64 / 1000.0;
                    if let Some(Start::Awaiting { request, .. }) = self.checks.get(&id).map(|c| c.start.clone()) {
                        self.serve_requests.remove(&request);
                        self.serving_failed(now, id, format!("no answer within {seconds} s"));
                    }
                }
                TrustTimer::Settle(chunk) => self.settle_by_time(now, chunk),
                TrustTimer::Unpark(id) => self.start_from_input(id),
            }
        }
    }

    /// No claimant can serve the start of the checked link: the verifier runs from the chunk's
    /// verified input through the end of that link instead (more steps, nobody blamed).
    fn start_from_input(&mut self, id: CheckId) {
        let Some(check) = self.checks.get_mut(&id) else { return };
        if !matches!(check.start, Start::Parked { .. }) {
            return;
        }
        check.links += check.link;
        check.link = 0;
        check.start = Start::Known(check.input);
        self.checks_waiting.insert(id);
    }

    /// A worker that joins again is asked for the states its checks wait for.
    pub(super) fn unpark_checks(&mut self, now: u64, worker: WorkerId) {
        let parked: Vec<(CheckId, usize, u64)> = self
            .checks
            .iter()
            .filter_map(|(id, c)| match c.start {
                Start::Parked { from, until_ms, .. } if c.claims[from].worker == worker => Some((*id, from, until_ms)),
                _ => None,
            })
            .collect();
        for (id, from, until_ms) in parked {
            self.trust_timers.remove(&(until_ms, TrustTimer::Unpark(id)));
            self.ask_to_serve(now, id, from);
        }
    }

    /// A worker that leaves while asked to serve is not blamed: the request waits for it.
    pub(super) fn park_checks(&mut self, now: u64, worker: WorkerId) {
        let asked: Vec<(CheckId, usize, u64, u64)> = self
            .checks
            .iter()
            .filter_map(|(id, c)| match c.start {
                Start::Awaiting { from, request, deadline_ms, .. } if c.claims[from].worker == worker => {
                    Some((*id, from, request, deadline_ms))
                }
                _ => None,
            })
            .collect();
        for (id, from, request, deadline_ms) in asked {
            self.serve_requests.remove(&request);
            self.trust_timers.remove(&(deadline_ms, TrustTimer::Serve(id)));
            self.ask_to_serve(now, id, from);
        }
    }

    fn settle_by_time(&mut self, now: u64, chunk_id: ChunkId) {
        let Some(job) = self.jobs.get(&chunk_id.job) else { return };
        let Some(provisional) = job.provisional.get(&chunk_id.index) else { return };
        // A check still running settles it (its timer is set again when an audit passes).
        if self.checks_by_chunk.range((chunk_id, 0)..=(chunk_id, u64::MAX)).next().is_some() {
            return;
        }
        let (worker, audited) = (provisional.worker, provisional.audit_link.is_some());
        self.finalize(now, chunk_id, "its challenge window passed");
        // An audited result confirmed its worker when the audit passed.
        if !audited {
            self.confirm(now, worker);
        }
    }

    /// A provisional chunk becomes final.
    fn finalize(&mut self, now: u64, chunk_id: ChunkId, how: &str) {
        let Some(provisional) = self.jobs.get_mut(&chunk_id.job).and_then(|j| j.provisional.remove(&chunk_id.index))
        else {
            return;
        };
        self.persist(Record::Finalized { chunk: chunk_id });
        self.send(provisional.worker, ToWorker::Settled { assignments: vec![provisional.assignment] });
        self.event(
            now,
            Some(chunk_id.job),
            Some(chunk_id.index),
            Some(provisional.worker),
            TrustEventKind::Accepted { finality: Finality::Final, how: how.to_string() },
        );
    }

    // -----------------------------------------------------------------------------------------
    // Disputes

    fn start_dispute(&mut self, now: u64, chunk_id: ChunkId) {
        let chunk = &self.chunks[&chunk_id];
        let first = chunk.results[0].clone();
        let Some(other) = chunk.results.iter().find(|r| r.digest != first.digest).cloned() else { return };
        let (a, b) = (chain_of(&first.output), chain_of(&other.output));
        let Some((link, rounds)) = diverging_link(a, b) else {
            // Equal chains with different digests (thermo or checkpoint bytes differ): the chain
            // cannot tell them apart, so ask for another replica instead.
            let chunk = self.chunks.get_mut(&chunk_id).expect("open");
            chunk.target = chunk.target.max(chunk.results.len() as u32 + 1);
            self.refresh_ready(chunk_id);
            return;
        };
        let claims = vec![
            Claim { worker: first.worker, assignment: first.assignment, end: a[link as usize] },
            Claim { worker: other.worker, assignment: other.assignment, end: b[link as usize] },
        ];
        let start = if link == 0 { None } else { Some(a[link as usize - 1]) };
        let check = Check {
            chunk: chunk_id,
            purpose: Purpose::Dispute { rounds },
            link,
            links: 1,
            start: Start::Known(chunk.input.expect("md")),
            input: chunk.input.expect("md"),
            claims,
            unserved: Vec::new(),
            verifier: None,
            verified_by: None,
        };
        let id = self.add_check(now, check, start);
        self.chunks.get_mut(&chunk_id).expect("open").dispute = Some(id);
        self.refresh_ready(chunk_id);
        self.event(
            now,
            Some(chunk_id.job),
            Some(chunk_id.index),
            Some(first.worker),
            TrustEventKind::Dispute { other: other.worker, link, rounds },
        );
    }

    // -----------------------------------------------------------------------------------------
    // Running checks on verifiers

    /// Gives waiting checks to verifiers with room; returns whether any was placed.
    pub(super) fn place_checks(&mut self, now: u64) {
        let waiting: Vec<CheckId> = self.checks_waiting.iter().copied().collect();
        for id in waiting {
            let Some(verifier) = self.pick_verifier(id) else { continue };
            self.checks_waiting.remove(&id);
            self.assign_check(now, id, verifier);
        }
    }

    fn pick_verifier(&self, id: CheckId) -> Option<WorkerId> {
        let check = &self.checks[&id];
        // A check runs on the verifier's own reference device, not on the job's GPUs.
        let needs = &super::check_resources(&self.jobs[&check.chunk.job].spec.resources);
        let owners: BTreeSet<&str> =
            check.claims.iter().filter_map(|c| self.workers.get(&c.worker)).map(|w| w.owner.as_str()).collect();
        self.workers
            .iter()
            .filter(|(_, w)| {
                w.connected
                    && w.role == NodeRole::Verifier
                    && needs.fits_in(&w.free)
                    && !owners.contains(w.owner.as_str())
            })
            .min_by(|(a_id, a), (b_id, b)| super::placement_order(a, b).then(a_id.cmp(b_id)))
            .map(|(id, _)| *id)
    }

    fn assign_check(&mut self, now: u64, id: CheckId, verifier: WorkerId) {
        let check = &self.checks[&id];
        let Start::Known(input) = check.start else { unreachable!("placing a check without its start") };
        let job = &self.jobs[&check.chunk.job];
        let JobKind::Md(md) = &job.spec.kind else { unreachable!("checks are of md chunks") };
        let links = self.chain_links_of(check.chunk.job);
        let chain_every = md.chunk_steps / links as u64;
        let task = match check.purpose {
            // A re-check reproduces the whole chunk, thermo included, so it can replace the result.
            Purpose::Recheck => Task::Md {
                input,
                steps: md.chunk_steps,
                thermo_every: md.thermo_every,
                thermo_at_start: check.chunk.index == 0,
                chain_every,
            },
            _ => Task::Md {
                input,
                steps: chain_every * check.links as u64,
                thermo_every: 0,
                thermo_at_start: false,
                chain_every,
            },
        };
        let assignment = self.lease(now, check.chunk, verifier, task, Some(id));
        let check = self.checks.get_mut(&id).expect("known");
        check.verifier = Some(assignment);
        check.verified_by = Some(verifier);
    }

    /// A verifier's answer: the state hash at the end of the interval (None: it could not run it,
    /// and the check waits for another verifier).
    pub(super) fn check_finished(&mut self, now: u64, id: CheckId, output: Option<Output>) {
        let Some(check) = self.checks.get_mut(&id) else { return };
        let ran = check.verifier.take();
        match output {
            Some(output) => {
                let ran = ran.zip(check.verified_by).map(|(assignment, node)| (node, assignment));
                self.resolve_check(now, id, Some((output, ran)));
            }
            None => {
                self.checks_waiting.insert(id);
            }
        }
    }

    /// Settles a check with the verifier's output and the verifier and assignment that made it (None:
    /// nobody served the start state).
    fn resolve_check(&mut self, now: u64, id: CheckId, answer: Option<(Output, Option<(WorkerId, AssignmentId)>)>) {
        let (output, ran) = match answer {
            Some((output, ran)) => (Some(output), ran),
            None => (None, None),
        };
        let check = self.checks.remove(&id).expect("resolving a known check");
        self.checks_by_chunk.remove(&(check.chunk, id));
        self.checks_waiting.remove(&id);
        if let Some(assignment) = check.verifier
            && self.leases.contains_key(&assignment)
        {
            let worker = self.leases[&assignment].worker;
            self.release(assignment);
            self.send(worker, ToWorker::Cancel { assignment, reason: "the check was settled".into() });
        }
        let end = output.as_ref().and_then(|o| chain_of(o).last().copied());
        let steps = self.check_steps(&check);
        let (winners, losers): (Vec<Claim>, Vec<Claim>) =
            check.claims.iter().cloned().partition(|c| Some(c.end) == end && !check.unserved.contains(&c.worker));
        let adopted = check.purpose == Purpose::Recheck && winners.is_empty() && output.is_some();
        if let Some((node, assignment)) = ran
            && !adopted
        {
            // The verifier's own intermediate states are not needed (an adopted re-run is settled
            // with the chunk it becomes).
            self.send(node, ToWorker::Settled { assignments: vec![assignment] });
        }
        match check.purpose {
            Purpose::Audit => self.audit_resolved(now, &check, winners.is_empty(), steps),
            Purpose::Recheck => {
                let replacement = output.zip(ran);
                self.recheck_resolved(now, &check, winners.is_empty(), replacement)
            }
            Purpose::Dispute { .. } => self.dispute_resolved(now, &check, winners, losers, steps),
        }
        self.schedule(now);
    }

    fn check_steps(&self, check: &Check) -> u64 {
        match &self.jobs.get(&check.chunk.job).map(|j| &j.spec.kind) {
            Some(JobKind::Md(md)) => {
                let links = self.chain_links_of(check.chunk.job) as u64;
                match check.purpose {
                    Purpose::Recheck => md.chunk_steps,
                    _ => md.chunk_steps / links * check.links as u64,
                }
            }
            _ => 0,
        }
    }

    fn audit_resolved(&mut self, now: u64, check: &Check, failed: bool, steps: u64) {
        let worker = check.claims[0].worker;
        let chunk = check.chunk;
        let others = self.agreeing_others(chunk);
        if failed {
            // Whoever returned the same result returned the same lie.
            for other in &others {
                self.worker_failed(
                    now,
                    *other,
                    &format!("agreed with a result of chunk {chunk} that failed its audit"),
                );
            }
            if let Some(w) = self.workers.get_mut(&worker) {
                w.standing.audits_failed += 1;
            }
            if !check.unserved.contains(&worker) {
                self.event(
                    now,
                    Some(chunk.job),
                    Some(chunk.index),
                    Some(worker),
                    TrustEventKind::AuditFailed {
                        link: check.link,
                        reason: "the verifier's state hash differs from the one the chain claims".into(),
                    },
                );
            }
            self.worker_failed(now, worker, &format!("failed the audit of chunk {chunk} link {}", check.link));
            self.invalidate(now, chunk, &format!("the result of worker {} failed its audit", worker.short()), None);
        } else {
            if let Some(w) = self.workers.get_mut(&worker) {
                w.standing.audits_passed += 1;
            }
            self.event(
                now,
                Some(chunk.job),
                Some(chunk.index),
                Some(worker),
                TrustEventKind::AuditPassed { link: check.link, verifier: check.verified_by, steps },
            );
            // One link that agrees says nothing of the links after it: the result stays provisional
            // until its challenge window passes, so a later failure of its worker re-checks it whole.
            let settle_after_ms = self.config.settle_after_ms;
            if let Some(provisional) = self.jobs.get(&chunk.job).and_then(|j| j.provisional.get(&chunk.index)) {
                let at = (provisional.accepted_ms + settle_after_ms).max(now);
                self.trust_timers.insert((at, TrustTimer::Settle(chunk)));
            }
            for confirmed in std::iter::once(worker).chain(others) {
                self.confirm(now, confirmed);
            }
        }
    }

    /// The workers besides the first that returned a provisional chunk's result.
    fn agreeing_others(&self, chunk: ChunkId) -> Vec<WorkerId> {
        self.jobs.get(&chunk.job).and_then(|j| j.provisional.get(&chunk.index)).map_or(Vec::new(), |p| p.others.clone())
    }

    fn recheck_resolved(
        &mut self,
        now: u64,
        check: &Check,
        failed: bool,
        replacement: Option<(Output, (WorkerId, AssignmentId))>,
    ) {
        let worker = check.claims[0].worker;
        if failed {
            for other in self.agreeing_others(check.chunk) {
                let reason = format!("agreed with a result of chunk {} that a re-check overturned", check.chunk);
                self.worker_failed(now, other, &reason);
            }
            let reason = format!("a re-check of worker {}'s result disagreed", worker.short());
            self.invalidate(now, check.chunk, &reason, replacement);
        } else {
            self.finalize(now, check.chunk, "a full re-check agreed");
        }
    }

    fn dispute_resolved(&mut self, now: u64, check: &Check, winners: Vec<Claim>, losers: Vec<Claim>, steps: u64) {
        let chunk_id = check.chunk;
        let winner = winners.first().map(|c| c.worker);
        let loser_ids: Vec<WorkerId> = losers.iter().map(|c| c.worker).collect();
        self.event(
            now,
            Some(chunk_id.job),
            Some(chunk_id.index),
            winner,
            TrustEventKind::DisputeSettled {
                link: check.link,
                winner,
                loser: loser_ids.clone(),
                steps,
                verifier: check.verified_by,
            },
        );
        for loser in &loser_ids {
            self.worker_failed(now, *loser, &format!("lost the dispute over chunk {chunk_id} link {}", check.link));
        }
        let Some(chunk) = self.chunks.get_mut(&chunk_id) else { return };
        chunk.dispute = None;
        chunk.results.retain(|r| !loser_ids.contains(&r.worker));
        chunk.excluded.extend(loser_ids.iter().copied());
        let digest = winner.and_then(|w| chunk.results.iter().find(|r| r.worker == w)).map(|r| r.digest);
        match digest {
            // The verifier confirmed the winner where the two parted: accept it (provisional, and
            // audited like any result whose worker has no record).
            Some(digest) => self.accept_adaptive(now, chunk_id, digest),
            None => self.refresh_ready(chunk_id),
        }
    }

    // -----------------------------------------------------------------------------------------
    // Failures, re-checks, invalidation

    /// A worker failed a check: it goes back to replication (or out, after too many failures), and
    /// every provisional result it holds is re-checked.
    fn worker_failed(&mut self, now: u64, worker: WorkerId, reason: &str) {
        let Some(w) = self.workers.get_mut(&worker) else { return };
        let from = if w.standing.trusted(self.config.trust_after) { "trusted" } else { "replicated" };
        w.standing.clean = 0;
        w.standing.failures += 1;
        let standing = w.standing;
        self.persist(Record::Standing { worker, standing });
        self.persist(Record::WorkerDisagreed { worker });
        let to = self.standing_label(&self.workers[&worker]);
        self.event(
            now,
            None,
            None,
            Some(worker),
            TrustEventKind::Reputation { from: from.into(), to, reason: reason.to_string() },
        );
        let held: Vec<(ChunkId, Provisional)> = self
            .jobs
            .iter()
            .flat_map(|(id, job)| {
                job.provisional
                    .iter()
                    .filter(|(_, p)| p.worker == worker || p.others.contains(&worker))
                    .map(|(index, p)| (ChunkId { job: *id, index: *index }, p.clone()))
            })
            .collect();
        for (chunk, provisional) in held {
            // A pending one-link audit is not enough for a worker now known to lie: it becomes a
            // re-check of the whole chunk. A re-check already under way stays.
            let pending: Vec<CheckId> =
                self.checks_by_chunk.range((chunk, 0)..=(chunk, u64::MAX)).map(|(_, id)| *id).collect();
            if pending.iter().any(|id| self.checks[id].purpose == Purpose::Recheck) {
                continue;
            }
            for id in pending {
                self.drop_check(id);
            }
            self.order_recheck(now, chunk, &provisional);
        }
    }

    fn order_recheck(&mut self, now: u64, chunk: ChunkId, provisional: &Provisional) {
        let Some(end) = chain_of(&provisional.output).last().copied() else { return };
        let claim = Claim { worker: provisional.worker, assignment: provisional.assignment, end };
        let check = Check {
            chunk,
            purpose: Purpose::Recheck,
            link: 0,
            links: self.chain_links_of(chunk.job),
            start: Start::Known(provisional.input),
            input: provisional.input,
            claims: vec![claim],
            unserved: Vec::new(),
            verifier: None,
            verified_by: None,
        };
        self.add_check(now, check, None);
    }

    /// Overturns an accepted chunk: it and every chunk chained after it are no longer accepted.
    /// With `replacement` (a verifier's full re-run) the chunk is accepted again at once, final;
    /// otherwise it runs again, away from the worker that produced the wrong result.
    fn invalidate(
        &mut self,
        now: u64,
        chunk_id: ChunkId,
        reason: &str,
        replacement: Option<(Output, (WorkerId, AssignmentId))>,
    ) {
        let Some(job) = self.jobs.get(&chunk_id.job) else { return };
        if !job.verified.contains(&chunk_id.index) || !job.spec.kind.chained() {
            return;
        }
        let culprit = job.provisional.get(&chunk_id.index).map(|p| p.worker);
        // Close whatever runs after it: the open chunk and checks of later (or this) chunks.
        let open: Vec<ChunkId> =
            self.chunks.range(chunk_id..=ChunkId { job: chunk_id.job, index: u32::MAX }).map(|(c, _)| *c).collect();
        for open_id in open {
            self.close_chunk(open_id, reason);
        }
        let stale: Vec<CheckId> = self
            .checks_by_chunk
            .range((chunk_id, 0)..=(ChunkId { job: chunk_id.job, index: u32::MAX }, u64::MAX))
            .map(|(_, id)| *id)
            .collect();
        for id in stale {
            self.drop_check(id);
        }
        let job = self.jobs.get_mut(&chunk_id.job).expect("known");
        job.verified.truncate(chunk_id.index);
        job.provisional.retain(|index, _| *index < chunk_id.index);
        job.chain.truncate(chunk_id.index as usize);
        if job.state.is_finished() {
            job.state = JobState::Running;
        }
        self.persist(Record::Invalidated { job: chunk_id.job, from_chunk: chunk_id.index, reason: reason.to_string() });
        self.event(
            now,
            Some(chunk_id.job),
            Some(chunk_id.index),
            culprit,
            TrustEventKind::Invalidated { reason: reason.to_string() },
        );
        match replacement {
            Some((output, (verifier, assignment))) => {
                self.open_chunk(chunk_id);
                let digest = output.digest();
                let chunk = self.chunks.get_mut(&chunk_id).expect("just opened");
                chunk.results.push(super::ResultEntry { worker: verifier, assignment, digest, output });
                self.verify(now, chunk_id, digest, None, "re-run whole by a verifier");
            }
            None => {
                self.open_chunk(chunk_id);
                // The worker whose result was overturned never runs this chunk again.
                let chunk = self.chunks.get_mut(&chunk_id).expect("just opened");
                chunk.excluded.extend(culprit);
                self.refresh_ready(chunk_id);
            }
        }
    }

    /// Closes an open chunk without a result (its chain was overturned).
    fn close_chunk(&mut self, chunk_id: ChunkId, reason: &str) {
        let Some(chunk) = self.chunks.remove(&chunk_id) else { return };
        self.ready.remove(&chunk_id);
        self.jobs.get_mut(&chunk_id.job).expect("known").open -= 1;
        if let Some(id) = chunk.dispute {
            self.drop_check(id);
        }
        for (assignment, worker) in chunk.running {
            self.release(assignment);
            self.send(worker, ToWorker::Cancel { assignment, reason: format!("chunk {chunk_id}: {reason}") });
        }
    }

    /// Forgets a check whose chunk no longer needs it.
    pub(super) fn drop_check(&mut self, id: CheckId) {
        let Some(check) = self.checks.remove(&id) else { return };
        self.checks_by_chunk.remove(&(check.chunk, id));
        self.checks_waiting.remove(&id);
        match check.start {
            Start::Awaiting { request, deadline_ms, .. } => {
                self.serve_requests.remove(&request);
                self.trust_timers.remove(&(deadline_ms, TrustTimer::Serve(id)));
            }
            Start::Parked { until_ms, .. } => {
                self.trust_timers.remove(&(until_ms, TrustTimer::Unpark(id)));
            }
            Start::Known(_) => {}
        }
        if let Some(assignment) = check.verifier
            && let Some(lease) = self.leases.get(&assignment)
        {
            let worker = lease.worker;
            self.release(assignment);
            self.send(worker, ToWorker::Cancel { assignment, reason: "the check is no longer needed".into() });
        }
    }

    /// Checks and their indexes agree; for tests.
    pub(super) fn check_trust_invariants(&self) {
        for (id, check) in &self.checks {
            assert!(self.checks_by_chunk.contains(&(check.chunk, *id)), "check {id} not indexed");
            if let Some(assignment) = check.verifier {
                let lease: &Lease = &self.leases[&assignment];
                assert_eq!(lease.check, Some(*id));
                assert_eq!(self.workers[&lease.worker].role, NodeRole::Verifier);
            }
            assert_eq!(
                self.checks_waiting.contains(id),
                check.verifier.is_none() && matches!(check.start, Start::Known(_))
            );
        }
        assert_eq!(self.checks_by_chunk.len(), self.checks.len());
        for job in self.jobs.values() {
            for index in job.provisional.keys() {
                assert!(job.verified.contains(index), "provisional chunk {index} not accepted");
            }
        }
        let _: Option<&Action> = None;
    }
}
