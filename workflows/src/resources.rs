//! `[jobs.NAME.resources]`: what one replica of a job needs on a worker.

use upglobe_protocol::messages::{GpuRequest, Resources};

use crate::diagnostic::Reporter;
use crate::document::Value;
use crate::fields::{Field, Section};

const KEYS: &[&str] = &["cpus", "gpus", "memory", "vram", "backend"];

const UNITS: &[(&str, u64)] = &[
    ("B", 1),
    ("KiB", 1 << 10),
    ("MiB", 1 << 20),
    ("GiB", 1 << 30),
    ("TiB", 1 << 40),
    ("KB", 1_000),
    ("MB", 1_000_000),
    ("GB", 1_000_000_000),
    ("TB", 1_000_000_000_000),
];

const MEMORY_HINT: &str = "write an integer number of bytes, or a string with a unit: B, KiB, MiB, GiB, TiB, KB, MB, GB, TB (e.g. \"512MiB\")";

/// The resources of a job, and what it asks of its GPUs: one CPU and nothing else unless the
/// table says more.
pub(crate) fn read(reporter: &mut Reporter, job: &Section) -> Option<(Resources, GpuRequest)> {
    let defaults = Resources { cpus: 1, memory_bytes: 0, gpus: 0 };
    let section = match job.section(reporter, "resources") {
        Field::Absent => return Some((defaults, GpuRequest::default())),
        Field::Invalid => return None,
        Field::Found(found) => found.value,
    };
    section.check_keys(reporter, KEYS);
    let cpus = count(reporter, &section, "cpus", 1).or(defaults.cpus);
    let gpus = count(reporter, &section, "gpus", 0).or(defaults.gpus);
    let memory_bytes = memory(reporter, &section, "memory").or(defaults.memory_bytes);
    let vram_bytes = memory(reporter, &section, "vram").or(0);
    let backend = backend(reporter, &section);
    if gpus == Some(0) {
        for key in ["vram", "backend"] {
            if let Some(entry) = section.entry(key) {
                reporter.error_with_hint(
                    entry.key_at,
                    format!("'{key}' asks something of the job's GPUs, but it asks for none"),
                    "add gpus = 1 (or more) to the table",
                );
                return None;
            }
        }
    }
    let resources = Resources { cpus: cpus?, memory_bytes: memory_bytes?, gpus: gpus? };
    Some((resources, GpuRequest { vram_bytes: vram_bytes?, backend: backend? }))
}

/// `backend = "vulkan"`: the wgpu backend of the job's MD chunks.
fn backend(reporter: &mut Reporter, section: &Section) -> Option<Option<String>> {
    let backend = match section.string(reporter, "backend") {
        Field::Absent => return Some(None),
        Field::Invalid => return None,
        Field::Found(found) => found,
    };
    if GpuRequest::BACKENDS.contains(&backend.value) {
        return Some(Some(backend.value.to_string()));
    }
    let hint = match crate::fields::closest(backend.value, GpuRequest::BACKENDS) {
        Some(suggestion) => format!("did you mean '{suggestion}'?"),
        None => format!("backends are {}", GpuRequest::BACKENDS.join(", ")),
    };
    reporter.error_with_hint(backend.at, format!("unknown GPU backend '{}'", backend.value), hint);
    None
}

fn count(reporter: &mut Reporter, section: &Section, key: &str, minimum: u32) -> Field<u32> {
    section.integer(reporter, key).and_then(|found| {
        let value = u32::try_from(found.value).ok().filter(|&value| value >= minimum);
        if value.is_none() {
            reporter
                .error(found.at, format!("'{key}' must be between {minimum} and {}, found {}", u32::MAX, found.value));
        }
        value
    })
}

fn memory(reporter: &mut Reporter, section: &Section, key: &str) -> Field<u64> {
    let Some(entry) = section.entry(key) else {
        return Field::Absent;
    };
    let at = entry.value.at;
    let bytes = match &entry.value.value {
        Value::Integer(bytes) => u64::try_from(*bytes).map_err(|_| format!("memory {bytes} is negative")),
        Value::String(text) => parse_memory(text),
        _ => {
            return crate::fields::wrong_type(reporter, "an integer or a string", key, &entry.value);
        }
    };
    match bytes {
        Ok(bytes) => Field::Found(crate::fields::Located { value: bytes, at }),
        Err(message) => {
            reporter.error_with_hint(at, message, MEMORY_HINT);
            Field::Invalid
        }
    }
}

/// Parses `"512MiB"`, `"1.5 GB"` or `"4096"` into bytes; the result must be a whole number of bytes.
pub fn parse_memory(text: &str) -> Result<u64, String> {
    let cannot = || format!("cannot read memory '{text}'");
    let trimmed = text.trim();
    let number_end = trimmed.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(trimmed.len());
    let (number, unit) = trimmed.split_at(number_end);
    let multiplier = match unit.trim() {
        "" => 1,
        unit => UNITS.iter().find(|(name, _)| *name == unit).ok_or_else(cannot)?.1,
    };
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    let digits_ok = |part: &str| part.len() <= 20 && part.bytes().all(|b| b.is_ascii_digit());
    if whole.is_empty() || !digits_ok(whole) || !digits_ok(fraction) || (number.contains('.') && fraction.is_empty()) {
        return Err(cannot());
    }
    // u128 holds 20 digits times a terabyte exactly, so the only rounding question is the fraction.
    let whole: u128 = whole.parse().map_err(|_| cannot())?;
    let fraction_scale = 10u128.pow(fraction.len() as u32);
    let fraction_value: u128 = if fraction.is_empty() { 0 } else { fraction.parse().map_err(|_| cannot())? };
    let fraction_bytes = fraction_value * multiplier as u128;
    if !fraction_bytes.is_multiple_of(fraction_scale) {
        return Err(format!("memory '{text}' is not a whole number of bytes"));
    }
    let bytes = whole * multiplier as u128 + fraction_bytes / fraction_scale;
    u64::try_from(bytes).map_err(|_| format!("memory '{text}' is more than {} bytes", u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_units_are_binary_or_decimal_as_named() {
        assert_eq!(parse_memory("512MiB"), Ok(512 << 20));
        assert_eq!(parse_memory("512 MiB"), Ok(512 << 20));
        assert_eq!(parse_memory("2GB"), Ok(2_000_000_000));
        assert_eq!(parse_memory("1.5GiB"), Ok(3 << 29));
        assert_eq!(parse_memory("4096"), Ok(4096));
        assert_eq!(parse_memory("7B"), Ok(7));
        assert_eq!(parse_memory("16TiB"), Ok(16 << 40));
    }

    #[test]
    fn memory_rejects_what_it_cannot_read_exactly() {
        assert_eq!(parse_memory("512mb"), Err("cannot read memory '512mb'".to_string()));
        assert_eq!(parse_memory("MiB"), Err("cannot read memory 'MiB'".to_string()));
        assert_eq!(parse_memory("1."), Err("cannot read memory '1.'".to_string()));
        assert_eq!(parse_memory("-1GiB"), Err("cannot read memory '-1GiB'".to_string()));
        assert_eq!(parse_memory("0.3B"), Err("memory '0.3B' is not a whole number of bytes".to_string()));
        assert_eq!(parse_memory("20000000TB"), Err(format!("memory '20000000TB' is more than {} bytes", u64::MAX)));
    }
}
