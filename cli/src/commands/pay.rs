//! Payments on Ethereum: `upglobe chain deploy`, `hub …`, `dao …`, `job …`, `earnings`,
//! `payments`. Every call that the contracts refuse ends with their reason in words.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use serde_json::json;
use upglobe_contracts::{Address, B256, Chain, Deployment, HubInfo, NewJob, Receipt, U256, amount, read_key};
use upglobe_protocol::messages::{ClientRequest, ClientResponse, FundedWorkflow, PaymentAnswer, PaymentRequest};
use upglobe_protocol::{WorkerId, WorkflowId};

use super::Context;
use super::status::connect;
use crate::client::Client;
use crate::output::{self, Format};

/// Where the contracts are and whose key signs.
#[derive(clap::Args, Clone, Default)]
pub struct ChainArgs {
    /// The deployment file written by `upglobe chain deploy`. Default: HOME/chain.json.
    #[arg(long, env = "UPGLOBE_CHAIN", value_name = "FILE")]
    pub chain: Option<PathBuf>,
    /// The account's private key (64 hex digits), or a file holding it.
    #[arg(long, env = "UPGLOBE_KEY", value_name = "KEY", hide_env_values = true)]
    pub key: Option<String>,
}

impl ChainArgs {
    pub fn deployment_path(&self, context: &Context) -> PathBuf {
        self.chain.clone().unwrap_or_else(|| context.home.join("chain.json"))
    }

    pub fn ready(&self, context: &Context) -> Result<()> {
        let path = self.deployment_path(context);
        if !path.exists() {
            bail!(
                "no chain deployment at {}: pass --chain FILE (written by `upglobe chain deploy`) or set UPGLOBE_CHAIN",
                path.display()
            );
        }
        if self.key.is_none() {
            bail!(
                "this needs an Ethereum account: pass --key KEY (64 hex digits, or a file holding them) or set UPGLOBE_KEY"
            );
        }
        Ok(())
    }

    pub async fn connect(&self, context: &Context) -> Result<Chain> {
        self.ready(context)?;
        let deployment = Deployment::read(&self.deployment_path(context))?;
        let key = read_key(self.key.as_deref().expect("checked by ready"))?;
        Ok(Chain::connect(&deployment, key).await?)
    }
}

fn parse_amount(text: &str) -> Result<U256, String> {
    amount::parse(text)
}

fn parse_address(text: &str) -> Result<Address, String> {
    text.trim().parse().map_err(|_| format!("{text:?} is not an Ethereum address (0x and 40 hex digits)"))
}

fn parse_evidence(text: &str) -> Result<B256, String> {
    text.trim().parse().map_err(|_| format!("{text:?} is not an evidence id (0x and 64 hex digits)"))
}

fn parse_worker(text: &str) -> Result<WorkerId, String> {
    WorkerId::from_hex(text.trim())
        .ok_or_else(|| format!("{text:?} is not a worker id (64 hex digits; see `upglobe workers --output json`)"))
}

// ---- chain ---------------------------------------------------------------------------------

#[derive(clap::Subcommand)]
pub enum ChainCommand {
    /// Deploy the Registry and JobEscrow contracts, with this key as the DAO.
    Deploy {
        /// JSON-RPC endpoint of any Ethereum node.
        #[arg(long, default_value = "http://127.0.0.1:8545")]
        rpc: String,
        /// The DAO's private key (64 hex digits, or a file holding it).
        #[arg(long, env = "UPGLOBE_KEY", hide_env_values = true)]
        key: String,
        /// The least stake a hub registers with.
        #[arg(long, default_value = "1 ether", value_parser = parse_amount)]
        stake_min: U256,
        /// Where to write the deployment. Default: HOME/chain.json.
        #[arg(long, value_name = "FILE")]
        write: Option<PathBuf>,
    },
}

