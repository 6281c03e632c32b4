//! `[jobs.NAME.verify]`: how the results of a job's chunks are trusted, and for `policy = "tolerance"`
//! the `[[jobs.NAME.verify.compare]]` rules that say which numbers of which outputs must agree.

use upglobe_protocol::trust::{Compared, TOLERANCE_RULES_MAX, ToleranceRule, Verification};

use crate::diagnostic::Reporter;
use crate::document::{Entry, Spanned, Table, Value};
use crate::fields::{Field, Located, Section, closest, integer_value, string_value, wrong_type};
use crate::job::Kind;

const KEYS: &[&str] = &["policy", "compare"];
const COMPARE_KEYS: &[&str] = &["file", "columns", "datasets", "absolute", "relative"];
const POLICIES: &[&str] = &["adaptive", "quorum", "tolerance", "metered"];
/// Text columns are numbered from 1; a line with a million columns is already not a table of numbers.
pub const COLUMN_MAX: u32 = 1_000_000;
/// HDF5 dataset paths, in bytes: the same bound as file names.
pub const DATASET_PATH_BYTES_MAX: usize = upglobe_protocol::messages::limits::PATH_BYTES_MAX;

/// What the policy checks need to know of the rest of the job.
pub(crate) struct JobFacts<'a> {
    pub(crate) kind: Kind,
    /// The job's replicas, when valid (written or the default).
    pub(crate) replicas: Option<u32>,
    /// Whether `replicas` is written in the job table.
    pub(crate) replicas_written: bool,
    /// A command job's output patterns, when they are valid.
    pub(crate) outputs: Option<&'a [String]>,
}

/// The job's verification: its `verify` table, or the default of its kind.
pub(crate) fn read(reporter: &mut Reporter, job_section: &Section, job: &JobFacts) -> Option<Verification> {
    let default = match job.kind {
        Kind::Md => Verification::Adaptive,
        Kind::Command => Verification::Quorum,
    };
    let section = match job_section.section(reporter, "verify") {
        Field::Absent => return Some(default),
        Field::Invalid => return None,
        Field::Found(found) => found.value,
    };
    section.check_keys(reporter, KEYS);
    let policy = match policy(reporter, &section) {
        Field::Absent => Located { value: default.name(), at: section.table.at },
        Field::Invalid => return None,
        Field::Found(found) => found,
    };
    let fits = check_policy(reporter, &section, job, &policy);
    // Rules of a policy the job cannot have would only add noise to the error about the policy.
    let rules = if fits || job.kind == Kind::Command { compare(reporter, &section, job, &policy) } else { None };
    let rules = rules.filter(|_| fits)?;
    Some(match policy.value {
        "adaptive" => Verification::Adaptive,
        "quorum" => Verification::Quorum,
        "metered" => Verification::Metered,
        _ => Verification::Tolerance(rules),
    })
}

/// The policy name, one of [`POLICIES`].
fn policy<'t>(reporter: &mut Reporter, section: &Section<'t>) -> Field<&'t str> {
    section.string(reporter, "policy").and_then(|policy| {
        if POLICIES.contains(&policy.value) {
            return Some(policy.value);
        }
        let hint = match closest(policy.value, POLICIES.iter().copied()) {
            Some(suggestion) => format!("did you mean '{suggestion}'?"),
            None => "policy is \"adaptive\", \"quorum\", \"tolerance\" or \"metered\"".to_string(),
        };
        reporter.error_with_hint(policy.at, format!("unknown verification policy '{}'", policy.value), hint);
        None
    })
}

/// Whether the policy suits the job's kind and replicas; reports why not at the policy.
fn check_policy(reporter: &mut Reporter, section: &Section, job: &JobFacts, policy: &Located<&str>) -> bool {
    let name = section.job;
    let problem = match (job.kind, policy.value) {
        (Kind::Md, "tolerance" | "metered") => Some((
            format!("policy \"{}\" does not apply to md jobs", policy.value),
            "md chunks are bit-deterministic, so their results compare exactly: use policy = \"adaptive\" (the default) or \"quorum\"".to_string(),
        )),
        (Kind::Command, "adaptive") => Some((
            "policy \"adaptive\" applies only to md jobs".to_string(),
            "adaptive verification audits the hash chains that only md chunks record; command jobs use \"quorum\" (the default), \"tolerance\" or \"metered\"".to_string(),
        )),
        (Kind::Command, "tolerance") => job.replicas.filter(|&replicas| replicas < 2).map(|replicas| {
            (
                format!("policy \"tolerance\" compares replicas, but job '{name}' has {replicas}"),
                format!("set replicas = 2 (or more) in [jobs.{name}], so that two workers' results can be compared"),
            )
        }),
        (Kind::Command, "metered") => job.replicas.filter(|&replicas| replicas > 1 && job.replicas_written).map(
            |replicas| {
                (
                    format!("policy \"metered\" runs each chunk once, but job '{name}' has replicas = {replicas}"),
                    format!("remove 'replicas' from [jobs.{name}], or use policy = \"quorum\" to compare replicas"),
                )
            },
        ),
        _ => None,
    };
    let Some((message, hint)) = problem else {
        return true;
    };
    reporter.error_with_hint(policy.at, message, hint);
    false
}

