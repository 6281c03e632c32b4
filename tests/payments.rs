//! Payments end to end: a real anvil, the contracts deployed by `upglobe chain deploy`, two hubs
//! with a worker each, a workflow with `[payment]`, and a scheduler that dies twice in the middle
//! of settling (before a batch is sent, and after it was mined but before it was recorded). Every
//! verified chunk is paid exactly once, the escrow job is completed, and the requester takes back
//! the rest.
//!
//! Run with `cargo nextest run -p upglobe-cli --features cheat --test payments` (the crash points
//! need the test-only `cheat` feature; without it the test times out waiting for a crash).

mod cluster;

use std::process::Stdio;
use std::time::Duration;

use cluster::Cluster;
use serde_json::Value;
use upglobe_contracts::anvil::LocalChain;
use upglobe_contracts::{Address, Chain, Deployment, U256, amount};

const CHUNKS: u64 = 12;

fn workflow() -> String {
    format!(
        r#"
name = "paid"

[payment]
price_per_chunk = "0.001 ether"
deposit = "0.1 ether"
deadline_days = 7

[jobs.tasks]
kind = "command"
argv = ["sh", "-c", "echo task {{task}} > out-{{task}}.txt"]
tasks = "1-{CHUNKS}"
outputs = ["*.txt"]
replicas = 2
"#
    )
}

fn key_hex(anvil: &LocalChain, index: usize) -> String {
    format!("0x{}", alloy_hex(&anvil.key(index).to_bytes().0))
}

