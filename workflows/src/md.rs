//! `kind = "md"` jobs: the system, the potential, the run and the thermostat, built into a
//! [`PhysicalSystem`] and checked by the kernels the same way a worker will check it.

use std::path::Path;

use upglobe_kernels::lammps::{DataFile, Settings};
use upglobe_kernels::lattice::{FccLattice, seeded_velocities};
use upglobe_kernels::system::{ATOMS_MAX, Langevin, PairCoeff, PhysicalSystem, State};
use upglobe_protocol::messages::limits::CHUNKS_PER_JOB_MAX;

use crate::MdJob;
use crate::diagnostic::Reporter;
use crate::document::Value;
use crate::fields::{Field, Located, Section, integer_value, wrong_type};

pub(crate) const SYSTEM_KEYS: &[&str] =
    &["lattice", "data", "h5md", "frame", "cells", "density", "temperature", "seed", "mass"];
const POTENTIAL_KEYS: &[&str] = &["cutoff", "epsilon", "sigma", "shift"];
const RUN_KEYS: &[&str] = &["timestep", "steps", "chunk_steps", "thermo"];
const THERMOSTAT_KEYS: &[&str] = &["temperature", "damping", "seed"];

const TIMESTEP_DEFAULT: f64 = 0.005;
/// The kernels refuse a Langevin damping time shorter than 1/40 of a timestep (the friction would
/// overshoot); checked here too, to point at `damping`.
const TIMESTEPS_PER_DAMPING_MIN: f64 = 1.0 / 40.0;
/// How far to look on each side of a wrong `chunk_steps` for divisors to suggest.
const DIVISOR_SEARCH_MAX: u64 = 100_000;

/// The tables of an md job; a required one that is absent or not a table is `None` (and reported).
struct Tables<'t> {
    system: Option<Section<'t>>,
    potential: Option<Section<'t>>,
    run: Option<Section<'t>>,
    /// `Some(None)` when there is no thermostat; `None` when it is not a table.
    thermostat: Option<Option<Section<'t>>>,
}

struct Run {
    timestep: f64,
    total_steps: u64,
    chunk_steps: u64,
    thermo_every: u64,
}

struct Potential {
    cutoff: Located<f64>,
    epsilon: f64,
    sigma: f64,
    shift: bool,
}

