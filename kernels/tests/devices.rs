//! The promise of the kernels: the same inputs give the same state hash on CPU with 1 and 2 threads
//! and on wgpu (lavapipe in CI, any GPU elsewhere), for several kinds of systems.

use std::ops::ControlFlow;

use upglobe_kernels::lattice::FccLattice;
use upglobe_kernels::system::PhysicalSystem;
use upglobe_kernels::{Checkpoint, Device, Engine, Langevin, PairCoeff, RunOptions, State, engine};

fn run(engine: &mut dyn Engine, state: &State, steps: u64) -> (State, Vec<upglobe_kernels::Thermo>) {
    let mut options = RunOptions::new(steps);
    options.thermo_every = 10;
    options.thermo_at_start = true;
    let output = engine.run(state, &options, &mut |_| ControlFlow::Continue(())).expect("run");
    (output.state, output.thermo)
}

fn systems() -> Vec<(&'static str, PhysicalSystem)> {
    let melt = FccLattice { cells: [6, 6, 6], ..FccLattice::in_lj(6) }.build();
    let mut shifted = FccLattice { cells: [5, 6, 7], density: 0.7, temperature: 2.0, seed: 11, ..FccLattice::in_lj(5) };
    shifted.shift = true;
    shifted.pair.cutoff = 3.0;
    let mut thermostat = FccLattice { cells: [5, 5, 5], seed: 3, ..FccLattice::in_lj(5) };
    thermostat.langevin = Some(Langevin { temperature: 1.0, damping: 0.5, seed: 99 });
    let mut mixture = FccLattice { cells: [6, 5, 5], temperature: 1.2, seed: 5, ..FccLattice::in_lj(6) }.build();
    mixture.params.masses = vec![1.0, 2.5];
    let pair = |epsilon, sigma, cutoff| PairCoeff { epsilon, sigma, cutoff };
    mixture.params.pair_coeffs =
        vec![pair(1.0, 1.0, 2.5), pair(0.8, 1.05, 2.6), pair(0.8, 1.05, 2.6), pair(0.5, 1.1, 2.75)];
    mixture.types.iter_mut().enumerate().for_each(|(i, t)| *t = (i % 3 == 0) as u32);
    // A box too small for three cells of list radius: exercises the brute-force/deduplicated paths.
    let small = FccLattice { cells: [3, 3, 3], density: 0.8, ..FccLattice::in_lj(3) }.build();
    vec![
        ("melt", melt),
        ("shifted", shifted.build()),
        ("langevin", thermostat.build()),
        ("mixture", mixture),
        ("small box", small),
    ]
}

fn gpu_available() -> bool {
    let available = !upglobe_kernels::gpu::adapters().is_empty();
    if !available && std::env::var_os("UPGLOBE_REQUIRE_GPU").is_some() {
        panic!("UPGLOBE_REQUIRE_GPU is set but no wgpu adapter was found (install mesa-vulkan-drivers)");
    }
    available
}

#[test]
fn cpu_threads_and_wgpu_agree_bit_for_bit() {
    let mut engines: Vec<Box<dyn Engine>> =
        vec![engine(&Device::Cpu { threads: 1 }).unwrap(), engine(&Device::Cpu { threads: 2 }).unwrap()];
    if gpu_available() {
        engines.push(engine(&Device::Wgpu { adapter: None }).unwrap());
    }
    for (name, system) in systems() {
        let state = State::from_physical(system).unwrap();
        let runs: Vec<_> = engines.iter_mut().map(|e| (e.describe(), run(e.as_mut(), &state, 60))).collect();
        let reference = Checkpoint::hash(&runs[0].1.0);
        for (engine_name, (final_state, thermo)) in &runs {
            assert_eq!(Checkpoint::hash(final_state), reference, "{name}: {engine_name} differs from {}", runs[0].0);
            assert_eq!(thermo, &runs[0].1.1, "{name}: thermo of {engine_name}");
        }
        assert_ne!(Checkpoint::hash(&state), reference, "{name}: the state must have changed");
    }
}

#[test]
fn resuming_equals_running_in_one_go() {
    let mut engines: Vec<Box<dyn Engine>> = vec![engine(&Device::Cpu { threads: 2 }).unwrap()];
    if gpu_available() {
        engines.push(engine(&Device::Wgpu { adapter: None }).unwrap());
    }
    let (_, system) = systems().swap_remove(2);
    let state = State::from_physical(system).unwrap();
    let whole = run(engines[0].as_mut(), &state, 50).0;
    for first in engines.iter_mut() {
        let middle = run(first.as_mut(), &state, 20).0;
        // Through the checkpoint format, as a worker would.
        let restored = Checkpoint::decode(&Checkpoint::encode(&middle)).unwrap();
        let mut second = engine(&Device::Cpu { threads: 1 }).unwrap();
        let end = run(second.as_mut(), &restored, 30).0;
        assert_eq!(Checkpoint::hash(&end), Checkpoint::hash(&whole), "{} then cpu", first.describe());
        assert_eq!(end.step, 50);
    }
}
