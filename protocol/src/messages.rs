//! Every message on the wire.
//!
//! Streams:
//! - a connection's first bidirectional stream opens with a [`Greeting`]; for a worker it stays the
//!   control stream: heartbeats and results one way, [`ToWorker`] messages (the first a
//!   [`ToWorker::Welcome`] or [`ToWorker::Refused`]) the other; a client gets a [`ClientWelcome`];
//! - every further stream opens with one [`StreamRequest`]: a blob download, a blob upload, or one
//!   client request and its response.

use serde::{Deserialize, Serialize};

use crate::ids::{AssignmentId, BlobHash, ChunkId, Digest, JobId, WorkerId, WorkflowId};
use crate::trust::{Finality, NodeRole, PublicKey, Signature, Usage, Verification, VerificationReport};

/// Upper bounds, so that no message can make a peer allocate without limit. These are the one set of
/// limits: clients and workers check them to fail early, the scheduler enforces them.
pub mod limits {
    /// Largest frame on any stream after a peer has proven its secret.
    pub const FRAME_BYTES_MAX: usize = 64 << 20;
    /// Largest first frame of a connection, read before the peer has proven anything.
    pub const GREETING_BYTES_MAX: usize = 16 << 10;
    /// GPUs and wgpu adapters one worker may describe in its hello.
    pub const GPUS_DESCRIBED_MAX: usize = 16;
    pub const ADAPTERS_MAX: usize = 8;
    /// Connections that have not yet proven their secret, at once; more are refused.
    pub const UNAUTHENTICATED_CONNECTIONS_MAX: usize = 256;
    /// Largest blob (checkpoint, input or output file).
    pub const BLOB_BYTES_MAX: u64 = 16 << 30;
    /// Live output: bytes in one worker message, forwarded per task, and kept per job.
    pub const LOG_MESSAGE_BYTES_MAX: usize = 64 << 10;
    pub const LIVE_LOG_BYTES_MAX: u64 = 4 << 20;
    pub const JOB_LOG_BYTES_MAX: usize = 1 << 20;
    /// Jobs whose live output the scheduler keeps at once (the oldest go first).
    pub const LOGGED_JOBS_MAX: usize = 256;
    /// Signed usage rows in one answer.
    pub const USAGE_ROWS_MAX: usize = 10_000;
    /// Workers named as sources of one assignment's inputs.
    pub const PEER_SOURCES_MAX: usize = 8;
    /// Workers serving blobs to one worker at once.
    pub const PEER_CONNECTIONS_MAX: usize = 64;
    /// Blobs a worker reports holding when it joins, and that the scheduler remembers per worker.
    pub const HOLDING_MAX: usize = 4096;
    /// Ranges in one request for slices of a blob.
    pub const SLICE_RANGES_MAX: usize = 4096;
    /// Datasets one scheduler keeps by name, and the bytes of a dataset's name (a path).
    pub const DATASETS_MAX: usize = 100_000;
    pub const DATASET_NAME_BYTES_MAX: usize = 1024;
    /// Files in one directory dataset, and the bytes of its manifest.
    pub const MANIFEST_FILES_MAX: usize = 100_000;
    pub const MANIFEST_BYTES_MAX: u64 = 32 << 20;
    pub const REPLICAS_MAX: u32 = 7;
    pub const JOBS_PER_WORKFLOW_MAX: usize = 10_000;
    pub const CHUNKS_PER_JOB_MAX: u64 = 10_000_000;
    /// Chunks of one workflow, all jobs together.
    pub const CHUNKS_PER_WORKFLOW_MAX: u64 = 10_000_000;
    pub const REASON_BYTES_MAX: usize = 4096;
    /// Runs of consecutive array task ids in one job.
    pub const TASK_RUNS_MAX: usize = 4096;
    /// Verified chunks in one page of results, and about how many bytes.
    pub const RESULTS_PAGE_CHUNKS_MAX: u32 = 10_000;
    pub const RESULTS_PAGE_BYTES_MAX: usize = 16 << 20;
    /// Names of workflows, jobs and workers.
    pub const NAME_BYTES_MAX: usize = 64;
    /// Free text a peer describes itself with: software versions, devices.
    pub const DESCRIPTION_BYTES_MAX: usize = 256;
    pub const SECRET_BYTES_MAX: usize = 256;
    /// A job given by id or `WORKFLOW.JOB` in a client request.
    pub const QUERY_BYTES_MAX: usize = 2 * NAME_BYTES_MAX + 1;
    /// The workflow file kept for provenance.
    pub const SOURCE_BYTES_MAX: usize = 4 << 20;
    /// A relative file path (input, output, pattern).
    pub const PATH_BYTES_MAX: usize = 1024;
    /// Directories a relative file path may descend.
    pub const PATH_DEPTH_MAX: usize = 32;
    pub const ARGUMENTS_MAX: usize = 4096;
    pub const ARGUMENTS_BYTES_MAX: usize = 256 << 10;
    /// Input files, output patterns and output files of one command task, each.
    pub const FILES_PER_TASK_MAX: usize = 1000;
    /// Input files of one workflow, all jobs together (each is looked up in the blob store).
    pub const INPUTS_PER_WORKFLOW_MAX: usize = 100_000;
    /// Thermo lines in one chunk's result.
    pub const THERMO_LINES_MAX: u64 = 100_000;
    /// Atoms in one MD system.
    pub const ATOMS_MAX: u64 = 1 << 32;
    /// Steps of one MD job.
    pub const STEPS_MAX: u64 = 1 << 40;
    /// Wall time of one command task.
    pub const TIMEOUT_S_MAX: u64 = 7 * 24 * 3600;
    /// Resources of one worker or one job.
    pub const CPUS_MAX: u32 = 1 << 16;
    pub const GPUS_MAX: u32 = 1 << 10;
    pub const MEMORY_BYTES_MAX: u64 = 1 << 50;
    /// Results of one assignment a worker may leave unclaimed on the scheduler: uploaded blobs that
    /// no accepted result names yet.
    pub const UNCLAIMED_UPLOAD_BYTES_MAX: u64 = 4 * BLOB_BYTES_MAX;
    /// Inputs of one workflow, all blobs together.
    pub const WORKFLOW_INPUT_BYTES_MAX: u64 = 256 << 30;
}

