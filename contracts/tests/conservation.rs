//! Seeded random sequences of operations from several requesters, reporters and hubs against a
//! real anvil, with a model of the contracts beside them. After every step:
//!
//! - every hub, job, bitmap and claimable amount on chain equals the model's;
//! - the escrow holds Σ over jobs (deposit − paid − refunded), the registry Σ over hubs
//!   (stake + balance + heldBack) + Σ claimable, both read from the chain;
//! - money in (deposits and stakes, measured as it left the senders' wallets) = money out
//!   (withdrawals, refunds and claims, measured as it arrived) + what both contracts hold;
//! - no chunk is paid twice: each job's paid equals Σ units × price of the batches that went
//!   through, and every resent chunk was refused with ChunkAlreadyPaid.
//!
//! Each refused operation is predicted by the model, down to the Solidity error's name.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use common::*;
use upglobe_contracts::anvil::LocalChain;
use upglobe_contracts::bindings::Registry;
use upglobe_contracts::{Address, B256, Batch, Chain, ChainError, JobStatus, NewJob, Receipt, U256};

/// Operations per seed (about 3 s of anvil per seed here).
const STEPS: usize = 120;
/// No deadline, lock end or window may fall this close after the chain's clock when an operation
/// is sent, so the model and the block's timestamp agree on which side of it they are.
const MARGIN: u64 = 30;
const UNSTAKE_DELAY: u64 = 14 * DAY;
const DISPUTE_WINDOW: u64 = 7 * DAY;

#[tokio::test]
async fn seed_1() {
    run(1).await;
}

#[tokio::test]
async fn seed_2() {
    run(2).await;
}

#[tokio::test]
async fn seed_3() {
    run(3).await;
}

#[tokio::test]
async fn seed_4() {
    run(4).await;
}

#[tokio::test]
async fn seed_5() {
    run(5).await;
}

/// xorshift64*: small, seeded, the same on every machine.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn index(&mut self, len: usize) -> usize {
        self.below(len as u64) as usize
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Active = 1,
    Suspected = 2,
    Punished = 3,
}

/// A hub as the registry stores it (lazily settled, like the contract).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Hub {
    state: State,
    whitelisted: bool,
    holdback: bool,
    locked_until: u64,
    unstake_at: u64,
    pending: u32,
    stake: U256,
    balance: U256,
    held: U256,
}

impl Hub {
    /// What `_settled` makes of the hub at `now`.
    fn settled(&self, now: u64) -> Hub {
        let mut h = self.clone();
        if h.state != State::Active && now >= h.locked_until {
            h.holdback = true;
            if h.state == State::Suspected {
                h.state = State::Active;
            }
        }
        h
    }

    fn locked(&self, now: u64) -> bool {
        now < self.locked_until
    }

    /// `_take` for ETH: balance, then stake, then held back.
    fn take(&mut self, amount: U256) -> U256 {
        let mut taken = U256::ZERO;
        for part in [&mut self.balance, &mut self.stake, &mut self.held] {
            let now = (amount - taken).min(*part);
            *part -= now;
            taken += now;
        }
        taken
    }

    /// `_creditOne`'s test: whitelisted, not punished, staked at least the minimum.
    fn payable(&self) -> bool {
        self.whitelisted && matches!(self.state, State::Active | State::Suspected) && self.stake >= ether(STAKE_MIN)
    }

    /// `_payOut`: what is sent, the rest held back.
    fn pay_out(&mut self, amount: U256) -> U256 {
        let keep = if self.holdback { kept(amount) } else { U256::ZERO };
        self.held += keep;
        amount - keep
    }
}

#[derive(Debug, Clone)]
struct Job {
    id: u64,
    requester: usize,
    reporter: usize,
    price: U256,
    units_max: u32,
    chunks: u32,
    deadline: u64,
    deposit: U256,
    paid: U256,
    refunded: U256,
    status: JobStatus,
    bits: Vec<bool>,
}

#[derive(Debug, Clone)]
struct Evidence {
    id: B256,
    hub: usize,
    ends: u64,
    open: bool,
    requester: Address,
    reporter: Address,
    /// The DAO submitted it.
    by_dao: bool,
    /// Its reporter was approved when it was submitted.
    approved: bool,
}

struct Sim {
    rng: Rng,
    seed: u64,
    step: usize,
    what: String,
    _anvil: LocalChain,
    dao: Chain,
    hub_keys: Vec<Chain>,
    requesters: Vec<Chain>,
    reporters: Vec<Chain>,
    stranger: Chain,
    hubs: Vec<Hub>,
    workers: Vec<B256>,
    jobs: Vec<Job>,
    evidence: Vec<Evidence>,
    /// Reporters the DAO approved.
    approved: BTreeSet<Address>,
    claimable: BTreeMap<Address, U256>,
    money_in: U256,
    money_out: U256,
    refused: BTreeMap<String, usize>,
    /// The operation under way, and how many of each went through.
    op: &'static str,
    done: BTreeMap<&'static str, usize>,
}

async fn run(seed: u64) {
    let started = std::time::Instant::now();
    let mut sim = Sim::new(seed).await;
    sim.check().await;
    for step in 1..=STEPS {
        sim.step = step;
        sim.random_step().await;
        sim.check().await;
    }
    // Every job closes and everyone collects: what is left is exactly the hubs' funds.
    sim.step = STEPS + 1;
    sim.op = "wind-down";
    sim.wind_down().await;
    let refused: Vec<String> = sim.refused.iter().map(|(name, n)| format!("{name} x{n}")).collect();
    let done: Vec<String> = sim.done.iter().map(|(name, n)| format!("{name} x{n}")).collect();
    let seconds = started.elapsed().as_secs_f64();
    eprintln!(
        "seed {seed}: {STEPS} steps in {seconds:.1} s\n  done: {}\n  refused: {}",
        done.join(", "),
        refused.join(", ")
    );
    assert!(sim.refused.contains_key("ChunkAlreadyPaid"), "seed {seed} never resent a chunk");
}

