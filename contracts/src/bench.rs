//! The gas of `payBatch` on a local anvil, by batch size: what `upglobe bench gas` prints and
//! contracts/README.md quotes.

use std::time::Duration;

use alloy::primitives::U256;
use serde::Serialize;

use crate::anvil::LocalChain;
use crate::chain::{Batch, Chain, NewJob};
use crate::error::{ChainError, Result};

/// The most chunks one batch may pay (`JobEscrow.BATCH_CHUNKS_MAX`).
pub const BATCH_CHUNKS_MAX: usize = 1024;

/// One batch: its chunks, the gas its receipt reports (the 21 000 base and the calldata
/// included) and that gas per chunk, rounded down.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct GasRow {
    pub batch: usize,
    pub gas_used: u64,
    pub gas_per_chunk: u64,
}

/// Starts an anvil, deploys the contracts, registers and whitelists one hub, opens an ETH job
/// priced per chunk with enough chunks for every batch, pays a one-chunk warm-up batch (the
/// job's first bitmap word and the hub's balance go from zero to non-zero once, not in every
/// batch), then pays one batch of consecutive chunks per size, in the order given.
pub async fn gas(batch_sizes: &[usize]) -> Result<Vec<GasRow>> {
    if let Some(bad) = batch_sizes.iter().find(|&&n| n == 0 || n > BATCH_CHUNKS_MAX) {
        return Err(ChainError::Invalid(format!("a batch has 1 to {BATCH_CHUNKS_MAX} chunks, not {bad}")));
    }
    let chunks = 1 + batch_sizes.iter().sum::<usize>();
    let chunks = u32::try_from(chunks).map_err(|_| ChainError::Invalid("too many chunks in all".into()))?;
    let anvil = LocalChain::start()?;
    let ether = U256::from(10).pow(U256::from(18));
    let dao = Chain::deploy(&anvil.endpoint(), anvil.key(0), ether).await?;
    let hub = dao.with_key(anvil.key(1)).await?;
    let requester = dao.with_key(anvil.key(2)).await?;
    let reporter = dao.with_key(anvil.key(3)).await?;
    hub.register(ether).await?;
    dao.set_whitelisted(hub.account(), true).await?;

    let price = U256::from(1_000_000_000u64);
    let job = NewJob {
        price_per_unit: price,
        units_per_chunk_max: 1,
        chunks,
        reporter: reporter.account(),
        lasts: Duration::from_secs(86_400),
        deposit: price * U256::from(chunks),
        token: None,
    };
    let (job, _) = requester.create_job(&job).await?;
    let pay = |from: u32, count: u32| {
        let batch = Batch::group(job, (from..from + count).map(|c| (c, hub.account(), 1)).collect());
        let reporter = &reporter;
        async move { reporter.pay_batch(&batch).await }
    };
    pay(0, 1).await?;
    let mut next = 1;
    let mut rows = Vec::with_capacity(batch_sizes.len());
    for &size in batch_sizes {
        let receipt = pay(next, size as u32).await?;
        next += size as u32;
        rows.push(GasRow { batch: size, gas_used: receipt.gas_used, gas_per_chunk: receipt.gas_used / size as u64 });
    }
    Ok(rows)
}
