//! Whether two command results agree within the tolerances of a job's rules
//! ([`upglobe_protocol::trust::ToleranceRule`]): the numbers of text columns or HDF5 datasets may
//! differ a little, everything else must be identical.
//!
//! Two numbers `a`, `b` agree when `|a - b| <= absolute + relative * max(|a|, |b|)`. NaN agrees only
//! with NaN and an infinity only with the same infinity, since no tolerance makes a finite number
//! close to either. A disagreement comes back as [`Agreement::Differ`] with where and by how much; an
//! error is kept for what prevents comparing at all (a missing blob, a file that is not HDF5).

use std::collections::BTreeSet;

use upglobe_protocol::messages::FileRef;
use upglobe_protocol::trust::{Compared, ToleranceRule};

use crate::{BlobStore, DatasetError, Result};

#[derive(Debug, Clone, PartialEq)]
pub enum Agreement {
    Agree,
    /// Where they differ and by how much, for a person to read.
    Differ(String),
}

/// A token is shown at most this long in a message, so that a message stays one readable line.
const TOKEN_SHOWN_BYTES_MAX: usize = 40;

#[derive(Debug, Clone, Copy)]
struct Tolerance {
    absolute: f64,
    relative: f64,
}

impl Tolerance {
    /// The workflow reader refuses negative and non-finite tolerances, but a submission need not come
    /// from it: such a value is read as 0, the strictest, rather than as a NaN that would accept all.
    fn new(absolute: f64, relative: f64) -> Tolerance {
        let strict = |value: f64| if value.is_finite() && value >= 0.0 { value } else { 0.0 };
        Tolerance { absolute: strict(absolute), relative: strict(relative) }
    }

    /// Why `a` and `b` disagree, or `None` when they agree.
    fn disagreement(&self, a: f64, b: f64) -> Option<String> {
        if a.is_nan() || b.is_nan() || a.is_infinite() || b.is_infinite() {
            let same = (a.is_nan() && b.is_nan()) || a == b;
            return (!same).then(|| "differ: NaN and infinities agree only with themselves".to_string());
        }
        let difference = (a - b).abs();
        let allowed = self.absolute + self.relative * a.abs().max(b.abs());
        (difference > allowed).then(|| {
            format!(
                "differ by {difference:.1e}, more than the tolerance {allowed:.1e} (absolute {}, relative {})",
                short(self.absolute),
                short(self.relative)
            )
        })
    }
}

/// A tolerance as written in a workflow: `0`, `1e-6`.
fn short(value: f64) -> String {
    if value == 0.0 { "0".to_string() } else { format!("{value:e}") }
}

/// A token as text for a message, cut short if long.
fn shown(token: &[u8]) -> String {
    let text = String::from_utf8_lossy(&token[..token.len().min(TOKEN_SHOWN_BYTES_MAX)]);
    if token.len() > TOKEN_SHOWN_BYTES_MAX { format!("{text}…") } else { text.into_owned() }
}

/// Lines that hold data, numbered from 1 as in the file: blank lines and `#` comments are skipped.
fn data_lines(bytes: &[u8]) -> impl Iterator<Item = (usize, &[u8])> {
    bytes.split(|&byte| byte == b'\n').enumerate().map(|(index, line)| (index + 1, line)).filter(|(_, line)| match line
        .iter()
        .find(|byte| !byte.is_ascii_whitespace())
    {
        None | Some(b'#') => false,
        Some(_) => true,
    })
}

fn tokens(line: &[u8]) -> impl Iterator<Item = &[u8]> {
    line.split(|byte| byte.is_ascii_whitespace()).filter(|token| !token.is_empty())
}

fn number(token: &[u8]) -> Option<f64> {
    std::str::from_utf8(token).ok()?.parse().ok()
}