impl Sim {
    async fn new(seed: u64) -> Sim {
        let anvil = LocalChain::start().unwrap();
        let dao = Chain::deploy(&anvil.endpoint(), anvil.key(0), ether(STAKE_MIN)).await.unwrap();
        let mut chains = Vec::new();
        for k in 1..9 {
            chains.push(dao.with_key(anvil.key(k)).await.unwrap());
        }
        let stranger = chains.pop().unwrap();
        let reporters = chains.split_off(5);
        let requesters = chains.split_off(3);
        let hub_keys = chains;
        let mut sim = Sim {
            rng: Rng::new(seed),
            seed,
            step: 0,
            what: "set-up".into(),
            _anvil: anvil,
            dao,
            hub_keys,
            requesters,
            reporters,
            stranger,
            hubs: Vec::new(),
            workers: Vec::new(),
            jobs: Vec::new(),
            evidence: Vec::new(),
            approved: BTreeSet::new(),
            claimable: BTreeMap::new(),
            money_in: U256::ZERO,
            money_out: U256::ZERO,
            refused: BTreeMap::new(),
            op: "set-up",
            done: BTreeMap::new(),
        };
        for k in 0..sim.hub_keys.len() {
            let stake = ether("2 ether") * wei(k as u128 + 1) + wei(sim.rng.below(1_000_000) as u128);
            let chain = sim.hub_keys[k].clone();
            let before = chain.balance(chain.account()).await.unwrap();
            let receipt = chain.register(stake).await.unwrap();
            sim.money_in += before - chain.balance(chain.account()).await.unwrap() - fee(&chain, &receipt).await;
            let worker = B256::repeat_byte(0x40 + k as u8);
            chain.attach_worker(worker).await.unwrap();
            // The last hub starts off the whitelist, so some batches are refused.
            let whitelisted = k + 1 < sim.hub_keys.len();
            if whitelisted {
                sim.dao.set_whitelisted(chain.account(), true).await.unwrap();
            }
            sim.workers.push(worker);
            sim.hubs.push(Hub {
                state: State::Active,
                whitelisted,
                holdback: false,
                locked_until: 0,
                unstake_at: 0,
                pending: 0,
                stake,
                balance: U256::ZERO,
                held: U256::ZERO,
            });
        }
        // One reporter starts approved: its evidence is anyone's to execute, the others' the DAO's.
        let first = sim.reporters[0].account();
        sim.dao.set_reporter_approved(first, true).await.unwrap();
        sim.approved.insert(first);
        sim
    }

    /// `_trusted`: anyone may execute the evidence (the DAO submitted it, or its reporter was
    /// approved then and still is).
    fn trusted(&self, evidence: &Evidence) -> bool {
        evidence.by_dao || (evidence.approved && self.approved.contains(&evidence.reporter))
    }

    fn context(&self) -> String {
        format!("seed {} step {}: {}", self.seed, self.step, self.what)
    }

    /// Compares a call's outcome with the model's prediction: `None` = it goes through.
    fn expect(&mut self, result: Result<Receipt, ChainError>, expected: Option<&str>) -> Option<Receipt> {
        match (result, expected) {
            (Ok(receipt), None) => {
                *self.done.entry(self.op).or_default() += 1;
                Some(receipt)
            }
            (Err(e), Some(name)) => {
                assert_eq!(e.revert_name(), Some(name), "{}: {e}", self.context());
                *self.refused.entry(name.to_string()).or_default() += 1;
                None
            }
            (Ok(_), Some(name)) => panic!("{}: went through, but the model expected {name}", self.context()),
            (Err(e), None) => panic!("{}: refused, but the model expected it to go through: {e}", self.context()),
        }
    }

    /// The chain's time, first moved past any boundary that lies just ahead of it.
    async fn now(&self) -> u64 {
        loop {
            let now = self.dao.now().await.unwrap();
            let hubs = self.hubs.iter().flat_map(|h| [h.locked_until, h.unstake_at]);
            let jobs = self.jobs.iter().filter(|j| j.status != JobStatus::Closed).map(|j| j.deadline);
            let windows = self.evidence.iter().filter(|e| e.open).map(|e| e.ends);
            let mut boundaries = hubs.chain(jobs).chain(windows);
            if !boundaries.any(|b| b > now && b <= now + MARGIN) {
                return now;
            }
            self.dao.advance_time(MARGIN + 1).await.unwrap();
        }
    }

    fn claim_add(&mut self, owner: Address, amount: U256) {
        *self.claimable.entry(owner).or_default() += amount;
    }