/// Where the atoms come from, as the `system` table says.
enum Source<'t> {
    Lattice,
    Data(Located<&'t str>),
    H5md(Located<&'t str>),
}

/// The atoms before the potential and run settings complete them into a system.
pub(crate) enum Atoms {
    /// `at`: the system table, where errors about the lattice as a whole are reported.
    Lattice {
        cells: [usize; 3],
        density: f64,
        temperature: f64,
        seed: u64,
        mass: f64,
        at: usize,
    },
    Data {
        file: Box<DataFile>,
        label: String,
        at: usize,
        velocities: Option<(f64, u64)>,
    },
    /// One frame of an H5MD file: everything but the pair coefficients, the shift and the timestep,
    /// which the potential and run tables give. (Never built without the `h5md` feature.)
    #[cfg_attr(not(feature = "h5md"), allow(dead_code))]
    H5md(Box<PhysicalSystem>),
}

pub(crate) fn read(reporter: &mut Reporter, job: &Section, base_dir: &Path) -> Option<MdJob> {
    let tables = tables(reporter, job);
    let source = tables.system.as_ref().and_then(|system| source(reporter, system));
    let atoms = match (&tables.system, &source) {
        (Some(system), Some(Source::Lattice)) => lattice_atoms(reporter, system),
        (Some(system), Some(Source::Data(data))) => data_atoms(reporter, system, data, base_dir),
        (Some(system), Some(Source::H5md(file))) => crate::h5md::atoms(reporter, system, file, base_dir),
        _ => None,
    };
    if let (Some(system), Some(Source::Lattice | Source::Data(_))) = (&tables.system, &source)
        && let Some(entry) = system.entry("frame")
    {
        reporter.error_with_hint(
            entry.key_at,
            "'frame' applies only to h5md systems",
            "'frame' picks which frame of an h5md file to start from; remove it",
        );
    }
    let run = tables.run.as_ref().and_then(|section| run(reporter, section));
    let from_data = matches!(source, Some(Source::Data(_)));
    let potential = tables.potential.as_ref().and_then(|section| potential(reporter, section, from_data));
    let timestep = run.as_ref().map(|run| run.timestep);
    let langevin = match tables.thermostat? {
        Some(thermostat) => Some(langevin(reporter, &thermostat, timestep)?),
        None => None,
    };
    let (system_section, atoms, run, potential) = (tables.system?, atoms?, run?, potential?);
    let data_at = match &atoms {
        Atoms::Data { at, .. } => Some(*at),
        Atoms::Lattice { .. } | Atoms::H5md(_) => None,
    };
    let mut system = build(reporter, atoms, &potential, &run)?;
    system.params.langevin = langevin;
    check_system(reporter, &system_section, &system, &potential, data_at)?;
    Some(MdJob { system, total_steps: run.total_steps, chunk_steps: run.chunk_steps, thermo_every: run.thermo_every })
}

fn tables<'t>(reporter: &mut Reporter, job: &Section<'t>) -> Tables<'t> {
    let mut required = |name: &'static str, keys: &[&str], needs: &str| match job.section(reporter, name) {
        Field::Found(found) => {
            found.value.check_keys(reporter, keys);
            Some(found.value)
        }
        Field::Invalid => None,
        Field::Absent => {
            reporter.error_with_hint(
                job.table.at,
                format!("job '{}' is missing '{name}'", job.job),
                format!("add a [jobs.{}.{name}] table with {needs}", job.job),
            );
            None
        }
    };
    let system = required("system", SYSTEM_KEYS, "lattice = \"fcc\", data = \"file.data\" or h5md = \"file.h5md\"");
    let potential = required("potential", POTENTIAL_KEYS, "cutoff = 2.5");
    let run = required("run", RUN_KEYS, "steps and chunk_steps");
    let thermostat = job.section(reporter, "thermostat").optional();
    if let Some(Some(thermostat)) = &thermostat {
        thermostat.value.check_keys(reporter, THERMOSTAT_KEYS);
    }
    Tables { system, potential, run, thermostat: thermostat.map(|found| found.map(|found| found.value)) }
}

/// Exactly one of `lattice`, `data` and `h5md`.
fn source<'t>(reporter: &mut Reporter, system: &Section<'t>) -> Option<Source<'t>> {
    let keys = ["lattice", "data", "h5md"];
    let fields = keys.map(|key| (key, system.string(reporter, key)));
    if fields.iter().any(|(_, field)| matches!(field, Field::Invalid)) {
        return None;
    }
    let found: Vec<(&str, Located<&'t str>)> = fields
        .into_iter()
        .filter_map(|(key, field)| match field {
            Field::Found(value) => Some((key, value)),
            Field::Absent | Field::Invalid => None,
        })
        .collect();
    match found[..] {
        [] => {
            reporter.error_with_hint(
                system.table.at,
                format!("job '{}' is missing 'system.lattice', 'system.data' or 'system.h5md'", system.job),
                "add 'lattice = \"fcc\"' to generate atoms, 'data = \"file.data\"' to read a LAMMPS data file, \
                 or 'h5md = \"file.h5md\"' to start from a frame of an H5MD trajectory",
            );
            None
        }
        [(first, _), (second, value), ..] => {
            reporter.error_with_hint(
                system.entry(second).map_or(value.at, |entry| entry.key_at),
                format!("a system has either '{first}' or '{second}', not both"),
                "'lattice' generates atoms, 'data' reads them from a LAMMPS data file, 'h5md' from an H5MD file; \
                 keep one",
            );
            None
        }
        [("lattice", lattice)] if lattice.value == "fcc" => Some(Source::Lattice),
        [("lattice", lattice)] => {
            reporter.error_with_hint(
                lattice.at,
                format!("unknown lattice '{}'", lattice.value),
                "only \"fcc\" is supported; other structures can be read with data = \"file.data\"",
            );
            None
        }
        [("data", data)] => Some(Source::Data(data)),
        [(_, file)] => Some(Source::H5md(file)),
    }
}

