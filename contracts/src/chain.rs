//! One account on one Ethereum JSON-RPC endpoint, with the deployed contracts.

use std::path::Path;
use std::time::Duration;

use alloy::contract::{CallBuilder, CallDecoder};
use alloy::network::EthereumWallet;
use alloy::primitives::{Address, B256, U256};
use alloy::providers::{DynProvider, Provider, ProviderBuilder};
use alloy::signers::local::PrivateKeySigner;
use serde::{Deserialize, Serialize};

use crate::bindings::JobEscrow::{self, JobEscrowInstance};
use crate::bindings::Registry::{self, RegistryInstance};
use crate::error::{ChainError, Result};

/// Gas added to an estimate: a fifth.
const GAS_MARGIN_DIVISOR: u64 = 5;
/// How long a sent transaction may take to be mined before the call gives up waiting (it may
/// still be mined later: callers that must know read the chain again).
const RECEIPT_TIMEOUT: Duration = Duration::from_secs(300);

/// Where the contracts are: what `upglobe chain deploy` writes and every other chain command
/// reads (`--chain FILE`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Deployment {
    /// The JSON-RPC endpoint (any Ethereum node or provider).
    pub rpc: String,
    pub chain_id: u64,
    pub registry: Address,
    pub escrow: Address,
    pub dao: Address,
}

impl Deployment {
    pub fn read(path: &Path) -> Result<Deployment> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ChainError::Invalid(format!("cannot read the deployment {}: {e}", path.display())))?;
        serde_json::from_str(&text)
            .map_err(|e| ChainError::Invalid(format!("{} is not a deployment file: {e}", path.display())))
    }

    pub fn write(&self, path: &Path) -> Result<()> {
        let text = serde_json::to_string_pretty(self).expect("encoding to memory") + "\n";
        std::fs::write(path, text)
            .map_err(|e| ChainError::Invalid(format!("cannot write the deployment {}: {e}", path.display())))
    }
}

/// A mined transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Receipt {
    pub tx: B256,
    pub block: u64,
    pub gas_used: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HubState {
    None,
    Active,
    Suspected,
    Punished,
}

impl HubState {
    fn from_u8(value: u8) -> HubState {
        match value {
            1 => HubState::Active,
            2 => HubState::Suspected,
            3 => HubState::Punished,
            _ => HubState::None,
        }
    }
}

/// A hub as the registry holds it (ETH funds only), read at block time `now`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HubInfo {
    pub hub: Address,
    /// The stored state. A lock that ran out is applied on the hub's next call: a hub stored as
    /// suspected with `locked_until <= now` is active with the holdback on.
    pub state: HubState,
    pub whitelisted: bool,
    pub holdback: bool,
    pub locked_until: u64,
    pub unstake_at: u64,
    pub evidence_pending: u32,
    pub stake: U256,
    /// Earned and withdrawable (when not locked).
    pub balance: U256,
    /// The 30 % holdback after a lock ran out.
    pub held_back: U256,
    pub now: u64,
}

impl HubInfo {
    pub fn locked(&self) -> bool {
        self.now < self.locked_until
    }

    /// The state with a run-out lock applied, as the hub's next call would see it.
    pub fn effective_state(&self) -> HubState {
        if self.state == HubState::Suspected && !self.locked() { HubState::Active } else { self.state }
    }

    pub fn effective_holdback(&self) -> bool {
        self.holdback || (matches!(self.state, HubState::Suspected | HubState::Punished) && !self.locked())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    None,
    Open,
    Completed,
    Closed,
}

/// An escrow job as the contract holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EscrowJob {
    pub id: u64,
    pub requester: Address,
    pub reporter: Address,
    pub token: Address,
    pub deadline: u64,
    pub units_per_chunk_max: u32,
    pub chunks_max: u32,
    pub status: JobStatus,
    pub price_per_unit: U256,
    pub deposit: U256,
    pub paid: U256,
    pub refunded: U256,
}

/// What a requester asks for when it opens an escrow job (ETH only from Rust for now; the
/// contract also takes ERC-20 deposits).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewJob {
    pub price_per_unit: U256,
    pub units_per_chunk_max: u32,
    pub chunks: u32,
    pub reporter: Address,
    /// Seconds after the latest block.
    pub lasts: Duration,
    pub deposit: U256,
    /// An ERC-20 the requester has approved for `deposit`; `None` pays in ETH.
    pub token: Option<Address>,
}

