//! Inputs from outside (checkpoint bytes, LAMMPS data files, parameters) are refused with an error or
//! run; they never panic. Each case runs under `catch_unwind`, and a panic fails the test with the input
//! that caused it.

use std::ops::ControlFlow;
use std::panic::{AssertUnwindSafe, catch_unwind};

use upglobe_kernels::lammps::{DataFile, Settings};
use upglobe_kernels::model::Model;
use upglobe_kernels::system::{
    BOX_LENGTH_RANGE, BOX_OVER_CUTOFF_MAX, CUTOFF_RANGE, DAMPING_RANGE, EPSILON_RANGE, MASS_RANGE, PhysicalSystem,
    SIGMA_OVER_CUTOFF_RANGE, TEMPERATURE_RANGE, TIMESTEP_RANGE,
};
use upglobe_kernels::{Checkpoint, Device, Langevin, PairCoeff, Params, RunOptions, State, engine};

/// Two atom types, a thermostat and four atoms: every field of the checkpoint layout is present.
fn small_system() -> PhysicalSystem {
    let pair = |epsilon, sigma| PairCoeff { epsilon, sigma, cutoff: 2.5 };
    PhysicalSystem {
        params: Params {
            box_origin: [-1.0, 0.0, 2.0],
            box_length: [10.0, 11.0, 12.0],
            masses: vec![1.0, 2.0],
            pair_coeffs: vec![pair(1.0, 1.0), pair(0.5, 1.1), pair(0.5, 1.1), pair(2.0, 1.2)],
            shift: true,
            timestep: 0.005,
            langevin: Some(Langevin { temperature: 1.0, damping: 0.5, seed: 7 }),
        },
        step: 10,
        ids: vec![4, 1, 9, 2],
        types: vec![0, 1, 1, 0],
        positions: vec![[0.0, 1.0, 3.0], [1.2, 1.0, 3.0], [5.0, 5.0, 5.0], [5.0, 6.2, 5.0]],
        velocities: vec![[0.1, 0.0, 0.0], [0.0, -0.2, 0.0], [0.0, 0.0, 0.3], [-0.1, 0.2, -0.3]],
    }
}

/// Decodes `bytes` and, if that succeeds, runs two steps on one CPU thread. Fails on a panic.
fn decode_and_run(bytes: &[u8], what: &str) -> Result<(), String> {
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        let state = Checkpoint::decode(bytes).map_err(|error| error.to_string())?;
        run(&state)
    }));
    outcome.unwrap_or_else(|_| panic!("a checkpoint with {what} panicked instead of returning an error"))
}

fn run(state: &State) -> Result<(), String> {
    let mut engine = engine(&Device::Cpu { threads: 1 }).map_err(|error| error.to_string())?;
    let options = RunOptions { thermo_every: 1, ..RunOptions::new(2) };
    engine.run(state, &options, &mut |_| ControlFlow::Continue(())).map(|_| ()).map_err(|error| error.to_string())
}

/// Replaces the trailing hash with the hash of the (modified) body, as a forger would.
fn rehash(bytes: &mut [u8]) {
    let body = bytes.len() - 32;
    let hash = blake3::hash(&bytes[..body]);
    bytes[body..].copy_from_slice(hash.as_bytes());
}

/// Byte offsets of the fields of [`small_system`]'s encoding (see the layout in `checkpoint.rs`).
mod layout {
    pub const STEP: usize = 12;
    pub const ATOMS: usize = 20;
    pub const TYPES: usize = 28;
    pub const TIMESTEP: usize = 32;
    pub const BOX_ORIGIN: usize = 40;
    pub const BOX_LENGTH: usize = 64;
    pub const MASSES: usize = 88;
    pub const PAIRS: usize = MASSES + 2 * 8;
    pub const SHIFT: usize = PAIRS + 4 * 24;
    pub const LANGEVIN: usize = SHIFT + 1;
    pub const TEMPERATURE: usize = LANGEVIN + 1;
    pub const DAMPING: usize = TEMPERATURE + 8;
    pub const IDS: usize = DAMPING + 16;
    pub const ATOM_TYPES: usize = IDS + 4 * 8;
}

