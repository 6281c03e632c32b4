//! `kind = "command"` jobs: a program run once, or once per array task, on workers that allow commands.

use std::path::{Component, Path};

use crate::diagnostic::Reporter;
use crate::document::{Spanned, Table, Value};
use crate::fields::{Field, Located, Section, integer_value, string_value, wrong_type};
use crate::{CommandJob, ContainerImage, InputFile, InputSource};
use upglobe_protocol::messages::CheckpointContract;
use upglobe_protocol::messages::limits::{CHUNKS_PER_JOB_MAX, DESCRIPTION_BYTES_MAX};

pub(crate) const KEYS: &[&str] = &["argv", "tasks", "inputs", "outputs", "timeout", "checkpoint"];
/// Keys only container jobs have (beside those of command jobs).
pub(crate) const IMAGE_KEYS: &[&str] = &["image", "network"];
const CHECKPOINT_KEYS: &[&str] = &["chunks", "resume", "files"];

/// Array tasks per job; each becomes a chunk the scheduler tracks.
pub const TASKS_MAX: usize = upglobe_protocol::messages::limits::CHUNKS_PER_JOB_MAX as usize;
pub const TIMEOUT_S_DEFAULT: u64 = 3600;
pub use upglobe_protocol::messages::limits::ARGUMENTS_MAX;
/// A week: longer runs should be split into tasks or checkpointed md chunks.
pub use upglobe_protocol::messages::limits::TIMEOUT_S_MAX;
pub const INPUTS_MAX: usize = upglobe_protocol::messages::limits::FILES_PER_TASK_MAX;
pub const OUTPUTS_MAX: usize = upglobe_protocol::messages::limits::FILES_PER_TASK_MAX;

const RANGE_HINT: &str =
    "write a range as \"first-last\" with whole numbers, e.g. \"1-10\" (both included), or list ids as [1, 2, 3]";

pub(crate) fn read(reporter: &mut Reporter, job: &Section, base_dir: &Path, container: bool) -> Option<CommandJob> {
    let argv = argv(reporter, job, "argv");
    let argv = job.require(reporter, "argv", argv);
    let tasks = tasks(reporter, job).or(Vec::new());
    let inputs = inputs(reporter, job, base_dir).or(Vec::new());
    let outputs = outputs(reporter, job).or(Vec::new());
    let timeout_s = timeout(reporter, job).or(TIMEOUT_S_DEFAULT);
    let image = if container { image(reporter, job).map(Some) } else { Some(None) };
    let checkpoint = checkpoint(reporter, job, tasks.as_deref());
    if let (Some(argv), Some(tasks)) = (&argv, &tasks)
        && tasks.is_empty()
        && argv.value.iter().any(|a| a.contains("{task}"))
    {
        // Without tasks nothing replaces the placeholder, and the program would see it literally.
        reporter.error_with_hint(
            argv.at,
            "'argv' uses {task}, but the job has no 'tasks'",
            "add tasks = [1, 2, 3] or a range \"1-10\", or remove {task} from argv",
        );
        return None;
    }
    let (image, checkpoint, mut outputs) = (image?, checkpoint?, outputs?);
    // The checkpoint files are outputs of every chunk; they need not be written twice.
    for file in checkpoint.iter().flat_map(|c| &c.files) {
        if !outputs.iter().any(|pattern| pattern.trim_start_matches("./") == file) {
            outputs.push(file.clone());
        }
    }
    Some(CommandJob {
        argv: argv?.value,
        tasks: tasks?,
        inputs: inputs?,
        outputs,
        timeout_s: timeout_s?,
        container: image,
        checkpoint,
    })
}

/// `image = "NAME"` and `network = true|false` of a container job.
fn image(reporter: &mut Reporter, job: &Section) -> Option<ContainerImage> {
    let image = job.string(reporter, "image");
    let image = job.require(reporter, "image", image)?;
    let network = job.boolean(reporter, "network").or(false);
    let problem = if image.value.is_empty() {
        Some("'image' is empty".to_string())
    } else if image.value.len() > DESCRIPTION_BYTES_MAX
        || image.value.chars().any(|c| c.is_control() || c.is_whitespace())
    {
        Some(format!("'image' must be an image name of at most {DESCRIPTION_BYTES_MAX} bytes without spaces"))
    } else {
        None
    };
    if let Some(problem) = problem {
        reporter.error_with_hint(
            image.at,
            problem,
            "name an image as docker does, e.g. image = \"busybox:1.36\"; send it with `upglobe image push NAME`",
        );
        return None;
    }
    Some(ContainerImage { image: image.value.to_string(), network: network?, location: reporter.location(image.at) })
}