/// Checks a workflow or job name. Jobs are addressed as `WORKFLOW.JOB`, so names are plain: the
/// problem is returned as a phrase to follow the name ("is empty", "contains '.'; …").
pub fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("is empty".into());
    }
    if name.len() > limits::NAME_BYTES_MAX {
        return Err(format!("is {} bytes long; at most {} are allowed", name.len(), limits::NAME_BYTES_MAX));
    }
    if let Some(bad) = name.chars().find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_')) {
        return Err(format!("contains {bad:?}; only letters, digits, '-' and '_' are allowed"));
    }
    Ok(())
}

/// Checks a file name a peer sends: a plain relative path that stays inside the directory it is
/// joined to. No `..`, `.` or empty components, no absolute paths, no backslashes or control
/// characters; bounded in bytes and depth. The scheduler, the worker and the client all apply it.
pub fn check_relative_path(name: &str) -> Result<(), String> {
    use limits::{PATH_BYTES_MAX, PATH_DEPTH_MAX};
    if name.is_empty() {
        return Err("an empty file name".into());
    }
    let shown = || {
        let mut end = name.len().min(80);
        while !name.is_char_boundary(end) {
            end -= 1;
        }
        format!("{:?}{}", &name[..end], if end < name.len() { "…" } else { "" })
    };
    if name.len() > PATH_BYTES_MAX {
        return Err(format!("file name {} is {} bytes; at most {PATH_BYTES_MAX} are allowed", shown(), name.len()));
    }
    if name.chars().any(|c| c.is_control() || c == '\\') {
        return Err(format!("file name {} contains a control character or a backslash", shown()));
    }
    if name.starts_with('/') {
        return Err(format!("file name {} is absolute; it must be relative to the task's directory", shown()));
    }
    let components: Vec<&str> = name.split('/').collect();
    if components.iter().any(|c| c.is_empty() || *c == "." || *c == "..") {
        return Err(format!("file name {} must not contain '..', '.' or empty components", shown()));
    }
    if components.len() > PATH_DEPTH_MAX {
        return Err(format!("file name {} is more than {PATH_DEPTH_MAX} directories deep", shown()));
    }
    Ok(())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Resources {
    pub cpus: u32,
    pub memory_bytes: u64,
    pub gpus: u32,
}

impl Resources {
    pub fn fits_in(&self, free: &Resources) -> bool {
        self.cpus <= free.cpus && self.memory_bytes <= free.memory_bytes && self.gpus <= free.gpus
    }

    pub fn minus(&self, other: &Resources) -> Resources {
        Resources {
            cpus: self.cpus - other.cpus,
            memory_bytes: self.memory_bytes - other.memory_bytes,
            gpus: self.gpus - other.gpus,
        }
    }

    pub fn plus(&self, other: &Resources) -> Resources {
        Resources {
            cpus: self.cpus + other.cpus,
            memory_bytes: self.memory_bytes + other.memory_bytes,
            gpus: self.gpus + other.gpus,
        }
    }
}

/// One thermo line (LAMMPS `lj` units; energies per atom).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ThermoLine {
    pub step: u64,
    pub temp: f64,
    pub pe: f64,
    pub ke: f64,
    pub etotal: f64,
    pub press: f64,
}

// ---------------------------------------------------------------------------------------------
// Work

