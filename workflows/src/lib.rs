#![doc = include_str!("../README.md")]
//!
//! # Modules, in the order a file is read
//! - `document`: TOML text to a tree in which every key and value knows its offset.
//! - `workflow`: the top level (`name`, `jobs`); `job`: the keys every job has.
//! - `md`, `command`, `resources`: the kind-specific tables; `verify`: how results are trusted.
//! - `graph`: the `after` dependencies.
//! - [`diagnostic`]: what went wrong, where, and a hint.

mod command;
pub mod diagnostic;
mod document;
mod fields;
mod graph;
mod h5md;
#[cfg(feature = "h5md")]
pub use h5md::system as h5md_system;
mod job;
mod md;
mod payment;
mod resources;
mod verify;
mod workflow;

use std::path::{Path, PathBuf};

use upglobe_kernels::system::PhysicalSystem;
use upglobe_protocol::messages::Resources;
use upglobe_protocol::trust::Verification;

pub use command::{ARGUMENTS_MAX, INPUTS_MAX, OUTPUTS_MAX, TASKS_MAX, TIMEOUT_S_DEFAULT, TIMEOUT_S_MAX, task_range};
pub use diagnostic::{Diagnostic, Location, render};
pub use job::{COMMAND_REPLICAS_DEFAULT, CONTAINER_MEMORY_DEFAULT, MD_REPLICAS_DEFAULT, NAME_BYTES_MAX};
pub use payment::{DEADLINE_DAYS_DEFAULT, DEADLINE_DAYS_MAX, Payment};
pub use resources::parse_memory;
pub use verify::{COLUMN_MAX, DATASET_PATH_BYTES_MAX};

/// Largest workflow file read, so a mistaken path (a trajectory, a data set) fails fast.
pub const SOURCE_BYTES_MAX: u64 = upglobe_protocol::messages::limits::SOURCE_BYTES_MAX as u64;

/// A checked workflow: every job is complete and valid, and `after` forms a DAG.
#[derive(Debug, Clone)]
pub struct Workflow {
    pub name: String,
    /// The path (or label) the workflow was read from.
    pub path: PathBuf,
    /// The file as written, kept for provenance.
    pub source: String,
    /// Jobs in the order they first appear in the file.
    pub jobs: Vec<Job>,
    /// `[payment]`: verified chunks are paid from an escrow on Ethereum.
    pub payment: Option<Payment>,
}

#[derive(Debug, Clone)]
pub struct Job {
    pub name: String,
    /// Jobs of the same workflow that must complete before this one starts.
    pub after: Vec<String>,
    pub replicas: u32,
    /// What one replica needs on a worker.
    pub resources: Resources,
    /// What it asks of its GPUs (free memory, the wgpu backend of MD chunks).
    pub gpu: upglobe_protocol::messages::GpuRequest,
    pub kind: JobKind,
    /// How the results of its chunks are trusted: the `[jobs.NAME.verify]` table, or the default of
    /// the kind (adaptive for md, quorum for commands).
    pub verification: Verification,
    /// Where the job's `[jobs.NAME]` table starts.
    pub location: Location,
}

#[derive(Debug, Clone)]
pub enum JobKind {
    Md(MdJob),
    Command(CommandJob),
}

/// A molecular dynamics run of `total_steps`, cut into checkpointed chunks of `chunk_steps`.
#[derive(Debug, Clone)]
pub struct MdJob {
    /// The initial system; `State::from_physical` accepts it.
    pub system: PhysicalSystem,
    pub total_steps: u64,
    pub chunk_steps: u64,
    pub thermo_every: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandJob {
    /// The program and its arguments; `{task}` stands for the array task id.
    pub argv: Vec<String>,
    /// Array task ids; empty for a single task.
    pub tasks: Vec<i64>,
    pub inputs: Vec<InputFile>,
    /// Glob patterns, relative to the task's working directory, collected after the run.
    pub outputs: Vec<String>,
    pub timeout_s: u64,
    /// `kind = "container"`: the image to run in, resolved to a pinned id when submitted.
    pub container: Option<ContainerImage>,
    /// `[jobs.NAME.checkpoint]`: the run is a chain of chunks resuming from checkpoint files.
    pub checkpoint: Option<upglobe_protocol::messages::CheckpointContract>,
}

/// The image of a container job as written; `upglobe submit` pins it to an image id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerImage {
    pub image: String,
    /// The job asks for a network (given only by workers that allow it).
    pub network: bool,
    /// Where `image` is written, for errors found when it is resolved.
    pub location: Location,
}

