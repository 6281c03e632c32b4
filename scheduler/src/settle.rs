//! The settler: pays funded workflows' final chunks on chain, in batches, exactly once.
//!
//! It runs beside the decision loop, never inside it: the owner only appends final chunks to
//! the outbox (in the transaction that makes them final), and the settler reads the outbox
//! through its own database connection. Each pass, per funded workflow:
//!
//! 1. Batches recorded as being sent but never closed (the scheduler died between sending and
//!    recording) are closed by reading the escrow's bitmap: what it says is paid is recorded as
//!    paid, the rest is due again.
//! 2. Due chunks are checked against the bitmap too (a receipt may have been lost with its
//!    record), then each is given to the hub of the first agreeing worker attached to one.
//! 3. Batches (at most [`BATCH_CHUNKS`] chunks, [`BATCH_HUBS`] hubs) are recorded, sent and
//!    closed. The contract refuses any chunk paid before (`ChunkAlreadyPaid`), so a resent batch
//!    never pays twice; the settler then reads the bitmap and moves on. A hub the registry will
//!    not pay (not whitelisted, punished) is left out of the pass, its chunks stay due.
//! 4. When nothing more of the workflow can become final and every payable chunk is paid, the
//!    escrow job is completed, so the requester can take back the rest at once.

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::time::Duration;

use tokio::sync::watch;
use upglobe_contracts::{Address, B256, Batch, Chain, ChainError};
use upglobe_protocol::WorkerId;

use crate::store::{Due, Funding, Store};
use crate::{Result, SchedulerError};

/// Chunks per `payBatch` (the contract takes up to 1 024; 256 keeps a batch to one bitmap word
/// per 256 consecutive chunks and well under a block's gas).
pub const BATCH_CHUNKS: usize = 256;
/// Hubs per `payBatch` (the contract's limit).
pub const BATCH_HUBS: usize = 64;

/// Test-only crash points (`cheat` feature, `UPGLOBE_CHEAT_SETTLE`): `crash-before-send` dies
/// with a batch recorded but not sent, `crash-after-send` with it mined but not recorded.
fn crash_point(point: &str) {
    if cfg!(feature = "cheat") && std::env::var("UPGLOBE_CHEAT_SETTLE").is_ok_and(|v| v == point) {
        eprintln!("settler: {point} (UPGLOBE_CHEAT_SETTLE)");
        std::process::abort();
    }
}

pub async fn run(database: PathBuf, chain: Chain, interval: Duration, mut shutdown: watch::Receiver<bool>) {
    let mut store = match Store::open(&database) {
        Ok(store) => store,
        Err(e) => {
            tracing::error!(error = %e, "the settler cannot open the store; nothing will be paid");
            return;
        }
    };
    loop {
        if let Err(e) = settle(&mut store, &chain).await {
            tracing::warn!(error = %e, "settlement pass failed; retrying");
        }
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = shutdown.changed() => return,
        }
    }
}

/// One pass over every funded workflow that is not completed.
pub async fn settle(store: &mut Store, chain: &Chain) -> Result<()> {
    for funding in store.fundings()? {
        if funding.completed {
            continue;
        }
        let (problem, unpayable) = match settle_workflow(store, chain, &funding).await {
            Ok(unpayable) => (None, unpayable),
            Err(e) => (Some(e.to_string()), 0),
        };
        if let Some(problem) = &problem {
            tracing::warn!(workflow = %funding.workflow, escrow_job = funding.escrow_job, %problem, "settlement stuck");
        }
        store.set_settlement_problem(funding.workflow, problem.as_deref(), unpayable)?;
    }
    Ok(())
}

fn chain_error(e: ChainError) -> SchedulerError {
    SchedulerError::Invalid(e.to_string())
}

