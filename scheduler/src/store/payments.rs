//! Payments: the outbox of chunks verified for good, the workflows an escrow job funds, the
//! batches sent to the chain and the chunks it paid.
//!
//! The outbox is written by the owner in the same transaction that makes a chunk final, so no
//! final chunk can be missed; everything else here is written by the settler
//! ([`crate::settle`]) through its own connection. The chain's bitmap is the truth about what is
//! paid: a batch is recorded as an intent before it is sent, and an intent found open after a
//! crash is closed by reading the bitmap, never by sending again blindly.

use std::collections::BTreeMap;

use rusqlite::{OptionalExtension, params};
use upglobe_protocol::messages::FundedWorkflow;
use upglobe_protocol::{ChunkId, JobId, WorkerId, WorkflowId};

use super::records::{StoredJobSpec, StoredWorkerIds};
use super::{Store, decode, exec, from_json, hash_of, to_json};
use crate::{Result, SchedulerError};

/// Appends a chunk that just became final, with the workers that agreed on it.
pub(super) fn enqueue(t: &rusqlite::Transaction, chunk: ChunkId) -> Result<()> {
    exec(
        t,
        "INSERT INTO outbox (job, chunk, workers, units) SELECT job, chunk, agreeing, 1 FROM verified
         WHERE job = ?1 AND chunk = ?2",
        params![chunk.job.0, chunk.index],
    )?;
    Ok(())
}

/// A workflow paid from an escrow job: escrow chunk index = `offsets[job] + chunk`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Funding {
    pub workflow: WorkflowId,
    pub escrow_job: u64,
    pub chunks: u64,
    pub offsets: BTreeMap<u64, u64>,
    pub completed: bool,
}

impl Funding {
    pub fn escrow_index(&self, job: JobId, chunk: u32) -> Option<u32> {
        let index = self.offsets.get(&job.0)? + u64::from(chunk);
        (index < self.chunks).then_some(index as u32)
    }
}

/// A final chunk not known to be paid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Due {
    pub job: JobId,
    pub chunk: u32,
    pub index: u32,
    /// The workers that agreed on it, the first to report first.
    pub workers: Vec<WorkerId>,
}

/// A signed result that contradicts the verified result of the same chunk, not yet sent to
/// the registry: evidence against its worker's hub.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Contradiction {
    pub job: JobId,
    pub chunk: u32,
    pub index: u32,
    pub worker: WorkerId,
    /// The worker's Ed25519 key, the hash of the statement it signed, and the signature.
    pub key: Vec<u8>,
    pub statement_hash: [u8; 32],
    pub signature: Vec<u8>,
}

/// A batch recorded as sent (or about to be) whose outcome is not recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenSettlement {
    pub id: i64,
    /// `(job, chunk, escrow index)`.
    pub chunks: Vec<(u64, u32, u32)>,
}

impl Store {
    /// Links a workflow to its escrow job. Refused when either is linked already.
    pub fn fund(
        &mut self,
        workflow: WorkflowId,
        escrow_job: u64,
        chunks: u64,
        offsets: &BTreeMap<u64, u64>,
    ) -> Result<()> {
        let existing: Option<u64> = self
            .connection
            .query_row("SELECT escrow_job FROM funding WHERE workflow = ?1", [workflow.0], |row| row.get(0))
            .optional()?;
        if let Some(job) = existing {
            return Err(SchedulerError::Invalid(format!("workflow {workflow} is already funded by escrow job {job}")));
        }
        let other: Option<u64> = self
            .connection
            .query_row("SELECT workflow FROM funding WHERE escrow_job = ?1", [escrow_job], |row| row.get(0))
            .optional()?;
        if let Some(other) = other {
            return Err(SchedulerError::Invalid(format!("escrow job {escrow_job} already funds workflow w{other}")));
        }
        self.connection.execute(
            "INSERT INTO funding (workflow, escrow_job, chunks, offsets) VALUES (?1, ?2, ?3, ?4)",
            params![workflow.0, escrow_job, chunks, to_json(offsets)],
        )?;
        Ok(())
    }

