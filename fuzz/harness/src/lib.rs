//! The bodies of the fuzz targets in `fuzz/fuzz_targets`, one public function per target.
//!
//! The same functions replay the committed corpus and the regression inputs in the normal test run
//! (`tests/corpus.rs`), so an input the fuzzer once found keeps being checked without a nightly
//! toolchain. Each function takes arbitrary bytes; it returns quietly when the bytes are rejected with
//! an error and panics only on a bug: a panic inside the code under test, or a broken invariant that
//! the function asserts about what was accepted.

use std::fmt::Debug;
use std::future::Future;
use std::path::Path;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use serde::Serialize;
use serde::de::DeserializeOwned;
use upglobe_kernels::checkpoint::Checkpoint;
use upglobe_kernels::lammps::{DataFile, Settings};
use upglobe_kernels::system::State;
use upglobe_protocol::frame;
use upglobe_protocol::messages::limits::{CHUNKS_PER_JOB_MAX, FRAME_BYTES_MAX, REPLICAS_MAX};
use upglobe_protocol::messages::{
    BlobReply, ClientRequest, ClientResponse, ClientWelcome, FromWorker, Greeting, StreamRequest, ToWorker,
};
use upglobe_workflows::{JobKind, Workflow};

/// The folder that relative paths in fuzzed workflows (`data`, `inputs`) resolve against. It holds a
/// LAMMPS data file and a script, so the fuzzer can reach the code that reads them; nothing writes it.
pub const WORKFLOW_BASE_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures");

/// Frames read from one input per message type; the rest of a longer input is ignored.
const FRAMES_PER_INPUT_MAX: usize = 64;

/// Length of the BLAKE3 hash that ends a checkpoint.
const CHECKPOINT_HASH_BYTES: usize = 32;

/// What `pair_style lj/cut 2.5` and a 0.005 timestep would give a data file read by a workflow.
fn lammps_settings() -> Settings {
    Settings { cutoff: 2.5, shift: false, timestep: 0.005 }
}

// ---------------------------------------------------------------------------------------------
// workflow

/// Parses and checks arbitrary text as `upglobe workflow check` does.
pub fn workflow(data: &[u8]) {
    let Ok(source) = std::str::from_utf8(data) else { return };
    if names_a_path_outside_the_fixtures(source) {
        return;
    }
    match upglobe_workflows::parse("fuzz.toml", Path::new(WORKFLOW_BASE_DIR), source) {
        Ok(workflow) => check_workflow(&workflow),
        Err(diagnostics) => {
            assert!(!diagnostics.is_empty(), "rejected without a diagnostic");
            let lines = source.split('\n').count();
            for diagnostic in &diagnostics {
                assert_eq!(diagnostic.path, "fuzz.toml");
                assert!(diagnostic.line >= 1 && diagnostic.line <= lines, "line out of range: {diagnostic}");
                assert!(diagnostic.column >= 1, "column out of range: {diagnostic}");
            }
            let rendered = upglobe_workflows::render(&diagnostics);
            assert!(rendered.lines().count() >= diagnostics.len());
        }
    }
}

/// The parser opens the `data` file a workflow names, and it accepts absolute paths, so text such as
/// `data = "/dev/zero"` would make the target read outside the fixtures (or forever). A relative path
/// without `/` stays in the fixtures folder; TOML escapes (`\u002F`) could spell a `/` in disguise.
fn names_a_path_outside_the_fixtures(source: &str) -> bool {
    source.contains('/') || source.contains("\\u") || source.contains("\\U")
}

/// What `Workflow` promises: every job complete and valid, names unique, `after` a DAG.
fn check_workflow(workflow: &Workflow) {
    assert_eq!(workflow.path, Path::new("fuzz.toml"));
    let names: Vec<&str> = workflow.jobs.iter().map(|job| job.name.as_str()).collect();
    for (index, job) in workflow.jobs.iter().enumerate() {
        assert!(!names[..index].contains(&job.name.as_str()), "job '{}' appears twice", job.name);
        assert!((1..=REPLICAS_MAX).contains(&job.replicas), "job '{}' has {} replicas", job.name, job.replicas);
        for dependency in &job.after {
            assert!(names.contains(&dependency.as_str()), "job '{}' waits for unknown '{dependency}'", job.name);
        }
        if let JobKind::Md(md) = &job.kind {
            assert!(md.chunk_steps > 0 && md.total_steps.is_multiple_of(md.chunk_steps));
            assert!(md.total_steps / md.chunk_steps <= CHUNKS_PER_JOB_MAX);
            assert!(md.thermo_every > 0 && md.chunk_steps.is_multiple_of(md.thermo_every));
            if let Err(error) = State::from_physical(md.system.clone()) {
                panic!("job '{}' was accepted but its system is not: {error}", job.name);
            }
        }
    }
    assert!(is_acyclic(workflow), "the 'after' dependencies have a cycle");
}

