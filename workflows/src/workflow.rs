//! The top level of a workflow file: its name and its jobs.

use std::path::{Path, PathBuf};

use upglobe_protocol::messages::limits::JOBS_PER_WORKFLOW_MAX;

use crate::diagnostic::Reporter;
use crate::document::{Table, Value};
use crate::fields::{Field, closest, string_value};
use crate::{Job, Workflow, graph, job};

const KEYS: &[&str] = &["name", "jobs", "payment"];
const NO_JOBS_HINT: &str = "add a job: a [jobs.NAME] table with kind = \"md\" or kind = \"command\"";

pub(crate) fn read(
    reporter: &mut Reporter,
    root: &Table,
    path_label: &str,
    base_dir: &Path,
    source: &str,
) -> Option<Workflow> {
    check_top_level_keys(reporter, root);
    let name = name(reporter, root, path_label);
    let jobs = jobs(reporter, root, base_dir);
    let payment = crate::payment::read(reporter, root);
    Some(Workflow {
        name: name?,
        path: PathBuf::from(path_label),
        source: source.to_string(),
        jobs: jobs?,
        payment: payment?,
    })
}

/// Unknown top-level tables are most often jobs written without the `jobs.` prefix.
fn check_top_level_keys(reporter: &mut Reporter, root: &Table) {
    for entry in root.entries.iter().filter(|entry| !KEYS.contains(&entry.key.as_str())) {
        let hint = match (&entry.value.value, closest(&entry.key, KEYS.iter().copied())) {
            (_, Some(suggestion)) => format!("did you mean '{suggestion}'?"),
            (Value::Table(_), None) => format!("jobs are tables named [jobs.NAME]: did you mean [jobs.{}]?", entry.key),
            (_, None) => "the top level has 'name', the [jobs.NAME] tables and [payment]".to_string(),
        };
        reporter.error_with_hint(entry.key_at, format!("unknown key '{}'", entry.key), hint);
    }
}

/// The `name` key, or the file name without its extension.
fn name(reporter: &mut Reporter, root: &Table, path_label: &str) -> Option<String> {
    let written = match root.get("name") {
        Some(entry) => match string_value(reporter, "name", &entry.value) {
            Field::Found(found) => Some(found),
            Field::Absent | Field::Invalid => return None,
        },
        None => None,
    };
    let (name, at) = match written {
        Some(found) => (found.value.to_string(), found.at),
        None => {
            let stem = Path::new(path_label).file_stem().map(|stem| stem.to_string_lossy().into_owned());
            (stem.unwrap_or_default(), 0)
        }
    };
    if let Err(problem) = job::check_name(&name) {
        let (message, hint) = match written {
            Some(_) => {
                (format!("workflow name '{name}' {problem}"), "names look like 'lj-melt' or 'run_2'".to_string())
            }
            None => (
                format!("workflow name '{name}' (from the file name) {problem}"),
                "set one at the top of the file, e.g. name = \"lj-melt\"".to_string(),
            ),
        };
        reporter.error_with_hint(at, message, hint);
        return None;
    }
    Some(name)
}

fn jobs(reporter: &mut Reporter, root: &Table, base_dir: &Path) -> Option<Vec<Job>> {
    let Some(entry) = root.get("jobs") else {
        reporter.error_with_hint(0, "the workflow has no jobs", NO_JOBS_HINT);
        return None;
    };
    let table = match &entry.value.value {
        Value::Table(table) => table,
        _ => {
            let _: Field<()> = crate::fields::wrong_type(reporter, "a table", "jobs", &entry.value);
            return None;
        }
    };
    if table.entries.is_empty() {
        reporter.error_with_hint(table.at, "the workflow has no jobs", NO_JOBS_HINT);
        return None;
    }
    if table.entries.len() > JOBS_PER_WORKFLOW_MAX {
        reporter.error_with_hint(
            table.at,
            format!("the workflow has {} jobs; at most {JOBS_PER_WORKFLOW_MAX} are allowed", table.entries.len()),
            "use array tasks (tasks = \"1-1000\") in a command job instead of many similar jobs",
        );
        return None;
    }
    read_jobs(reporter, table, base_dir)
}

fn read_jobs(reporter: &mut Reporter, table: &Table, base_dir: &Path) -> Option<Vec<Job>> {
    let mut dependencies = Vec::with_capacity(table.entries.len());
    let mut jobs = Some(Vec::with_capacity(table.entries.len()));
    for entry in &table.entries {
        if let Err(problem) = job::check_name(&entry.key) {
            reporter.error_with_hint(
                entry.key_at,
                format!("job name '{}' {problem}", entry.key),
                "jobs are addressed as 'workflow.job', so names are plain, like 'melt' or 'report-1'",
            );
        }
        let Value::Table(job_table) = &entry.value.value else {
            let _: Field<()> = crate::fields::wrong_type(reporter, "a table", &entry.key, &entry.value);
            jobs = None;
            continue;
        };
        let (depends, job) = job::read(reporter, &entry.key, job_table, base_dir);
        dependencies.push(depends);
        match (job, jobs.as_mut()) {
            (Some(job), Some(jobs)) => jobs.push(job),
            _ => jobs = None,
        }
    }
    graph::check(reporter, &dependencies);
    jobs
}