/// A file a command needs, checked to exist when the workflow was read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputFile {
    /// As written in the workflow: the name the file gets in the task's working directory.
    pub name: String,
    pub source: InputSource,
}

/// Where an input's bytes come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InputSource {
    /// A file on this machine (the workflow file's folder joined with the name), uploaded at submit
    /// unless the scheduler already holds the same bytes.
    Path(PathBuf),
    /// A dataset the scheduler keeps (`upglobe dataset put`), by its BLAKE3 hash.
    Dataset(upglobe_protocol::BlobHash),
}

/// Reads and checks a workflow file. An unreadable file gives one diagnostic at 1:1.
pub fn load(path: &Path) -> Result<Workflow, Vec<Diagnostic>> {
    let label = path.display().to_string();
    let source = read_source(path).map_err(|(message, hint)| {
        vec![Diagnostic { path: label.clone(), line: 1, column: 1, message, hint: Some(hint) }]
    })?;
    let base_dir = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    parse(&label, base_dir, &source)
}

fn read_source(path: &Path) -> Result<String, (String, String)> {
    let cannot = |error: std::io::Error| {
        (format!("cannot read the workflow file: {error}"), "check the path and that the file is readable".to_string())
    };
    let size = std::fs::metadata(path).map_err(cannot)?.len();
    if size > SOURCE_BYTES_MAX {
        return Err((
            format!("the workflow file is {size} bytes; at most {SOURCE_BYTES_MAX} are read"),
            "is this the workflow file? data belongs in files the workflow names".to_string(),
        ));
    }
    let bytes = std::fs::read(path).map_err(cannot)?;
    String::from_utf8(bytes).map_err(|error| {
        (
            format!("the workflow file is not UTF-8 text (byte {} is not)", error.utf8_error().valid_up_to()),
            "TOML files are UTF-8; save the file as UTF-8".to_string(),
        )
    })
}

/// Parses and checks a workflow from text. `path_label` names the file in diagnostics (and gives the
/// default name); relative paths in the workflow (`data`, `inputs`) are resolved against `base_dir`.
/// On failure, returns every problem found, in file order.
pub fn parse(path_label: &str, base_dir: &Path, source: &str) -> Result<Workflow, Vec<Diagnostic>> {
    let mut reporter = diagnostic::Reporter::new(path_label, source);
    let root = match document::parse(source) {
        Ok(root) => root,
        Err((message, at)) => {
            let hint = syntax_hint(&message);
            match hint {
                Some(hint) => reporter.error_with_hint(at, format!("syntax error: {message}"), hint),
                None => reporter.error(at, format!("syntax error: {message}")),
            }
            return Err(reporter.finish());
        }
    };
    let workflow = workflow::read(&mut reporter, &root, path_label, base_dir, source);
    match workflow {
        Some(workflow) if !reporter.has_errors() => Ok(workflow),
        _ => {
            assert!(reporter.has_errors(), "a workflow was rejected without a diagnostic");
            Err(reporter.finish())
        }
    }
}

fn syntax_hint(message: &str) -> Option<&'static str> {
    if message.contains("duplicate key") {
        Some("each key and table may appear once; remove or rename the repeated one")
    } else if message.contains("must be quoted") {
        Some("put text in double quotes: kind = \"md\"")
    } else {
        None
    }
}
