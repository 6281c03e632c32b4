//! What the core accepts from peers. Every byte of a submission, a hello and a result is hostile
//! until these checks pass; after them, the core's invariants may rely on it (names are unique,
//! dependencies resolve, chunk counts and sizes are bounded, file names stay inside their directory).
//!
//! The shell gathers [`Evidence`] (what the blob store holds: sizes and the trailing bytes of named
//! blobs); the decisions are made here, so the seeded simulation covers them.

use std::collections::{BTreeMap, BTreeSet};

use upglobe_protocol::messages::limits::*;
use upglobe_protocol::messages::{
    CheckpointContract, CommandJob, FileRef, GpuRequest, Hello, JobKind, JobSpec, MdJob, Output, Resources, Submission,
    check_relative_path,
};
use upglobe_protocol::{BlobHash, ChunkId};

/// What the shell found in its blob store for one blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobFact {
    pub size: u64,
    /// The last 32 bytes (fewer if the blob is shorter): a checkpoint ends with its state hash.
    pub tail: Vec<u8>,
}

/// Facts about the blobs an event names; a blob missing here is not held by the scheduler.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Evidence {
    blobs: BTreeMap<BlobHash, BlobFact>,
}

impl Evidence {
    /// Looks up every blob in `hashes` with `look` (which answers `None` for a blob not held).
    pub fn gather(
        hashes: impl IntoIterator<Item = BlobHash>,
        mut look: impl FnMut(&BlobHash) -> Option<BlobFact>,
    ) -> Evidence {
        let mut blobs = BTreeMap::new();
        for hash in hashes {
            if let std::collections::btree_map::Entry::Vacant(entry) = blobs.entry(hash)
                && let Some(fact) = look(&hash)
            {
                entry.insert(fact);
            }
        }
        Evidence { blobs }
    }

    pub fn fact(&self, hash: &BlobHash) -> Option<&BlobFact> {
        self.blobs.get(hash)
    }

    /// The sizes of the blobs found, each once.
    pub fn sizes(&self) -> impl Iterator<Item = u64> + '_ {
        self.blobs.values().map(|f| f.size)
    }
}

/// Every blob a submission names (the shell gathers [`Evidence`] for these), bounded: a submission
/// naming more is refused by [`check_submission`] before any blob matters.
pub fn submission_blobs(submission: &Submission) -> Vec<BlobHash> {
    let mut hashes = Vec::new();
    for job in submission.jobs.iter().take(JOBS_PER_WORKFLOW_MAX) {
        match &job.kind {
            JobKind::Md(md) => hashes.push(md.initial),
            JobKind::Command(command) => {
                hashes.extend(command.inputs.iter().take(FILES_PER_TASK_MAX).map(|f| f.blob));
                hashes.extend(command.image_archive().map(|f| f.blob));
            }
            JobKind::Empty { .. } => {}
        }
        if hashes.len() > INPUTS_PER_WORKFLOW_MAX + JOBS_PER_WORKFLOW_MAX {
            break;
        }
    }
    hashes
}

fn input_count(job: &JobSpec) -> usize {
    match &job.kind {
        JobKind::Command(command) => command.inputs.len(),
        JobKind::Md(_) | JobKind::Empty { .. } => 0,
    }
}

/// Every blob an output names, bounded (an output naming more is refused anyway).
pub fn output_blobs(output: &Output) -> Vec<BlobHash> {
    match output {
        Output::Md { checkpoint, .. } => vec![*checkpoint],
        Output::Command { files, stdout, stderr, .. } => {
            files.iter().take(FILES_PER_TASK_MAX).chain([stdout, stderr]).map(|f| f.blob).collect()
        }
        Output::Empty { .. } => Vec::new(),
    }
}

fn check_text(what: &str, text: &str, limit: usize) -> Result<(), String> {
    if text.len() > limit {
        return Err(format!("{what} is {} bytes; at most {limit} are allowed", text.len()));
    }
    if text.chars().any(char::is_control) {
        return Err(format!("{what} contains control characters"));
    }
    Ok(())
}

fn check_name(what: &str, name: &str) -> Result<(), String> {
    upglobe_protocol::messages::check_name(name).map_err(|problem| {
        let mut shown: String = name.chars().take(NAME_BYTES_MAX).collect();
        if shown.len() < name.len() {
            shown.push('…');
        }
        format!("{what} {shown:?} {problem}")
    })
}

