//! The scheduler's durable state: SQLite in WAL mode, one transaction per batch of records.
//!
//! WAL with `synchronous = NORMAL` survives a killed process (kill -9) without losing committed
//! transactions; only a power loss may drop the last few. Values the core defines (job specs,
//! outputs) are stored as postcard blobs next to the columns queries need.

use std::path::Path;

use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;
use serde::de::DeserializeOwned;
use upglobe_protocol::messages::{JobSpec, JobState, Output, VerifiedChunk};
use upglobe_protocol::{ChunkId, Digest, JobId, WorkerId, WorkflowId};

use crate::core::{Record, Snapshot, SnapshotJob, SnapshotResult};
use crate::{Result, SchedulerError};

const SCHEMA_VERSION: i64 = 1;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS workflows (
    id INTEGER PRIMARY KEY, name TEXT NOT NULL, source TEXT NOT NULL, source_hash TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY, workflow INTEGER NOT NULL, name TEXT NOT NULL,
    spec BLOB NOT NULL, after BLOB NOT NULL, finished BLOB);
CREATE TABLE IF NOT EXISTS pending_results (
    job INTEGER NOT NULL, chunk INTEGER NOT NULL, worker BLOB NOT NULL, digest BLOB NOT NULL, output BLOB NOT NULL,
    PRIMARY KEY (job, chunk, worker));
CREATE TABLE IF NOT EXISTS verified (
    job INTEGER NOT NULL, chunk INTEGER NOT NULL, digest BLOB NOT NULL, output BLOB NOT NULL,
    agreeing BLOB NOT NULL, disagreeing BLOB NOT NULL,
    PRIMARY KEY (job, chunk));
