//! `upglobe md run`: a local single-machine run, the way a scientist uses `lmp -in`.

use std::ops::ControlFlow;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context as _, Result, bail};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;
use upglobe_datasets::h5md::{Observable, Trajectory};
use upglobe_kernels::cpu::THREADS_MAX;
use upglobe_kernels::lammps::{DataFile, Settings};
use upglobe_kernels::lattice::DENSITY_RANGE;
use upglobe_kernels::lattice::FccLattice;
use upglobe_kernels::system::{ATOMS_MAX, CUTOFF_RANGE, Range, STEP_MAX, TEMPERATURE_RANGE, TIMESTEP_RANGE};
use upglobe_kernels::{Checkpoint, Device, Event, PairCoeff, RunOptions, State, Thermo, engine};

use super::Context;
use super::results::frame;
use super::worker::parse_device;
use crate::flags;
use crate::output::{self, Format};

/// Lattice cells per edge: 4 atoms per cell and at most [`ATOMS_MAX`] atoms.
pub const LATTICE_CELLS: std::ops::RangeInclusive<usize> = 1..=LATTICE_CELLS_MAX;
const LATTICE_CELLS_MAX: usize = 645;
const _: () = assert!(4 * LATTICE_CELLS_MAX * LATTICE_CELLS_MAX * LATTICE_CELLS_MAX <= ATOMS_MAX);

/// A kernels' parameter range as the flag parser's range.
fn inclusive(range: Range) -> std::ops::RangeInclusive<f64> {
    range.min..=range.max
}

#[derive(clap::Subcommand)]
pub enum Command {
    /// Run MD locally from a LAMMPS data file, an H5MD frame, a generated lattice or a checkpoint.
    Run(RunArgs),
}

#[derive(clap::Args)]
pub struct RunArgs {
    /// A LAMMPS data file (write_data, atom_style atomic).
    #[arg(long, conflicts_with_all = ["lattice", "checkpoint", "h5md_system"])]
    lammps_data: Option<PathBuf>,
    /// Start from a frame of an H5MD file (with velocities), such as `upglobe results` writes.
    #[arg(long, conflicts_with_all = ["lattice", "checkpoint"])]
    h5md_system: Option<PathBuf>,
    /// Which frame of --h5md-system (default: the last).
    #[arg(long, requires = "h5md_system")]
    frame: Option<u64>,
    /// Generate a lattice instead (only fcc).
    #[arg(long, value_parser = ["fcc"], conflicts_with = "checkpoint")]
    lattice: Option<String>,
    /// Lattice unit cells per edge (1 to 645, so at most 2^30 atoms).
    #[arg(long, default_value_t = 20, value_parser = flags::integer(LATTICE_CELLS))]
    cells: usize,
    /// Lattice reduced density.
    #[arg(long, default_value_t = 0.8442, value_parser = flags::number(inclusive(DENSITY_RANGE)))]
    density: f64,
    /// Lattice initial temperature.
    #[arg(long, default_value_t = 1.44, value_parser = flags::number(0.0..=TEMPERATURE_RANGE.max))]
    temperature: f64,
    /// Lattice velocity seed.
    #[arg(long, default_value_t = 87287)]
    seed: u64,
    /// Continue from an UpGlobe checkpoint (all parameters come from it).
    #[arg(long)]
    checkpoint: Option<PathBuf>,
    /// Global lj/cut cutoff.
    #[arg(long, default_value_t = 2.5, value_parser = flags::number(inclusive(CUTOFF_RANGE)))]
    cutoff: f64,
    /// Shift pair energies to zero at the cutoff.
    #[arg(long)]
    shift: bool,
    /// Timestep (lj units).
    #[arg(long, default_value_t = 0.005, value_parser = flags::number(inclusive(TIMESTEP_RANGE)))]
    dt: f64,
    #[arg(long, value_parser = flags::integer(0..=STEP_MAX))]
    steps: u64,
    /// Thermo interval; 0 prints the first and last step only.
    #[arg(long, default_value_t = 0)]
    thermo: u64,
    /// cpu, wgpu or wgpu:N.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// CPU threads (0: all cores).
    #[arg(long, default_value_t = 0, value_parser = flags::integer(0..=THREADS_MAX))]
    threads: usize,
    /// Neighbour-list skin (speed only; results do not depend on it).
    #[arg(long, default_value_t = upglobe_kernels::engine::DEFAULT_SKIN, value_parser = flags::number(0.0..=CUTOFF_RANGE.max))]
    skin: f64,
    /// Write the final state as an UpGlobe checkpoint.
    #[arg(long)]
    write_checkpoint: Option<PathBuf>,
    /// Write the final state as a LAMMPS data file.
    #[arg(long)]
    write_data: Option<PathBuf>,
    /// Write the first and last frames and the thermo as H5MD.
    #[arg(long)]
    h5md: Option<PathBuf>,
    /// Plot the thermo (temperature, energies, pressure) as a PNG.
    #[arg(long, value_name = "FILE.png")]
    plot: Option<PathBuf>,
}