/// `[jobs.NAME.checkpoint]`: `chunks`, the `resume` command and the checkpoint `files`.
fn checkpoint(reporter: &mut Reporter, job: &Section, tasks: Option<&[i64]>) -> Option<Option<CheckpointContract>> {
    let section = match job.section(reporter, "checkpoint") {
        Field::Absent => return Some(None),
        Field::Invalid => return None,
        Field::Found(found) => found.value,
    };
    section.check_keys(reporter, CHECKPOINT_KEYS);
    let chunks = section.positive_integer(reporter, "chunks").and_then(|chunks| {
        let fits = u32::try_from(chunks.value).ok().filter(|&c| u64::from(c) <= CHUNKS_PER_JOB_MAX);
        if fits.is_none() {
            reporter
                .error(chunks.at, format!("'chunks' is {}; at most {CHUNKS_PER_JOB_MAX} are allowed", chunks.value));
        }
        fits
    });
    let chunks = section.require(reporter, "chunks", chunks);
    let resume = argv(reporter, &section, "resume");
    let resume = section.require(reporter, "resume", resume);
    let files = strings(reporter, &section, "files", OUTPUTS_MAX).and_then(|files| {
        if files.value.is_empty() {
            reporter.error_with_hint(
                files.at,
                "'files' is empty",
                "name the files that form the checkpoint, e.g. files = [\"restart.bin\"]",
            );
            return None;
        }
        let checked: Vec<bool> = files.value.iter().map(|file| check_relative(reporter, "files", file)).collect();
        checked.into_iter().all(|ok| ok).then(|| files.value.iter().map(|f| f.value.to_string()).collect::<Vec<_>>())
    });
    let files = section.require(reporter, "files", files);
    if let Some(resume) = &resume
        && resume.value.iter().any(|a| a.contains("{task}"))
    {
        reporter.error_with_hint(
            resume.at,
            "'resume' uses {task}, but a checkpointed job has no tasks",
            "use {chunk} (the chunk's index, from 0) or {chunks} (their number)",
        );
        return None;
    }
    if tasks.is_some_and(|tasks| !tasks.is_empty()) {
        reporter.error_with_hint(
            section.table.at,
            "a job with 'tasks' cannot also have a checkpoint",
            "array tasks are independent; a checkpointed job is one run cut into chained chunks",
        );
        return None;
    }
    Some(Some(CheckpointContract { chunks: chunks?.value, resume: resume?.value, files: files?.value }))
}

/// A bounded array whose elements are all strings, reported one by one.
fn strings<'t>(reporter: &mut Reporter, job: &Section<'t>, key: &str, maximum: usize) -> Field<Vec<Located<&'t str>>> {
    job.array(reporter, key).and_then(|array| {
        if array.value.len() > maximum {
            reporter
                .error(array.at, format!("'{key}' has {} entries; at most {maximum} are allowed", array.value.len()));
            return None;
        }
        let elements: Vec<Field<&str>> =
            array.value.iter().map(|element| string_value(reporter, key, element)).collect();
        elements
            .into_iter()
            .map(|element| match element {
                Field::Found(found) => Some(found),
                Field::Absent | Field::Invalid => None,
            })
            .collect()
    })
}

fn argv(reporter: &mut Reporter, job: &Section, key: &str) -> Field<Vec<String>> {
    let array_at = job.entry(key).map(|entry| entry.value.at);
    strings(reporter, job, key, ARGUMENTS_MAX).and_then(|argv| {
        let Some(program) = argv.value.first() else {
            reporter.error_with_hint(
                array_at.unwrap_or(argv.at),
                format!("'{key}' is empty"),
                "give the program and its arguments, e.g. argv = [\"sh\", \"run.sh\", \"{task}\"]",
            );
            return None;
        };
        if program.value.is_empty() {
            reporter.error(program.at, format!("the program name (the first element of '{key}') is empty"));
            return None;
        }
        Some(argv.value.iter().map(|argument| argument.value.to_string()).collect())
    })
}

fn tasks(reporter: &mut Reporter, job: &Section) -> Field<Vec<i64>> {
    let Some(entry) = job.entry("tasks") else {
        return Field::Absent;
    };
    let at = entry.value.at;
    let tasks = match &entry.value.value {
        Value::Array(elements) => task_list(reporter, elements, at),
        Value::String(range) => {
            task_range(range).map_err(|(message, hint)| reporter.error_with_hint(at, message, hint)).ok()
        }
        _ => {
            return wrong_type(reporter, "an array of integers or a range string", "tasks", &entry.value);
        }
    };
    tasks.map_or(Field::Invalid, |value| Field::Found(Located { value, at }))
}