const EXTREMES: [f64; 16] = [
    0.0,
    -0.0,
    f64::NAN,
    f64::INFINITY,
    f64::NEG_INFINITY,
    f64::MIN_POSITIVE,
    5e-324,
    1e-310,
    1e-300,
    1e-12,
    -1.0,
    1e12,
    1e300,
    1e308,
    f64::MAX,
    -1e308,
];

fn encoded() -> Vec<u8> {
    let state = State::from_physical(small_system()).unwrap();
    let bytes = Checkpoint::encode(&state);
    assert_eq!(f64::from_le_bytes(bytes[layout::TEMPERATURE..][..8].try_into().unwrap()), 1.0, "layout offsets");
    assert_eq!(u64::from_le_bytes(bytes[layout::IDS..][..8].try_into().unwrap()), 1, "layout offsets");
    bytes
}

#[test]
fn the_small_system_runs() {
    decode_and_run(&encoded(), "no change").unwrap();
}

#[test]
fn every_flipped_bit_is_a_state_hash_mismatch() {
    let bytes = encoded();
    for bit in 0..bytes.len() * 8 {
        let mut corrupted = bytes.clone();
        corrupted[bit / 8] ^= 1 << (bit % 8);
        let error = decode_and_run(&corrupted, &format!("bit {bit} flipped")).unwrap_err();
        assert!(error.contains("state hash mismatch"), "bit {bit} flipped: {error}");
    }
}

#[test]
fn truncated_and_extended_checkpoints_are_refused() {
    let bytes = encoded();
    for length in 0..bytes.len() {
        let error = decode_and_run(&bytes[..length], &format!("{length} bytes")).unwrap_err();
        assert!(error.contains("state hash mismatch") || error.contains("shorter than its hash"), "{error}");
    }
    let mut longer = bytes.clone();
    longer.splice(longer.len() - 32..longer.len() - 32, [0u8; 8]);
    rehash(&mut longer);
    let error = decode_and_run(&longer, "8 trailing bytes").unwrap_err();
    assert!(error.contains("trailing bytes"), "{error}");
}

/// Every float parameter set to every extreme, with a valid hash: an error or a run, never a panic.
#[test]
fn extreme_parameters_with_a_valid_hash_never_panic() {
    let bytes = encoded();
    let mut fields: Vec<(String, Vec<usize>)> = vec![
        ("timestep".into(), vec![layout::TIMESTEP]),
        ("temperature".into(), vec![layout::TEMPERATURE]),
        ("damping".into(), vec![layout::DAMPING]),
    ];
    for d in 0..3 {
        fields.push((format!("box origin {d}"), vec![layout::BOX_ORIGIN + 8 * d]));
        fields.push((format!("box length {d}"), vec![layout::BOX_LENGTH + 8 * d]));
    }
    fields.push(("all box lengths".into(), (0..3).map(|d| layout::BOX_LENGTH + 8 * d).collect()));
    for t in 0..2 {
        fields.push((format!("mass {t}"), vec![layout::MASSES + 8 * t]));
    }
    for (k, name) in ["epsilon", "sigma", "cutoff"].iter().enumerate() {
        for pair in 0..4 {
            fields.push((format!("{name} of pair {pair}"), vec![layout::PAIRS + 24 * pair + 8 * k]));
        }
        // Both halves of the unlike pair, so the symmetry check does not hide the value.
        fields.push((format!("{name} of pairs 1 and 2"), vec![layout::PAIRS + 24 + 8 * k, layout::PAIRS + 48 + 8 * k]));
        fields.push((format!("{name} of every pair"), (0..4).map(|pair| layout::PAIRS + 24 * pair + 8 * k).collect()));
    }
    let mut runs = 0;
    for (name, offsets) in &fields {
        for value in EXTREMES {
            let mut forged = bytes.clone();
            for &offset in offsets {
                forged[offset..offset + 8].copy_from_slice(&value.to_le_bytes());
            }
            rehash(&mut forged);
            runs += decode_and_run(&forged, &format!("{name} = {value:?}")).is_ok() as usize;
        }
    }
    assert!(runs > 0, "some extremes (such as -0 epsilon) are valid and run");
}

