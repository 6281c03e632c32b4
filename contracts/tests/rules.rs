//! Every rule of the registry and the escrow against a real anvil, each refusal checked by the
//! Solidity error's name and every payment checked to the wei. One anvil per test.

mod common;

use std::time::Duration;

use alloy::sol_types::{SolCall, SolError};
use common::*;
use upglobe_contracts::bindings::test::Reenterer;
use upglobe_contracts::bindings::{JobEscrow, Registry};
use upglobe_contracts::{Address, B256, Batch, HubState, JobStatus, NewJob, U256};

const ETH: Address = Address::ZERO;

#[tokio::test]
async fn registration_stake_and_workers() {
    let w = World::new().await;
    let hub2 = w.hub2.account();
    refused(w.hub2.register(ether(STAKE_MIN) - wei(1)).await, "StakeTooSmall");
    refused(w.hub2.register(U256::ZERO).await, "StakeTooSmall");
    w.hub2.register(ether(STAKE_MIN)).await.unwrap();
    refused(w.hub2.register(ether("2 ether")).await, "WrongHubState");
    let info = w.dao.hub(hub2).await.unwrap();
    assert_eq!(
        (info.state, info.whitelisted, info.holdback, info.stake),
        (HubState::Active, false, false, ether("1 ether"))
    );
    w.hub2.add_stake(ether("0.5 ether")).await.unwrap();
    assert_eq!(w.dao.hub(hub2).await.unwrap().stake, ether("1.5 ether"));
    assert_eq!(w.dao.balance(w.dao.deployment().registry).await.unwrap(), ether("11.5 ether"));

    // A stranger is no hub: none of the hub calls work for it.
    refused(w.stranger.add_stake(ether("1 ether")).await, "WrongHubState");
    refused(w.stranger.attach_worker(B256::repeat_byte(9)).await, "WrongHubState");
    refused(w.stranger.withdraw(U256::ZERO).await, "WrongHubState");
    refused(w.stranger.release_early(vec![]).await, "WrongHubState");

    let worker = B256::repeat_byte(1);
    assert_eq!(w.dao.worker_hub(worker).await.unwrap(), None);
    w.hub.attach_worker(worker).await.unwrap();
    assert_eq!(w.dao.worker_hub(worker).await.unwrap(), Some(w.hub.account()));
    let taken = w.hub2.attach_worker(worker).await.unwrap_err();
    assert_eq!(taken.revert_name(), Some("WorkerTaken"), "{taken}");
    assert!(taken.to_string().contains(&w.hub.account().to_string()), "names the owner: {taken}");
    refused(w.hub.attach_worker(worker).await, "WorkerTaken");
    refused(w.hub2.detach_worker(worker).await, "NotYourWorker");
    w.hub.detach_worker(worker).await.unwrap();
    assert_eq!(w.dao.worker_hub(worker).await.unwrap(), None);
    refused(w.hub.detach_worker(worker).await, "NotYourWorker");
    w.hub2.attach_worker(worker).await.unwrap();
    assert_eq!(w.dao.worker_hub(worker).await.unwrap(), Some(hub2));
}

#[tokio::test]
async fn only_the_dao_the_reporter_and_the_escrow() {
    let w = World::new().await;
    let hub = w.hub.account();
    let outsiders = [&w.stranger, &w.hub, &w.requester, &w.reporter];
    for who in outsiders {
        let r = registry(who);
        refused(who.send("Registry.setDao", r.setDao(who.account())).await, "Unauthorized");
        refused(who.send("Registry.setEscrow", r.setEscrow(who.account())).await, "Unauthorized");
        refused(who.set_whitelisted(hub, false).await, "Unauthorized");
        refused(who.suspect(hub).await, "Unauthorized");
        refused(who.clear(hub, vec![]).await, "Unauthorized");
        refused(who.punish(hub, wei(1)).await, "Unauthorized");
        refused(who.dismiss_evidence(B256::repeat_byte(3)).await, "Unauthorized");
        refused(who.set_reporter_approved(who.account(), true).await, "Unauthorized");
        // credit is the escrow's alone, whatever is sent with it.
        let credit = r.credit(ETH, vec![hub], vec![wei(5)]).value(wei(5));
        refused(who.send("Registry.credit", credit).await, "Unauthorized");
    }
    let r = registry(&w.dao);
    refused(w.dao.send("Registry.credit", r.credit(ETH, vec![hub], vec![wei(5)]).value(wei(5))).await, "Unauthorized");
    refused(
        w.dao.send("Registry.setEscrow", registry(&w.dao).setEscrow(w.stranger.account())).await,
        "EscrowAlreadySet",
    );
    assert!(w.dao.hub(hub).await.unwrap().whitelisted, "nothing the outsiders did changed the hub");
    assert_eq!(w.dao.hub(hub).await.unwrap().balance, U256::ZERO);

    // Whitelisting is the DAO's, on registered hubs only; only whitelisted hubs are paid.
    refused(w.dao.set_whitelisted(w.hub2.account(), true).await, "WrongHubState");
    w.hub2.register(ether(STAKE_MIN)).await.unwrap();
    let price = ether("0.001 ether");
    let job = w.eth_job(10, price, price * wei(10)).await;
    refused(w.pay(job, &[0], w.hub2.account()).await, "HubNotPayable");
    w.dao.set_whitelisted(w.hub2.account(), true).await.unwrap();
    w.pay(job, &[0], w.hub2.account()).await.unwrap();
    w.dao.set_whitelisted(w.hub2.account(), false).await.unwrap();
    refused(w.pay(job, &[1], w.hub2.account()).await, "HubNotPayable");
    assert_eq!(w.dao.hub(w.hub2.account()).await.unwrap().balance, price);

    // Only the reporter pays and completes, not the requester, a hub or the DAO.
    for who in [&w.requester, &w.hub, &w.dao, &w.stranger] {
        refused(who.pay_batch(&Batch::group(job, vec![(2, hub, 1)])).await, "Unauthorized");
        refused(who.complete(job).await, "Unauthorized");
    }
    assert_eq!(w.dao.job(job).await.unwrap().paid, price);

    // A new DAO takes over every DAO power; the old key loses them.
    assert!(!w.dao.reporter_approved(w.reporter.account()).await.unwrap());
    let r = registry(&w.dao);
    w.dao.send("Registry.setDao", r.setDao(w.stranger.account())).await.unwrap();
    refused(w.dao.suspect(hub).await, "Unauthorized");
    refused(w.dao.set_reporter_approved(w.reporter.account(), true).await, "Unauthorized");
    w.stranger.set_whitelisted(w.hub2.account(), true).await.unwrap();
    assert!(w.dao.hub(w.hub2.account()).await.unwrap().whitelisted);
}

