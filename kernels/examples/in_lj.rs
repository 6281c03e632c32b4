//! Runs LAMMPS' in.lj data file on the CPU engine: `cargo run --release --example in_lj -- DATA STEPS THREADS`.
use std::ops::ControlFlow;
use upglobe_kernels::lammps::{DataFile, Settings};
use upglobe_kernels::{Checkpoint, RunOptions, State};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let path = std::path::Path::new(&args[1]);
    let steps: u64 = args[2].parse().unwrap();
    let device = &args[3];
    let data = DataFile::read(path).unwrap();
    let system = data.to_system(&args[1], &Settings { cutoff: 2.5, shift: false, timestep: 0.005 }).unwrap();
    let state = State::from_physical(system).unwrap();
    let device = if device == "gpu" {
        upglobe_kernels::Device::Wgpu { adapter: None }
    } else {
        upglobe_kernels::Device::Cpu { threads: device.parse().unwrap() }
    };
    let mut engine = upglobe_kernels::engine(&device).unwrap();
    eprintln!("{}", engine.describe());
    let mut options = RunOptions::new(steps);
    options.thermo_every = 50;
    options.thermo_at_start = true;
    if let Some(skin) = args.get(4) {
        options.skin = skin.parse().unwrap();
    }
    let start = std::time::Instant::now();
    let out = engine.run(&state, &options, &mut |_| ControlFlow::Continue(())).unwrap();
    let seconds = start.elapsed().as_secs_f64();
    for t in &out.thermo {
        println!("{:>6} {:.8} {:.8} {:.8} {:.8} {:.8}", t.step, t.temp, t.pe, t.ke, t.etotal, t.press);
    }
    println!(
        "hash {} builds {} time {:.3}s atom-steps/s {:.3e}",
        Checkpoint::hash(&out.state),
        out.neighbor_builds,
        seconds,
        (state.atoms() as f64 * steps as f64) / seconds
    );
}