/// Compares two text files line by line: the `columns` (numbered from 1; empty: all) as numbers
/// within the tolerance, every other token byte for byte.
pub fn compare_text(name: &str, a: &[u8], b: &[u8], columns: &[u32], absolute: f64, relative: f64) -> Agreement {
    let tolerance = Tolerance::new(absolute, relative);
    let (mut lines_a, mut lines_b) = (data_lines(a), data_lines(b));
    let mut compared = 0;
    loop {
        match (lines_a.next(), lines_b.next()) {
            (None, None) => return Agreement::Agree,
            (Some((number_a, line_a)), Some((number_b, line_b))) => {
                if let Some(difference) = compare_line(line_a, line_b, columns, tolerance) {
                    let place = if number_a == number_b {
                        format!("line {number_a}")
                    } else {
                        format!("line {number_a} (line {number_b} of the second)")
                    };
                    return Agreement::Differ(format!("{name} {place}{difference}"));
                }
                compared += 1;
            }
            (first, second) => {
                let count_a = compared + usize::from(first.is_some()) + lines_a.count();
                let count_b = compared + usize::from(second.is_some()) + lines_b.count();
                return Agreement::Differ(format!(
                    "{name} has {count_a} data lines in the first result and {count_b} in the second (blank lines and '#' comments aside)"
                ));
            }
        }
    }
}

/// Why two data lines disagree (`" column 3: ..."`), or `None` when they agree.
fn compare_line(a: &[u8], b: &[u8], columns: &[u32], tolerance: Tolerance) -> Option<String> {
    let (count_a, count_b) = (tokens(a).count(), tokens(b).count());
    if count_a != count_b {
        return Some(format!(": {count_a} columns in the first result and {count_b} in the second"));
    }
    for (index, (token_a, token_b)) in tokens(a).zip(tokens(b)).enumerate() {
        if token_a == token_b {
            continue;
        }
        let column = index + 1;
        let within_tolerance = columns.is_empty() || columns.iter().any(|&compared| compared as usize == column);
        let why = match (within_tolerance, number(token_a), number(token_b)) {
            (false, _, _) => "differ, and the column is not compared within a tolerance".to_string(),
            (true, Some(value_a), Some(value_b)) => match tolerance.disagreement(value_a, value_b) {
                Some(why) => why,
                None => continue,
            },
            (true, _, _) => "differ, and are not both numbers".to_string(),
        };
        return Some(format!(" column {column}: {} and {} {why}", shown(token_a), shown(token_b)));
    }
    None
}

/// Compares the named datasets of two HDF5 files as numbers (integers and floats alike) within the
/// tolerance. A dataset missing on either side, or of another shape, is a difference.
#[cfg(feature = "h5md")]
pub fn compare_hdf5(
    name: &str,
    a: &std::path::Path,
    b: &std::path::Path,
    datasets: &[String],
    absolute: f64,
    relative: f64,
) -> Result<Agreement> {
    let tolerance = Tolerance::new(absolute, relative);
    let (file_a, file_b) = (hdf5_file(name, a, "first")?, hdf5_file(name, b, "second")?);
    for path in datasets {
        let (dataset_a, dataset_b) = match (file_a.dataset(path), file_b.dataset(path)) {
            (Ok(dataset_a), Ok(dataset_b)) => (dataset_a, dataset_b),
            (Err(_), _) => return Ok(missing(name, path, "first")),
            (_, Err(_)) => return Ok(missing(name, path, "second")),
        };
        let (shape_a, shape_b) = (dataset_a.shape(), dataset_b.shape());
        if shape_a != shape_b {
            return Ok(Agreement::Differ(format!("{name} {path}: shapes {shape_a:?} and {shape_b:?} differ")));
        }
        let values_a = hdf5_values(name, path, &dataset_a, "first")?;
        let values_b = hdf5_values(name, path, &dataset_b, "second")?;
        let first_difference = values_a.iter().zip(&values_b).enumerate().find_map(|(index, (&value_a, &value_b))| {
            tolerance.disagreement(value_a, value_b).map(|why| (index, value_a, value_b, why))
        });
        if let Some((index, value_a, value_b, why)) = first_difference {
            let at = unravel(index, &shape_a);
            return Ok(Agreement::Differ(format!("{name} {path} {at:?}: {value_a} and {value_b} {why}")));
        }
    }
    Ok(Agreement::Agree)
}

#[cfg(feature = "h5md")]
fn hdf5_file(name: &str, path: &std::path::Path, side: &str) -> Result<hdf5::File> {
    hdf5::File::open(path).map_err(|error| DatasetError::Compare {
        file: name.to_string(),
        message: format!("the {side} result's file ({}) is not a readable HDF5 file: {error}", path.display()),
    })
}