/// The tolerance rules: required with policy = "tolerance", refused with any other.
fn compare(
    reporter: &mut Reporter,
    section: &Section,
    job: &JobFacts,
    policy: &Located<&str>,
) -> Option<Vec<ToleranceRule>> {
    let entry = section.entry("compare");
    match (entry, policy.value) {
        (None, "tolerance") if job.replicas.is_some_and(|replicas| replicas < 2) => None,
        (None, "tolerance") => {
            reporter.error_with_hint(
                section.table.at,
                format!("job '{}' has policy \"tolerance\" but no 'compare' rules", section.job),
                format!(
                    "add a [[jobs.{}.verify.compare]] table with file = \"energies.txt\" naming an output, and the tolerances",
                    section.job
                ),
            );
            None
        }
        (None, _) => Some(Vec::new()),
        (Some(entry), "tolerance") => rules(reporter, section, job, entry),
        (Some(entry), other) => {
            reporter.error_with_hint(
                entry.key_at,
                format!("'compare' applies only to policy = \"tolerance\", and job '{}' has \"{other}\"", section.job),
                "set policy = \"tolerance\", or remove the compare rules",
            );
            None
        }
    }
}

fn rules(reporter: &mut Reporter, section: &Section, job: &JobFacts, entry: &Entry) -> Option<Vec<ToleranceRule>> {
    let tables = tables(reporter, &entry.value)?;
    if tables.is_empty() {
        reporter.error_with_hint(entry.value.at, "'compare' is empty", "add at least one compare rule");
        return None;
    }
    if tables.len() > TOLERANCE_RULES_MAX {
        reporter.error(
            entry.key_at,
            format!("'compare' has {} rules; at most {TOLERANCE_RULES_MAX} are allowed", tables.len()),
        );
        return None;
    }
    let rules: Vec<Option<ToleranceRule>> = tables
        .into_iter()
        .map(|table| rule(reporter, &Section { table, job: section.job, name: "verify.compare" }, job))
        .collect();
    rules.into_iter().collect()
}

/// `[[compare]]` tables, or an array of inline tables `compare = [{ ... }]`.
fn tables<'t>(reporter: &mut Reporter, value: &'t Spanned) -> Option<Vec<&'t Table>> {
    let expected = "an array of tables";
    match &value.value {
        Value::ArrayOfTables(tables) => Some(tables.iter().collect()),
        Value::Array(elements) => {
            let tables: Vec<Option<&Table>> = elements
                .iter()
                .map(|element| match &element.value {
                    Value::Table(table) => Some(table),
                    _ => {
                        let _: Field<()> = wrong_type(reporter, "a table", "compare", element);
                        None
                    }
                })
                .collect();
            tables.into_iter().collect()
        }
        _ => {
            let _: Field<()> = wrong_type(reporter, expected, "compare", value);
            None
        }
    }
}

fn rule(reporter: &mut Reporter, rule: &Section, job: &JobFacts) -> Option<ToleranceRule> {
    rule.check_keys(reporter, COMPARE_KEYS);
    let file = rule.string(reporter, "file");
    let file = rule.require(reporter, "file", file).filter(|file| check_file(reporter, rule.job, file, job.outputs));
    let values = values(reporter, rule);
    let absolute = rule.non_negative_number(reporter, "absolute").or(0.0);
    let relative = rule.non_negative_number(reporter, "relative").or(0.0);
    Some(ToleranceRule { file: file?.value.to_string(), values: values?, absolute: absolute?, relative: relative? })
}

/// A compared file must be a plain relative name that the job collects as an output.
fn check_file(reporter: &mut Reporter, job: &str, file: &Located<&str>, outputs: Option<&[String]>) -> bool {
    if let Err(problem) = upglobe_protocol::messages::check_relative_path(file.value) {
        reporter.error_with_hint(
            file.at,
            format!("cannot compare {problem}"),
            "name an output file relative to the task's working directory, as in 'outputs'",
        );
        return false;
    }
    let Some(outputs) = outputs else {
        // The outputs are wrong and already reported; the file cannot be checked against them.
        return true;
    };
    if outputs.iter().any(|pattern| output_matches(pattern, file.value)) {
        return true;
    }
    let hint = match outputs {
        [] => format!("job '{job}' collects no outputs: add outputs = [\"{}\"] to [jobs.{job}]", file.value),
        _ => format!("add it to 'outputs' of [jobs.{job}] or compare one of {}", quoted(outputs)),
    };
    reporter.error_with_hint(file.at, format!("'{}' is not one of the outputs of job '{job}'", file.value), hint);
    false
}