    async fn random_step(&mut self) {
        const OPS: [(u64, &str); 19] = [
            (10, "createJob"),
            (26, "payBatch"),
            (4, "complete"),
            (6, "refund"),
            (10, "withdraw"),
            (3, "requestUnstake"),
            (3, "withdrawStake"),
            (2, "addStake"),
            (5, "suspect"),
            (4, "releaseEarly"),
            (3, "punish"),
            (3, "clear"),
            (2, "setWhitelisted"),
            (3, "submitEvidence"),
            (2, "dismissEvidence"),
            (3, "executeSlash"),
            (2, "setReporterApproved"),
            (4, "claim"),
            (6, "advanceTime"),
        ];
        let total: u64 = OPS.iter().map(|(weight, _)| weight).sum();
        let mut pick = self.rng.below(total);
        let mut op = "";
        for (weight, name) in OPS {
            if pick < weight {
                op = name;
                break;
            }
            pick -= weight;
        }
        let no_jobs = self.jobs.is_empty();
        let no_evidence = self.evidence.is_empty();
        self.op = op;
        // Hub operations mostly pick a hub they can succeed on, so success is common too.
        let hub = |sim: &mut Sim, fits: fn(&Hub) -> bool| {
            let fitting: Vec<usize> = (0..sim.hubs.len()).filter(|&h| fits(&sim.hubs[h])).collect();
            if !fitting.is_empty() && sim.rng.chance(80) {
                fitting[sim.rng.index(fitting.len())]
            } else {
                sim.rng.index(sim.hubs.len())
            }
        };
        match op {
            "createJob" => self.create_job().await,
            "payBatch" | "complete" | "refund" | "submitEvidence" if no_jobs => self.create_job().await,
            "dismissEvidence" | "executeSlash" if no_evidence => self.advance().await,
            "payBatch" => self.pay_batch().await,
            "complete" => self.complete().await,
            "refund" => self.refund().await,
            "withdraw" => {
                let h = hub(self, |h| h.balance > U256::ZERO);
                self.withdraw(h).await
            }
            "requestUnstake" => {
                let h = hub(self, |h| h.unstake_at == 0);
                self.request_unstake(h).await
            }
            "withdrawStake" => {
                let h = hub(self, |h| h.unstake_at != 0);
                self.withdraw_stake(h).await
            }
            "addStake" => {
                let h = hub(self, |_| true);
                self.add_stake(h).await
            }
            "suspect" => {
                let h = hub(self, |h| h.state == State::Active);
                self.suspect(h).await
            }
            "releaseEarly" => {
                let h = hub(self, |h| h.state == State::Suspected);
                self.release_early(h).await
            }
            "punish" => {
                let h = hub(self, |h| h.state != State::Active);
                self.punish(h).await
            }
            "clear" => {
                let h = hub(self, |h| h.state != State::Active);
                self.clear(h).await
            }
            "setWhitelisted" => {
                let h = hub(self, |_| true);
                self.whitelist(h).await
            }
            "submitEvidence" => {
                let h = hub(self, |_| true);
                self.submit_evidence(h).await
            }
            "dismissEvidence" => self.dismiss().await,
            "executeSlash" => self.execute_slash().await,
            "setReporterApproved" => self.approve_reporter().await,
            "claim" => self.claim().await,
            _ => self.advance().await,
        }
    }

    async fn create_job(&mut self) {
        self.op = "createJob";
        let requester = self.rng.index(self.requesters.len());
        let reporter = self.rng.index(self.reporters.len());
        let chunks = 4 + self.rng.below(45) as u32;
        let units_max = 1 + self.rng.below(3) as u32;
        let price = wei(1_000_000_000_000 + self.rng.below(1_000_000_000_000_000) as u128);
        let full = price * U256::from(chunks) * U256::from(units_max);
        // Some deposits do not cover every chunk at the most units, so DepositExceeded happens.
        let deposit = match self.rng.below(3) {
            0 => full / wei(2) + wei(self.rng.below(1000) as u128),
            1 => full,
            _ => full + full / wei(5),
        };
        let lasts = DAY + self.rng.below(20 * DAY);
        self.what = format!("requester {requester} opens a job of {chunks} chunks, deposit {deposit}");
        let _ = self.now().await;
        let chain = self.requesters[requester].clone();
        let new = NewJob {
            price_per_unit: price,
            units_per_chunk_max: units_max,
            chunks,
            reporter: self.reporters[reporter].account(),
            lasts: Duration::from_secs(lasts),
            deposit,
            token: None,
        };
        let before = chain.balance(chain.account()).await.unwrap();
        let (id, receipt) = chain.create_job(&new).await.unwrap();
        *self.done.entry(self.op).or_default() += 1;
        let sent = before - chain.balance(chain.account()).await.unwrap() - fee(&chain, &receipt).await;
        assert_eq!(sent, deposit, "{}", self.context());
        self.money_in += sent;
        let deadline = self.dao.job(id).await.unwrap().deadline;
        let created = mined_at(&chain, &receipt).await;
        assert!(deadline > created && deadline <= created + lasts, "{}", self.context());
        self.jobs.push(Job {
            id,
            requester,
            reporter,
            price,
            units_max,
            chunks,
            deadline,
            deposit,
            paid: U256::ZERO,
            refunded: U256::ZERO,
            status: JobStatus::Open,
            bits: vec![false; chunks as usize],
        });
    }

    fn pick_job(&mut self, open_percent: u64) -> usize {
        let open: Vec<usize> = (0..self.jobs.len()).filter(|&j| self.jobs[j].status == JobStatus::Open).collect();
        if !open.is_empty() && self.rng.chance(open_percent) {
            open[self.rng.index(open.len())]
        } else {
            self.rng.index(self.jobs.len())
        }
    }

