//! The settler against a real anvil, in process: a store holding final chunks, an escrow job
//! funding them, hubs that can and cannot be paid.

use std::collections::BTreeMap;
use std::time::Duration;

use upglobe_contracts::anvil::LocalChain;
use upglobe_contracts::{B256, Chain, NewJob, U256, amount};
use upglobe_protocol::messages::{JobKind, JobSpec, JobState, Output, Resources};
use upglobe_protocol::{ChunkId, JobId, WorkerId, WorkflowId};
use upglobe_scheduler::core::Record;
use upglobe_scheduler::settle::settle;
use upglobe_scheduler::store::Store;

const CHUNKS: u32 = 1200;

/// One finished job of `CHUNKS` chunks; `agreeing(k)` are the workers that agreed on chunk k.
fn store_with_final_chunks(path: &std::path::Path, agreeing: impl Fn(u32) -> Vec<WorkerId>) -> Store {
    let mut store = Store::open(path).unwrap();
    let spec = JobSpec {
        name: "sweep".into(),
        after: vec![],
        replicas: 1,
        gpu: Default::default(),
        verification: upglobe_protocol::trust::Verification::Quorum,
        resources: Resources { cpus: 1, memory_bytes: 1 << 20, gpus: 0 },
        kind: JobKind::Empty { chunks: CHUNKS },
    };
    let mut records = vec![Record::WorkflowSubmitted {
        id: WorkflowId(1),
        name: "paid".into(),
        source: String::new(),
        jobs: vec![(JobId(1), spec, vec![])],
    }];
    for k in 0..CHUNKS {
        let output = Output::Empty { value: u64::from(k) };
        records.push(Record::ChunkVerified {
            chunk: ChunkId { job: JobId(1), index: k },
            digest: output.digest(),
            output,
            agreeing: agreeing(k),
            disagreeing: vec![],
            provisional: None,
        });
    }
    records.push(Record::JobFinished { job: JobId(1), state: JobState::Completed });
    store.apply(&records).unwrap();
    store
}