/// One `payBatch`: chunks grouped by the hub that earned them.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Batch {
    pub job: u64,
    pub chunks: Vec<u32>,
    pub hubs: Vec<Address>,
    pub chunk_counts: Vec<u32>,
    pub units: Vec<u64>,
}

impl Batch {
    /// Groups `(chunk, hub, units)` by hub (hubs in order of first appearance) with each hub's
    /// chunks sorted, so consecutive chunks share bitmap words.
    pub fn group(job: u64, mut items: Vec<(u32, Address, u64)>) -> Batch {
        let mut order: Vec<Address> = Vec::new();
        for (_, hub, _) in &items {
            if !order.contains(hub) {
                order.push(*hub);
            }
        }
        items.sort_by_key(|(chunk, hub, _)| (order.iter().position(|h| h == hub), *chunk));
        let mut batch = Batch { job, ..Batch::default() };
        for (chunk, hub, units) in items {
            if batch.hubs.last() != Some(&hub) {
                batch.hubs.push(hub);
                batch.chunk_counts.push(0);
                batch.units.push(0);
            }
            batch.chunks.push(chunk);
            *batch.chunk_counts.last_mut().expect("pushed above") += 1;
            *batch.units.last_mut().expect("pushed above") += units;
        }
        batch
    }
}

/// One account (key) on one endpoint, with the deployed contracts.
#[derive(Clone)]
pub struct Chain {
    provider: DynProvider,
    key: PrivateKeySigner,
    account: Address,
    deployment: Deployment,
    registry: RegistryInstance<DynProvider>,
    escrow: JobEscrowInstance<DynProvider>,
}

fn provider(rpc: &str, key: PrivateKeySigner) -> Result<DynProvider> {
    let url = rpc
        .parse()
        .map_err(|e| ChainError::Invalid(format!("{rpc:?} is not a JSON-RPC URL (like http://127.0.0.1:8545): {e}")))?;
    // Nonces are asked of the node for every transaction rather than cached: a send that fails
    // after its nonce was taken (out of gas money, a transport error) must not leave a gap that
    // stalls every later transaction of the account, and another process may use the same key
    // (a reporter claiming its share of a slash).
    Ok(ProviderBuilder::new()
        .disable_recommended_fillers()
        .with_gas_estimation()
        .with_simple_nonce_management()
        .fetch_chain_id()
        .wallet(EthereumWallet::from(key))
        .connect_http(url)
        .erased())
}

/// The text a requester signs to tie escrow job `escrow_job` to workflow `workflow` of the
/// scheduler reporting on `deployment` (EIP-191 personal message).
pub fn funding_message(deployment: &Deployment, escrow_job: u64, workflow: u64) -> String {
    format!(
        "UpGlobe: pay workflow w{workflow} from escrow job {escrow_job} of JobEscrow {} on chain {}",
        deployment.escrow, deployment.chain_id
    )
}

/// Who signed a funding message: the address [`Chain::sign_funding`]'s key belongs to.
pub fn funding_signer(deployment: &Deployment, escrow_job: u64, workflow: u64, signature: &[u8]) -> Result<Address> {
    let signature = alloy::primitives::Signature::try_from(signature)
        .map_err(|_| ChainError::Invalid("the funding signature is not 65 bytes of a secp256k1 signature".into()))?;
    signature
        .recover_address_from_msg(funding_message(deployment, escrow_job, workflow))
        .map_err(|_| ChainError::Invalid("the funding signature does not recover to an address".into()))
}

/// Reads a private key: 64 hex digits, with or without `0x`, alone in a file or given directly.
pub fn read_key(text_or_path: &str) -> Result<PrivateKeySigner> {
    let trimmed = text_or_path.trim();
    let hex_digits = trimmed.strip_prefix("0x").unwrap_or(trimmed);
    let text = if hex_digits.len() == 64 && hex_digits.bytes().all(|b| b.is_ascii_hexdigit()) {
        trimmed.to_string()
    } else {
        std::fs::read_to_string(text_or_path).map_err(|e| {
            ChainError::Invalid(format!("the key is neither 64 hex digits nor a readable file ({text_or_path}: {e})"))
        })?
    };
    text.trim()
        .parse::<PrivateKeySigner>()
        .map_err(|_| ChainError::Invalid("the key is not 64 hex digits (a secp256k1 private key)".into()))
}

