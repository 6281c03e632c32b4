//! The scheduler's durable state: SQLite in WAL mode, one transaction per batch of records.
//!
//! WAL with `synchronous = NORMAL` survives a killed process (kill -9) without losing committed
//! transactions; only a power loss may drop the last few. Values the core defines (job specs,
//! outputs) are stored as postcard blobs of the store's own types ([`records`]) next to the columns
//! queries need, so a change to the wire types cannot silently change what a database means.
//!
//! The format version is SQLite's `user_version`. A database of an older version is migrated on
//! open, in one transaction, by the steps in [`MIGRATIONS`]; a newer one is refused.

mod payments;
mod records;

pub use payments::{Contradiction, Due, Funding, OpenSettlement};

use std::path::Path;

use records::{StoredJobIds, StoredJobSpec, StoredJobState, StoredOutput, StoredWorkerIds};
use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;
use serde::de::DeserializeOwned;
use upglobe_protocol::messages::{DatasetInfo, DatasetKind};
use upglobe_protocol::messages::{JobState, VerifiedChunk};
use upglobe_protocol::trust::{Finality, TrustEvent};
use upglobe_protocol::{ChunkId, Digest, JobId, WorkerId, WorkflowId};

use crate::core::{Record, Snapshot, SnapshotJob, SnapshotResult};
use crate::{Result, SchedulerError};

/// The format this scheduler writes.
const FORMAT_VERSION: i64 = 6;

/// `MIGRATIONS[k]` takes a database from format `k + 1` to `k + 2`.
/// - 1 -> 2: values are the store's own types (the same bytes as format 1's wire types); failures
///   are indexed by job, for a job's failures without a scan.
/// - 2 -> 3: verification. A job's policy, provisional acceptances, workers' standings, the record
///   of verification decisions and the signed results kept as evidence. The new values are JSON:
///   self-describing, so fields and variants added later read without another format.
/// - 3 -> 4: datasets kept by name (`upglobe dataset put`); garbage collection keeps their blobs.
/// - 4 -> 5: job specs may hold container jobs and checkpoint contracts (a record variant a
///   format-4 scheduler cannot read, so it must refuse the database), and a job's GPU request
///   (free memory per GPU, wgpu backend) is a JSON column.
/// - 5 -> 6: payments. An append-only outbox of chunks verified for good (written in the
///   transaction that makes them final), the workflows funded by an escrow job, the settlement
///   batches sent to the chain, and the chunks the chain has paid. A format-5 database has
///   verified chunks already: they join the outbox, so funding a workflow later pays them too.
const MIGRATIONS: [&str; (FORMAT_VERSION - 1) as usize] = [
    "CREATE INDEX IF NOT EXISTS failures_by_job ON failures (job, chunk);",
    "ALTER TABLE jobs ADD COLUMN verification TEXT;
     ALTER TABLE pending_results ADD COLUMN assignment INTEGER NOT NULL DEFAULT 0;
     ALTER TABLE verified ADD COLUMN provisional TEXT;
     CREATE TABLE standings (worker BLOB PRIMARY KEY, standing TEXT NOT NULL);
     CREATE TABLE trust_events (id INTEGER PRIMARY KEY, job INTEGER, worker BLOB, event TEXT NOT NULL);
     CREATE INDEX trust_events_by_job ON trust_events (job, id);
     CREATE INDEX trust_events_by_worker ON trust_events (worker, id);
     CREATE TABLE signed_results (
         id INTEGER PRIMARY KEY, job INTEGER NOT NULL, chunk INTEGER NOT NULL, worker BLOB NOT NULL,
         key BLOB NOT NULL, statement BLOB NOT NULL, signature BLOB NOT NULL, usage TEXT NOT NULL);
     CREATE INDEX signed_results_by_chunk ON signed_results (job, chunk);
     CREATE TABLE secrets (name TEXT PRIMARY KEY, value BLOB NOT NULL);",
    "CREATE TABLE datasets (
         hash BLOB NOT NULL, name TEXT NOT NULL, kind TEXT NOT NULL, size INTEGER NOT NULL,
         added INTEGER NOT NULL, directory BLOB, PRIMARY KEY (hash, name));
     CREATE INDEX datasets_by_directory ON datasets (directory);",
    "ALTER TABLE jobs ADD COLUMN gpu TEXT;",
    "CREATE TABLE outbox (
         seq INTEGER PRIMARY KEY, job INTEGER NOT NULL, chunk INTEGER NOT NULL, workers BLOB NOT NULL,
         units INTEGER NOT NULL);
     CREATE INDEX outbox_by_chunk ON outbox (job, chunk);
     INSERT INTO outbox (job, chunk, workers, units)
         SELECT job, chunk, agreeing, 1 FROM verified WHERE provisional IS NULL ORDER BY job, chunk;
     CREATE TABLE funding (
         workflow INTEGER PRIMARY KEY, escrow_job INTEGER NOT NULL UNIQUE, chunks INTEGER NOT NULL,
         offsets TEXT NOT NULL, completed_tx BLOB, problem TEXT, unpayable INTEGER NOT NULL DEFAULT 0);
     CREATE TABLE settlements (
         id INTEGER PRIMARY KEY, workflow INTEGER NOT NULL, escrow_job INTEGER NOT NULL, chunks TEXT NOT NULL,
         state TEXT NOT NULL, tx BLOB, gas INTEGER);
     CREATE INDEX settlements_by_workflow ON settlements (workflow, state);
     CREATE TABLE paid (
         job INTEGER NOT NULL, chunk INTEGER NOT NULL, workflow INTEGER NOT NULL, hub BLOB,
         settlement INTEGER, PRIMARY KEY (job, chunk));
     CREATE INDEX paid_by_workflow ON paid (workflow);
     CREATE TABLE evidence (
         job INTEGER NOT NULL, chunk INTEGER NOT NULL, worker BLOB NOT NULL, workflow INTEGER NOT NULL,
         state TEXT NOT NULL, evidence_id BLOB, tx BLOB, PRIMARY KEY (job, chunk, worker));
     CREATE TABLE worker_hubs (worker BLOB PRIMARY KEY, hub BLOB NOT NULL);",
];