#[test]
fn pays_what_it_can_pages_past_unpayable_chunks_and_completes_once_all_are_paid() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (a, b, c) = (WorkerId([1; 32]), WorkerId([2; 32]), WorkerId([3; 32]));
    // More unpayable chunks than a page holds come first: the payable ones after them are still
    // reached. Chunks whose first worker's hub is refused go to the next agreeing worker's hub.
    let mut store = store_with_final_chunks(&dir.path().join("s.db"), |k| match k {
        0..1100 => vec![a],
        1100..1150 => vec![c, b],
        _ => vec![b],
    });
    let anvil = LocalChain::start().unwrap();
    let price = amount::parse("0.0001 ether").unwrap();
    let (dao, reporter, requester, hub_a, hub_b, hub_c) = rt.block_on(async {
        let dao = Chain::deploy(&anvil.endpoint(), anvil.key(0), amount::parse("1 ether").unwrap()).await.unwrap();
        let connect = |k| {
            let dao = dao.clone();
            let key = anvil.key(k);
            async move { dao.with_key(key).await.unwrap() }
        };
        let (reporter, requester, hub_a, hub_b, hub_c) =
            (connect(1).await, connect(2).await, connect(3).await, connect(4).await, connect(5).await);
        for (hub, worker) in [(&hub_b, b), (&hub_c, c)] {
            hub.register(amount::parse("1 ether").unwrap()).await.unwrap();
            hub.attach_worker(B256::from(worker.0)).await.unwrap();
        }
        dao.set_whitelisted(hub_b.account(), true).await.unwrap(); // hub C is never whitelisted
        (dao, reporter, requester, hub_a, hub_b, hub_c)
    });
    // What the workers said when they joined: A names no hub yet.
    store.set_worker_hub(b, Some(hub_b.account().0.0)).unwrap();
    store.set_worker_hub(c, Some(hub_c.account().0.0)).unwrap();
    let new = NewJob {
        price_per_unit: price,
        units_per_chunk_max: 1,
        chunks: CHUNKS,
        reporter: reporter.account(),
        lasts: Duration::from_secs(86_400),
        deposit: price * U256::from(CHUNKS),
        token: None,
    };
    let (escrow_job, _) = rt.block_on(requester.create_job(&new)).unwrap();
    store.fund(WorkflowId(1), escrow_job, u64::from(CHUNKS), &BTreeMap::from([(1, 0)])).unwrap();

    rt.block_on(settle(&mut store, &reporter)).unwrap();
    let funded = store.funded_workflows().unwrap().remove(0);
    assert_eq!((funded.paid, funded.unpayable, funded.completed), (100, 1100, false), "{funded:?}");
    assert!(funded.problem.as_deref().unwrap().contains(&hub_c.account().to_string()), "{funded:?}");
    // A pass without hub C in the way says why A's chunks wait.
    store.set_worker_hub(c, None).unwrap();
    rt.block_on(settle(&mut store, &reporter)).unwrap();
    let funded = store.funded_workflows().unwrap().remove(0);
    assert_eq!((funded.paid, funded.unpayable), (100, 1100), "{funded:?}");
    assert!(funded.problem.as_deref().unwrap().contains("names no hub"), "{funded:?}");
    let bits = rt.block_on(reporter.paid_chunks(escrow_job, &[0, 1099, 1100, 1149, 1150, 1199])).unwrap();
    assert_eq!(bits, [false, false, true, true, true, true]);
    assert_eq!(rt.block_on(dao.hub(hub_b.account())).unwrap().balance, price * U256::from(100));
    assert_eq!(rt.block_on(dao.hub(hub_c.account())).unwrap().balance, U256::ZERO);

    // Worker A's lab registers: the next pass pays the rest and completes the escrow job.
    rt.block_on(async {
        hub_a.register(amount::parse("1 ether").unwrap()).await.unwrap();
        hub_a.attach_worker(B256::from(a.0)).await.unwrap();
        dao.set_whitelisted(hub_a.account(), true).await.unwrap();
    });
    store.set_worker_hub(a, Some(hub_a.account().0.0)).unwrap();
    rt.block_on(settle(&mut store, &reporter)).unwrap();
    let funded = store.funded_workflows().unwrap().remove(0);
    assert_eq!((funded.paid, funded.unpayable, funded.completed, funded.problem.as_deref()), (1200, 0, true, None));
    let job = rt.block_on(reporter.job(escrow_job)).unwrap();
    assert_eq!(job.paid, price * U256::from(CHUNKS));
    assert_eq!(rt.block_on(dao.hub(hub_a.account())).unwrap().balance, price * U256::from(1100));
    // A further pass has nothing to do and sends nothing.
    let nonce = |chain: &Chain| rt.block_on(chain.nonce()).unwrap();
    let before = nonce(&reporter);
    rt.block_on(settle(&mut store, &reporter)).unwrap();
    assert_eq!(nonce(&reporter), before);
}