    pub fn fundings(&self) -> Result<Vec<Funding>> {
        let mut statement = self
            .connection
            .prepare("SELECT workflow, escrow_job, chunks, offsets, completed_tx FROM funding ORDER BY workflow")?;
        let rows = statement.query_map([], |row| {
            Ok((
                row.get::<_, u64>(0)?,
                row.get(1)?,
                row.get(2)?,
                row.get::<_, String>(3)?,
                row.get::<_, Option<Vec<u8>>>(4)?,
            ))
        })?;
        let mut fundings = Vec::new();
        for row in rows {
            let (workflow, escrow_job, chunks, offsets, completed) = row?;
            let offsets = from_json(&offsets, "funding offsets")?;
            fundings.push(Funding {
                workflow: WorkflowId(workflow),
                escrow_job,
                chunks,
                offsets,
                completed: completed.is_some(),
            });
        }
        Ok(fundings)
    }

    /// Final chunks of a funded workflow that are not recorded as paid, in escrow order from
    /// chunk `from` (job, chunk) on, at most `limit`. A chunk in the outbox twice (re-verified after an overturned predecessor) is due
    /// once, with its latest workers; one no longer verified for good (overturned since) is not
    /// due at all.
    pub fn due(&self, funding: &Funding, from: (u64, u32), limit: usize) -> Result<Vec<Due>> {
        let mut statement = self.connection.prepare(
            "SELECT o.job, o.chunk, o.workers FROM outbox o JOIN jobs j ON j.id = o.job
             JOIN verified v ON v.job = o.job AND v.chunk = o.chunk AND v.provisional IS NULL
             WHERE j.workflow = ?1 AND (o.job > ?2 OR (o.job = ?2 AND o.chunk >= ?3))
               AND NOT EXISTS (SELECT 1 FROM paid p WHERE p.job = o.job AND p.chunk = o.chunk)
               AND o.seq = (SELECT MAX(seq) FROM outbox l WHERE l.job = o.job AND l.chunk = o.chunk)
             ORDER BY o.job, o.chunk",
        )?;
        let mut rows = statement.query(params![funding.workflow.0, from.0, from.1])?;
        let mut due = Vec::new();
        while let Some(row) = rows.next()? {
            let job = JobId(row.get(0)?);
            let chunk: u32 = row.get(1)?;
            let workers: Vec<WorkerId> =
                decode::<StoredWorkerIds>(&row.get::<_, Vec<u8>>(2)?, "outbox workers")?.into();
            // Jobs added after funding (none today) or chunks past the escrow's room are not
            // payable from this escrow job.
            let Some(index) = funding.escrow_index(job, chunk) else { continue };
            due.push(Due { job, chunk, index, workers });
            if due.len() == limit {
                break;
            }
        }
        Ok(due)
    }

    /// Contradicting signed results of a funded workflow's final chunks not yet sent as
    /// evidence, at most `limit`. Only MD jobs: their chunks are bit-deterministic, so a result
    /// that differs from the verified one is wrong, never an honest variation (a command's output
    /// may carry a timestamp).
    pub fn contradictions(&self, funding: &Funding, limit: usize) -> Result<Vec<Contradiction>> {
        let mut md_jobs = Vec::new();
        let mut statement = self.connection.prepare("SELECT id, spec FROM jobs WHERE workflow = ?1 ORDER BY id")?;
        let mut rows = statement.query([funding.workflow.0])?;
        while let Some(row) = rows.next()? {
            let spec: upglobe_protocol::messages::JobSpec =
                decode::<StoredJobSpec>(&row.get::<_, Vec<u8>>(1)?, "job spec")?.into();
            if matches!(spec.kind, upglobe_protocol::messages::JobKind::Md(_)) {
                md_jobs.push(JobId(row.get(0)?));
            }
        }
        let mut found = Vec::new();
        let mut verified = self.connection.prepare(
            "SELECT chunk, disagreeing FROM verified WHERE job = ?1 AND provisional IS NULL AND length(disagreeing) > 1
             ORDER BY chunk",
        )?;
        let mut signed = self.connection.prepare(
            "SELECT s.key, s.statement, s.signature FROM signed_results s
             WHERE s.job = ?1 AND s.chunk = ?2 AND s.worker = ?3
               AND NOT EXISTS (SELECT 1 FROM evidence e WHERE e.job = s.job AND e.chunk = s.chunk AND e.worker = s.worker)
             ORDER BY s.id LIMIT 1",
        )?;
        for job in md_jobs {
            let mut rows = verified.query([job.0])?;
            while let Some(row) = rows.next()? {
                let chunk: u32 = row.get(0)?;
                let Some(index) = funding.escrow_index(job, chunk) else { continue };
                let workers: Vec<WorkerId> =
                    decode::<StoredWorkerIds>(&row.get::<_, Vec<u8>>(1)?, "disagreeing workers")?.into();
                for worker in workers {
                    let result = signed
                        .query_row(params![job.0, chunk, worker.0.as_slice()], |row| {
                            Ok((row.get::<_, Vec<u8>>(0)?, row.get::<_, Vec<u8>>(1)?, row.get::<_, Vec<u8>>(2)?))
                        })
                        .optional()?;
                    if let Some((key, statement_hash, signature)) = result {
                        let statement_hash = hash_of(&statement_hash, "statement")?;
                        found.push(Contradiction { job, chunk, index, worker, key, statement_hash, signature });
                        if found.len() == limit {
                            return Ok(found);
                        }
                    }
                }
            }
        }
        Ok(found)
    }