impl Chain {
    /// Deploys Registry and JobEscrow with `dao` as the DAO and links them.
    pub async fn deploy(rpc: &str, dao: PrivateKeySigner, stake_min: U256) -> Result<Chain> {
        let account = dao.address();
        let key = dao.clone();
        let provider = provider(rpc, dao)?;
        let chain_id = provider.get_chain_id().await.map_err(|e| ChainError::rpc(rpc, e))?;
        let registry = Registry::deploy(provider.clone(), account, stake_min)
            .await
            .map_err(|e| ChainError::from_contract("deploying Registry", e))?;
        let escrow = JobEscrow::deploy(provider.clone(), *registry.address())
            .await
            .map_err(|e| ChainError::from_contract("deploying JobEscrow", e))?;
        let deployment = Deployment {
            rpc: rpc.to_string(),
            chain_id,
            registry: *registry.address(),
            escrow: *escrow.address(),
            dao: account,
        };
        let chain = Chain { provider, key, account, deployment, registry, escrow };
        chain.send("Registry.setEscrow", chain.registry.setEscrow(chain.deployment.escrow)).await?;
        Ok(chain)
    }

    /// Connects `key` to a deployment, checking that the endpoint is the deployment's chain and
    /// that both contracts are there.
    pub async fn connect(deployment: &Deployment, key: PrivateKeySigner) -> Result<Chain> {
        let account = key.address();
        let provider = provider(&deployment.rpc, key.clone())?;
        let rpc = &deployment.rpc;
        let chain_id = provider.get_chain_id().await.map_err(|e| ChainError::rpc(rpc, e))?;
        if chain_id != deployment.chain_id {
            return Err(ChainError::Invalid(format!(
                "{rpc} is chain {chain_id}, but the deployment is on chain {}",
                deployment.chain_id
            )));
        }
        for (name, address) in [("Registry", deployment.registry), ("JobEscrow", deployment.escrow)] {
            let code = provider.get_code_at(address).await.map_err(|e| ChainError::rpc(rpc, e))?;
            if code.is_empty() {
                return Err(ChainError::Invalid(format!("there is no {name} contract at {address} on {rpc}")));
            }
        }
        let registry = Registry::new(deployment.registry, provider.clone());
        let escrow = JobEscrow::new(deployment.escrow, provider.clone());
        Ok(Chain { provider, key, account, deployment: deployment.clone(), registry, escrow })
    }

    /// The same deployment with another key.
    pub async fn with_key(&self, key: PrivateKeySigner) -> Result<Chain> {
        Chain::connect(&self.deployment, key).await
    }

    pub fn account(&self) -> Address {
        self.account
    }

    pub fn deployment(&self) -> &Deployment {
        &self.deployment
    }

    pub fn provider(&self) -> &DynProvider {
        &self.provider
    }

    /// Sends a transaction and waits for it to be mined. A call the contract refuses fails while
    /// its gas is estimated, before anything is sent, with the contract's reason.
    ///
    /// The estimate is made here, not by the provider's gas filler: the filler runs beside the
    /// nonce filler, whose cache hands out the next nonce even when the estimate then fails, so
    /// every refused call would leave a gap and this account's next transaction would wait in
    /// the node's pool forever.
    pub async fn send<D: CallDecoder>(&self, call: &str, builder: CallBuilder<&DynProvider, D>) -> Result<Receipt> {
        let gas = builder.estimate_gas().await.map_err(|e| ChainError::from_contract(call, e))?;
        // A margin over the estimate: storage that another transaction empties meanwhile costs
        // more to write again (a hub withdrawing its balance to zero before a batch credits it).
        let gas = gas + gas / GAS_MARGIN_DIVISOR;
        let pending = builder.gas(gas).send().await.map_err(|e| ChainError::from_contract(call, e))?;
        let tx = *pending.tx_hash();
        let receipt = pending
            .with_timeout(Some(RECEIPT_TIMEOUT))
            .get_receipt()
            .await
            .map_err(|e| ChainError::rpc(call, format!("no receipt for {tx}: {e}")))?;
        let mined = Receipt { tx, block: receipt.block_number.unwrap_or_default(), gas_used: receipt.gas_used };
        if !receipt.status() {
            return Err(ChainError::Revert {
                call: call.to_string(),
                error: "reverted".into(),
                reason: format!("transaction {tx} reverted in block {}", mined.block),
            });
        }
        Ok(mined)
    }

