//! Typed access to the keys of one table, reporting every wrong type, bad value and unknown key.
//!
//! Each getter returns a [`Field`]: absent, invalid (already reported), or a value with its offset. The
//! callers read every field before giving up, so one pass reports all problems of a table.

use crate::diagnostic::Reporter;
use crate::document::{Entry, Spanned, Table, Value};

/// A value read from the file, and the byte offset where it was written.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Located<T> {
    pub(crate) value: T,
    pub(crate) at: usize,
}

/// The outcome of reading one key.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Field<T> {
    Absent,
    /// Present but unusable; a diagnostic has been reported.
    Invalid,
    Found(Located<T>),
}

impl<T> Field<T> {
    /// The value, the default when absent, or `None` when invalid.
    pub(crate) fn or(self, default: T) -> Option<T> {
        match self {
            Field::Absent => Some(default),
            Field::Invalid => None,
            Field::Found(found) => Some(found.value),
        }
    }

    /// The value if present and valid; `Some(None)` when absent; `None` when invalid.
    pub(crate) fn optional(self) -> Option<Option<Located<T>>> {
        match self {
            Field::Absent => Some(None),
            Field::Invalid => None,
            Field::Found(found) => Some(Some(found)),
        }
    }

    /// Applies a check that may reject the value (after reporting why).
    pub(crate) fn and_then<U>(self, check: impl FnOnce(Located<T>) -> Option<U>) -> Field<U> {
        match self {
            Field::Absent => Field::Absent,
            Field::Invalid => Field::Invalid,
            Field::Found(found) => {
                let at = found.at;
                check(found).map_or(Field::Invalid, |value| Field::Found(Located { value, at }))
            }
        }
    }
}

/// One table of a job, e.g. `[jobs.melt.run]`, with what messages need to name it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Section<'t> {
    pub(crate) table: &'t Table,
    pub(crate) job: &'t str,
    /// The table's name below the job (`run`), or empty for the job table itself.
    pub(crate) name: &'static str,
}

impl<'t> Section<'t> {
    /// The header a person would write for this table: `[jobs.melt.run]`.
    pub(crate) fn header(&self) -> String {
        match self.name {
            "" => format!("[jobs.{}]", self.job),
            name => format!("[jobs.{}.{name}]", self.job),
        }
    }

    /// The key as named in messages about a missing field: `run.steps`, or `kind` at the job level.
    fn qualified(&self, key: &str) -> String {
        match self.name {
            "" => key.to_string(),
            name => format!("{name}.{key}"),
        }
    }

