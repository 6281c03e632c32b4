//! `upglobe demo`: a scheduler and three workers as separate processes in a temporary directory, the
//! example LJ workflow with two replicas per chunk, verification, an H5MD file, and a clean shutdown.
//! Where anvil is found (`./demo` installs it with `npm ci` in contracts/), the payment contracts
//! run on a local chain too: each worker belongs to a hub, the workflow is funded from an escrow,
//! and every verified chunk is paid to the hub of a worker that computed it.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use upglobe_kernels::{Checkpoint, RunOptions, State};
use upglobe_protocol::messages::JobState;
use upglobe_protocol::{Role, Token};

use super::Context;
use super::results::{fetch, final_state_hash, write_md};
use super::status::watch;
use super::submit::submit;
use crate::client::Client;
use crate::output::Format;

/// Workers the demo starts as processes: the example workflow needs two replicas of each chunk.
const DEMO_WORKERS: std::ops::RangeInclusive<u32> = 2..=16;

const WORKFLOW: &str = include_str!("../../../workflows/examples/lj-melt.toml");

#[derive(clap::Args)]
pub struct Args {
    /// Directory for the H5MD result.
    #[arg(long, default_value = "upglobe-demo")]
    out: PathBuf,
    /// Workers to start (2 to 16: the example workflow runs each chunk on 2 of them).
    #[arg(long, default_value_t = 3, value_parser = crate::flags::integer(DEMO_WORKERS))]
    workers: u32,
    /// Keep the temporary directory with the scheduler's and workers' state and logs.
    #[arg(long)]
    keep: bool,
    /// Leave payments out even where anvil is found.
    #[arg(long)]
    no_payments: bool,
}

/// Price of one verified chunk in the demo.
const DEMO_PRICE: &str = "0.001 ether";
/// Anvil's development accounts: 0 is the DAO, 9 the scheduler's reporter, 8 the requester, and
/// 1 to 7 are hubs (workers are spread over them).
const DAO_ACCOUNT: usize = 0;
const REPORTER_ACCOUNT: usize = 9;
const REQUESTER_ACCOUNT: usize = 8;
const HUB_ACCOUNTS: usize = 7;

/// The anvil account of the hub worker demo-N (N from 1) belongs to.
fn hub_account(worker_number: usize) -> usize {
    1 + (worker_number - 1) % HUB_ACCOUNTS
}

/// The demo's chain: a local anvil with the contracts deployed.
struct DemoChain {
    _anvil: upglobe_contracts::anvil::LocalChain,
    anvil_keys: Vec<upglobe_contracts::PrivateKeySigner>,
    dao: upglobe_contracts::Chain,
    file: PathBuf,
}

async fn start_chain(dir: &Path) -> Result<DemoChain> {
    let anvil = upglobe_contracts::anvil::LocalChain::start()?;
    let keys: Vec<_> = (0..10).map(|k| anvil.key(k)).collect();
    let stake_min = upglobe_contracts::amount::parse("1 ether").expect("a valid amount");
    let dao = upglobe_contracts::Chain::deploy(&anvil.endpoint(), keys[DAO_ACCOUNT].clone(), stake_min).await?;
    let file = dir.join("chain.json");
    dao.deployment().write(&file)?;
    Ok(DemoChain { _anvil: anvil, anvil_keys: keys, dao, file })
}

fn key_text(key: &upglobe_contracts::PrivateKeySigner) -> String {
    hex::encode(key.to_bytes())
}

/// Child processes, stopped when dropped.
struct Processes(Vec<(String, Child)>);