fn check_resources(what: &str, resources: &Resources) -> Result<(), String> {
    let Resources { cpus, memory_bytes, gpus } = *resources;
    if !(1..=CPUS_MAX).contains(&cpus) {
        return Err(format!("{what} has {cpus} cpus; 1 to {CPUS_MAX} are allowed"));
    }
    if gpus > GPUS_MAX {
        return Err(format!("{what} has {gpus} gpus; at most {GPUS_MAX} are allowed"));
    }
    if memory_bytes > MEMORY_BYTES_MAX {
        return Err(format!("{what} has {memory_bytes} bytes of memory; at most {MEMORY_BYTES_MAX} are allowed"));
    }
    Ok(())
}

/// A worker's hello, once its secret has been checked.
pub fn check_hello(hello: &Hello) -> Result<(), String> {
    check_text("the worker name", &hello.name, NAME_BYTES_MAX)?;
    check_text("the device description", &hello.device, DESCRIPTION_BYTES_MAX)?;
    check_text("the software version", &hello.software, DESCRIPTION_BYTES_MAX)?;
    if let Some(owner) = &hello.owner {
        upglobe_protocol::messages::check_name(owner).map_err(|e| format!("the owner name {e}"))?;
    }
    use upglobe_protocol::messages::limits::{ADAPTERS_MAX, GPUS_DESCRIBED_MAX};
    if hello.gpus.len() > GPUS_DESCRIBED_MAX || hello.adapters.len() > ADAPTERS_MAX {
        return Err(format!("at most {GPUS_DESCRIBED_MAX} GPUs and {ADAPTERS_MAX} adapters may be described"));
    }
    if hello.resources.gpus as usize != hello.gpus.len() {
        return Err(format!("the worker offers {} GPUs but describes {}", hello.resources.gpus, hello.gpus.len()));
    }
    for gpu in &hello.gpus {
        check_text("a GPU's name", &gpu.name, NAME_BYTES_MAX)?;
        check_text("a GPU's UUID", &gpu.uuid, NAME_BYTES_MAX)?;
        check_text("a GPU's driver", &gpu.driver, NAME_BYTES_MAX)?;
        if gpu.vram_free_bytes > gpu.vram_total_bytes || gpu.utilisation_percent > 100 {
            return Err(format!("GPU {:?} reports impossible figures", gpu.name));
        }
    }
    for adapter in &hello.adapters {
        check_text("an adapter's description", adapter, DESCRIPTION_BYTES_MAX)?;
    }
    // GPUs are handed to tasks by UUID: two alike would be one GPU given twice.
    let uuids: BTreeSet<&str> = hello.gpus.iter().map(|g| g.uuid.as_str()).collect();
    if uuids.len() != hello.gpus.len() {
        return Err("two of the worker's GPUs have the same UUID".into());
    }
    if let Some(containers) = &hello.containers {
        check_text("the docker version", containers, NAME_BYTES_MAX)?;
    }
    if let Some(address) = &hello.peer_address {
        check_text("the peer address", address, DESCRIPTION_BYTES_MAX)?;
        // An IP address, not a name: workers would otherwise resolve and dial whatever name a
        // stranger chose.
        if address.parse::<std::net::SocketAddr>().is_err() {
            return Err(format!("the peer address {address:?} is not IP:PORT"));
        }
    }
    check_resources("the worker", &hello.resources)
}

