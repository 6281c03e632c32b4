//! Container jobs end to end: a scheduler and workers as real processes, a real dockerd (started
//! by the harness when none answers) and an image built without a registry.

mod cluster;
mod docker;

use std::time::Duration;

use cluster::Cluster;
use docker::{Docker, IMAGE};
use serde_json::Value;

/// A cluster of one worker that runs containers against `docker`, with the test image pushed.
fn cluster_with_containers(dir: &std::path::Path, docker: &Docker) -> Cluster {
    let mut cluster = Cluster::start(dir, 0);
    cluster.add_worker_with(&[], &[("DOCKER_HOST", docker.host.as_str())]);
    cluster.wait_for("the worker", Duration::from_secs(30), |c| c.connected_workers() == 1);
    let pushed = cluster.run_with_env(&["image", "push", IMAGE], &[("DOCKER_HOST", docker.host.as_str())]);
    assert!(pushed.status.success(), "image push failed: {}", String::from_utf8_lossy(&pushed.stderr));
    cluster
}

/// Submits `workflow`, waits for every job to end, and returns the jobs' statuses by name.
fn run_workflow(cluster: &Cluster, workflow: &str) -> std::collections::BTreeMap<String, Value> {
    let path = cluster.write("containers.toml", workflow);
    let submitted = cluster.json(&["submit", path.to_str().unwrap()]);
    let ids: Vec<String> = submitted["jobs"].as_array().unwrap().iter().map(|j| j["id"].to_string()).collect();
    cluster.wait_for("the container jobs to end", Duration::from_secs(180), |c| {
        ids.iter().all(|id| matches!(c.job(id)["state"].as_str(), Some("completed" | "failed" | "cancelled")))
    });
    ids.iter()
        .map(|id| {
            let status = cluster.job(id);
            (status["job"].as_str().unwrap().to_string(), status)
        })
        .collect()
}

fn results_dir(cluster: &Cluster, job: &str) -> (std::path::PathBuf, Value) {
    let out = cluster.dir.join("results").join(job);
    let results = cluster.json(&["results", job, "--out", out.to_str().unwrap()]);
    (out.join(job).join("0"), results)
}