fn initial_state(args: &RunArgs) -> Result<State> {
    if let Some(path) = &args.checkpoint {
        let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
        return Checkpoint::decode(&bytes).with_context(|| path.display().to_string());
    }
    let settings = Settings { cutoff: args.cutoff, shift: args.shift, timestep: args.dt };
    if let Some(path) = &args.h5md_system {
        let pair = PairCoeff { epsilon: 1.0, sigma: 1.0, cutoff: args.cutoff };
        let system = upglobe_workflows::h5md_system(path, args.frame, &settings, pair).map_err(anyhow::Error::msg)?;
        return Ok(State::from_physical(system)?);
    }
    let system = match (&args.lammps_data, &args.lattice) {
        (Some(path), _) => DataFile::read(path)?.to_system(&path.display().to_string(), &settings)?,
        (None, Some(_)) => {
            let lattice = FccLattice {
                cells: [args.cells; 3],
                density: args.density,
                temperature: args.temperature,
                seed: args.seed,
                mass: 1.0,
                pair: PairCoeff { epsilon: 1.0, sigma: 1.0, cutoff: args.cutoff },
                shift: args.shift,
                timestep: args.dt,
                langevin: None,
            };
            lattice.validate()?;
            lattice.build()
        }
        (None, None) => bail!("give --lammps-data FILE, --h5md-system FILE, --lattice fcc or --checkpoint FILE"),
    };
    Ok(State::from_physical(system)?)
}

fn print_thermo_text(thermo: &Thermo, header: &mut bool) {
    if !*header {
        println!("{:>10} {:>14} {:>14} {:>14} {:>14} {:>14}", "Step", "Temp", "E_pair", "KinEng", "TotEng", "Press");
        *header = true;
    }
    println!(
        "{:>10} {:>14.8} {:>14.8} {:>14.8} {:>14.8} {:>14.8}",
        thermo.step, thermo.temp, thermo.pe, thermo.ke, thermo.etotal, thermo.press
    );
}

fn thermo_json(t: &Thermo) -> serde_json::Value {
    json!({"step": t.step, "temp": t.temp, "pe": t.pe, "ke": t.ke, "etotal": t.etotal, "press": t.press})
}

pub fn run(context: &Context, command: Command) -> Result<i32> {
    let Command::Run(args) = command;
    let state = initial_state(&args)?;
    let device = match parse_device(&args.device)? {
        Device::Cpu { .. } => Device::Cpu { threads: args.threads },
        gpu => gpu,
    };
    let mut engine = engine(&device)?;
    let options = RunOptions {
        steps: args.steps,
        thermo_every: args.thermo,
        thermo_at_start: true,
        thermo_at_end: true,
        skin: args.skin,
    };
    let bar = (context.format == Format::Text && output::interactive()).then(|| {
        let bar = ProgressBar::new(args.steps);
        bar.set_style(
            ProgressStyle::with_template("{bar:40.cyan/blue} {pos}/{len} steps  {per_sec}  ETA {eta}")
                .expect("template"),
        );
        bar
    });
    if context.format == Format::Text {
        eprintln!("{} atoms on {}", state.atoms(), engine.describe());
    }
    let start = state.step;
    let mut header = false;
    let mut started = Instant::now();
    let result = engine.run(&state, &options, &mut |event| {
        match event {
            // Time the steps, not the set-up, as LAMMPS' "Loop time" does.
            Event::Ready => started = Instant::now(),
            Event::Thermo(t) => match context.format {
                Format::Json => output::json(&thermo_json(t)),
                Format::Text => match &bar {
                    Some(bar) => bar.suspend(|| print_thermo_text(t, &mut header)),
                    None => print_thermo_text(t, &mut header),
                },
            },
            Event::Step(step) => {
                if let Some(bar) = &bar {
                    bar.set_position(step - start);
                }
            }
        }
        ControlFlow::Continue(())
    })?;
    let seconds = started.elapsed().as_secs_f64();
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    let hash = Checkpoint::hash(&result.state);
    let rate = state.atoms() as f64 * args.steps as f64 / seconds;
    match context.format {
        Format::Json => output::json(&json!({"state_hash": hash.to_string(), "atom_steps_per_s": rate})),
        Format::Text => {
            println!(
                "Loop time {seconds:.3} s for {} steps with {} atoms: {rate:.4e} atom-steps/s, {} neighbour list builds",
                args.steps,
                state.atoms(),
                result.neighbor_builds
            );
            println!("state hash {hash}");
        }
    }
    write_outputs(&args, &state, &result.state, &result.thermo)?;
    Ok(0)
}