#[tokio::test]
async fn suspected_hub_can_only_release_early() {
    let w = World::new().await;
    let hub = w.hub.account();
    let worker = B256::repeat_byte(4);
    w.hub.attach_worker(worker).await.unwrap();
    let price = ether("0.01 ether");
    let job = w.eth_job(10, price, price * wei(10)).await;
    w.pay(job, &[0, 1], hub).await.unwrap();

    refused(w.stranger.suspect(hub).await, "Unauthorized");
    refused(w.dao.suspect(w.stranger.account()).await, "WrongHubState");
    let receipt = w.dao.suspect(hub).await.unwrap();
    let info = w.dao.hub(hub).await.unwrap();
    assert_eq!(info.state, HubState::Suspected);
    assert_eq!(info.locked_until, mined_at(&w.dao, &receipt).await + LOCK);
    refused(w.dao.suspect(hub).await, "WrongHubState");
    refused(w.dao.set_whitelisted(hub, false).await, "WrongHubState");

    refused(w.hub.withdraw(wei(1)).await, "HubLocked");
    refused(w.hub.withdraw(U256::ZERO).await, "HubLocked");
    refused(w.hub.request_unstake().await, "HubLocked");
    refused(w.hub.withdraw_stake(wei(1)).await, "HubLocked");
    refused(w.hub.add_stake(wei(1)).await, "HubLocked");
    refused(w.hub.attach_worker(B256::repeat_byte(5)).await, "HubLocked");
    refused(w.hub.detach_worker(worker).await, "HubLocked");
    refused(w.hub.register(ether("1 ether")).await, "WrongHubState");
    let r = registry(&w.hub);
    refused(w.hub.send("Registry.withdraw", r.withdraw(Address::repeat_byte(7), U256::ZERO)).await, "HubLocked");
    // Work already done is still paid, into the locked funds.
    w.pay(job, &[2], hub).await.unwrap();
    assert_eq!(w.dao.hub(hub).await.unwrap().balance, price * wei(3));
    // A day later nothing changed.
    w.dao.advance_time(DAY).await.unwrap();
    refused(w.hub.withdraw(wei(1)).await, "HubLocked");
    assert_eq!(w.dao.hub(hub).await.unwrap().state, HubState::Suspected);
    // Only the suspected hub may buy its way out.
    w.hub2.register(ether(STAKE_MIN)).await.unwrap();
    refused(w.hub2.release_early(vec![]).await, "WrongHubState");
    w.hub.release_early(vec![]).await.unwrap();
    refused(w.hub.release_early(vec![]).await, "WrongHubState");
    w.hub.detach_worker(worker).await.unwrap();
}

#[tokio::test]
async fn release_early_costs_half_a_percent_and_nothing_after() {
    let w = World::new().await;
    let hub = w.hub.account();
    let price = wei(12_345_678_901_234_567);
    let job = w.eth_job(10, price, price * wei(10)).await;
    w.pay(job, &[0, 1, 2], hub).await.unwrap();
    let (stake, balance, held) = funds(&w.dao, hub).await;
    assert_eq!((stake, balance, held), (ether("10 ether"), price * wei(3), U256::ZERO));
    w.dao.suspect(hub).await.unwrap();

    let locked = stake + balance + held;
    let fee = early_fee(locked);
    assert_eq!(registry(&w.dao).lockedFunds(hub, ETH).call().await.unwrap(), locked);
    assert_eq!(w.dao.early_release_fee(hub).await.unwrap(), fee);
    assert_eq!(fee, wei(50_185_185_183_518_518), "0.5 % of 10.037037036703703701 ether, rounded down");
    let receipt = w.hub.release_early(vec![]).await.unwrap();

    // The fee comes out of the balance first, then the stake.
    assert!(fee > balance);
    assert_eq!(funds(&w.dao, hub).await, (stake - (fee - balance), U256::ZERO, U256::ZERO));
    assert_eq!(w.dao.claimable(w.dao.account()).await.unwrap(), fee);
    let info = w.dao.hub(hub).await.unwrap();
    assert_eq!((info.state, info.holdback, info.locked()), (HubState::Active, false, false));
    assert_eq!(info.locked_until, mined_at(&w.dao, &receipt).await);
    assert_eq!(w.dao.balance(w.dao.deployment().registry).await.unwrap(), locked, "the fee only moved to claimable");

    // No holdback after an early release: new earnings arrive whole, and so does the stake,
    // even after the time the lock would have run out.
    w.pay(job, &[3, 4], hub).await.unwrap();
    assert_eq!(arrived(&w.hub, w.hub.withdraw(price)).await, price);
    w.dao.advance_time(LOCK + DAY).await.unwrap();
    assert_eq!(arrived(&w.hub, w.hub.withdraw(price)).await, price);
    w.hub.request_unstake().await.unwrap();
    w.dao.advance_time(14 * DAY).await.unwrap();
    let some = wei(1_000_000_000_000_000_011);
    assert_eq!(arrived(&w.hub, w.hub.withdraw_stake(some)).await, some);
    assert_eq!(funds(&w.dao, hub).await.2, U256::ZERO);

    // The DAO collects its fee, once.
    assert_eq!(arrived(&w.dao, w.dao.claim()).await, fee);
    assert_eq!(arrived(&w.dao, w.dao.claim()).await, U256::ZERO);
    assert_eq!(w.dao.balance(w.dao.deployment().registry).await.unwrap(), stake - (fee - balance) - some);
}

#[tokio::test]
async fn waiting_out_the_lock_holds_back_thirty_percent() {
    let w = World::new().await;
    let hub = w.hub.account();
    let registry_address = w.dao.deployment().registry;
    let price = wei(333_333_333_333_333_337);
    let job = w.eth_job(10, price, price * wei(10)).await;
    w.pay(job, &[0, 1, 2], hub).await.unwrap();
    w.dao.suspect(hub).await.unwrap();

    w.dao.advance_time(LOCK - 3600).await.unwrap();
    refused(w.hub.withdraw(wei(1)).await, "HubLocked");
    let info = w.dao.hub(hub).await.unwrap();
    assert!(info.locked() && !info.effective_holdback());
    w.dao.advance_time(3600).await.unwrap();
    let info = w.dao.hub(hub).await.unwrap();
    assert!(!info.locked());
    assert_eq!((info.state, info.holdback), (HubState::Suspected, false), "stored lazily");
    assert_eq!((info.effective_state(), info.effective_holdback()), (HubState::Active, true));
    // The lock is over without any fee.
    assert_eq!(w.dao.claimable(w.dao.account()).await.unwrap(), U256::ZERO);

    // 70 % of each withdrawal arrives; 30 %, rounded up, stays on the contract as heldBack.
    let mut held = U256::ZERO;
    let mut balance = price * wei(3);
    for amount in [wei(11), wei(1), wei(10), price * wei(2) + wei(3)] {
        let keep = kept(amount);
        assert_eq!(keep, amount - amount * wei(7000) / wei(10_000));
        assert_eq!(arrived(&w.hub, w.hub.withdraw(amount)).await, amount - keep);
        held += keep;
        balance -= amount;
        assert_eq!(funds(&w.dao, hub).await, (ether("10 ether"), balance, held));
    }
    assert_eq!(kept(wei(11)), wei(4), "30 % of 11 wei is 3.3, kept as 4");
    assert_eq!(kept(wei(1)), wei(1), "a 1 wei withdrawal keeps it all");
    let info = w.dao.hub(hub).await.unwrap();
    assert_eq!((info.state, info.holdback), (HubState::Active, true), "applied by the hub's call");
    // Earnings arriving after the lock are held back as well, and so is the stake.
    w.pay(job, &[3, 4, 5], hub).await.unwrap();
    balance += price * wei(3);
    let amount = price * wei(3);
    assert_eq!(arrived(&w.hub, w.hub.withdraw(amount)).await, amount - kept(amount));
    held += kept(amount);
    balance -= amount;
    w.hub.request_unstake().await.unwrap();
    refused(w.hub.withdraw_stake(wei(1)).await, "UnstakeNotReady");
    w.dao.advance_time(14 * DAY).await.unwrap();
    let stake_out = wei(3_000_000_000_000_000_001);
    assert_eq!(arrived(&w.hub, w.hub.withdraw_stake(stake_out)).await, stake_out - kept(stake_out));
    held += kept(stake_out);
    let stake = ether("10 ether") - stake_out;
    assert_eq!(funds(&w.dao, hub).await, (stake, balance, held));
    refused(w.hub.withdraw_stake(wei(1)).await, "UnstakeNotReady");
    refused(w.hub.withdraw(balance + wei(1)).await, "InsufficientFunds");
    // The contract holds exactly what the hub has on it.
    assert_eq!(w.dao.balance(registry_address).await.unwrap(), stake + balance + held);

    // Suspected again: the early-release fee counts heldBack too. The holdback earned by the
    // first lock stays on: only the DAO's clear ends it.
    w.pay(job, &[6], hub).await.unwrap();
    balance += price;
    w.dao.suspect(hub).await.unwrap();
    let locked = stake + balance + held;
    assert_eq!(registry(&w.dao).lockedFunds(hub, ETH).call().await.unwrap(), locked);
    let fee = early_fee(locked);
    assert!(fee > early_fee(stake + balance), "heldBack is part of the fee's base");
    w.hub.release_early(vec![]).await.unwrap();
    assert_eq!(w.dao.claimable(w.dao.account()).await.unwrap(), fee);
    assert_eq!(funds(&w.dao, hub).await, (stake, balance - fee, held));
    balance -= fee;
    assert!(w.dao.hub(hub).await.unwrap().holdback);

    // clear gives back every held-back wei and ends the holdback.
    refused(w.dao.clear(hub, vec![]).await, "WrongHubState");
    w.dao.suspect(hub).await.unwrap();
    w.dao.clear(hub, vec![]).await.unwrap();
    let info = w.dao.hub(hub).await.unwrap();
    assert_eq!((info.state, info.holdback, info.locked(), info.whitelisted), (HubState::Active, false, false, true));
    assert_eq!(funds(&w.dao, hub).await, (stake, balance + held, U256::ZERO));
    assert_eq!(arrived(&w.hub, w.hub.withdraw(balance + held)).await, balance + held);
    assert_eq!(w.dao.balance(registry_address).await.unwrap(), stake + fee);
}