#[test]
fn containers_run_hardened_and_report_what_happened() {
    let Some(docker) = Docker::get() else { return };
    let dir = tempfile::tempdir().unwrap();
    let cluster = cluster_with_containers(dir.path(), &docker);
    cluster.write("data.txt", "forty-two\n");
    let job = |name: &str, argv: &str, extra: &str| {
        format!("[jobs.{name}]\nkind = \"container\"\nimage = \"{IMAGE}\"\nargv = {argv}\n{extra}\n")
    };
    let workflow = [
        "name = \"c\"\n".to_string(),
        // Exit code, stdout and stderr, an input under /in, an output from /out.
        job(
            "basic",
            r#"["sh", "-c", "cat /in/data.txt > answer.txt; echo out; echo err >&2; exit 3"]"#,
            "inputs = [\"data.txt\"]\noutputs = [\"answer.txt\"]",
        ),
        // Runs only after basic succeeds.
        job("after_basic", r#"["true"]"#, "after = [\"basic\"]"),
        // Only the loopback interface; the root file system is read-only; who we are.
        job(
            "sandbox",
            r#"["sh", "-c", "ls /sys/class/net > net.txt; touch /etc/x 2> root.txt; id -u > user.txt; touch /in/x 2>> root.txt; echo ok > /tmp/t && cat /tmp/t > tmp.txt; ln -s /etc/passwd passwd.txt; mkdir d; ln -s / d/root.txt"]"#,
            "outputs = [\"*.txt\"]",
        ),
        // A fork bomb meets the pids limit; the container still ends.
        job(
            "forks",
            r#"["sh", "-c", "(for i in $(seq 1 2000); do sleep 3 & done) 2> forks.err; echo contained > forks.txt"]"#,
            "outputs = [\"forks.*\"]",
        ),
        // 200 MiB in a 64 MiB container.
        job(
            "memory",
            r#"["dd", "if=/dev/zero", "of=/dev/null", "bs=200M", "count=1"]"#,
            "[jobs.memory.resources]\nmemory = \"64MiB\"",
        ),
        job("slow", r#"["sleep", "60"]"#, "timeout = 2"),
        // A busy loop for three seconds, timed by the kernel's account of the process.
        job(
            "busy",
            r#"["sh", "-c", "time timeout 3 sh -c 'while :; do :; done' 2> time.txt; true"]"#,
            "outputs = [\"time.txt\"]",
        ),
    ]
    .concat();
    let jobs = run_workflow(&cluster, &workflow);
    let state = |name: &str| jobs[name]["state"].as_str().unwrap().to_string();
    let failure = |name: &str| format!("{} {}", jobs[name]["reason"], jobs[name]["failures"]);

    // A container's exit code is part of its result: 3 fails the job (and the job after it), and
    // its output is kept.
    assert_eq!(state("basic"), "failed");
    assert!(failure("basic").contains("chunk 0 exited with code 3; its output is kept"), "{}", failure("basic"));
    assert_eq!(state("after_basic"), "failed");
    let (basic, results) = results_dir(&cluster, "c.basic");
    assert_eq!(results["exit_codes"][0]["exit_code"], 3);
    assert_eq!(std::fs::read_to_string(basic.join("answer.txt")).unwrap(), "forty-two\n");
    assert_eq!(std::fs::read_to_string(basic.join("stdout")).unwrap(), "out\n");
    assert_eq!(std::fs::read_to_string(basic.join("stderr")).unwrap(), "err\n");

    assert_eq!(state("sandbox"), "completed", "{}", failure("sandbox"));
    let (sandbox, _) = results_dir(&cluster, "c.sandbox");
    let read = |name: &str| std::fs::read_to_string(sandbox.join(name)).unwrap();
    assert_eq!(read("net.txt"), "lo\n", "the container has a network interface besides loopback");
    assert_eq!(read("user.txt"), "65534\n");
    assert_eq!(read("tmp.txt"), "ok\n");
    assert!(!sandbox.join("passwd.txt").exists(), "a link out of /out was collected");
    let root = read("root.txt");
    assert_eq!(root.matches("Read-only file system").count(), 2, "{root}");

    assert_eq!(state("forks"), "completed", "{}", failure("forks"));
    let (forks, _) = results_dir(&cluster, "c.forks");
    let refused = std::fs::read_to_string(forks.join("forks.err")).unwrap();
    assert_eq!(std::fs::read_to_string(forks.join("forks.txt")).unwrap(), "contained\n");
    assert!(refused.contains("can't fork") || refused.contains("Resource temporarily unavailable"), "{refused}");

    assert_eq!(state("memory"), "failed");
    assert!(failure("memory").contains("ran out of memory (limit 64 MiB)"), "{}", failure("memory"));
    assert_eq!(state("slow"), "failed");
    assert!(failure("slow").contains("timed out after 2s"), "{}", failure("slow"));

    assert_eq!(state("busy"), "completed", "{}", failure("busy"));
    let usage = cluster.json(&["status", "c.busy", "--usage"]);
    let cpu_ms = usage[0]["cpu_ms"].as_u64().expect("a container's CPU time is metered") as f64;
    // busybox time: "user\t0m 1.38s" and "sys\t0m 0.01s".
    let (busy, _) = results_dir(&cluster, "c.busy");
    let timed = std::fs::read_to_string(busy.join("time.txt")).unwrap();
    let seconds = |label: &str| -> f64 {
        let line = timed.lines().find(|l| l.starts_with(label)).unwrap_or_else(|| panic!("no {label} in {timed}"));
        let (minutes, rest) = line[label.len()..].trim().split_once('m').unwrap();
        minutes.parse::<f64>().unwrap() * 60.0 + rest.trim().trim_end_matches('s').parse::<f64>().unwrap()
    };
    let used_ms = (seconds("user") + seconds("sys")) * 1000.0;
    assert!(used_ms > 300.0, "the loop was not busy: {timed}");
    assert!(
        (cpu_ms - used_ms).abs() <= (0.15 * used_ms).max(150.0),
        "metered {cpu_ms} ms of CPU; the loop used {used_ms} ms"
    );
    let peak = usage[0]["peak_memory_bytes"].as_u64().expect("a container's peak memory is metered");
    assert!(peak > 0 && peak < 64 << 20, "peak memory {peak}");

    // The worker is still healthy: `upglobe run` gets the output, the files and the exit code.
    let out = dir.path().join("run-out");
    let data = dir.path().join("data.txt");
    let input = format!("{}:/in/d.txt", data.display());
    let script = "cat /in/d.txt; echo to-stderr >&2; tr a-z A-Z < /in/d.txt > up.txt; exit 7";
    let ran = cluster.run(&[
        "run",
        "--image",
        IMAGE,
        "--input",
        &input,
        "--collect",
        "/out",
        "--out",
        out.to_str().unwrap(),
        "--",
        "sh",
        "-c",
        script,
    ]);
    assert_eq!(ran.status.code(), Some(7), "{}", String::from_utf8_lossy(&ran.stderr));
    assert_eq!(String::from_utf8_lossy(&ran.stdout), "forty-two\n");
    assert!(String::from_utf8_lossy(&ran.stderr).contains("to-stderr"));
    let written: Vec<_> = glob::glob(&format!("{}/*/0/up.txt", out.display())).unwrap().flatten().collect();
    assert_eq!(written.len(), 1, "{written:?}");
    assert_eq!(std::fs::read_to_string(&written[0]).unwrap(), "FORTY-TWO\n");
    let refused = cluster.run(&["run", "--image", IMAGE, "--input", "x:/etc/passwd", "--", "true"]);
    assert!(String::from_utf8_lossy(&refused.stderr).contains("inputs are mounted under /in/"));
}

/// An image the worker's dockerd lacks travels as a dataset and is loaded by digest.
#[test]
fn an_image_is_shipped_to_a_worker_that_lacks_it() {
    let Some(docker) = Docker::get() else { return };
    let dir = tempfile::tempdir().unwrap();
    let nonce = format!("{:x}", std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos());
    let image = format!("upglobe-test/shipped:{nonce}");
    docker.build_image(&image, &[("etc/nonce", &nonce)]);
    let cluster = cluster_with_containers(dir.path(), &docker);
    let pushed = cluster.run_with_env(&["image", "push", &image], &[("DOCKER_HOST", docker.host.as_str())]);
    assert!(pushed.status.success(), "image push failed: {}", String::from_utf8_lossy(&pushed.stderr));
    // The only copy is now the scheduler's.
    assert!(docker.cli(&["image", "rm", &image]).status.success());
    let workflow = format!(
        "[jobs.shipped]\nkind = \"container\"\nimage = \"{image}\"\nargv = [\"sh\", \"-c\", \"cat /etc/nonce > nonce.txt\"]\noutputs = [\"nonce.txt\"]\n"
    );
    let jobs = run_workflow(&cluster, &workflow);
    assert_eq!(jobs["shipped"]["state"], "completed", "{} {}", jobs["shipped"]["reason"], jobs["shipped"]["failures"]);
    let (out, _) = results_dir(&cluster, "containers.shipped");
    assert_eq!(std::fs::read_to_string(out.join("nonce.txt")).unwrap(), nonce);
    let log = cluster.workers[0].log();
    assert!(log.contains("loading an image"), "the worker did not load the image: {log}");
}

/// A worker without a dockerd says so and takes no container jobs; a job waits with the reason.
#[test]
fn without_dockerd_a_worker_runs_no_containers_and_the_job_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::start(dir.path(), 0);
    cluster.add_worker_with(&[], &[("DOCKER_HOST", "unix:///nonexistent/docker.sock")]);
    cluster.wait_for("the worker", Duration::from_secs(30), |c| c.connected_workers() == 1);
    let image = format!("sha256:{}", "ab".repeat(32));
    let id = cluster.submit(&format!("[jobs.c]\nkind = \"container\"\nimage = \"{image}\"\nargv = [\"true\"]\n"));
    cluster.wait_for("the reason the job waits", Duration::from_secs(30), |c| {
        c.job(&id)["waiting"].as_str().is_some_and(|w| w.contains("no connected worker runs containers"))
    });
    let log = cluster.workers[0].log();
    assert_eq!(log.matches("no container jobs on this worker").count(), 1, "{log}");
    // A workflow naming an image nobody pushed is refused at submit, at the image's line.
    let path =
        cluster.write("unknown.toml", "[jobs.c]\nkind = \"container\"\nimage = \"nowhere:1\"\nargv = [\"true\"]\n");
    let output = cluster.run(&["submit", path.to_str().unwrap()]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("unknown.toml:3:9: job 'c': image 'nowhere:1' is not on the scheduler"), "{stderr}");
    assert!(stderr.contains("upglobe image push nowhere:1"), "{stderr}");
}

/// `upglobe run --image IMAGE -- sh -c SCRIPT` as a child process, and the lines of its output.
fn run_in_background(
    cluster: &Cluster,
    script: &str,
) -> (std::process::Child, std::io::Lines<std::io::BufReader<std::process::ChildStdout>>) {
    use std::io::BufRead;
    let mut run = std::process::Command::new(cluster::UPGLOBE)
        .args(["run", "--image", IMAGE, "--", "sh", "-c", script])
        .arg("--home")
        .arg(cluster.dir.join("home"))
        .env("UPGLOBE_CONNECT", &cluster.client_token)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let lines = std::io::BufReader::new(run.stdout.take().unwrap()).lines();
    (run, lines)
}

/// `upglobe run` shows the container's output while it runs, not only at the end.
#[test]
fn run_streams_the_output_live() {
    let Some(docker) = Docker::get() else { return };
    let dir = tempfile::tempdir().unwrap();
    let cluster = cluster_with_containers(dir.path(), &docker);
    let (mut run, mut lines) = run_in_background(&cluster, "echo first; sleep 10; echo second");
    assert_eq!(lines.next().unwrap().unwrap(), "first");
    // The line came while the container still ran.
    let statuses = cluster.json(&["status"]);
    let job = statuses.as_array().unwrap().iter().find(|j| j["job"] == "container").unwrap();
    assert_eq!(job["state"], "running", "{job}");
    assert_eq!(lines.next().unwrap().unwrap(), "second");
    assert!(lines.next().is_none(), "the output was printed twice");
    assert!(run.wait().unwrap().success());

    // A detached run's output, followed with `upglobe logs`.
    let detached =
        cluster.run(&["run", "--detach", "--image", IMAGE, "--", "sh", "-c", "echo detached; sleep 2; echo end"]);
    let job = String::from_utf8_lossy(&detached.stdout).trim().to_string();
    let followed = cluster.run(&["logs", &job, "--follow"]);
    assert!(followed.status.success(), "{}", String::from_utf8_lossy(&followed.stderr));
    assert_eq!(String::from_utf8_lossy(&followed.stdout), "detached\nend\n");
    let unknown = cluster.run(&["logs", "nosuch.job"]);
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("no job 'nosuch.job'"), "{unknown:?}");

    // Ctrl-C stops the job, as `docker run` stops its container.
    let (mut run, mut lines) = run_in_background(&cluster, "echo started; sleep 600");
    assert_eq!(lines.next().unwrap().unwrap(), "started");
    // SAFETY: signalling our own child.
    unsafe { libc::kill(run.id() as libc::pid_t, libc::SIGINT) };
    assert_eq!(run.wait().unwrap().code(), Some(130));
    let statuses = cluster.json(&["status"]);
    let cancelled = statuses.as_array().unwrap().iter().filter(|j| j["state"] == "cancelled").count();
    assert_eq!(cancelled, 1, "{statuses}");
}