#[test]
fn extreme_counts_with_a_valid_hash_never_panic() {
    let bytes = encoded();
    let mut cases: Vec<(String, usize, Vec<u8>)> = Vec::new();
    for step in [u64::MAX, 1 << 63, (1 << 62) + 1] {
        cases.push((format!("step {step}"), layout::STEP, step.to_le_bytes().to_vec()));
    }
    for atoms in [0u64, 1, 3, 5, 1 << 30, (1 << 30) + 1, u64::MAX / 60, u64::MAX] {
        cases.push((format!("{atoms} atoms"), layout::ATOMS, atoms.to_le_bytes().to_vec()));
    }
    for types in [0u32, 1, 3, 64, 65, u32::MAX] {
        cases.push((format!("{types} types"), layout::TYPES, types.to_le_bytes().to_vec()));
    }
    cases.push(("shift flag 2".into(), layout::SHIFT, vec![2]));
    cases.push(("thermostat kind 0".into(), layout::LANGEVIN, vec![0]));
    cases.push(("thermostat kind 9".into(), layout::LANGEVIN, vec![9]));
    cases.push(("a repeated id".into(), layout::IDS + 8, 1u64.to_le_bytes().to_vec()));
    cases.push(("atom type 2 of 2".into(), layout::ATOM_TYPES, 2u32.to_le_bytes().to_vec()));
    cases.push(("atom type u32::MAX".into(), layout::ATOM_TYPES, u32::MAX.to_le_bytes().to_vec()));
    for (name, offset, value) in cases {
        let mut forged = bytes.clone();
        forged[offset..offset + value.len()].copy_from_slice(&value);
        rehash(&mut forged);
        let error = decode_and_run(&forged, &name).unwrap_err();
        assert!(error.starts_with("invalid checkpoint: "), "{name}: {error}");
    }
}

/// The model is derived without a panic at every corner of the parameter bounds, and the engine
/// either runs or refuses the system.
#[test]
fn corners_of_the_parameter_bounds_never_panic() {
    let cutoffs = [CUTOFF_RANGE.min, 2.5, CUTOFF_RANGE.max];
    let sigmas_over_cutoff = [SIGMA_OVER_CUTOFF_RANGE.min, 0.4, SIGMA_OVER_CUTOFF_RANGE.max];
    let epsilons = [0.0, EPSILON_RANGE.min, EPSILON_RANGE.max];
    let masses = [MASS_RANGE.min, MASS_RANGE.max];
    let timesteps = [TIMESTEP_RANGE.min, TIMESTEP_RANGE.max];
    let thermostats = [
        None,
        Some((TEMPERATURE_RANGE.min, DAMPING_RANGE.max)),
        Some((TEMPERATURE_RANGE.max, f64::MIN_POSITIVE)),
        Some((0.0, DAMPING_RANGE.min)),
    ];
    let mut runs = 0;
    for cutoff in cutoffs {
        let boxes = [2.0 * cutoff * (1.0 + 1e-12), BOX_OVER_CUTOFF_MAX * cutoff, BOX_LENGTH_RANGE.max];
        for (sigma_over_cutoff, epsilon, mass, timestep, thermostat, box_length) in
            itertools(&sigmas_over_cutoff, &epsilons, &masses, &timesteps, &thermostats, &boxes)
        {
            let mut system = small_system();
            let p = &mut system.params;
            p.box_length = [box_length; 3];
            p.masses = vec![mass, mass];
            p.timestep = timestep;
            // Damping at least the timestep over 40 where the corner asks for less.
            p.langevin = thermostat.map(|(temperature, damping)| Langevin {
                temperature,
                damping: damping.max(timestep / 39.0),
                seed: 1,
            });
            p.pair_coeffs = vec![PairCoeff { epsilon, sigma: sigma_over_cutoff * cutoff, cutoff }; 4];
            system.positions =
                vec![[0.0; 3], [0.3 * cutoff, 0.0, 0.0], [0.0, 0.45 * cutoff, 0.0], [0.0, 0.0, 0.9 * cutoff]];
            system.velocities = vec![[0.0; 3]; 4];
            let what = format!("{:?}", system.params);
            let outcome = catch_unwind(AssertUnwindSafe(|| -> Result<(), String> {
                let state = State::from_physical(system).map_err(|error| error.to_string())?;
                let model = Model::new(&state.params);
                model.check_factors().map_err(|error| error.to_string())?;
                run(&state)
            }));
            match outcome {
                Ok(Ok(())) => runs += 1,
                Ok(Err(error)) => assert!(!error.is_empty()),
                Err(_) => panic!("parameters {what} panicked"),
            }
        }
    }
    assert!(runs > 100, "most corners run: {runs}");
}