#[cfg(feature = "h5md")]
fn hdf5_values(name: &str, path: &str, dataset: &hdf5::Dataset, side: &str) -> Result<Vec<f64>> {
    dataset.read_raw::<f64>().map_err(|error| DatasetError::Compare {
        file: name.to_string(),
        message: format!("dataset {path} of the {side} result cannot be read as numbers: {error}"),
    })
}

#[cfg(feature = "h5md")]
fn missing(name: &str, path: &str, side: &str) -> Agreement {
    Agreement::Differ(format!("{name}: dataset {path} is missing from the {side} result"))
}

/// The index of each dimension of element `flat` of an array of `shape`, stored row-major.
#[cfg(feature = "h5md")]
fn unravel(mut flat: usize, shape: &[usize]) -> Vec<usize> {
    let mut index = vec![0; shape.len()];
    for (dimension, &extent) in shape.iter().enumerate().rev() {
        index[dimension] = flat % extent.max(1);
        flat /= extent.max(1);
    }
    index
}

/// Compares two command results' files by the rules: every file a rule names (its `file` exactly, or
/// as a glob pattern) is compared by it; a file on one side only is a difference. Files no rule names
/// are not compared, and a rule whose file neither result has is met.
pub fn compare_outputs(store: &BlobStore, rules: &[ToleranceRule], a: &[FileRef], b: &[FileRef]) -> Result<Agreement> {
    for rule in rules {
        let names: BTreeSet<&str> =
            a.iter().chain(b).map(|file| file.name.as_str()).filter(|name| names_file(&rule.file, name)).collect();
        for name in names {
            let find = |files: &'_ [FileRef]| files.iter().find(|file| file.name == name).cloned();
            let agreement = match (find(a), find(b)) {
                (Some(file_a), Some(file_b)) => compare_file(store, rule, &file_a, &file_b)?,
                (Some(_), None) => Agreement::Differ(format!("{name} is in the first result only")),
                (None, _) => Agreement::Differ(format!("{name} is in the second result only")),
            };
            if agreement != Agreement::Agree {
                return Ok(agreement);
            }
        }
    }
    Ok(Agreement::Agree)
}

/// Whether a rule's `file` names an output file: the same name, or a glob pattern whose `*` stays
/// inside one directory, as the worker collects outputs.
fn names_file(rule_file: &str, name: &str) -> bool {
    let options = glob::MatchOptions { require_literal_separator: true, ..glob::MatchOptions::new() };
    rule_file == name || glob::Pattern::new(rule_file).is_ok_and(|pattern| pattern.matches_with(name, options))
}

fn compare_file(store: &BlobStore, rule: &ToleranceRule, a: &FileRef, b: &FileRef) -> Result<Agreement> {
    if a.blob == b.blob {
        return Ok(Agreement::Agree);
    }
    match &rule.values {
        Compared::Columns(columns) => {
            let (bytes_a, bytes_b) = (store.get(&a.blob)?, store.get(&b.blob)?);
            Ok(compare_text(&a.name, &bytes_a, &bytes_b, columns, rule.absolute, rule.relative))
        }
        Compared::Datasets(datasets) => compare_datasets(store, rule, a, b, datasets),
    }
}

#[cfg(feature = "h5md")]
fn compare_datasets(
    store: &BlobStore,
    rule: &ToleranceRule,
    a: &FileRef,
    b: &FileRef,
    datasets: &[String],
) -> Result<Agreement> {
    for file in [a, b] {
        if !store.contains(&file.blob) {
            return Err(DatasetError::Missing(file.blob.to_hex()));
        }
    }
    let (path_a, path_b) = (store.path(&a.blob), store.path(&b.blob));
    compare_hdf5(&a.name, &path_a, &path_b, datasets, rule.absolute, rule.relative)
}

#[cfg(not(feature = "h5md"))]
fn compare_datasets(_: &BlobStore, _: &ToleranceRule, a: &FileRef, _: &FileRef, _: &[String]) -> Result<Agreement> {
    Err(DatasetError::Compare {
        file: a.name.clone(),
        message: "HDF5 datasets are compared only by a build with the h5md feature (libhdf5)".to_string(),
    })
}