    async fn pay_batch(&mut self) {
        let j = self.pick_job(92);
        let job = self.jobs[j].clone();
        let unpaid: Vec<u32> = (0..job.chunks).filter(|&c| !job.bits[c as usize]).collect();
        let paid: Vec<u32> = (0..job.chunks).filter(|&c| job.bits[c as usize]).collect();
        let mut chosen: Vec<u32> = Vec::new();
        let n = 1 + self.rng.below(10) as usize;
        while chosen.len() < n.min(unpaid.len()) {
            let c = unpaid[self.rng.index(unpaid.len())];
            if !chosen.contains(&c) {
                chosen.push(c);
            }
        }
        // A resent chunk, paid before or twice in this batch; now and then one past the end.
        if self.rng.chance(25) {
            if !paid.is_empty() && self.rng.chance(70) {
                chosen.push(paid[self.rng.index(paid.len())]);
            } else if let Some(&first) = chosen.first() {
                chosen.push(first);
            }
        }
        if self.rng.chance(4) {
            chosen.push(job.chunks);
        }
        if chosen.is_empty() {
            chosen.push(job.chunks - 1);
        }
        // Mostly hubs that can be paid; now and then any hub, so HubNotPayable happens too.
        let mut candidates: Vec<usize> = (0..self.hubs.len()).filter(|&h| self.hubs[h].payable()).collect();
        if candidates.is_empty() || self.rng.chance(15) {
            candidates = (0..self.hubs.len()).collect();
        }
        let items: Vec<(u32, Address, u64)> = chosen
            .iter()
            .map(|&c| {
                let h = candidates[self.rng.index(candidates.len())];
                (c, self.hub_keys[h].account(), self.rng.below(job.units_max as u64 + 1))
            })
            .collect();
        let mut batch = Batch::group(job.id, items);
        if self.rng.chance(6) {
            batch.units[0] = batch.chunk_counts[0] as u64 * job.units_max as u64 + 1;
        }
        let sender = if self.rng.chance(93) { self.reporters[job.reporter].clone() } else { self.stranger.clone() };
        self.what = format!(
            "pay job {} chunks {:?} to {} hubs {:?} units",
            job.id,
            batch.chunks,
            batch.hubs.len(),
            batch.units
        );

        // The contract's checks, in its order.
        let hub_of: Vec<usize> = batch
            .hubs
            .iter()
            .map(|&address| self.hub_keys.iter().position(|c| c.account() == address).unwrap())
            .collect();
        let mut expected = None;
        if sender.account() != self.reporters[job.reporter].account() {
            expected = Some("Unauthorized");
        } else if job.status != JobStatus::Open {
            expected = Some("WrongJobStatus");
        }
        let mut seen = job.bits.clone();
        for &c in &batch.chunks {
            if expected.is_some() {
                break;
            }
            if c >= job.chunks {
                expected = Some("ChunkOutOfRange");
            } else if seen[c as usize] {
                expected = Some("ChunkAlreadyPaid");
            } else {
                seen[c as usize] = true;
            }
        }
        let amounts: Vec<U256> = batch.units.iter().map(|&u| U256::from(u) * job.price).collect();
        let total = amounts.iter().fold(U256::ZERO, |a, b| a + b);
        if expected.is_none() {
            let too_many =
                batch.units.iter().zip(&batch.chunk_counts).any(|(&u, &n)| u > n as u64 * job.units_max as u64);
            if too_many {
                expected = Some("TooManyUnits");
            } else if total > job.deposit - job.paid {
                expected = Some("DepositExceeded");
            } else if hub_of.iter().any(|&h| !self.hubs[h].payable()) {
                expected = Some("HubNotPayable");
            }
        }
        let _ = self.now().await;
        let result = sender.pay_batch(&batch).await;
        if self.expect(result, expected).is_some() {
            let job = &mut self.jobs[j];
            job.bits = seen;
            job.paid += total;
            for (&h, amount) in hub_of.iter().zip(amounts) {
                self.hubs[h].balance += amount;
            }
        }
    }

    async fn complete(&mut self) {
        let j = self.pick_job(80);
        let job = self.jobs[j].clone();
        let by_reporter = self.rng.chance(85);
        let sender =
            if by_reporter { self.reporters[job.reporter].clone() } else { self.requesters[job.requester].clone() };
        self.what = format!("complete job {} (by the reporter: {by_reporter})", job.id);
        let expected = if !by_reporter {
            Some("Unauthorized")
        } else if job.status != JobStatus::Open {
            Some("WrongJobStatus")
        } else {
            None
        };
        let _ = self.now().await;
        let result = sender.complete(job.id).await;
        if self.expect(result, expected).is_some() {
            self.jobs[j].status = JobStatus::Completed;
        }
    }

    async fn refund(&mut self) {
        let j = self.pick_job(70);
        let job = self.jobs[j].clone();
        let by_requester = self.rng.chance(50);
        let requester = self.requesters[job.requester].clone();
        let sender = if by_requester { requester.clone() } else { self.stranger.clone() };
        self.what = format!("refund job {} (by the requester: {by_requester})", job.id);
        let now = self.now().await;
        let expected = match job.status {
            JobStatus::Closed => Some("WrongJobStatus"),
            JobStatus::Open if now < job.deadline => Some("RefundTooEarly"),
            _ => None,
        };
        let before = requester.balance(requester.account()).await.unwrap();
        let result = sender.refund(job.id).await;
        if let Some(receipt) = self.expect(result, expected) {
            let gas = if by_requester { fee(&requester, &receipt).await } else { U256::ZERO };
            let arrived = requester.balance(requester.account()).await.unwrap() + gas - before;
            assert_eq!(arrived, job.deposit - job.paid, "{}", self.context());
            self.money_out += arrived;
            let job = &mut self.jobs[j];
            job.refunded = job.deposit - job.paid;
            job.status = JobStatus::Closed;
        }
    }