#[tokio::test]
async fn punished_hub_pays_the_dao_and_is_never_paid_again() {
    let w = World::new().await;
    let hub = w.hub.account();
    let price = ether("0.1 ether");
    let job = w.eth_job(10, price, price * wei(10)).await;
    w.pay(job, &[0, 1, 2], hub).await.unwrap();
    w.hub2.register(ether(STAKE_MIN)).await.unwrap();

    refused(w.dao.punish(hub, wei(1)).await, "WrongHubState");
    refused(w.dao.punish(w.hub2.account(), wei(1)).await, "WrongHubState");
    w.dao.suspect(hub).await.unwrap();
    refused(w.stranger.punish(hub, wei(1)).await, "Unauthorized");
    refused(w.hub.punish(hub, wei(1)).await, "Unauthorized");
    // Taken from the balance first, then the stake.
    w.dao.punish(hub, ether("0.1 ether")).await.unwrap();
    assert_eq!(funds(&w.dao, hub).await, (ether("10 ether"), ether("0.2 ether"), U256::ZERO));
    let info = w.dao.hub(hub).await.unwrap();
    assert_eq!((info.state, info.whitelisted), (HubState::Punished, false));
    w.dao.punish(hub, ether("1.2 ether")).await.unwrap();
    assert_eq!(funds(&w.dao, hub).await, (ether("9 ether"), U256::ZERO, U256::ZERO));
    assert_eq!(w.dao.claimable(w.dao.account()).await.unwrap(), ether("1.3 ether"));

    refused(w.pay(job, &[3], hub).await, "HubNotPayable");
    refused(w.dao.set_whitelisted(hub, true).await, "WrongHubState");
    refused(w.hub.release_early(vec![]).await, "WrongHubState");
    refused(w.hub.withdraw(U256::ZERO).await, "HubLocked");
    refused(w.hub.request_unstake().await, "HubLocked");
    refused(w.hub.attach_worker(B256::repeat_byte(1)).await, "WrongHubState");
    refused(w.dao.suspect(hub).await, "WrongHubState");
    // The chunk that could not be paid is not marked paid.
    assert_eq!(w.dao.paid_chunks(job, &[2, 3]).await.unwrap(), vec![true, false]);

    // After the lock: the rest is the hub's, with the holdback; still never paid again.
    w.dao.advance_time(LOCK).await.unwrap();
    refused(w.dao.punish(hub, wei(1)).await, "WrongHubState");
    w.hub.request_unstake().await.unwrap();
    w.dao.advance_time(14 * DAY).await.unwrap();
    let out = ether("4 ether");
    assert_eq!(arrived(&w.hub, w.hub.withdraw_stake(out)).await, out - kept(out));
    assert_eq!(funds(&w.dao, hub).await, (ether("5 ether"), U256::ZERO, kept(out)));
    let info = w.dao.hub(hub).await.unwrap();
    assert_eq!((info.state, info.holdback, info.whitelisted), (HubState::Punished, true, false));
    refused(w.pay(job, &[3], hub).await, "HubNotPayable");
    refused(w.hub.attach_worker(B256::repeat_byte(1)).await, "WrongHubState");

    // clear gives back what was held back; the hub stays off the whitelist.
    w.dao.clear(hub, vec![]).await.unwrap();
    let info = w.dao.hub(hub).await.unwrap();
    assert_eq!((info.state, info.holdback, info.whitelisted), (HubState::Active, false, false));
    assert_eq!(funds(&w.dao, hub).await, (ether("5 ether"), kept(out), U256::ZERO));
    assert_eq!(arrived(&w.hub, w.hub.withdraw(kept(out))).await, kept(out));
    refused(w.pay(job, &[3], hub).await, "HubNotPayable");

    assert_eq!(arrived(&w.dao, w.dao.claim()).await, ether("1.3 ether"));
    let stakes = ether("5 ether") + ether(STAKE_MIN);
    assert_eq!(w.dao.balance(w.dao.deployment().registry).await.unwrap(), stakes, "hub's and hub2's stakes");
}

#[tokio::test]
async fn clear_during_a_lock_costs_nothing() {
    let w = World::new().await;
    let hub = w.hub.account();
    let price = ether("0.3 ether");
    let job = w.eth_job(3, price, price * wei(3)).await;
    w.pay(job, &[0, 1, 2], hub).await.unwrap();
    w.dao.suspect(hub).await.unwrap();
    w.dao.clear(hub, vec![]).await.unwrap();
    let info = w.dao.hub(hub).await.unwrap();
    assert_eq!((info.state, info.holdback, info.locked(), info.whitelisted), (HubState::Active, false, false, true));
    assert_eq!(arrived(&w.hub, w.hub.withdraw(ether("0.9 ether"))).await, ether("0.9 ether"));
    assert_eq!(w.dao.claimable(w.dao.account()).await.unwrap(), U256::ZERO);
    // The lock that was cleared does not start a holdback when its 120 days pass.
    w.dao.advance_time(LOCK + DAY).await.unwrap();
    w.hub.request_unstake().await.unwrap();
    w.dao.advance_time(14 * DAY).await.unwrap();
    assert_eq!(arrived(&w.hub, w.hub.withdraw_stake(ether("10 ether"))).await, ether("10 ether"));
    assert_eq!(w.dao.balance(w.dao.deployment().registry).await.unwrap(), U256::ZERO);
}