    // ---- Reads ----------------------------------------------------------------------------

    pub async fn now(&self) -> Result<u64> {
        let block = self
            .provider
            .get_block_by_number(alloy::eips::BlockNumberOrTag::Latest)
            .await
            .map_err(|e| ChainError::rpc("reading the latest block", e))?
            .ok_or_else(|| ChainError::rpc("reading the latest block", "the node has no latest block"))?;
        Ok(block.header.timestamp)
    }

    /// Transactions this account has sent (its next nonce).
    pub async fn nonce(&self) -> Result<u64> {
        self.provider.get_transaction_count(self.account).await.map_err(|e| ChainError::rpc("reading a nonce", e))
    }

    pub async fn balance(&self, account: Address) -> Result<U256> {
        self.provider.get_balance(account).await.map_err(|e| ChainError::rpc("reading a balance", e))
    }

    pub async fn hub(&self, hub: Address) -> Result<HubInfo> {
        let call = "Registry.hubs";
        let h = self.registry.hubs(hub).call().await.map_err(|e| ChainError::from_contract(call, e))?;
        let account = self
            .registry
            .accounts(hub, Address::ZERO)
            .call()
            .await
            .map_err(|e| ChainError::from_contract("Registry.accounts", e))?;
        Ok(HubInfo {
            hub,
            state: HubState::from_u8(h.state as u8),
            whitelisted: h.whitelisted,
            holdback: h.holdback,
            locked_until: h.lockedUntil,
            unstake_at: h.unstakeAt,
            evidence_pending: h.evidencePending,
            stake: U256::from(h.stake),
            balance: U256::from(account.balance),
            held_back: U256::from(account.heldBack),
            now: self.now().await?,
        })
    }

    /// The hub a worker (by `protocol::WorkerId`) is attached to.
    pub async fn worker_hub(&self, worker: B256) -> Result<Option<Address>> {
        let hub = self
            .registry
            .workerHub(worker)
            .call()
            .await
            .map_err(|e| ChainError::from_contract("Registry.workerHub", e))?;
        Ok((hub != Address::ZERO).then_some(hub))
    }

    /// Whether the DAO vouches for a reporter: anyone may execute its evidence after the
    /// dispute window (evidence from any other reporter is the DAO's to execute or dismiss).
    pub async fn reporter_approved(&self, reporter: Address) -> Result<bool> {
        self.registry
            .reporterApproved(reporter)
            .call()
            .await
            .map_err(|e| ChainError::from_contract("Registry.reporterApproved", e))
    }

    /// What the DAO, a requester or a reporter may claim.
    pub async fn claimable(&self, owner: Address) -> Result<U256> {
        self.registry
            .claimable(owner, Address::ZERO)
            .call()
            .await
            .map_err(|e| ChainError::from_contract("Registry.claimable", e))
    }

    pub async fn early_release_fee(&self, hub: Address) -> Result<U256> {
        self.registry
            .earlyReleaseFee(hub, Address::ZERO)
            .call()
            .await
            .map_err(|e| ChainError::from_contract("Registry.earlyReleaseFee", e))
    }

    pub async fn job(&self, id: u64) -> Result<EscrowJob> {
        let j = self
            .escrow
            .jobs(U256::from(id))
            .call()
            .await
            .map_err(|e| ChainError::from_contract("JobEscrow.jobs", e))?;
        let status = match j.status as u8 {
            1 => JobStatus::Open,
            2 => JobStatus::Completed,
            3 => JobStatus::Closed,
            _ => JobStatus::None,
        };
        Ok(EscrowJob {
            id,
            requester: j.requester,
            reporter: j.reporter,
            token: j.token,
            deadline: j.deadline,
            units_per_chunk_max: j.unitsPerChunkMax,
            chunks_max: j.chunksMax,
            status,
            price_per_unit: U256::from(j.pricePerUnit),
            deposit: U256::from(j.deposit),
            paid: U256::from(j.paid),
            refunded: U256::from(j.refunded),
        })
    }

