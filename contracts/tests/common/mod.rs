//! What the chain tests share: a fresh anvil with the contracts deployed, the usual cast of
//! accounts, and the few reads the client does not wrap (gas paid, token balances).

#![allow(dead_code)]

use std::time::Duration;

use alloy::providers::{DynProvider, Provider};
use upglobe_contracts::anvil::LocalChain;
use upglobe_contracts::bindings::JobEscrow::{self, JobEscrowInstance};
use upglobe_contracts::bindings::Registry::{self, RegistryInstance};
use upglobe_contracts::bindings::test::TestToken::{self, TestTokenInstance};
use upglobe_contracts::{Address, Batch, Chain, ChainError, NewJob, Receipt, U256, amount};

/// The registry's minimum stake in every test.
pub const STAKE_MIN: &str = "1 ether";

pub fn ether(text: &str) -> U256 {
    amount::parse(text).unwrap()
}

pub fn wei(n: u128) -> U256 {
    U256::from(n)
}

/// A fresh anvil with Registry and JobEscrow deployed and one account per role. The hub is
/// registered with 10 ether and whitelisted; hub2 is neither.
pub struct World {
    pub anvil: LocalChain,
    pub dao: Chain,
    pub hub: Chain,
    pub requester: Chain,
    pub reporter: Chain,
    pub hub2: Chain,
    pub stranger: Chain,
}

impl World {
    pub async fn new() -> World {
        let anvil = LocalChain::start().unwrap();
        let dao = Chain::deploy(&anvil.endpoint(), anvil.key(0), ether(STAKE_MIN)).await.unwrap();
        let key = |k| dao.with_key(anvil.key(k));
        let (hub, requester, reporter, hub2, stranger) = (
            key(1).await.unwrap(),
            key(2).await.unwrap(),
            key(3).await.unwrap(),
            key(4).await.unwrap(),
            key(5).await.unwrap(),
        );
        hub.register(ether("10 ether")).await.unwrap();
        dao.set_whitelisted(hub.account(), true).await.unwrap();
        World { anvil, dao, hub, requester, reporter, hub2, stranger }
    }

    /// An ETH job of `chunks` chunks priced `price` wei each (one unit per chunk) with
    /// `deposit`, reported by `self.reporter`, lasting a day.
    pub async fn eth_job(&self, chunks: u32, price: U256, deposit: U256) -> u64 {
        let job = NewJob {
            price_per_unit: price,
            units_per_chunk_max: 1,
            chunks,
            reporter: self.reporter.account(),
            lasts: Duration::from_secs(86_400),
            deposit,
            token: None,
        };
        self.requester.create_job(&job).await.unwrap().0
    }

    /// Pays `chunks` of `job` to `hub`, one unit each, as the reporter.
    pub async fn pay(&self, job: u64, chunks: &[u32], hub: Address) -> Result<Receipt, ChainError> {
        self.reporter.pay_batch(&Batch::group(job, chunks.iter().map(|&c| (c, hub, 1)).collect())).await
    }

    pub async fn deploy_token(&self) -> TestTokenInstance<DynProvider> {
        TestToken::deploy(self.dao.provider().clone()).await.unwrap()
    }
}

pub fn registry(chain: &Chain) -> RegistryInstance<DynProvider> {
    Registry::new(chain.deployment().registry, chain.provider().clone())
}

pub fn escrow(chain: &Chain) -> JobEscrowInstance<DynProvider> {
    JobEscrow::new(chain.deployment().escrow, chain.provider().clone())
}

pub fn token(chain: &Chain, address: Address) -> TestTokenInstance<DynProvider> {
    TestToken::new(address, chain.provider().clone())
}

/// What a transaction cost its sender in gas, in wei.
pub async fn fee(chain: &Chain, receipt: &Receipt) -> U256 {
    let full = chain.provider().get_transaction_receipt(receipt.tx).await.unwrap().unwrap();
    U256::from(full.gas_used) * U256::from(full.effective_gas_price)
}

/// Runs `send` from `chain`'s account and returns how much ETH that account gained, not counting
/// the gas it paid: what arrived.
pub async fn arrived<F>(chain: &Chain, send: F) -> U256
where
    F: std::future::IntoFuture<Output = Result<Receipt, ChainError>>,
{
    let before = chain.balance(chain.account()).await.unwrap();
    let receipt = send.await.unwrap();
    let after = chain.balance(chain.account()).await.unwrap();
    after + fee(chain, &receipt).await - before
}

/// Asserts that a call was refused with the Solidity error `name`.
#[track_caller]
pub fn refused<T: std::fmt::Debug>(result: Result<T, ChainError>, name: &str) {
    match result {
        Err(e) => assert_eq!(e.revert_name(), Some(name), "expected {name}, got: {e}"),
        Ok(value) => panic!("expected {name}, but the call went through: {value:?}"),
    }
}

/// ETH account of a hub: (stake, balance, heldBack).
pub async fn funds(chain: &Chain, hub: Address) -> (U256, U256, U256) {
    let info = chain.hub(hub).await.unwrap();
    (info.stake, info.balance, info.held_back)
}

/// (balance, heldBack) of a hub in one token.
pub async fn token_account(chain: &Chain, hub: Address, token: Address) -> (U256, U256) {
    let a = registry(chain).accounts(hub, token).call().await.unwrap();
    (U256::from(a.balance), U256::from(a.heldBack))
}

pub async fn token_balance(chain: &Chain, token_address: Address, owner: Address) -> U256 {
    token(chain, token_address).balanceOf(owner).call().await.unwrap()
}

pub async fn claimable_token(chain: &Chain, owner: Address, token: Address) -> U256 {
    registry(chain).claimable(owner, token).call().await.unwrap()
}

/// The holdback's kept part of a withdrawal of `amount`, as the contract rounds it (up).
pub fn kept(amount: U256) -> U256 {
    amount - amount * U256::from(7000) / U256::from(10_000)
}

/// The early-release fee on `locked` (0.5 %, rounded down).
pub fn early_fee(locked: U256) -> U256 {
    locked * U256::from(50) / U256::from(10_000)
}

pub const DAY: u64 = 86_400;
pub const LOCK: u64 = 120 * DAY;

/// The timestamp of the block a transaction was mined in.
pub async fn mined_at(chain: &Chain, receipt: &Receipt) -> u64 {
    let block = chain.provider().get_block_by_number(receipt.block.into()).await.unwrap().unwrap();
    block.header.timestamp
}

/// The number of ERC-20 accounts the registry counts for a hub.
pub async fn token_accounts(chain: &Chain, hub: Address) -> u16 {
    registry(chain).hubs(hub).call().await.unwrap().tokenAccounts
}