    /// Sends `call` from hub `h`'s key and checks what arrived against `sent` (when it goes through).
    async fn hub_out<F>(&mut self, h: usize, call: F, expected: Option<&str>, sent: U256) -> bool
    where
        F: std::future::IntoFuture<Output = Result<Receipt, ChainError>>,
    {
        let chain = self.hub_keys[h].clone();
        let before = chain.balance(chain.account()).await.unwrap();
        let result = call.await;
        match self.expect(result, expected) {
            Some(receipt) => {
                let arrived = chain.balance(chain.account()).await.unwrap() + fee(&chain, &receipt).await - before;
                assert_eq!(arrived, sent, "{}", self.context());
                self.money_out += arrived;
                true
            }
            None => false,
        }
    }

    async fn withdraw(&mut self, h: usize) {
        let now = self.now().await;
        let mut hub = self.hubs[h].settled(now);
        let amount = match self.rng.below(4) {
            0 => hub.balance,
            1 => hub.balance + wei(1),
            2 => U256::ZERO,
            _ => hub.balance / wei(1 + self.rng.below(5) as u128) + wei(self.rng.below(3) as u128),
        };
        self.what = format!("hub {h} withdraws {amount} of {}", hub.balance);
        let expected = if hub.locked(now) {
            Some("HubLocked")
        } else if amount > hub.balance {
            Some("InsufficientFunds")
        } else {
            None
        };
        let mut sent = U256::ZERO;
        if expected.is_none() {
            hub.balance -= amount;
            sent = hub.pay_out(amount);
        }
        let chain = self.hub_keys[h].clone();
        if self.hub_out(h, chain.withdraw(amount), expected, sent).await {
            if hub.holdback {
                *self.done.entry("withdraw with holdback").or_default() += 1;
            }
            self.hubs[h] = hub;
        }
    }

    async fn request_unstake(&mut self, h: usize) {
        self.what = format!("hub {h} asks for its stake");
        let now = self.now().await;
        let mut hub = self.hubs[h].settled(now);
        let expected = hub.locked(now).then_some("HubLocked");
        let chain = self.hub_keys[h].clone();
        let result = chain.request_unstake().await;
        if let Some(receipt) = self.expect(result, expected) {
            hub.unstake_at = mined_at(&chain, &receipt).await + UNSTAKE_DELAY;
            self.hubs[h] = hub;
        }
    }

    async fn withdraw_stake(&mut self, h: usize) {
        let now = self.now().await;
        let mut hub = self.hubs[h].settled(now);
        // Now and then all of it: the hub stays registered and whitelisted but is not paid again.
        let amount = match self.rng.below(10) {
            0 => hub.stake + wei(1),
            1 => hub.stake,
            _ => hub.stake / wei(2 + self.rng.below(3) as u128),
        };
        self.what = format!("hub {h} withdraws {amount} of its stake {}", hub.stake);
        let expected = if hub.locked(now) {
            Some("HubLocked")
        } else if hub.unstake_at == 0 || now < hub.unstake_at {
            Some("UnstakeNotReady")
        } else if hub.pending != 0 {
            Some("EvidencePending")
        } else if amount > hub.stake {
            Some("InsufficientFunds")
        } else {
            None
        };
        let mut sent = U256::ZERO;
        if expected.is_none() {
            hub.stake -= amount;
            hub.unstake_at = 0;
            sent = hub.pay_out(amount);
        }
        let chain = self.hub_keys[h].clone();
        if self.hub_out(h, chain.withdraw_stake(amount), expected, sent).await {
            if hub.holdback {
                *self.done.entry("withdrawStake with holdback").or_default() += 1;
            }
            self.hubs[h] = hub;
        }
    }

    async fn add_stake(&mut self, h: usize) {
        let amount = ether("0.5 ether") + wei(self.rng.below(1000) as u128);
        self.what = format!("hub {h} adds {amount} to its stake");
        let now = self.now().await;
        let mut hub = self.hubs[h].settled(now);
        let expected = match hub.state {
            State::Suspected => Some("HubLocked"),
            State::Punished => Some("WrongHubState"),
            State::Active => None,
        };
        let chain = self.hub_keys[h].clone();
        let before = chain.balance(chain.account()).await.unwrap();
        let result = chain.add_stake(amount).await;
        if let Some(receipt) = self.expect(result, expected) {
            let sent = before - chain.balance(chain.account()).await.unwrap() - fee(&chain, &receipt).await;
            assert_eq!(sent, amount, "{}", self.context());
            self.money_in += sent;
            hub.stake += amount;
            self.hubs[h] = hub;
        }
    }

    /// The DAO's key, or now and then someone else's (refused with Unauthorized).
    fn dao_or_not(&mut self) -> (Chain, bool) {
        if self.rng.chance(90) { (self.dao.clone(), true) } else { (self.stranger.clone(), false) }
    }

    async fn suspect(&mut self, h: usize) {
        let (sender, dao) = self.dao_or_not();
        self.what = format!("suspect hub {h} (by the DAO: {dao})");
        let now = self.now().await;
        let mut hub = self.hubs[h].settled(now);
        let expected = if !dao {
            Some("Unauthorized")
        } else if hub.state != State::Active {
            Some("WrongHubState")
        } else {
            None
        };
        let result = sender.suspect(self.hub_keys[h].account()).await;
        if let Some(receipt) = self.expect(result, expected) {
            hub.state = State::Suspected;
            hub.locked_until = mined_at(&sender, &receipt).await + LOCK;
            self.hubs[h] = hub;
        }
    }

