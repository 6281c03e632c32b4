//! Amounts as people write them (`0.5 ether`, `20 gwei`) and back, for alloy's `U256`; the
//! parsing itself is [`upglobe_protocol::amount`], shared with workflow files.

use alloy::primitives::U256;

pub use upglobe_protocol::amount::{format_wei, parse_wei};

/// Parses `"1.5 ether"`, `"20gwei"`, `"7 wei"` or `"7"` (wei), exactly.
pub fn parse(text: &str) -> Result<U256, String> {
    parse_wei(text).map(U256::from)
}

/// Writes wei as ether with as many decimals as it needs; amounts past `u128` in wei.
pub fn format(wei: U256) -> String {
    match u128::try_from(wei) {
        Ok(wei) => format_wei(wei),
        Err(_) => format!("{wei} wei"),
    }
}
