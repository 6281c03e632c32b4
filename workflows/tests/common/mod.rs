//! Helpers shared by the integration tests.

#![allow(dead_code)]

use std::path::Path;

use upglobe_workflows::{Workflow, parse};

/// A valid one-job workflow; tests change one thing in it. Line numbers matter to the assertions:
/// 3 `[jobs.melt]`, 6 `[jobs.melt.system]`, 13 `[jobs.melt.potential]`, 16 `[jobs.melt.run]`.
pub const MELT: &str = r#"name = "t"

[jobs.melt]
kind = "md"

[jobs.melt.system]
lattice = "fcc"
cells = 4
density = 0.8442
temperature = 1.44
seed = 1

[jobs.melt.potential]
cutoff = 2.5

[jobs.melt.run]
steps = 100
chunk_steps = 50
"#;

/// A valid command job to append to `MELT`; its lines are 19 to 23.
pub const REPORT: &str = r#"[jobs.report]
kind = "command"
after = ["melt"]
argv = ["sh", "report.sh", "{task}"]
tasks = [1, 2]
"#;

pub fn parse_in(base_dir: &Path, source: &str) -> Result<Workflow, Vec<String>> {
    parse("w.toml", base_dir, source).map_err(|diagnostics| diagnostics.iter().map(|d| d.to_string()).collect())
}

/// Every diagnostic of a source that must fail, as printed.
pub fn errors(source: &str) -> Vec<String> {
    match parse_in(Path::new("."), source) {
        Ok(_) => panic!("accepted:\n{source}"),
        Err(errors) => errors,
    }
}

/// The one diagnostic of a source that must fail with exactly one.
pub fn error(source: &str) -> String {
    let errors = errors(source);
    assert_eq!(errors.len(), 1, "expected one diagnostic, got:\n{}", errors.join("\n"));
    errors.into_iter().next().unwrap()
}

/// `MELT` with one piece of text replaced, which must be there.
pub fn melt_with(from: &str, to: &str) -> String {
    assert!(MELT.contains(from), "'{from}' is not in MELT");
    MELT.replacen(from, to, 1)
}

/// A valid command job with a tolerance rule; tests change one thing in it. Lines: 1 `[jobs.summary]`,
/// 4 `replicas`, 5 `outputs`, 7 `[jobs.summary.verify]`, 8 `policy`, 10 `[[jobs.summary.verify.compare]]`,
/// 11 `file`, 12 `columns`, 13 `relative`.
pub const SUMMARY: &str = r#"[jobs.summary]
kind = "command"
argv = ["sh", "summary.sh"]
replicas = 2
outputs = ["energies.txt", "summary-*.txt", "traj.h5"]

[jobs.summary.verify]
policy = "tolerance"

[[jobs.summary.verify.compare]]
file = "energies.txt"
columns = [2, 3]
relative = 1e-6
"#;

/// `SUMMARY` with one piece of text replaced, which must be there.
pub fn summary_with(from: &str, to: &str) -> String {
    assert!(SUMMARY.contains(from), "'{from}' is not in SUMMARY");
    SUMMARY.replacen(from, to, 1)
}
