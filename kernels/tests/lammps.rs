//! Validation against LAMMPS (Debian's `lammps` package provides `lmp`).
//!
//! LAMMPS builds each system and writes it with `write_data` before running; we import that file and
//! run the same steps, then compare thermo. Deterministic fixed point must agree with LAMMPS' double
//! precision to 1e-6 at step 0 (same positions, same formulas) and 1e-3 after 100 steps (trajectories
//! diverge slowly), and must conserve energy no worse.

use std::ops::ControlFlow;
use std::path::Path;
use std::process::Command;

use upglobe_kernels::lammps::{DataFile, Settings};
use upglobe_kernels::{Device, RunOptions, State, Thermo, engine};

fn lmp() -> &'static str {
    let found = Command::new("lmp").arg("-h").output().is_ok_and(|o| o.status.success());
    assert!(
        found,
        "these tests compare with LAMMPS: install it (Debian: apt-get install lammps), which provides `lmp`"
    );
    "lmp"
}

/// One LAMMPS thermo line: step temp pe ke etotal press.
type Line = [f64; 6];

/// Runs a LAMMPS input in `dir`; returns the thermo lines.
fn run_lammps(dir: &Path, input: &str) -> Vec<Line> {
    std::fs::write(dir.join("in.test"), input).unwrap();
    let output = Command::new(lmp()).args(["-in", "in.test", "-log", "log.lammps"]).current_dir(dir).output().unwrap();
    assert!(
        output.status.success(),
        "lammps failed: {}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let log = std::fs::read_to_string(dir.join("log.lammps")).unwrap();
    let mut lines = Vec::new();
    let mut inside = false;
    for line in log.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.first() == Some(&"Step") {
            inside = true;
        } else if line.starts_with("Loop time") {
            inside = false;
        } else if inside
            && fields.len() == 6
            && let Ok(values) = fields.iter().map(|f| f.parse::<f64>()).collect::<Result<Vec<_>, _>>()
        {
            lines.push(values.try_into().unwrap());
        }
    }
    lines
}

struct Case {
    density: f64,
    temperature: f64,
    cutoff: f64,
    shift: bool,
    cells: usize,
    /// Extra commands after the box is filled (e.g. a second atom type).
    setup: &'static str,
    pair_coeffs: &'static str,
}

impl Case {
    fn script(&self, steps: u64, thermo: u64, neighbor: &str) -> String {
        format!(
            "units lj\natom_style atomic\nlattice fcc {density}\nregion box block 0 {n} 0 {n} 0 {n}\n\
             create_box 2 box\ncreate_atoms 1 box\nmass 1 1.0\nmass 2 1.0\n{setup}\n\
             velocity all create {temperature} 87287 loop geom\npair_style lj/cut {cutoff}\n{pairs}\n{shift}\n\
             {neighbor}\nfix 1 all nve\nwrite_data system.data\n\
             thermo_style custom step temp pe ke etotal press\nthermo_modify norm yes format float %.15g\n\
             thermo {thermo}\nrun {steps}\n",
            density = self.density,
            n = self.cells,
            setup = self.setup,
            temperature = self.temperature,
            cutoff = self.cutoff,
            pairs = self.pair_coeffs,
            shift = if self.shift { "pair_modify shift yes" } else { "" },
        )
    }

    fn ours(&self, dir: &Path, steps: u64, thermo: u64) -> Vec<Thermo> {
        let path = dir.join("system.data");
        let settings = Settings { cutoff: self.cutoff, shift: self.shift, timestep: 0.005 };
        let system = DataFile::read(&path).unwrap().to_system(&path.display().to_string(), &settings).unwrap();
        let state = State::from_physical(system).unwrap();
        let mut options = RunOptions::new(steps);
        options.thermo_every = thermo;
        options.thermo_at_start = true;
        let mut engine = engine(&Device::Cpu { threads: 2 }).unwrap();
        engine.run(&state, &options, &mut |_| ControlFlow::Continue(())).unwrap().thermo
    }
}

const ONE_TYPE: &str = "pair_coeff * * 1.0 1.0";
const IN_LJ_NEIGHBOR: &str = "neighbor 0.3 bin\nneigh_modify delay 0 every 20 check no";
const SAFE_NEIGHBOR: &str = "neighbor 0.3 bin\nneigh_modify delay 0 every 1 check yes";

fn relative(a: f64, b: f64) -> f64 {
    (a - b).abs() / b.abs().max(1e-12)
}

