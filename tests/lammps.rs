//! A real program as a checkpointed job: the shipped `workflows/examples/lammps-lj.toml` runs
//! LAMMPS's in.lj melt with Debian's `lmp` in 5 chunks through write_restart / read_restart, on a
//! scheduler and two workers as separate processes, every chunk on both workers. The thermo of the
//! chunks must be the thermo of the same input run in one go. Its container variant,
//! `lammps-lj-container.toml`, runs the same scripts in an image built from the host's `lmp` (see
//! `Docker::lammps_image`), pinned by its archive. Run with
//! `cargo nextest run -p upglobe-cli --features cheat --test lammps`.

mod cluster;
mod docker;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use cluster::Cluster;
use docker::Docker;

const CHUNKS: u64 = 5;
const STEPS: u64 = 250;
const THERMO_EVERY: u64 = 50;

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../workflows/examples")
}

/// Whether `lmp` runs; under CI its absence is a failure, not a skip.
fn has_lammps() -> bool {
    let found = Command::new("lmp").arg("-h").output().is_ok_and(|o| o.status.success());
    if !found && std::env::var_os("CI").is_some() {
        panic!("CI is set but `lmp` does not run (Debian: apt install lammps; .ci/run installs it)");
    }
    if !found {
        eprintln!("skipping: `lmp` is not on the PATH (Debian: apt install lammps)");
    }
    found
}

/// The numbers of a `thermo.dat` that thermo.lj's `fix print` wrote, by step: temp, pe, ke,
/// etotal, press.
fn thermo(path: &Path) -> BTreeMap<u64, Vec<f64>> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut lines = BTreeMap::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let mut fields = line.split_whitespace();
        let step: u64 = fields.next().unwrap().parse().unwrap();
        let values: Vec<f64> = fields.map(|f| f.parse().unwrap_or_else(|e| panic!("{line:?}: {e}"))).collect();
        assert_eq!(values.len(), 5, "{}: {line:?}", path.display());
        assert!(lines.insert(step, values).is_none(), "{}: step {step} twice", path.display());
    }
    lines
}

/// The same input run by the same binary in one go (no restart), in a directory of its own.
fn one_go(dir: &Path) -> BTreeMap<u64, Vec<f64>> {
    std::fs::create_dir_all(dir).unwrap();
    for file in ["in.lj", "thermo.lj"] {
        std::fs::copy(examples().join(file), dir.join(file)).unwrap();
    }
    let output = Command::new("lmp")
        .args(["-screen", "none", "-log", "log.lammps", "-var", "chunks", "1", "-in", "in.lj"])
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "lmp in one go: {output:?}\n{}",
        std::fs::read_to_string(dir.join("log.lammps")).unwrap_or_default()
    );
    thermo(&dir.join("thermo.dat"))
}

#[test]
fn lammps_in_checkpointed_chunks_matches_one_run_and_every_chunk_is_agreed_by_two_workers() {
    if !has_lammps() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::start(dir.path(), 0);
    cluster.add_worker(&["--allow-commands"]);
    cluster.add_worker(&["--allow-commands"]);
    cluster.wait_for("two workers", Duration::from_secs(30), |c| c.connected_workers() == 2);
    let chunks = run_melt(&cluster, &examples().join("lammps-lj.toml"));
    compare_with_one_go(&chunks, &dir.path().join("one-go"));
}

/// The container variant: the same scripts run by `lmp` in an image the harness builds from the
/// host's, pushed to the scheduler and pinned by the submission; workers have a dockerd and no
/// --allow-commands. Both replicas of every chunk ran the pushed image, and the thermo is still the
/// host's one-go run, bit for bit.
#[test]
fn lammps_in_a_pinned_image_matches_one_run_and_every_chunk_is_agreed_by_two_workers() {
    if !has_lammps() {
        return;
    }
    let Some(docker) = Docker::get() else { return };
    let image = docker.lammps_image();
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::start(dir.path(), 0);
    for _ in 0..2 {
        cluster.add_worker_with(&[], &[("DOCKER_HOST", docker.host.as_str())]);
    }
    cluster.wait_for("two workers", Duration::from_secs(30), |c| c.connected_workers() == 2);
    let pushed = cluster.run_with_env(&["image", "push", &image, "--output", "json"], &[("DOCKER_HOST", &docker.host)]);
    assert!(pushed.status.success(), "image push {image} failed: {}", String::from_utf8_lossy(&pushed.stderr));
    let pushed: serde_json::Value = serde_json::from_slice(&pushed.stdout).unwrap();
    let (id, archive) = (pushed["id"].as_str().unwrap(), pushed["archive"].as_str().unwrap());

    // The shipped workflow names its image "lammps"; here it names the harness's.
    let source = std::fs::read_to_string(examples().join("lammps-lj-container.toml")).unwrap();
    let named = "image = \"lammps\"\n";
    assert_eq!(source.matches(named).count(), 1, "lammps-lj-container.toml: no line {named:?}");
    let workflow = cluster.write("lammps-lj-container.toml", &source.replace(named, &format!("image = \"{image}\"\n")));
    for file in ["in.lj", "resume.lj", "thermo.lj"] {
        std::fs::copy(examples().join(file), dir.path().join(file)).unwrap();
    }
    let chunks = run_melt(&cluster, &workflow);

    // Each worker ran every chunk in the image the archive it was sent names: the pushed one.
    for worker in &cluster.workers {
        let log = worker.log();
        let ran: Vec<(&str, &str)> = log
            .lines()
            .filter(|line| line.contains("running a container"))
            .map(|line| (field(line, "id"), field(line, "archive")))
            .collect();
        assert_eq!(ran, vec![(id, archive); CHUNKS as usize], "{}: {log}", worker.name);
    }
    compare_with_one_go(&chunks, &dir.path().join("one-go"));
}

