//! Errors of chain calls, with the contracts' custom errors turned into words.

use alloy::primitives::{Address, U256};
use alloy::sol_types::SolInterface;

use crate::amount;
use crate::bindings::JobEscrow::JobEscrowErrors;
use crate::bindings::Registry::RegistryErrors;

pub type Result<T, E = ChainError> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum ChainError {
    /// The contract refused the call; `error` is the Solidity error's name (`ChunkAlreadyPaid`),
    /// `reason` says it in words with its arguments.
    #[error("{call} was refused: {reason}")]
    Revert { call: String, error: String, reason: String },
    /// The endpoint could not be reached or answered something unexpected.
    #[error("{call}: {message}")]
    Rpc { call: String, message: String },
    /// A deployment file, a key or an amount that cannot be used.
    #[error("{0}")]
    Invalid(String),
}

impl ChainError {
    /// The Solidity error's name when the contract refused the call.
    pub fn revert_name(&self) -> Option<&str> {
        match self {
            ChainError::Revert { error, .. } => Some(error),
            _ => None,
        }
    }

    pub(crate) fn from_contract(call: &str, error: alloy::contract::Error) -> ChainError {
        match error.as_revert_data() {
            Some(data) => {
                let (error, reason) = describe_revert(&data);
                ChainError::Revert { call: call.to_string(), error, reason }
            }
            None => ChainError::Rpc { call: call.to_string(), message: error.to_string() },
        }
    }

    pub(crate) fn rpc(call: &str, error: impl std::fmt::Display) -> ChainError {
        ChainError::Rpc { call: call.to_string(), message: error.to_string() }
    }
}

fn eth(wei: impl Into<U256>) -> String {
    amount::format(wei.into())
}

fn token(token: Address) -> String {
    if token == Address::ZERO { "ETH".to_string() } else { format!("token {token}") }
}

const STATES: [&str; 4] = ["not registered", "active", "suspected", "punished"];

fn state(s: u8) -> &'static str {
    STATES.get(s as usize).copied().unwrap_or("in an unknown state")
}

fn date(unix: u64) -> String {
    format!("unix time {unix}")
}

/// The error's name and what it means, for revert data of either contract (or a plain
/// `require` message or panic from any other).
pub fn describe_revert(data: &[u8]) -> (String, String) {
    if let Ok(e) = RegistryErrors::abi_decode(data) {
        return describe_registry(e);
    }
    if let Ok(e) = JobEscrowErrors::abi_decode(data) {
        return describe_escrow(e);
    }
    if data.is_empty() {
        return ("revert".into(), "the contract reverted without a reason".into());
    }
    // Error(string) from `require(.., "reason")`, or Panic(uint256) from an assert or overflow.
    let standard = [[0x08, 0xc3, 0x79, 0xa0], [0x4e, 0x48, 0x7b, 0x71]];
    match alloy::sol_types::decode_revert_reason(data) {
        Some(reason) if data.len() >= 4 && standard.iter().any(|s| data[..4] == s[..]) => ("Error".into(), reason),
        _ => ("unknown".into(), format!("the contract reverted with unknown data 0x{}", alloy::hex::encode(data))),
    }
}

fn describe_registry(e: RegistryErrors) -> (String, String) {
    use RegistryErrors as E;
    let reason = match &e {
        E::Unauthorized(e) => format!("{} may not do this", e.caller),
        E::EscrowAlreadySet(_) => "the registry's escrow is already set".into(),
        E::StakeTooSmall(e) => format!("a stake of {} is below the minimum of {}", eth(e.sent), eth(e.required)),
        E::WrongHubState(e) => format!("hub {} is {}", e.hub, state(e.state)),
        E::HubLocked(e) => format!("hub {}'s funds are locked by the DAO until {}", e.hub, date(e.lockedUntil)),
        E::HubNotPayable(e) => format!(
            "hub {} is not whitelisted, not in good standing or staked below the minimum, so it cannot be paid",
            e.hub
        ),
        E::WorkerTaken(e) => format!("worker {} is attached to hub {}", e.workerId, e.hub),
        E::NotYourWorker(e) => format!("worker {} is not attached to this hub", e.workerId),
        E::UnstakeNotReady(e) if e.unstakeAt == 0 => "ask for the stake back first (`upglobe hub unstake`)".into(),
        E::UnstakeNotReady(e) => format!("the stake can be withdrawn from {}", date(e.unstakeAt)),
        E::EvidencePending(e) => format!("hub {} has {} open piece(s) of evidence against it", e.hub, e.count),
        E::InsufficientFunds(e) => format!("asked for {} but only {} is available", eth(e.requested), eth(e.available)),
        E::BadCredit(_) => "the escrow's credit does not add up".into(),
        E::TokenListIncomplete(e) => {
            format!("list every token the hub holds, in ascending order ({} listed, {} held)", e.listed, e.held)
        }
        E::TooManyTokenAccounts(e) => format!("hub {} already holds the most tokens it may", e.hub),
        E::EvidenceExists(e) => format!("evidence {} was already submitted", e.evidenceId),
        E::EvidenceNotOpen(e) => format!("evidence {} is not open", e.evidenceId),
        E::DisputeWindowOpen(e) => format!("the dispute window is open until {}", date(e.endsAt)),
        E::DisputeWindowClosed(e) => format!("the dispute window closed at {}", date(e.endsAt)),
        E::EvidenceChunkOutOfRange(e) => {
            format!(
                "chunk {} is past the escrow job's {} chunks, so there is no result to contradict",
                e.chunkIndex, e.chunksMax
            )
        }
        E::ReporterNotApproved(e) => format!(
            "evidence {} comes from reporter {}, which the DAO had not approved when it was submitted or no \
             longer approves: only the DAO may execute it",
            e.evidenceId, e.reporter
        ),
        E::Reentrancy(_) => "a second call entered the contract while the first was still running".into(),
        E::TransferFailed(e) => format!("sending {} {} to {} failed", e.amount, token(e.token), e.to),
    };
    (error_name(&e), reason)
}