fn run(reporter: &mut Reporter, run: &Section) -> Option<Run> {
    let timestep = run.positive_number(reporter, "timestep").or(TIMESTEP_DEFAULT);
    let total_steps = run.positive_integer(reporter, "steps");
    let total_steps = run.require(reporter, "steps", total_steps);
    let chunk_steps = run.positive_integer(reporter, "chunk_steps");
    let chunk_steps = run.require(reporter, "chunk_steps", chunk_steps);
    let thermo = run.positive_integer(reporter, "thermo").optional();
    let (timestep, total_steps, chunk_steps, thermo) = (timestep?, total_steps?, chunk_steps?, thermo?);
    let chunks_ok = check_chunks(reporter, &total_steps, &chunk_steps);
    let thermo_every = match thermo {
        Some(thermo) => check_thermo(reporter, &thermo, chunk_steps.value).then_some(thermo.value),
        None => Some(chunk_steps.value),
    };
    Some(Run {
        timestep,
        total_steps: total_steps.value,
        chunk_steps: chunk_steps.value,
        thermo_every: thermo_every.filter(|_| chunks_ok)?,
    })
}

/// Chunks are the unit of work and verification, so they must tile the run exactly.
fn check_chunks(reporter: &mut Reporter, total_steps: &Located<u64>, chunk_steps: &Located<u64>) -> bool {
    let (steps, chunk) = (total_steps.value, chunk_steps.value);
    if !steps.is_multiple_of(chunk) {
        let multiples = nearest_multiples(steps, chunk);
        reporter.error_with_hint(
            chunk_steps.at,
            format!("chunk_steps {chunk} does not divide steps {steps}"),
            match nearest_divisors(steps, chunk) {
                Some(divisors) => format!("use chunk_steps = {divisors} (dividing {steps}), or steps = {multiples}"),
                None => format!("use steps = {multiples} (multiples of {chunk})"),
            },
        );
        return false;
    }
    if steps / chunk > CHUNKS_PER_JOB_MAX {
        reporter.error_with_hint(
            chunk_steps.at,
            format!(
                "{steps} steps in chunks of {chunk} make {} chunks; at most {CHUNKS_PER_JOB_MAX} are allowed",
                steps / chunk
            ),
            format!("use chunk_steps of at least {}", steps.div_ceil(CHUNKS_PER_JOB_MAX)),
        );
        return false;
    }
    true
}

/// Thermo lines are computed at chunk boundaries and inside chunks, so the interval must tile a chunk.
fn check_thermo(reporter: &mut Reporter, thermo: &Located<u64>, chunk_steps: u64) -> bool {
    if chunk_steps.is_multiple_of(thermo.value) {
        return true;
    }
    let hint = match nearest_divisors(chunk_steps, thermo.value) {
        Some(divisors) => format!("use thermo = {divisors} (dividing chunk_steps {chunk_steps})"),
        None => format!("use a thermo interval that divides chunk_steps {chunk_steps}"),
    };
    reporter.error_with_hint(
        thermo.at,
        format!("thermo {} does not divide chunk_steps {chunk_steps}", thermo.value),
        hint,
    );
    false
}

