//! The store's own types for the values it keeps as postcard blobs (job specs, outputs, job states).
//!
//! The wire types in `protocol` may change between releases (a variant added in the middle, a field
//! reordered) without a thought for databases on disk; these may not. Postcard encodes fields in
//! order and variants by position, so the rules here are: never reorder or remove a field or a
//! variant; add variants only at the end; anything else is a new format version in
//! [`super::MIGRATIONS`]. Format 2 introduced these types with exactly format 1's bytes (which were
//! the wire types of that time), so a format-1 database reads unchanged.

use serde::{Deserialize, Serialize};
use upglobe_protocol::messages::{
    CheckpointContract, CommandJob, ContainerSpec, FileRef, ImagePin, JobKind, JobSpec, JobState, MdJob, Output,
    Resources, TaskIds, ThermoLine,
};
use upglobe_protocol::{BlobHash, JobId, WorkerId};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredJobSpec {
    name: String,
    after: Vec<String>,
    replicas: u32,
    resources: StoredResources,
    kind: StoredJobKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct StoredResources {
    cpus: u32,
    memory_bytes: u64,
    gpus: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum StoredJobKind {
    Md {
        initial: [u8; 32],
        atoms: u64,
        total_steps: u64,
        chunk_steps: u64,
        thermo_every: u64,
    },
    Command {
        argv: Vec<String>,
        tasks: Vec<i64>,
        inputs: Vec<StoredFile>,
        outputs: Vec<String>,
        timeout_s: u64,
    },
    Empty {
        chunks: u32,
    },
    /// Format 2: array task ids as runs (first id, how many).
    CommandRuns {
        argv: Vec<String>,
        runs: Vec<(i64, u64)>,
        inputs: Vec<StoredFile>,
        outputs: Vec<String>,
        timeout_s: u64,
    },
    /// Format 5: container jobs and checkpoint contracts.
    CommandV5 {
        argv: Vec<String>,
        runs: Vec<(i64, u64)>,
        inputs: Vec<StoredFile>,
        outputs: Vec<String>,
        timeout_s: u64,
        container: Option<StoredContainer>,
        checkpoint: Option<StoredCheckpoint>,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredContainer {
    image_name: String,
    image_id: Option<String>,
    archive: Option<StoredFile>,
    network: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredCheckpoint {
    chunks: u32,
    resume: Vec<String>,
    files: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredFile {
    name: String,
    blob: [u8; 32],
    size: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct StoredThermo {
    step: u64,
    temp: f64,
    pe: f64,
    ke: f64,
    etotal: f64,
    press: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum StoredOutput {
    Md {
        state_hash: [u8; 32],
        checkpoint: [u8; 32],
        checkpoint_bytes: u64,
        thermo: Vec<StoredThermo>,
    },
    Command {
        exit_code: i32,
        files: Vec<StoredFile>,
        stdout: StoredFile,
        stderr: StoredFile,
    },
    Empty {
        value: u64,
    },
    /// Format 3: an MD output with its hash chain.
    MdChained {
        state_hash: [u8; 32],
        checkpoint: [u8; 32],
        checkpoint_bytes: u64,
        thermo: Vec<StoredThermo>,
        chain: Vec<[u8; 32]>,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum StoredJobState {
    Waiting,
    Running,
    Completed,
    Failed { reason: String },
    Cancelled,
}

/// Job ids a job runs after.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredJobIds(Vec<u64>);

/// Workers that agreed or disagreed on a verified chunk.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredWorkerIds(Vec<[u8; 32]>);

impl From<&FileRef> for StoredFile {
    fn from(file: &FileRef) -> StoredFile {
        StoredFile { name: file.name.clone(), blob: file.blob.0, size: file.size }
    }
}

impl From<StoredFile> for FileRef {
    fn from(file: StoredFile) -> FileRef {
        FileRef { name: file.name, blob: BlobHash(file.blob), size: file.size }
    }
}

impl From<&JobSpec> for StoredJobSpec {
    fn from(spec: &JobSpec) -> StoredJobSpec {
        let Resources { cpus, memory_bytes, gpus } = spec.resources;
        let kind = match &spec.kind {
            JobKind::Md(md) => StoredJobKind::Md {
                initial: md.initial.0,
                atoms: md.atoms,
                total_steps: md.total_steps,
                chunk_steps: md.chunk_steps,
                thermo_every: md.thermo_every,
            },
            JobKind::Command(command) => StoredJobKind::CommandV5 {
                argv: command.argv.clone(),
                runs: command.tasks.runs().to_vec(),
                inputs: command.inputs.iter().map(StoredFile::from).collect(),
                outputs: command.outputs.clone(),
                timeout_s: command.timeout_s,
                container: command.container.as_ref().map(|c| StoredContainer {
                    image_name: c.image.name.clone(),
                    image_id: c.image.id.clone(),
                    archive: c.image.archive.as_ref().map(StoredFile::from),
                    network: c.network,
                }),
                checkpoint: command.checkpoint.as_ref().map(|c| StoredCheckpoint {
                    chunks: c.chunks,
                    resume: c.resume.clone(),
                    files: c.files.clone(),
                }),
            },
            JobKind::Empty { chunks } => StoredJobKind::Empty { chunks: *chunks },
        };
        StoredJobSpec {
            name: spec.name.clone(),
            after: spec.after.clone(),
            replicas: spec.replicas,
            resources: StoredResources { cpus, memory_bytes, gpus },
            kind,
        }
    }
}

fn task_ids(runs: Vec<(i64, u64)>) -> TaskIds {
    TaskIds::from_ids(runs.into_iter().flat_map(|(first, count)| (0..count).map(move |k| first + k as i64)))
}

impl From<StoredJobSpec> for JobSpec {
    fn from(spec: StoredJobSpec) -> JobSpec {
        let StoredResources { cpus, memory_bytes, gpus } = spec.resources;
        let kind = match spec.kind {
            StoredJobKind::Md { initial, atoms, total_steps, chunk_steps, thermo_every } => {
                JobKind::Md(MdJob { initial: BlobHash(initial), atoms, total_steps, chunk_steps, thermo_every })
            }
            StoredJobKind::Command { argv, tasks, inputs, outputs, timeout_s } => JobKind::Command(CommandJob {
                argv,
                tasks: TaskIds::from_ids(tasks),
                inputs: inputs.into_iter().map(FileRef::from).collect(),
                outputs,
                timeout_s,
                container: None,
                checkpoint: None,
            }),
            StoredJobKind::CommandRuns { argv, runs, inputs, outputs, timeout_s } => JobKind::Command(CommandJob {
                argv,
                tasks: task_ids(runs),
                inputs: inputs.into_iter().map(FileRef::from).collect(),
                outputs,
                timeout_s,
                container: None,
                checkpoint: None,
            }),
            StoredJobKind::CommandV5 { argv, runs, inputs, outputs, timeout_s, container, checkpoint } => {
                JobKind::Command(CommandJob {
                    argv,
                    tasks: task_ids(runs),
                    inputs: inputs.into_iter().map(FileRef::from).collect(),
                    outputs,
                    timeout_s,
                    container: container.map(|c| ContainerSpec {
                        image: ImagePin { name: c.image_name, id: c.image_id, archive: c.archive.map(FileRef::from) },
                        network: c.network,
                    }),
                    checkpoint: checkpoint.map(|c| CheckpointContract {
                        chunks: c.chunks,
                        resume: c.resume,
                        files: c.files,
                    }),
                })
            }
            StoredJobKind::Empty { chunks } => JobKind::Empty { chunks },
        };
        JobSpec {
            // The policy lives in its own column (format 3); jobs from before it compared replicas.
            gpu: Default::default(),
            verification: upglobe_protocol::trust::Verification::Quorum,
            name: spec.name,
            after: spec.after,
            replicas: spec.replicas,
            resources: Resources { cpus, memory_bytes, gpus },
            kind,
        }
    }
}

impl From<&Output> for StoredOutput {
    fn from(output: &Output) -> StoredOutput {
        match output {
            Output::Md { state_hash, checkpoint, checkpoint_bytes, thermo, chain } => StoredOutput::MdChained {
                chain: chain.clone(),
                state_hash: *state_hash,
                checkpoint: checkpoint.0,
                checkpoint_bytes: *checkpoint_bytes,
                thermo: thermo
                    .iter()
                    .map(|t| StoredThermo {
                        step: t.step,
                        temp: t.temp,
                        pe: t.pe,
                        ke: t.ke,
                        etotal: t.etotal,
                        press: t.press,
                    })
                    .collect(),
            },
            Output::Command { exit_code, files, stdout, stderr } => StoredOutput::Command {
                exit_code: *exit_code,
                files: files.iter().map(StoredFile::from).collect(),
                stdout: stdout.into(),
                stderr: stderr.into(),
            },
            Output::Empty { value } => StoredOutput::Empty { value: *value },
        }
    }
}

impl From<StoredOutput> for Output {
    fn from(output: StoredOutput) -> Output {
        match output {
            StoredOutput::Md { state_hash, checkpoint, checkpoint_bytes, thermo } => {
                StoredOutput::MdChained { state_hash, checkpoint, checkpoint_bytes, thermo, chain: vec![state_hash] }
                    .into()
            }
            StoredOutput::MdChained { state_hash, checkpoint, checkpoint_bytes, thermo, chain } => Output::Md {
                chain,
                state_hash,
                checkpoint: BlobHash(checkpoint),
                checkpoint_bytes,
                thermo: thermo
                    .into_iter()
                    .map(|t| ThermoLine {
                        step: t.step,
                        temp: t.temp,
                        pe: t.pe,
                        ke: t.ke,
                        etotal: t.etotal,
                        press: t.press,
                    })
                    .collect(),
            },
            StoredOutput::Command { exit_code, files, stdout, stderr } => Output::Command {
                exit_code,
                files: files.into_iter().map(FileRef::from).collect(),
                stdout: stdout.into(),
                stderr: stderr.into(),
            },
            StoredOutput::Empty { value } => Output::Empty { value },
        }
    }
}

impl From<&JobState> for StoredJobState {
    fn from(state: &JobState) -> StoredJobState {
        match state {
            JobState::Waiting => StoredJobState::Waiting,
            JobState::Running => StoredJobState::Running,
            JobState::Completed => StoredJobState::Completed,
            JobState::Failed { reason } => StoredJobState::Failed { reason: reason.clone() },
            JobState::Cancelled => StoredJobState::Cancelled,
        }
    }
}

impl From<StoredJobState> for JobState {
    fn from(state: StoredJobState) -> JobState {
        match state {
            StoredJobState::Waiting => JobState::Waiting,
            StoredJobState::Running => JobState::Running,
            StoredJobState::Completed => JobState::Completed,
            StoredJobState::Failed { reason } => JobState::Failed { reason },
            StoredJobState::Cancelled => JobState::Cancelled,
        }
    }
}

impl From<&[JobId]> for StoredJobIds {
    fn from(ids: &[JobId]) -> StoredJobIds {
        StoredJobIds(ids.iter().map(|id| id.0).collect())
    }
}

impl From<StoredJobIds> for Vec<JobId> {
    fn from(ids: StoredJobIds) -> Vec<JobId> {
        ids.0.into_iter().map(JobId).collect()
    }
}

impl From<&[WorkerId]> for StoredWorkerIds {
    fn from(ids: &[WorkerId]) -> StoredWorkerIds {
        StoredWorkerIds(ids.iter().map(|id| id.0).collect())
    }
}

impl From<StoredWorkerIds> for Vec<WorkerId> {
    fn from(ids: StoredWorkerIds) -> Vec<WorkerId> {
        ids.0.into_iter().map(WorkerId).collect()
    }
}