/// A whole submission: the workflow, each job, and the graph of `after`.
pub fn check_submission(submission: &Submission, evidence: &Evidence) -> Result<(), String> {
    check_name("the workflow name", &submission.name)?;
    if submission.source.len() > SOURCE_BYTES_MAX {
        return Err(format!(
            "the workflow file is {} bytes; at most {SOURCE_BYTES_MAX} are allowed",
            submission.source.len()
        ));
    }
    let jobs = &submission.jobs;
    if jobs.is_empty() || jobs.len() > JOBS_PER_WORKFLOW_MAX {
        return Err(format!("{} jobs; between 1 and {JOBS_PER_WORKFLOW_MAX} are allowed", jobs.len()));
    }
    for job in jobs {
        check_name("a job name", &job.name)?;
    }
    let names: BTreeSet<&str> = jobs.iter().map(|j| j.name.as_str()).collect();
    if names.len() != jobs.len() {
        return Err("job names must be unique".into());
    }
    let inputs: usize = jobs.iter().map(input_count).sum();
    if inputs > INPUTS_PER_WORKFLOW_MAX {
        return Err(format!("{inputs} input files in all; at most {INPUTS_PER_WORKFLOW_MAX} are allowed"));
    }
    let mut chunks_total = 0u64;
    let mut input_bytes = 0u64;
    for job in jobs {
        check_job(job, &names, evidence)?;
        chunks_total += job.kind.chunks();
        input_bytes += job_input_bytes(job, evidence);
    }
    if chunks_total > CHUNKS_PER_WORKFLOW_MAX {
        return Err(format!("{chunks_total} chunks in all; at most {CHUNKS_PER_WORKFLOW_MAX} are allowed"));
    }
    if input_bytes > WORKFLOW_INPUT_BYTES_MAX {
        return Err(format!("{input_bytes} bytes of inputs; at most {WORKFLOW_INPUT_BYTES_MAX} are allowed"));
    }
    let graph = jobs.iter().map(|j| (j.name.as_str(), j.after.iter().map(String::as_str).collect())).collect();
    if let Some(cycle) = find_cycle(graph) {
        return Err(format!("cycle in 'after': {}", cycle.join(" -> ")));
    }
    Ok(())
}

fn job_input_bytes(job: &JobSpec, evidence: &Evidence) -> u64 {
    let size = |hash: &BlobHash| evidence.fact(hash).map_or(0, |f| f.size);
    match &job.kind {
        JobKind::Md(md) => size(&md.initial),
        JobKind::Command(command) => command.inputs.iter().chain(command.image_archive()).map(|f| size(&f.blob)).sum(),
        JobKind::Empty { .. } => 0,
    }
}

fn check_job(job: &JobSpec, names: &BTreeSet<&str>, evidence: &Evidence) -> Result<(), String> {
    let name = &job.name;
    if job.after.len() > names.len() {
        return Err(format!("job '{name}' runs after {} jobs, more than the workflow has", job.after.len()));
    }
    if let Some(unknown) = job.after.iter().find(|a| !names.contains(a.as_str()) || *a == name) {
        return Err(format!("job '{name}' runs after {unknown:?}, which is not another job of the workflow"));
    }
    if !(1..=REPLICAS_MAX).contains(&job.replicas) {
        return Err(format!("job '{name}' asks for {} replicas; 1 to {REPLICAS_MAX} are allowed", job.replicas));
    }
    check_resources(&format!("job '{name}'"), &job.resources)?;
    check_gpu_request(name, job)?;
    check_verification(job)?;
    let chunks = job.kind.chunks();
    if chunks == 0 || chunks > CHUNKS_PER_JOB_MAX {
        return Err(format!("job '{name}' has {chunks} chunks; 1 to {CHUNKS_PER_JOB_MAX} are allowed"));
    }
    match &job.kind {
        JobKind::Md(md) => check_md(name, md, evidence),
        JobKind::Command(command) => check_command(name, command, evidence),
        JobKind::Empty { .. } => Ok(()),
    }
}