#[tokio::test]
async fn evidence_slashes_ten_percent_after_the_dispute_window() {
    let w = World::new().await;
    let hub = w.hub.account();
    let worker = B256::repeat_byte(0x11);
    w.hub.attach_worker(worker).await.unwrap();
    let job = w.eth_job(10, ether("0.01 ether"), ether("0.1 ether")).await;
    let hash = B256::repeat_byte(0xee);
    w.dao.set_reporter_approved(w.reporter.account(), true).await.unwrap();
    assert!(w.dao.reporter_approved(w.reporter.account()).await.unwrap());

    for who in [&w.stranger, &w.hub, &w.requester] {
        refused(who.submit_evidence(job, 4, worker, hash, vec![1, 2, 3]).await, "Unauthorized");
    }
    refused(w.reporter.submit_evidence(job, 4, B256::repeat_byte(0x12), hash, vec![]).await, "NotYourWorker");
    refused(w.reporter.submit_evidence(job + 1, 4, worker, hash, vec![]).await, "UnknownJob");
    // Only chunks the job has: the job has 10.
    refused(w.reporter.submit_evidence(job, 10, worker, hash, vec![]).await, "EvidenceChunkOutOfRange");
    refused(w.dao.submit_evidence(job, u32::MAX, worker, hash, vec![]).await, "EvidenceChunkOutOfRange");
    let (first, _) = w.reporter.submit_evidence(job, 4, worker, hash, vec![1, 2, 3]).await.unwrap();
    refused(w.reporter.submit_evidence(job, 4, worker, hash, vec![]).await, "EvidenceExists");
    refused(w.dao.submit_evidence(job, 4, worker, hash, vec![]).await, "EvidenceExists");
    let (second, _) = w.dao.submit_evidence(job, 5, worker, hash, vec![]).await.unwrap();
    assert_eq!(w.dao.hub(hub).await.unwrap().evidence_pending, 2);
    let stored = registry(&w.dao).evidence(first).call().await.unwrap();
    assert_eq!((stored.hub, stored.requester, stored.reporter), (hub, w.requester.account(), w.reporter.account()));
    assert_eq!((stored.byDao, stored.reporterApproved), (false, true));
    let stored = registry(&w.dao).evidence(second).call().await.unwrap();
    assert_eq!((stored.byDao, stored.reporterApproved), (true, true));

    refused(w.stranger.execute_slash(first).await, "DisputeWindowOpen");
    refused(w.dao.execute_slash(first).await, "DisputeWindowOpen");
    refused(w.stranger.dismiss_evidence(second).await, "Unauthorized");
    w.dao.dismiss_evidence(second).await.unwrap();
    assert_eq!(w.dao.hub(hub).await.unwrap().evidence_pending, 1);
    refused(w.dao.dismiss_evidence(second).await, "EvidenceNotOpen");
    refused(w.dao.execute_slash(second).await, "EvidenceNotOpen");
    refused(w.dao.execute_slash(B256::repeat_byte(1)).await, "EvidenceNotOpen");

    // Open evidence keeps the stake in, even after the unstaking delay.
    w.hub.request_unstake().await.unwrap();
    w.dao.advance_time(14 * DAY).await.unwrap();
    refused(w.hub.withdraw_stake(wei(1)).await, "EvidencePending");
    refused(w.dao.dismiss_evidence(first).await, "DisputeWindowClosed");

    // Anyone executes an approved reporter's evidence after the window: 10 % of the stake, 80 %
    // requester, 20 % reporter.
    w.stranger.execute_slash(first).await.unwrap();
    refused(w.stranger.execute_slash(first).await, "EvidenceNotOpen");
    let info = w.dao.hub(hub).await.unwrap();
    assert_eq!((info.stake, info.evidence_pending), (ether("9 ether"), 0));
    assert_eq!(w.dao.claimable(w.reporter.account()).await.unwrap(), ether("0.2 ether"));
    assert_eq!(w.dao.claimable(w.requester.account()).await.unwrap(), ether("0.8 ether"));
    assert_eq!(arrived(&w.reporter, w.reporter.claim()).await, ether("0.2 ether"));
    assert_eq!(arrived(&w.requester, w.requester.claim()).await, ether("0.8 ether"));
    assert_eq!(arrived(&w.requester, w.requester.claim()).await, U256::ZERO);
    assert_eq!(w.dao.claimable(w.requester.account()).await.unwrap(), U256::ZERO);

    // While the hub is suspected, only the DAO may execute.
    let (third, _) = w.reporter.submit_evidence(job, 6, worker, hash, vec![]).await.unwrap();
    w.dao.suspect(hub).await.unwrap();
    w.dao.advance_time(8 * DAY).await.unwrap();
    refused(w.stranger.execute_slash(third).await, "HubLocked");
    w.dao.execute_slash(third).await.unwrap();
    let slash = ether("0.9 ether");
    assert_eq!(w.dao.hub(hub).await.unwrap().stake, ether("9 ether") - slash);
    assert_eq!(w.dao.claimable(w.reporter.account()).await.unwrap(), slash * wei(2000) / wei(10_000));
    assert_eq!(w.dao.claimable(w.requester.account()).await.unwrap(), slash - slash * wei(2000) / wei(10_000));
    let registry_balance = w.dao.balance(w.dao.deployment().registry).await.unwrap();
    assert_eq!(registry_balance, ether("9 ether"), "8.1 ether of stake and 0.9 ether owed");
}

/// A hub that takes its stake out stays registered, but is not paid again until it is staked
/// at least stakeMin: otherwise a slash would take 10 % of nothing.
#[tokio::test]
async fn a_hub_staked_below_the_minimum_is_not_paid() {
    let w = World::new().await;
    let hub = w.hub.account();
    let price = ether("0.01 ether");
    let job = w.eth_job(10, price, price * wei(10)).await;
    w.pay(job, &[0], hub).await.unwrap();

    // The whole stake out, after the unstaking delay: still active and whitelisted, never paid.
    w.hub.request_unstake().await.unwrap();
    w.dao.advance_time(14 * DAY).await.unwrap();
    assert_eq!(arrived(&w.hub, w.hub.withdraw_stake(ether("10 ether"))).await, ether("10 ether"));
    let info = w.dao.hub(hub).await.unwrap();
    assert_eq!((info.state, info.whitelisted, info.stake), (HubState::Active, true, U256::ZERO));
    let refusal = w.pay(job, &[1], hub).await.unwrap_err();
    assert_eq!(refusal.revert_name(), Some("HubNotPayable"), "{refusal}");
    assert!(refusal.to_string().contains("staked below the minimum"), "{refusal}");
    // One wei short of the minimum is still short.
    w.hub.add_stake(ether(STAKE_MIN) - wei(1)).await.unwrap();
    refused(w.pay(job, &[1], hub).await, "HubNotPayable");
    w.hub.add_stake(wei(1)).await.unwrap();
    w.pay(job, &[1], hub).await.unwrap();
    assert_eq!(w.dao.paid_chunks(job, &[0, 1, 2]).await.unwrap(), vec![true, true, false]);
    assert_eq!(w.dao.hub(hub).await.unwrap().balance, price * wei(2));
    // Earnings already made can still be withdrawn.
    w.hub.request_unstake().await.unwrap();
    w.dao.advance_time(14 * DAY).await.unwrap();
    w.hub.withdraw_stake(wei(1)).await.unwrap();
    refused(w.pay(job, &[2], hub).await, "HubNotPayable");
    assert_eq!(arrived(&w.hub, w.hub.withdraw(price * wei(2))).await, price * wei(2));

    // A slash that leaves less than the minimum stops payment too.
    w.hub2.register(ether(STAKE_MIN)).await.unwrap();
    w.dao.set_whitelisted(w.hub2.account(), true).await.unwrap();
    w.pay(job, &[2], w.hub2.account()).await.unwrap();
    let worker = B256::repeat_byte(0x31);
    w.hub2.attach_worker(worker).await.unwrap();
    let (id, _) = w.dao.submit_evidence(job, 2, worker, B256::repeat_byte(1), vec![]).await.unwrap();
    w.dao.advance_time(7 * DAY).await.unwrap();
    w.stranger.execute_slash(id).await.unwrap();
    assert_eq!(w.dao.hub(w.hub2.account()).await.unwrap().stake, ether("0.9 ether"));
    refused(w.pay(job, &[3], w.hub2.account()).await, "HubNotPayable");
}

