//! End-to-end verification with real processes: workers built with the test-only `cheat` feature
//! lie in chosen ways (`UPGLOBE_CHEAT`), a verifier node audits and settles disputes on the CPU
//! reference kernel, and every workflow still ends with the hash of a one-process run.
//!
//! Run with `cargo nextest run -p upglobe-cli --features cheat --test verification`. Without the
//! feature a cheating worker refuses to start, so these tests fail rather than pass vacuously.

mod cluster;

use std::time::Duration;

use cluster::{Cluster, single_process_hash};
use serde_json::Value;

/// 500 atoms, 6 chunks of 200 steps (chains of 25 links of 8 steps by default).
const MELT: &str = r#"
name = "trust"

[jobs.melt]
kind = "md"

[jobs.melt.system]
lattice = "fcc"
cells = 5
density = 0.8442
temperature = 1.44
seed = 777

[jobs.melt.potential]
cutoff = 2.5

[jobs.melt.run]
steps = 1200
chunk_steps = 200
thermo = 100
"#;

/// Provisional chunks become final after a 3 s challenge window (an hour by default), so the tests
/// see every chunk final.
const SETTLE_FAST: [&str; 2] = ["--settle-after", "3"];

const MELT_ARGS: [&str; 6] = ["--cells", "5", "--temperature", "1.44", "--seed", "777"];
const STEPS: u64 = 1200;

/// Waits until the job has completed and every chunk is final (audits may overturn a completed
/// job's provisional chunks and run it again).
fn wait_completed(cluster: &Cluster, job: &str) -> Value {
    cluster.wait_for("the job to finish", Duration::from_secs(240), |c| {
        let status = c.job(job);
        let settled = status["state"] == "completed" && status["chunks_final"] == status["chunks_total"];
        settled || status["state"] == "failed" || status["state"] == "cancelled"
    });
    let status = cluster.job(job);
    assert_eq!(status["state"], "completed", "{status}");
    status
}

/// The job's verification decisions, as `status --verification` reports them.
fn decisions(cluster: &Cluster, job: &str) -> Vec<Value> {
    let report = cluster.json(&["status", job, "--verification"]);
    report["events"].as_array().unwrap().clone()
}

/// Decisions of one kind.
fn of_kind<'a>(events: &'a [Value], kind: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["kind"] == kind).collect()
}

fn worker_id(cluster: &Cluster, name: &str) -> String {
    let workers = cluster.json(&["workers"]);
    let worker = workers.as_array().unwrap().iter().find(|w| w["name"] == name).expect("the worker joined");
    worker["id"].as_str().unwrap().to_string()
}

fn wait_nodes(cluster: &Cluster, count: usize) {
    cluster.wait_for("the nodes to join", Duration::from_secs(30), |c| c.connected_workers() == count);
}

#[test]
fn a_two_worker_disagreement_is_settled_by_bisection_with_one_interval_rerun() {
    let dir = tempfile::tempdir().unwrap();
    // Ten links of 20 steps per chunk of 200.
    let flags = [SETTLE_FAST[0], SETTLE_FAST[1], "--chain-links", "10"];
    let mut cluster = Cluster::start_with(dir.path(), 1, &flags);
    let cheater = cluster.add_worker_with(&[], &[("UPGLOBE_CHEAT", "wrong:1")]);
    cluster.add_verifier();
    wait_nodes(&cluster, 3);
    let one_chunk = MELT.replace("steps = 1200", "steps = 200");
    let job = cluster.submit(&one_chunk);
    wait_completed(&cluster, &job);
    let events = decisions(&cluster, &job);
    let disputes = of_kind(&events, "Dispute");
    assert_eq!(disputes.len(), 1, "{events:#?}");
    assert!(disputes[0]["rounds"].as_u64().unwrap() <= 4, "bisection over 10 links: at most 4 rounds");
    let settled = of_kind(&events, "DisputeSettled");
    assert_eq!(settled.len(), 1, "{events:#?}");
    // The cheater perturbs the state in the middle link (5 of 10): that link alone is re-run.
    assert_eq!(settled[0]["link"], 5, "{settled:?}");
    assert_eq!(settled[0]["steps"], 20, "one link of 20 steps re-executed, not the chunk's 200");
    let cheater = worker_id(&cluster, &cheater);
    assert_eq!(settled[0]["loser"], serde_json::json!([cheater]));
    assert_eq!(cluster.final_state_hash(&job), single_process_hash(&MELT_ARGS, 200));
}

