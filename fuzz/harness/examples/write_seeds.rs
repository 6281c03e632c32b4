//! Writes the seed inputs the fuzzers start from into `fuzz/corpus/TARGET/seed-*`: the example
//! workflows, one frame of every message variant, and small data files and checkpoints made by the
//! kernels themselves. Run it once before fuzzing from scratch:
//! `cargo run -p upglobe-fuzz-harness --example write_seeds`.

use std::path::{Path, PathBuf};

use upglobe_kernels::checkpoint::Checkpoint;
use upglobe_kernels::lattice::FccLattice;
use upglobe_kernels::system::{Langevin, PairCoeff, State};
use upglobe_protocol::frame::encode_into;
use upglobe_protocol::messages::*;
use upglobe_protocol::trust::{
    Compared, Finality, NodeRole, PublicKey, Signature, ToleranceRule, TrustEvent, TrustEventKind, Usage, Verification,
    VerificationReport,
};
use upglobe_protocol::{AssignmentId, BlobHash, ChunkId, Digest, JobId, WorkerId, WorkflowId};

fn main() {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf();
    workflow_seeds(&fuzz);
    frame_seeds(&fuzz);
    lammps_seeds(&fuzz);
    checkpoint_seeds(&fuzz);
}

fn write(fuzz: &Path, target: &str, name: &str, bytes: &[u8]) {
    let dir: PathBuf = fuzz.join("corpus").join(target);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(format!("seed-{name}")), bytes).unwrap();
}

fn workflow_seeds(fuzz: &Path) {
    let examples = fuzz.parent().unwrap().join("workflows/examples");
    for entry in std::fs::read_dir(examples).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|extension| extension == "toml") {
            let name = path.file_name().unwrap().to_string_lossy().to_string();
            // The target skips text with a '/' (see `upglobe_fuzz_harness::workflow`); only comments have one.
            let text = std::fs::read_to_string(&path).unwrap().replace('/', " ");
            write(fuzz, "workflow", &name, text.as_bytes());
        }
    }
    let data = "name = \"from-data\"\n\n[jobs.small]\nkind = \"md\"\nreplicas = 3\n\n[jobs.small.system]\n\
                data = \"small.data\"\ntemperature = 1.0\nseed = 5\n\n[jobs.small.potential]\ncutoff = 2.5\n\n\
                [jobs.small.run]\nsteps = 10\nchunk_steps = 5\nthermo = 1\n\n[jobs.after]\nkind = \"command\"\n\
                after = [\"small\"]\nargv = [\"sh\", \"summarise.sh\", \"{task}\"]\ntasks = [1, 3, 5]\n\
                inputs = [\"summarise.sh\"]\noutputs = [\"out-*.txt\"]\ntimeout = 30\n\n\
                [jobs.after.resources]\ncpus = 2\nmemory = \"1GiB\"\ngpus = 0\n";
    write(fuzz, "workflow", "data-and-command.toml", data.as_bytes());
    let langevin = "[jobs.mix]\nkind = \"md\"\n[jobs.mix.system]\nlattice = \"fcc\"\ncells = [2, 2, 3]\n\
                    density = 0.8\ntemperature = 0.5\nseed = 9\nmass = 2.0\n[jobs.mix.potential]\ncutoff = 1.2\n\
                    epsilon = 0.5\nsigma = 0.9\nshift = true\n[jobs.mix.run]\nsteps = 40\nchunk_steps = 20\n\
                    timestep = 0.002\n[jobs.mix.thermostat]\ntemperature = 0.7\ndamping = 0.5\n\
                    seed = 3\n";
    write(fuzz, "workflow", "langevin.toml", langevin.as_bytes());
}

/// The GPU a seed worker describes (in its hello and in the workers list).
fn hello_gpus() -> Vec<GpuDevice> {
    vec![GpuDevice {
        name: "A100".into(),
        uuid: "GPU-1".into(),
        vram_total_bytes: 80 << 30,
        vram_free_bytes: 79 << 30,
        driver: "550".into(),
        utilisation_percent: 3,
    }]
}