pub async fn chain(context: &Context, command: ChainCommand) -> Result<i32> {
    match command {
        ChainCommand::Deploy { rpc, key, stake_min, write } => {
            let chain = Chain::deploy(&rpc, read_key(&key)?, stake_min).await?;
            let path = write.unwrap_or_else(|| context.home.join("chain.json"));
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))?;
            }
            chain.deployment().write(&path)?;
            let d = chain.deployment();
            match context.format {
                Format::Json => output::json(&json!({
                    "deployment": path, "chain_id": d.chain_id, "registry": d.registry.to_string(),
                    "escrow": d.escrow.to_string(), "dao": d.dao.to_string(),
                })),
                Format::Text => println!(
                    "deployed on chain {}: Registry {}, JobEscrow {}, DAO {}\nwrote {}",
                    d.chain_id,
                    d.registry,
                    d.escrow,
                    d.dao,
                    path.display()
                ),
            }
            Ok(0)
        }
    }
}

/// Prints a mined transaction: one JSON line, or a sentence.
fn done(context: &Context, what: &str, receipt: &Receipt) {
    match context.format {
        Format::Json => output::json(
            &json!({"done": what, "tx": receipt.tx.to_string(), "block": receipt.block, "gas": receipt.gas_used}),
        ),
        Format::Text => println!("{what} (tx {}, block {}, {} gas)", receipt.tx, receipt.block, receipt.gas_used),
    }
}

// ---- hub -----------------------------------------------------------------------------------

#[derive(clap::Subcommand)]
pub enum HubCommand {
    /// Register this account as a hub (a lab) with a stake.
    Register {
        #[arg(long, value_parser = parse_amount)]
        stake: U256,
        #[command(flatten)]
        chain: ChainArgs,
    },
    /// Attach a worker (by id) so that the chunks it computes are paid to this hub.
    Attach {
        #[arg(value_parser = parse_worker)]
        worker: WorkerId,
        #[command(flatten)]
        chain: ChainArgs,
    },
    /// Detach a worker.
    Detach {
        #[arg(value_parser = parse_worker)]
        worker: WorkerId,
        #[command(flatten)]
        chain: ChainArgs,
    },
    /// Withdraw earnings (all of them unless --amount).
    Withdraw {
        #[arg(long, value_parser = parse_amount)]
        amount: Option<U256>,
        #[command(flatten)]
        chain: ChainArgs,
    },
    /// Ask for the stake back (withdraw it with `hub withdraw-stake` after 14 days).
    Unstake {
        #[command(flatten)]
        chain: ChainArgs,
    },
    /// Withdraw stake after `hub unstake`'s delay.
    WithdrawStake {
        #[arg(long, value_parser = parse_amount)]
        amount: U256,
        #[command(flatten)]
        chain: ChainArgs,
    },
    /// End the DAO's lock now by paying it 0.5 % of everything locked.
    ReleaseEarly {
        /// Every ERC-20 the hub holds (the fee is charged on each; the registry refuses a list
        /// that leaves one out).
        #[arg(long = "token", value_parser = parse_address)]
        tokens: Vec<Address>,
        #[command(flatten)]
        chain: ChainArgs,
    },
}

pub async fn hub(context: &Context, command: HubCommand) -> Result<i32> {
    match command {
        HubCommand::Register { stake, chain } => {
            let chain = chain.connect(context).await?;
            let receipt = chain.register(stake).await?;
            done(
                context,
                &format!("registered hub {} with a stake of {}", chain.account(), amount::format(stake)),
                &receipt,
            );
        }
        HubCommand::Attach { worker, chain } => {
            let chain = chain.connect(context).await?;
            let receipt = chain.attach_worker(B256::from(worker.0)).await?;
            done(context, &format!("attached worker {} to hub {}", worker.short(), chain.account()), &receipt);
        }
        HubCommand::Detach { worker, chain } => {
            let chain = chain.connect(context).await?;
            let receipt = chain.detach_worker(B256::from(worker.0)).await?;
            done(context, &format!("detached worker {} from hub {}", worker.short(), chain.account()), &receipt);
        }
        HubCommand::Withdraw { amount: wanted, chain } => {
            let chain = chain.connect(context).await?;
            let info = chain.hub(chain.account()).await?;
            let wanted = wanted.unwrap_or(info.balance);
            if wanted.is_zero() {
                bail!("hub {} has no earnings to withdraw", chain.account());
            }
            let holdback = info.effective_holdback();
            let receipt = chain.withdraw(wanted).await?;
            let note = if holdback { " (30 % of it stays locked: the hub's lock ran out unpaid)" } else { "" };
            done(context, &format!("withdrew {}{note}", amount::format(wanted)), &receipt);
        }
        HubCommand::Unstake { chain } => {
            let chain = chain.connect(context).await?;
            let receipt = chain.request_unstake().await?;
            done(context, "asked for the stake back; withdraw it with `hub withdraw-stake` in 14 days", &receipt);
        }
        HubCommand::WithdrawStake { amount: wanted, chain } => {
            let chain = chain.connect(context).await?;
            let receipt = chain.withdraw_stake(wanted).await?;
            done(context, &format!("withdrew {} of stake", amount::format(wanted)), &receipt);
        }
        HubCommand::ReleaseEarly { mut tokens, chain } => {
            let chain = chain.connect(context).await?;
            let fee = chain.early_release_fee(chain.account()).await?;
            tokens.sort();
            tokens.dedup();
            let receipt = chain.release_early(tokens).await?;
            done(context, &format!("lock ended early; paid the DAO {}", amount::format(fee)), &receipt);
        }
    }
    Ok(0)
}

