//! Datasets end to end, real processes on loopback: a large input put once, fetched by a worker in
//! verified slices; the worker killed half-way resumes where it was and the scheduler sends little
//! twice.

mod cluster;

use std::time::Duration;

use cluster::Cluster;

/// Larger than a stream's and a connection's flow-control windows (16 and 64 MiB).
const SIZE: usize = 160 << 20;

fn write_input(path: &std::path::Path) {
    use std::io::Write;
    let mut file = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    for _ in 0..SIZE / 8 {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        file.write_all(&state.to_le_bytes()).unwrap();
    }
    file.flush().unwrap();
}

fn sha256(path: &std::path::Path) -> String {
    let output = std::process::Command::new("sha256sum").arg(path).output().expect("sha256sum (coreutils)");
    String::from_utf8_lossy(&output.stdout).split_whitespace().next().unwrap().to_string()
}

/// The checksum a single-task `sha256sum … > sum.txt` job wrote, from its results (task 0's
/// directory under WORKFLOW.JOB).
fn summed_by(cluster: &Cluster, job: &str, stem: &str) -> String {
    let out = cluster.dir.join("results");
    cluster.json(&["results", job, "--out", out.to_str().unwrap()]);
    let path = out.join(stem).join("0").join("sum.txt");
    let summed = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    summed.split_whitespace().next().unwrap().to_string()
}

/// Sums the `bytes=N` of the scheduler's log lines about serving slices (finished or cut off).
fn served_bytes(log: &str) -> u64 {
    log.lines()
        .filter(|line| line.contains("slices"))
        .filter_map(|line| line.split_whitespace().find_map(|field| field.strip_prefix("bytes=")))
        .map(|n| n.parse::<u64>().unwrap())
        .sum()
}

#[test]
fn a_worker_killed_mid_download_resumes_and_is_sent_little_twice() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::start_with_env(dir.path(), 0, &[], &[("RUST_LOG", "info,upglobe_datasets=debug")]);
    let input = dir.path().join("big.bin");
    write_input(&input);
    let put = cluster.json(&["dataset", "put", input.to_str().unwrap()]);
    let hash = put[0]["hash"].as_str().unwrap().to_string();
    assert_eq!(put[0]["size"], SIZE as u64);
    // A second put of the same bytes sends nothing: the scheduler says it has them.
    let again = cluster.json(&["dataset", "put", input.to_str().unwrap(), "--name", "again"]);
    assert_eq!(again[0]["hash"], hash.as_str());
    assert_eq!(served_bytes(&cluster.scheduler.as_ref().unwrap().log()), 0, "nothing downloaded yet");

    // Slow enough to be killed part-way with seconds to spare: 20 MiB/s, progress logged every 2 s.
    cluster.add_worker(&["--allow-commands", "--download-rate", "20MiB"]);
    let workflow = format!(
        "name = \"sum\"\n[jobs.sum]\nkind = \"command\"\nargv = [\"sh\", \"-c\", \"sha256sum big.bin > sum.txt\"]\n\
         inputs = [{{ name = \"big.bin\", dataset = \"{hash}\" }}]\noutputs = [\"sum.txt\"]\n"
    );
    let job = cluster.submit(&workflow);
    let fetching = |cluster: &Cluster| {
        let log = cluster.workers[0].log();
        log.lines().filter(|l| l.contains("fetching")).any(|line| {
            let verified = line.split_whitespace().find_map(|f| f.strip_prefix("verified="));
            verified.and_then(|v| v.parse::<u64>().ok()).is_some_and(|v| v > SIZE as u64 / 4)
        })
    };
    cluster.wait_for("a quarter of the input to arrive", Duration::from_secs(60), fetching);
    cluster.workers[0].kill_hard();

    cluster.restart_worker(0, &["--allow-commands"]);
    cluster.wait_for("the job to complete", Duration::from_secs(120), |c| c.job(&job)["state"] == "completed");
    let log = cluster.workers[0].log();
    let fetched = log.lines().find(|l| l.contains("fetched")).unwrap_or_else(|| panic!("no fetch logged:\n{log}"));
    let field = |name: &str| -> u64 {
        let prefix = format!("{name}=");
        fetched.split_whitespace().find_map(|f| f.strip_prefix(prefix.as_str())).unwrap().parse().unwrap()
    };
    assert!(log.contains("resuming a download"), "{log}");
    assert!(field("resumed") > SIZE as u64 / 4, "{fetched}");

    // What the scheduler sent in all (both runs, hash pairs included) exceeds the input by less than
    // a tenth: what the first run had verified was not sent again.
    let served = served_bytes(&cluster.scheduler.as_ref().unwrap().log());
    assert!(served >= SIZE as u64, "{served}");
    assert!(served - (SIZE as u64) < SIZE as u64 / 10, "sent {served} bytes for {SIZE}");

    // The command read the very bytes that were put.
    assert_eq!(summed_by(&cluster, &job, "sum.sum"), sha256(&input));
}

