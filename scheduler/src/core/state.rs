//! Rebuilding a core from its persisted records, after a restart or a crash.

use std::collections::{BTreeMap, BTreeSet};

use upglobe_protocol::messages::{Failure, JobSpec, JobState, Output};
use upglobe_protocol::trust::{NodeRole, PublicKey};
use upglobe_protocol::{AssignmentId, ChunkId, Digest, JobId, WorkerId, WorkflowId};

use super::{Config, Core, FAILURES_KEPT_MAX, Handoff, Provisional, ResultEntry, Standing, Worker, Workflow};

/// Failed attempts of a chunk: how many, and on which workers.
type Attempts = (u32, BTreeSet<WorkerId>);

#[derive(Debug, Clone, PartialEq)]
pub struct SnapshotJob {
    pub id: JobId,
    pub workflow: WorkflowId,
    pub spec: JobSpec,
    pub after: Vec<JobId>,
    pub finished: Option<JobState>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SnapshotResult {
    pub chunk: ChunkId,
    pub worker: WorkerId,
    /// 0 for results stored before assignments were recorded.
    pub assignment: AssignmentId,
    pub digest: Digest,
    pub output: Output,
}

/// Everything the store holds that the core needs.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    /// Starts of the scheduler so far, this one included.
    pub epoch: u32,
    pub workflows: Vec<(WorkflowId, String)>,
    pub jobs: Vec<SnapshotJob>,
    /// Accepted chunks with their outputs (and, if not yet final, what makes them provisional), in
    /// any order.
    pub verified: Vec<(ChunkId, Output, Option<Provisional>)>,
    /// Results that had not completed a quorum when they were reported.
    pub pending: Vec<SnapshotResult>,
    pub failed_attempts: Vec<(ChunkId, Option<WorkerId>, String)>,
    pub disagreements: Vec<(WorkerId, u64)>,
    pub standings: Vec<(WorkerId, Standing)>,
}

impl Core {
    /// A core that continues from `snapshot`. Running assignments are not part of it: workers that
    /// reconnect start clean, and chunks without a quorum are assigned again.
    pub fn restore(config: Config, snapshot: Snapshot, now: u64) -> Core {
        let mut core = Core::new(config, snapshot.epoch);
        for (id, name) in &snapshot.workflows {
            core.workflows.insert(*id, Workflow { name: name.clone() });
            core.next_workflow = core.next_workflow.max(id.0 + 1);
        }
        for job in snapshot.jobs {
            core.next_job = core.next_job.max(job.id.0 + 1);
            core.insert_job(job.workflow, job.id, job.spec, job.after);
            if let Some(state) = job.finished {
                core.jobs.get_mut(&job.id).expect("inserted").state = state;
            }
        }
        let provisional = core.restore_verified(snapshot.verified);
        let attempts = core.restore_failures(&snapshot.failed_attempts);
        for (worker, count) in snapshot.disagreements {
            core.workers.insert(worker, Worker::remembered(count));
        }
        // Every failure, whether a disagreement or a failed check, is counted among the disagreements;
        // the standings keep the rest of a record.
        for (worker, standing) in snapshot.standings {
            let entry = core.workers.entry(worker).or_insert_with(|| Worker::remembered(0));
            entry.standing = Standing { failures: entry.standing.failures, ..standing };
        }
        core.start_jobs(now);
        core.restore_open_chunks(now, snapshot.pending, attempts);
        // Audits that were ordered are ordered again (the draw is keyed, so it is the same one); the
        // challenge windows start again from now, which only makes them longer.
        for (chunk, mut held) in provisional {
            held.accepted_ms = now;
            core.hold_provisional(now, chunk, held);
        }
        core
    }