    /// Whether each chunk is paid, read from the bitmap one 256-chunk word at a time.
    pub async fn paid_chunks(&self, job: u64, chunks: &[u32]) -> Result<Vec<bool>> {
        let mut words: Vec<u32> = chunks.iter().map(|c| c >> 8).collect();
        words.sort_unstable();
        words.dedup();
        let mut bits = std::collections::HashMap::new();
        for word in words {
            let value = self
                .escrow
                .paidChunks(U256::from(job), U256::from(word))
                .call()
                .await
                .map_err(|e| ChainError::from_contract("JobEscrow.paidChunks", e))?;
            bits.insert(word, value);
        }
        Ok(chunks.iter().map(|c| bits[&(c >> 8)].bit((c & 255) as usize)).collect())
    }

    // ---- Hubs -----------------------------------------------------------------------------

    pub async fn register(&self, stake: U256) -> Result<Receipt> {
        self.send("Registry.register", self.registry.register().value(stake)).await
    }

    pub async fn add_stake(&self, stake: U256) -> Result<Receipt> {
        self.send("Registry.addStake", self.registry.addStake().value(stake)).await
    }

    pub async fn attach_worker(&self, worker: B256) -> Result<Receipt> {
        self.send("Registry.attachWorker", self.registry.attachWorker(worker)).await
    }

    pub async fn detach_worker(&self, worker: B256) -> Result<Receipt> {
        self.send("Registry.detachWorker", self.registry.detachWorker(worker)).await
    }

    pub async fn request_unstake(&self) -> Result<Receipt> {
        self.send("Registry.requestUnstake", self.registry.requestUnstake()).await
    }

    pub async fn withdraw_stake(&self, amount: U256) -> Result<Receipt> {
        self.send("Registry.withdrawStake", self.registry.withdrawStake(amount)).await
    }

    /// Withdraws ETH earnings.
    pub async fn withdraw(&self, amount: U256) -> Result<Receipt> {
        self.send("Registry.withdraw", self.registry.withdraw(Address::ZERO, amount)).await
    }

    pub async fn release_early(&self, tokens: Vec<Address>) -> Result<Receipt> {
        self.send("Registry.releaseEarly", self.registry.releaseEarly(tokens)).await
    }

    /// Collects what the DAO, a requester or a reporter is owed, in ETH.
    pub async fn claim(&self) -> Result<Receipt> {
        self.send("Registry.claim", self.registry.claim(Address::ZERO)).await
    }

    // ---- DAO ------------------------------------------------------------------------------

    pub async fn set_whitelisted(&self, hub: Address, whitelisted: bool) -> Result<Receipt> {
        self.send("Registry.setWhitelisted", self.registry.setWhitelisted(hub, whitelisted)).await
    }

    pub async fn suspect(&self, hub: Address) -> Result<Receipt> {
        self.send("Registry.suspect", self.registry.suspect(hub)).await
    }

    pub async fn clear(&self, hub: Address, tokens: Vec<Address>) -> Result<Receipt> {
        self.send("Registry.clear", self.registry.clear(hub, tokens)).await
    }

    pub async fn punish(&self, hub: Address, amount: U256) -> Result<Receipt> {
        self.send("Registry.punish", self.registry.punish(hub, amount)).await
    }

    /// Vouches for a reporter's evidence (`approved`) or stops vouching.
    pub async fn set_reporter_approved(&self, reporter: Address, approved: bool) -> Result<Receipt> {
        self.send("Registry.setReporterApproved", self.registry.setReporterApproved(reporter, approved)).await
    }

    /// Evidence that `worker` signed a result for chunk `chunk` of escrow job `job` that
    /// contradicts the verified one. Returns the evidence id.
    pub async fn submit_evidence(
        &self,
        job: u64,
        chunk: u32,
        worker: B256,
        evidence_hash: B256,
        signed_statement: Vec<u8>,
    ) -> Result<(B256, Receipt)> {
        let id = alloy::primitives::keccak256(alloy::sol_types::SolValue::abi_encode(&(
            U256::from(job),
            U256::from(chunk),
            worker,
        )));
        let call = self.registry.submitEvidence(
            U256::from(job),
            U256::from(chunk),
            worker,
            evidence_hash,
            signed_statement.into(),
        );
        Ok((id, self.send("Registry.submitEvidence", call).await?))
    }

    pub async fn dismiss_evidence(&self, evidence: B256) -> Result<Receipt> {
        self.send("Registry.dismissEvidence", self.registry.dismissEvidence(evidence)).await
    }

