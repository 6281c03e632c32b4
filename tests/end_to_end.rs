//! End-to-end: a scheduler and workers as separate `upglobe` processes on loopback, with real
//! kill -9s. Run with `cargo nextest run -p upglobe-cli --test end_to_end`.

mod cluster;

use std::time::Duration;

use cluster::{Cluster, single_process_hash};

const MELT: &str = r#"
name = "e2e"

[jobs.melt]
kind = "md"
replicas = 2

[jobs.melt.system]
lattice = "fcc"
cells = [10, 10, 10]
density = 0.8442
temperature = 1.44
seed = 4242

[jobs.melt.potential]
cutoff = 2.5

[jobs.melt.run]
steps = 4000
chunk_steps = 500
thermo = 100
"#;

const MELT_ARGS: [&str; 6] = ["--cells", "10", "--temperature", "1.44", "--seed", "4242"];

fn wait_completed(cluster: &Cluster, job: &str) -> serde_json::Value {
    cluster.wait_for("the job to finish", Duration::from_secs(240), |c| {
        c.job(job)["state"] != "running" && c.job(job)["state"] != "waiting"
    });
    let status = cluster.job(job);
    assert_eq!(status["state"], "completed", "{status}");
    assert_eq!(status["chunks_verified"], status["chunks_total"]);
    status
}

fn final_hash(cluster: &Cluster, job: &str) -> String {
    let out = cluster.dir.join("results");
    let results = cluster.json(&["results", job, "--out", out.to_str().unwrap()]);
    let h5md = results["written"].as_str().unwrap();
    let hash = results["final_state_hash"].as_str().unwrap().to_string();
    check_h5md_readers(h5md, &hash);
    hash
}

/// h5dump and h5py must read what `results` writes.
fn check_h5md_readers(path: &str, final_hash: &str) {
    let dump = std::process::Command::new("h5dump").args(["-H", path]).output().expect("h5dump (Debian: hdf5-tools)");
    assert!(dump.status.success(), "h5dump failed: {}", String::from_utf8_lossy(&dump.stderr));
    assert!(String::from_utf8_lossy(&dump.stdout).contains("GROUP \"particles\""));
    let script = "import h5py, sys\n\
        f = h5py.File(sys.argv[1], 'r')\n\
        print(f['particles/all/position/value'].shape[0], f['particles/all/box_crossings/value'].shape[0], \
        f['observables/temperature/value'].shape[0], f['parameters/upglobe/state_hash'][-1].decode())\n";
    // Debian's python3-h5py lives with the system interpreter.
    let python = if std::path::Path::new("/usr/bin/python3").exists() { "/usr/bin/python3" } else { "python3" };
    let read = std::process::Command::new(python).args(["-c", script, path]).output().expect("python3 with h5py");
    let stdout = String::from_utf8_lossy(&read.stdout);
    assert!(read.status.success(), "h5py failed: {}", String::from_utf8_lossy(&read.stderr));
    let fields: Vec<&str> = stdout.split_whitespace().collect();
    assert_eq!(fields, ["9", "9", "41", final_hash], "frames (initial + 8 chunks), images, thermo lines, provenance");
}