fn describe_escrow(e: JobEscrowErrors) -> (String, String) {
    use JobEscrowErrors as E;
    let reason = match &e {
        E::Unauthorized(e) => format!("{} may not do this", e.caller),
        E::UnknownJob(e) => format!("there is no escrow job {}", e.jobId),
        E::BadJob(_) => "the job's price, chunk count, reporter, deadline or deposit is not valid".into(),
        E::WrongJobStatus(e) => {
            let status = ["unknown", "open", "completed", "closed"].get(e.status as usize).copied().unwrap_or("?");
            format!("escrow job {} is {status}", e.jobId)
        }
        E::BadBatch(_) => "the batch's hubs, counts and units do not match its chunks".into(),
        E::ChunkOutOfRange(e) => format!("chunk {} is past the job's {} chunks", e.chunkIndex, e.chunksMax),
        E::ChunkAlreadyPaid(e) => format!("chunk {} of escrow job {} is already paid", e.chunkIndex, e.jobId),
        E::TooManyUnits(e) => {
            format!("hub {} claims {} units, more than its chunks allow ({})", e.hub, e.units, e.unitsMax)
        }
        E::DepositExceeded(e) => {
            format!("the batch costs {} but only {} of the deposit is left", eth(e.requested), eth(e.available))
        }
        E::RefundTooEarly(e) => format!("the job is still open; the refund is possible from {}", date(e.deadline)),
        E::Reentrancy(_) => "a second call entered the contract while the first was still running".into(),
        E::TransferFailed(e) => format!("sending {} {} to {} failed", e.amount, token(e.token), e.to),
    };
    (error_name(&e), reason)
}

/// `ChunkAlreadyPaid(ChunkAlreadyPaid { .. })` -> `ChunkAlreadyPaid`.
fn error_name(e: &impl std::fmt::Debug) -> String {
    let debug = format!("{e:?}");
    debug.split(['(', ' ', '{']).next().unwrap_or_default().to_string()
}

#[cfg(test)]
mod tests {
    use alloy::sol_types::SolError;

    use super::*;
    use crate::bindings::JobEscrow;

    #[test]
    fn revert_data_becomes_words() {
        let data = JobEscrow::ChunkAlreadyPaid { jobId: U256::from(3), chunkIndex: U256::from(17) }.abi_encode();
        let (name, reason) = describe_revert(&data);
        assert_eq!(name, "ChunkAlreadyPaid");
        assert_eq!(reason, "chunk 17 of escrow job 3 is already paid");
        let (name, reason) = describe_revert(&alloy::sol_types::Revert::from("allowance").abi_encode());
        assert_eq!((name.as_str(), reason.as_str()), ("Error", "revert: allowance"));
        assert_eq!(describe_revert(&[1, 2, 3]).0, "unknown");
        let data =
            crate::bindings::Registry::EvidenceChunkOutOfRange { chunkIndex: U256::from(9), chunksMax: 9 }.abi_encode();
        let (name, reason) = describe_revert(&data);
        assert_eq!(name, "EvidenceChunkOutOfRange");
        assert!(reason.starts_with("chunk 9 is past the escrow job's 9 chunks"), "{reason}");
    }
}
