//! The store's on-disk format: a database written by an earlier format version opens, migrates and
//! restores the same state as one written now.
//!
//! `fixtures/store-v1.db` was written by format version 1 (the scheduler of December 2026) from
//! [`scenario`]. To write a fixture for a new format version, run
//! `UPGLOBE_WRITE_STORE_FIXTURE=path cargo nextest run -p upglobe-scheduler --test store_format`.

mod common;

use common::{hello, uploaded};
use upglobe_protocol::messages::{
    CommandJob, FileRef, JobKind, JobSpec, MdJob, Outcome, Output, Resources, Submission, Task, ThermoLine, ToWorker,
};
use upglobe_protocol::{BlobHash, WorkerId};
use upglobe_scheduler::core::checks::submission_blobs;
use upglobe_scheduler::core::{Action, BlobFact, Config, Core, Evidence, Record};
use upglobe_scheduler::store::Store;

fn file(name: &str, seed: u8) -> FileRef {
    FileRef { name: name.into(), blob: BlobHash([seed; 32]), size: 10 + seed as u64 }
}

/// The output a worker gives; worker 3 lies about MD states (consistently: its checkpoint ends with
/// its wrong state).
fn output(worker: WorkerId, chunk: upglobe_protocol::ChunkId, task: &Task) -> Output {
    match task {
        Task::Md { input, steps, chain_every, .. } => {
            let mut state = *blake3::hash(&input.0).as_bytes();
            if worker == WorkerId([3; 32]) {
                state[0] ^= 1;
            }
            let step = (chunk.index as u64 + 1) * steps;
            Output::Md {
                state_hash: state,
                checkpoint: BlobHash(*blake3::hash(&state).as_bytes()),
                checkpoint_bytes: 1000,
                thermo: vec![ThermoLine { step, temp: 1.5, pe: -6.25, ke: 2.25, etotal: -4.0, press: 0.5 }],
                chain: vec![state; (steps / chain_every) as usize],
            }
        }
        Task::Command { .. } => Output::Command {
            exit_code: 0,
            files: vec![file("out/a.csv", chunk.index as u8 + 1)],
            stdout: file("stdout", 40),
            stderr: file("stderr", 41),
        },
        Task::Empty { value } => Output::Empty { value: *value },
    }
}

/// Every kind of record: a workflow of three jobs, verified and pending results, a disagreement,
/// a failed attempt, a completed job, and a cancelled one (waiting on the MD job, which stays open).
fn scenario() -> Vec<Record> {
    let mut core = Core::new(Config::default(), 1);
    let workers: Vec<WorkerId> = (1..=3).map(|k| WorkerId([k; 32])).collect();
    for (k, worker) in workers.iter().enumerate() {
        core.handle_worker_joined(0, *worker, &hello(&format!("w{k}"), 2, true)).unwrap();
    }
    let resources = Resources { cpus: 1, memory_bytes: 1 << 20, gpus: 0 };
    let jobs = vec![
        JobSpec {
            name: "melt".into(),
            after: vec![],
            replicas: 2,
            gpu: Default::default(),
            verification: upglobe_protocol::trust::Verification::Quorum,
            resources,
            kind: JobKind::Md(MdJob {
                initial: BlobHash([9; 32]),
                atoms: 4000,
                total_steps: 30,
                chunk_steps: 10,
                thermo_every: 10,
            }),
        },
        JobSpec {
            name: "sweep".into(),
            after: vec![],
            replicas: 1,
            gpu: Default::default(),
            verification: upglobe_protocol::trust::Verification::Quorum,
            resources,
            kind: JobKind::Command(CommandJob {
                argv: vec!["run".into(), "{task}".into()],
                tasks: upglobe_protocol::messages::TaskIds::from_ids([7, 8]),
                inputs: vec![file("in.txt", 50)],
                outputs: vec!["out/*.csv".into()],
                timeout_s: 600,
                container: None,
                checkpoint: None,
            }),
        },
        JobSpec {
            name: "later".into(),
            after: vec!["melt".into()],
            replicas: 1,
            gpu: Default::default(),
            verification: upglobe_protocol::trust::Verification::Quorum,
            resources,
            kind: JobKind::Empty { chunks: 2 },
        },
    ];
    let submission = Submission { name: "fixture".into(), source: "name = \"fixture\"\n".into(), jobs };
    let evidence = Evidence::gather(submission_blobs(&submission), |hash| {
        Some(BlobFact { size: hash.0[0] as u64 + 10, tail: vec![] })
    });
    let (_, ids) = core.handle_submit(0, submission, &evidence).unwrap();
    let mut records = Vec::new();
    let mut failed_once = false;
    for now in 1..40 {
        let mut given = Vec::new();
        while let Some(action) = core.poll_action() {
            match action {
                Action::Persist(record) => records.push(record),
                Action::Send { worker, message: ToWorker::Assign(assignment) } => given.push((worker, assignment)),
                Action::Send { .. } | Action::Compare { .. } => {}
            }
        }
        for (worker, assignment) in given {
            if matches!(assignment.task, Task::Command { .. }) && !failed_once {
                failed_once = true;
                let failed = Outcome::Failed { reason: "exit 3: disk full".into() };
                core.handle_finished(now, worker, common::sign(&core, assignment.id, failed), &Evidence::default());
                continue;
            }
            // Worker 1 never answers for the last MD chunk, so the others' results stay pending.
            if matches!(assignment.task, Task::Md { .. }) && assignment.chunk.index == 2 && worker == workers[0] {
                continue;
            }
            let result = output(worker, assignment.chunk, &assignment.task);
            let evidence = uploaded(&result);
            core.handle_finished(
                now,
                worker,
                common::sign(&core, assignment.id, Outcome::Completed(result)),
                &evidence,
            );
        }
    }
    let later = ids.iter().find(|(name, _)| name == "later").unwrap().1;
    core.handle_cancel(50, later);
    while let Some(action) = core.poll_action() {
        if let Action::Persist(record) = action {
            records.push(record);
        }
    }
    records
}