fn task_list(reporter: &mut Reporter, elements: &[Spanned], at: usize) -> Option<Vec<i64>> {
    if elements.is_empty() {
        reporter.error_with_hint(at, "'tasks' is empty", "remove 'tasks' to run the command once");
        return None;
    }
    if elements.len() > TASKS_MAX {
        reporter.error(at, format!("'tasks' has {} ids; at most {TASKS_MAX} are allowed", elements.len()));
        return None;
    }
    let mut seen = std::collections::HashSet::with_capacity(elements.len());
    let mut tasks = Some(Vec::with_capacity(elements.len()));
    for element in elements {
        let id = match integer_value(reporter, "tasks", element) {
            Field::Found(id) if seen.insert(id.value) => Some(id.value),
            Field::Found(id) => {
                reporter.error(id.at, format!("task id {} appears twice", id.value));
                None
            }
            Field::Absent | Field::Invalid => None,
        };
        match (id, tasks.as_mut()) {
            (Some(id), Some(tasks)) => tasks.push(id),
            _ => tasks = None,
        }
    }
    tasks
}

/// Parses `"first-last"` (inclusive) into the ids; errors come with a hint.
pub fn task_range(range: &str) -> Result<Vec<i64>, (String, String)> {
    let cannot = || (format!("cannot read tasks range '{range}'"), RANGE_HINT.to_string());
    let (first, last) = range.trim().split_once('-').ok_or_else(cannot)?;
    let number = |text: &str| {
        let text = text.trim();
        if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        text.parse::<i64>().ok()
    };
    let (first, last) = (number(first).ok_or_else(cannot)?, number(last).ok_or_else(cannot)?);
    if first > last {
        return Err((
            format!("tasks range '{range}' is empty: {first} is more than {last}"),
            format!("write the smaller id first: \"{last}-{first}\""),
        ));
    }
    let count = (last - first) as u64 + 1;
    if count > TASKS_MAX as u64 {
        return Err((
            format!("tasks range '{range}' has {count} ids; at most {TASKS_MAX} are allowed"),
            "split the work into fewer, larger tasks, or into several jobs".to_string(),
        ));
    }
    Ok((first..=last).collect())
}

/// A path the worker will create or collect inside the task's working directory, so it must stay there.
fn check_relative(reporter: &mut Reporter, key: &str, path: &Located<&str>) -> bool {
    let message = if path.value.is_empty() {
        format!("an entry of '{key}' is empty")
    } else if Path::new(path.value).is_absolute() {
        format!("'{}' in '{key}' is an absolute path", path.value)
    } else if Path::new(path.value).components().any(|component| component == Component::ParentDir) {
        format!("'{}' in '{key}' goes up with '..'", path.value)
    } else {
        return true;
    };
    let hint = match key {
        "files" => {
            "checkpoint files are written by the program inside the task's working directory; name them relative to it"
        }
        "inputs" => {
            "inputs are copied into the task's working directory under the name written; copy or link the file next to the workflow file and name it relative to there"
        }
        _ => "outputs are collected from inside the task's working directory; write a pattern relative to it",
    };
    reporter.error_with_hint(path.at, message, hint);
    false
}

/// `inputs = ["local/file", { name = "traj.h5md", dataset = "HASH" }]`: files next to the workflow
/// file, or datasets the scheduler keeps, by hash.
fn inputs(reporter: &mut Reporter, job: &Section, base_dir: &Path) -> Field<Vec<InputFile>> {
    job.array(reporter, "inputs").and_then(|array| {
        if array.value.len() > INPUTS_MAX {
            reporter.error(
                array.at,
                format!("'inputs' has {} entries; at most {INPUTS_MAX} are allowed", array.value.len()),
            );
            return None;
        }
        let mut seen = std::collections::HashSet::new();
        let mut inputs = Some(Vec::with_capacity(array.value.len()));
        for element in array.value {
            let input = match &element.value {
                Value::String(name) => {
                    let name = Located { value: name.as_str(), at: element.at };
                    if !seen.insert(name.value) {
                        reporter.error(name.at, format!("input '{}' appears twice", name.value));
                        None
                    } else {
                        input(reporter, &name, base_dir)
                    }
                }
                Value::Table(table) => dataset_input(reporter, job, table, element.at, &mut seen),
                _ => {
                    let _: Field<()> =
                        wrong_type(reporter, "a file name or a table { name, dataset }", "inputs", element);
                    None
                }
            };
            match (input, inputs.as_mut()) {
                (Some(input), Some(inputs)) => inputs.push(input),
                _ => inputs = None,
            }
        }
        inputs
    })
}