// ---- dao -----------------------------------------------------------------------------------

#[derive(clap::Subcommand)]
pub enum DaoCommand {
    /// Let a hub be paid for chunks (or stop it with --remove).
    Whitelist {
        #[arg(value_parser = parse_address)]
        hub: Address,
        #[arg(long)]
        remove: bool,
        #[command(flatten)]
        chain: ChainArgs,
    },
    /// Suspect a hub: every fund it has is locked for 120 days.
    Suspect {
        #[arg(value_parser = parse_address)]
        hub: Address,
        #[command(flatten)]
        chain: ChainArgs,
    },
    /// Clear a suspected or punished hub: the lock ends and anything held back is given back.
    Clear {
        #[arg(value_parser = parse_address)]
        hub: Address,
        /// ERC-20s whose held-back money goes back to the hub too (ETH's always does).
        #[arg(long = "token", value_parser = parse_address)]
        tokens: Vec<Address>,
        #[command(flatten)]
        chain: ChainArgs,
    },
    /// Punish a suspected hub: take up to --amount of its ETH for the DAO; it is never paid again.
    Punish {
        #[arg(value_parser = parse_address)]
        hub: Address,
        #[arg(long, value_parser = parse_amount)]
        amount: U256,
        #[command(flatten)]
        chain: ChainArgs,
    },
    /// Vouch for a reporter (a scheduler's --reporter-key address): anyone may then execute its
    /// evidence after the dispute window. Evidence from any other reporter is the DAO's to execute
    /// or dismiss, since whoever opens an escrow job names its reporter. --remove stops vouching,
    /// for its open evidence too.
    ApproveReporter {
        #[arg(value_parser = parse_address)]
        reporter: Address,
        #[arg(long)]
        remove: bool,
        #[command(flatten)]
        chain: ChainArgs,
    },
    /// Slash a hub on a piece of evidence once its 7-day dispute window is over. Anyone may when
    /// the DAO submitted it or approved its reporter, and the hub is not locked; otherwise only
    /// the DAO.
    Slash {
        /// The evidence id (0x and 64 hex digits), as the scheduler's log and the registry's
        /// EvidenceSubmitted event name it.
        #[arg(value_parser = parse_evidence)]
        evidence: B256,
        #[command(flatten)]
        chain: ChainArgs,
    },
    /// Dismiss false evidence during its dispute window (or later, if only the DAO may execute it).
    Dismiss {
        #[arg(value_parser = parse_evidence)]
        evidence: B256,
        #[command(flatten)]
        chain: ChainArgs,
    },
    /// Collect what is owed to this account: the DAO's fees and punishments, and a slash's shares
    /// for the requester (80 %) and the reporter (20 %).
    Claim {
        #[command(flatten)]
        chain: ChainArgs,
    },
}