fn write_outputs(args: &RunArgs, initial: &State, last: &State, thermo: &[Thermo]) -> Result<()> {
    if let Some(path) = &args.plot {
        let points: Vec<_> = thermo.iter().map(upglobe_worker::execute::thermo_line).collect();
        crate::plot::thermo_png(path, &format!("{} atoms, {} steps", last.atoms(), args.steps), &points)?;
    }
    if let Some(path) = &args.write_checkpoint {
        std::fs::write(path, Checkpoint::encode(last)).with_context(|| format!("cannot write {}", path.display()))?;
    }
    if let Some(path) = &args.write_data {
        upglobe_kernels::lammps::write(path, last)?;
    }
    if let Some(path) = &args.h5md {
        let trajectory = Trajectory {
            box_origin: initial.params.box_origin,
            box_edges: initial.params.box_length,
            species: initial.types.iter().map(|t| *t as i32 + 1).collect(),
            ids: initial.ids.iter().map(|id| *id as i64).collect(),
            frames: vec![frame(initial), frame(last)],
            // Two frames a whole run apart: atoms may have moved more than half a box between them,
            // so boundary crossings cannot be counted; the positions stay wrapped.
            images: None,
            observables: thermo
                .iter()
                .map(|t| Observable {
                    step: t.step as i64,
                    time: t.step as f64 * initial.params.timestep,
                    temperature: t.temp,
                    potential_energy: t.pe,
                    kinetic_energy: t.ke,
                    total_energy: t.etotal,
                    pressure: t.press,
                })
                .collect(),
            software: upglobe_worker::SOFTWARE.into(),
            author: std::env::var("USER").unwrap_or_else(|_| "unknown".into()),
            workflow_hash: String::new(),
            job: "md run".into(),
            initial_state_hash: upglobe_protocol::BlobHash::of(&Checkpoint::encode(initial)).to_hex(),
            chunks: Vec::new(),
        };
        upglobe_datasets::h5md::write(path, &trajectory)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::RunArgs;

    #[derive(Parser)]
    struct Command {
        #[command(flatten)]
        args: RunArgs,
    }

    #[test]
    fn numeric_flags_are_checked() {
        let ok = Command::try_parse_from(["run", "--lattice", "fcc", "--steps", "10"]).unwrap().args;
        assert_eq!((ok.cells, ok.steps, ok.dt), (20, 10, 0.005));
        let cases: &[(&str, &str, &str)] = &[
            ("--cells", "0", "must be between 1 and 645"),
            ("--cells", "100000000000", "must be between 1 and 645"),
            ("--density", "0", "must be between 1e-6 and 1000.0"),
            ("--density", "NaN", "must be between 1e-6 and 1000.0"),
            ("--temperature", "-1", "must be between 0.0 and 1000000000.0"),
            ("--temperature", "inf", "must be between 0.0 and 1000000000.0"),
            ("--dt", "0", "must be between 1e-9 and 1000.0"),
            ("--dt", "inf", "must be between 1e-9 and 1000.0"),
            ("--cutoff", "1e300", "must be between 0.001 and 10000.0"),
            ("--cutoff", "-2.5", "must be between 0.001 and 10000.0"),
            ("--steps", "18446744073709551615", "must be between 0 and 4611686018427387904"),
            ("--threads", "1000000000000", "must be between 0 and 1024"),
            ("--skin", "NaN", "must be between 0.0 and 10000.0"),
            ("--thermo", "-1", "invalid value '-1' for '--thermo <THERMO>'"),
        ];
        for (flag, value, expected) in cases {
            let flag_and_value = format!("{flag}={value}");
            let mut flags = vec!["run", "--lattice", "fcc", &flag_and_value];
            if *flag != "--steps" {
                flags.extend(["--steps", "10"]);
            }
            let error = Command::try_parse_from(flags).err().unwrap_or_else(|| panic!("{flag} {value} was accepted"));
            let error = error.to_string();
            assert!(error.contains(expected), "{flag} {value}: {error}");
            assert!(error.contains(flag), "{flag} {value}: {error}");
        }
    }
}