CREATE TABLE IF NOT EXISTS failures (
    id INTEGER PRIMARY KEY, job INTEGER NOT NULL, chunk INTEGER NOT NULL, worker BLOB, reason TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS disagreements (worker BLOB PRIMARY KEY, count INTEGER NOT NULL);
";

pub struct Store {
    connection: Connection,
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    postcard::to_allocvec(value).expect("encoding to memory")
}

fn decode<T: DeserializeOwned>(bytes: &[u8], what: &str) -> Result<T> {
    postcard::from_bytes(bytes).map_err(|e| SchedulerError::Store(format!("corrupt {what} in the database: {e}")))
}

fn hash_of(bytes: &[u8], what: &str) -> Result<[u8; 32]> {
    bytes.try_into().map_err(|_| SchedulerError::Store(format!("corrupt {what} in the database")))
}

impl Store {
    pub fn open(path: &Path) -> Result<Store> {
        let connection = Connection::open(path)
            .map_err(|e| SchedulerError::Store(format!("cannot open {}: {e}", path.display())))?;
        connection.pragma_update(None, "journal_mode", "WAL")?;
        connection.pragma_update(None, "synchronous", "NORMAL")?;
        connection.pragma_update(None, "foreign_keys", "ON")?;
        let version: i64 = connection.pragma_query_value(None, "user_version", |row| row.get(0))?;
        if version > SCHEMA_VERSION {
            return Err(SchedulerError::Store(format!(
                "{} has schema version {version}; this scheduler knows version {SCHEMA_VERSION} (use a newer upglobe)",
                path.display()
            )));
        }
        connection.execute_batch(SCHEMA)?;
        connection.pragma_update(None, "user_version", SCHEMA_VERSION)?;
        Ok(Store { connection })
    }

    /// An in-memory store (simulation tests).
    pub fn in_memory() -> Result<Store> {
        let connection = Connection::open_in_memory()?;
        connection.execute_batch(SCHEMA)?;
        Ok(Store { connection })
    }

    /// Counts this start and returns its number (the core's epoch).
    pub fn next_epoch(&mut self) -> Result<u32> {
        let epoch: i64 = self
            .connection
            .query_row("SELECT value FROM meta WHERE key = 'epoch'", [], |row| row.get(0))
            .optional()?
            .unwrap_or(0)
            + 1;
        self.connection.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('epoch', ?1)", [epoch])?;
        Ok(epoch as u32)
    }

    /// Writes a batch of records in one transaction.
    pub fn apply(&mut self, records: &[Record]) -> Result<()> {
        if records.is_empty() {
            return Ok(());
        }
        let transaction = self.connection.transaction()?;
        for record in records {
            apply_one(&transaction, record)?;
        }
        transaction.commit()?;
        Ok(())
    }

    pub fn load(&self, epoch: u32) -> Result<Snapshot> {
        let mut snapshot = Snapshot { epoch, ..Default::default() };
        let c = &self.connection;
        let mut statement = c.prepare("SELECT id, name FROM workflows ORDER BY id")?;
        let rows = statement.query_map([], |row| Ok((WorkflowId(row.get(0)?), row.get(1)?)))?;
        snapshot.workflows = rows.collect::<Result<_, _>>()?;
        let mut statement = c.prepare("SELECT id, workflow, spec, after, finished FROM jobs ORDER BY id")?;
        let rows = statement.query_map([], |row| {
            Ok((
                row.get::<_, u64>(0)?,
                row.get::<_, u64>(1)?,
                row.get::<_, Vec<u8>>(2)?,
                row.get::<_, Vec<u8>>(3)?,
                row.get::<_, Option<Vec<u8>>>(4)?,
            ))
        })?;
        for row in rows {
            let (id, workflow, spec, after, finished) = row?;
            snapshot.jobs.push(SnapshotJob {
                id: JobId(id),
                workflow: WorkflowId(workflow),
                spec: decode(&spec, "job spec")?,
                after: decode(&after, "job dependencies")?,
                finished: finished.map(|f| decode(&f, "job state")).transpose()?,
            });
        }
        let mut statement = c.prepare("SELECT job, chunk, output FROM verified")?;
        let rows = statement
            .query_map([], |row| Ok((row.get::<_, u64>(0)?, row.get::<_, u32>(1)?, row.get::<_, Vec<u8>>(2)?)))?;
        for row in rows {
            let (job, index, output) = row?;
            snapshot.verified.push((ChunkId { job: JobId(job), index }, decode(&output, "chunk output")?));
        }
        let mut statement = c.prepare("SELECT job, chunk, worker, digest, output FROM pending_results")?;
        let rows = statement.query_map([], |row| {
            Ok((
                row.get::<_, u64>(0)?,
                row.get::<_, u32>(1)?,
                row.get::<_, Vec<u8>>(2)?,
                row.get::<_, Vec<u8>>(3)?,
                row.get::<_, Vec<u8>>(4)?,
            ))
        })?;
        for row in rows {
            let (job, index, worker, digest, output) = row?;
            snapshot.pending.push(SnapshotResult {
                chunk: ChunkId { job: JobId(job), index },
                worker: WorkerId(hash_of(&worker, "worker id")?),
                digest: Digest(hash_of(&digest, "digest")?),
                output: decode(&output, "result output")?,
            });
        }
        let mut statement = c.prepare("SELECT job, chunk, worker, reason FROM failures ORDER BY id")?;
        let rows = statement.query_map([], |row| {
            Ok((
                row.get::<_, u64>(0)?,
                row.get::<_, u32>(1)?,
                row.get::<_, Option<Vec<u8>>>(2)?,
                row.get::<_, String>(3)?,
            ))
        })?;
        for row in rows {
            let (job, index, worker, reason) = row?;
            let worker = worker.map(|w| hash_of(&w, "worker id").map(WorkerId)).transpose()?;
            snapshot.failed_attempts.push((ChunkId { job: JobId(job), index }, worker, reason));
        }
        let mut statement = c.prepare("SELECT worker, count FROM disagreements")?;
        let rows = statement.query_map([], |row| Ok((row.get::<_, Vec<u8>>(0)?, row.get::<_, u64>(1)?)))?;
        for row in rows {
            let (worker, count) = row?;
            snapshot.disagreements.push((WorkerId(hash_of(&worker, "worker id")?), count));
        }
        Ok(snapshot)
    }

    /// Verified chunks of a job, in order.
    pub fn verified_chunks(&self, job: JobId) -> Result<Vec<VerifiedChunk>> {
        let mut statement = self.connection.prepare(
            "SELECT chunk, digest, output, agreeing, disagreeing FROM verified WHERE job = ?1 ORDER BY chunk",
        )?;
        let rows = statement.query_map([job.0], |row| {
            Ok((
                row.get::<_, u32>(0)?,
                row.get::<_, Vec<u8>>(1)?,
                row.get::<_, Vec<u8>>(2)?,
                row.get::<_, Vec<u8>>(3)?,
                row.get::<_, Vec<u8>>(4)?,
            ))
        })?;
        let mut chunks = Vec::new();
        for row in rows {
            let (index, digest, output, agreeing, disagreeing) = row?;
            chunks.push(VerifiedChunk {
                index,
                digest: Digest(hash_of(&digest, "digest")?),
                output: decode(&output, "chunk output")?,
                agreeing: decode(&agreeing, "agreeing workers")?,
                disagreeing: decode(&disagreeing, "disagreeing workers")?,
            });
        }
        Ok(chunks)
    }

    /// The BLAKE3 hash of the workflow file a job came from.
    pub fn workflow_hash(&self, workflow: WorkflowId) -> Result<String> {
        Ok(self
            .connection
            .query_row("SELECT source_hash FROM workflows WHERE id = ?1", [workflow.0], |row| row.get(0))?)
    }
}

fn apply_one(t: &rusqlite::Transaction, record: &Record) -> Result<()> {
    match record {
        Record::WorkflowSubmitted { id, name, source, jobs } => {
            let hash = blake3::hash(source.as_bytes()).to_hex().to_string();
            t.execute(
                "INSERT INTO workflows (id, name, source, source_hash) VALUES (?1, ?2, ?3, ?4)",
                params![id.0, name, source, hash],
            )?;
            for (job, spec, after) in jobs {
                t.execute(
                    "INSERT INTO jobs (id, workflow, name, spec, after) VALUES (?1, ?2, ?3, ?4, ?5)",
                    params![job.0, id.0, spec.name, encode::<JobSpec>(spec), encode(after)],
                )?;
            }
        }
        Record::ResultReported { chunk, worker, digest, output } => {
            t.execute(
                "INSERT OR REPLACE INTO pending_results (job, chunk, worker, digest, output) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![chunk.job.0, chunk.index, worker.0.as_slice(), digest.0.as_slice(), encode::<Output>(output)],
            )?;
        }
        Record::AttemptFailed { chunk, worker, reason } => {
            t.execute(
                "INSERT INTO failures (job, chunk, worker, reason) VALUES (?1, ?2, ?3, ?4)",
                params![chunk.job.0, chunk.index, worker.map(|w| w.0.to_vec()), reason],
            )?;
        }
        Record::ChunkVerified { chunk, digest, output, agreeing, disagreeing } => {
            // The primary key makes a second verification of one chunk an error, never a silent overwrite.
            t.execute(
                "INSERT INTO verified (job, chunk, digest, output, agreeing, disagreeing) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![chunk.job.0, chunk.index, digest.0.as_slice(), encode::<Output>(output), encode(agreeing), encode(disagreeing)],
            )
            .map_err(|e| SchedulerError::Store(format!("recording chunk {chunk} as verified: {e}")))?;
            t.execute("DELETE FROM pending_results WHERE job = ?1 AND chunk = ?2", params![chunk.job.0, chunk.index])?;
        }
        Record::JobFinished { job, state } => {
            t.execute("UPDATE jobs SET finished = ?1 WHERE id = ?2", params![encode::<JobState>(state), job.0])?;
        }
        Record::WorkerDisagreed { worker } => {
            t.execute(
                "INSERT INTO disagreements (worker, count) VALUES (?1, 1) ON CONFLICT (worker) DO UPDATE SET count = count + 1",
                [worker.0.as_slice()],
            )?;
        }
    }
    Ok(())
}