fn frame_seeds(fuzz: &Path) {
    let mut all = Vec::new();
    let mut frame = |name: &str, encode: &dyn Fn(&mut Vec<u8>)| {
        let mut bytes = Vec::new();
        encode(&mut bytes);
        all.extend_from_slice(&bytes);
        write(fuzz, "frame", name, &bytes);
    };
    let resources = Resources { cpus: 4, memory_bytes: 1 << 30, gpus: 1 };
    let file = FileRef { name: "out-1.txt".into(), blob: BlobHash([7; 32]), size: 12 };
    let thermo = ThermoLine { step: 10, temp: 1.44, pe: -5.1, ke: 2.1, etotal: -3.0, press: f64::NAN };
    let md_output = Output::Md {
        state_hash: [1; 32],
        checkpoint: BlobHash([2; 32]),
        checkpoint_bytes: 4096,
        thermo: vec![thermo],
        chain: vec![[5; 32], [1; 32]],
    };
    let command_output =
        Output::Command { exit_code: -1, files: vec![file.clone()], stdout: file.clone(), stderr: file.clone() };
    let hello = Hello {
        protocol: 1,
        secret: "s3cret".into(),
        software: "upglobe 0.1.0".into(),
        name: "worker-1".into(),
        resources,
        allow_commands: true,
        device: "cpu".into(),
        role: NodeRole::Worker,
        signing_key: PublicKey([4; 32]),
        owner: Some("lab-a".into()),
        peer_address: Some("192.0.2.7:7413".into()),
        gpus: hello_gpus(),
        adapters: vec!["NVIDIA A100 (Vulkan)".into()],
        containers: Some("20.10.24".into()),
        allow_network: false,
        hub: Some([0x42; 20]),
    };
    let client_hello = ClientHello { protocol: 1, secret: "s3cret".into(), software: "upglobe 0.1.0".into() };
    frame("greeting-worker", &|b| encode_into(&Greeting::Worker(hello.clone()), b).unwrap());
    frame("greeting-client", &|b| encode_into(&Greeting::Client(client_hello.clone()), b).unwrap());

    let progress = Progress { assignment: AssignmentId(3), steps_done: 500 };
    frame("from-worker-heartbeat", &|b| {
        encode_into(&FromWorker::Heartbeat { running: vec![progress.clone()] }, b).unwrap()
    });
    for (name, outcome) in [
        ("md", Outcome::Completed(md_output.clone())),
        ("command", Outcome::Completed(command_output.clone())),
        ("empty", Outcome::Completed(Output::Empty { value: 9 })),
        ("failed", Outcome::Failed { reason: "out of memory".into() }),
    ] {
        let usage = Usage {
            elapsed_ms: 1234,
            cpus: 2,
            gpus: 0,
            steps: 500,
            cpu_ms: Some(2000),
            peak_memory_bytes: Some(1 << 28),
            bytes_in: 1 << 20,
            bytes_out: 4096,
            gpu_ms: 2468,
        };
        let signature = Signature(vec![7; 64]);
        let message = FromWorker::Finished { assignment: AssignmentId(4), outcome, usage, signature };
        frame(&format!("from-worker-finished-{name}"), &|b| encode_into(&message, b).unwrap());
    }

    let chunk = ChunkId { job: JobId(2), index: 5 };
    let welcome = Welcome { peer: WorkerId([3; 32]), software: "upglobe 0.1.0".into(), heartbeat_interval_ms: 1000 };
    let tasks = [
        (
            "md",
            Task::Md { input: BlobHash([4; 32]), steps: 500, thermo_every: 50, thermo_at_start: true, chain_every: 50 },
        ),
        (
            "command",
            Task::Command {
                argv: vec!["sh".into(), "-c".into(), "true".into()],
                inputs: vec![file.clone()],
                outputs: vec!["*.txt".into()],
                timeout_s: 60,
                container: None,
            },
        ),
        ("empty", Task::Empty { value: 1 }),
    ];
    frame("to-worker-welcome", &|b| encode_into(&ToWorker::Welcome(welcome.clone()), b).unwrap());
    frame("to-worker-refused", &|b| encode_into(&ToWorker::Refused { reason: "bad secret".into() }, b).unwrap());
    for (name, task) in tasks {
        let sources = vec![upglobe_protocol::messages::PeerSource {
            blob: BlobHash([6; 32]),
            worker: WorkerId([2; 32]),
            address: "192.0.2.8:7413".into(),
        }];
        let gpus = vec!["GPU-8e0c".to_string()];
        let backend = Some("vulkan".to_string());
        let message =
            ToWorker::Assign(Assignment { id: AssignmentId(8), chunk, task, resources, sources, gpus, backend });
        frame(&format!("to-worker-assign-{name}"), &|b| encode_into(&message, b).unwrap());
    }
    frame("to-worker-cancel", &|b| {
        encode_into(&ToWorker::Cancel { assignment: AssignmentId(8), reason: "cancelled".into() }, b).unwrap()
    });
    let serve = ToWorker::ServeState { request: 3, assignment: AssignmentId(8), link: 2, deadline_ms: 30_000 };
    frame("to-worker-serve-state", &|b| encode_into(&serve, b).unwrap());
    let settled = ToWorker::Settled { assignments: vec![AssignmentId(8), AssignmentId(9)] };
    frame("to-worker-settled", &|b| encode_into(&settled, b).unwrap());
    for (name, served) in [("served", Ok(BlobHash([3; 32]))), ("not-served", Err("settled".to_string()))] {
        let message = FromWorker::StateServed { request: 3, served };
        frame(&format!("from-worker-{name}"), &|b| encode_into(&message, b).unwrap());
    }

    frame("stream-get-slices", &|b| {
        encode_into(
            &StreamRequest::GetSlices { hash: BlobHash([5; 32]), ranges: vec![(0, 16), (1 << 54, u64::MAX)] },
            b,
        )
        .unwrap()
    });
    let holding = FromWorker::Holding { blobs: vec![BlobHash([5; 32]), BlobHash([6; 32])] };
    frame("from-worker-holding", &|b| encode_into(&holding, b).unwrap());
    let log = FromWorker::Log { assignment: AssignmentId(3), stderr: true, bytes: b"step 100\n".to_vec() };
    frame("from-worker-log", &|b| encode_into(&log, b).unwrap());
    let add = upglobe_protocol::messages::DatasetRequest::Add {
        hash: BlobHash([7; 32]),
        name: "traj".into(),
        kind: upglobe_protocol::messages::DatasetKind::Directory,
        directory: None,
    };
    for (name, request) in [
        ("add", add),
        ("list", upglobe_protocol::messages::DatasetRequest::List),
        ("remove", upglobe_protocol::messages::DatasetRequest::Remove { hash: BlobHash([7; 32]) }),
    ] {
        let message = StreamRequest::Client(ClientRequest::Datasets(request));
        frame(&format!("client-datasets-{name}"), &|b| encode_into(&message, b).unwrap());
    }
    frame("stream-put-blob", &|b| {
        encode_into(&StreamRequest::PutBlob { hash: BlobHash([5; 32]), size: 77 }, b).unwrap()
    });
    for (name, reply) in [
        ("sending", BlobReply::Sending { size: 77 }),
        ("stored", BlobReply::Stored),
        ("missing", BlobReply::Missing),
        ("rejected", BlobReply::Rejected { reason: "too large".into() }),
        ("continue", BlobReply::Continue { offset: 4096 }),
    ] {
        frame(&format!("blob-reply-{name}"), &|b| encode_into(&reply, b).unwrap());
    }
    frame("client-welcome", &|b| encode_into(&ClientWelcome::Welcome { software: "upglobe".into() }, b).unwrap());
    frame("client-refused", &|b| encode_into(&ClientWelcome::Refused { reason: "no".into() }, b).unwrap());

    let md_spec = JobSpec {
        name: "melt".into(),
        after: vec![],
        replicas: 2,
        resources,
        kind: JobKind::Md(MdJob {
            initial: BlobHash([6; 32]),
            atoms: 4000,
            total_steps: 3000,
            chunk_steps: 500,
            thermo_every: 50,
        }),
        gpu: Default::default(),
        verification: Verification::Adaptive,
    };
    let command_spec = JobSpec {
        name: "report".into(),
        after: vec!["melt".into()],
        replicas: 1,
        resources,
        kind: JobKind::Command(CommandJob {
            argv: vec!["sh".into(), "report.sh".into(), "{task}".into()],
            tasks: TaskIds::from_ids([1, 2, -3]),
            inputs: vec![file.clone()],
            outputs: vec!["out-*.txt".into()],
            timeout_s: 600,
            container: None,
            checkpoint: None,
        }),
        gpu: Default::default(),
        verification: Verification::Tolerance(vec![ToleranceRule {
            file: "out-1.txt".into(),
            values: Compared::Columns(vec![2, 3]),
            absolute: 1e-9,
            relative: 1e-6,
        }]),
    };
    let container_spec = JobSpec {
        name: "c".into(),
        after: vec![],
        replicas: 2,
        resources,
        kind: JobKind::Command(CommandJob {
            argv: vec!["lmp".into(), "-in".into(), "in.lj".into()],
            tasks: TaskIds::from_ids([]),
            inputs: vec![file.clone()],
            outputs: vec!["restart.bin".into()],
            timeout_s: 600,
            container: Some(upglobe_protocol::messages::ContainerSpec {
                image: upglobe_protocol::messages::ImagePin {
                    name: "lammps:1".into(),
                    id: None,
                    archive: Some(file.clone()),
                },
                network: false,
            }),
            checkpoint: Some(upglobe_protocol::messages::CheckpointContract {
                chunks: 5,
                resume: vec!["lmp".into(), "-in".into(), "resume.lj".into()],
                files: vec!["restart.bin".into()],
            }),
        }),
        gpu: Default::default(),
        verification: Verification::Quorum,
    };
    let empty_spec = JobSpec {
        name: "e".into(),
        after: vec![],
        replicas: 3,
        resources,
        kind: JobKind::Empty { chunks: 10 },
        gpu: Default::default(),
        verification: Verification::Quorum,
    };
    let submission = Submission {
        name: "w".into(),
        source: "name = \"w\"\n".into(),
        jobs: vec![md_spec.clone(), command_spec, container_spec, empty_spec],
    };
    for (name, request) in [
        ("submit", ClientRequest::Submit(submission)),
        ("status", ClientRequest::Status { job: Some("melt".into()) }),
        ("status-all", ClientRequest::Status { job: None }),
        ("cancel", ClientRequest::Cancel { job: "melt".into() }),
        ("results", ClientRequest::Results { job: "melt".into(), first_chunk: 0 }),
        ("workers", ClientRequest::Workers),
        ("verification", ClientRequest::Verification { job: "melt".into() }),
        ("logs", ClientRequest::Logs { job: "c".into(), from: 17 }),
        ("payment-info", ClientRequest::Payments(PaymentRequest::Info)),
        (
            "fund",
            ClientRequest::Payments(PaymentRequest::Fund {
                workflow: WorkflowId(1),
                escrow_job: 7,
                signature: vec![5; 65],
            }),
        ),
        ("payments", ClientRequest::Payments(PaymentRequest::Status)),
    ] {
        frame(&format!("client-request-{name}"), &|b| encode_into(&request, b).unwrap());
        frame(&format!("stream-client-{name}"), &|b| encode_into(&StreamRequest::Client(request.clone()), b).unwrap());
    }

    let status = JobStatus {
        id: JobId(2),
        workflow: WorkflowId(1),
        workflow_name: "w".into(),
        name: "melt".into(),
        kind: "md".into(),
        state: JobState::Failed { reason: "disagreement".into() },
        chunks_total: 6,
        chunks_verified: 5,
        chunks_final: 4,
        chunks_running: 1,
        steps_in_flight: 250,
        running_ms: 6000,
        failures: vec![Failure { chunk: 3, worker: Some(WorkerId([9; 32])), reason: "timeout".into() }],
        disagreements: 1,
        assignments: 3,
        assignments_local: 2,
        waiting: Some("no worker has 2 GPUs (the most any has is 1)".into()),
    };
    let states = [JobState::Waiting, JobState::Running, JobState::Completed, JobState::Cancelled];
    let statuses: Vec<JobStatus> =
        states.into_iter().map(|state| JobStatus { state, ..status.clone() }).chain([status.clone()]).collect();
    let verified = VerifiedChunk {
        index: 0,
        digest: Digest([8; 32]),
        output: md_output.clone(),
        agreeing: vec![WorkerId([1; 32]), WorkerId([2; 32])],
        disagreeing: vec![WorkerId([3; 32])],
        finality: Finality::Provisional,
    };
    let results = ResultsPage {
        status: status.clone(),
        workflow_hash: "ab".repeat(32),
        spec: Some(md_spec),
        chunks: vec![verified],
        next_chunk: Some(1),
    };
    let worker = WorkerStatus {
        id: WorkerId([1; 32]),
        name: "worker-1".into(),
        connected: true,
        device: "cpu".into(),
        resources,
        running: 1,
        completed: 20,
        disagreements: 0,
        quarantined: false,
        role: NodeRole::Worker,
        owner: "lab-a".into(),
        standing: "trusted, audits at 50 %".into(),
        audits_passed: 3,
        audits_failed: 0,
        gpus: hello_gpus(),
        adapters: vec!["NVIDIA A100 (Vulkan)".into()],
        containers: Some("20.10.24".into()),
        busy: Resources { cpus: 2, memory_bytes: 1 << 30, gpus: 1 },
    };
    for (name, response) in [
        ("submitted", ClientResponse::Submitted { workflow: WorkflowId(1), jobs: vec![("melt".into(), JobId(2))] }),
        ("status", ClientResponse::Status { jobs: statuses }),
        ("cancelled", ClientResponse::Cancelled { job: JobId(2) }),
        ("results", ClientResponse::Results(Box::new(results))),
        ("workers", ClientResponse::Workers(vec![worker])),
        (
            "logs",
            ClientResponse::Logs(upglobe_protocol::messages::LogPage {
                from: 0,
                pieces: vec![upglobe_protocol::messages::LogPiece { stderr: false, bytes: b"hi\n".to_vec() }],
                next: 3,
                done: false,
            }),
        ),
        (
            "verification",
            ClientResponse::Verification(Box::new(VerificationReport {
                job: JobId(2),
                policy: Verification::Adaptive,
                chunks_final: 4,
                chunks_provisional: 1,
                events: vec![TrustEvent {
                    time_ms: 10,
                    job: Some(JobId(2)),
                    chunk: Some(3),
                    worker: Some(WorkerId([1; 32])),
                    what: TrustEventKind::DisputeSettled {
                        link: 5,
                        winner: Some(WorkerId([1; 32])),
                        loser: vec![WorkerId([2; 32])],
                        steps: 20,
                        verifier: Some(WorkerId([3; 32])),
                    },
                }],
            })),
        ),
        ("error", ClientResponse::Error { message: "no such job".into() }),
        (
            "payment-info",
            ClientResponse::Payments(PaymentAnswer::Info(Some(PaymentInfo {
                chain_id: 31337,
                registry: [1; 20],
                escrow: [2; 20],
                reporter: [3; 20],
            }))),
        ),
        (
            "payments",
            ClientResponse::Payments(PaymentAnswer::Funded(vec![FundedWorkflow {
                workflow: WorkflowId(1),
                name: "w".into(),
                escrow_job: 7,
                chunks: 12,
                verified: 10,
                paid: 8,
                unpayable: 1,
                batches: 2,
                last_tx: Some([4; 32]),
                completed: false,
                evidence: 1,
                problem: Some("hub 0x01 cannot be paid".into()),
            }])),
        ),
    ] {
        frame(&format!("client-response-{name}"), &|b| encode_into(&response, b).unwrap());
    }
    write(fuzz, "frame", "all-back-to-back", &all);
}

