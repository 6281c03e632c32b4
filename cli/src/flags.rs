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

fn parse<T: FromStr>(text: &str, what: &str) -> Result<T, String> {
    text.trim().parse().map_err(|_| format!("'{text}' is not {what}"))
}

#[cfg(test)]
mod tests {
    use super::*;

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
