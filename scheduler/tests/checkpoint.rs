//! Checkpointed commands on the core alone: one program cut into chunks, chunk 0 running the job's
//! `argv` and every later chunk its `resume` command with the checkpoint files of the verified chunk
//! before among its inputs.

mod common;

use common::{hello, sign, uploaded};

use upglobe_protocol::messages::{
    Assignment, CheckpointContract, CommandJob, FileRef, JobKind, JobSpec, JobState, Outcome, Output, Resources,
    Submission, Task, TaskIds, ToWorker,
};
use upglobe_protocol::trust::Verification;
use upglobe_protocol::{BlobHash, ChunkId, JobId, WorkerId};
use upglobe_scheduler::core::checks::{check_output, submission_blobs};
use upglobe_scheduler::core::{Action, BlobFact, Config, Core, Evidence, Record};
use upglobe_scheduler::store::Store;

const SCRIPT: BlobHash = BlobHash([0xa1; 32]);
const RESUME_SCRIPT: BlobHash = BlobHash([0xa2; 32]);
const CHECKPOINT: &str = "lj.restart";

fn uploaded_input(name: &str, blob: BlobHash) -> FileRef {
    FileRef { name: name.into(), blob, size: 100 }
}

fn strings(words: &[&str]) -> Vec<String> {
    words.iter().map(|w| w.to_string()).collect()
}

/// A LAMMPS-like job: `in.lj` starts the run, `resume.lj` continues it from `lj.restart`.
fn melt(chunks: u32, replicas: u32) -> JobSpec {
    JobSpec {
        name: "melt".into(),
        after: vec![],
        replicas,
        gpu: Default::default(),
        verification: Verification::Quorum,
        resources: Resources { cpus: 1, memory_bytes: 0, gpus: 0 },
        kind: JobKind::Command(CommandJob {
            argv: strings(&["lmp", "-var", "chunks", "{chunks}", "-in", "in.lj"]),
            tasks: TaskIds::from_ids([]),
            inputs: vec![uploaded_input("in.lj", SCRIPT), uploaded_input("resume.lj", RESUME_SCRIPT)],
            outputs: vec!["thermo.dat".into(), CHECKPOINT.into()],
            timeout_s: 60,
            container: None,
            checkpoint: Some(CheckpointContract {
                chunks,
                resume: strings(&["lmp", "-var", "chunk", "{chunk}", "-var", "chunks", "{chunks}", "-in", "resume.lj"]),
                files: vec![CHECKPOINT.into()],
            }),
        }),
    }
}

fn submit(core: &mut Core, job: JobSpec) -> JobId {
    let submission = Submission { name: "lj".into(), source: "# source".into(), jobs: vec![job] };
    let evidence = Evidence::gather(submission_blobs(&submission), |hash| {
        [SCRIPT, RESUME_SCRIPT].contains(hash).then_some(BlobFact { size: 100, tail: Vec::new() })
    });
    core.handle_submit(0, submission, &evidence).unwrap().1[0].1
}

fn file_of(name: &str, seed: &[u8]) -> FileRef {
    let bytes = [name.as_bytes(), seed].concat();
    FileRef { name: name.into(), blob: BlobHash(*blake3::hash(&bytes).as_bytes()), size: 10 + seed.len() as u64 }
}

/// What the program writes: files that are a pure function of its arguments and inputs, so
/// replicas agree and each chunk's checkpoint depends on the one it resumed from.
fn program(task: &Task, with_checkpoint: bool) -> Output {
    let Task::Command { argv, inputs, .. } = task else { panic!("a command task, not {task:?}") };
    let mut seed = argv.join(" ").into_bytes();
    for input in inputs {
        seed.extend_from_slice(&input.blob.0);
    }
    let mut files = vec![file_of("thermo.dat", &seed)];
    if with_checkpoint {
        files.push(file_of(CHECKPOINT, &seed));
    }
    Output::Command { exit_code: 0, files, stdout: file_of("stdout", b""), stderr: file_of("stderr", b"") }
}