/// Whoever opens a job names its reporter, so anyone can submit evidence through a job of its
/// own. Such evidence cannot be executed by anyone but the DAO, which may dismiss it even after
/// the dispute window; approving the reporter later does not change that.
#[tokio::test]
async fn evidence_from_a_reporter_the_dao_did_not_approve_is_the_daos() {
    let w = World::new().await;
    let hub = w.hub.account();
    let stranger = w.stranger.account();
    let worker = B256::repeat_byte(0x21);
    w.hub.attach_worker(worker).await.unwrap();
    let hash = B256::repeat_byte(0xee);
    // A 1-wei job of 4 chunks, opened by the stranger, naming itself the reporter.
    let forged = NewJob {
        price_per_unit: wei(1),
        units_per_chunk_max: 1,
        chunks: 4,
        reporter: stranger,
        lasts: Duration::from_secs(DAY),
        deposit: wei(1),
        token: None,
    };
    let (job, _) = w.stranger.create_job(&forged).await.unwrap();
    refused(w.stranger.submit_evidence(job, 4, worker, hash, vec![]).await, "EvidenceChunkOutOfRange");
    refused(w.stranger.submit_evidence(job, u32::MAX, worker, hash, vec![]).await, "EvidenceChunkOutOfRange");
    let mut ids = Vec::new();
    for chunk in 0..4 {
        ids.push(w.stranger.submit_evidence(job, chunk, worker, hash, vec![]).await.unwrap().0);
    }
    let stored = registry(&w.dao).evidence(ids[0]).call().await.unwrap();
    assert_eq!(
        (stored.requester, stored.reporter, stored.byDao, stored.reporterApproved),
        (stranger, stranger, false, false)
    );
    assert_eq!(w.dao.hub(hub).await.unwrap().evidence_pending, 4);

    w.dao.advance_time(7 * DAY).await.unwrap();
    for who in [&w.stranger, &w.hub, &w.requester, &w.reporter] {
        refused(who.execute_slash(ids[0]).await, "ReporterNotApproved");
    }
    // Approval given after the evidence was submitted does not count.
    w.dao.set_reporter_approved(stranger, true).await.unwrap();
    let refusal = w.stranger.execute_slash(ids[0]).await.unwrap_err();
    assert_eq!(refusal.revert_name(), Some("ReporterNotApproved"), "{refusal}");
    assert!(refusal.to_string().contains("only the DAO may execute it"), "{refusal}");
    w.dao.set_reporter_approved(stranger, false).await.unwrap();
    // The DAO dismisses it, although the window is over...
    w.dao.dismiss_evidence(ids[0]).await.unwrap();
    refused(w.dao.execute_slash(ids[0]).await, "EvidenceNotOpen");
    // ...or executes it, if it holds up.
    w.dao.execute_slash(ids[1]).await.unwrap();
    assert_eq!(w.dao.hub(hub).await.unwrap().stake, ether("9 ether"));
    assert_eq!(w.dao.claimable(stranger).await.unwrap(), ether("1 ether"), "requester and reporter");
    for id in &ids[2..] {
        w.dao.dismiss_evidence(*id).await.unwrap();
    }
    assert_eq!(w.dao.hub(hub).await.unwrap().evidence_pending, 0);

    // A reporter whose approval is withdrawn: its open evidence becomes the DAO's as well.
    w.dao.set_reporter_approved(w.reporter.account(), true).await.unwrap();
    let real = w.eth_job(10, ether("0.01 ether"), ether("0.1 ether")).await;
    let (id, _) = w.reporter.submit_evidence(real, 3, worker, hash, vec![]).await.unwrap();
    let stored = registry(&w.dao).evidence(id).call().await.unwrap();
    assert_eq!((stored.byDao, stored.reporterApproved), (false, true));
    w.dao.set_reporter_approved(w.reporter.account(), false).await.unwrap();
    w.dao.advance_time(7 * DAY).await.unwrap();
    refused(w.stranger.execute_slash(id).await, "ReporterNotApproved");
    w.dao.dismiss_evidence(id).await.unwrap();
    // Evidence anyone may execute cannot be dismissed once its window is over.
    w.dao.set_reporter_approved(w.reporter.account(), true).await.unwrap();
    let (id, _) = w.reporter.submit_evidence(real, 4, worker, hash, vec![]).await.unwrap();
    w.dao.advance_time(7 * DAY).await.unwrap();
    refused(w.dao.dismiss_evidence(id).await, "DisputeWindowClosed");
    w.requester.execute_slash(id).await.unwrap();
    assert_eq!(w.dao.hub(hub).await.unwrap().stake, ether("8.1 ether"));
}

/// A hub cannot shrink its stake ahead of an honest slash by accusing its own worker through a
/// job of its own and executing that evidence first: the stake would only move to itself.
#[tokio::test]
async fn a_hub_cannot_slash_itself_ahead_of_an_honest_slash() {
    let w = World::new().await;
    let hub = w.hub.account();
    let worker = B256::repeat_byte(0x22);
    w.hub.attach_worker(worker).await.unwrap();
    let hash = B256::repeat_byte(0xee);
    w.dao.set_reporter_approved(w.reporter.account(), true).await.unwrap();
    let job = w.eth_job(10, ether("0.01 ether"), ether("0.1 ether")).await;
    let (honest, _) = w.reporter.submit_evidence(job, 0, worker, hash, vec![]).await.unwrap();

    // The hub's own job: it is the requester and the reporter.
    let own = NewJob {
        price_per_unit: wei(1),
        units_per_chunk_max: 1,
        chunks: 8,
        reporter: hub,
        lasts: Duration::from_secs(DAY),
        deposit: wei(1),
        token: None,
    };
    let (own, _) = w.hub.create_job(&own).await.unwrap();
    let mut ids = Vec::new();
    for chunk in 0..8 {
        ids.push(w.hub.submit_evidence(own, chunk, worker, hash, vec![]).await.unwrap().0);
    }
    assert_eq!(w.dao.hub(hub).await.unwrap().evidence_pending, 9);
    w.dao.advance_time(7 * DAY).await.unwrap();
    for id in &ids {
        refused(w.hub.execute_slash(*id).await, "ReporterNotApproved");
        refused(w.stranger.execute_slash(*id).await, "ReporterNotApproved");
    }
    // The honest slash takes 10 % of the whole stake.
    w.stranger.execute_slash(honest).await.unwrap();
    assert_eq!(w.dao.hub(hub).await.unwrap().stake, ether("9 ether"));
    assert_eq!(w.dao.claimable(w.requester.account()).await.unwrap(), ether("0.8 ether"));
    assert_eq!(w.dao.claimable(hub).await.unwrap(), U256::ZERO);
    // The self-accusations keep the stake in until the DAO dismisses them.
    w.hub.request_unstake().await.unwrap();
    w.dao.advance_time(14 * DAY).await.unwrap();
    refused(w.hub.withdraw_stake(wei(1)).await, "EvidencePending");
    for id in &ids {
        w.dao.dismiss_evidence(*id).await.unwrap();
    }
    w.hub.withdraw_stake(wei(1)).await.unwrap();
}