pub async fn dao(context: &Context, command: DaoCommand) -> Result<i32> {
    match command {
        DaoCommand::Whitelist { hub, remove, chain } => {
            let chain = chain.connect(context).await?;
            let receipt = chain.set_whitelisted(hub, !remove).await?;
            let what = if remove { "removed from" } else { "added to" };
            done(context, &format!("hub {hub} {what} the whitelist"), &receipt);
        }
        DaoCommand::Suspect { hub, chain } => {
            let chain = chain.connect(context).await?;
            let receipt = chain.suspect(hub).await?;
            let info = chain.hub(hub).await?;
            done(
                context,
                &format!("hub {hub} suspected; its funds are locked until {}", date(info.locked_until)),
                &receipt,
            );
        }
        DaoCommand::Clear { hub, tokens, chain } => {
            let chain = chain.connect(context).await?;
            let receipt = chain.clear(hub, tokens).await?;
            done(context, &format!("hub {hub} cleared"), &receipt);
        }
        DaoCommand::Punish { hub, amount: wanted, chain } => {
            let chain = chain.connect(context).await?;
            let receipt = chain.punish(hub, wanted).await?;
            done(context, &format!("hub {hub} punished (up to {} taken)", amount::format(wanted)), &receipt);
        }
        DaoCommand::ApproveReporter { reporter, remove, chain } => {
            let chain = chain.connect(context).await?;
            let receipt = chain.set_reporter_approved(reporter, !remove).await?;
            let what = if remove {
                format!("reporter {reporter} is no longer approved: only the DAO may execute its evidence")
            } else {
                format!("reporter {reporter} approved: anyone may execute its evidence after the dispute window")
            };
            done(context, &what, &receipt);
        }
        DaoCommand::Slash { evidence, chain } => {
            let chain = chain.connect(context).await?;
            let receipt = chain.execute_slash(evidence).await?;
            done(context, &format!("slashed on evidence {evidence}"), &receipt);
        }
        DaoCommand::Dismiss { evidence, chain } => {
            let chain = chain.connect(context).await?;
            let receipt = chain.dismiss_evidence(evidence).await?;
            done(context, &format!("dismissed evidence {evidence}"), &receipt);
        }
        DaoCommand::Claim { chain } => {
            let chain = chain.connect(context).await?;
            let owed = chain.claimable(chain.account()).await?;
            let receipt = chain.claim().await?;
            done(context, &format!("claimed {}", amount::format(owed)), &receipt);
        }
    }
    Ok(0)
}

/// A unix time as UTC, for lock and deadline messages.
fn date(unix: u64) -> String {
    let days = unix / 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let seconds = unix % 86_400;
    format!("{year:04}-{month:02}-{day:02} {:02}:{:02} UTC", seconds / 3600, seconds % 3600 / 60)
}

// ---- earnings ------------------------------------------------------------------------------

#[derive(clap::Args)]
pub struct EarningsArgs {
    /// The hub (default: the --key's account).
    #[arg(value_parser = parse_address)]
    hub: Option<Address>,
    #[command(flatten)]
    chain: ChainArgs,
}

pub async fn earnings(context: &Context, args: EarningsArgs) -> Result<i32> {
    let chain = args.chain.connect(context).await?;
    let info = chain.hub(args.hub.unwrap_or(chain.account())).await?;
    match context.format {
        Format::Json => output::json(&hub_json(&info)),
        Format::Text => println!("{}", describe_hub(&info)),
    }
    Ok(0)
}

pub fn hub_json(info: &HubInfo) -> serde_json::Value {
    json!({
        "hub": info.hub.to_string(), "state": info.effective_state(), "whitelisted": info.whitelisted,
        "holdback": info.effective_holdback(), "locked_until": info.locked().then_some(info.locked_until),
        "stake_wei": info.stake.to_string(), "balance_wei": info.balance.to_string(),
        "held_back_wei": info.held_back.to_string(), "evidence_pending": info.evidence_pending,
    })
}

pub fn describe_hub(info: &HubInfo) -> String {
    let state = format!("{:?}", info.effective_state()).to_lowercase();
    let mut lines = vec![format!(
        "hub {}: {state}{}",
        info.hub,
        if info.whitelisted { ", whitelisted" } else { ", not whitelisted (the DAO must whitelist it to be paid)" }
    )];
    lines.push(format!("  earned, withdrawable: {}", amount::format(info.balance)));
    lines.push(format!("  stake:                {}", amount::format(info.stake)));
    if !info.held_back.is_zero() || info.effective_holdback() {
        lines.push(format!("  held back (30 %):     {}", amount::format(info.held_back)));
    }
    if info.locked() {
        lines.push(format!(
            "  locked by the DAO until {} (end it now with `upglobe hub release-early`: 0.5 % of the locked funds)",
            date(info.locked_until)
        ));
    }
    lines.join("\n")
}