fn alloy_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Runs a chain command as the account of `key`; returns its JSON (asserting success).
fn as_account(cluster: &Cluster, chain: &str, key: &str, args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.extend_from_slice(&["--output", "json"]);
    let output = cluster.run_with_env(&all, &[("UPGLOBE_CHAIN", chain), ("UPGLOBE_KEY", key)]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "upglobe {args:?} failed: {stdout}{}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_str(stdout.lines().last().unwrap_or("null")).unwrap()
}

fn wait_for_crash(cluster: &mut Cluster, point: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let scheduler = cluster.scheduler.as_mut().unwrap();
    while scheduler.child.try_wait().unwrap().is_none() {
        assert!(std::time::Instant::now() < deadline, "the scheduler did not crash at {point}: {}", scheduler.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(scheduler.log().contains(point), "{}", scheduler.log());
}

#[test]
fn every_verified_chunk_is_paid_once_across_scheduler_crashes() {
    let dir = tempfile::tempdir().unwrap();
    let anvil = LocalChain::start().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (dao, hub1, hub2, requester, reporter) =
        (key_hex(&anvil, 0), key_hex(&anvil, 1), key_hex(&anvil, 2), key_hex(&anvil, 3), key_hex(&anvil, 4));

    // The DAO deploys; the scheduler reports with its own key and crashes before its first send.
    let chain_file = dir.path().join("chain.json");
    let chain = chain_file.to_str().unwrap();
    let deploy = std::process::Command::new(cluster::UPGLOBE)
        .args(["chain", "deploy", "--rpc", &anvil.endpoint(), "--key", &dao, "--write", chain, "--output", "json"])
        .stdout(Stdio::piped())
        .output()
        .unwrap();
    assert!(deploy.status.success(), "{}", String::from_utf8_lossy(&deploy.stderr));
    let flags = ["--chain", chain, "--reporter-key", &reporter, "--settle-interval", "0.3"];
    let mut cluster = Cluster::start_with_env(dir.path(), 0, &flags, &[("UPGLOBE_CHEAT_SETTLE", "crash-before-send")]);
    let (hub1_address, hub2_address) = (anvil_address(&anvil, 1).to_string(), anvil_address(&anvil, 2).to_string());
    cluster.add_worker(&["--allow-commands", "--hub", &hub1_address]);
    cluster.add_worker(&["--allow-commands", "--hub", &hub2_address]);
    cluster.wait_for("two workers", Duration::from_secs(60), |c| c.connected_workers() == 2);
    let workers = cluster.json(&["workers"]);
    let id_of = |name: &str| {
        workers.as_array().unwrap().iter().find(|w| w["name"] == name).unwrap()["id"].as_str().unwrap().to_string()
    };

    // Two labs, a worker each; a stake below the minimum is refused with the contract's reason.
    let low = cluster.run_with_env(
        &["hub", "register", "--stake", "0.5 ether"],
        &[("UPGLOBE_CHAIN", chain), ("UPGLOBE_KEY", &hub1)],
    );
    let why = String::from_utf8_lossy(&low.stderr);
    assert!(!low.status.success() && why.contains("below the minimum of 1 ether"), "{why}");
    // A thief's hub attaches worker 2's id on chain before worker 2's own lab can: worker 2
    // named hub 2 when it joined, so the thief is never paid for its chunks.
    let thief = key_hex(&anvil, 6);
    as_account(&cluster, chain, &thief, &["hub", "register", "--stake", "2 ether"]);
    as_account(&cluster, chain, &thief, &["hub", "attach", &id_of("worker-2")]);
    as_account(&cluster, chain, &dao, &["dao", "whitelist", &anvil_address(&anvil, 6).to_string()]);
    for (key, worker) in [(&hub1, "worker-1"), (&hub2, "worker-2")] {
        as_account(&cluster, chain, key, &["hub", "register", "--stake", "2 ether"]);
        let attach =
            cluster.run_with_env(&["hub", "attach", &id_of(worker)], &[("UPGLOBE_CHAIN", chain), ("UPGLOBE_KEY", key)]);
        let why = String::from_utf8_lossy(&attach.stderr);
        assert_eq!(attach.status.success(), worker == "worker-1", "{why}");
        if worker == "worker-2" {
            assert!(why.contains("is attached to hub"), "{why}");
        }
        let address = anvil_address(&anvil, if key == &hub1 { 1 } else { 2 });
        as_account(&cluster, chain, &dao, &["dao", "whitelist", &address.to_string()]);
    }
    // The DAO vouches for the scheduler's reporter key, so anyone may execute its evidence; a lab
    // cannot.
    let reporter_address = anvil_address(&anvil, 4).to_string();
    let refused = cluster.run_with_env(
        &["dao", "approve-reporter", &reporter_address],
        &[("UPGLOBE_CHAIN", chain), ("UPGLOBE_KEY", &hub1)],
    );
    let why = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success() && why.contains("may not do this"), "{why}");
    let approved = as_account(&cluster, chain, &dao, &["dao", "approve-reporter", &reporter_address]);
    assert!(approved["done"].as_str().unwrap().contains("approved"), "{approved}");

    // The requester submits a paid workflow: it is funded as part of the submission.
    let path = cluster.write("paid.toml", &workflow());
    let submitted = as_account(&cluster, chain, &requester, &["submit", path.to_str().unwrap()]);
    let escrow_job = submitted["escrow_job"].as_u64().unwrap();
    assert_eq!(submitted["chunks"], CHUNKS);

    // Crash 1: a batch recorded, never sent. Crash 2: a batch mined, never recorded.
    wait_for_crash(&mut cluster, "crash-before-send");
    cluster.scheduler_env = vec![("UPGLOBE_CHEAT_SETTLE".into(), "crash-after-send".into())];
    cluster.start_scheduler();
    wait_for_crash(&mut cluster, "crash-after-send");
    cluster.scheduler_env.clear();
    cluster.start_scheduler();
    cluster.wait_for("the escrow job to be completed", Duration::from_secs(180), |c| {
        c.json(&["payments"]).as_array().is_some_and(|f| f.first().is_some_and(|f| f["completed"] == true))
    });
    let log = cluster.scheduler.as_ref().unwrap().log();
    assert!(log.contains("reconciled an unrecorded batch"), "{log}");
    let funded = cluster.json(&["payments"])[0].clone();
    assert_eq!(
        (funded["paid"].as_u64(), funded["verified"].as_u64(), funded["unpayable"].as_u64()),
        (Some(CHUNKS), Some(CHUNKS), Some(0)),
        "{funded}"
    );

    // On chain: every chunk's bit is set, the escrow paid exactly price x chunks, and the hubs
    // hold exactly that between them.
    let deployment = Deployment::read(&chain_file).unwrap();
    let reader = rt.block_on(Chain::connect(&deployment, anvil.key(5))).unwrap();
    let price = amount::parse("0.001 ether").unwrap();
    let job = rt.block_on(reader.job(escrow_job)).unwrap();
    assert_eq!(job.paid, price * U256::from(CHUNKS));
    let all: Vec<u32> = (0..CHUNKS as u32).collect();
    assert!(rt.block_on(reader.paid_chunks(escrow_job, &all)).unwrap().iter().all(|paid| *paid));
    // Every chunk was agreed by both workers; only worker 1's hub is paid, the thief nothing.
    let earned = |k| rt.block_on(reader.hub(anvil_address(&anvil, k))).unwrap().balance;
    assert_eq!((earned(1), earned(2), earned(6)), (job.paid, U256::ZERO, U256::ZERO));
    assert!(rt.block_on(reader.reporter_approved(anvil_address(&anvil, 4))).unwrap());
    let earnings = as_account(&cluster, chain, &hub1, &["earnings"]);
    assert_eq!(earnings["state"], "active", "{earnings}");

    // Completed: the requester takes back what was not spent, once.
    let before = rt.block_on(reader.balance(anvil_address(&anvil, 3))).unwrap();
    as_account(&cluster, chain, &requester, &["job", "refund", &escrow_job.to_string()]);
    let after = rt.block_on(reader.balance(anvil_address(&anvil, 3))).unwrap();
    let back = amount::parse("0.1 ether").unwrap() - job.paid;
    assert!(
        after > before && after - before <= back && back - (after - before) < amount::parse("0.001 ether").unwrap()
    );
    let again = cluster.run_with_env(
        &["job", "refund", &escrow_job.to_string()],
        &[("UPGLOBE_CHAIN", chain), ("UPGLOBE_KEY", &requester)],
    );
    let why = String::from_utf8_lossy(&again.stderr);
    assert!(!again.status.success() && why.contains("is closed"), "{why}");
}

fn anvil_address(anvil: &LocalChain, index: usize) -> Address {
    anvil.key(index).address()
}

#[test]
fn a_scheduler_without_a_chain_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let anvil = LocalChain::start().unwrap();
    let chain_file = dir.path().join("chain.json");
    let chain = chain_file.to_str().unwrap();
    let dao = key_hex(&anvil, 0);
    let deploy = std::process::Command::new(cluster::UPGLOBE)
        .args(["chain", "deploy", "--rpc", &anvil.endpoint(), "--key", &dao, "--write", chain])
        .output()
        .unwrap();
    assert!(deploy.status.success(), "{}", String::from_utf8_lossy(&deploy.stderr));
    let cluster = Cluster::start(dir.path(), 0);
    let path = cluster.write("paid.toml", &workflow());
    // Without a key: refused before anything is submitted.
    let output = cluster.run_with_env(&["submit", path.to_str().unwrap()], &[("UPGLOBE_CHAIN", chain)]);
    let why = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success() && why.contains("--key"), "{why}");
    assert_eq!(cluster.json(&["status"]).as_array().map(Vec::len), Some(0));
    // With one: submitted, but the scheduler pays no one, and says how to fix it.
    let key = key_hex(&anvil, 3);
    let output =
        cluster.run_with_env(&["submit", path.to_str().unwrap()], &[("UPGLOBE_CHAIN", chain), ("UPGLOBE_KEY", &key)]);
    let why = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success() && why.contains("started without --chain"), "{why}");
    assert!(why.contains("upglobe job fund w1"), "{why}");
}