#[test]
fn a_contradicting_md_result_is_evidence_that_slashes_its_hub() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (honest, liar) = (WorkerId([1; 32]), WorkerId([2; 32]));
    let mut store = Store::open(&dir.path().join("s.db")).unwrap();
    let spec = JobSpec {
        name: "melt".into(),
        after: vec![],
        replicas: 2,
        gpu: Default::default(),
        verification: upglobe_protocol::trust::Verification::Quorum,
        resources: Resources { cpus: 1, memory_bytes: 1 << 20, gpus: 0 },
        kind: JobKind::Md(upglobe_protocol::messages::MdJob {
            initial: upglobe_protocol::BlobHash([9; 32]),
            atoms: 4,
            total_steps: 10,
            chunk_steps: 10,
            thermo_every: 10,
        }),
    };
    let output = Output::Empty { value: 1 };
    let chunk = ChunkId { job: JobId(1), index: 0 };
    store
        .apply(&[
            Record::WorkflowSubmitted {
                id: WorkflowId(1),
                name: "md".into(),
                source: String::new(),
                jobs: vec![(JobId(1), spec, vec![])],
            },
            Record::Signed {
                chunk,
                worker: liar,
                key: upglobe_protocol::trust::PublicKey([7; 32]),
                statement_hash: [8; 32],
                signature: upglobe_protocol::trust::Signature(vec![6; 64]),
                usage: Default::default(),
            },
            Record::ChunkVerified {
                chunk,
                digest: output.digest(),
                output,
                agreeing: vec![honest],
                disagreeing: vec![liar],
                provisional: None,
            },
            Record::JobFinished { job: JobId(1), state: JobState::Completed },
        ])
        .unwrap();
    let anvil = LocalChain::start().unwrap();
    let price = amount::parse("0.01 ether").unwrap();
    let stake = amount::parse("10 ether").unwrap();
    let (dao, reporter, requester, honest_hub, liar_hub) = rt.block_on(async {
        let dao = Chain::deploy(&anvil.endpoint(), anvil.key(0), amount::parse("1 ether").unwrap()).await.unwrap();
        let mut accounts = Vec::new();
        for k in 1..=4 {
            accounts.push(dao.with_key(anvil.key(k)).await.unwrap());
        }
        for (hub, worker) in [(&accounts[2], honest), (&accounts[3], liar)] {
            hub.register(stake).await.unwrap();
            hub.attach_worker(B256::from(worker.0)).await.unwrap();
            dao.set_whitelisted(hub.account(), true).await.unwrap();
        }
        store.set_worker_hub(honest, Some(accounts[2].account().0.0)).unwrap();
        store.set_worker_hub(liar, Some(accounts[3].account().0.0)).unwrap();
        let liar_hub = accounts.pop().unwrap();
        let honest_hub = accounts.pop().unwrap();
        let requester = accounts.pop().unwrap();
        let reporter = accounts.pop().unwrap();
        // The DAO vouches for the scheduler's reporter key, so anyone may execute its evidence.
        dao.set_reporter_approved(reporter.account(), true).await.unwrap();
        (dao, reporter, requester, honest_hub, liar_hub)
    });
    let new = NewJob {
        price_per_unit: price,
        units_per_chunk_max: 1,
        chunks: 1,
        reporter: reporter.account(),
        lasts: Duration::from_secs(86_400),
        deposit: price,
        token: None,
    };
    let (escrow_job, _) = rt.block_on(requester.create_job(&new)).unwrap();
    store.fund(WorkflowId(1), escrow_job, 1, &BTreeMap::from([(1, 0)])).unwrap();
    rt.block_on(settle(&mut store, &reporter)).unwrap();
    let funded = store.funded_workflows().unwrap().remove(0);
    assert_eq!((funded.paid, funded.evidence, funded.completed), (1, 1, true), "{funded:?}");
    // The honest hub is paid; the liar's hub has evidence pending, which blocks its stake.
    assert_eq!(rt.block_on(dao.hub(honest_hub.account())).unwrap().balance, price);
    assert_eq!(rt.block_on(dao.hub(liar_hub.account())).unwrap().evidence_pending, 1);
    // A second pass sends nothing again.
    let before = rt.block_on(reporter.nonce()).unwrap();
    rt.block_on(settle(&mut store, &reporter)).unwrap();
    assert_eq!(rt.block_on(reporter.nonce()).unwrap(), before);
    // After the 7-day dispute window anyone (here the requester) executes the slash, since the DAO
    // approved the reporter: 10 % of the stake, 80 % of it to the requester and 20 % to the reporter.
    let id = alloy_id(escrow_job, liar);
    let early = rt.block_on(requester.execute_slash(id)).unwrap_err();
    assert_eq!(early.revert_name(), Some("DisputeWindowOpen"), "{early}");
    rt.block_on(requester.advance_time(7 * 86_400 + 1)).unwrap();
    // Without the DAO's approval of the reporter, only the DAO could execute it.
    rt.block_on(dao.set_reporter_approved(reporter.account(), false)).unwrap();
    let unapproved = rt.block_on(requester.execute_slash(id)).unwrap_err();
    assert_eq!(unapproved.revert_name(), Some("ReporterNotApproved"), "{unapproved}");
    rt.block_on(dao.set_reporter_approved(reporter.account(), true)).unwrap();
    rt.block_on(requester.execute_slash(id)).unwrap();
    let slash = stake / U256::from(10);
    assert_eq!(rt.block_on(dao.hub(liar_hub.account())).unwrap().stake, stake - slash);
    assert_eq!(rt.block_on(dao.claimable(requester.account())).unwrap(), slash * U256::from(8) / U256::from(10));
    assert_eq!(rt.block_on(dao.claimable(reporter.account())).unwrap(), slash * U256::from(2) / U256::from(10));
}

/// The registry's id of a piece of evidence: keccak256(abi.encode(jobId, chunkIndex, workerId)).
fn alloy_id(escrow_job: u64, worker: WorkerId) -> B256 {
    let mut encoded = [0u8; 96];
    encoded[24..32].copy_from_slice(&escrow_job.to_be_bytes());
    encoded[64..].copy_from_slice(&worker.0);
    upglobe_contracts::keccak256(encoded)
}