/// During a lock (Suspected or Punished) only the DAO executes a slash, even on evidence anyone
/// could execute otherwise; once the lock is over, anyone again.
#[tokio::test]
async fn slashing_a_locked_hub_is_the_daos() {
    let w = World::new().await;
    let hub = w.hub.account();
    let worker = B256::repeat_byte(0x23);
    w.hub.attach_worker(worker).await.unwrap();
    let hash = B256::repeat_byte(0xee);
    w.dao.set_reporter_approved(w.reporter.account(), true).await.unwrap();
    let job = w.eth_job(10, ether("0.01 ether"), ether("0.1 ether")).await;
    let (first, _) = w.reporter.submit_evidence(job, 0, worker, hash, vec![]).await.unwrap();
    let (second, _) = w.reporter.submit_evidence(job, 1, worker, hash, vec![]).await.unwrap();
    w.dao.suspect(hub).await.unwrap();
    w.dao.punish(hub, ether("1 ether")).await.unwrap();
    assert_eq!(w.dao.hub(hub).await.unwrap().state, HubState::Punished);
    w.dao.advance_time(7 * DAY).await.unwrap();
    for who in [&w.stranger, &w.requester, &w.reporter, &w.hub] {
        refused(who.execute_slash(first).await, "HubLocked");
    }
    w.dao.execute_slash(first).await.unwrap();
    assert_eq!(w.dao.hub(hub).await.unwrap().stake, ether("8.1 ether"));
    w.dao.advance_time(LOCK).await.unwrap();
    w.stranger.execute_slash(second).await.unwrap();
    assert_eq!(w.dao.hub(hub).await.unwrap().stake, ether("7.29 ether"));
    let slashes = ether("0.9 ether") + ether("0.81 ether");
    assert_eq!(w.dao.claimable(w.reporter.account()).await.unwrap(), slashes * wei(2000) / wei(10_000));
    assert_eq!(w.dao.claimable(w.requester.account()).await.unwrap(), slashes * wei(8000) / wei(10_000));
}

/// An ERC-20 job: the deposit, the payment, the hub's withdrawal and the refund move tokens,
/// never ETH; releaseEarly must list the token and charges it the fee too.
#[tokio::test]
async fn token_job_and_the_token_list_of_release_early() {
    let w = World::new().await;
    let hub = w.hub.account();
    let (registry_address, escrow_address) = (w.dao.deployment().registry, w.dao.deployment().escrow);
    let tst = w.deploy_token().await;
    let tst_address = *tst.address();
    let as_requester = token(&w.requester, tst_address);
    w.requester.send("TestToken.mint", as_requester.mint(w.requester.account(), ether("1000 ether"))).await.unwrap();
    let deposit = ether("15 ether");
    let new = NewJob {
        price_per_unit: ether("1.5 ether"),
        units_per_chunk_max: 1,
        chunks: 10,
        reporter: w.reporter.account(),
        lasts: Duration::from_secs(DAY),
        deposit,
        token: Some(tst_address),
    };
    refused(w.requester.create_job(&new).await, "TransferFailed");
    w.requester.send("TestToken.approve", as_requester.approve(escrow_address, deposit)).await.unwrap();
    let eth_before = w.dao.balance(escrow_address).await.unwrap();
    let (job, _) = w.requester.create_job(&new).await.unwrap();
    assert_eq!(token_balance(&w.dao, tst_address, escrow_address).await, deposit);
    assert_eq!(w.dao.balance(escrow_address).await.unwrap(), eth_before);
    let stored = w.dao.job(job).await.unwrap();
    assert_eq!((stored.token, stored.deposit), (tst_address, deposit));

    w.pay(job, &[0, 1, 2, 3], hub).await.unwrap();
    assert_eq!(token_balance(&w.dao, tst_address, registry_address).await, ether("6 ether"));
    assert_eq!(token_account(&w.dao, hub, tst_address).await, (ether("6 ether"), U256::ZERO));
    assert_eq!(w.dao.hub(hub).await.unwrap().balance, U256::ZERO, "no ETH was earned");
    assert_eq!(token_accounts(&w.dao, hub).await, 1);
    w.hub.send("Registry.withdraw", registry(&w.hub).withdraw(tst_address, ether("2 ether"))).await.unwrap();
    assert_eq!(token_balance(&w.dao, tst_address, hub).await, ether("2 ether"));
    assert_eq!(token_account(&w.dao, hub, tst_address).await, (ether("4 ether"), U256::ZERO));

    // releaseEarly names every token held, ascending, each once, and no token without funds.
    let other = *w.deploy_token().await.address();
    w.dao.suspect(hub).await.unwrap();
    refused(w.hub.release_early(vec![]).await, "TokenListIncomplete");
    refused(w.hub.release_early(vec![tst_address, tst_address]).await, "TokenListIncomplete");
    refused(w.hub.release_early(vec![other]).await, "TokenListIncomplete");
    refused(w.hub.release_early(vec![Address::ZERO]).await, "TokenListIncomplete");
    let token_fee = early_fee(ether("4 ether"));
    let eth_fee = early_fee(ether("10 ether"));
    assert_eq!(registry(&w.dao).earlyReleaseFee(hub, tst_address).call().await.unwrap(), token_fee);
    w.hub.release_early(vec![tst_address]).await.unwrap();
    assert_eq!(claimable_token(&w.dao, w.dao.account(), tst_address).await, token_fee);
    assert_eq!(w.dao.claimable(w.dao.account()).await.unwrap(), eth_fee);
    assert_eq!(token_account(&w.dao, hub, tst_address).await, (ether("4 ether") - token_fee, U256::ZERO));
    assert_eq!(w.dao.hub(hub).await.unwrap().stake, ether("10 ether") - eth_fee);

    // The refund goes back in the token: deposit minus what was paid.
    refused(w.stranger.refund(job).await, "RefundTooEarly");
    w.reporter.complete(job).await.unwrap();
    let before = token_balance(&w.dao, tst_address, w.requester.account()).await;
    w.stranger.refund(job).await.unwrap();
    assert_eq!(token_balance(&w.dao, tst_address, w.requester.account()).await - before, ether("9 ether"));
    assert_eq!(token_balance(&w.dao, tst_address, escrow_address).await, U256::ZERO);
    refused(w.stranger.refund(job).await, "WrongJobStatus");

    w.dao.send("Registry.claim", registry(&w.dao).claim(tst_address)).await.unwrap();
    assert_eq!(token_balance(&w.dao, tst_address, w.dao.account()).await, token_fee);
    assert_eq!(token_balance(&w.dao, tst_address, registry_address).await, ether("4 ether") - token_fee);
    let rest = ether("4 ether") - token_fee;
    w.hub.send("Registry.withdraw", registry(&w.hub).withdraw(tst_address, rest)).await.unwrap();
    assert_eq!(token_accounts(&w.dao, hub).await, 0);
    assert_eq!(token_balance(&w.dao, tst_address, registry_address).await, U256::ZERO);
}