#[test]
fn killing_a_worker_mid_chunk_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::start(dir.path(), 3);
    cluster.wait_for("three workers", Duration::from_secs(30), |c| c.connected_workers() == 3);
    let job = cluster.submit(MELT);

    // Freeze a worker that holds a chunk (SIGSTOP: it can neither finish nor heartbeat), wait until
    // the scheduler has given that chunk up, and only then kill it. A worker whose result got out
    // just before the freeze, and that was given nothing new, is thawed and another one tried.
    let victim = loop {
        let mut busy = None;
        cluster.wait_for("a running chunk", Duration::from_secs(60), |c| {
            busy = c
                .json(&["workers"])
                .as_array()
                .unwrap()
                .iter()
                .find(|w| w["running"].as_u64() > Some(0))
                .map(|w| (w["name"].as_str().unwrap().to_string(), w["id"].as_str().unwrap().to_string()));
            busy.is_some()
        });
        let (name, id) = busy.unwrap();
        let index = cluster.workers.iter().position(|w| w.name == name).unwrap();
        cluster.workers[index].signal(libc::SIGSTOP);
        let mut lost = false;
        cluster.wait_for("the frozen worker's chunk to be lost or done", Duration::from_secs(60), |c| {
            lost = failures_of(&c.job(&job), &id) > 0;
            let idle = c.json(&["workers"]).as_array().unwrap().iter().any(|w| w["id"] == id && w["running"] == 0);
            lost || idle
        });
        if lost {
            cluster.workers[index].kill_hard();
            break id;
        }
        cluster.workers[index].signal(libc::SIGCONT);
    };

    let status = wait_completed(&cluster, &job);
    assert!(failures_of(&status, &victim) > 0, "the lost chunk should be visible as a failure: {status}");
    assert_eq!(final_hash(&cluster, &job), single_process_hash(&MELT_ARGS, 4000));
}

#[test]
fn killing_the_scheduler_mid_run_loses_nothing_and_verifies_nothing_twice() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::start(dir.path(), 3);
    cluster.wait_for("three workers", Duration::from_secs(30), |c| c.connected_workers() == 3);
    let job = cluster.submit(MELT);
    cluster.wait_for("two verified chunks", Duration::from_secs(120), |c| {
        c.job(&job)["chunks_verified"].as_u64() >= Some(2)
    });

    cluster.scheduler.as_mut().unwrap().kill_hard();
    let database = dir.path().join("scheduler").join("scheduler.db");
    let before = verified_rows(&database, &job);
    assert!(before.len() >= 2, "{before:?}");
    cluster.start_scheduler();
    // The workers find the restarted scheduler by themselves (reconnect with backoff).
    cluster.wait_for("the workers to reconnect", Duration::from_secs(60), |c| c.connected_workers() == 3);
    let status = wait_completed(&cluster, &job);
    assert_eq!(status["chunks_total"], 8);
    assert_eq!(final_hash(&cluster, &job), single_process_hash(&MELT_ARGS, 4000));

    // Every chunk verified before the kill kept its record (the restarted scheduler continued from
    // them rather than verifying them again), and the chain holds each chunk exactly once.
    let after = verified_rows(&database, &job);
    let chunks: Vec<i64> = after.iter().map(|r| r.0).collect();
    assert_eq!(chunks, (0..8).collect::<Vec<_>>());
    for row in &before {
        assert!(after.contains(row), "chunk {} was verified again after the restart", row.0);
    }
    let scheduler = cluster.scheduler.as_mut().unwrap();
    assert!(scheduler.child.try_wait().unwrap().is_none(), "the restarted scheduler died: {}", scheduler.log());
}

