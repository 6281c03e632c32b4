//! One `[jobs.NAME]` table: the keys every job has, then the kind-specific part.

use std::path::Path;

use upglobe_protocol::messages::limits::REPLICAS_MAX;
use upglobe_protocol::trust::Verification;

use crate::diagnostic::Reporter;
use crate::document::{Entry, Table};
use crate::fields::{Field, Located, Section, closest, report_unknown, string_value};
use crate::{Job, JobKind, command, md, resources, verify};

const COMMON_KEYS: &[&str] = &["kind", "replicas", "after", "resources", "verify"];
const MD_KEYS: &[&str] = &["system", "potential", "run", "thermostat"];
const KINDS: &[&str] = &["md", "command", "container"];

/// Memory a container job reserves (and is limited to) when its resources name none.
pub const CONTAINER_MEMORY_DEFAULT: u64 = 2 << 30;
/// Replicas of an md job by default: two workers that must produce the same state hash.
pub const MD_REPLICAS_DEFAULT: u32 = 2;
pub const COMMAND_REPLICAS_DEFAULT: u32 = 1;
/// Job and workflow names: short enough for status tables and logs.
pub use upglobe_protocol::messages::limits::NAME_BYTES_MAX;

#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Kind {
    Md,
    Command,
}

/// What the dependency check needs of a job, kept even when the rest of the job is wrong.
pub(crate) struct Dependencies<'t> {
    pub(crate) name: &'t str,
    pub(crate) after: Vec<Located<&'t str>>,
}

/// Reads a job; returns its dependencies always, and the job if it has no errors.
pub(crate) fn read<'t>(
    reporter: &mut Reporter,
    name: &'t str,
    table: &'t Table,
    base_dir: &Path,
) -> (Dependencies<'t>, Option<Job>) {
    let section = Section { table, job: name, name: "" };
    let (kind, container) = match kind(reporter, &section) {
        Some((kind, container)) => (Some(kind), container),
        None => (None, false),
    };
    check_keys(reporter, &section, kind, container);
    let after = after(reporter, &section);
    let replicas = replicas(reporter, &section, kind);
    // A container is limited to the memory its job reserves: one that names none reserves
    // CONTAINER_MEMORY_DEFAULT, so the scheduler never places more than a worker holds.
    let resources = resources::read(reporter, &section).map(|(mut resources, gpu)| {
        if container && resources.memory_bytes == 0 {
            resources.memory_bytes = CONTAINER_MEMORY_DEFAULT;
        }
        (resources, gpu)
    });
    let job_kind = match kind {
        Some(Kind::Md) => md::read(reporter, &section, base_dir).map(JobKind::Md),
        Some(Kind::Command) => command::read(reporter, &section, base_dir, container).map(JobKind::Command),
        None => None,
    };
    let verification = kind.and_then(|kind| verification(reporter, &section, kind, replicas, job_kind.as_ref()));
    let job = match (&after, replicas, resources, job_kind, verification) {
        (Some(after), Some(replicas), Some((resources, gpu)), Some(kind), Some(verification)) => Some(Job {
            name: name.to_string(),
            after: after.iter().map(|name| name.value.to_string()).collect(),
            replicas,
            resources,
            gpu,
            kind,
            verification,
            location: reporter.location(table.at),
        }),
        _ => None,
    };
    let dependencies = Dependencies { name, after: after.unwrap_or_default() };
    (dependencies, job)
}

fn verification(
    reporter: &mut Reporter,
    section: &Section,
    kind: Kind,
    replicas: Option<u32>,
    job_kind: Option<&JobKind>,
) -> Option<Verification> {
    let outputs = match job_kind {
        Some(JobKind::Command(command)) => Some(command.outputs.as_slice()),
        _ => None,
    };
    let replicas_written = section.entry("replicas").is_some();
    verify::read(reporter, section, &verify::JobFacts { kind, replicas, replicas_written, outputs })
}