/// A file given to a command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileRef {
    /// Relative path inside the task's working directory.
    pub name: String,
    pub blob: BlobHash,
    pub size: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Task {
    /// Advance the MD state in blob `input` by `steps` steps, recording the state hash every
    /// `chain_every` steps (a divisor of `steps`) and keeping those states until the chunk settles.
    Md { input: BlobHash, steps: u64, thermo_every: u64, thermo_at_start: bool, chain_every: u64 },
    /// Run a program (only on workers that allow commands), or a container (only on workers with
    /// a dockerd); a checkpointed job's previous checkpoint files come among the inputs.
    Command {
        argv: Vec<String>,
        inputs: Vec<FileRef>,
        outputs: Vec<String>,
        timeout_s: u64,
        container: Option<ContainerSpec>,
    },
    /// Do nothing but answer: for measuring the scheduler.
    Empty { value: u64 },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Assignment {
    pub id: AssignmentId,
    pub chunk: ChunkId,
    pub task: Task,
    pub resources: Resources,
    /// Other workers that hold the task's inputs and serve them to peers: a download asks them for
    /// slices beside the scheduler (at most [`limits::PEER_SOURCES_MAX`]).
    pub sources: Vec<PeerSource>,
    /// The worker's GPUs the task gets, by UUID (`resources.gpus` of them, when the worker
    /// described its GPUs), and the wgpu backend an MD task runs on, if the job named one.
    pub gpus: Vec<String>,
    pub backend: Option<String>,
}

/// Live output of a job: the pieces from byte `from` (which is later than asked when older output
/// was dropped) to `next`, where the next request starts; `done` once the job has finished.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogPage {
    pub from: u64,
    pub pieces: Vec<LogPiece>,
    pub next: u64,
    pub done: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogPiece {
    pub stderr: bool,
    pub bytes: Vec<u8>,
}

/// A worker that serves a blob to its peers, as the scheduler knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerSource {
    pub blob: BlobHash,
    /// Its certificate's key id: the fetching worker accepts no other server.
    pub worker: WorkerId,
    /// `HOST:PORT` it serves peers on.
    pub address: String,
}

/// The first frame a worker sends on a connection to a peer that serves blobs: proof that it
/// holds the cluster's worker secret, bound to both ends (see [`crate::token::peer_proof`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerHello {
    pub proof: [u8; 32],
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Output {
    Md {
        /// BLAKE3 state hash of the checkpoint (what replicas compare).
        state_hash: [u8; 32],
        checkpoint: BlobHash,
        checkpoint_bytes: u64,
        thermo: Vec<ThermoLine>,
        /// The state hash after every `chain_every` steps; the last is `state_hash`. Link `j` is the
        /// interval that ends at `chain[j]` and starts at `chain[j - 1]` (the input for `j = 0`).
        chain: Vec<[u8; 32]>,
    },
    Command {
        exit_code: i32,
        files: Vec<FileRef>,
        stdout: FileRef,
        stderr: FileRef,
    },
    Empty {
        value: u64,
    },
}

impl Output {
    /// The digest replicas must agree on: everything the result asserts, nothing about how or where
    /// it was computed. For MD that includes the checkpoint blob: honest replicas encode identical
    /// states into identical bytes, so a replica cannot pair a correct state hash with another file.
    pub fn digest(&self) -> Digest {
        let mut hasher = blake3::Hasher::new();
        match self {
            Output::Md { state_hash, checkpoint, checkpoint_bytes, thermo, chain } => {
                hasher.update(b"md");
                hasher.update(state_hash);
                hasher.update(&checkpoint.0);
                hasher.update(&checkpoint_bytes.to_le_bytes());
                hasher.update(&(chain.len() as u64).to_le_bytes());
                for link in chain {
                    hasher.update(link);
                }
                for line in thermo {
                    hasher.update(&line.step.to_le_bytes());
                    for value in [line.temp, line.pe, line.ke, line.etotal, line.press] {
                        hasher.update(&value.to_bits().to_le_bytes());
                    }
                }
            }
            Output::Command { exit_code, files, stdout, stderr } => {
                hasher.update(b"command");
                hasher.update(&exit_code.to_le_bytes());
                for file in files.iter().chain([stdout, stderr]) {
                    hasher.update(&(file.name.len() as u64).to_le_bytes());
                    hasher.update(file.name.as_bytes());
                    hasher.update(&file.blob.0);
                }
            }
            Output::Empty { value } => {
                hasher.update(b"empty");
                hasher.update(&value.to_le_bytes());
            }
        }
        Digest(*hasher.finalize().as_bytes())
    }

