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
use upglobe_contracts::{Address, B256, Batch, Chain, ChainError, JobStatus, U256};
use upglobe_protocol::WorkerId;

use crate::store::{Due, Funding, Store};
use crate::{Result, SchedulerError};

/// Chunks per `payBatch` (the contract takes up to 1 024; 256 keeps a batch to one bitmap word
/// per 256 consecutive chunks and well under a block's gas).
pub const BATCH_CHUNKS: usize = 256;
/// Hubs per `payBatch` (the contract's limit).
pub const BATCH_HUBS: usize = 64;
/// Due chunks read from the store at a time.
const PAGE_CHUNKS: usize = 4 * BATCH_CHUNKS;
/// Batches tried for one page before the pass gives up (each refused hub or lost record costs one).
const ROUNDS_PER_PAGE_MAX: usize = 2 * BATCH_HUBS + PAGE_CHUNKS / BATCH_CHUNKS;

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
        let (unpayable, problem) = match settle_workflow(store, chain, &funding).await {
            Ok(settled) => (Some(settled.unpayable), settled.problem),
            Err(e) => (None, Some(e.to_string())),
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

/// What a pass over one workflow left.
struct Settled {
    /// Due chunks no payable hub earned.
    unpayable: u64,
    /// Why some chunks wait (a hub the registry will not pay).
    problem: Option<String>,
}

/// Settles one workflow.
async fn settle_workflow(store: &mut Store, chain: &Chain, funding: &Funding) -> Result<Settled> {
    let (workflow, escrow_job) = (funding.workflow, funding.escrow_job);
    let job = chain.job(escrow_job).await.map_err(chain_error)?;
    match job.status {
        JobStatus::Open => {}
        // Completed by a pass that died before recording it.
        JobStatus::Completed => {
            store.funding_completed(workflow, [0; 32])?;
            return Ok(Settled { unpayable: 0, problem: None });
        }
        _ => {
            // The requester took the deposit back (after the deadline): nothing more can be paid.
            let problem = format!("escrow job {escrow_job} was refunded; chunks not paid by then never will be");
            store.funding_completed(workflow, [0; 32])?;
            return Ok(Settled { unpayable: 0, problem: Some(problem) });
        }
    }
    let price = job.price_per_unit.max(U256::from(1));
    let mut affordable = usize::try_from((job.deposit - job.paid) / price).unwrap_or(usize::MAX);
    // 1. Close what a previous run left open.
    for open in store.open_settlements(workflow)? {
        let bits = paid_bits(chain, escrow_job, &open.chunks).await?;
        let paid = paid_rows(&open.chunks, &bits);
        tracing::info!(workflow = %workflow, settlement = open.id, paid = paid.len(), of = bits.len(), "reconciled an unrecorded batch");
        store.close_settlement(workflow, Some(open.id), "reconciled", None, &paid)?;
    }

    // 2. and 3., a page of due chunks at a time, so that chunks no hub can be paid for do not
    // hide the ones after them.
    let mut unpayable = 0;
    let mut refused: BTreeSet<Address> = BTreeSet::new();
    let mut hubs = Hubs::default();
    let mut problem = None;
    let mut cursor = (0, 0);
    'pages: loop {
        let page = store.due(funding, cursor, PAGE_CHUNKS)?;
        let Some(last) = page.last() else { break };
        cursor = (last.job.0, last.chunk.saturating_add(1));
        let mut unpaid = reconcile(store, chain, funding, page).await?;
        let mut items = Vec::new();
        for due in unpaid.drain(..) {
            match hub_of(store, chain, &mut hubs, &due.workers, &refused).await? {
                Some(hub) => items.push((due, hub)),
                None => unpayable += 1,
            }
        }
        let mut rounds = 0;
        while !items.is_empty() {
            rounds += 1;
            if rounds > ROUNDS_PER_PAGE_MAX {
                return Err(SchedulerError::Invalid(format!(
                    "settling escrow job {escrow_job} made no progress in {ROUNDS_PER_PAGE_MAX} rounds"
                )));
            }
            let batch = take_batch(&mut items, affordable.min(BATCH_CHUNKS));
            if batch.is_empty() {
                problem = Some(format!("escrow job {escrow_job}'s deposit is spent; the rest of its chunks wait"));
                break 'pages;
            }
            let grouped = Batch::group(escrow_job, batch.iter().map(|(d, hub)| (d.index, *hub, 1)).collect());
            // Asked first, so a refusal sends nothing and records nothing.
            match chain.check_pay_batch(&grouped).await {
                Ok(()) => {}
                Err(e) if e.revert_name() == Some("HubNotPayable") => {
                    // The hub's chunks go to another agreeing worker's hub if there is one;
                    // the rest wait for a later pass.
                    let hub = not_payable_hub(&e, &grouped);
                    tracing::warn!(workflow = %workflow, %hub, error = %e, "a hub cannot be paid; its chunks wait");
                    problem = Some(format!("hub {hub} cannot be paid (not whitelisted or not in good standing)"));
                    refused.insert(hub);
                    for (due, _) in batch.into_iter().chain(std::mem::take(&mut items)) {
                        match hub_of(store, chain, &mut hubs, &due.workers, &refused).await? {
                            Some(hub) => items.push((due, hub)),
                            None => unpayable += 1,
                        }
                    }
                    continue;
                }
                Err(e) if e.revert_name() == Some("ChunkAlreadyPaid") => {
                    // Paid by a batch whose record was lost: the bitmap says which.
                    tracing::info!(workflow = %workflow, error = %e, "a chunk was paid already; reading the bitmap");
                    let (due, hubs_of): (Vec<Due>, Vec<Address>) = batch.into_iter().unzip();
                    let unpaid = reconcile(store, chain, funding, due.clone()).await?;
                    items.extend(due.into_iter().zip(hubs_of).filter(|(d, _)| unpaid.contains(d)));
                    continue;
                }
                Err(e) => return Err(chain_error(e)),
            }
            let chunks: Vec<(u64, u32, u32)> = batch.iter().map(|(d, _)| (d.job.0, d.chunk, d.index)).collect();
            let id = store.begin_settlement(funding, &chunks)?;
            crash_point("crash-before-send");
            match chain.pay_batch(&grouped).await {
                Ok(receipt) => {
                    crash_point("crash-after-send");
                    let paid: Vec<_> = batch.iter().map(|(d, hub)| (d.job.0, d.chunk, Some(hub.0.0))).collect();
                    tracing::info!(workflow = %workflow, escrow_job, chunks = paid.len(), hubs = grouped.hubs.len(), tx = %receipt.tx, gas = receipt.gas_used, "paid a batch");
                    store.close_settlement(
                        workflow,
                        Some(id),
                        "paid",
                        Some((receipt.tx.0, receipt.gas_used)),
                        &paid,
                    )?;
                    affordable -= paid.len();
                }
                // Sent or not, mined or not, reverted or not: the open batch is closed from the
                // bitmap by the next pass.
                Err(e) => return Err(chain_error(e)),
            }
        }
    }
    if unpayable > 0 && problem.is_none() {
        problem = hubs.why_not.take();
    }
    submit_evidence(store, chain, funding).await?;
    // 4. Complete once nothing more can be paid. Nothing can become final any more is read
    // first: a chunk made final between the two reads is then still found due.
    let settled = store.settled_for_good(workflow)?;
    let all_paid = unpayable == 0 && problem.is_none() && store.due(funding, (0, 0), 1)?.is_empty();
    if settled && all_paid {
        let receipt = chain.complete(escrow_job).await.map_err(chain_error)?;
        tracing::info!(workflow = %workflow, escrow_job, tx = %receipt.tx, "escrow job completed");
        store.funding_completed(workflow, receipt.tx.0)?;
    }
    Ok(Settled { unpayable, problem })
}