/// The registry counts the tokens a hub holds so releaseEarly can charge each of them. The count
/// must follow real funds: a zero withdrawal of a token the hub never held must not lower it (or
/// the hub could leave a token off its list and out of the fee), and a zero credit must not raise
/// it (or the hub could never list its tokens and never release early).
#[tokio::test]
async fn token_count_follows_real_funds() {
    let w = World::new().await;
    let hub = w.hub.account();
    let escrow_address = w.dao.deployment().escrow;
    let mut tokens = Vec::new();
    let mut jobs = Vec::new();
    for _ in 0..2 {
        let t = *w.deploy_token().await.address();
        let as_requester = token(&w.requester, t);
        w.requester.send("TestToken.mint", as_requester.mint(w.requester.account(), ether("10 ether"))).await.unwrap();
        w.requester.send("TestToken.approve", as_requester.approve(escrow_address, ether("10 ether"))).await.unwrap();
        let new = NewJob {
            price_per_unit: ether("1 ether"),
            units_per_chunk_max: 1,
            chunks: 10,
            reporter: w.reporter.account(),
            lasts: Duration::from_secs(DAY),
            deposit: ether("10 ether"),
            token: Some(t),
        };
        jobs.push(w.requester.create_job(&new).await.unwrap().0);
        tokens.push(t);
    }
    let (held, spam) = (tokens[0], tokens[1]);
    w.pay(jobs[0], &[0], hub).await.unwrap();
    assert_eq!(token_accounts(&w.dao, hub).await, 1);

    // A zero withdrawal of a token the hub never held.
    w.hub.send("Registry.withdraw", registry(&w.hub).withdraw(spam, U256::ZERO)).await.unwrap();
    w.hub.send("Registry.withdraw", registry(&w.hub).withdraw(held, U256::ZERO)).await.unwrap();
    assert_eq!(token_accounts(&w.dao, hub).await, 1);
    // A chunk paid with zero units in a token the hub never held.
    let zero = Batch { job: jobs[1], chunks: vec![0], hubs: vec![hub], chunk_counts: vec![1], units: vec![0] };
    w.reporter.pay_batch(&zero).await.unwrap();
    assert_eq!(token_account(&w.dao, hub, spam).await, (U256::ZERO, U256::ZERO));
    assert_eq!(token_accounts(&w.dao, hub).await, 1);

    w.dao.suspect(hub).await.unwrap();
    refused(w.hub.release_early(vec![]).await, "TokenListIncomplete");
    w.hub.release_early(vec![held]).await.unwrap();
    // The fee leaves funds, so the count stays; withdrawing them all brings it to zero.
    assert_eq!(token_accounts(&w.dao, hub).await, 1);
    let rest = token_account(&w.dao, hub, held).await.0;
    assert_eq!(rest, ether("1 ether") - early_fee(ether("1 ether")));
    w.hub.send("Registry.withdraw", registry(&w.hub).withdraw(held, rest)).await.unwrap();
    assert_eq!(token_accounts(&w.dao, hub).await, 0);
    w.dao.suspect(hub).await.unwrap();
    w.hub.release_early(vec![]).await.unwrap();
}

#[tokio::test]
async fn escrow_pays_each_chunk_once_within_the_deposit() {
    let w = World::new().await;
    let hub = w.hub.account();
    let escrow_address = w.dao.deployment().escrow;
    let price = wei(1_000_000_007);
    let reporter = w.reporter.account();
    let base = NewJob {
        price_per_unit: price,
        units_per_chunk_max: 1,
        chunks: 10,
        reporter,
        lasts: Duration::from_secs(DAY),
        deposit: price * wei(10),
        token: None,
    };
    // Jobs that cannot be opened.
    for bad in [
        NewJob { price_per_unit: U256::ZERO, ..base.clone() },
        NewJob { units_per_chunk_max: 0, ..base.clone() },
        NewJob { chunks: 0, ..base.clone() },
        NewJob { chunks: (1 << 24) + 1, ..base.clone() },
        NewJob { reporter: Address::ZERO, ..base.clone() },
        NewJob { lasts: Duration::ZERO, ..base.clone() },
        NewJob { deposit: U256::ZERO, ..base.clone() },
    ] {
        refused(w.requester.create_job(&bad).await, "BadJob");
    }
    let deadline = w.dao.now().await.unwrap() + DAY;
    let e = escrow(&w.requester);
    let eth_with_amount = e.createJob(ETH, 1, 1, 1, reporter, deadline, wei(1)).value(wei(1));
    refused(w.requester.send("JobEscrow.createJob", eth_with_amount).await, "BadJob");
    assert_eq!(w.dao.balance(escrow_address).await.unwrap(), U256::ZERO);

    let (job, _) = w.requester.create_job(&base).await.unwrap();
    let reporter_chain = &w.reporter;
    let raw = |chunks: Vec<u32>, hubs: Vec<Address>, counts: Vec<u32>, units: Vec<u64>| {
        let e = escrow(reporter_chain);
        async move {
            reporter_chain.send("JobEscrow.payBatch", e.payBatch(U256::from(job), chunks, hubs, counts, units)).await
        }
    };
    w.pay(job, &[2, 1], hub).await.unwrap();
    // A resent chunk reverts the whole batch: chunk 3, before it in the batch, stays unpaid.
    refused(raw(vec![3, 2], vec![hub], vec![2], vec![2]).await, "ChunkAlreadyPaid");
    refused(w.pay(job, &[4, 4], hub).await, "ChunkAlreadyPaid");
    assert_eq!(w.dao.paid_chunks(job, &[0, 1, 2, 3, 4]).await.unwrap(), vec![false, true, true, false, false]);
    assert_eq!(w.dao.job(job).await.unwrap().paid, price * wei(2));
    assert_eq!(w.dao.hub(hub).await.unwrap().balance, price * wei(2));
    refused(w.pay(job, &[10], hub).await, "ChunkOutOfRange");
    refused(w.pay(job, &[u32::MAX], hub).await, "ChunkOutOfRange");
    w.pay(job, &[9, 3], hub).await.unwrap();

    // Batches whose shape does not add up.
    refused(raw(vec![5], vec![hub], vec![2], vec![1]).await, "BadBatch");
    refused(raw(vec![5, 6], vec![hub], vec![1], vec![1]).await, "BadBatch");
    refused(raw(vec![5], vec![], vec![], vec![]).await, "BadBatch");
    refused(raw(vec![5], vec![hub], vec![1, 0], vec![1]).await, "BadBatch");
    refused(raw(vec![5], vec![hub], vec![1], vec![1, 0]).await, "BadBatch");
    refused(raw((0..1025).collect(), vec![hub], vec![1025], vec![1025]).await, "BadBatch");
    refused(raw(vec![5], vec![hub; 65], [vec![1], vec![0; 64]].concat(), vec![0; 65]).await, "BadBatch");
    refused(raw(vec![5], vec![hub], vec![1], vec![2]).await, "TooManyUnits");
    // Two hubs in one batch: each gets its own units.
    w.hub2.register(ether(STAKE_MIN)).await.unwrap();
    w.dao.set_whitelisted(w.hub2.account(), true).await.unwrap();
    raw(vec![5, 7, 6], vec![hub, w.hub2.account()], vec![2, 1], vec![2, 1]).await.unwrap();
    assert_eq!(w.dao.hub(w.hub2.account()).await.unwrap().balance, price);
    assert_eq!(w.dao.hub(hub).await.unwrap().balance, price * wei(6));
    refused(w.pay(999, &[0], hub).await, "UnknownJob");

    // Metered jobs: at most unitsPerChunkMax units a chunk, and never past the deposit.
    let metered = NewJob { units_per_chunk_max: 3, deposit: price * wei(8), ..base.clone() };
    let (metered, _) = w.requester.create_job(&metered).await.unwrap();
    let units = |chunks: Vec<u32>, units: u64| Batch {
        job: metered,
        chunk_counts: vec![chunks.len() as u32],
        chunks,
        hubs: vec![hub],
        units: vec![units],
    };
    refused(w.reporter.pay_batch(&units(vec![0, 1], 7)).await, "TooManyUnits");
    w.reporter.pay_batch(&units(vec![0, 1], 6)).await.unwrap();
    refused(w.reporter.pay_batch(&units(vec![2], 3)).await, "DepositExceeded");
    assert!(!w.dao.paid_chunks(metered, &[2]).await.unwrap()[0], "the refused batch marked nothing");
    w.reporter.pay_batch(&units(vec![2], 2)).await.unwrap();
    refused(w.reporter.pay_batch(&units(vec![3], 1)).await, "DepositExceeded");
    assert_eq!(w.dao.job(metered).await.unwrap().paid, price * wei(8));

    // Refunds: only after completion or the deadline, once, to the requester whoever asks.
    refused(w.requester.refund(job).await, "RefundTooEarly");
    refused(w.stranger.refund(job).await, "RefundTooEarly");
    w.reporter.complete(job).await.unwrap();
    refused(w.reporter.complete(job).await, "WrongJobStatus");
    refused(w.pay(job, &[8], hub).await, "WrongJobStatus");
    let paid = price * wei(7);
    assert_eq!(w.dao.job(job).await.unwrap().paid, paid);
    let before = w.dao.balance(w.requester.account()).await.unwrap();
    w.stranger.refund(job).await.unwrap();
    assert_eq!(w.dao.balance(w.requester.account()).await.unwrap() - before, price * wei(10) - paid);
    refused(w.stranger.refund(job).await, "WrongJobStatus");
    refused(w.requester.refund(job).await, "WrongJobStatus");
    refused(w.reporter.complete(job).await, "WrongJobStatus");
    refused(w.pay(job, &[8], hub).await, "WrongJobStatus");
    let closed = w.dao.job(job).await.unwrap();
    assert_eq!((closed.status, closed.refunded), (JobStatus::Closed, price * wei(3)));

    // The deadline lets the requester refund a job that was never completed.
    let (late, _) = w.requester.create_job(&base).await.unwrap();
    w.pay(late, &[0], hub).await.unwrap();
    refused(w.requester.refund(late).await, "RefundTooEarly");
    w.dao.advance_time(DAY + 1).await.unwrap();
    assert_eq!(arrived(&w.requester, w.requester.refund(late)).await, price * wei(9));
    refused(w.requester.refund(late).await, "WrongJobStatus");
    refused(w.pay(late, &[1], hub).await, "WrongJobStatus");
    // The metered job is still open and holds nothing more: the escrow holds exactly nothing.
    assert_eq!(w.dao.balance(escrow_address).await.unwrap(), U256::ZERO);
    assert_eq!(arrived(&w.requester, w.requester.refund(metered)).await, U256::ZERO);
}