/// Kahn's algorithm over job indexes: every job can be ordered after the jobs it waits for.
fn is_acyclic(workflow: &Workflow) -> bool {
    let index_of = |name: &str| workflow.jobs.iter().position(|job| job.name == name).expect("checked above");
    let mut waiting: Vec<usize> = workflow.jobs.iter().map(|job| job.after.len()).collect();
    let mut ready: Vec<usize> = (0..workflow.jobs.len()).filter(|&job| waiting[job] == 0).collect();
    let mut ordered = 0;
    while let Some(done) = ready.pop() {
        ordered += 1;
        for (job, entry) in workflow.jobs.iter().enumerate() {
            for dependency in &entry.after {
                if index_of(dependency) == done {
                    waiting[job] -= 1;
                    if waiting[job] == 0 {
                        ready.push(job);
                    }
                }
            }
        }
    }
    ordered == workflow.jobs.len()
}

// ---------------------------------------------------------------------------------------------
// frame

/// Reads the bytes as a stream of frames of every message type. Each message that decodes must
/// encode, and encoding what that decodes to must give the same bytes again.
pub fn frame(data: &[u8]) {
    frames::<Greeting>(data);
    frames::<FromWorker>(data);
    frames::<ToWorker>(data);
    frames::<StreamRequest>(data);
    frames::<BlobReply>(data);
    frames::<ClientWelcome>(data);
    frames::<ClientRequest>(data);
    frames::<ClientResponse>(data);
}

fn frames<T: Serialize + DeserializeOwned + Debug>(data: &[u8]) {
    let mut reader = data;
    for _ in 0..FRAMES_PER_INPUT_MAX {
        if declares_more_than_follows(reader) {
            // `read` would allocate the declared size (up to 64 MiB) only to find the stream closed;
            // that costs the fuzzer thousands of executions a second and tests nothing else.
            return;
        }
        match block_on(frame::read::<T, _>(&mut reader)) {
            Ok(Some(message)) => round_trip(&message),
            Ok(None) | Err(_) => return,
        }
    }
}

/// Whether the next frame's length prefix promises more bytes than the input has left, within the
/// limit (a length over the limit is refused before anything is allocated, so that path stays in).
fn declares_more_than_follows(rest: &[u8]) -> bool {
    match rest.split_first_chunk::<4>() {
        Some((length, body)) => (body.len() + 1..=FRAME_BYTES_MAX).contains(&(u32::from_le_bytes(*length) as usize)),
        None => false,
    }
}

fn round_trip<T: Serialize + DeserializeOwned + Debug>(message: &T) {
    let mut first = Vec::new();
    frame::encode_into(message, &mut first).expect("a message that was read can be written");
    let mut reader = &first[..];
    let again: T = block_on(frame::expect(&mut reader)).expect("a written frame can be read");
    assert!(reader.is_empty(), "a written frame is read to its end and no further");
    // Debug text rather than `==`: thermo lines hold floats, and a NaN is not equal to itself.
    assert_eq!(format!("{message:?}"), format!("{again:?}"));
    let mut second = Vec::new();
    frame::encode_into(&again, &mut second).expect("a message that was read can be written");
    assert_eq!(first, second, "encoding is not stable across a round trip");
}

/// Runs a future that never waits: reading frames from memory is always ready.
fn block_on<F: Future>(future: F) -> F::Output {
    let mut future = pin!(future);
    match future.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(output) => output,
        Poll::Pending => panic!("reading a frame from memory waited"),
    }
}

// ---------------------------------------------------------------------------------------------
// lammps

/// Reads arbitrary text as a LAMMPS data file and, if it reads, completes it into an exact state as
/// a workflow with `data = "…"` does.
pub fn lammps(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(file) = DataFile::parse("fuzz.data", text) else { return };
    assert!(!file.ids.is_empty(), "a data file without atoms was accepted");
    assert_eq!(file.ids.len(), file.atom_types.len());
    assert_eq!(file.ids.len(), file.positions.len());
    let Ok(system) = file.to_system("fuzz.data", &lammps_settings()) else { return };
    assert_eq!(system.ids, file.ids);
    if let Ok(state) = State::from_physical(system) {
        assert!(state.ids.windows(2).all(|pair| pair[0] < pair[1]), "atoms are not in id order");
    }
}

// ---------------------------------------------------------------------------------------------
// checkpoint

/// Decodes the bytes as a checkpoint twice: as they are (which nearly always fails the hash check),
/// and with the last 32 bytes replaced by the hash of the rest, so that mutations reach the decoder
/// behind the hash. A checkpoint that decodes must encode to the same bytes.
pub fn checkpoint(data: &[u8]) {
    if let Ok(state) = Checkpoint::decode(data) {
        check_checkpoint(data, &state);
    }
    let Some(body_len) = data.len().checked_sub(CHECKPOINT_HASH_BYTES) else { return };
    let mut rehashed = data[..body_len].to_vec();
    rehashed.extend_from_slice(blake3::hash(&rehashed).as_bytes());
    if let Ok(state) = Checkpoint::decode(&rehashed) {
        check_checkpoint(&rehashed, &state);
    }
}

fn check_checkpoint(bytes: &[u8], state: &State) {
    let encoded = Checkpoint::encode(state);
    assert_eq!(encoded.len(), Checkpoint::encoded_len(state));
    assert_eq!(Checkpoint::stored_hash(&encoded), Some(Checkpoint::hash(state)));
    assert!(encoded == bytes, "a checkpoint decodes to a state that encodes to other bytes");
}