fn assignments(core: &mut Core) -> Vec<(WorkerId, Assignment)> {
    let mut sent = Vec::new();
    while let Some(action) = core.poll_action() {
        if let Action::Send { worker, message: ToWorker::Assign(assignment) } = action {
            sent.push((worker, assignment));
        }
    }
    sent
}

fn answer(core: &mut Core, now: u64, worker: WorkerId, assignment: &Assignment, output: Output) {
    let evidence = uploaded(&output);
    core.handle_finished(now, worker, sign(core, assignment.id, Outcome::Completed(output)), &evidence);
}

fn command(task: &Task) -> (&[String], &[FileRef]) {
    match task {
        Task::Command { argv, inputs, .. } => (argv, inputs),
        other => panic!("a command task, not {other:?}"),
    }
}

fn workers(core: &mut Core, count: u8) -> Vec<WorkerId> {
    let ids: Vec<WorkerId> = (1..=count).map(|k| WorkerId([k; 32])).collect();
    for (k, id) in ids.iter().enumerate() {
        core.handle_worker_joined(0, *id, &hello(&format!("w{k}"), 1, true)).unwrap();
    }
    ids
}

#[test]
fn chunks_run_in_order_each_resuming_from_the_verified_checkpoint_before() {
    let mut core = Core::new(Config::default(), 1);
    workers(&mut core, 2);
    let job = submit(&mut core, melt(4, 2));
    let mut previous: Option<FileRef> = None;
    for index in 0..4u32 {
        let sent = assignments(&mut core);
        // Both replicas of this chunk, and nothing of a later chunk before it is verified.
        assert_eq!(sent.len(), 2, "chunk {index}: {sent:?}");
        assert!(sent.iter().all(|(_, a)| a.chunk == ChunkId { job, index }), "chunk {index}: {sent:?}");
        assert_ne!(sent[0].0, sent[1].0, "replicas on one worker");
        let (argv, inputs) = command(&sent[0].1.task);
        let expected_argv = match index {
            0 => strings(&["lmp", "-var", "chunks", "4", "-in", "in.lj"]),
            k => strings(&["lmp", "-var", "chunk", &k.to_string(), "-var", "chunks", "4", "-in", "resume.lj"]),
        };
        assert_eq!(argv, expected_argv, "chunk {index}");
        let mut expected_inputs = vec![uploaded_input("in.lj", SCRIPT), uploaded_input("resume.lj", RESUME_SCRIPT)];
        // The checkpoint of the chunk before, under its contract name; its thermo is not handed on.
        expected_inputs.extend(previous.clone());
        assert_eq!(inputs, expected_inputs, "chunk {index}");
        let output = program(&sent[0].1.task, true);
        for (worker, assignment) in &sent {
            answer(&mut core, 1 + index as u64, *worker, assignment, output.clone());
        }
        let Output::Command { files, .. } = &output else { unreachable!() };
        previous = files.iter().find(|f| f.name == CHECKPOINT).cloned();
        let status = core.job_status(10, job).unwrap();
        assert_eq!((status.chunks_verified, status.chunks_total), (index as u64 + 1, 4));
    }
    assert!(assignments(&mut core).is_empty(), "work after the last chunk");
    assert_eq!(core.job_status(10, job).unwrap().state, JobState::Completed);
}