/// The divisors of `number` closest to `near` on each side, as "a or b" (or one), if any are near.
pub(crate) fn nearest_divisors(number: u64, near: u64) -> Option<String> {
    let below = (1..near.min(number + 1))
        .rev()
        .take(DIVISOR_SEARCH_MAX as usize)
        .find(|&candidate| number.is_multiple_of(candidate));
    let above =
        (near + 1..=number).take(DIVISOR_SEARCH_MAX as usize).find(|&candidate| number.is_multiple_of(candidate));
    // A divisor of 1 is no useful suggestion for a chunk or thermo interval unless it is all there is.
    let below = below.filter(|&divisor| divisor > 1 || above.is_none());
    match (below, above) {
        (Some(below), Some(above)) => Some(format!("{below} or {above}")),
        (Some(one), None) | (None, Some(one)) => Some(one.to_string()),
        (None, None) => None,
    }
}

/// The multiples of `step` closest to `number` on each side, as "a or b" (or one).
fn nearest_multiples(number: u64, step: u64) -> String {
    let below = number / step * step;
    let above = below.saturating_add(step);
    if below == 0 { above.to_string() } else { format!("{below} or {above}") }
}

fn potential(reporter: &mut Reporter, potential: &Section, from_data: bool) -> Option<Potential> {
    let cutoff = potential.positive_number(reporter, "cutoff");
    let cutoff = potential.require(reporter, "cutoff", cutoff);
    let shift = potential.boolean(reporter, "shift").or(false);
    if from_data {
        reject_for_data(
            reporter,
            potential,
            &["epsilon", "sigma"],
            "data files take coefficients from their Pair Coeffs or PairIJ Coeffs section",
        );
    }
    let epsilon = potential.non_negative_number(reporter, "epsilon").or(1.0);
    let sigma = potential.positive_number(reporter, "sigma").or(1.0);
    Some(Potential { cutoff: cutoff?, epsilon: epsilon?, sigma: sigma?, shift: shift? })
}

/// Reports keys that only make sense for generated (lattice) systems.
pub(crate) fn reject_for_data(reporter: &mut Reporter, section: &Section, keys: &[&str], why: &str) {
    for key in keys {
        if let Some(entry) = section.entry(key) {
            reporter.error_with_hint(
                entry.key_at,
                format!("'{key}' applies only to lattice systems"),
                format!("{why}; remove '{key}'"),
            );
        }
    }
}

fn langevin(reporter: &mut Reporter, thermostat: &Section, timestep: Option<f64>) -> Option<Langevin> {
    let temperature = thermostat.non_negative_number(reporter, "temperature");
    let temperature = thermostat.require(reporter, "temperature", temperature);
    let damping = thermostat.positive_number(reporter, "damping");
    let damping = thermostat.require(reporter, "damping", damping);
    let seed = thermostat.non_negative_integer(reporter, "seed");
    let seed = thermostat.require(reporter, "seed", seed);
    let (temperature, damping, seed) = (temperature?, damping?, seed?);
    if let Some(timestep) = timestep
        && damping.value < timestep * TIMESTEPS_PER_DAMPING_MIN
    {
        reporter.error_with_hint(
            damping.at,
            format!("damping {} is far shorter than the timestep {timestep}", damping.value),
            format!(
                "damping is a time in the units of timestep; about 100 timesteps is typical: damping = {}",
                timestep * 100.0
            ),
        );
        return None;
    }
    Some(Langevin { temperature: temperature.value, damping: damping.value, seed: seed.value })
}

fn lattice_atoms(reporter: &mut Reporter, system: &Section) -> Option<Atoms> {
    let cells = cells(reporter, system);
    let cells = system.require(reporter, "cells", cells);
    let density = system.positive_number(reporter, "density");
    let density = system.require(reporter, "density", density);
    let temperature = system.non_negative_number(reporter, "temperature");
    let temperature = system.require(reporter, "temperature", temperature);
    let seed = system.non_negative_integer(reporter, "seed");
    let seed = system.require(reporter, "seed", seed);
    let mass = system.positive_number(reporter, "mass").or(1.0);
    Some(Atoms::Lattice {
        cells: cells?.value,
        at: system.table.at,
        density: density?.value,
        temperature: temperature?.value,
        seed: seed?.value,
        mass: mass?,
    })
}