    /// Blobs that this output refers to and that the scheduler must hold before accepting it.
    pub fn blobs(&self) -> Vec<BlobHash> {
        match self {
            Output::Md { checkpoint, .. } => vec![*checkpoint],
            Output::Command { files, stdout, stderr, .. } => {
                files.iter().chain([stdout, stderr]).map(|f| f.blob).collect()
            }
            Output::Empty { .. } => Vec::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Outcome {
    Completed(Output),
    Failed { reason: String },
}

impl Outcome {
    /// What a worker's signature covers of the outcome: the output's digest, or the failure reason.
    pub fn digest(&self) -> Digest {
        match self {
            Outcome::Completed(output) => output.digest(),
            Outcome::Failed { reason } => {
                let mut hasher = blake3::Hasher::new();
                hasher.update(b"failed");
                hasher.update(reason.as_bytes());
                Digest(*hasher.finalize().as_bytes())
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The first frame of a connection

/// The first frame on a connection's first stream says who is connecting.
// One greeting per connection: boxing the hello would save nothing that matters.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Greeting {
    Worker(Hello),
    Client(ClientHello),
}

// ---------------------------------------------------------------------------------------------
// Worker control stream

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hello {
    pub protocol: u32,
    pub secret: String,
    /// Software version, for operators.
    pub software: String,
    pub name: String,
    pub resources: Resources,
    pub allow_commands: bool,
    /// What runs MD chunks, e.g. "cpu (8 threads)".
    pub device: String,
    pub role: NodeRole,
    /// The Ed25519 key the node signs its results with.
    pub signing_key: PublicKey,
    /// The hub (lab, operator) the node belongs to; nodes of one owner never verify each other.
    /// None: the node is its own owner.
    pub owner: Option<String>,
    /// `HOST:PORT` where it serves its cache to other workers, if it does.
    pub peer_address: Option<String>,
    /// NVIDIA GPUs found through NVML (`resources.gpus` counts them) and wgpu adapters (the MD
    /// engine's devices), for placement and for `upglobe workers`.
    pub gpus: Vec<GpuDevice>,
    pub adapters: Vec<String>,
    /// The local dockerd's version, when the worker runs container jobs.
    pub containers: Option<String>,
    /// Containers that ask for a network get one (otherwise such jobs go elsewhere).
    pub allow_network: bool,
    /// The Ethereum address of the hub (lab) to be paid for this node's chunks, as its operator
    /// declares it. The connection proves which worker says so; the settler pays a hub only when
    /// the registry, where the hub attached the worker, agrees, so a hub that attaches someone
    /// else's worker id is not paid for its chunks.
    pub hub: Option<[u8; 20]>,
}

/// A GPU as NVML describes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GpuDevice {
    pub name: String,
    pub uuid: String,
    pub vram_total_bytes: u64,
    pub vram_free_bytes: u64,
    pub driver: String,
    pub utilisation_percent: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    pub assignment: AssignmentId,
    pub steps_done: u64,
}

// A result is the common message and lives only while it is read and handled; boxing it would
// cost an allocation per message to save stack space for heartbeats.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum FromWorker {
    Heartbeat {
        running: Vec<Progress>,
    },
    /// A result, signed over its [`crate::trust::ResultStatement`].
    Finished {
        assignment: AssignmentId,
        outcome: Outcome,
        usage: Usage,
        signature: Signature,
    },
    /// The answer to [`ToWorker::ServeState`]: the state was uploaded as `blob`, or cannot be served.
    StateServed {
        request: u64,
        served: Result<BlobHash, String>,
    },
    /// Blobs the worker's cache holds (the most recently used, at most [`limits::HOLDING_MAX`]),
    /// sent once it joins: the scheduler then places chunks where their inputs already are.
    Holding {
        blobs: Vec<BlobHash>,
    },
    /// Output of a running container task, as it comes (at most [`limits::LOG_MESSAGE_BYTES_MAX`]
    /// per message and [`limits::LIVE_LOG_BYTES_MAX`] per task; the whole output comes with the
    /// result).
    Log {
        assignment: AssignmentId,
        stderr: bool,
        bytes: Vec<u8>,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Welcome {
    pub peer: WorkerId,
    pub software: String,
    pub heartbeat_interval_ms: u64,
}

// Assignments are most of what goes to a worker; boxing each would cost an allocation to shrink
// the rare messages.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ToWorker {
    Welcome(Welcome),
    Refused {
        reason: String,
    },
    Assign(Assignment),
    Cancel {
        assignment: AssignmentId,
        reason: String,
    },
    /// Upload the state at the start of link `link` of the chain of a finished assignment, within
    /// `deadline_ms`; answered by [`FromWorker::StateServed`].
    ServeState {
        request: u64,
        assignment: AssignmentId,
        link: u32,
        deadline_ms: u64,
    },
    /// These assignments are settled: their intermediate states may go.
    Settled {
        assignments: Vec<AssignmentId>,
    },
}

// ---------------------------------------------------------------------------------------------
// Streams after the first

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum StreamRequest {
    /// Verified slices of a blob: answered by [`BlobReply`], then the BLAKE3 verified-streaming
    /// encoding of the ranges (1 KiB chunks, `[start, end)`, sorted, disjoint; an end of
    /// `u64::MAX` is open) in 16 KiB groups.
    GetSlices { hash: BlobHash, ranges: Vec<(u64, u64)> },
    /// Answered at once by [`BlobReply::Continue`] (send the bytes from `offset` on: what an
    /// earlier, broken upload delivered is kept), [`BlobReply::Stored`] (the peer holds it already:
    /// send nothing) or [`BlobReply::Rejected`]; after the bytes, by [`BlobReply`] once they are
    /// verified and stored.
    PutBlob { hash: BlobHash, size: u64 },
    /// One client request, answered by one [`ClientResponse`].
    Client(ClientRequest),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum BlobReply {
    Sending {
        size: u64,
    },
    Stored,
    Missing,
    Rejected {
        reason: String,
    },
    /// Send the bytes of the blob from `offset` on.
    Continue {
        offset: u64,
    },
}

// ---------------------------------------------------------------------------------------------
// Clients (the command line)

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClientHello {
    pub protocol: u32,
    pub secret: String,
    pub software: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ClientWelcome {
    Welcome { software: String },
    Refused { reason: String },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MdJob {
    /// Checkpoint of the initial state (uploaded before submitting).
    pub initial: BlobHash,
    pub atoms: u64,
    pub total_steps: u64,
    pub chunk_steps: u64,
    pub thermo_every: u64,
}

/// Array task ids as runs of consecutive ids, so `tasks = "1-1000000"` is one pair on the wire and
/// in the store, not a million numbers. Chunk k of the job runs the k-th id in run order.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct TaskIds {
    /// (first id, how many ids) per run, in the order given.
    runs: Vec<(i64, u64)>,
}

impl TaskIds {
    /// Ids in order; consecutive ones become one run.
    pub fn from_ids(ids: impl IntoIterator<Item = i64>) -> TaskIds {
        let mut runs: Vec<(i64, u64)> = Vec::new();
        for id in ids {
            match runs.last_mut() {
                Some((first, count)) if first.checked_add(*count as i64) == Some(id) => *count += 1,
                _ => runs.push((id, 1)),
            }
        }
        TaskIds { runs }
    }

    pub fn runs(&self) -> &[(i64, u64)] {
        &self.runs
    }

    /// How many ids (saturating: an unchecked peer's runs may claim more than exist).
    pub fn len(&self) -> u64 {
        self.runs.iter().fold(0u64, |sum, (_, count)| sum.saturating_add(*count))
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The id of chunk `index`: a walk over the runs, which are few (at most
    /// [`limits::TASK_RUNS_MAX`]).
    pub fn get(&self, index: u64) -> Option<i64> {
        let mut rest = index;
        for (first, count) in &self.runs {
            if rest < *count {
                return first.checked_add(rest as i64);
            }
            rest -= count;
        }
        None
    }

    /// Checks what the scheduler relies on: at most [`limits::TASK_RUNS_MAX`] runs, none empty or
    /// running past `i64::MAX`, no id twice.
    pub fn check(&self) -> Result<(), String> {
        if self.runs.len() > limits::TASK_RUNS_MAX {
            return Err(format!(
                "{} runs of consecutive task ids; at most {} are allowed (use ranges)",
                self.runs.len(),
                limits::TASK_RUNS_MAX
            ));
        }
        let mut spans = Vec::with_capacity(self.runs.len());
        for &(first, count) in &self.runs {
            let last = (count as i64).checked_sub(1).and_then(|c| first.checked_add(c)).filter(|_| count > 0);
            let Some(last) = last.filter(|_| count <= i64::MAX as u64) else {
                return Err(format!("task ids from {first}: a run of {count} ids is empty or passes the largest id"));
            };
            spans.push((first, last));
        }
        spans.sort_unstable();
        if let Some(pair) = spans.windows(2).find(|pair| pair[1].0 <= pair[0].1) {
            return Err(format!("task id {} appears twice; array task ids must be unique", pair[1].0));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandJob {
    /// Arguments; `{task}` is replaced by the task id of each array task.
    pub argv: Vec<String>,
    /// Array task ids; empty for a single task.
    pub tasks: TaskIds,
    pub inputs: Vec<FileRef>,
    pub outputs: Vec<String>,
    pub timeout_s: u64,
    /// Run inside this image rather than on the worker's own system.
    pub container: Option<ContainerSpec>,
    /// Run as a chain of chunks, each resuming from the checkpoint files of the one before.
    pub checkpoint: Option<CheckpointContract>,
}

impl CommandJob {
    /// The `docker save` archive its image is pinned to, if it runs in a container.
    pub fn image_archive(&self) -> Option<&FileRef> {
        self.container.as_ref().and_then(|c| c.image.archive.as_ref())
    }
}

/// A program run in a container: hardened by the worker (no network unless asked for and allowed,
/// no capabilities, read-only root, a non-root user, limits), on exactly the image the job pinned.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerSpec {
    pub image: ImagePin,
    /// The job asks for a network; only workers started with `--allow-network` give it one.
    pub network: bool,
}

/// An image pinned by content, so every replica runs the same bytes: by the BLAKE3 hash of a
/// `docker save` archive in the blob store (`upglobe image push`; the worker loads it and runs the
/// image id its manifest names), by an image id the worker must already hold, or by a registry
/// digest (`repo@sha256:…`) the worker pulls.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImagePin {
    /// As the user named it (`busybox:1.36`, `repo@sha256:…`).
    pub name: String,
    /// `sha256:` and 64 hex digits: the digest of the image's configuration (which names its layers
    /// by digest).
    pub id: Option<String>,
    pub archive: Option<FileRef>,
}

impl ImagePin {
    /// Whether the pin names the bytes: an archive, an id, or a registry digest.
    pub fn check(&self) -> Result<(), String> {
        if let Some(id) = &self.id {
            Self::check_id(id)?;
        }
        let by_digest =
            self.name.split_once("@sha256:").is_some_and(|(_, hex)| Self::check_id(&format!("sha256:{hex}")).is_ok());
        if self.id.is_none() && self.archive.is_none() && !by_digest {
            return Err(format!("image {:?} is not pinned by an archive, an id or a registry digest", self.name));
        }
        Ok(())
    }

    /// Checks an image id: `sha256:` and 64 lowercase hex digits.
    pub fn check_id(id: &str) -> Result<(), String> {
        let hex = id.strip_prefix("sha256:").unwrap_or("");
        if hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
            Ok(())
        } else {
            Err(format!("image id {:?} is not 'sha256:' and 64 hex digits", id.chars().take(80).collect::<String>()))
        }
    }
}

/// How a program that checkpoints is cut into chunks: chunk 0 runs the job's `argv`, every later
/// chunk runs `resume` with the previous chunk's checkpoint files placed among its inputs. In both,
/// `{chunk}` stands for the chunk's index (from 0) and `{chunks}` for their number.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointContract {
    pub chunks: u32,
    pub resume: Vec<String>,
    /// Relative paths of the files that form the checkpoint; every chunk must produce all of them.
    pub files: Vec<String>,
}

// One per job, never in bulk: boxing the command would only add an allocation and noise.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum JobKind {
    Md(MdJob),
    Command(CommandJob),
    /// Independent empty chunks (benchmarks).
    Empty {
        chunks: u32,
    },
}

impl JobKind {
    pub fn name(&self) -> &'static str {
        match self {
            JobKind::Md(_) => "md",
            JobKind::Command(CommandJob { container: Some(_), .. }) => "container",
            JobKind::Command(_) => "command",
            JobKind::Empty { .. } => "empty",
        }
    }

    pub fn chunks(&self) -> u64 {
        match self {
            JobKind::Md(md) => md.total_steps / md.chunk_steps.max(1),
            JobKind::Command(CommandJob { checkpoint: Some(checkpoint), .. }) => checkpoint.chunks as u64,
            JobKind::Command(command) => command.tasks.len().max(1),
            JobKind::Empty { chunks } => *chunks as u64,
        }
    }

    /// Whether the job's chunks form a chain: chunk k starts from what chunk k-1's verified result
    /// hands on (an MD state, a program's checkpoint files), so it opens only once that one is
    /// verified, and overturning a chunk undoes every chunk after it.
    pub fn chained(&self) -> bool {
        matches!(self, JobKind::Md(_) | JobKind::Command(CommandJob { checkpoint: Some(_), .. }))
    }
}

/// What a job asks of the GPUs it is given (`resources.gpus` counts them).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GpuRequest {
    /// Free memory each of its GPUs must have; 0: any.
    pub vram_bytes: u64,
    /// The wgpu backend its MD chunks run on (`vulkan`, `metal`, `dx12`, `gl`); None: any.
    pub backend: Option<String>,
}

impl GpuRequest {
    pub const BACKENDS: [&str; 4] = ["vulkan", "metal", "dx12", "gl"];
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobSpec {
    pub name: String,
    /// Names of jobs of the same workflow that must complete first.
    pub after: Vec<String>,
    pub replicas: u32,
    pub resources: Resources,
    pub kind: JobKind,
    pub verification: Verification,
    pub gpu: GpuRequest,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Submission {
    pub name: String,
    /// The workflow file as written, for provenance.
    pub source: String,
    pub jobs: Vec<JobSpec>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ClientRequest {
    Submit(Submission),
    /// All jobs, or one by id or `workflow.job` name.
    Status {
        job: Option<String>,
    },
    Cancel {
        job: String,
    },
    /// One page of a job's verified results, from chunk index `first_chunk` on.
    Results {
        job: String,
        first_chunk: u32,
    },
    Workers,
    /// A job's verification record.
    Verification {
        job: String,
    },
    /// The datasets the scheduler keeps by name (`upglobe dataset …`).
    Datasets(DatasetRequest),
    /// The signed usage of a job's results, chunk by chunk (at most [`limits::USAGE_ROWS_MAX`]).
    Usage {
        job: String,
    },
    /// A job's live output from byte `from` on (of what the scheduler keeps: the last
    /// [`limits::JOB_LOG_BYTES_MAX`]).
    Logs {
        job: String,
        from: u64,
    },
    /// Paying for verified chunks from an escrow on Ethereum.
    Payments(PaymentRequest),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PaymentRequest {
    /// Which contracts the scheduler reports to, and its reporter address: what a requester names
    /// when it opens an escrow job.
    Info,
    /// Pays a workflow's verified chunks from escrow job `escrow_job`, which the requester opened
    /// with this scheduler's reporter address, in ETH, with a deposit for every chunk of the
    /// workflow. `signature`: the job's requester signed `upglobe_contracts::funding_message`
    /// (EIP-191, 65 bytes), so no one else can tie its deposit to their workflow.
    Fund { workflow: WorkflowId, escrow_job: u64, signature: Vec<u8> },
    /// The funded workflows and how far their settlement is.
    Status,
}

/// The chain a scheduler settles on. Addresses are 20 bytes, hashes 32.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentInfo {
    pub chain_id: u64,
    pub registry: [u8; 20],
    pub escrow: [u8; 20],
    pub reporter: [u8; 20],
}

/// One funded workflow: its escrow job and what has been settled.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FundedWorkflow {
    pub workflow: WorkflowId,
    pub name: String,
    pub escrow_job: u64,
    /// Chunks of the workflow (escrow chunk indices 0..chunks).
    pub chunks: u64,
    /// Chunks verified for good (the outbox), paid on chain, and left unpaid with a reason.
    pub verified: u64,
    pub paid: u64,
    pub unpayable: u64,
    /// Batches sent, and the last one's transaction.
    pub batches: u64,
    pub last_tx: Option<[u8; 32]>,
    /// Set once the scheduler told the escrow that nothing more will be paid.
    pub completed: bool,
    /// Signed results contradicting a verified chunk, sent to the registry as evidence against
    /// their workers' hubs.
    pub evidence: u64,
    /// Why settlement is stuck, if it is ("hub 0x… is not whitelisted").
    pub problem: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PaymentAnswer {
    /// `None`: the scheduler was started without a chain.
    Info(Option<PaymentInfo>),
    Funded(Vec<FundedWorkflow>),
}

/// One signed result's usage: what a worker claims, under its signature, that a chunk cost.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkUsage {
    pub chunk: u32,
    pub worker: WorkerId,
    pub usage: crate::trust::Usage,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum DatasetRequest {
    /// Keeps an uploaded blob as a dataset under a name. `directory`: the manifest of the
    /// directory this file was put with, if it was.
    Add {
        hash: BlobHash,
        name: String,
        kind: DatasetKind,
        directory: Option<BlobHash>,
    },
    List,
    /// Forgets a dataset (and, for a directory, its files); garbage collection removes the bytes
    /// once nothing else names them.
    Remove {
        hash: BlobHash,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum DatasetKind {
    File,
    /// A [`Manifest`] of files put together.
    Directory,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DatasetInfo {
    pub hash: BlobHash,
    pub name: String,
    pub kind: DatasetKind,
    pub size: u64,
    /// Seconds since the Unix epoch.
    pub added: u64,
    pub directory: Option<BlobHash>,
}

/// A directory put as a dataset: its files by relative path. Encoded with postcard as a blob of
/// its own, whose hash names the directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub files: Vec<FileRef>,
}

impl Manifest {
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_stdvec(self).expect("a manifest encodes")
    }

    /// Reads a manifest from a peer's blob: bounded, every path relative and inside, none twice.
    pub fn decode(bytes: &[u8]) -> Result<Manifest, String> {
        let manifest: Manifest = crate::frame::decode(bytes).map_err(|e| format!("not a directory manifest: {e}"))?;
        if manifest.files.len() > limits::MANIFEST_FILES_MAX {
            return Err(format!(
                "{} files; at most {} are allowed in one directory",
                manifest.files.len(),
                limits::MANIFEST_FILES_MAX
            ));
        }
        let mut seen = std::collections::HashSet::new();
        for file in &manifest.files {
            check_relative_path(&file.name)?;
            if !seen.insert(file.name.as_str()) {
                return Err(format!("file {:?} appears twice", file.name));
            }
        }
        Ok(manifest)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum JobState {
    /// Waiting for jobs it runs after.
    Waiting,
    Running,
    Completed,
    Failed {
        reason: String,
    },
    Cancelled,
}

impl JobState {
    pub fn is_finished(&self) -> bool {
        matches!(self, JobState::Completed | JobState::Failed { .. } | JobState::Cancelled)
    }

    pub fn label(&self) -> &'static str {
        match self {
            JobState::Waiting => "waiting",
            JobState::Running => "running",
            JobState::Completed => "completed",
            JobState::Failed { .. } => "failed",
            JobState::Cancelled => "cancelled",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    pub chunk: u32,
    pub worker: Option<WorkerId>,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobStatus {
    pub id: JobId,
    pub workflow: WorkflowId,
    pub workflow_name: String,
    pub name: String,
    pub kind: String,
    pub state: JobState,
    pub chunks_total: u64,
    /// Chunks accepted (final or provisional).
    pub chunks_verified: u64,
    /// Of those, chunks no later verification can overturn.
    pub chunks_final: u64,
    pub chunks_running: u64,
    /// Steps completed inside running chunks (MD), from heartbeats.
    pub steps_in_flight: u64,
    /// Milliseconds since the job started running (scheduler clock).
    pub running_ms: u64,
    pub failures: Vec<Failure>,
    pub disagreements: u64,
    /// Chunk assignments since the scheduler started, and how many went to a worker that already
    /// held every input (locality: nothing to fetch).
    pub assignments: u64,
    pub assignments_local: u64,
    /// Why a running job has nothing running, when no worker can take its chunks ("no worker has
    /// 2 GPUs; the most any has is 1").
    pub waiting: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VerifiedChunk {
    pub index: u32,
    pub digest: Digest,
    pub output: Output,
    pub agreeing: Vec<WorkerId>,
    pub disagreeing: Vec<WorkerId>,
    pub finality: Finality,
}

/// A job's verified results, as a client assembles them from [`ResultsPage`]s.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobResults {
    pub status: JobStatus,
    /// BLAKE3 of the workflow file.
    pub workflow_hash: String,
    pub spec: JobSpec,
    pub chunks: Vec<VerifiedChunk>,
}

/// Verified results come in pages of at most [`limits::RESULTS_PAGE_CHUNKS_MAX`] chunks and about
/// [`limits::RESULTS_PAGE_BYTES_MAX`] bytes, so a job of a million chunks never needs one message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResultsPage {
    pub status: JobStatus,
    pub workflow_hash: String,
    /// On the first page only: a large array's spec alone can be megabytes.
    pub spec: Option<JobSpec>,
    pub chunks: Vec<VerifiedChunk>,
    /// Where the next page starts, if there is one.
    pub next_chunk: Option<u32>,
}

impl VerifiedChunk {
    /// An upper bound of its encoded size, for cutting pages.
    pub fn encoded_bytes_max(&self) -> usize {
        let files = match &self.output {
            Output::Md { thermo, .. } => thermo.len() * 50,
            Output::Command { files, stdout, stderr, .. } => {
                files.iter().chain([stdout, stderr]).map(|f| f.name.len() + 50).sum()
            }
            Output::Empty { .. } => 0,
        };
        256 + files + (self.agreeing.len() + self.disagreeing.len()) * 33
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerStatus {
    pub id: WorkerId,
    pub name: String,
    pub connected: bool,
    pub device: String,
    pub resources: Resources,
    pub running: u64,
    pub completed: u64,
    pub disagreements: u64,
    pub quarantined: bool,
    pub role: NodeRole,
    pub owner: String,
    /// Where it stands: "replicated (3 of 10 clean results)", "trusted, audit 40 %", …
    pub standing: String,
    pub audits_passed: u64,
    pub audits_failed: u64,
    pub gpus: Vec<GpuDevice>,
    pub adapters: Vec<String>,
    /// The dockerd version of a worker that runs containers.
    pub containers: Option<String>,
    /// What its running tasks hold now.
    pub busy: Resources,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ClientResponse {
    Submitted { workflow: WorkflowId, jobs: Vec<(String, JobId)> },
    Status { jobs: Vec<JobStatus> },
    Cancelled { job: JobId },
    Results(Box<ResultsPage>),
    Workers(Vec<WorkerStatus>),
    Verification(Box<VerificationReport>),
    Datasets(Vec<DatasetInfo>),
    Usage(Vec<ChunkUsage>),
    Logs(LogPage),
    Payments(PaymentAnswer),
    Error { message: String },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_covers_state_checkpoint_and_thermo() {
        let line = ThermoLine { step: 10, temp: 1.0, pe: -5.0, ke: 1.5, etotal: -3.5, press: 0.1 };
        let output = |state: u8, temp: f64, checkpoint: u8| Output::Md {
            state_hash: [state; 32],
            checkpoint: BlobHash([checkpoint; 32]),
            checkpoint_bytes: 10,
            thermo: vec![ThermoLine { temp, ..line }],
            chain: vec![[state; 32]],
        };
        assert_eq!(output(1, 1.0, 7).digest(), output(1, 1.0, 7).digest());
        assert_ne!(output(1, 1.0, 7).digest(), output(1, 1.0, 8).digest());
        assert_ne!(output(1, 1.0, 7).digest(), output(2, 1.0, 7).digest());
        assert_ne!(output(1, 1.0, 7).digest(), output(1, 1.0000001, 7).digest());
        assert_ne!(Output::Empty { value: 1 }.digest(), Output::Empty { value: 2 }.digest());
    }

    #[test]
    fn file_names_stay_inside_their_directory() {
        for good in ["a", "out/b.csv", "x y/z-1.txt", "*.csv", "dir/**/*.h5"] {
            assert_eq!(check_relative_path(good), Ok(()), "{good}");
        }
        let deep = vec!["d"; limits::PATH_DEPTH_MAX + 1].join("/");
        let long = "a".repeat(limits::PATH_BYTES_MAX + 1);
        for bad in
            ["", "/etc/passwd", "../x", "a/../../x", "a/./b", "a//b", "a/", ".", "..", "a\\b", "a\nb", &deep, &long]
        {
            assert!(check_relative_path(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn task_ids_are_runs() {
        let ids = TaskIds::from_ids([5, 6, 7, 1, 2, 9]);
        assert_eq!(ids.runs(), [(5, 3), (1, 2), (9, 1)]);
        assert_eq!(ids.len(), 6);
        let all: Vec<Option<i64>> = (0..7).map(|k| ids.get(k)).collect();
        assert_eq!(all, [Some(5), Some(6), Some(7), Some(1), Some(2), Some(9), None]);
        assert_eq!(ids.check(), Ok(()));
        assert_eq!(TaskIds::from_ids(1..=1_000_000).runs(), [(1, 1_000_000)]);
        assert!(TaskIds::from_ids([1, 2, 3, 2]).check().unwrap_err().contains("twice"));
        let hostile = |runs: Vec<(i64, u64)>| TaskIds { runs }.check();
        assert!(hostile(vec![(1, 0)]).is_err());
        assert!(hostile(vec![(i64::MAX, 2)]).is_err());
        assert!(hostile(vec![(0, u64::MAX)]).is_err());
        assert!(hostile(vec![(0, 10), (5, 1)]).is_err());
        assert!(hostile((0..5000).map(|k| (k * 2, 1)).collect()).unwrap_err().contains("runs"));
        assert_eq!(TaskIds { runs: vec![(0, u64::MAX), (0, u64::MAX)] }.len(), u64::MAX);
    }

    #[test]
    fn names_are_plain() {
        assert_eq!(check_name("lj-melt_2"), Ok(()));
        for bad in ["", "a.b", "a b", "é", &"n".repeat(limits::NAME_BYTES_MAX + 1)] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn resources_arithmetic() {
        let free = Resources { cpus: 4, memory_bytes: 100, gpus: 0 };
        let need = Resources { cpus: 2, memory_bytes: 10, gpus: 0 };
        assert!(need.fits_in(&free));
        assert!(!Resources { gpus: 1, ..need }.fits_in(&free));
        assert_eq!(free.minus(&need).plus(&need), free);
    }
}