/// `{ name = "traj.h5md", dataset = "64 hex digits" }`.
fn dataset_input<'t>(
    reporter: &mut Reporter,
    job: &Section<'t>,
    table: &'t Table,
    at: usize,
    seen: &mut std::collections::HashSet<&'t str>,
) -> Option<InputFile> {
    let section = Section { table, job: job.job, name: "inputs" };
    section.check_keys(reporter, &["name", "dataset"]);
    let name = section.string(reporter, "name");
    let dataset = section.string(reporter, "dataset");
    let (Field::Found(name), Field::Found(dataset)) = (name, dataset) else {
        reporter.error_with_hint(
            at,
            "an input table needs 'name' and 'dataset'",
            "write { name = \"traj.h5md\", dataset = \"HASH\" } with the hash `upglobe dataset put` printed",
        );
        return None;
    };
    // The name and the hash are checked apart, so a table wrong in both says so at once.
    let named = check_relative(reporter, "inputs", &name) && {
        let fresh = seen.insert(name.value);
        if !fresh {
            reporter.error(name.at, format!("input '{}' appears twice", name.value));
        }
        fresh
    };
    let hash = upglobe_protocol::BlobHash::from_hex(dataset.value);
    if hash.is_none() {
        reporter.error_with_hint(
            dataset.at,
            format!("'{}' is not a dataset hash", dataset.value),
            "a dataset is named by the 64 hex digits `upglobe dataset put` and `upglobe dataset ls` print",
        );
    }
    let hash = hash.filter(|_| named)?;
    Some(InputFile { name: name.value.to_string(), source: InputSource::Dataset(hash) })
}

fn input(reporter: &mut Reporter, name: &Located<&str>, base_dir: &Path) -> Option<InputFile> {
    if !check_relative(reporter, "inputs", name) {
        return None;
    }
    let path = base_dir.join(name.value);
    let problem = match std::fs::metadata(&path) {
        Ok(metadata) if metadata.is_file() => {
            return Some(InputFile { name: name.value.to_string(), source: InputSource::Path(path) });
        }
        Ok(_) => format!("input '{}' is not a regular file", name.value),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            format!("input file '{}' does not exist", name.value)
        }
        Err(error) => format!("cannot read input '{}': {error}", name.value),
    };
    let hint = format!("looked for {}; inputs are files, named relative to the workflow file's folder", path.display());
    reporter.error_with_hint(name.at, problem, hint);
    None
}

fn outputs(reporter: &mut Reporter, job: &Section) -> Field<Vec<String>> {
    strings(reporter, job, "outputs", OUTPUTS_MAX).and_then(|patterns| {
        let checked: Vec<bool> =
            patterns.value.iter().map(|pattern| check_relative(reporter, "outputs", pattern)).collect();
        let all_ok = checked.into_iter().all(|ok| ok);
        all_ok.then(|| patterns.value.iter().map(|pattern| pattern.value.to_string()).collect())
    })
}

fn timeout(reporter: &mut Reporter, job: &Section) -> Field<u64> {
    job.positive_integer(reporter, "timeout").and_then(|timeout| {
        if timeout.value <= TIMEOUT_S_MAX {
            return Some(timeout.value);
        }
        reporter.error_with_hint(
            timeout.at,
            format!("'timeout' {} seconds is more than a week ({TIMEOUT_S_MAX})", timeout.value),
            "split long commands into array tasks, or run the simulation as an md job with checkpointed chunks",
        );
        None
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_ranges_include_both_ends() {
        assert_eq!(task_range("1-3"), Ok(vec![1, 2, 3]));
        assert_eq!(task_range(" 0 - 0 "), Ok(vec![0]));
        assert_eq!(task_range("1-100000").map(|tasks| tasks.len()), Ok(100_000));
    }

    #[test]
    fn task_ranges_say_what_is_wrong() {
        let message = |range: &str| task_range(range).unwrap_err().0;
        assert_eq!(message("1..3"), "cannot read tasks range '1..3'");
        assert_eq!(message("-1-3"), "cannot read tasks range '-1-3'");
        assert_eq!(message("a-3"), "cannot read tasks range 'a-3'");
        assert_eq!(message("3-1"), "tasks range '3-1' is empty: 3 is more than 1");
        assert_eq!(message("0-10000000"), "tasks range '0-10000000' has 10000001 ids; at most 10000000 are allowed");
        assert_eq!(message("1-99999999999999999999"), "cannot read tasks range '1-99999999999999999999'");
    }
}