#[test]
fn only_the_requester_ties_an_escrow_job_to_a_workflow_and_only_on_fair_terms() {
    let dir = tempfile::tempdir().unwrap();
    let anvil = LocalChain::start().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (dao, victim, thief, reporter) =
        (key_hex(&anvil, 0), key_hex(&anvil, 3), key_hex(&anvil, 6), key_hex(&anvil, 4));
    let chain_file = dir.path().join("chain.json");
    let chain = chain_file.to_str().unwrap();
    let deploy = std::process::Command::new(cluster::UPGLOBE)
        .args(["chain", "deploy", "--rpc", &anvil.endpoint(), "--key", &dao, "--write", chain])
        .output()
        .unwrap();
    assert!(deploy.status.success(), "{}", String::from_utf8_lossy(&deploy.stderr));
    let flags = ["--chain", chain, "--reporter-key", &reporter];
    let cluster = Cluster::start_with(dir.path(), 0, &flags);
    // Two workflows; nothing runs them (no workers), which is fine for funding.
    let unpaid = workflow()
        .replace("[payment]\nprice_per_chunk = \"0.001 ether\"\ndeposit = \"0.1 ether\"\ndeadline_days = 7\n", "");
    let path = cluster.write("unpaid.toml", &unpaid);
    cluster.json(&["submit", path.to_str().unwrap()]);
    cluster.json(&["submit", path.to_str().unwrap()]);

    // The victim opens escrow job 1 for w1; a thief cannot tie it to its own w2.
    let opened = as_account(&cluster, chain, &victim, &["job", "fund", "w1", "--price", "0.001 ether"]);
    let escrow_job = opened["escrow_job"].as_u64().unwrap().to_string();
    let stolen = cluster.run_with_env(
        &["job", "fund", "w2", "--escrow-job", &escrow_job],
        &[("UPGLOBE_CHAIN", chain), ("UPGLOBE_KEY", &thief)],
    );
    let why = String::from_utf8_lossy(&stolen.stderr);
    assert!(!stolen.status.success() && why.contains("only its requester may tie it to a workflow"), "{why}");

    // A deposit that does not pay every chunk is refused by the scheduler, with the sums.
    let deployment = Deployment::read(&chain_file).unwrap();
    let requester = rt.block_on(Chain::connect(&deployment, anvil.key(3))).unwrap();
    let reporter_address = anvil_address(&anvil, 4);
    let short = upglobe_contracts::NewJob {
        price_per_unit: amount::parse("0.001 ether").unwrap(),
        units_per_chunk_max: 1,
        chunks: CHUNKS as u32,
        reporter: reporter_address,
        lasts: Duration::from_secs(7 * 86_400),
        deposit: amount::parse("0.005 ether").unwrap(),
        token: None,
    };
    let (short_job, _) = rt.block_on(requester.create_job(&short)).unwrap();
    let refused = cluster.run_with_env(
        &["job", "fund", "w2", "--escrow-job", &short_job.to_string()],
        &[("UPGLOBE_CHAIN", chain), ("UPGLOBE_KEY", &victim)],
    );
    let why = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success() && why.contains("holds 0.005 ether but the workflow's 12 chunks cost 0.012 ether"),
        "{why}"
    );
    // The scheduler lists only the honest funding.
    let funded = cluster.json(&["payments"]);
    assert_eq!(funded.as_array().unwrap().len(), 1, "{funded}");
    assert_eq!(funded[0]["workflow"], 1);
}