/// The policy fits the job: exact comparison for deterministic MD, and for tolerance rules a bounded
/// list naming the job's outputs.
fn check_verification(job: &JobSpec) -> Result<(), String> {
    use upglobe_protocol::trust::{Compared, TOLERANCE_RULES_MAX, Verification};
    let name = &job.name;
    match (&job.kind, &job.verification) {
        (JobKind::Md(_), Verification::Adaptive | Verification::Quorum) => Ok(()),
        (JobKind::Md(_), other) => {
            Err(format!("job '{name}' is md, whose results compare exactly; policy '{}' does not apply", other.name()))
        }
        (_, Verification::Adaptive) => Err(format!("job '{name}': the adaptive policy needs md hash chains")),
        (_, Verification::Metered) if job.replicas != 1 => {
            Err(format!("job '{name}' is metered, which runs once; it asks for {} replicas", job.replicas))
        }
        (JobKind::Command(_), Verification::Tolerance(rules)) => {
            if job.replicas < 2 {
                return Err(format!("job '{name}' compares results within tolerances, which needs 2 replicas or more"));
            }
            if rules.is_empty() || rules.len() > TOLERANCE_RULES_MAX {
                return Err(format!(
                    "job '{name}' has {} tolerance rules; 1 to {TOLERANCE_RULES_MAX} are allowed",
                    rules.len()
                ));
            }
            for rule in rules {
                check_relative_path(&rule.file).map_err(|e| format!("job '{name}': tolerance rule: {e}"))?;
                let items = match &rule.values {
                    Compared::Columns(columns) => columns.len(),
                    Compared::Datasets(datasets) => {
                        if datasets.iter().any(|d| d.is_empty() || d.len() > PATH_BYTES_MAX) {
                            return Err(format!("job '{name}': a dataset path is empty or too long"));
                        }
                        datasets.len()
                    }
                };
                let tolerance_ok = |t: f64| t.is_finite() && t >= 0.0;
                if items > TOLERANCE_RULES_MAX || !tolerance_ok(rule.absolute) || !tolerance_ok(rule.relative) {
                    return Err(format!("job '{name}': the tolerance rule for {:?} is out of bounds", rule.file));
                }
            }
            Ok(())
        }
        (_, Verification::Tolerance(_)) => Err(format!("job '{name}': tolerance rules apply to command jobs")),
        (_, Verification::Quorum | Verification::Metered) => Ok(()),
    }
}

fn check_md(name: &str, md: &MdJob, evidence: &Evidence) -> Result<(), String> {
    if md.total_steps > STEPS_MAX {
        return Err(format!("job '{name}' runs {} steps; at most {STEPS_MAX} are allowed", md.total_steps));
    }
    if md.chunk_steps == 0 || !md.total_steps.is_multiple_of(md.chunk_steps) {
        return Err(format!("job '{name}': chunk_steps {} does not divide steps {}", md.chunk_steps, md.total_steps));
    }
    if md.thermo_every == 0 || !md.chunk_steps.is_multiple_of(md.thermo_every) {
        return Err(format!("job '{name}': thermo {} does not divide chunk_steps {}", md.thermo_every, md.chunk_steps));
    }
    if md.chunk_steps / md.thermo_every >= THERMO_LINES_MAX {
        return Err(format!(
            "job '{name}': thermo every {} steps gives more than {THERMO_LINES_MAX} lines per chunk",
            md.thermo_every
        ));
    }
    if md.atoms == 0 || md.atoms > ATOMS_MAX {
        return Err(format!("job '{name}' has {} atoms; 1 to {ATOMS_MAX} are allowed", md.atoms));
    }
    if evidence.fact(&md.initial).is_none() {
        return Err(format!("job '{name}': the initial state {} was not uploaded", md.initial.short()));
    }
    Ok(())
}

fn check_command(name: &str, command: &CommandJob, evidence: &Evidence) -> Result<(), String> {
    let CommandJob { argv, tasks, inputs, outputs, timeout_s, container, checkpoint } = command;
    check_arguments(name, argv)?;
    tasks.check().map_err(|e| format!("job '{name}': {e}"))?;
    if !(1..=TIMEOUT_S_MAX).contains(timeout_s) {
        return Err(format!("job '{name}' has a timeout of {timeout_s} s; 1 to {TIMEOUT_S_MAX} are allowed"));
    }
    if inputs.len() > FILES_PER_TASK_MAX || outputs.len() > FILES_PER_TASK_MAX {
        return Err(format!("job '{name}' has more than {FILES_PER_TASK_MAX} inputs or outputs"));
    }
    for pattern in outputs {
        check_relative_path(pattern.trim_start_matches("./"))
            .map_err(|e| format!("job '{name}': output pattern: {e}"))?;
    }
    check_files(inputs).map_err(|e| format!("job '{name}': input {e}"))?;
    if let Some(container) = container {
        let image = &container.image;
        check_text(&format!("job '{name}': the image name"), &image.name, DESCRIPTION_BYTES_MAX)?;
        image.check().map_err(|e| format!("job '{name}': {e}"))?;
    }
    if let Some(contract) = checkpoint {
        check_checkpoint(name, contract, tasks.len(), inputs, outputs)?;
    }
    for input in inputs.iter().chain(command.image_archive()) {
        match evidence.fact(&input.blob) {
            None => return Err(format!("job '{name}': input '{}' was not uploaded", input.name)),
            Some(fact) if fact.size != input.size => {
                return Err(format!(
                    "job '{name}': input '{}' is said to be {} bytes but the upload has {}",
                    input.name, input.size, fact.size
                ));
            }
            Some(_) => {}
        }
    }
    Ok(())
}