    pub(crate) fn entry(&self, key: &str) -> Option<&'t Entry> {
        self.table.get(key)
    }

    /// Reports a required key that is absent, at the table's header.
    pub(crate) fn require<T>(&self, reporter: &mut Reporter, key: &str, field: Field<T>) -> Option<Located<T>> {
        match field {
            Field::Found(found) => Some(found),
            Field::Invalid => None,
            Field::Absent => {
                self.report_missing(reporter, key);
                None
            }
        }
    }

    pub(crate) fn report_missing(&self, reporter: &mut Reporter, key: &str) {
        reporter.error_with_hint(
            self.table.at,
            format!("job '{}' is missing '{}'", self.job, self.qualified(key)),
            format!("add '{key} = {}' to {}", example(key), self.header()),
        );
    }

    /// Reports keys not in `known`, with the closest known key as a hint.
    pub(crate) fn check_keys(&self, reporter: &mut Reporter, known: &[&str]) {
        check_keys(reporter, self.table, known, &self.header());
    }

    pub(crate) fn integer(&self, reporter: &mut Reporter, key: &str) -> Field<i64> {
        let Some(entry) = self.entry(key) else {
            return Field::Absent;
        };
        integer_value(reporter, key, &entry.value)
    }

    /// An integer that must be at least 1.
    pub(crate) fn positive_integer(&self, reporter: &mut Reporter, key: &str) -> Field<u64> {
        self.integer(reporter, key).and_then(|found| {
            let positive = u64::try_from(found.value).ok().filter(|&value| value > 0);
            if positive.is_none() {
                reporter.error(found.at, format!("'{key}' must be positive, found {}", found.value));
            }
            positive
        })
    }

    pub(crate) fn non_negative_integer(&self, reporter: &mut Reporter, key: &str) -> Field<u64> {
        self.integer(reporter, key).and_then(|found| {
            let value = u64::try_from(found.value).ok();
            if value.is_none() {
                reporter.error(found.at, format!("'{key}' must not be negative, found {}", found.value));
            }
            value
        })
    }

    /// A finite number; integers are accepted too, since `mass = 1` means 1.0.
    pub(crate) fn number(&self, reporter: &mut Reporter, key: &str) -> Field<f64> {
        let Some(entry) = self.entry(key) else {
            return Field::Absent;
        };
        let spanned = &entry.value;
        match spanned.value {
            Value::Float(value) if value.is_finite() => found(value, spanned.at),
            Value::Float(value) => {
                reporter.error(spanned.at, format!("'{key}' must be a finite number, found {value}"));
                Field::Invalid
            }
            Value::Integer(value) => found(value as f64, spanned.at),
            _ => wrong_type(reporter, "a number", key, spanned),
        }
    }

    pub(crate) fn positive_number(&self, reporter: &mut Reporter, key: &str) -> Field<f64> {
        self.number(reporter, key).and_then(|found| {
            if found.value > 0.0 {
                return Some(found.value);
            }
            reporter.error(found.at, format!("'{key}' must be positive, found {}", found.value));
            None
        })
    }

    pub(crate) fn non_negative_number(&self, reporter: &mut Reporter, key: &str) -> Field<f64> {
        self.number(reporter, key).and_then(|found| {
            if found.value >= 0.0 {
                return Some(found.value);
            }
            reporter.error(found.at, format!("'{key}' must not be negative, found {}", found.value));
            None
        })
    }

    pub(crate) fn string(&self, reporter: &mut Reporter, key: &str) -> Field<&'t str> {
        let Some(entry) = self.entry(key) else {
            return Field::Absent;
        };
        string_value(reporter, key, &entry.value)
    }

    pub(crate) fn boolean(&self, reporter: &mut Reporter, key: &str) -> Field<bool> {
        let Some(entry) = self.entry(key) else {
            return Field::Absent;
        };
        match entry.value.value {
            Value::Boolean(value) => found(value, entry.value.at),
            _ => wrong_type(reporter, "a boolean", key, &entry.value),
        }
    }

    pub(crate) fn array(&self, reporter: &mut Reporter, key: &str) -> Field<&'t [Spanned]> {
        let Some(entry) = self.entry(key) else {
            return Field::Absent;
        };
        match &entry.value.value {
            Value::Array(elements) => found(elements.as_slice(), entry.value.at),
            _ => wrong_type(reporter, "an array", key, &entry.value),
        }
    }

    /// A sub-table such as `system`, as a section of the same job.
    pub(crate) fn section(&self, reporter: &mut Reporter, key: &'static str) -> Field<Section<'t>> {
        let Some(entry) = self.entry(key) else {
            return Field::Absent;
        };
        match &entry.value.value {
            Value::Table(table) => found(Section { table, job: self.job, name: key }, entry.value.at),
            _ => wrong_type(reporter, "a table", key, &entry.value),
        }
    }
}

fn found<T>(value: T, at: usize) -> Field<T> {
    Field::Found(Located { value, at })
}

pub(crate) fn integer_value(reporter: &mut Reporter, key: &str, spanned: &Spanned) -> Field<i64> {
    match spanned.value {
        Value::Integer(value) => found(value, spanned.at),
        _ => wrong_type(reporter, "an integer", key, spanned),
    }
}

pub(crate) fn string_value<'t>(reporter: &mut Reporter, key: &str, spanned: &'t Spanned) -> Field<&'t str> {
    match &spanned.value {
        Value::String(text) => found(text.as_str(), spanned.at),
        _ => wrong_type(reporter, "a string", key, spanned),
    }
}

