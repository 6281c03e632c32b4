//! Replays the fuzz corpus and the inputs of fixed crashes through the fuzz targets' bodies, so the
//! normal test run checks them without a nightly toolchain or cargo-fuzz.
//!
//! `fuzz/corpus/TARGET` is what the fuzzer kept (minimised); `fuzz/regressions/TARGET` holds inputs
//! that once crashed a target, named for what they broke. Inputs of crashes not fixed yet wait in
//! `fuzz/pending/TARGET`, which is not replayed.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("harness lives in fuzz/").to_path_buf()
}

fn files_in(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut files: Vec<PathBuf> = entries.map(|entry| entry.unwrap().path()).filter(|path| path.is_file()).collect();
    files.sort();
    files
}

/// Runs every input of a target; fails naming each input that panicked.
fn replay(target: &str, body: fn(&[u8])) {
    let corpus = files_in(&fuzz_dir().join("corpus").join(target));
    // An empty corpus would make this test pass while checking nothing.
    assert!(!corpus.is_empty(), "fuzz/corpus/{target} is empty or missing");
    let regressions = files_in(&fuzz_dir().join("regressions").join(target));
    let mut failed = Vec::new();
    for path in corpus.iter().chain(&regressions) {
        let bytes = std::fs::read(path).unwrap_or_else(|error| panic!("cannot read {}: {error}", path.display()));
        if catch_unwind(AssertUnwindSafe(|| body(&bytes))).is_err() {
            failed.push(path.display().to_string());
        }
    }
    assert!(
        failed.is_empty(),
        "{} of {} inputs panicked:\n{}",
        failed.len(),
        corpus.len() + regressions.len(),
        failed.join("\n")
    );
}

#[test]
fn workflow_corpus() {
    replay("workflow", upglobe_fuzz_harness::workflow);
}

#[test]
fn frame_corpus() {
    replay("frame", upglobe_fuzz_harness::frame);
}

#[test]
fn lammps_corpus() {
    replay("lammps", upglobe_fuzz_harness::lammps);
}

#[test]
fn checkpoint_corpus() {
    replay("checkpoint", upglobe_fuzz_harness::checkpoint);
}