fn check_gpu_request(name: &str, job: &JobSpec) -> Result<(), String> {
    let request = &job.gpu;
    if (request.vram_bytes > 0 || request.backend.is_some()) && job.resources.gpus == 0 {
        return Err(format!("job '{name}' asks for GPU memory or a backend but for no GPU"));
    }
    if request.vram_bytes > MEMORY_BYTES_MAX {
        return Err(format!(
            "job '{name}' asks for {} bytes of GPU memory; at most {MEMORY_BYTES_MAX}",
            request.vram_bytes
        ));
    }
    match &request.backend {
        Some(backend) if !GpuRequest::BACKENDS.contains(&backend.as_str()) => Err(format!(
            "job '{name}' asks for GPU backend {:?}; backends are {}",
            backend.chars().take(32).collect::<String>(),
            GpuRequest::BACKENDS.join(", ")
        )),
        _ => Ok(()),
    }
}

fn check_arguments(name: &str, argv: &[String]) -> Result<(), String> {
    if argv.is_empty() || argv.len() > ARGUMENTS_MAX {
        return Err(format!("job '{name}' has {} arguments; 1 to {ARGUMENTS_MAX} are allowed", argv.len()));
    }
    let argument_bytes: usize = argv.iter().map(String::len).sum();
    if argument_bytes > ARGUMENTS_BYTES_MAX || argv.iter().any(|a| a.contains('\0')) {
        return Err(format!(
            "job '{name}': the arguments are {argument_bytes} bytes or contain NUL; at most {ARGUMENTS_BYTES_MAX} are allowed"
        ));
    }
    Ok(())
}

/// A checkpoint contract: a resume command, and checkpoint files that are plain relative names,
/// collected as outputs and not clashing with the job's own inputs (they land beside them).
fn check_checkpoint(
    name: &str,
    contract: &CheckpointContract,
    tasks: u64,
    inputs: &[FileRef],
    outputs: &[String],
) -> Result<(), String> {
    if tasks > 0 {
        return Err(format!("job '{name}' has both array tasks and a checkpoint contract"));
    }
    check_arguments(name, &contract.resume).map_err(|e| format!("{e} (resume)"))?;
    if contract.files.is_empty() || contract.files.len() > FILES_PER_TASK_MAX {
        return Err(format!(
            "job '{name}': a checkpoint has {} files; 1 to {FILES_PER_TASK_MAX} are allowed",
            contract.files.len()
        ));
    }
    // A chunk after the first gets the job's inputs and the checkpoint files together.
    if inputs.len() + contract.files.len() > FILES_PER_TASK_MAX {
        return Err(format!(
            "job '{name}' has {} inputs and {} checkpoint files; a chunk gets at most {FILES_PER_TASK_MAX} files",
            inputs.len(),
            contract.files.len()
        ));
    }
    let mut seen = BTreeSet::new();
    for file in &contract.files {
        check_relative_path(file).map_err(|e| format!("job '{name}': checkpoint {e}"))?;
        if !seen.insert(file.as_str()) {
            return Err(format!("job '{name}': checkpoint file {file:?} appears twice"));
        }
        if inputs.iter().any(|input| input.name == *file) {
            return Err(format!("job '{name}': checkpoint file {file:?} is also an input"));
        }
        if !outputs.iter().any(|pattern| pattern.trim_start_matches("./") == file) {
            return Err(format!("job '{name}': checkpoint file {file:?} is not among the outputs"));
        }
    }
    Ok(())
}

/// Names of files that land in one directory: each a plain relative path, no two alike.
fn check_files<'a>(files: impl IntoIterator<Item = &'a FileRef>) -> Result<(), String> {
    let mut seen = BTreeSet::new();
    for file in files {
        check_relative_path(&file.name)?;
        if !seen.insert(file.name.as_str()) {
            return Err(format!("{:?} appears twice", file.name));
        }
    }
    Ok(())
}