/// Whether the worker's collection of `pattern` can return `file`: the same text, or a glob match in
/// which `*` stays inside one directory, as the worker's directory walk does.
pub(crate) fn output_matches(pattern: &str, file: &str) -> bool {
    let pattern = pattern.trim_start_matches("./");
    let options = glob::MatchOptions { require_literal_separator: true, ..glob::MatchOptions::new() };
    pattern == file || glob::Pattern::new(pattern).is_ok_and(|pattern| pattern.matches_with(file, options))
}

fn quoted(names: &[String]) -> String {
    names.iter().map(|name| format!("'{name}'")).collect::<Vec<_>>().join(", ")
}

/// `columns` or `datasets`; neither means every column of a text file.
fn values(reporter: &mut Reporter, rule: &Section) -> Option<Compared> {
    match (rule.entry("columns"), rule.entry("datasets")) {
        (Some(columns), Some(datasets)) => {
            let second = if columns.key_at < datasets.key_at { datasets } else { columns };
            reporter.error_with_hint(
                second.key_at,
                "a compare rule has either 'columns' or 'datasets', not both",
                "'columns' compares a text file's columns, 'datasets' an HDF5 file's datasets; remove one",
            );
            None
        }
        (Some(columns), None) => columns_value(reporter, &columns.value).map(Compared::Columns),
        (None, Some(datasets)) => datasets_value(reporter, &datasets.value).map(Compared::Datasets),
        (None, None) => Some(Compared::Columns(Vec::new())),
    }
}

/// A non-empty array of at most [`TOLERANCE_RULES_MAX`] elements.
fn bounded<'t>(reporter: &mut Reporter, key: &str, value: &'t Spanned, omit: &str) -> Option<&'t [Spanned]> {
    let Value::Array(elements) = &value.value else {
        let _: Field<()> = wrong_type(reporter, "an array", key, value);
        return None;
    };
    if elements.is_empty() {
        reporter.error_with_hint(value.at, format!("'{key}' is empty"), omit);
        return None;
    }
    if elements.len() > TOLERANCE_RULES_MAX {
        reporter.error(
            value.at,
            format!("'{key}' has {} entries; at most {TOLERANCE_RULES_MAX} are allowed", elements.len()),
        );
        return None;
    }
    Some(elements)
}

fn columns_value(reporter: &mut Reporter, value: &Spanned) -> Option<Vec<u32>> {
    let elements = bounded(reporter, "columns", value, "omit 'columns' to compare every column")?;
    let mut columns = Vec::with_capacity(elements.len());
    let mut valid = true;
    for element in elements {
        match integer_value(reporter, "columns", element).and_then(|column| column_number(reporter, column)) {
            Field::Found(column) if columns.contains(&column.value) => {
                reporter.error(column.at, format!("column {} appears twice", column.value));
                valid = false;
            }
            Field::Found(column) => columns.push(column.value),
            Field::Absent | Field::Invalid => valid = false,
        }
    }
    valid.then_some(columns)
}

fn column_number(reporter: &mut Reporter, column: Located<i64>) -> Option<u32> {
    let number = u32::try_from(column.value).ok().filter(|value| (1..=COLUMN_MAX).contains(value));
    if number.is_none() {
        reporter.error_with_hint(
            column.at,
            format!("column {} is out of range; columns are numbered from 1 to {COLUMN_MAX}", column.value),
            "the first whitespace-separated column of a line is 1",
        );
    }
    number
}

fn datasets_value(reporter: &mut Reporter, value: &Spanned) -> Option<Vec<String>> {
    let elements = bounded(reporter, "datasets", value, "name the HDF5 datasets to compare, e.g. [\"/energy\"]")?;
    let datasets: Vec<Option<String>> = elements
        .iter()
        .map(|element| match string_value(reporter, "datasets", element) {
            Field::Found(path) => check_dataset_path(reporter, &path).then(|| path.value.to_string()),
            Field::Absent | Field::Invalid => None,
        })
        .collect();
    datasets.into_iter().collect()
}

fn check_dataset_path(reporter: &mut Reporter, path: &Located<&str>) -> bool {
    let problem = if path.value.is_empty() {
        "a dataset path is empty".to_string()
    } else if path.value.len() > DATASET_PATH_BYTES_MAX {
        format!("a dataset path is {} bytes; at most {DATASET_PATH_BYTES_MAX} are allowed", path.value.len())
    } else {
        return true;
    };
    reporter.error_with_hint(
        path.at,
        problem,
        "name a dataset inside the HDF5 file, e.g. \"/particles/all/position/value\"",
    );
    false
}