/// Each worker fetches an input the other already holds: the scheduler names the holder with the
/// assignment, and the download takes slices from both.
#[test]
fn two_workers_fetch_inputs_from_each_other() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::start(dir.path(), 0);
    let mut hashes = Vec::new();
    for (k, name) in ["one.bin", "two.bin"].iter().enumerate() {
        let path = dir.path().join(name);
        let bytes: Vec<u8> = (0..24usize << 20).map(|i| (i.wrapping_mul(31 + k) >> 3) as u8).collect();
        std::fs::write(&path, bytes).unwrap();
        let put = cluster.json(&["dataset", "put", path.to_str().unwrap()]);
        hashes.push(put[0]["hash"].as_str().unwrap().to_string());
    }
    cluster.add_worker(&["--allow-commands"]);
    cluster.add_worker(&["--allow-commands"]);
    cluster.wait_for("two workers", Duration::from_secs(30), |c| c.connected_workers() == 2);
    // Each job goes to the worker that waited longest: one, two, then two on the first worker and
    // one on the second, so each fetches what the other already holds.
    for (k, input) in [0, 1, 1, 0].into_iter().enumerate() {
        let workflow = format!(
            "name = \"count{k}\"\n[jobs.count]\nkind = \"command\"\nargv = [\"sh\", \"-c\", \"wc -c < in.bin > n.txt\"]\n\
             inputs = [{{ name = \"in.bin\", dataset = \"{}\" }}]\noutputs = [\"n.txt\"]\n",
            hashes[input]
        );
        let job = cluster.submit(&workflow);
        cluster.wait_for("the job to complete", Duration::from_secs(60), |c| c.job(&job)["state"] == "completed");
    }
    for worker in &cluster.workers {
        let log = worker.log();
        let from_peer = log.lines().filter(|l| l.contains("fetched")).any(|line| {
            let sources = line.split_whitespace().find_map(|f| f.strip_prefix("sources=")).unwrap_or("");
            sources.split(',').any(|s| s.starts_with("peer ") || s.contains("peer"))
                && sources.split(',').filter(|s| s.contains("peer")).any(|s| !s.ends_with(":0"))
        });
        let all: Vec<String> = cluster.workers.iter().map(|w| w.log()).collect();
        assert!(from_peer, "{} fetched nothing from a peer:\n{}", worker.name, all.join("\n"));
    }
}