// ---- job -----------------------------------------------------------------------------------

#[derive(clap::Subcommand)]
pub enum JobCommand {
    /// Open an escrow job paying a submitted workflow's verified chunks, and tell the scheduler
    /// (or, with --escrow-job, link one this account opened already).
    Fund {
        /// The workflow: its id (w3) or name.
        workflow: String,
        /// Paid per verified chunk to the hub of the worker that computed it.
        #[arg(long, value_parser = parse_amount, required_unless_present = "escrow_job")]
        price: Option<U256>,
        /// Link this escrow job (opened by this account, e.g. by a `fund` whose link failed)
        /// instead of opening a new one.
        #[arg(long, conflicts_with_all = ["price", "deposit"])]
        escrow_job: Option<u64>,
        /// What to deposit. Default: the price of every chunk.
        #[arg(long, value_parser = parse_amount)]
        deposit: Option<U256>,
        /// Days after which the unspent deposit can be taken back even if the job is not done.
        #[arg(long, default_value_t = upglobe_workflows::DEADLINE_DAYS_DEFAULT,
              value_parser = clap::value_parser!(u64).range(1..=upglobe_workflows::DEADLINE_DAYS_MAX))]
        deadline_days: u64,
        #[command(flatten)]
        chain: ChainArgs,
        /// The client token (or a file holding it). Default: HOME/scheduler/client.token.
        #[arg(long, env = "UPGLOBE_CONNECT")]
        connect: Option<String>,
    },
    /// An escrow job as the chain holds it.
    Show {
        escrow_job: u64,
        #[command(flatten)]
        chain: ChainArgs,
    },
    /// Take back what an escrow job did not spend (after it completed or its deadline).
    Refund {
        escrow_job: u64,
        #[command(flatten)]
        chain: ChainArgs,
    },
}

pub async fn job(context: &Context, command: JobCommand) -> Result<i32> {
    match command {
        JobCommand::Fund { workflow, price, escrow_job, deposit, deadline_days, chain, connect: token } => {
            let chain = chain.connect(context).await?;
            let client = connect(context, token.as_deref()).await?;
            match (escrow_job, price) {
                (Some(escrow_job), _) => {
                    let (id, _) = resolve_workflow(&client, &workflow).await?;
                    let job = chain.job(escrow_job).await?;
                    let funded = link(&client, &chain, id, escrow_job).await?;
                    let funding = Funding { price: job.price_per_unit, deposit: job.deposit, tx: B256::ZERO };
                    print_funded(context, &(funded, funding));
                }
                (None, Some(price)) => {
                    let terms = Terms { price, deposit, deadline: Duration::from_secs(deadline_days * 86_400) };
                    let funded = fund(&client, &chain, &workflow, &terms).await?;
                    print_funded(context, &funded);
                }
                (None, None) => unreachable!("clap requires --price without --escrow-job"),
            }
            client.close();
        }
        JobCommand::Show { escrow_job, chain } => {
            let chain = chain.connect(context).await?;
            let job = chain.job(escrow_job).await?;
            match context.format {
                Format::Json => output::json(&json!({
                    "escrow_job": job.id, "status": job.status, "requester": job.requester.to_string(),
                    "reporter": job.reporter.to_string(), "chunks": job.chunks_max, "deadline": job.deadline,
                    "price_per_chunk_wei": job.price_per_unit.to_string(), "deposit_wei": job.deposit.to_string(),
                    "paid_wei": job.paid.to_string(), "refunded_wei": job.refunded.to_string(),
                })),
                Format::Text => println!(
                    "escrow job {}: {}, {} chunks at {}, deposit {}, paid {}, refunded {}, deadline {}",
                    job.id,
                    format!("{:?}", job.status).to_lowercase(),
                    job.chunks_max,
                    amount::format(job.price_per_unit),
                    amount::format(job.deposit),
                    amount::format(job.paid),
                    amount::format(job.refunded),
                    date(job.deadline)
                ),
            }
        }
        JobCommand::Refund { escrow_job, chain } => {
            let chain = chain.connect(context).await?;
            let job = chain.job(escrow_job).await?;
            let receipt = chain.refund(escrow_job).await?;
            let back = job.deposit - job.paid;
            done(
                context,
                &format!("escrow job {escrow_job} refunded {} to {}", amount::format(back), job.requester),
                &receipt,
            );
        }
    }
    Ok(0)
}

