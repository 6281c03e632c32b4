//! The `[payment]` table: a workflow whose verified chunks are paid from an escrow on Ethereum.
//!
//! ```toml
//! [payment]
//! price_per_chunk = "0.001 ether"   # paid to the hub of the worker that computed each chunk
//! deposit = "0.5 ether"             # optional; default: the price of every chunk
//! deadline_days = 30                # optional; after it the requester may take the rest back
//! ```

use upglobe_protocol::amount::parse_wei;

use crate::diagnostic::Reporter;
use crate::document::{Table, Value};
use crate::fields::{Field, check_keys, integer_value, string_value, wrong_type};

const KEYS: &[&str] = &["price_per_chunk", "deposit", "deadline_days"];
pub const DEADLINE_DAYS_DEFAULT: u64 = 30;
/// Ten years: a deadline is when unspent money goes back, not a promise to wait forever.
pub const DEADLINE_DAYS_MAX: u64 = 3650;

/// How a workflow pays; amounts in wei.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Payment {
    pub price_per_chunk: u128,
    /// `None`: the price of every chunk of the workflow.
    pub deposit: Option<u128>,
    pub deadline_days: u64,
}

pub(crate) fn read(reporter: &mut Reporter, root: &Table) -> Option<Option<Payment>> {
    let Some(entry) = root.get("payment") else {
        return Some(None);
    };
    let table = match &entry.value.value {
        Value::Table(table) => table,
        _ => {
            let _: Field<()> = wrong_type(reporter, "a table", "payment", &entry.value);
            return None;
        }
    };
    check_keys(reporter, table, KEYS, "[payment]");
    let amount = |reporter: &mut Reporter, key: &str| -> Option<Option<u128>> {
        let Some(entry) = table.get(key) else { return Some(None) };
        let text = match string_value(reporter, key, &entry.value) {
            Field::Found(found) => found,
            _ => return None,
        };
        match parse_wei(text.value) {
            Ok(0) => {
                reporter.error(text.at, format!("'{key}' must be more than nothing"));
                None
            }
            Ok(wei) => Some(Some(wei)),
            Err(problem) => {
                reporter.error_with_hint(text.at, format!("'{key}': {problem}"), "write it like \"0.001 ether\"");
                None
            }
        }
    };
    let price = amount(reporter, "price_per_chunk");
    let deposit = amount(reporter, "deposit");
    let deadline_days = match table.get("deadline_days") {
        None => Some(DEADLINE_DAYS_DEFAULT),
        Some(entry) => match integer_value(reporter, "deadline_days", &entry.value) {
            Field::Found(found) if (1..=DEADLINE_DAYS_MAX as i64).contains(&found.value) => Some(found.value as u64),
            Field::Found(found) => {
                reporter.error(
                    found.at,
                    format!("'deadline_days' must be 1 to {DEADLINE_DAYS_MAX}, found {}", found.value),
                );
                None
            }
            _ => None,
        },
    };
    let price = match price? {
        Some(price) => price,
        None => {
            reporter.error_with_hint(
                table.at,
                "[payment] is missing 'price_per_chunk'",
                "add 'price_per_chunk = \"0.001 ether\"' to [payment]",
            );
            return None;
        }
    };
    Some(Some(Payment { price_per_chunk: price, deposit: deposit?, deadline_days: deadline_days? }))
}