    /// Marks accepted chunks and rebuilds each chained job's chain (MD states, checkpoint files);
    /// returns the provisional ones.
    fn restore_verified(
        &mut self,
        verified: Vec<(ChunkId, Output, Option<Provisional>)>,
    ) -> Vec<(ChunkId, Provisional)> {
        let mut handoffs: BTreeMap<ChunkId, Handoff> = BTreeMap::new();
        let mut provisional = Vec::new();
        for (chunk, output, held) in verified {
            let Some(job) = self.jobs.get_mut(&chunk.job) else {
                continue;
            };
            job.verified.insert(chunk.index);
            if let Some(handoff) = Handoff::of(&job.spec.kind, &output) {
                handoffs.insert(chunk, handoff);
            }
            provisional.extend(held.map(|h| (chunk, h)));
        }
        for (chunk, handoff) in handoffs {
            let job = self.jobs.get_mut(&chunk.job).expect("known");
            // Chained chunks are accepted in order, and invalidation removes whole tails.
            if job.chain.len() == chunk.index as usize {
                job.chain.push(handoff);
            }
        }
        provisional
    }

    /// Failure history per job, and the failed-attempt count of each chunk not yet verified.
    fn restore_failures(&mut self, failed: &[(ChunkId, Option<WorkerId>, String)]) -> BTreeMap<ChunkId, Attempts> {
        let mut attempts = BTreeMap::new();
        for (chunk, worker, reason) in failed {
            let Some(job) = self.jobs.get_mut(&chunk.job) else {
                continue;
            };
            if job.failures.len() < FAILURES_KEPT_MAX {
                job.failures.push(Failure { chunk: chunk.index, worker: *worker, reason: reason.clone() });
            }
            if !job.verified.contains(&chunk.index) {
                let entry: &mut Attempts = attempts.entry(*chunk).or_default();
                entry.0 += 1;
                entry.1.extend(*worker);
            }
        }
        attempts
    }

    fn restore_open_chunks(&mut self, now: u64, pending: Vec<SnapshotResult>, attempts: BTreeMap<ChunkId, Attempts>) {
        for result in pending {
            let Some(chunk) = self.chunks.get_mut(&result.chunk) else {
                continue;
            };
            if chunk.results.iter().all(|r| r.worker != result.worker) {
                chunk.results.push(ResultEntry {
                    worker: result.worker,
                    assignment: result.assignment,
                    digest: result.digest,
                    output: result.output,
                });
            }
        }
        let open: Vec<ChunkId> = self.chunks.keys().copied().collect();
        for chunk_id in open {
            let quorum = self.jobs[&chunk_id.job].spec.replicas;
            let bound = quorum + self.config.extra_replicas_max;
            let adaptive = self.adaptive(chunk_id.job);
            let tolerance = self.tolerance_rules(chunk_id).is_some();
            let chunk = self.chunks.get_mut(&chunk_id).expect("listed");
            if let Some((count, workers)) = attempts.get(&chunk_id) {
                chunk.attempts_failed = *count;
                chunk.failed_by = workers.clone();
            }
            if adaptive {
                self.settle_adaptive(now, chunk_id);
                continue;
            }
            if tolerance {
                // Comparisons are not kept: the results are grouped again.
                self.pump_comparisons(now, chunk_id, 0);
                continue;
            }
            chunk.widen_on_disagreement(quorum, bound);
            self.refresh_ready(chunk_id);
        }
    }
}

impl Worker {
    /// A worker known only from the records (not connected).
    fn remembered(disagreements: u64) -> Worker {
        Worker {
            name: String::new(),
            connected: false,
            capacity: Default::default(),
            free: Default::default(),
            allow_commands: false,
            containers: None,
            allow_network: false,
            device: String::new(),
            running: BTreeSet::new(),
            completed: 0,
            last_assigned: 0,
            role: NodeRole::Worker,
            owner: String::new(),
            signing_key: PublicKey::default(),
            standing: Standing { failures: disagreements, ..Standing::default() },
            holding: Default::default(),
            peer_address: None,
            gpus: Vec::new(),
            gpu_busy: Vec::new(),
            adapters: Vec::new(),
        }
    }
}