/// Reports `expected X for 'key', found Y`, with a hint where the fix is clear.
pub(crate) fn wrong_type<T>(reporter: &mut Reporter, expected: &str, key: &str, spanned: &Spanned) -> Field<T> {
    let message = format!("expected {expected} for '{key}', found {}", spanned.value.type_name());
    match type_hint(expected, &spanned.value) {
        Some(hint) => reporter.error_with_hint(spanned.at, message, hint),
        None => reporter.error(spanned.at, message),
    }
    Field::Invalid
}

fn type_hint(expected: &str, value: &Value) -> Option<String> {
    match value {
        Value::String(text) if expected != "a string" && text.trim().parse::<f64>().is_ok() => {
            Some(format!("remove the quotes: {}", text.trim()))
        }
        Value::Float(number) if expected == "an integer" && number.fract() == 0.0 && number.abs() < 1e15 => {
            Some(format!("write a whole number without a decimal point: {}", *number as i64))
        }
        Value::Integer(_) | Value::Float(_) | Value::Boolean(_) if expected == "a string" => {
            Some("put the value in double quotes".to_string())
        }
        Value::ArrayOfTables(_) if expected == "a table" => Some("use single brackets: [table], not [[table]]".into()),
        _ => None,
    }
}

/// Reports each key of `table` that is not in `known`. `place` names the table in hints.
pub(crate) fn check_keys(reporter: &mut Reporter, table: &Table, known: &[&str], place: &str) {
    report_unknown(reporter, table.entries.iter(), known, place);
}

/// Reports each of `entries` whose key is not in `known`, with the closest known key as a hint.
pub(crate) fn report_unknown<'e>(
    reporter: &mut Reporter,
    entries: impl Iterator<Item = &'e Entry>,
    known: &[&str],
    place: &str,
) {
    for entry in entries.filter(|entry| !known.contains(&entry.key.as_str())) {
        let hint = match closest(&entry.key, known.iter().copied()) {
            Some(suggestion) => format!("did you mean '{suggestion}'?"),
            None => format!("valid keys in {place}: {}", known.join(", ")),
        };
        reporter.error_with_hint(entry.key_at, format!("unknown key '{}'", entry.key), hint);
    }
}

/// The candidate most like `word`, if any is close enough to be what was meant.
pub(crate) fn closest<'c>(word: &str, candidates: impl IntoIterator<Item = &'c str>) -> Option<&'c str> {
    // Jaro-Winkler favours a shared prefix, which matches how keys get mistyped or shortened
    // (`chunk` for `chunk_steps`); 0.8 keeps unrelated words out.
    const SIMILARITY_MIN: f64 = 0.8;
    let word = word.to_lowercase();
    candidates
        .into_iter()
        .map(|candidate| (strsim::jaro_winkler(&word, &candidate.to_lowercase()), candidate))
        .filter(|&(similarity, _)| similarity >= SIMILARITY_MIN)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, candidate)| candidate)
}

/// A plausible value for each key, for "add 'key = value'" hints.
fn example(key: &str) -> &'static str {
    match key {
        "kind" => "\"md\"",
        "lattice" => "\"fcc\"",
        "cells" => "[10, 10, 10]",
        "density" => "0.8442",
        "temperature" => "1.0",
        "seed" => "12345",
        "cutoff" => "2.5",
        "steps" => "1000",
        "chunk_steps" => "100",
        "damping" => "1.0",
        "argv" => "[\"sh\", \"run.sh\", \"{task}\"]",
        "file" => "\"energies.txt\"",
        "image" => "\"busybox:1.36\"",
        "chunks" => "5",
        "resume" => "[\"lmp\", \"-in\", \"resume.in\"]",
        "files" => "[\"restart.bin\"]",
        "system" | "potential" | "run" => "{ ... }",
        _ => "...",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn closest_finds_typos_and_prefixes_but_not_strangers() {
        let keys = ["timestep", "steps", "chunk_steps", "thermo"];
        assert_eq!(closest("stpes", keys), Some("steps"));
        assert_eq!(closest("chunk", keys), Some("chunk_steps"));
        assert_eq!(closest("chunksteps", keys), Some("chunk_steps"));
        assert_eq!(closest("Thermo", keys), Some("thermo"));
        assert_eq!(closest("pressure", keys), None);
    }
}