    async fn release_early(&mut self, h: usize) {
        self.what = format!("hub {h} releases itself early");
        let now = self.now().await;
        let mut hub = self.hubs[h].settled(now);
        let expected = (hub.state != State::Suspected).then_some("WrongHubState");
        let chain = self.hub_keys[h].clone();
        let result = chain.release_early(vec![]).await;
        if let Some(receipt) = self.expect(result, expected) {
            let fee = early_fee(hub.stake + hub.balance + hub.held);
            let taken = hub.take(fee);
            assert_eq!(taken, fee, "{}", self.context());
            self.claim_add(self.dao.account(), fee);
            hub.state = State::Active;
            hub.locked_until = mined_at(&chain, &receipt).await;
            self.hubs[h] = hub;
        }
    }

    async fn punish(&mut self, h: usize) {
        let (sender, dao) = self.dao_or_not();
        let hub = self.hubs[h].clone();
        let all = hub.stake + hub.balance + hub.held;
        let amount = match self.rng.below(3) {
            0 => ether("0.05 ether"),
            1 => hub.balance + ether("1 ether"),
            _ => all + wei(1),
        };
        self.what = format!("punish hub {h} by {amount} (by the DAO: {dao})");
        let now = self.now().await;
        let expected = if !dao {
            Some("Unauthorized")
        } else if !hub.locked(now) || !matches!(hub.state, State::Suspected | State::Punished) {
            Some("WrongHubState")
        } else {
            None
        };
        let result = sender.punish(self.hub_keys[h].account(), amount).await;
        if self.expect(result, expected).is_some() {
            let mut hub = hub;
            let taken = hub.take(amount);
            assert_eq!(taken, amount.min(all), "{}", self.context());
            self.claim_add(self.dao.account(), taken);
            hub.state = State::Punished;
            hub.whitelisted = false;
            self.hubs[h] = hub;
        }
    }

    async fn clear(&mut self, h: usize) {
        let (sender, dao) = self.dao_or_not();
        self.what = format!("clear hub {h} (by the DAO: {dao})");
        let _ = self.now().await;
        // clear does not settle the hub first: it acts on the stored state.
        let mut hub = self.hubs[h].clone();
        let expected = if !dao {
            Some("Unauthorized")
        } else if hub.state == State::Active {
            Some("WrongHubState")
        } else {
            None
        };
        let result = sender.clear(self.hub_keys[h].account(), vec![]).await;
        if let Some(receipt) = self.expect(result, expected) {
            hub.state = State::Active;
            hub.holdback = false;
            hub.locked_until = mined_at(&sender, &receipt).await;
            hub.balance += hub.held;
            hub.held = U256::ZERO;
            self.hubs[h] = hub;
        }
    }

    async fn whitelist(&mut self, h: usize) {
        let (sender, dao) = self.dao_or_not();
        let on = self.rng.chance(70);
        self.what = format!("whitelist hub {h}: {on} (by the DAO: {dao})");
        let now = self.now().await;
        let mut hub = self.hubs[h].settled(now);
        let expected = if !dao {
            Some("Unauthorized")
        } else if hub.state != State::Active {
            Some("WrongHubState")
        } else {
            None
        };
        let result = sender.set_whitelisted(self.hub_keys[h].account(), on).await;
        if self.expect(result, expected).is_some() {
            hub.whitelisted = on;
            self.hubs[h] = hub;
        }
    }

    async fn submit_evidence(&mut self, h: usize) {
        let j = self.rng.index(self.jobs.len());
        let job = self.jobs[j].clone();
        // Now and then a chunk past the job's last (jobs have at least 4).
        let chunk = if self.rng.chance(10) { job.chunks + self.rng.below(3) as u32 } else { self.rng.below(8) as u32 };
        let (sender, allowed, by_dao) = match self.rng.below(10) {
            0 => (self.dao.clone(), true, true),
            1 => (self.stranger.clone(), false, false),
            _ => (self.reporters[job.reporter].clone(), true, false),
        };
        let reporter = self.reporters[job.reporter].account();
        let approved = self.approved.contains(&reporter);
        self.what = format!(
            "evidence against hub {h}'s worker, job {} chunk {chunk} (allowed: {allowed}, by the DAO: {by_dao}, \
             reporter approved: {approved})",
            job.id
        );
        let _ = self.now().await;
        let id = alloy::primitives::keccak256(alloy::sol_types::SolValue::abi_encode(&(
            U256::from(job.id),
            U256::from(chunk),
            self.workers[h],
        )));
        let expected = if !allowed {
            Some("Unauthorized")
        } else if chunk >= job.chunks {
            Some("EvidenceChunkOutOfRange")
        } else if self.evidence.iter().any(|e| e.id == id) {
            Some("EvidenceExists")
        } else {
            None
        };
        let result = sender.submit_evidence(job.id, chunk, self.workers[h], B256::repeat_byte(9), vec![7; 64]).await;
        let result = result.map(|(returned, receipt)| {
            assert_eq!(returned, id);
            receipt
        });
        if let Some(receipt) = self.expect(result, expected) {
            self.hubs[h].pending += 1;
            self.evidence.push(Evidence {
                id,
                hub: h,
                ends: mined_at(&sender, &receipt).await + DISPUTE_WINDOW,
                open: true,
                requester: self.requesters[job.requester].account(),
                reporter,
                by_dao,
                approved,
            });
        }
    }

    /// Mostly open evidence.
    fn pick_evidence(&mut self) -> usize {
        let open: Vec<usize> = (0..self.evidence.len()).filter(|&e| self.evidence[e].open).collect();
        if !open.is_empty() && self.rng.chance(80) {
            open[self.rng.index(open.len())]
        } else {
            self.rng.index(self.evidence.len())
        }
    }