/// A result for chunk `chunk` of a job of `kind`: the right kind, within its bounds, naming only
/// blobs the scheduler holds with the sizes it claims; an MD checkpoint must be the state the
/// result claims (its size, and the state hash it ends with).
pub fn check_output(
    kind: &JobKind,
    chunk: ChunkId,
    output: &Output,
    evidence: &Evidence,
    chain_links: u32,
) -> Result<(), String> {
    if let Some(missing) = output_blobs(output).iter().find(|b| evidence.fact(b).is_none()) {
        return Err(format!("the result names blob {} that was never uploaded", missing.short()));
    }
    match (kind, output) {
        (JobKind::Md(md), Output::Md { thermo, .. }) => {
            check_interval(output, evidence, chain_links)?;
            check_thermo(md, chunk, thermo)
        }
        (JobKind::Command(command), Output::Command { exit_code, files, stdout, stderr }) => {
            if files.len() > FILES_PER_TASK_MAX {
                return Err(format!("the result has {} files; at most {FILES_PER_TASK_MAX} are allowed", files.len()));
            }
            if stdout.name != "stdout" || stderr.name != "stderr" {
                return Err("the result's standard output and error must be named 'stdout' and 'stderr'".into());
            }
            check_files(files.iter().chain([stdout, stderr])).map_err(|e| format!("the result's file {e}"))?;
            if let Some(file) =
                files.iter().chain([stdout, stderr]).find(|f| evidence.fact(&f.blob).expect("checked").size != f.size)
            {
                return Err(format!("the result's file {:?} does not have the size it claims", file.name));
            }
            match &command.checkpoint {
                // A program that failed (a container's exit code, which fails the job) owes no
                // checkpoint: the failure is what is reported.
                Some(contract) if *exit_code == 0 => check_checkpoint_files(contract, chunk, files),
                _ => Ok(()),
            }
        }
        (JobKind::Empty { .. }, Output::Empty { .. }) => Ok(()),
        _ => Err(format!("the worker returned a result of the wrong kind for a {} job", kind.name())),
    }
}

/// Usage a worker signs is billed: GPU time past the GPUs it held for as long as it ran is not
/// possible, and a result that claims it is refused.
pub fn check_usage(usage: &upglobe_protocol::trust::Usage, gpus_held: u32) -> Result<(), String> {
    let most = usage.elapsed_ms.saturating_mul(u64::from(gpus_held));
    if usage.gpu_ms > most {
        return Err(format!(
            "the result claims {} ms of GPU time; {gpus_held} GPUs held for {} ms give at most {most}",
            usage.gpu_ms, usage.elapsed_ms
        ));
    }
    Ok(())
}

/// A checkpointed chunk after the first must hand on a checkpoint other than the one it was given:
/// the same bytes in every file mean the program made no progress (or did not write its
/// checkpoint, and the copy it was given was collected), and accepting that would let a chain
/// "complete" without running.
pub fn check_progress(given: &[FileRef], output: &Output) -> Result<(), String> {
    let Output::Command { files, exit_code: 0, .. } = output else { return Ok(()) };
    let unchanged = given.iter().all(|g| files.iter().any(|f| f.name == g.name && f.blob == g.blob));
    if unchanged && !given.is_empty() {
        let names: Vec<&str> = given.iter().map(|g| g.name.as_str()).collect();
        return Err(format!(
            "the chunk handed back the checkpoint it was given ({}): the program made no progress or did not write its checkpoint",
            names.join(", ")
        ));
    }
    Ok(())
}

/// A checkpointed command's result holds every file of the checkpoint: the next chunk starts from
/// them, and the last chunk's are the job's final state. (Their contents are the program's
/// business; replicas agreeing on them is what verifies them.)
fn check_checkpoint_files(contract: &CheckpointContract, chunk: ChunkId, files: &[FileRef]) -> Result<(), String> {
    let written: BTreeSet<&str> = files.iter().map(|f| f.name.as_str()).collect();
    match contract.files.iter().find(|name| !written.contains(name.as_str())) {
        Some(missing) => Err(format!(
            "the result lacks checkpoint file {missing:?}: chunk {} of {} must write every file of the job's \
             checkpoint ({})",
            chunk.index,
            contract.chunks,
            contract.files.join(", ")
        )),
        None => Ok(()),
    }
}