/// Pieces of evidence sent per pass and workflow.
const EVIDENCE_PER_PASS: usize = 32;

/// Sends the registry each signed MD result that contradicts a final chunk, as evidence
/// against its worker's hub: the statement's hash, and the worker's key, the hash and the
/// signature as the logged statement anyone can check during the dispute window. The
/// registry slashes the hub's stake if no one disputes it.
async fn submit_evidence(store: &mut Store, chain: &Chain, funding: &Funding) -> Result<()> {
    for contradiction in store.contradictions(funding, EVIDENCE_PER_PASS)? {
        let worker = B256::from(contradiction.worker.0);
        if chain.worker_hub(worker).await.map_err(chain_error)?.is_none() {
            store.record_evidence(funding.workflow, &contradiction, "no hub", None)?;
            continue;
        }
        let statement =
            [&contradiction.key[..], &contradiction.statement_hash[..], &contradiction.signature[..]].concat();
        let hash = B256::from(contradiction.statement_hash);
        match chain.submit_evidence(funding.escrow_job, contradiction.index, worker, hash, statement).await {
            Ok((id, receipt)) => {
                tracing::warn!(workflow = %funding.workflow, worker = %contradiction.worker.short(), chunk = contradiction.chunk, evidence = %id, "evidence against a worker's hub sent to the registry");
                store.record_evidence(funding.workflow, &contradiction, "submitted", Some((id.0, receipt.tx.0)))?;
            }
            Err(e) if e.revert_name() == Some("EvidenceExists") => {
                // Sent before a crash lost its record.
                store.record_evidence(funding.workflow, &contradiction, "submitted", None)?;
            }
            Err(e @ ChainError::Revert { .. }) => {
                let state = format!("refused: {e}");
                store.record_evidence(funding.workflow, &contradiction, &state, None)?;
            }
            Err(e) => return Err(chain_error(e)),
        }
    }
    Ok(())
}