impl Processes {
    fn stop(&mut self) {
        for (_, child) in &mut self.0 {
            #[cfg(unix)]
            // SAFETY: sending a signal to our own child process.
            unsafe {
                libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
            }
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        for (_, child) in &mut self.0 {
            while Instant::now() < deadline && matches!(child.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        self.0.clear();
    }
}

impl Drop for Processes {
    fn drop(&mut self) {
        self.stop();
    }
}

fn spawn(name: &str, args: &[&str], log: &Path, stdout: Stdio) -> Result<Child> {
    let exe = std::env::current_exe().context("cannot find the upglobe executable")?;
    let log_file = std::fs::File::create(log).with_context(|| format!("cannot create {}", log.display()))?;
    Command::new(exe)
        .args(args)
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(log_file)
        .env_remove("UPGLOBE_HOME")
        .spawn()
        .with_context(|| format!("cannot start the {name}"))
}

pub async fn run(context: &Context, args: Args) -> Result<i32> {
    let text = context.format == Format::Text;
    // Narration for people; with --output json, one summary object at the end instead.
    macro_rules! say {
        ($($arg:tt)*) => { if text { println!($($arg)*); } };
    }
    let started = Instant::now();
    let temporary = tempfile::Builder::new().prefix("upglobe-demo-").tempdir()?;
    let dir = temporary.path().to_path_buf();
    let workflow_path = dir.join("lj-melt.toml");
    std::fs::write(&workflow_path, WORKFLOW)?;
    let workflow =
        upglobe_workflows::load(&workflow_path).map_err(|d| anyhow::anyhow!("the example workflow: {}", d[0]))?;
    let job = &workflow.jobs[0];
    let upglobe_workflows::JobKind::Md(md) = &job.kind else { bail!("the example workflow starts with an MD job") };

    let chain = match args.no_payments {
        true => None,
        false => match start_chain(&dir).await {
            Ok(chain) => Some(chain),
            Err(e) => {
                say!("     (payments left out: {e})");
                None
            }
        },
    };
    say!(
        "1/5  starting a scheduler, {} workers and a verifier as separate processes in {}{}",
        args.workers,
        dir.display(),
        if chain.is_some() { ", and a local Ethereum chain (anvil) with the payment contracts" } else { "" }
    );
    let mut processes = Processes(Vec::new());
    let scheduler_dir = dir.join("scheduler");
    let mut chain_flags: Vec<String> = Vec::new();
    if let Some(chain) = &chain {
        chain_flags = vec![
            "--chain".into(),
            chain.file.to_string_lossy().into_owned(),
            "--reporter-key".into(),
            key_text(&chain.anvil_keys[REPORTER_ACCOUNT]),
            "--settle-interval".into(),
            "0.5".into(),
            // Only final chunks are paid; the demo's challenge window is 2 s instead of an hour.
            "--settle-after".into(),
            "2".into(),
        ];
    }
    let scheduler_data = scheduler_dir.to_string_lossy();
    let mut scheduler_args = vec![
        "scheduler",
        "--data-dir",
        &scheduler_data,
        "--listen",
        "127.0.0.1:0",
        "--output",
        "json",
        "--lease-timeout",
        "10",
        "--heartbeat",
        "0.5",
        // Any free port: the demo must not fail because a scheduler already has 7412.
        "--http",
        "127.0.0.1:0",
    ];
    scheduler_args.extend(chain_flags.iter().map(String::as_str));
    let mut scheduler = spawn("scheduler", &scheduler_args, &dir.join("scheduler.log"), Stdio::piped())?;
    let stdout = scheduler.stdout.take().expect("piped stdout");
    processes.0.push(("scheduler".into(), scheduler));
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line)?;
    let started_json: serde_json::Value = serde_json::from_str(&line)
        .with_context(|| format!("the scheduler did not start; see {}", dir.join("scheduler.log").display()))?;
    let token = |key: &str| -> Result<Token> { Ok(started_json[key].as_str().context("token")?.parse()?) };
    let (worker_token, client_token) = (token("worker_token")?, token("client_token")?);
    let verifier_token = token("verifier_token")?;
    if let Some(http) = started_json["http"].as_str() {
        say!("     dashboard (live while the demo runs): http://{http}/");
    }
    assert_eq!(client_token.role, Role::Client);
    let verifier_data = dir.join("demo-verifier");
    let verifier = spawn(
        "verifier",
        &[
            "verify",
            "--join",
            &verifier_token.to_string(),
            "--data-dir",
            &verifier_data.to_string_lossy(),
            "--name",
            "demo-verifier",
            "--device",
            "cpu",
            "--cpus",
            "1",
        ],
        &dir.join("demo-verifier.log"),
        Stdio::null(),
    )?;
    processes.0.push(("demo-verifier".into(), verifier));
    for k in 0..args.workers {
        let name = format!("demo-{}", k + 1);
        let data = dir.join(&name);
        let token = worker_token.to_string();
        let data = data.to_string_lossy();
        let mut worker_args = vec!["worker", "--join", &token, "--data-dir", &data, "--name", &name, "--cpus", "1"];
        // Each worker names the hub (lab) it is paid through; `register_hubs` attaches it there.
        let hub = chain.as_ref().map(|c| c.anvil_keys[hub_account(k as usize + 1)].address().to_string());
        if let Some(hub) = &hub {
            worker_args.extend(["--hub", hub]);
        }
        let child = spawn("worker", &worker_args, &dir.join(format!("{name}.log")), Stdio::null())?;
        processes.0.push((name, child));
    }
    let client = Client::connect(&client_token, &dir.join("client")).await?;
    let names: std::collections::HashMap<_, _> = client
        .wait_for_workers(args.workers + 1, Duration::from_secs(30))
        .await?
        .into_iter()
        .map(|w| (w.id, w.name))
        .collect();
    let hubs = match &chain {
        Some(chain) => Some(register_hubs(chain, &names).await?),
        None => None,
    };

    say!(
        "2/5  submitting workflows/examples/lj-melt.toml: {} atoms, {} steps in chunks of {}, each chunk run by {} different workers",
        md.system.ids.len(),
        md.total_steps,
        md.chunk_steps,
        job.replicas
    );
    let (workflow_id, jobs) = submit(&client, &workflow).await?;
    if let Some(chain) = &chain {
        let requester = chain.dao.with_key(chain.anvil_keys[REQUESTER_ACCOUNT].clone()).await?;
        let terms = super::pay::Terms {
            price: upglobe_contracts::amount::parse(DEMO_PRICE).expect("a valid amount"),
            deposit: None,
            deadline: Duration::from_secs(86_400),
        };
        let (funded, _) = super::pay::fund(&client, &requester, &workflow_id.to_string(), &terms).await?;
        say!(
            "       funded from escrow job {} on the local chain: {} chunks at {DEMO_PRICE} each",
            funded.escrow_job,
            funded.chunks
        );
    }
    let code = watch(&client, &[jobs[0].1], if text { Format::Text } else { Format::Json }).await?;
    let results = fetch(&client, &jobs[0].1.0.to_string()).await?;
    if code != 0 || results.status.state != JobState::Completed {
        bail!("the demo job did not complete: {:?}; logs are in {}", results.status.state, keep(temporary));
    }

    let audits = wait_for_audits(&client, &jobs[0].1.0.to_string(), Duration::from_secs(60)).await?;
    say!(
        "3/5  verified: every chunk's output state hash was agreed on by {} workers, and the verifier re-ran one link of each ({audits} audits passed)",
        job.replicas
    );
    for chunk in &results.chunks {
        let who: Vec<String> =
            chunk.agreeing.iter().map(|w| names.get(w).cloned().unwrap_or_else(|| w.short())).collect();
        let hash = match &chunk.output {
            upglobe_protocol::messages::Output::Md { state_hash, .. } => hex::encode(&state_hash[..8]),
            _ => String::new(),
        };
        say!("       chunk {}  state {hash}…  agreed by {}", chunk.index, who.join(", "));
    }

    let mut earnings = Vec::new();
    if let (Some(chain), Some(hubs)) = (&chain, &hubs) {
        wait_for_settlement(&client, Duration::from_secs(60)).await?;
        say!("       paid: each verified chunk once, to the hub of a worker that computed it (escrow completed)");
        for (hub, workers) in hubs {
            let info = chain.dao.hub(*hub).await?;
            say!(
                "         hub {hub} ({}) earned {}",
                workers.join(", "),
                upglobe_contracts::amount::format(info.balance)
            );
            earnings.push(
                serde_json::json!({"hub": hub.to_string(), "workers": workers, "earned_wei": info.balance.to_string()}),
            );
        }
    }

    let distributed = final_state_hash(&results).context("no final state")?;
    say!("4/5  checking against one process on this machine running all {} steps in one go…", md.total_steps);
    let local = local_run(md.system.clone(), md.total_steps).await?;
    if local != distributed {
        bail!("the local run ended in state {local}, the distributed run in {distributed}");
    }
    say!("       same final state hash: {distributed}");

    std::fs::create_dir_all(&args.out).with_context(|| format!("cannot create {}", args.out.display()))?;
    let h5 = args.out.join(format!("{}.{}.h5md", workflow.name, job.name));
    write_md(&client, &results, &h5).await?;
    client.close();
    say!("5/5  wrote {} (H5MD: positions, velocities, box, thermo, provenance)", h5.display());
    processes.stop();
    let seconds = started.elapsed().as_secs_f64();
    let kept = args.keep.then(|| keep(temporary));
    if text {
        let kept = kept.map_or(String::new(), |dir| format!(", state kept in {dir}"));
        println!("done in {seconds:.0} s; scheduler and workers stopped{kept}");
    } else {
        crate::output::json(&serde_json::json!({
            "h5md": h5,
            "final_state_hash": distributed,
            "single_process_state_hash": local,
            "chunks": results.chunks.iter().map(|c| serde_json::json!({
                "index": c.index,
                "agreeing": c.agreeing.iter().map(|w| names.get(w).cloned().unwrap_or_else(|| w.to_hex())).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
            "audits_passed": audits,
            "earnings": earnings,
            "seconds": seconds,
            "kept": kept,
        }));
    }
    Ok(0)
}

/// Registers hubs (anvil accounts 1 to 7), attaches the workers to them in turn, and has the DAO
/// whitelist them. Returns each hub with its workers' names.
async fn register_hubs(
    chain: &DemoChain,
    names: &std::collections::HashMap<upglobe_protocol::WorkerId, String>,
) -> Result<Vec<(upglobe_contracts::Address, Vec<String>)>> {
    let stake = upglobe_contracts::amount::parse("1 ether").expect("a valid amount");
    // demo-N was started naming hub_account(N).
    let mut workers: Vec<(usize, upglobe_protocol::WorkerId, String)> = names
        .iter()
        .filter_map(|(id, name)| Some((name.strip_prefix("demo-")?.parse::<usize>().ok()?, *id, name.clone())))
        .collect();
    workers.sort();
    let mut hubs: Vec<(upglobe_contracts::Address, Vec<String>)> = Vec::new();
    for (number, id, name) in workers {
        let account = hub_account(number);
        let hub = chain.dao.with_key(chain.anvil_keys[account].clone()).await?;
        if !hubs.iter().any(|(address, _)| *address == hub.account()) {
            hub.register(stake).await?;
            chain.dao.set_whitelisted(hub.account(), true).await?;
            hubs.push((hub.account(), Vec::new()));
        }
        hub.attach_worker(upglobe_contracts::B256::from(id.0)).await?;
        hubs.iter_mut().find(|(address, _)| *address == hub.account()).expect("registered above").1.push(name);
    }
    Ok(hubs)
}

/// Waits until the scheduler has paid every chunk and completed the escrow job.
async fn wait_for_settlement(client: &Client, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let funded = super::pay::settlement(client).await?;
        if funded.iter().all(|f| f.completed) {
            return Ok(());
        }
        if Instant::now() > deadline {
            let problems: Vec<String> = funded.iter().filter_map(|f| f.problem.clone()).collect();
            bail!("the chunks were not all paid after {} s: {}", timeout.as_secs(), problems.join("; "));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits until every audit the scheduler ordered for the job has an answer; returns how many passed.
async fn wait_for_audits(client: &Client, job: &str, timeout: Duration) -> Result<usize> {
    use upglobe_protocol::messages::{ClientRequest, ClientResponse};
    use upglobe_protocol::trust::TrustEventKind;
    let deadline = Instant::now() + timeout;
    loop {
        let ClientResponse::Verification(report) =
            client.request(ClientRequest::Verification { job: job.to_string() }).await?
        else {
            bail!("unexpected answer to a verification request");
        };
        let count = |f: fn(&TrustEventKind) -> bool| report.events.iter().filter(|e| f(&e.what)).count();
        let ordered = count(|w| matches!(w, TrustEventKind::AuditOrdered { .. }));
        let passed = count(|w| matches!(w, TrustEventKind::AuditPassed { .. }));
        let failed = count(|w| matches!(w, TrustEventKind::AuditFailed { .. }));
        if failed > 0 {
            bail!("{failed} audits failed in the demo: honest workers disagree with the verifier");
        }
        if passed == ordered {
            return Ok(passed);
        }
        if Instant::now() > deadline {
            bail!("{} of {ordered} audits were still running after {} s", ordered - passed, timeout.as_secs());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn keep(temporary: tempfile::TempDir) -> String {
    temporary.keep().display().to_string()
}

async fn local_run(system: upglobe_kernels::system::PhysicalSystem, steps: u64) -> Result<String> {
    tokio::task::spawn_blocking(move || {
        let state = State::from_physical(system)?;
        let mut engine = upglobe_kernels::engine(&upglobe_kernels::Device::Cpu { threads: 0 })?;
        let output = engine.run(&state, &RunOptions::new(steps), &mut |_| std::ops::ControlFlow::Continue(()))?;
        Ok(Checkpoint::hash(&output.state).to_string())
    })
    .await?
}