/// The selector of `Reentrancy()`, which both contracts share through Guard.
fn reentrancy() -> Vec<u8> {
    assert_eq!(Registry::Reentrancy::SELECTOR, JobEscrow::Reentrancy::SELECTOR);
    Registry::Reentrancy::SELECTOR.to_vec()
}

#[tokio::test]
async fn a_hub_cannot_reenter_withdraw() {
    let w = World::new().await;
    let registry_address = w.dao.deployment().registry;
    let contract = Reenterer::deploy(w.stranger.provider().clone()).await.unwrap();
    let reenterer = *contract.address();
    let act = |value: U256, data: Vec<u8>| contract.act(registry_address, value, data.into()).value(value);
    w.stranger.send("Reenterer.act", act(ether(STAKE_MIN), Registry::registerCall {}.abi_encode())).await.unwrap();
    w.dao.set_whitelisted(reenterer, true).await.unwrap();
    let price = ether("1 ether");
    let job = w.eth_job(4, price, price * wei(4)).await;
    w.pay(job, &[0, 1, 2], reenterer).await.unwrap();

    // The re-entry would withdraw again; the balance is there for it. The guard refuses it.
    let withdraw = Registry::withdrawCall { token: ETH, amount: price }.abi_encode();
    w.stranger
        .send("Reenterer.setReentry", contract.setReentry(registry_address, withdraw.clone().into()))
        .await
        .unwrap();
    w.stranger.send("Reenterer.act", act(U256::ZERO, withdraw)).await.unwrap();
    assert!(contract.reentered().call().await.unwrap(), "receive() did call back in");
    assert!(!contract.reentryOk().call().await.unwrap());
    assert_eq!(contract.reentryError().call().await.unwrap().to_vec(), reentrancy());
    assert_eq!(contract.received().call().await.unwrap(), price, "paid exactly once");
    assert_eq!(w.dao.balance(reenterer).await.unwrap(), price);
    assert_eq!(w.dao.hub(reenterer).await.unwrap().balance, price * wei(2));
    assert_eq!(w.dao.balance(registry_address).await.unwrap(), ether("10 ether") + ether(STAKE_MIN) + price * wei(2));
}

#[tokio::test]
async fn a_requester_cannot_reenter_refund() {
    let w = World::new().await;
    let escrow_address = w.dao.deployment().escrow;
    let contract = Reenterer::deploy(w.stranger.provider().clone()).await.unwrap();
    let price = ether("0.25 ether");
    let deadline = w.dao.now().await.unwrap() + DAY;
    let create = JobEscrow::createJobCall {
        token: ETH,
        pricePerUnit: 250_000_000_000_000_000,
        unitsPerChunkMax: 1,
        chunksMax: 8,
        reporter: w.reporter.account(),
        deadline,
        amount: U256::ZERO,
    };
    let deposit = ether("2 ether");
    let act = contract.act(escrow_address, deposit, create.abi_encode().into()).value(deposit);
    w.stranger.send("Reenterer.act", act).await.unwrap();
    let job = 1;
    assert_eq!(w.dao.job(job).await.unwrap().requester, *contract.address());
    w.pay(job, &[0, 1, 2], w.hub.account()).await.unwrap();
    w.reporter.complete(job).await.unwrap();

    let refund = JobEscrow::refundCall { jobId: U256::from(job) }.abi_encode();
    w.stranger.send("Reenterer.setReentry", contract.setReentry(escrow_address, refund.into())).await.unwrap();
    w.stranger.refund(job).await.unwrap();
    assert!(contract.reentered().call().await.unwrap(), "receive() did call back in");
    assert!(!contract.reentryOk().call().await.unwrap());
    assert_eq!(contract.reentryError().call().await.unwrap().to_vec(), reentrancy());
    let rest = deposit - price * wei(3);
    assert_eq!(contract.received().call().await.unwrap(), rest, "refunded exactly once");
    assert_eq!(w.dao.balance(*contract.address()).await.unwrap(), rest);
    assert_eq!(w.dao.job(job).await.unwrap().refunded, rest);
    assert_eq!(w.dao.balance(escrow_address).await.unwrap(), U256::ZERO);
}