/// Completes the atoms with the potential and run settings.
fn build(reporter: &mut Reporter, atoms: Atoms, potential: &Potential, run: &Run) -> Option<PhysicalSystem> {
    match atoms {
        Atoms::Lattice { cells, density, temperature, seed, mass, at } => {
            let pair = PairCoeff { epsilon: potential.epsilon, sigma: potential.sigma, cutoff: potential.cutoff.value };
            let lattice = FccLattice {
                cells,
                density,
                temperature,
                seed,
                mass,
                pair,
                shift: potential.shift,
                timestep: run.timestep,
                langevin: None,
            };
            // The kernels bound every physical setting; a lattice outside them is an error here, at
            // the lattice, rather than a panic while it is built.
            if let Err(error) = lattice.validate() {
                reporter.error(at, error.to_string());
                return None;
            }
            Some(lattice.build())
        }
        Atoms::H5md(mut system) => {
            let pair = PairCoeff { epsilon: potential.epsilon, sigma: potential.sigma, cutoff: potential.cutoff.value };
            system.params.pair_coeffs = vec![pair; system.params.masses.len().pow(2)];
            system.params.shift = potential.shift;
            system.params.timestep = run.timestep;
            Some(*system)
        }
        Atoms::Data { file, label, at, velocities } => {
            let settings = Settings { cutoff: potential.cutoff.value, shift: potential.shift, timestep: run.timestep };
            let mut system = match file.to_system(&label, &settings) {
                Ok(system) => system,
                Err(error) => {
                    reporter.error_with_hint(at, error.to_string(), DATA_HINT);
                    return None;
                }
            };
            if let Some((temperature, seed)) = velocities {
                // As LAMMPS `velocity all create`: one temperature for all atoms, using type 1's mass.
                let mass = system.params.masses[0];
                system.velocities = seeded_velocities(system.ids.len(), temperature, mass, seed);
            }
            Some(system)
        }
    }
}

/// `cells = 10` or `cells = [10, 10, 12]`, limited so the lattice has at most `ATOMS_MAX` atoms.
fn cells(reporter: &mut Reporter, system: &Section) -> Field<[usize; 3]> {
    let Some(entry) = system.entry("cells") else {
        return Field::Absent;
    };
    let at = entry.value.at;
    let counts: Vec<Field<i64>> = match &entry.value.value {
        Value::Integer(_) => vec![integer_value(reporter, "cells", &entry.value)],
        Value::Array(elements) if elements.len() == 3 => {
            elements.iter().map(|element| integer_value(reporter, "cells", element)).collect()
        }
        Value::Array(elements) => {
            reporter.error_with_hint(
                at,
                format!("'cells' has {} numbers; it needs 3 (x, y, z)", elements.len()),
                "write cells = [10, 10, 10], or cells = 10 for a cube",
            );
            return Field::Invalid;
        }
        _ => {
            return wrong_type(reporter, "an integer or an array of 3 integers", "cells", &entry.value);
        }
    };
    let mut cells = Vec::with_capacity(3);
    for count in counts {
        match count {
            Field::Found(count) if count.value > 0 => cells.push(count.value as usize),
            Field::Found(count) => reporter.error(count.at, format!("'cells' must be positive, found {}", count.value)),
            Field::Absent | Field::Invalid => {}
        }
    }
    let cells: [usize; 3] = match (&entry.value.value, cells.as_slice()) {
        (Value::Integer(_), [cube]) => [*cube; 3],
        (Value::Array(_), [x, y, z]) => [*x, *y, *z],
        _ => return Field::Invalid,
    };
    let atoms = 4 * cells.iter().map(|&count| count as u128).product::<u128>();
    if atoms > ATOMS_MAX as u128 {
        reporter.error(at, format!("{atoms} atoms (4 per cell); at most {ATOMS_MAX} are supported"));
        return Field::Invalid;
    }
    Field::Found(Located { value: cells, at })
}

