//! The client against a real anvil: deploy, register, pay a batch, and a refused call's reason.

use std::time::Duration;

use upglobe_contracts::anvil::LocalChain;
use upglobe_contracts::{Address, B256, Batch, Chain, NewJob, U256, amount};

#[tokio::test]
async fn pays_a_batch_once() {
    let anvil = LocalChain::start().unwrap();
    let dao = Chain::deploy(&anvil.endpoint(), anvil.key(0), amount::parse("1 ether").unwrap()).await.unwrap();
    let hub = dao.with_key(anvil.key(1)).await.unwrap();
    let requester = dao.with_key(anvil.key(2)).await.unwrap();
    let reporter = dao.with_key(anvil.key(3)).await.unwrap();

    let err = hub.register(amount::parse("0.5 ether").unwrap()).await.unwrap_err();
    assert_eq!(err.revert_name(), Some("StakeTooSmall"), "{err}");
    assert!(err.to_string().contains("below the minimum of 1 ether"), "{err}");
    hub.register(amount::parse("2 ether").unwrap()).await.unwrap();
    hub.attach_worker(B256::repeat_byte(7)).await.unwrap();
    dao.set_whitelisted(hub.account(), true).await.unwrap();
    assert_eq!(dao.worker_hub(B256::repeat_byte(7)).await.unwrap(), Some(hub.account()));

    let price = amount::parse("0.01 ether").unwrap();
    let new = NewJob {
        price_per_unit: price,
        units_per_chunk_max: 1,
        chunks: 10,
        reporter: reporter.account(),
        lasts: Duration::from_secs(3600),
        deposit: amount::parse("0.1 ether").unwrap(),
        token: None,
    };
    let (job, _) = requester.create_job(&new).await.unwrap();
    let batch = Batch::group(job, vec![(3, hub.account(), 1), (1, hub.account(), 1)]);
    assert_eq!(batch.chunks, vec![1, 3]);
    reporter.pay_batch(&batch).await.unwrap();
    let again = reporter.pay_batch(&batch).await.unwrap_err();
    assert_eq!(again.revert_name(), Some("ChunkAlreadyPaid"), "{again}");
    let stranger = requester.pay_batch(&Batch::group(job, vec![(5, hub.account(), 1)])).await.unwrap_err();
    assert_eq!(stranger.revert_name(), Some("Unauthorized"), "{stranger}");
    assert_eq!(reporter.paid_chunks(job, &[0, 1, 3, 9]).await.unwrap(), vec![false, true, true, false]);
    let info = hub.hub(hub.account()).await.unwrap();
    assert_eq!(info.balance, price * U256::from(2));
    assert_eq!(requester.job(job).await.unwrap().paid, price * U256::from(2));
    let _ = Address::ZERO;
}

/// A refused call takes no nonce: the account's next transaction is mined at once instead of
/// waiting forever behind a nonce that was never used.
#[tokio::test]
async fn a_refused_call_leaves_no_nonce_gap() {
    use alloy::providers::Provider;

    let anvil = LocalChain::start().unwrap();
    let dao = Chain::deploy(&anvil.endpoint(), anvil.key(0), amount::parse("1 ether").unwrap()).await.unwrap();
    let hub = dao.with_key(anvil.key(1)).await.unwrap();
    hub.register(amount::parse("2 ether").unwrap()).await.unwrap();
    for _ in 0..3 {
        let err = hub.withdraw(U256::from(1)).await.unwrap_err();
        assert_eq!(err.revert_name(), Some("InsufficientFunds"), "{err}");
    }
    let next = tokio::time::timeout(Duration::from_secs(20), hub.add_stake(U256::from(1))).await;
    next.expect("the next transaction was not mined").unwrap();
    assert_eq!(hub.provider().get_transaction_count(hub.account()).await.unwrap(), 2);
}

/// The goal of the gas design (contracts/README.md): at most 5 000 gas a chunk at a batch of
/// 100, everything included; bigger batches cost less per chunk.
#[tokio::test]
async fn a_batch_of_100_costs_at_most_5000_gas_a_chunk() {
    let rows = upglobe_contracts::bench::gas(&[1, 10, 100, 1000]).await.unwrap();
    assert_eq!(rows.iter().map(|r| r.batch).collect::<Vec<_>>(), vec![1, 10, 100, 1000]);
    for row in &rows {
        assert_eq!(row.gas_per_chunk, row.gas_used / row.batch as u64);
        assert!(row.gas_used > 21_000, "{row:?}");
    }
    assert!(rows[2].gas_per_chunk <= 5_000, "{:?}", rows[2]);
    assert!(rows.windows(2).all(|w| w[1].gas_per_chunk < w[0].gas_per_chunk), "{rows:?}");
    let err = upglobe_contracts::bench::gas(&[10, 1025]).await.unwrap_err();
    assert!(err.to_string().contains("not 1025"), "{err}");
}