#[test]
fn the_scenario_covers_every_record() {
    let records = scenario();
    let has = |f: fn(&Record) -> bool| records.iter().any(f);
    assert!(has(|r| matches!(r, Record::WorkflowSubmitted { .. })));
    assert!(has(|r| matches!(r, Record::ResultReported { .. })));
    assert!(has(|r| matches!(r, Record::AttemptFailed { .. })));
    assert!(has(|r| matches!(r, Record::ChunkVerified { disagreeing, .. } if !disagreeing.is_empty())));
    assert!(has(|r| matches!(r, Record::Signed { .. })), "every accepted answer's signature is kept");
    assert!(has(|r| matches!(r, Record::JobFinished { .. })));
    assert!(has(|r| matches!(r, Record::WorkerDisagreed { .. })));
    // The store keeps the signatures, and each verifies with the worker's key over the statement.
    let mut store = Store::in_memory().unwrap();
    store.apply(&records).unwrap();
    let Some(Record::Signed { chunk, worker, .. }) = records.iter().find(|r| matches!(r, Record::Signed { .. })) else {
        unreachable!()
    };
    let kept = store.signed_results(*chunk).unwrap();
    assert!(kept.iter().any(|k| k.worker == *worker));
    let key = ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, common::key().public().0);
    for signed in kept {
        assert!(key.verify(&signed.statement_hash, &signed.signature).is_ok(), "a kept signature verifies");
    }
}

/// Outputs stored before hash chains read back with a chain of one link, their state: the rest of
/// what they hold must be the same.
fn shorten_chain(output: &mut Output) {
    if let Output::Md { state_hash, chain, .. } = output {
        *chain = vec![*state_hash];
    }
}

fn without_chains(mut snapshot: upglobe_scheduler::core::Snapshot) -> upglobe_scheduler::core::Snapshot {
    snapshot.verified.iter_mut().for_each(|(_, output, _)| shorten_chain(output));
    for result in &mut snapshot.pending {
        shorten_chain(&mut result.output);
        result.digest = result.output.digest();
    }
    // Results stored before assignments were recorded read back with assignment 0.
    snapshot.pending.iter_mut().for_each(|result| result.assignment = upglobe_protocol::AssignmentId(0));
    snapshot
}