/// What a requester pays.
pub struct Terms {
    pub price: U256,
    pub deposit: Option<U256>,
    pub deadline: Duration,
}

/// Opens an escrow job for a submitted workflow and has the scheduler pay its chunks from it.
/// Returns what the scheduler reports, the deposit and the opening transaction.
pub async fn fund(client: &Client, chain: &Chain, workflow: &str, terms: &Terms) -> Result<(FundedWorkflow, Funding)> {
    let info = match client.request(ClientRequest::Payments(PaymentRequest::Info)).await? {
        ClientResponse::Payments(PaymentAnswer::Info(Some(info))) => info,
        ClientResponse::Payments(PaymentAnswer::Info(None)) => {
            bail!(
                "the scheduler was started without --chain; it pays no one (start it with --chain and --reporter-key)"
            )
        }
        ClientResponse::Error { message } => bail!("{message}"),
        other => bail!("unexpected answer {other:?}"),
    };
    let deployment = chain.deployment();
    if info.chain_id != deployment.chain_id || info.escrow != deployment.escrow.0.0 {
        bail!(
            "the scheduler pays through escrow {} on chain {}, but the deployment file names escrow {} on chain {}",
            Address::from(info.escrow),
            info.chain_id,
            deployment.escrow,
            deployment.chain_id
        );
    }
    let (id, chunks) = resolve_workflow(client, workflow).await?;
    let chunks32 = u32::try_from(chunks).context("the workflow has more chunks than an escrow job can pay")?;
    let deposit = terms.deposit.unwrap_or(terms.price * U256::from(chunks));
    if deposit < terms.price * U256::from(chunks) {
        bail!(
            "a deposit of {} does not pay the workflow's {chunks} chunks at {} each ({}): the scheduler refuses it",
            amount::format(deposit),
            amount::format(terms.price),
            amount::format(terms.price * U256::from(chunks))
        );
    }
    let new = NewJob {
        price_per_unit: terms.price,
        units_per_chunk_max: 1,
        chunks: chunks32,
        reporter: Address::from(info.reporter),
        lasts: terms.deadline,
        deposit,
        token: None,
    };
    let (escrow_job, receipt) = chain.create_job(&new).await?;
    let funded = link(client, chain, id, escrow_job).await.map_err(|e| {
        anyhow::anyhow!(
            "escrow job {escrow_job} was opened (tx {}) but not linked: {e:#}; link it with \
             `upglobe job fund {id} --escrow-job {escrow_job}`, or take the deposit back with \
             `upglobe job refund {escrow_job}` after its deadline",
            receipt.tx
        )
    })?;
    Ok((funded, Funding { price: terms.price, deposit, tx: receipt.tx }))
}

/// A workflow by id (w3) or name, with its chunk count.
async fn resolve_workflow(client: &Client, workflow: &str) -> Result<(WorkflowId, u64)> {
    let statuses = super::status::fetch(client, None).await?;
    let mut ids: Vec<WorkflowId> = statuses
        .iter()
        .filter(|s| {
            s.workflow.to_string() == workflow || s.workflow.0.to_string() == workflow || s.workflow_name == workflow
        })
        .map(|s| s.workflow)
        .collect();
    ids.sort();
    ids.dedup();
    let id = match ids[..] {
        [one] => one,
        [] => bail!("no workflow '{workflow}' (give its id, like w3, or its name)"),
        _ => bail!("'{workflow}' names several workflows; give one id (see `upglobe status`)"),
    };
    Ok((id, statuses.iter().filter(|s| s.workflow == id).map(|s| s.chunks_total).sum()))
}

