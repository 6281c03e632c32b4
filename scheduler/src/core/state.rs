//! Rebuilding a core from its persisted records, after a restart or a crash.

use std::collections::{BTreeMap, BTreeSet};

use upglobe_protocol::messages::{Failure, JobKind, JobSpec, JobState, Output};
use upglobe_protocol::{ChunkId, Digest, JobId, WorkerId, WorkflowId};

use super::{Config, Core, FAILURES_KEPT_MAX, Worker, Workflow};

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
    /// Verified chunks with their outputs, in any order.
    pub verified: Vec<(ChunkId, Output)>,
    /// Results that had not completed a quorum when they were reported.
    pub pending: Vec<SnapshotResult>,
    pub failed_attempts: Vec<(ChunkId, Option<WorkerId>, String)>,
    pub disagreements: Vec<(WorkerId, u64)>,
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
        core.restore_verified(snapshot.verified);
        let attempts = core.restore_failures(&snapshot.failed_attempts);
        for (worker, count) in snapshot.disagreements {
            core.workers.insert(worker, Worker::remembered(count));
        }
        core.start_jobs(now);
        core.restore_open_chunks(snapshot.pending, attempts);
        core
    }

    fn restore_verified(&mut self, verified: Vec<(ChunkId, Output)>) {
        let mut latest: BTreeMap<JobId, (u32, Output)> = BTreeMap::new();
        for (chunk, output) in verified {
            let Some(job) = self.jobs.get_mut(&chunk.job) else {
                continue;
            };
            job.verified.insert(chunk.index);
            if matches!(job.spec.kind, JobKind::Md(_)) && latest.get(&chunk.job).is_none_or(|(k, _)| *k < chunk.index) {
                latest.insert(chunk.job, (chunk.index, output));
            }
        }
        for (job, (_, output)) in latest {
            self.jobs.get_mut(&job).expect("known").last_output = Some(output);
        }
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

    fn restore_open_chunks(&mut self, pending: Vec<SnapshotResult>, attempts: BTreeMap<ChunkId, Attempts>) {
        for result in pending {
            let Some(chunk) = self.chunks.get_mut(&result.chunk) else {
                continue;
            };
            if chunk.results.iter().all(|(w, _, _)| *w != result.worker) {
                chunk.results.push((result.worker, result.digest, result.output));
            }
        }
        let open: Vec<ChunkId> = self.chunks.keys().copied().collect();
        for chunk_id in open {
            let quorum = self.jobs[&chunk_id.job].spec.replicas;
            let bound = quorum + self.config.extra_replicas_max;
            let chunk = self.chunks.get_mut(&chunk_id).expect("listed");
            if let Some((count, workers)) = attempts.get(&chunk_id) {
                chunk.attempts_failed = *count;
                chunk.failed_by = workers.clone();
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
            device: String::new(),
            running: BTreeSet::new(),
            completed: 0,
            disagreements,
            last_assigned: 0,
        }
    }
}