/// The cartesian product of six short lists.
fn itertools<A: Copy, B: Copy, C: Copy, D: Copy, E: Copy, F: Copy>(
    a: &[A],
    b: &[B],
    c: &[C],
    d: &[D],
    e: &[E],
    f: &[F],
) -> Vec<(A, B, C, D, E, F)> {
    let mut out = Vec::new();
    for &a in a {
        for &b in b {
            for &c in c {
                for &d in d {
                    for &e in e {
                        for &f in f {
                            out.push((a, b, c, d, e, f));
                        }
                    }
                }
            }
        }
    }
    out
}

const DATA: &str = "LAMMPS data file via write_data, timestep = 0

4 atoms
1 atom types

0 10 xlo xhi
0 10 ylo yhi
0 10 zlo zhi

Masses

1 1

Pair Coeffs # lj/cut

1 1 1

Atoms # atomic

1 1 0 0 0 0 0 0
2 1 1.1 0 0 0 0 0
3 1 0 1.1 0 0 0 0
4 1 0 0 1.1 0 0 -1

Velocities

1 0.1 0 0
2 0 0.2 0
3 0 0 0.3
4 -0.1 -0.2 -0.3
";

/// Reads, completes, converts and runs a data file; an error names the file and line or the system.
fn read_and_run(text: &str, settings: &Settings) -> Result<(), String> {
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        let data = DataFile::parse("hostile.data", text).map_err(|error| error.to_string())?;
        let system = data.to_system("hostile.data", settings).map_err(|error| error.to_string())?;
        let state = State::from_physical(system).map_err(|error| error.to_string())?;
        run(&state)
    }));
    outcome.unwrap_or_else(|_| panic!("this data file panicked:\n{text}"))
}

fn lj_settings() -> Settings {
    Settings { cutoff: 2.5, shift: false, timestep: 0.005 }
}