    async fn dismiss(&mut self) {
        let e = self.pick_evidence();
        let evidence = self.evidence[e].clone();
        let (sender, dao) = self.dao_or_not();
        self.what = format!("dismiss evidence {e} against hub {} (by the DAO: {dao})", evidence.hub);
        let now = self.now().await;
        let expected = if !dao {
            Some("Unauthorized")
        } else if !evidence.open {
            Some("EvidenceNotOpen")
        } else if now >= evidence.ends && self.trusted(&evidence) {
            Some("DisputeWindowClosed")
        } else {
            None
        };
        let result = sender.dismiss_evidence(evidence.id).await;
        if self.expect(result, expected).is_some() {
            self.evidence[e].open = false;
            self.hubs[evidence.hub].pending -= 1;
        }
    }

    async fn execute_slash(&mut self) {
        let e = self.pick_evidence();
        let evidence = self.evidence[e].clone();
        let dao = self.rng.chance(50);
        let sender = if dao { self.dao.clone() } else { self.stranger.clone() };
        self.what = format!("execute evidence {e} against hub {} (by the DAO: {dao})", evidence.hub);
        let now = self.now().await;
        let mut hub = self.hubs[evidence.hub].settled(now);
        let expected = if !evidence.open {
            Some("EvidenceNotOpen")
        } else if now < evidence.ends {
            Some("DisputeWindowOpen")
        } else if !dao && !self.trusted(&evidence) {
            Some("ReporterNotApproved")
        } else if !dao && hub.locked(now) {
            Some("HubLocked")
        } else {
            None
        };
        let result = sender.execute_slash(evidence.id).await;
        if self.expect(result, expected).is_some() {
            let slash = hub.stake * wei(1000) / wei(10_000);
            let to_reporter = slash * wei(2000) / wei(10_000);
            hub.stake -= slash;
            hub.pending -= 1;
            self.hubs[evidence.hub] = hub;
            self.claim_add(evidence.reporter, to_reporter);
            self.claim_add(evidence.requester, slash - to_reporter);
            self.evidence[e].open = false;
        }
    }

    async fn approve_reporter(&mut self) {
        let r = self.rng.index(self.reporters.len());
        let reporter = self.reporters[r].account();
        let on = self.rng.chance(60);
        let (sender, dao) = self.dao_or_not();
        self.what = format!("approve reporter {r}: {on} (by the DAO: {dao})");
        let _ = self.now().await;
        let expected = (!dao).then_some("Unauthorized");
        let result = sender.set_reporter_approved(reporter, on).await;
        if self.expect(result, expected).is_some() {
            if on {
                self.approved.insert(reporter);
            } else {
                self.approved.remove(&reporter);
            }
        }
    }

    fn parties(&self) -> Vec<Chain> {
        let mut all = vec![self.dao.clone(), self.stranger.clone()];
        all.extend(self.requesters.iter().cloned());
        all.extend(self.reporters.iter().cloned());
        all
    }

    async fn claim(&mut self) {
        let parties = self.parties();
        let chain = parties[self.rng.index(parties.len())].clone();
        let owed = self.claimable.get(&chain.account()).copied().unwrap_or_default();
        self.what = format!("{} claims {owed}", chain.account());
        let _ = self.now().await;
        let before = chain.balance(chain.account()).await.unwrap();
        let receipt = chain.claim().await.unwrap();
        *self.done.entry("claim").or_default() += 1;
        let arrived = chain.balance(chain.account()).await.unwrap() + fee(&chain, &receipt).await - before;
        assert_eq!(arrived, owed, "{}", self.context());
        self.money_out += arrived;
        self.claimable.remove(&chain.account());
    }

    async fn advance(&mut self) {
        self.op = "advanceTime";
        *self.done.entry(self.op).or_default() += 1;
        let seconds = [3_600, 2 * DAY, 8 * DAY, 15 * DAY, LOCK + DAY][self.rng.index(5)];
        self.what = format!("the clock moves {seconds} s");
        self.dao.advance_time(seconds).await.unwrap();
    }

