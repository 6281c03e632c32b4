//! An MD chunk run link by link gives the bytes of one run, records the state hash of every link,
//! and keeps every link's start state; the signing key is made once and kept.

use std::ops::ControlFlow;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64};

use upglobe_datasets::BlobStore;
use upglobe_kernels::lattice::FccLattice;
use upglobe_kernels::{Checkpoint, Device, RunOptions, State, engine};
use upglobe_protocol::messages::Output;
use upglobe_worker::cheat::Cheat;
use upglobe_worker::execute::{MdChunk, run_md};

fn melt() -> State {
    State::from_physical(FccLattice { cells: [4, 4, 4], seed: 17, ..FccLattice::in_lj(4) }.build()).unwrap()
}

fn chunk(store: &BlobStore, state: &State, steps: u64, chain_every: u64) -> MdChunk {
    let input = Checkpoint::encode(state);
    let input_blob = store.put(&input).unwrap();
    MdChunk { input, input_blob, steps, thermo_every: 20, thermo_at_start: true, chain_every }
}

fn run(store: &BlobStore, md: &MdChunk, cheat: Cheat) -> upglobe_worker::execute::Executed {
    let device = Device::Cpu { threads: 1 };
    let pinned = Mutex::new(Vec::new());
    let executed = run_md(store, md, &device, &AtomicBool::new(false), &AtomicU64::new(0), &pinned, cheat).unwrap();
    // Every state it wrote was pinned as it was written.
    assert_eq!(pinned.lock().unwrap().len(), executed.link_starts.len());
    executed
}

#[test]
fn a_chunk_in_links_gives_the_bytes_of_one_run() {
    let dir = tempfile::tempdir().unwrap();
    let store = BlobStore::open(dir.path().join("blobs")).unwrap();
    let state = melt();
    let mut whole = engine(&Device::Cpu { threads: 1 }).unwrap();
    let options = RunOptions { thermo_every: 20, thermo_at_start: true, ..RunOptions::new(100) };
    let reference = whole.run(&state, &options, &mut |_| ControlFlow::Continue(())).unwrap();
    let md = chunk(&store, &state, 100, 10);
    let executed = run(&store, &md, Cheat::Honest);
    let Output::Md { state_hash, checkpoint, thermo, chain, .. } = &executed.output else { panic!("md output") };
    assert_eq!(*state_hash, Checkpoint::hash(&reference.state).0, "links change nothing");
    assert_eq!(chain.len(), 10);
    assert_eq!(chain.last(), Some(state_hash));
    let steps: Vec<u64> = thermo.iter().map(|t| t.step).collect();
    assert_eq!(steps, reference.thermo.iter().map(|t| t.step).collect::<Vec<_>>(), "the same thermo lines, once each");
    assert_eq!(store.get(checkpoint).unwrap(), Checkpoint::encode(&reference.state));
    // Link j starts from the state whose hash is chain[j - 1].
    assert_eq!(executed.link_starts.len(), 10);
    assert_eq!(executed.link_starts[0], md.input_blob);
    for (j, start) in executed.link_starts.iter().enumerate().skip(1) {
        let bytes = store.get(start).unwrap();
        assert_eq!(Checkpoint::stored_hash(&bytes).unwrap().0, chain[j - 1]);
    }
    // Re-running link 7 alone from its start reproduces its hash: what a verifier does.
    let start = Checkpoint::decode(&store.get(&executed.link_starts[7]).unwrap()).unwrap();
    let link = whole.run(&start, &RunOptions::new(10), &mut |_| ControlFlow::Continue(())).unwrap();
    assert_eq!(Checkpoint::hash(&link.state).0, chain[7]);
}

#[test]
fn a_chain_that_does_not_divide_the_chunk_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store = BlobStore::open(dir.path().join("blobs")).unwrap();
    let md = chunk(&store, &melt(), 100, 30);
    let device = Device::Cpu { threads: 1 };
    let pinned = Mutex::new(Vec::new());
    let error = run_md(&store, &md, &device, &AtomicBool::new(false), &AtomicU64::new(0), &pinned, Cheat::Honest)
        .err()
        .expect("refused");
    assert!(error.contains("does not divide"), "{error}");
}

#[test]
fn cheats_change_the_chain_where_they_say() {
    let dir = tempfile::tempdir().unwrap();
    let store = BlobStore::open(dir.path().join("blobs")).unwrap();
    let md = chunk(&store, &melt(), 100, 10);
    let chain = |cheat| match run(&store, &md, cheat).output {
        Output::Md { chain, state_hash, .. } => (chain, state_hash),
        _ => unreachable!(),
    };
    let (honest, honest_state) = chain(Cheat::Honest);
    let (wrong, wrong_state) = chain(Cheat::Wrong);
    assert_eq!(honest[..5], wrong[..5], "right up to the middle link");
    assert!((5..10).all(|j| honest[j] != wrong[j]), "wrong from the middle link on");
    assert_ne!(honest_state, wrong_state);
    let (forged, forged_state) = chain(Cheat::ForgeLink);
    assert_ne!(forged[0], honest[0]);
    assert_eq!(forged[1..], honest[1..]);
    assert_eq!(forged_state, honest_state);
}

#[test]
fn the_signing_key_is_made_once_and_a_corrupt_one_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let first = upglobe_worker::load_or_create_key(dir.path()).unwrap().public();
    let again = upglobe_worker::load_or_create_key(dir.path()).unwrap().public();
    assert_eq!(first, again);
    std::fs::write(dir.path().join("signing.key"), b"garbage").unwrap();
    let error = upglobe_worker::load_or_create_key(dir.path()).err().unwrap().to_string();
    assert!(error.contains("signing.key") && error.contains("Ed25519"), "{error}");
}