#[test]
fn a_result_without_its_checkpoint_file_is_refused_naming_the_file() {
    let mut core = Core::new(Config::default(), 1);
    let ids = workers(&mut core, 1);
    let spec = melt(3, 1);
    let job = submit(&mut core, spec.clone());
    let sent = assignments(&mut core);
    assert_eq!(sent.len(), 1);
    let (worker, assignment) = &sent[0];
    let lacking = program(&assignment.task, false);
    let chunk = ChunkId { job, index: 0 };
    let refused = check_output(&spec.kind, chunk, &lacking, &uploaded(&lacking), 0).unwrap_err();
    assert_eq!(
        refused,
        "the result lacks checkpoint file \"lj.restart\": chunk 0 of 3 must write every file of the job's \
         checkpoint (lj.restart)"
    );
    answer(&mut core, 1, *worker, assignment, lacking);
    let status = core.job_status(2, job).unwrap();
    assert_eq!(status.chunks_verified, 0, "a chunk without its checkpoint was accepted");
    let failure = status.failures.last().expect("the refusal is recorded");
    assert_eq!((failure.chunk, failure.worker, failure.reason.as_str()), (0, Some(ids[0]), refused.as_str()));
    // The chunk runs again, still as chunk 0.
    let again = assignments(&mut core);
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].1.chunk, chunk);
    answer(&mut core, 3, ids[0], &again[0].1, program(&again[0].1.task, true));
    assert_eq!(core.job_status(4, job).unwrap().chunks_verified, 1);
}

#[test]
fn a_lost_worker_costs_one_chunk() {
    let mut core = Core::new(Config::default(), 1);
    let ids = workers(&mut core, 2);
    let job = submit(&mut core, melt(3, 1));
    let first = assignments(&mut core);
    assert_eq!(first.len(), 1);
    answer(&mut core, 1, first[0].0, &first[0].1, program(&first[0].1.task, true));
    let chunk_0 = program(&first[0].1.task, true);
    let Output::Command { files, .. } = &chunk_0 else { unreachable!() };
    let checkpoint_0 = files.iter().find(|f| f.name == CHECKPOINT).cloned().unwrap();

    let second = assignments(&mut core);
    assert_eq!(second.len(), 1);
    let (lost, assignment) = &second[0];
    assert_eq!(assignment.chunk, ChunkId { job, index: 1 });
    core.handle_worker_left(2, *lost, "connection lost");

    // Chunk 1 runs again elsewhere, from the same verified checkpoint; chunk 0 is not run again.
    let rerun = assignments(&mut core);
    assert_eq!(rerun.len(), 1, "{rerun:?}");
    let (other, again) = &rerun[0];
    assert_ne!(other, lost);
    assert!(ids.contains(other));
    assert_eq!(again.chunk, ChunkId { job, index: 1 });
    assert_eq!(again.task, assignment.task, "the re-run is the same task");
    assert_eq!(command(&again.task).1.last(), Some(&checkpoint_0));
    let status = core.job_status(3, job).unwrap();
    assert_eq!(status.chunks_verified, 1);
    assert_eq!(status.failures.len(), 1);
    assert!(status.failures[0].reason.contains("connection lost"), "{:?}", status.failures);

    // A lease that expires (a worker that stops answering) costs the same one chunk.
    core.handle_timeout(3 + Config::default().lease_timeout_ms);
    core.handle_worker_joined(4 + Config::default().lease_timeout_ms, *lost, &hello("back", 1, true)).unwrap();
    let after_expiry = assignments(&mut core);
    assert_eq!(after_expiry.len(), 1, "{after_expiry:?}");
    assert_eq!(after_expiry[0].1.chunk, ChunkId { job, index: 1 });
    assert_eq!(after_expiry[0].1.task, assignment.task);
}