/// Settles one workflow; returns how many due chunks no payable hub earned.
async fn settle_workflow(store: &mut Store, chain: &Chain, funding: &Funding) -> Result<u64> {
    let (workflow, escrow_job) = (funding.workflow, funding.escrow_job);
    // 1. Close what a previous run left open.
    for open in store.open_settlements(workflow)? {
        let indices: Vec<u32> = open.chunks.iter().map(|c| c.2).collect();
        let bits = chain.paid_chunks(escrow_job, &indices).await.map_err(chain_error)?;
        let paid: Vec<_> = open.chunks.iter().zip(&bits).filter(|(_, p)| **p).map(|(c, _)| (c.0, c.1, None)).collect();
        tracing::info!(workflow = %workflow, settlement = open.id, paid = paid.len(), of = indices.len(), "reconciled an unrecorded batch");
        store.close_settlement(workflow, Some(open.id), "reconciled", None, &paid)?;
    }

    let mut unpayable = 0;
    let mut refused_hubs: BTreeSet<Address> = BTreeSet::new();
    let mut hubs: HashMap<WorkerId, Option<Address>> = HashMap::new();
    let mut problem = None;
    loop {
        let due = store.due(funding, 4 * BATCH_CHUNKS)?;
        if due.is_empty() {
            break;
        }
        // 2. Already paid, with the record lost?
        let indices: Vec<u32> = due.iter().map(|d| d.index).collect();
        let bits = chain.paid_chunks(escrow_job, &indices).await.map_err(chain_error)?;
        let paid: Vec<_> = due.iter().zip(&bits).filter(|(_, p)| **p).map(|(d, _)| (d.job.0, d.chunk, None)).collect();
        if !paid.is_empty() {
            store.close_settlement(workflow, None, "reconciled", None, &paid)?;
            continue;
        }
        let mut items = Vec::new();
        let mut skipped = 0u64;
        for due in due {
            match hub_of(chain, &mut hubs, &due.workers, &refused_hubs).await? {
                Some(hub) => items.push((due, hub)),
                None => skipped += 1,
            }
        }
        if items.is_empty() {
            // Everything due now belongs to no payable hub; it stays due for a later pass.
            unpayable = skipped;
            break;
        }
        // 3. Batches.
        let batch = take_batch(&mut items);
        let chunks: Vec<(u64, u32, u32)> = batch.iter().map(|(d, _)| (d.job.0, d.chunk, d.index)).collect();
        let grouped = Batch::group(escrow_job, batch.iter().map(|(d, hub)| (d.index, *hub, 1)).collect());
        let id = store.begin_settlement(funding, &chunks)?;
        crash_point("crash-before-send");
        match chain.pay_batch(&grouped).await {
            Ok(receipt) => {
                crash_point("crash-after-send");
                let paid: Vec<_> = batch.iter().map(|(d, hub)| (d.job.0, d.chunk, Some(hub.0.0))).collect();
                tracing::info!(workflow = %workflow, escrow_job, chunks = paid.len(), hubs = grouped.hubs.len(), tx = %receipt.tx, gas = receipt.gas_used, "paid a batch");
                store.close_settlement(workflow, Some(id), "paid", Some((receipt.tx.0, receipt.gas_used)), &paid)?;
            }
            Err(e) if e.revert_name() == Some("HubNotPayable") => {
                store.close_settlement(workflow, Some(id), "refused", None, &[])?;
                let hub = not_payable_hub(&e, &grouped);
                tracing::warn!(workflow = %workflow, %hub, error = %e, "a hub cannot be paid; its chunks wait");
                problem = Some(format!("hub {hub} cannot be paid (not whitelisted or not in good standing)"));
                refused_hubs.insert(hub);
                hubs.clear();
            }
            Err(e) if e.revert_name() == Some("ChunkAlreadyPaid") => {
                // Paid by a batch whose record was lost: the bitmap says which; the next round
                // of the loop reads it.
                store.close_settlement(workflow, Some(id), "refused", None, &[])?;
                tracing::info!(workflow = %workflow, error = %e, "a chunk was paid already; reading the bitmap");
            }
            Err(e @ ChainError::Revert { .. }) => {
                // Refused before anything was sent: nothing to reconcile.
                store.close_settlement(workflow, Some(id), "refused", None, &[])?;
                return Err(chain_error(e));
            }
            // Unknown whether it was sent: the open batch is reconciled on the next pass.
            Err(e) => return Err(chain_error(e)),
        }
    }
    if let Some(problem) = problem {
        return Err(SchedulerError::Invalid(problem));
    }
    // 4. Complete once nothing more can be paid.
    if unpayable == 0 && store.due(funding, 1)?.is_empty() && store.settled_for_good(workflow)? {
        let receipt = chain.complete(escrow_job).await.map_err(chain_error)?;
        tracing::info!(workflow = %workflow, escrow_job, tx = %receipt.tx, "escrow job completed");
        store.funding_completed(workflow, receipt.tx.0)?;
    }
    Ok(unpayable)
}

/// Takes up to [`BATCH_CHUNKS`] chunks of at most [`BATCH_HUBS`] hubs.
fn take_batch(items: &mut Vec<(Due, Address)>) -> Vec<(Due, Address)> {
    let mut hubs = BTreeSet::new();
    let mut batch = Vec::new();
    let mut rest = Vec::new();
    for (due, hub) in items.drain(..) {
        let fits = hubs.contains(&hub) || hubs.len() < BATCH_HUBS;
        if batch.len() < BATCH_CHUNKS && fits {
            hubs.insert(hub);
            batch.push((due, hub));
        } else {
            rest.push((due, hub));
        }
    }
    *items = rest;
    batch
}

/// The hub a chunk earns for: that of the first agreeing worker attached to a hub the registry
/// has not refused this pass.
async fn hub_of(
    chain: &Chain,
    cache: &mut HashMap<WorkerId, Option<Address>>,
    workers: &[WorkerId],
    refused: &BTreeSet<Address>,
) -> Result<Option<Address>> {
    for worker in workers {
        let hub = match cache.get(worker) {
            Some(hub) => *hub,
            None => {
                let hub = chain.worker_hub(B256::from(worker.0)).await.map_err(chain_error)?;
                cache.insert(*worker, hub);
                hub
            }
        };
        if let Some(hub) = hub.filter(|h| !refused.contains(h)) {
            return Ok(Some(hub));
        }
    }
    Ok(None)
}

/// The hub named in a `HubNotPayable` refusal (the first of the batch if it cannot be read).
fn not_payable_hub(error: &ChainError, batch: &Batch) -> Address {
    let text = error.to_string();
    batch.hubs.iter().copied().find(|hub| text.contains(&hub.to_string())).unwrap_or(batch.hubs[0])
}