    /// Completes every job, refunds it, lets every lock and window run out, executes open
    /// evidence, and has everyone claim; checks the same invariants after each.
    async fn wind_down(&mut self) {
        for j in 0..self.jobs.len() {
            let job = self.jobs[j].clone();
            if job.status == JobStatus::Open {
                self.what = format!("wind-down: complete job {}", job.id);
                self.reporters[job.reporter].complete(job.id).await.unwrap();
                self.jobs[j].status = JobStatus::Completed;
            }
            if job.status != JobStatus::Closed {
                let requester = self.requesters[job.requester].clone();
                self.what = format!("wind-down: refund job {}", job.id);
                let before = requester.balance(requester.account()).await.unwrap();
                self.stranger.refund(job.id).await.unwrap();
                let arrived = requester.balance(requester.account()).await.unwrap() - before;
                assert_eq!(arrived, job.deposit - job.paid, "{}", self.context());
                self.money_out += arrived;
                self.jobs[j].refunded = arrived;
                self.jobs[j].status = JobStatus::Closed;
            }
        }
        self.check().await;
        self.dao.advance_time(LOCK + DAY).await.unwrap();
        for e in 0..self.evidence.len() {
            if self.evidence[e].open {
                self.step += 1;
                if self.trusted(&self.evidence[e]) {
                    self.what = format!("wind-down: anyone executes evidence {e}");
                    self.execute_slash_at(e, false).await;
                } else if e % 2 == 0 {
                    self.what = format!("wind-down: the DAO executes evidence {e}, whose reporter it did not approve");
                    self.execute_slash_at(e, true).await;
                } else {
                    self.what = format!("wind-down: the DAO dismisses evidence {e}, whose reporter it did not approve");
                    let hub = self.evidence[e].hub;
                    self.dao.dismiss_evidence(self.evidence[e].id).await.unwrap();
                    self.evidence[e].open = false;
                    self.hubs[hub].pending -= 1;
                    self.check().await;
                }
            }
        }
        for h in 0..self.hubs.len() {
            self.step += 1;
            let now = self.now().await;
            let balance = self.hubs[h].settled(now).balance;
            self.what = format!("wind-down: hub {h} withdraws {balance}");
            let mut hub = self.hubs[h].settled(now);
            hub.balance = U256::ZERO;
            let sent = hub.pay_out(balance);
            let chain = self.hub_keys[h].clone();
            assert!(self.hub_out(h, chain.withdraw(balance), None, sent).await);
            self.hubs[h] = hub;
            self.check().await;
        }
        for chain in self.parties() {
            let owed = self.claimable.get(&chain.account()).copied().unwrap_or_default();
            self.what = format!("wind-down: {} claims {owed}", chain.account());
            let before = chain.balance(chain.account()).await.unwrap();
            let receipt = chain.claim().await.unwrap();
            let arrived = chain.balance(chain.account()).await.unwrap() + fee(&chain, &receipt).await - before;
            assert_eq!(arrived, owed, "{}", self.context());
            self.money_out += arrived;
            self.claimable.remove(&chain.account());
        }
        self.check().await;
        // Only the hubs' stakes and held-back money are left, and only on the registry.
        let escrow = self.dao.balance(self.dao.deployment().escrow).await.unwrap();
        assert_eq!(escrow, U256::ZERO, "{}", self.context());
        let left = self.hubs.iter().fold(U256::ZERO, |sum, h| sum + h.stake + h.held);
        assert_eq!(self.dao.balance(self.dao.deployment().registry).await.unwrap(), left, "{}", self.context());
    }

    async fn execute_slash_at(&mut self, e: usize, by_dao: bool) {
        let evidence = self.evidence[e].clone();
        let now = self.now().await;
        let mut hub = self.hubs[evidence.hub].settled(now);
        assert!(now >= evidence.ends && !hub.locked(now), "{}", self.context());
        let sender = if by_dao { &self.dao } else { &self.stranger };
        sender.execute_slash(evidence.id).await.unwrap();
        let slash = hub.stake * wei(1000) / wei(10_000);
        let to_reporter = slash * wei(2000) / wei(10_000);
        hub.stake -= slash;
        hub.pending -= 1;
        self.hubs[evidence.hub] = hub;
        self.claim_add(evidence.reporter, to_reporter);
        self.claim_add(evidence.requester, slash - to_reporter);
        self.evidence[e].open = false;
        self.check().await;
    }

    /// The chain equals the model, and the money adds up.
    async fn check(&self) {
        let ctx = self.context();
        let registry = Registry::new(self.dao.deployment().registry, self.dao.provider().clone());
        let mut hub_funds = U256::ZERO;
        for (h, model) in self.hubs.iter().enumerate() {
            let address = self.hub_keys[h].account();
            let stored = registry.hubs(address).call().await.unwrap();
            let account = registry.accounts(address, Address::ZERO).call().await.unwrap();
            let chain = Hub {
                state: match stored.state {
                    1 => State::Active,
                    2 => State::Suspected,
                    3 => State::Punished,
                    other => panic!("{ctx}: hub {h} in state {other}"),
                },
                whitelisted: stored.whitelisted,
                holdback: stored.holdback,
                locked_until: stored.lockedUntil,
                unstake_at: stored.unstakeAt,
                pending: stored.evidencePending,
                stake: U256::from(stored.stake),
                balance: U256::from(account.balance),
                held: U256::from(account.heldBack),
            };
            assert_eq!(&chain, model, "{ctx}: hub {h}");
            hub_funds += chain.stake + chain.balance + chain.held;
        }

        let mut escrowed = U256::ZERO;
        for model in &self.jobs {
            let job = self.dao.job(model.id).await.unwrap();
            let seen = (job.status, job.deposit, job.paid, job.refunded, job.deadline);
            let expected = (model.status, model.deposit, model.paid, model.refunded, model.deadline);
            assert_eq!(seen, expected, "{ctx}: job {}", model.id);
            assert!(job.paid + job.refunded <= job.deposit, "{ctx}: job {} paid out more than its deposit", model.id);
            let chunks: Vec<u32> = (0..model.chunks).collect();
            let bits = self.dao.paid_chunks(model.id, &chunks).await.unwrap();
            assert_eq!(bits, model.bits, "{ctx}: job {} bitmap", model.id);
            escrowed += job.deposit - job.paid - job.refunded;
        }

        let mut owed = U256::ZERO;
        for chain in self.parties() {
            let claimable = self.dao.claimable(chain.account()).await.unwrap();
            let model = self.claimable.get(&chain.account()).copied().unwrap_or_default();
            assert_eq!(claimable, model, "{ctx}: claimable of {}", chain.account());
            owed += claimable;
        }

        let escrow = self.dao.balance(self.dao.deployment().escrow).await.unwrap();
        let registry_balance = self.dao.balance(self.dao.deployment().registry).await.unwrap();
        assert_eq!(escrow, escrowed, "{ctx}: escrow balance against its jobs");
        assert_eq!(registry_balance, hub_funds + owed, "{ctx}: registry balance against hubs and claims");
        assert_eq!(
            self.money_in,
            self.money_out + escrow + registry_balance,
            "{ctx}: money in against money out and held"
        );
    }
}