/// (chunk, digest, agreeing workers) of every verified chunk of a job, by chunk.
fn verified_rows(database: &std::path::Path, job: &str) -> Vec<(i64, Vec<u8>, Vec<u8>)> {
    let database = rusqlite::Connection::open(database).unwrap();
    let mut statement =
        database.prepare("SELECT chunk, digest, agreeing FROM verified WHERE job = ?1 ORDER BY chunk").unwrap();
    statement
        .query_map([job.parse::<i64>().unwrap()], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

/// How many of a job's recorded failures name the worker with id `worker`.
fn failures_of(status: &serde_json::Value, worker: &str) -> usize {
    status["failures"].as_array().unwrap().iter().filter(|f| f["worker"] == worker).count()
}

#[test]
fn workers_with_bad_tokens_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::start(dir.path(), 0);
    let good = cluster.worker_token.clone();
    let (front, secret) = good.rsplit_once("secret=").unwrap();
    let wrong_secret = format!("{front}secret={}", "0".repeat(secret.len()));
    let (before_ca, after_ca) = good.split_once("ca=").unwrap();
    let wrong_ca = format!("{before_ca}ca={}{}", "f".repeat(64), &after_ca[64..]);
    let client_secret = cluster.client_token.rsplit_once("secret=").unwrap().1.to_string();
    let worker_role_client_secret = format!("{front}secret={client_secret}");
    let verifier_secret = cluster.verifier_token.rsplit_once("secret=").unwrap().1.to_string();
    let worker_role_verifier_secret = format!("{front}secret={verifier_secret}");

    for (token, expected) in [
        (wrong_secret, "secret is not valid"),
        (wrong_ca, "does not match the join token"),
        (worker_role_client_secret, "not a worker token (it is a client token)"),
        (worker_role_verifier_secret, "not a worker token (it is a verifier token)"),
    ] {
        cluster.worker_token = token;
        cluster.add_worker(&[]);
        let worker = cluster.workers.last_mut().unwrap();
        let status = wait_exit(&mut worker.child, Duration::from_secs(30));
        assert!(!status.success());
        assert!(worker.log().contains(expected), "expected '{expected}' in:\n{}", worker.log());
    }
    assert_eq!(cluster.connected_workers(), 0);

    // The command line refuses the wrong kind of token before connecting.
    let client = cluster.client_token.clone();
    let output = cluster.run(&["worker", "--join", &client]);
    assert!(String::from_utf8_lossy(&output.stderr).contains("--join needs the worker token"));
    let output = cluster.run(&["verify", "--join", &cluster.worker_token.clone()]);
    assert!(String::from_utf8_lossy(&output.stderr).contains("--join needs the verifier token"));
}

fn wait_exit(child: &mut std::process::Child, timeout: Duration) -> std::process::ExitStatus {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(std::time::Instant::now() < deadline, "the process did not exit");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn malformed_workflows_are_explained_with_file_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "unknown-key.toml",
            MELT.replace("chunk_steps = 500", "chunk_step = 500"),
            "unknown-key.toml:20:1: unknown key 'chunk_step'",
            "did you mean 'chunk_steps'?",
        ),
        (
            "divide.toml",
            MELT.replace("chunk_steps = 500", "chunk_steps = 300"),
            "divide.toml:20:15:",
            "does not divide",
        ),
        ("type.toml", MELT.replace("steps = 4000", "steps = \"many\""), "type.toml:19:9:", "expected an integer"),
        (
            "data.toml",
            MELT.replace(
                "lattice = \"fcc\"\ncells = [10, 10, 10]\ndensity = 0.8442\ntemperature = 1.44\nseed = 4242",
                "data = \"missing.data\"",
            ),
            "data.toml:9:8:",
            "missing.data",
        ),
        (
            "cycle.toml",
            format!(
                "{MELT}\n[jobs.a]\nkind = \"command\"\nargv = [\"true\"]\nafter = [\"b\"]\n\n[jobs.b]\nkind = \"command\"\nargv = [\"true\"]\nafter = [\"a\"]\n"
            ),
            "cycle.toml:",
            "cycle in 'after'",
        ),
    ];
    for (name, contents, location, message) in cases {
        let path = dir.path().join(name);
        std::fs::write(&path, contents).unwrap();
        let output = std::process::Command::new(cluster::UPGLOBE)
            .args(["workflow", "check"])
            .arg(&path)
            .current_dir(dir.path())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{name}: {stderr}");
        assert!(
            stderr.contains(location) && stderr.contains(message),
            "{name}: expected '{location}' and '{message}' in:\n{stderr}"
        );
    }
    // `submit` refuses the same files before contacting anyone.
    let output = std::process::Command::new(cluster::UPGLOBE)
        .args(["submit"])
        .arg(dir.path().join("divide.toml"))
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
}

#[test]
fn command_jobs_run_after_md_and_return_their_files() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::start(dir.path(), 0);
    cluster.add_worker(&["--allow-commands"]);
    cluster.wait_for("the worker", Duration::from_secs(30), |c| c.connected_workers() == 1);
    let workflow = r#"