/// The value of `name=value` in a log line.
fn field<'a>(line: &'a str, name: &str) -> &'a str {
    let prefix = format!("{name}=");
    line.split_whitespace()
        .find_map(|token| token.strip_prefix(prefix.as_str()))
        .unwrap_or_else(|| panic!("no {name}= in {line:?}"))
}

/// Submits the melt, waits for it, and checks that it completed with every chunk accepted on a
/// quorum of 2 and each of the two workers running every chunk; where `upglobe results` put the
/// chunks' files.
fn run_melt(cluster: &Cluster, workflow: &Path) -> PathBuf {
    let submitted = cluster.json(&["submit", workflow.to_str().unwrap()]);
    let job = submitted["jobs"][0]["id"].to_string();
    cluster.wait_for("the LAMMPS job to finish", Duration::from_secs(300), |c| {
        !matches!(c.job(&job)["state"].as_str(), Some("running" | "waiting"))
    });
    let status = cluster.job(&job);
    assert_eq!(status["state"], "completed", "{status}");
    assert_eq!((status["chunks_verified"].as_u64(), status["chunks_total"].as_u64()), (Some(CHUNKS), Some(CHUNKS)));
    assert_eq!(status["disagreements"], 0, "{status}");

    let verification = cluster.json(&["status", &job, "--verification"]);
    let accepted: Vec<(u64, String)> = verification["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "Accepted")
        .map(|e| (e["chunk"].as_u64().unwrap(), e["how"].as_str().unwrap().to_string()))
        .collect();
    let expected: Vec<(u64, String)> = (0..CHUNKS).map(|k| (k, "quorum of 2".to_string())).collect();
    assert_eq!(accepted, expected, "{verification}");
    let workers = cluster.json(&["workers"]);
    for worker in workers.as_array().unwrap() {
        assert_eq!(worker["completed"].as_u64(), Some(CHUNKS), "{workers}");
    }

    let out = cluster.dir.join("results");
    cluster.json(&["results", &job, "--out", out.to_str().unwrap()]);
    let name = format!("{}.{}", status["workflow"].as_str().unwrap(), status["job"].as_str().unwrap());
    out.join(name)
}

/// Compares the thermo of the chunks (under `chunks`, as `upglobe results` wrote them) with the
/// host's `lmp` running the same input in one go in `one_go_dir`: equal to the last bit.
fn compare_with_one_go(chunks: &Path, one_go_dir: &Path) {
    let reference = one_go(one_go_dir);
    let steps: Vec<u64> = (0..=STEPS / THERMO_EVERY).map(|k| k * THERMO_EVERY).collect();
    assert_eq!(reference.keys().copied().collect::<Vec<_>>(), steps);
    let mut compared = 0;
    let mut largest_difference: f64 = 0.0;
    for chunk in 0..CHUNKS {
        let files = chunks.join(chunk.to_string());
        // Each chunk prints its first and its last step (so the last chunk has step 250), and
        // LAMMPS said nothing on stdout or stderr: outputs are the same bytes on every replica.
        let printed = thermo(&files.join("thermo.dat"));
        let first = chunk * STEPS / CHUNKS;
        assert_eq!(printed.keys().copied().collect::<Vec<_>>(), [first, first + STEPS / CHUNKS], "chunk {chunk}");
        assert!(std::fs::metadata(files.join("lj.restart")).unwrap().len() > 1_000_000, "chunk {chunk}");
        for stream in ["stdout", "stderr"] {
            assert_eq!(std::fs::read(files.join(stream)).unwrap(), b"", "chunk {chunk} {stream}");
        }
        for (step, values) in &printed {
            for (value, one) in values.iter().zip(&reference[step]) {
                largest_difference = largest_difference.max((value - one).abs() / one.abs().max(1e-300));
            }
            compared += 1;
        }
    }
    eprintln!(
        "compared {compared} thermo lines; largest relative difference to the one-go run: {largest_difference:e}"
    );
    // One rank, the same binary, and neighbour lists rebuilt at the same steps (see in.lj): the
    // restarted run is the one-go run, bit for bit.
    assert_eq!(largest_difference, 0.0, "the chunked run differs from the one-go run");
    assert_eq!(compared, 2 * CHUNKS);
}