fn compare(case: &Case) {
    let dir = tempfile::tempdir().unwrap();
    let reference = run_lammps(dir.path(), &case.script(100, 50, IN_LJ_NEIGHBOR));
    let ours = case.ours(dir.path(), 100, 50);
    assert_eq!(reference.len(), 3, "lammps thermo lines: {reference:?}");
    for (line, thermo) in reference.iter().zip(&ours) {
        assert_eq!(line[0] as u64, thermo.step);
        let tolerance = if thermo.step == 0 { 1e-6 } else { 1e-3 };
        for (name, theirs, mine) in [
            ("temp", line[1], thermo.temp),
            ("pe", line[2], thermo.pe),
            ("etotal", line[4], thermo.etotal),
            ("press", line[5], thermo.press),
        ] {
            assert!(
                relative(mine, theirs) <= tolerance,
                "step {}: {name} {mine} vs LAMMPS {theirs} (relative {:.2e} > {tolerance:e})",
                thermo.step,
                relative(mine, theirs)
            );
        }
    }
}

#[test]
fn in_lj_benchmark_matches_lammps() {
    // LAMMPS' classic in.lj: 32 000 atoms, fcc 0.8442, T 1.44, seed 87287, cutoff 2.5, 100 steps.
    compare(&Case {
        density: 0.8442,
        temperature: 1.44,
        cutoff: 2.5,
        shift: false,
        cells: 20,
        setup: "",
        pair_coeffs: ONE_TYPE,
    });
}

#[test]
fn dilute_hot_long_cutoff_matches_lammps() {
    compare(&Case {
        density: 0.6,
        temperature: 2.5,
        cutoff: 3.5,
        shift: false,
        cells: 8,
        setup: "",
        pair_coeffs: ONE_TYPE,
    });
}

#[test]
fn dense_cold_shifted_matches_lammps() {
    compare(&Case {
        density: 1.0,
        temperature: 0.7,
        cutoff: 2.5,
        shift: true,
        cells: 8,
        setup: "",
        pair_coeffs: ONE_TYPE,
    });
}

#[test]
fn wca_repulsive_matches_lammps() {
    // Weeks-Chandler-Andersen: cut at the minimum 2^(1/6), shifted.
    compare(&Case {
        density: 0.8,
        temperature: 1.0,
        cutoff: 1.122_462_048_309_373,
        shift: true,
        cells: 8,
        setup: "",
        pair_coeffs: ONE_TYPE,
    });
}

#[test]
fn binary_mixture_matches_lammps() {
    compare(&Case {
        density: 0.8,
        temperature: 1.2,
        cutoff: 2.5,
        shift: false,
        cells: 8,
        setup: "set type 1 type/fraction 2 0.3 12345\nmass 2 2.0",
        pair_coeffs: "pair_coeff 1 1 1.0 1.0\npair_coeff 2 2 0.5 1.1",
    });
}

/// Total energy drift over 10 000 steps of a 4 000-atom system, no worse than LAMMPS with the same
/// settings (safe neighbour lists on both sides).
#[test]
fn energy_is_conserved_as_well_as_lammps() {
    let case = Case {
        density: 0.8442,
        temperature: 1.44,
        cutoff: 2.5,
        shift: true,
        cells: 10,
        setup: "",
        pair_coeffs: ONE_TYPE,
    };
    let dir = tempfile::tempdir().unwrap();
    let steps = 10_000;
    let reference = run_lammps(dir.path(), &case.script(steps, 100, SAFE_NEIGHBOR));
    let ours = case.ours(dir.path(), steps, 100);
    assert_eq!(reference.len(), ours.len());
    // Skip the first 1000 steps, where the lattice melts and the temperature halves.
    let theirs: Vec<f64> = reference.iter().skip(10).map(|l| l[4]).collect();
    let mine: Vec<f64> = ours.iter().skip(10).map(|t| t.etotal).collect();
    let (their_drift, their_spread) = drift_and_spread(&theirs);
    let (my_drift, my_spread) = drift_and_spread(&mine);
    eprintln!(
        "energy drift per 1000 steps: ours {my_drift:.3e}, lammps {their_drift:.3e}; spread ours {my_spread:.3e}, lammps {their_spread:.3e}"
    );
    // Both are dominated by the same integrator error; allow the statistical wobble of one run.
    let allowance = 0.25 * their_spread;
    assert!(my_drift.abs() <= their_drift.abs() + allowance, "drift {my_drift:e} vs LAMMPS {their_drift:e}");
    assert!(my_spread <= their_spread * 1.5, "fluctuation {my_spread:e} vs LAMMPS {their_spread:e}");
}

/// Least-squares slope per 10 samples (1000 steps) and the standard deviation around the line.
fn drift_and_spread(values: &[f64]) -> (f64, f64) {
    let n = values.len() as f64;
    let mean_x = (n - 1.0) / 2.0;
    let mean_y = values.iter().sum::<f64>() / n;
    let (mut sxy, mut sxx) = (0.0, 0.0);
    for (i, y) in values.iter().enumerate() {
        sxy += (i as f64 - mean_x) * (y - mean_y);
        sxx += (i as f64 - mean_x) * (i as f64 - mean_x);
    }
    let slope = sxy / sxx;
    let residual =
        values.iter().enumerate().map(|(i, y)| (y - mean_y - slope * (i as f64 - mean_x)).powi(2)).sum::<f64>();
    (slope * 10.0, (residual / n).sqrt())
}