#[test]
fn hostile_data_files_never_panic() {
    read_and_run(DATA, &lj_settings()).unwrap();
    let replacements: &[(&str, &str, &str)] = &[
        ("4 atoms", "18446744073709551615 atoms", "hostile.data:3: 18446744073709551615 atoms; at most"),
        ("4 atoms", "1073741825 atoms", "hostile.data:3: 1073741825 atoms; at most"),
        ("1 atom types", "4000000000000 atom types", "hostile.data:4: 4000000000000 atom types; between 1 and 64"),
        ("1 atom types", "0 atom types", "hostile.data:4: 0 atom types"),
        ("0 10 xlo xhi", "-1e308 1e308 xlo xhi", "hostile.data:6: xlo is -1e308"),
        ("0 10 ylo yhi", "0 1e300 ylo yhi", "hostile.data:7: yhi is 1e300"),
        ("0 10 zlo zhi", "5 5 zlo zhi", "hostile.data:8: box length zhi - zlo is 0.0"),
        ("0 10 zlo zhi", "5 -5 zlo zhi", "hostile.data:8: box length zhi - zlo is -10.0"),
        ("0 10 zlo zhi", "0 NaN zlo zhi", "hostile.data:8: box bounds: 'NaN' is not a finite number"),
        ("\n1 1\n", "\n1 1e300\n", "hostile.data:12: mass of type 1 is 1e300"),
        ("\n1 1\n", "\n1 1e-320\n", "hostile.data:12: mass of type 1 is 1e-320"),
        ("\n1 1\n", "\n1 -2\n", "hostile.data:12: mass of type 1 is -2.0"),
        ("1 1 1\n", "1 1e300 1\n", "hostile.data:16: epsilon is 1e300"),
        ("1 1 1\n", "1 -1 1\n", "hostile.data:16: epsilon is -1.0"),
        ("1 1 1\n", "1 1 5e-324\n", "hostile.data:16: sigma is 5e-324"),
        ("1 1 1\n", "1 1 -1\n", "hostile.data:16: sigma is -1.0"),
        ("1 1 1\n", "1 1 1 1e-9\n", "hostile.data:16: cutoff is 1e-9"),
        ("1 1 1\n", "1 1 1 1e300\n", "hostile.data:16: cutoff is 1e300"),
        ("1 1 1\n", "1 1 1e-300 2.5\n", "hostile.data:16: sigma is 1e-300"),
        ("2 1 1.1 0 0", "2 1 1e300 0 0", "invalid system: atom 2 has x coordinate 1e300, more than"),
        ("2 1 1.1 0 0 0 0 0", "2 1 1.1 0 0 9223372036854775807 0 0", "invalid system: atom 2 has x coordinate"),
        ("2 0 0.2 0", "2 0 1e300 0", "invalid system: atom 2 has y velocity"),
        ("LAMMPS data file via write_data, timestep = 0", "x, timestep = 18446744073709551615", "invalid system: step"),
    ];
    for (from, to, expected) in replacements {
        assert!(DATA.contains(from), "{from}");
        let error =
            read_and_run(&DATA.replacen(from, to, 1), &lj_settings()).expect_err(&format!("'{to}' was accepted"));
        assert!(error.starts_with(expected), "'{to}': {error}");
    }
}

#[test]
fn extreme_settings_are_refused() {
    let cases: &[(f64, f64, &str)] = &[
        (f64::NAN, 0.005, "invalid system: pair 1 1: cutoff is NaN"),
        (1e-300, 0.005, "invalid system: pair 1 1: cutoff is 1e-300"),
        (1e300, 0.005, "invalid system: pair 1 1: cutoff is 1e300"),
        (0.01, 0.005, "invalid system: pair 1 1: sigma is 1.0; with cutoff 0.01"),
        (2.5, 0.0, "invalid system: timestep is 0.0"),
        (2.5, f64::NAN, "invalid system: timestep is NaN"),
        (2.5, f64::INFINITY, "invalid system: timestep is inf"),
        (2.5, 1e-300, "invalid system: timestep is 1e-300"),
    ];
    for &(cutoff, timestep, expected) in cases {
        let settings = Settings { cutoff, shift: false, timestep };
        let error =
            read_and_run(DATA, &settings).expect_err(&format!("cutoff {cutoff} timestep {timestep} was accepted"));
        assert!(error.starts_with(expected), "cutoff {cutoff} timestep {timestep}: {error}");
    }
}

#[test]
fn a_device_named_as_a_data_file_is_refused_not_read_forever() {
    let error = upglobe_kernels::lammps::DataFile::read(std::path::Path::new("/dev/zero")).unwrap_err().to_string();
    assert!(error.contains("not a regular file"), "{error}");
}