#[test]
fn a_cheating_worker_is_caught_and_the_workflow_completes_with_the_true_hash() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::start_with(dir.path(), 2, &SETTLE_FAST);
    // Wrong on every second chunk; replicated, since it has no record.
    let cheater = cluster.add_worker_with(&[], &[("UPGLOBE_CHEAT", "wrong:2")]);
    cluster.add_verifier();
    wait_nodes(&cluster, 4);
    let job = cluster.submit(MELT);
    wait_completed(&cluster, &job);
    let cheater = worker_id(&cluster, &cheater);
    let events = decisions(&cluster, &job);
    let lost: Vec<_> = of_kind(&events, "DisputeSettled")
        .into_iter()
        .filter(|s| s["loser"].as_array().unwrap().iter().any(|l| l == cheater.as_str()))
        .collect();
    let audits_failed = of_kind(&events, "AuditFailed");
    assert!(!lost.is_empty() || !audits_failed.is_empty(), "the cheater was never caught: {events:#?}");
    let workers = cluster.json(&["workers"]);
    let record = workers.as_array().unwrap().iter().find(|w| w["id"] == cheater.as_str()).unwrap();
    assert!(record["disagreements"].as_u64().unwrap() >= 1, "{record}");
    // Its wrong results were rejected: the accepted chain is the true one.
    assert_eq!(cluster.final_state_hash(&job), single_process_hash(&MELT_ARGS, STEPS));
}

#[test]
fn a_verifier_audit_finds_a_forged_interval() {
    let dir = tempfile::tempdir().unwrap();
    // Every worker runs alone and every result is audited; two links per chunk, so the audit of
    // either finds a forged first link (its hash, or the state served for the second).
    let flags = ["--trust-after", "0", "--audit-rate-min", "1", "--chain-links", "2", "--settle-after", "3"];
    let mut cluster = Cluster::start_with(dir.path(), 0, &flags);
    let forger = cluster.add_worker_with(&[], &[("UPGLOBE_CHEAT", "forge-link:1")]);
    cluster.add_verifier();
    wait_nodes(&cluster, 2);
    let one_chunk = MELT.replace("steps = 1200", "steps = 200");
    let job = cluster.submit(&one_chunk);
    let forger = worker_id(&cluster, &forger);
    cluster.wait_for("the audit to fail", Duration::from_secs(120), |c| {
        !of_kind(&decisions(c, &job), "AuditFailed").is_empty()
    });
    // An honest worker takes over the chunk the forger lost.
    cluster.add_worker(&[]);
    wait_completed(&cluster, &job);
    let events = decisions(&cluster, &job);
    assert!(!of_kind(&events, "Invalidated").is_empty(), "the forged result was overturned: {events:#?}");
    let workers = cluster.json(&["workers"]);
    let record = workers.as_array().unwrap().iter().find(|w| w["id"] == forger.as_str()).unwrap();
    assert!(record["audits_failed"].as_u64().unwrap() >= 1, "{record}");
    assert_eq!(cluster.final_state_hash(&job), single_process_hash(&MELT_ARGS, 200));
}

#[test]
fn a_worker_that_does_not_serve_its_state_in_time_fails_the_audit() {
    let dir = tempfile::tempdir().unwrap();
    // Twenty links: an audit of link 0 (which needs nothing served) on all six chunks is a
    // one-in-64-million draw.
    let flags = [
        "--trust-after",
        "0",
        "--audit-rate-min",
        "1",
        "--chain-links",
        "20",
        "--serve-deadline",
        "2",
        "--settle-after",
        "3",
    ];
    let mut cluster = Cluster::start_with(dir.path(), 0, &flags);
    let mute = cluster.add_worker_with(&[], &[("UPGLOBE_CHEAT", "refuse-serve")]);
    cluster.add_verifier();
    wait_nodes(&cluster, 2);
    let job = cluster.submit(MELT);
    let mute = worker_id(&cluster, &mute);
    cluster.wait_for("an unserved audit", Duration::from_secs(120), |c| {
        of_kind(&decisions(c, &job), "AuditFailed")
            .iter()
            .any(|f| f["reason"].as_str().unwrap().contains("did not serve"))
    });
    cluster.add_worker(&[]);
    wait_completed(&cluster, &job);
    let workers = cluster.json(&["workers"]);
    let record = workers.as_array().unwrap().iter().find(|w| w["id"] == mute.as_str()).unwrap();
    assert!(record["disagreements"].as_u64().unwrap() >= 1, "{record}");
    assert_eq!(cluster.final_state_hash(&job), single_process_hash(&MELT_ARGS, STEPS));
}