    /// Records what became of a piece of evidence: `submitted` (with its id and transaction),
    /// `no hub` (the worker belongs to no hub: no stake to slash) or `refused: …`.
    pub fn record_evidence(
        &mut self,
        workflow: WorkflowId,
        contradiction: &Contradiction,
        state: &str,
        submitted: Option<([u8; 32], [u8; 32])>,
    ) -> Result<()> {
        self.connection.execute(
            "INSERT OR REPLACE INTO evidence (job, chunk, worker, workflow, state, evidence_id, tx)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![
                contradiction.job.0,
                contradiction.chunk,
                contradiction.worker.0.as_slice(),
                workflow.0,
                state,
                submitted.map(|(id, _)| id.to_vec()),
                submitted.map(|(_, tx)| tx.to_vec())
            ],
        )?;
        Ok(())
    }

    /// What a worker said, when it last joined, about the hub to be paid for its chunks.
    pub fn set_worker_hub(&mut self, worker: WorkerId, hub: Option<[u8; 20]>) -> Result<()> {
        match hub {
            Some(hub) => self.connection.execute(
                "INSERT OR REPLACE INTO worker_hubs (worker, hub) VALUES (?1, ?2)",
                params![worker.0.as_slice(), hub.as_slice()],
            )?,
            None => self.connection.execute("DELETE FROM worker_hubs WHERE worker = ?1", [worker.0.as_slice()])?,
        };
        Ok(())
    }

    pub fn worker_hub(&self, worker: WorkerId) -> Result<Option<[u8; 20]>> {
        let hub: Option<Vec<u8>> = self
            .connection
            .query_row("SELECT hub FROM worker_hubs WHERE worker = ?1", [worker.0.as_slice()], |row| row.get(0))
            .optional()?;
        hub.map(|h| h.try_into().map_err(|_| SchedulerError::Store("corrupt worker hub in the database".into())))
            .transpose()
    }

    /// Records a batch about to be sent. Until it is closed it is reconciled against the chain.
    pub fn begin_settlement(&mut self, funding: &Funding, chunks: &[(u64, u32, u32)]) -> Result<i64> {
        self.connection.execute(
            "INSERT INTO settlements (workflow, escrow_job, chunks, state) VALUES (?1, ?2, ?3, 'sending')",
            params![funding.workflow.0, funding.escrow_job, to_json(&chunks)],
        )?;
        Ok(self.connection.last_insert_rowid())
    }

    pub fn open_settlements(&self, workflow: WorkflowId) -> Result<Vec<OpenSettlement>> {
        let mut statement = self
            .connection
            .prepare("SELECT id, chunks FROM settlements WHERE workflow = ?1 AND state = 'sending' ORDER BY id")?;
        let rows = statement.query_map([workflow.0], |row| Ok((row.get::<_, i64>(0)?, row.get::<_, String>(1)?)))?;
        let mut open = Vec::new();
        for row in rows {
            let (id, chunks) = row?;
            open.push(OpenSettlement { id, chunks: from_json(&chunks, "settlement chunks")? });
        }
        Ok(open)
    }

    /// Closes a batch: `state` is `paid` (mined; `tx` and `gas` known), `refused` (the chain
    /// refused it before it was sent) or `reconciled` (its outcome read from the bitmap).
    /// `paid` lists the chunks now known to be paid, with the hub when known.
    pub fn close_settlement(
        &mut self,
        workflow: WorkflowId,
        id: Option<i64>,
        state: &str,
        tx: Option<([u8; 32], u64)>,
        paid: &[(u64, u32, Option<[u8; 20]>)],
    ) -> Result<()> {
        let t = self.connection.transaction()?;
        if let Some(id) = id {
            exec(
                &t,
                "UPDATE settlements SET state = ?2, tx = ?3, gas = ?4 WHERE id = ?1",
                params![id, state, tx.map(|(hash, _)| hash.to_vec()), tx.map(|(_, gas)| gas)],
            )?;
        }
        for (job, chunk, hub) in paid {
            exec(
                &t,
                "INSERT OR IGNORE INTO paid (job, chunk, workflow, hub, settlement) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![job, chunk, workflow.0, hub.map(|h| h.to_vec()), id],
            )?;
        }
        t.commit()?;
        Ok(())
    }

    /// Why settlement of a workflow is stuck (or `None`), and how many of its final chunks
    /// cannot be paid (their workers belong to no payable hub; `None` keeps the last count).
    pub fn set_settlement_problem(
        &mut self,
        workflow: WorkflowId,
        problem: Option<&str>,
        unpayable: Option<u64>,
    ) -> Result<()> {
        self.connection.execute(
            "UPDATE funding SET problem = ?2, unpayable = COALESCE(?3, unpayable) WHERE workflow = ?1",
            params![workflow.0, problem, unpayable],
        )?;
        Ok(())
    }

    /// Whether nothing more of a workflow can become payable: every job finished and no
    /// verified chunk still provisional.
    pub fn settled_for_good(&self, workflow: WorkflowId) -> Result<bool> {
        let open: u64 = self.connection.query_row(
            "SELECT (SELECT COUNT(*) FROM jobs WHERE workflow = ?1 AND finished IS NULL)
                  + (SELECT COUNT(*) FROM verified v JOIN jobs j ON j.id = v.job
                     WHERE j.workflow = ?1 AND v.provisional IS NOT NULL)",
            [workflow.0],
            |row| row.get(0),
        )?;
        Ok(open == 0)
    }

    pub fn funding_completed(&mut self, workflow: WorkflowId, tx: [u8; 32]) -> Result<()> {
        self.connection
            .execute("UPDATE funding SET completed_tx = ?2 WHERE workflow = ?1", params![workflow.0, tx.to_vec()])?;
        Ok(())
    }

    /// The funded workflows with their settlement progress (`upglobe payments`).
    pub fn funded_workflows(&self) -> Result<Vec<FundedWorkflow>> {
        let mut statement = self.connection.prepare(
            "SELECT f.workflow, w.name, f.escrow_job, f.chunks, f.completed_tx, f.problem, f.unpayable,
                (SELECT COUNT(DISTINCT o.job || '/' || o.chunk) FROM outbox o JOIN jobs j ON j.id = o.job
                 WHERE j.workflow = f.workflow),
                (SELECT COUNT(*) FROM paid p WHERE p.workflow = f.workflow),
                (SELECT COUNT(*) FROM settlements s WHERE s.workflow = f.workflow AND s.state = 'paid'),
                (SELECT tx FROM settlements s WHERE s.workflow = f.workflow AND s.tx IS NOT NULL ORDER BY id DESC LIMIT 1),
                (SELECT COUNT(*) FROM evidence e WHERE e.workflow = f.workflow AND e.state = 'submitted')
             FROM funding f JOIN workflows w ON w.id = f.workflow ORDER BY f.workflow",
        )?;
        let rows = statement.query_map([], |row| {
            Ok((
                FundedWorkflow {
                    workflow: WorkflowId(row.get(0)?),
                    name: row.get(1)?,
                    escrow_job: row.get(2)?,
                    chunks: row.get(3)?,
                    completed: row.get::<_, Option<Vec<u8>>>(4)?.is_some(),
                    problem: row.get(5)?,
                    unpayable: row.get(6)?,
                    verified: row.get(7)?,
                    paid: row.get(8)?,
                    batches: row.get(9)?,
                    last_tx: None,
                    evidence: row.get(11)?,
                },
                row.get::<_, Option<Vec<u8>>>(10)?,
            ))
        })?;
        let mut funded = Vec::new();
        for row in rows {
            let (mut workflow, tx) = row?;
            workflow.last_tx = tx.and_then(|tx| tx.try_into().ok());
            funded.push(workflow);
        }
        Ok(funded)
    }
}