    pub async fn execute_slash(&self, evidence: B256) -> Result<Receipt> {
        self.send("Registry.executeSlash", self.registry.executeSlash(evidence)).await
    }

    // ---- Escrow ---------------------------------------------------------------------------

    /// Opens an escrow job with this account as the requester; returns its id.
    pub async fn create_job(&self, job: &NewJob) -> Result<(u64, Receipt)> {
        let deadline = self.now().await? + job.lasts.as_secs();
        let price = u128::try_from(job.price_per_unit)
            .map_err(|_| ChainError::Invalid("the price per unit is too large".into()))?;
        let (token, value, amount) = match job.token {
            None => (Address::ZERO, job.deposit, U256::ZERO),
            Some(token) => (token, U256::ZERO, job.deposit),
        };
        let call = self
            .escrow
            .createJob(token, price, job.units_per_chunk_max, job.chunks, job.reporter, deadline, amount)
            .value(value);
        let receipt = self.send("JobEscrow.createJob", call).await?;
        let id = self
            .receipt_logs(receipt.tx)
            .await?
            .iter()
            .find_map(|log| log.log_decode::<JobEscrow::JobCreated>().ok())
            .map(|log| log.inner.data.jobId)
            .ok_or_else(|| ChainError::rpc("JobEscrow.createJob", "the receipt has no JobCreated event"))?;
        let id = u64::try_from(id).map_err(|_| ChainError::rpc("JobEscrow.createJob", "job id out of range"))?;
        Ok((id, receipt))
    }

    async fn receipt_logs(&self, tx: B256) -> Result<Vec<alloy::rpc::types::Log>> {
        let receipt = self
            .provider
            .get_transaction_receipt(tx)
            .await
            .map_err(|e| ChainError::rpc("reading a receipt", e))?
            .ok_or_else(|| ChainError::rpc("reading a receipt", format!("no receipt for {tx}")))?;
        Ok(receipt.inner.logs().to_vec())
    }

    pub async fn pay_batch(&self, batch: &Batch) -> Result<Receipt> {
        self.send("JobEscrow.payBatch", self.pay_batch_call(batch)).await
    }

    /// Whether the escrow would accept a batch now, without sending anything.
    pub async fn check_pay_batch(&self, batch: &Batch) -> Result<()> {
        let call = "JobEscrow.payBatch";
        self.pay_batch_call(batch).estimate_gas().await.map_err(|e| ChainError::from_contract(call, e))?;
        Ok(())
    }

    fn pay_batch_call(
        &self,
        batch: &Batch,
    ) -> CallBuilder<&DynProvider, std::marker::PhantomData<JobEscrow::payBatchCall>> {
        self.escrow.payBatch(
            U256::from(batch.job),
            batch.chunks.clone(),
            batch.hubs.clone(),
            batch.chunk_counts.clone(),
            batch.units.clone(),
        )
    }

    /// Signs what lets a scheduler pay a workflow from an escrow job: only the job's requester
    /// can tie its deposit to a workflow.
    pub async fn sign_funding(&self, escrow_job: u64, workflow: u64) -> Result<Vec<u8>> {
        use alloy::signers::Signer;
        let message = funding_message(&self.deployment, escrow_job, workflow);
        let signature =
            self.key.sign_message(message.as_bytes()).await.map_err(|e| ChainError::Invalid(e.to_string()))?;
        Ok(signature.as_bytes().to_vec())
    }

    pub async fn complete(&self, job: u64) -> Result<Receipt> {
        self.send("JobEscrow.complete", self.escrow.complete(U256::from(job))).await
    }

    pub async fn refund(&self, job: u64) -> Result<Receipt> {
        self.send("JobEscrow.refund", self.escrow.refund(U256::from(job))).await
    }

    // ---- Test chains ------------------------------------------------------------------------

    /// Moves a development chain's clock (anvil, hardhat) forward and mines a block.
    pub async fn advance_time(&self, seconds: u64) -> Result<()> {
        let call = "evm_increaseTime";
        let _: serde_json::Value =
            self.provider.raw_request(call.into(), (seconds,)).await.map_err(|e| ChainError::rpc(call, e))?;
        let _: serde_json::Value =
            self.provider.raw_request("evm_mine".into(), ()).await.map_err(|e| ChainError::rpc("evm_mine", e))?;
        Ok(())
    }
}