#[test]
fn a_database_of_the_previous_format_restores_the_same_state() {
    if let Ok(path) = std::env::var("UPGLOBE_WRITE_STORE_FIXTURE") {
        let mut store = Store::open(std::path::Path::new(&path)).unwrap();
        store.next_epoch().unwrap();
        store.apply(&scenario()).unwrap();
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let old = dir.path().join("old.db");
    std::fs::copy(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/store-v1.db"), &old).unwrap();
    let mut migrated = Store::open(&old).unwrap();
    let mut fresh = Store::open(&dir.path().join("new.db")).unwrap();
    fresh.next_epoch().unwrap();
    fresh.apply(&scenario()).unwrap();
    let epoch = migrated.next_epoch().unwrap();
    assert_eq!(epoch, 2, "the fixture was written by one start");
    assert_eq!(without_chains(migrated.load(epoch).unwrap()), without_chains(fresh.load(epoch).unwrap()));
    for job in 1..=3 {
        let job = upglobe_protocol::JobId(job);
        let all = |store: &Store| {
            let mut chunks = store.verified_chunks(job, 0, u32::MAX).unwrap();
            for chunk in &mut chunks {
                shorten_chain(&mut chunk.output);
                chunk.digest = chunk.output.digest();
            }
            chunks
        };
        assert_eq!(all(&migrated), all(&fresh));
    }
    // Chunks final before the payments format are in the outbox, so funding the workflow later
    // pays them: the migrated database owes what the fresh one does.
    let owed = |store: &mut Store| {
        let offsets: std::collections::BTreeMap<u64, u64> = (1..=3).map(|job| (job, job * 1000)).collect();
        store.fund(upglobe_protocol::WorkflowId(1), 7, 4000, &offsets).unwrap();
        let funding = store.fundings().unwrap().remove(0);
        store.due(&funding, (0, 0), usize::MAX).unwrap()
    };
    let owed_fresh = owed(&mut fresh);
    assert!(!owed_fresh.is_empty(), "the scenario has final chunks");
    assert_eq!(owed(&mut migrated), owed_fresh);
    // A second open finds the migrated format and changes nothing.
    drop(migrated);
    let again = Store::open(&old).unwrap();
    assert_eq!(without_chains(again.load(epoch).unwrap()), without_chains(fresh.load(epoch).unwrap()));
}

#[test]
fn a_database_of_a_newer_format_is_refused_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("future.db");
    drop(Store::open(&path).unwrap());
    rusqlite::Connection::open(&path).unwrap().pragma_update(None, "user_version", 99).unwrap();
    let error = Store::open(&path).err().expect("a newer format was opened").to_string();
    assert!(error.contains("format version 99"), "{error}");
}

/// Format 5's job record: a container image pin, a checkpoint contract and a GPU request come back
/// from the database as they went in.
#[test]
fn container_checkpoint_and_gpu_requests_survive_the_store() {
    use upglobe_protocol::messages::{CheckpointContract, ContainerSpec, GpuRequest, ImagePin};
    let spec = JobSpec {
        name: "lmp".into(),
        after: vec![],
        replicas: 2,
        resources: Resources { cpus: 2, memory_bytes: 1 << 30, gpus: 1 },
        kind: JobKind::Command(CommandJob {
            argv: vec!["lmp".into(), "-in".into(), "in.lj".into()],
            tasks: upglobe_protocol::messages::TaskIds::from_ids([]),
            inputs: vec![file("in.lj", 30)],
            outputs: vec!["lj.restart".into(), "thermo.dat".into()],
            timeout_s: 600,
            container: Some(ContainerSpec {
                image: ImagePin { name: "lammps:1".into(), id: None, archive: Some(file("image.tar", 90)) },
                network: false,
            }),
            checkpoint: Some(CheckpointContract {
                chunks: 5,
                resume: vec!["lmp".into(), "-in".into(), "resume.lj".into()],
                files: vec!["lj.restart".into()],
            }),
        }),
        verification: upglobe_protocol::trust::Verification::Quorum,
        gpu: GpuRequest { vram_bytes: 16 << 30, backend: Some("vulkan".into()) },
    };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.db");
    let mut store = Store::open(&path).unwrap();
    store.next_epoch().unwrap();
    let record = Record::WorkflowSubmitted {
        id: upglobe_protocol::WorkflowId(1),
        name: "w".into(),
        source: String::new(),
        jobs: vec![(upglobe_protocol::JobId(1), spec.clone(), vec![])],
    };
    store.apply(&[record]).unwrap();
    drop(store);
    let mut store = Store::open(&path).unwrap();
    let epoch = store.next_epoch().unwrap();
    let snapshot = store.load(epoch).unwrap();
    assert_eq!(snapshot.jobs[0].spec, spec);
    let referenced = store.referenced_blobs().unwrap();
    assert!(referenced.contains(&file("image.tar", 90).blob), "garbage collection keeps the image archive");
}
