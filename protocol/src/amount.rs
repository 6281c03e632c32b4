//! Amounts of ETH (or of an 18-decimal token) as people write them: `0.5 ether`, `20 gwei`,
//! `1000 wei`, or a bare number of wei. In wei, as `u128` (all the ether there is fits 1e12 times).

const UNITS: [(&str, u32); 3] = [("ether", 18), ("gwei", 9), ("wei", 0)];

/// Parses `"1.5 ether"`, `"20gwei"`, `"7 wei"` or `"7"` (wei). Exact: a fraction finer than one
/// wei is an error, never rounded.
pub fn parse_wei(text: &str) -> Result<u128, String> {
    let trimmed = text.trim();
    let (number, decimals) = UNITS
        .iter()
        .find_map(|(unit, decimals)| trimmed.strip_suffix(unit).map(|n| (n.trim(), *decimals)))
        .unwrap_or((trimmed, 0));
    let bad = || format!("{text:?} is not an amount (write it like \"0.5 ether\", \"20 gwei\" or \"1000 wei\")");
    if number.is_empty() || number.chars().any(|c| !(c.is_ascii_digit() || c == '.' || c == '_')) {
        return Err(bad());
    }
    let number = number.replace('_', "");
    let (whole, fraction) = number.split_once('.').unwrap_or((&number, ""));
    if whole.is_empty() && fraction.is_empty() || fraction.contains('.') {
        return Err(bad());
    }
    if fraction.len() > decimals as usize {
        return Err(format!("{text:?} is finer than one wei"));
    }
    let digits = format!("{whole}{fraction:0<width$}", width = decimals as usize);
    if digits.is_empty() {
        return Ok(0);
    }
    digits.parse().map_err(|_| format!("{text:?} is too large"))
}

/// Writes wei the way [`parse_wei`] reads it, in ether with as many decimals as it needs.
pub fn format_wei(wei: u128) -> String {
    let digits = wei.to_string();
    let (whole, fraction) = if digits.len() > 18 { digits.split_at(digits.len() - 18) } else { ("0", digits.as_str()) };
    let fraction = format!("{fraction:0>18}");
    let fraction = fraction.trim_end_matches('0');
    if fraction.is_empty() { format!("{whole} ether") } else { format!("{whole}.{fraction} ether") }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_and_writes_amounts() {
        assert_eq!(parse_wei("1.5 ether").unwrap(), 1_500_000_000_000_000_000);
        assert_eq!(parse_wei("20gwei").unwrap(), 20_000_000_000);
        assert_eq!(parse_wei("7").unwrap(), 7);
        assert_eq!(parse_wei(".5 ether").unwrap(), 500_000_000_000_000_000);
        assert_eq!(parse_wei("1_000 wei").unwrap(), 1000);
        for bad in ["", "ether", "1.2.3 ether", "-1 ether", "0.1 wei", "1e18", "five"] {
            assert!(parse_wei(bad).is_err(), "{bad:?} parsed");
        }
        assert_eq!(format_wei(1_500_000_000_000_000_000), "1.5 ether");
        assert_eq!(format_wei(7), "0.000000000000000007 ether");
        assert_eq!(format_wei(0), "0 ether");
        assert!(parse_wei("1000000000000000000000 ether").unwrap_err().contains("too large"));
        for text in ["0.001 ether", "123.456 ether", "1 ether"] {
            assert_eq!(format_wei(parse_wei(text).unwrap()), text);
        }
    }
}