/// A worker that serves its peers rotten bytes (the `cheat` feature's `corrupt-peers`) is caught
/// at the first slice: dropped for the download, its pieces fetched from the scheduler, and the
/// command reads the true bytes. Without the feature the cheating worker refuses to start, so
/// this test fails rather than passes vacuously.
#[test]
fn a_peer_serving_corrupt_bytes_is_dropped_and_the_input_arrives_whole() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::start(dir.path(), 0);
    let input = dir.path().join("in.bin");
    let bytes: Vec<u8> = (0..24usize << 20).map(|i| (i.wrapping_mul(2_654_435_761) >> 7) as u8).collect();
    std::fs::write(&input, &bytes).unwrap();
    let hash = cluster.json(&["dataset", "put", input.to_str().unwrap()])[0]["hash"].as_str().unwrap().to_string();
    let workflow = |k: usize| {
        format!(
            "name = \"sum{k}\"\n[jobs.sum]\nkind = \"command\"\nargv = [\"sh\", \"-c\", \"sha256sum in.bin > sum.txt\"]\n\
             inputs = [{{ name = \"in.bin\", dataset = \"{hash}\" }}]\noutputs = [\"sum.txt\"]\n"
        )
    };
    // The rotten worker runs first, alone, so it holds the input.
    cluster.add_worker_with(&["--allow-commands"], &[("UPGLOBE_CHEAT", "corrupt-peers")]);
    let first = cluster.submit(&workflow(0));
    cluster.wait_for("the first job", Duration::from_secs(60), |c| c.job(&first)["state"] == "completed");
    // The honest worker joins; the next job goes to it (it waited longest) with the rotten one named
    // as a source.
    cluster.add_worker(&["--allow-commands"]);
    cluster.wait_for("two workers", Duration::from_secs(30), |c| c.connected_workers() == 2);
    let second = cluster.submit(&workflow(1));
    cluster.wait_for("the second job", Duration::from_secs(60), |c| c.job(&second)["state"] == "completed");

    // One frame's worth of the input, fetched and verified alone by the command line.
    let frame = dir.path().join("frame.bin");
    cluster.json(&["dataset", "get", &hash, "--range", "1000000..1100000", "--out", frame.to_str().unwrap()]);
    assert_eq!(std::fs::read(&frame).unwrap(), bytes[1_000_000..1_100_000]);

    let honest = cluster.workers[1].log();
    assert!(honest.contains("source dropped for this download"), "{honest}");
    assert!(honest.contains("does not verify against its hash"), "{honest}");
    assert!(cluster.workers[0].log().contains("serving a peer rotten bytes"), "the cheat was never asked");
    assert_eq!(summed_by(&cluster, &second, "sum1.sum"), sha256(&input));
}

/// A directory is put as its files and a manifest, comes back whole, and `rm` of it leaves a file
/// with the same bytes that was put by itself.
#[test]
fn a_directory_round_trips_and_rm_forgets_only_what_it_names() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::start(dir.path(), 0);
    let tree = dir.path().join("inputs");
    std::fs::create_dir_all(tree.join("sub")).unwrap();
    std::fs::write(tree.join("a.dat"), vec![3u8; 200_000]).unwrap();
    std::fs::write(tree.join("sub/b.txt"), "hello\n").unwrap();
    let alone = dir.path().join("b.txt");
    std::fs::write(&alone, "hello\n").unwrap();

    let put = cluster.json(&["dataset", "put", tree.to_str().unwrap()]);
    let names: Vec<&str> = put.as_array().unwrap().iter().map(|d| d["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["inputs", "inputs/a.dat", "inputs/sub/b.txt"]);
    assert_eq!(put[0]["kind"], "directory");
    let single = cluster.json(&["dataset", "put", alone.to_str().unwrap()]);
    assert_eq!(single[0]["hash"], put[2]["hash"], "the same bytes, another name");

    let back = dir.path().join("back");
    cluster.json(&["dataset", "get", "inputs", "--out", back.to_str().unwrap()]);
    assert_eq!(std::fs::read(back.join("a.dat")).unwrap(), vec![3u8; 200_000]);
    assert_eq!(std::fs::read_to_string(back.join("sub/b.txt")).unwrap(), "hello\n");

    let removed = cluster.json(&["dataset", "rm", "inputs"]);
    assert_eq!(removed.as_array().unwrap().len(), 3, "{removed}");
    let left = cluster.json(&["dataset", "ls"]);
    let left: Vec<&str> = left.as_array().unwrap().iter().map(|d| d["name"].as_str().unwrap()).collect();
    assert_eq!(left, ["b.txt"]);
    let out = dir.path().join("b-again.txt");
    cluster.json(&["dataset", "get", "b.txt", "--out", out.to_str().unwrap()]);
    assert_eq!(std::fs::read_to_string(out).unwrap(), "hello\n");
    let missing = cluster.run(&["dataset", "get", "inputs", "--out", back.to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&missing.stderr).contains("no dataset 'inputs'"), "{missing:?}");
}