/// An MD result's checkpoint is the state it claims, and its hash chain has the links asked for and
/// ends at that state.
pub fn check_interval(output: &Output, evidence: &Evidence, chain_links: u32) -> Result<(), String> {
    let Output::Md { state_hash, checkpoint, checkpoint_bytes, chain, .. } = output else {
        return Err("the worker returned a result of the wrong kind for an md interval".into());
    };
    let Some(fact) = evidence.fact(checkpoint) else {
        return Err(format!("the result names blob {} that was never uploaded", checkpoint.short()));
    };
    if fact.size != *checkpoint_bytes || fact.tail != state_hash {
        return Err(format!("checkpoint {} is not the state the result claims", checkpoint.short()));
    }
    if chain.len() != chain_links as usize {
        return Err(format!("the hash chain has {} links; {chain_links} were asked for", chain.len()));
    }
    if chain.last() != Some(state_hash) {
        return Err("the hash chain does not end at the result's state".into());
    }
    Ok(())
}

/// Thermo lines lie inside the chunk, ascend, and fall on the job's thermo interval.
fn check_thermo(md: &MdJob, chunk: ChunkId, thermo: &[upglobe_protocol::messages::ThermoLine]) -> Result<(), String> {
    let start = chunk.index as u64 * md.chunk_steps;
    let end = start + md.chunk_steps;
    if thermo.len() as u64 > md.chunk_steps / md.thermo_every + 1 {
        return Err(format!("{} thermo lines for a chunk of {} steps", thermo.len(), md.chunk_steps));
    }
    let mut previous = None;
    for line in thermo {
        if line.step < start || line.step > end || !line.step.is_multiple_of(md.thermo_every) {
            return Err(format!("thermo at step {} outside the chunk's steps {start} to {end}", line.step));
        }
        if previous.is_some_and(|p| p >= line.step) {
            return Err(format!("thermo steps do not ascend at step {}", line.step));
        }
        previous = Some(line.step);
    }
    Ok(())
}

/// A cycle in a dependency graph, as the names along it, if there is one. Iterative, so a chain of
/// thousands of jobs cannot overflow the stack.
pub fn find_cycle(graph: BTreeMap<&str, Vec<&str>>) -> Option<Vec<String>> {
    #[derive(PartialEq)]
    enum Mark {
        OnPath,
        Done,
    }
    let mut marks: BTreeMap<&str, Mark> = BTreeMap::new();
    for root in graph.keys() {
        if marks.contains_key(root) {
            continue;
        }
        // The path from the root, each node with the index of the next edge to follow.
        let mut path: Vec<(&str, usize)> = vec![(root, 0)];
        marks.insert(root, Mark::OnPath);
        while let Some((node, next_edge)) = path.last_mut() {
            let edges = graph.get(node).map_or(&[][..], Vec::as_slice);
            let Some(&next) = edges.get(*next_edge) else {
                marks.insert(node, Mark::Done);
                path.pop();
                continue;
            };
            *next_edge += 1;
            match marks.get(next) {
                Some(Mark::OnPath) => {
                    let start = path.iter().position(|(n, _)| *n == next).expect("a node on the path");
                    let mut cycle: Vec<String> = path[start..].iter().map(|(n, _)| n.to_string()).collect();
                    cycle.push(next.to_string());
                    return Some(cycle);
                }
                Some(Mark::Done) => {}
                None => {
                    marks.insert(next, Mark::OnPath);
                    path.push((next, 0));
                }
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cycles_are_found_and_named_without_recursion() {
        let graph = BTreeMap::from([("a", vec!["b"]), ("b", vec!["c"]), ("c", vec!["a"]), ("d", vec![])]);
        assert_eq!(find_cycle(graph), Some(vec!["a".into(), "b".into(), "c".into(), "a".into()]));
        let names: Vec<String> = (0..100_000).map(|k| format!("j{k}")).collect();
        let chain: BTreeMap<&str, Vec<&str>> = (0..names.len())
            .map(|k| (names[k].as_str(), names.get(k + 1).map(String::as_str).into_iter().collect()))
            .collect();
        assert_eq!(find_cycle(chain), None);
        let diamond = BTreeMap::from([("a", vec!["b", "c"]), ("b", vec!["d"]), ("c", vec!["d"]), ("d", vec![])]);
        assert_eq!(find_cycle(diamond), None);
    }
}