/// Asks the scheduler to pay workflow `id` from an escrow job this account opened, signing the
/// link so no one else can make it.
pub async fn link(client: &Client, chain: &Chain, id: WorkflowId, escrow_job: u64) -> Result<FundedWorkflow> {
    let signature = chain.sign_funding(escrow_job, id.0).await?;
    let request = PaymentRequest::Fund { workflow: id, escrow_job, signature };
    match client.request(ClientRequest::Payments(request)).await? {
        ClientResponse::Payments(PaymentAnswer::Funded(funded)) => {
            funded.into_iter().find(|f| f.workflow == id).context("the scheduler did not list the funded workflow")
        }
        ClientResponse::Error { message } => bail!("the scheduler refused it: {message}"),
        other => bail!("unexpected answer {other:?}"),
    }
}

/// What opening an escrow job cost.
pub struct Funding {
    pub price: U256,
    pub deposit: U256,
    pub tx: B256,
}

pub fn print_funded(context: &Context, (funded, funding): &(FundedWorkflow, Funding)) {
    let (id, escrow_job, chunks) = (funded.workflow, funded.escrow_job, funded.chunks);
    match context.format {
        Format::Json => output::json(&json!({
            "workflow": id.0, "escrow_job": escrow_job, "chunks": chunks,
            "price_per_chunk_wei": funding.price.to_string(), "deposit_wei": funding.deposit.to_string(),
            "tx": funding.tx.to_string(),
        })),
        Format::Text => println!(
            "funded workflow {id} with escrow job {escrow_job}: {chunks} chunks at {} each, deposit {} (tx {})",
            amount::format(funding.price),
            amount::format(funding.deposit),
            funding.tx
        ),
    }
}

// ---- payments ------------------------------------------------------------------------------

#[derive(clap::Args)]
pub struct PaymentsArgs {
    /// The client token (or a file holding it). Default: HOME/scheduler/client.token.
    #[arg(long, env = "UPGLOBE_CONNECT")]
    connect: Option<String>,
}

pub async fn settlement(client: &Client) -> Result<Vec<FundedWorkflow>> {
    match client.request(ClientRequest::Payments(PaymentRequest::Status)).await? {
        ClientResponse::Payments(PaymentAnswer::Funded(funded)) => Ok(funded),
        ClientResponse::Error { message } => bail!("{message}"),
        other => bail!("unexpected answer {other:?}"),
    }
}

pub async fn payments(context: &Context, args: PaymentsArgs) -> Result<i32> {
    let client = connect(context, args.connect.as_deref()).await?;
    let funded = settlement(&client).await?;
    client.close();
    match context.format {
        Format::Json => output::json(&serde_json::Value::Array(funded.iter().map(funded_json).collect())),
        Format::Text if funded.is_empty() => println!("no funded workflows (fund one with `upglobe job fund`)"),
        Format::Text => {
            let rows: Vec<Vec<String>> = funded
                .iter()
                .map(|f| {
                    vec![
                        format!("{} {}", f.workflow, f.name),
                        f.escrow_job.to_string(),
                        format!("{}/{}", f.paid, f.chunks),
                        f.verified.to_string(),
                        f.unpayable.to_string(),
                        f.batches.to_string(),
                        f.evidence.to_string(),
                        if f.completed {
                            "completed".into()
                        } else {
                            f.problem.clone().unwrap_or_else(|| "settling".into())
                        },
                    ]
                })
                .collect();
            println!(
                "{}",
                output::table(
                    &["WORKFLOW", "ESCROW", "PAID", "FINAL", "UNPAYABLE", "BATCHES", "EVIDENCE", "STATE"],
                    &rows
                )
            );
        }
    }
    Ok(0)
}

fn funded_json(f: &FundedWorkflow) -> serde_json::Value {
    json!({
        "workflow": f.workflow.0, "name": f.name, "escrow_job": f.escrow_job, "chunks": f.chunks,
        "verified": f.verified, "paid": f.paid, "unpayable": f.unpayable, "batches": f.batches, "evidence": f.evidence,
        "last_tx": f.last_tx.map(|tx| format!("0x{}", hex::encode(tx))), "completed": f.completed, "problem": f.problem,
    })
}