/// The job's kind, and whether it runs in a container (a command job with an image).
fn kind(reporter: &mut Reporter, job: &Section) -> Option<(Kind, bool)> {
    let kind = job.string(reporter, "kind");
    let kind = job.require(reporter, "kind", kind)?;
    match kind.value {
        "md" => Some((Kind::Md, false)),
        "command" => Some((Kind::Command, false)),
        "container" => Some((Kind::Command, true)),
        other => {
            let hint = match closest(other, KINDS.iter().copied()) {
                Some(suggestion) => format!("did you mean '{suggestion}'?"),
                None => "kind is \"md\" (a molecular dynamics run), \"command\" (a program) or \"container\" (a program in an image)".to_string(),
            };
            reporter.error_with_hint(kind.at, format!("unknown kind '{other}'"), hint);
            None
        }
    }
}

/// Checks keys against the job's kind; a key of the other kind gets a message that says so.
fn check_keys(reporter: &mut Reporter, job: &Section, kind: Option<Kind>, container: bool) {
    let container_keys = [command::KEYS, command::IMAGE_KEYS].concat();
    let (own, own_name) = match kind {
        Some(Kind::Md) => (MD_KEYS, "md"),
        Some(Kind::Command) if container => (container_keys.as_slice(), "container"),
        Some(Kind::Command) => (command::KEYS, "command"),
        None => {
            let all: Vec<&str> = [COMMON_KEYS, MD_KEYS, &container_keys].concat();
            return job.check_keys(reporter, &all);
        }
    };
    // A key of another kind (and not of this one) says which kinds it belongs to.
    let kinds_of = |key: &str| -> Option<&'static str> {
        if own.contains(&key) {
            return None;
        }
        if MD_KEYS.contains(&key) {
            Some("md")
        } else if command::IMAGE_KEYS.contains(&key) {
            Some("container")
        } else if command::KEYS.contains(&key) {
            Some("command and container")
        } else {
            None
        }
    };
    let (of_other_kind, rest): (Vec<&Entry>, Vec<&Entry>) =
        job.table.entries.iter().partition(|entry| kinds_of(&entry.key).is_some());
    for entry in of_other_kind {
        let other_name = kinds_of(&entry.key).expect("partitioned on it");
        reporter.error_with_hint(
            entry.key_at,
            format!("'{}' applies only to {other_name} jobs", entry.key),
            format!("job '{}' has kind = \"{own_name}\"; remove '{}' or change the kind", job.job, entry.key),
        );
    }
    let own_keys: Vec<&str> = [COMMON_KEYS, own].concat();
    report_unknown(reporter, rest.into_iter(), &own_keys, &job.header());
}

fn replicas(reporter: &mut Reporter, job: &Section, kind: Option<Kind>) -> Option<u32> {
    let default = match kind {
        Some(Kind::Command) => COMMAND_REPLICAS_DEFAULT,
        _ => MD_REPLICAS_DEFAULT,
    };
    let replicas = job.integer(reporter, "replicas").and_then(|replicas| {
        let value = u32::try_from(replicas.value).ok().filter(|value| (1..=REPLICAS_MAX).contains(value));
        if value.is_none() {
            reporter.error_with_hint(
                replicas.at,
                format!("replicas must be between 1 and {REPLICAS_MAX}, found {}", replicas.value),
                "each replica runs the job on another worker and their results must agree; md jobs default to 2",
            );
        }
        value
    });
    replicas.or(default)
}

fn after<'t>(reporter: &mut Reporter, job: &Section<'t>) -> Option<Vec<Located<&'t str>>> {
    let names = job.array(reporter, "after").and_then(|array| {
        let names: Vec<Field<&str>> =
            array.value.iter().map(|element| string_value(reporter, "after", element)).collect();
        names
            .into_iter()
            .map(|name| match name {
                Field::Found(found) => Some(found),
                Field::Absent | Field::Invalid => None,
            })
            .collect::<Option<Vec<_>>>()
    });
    names.or(Vec::new())
}

/// Names address jobs as `workflow.job` in the scheduler and on the command line, so they are plain.
pub(crate) fn check_name(name: &str) -> Result<(), String> {
    upglobe_protocol::messages::check_name(name)
}