name = "pipeline"

[jobs.small]
kind = "md"
replicas = 1
[jobs.small.system]
lattice = "fcc"
cells = 4
density = 0.8442
temperature = 1.0
seed = 1
[jobs.small.potential]
cutoff = 2.5
[jobs.small.run]
steps = 200
chunk_steps = 100

[jobs.report]
kind = "command"
after = ["small"]
argv = ["sh", "-c", "echo task {task} > out-{task}.txt"]
tasks = "1-3"
outputs = ["*.txt"]
"#;
    let path = cluster.write("pipeline.toml", workflow);
    let output = cluster.run(&["submit", path.to_str().unwrap(), "--watch"]);
    assert_eq!(output.status.code(), Some(0), "{}", String::from_utf8_lossy(&output.stderr));
    let out = dir.path().join("out");
    cluster.json(&["results", "pipeline.report", "--out", out.to_str().unwrap()]);
    for task in 1..=3 {
        let text =
            std::fs::read_to_string(out.join("pipeline.report").join(task.to_string()).join(format!("out-{task}.txt")))
                .unwrap();
        assert_eq!(text, format!("task {task}\n"));
    }
}

/// The point of determinism: a CPU worker and a wgpu worker (lavapipe in CI) are replicas of each
/// other, and every chunk verifies because their state hashes agree bit for bit.
#[test]
fn cpu_and_gpu_workers_agree_as_replicas() {
    if upglobe_kernels::gpu::adapters().is_empty() {
        assert!(
            std::env::var_os("UPGLOBE_REQUIRE_GPU").is_none(),
            "UPGLOBE_REQUIRE_GPU is set but no wgpu adapter exists"
        );
        eprintln!("no wgpu adapter: skipping (install mesa-vulkan-drivers)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::start(dir.path(), 0);
    cluster.add_worker(&["--device", "cpu"]);
    cluster.add_worker(&["--device", "wgpu"]);
    cluster.wait_for("two workers", Duration::from_secs(30), |c| c.connected_workers() == 2);
    let workflow = MELT
        .replace("cells = [10, 10, 10]", "cells = [5, 5, 5]")
        .replace("steps = 4000", "steps = 400")
        .replace("chunk_steps = 500", "chunk_steps = 100");
    let job = cluster.submit(&workflow);
    let status = wait_completed(&cluster, &job);
    assert_eq!(status["disagreements"], 0, "{status}");
    let workers = cluster.json(&["workers"]);
    let devices: Vec<&str> = workers.as_array().unwrap().iter().map(|w| w["device"].as_str().unwrap()).collect();
    assert!(
        devices.iter().any(|d| d.starts_with("wgpu")) && devices.iter().any(|d| d.starts_with("cpu")),
        "{devices:?}"
    );
    assert!(workers.as_array().unwrap().iter().all(|w| w["completed"] == 4), "both ran every chunk: {workers}");
    let args = ["--cells", "5", "--temperature", "1.44", "--seed", "4242"];
    assert_eq!(cluster.final_state_hash(&job), single_process_hash(&args, 400));
}

/// The README's first command, as a new user runs it (after the build).
#[test]
fn the_demo_runs_and_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("demo");
    let output = std::process::Command::new(cluster::UPGLOBE)
        .args(["demo", "--output", "json", "--out", out.to_str().unwrap()])
        .env_remove("UPGLOBE_HOME")
        .current_dir(dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "demo failed: {stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    let summary: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(summary["final_state_hash"], summary["single_process_state_hash"]);
    assert_eq!(summary["chunks"].as_array().unwrap().len(), 6);
    assert!(summary["chunks"].as_array().unwrap().iter().all(|c| c["agreeing"].as_array().unwrap().len() == 2));
    assert!(out.join("lj-melt.melt.h5md").exists());
}

/// A million array tasks: the submission is a range (one pair on the wire), the scheduler opens a
/// window of them, `status` reports the job as it runs, and results come back in pages.
#[test]
fn a_million_task_array_submits_runs_and_reports_status() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::start(dir.path(), 0);
    cluster.add_worker(&["--allow-commands"]);
    let workflow = "name = \"million\"\n\n[jobs.sweep]\nkind = \"command\"\nargv = [\"true\", \"{task}\"]\ntasks = \"1-1000000\"\n";
    let job = cluster.submit(workflow);
    cluster.wait_for("a hundred verified tasks", Duration::from_secs(120), |c| {
        c.job(&job)["chunks_verified"].as_u64() >= Some(100)
    });
    let status = cluster.job(&job);
    assert_eq!(status["chunks_total"], 1_000_000);
    assert_eq!(status["state"], "running");
    let cancelled = cluster.run(&["cancel", &job]);
    assert!(cancelled.status.success(), "{}", String::from_utf8_lossy(&cancelled.stderr));
    let out = cluster.dir.join("results");
    let results = cluster.json(&["results", &job, "--out", out.to_str().unwrap()]);
    let verified = results["chunks_verified"].as_u64().unwrap();
    let written = std::fs::read_dir(out.join("million.sweep")).unwrap().count() as u64;
    assert_eq!(written, verified, "one directory per verified task");
    assert!(out.join("million.sweep/1/stdout").exists());
}

/// A command's usage is metered and signed: the CPU time of a CPU-bound loop matches what the
/// same loop takes here, and the bytes in and out are the input's and the outputs' sizes.
#[test]
fn a_command_is_metered_cpu_memory_and_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::start(dir.path(), 0);
    cluster.add_worker(&["--allow-commands"]);
    let script = "i=0; while [ $i -lt 400000 ]; do i=$((i+1)); done; head -c 3000000 /dev/zero > out.bin";
    std::fs::write(dir.path().join("in.bin"), vec![7u8; 1_000_000]).unwrap();
    let workflow = format!(
        "name = \"meter\"\n[jobs.loop]\nkind = \"command\"\nargv = [\"sh\", \"-c\", \"{script}\"]\n\
         inputs = [\"in.bin\"]\noutputs = [\"out.bin\"]\n"
    );
    let job = cluster.submit(&workflow);
    cluster.wait_for("the job", Duration::from_secs(120), |c| c.job(&job)["state"] == "completed");

    // The same loop here, by the CPU time the kernel counts for it (not wall time, which other
    // tests running beside this one would stretch).
    let children_cpu_ms = || {
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: `usage` is a writable rusage.
        unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage) };
        let ms = |t: libc::timeval| t.tv_sec as u64 * 1000 + t.tv_usec as u64 / 1000;
        ms(usage.ru_utime) + ms(usage.ru_stime)
    };
    let before = children_cpu_ms();
    let local = std::process::Command::new("sh").args(["-c", script]).current_dir(dir.path()).status().unwrap();
    assert!(local.success());
    let local_ms = children_cpu_ms() - before;

    let rows = cluster.json(&["status", &job, "--usage"]);
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), 1, "{rows:?}");
    let row = &rows[0];
    let cpu_ms = row["cpu_ms"].as_u64().unwrap();
    assert!(cpu_ms * 2 >= local_ms && cpu_ms <= local_ms * 2 + 200, "cpu {cpu_ms} ms against {local_ms} ms here");
    assert!(cpu_ms <= row["elapsed_ms"].as_u64().unwrap() + 50, "{row}");
    assert!(row["peak_memory_bytes"].as_u64().unwrap() > 0, "{row}");
    assert!(row["bytes_in"].as_u64().unwrap() >= 1_000_000, "{row}");
    assert!(row["bytes_out"].as_u64().unwrap() >= 3_000_000, "{row}");
    let text = cluster.run(&["status", &job, "--usage"]);
    assert!(String::from_utf8_lossy(&text.stdout).contains("1 signed results"), "{text:?}");
}