#[test]
fn a_restarted_scheduler_continues_the_chain_from_its_store() {
    let mut store = Store::in_memory().unwrap();
    let epoch = store.next_epoch().unwrap();
    let mut core = Core::new(Config::default(), epoch);
    let ids = workers(&mut core, 1);
    let job = submit(&mut core, melt(3, 1));
    let mut records: Vec<Record> = Vec::new();
    let mut persist = |core: &mut Core, store: &mut Store| {
        let mut sent = Vec::new();
        while let Some(action) = core.poll_action() {
            match action {
                Action::Persist(record) => records.push(record),
                Action::Send { worker, message: ToWorker::Assign(assignment) } => sent.push((worker, assignment)),
                _ => {}
            }
        }
        store.apply(&std::mem::take(&mut records)).unwrap();
        sent
    };
    let mut last = None;
    for _ in 0..2 {
        let sent = persist(&mut core, &mut store);
        assert_eq!(sent.len(), 1);
        let output = program(&sent[0].1.task, true);
        answer(&mut core, 1, ids[0], &sent[0].1, output.clone());
        last = Some(output);
    }
    persist(&mut core, &mut store);
    let Some(Output::Command { files, .. }) = last else { unreachable!() };
    let checkpoint_1 = files.iter().find(|f| f.name == CHECKPOINT).cloned().unwrap();

    let epoch = store.next_epoch().unwrap();
    let mut restored = Core::restore(Config::default(), store.load(epoch).unwrap(), 10);
    restored.handle_worker_joined(10, ids[0], &hello("w0", 1, true)).unwrap();
    let sent = assignments(&mut restored);
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].1.chunk, ChunkId { job, index: 2 });
    let (argv, inputs) = command(&sent[0].1.task);
    assert_eq!(argv[..4], strings(&["lmp", "-var", "chunk", "2"]));
    assert_eq!(inputs.last(), Some(&checkpoint_1));
    assert_eq!(restored.job_status(10, job).unwrap().chunks_verified, 2);
}

#[test]
fn a_contract_whose_chunks_would_get_too_many_files_is_refused() {
    let mut spec = melt(2, 1);
    let JobKind::Command(command) = &mut spec.kind else { unreachable!() };
    let limit = upglobe_protocol::messages::limits::FILES_PER_TASK_MAX;
    let contract = command.checkpoint.as_mut().unwrap();
    contract.files = (0..limit - 1).map(|k| format!("restart.{k}")).collect();
    command.outputs = contract.files.clone();
    let submission = Submission { name: "lj".into(), source: String::new(), jobs: vec![spec] };
    let evidence = Evidence::gather(submission_blobs(&submission), |_| Some(BlobFact { size: 100, tail: Vec::new() }));
    let refused = Core::new(Config::default(), 1).handle_submit(0, submission, &evidence).unwrap_err();
    assert_eq!(
        refused,
        format!("job 'melt' has 2 inputs and {} checkpoint files; a chunk gets at most {limit} files", limit - 1)
    );
}

/// A chunk that hands back the checkpoint it was given made no progress (or never wrote its
/// checkpoint, and the copy it was given was collected): refused, and the chunk runs again.
#[test]
fn a_chunk_that_hands_back_its_own_checkpoint_is_refused() {
    let mut core = Core::new(Config::default(), 1);
    let ids = workers(&mut core, 1);
    let job = submit(&mut core, melt(3, 1));
    let first = assignments(&mut core);
    let output = program(&first[0].1.task, true);
    answer(&mut core, 1, ids[0], &first[0].1, output.clone());
    let second = assignments(&mut core);
    assert_eq!(second[0].1.chunk, ChunkId { job, index: 1 });
    // The program wrote its thermo but left the checkpoint it resumed from as it was.
    let Output::Command { files, .. } = output else { unreachable!() };
    let mut stale = program(&second[0].1.task, true);
    if let Output::Command { files: written, .. } = &mut stale {
        written.retain(|f| f.name != CHECKPOINT);
        written.extend(files.iter().filter(|f| f.name == CHECKPOINT).cloned());
    }
    answer(&mut core, 2, ids[0], &second[0].1, stale);
    let status = core.job_status(3, job).unwrap();
    assert_eq!(status.chunks_verified, 1);
    let reason = &status.failures.last().expect("the refusal is recorded").reason;
    assert!(reason.contains("handed back the checkpoint it was given (lj.restart)"), "{reason}");
    let again = assignments(&mut core);
    assert_eq!(again[0].1.chunk, ChunkId { job, index: 1 });
}