const DATA_HINT: &str = "'data' names a LAMMPS data file written by write_data (atom_style atomic, pair_style lj/cut)";

fn data_atoms(reporter: &mut Reporter, system: &Section, data: &Located<&str>, base_dir: &Path) -> Option<Atoms> {
    reject_for_data(
        reporter,
        system,
        &["cells", "density", "mass"],
        "a data file gives the box, the atoms and their masses",
    );
    let velocities = data_velocities(reporter, system);
    let path = base_dir.join(data.value);
    let file = match DataFile::read(&path) {
        Ok(file) => file,
        Err(error) => {
            let hint =
                format!("{DATA_HINT}; its path is relative to the workflow file's folder ({})", base_dir.display());
            reporter.error_with_hint(data.at, error.to_string(), hint);
            return None;
        }
    };
    Some(Atoms::Data { file: Box::new(file), label: path.display().to_string(), at: data.at, velocities: velocities? })
}

/// `temperature` and `seed` for a data system: both (new velocities) or neither (the file's).
pub(crate) fn data_velocities(reporter: &mut Reporter, system: &Section) -> Option<Option<(f64, u64)>> {
    let temperature = system.non_negative_number(reporter, "temperature").optional();
    let seed = system.non_negative_integer(reporter, "seed").optional();
    match (temperature?, seed?) {
        (Some(temperature), Some(seed)) => Some(Some((temperature.value, seed.value))),
        (None, None) => Some(None),
        (Some(temperature), None) => {
            reporter.error_with_hint(
                temperature.at,
                "'temperature' without 'seed' cannot create velocities",
                "add 'seed = 12345' to create velocities, or remove 'temperature' to keep the data file's",
            );
            None
        }
        (None, Some(seed)) => {
            reporter.error_with_hint(
                seed.at,
                "'seed' without 'temperature' cannot create velocities",
                "add 'temperature = 1.0' to create velocities, or remove 'seed' to keep the data file's",
            );
            None
        }
    }
}

/// Runs the kernels' own validation, so a job that parses here also starts on a worker.
fn check_system(
    reporter: &mut Reporter,
    system_section: &Section,
    system: &PhysicalSystem,
    potential: &Potential,
    data_at: Option<usize>,
) -> Option<()> {
    let half_box = system.params.box_length.iter().copied().fold(f64::INFINITY, f64::min) / 2.0;
    let cutoff = system.params.cutoff_max();
    if cutoff >= half_box {
        // A data file may set a larger cutoff than the potential table; point at whoever set it.
        let at = match data_at {
            Some(data_at) if cutoff > potential.cutoff.value => data_at,
            _ => potential.cutoff.at,
        };
        reporter.error_with_hint(
            at,
            format!("cutoff {cutoff} is not smaller than half the shortest box edge ({half_box})"),
            "make the box larger (more cells) or the cutoff smaller, so each atom sees one image of every other",
        );
        return None;
    }
    match State::from_physical(system.clone()) {
        Ok(_) => Some(()),
        Err(error) => {
            reporter.error(system_section.table.at, format!("job '{}': {error}", system_section.job));
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn divisor_suggestions_are_the_nearest_on_each_side() {
        assert_eq!(nearest_divisors(3000, 700).as_deref(), Some("600 or 750"));
        assert_eq!(nearest_divisors(3000, 5000).as_deref(), Some("3000"));
        assert_eq!(nearest_divisors(7, 3).as_deref(), Some("7"), "a prime: only itself is useful");
        assert_eq!(nearest_divisors(1, 3).as_deref(), Some("1"));
        assert_eq!(nearest_multiples(3000, 700), "2800 or 3500");
        assert_eq!(nearest_multiples(3000, 5000), "5000");
    }
}