/// A small lattice whose box fits its cutoff (half the box is longer than the cutoff).
fn small_lattice(cells: [usize; 3], langevin: Option<Langevin>) -> State {
    let lattice = FccLattice {
        cells,
        pair: PairCoeff { epsilon: 1.0, sigma: 1.0, cutoff: 1.2 },
        langevin,
        ..FccLattice::in_lj(2)
    };
    State::from_physical(lattice.build()).unwrap()
}

fn lammps_seeds(fuzz: &Path) {
    let small = std::fs::read(Path::new(upglobe_fuzz_harness::WORKFLOW_BASE_DIR).join("small.data")).unwrap();
    write(fuzz, "lammps", "small.data", &small);
    let dir = std::env::temp_dir().join(format!("upglobe-seeds-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("lattice.data");
    upglobe_kernels::lammps::write(&path, &small_lattice([2, 2, 2], None)).unwrap();
    write(fuzz, "lammps", "lattice.data", &std::fs::read(&path).unwrap());
    std::fs::remove_dir_all(&dir).unwrap();
    let pair_ij = "two types, PairIJ Coeffs\n\n3 atoms\n2 atom types\n0 0 extra bond per atom\n\n-5 5 xlo xhi\n\
                   -5 5 ylo yhi\n-5 6 zlo zhi\n\nMasses\n\n1 1.0\n2 2.5 # heavy\n\nPairIJ Coeffs # lj/cut\n\n\
                   1 1 1.0 1.0 2.5\n1 2 0.5 1.1\n2 2 0.8 1.2 3.0\n\nAtoms # atomic\n\n7 1 0 0 0\n3 2 1.2 0 0 1 0 0\n\
                   5 1 0 1.2 0 0 -1 0\n\nVelocities\n\n3 0.1 0.2 0.3\n7 0 0 0\n5 1e-3 -2e-3 3E-3\n";
    write(fuzz, "lammps", "pair-ij.data", pair_ij.as_bytes());
}

fn checkpoint_seeds(fuzz: &Path) {
    let plain = small_lattice([2, 2, 2], None);
    write(fuzz, "checkpoint", "lattice", &Checkpoint::encode(&plain));
    let langevin = Langevin { temperature: 0.7, damping: 0.5, seed: 3 };
    write(fuzz, "checkpoint", "langevin", &Checkpoint::encode(&small_lattice([2, 2, 3], Some(langevin))));
    let mut two_types = plain.clone();
    two_types.params.masses.push(2.0);
    let coeff = two_types.params.pair_coeffs[0];
    two_types.params.pair_coeffs = vec![coeff; 4];
    two_types.params.shift = true;
    for (index, atom_type) in two_types.types.iter_mut().enumerate() {
        *atom_type = (index % 2) as u32;
    }
    write(fuzz, "checkpoint", "two-types", &Checkpoint::encode(&two_types));
    let mut few = plain;
    few.ids.truncate(2);
    few.types.truncate(2);
    few.positions.truncate(2);
    few.velocities.truncate(2);
    write(fuzz, "checkpoint", "two-atoms", &Checkpoint::encode(&few));
}