/// The format [`SCHEMA`] creates; a new database then takes the migrations after it.
const SCHEMA_FORMAT: i64 = 2;

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
CREATE INDEX IF NOT EXISTS failures_by_job ON failures (job, chunk);
";

/// A result's signature as the store keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedResult {
    pub worker: WorkerId,
    /// The hash of the [`upglobe_protocol::trust::ResultStatement`] that was signed.
    pub statement_hash: [u8; 32],
    pub signature: Vec<u8>,
}

pub struct Store {
    connection: Connection,
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    postcard::to_allocvec(value).expect("encoding to memory")
}

fn decode<T: DeserializeOwned>(bytes: &[u8], what: &str) -> Result<T> {
    postcard::from_bytes(bytes).map_err(|e| SchedulerError::Store(format!("corrupt {what} in the database: {e}")))
}

fn to_json<T: Serialize>(value: &T) -> String {
    serde_json::to_string(value).expect("encoding to memory")
}

fn from_json<T: DeserializeOwned>(text: &str, what: &str) -> Result<T> {
    serde_json::from_str(text).map_err(|e| SchedulerError::Store(format!("corrupt {what} in the database: {e}")))
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
        // The settler writes its own tables through a second connection.
        connection.busy_timeout(std::time::Duration::from_secs(10))?;
        let mut store = Store { connection };
        store.upgrade(&path.display().to_string())?;
        Ok(store)
    }

    /// A second, read-only connection to a database the scheduler has open (WAL lets it read a
    /// consistent snapshot while the scheduler writes): for garbage collection off the owner task.
    pub fn open_read_only(path: &Path) -> Result<Store> {
        let flags = rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let connection = Connection::open_with_flags(path, flags)
            .map_err(|e| SchedulerError::Store(format!("cannot open {}: {e}", path.display())))?;
        let version: i64 = connection.pragma_query_value(None, "user_version", |row| row.get(0))?;
        if version != FORMAT_VERSION {
            return Err(SchedulerError::Store(format!("{} has format version {version}", path.display())));
        }
        Ok(Store { connection })
    }

    /// Every blob that a job spec, a pending result or a verified result names: what garbage
    /// collection must keep.
    pub fn referenced_blobs(&self) -> Result<std::collections::HashSet<upglobe_protocol::BlobHash>> {
        let mut referenced = std::collections::HashSet::new();
        let transaction = self.connection.unchecked_transaction()?;
        let mut statement = transaction.prepare("SELECT spec FROM jobs")?;
        let mut rows = statement.query([])?;
        while let Some(row) = rows.next()? {
            let spec: upglobe_protocol::messages::JobSpec =
                decode::<StoredJobSpec>(&row.get::<_, Vec<u8>>(0)?, "job spec")?.into();
            match &spec.kind {
                upglobe_protocol::messages::JobKind::Md(md) => {
                    referenced.insert(md.initial);
                }
                upglobe_protocol::messages::JobKind::Command(command) => {
                    referenced.extend(command.inputs.iter().map(|f| f.blob));
                    referenced.extend(command.image_archive().map(|f| f.blob));
                }
                upglobe_protocol::messages::JobKind::Empty { .. } => {}
            }
        }
        let mut statement = transaction.prepare("SELECT hash FROM datasets")?;
        let mut rows = statement.query([])?;
        while let Some(row) = rows.next()? {
            referenced.insert(blob_hash(&row.get::<_, Vec<u8>>(0)?)?);
        }
        drop(rows);
        drop(statement);
        for query in ["SELECT output FROM verified", "SELECT output FROM pending_results"] {
            let mut statement = transaction.prepare(query)?;
            let mut rows = statement.query([])?;
            while let Some(row) = rows.next()? {
                let output: upglobe_protocol::messages::Output =
                    decode::<StoredOutput>(&row.get::<_, Vec<u8>>(0)?, "output")?.into();
                referenced.extend(output.blobs());
            }
        }
        Ok(referenced)
    }

    /// An in-memory store (simulation tests).
    pub fn in_memory() -> Result<Store> {
        let mut store = Store { connection: Connection::open_in_memory()? };
        store.upgrade("the in-memory store")?;
        Ok(store)
    }

    /// Creates the tables of a new database, or migrates an older one to [`FORMAT_VERSION`].
    fn upgrade(&mut self, name: &str) -> Result<()> {
        let version: i64 = self.connection.pragma_query_value(None, "user_version", |row| row.get(0))?;
        if version > FORMAT_VERSION {
            return Err(SchedulerError::Store(format!(
                "{name} has format version {version}; this scheduler knows up to {FORMAT_VERSION} (use a newer upglobe)"
            )));
        }
        if version == FORMAT_VERSION {
            return Ok(());
        }
        let transaction = self.connection.transaction()?;
        let from = if version == 0 {
            transaction.execute_batch(SCHEMA)?;
            SCHEMA_FORMAT
        } else {
            version
        };
        for (step, migration) in MIGRATIONS.iter().enumerate().skip(from as usize - 1) {
            transaction
                .execute_batch(migration)
                .map_err(|e| SchedulerError::Store(format!("migrating {name} to format {}: {e}", step + 2)))?;
        }
        if version != 0 {
            tracing::info!(database = name, from = version, to = FORMAT_VERSION, "database migrated");
        }
        transaction.pragma_update(None, "user_version", FORMAT_VERSION)?;
        transaction.commit()?;
        Ok(())
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
        let mut statement =
            c.prepare("SELECT id, workflow, spec, after, finished, verification, gpu FROM jobs ORDER BY id")?;
        let rows = statement.query_map([], |row| {
            Ok((
                row.get::<_, u64>(0)?,
                row.get::<_, u64>(1)?,
                row.get::<_, Vec<u8>>(2)?,
                row.get::<_, Vec<u8>>(3)?,
                row.get::<_, Option<Vec<u8>>>(4)?,
                row.get::<_, Option<String>>(5)?,
                row.get::<_, Option<String>>(6)?,
            ))
        })?;
        for row in rows {
            let (id, workflow, spec, after, finished, verification, gpu) = row?;
            let mut spec: upglobe_protocol::messages::JobSpec = decode::<StoredJobSpec>(&spec, "job spec")?.into();
            if let Some(verification) = verification {
                spec.verification = from_json(&verification, "verification policy")?;
            }
            if let Some(gpu) = gpu {
                spec.gpu = from_json(&gpu, "GPU request")?;
            }
            snapshot.jobs.push(SnapshotJob {
                id: JobId(id),
                workflow: WorkflowId(workflow),
                spec,
                after: decode::<StoredJobIds>(&after, "job dependencies")?.into(),
                finished: finished
                    .map(|f| decode::<StoredJobState>(&f, "job state").map(JobState::from))
                    .transpose()?,
            });
        }
        let mut statement = c.prepare("SELECT job, chunk, output, provisional FROM verified")?;
        let rows = statement.query_map([], |row| {
            Ok((
                row.get::<_, u64>(0)?,
                row.get::<_, u32>(1)?,
                row.get::<_, Vec<u8>>(2)?,
                row.get::<_, Option<String>>(3)?,
            ))
        })?;
        for row in rows {
            let (job, index, output, provisional) = row?;
            let output = decode::<StoredOutput>(&output, "chunk output")?.into();
            let provisional = provisional.map(|p| from_json(&p, "provisional acceptance")).transpose()?;
            snapshot.verified.push((ChunkId { job: JobId(job), index }, output, provisional));
        }
        let mut statement = c.prepare("SELECT job, chunk, worker, digest, output, assignment FROM pending_results")?;
        let rows = statement.query_map([], |row| {
            Ok((
                row.get::<_, u64>(0)?,
                row.get::<_, u32>(1)?,
                row.get::<_, Vec<u8>>(2)?,
                row.get::<_, Vec<u8>>(3)?,
                row.get::<_, Vec<u8>>(4)?,
                row.get::<_, u64>(5)?,
            ))
        })?;
        for row in rows {
            let (job, index, worker, digest, output, assignment) = row?;
            snapshot.pending.push(SnapshotResult {
                chunk: ChunkId { job: JobId(job), index },
                worker: WorkerId(hash_of(&worker, "worker id")?),
                assignment: upglobe_protocol::AssignmentId(assignment),
                digest: Digest(hash_of(&digest, "digest")?),
                output: decode::<StoredOutput>(&output, "result output")?.into(),
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
        let mut statement = c.prepare("SELECT worker, standing FROM standings")?;
        let rows = statement.query_map([], |row| Ok((row.get::<_, Vec<u8>>(0)?, row.get::<_, String>(1)?)))?;
        for row in rows {
            let (worker, standing) = row?;
            snapshot.standings.push((WorkerId(hash_of(&worker, "worker id")?), from_json(&standing, "standing")?));
        }
        Ok(snapshot)
    }

    /// The scheduler's secret named `name`, made by `make` the first time.
    pub fn secret(&mut self, name: &str, make: impl FnOnce() -> [u8; 32]) -> Result<[u8; 32]> {
        let stored: Option<Vec<u8>> = self
            .connection
            .query_row("SELECT value FROM secrets WHERE name = ?1", [name], |row| row.get(0))
            .optional()?;
        if let Some(bytes) = stored {
            return hash_of(&bytes, "secret");
        }
        let value = make();
        self.connection
            .execute("INSERT INTO secrets (name, value) VALUES (?1, ?2)", params![name, value.as_slice()])?;
        Ok(value)
    }

    /// The usage signed with a job's results, by chunk then arrival, at most `limit` rows.
    pub fn usage(&self, job: JobId, limit: usize) -> Result<Vec<upglobe_protocol::messages::ChunkUsage>> {
        let sql = "SELECT chunk, worker, usage FROM signed_results WHERE job = ?1 ORDER BY chunk, id LIMIT ?2";
        let mut statement = self.connection.prepare_cached(sql)?;
        let rows = statement.query_map(params![job.0, limit as i64], |row| {
            Ok((row.get::<_, i64>(0)?, row.get::<_, Vec<u8>>(1)?, row.get::<_, String>(2)?))
        })?;
        let mut found = Vec::new();
        for row in rows {
            let (chunk, worker, usage) = row?;
            let worker: [u8; 32] =
                worker.try_into().map_err(|_| SchedulerError::Store("a worker id that is not 32 bytes".into()))?;
            found.push(upglobe_protocol::messages::ChunkUsage {
                chunk: chunk as u32,
                worker: WorkerId(worker),
                usage: from_json(&usage, "usage")?,
            });
        }
        Ok(found)
    }

    /// The newest verification decisions about a job, oldest first.
    pub fn trust_events(&self, job: JobId, limit: usize) -> Result<Vec<TrustEvent>> {
        let sql = "SELECT event FROM trust_events WHERE job = ?1 ORDER BY id DESC LIMIT ?2";
        let mut statement = self.connection.prepare_cached(sql)?;
        let rows: Vec<String> =
            statement.query_map(params![job.0, limit as i64], |row| row.get(0))?.collect::<Result<_, _>>()?;
        let mut events = rows.iter().map(|e| from_json(e, "verification event")).collect::<Result<Vec<_>>>()?;
        events.reverse();
        Ok(events)
    }

    /// Signed results kept for a chunk, oldest first: the evidence of what each worker asserted.
    pub fn signed_results(&self, chunk: ChunkId) -> Result<Vec<SignedResult>> {
        let mut statement = self.connection.prepare_cached(
            "SELECT worker, statement, signature FROM signed_results WHERE job = ?1 AND chunk = ?2 ORDER BY id",
        )?;
        let rows = statement.query_map(params![chunk.job.0, chunk.index], |row| {
            Ok((row.get::<_, Vec<u8>>(0)?, row.get::<_, Vec<u8>>(1)?, row.get::<_, Vec<u8>>(2)?))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (worker, statement, signature) = row?;
            let (worker, statement_hash) =
                (WorkerId(hash_of(&worker, "worker id")?), hash_of(&statement, "statement")?);
            out.push(SignedResult { worker, statement_hash, signature });
        }
        Ok(out)
    }

    /// Verified chunks of a job in order, from chunk index `first` on, at most `limit` of them.
    pub fn verified_chunks(&self, job: JobId, first: u32, limit: u32) -> Result<Vec<VerifiedChunk>> {
        let mut statement = self.connection.prepare_cached(
            "SELECT chunk, digest, output, agreeing, disagreeing, provisional IS NULL FROM verified
             WHERE job = ?1 AND chunk >= ?2 ORDER BY chunk LIMIT ?3",
        )?;
        let rows = statement.query_map(params![job.0, first, limit], |row| {
            Ok((
                row.get::<_, u32>(0)?,
                row.get::<_, Vec<u8>>(1)?,
                row.get::<_, Vec<u8>>(2)?,
                row.get::<_, Vec<u8>>(3)?,
                row.get::<_, Vec<u8>>(4)?,
                row.get::<_, bool>(5)?,
            ))
        })?;
        let mut chunks = Vec::new();
        for row in rows {
            let (index, digest, output, agreeing, disagreeing, is_final) = row?;
            chunks.push(VerifiedChunk {
                index,
                digest: Digest(hash_of(&digest, "digest")?),
                output: decode::<StoredOutput>(&output, "chunk output")?.into(),
                agreeing: decode::<StoredWorkerIds>(&agreeing, "agreeing workers")?.into(),
                disagreeing: decode::<StoredWorkerIds>(&disagreeing, "disagreeing workers")?.into(),
                finality: if is_final { Finality::Final } else { Finality::Provisional },
            });
        }
        Ok(chunks)
    }

    /// The BLAKE3 hash of the workflow file a job came from.
    /// Keeps a blob as a dataset under a name (the same bytes may have several: a file in two
    /// directories, or put again under another name; a second put under the same name renews it).
    pub fn add_dataset(&mut self, info: &DatasetInfo) -> Result<()> {
        let kind = match info.kind {
            DatasetKind::File => "file",
            DatasetKind::Directory => "directory",
        };
        self.connection.execute(
            "INSERT OR REPLACE INTO datasets (hash, name, kind, size, added, directory) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                &info.hash.0[..],
                info.name,
                kind,
                info.size as i64,
                info.added as i64,
                info.directory.map(|d| d.0.to_vec())
            ],
        )?;
        Ok(())
    }

    pub fn dataset_count(&self) -> Result<usize> {
        Ok(self.connection.query_row("SELECT COUNT(*) FROM datasets", [], |row| row.get::<_, i64>(0))? as usize)
    }

    /// Datasets, newest first; `hash`: only that one and, for a directory, its files.
    pub fn datasets(&self, hash: Option<upglobe_protocol::BlobHash>) -> Result<Vec<DatasetInfo>> {
        let sql = "SELECT hash, name, kind, size, added, directory FROM datasets
                   WHERE ?1 IS NULL OR hash = ?1 OR directory = ?1 ORDER BY added DESC, name";
        let mut statement = self.connection.prepare_cached(sql)?;
        let rows = statement.query_map(params![hash.map(|h| h.0.to_vec())], |row| {
            Ok((
                row.get::<_, Vec<u8>>(0)?,
                row.get::<_, String>(1)?,
                row.get::<_, String>(2)?,
                row.get::<_, i64>(3)?,
                row.get::<_, i64>(4)?,
                row.get::<_, Option<Vec<u8>>>(5)?,
            ))
        })?;
        let mut found = Vec::new();
        for row in rows {
            let (hash, name, kind, size, added, directory) = row?;
            found.push(DatasetInfo {
                hash: blob_hash(&hash)?,
                name,
                kind: if kind == "directory" { DatasetKind::Directory } else { DatasetKind::File },
                size: size as u64,
                added: added as u64,
                directory: directory.as_deref().map(blob_hash).transpose()?,
            });
        }
        Ok(found)
    }

    /// Forgets the datasets put as `hash` (not the files inside other directories that have the
    /// same bytes) and, for a directory, the files put with it; returns what was forgotten.
    pub fn remove_dataset(&mut self, hash: upglobe_protocol::BlobHash) -> Result<Vec<DatasetInfo>> {
        let removed: Vec<DatasetInfo> = self
            .datasets(Some(hash))?
            .into_iter()
            .filter(|d| d.directory.is_none() || d.directory == Some(hash))
            .collect();
        self.connection
            .execute("DELETE FROM datasets WHERE (hash = ?1 AND directory IS NULL) OR directory = ?1", [&hash.0[..]])?;
        Ok(removed)
    }

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
            exec(
                t,
                "INSERT INTO workflows (id, name, source, source_hash) VALUES (?1, ?2, ?3, ?4)",
                params![id.0, name, source, hash],
            )?;
            for (job, spec, after) in jobs {
                exec(
                    t,
                    "INSERT INTO jobs (id, workflow, name, spec, after, verification, gpu)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                    params![
                        job.0,
                        id.0,
                        spec.name,
                        encode(&StoredJobSpec::from(spec)),
                        encode(&StoredJobIds::from(&after[..])),
                        to_json(&spec.verification),
                        to_json(&spec.gpu)
                    ],
                )?;
            }
        }
        Record::ResultReported { chunk, worker, assignment, digest, output } => {
            exec(
                t,
                "INSERT OR REPLACE INTO pending_results (job, chunk, worker, digest, output, assignment)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![
                    chunk.job.0,
                    chunk.index,
                    worker.0.as_slice(),
                    digest.0.as_slice(),
                    encode(&StoredOutput::from(output)),
                    assignment.0
                ],
            )?;
        }
        Record::AttemptFailed { chunk, worker, reason } => {
            exec(
                t,
                "INSERT INTO failures (job, chunk, worker, reason) VALUES (?1, ?2, ?3, ?4)",
                params![chunk.job.0, chunk.index, worker.map(|w| w.0.to_vec()), reason],
            )?;
        }
        Record::ChunkVerified { chunk, digest, output, agreeing, disagreeing, provisional } => {
            // The primary key makes a second verification of one chunk an error, never a silent
            // overwrite (an overturned chunk's row is deleted first, by `Invalidated`).
            exec(
                t,
                "INSERT INTO verified (job, chunk, digest, output, agreeing, disagreeing, provisional)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![
                    chunk.job.0,
                    chunk.index,
                    digest.0.as_slice(),
                    encode(&StoredOutput::from(output)),
                    encode(&StoredWorkerIds::from(&agreeing[..])),
                    encode(&StoredWorkerIds::from(&disagreeing[..])),
                    provisional.as_ref().map(to_json)
                ],
            )
            .map_err(|e| SchedulerError::Store(format!("recording chunk {chunk} as verified: {e}")))?;
            exec(t, "DELETE FROM pending_results WHERE job = ?1 AND chunk = ?2", params![chunk.job.0, chunk.index])?;
            if provisional.is_none() {
                payments::enqueue(t, *chunk)?;
            }
        }
        Record::JobFinished { job, state } => {
            exec(
                t,
                "UPDATE jobs SET finished = ?1 WHERE id = ?2",
                params![encode(&StoredJobState::from(state)), job.0],
            )?;
        }
        Record::Finalized { chunk } => {
            exec(
                t,
                "UPDATE verified SET provisional = NULL WHERE job = ?1 AND chunk = ?2",
                params![chunk.job.0, chunk.index],
            )?;
            payments::enqueue(t, *chunk)?;
        }
        Record::Invalidated { job, from_chunk, .. } => {
            exec(t, "DELETE FROM verified WHERE job = ?1 AND chunk >= ?2", params![job.0, from_chunk])?;
            exec(t, "DELETE FROM pending_results WHERE job = ?1 AND chunk >= ?2", params![job.0, from_chunk])?;
            exec(t, "UPDATE jobs SET finished = NULL WHERE id = ?1", params![job.0])?;
        }
        Record::Standing { worker, standing } => {
            exec(
                t,
                "INSERT OR REPLACE INTO standings (worker, standing) VALUES (?1, ?2)",
                params![worker.0.as_slice(), to_json(standing)],
            )?;
        }
        Record::Trust(event) => {
            exec(
                t,
                "INSERT INTO trust_events (job, worker, event) VALUES (?1, ?2, ?3)",
                params![event.job.map(|j| j.0), event.worker.map(|w| w.0.to_vec()), to_json(event)],
            )?;
        }
        Record::Signed { chunk, worker, key, statement_hash, signature, usage } => {
            exec(
                t,
                "INSERT INTO signed_results (job, chunk, worker, key, statement, signature, usage)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![
                    chunk.job.0,
                    chunk.index,
                    worker.0.as_slice(),
                    key.0.as_slice(),
                    statement_hash.as_slice(),
                    signature.0.as_slice(),
                    to_json(usage)
                ],
            )?;
        }
        Record::WorkerDisagreed { worker } => {
            exec(
                t,
                "INSERT INTO disagreements (worker, count) VALUES (?1, 1) ON CONFLICT (worker) DO UPDATE SET count = count + 1",
                [worker.0.as_slice()],
            )?;
        }
    }
    Ok(())
}

/// Runs a statement through the connection's statement cache: records are written by the thousand,
/// and parsing the SQL each time cost more than executing it.
fn exec(t: &rusqlite::Transaction, sql: &str, params: impl rusqlite::Params) -> rusqlite::Result<usize> {
    t.prepare_cached(sql)?.execute(params)
}

fn blob_hash(bytes: &[u8]) -> Result<upglobe_protocol::BlobHash> {
    let bytes: [u8; 32] =
        bytes.try_into().map_err(|_| SchedulerError::Store(format!("a blob hash of {} bytes", bytes.len())))?;
    Ok(upglobe_protocol::BlobHash(bytes))
}