/// Records the chunks the escrow's bitmap says are paid (their record lost in a crash) and
/// returns the others.
async fn reconcile(store: &mut Store, chain: &Chain, funding: &Funding, due: Vec<Due>) -> Result<Vec<Due>> {
    let chunks: Vec<(u64, u32, u32)> = due.iter().map(|d| (d.job.0, d.chunk, d.index)).collect();
    let bits = paid_bits(chain, funding.escrow_job, &chunks).await?;
    let paid = paid_rows(&chunks, &bits);
    if !paid.is_empty() {
        tracing::info!(workflow = %funding.workflow, chunks = paid.len(), "found chunks paid on chain without a record");
        store.close_settlement(funding.workflow, None, "reconciled", None, &paid)?;
    }
    Ok(due.into_iter().zip(bits).filter(|(_, p)| !p).map(|(d, _)| d).collect())
}

/// Whether the escrow's bitmap has each `(job, chunk, escrow index)` paid.
async fn paid_bits(chain: &Chain, escrow_job: u64, chunks: &[(u64, u32, u32)]) -> Result<Vec<bool>> {
    let indices: Vec<u32> = chunks.iter().map(|c| c.2).collect();
    chain.paid_chunks(escrow_job, &indices).await.map_err(chain_error)
}

/// The chunks `bits` says are paid, as `paid` rows whose hub is not known.
fn paid_rows(chunks: &[(u64, u32, u32)], bits: &[bool]) -> Vec<(u64, u32, Option<[u8; 20]>)> {
    chunks.iter().zip(bits).filter(|(_, paid)| **paid).map(|(c, _)| (c.0, c.1, None)).collect()
}

/// Takes up to `most` chunks of at most [`BATCH_HUBS`] hubs.
fn take_batch(items: &mut Vec<(Due, Address)>, most: usize) -> Vec<(Due, Address)> {
    let mut hubs = BTreeSet::new();
    let mut batch = Vec::new();
    let mut rest = Vec::new();
    for (due, hub) in items.drain(..) {
        let fits = hubs.contains(&hub) || hubs.len() < BATCH_HUBS;
        if batch.len() < most && fits {
            hubs.insert(hub);
            batch.push((due, hub));
        } else {
            rest.push((due, hub));
        }
    }
    *items = rest;
    batch
}

/// Which hub each worker's chunks are paid to, learnt once per pass: the hub the worker named
/// when it joined (`--hub`), if the registry attaches the worker to that same hub. Either alone
/// is not enough: anyone can attach a worker id on chain, and a worker can name any address.
#[derive(Default)]
struct Hubs {
    known: HashMap<WorkerId, Option<Address>>,
    /// Why one worker's chunks cannot be paid, for `upglobe payments`.
    why_not: Option<String>,
}

impl Hubs {
    async fn of(&mut self, store: &mut Store, chain: &Chain, worker: WorkerId) -> Result<Option<Address>> {
        if let Some(hub) = self.known.get(&worker) {
            return Ok(*hub);
        }
        let named = store.worker_hub(worker)?.map(Address::from);
        let attached = chain.worker_hub(B256::from(worker.0)).await.map_err(chain_error)?;
        let hub = match (named, attached) {
            (Some(named), Some(attached)) if named == attached => Some(named),
            (None, _) => {
                self.why_not.get_or_insert_with(|| {
                    format!("worker {} names no hub (start it with --hub ADDRESS)", worker.short())
                });
                None
            }
            (Some(named), attached) => {
                self.why_not.get_or_insert_with(|| match attached {
                    Some(attached) => format!(
                        "worker {} names hub {named}, but the registry attaches it to {attached}",
                        worker.short()
                    ),
                    None => format!("worker {} names hub {named}, which has not attached it", worker.short()),
                });
                None
            }
        };
        self.known.insert(worker, hub);
        Ok(hub)
    }
}

/// The hub a chunk earns for: that of the first agreeing worker with a hub (see [`Hubs`]) the
/// registry has not refused this pass.
async fn hub_of(
    store: &mut Store,
    chain: &Chain,
    hubs: &mut Hubs,
    workers: &[WorkerId],
    refused: &BTreeSet<Address>,
) -> Result<Option<Address>> {
    for worker in workers {
        if let Some(hub) = hubs.of(store, chain, *worker).await?.filter(|h| !refused.contains(h)) {
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
