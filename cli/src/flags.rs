//! Checked parsers for numeric flags. Every numeric flag has a range, named as a constant next to the
//! flag, so an extreme value (`inf`, `NaN`, `1e300`, `u64::MAX`) is refused by clap with a message that
//! says what is allowed, instead of reaching a `Duration` constructor or an overflowing multiplication.
//!
//! clap prints the flag and the value: "invalid value 'inf' for '--heartbeat <SECONDS>': must be
//! between 0.05 and 3600 seconds".

use std::fmt::Display;
use std::ops::RangeInclusive;
use std::str::FromStr;
use std::time::Duration;

/// A number of seconds (fractions allowed) inside `range`, as a `Duration`.
pub fn seconds(range: RangeInclusive<f64>) -> impl Fn(&str) -> Result<Duration, String> + Clone + Send + Sync {
    move |text| {
        let value = parse::<f64>(text, "a number of seconds")?;
        if !range.contains(&value) {
            return Err(format!("must be between {} and {} seconds", range.start(), range.end()));
        }
        Ok(Duration::from_secs_f64(value))
    }
}

/// A finite number inside `range`.
pub fn number(range: RangeInclusive<f64>) -> impl Fn(&str) -> Result<f64, String> + Clone + Send + Sync {
    move |text| {
        let value = parse::<f64>(text, "a number")?;
        if !range.contains(&value) {
            return Err(format!("must be between {:?} and {:?}", range.start(), range.end()));
        }
        Ok(value)
    }
}

/// An integer inside `range`.
pub fn integer<T>(range: RangeInclusive<T>) -> impl Fn(&str) -> Result<T, String> + Clone + Send + Sync
where
    T: FromStr + PartialOrd + Display + Send + Sync + Clone,
{
    move |text| {
        let value = parse::<T>(text, "a whole number")?;
        if !range.contains(&value) {
            return Err(format!("must be between {} and {}", range.start(), range.end()));
        }
        Ok(value)
    }
}

/// A size in bytes inside `range`: a whole number with an optional unit (`kB`, `MB`, `GB`, `TB`
/// in powers of 1000; `KiB`, `MiB`, `GiB`, `TiB` in powers of 1024), e.g. `1GiB`, `500MB`, `4096`.
pub fn bytes(range: RangeInclusive<u64>) -> impl Fn(&str) -> Result<u64, String> + Clone + Send + Sync {
    move |text| {
        let trimmed = text.trim();
        let split = trimmed.find(|c: char| !c.is_ascii_digit()).unwrap_or(trimmed.len());
        let (digits, unit) = trimmed.split_at(split);
        let scale: u64 = match unit.trim() {
            "" | "B" => 1,
            "kB" | "KB" => 1000,
            "MB" => 1000_u64.pow(2),
            "GB" => 1000_u64.pow(3),
            "TB" => 1000_u64.pow(4),
            "KiB" => 1 << 10,
            "MiB" => 1 << 20,
            "GiB" => 1 << 30,
            "TiB" => 1 << 40,
            other => {
                return Err(format!("'{other}' is not a unit of size (use B, kB, MB, GB, TB, KiB, MiB, GiB or TiB)"));
            }
        };
        let value = parse::<u64>(digits, "a size in bytes")?
            .checked_mul(scale)
            .filter(|value| range.contains(value))
            .ok_or_else(|| format!("must be between {} and {} bytes", range.start(), range.end()))?;
        Ok(value)
    }
}

fn parse<T: FromStr>(text: &str, what: &str) -> Result<T, String> {
    text.trim().parse().map_err(|_| format!("'{text}' is not {what}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_take_units_and_are_checked() {
        let size = bytes(1..=1 << 40);
        assert_eq!(size("1GiB"), Ok(1 << 30));
        assert_eq!(size("500MB"), Ok(500_000_000));
        assert_eq!(size(" 4096 "), Ok(4096));
        assert!(size("2TiB").unwrap_err().contains("between"));
        assert!(size("0").unwrap_err().contains("between"));
        assert!(size("99999999999999999999GiB").is_err());
        assert!(size("1 furlong").unwrap_err().contains("not a unit"));
        assert!(size("GiB").unwrap_err().contains("not a size"));
    }

    #[test]
    fn seconds_are_checked() {
        let heartbeat = seconds(0.05..=3600.0);
        assert_eq!(heartbeat("2"), Ok(Duration::from_secs(2)));
        assert_eq!(heartbeat("0.05"), Ok(Duration::from_millis(50)));
        for bad in ["inf", "-inf", "NaN", "1e300", "0", "-1", "0.01", "3601"] {
            assert_eq!(heartbeat(bad), Err("must be between 0.05 and 3600 seconds".to_string()), "{bad}");
        }
        assert_eq!(heartbeat("two"), Err("'two' is not a number of seconds".to_string()));
    }

    #[test]
    fn numbers_and_integers_are_checked() {
        let density = number(1e-6..=1e3);
        assert_eq!(density("0.8442"), Ok(0.8442));
        assert!(density("NaN").unwrap_err().contains("between 1e-6 and 1000.0"));
        let cells = integer(1usize..=645);
        assert_eq!(cells("20"), Ok(20));
        assert_eq!(cells("0"), Err("must be between 1 and 645".to_string()));
        assert_eq!(cells("18446744073709551616"), Err("'18446744073709551616' is not a whole number".to_string()));
    }
}
