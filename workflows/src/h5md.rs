//! `h5md = "file.h5md"` systems: the atoms of an md job read from one frame of an H5MD trajectory
//! (`frame = N`, default the last), such as one `upglobe results` wrote. The potential table gives
//! the pair coefficients, as for a lattice.

use std::path::Path;

use crate::diagnostic::Reporter;
use crate::fields::{Located, Section};
use crate::md::Atoms;

#[cfg(not(feature = "h5md"))]
pub(crate) fn atoms(
    reporter: &mut Reporter,
    _system: &Section,
    file: &Located<&str>,
    _base_dir: &Path,
) -> Option<Atoms> {
    reporter.error_with_hint(
        file.at,
        "this build reads no H5MD files",
        "build upglobe-workflows with its 'h5md' feature (the upglobe binary has it)",
    );
    None
}

#[cfg(feature = "h5md")]
pub(crate) use reading::atoms;
#[cfg(feature = "h5md")]
pub use reading::system;

#[cfg(feature = "h5md")]
mod reading {
    use upglobe_datasets::h5md::{Snapshot, read_frame};
    use upglobe_kernels::lattice::seeded_velocities;
    use upglobe_kernels::system::{Params, PhysicalSystem, TYPES_MAX};

    use super::*;
    use crate::md::{data_velocities, reject_for_data};

    const MASS_DEFAULT: f64 = 1.0;

    /// Frame `frame` (default the last) of an H5MD file as a system with one pair coefficient for
    /// all types, for `upglobe md run`. The file must have velocities.
    pub fn system(
        path: &Path,
        frame: Option<u64>,
        settings: &upglobe_kernels::lammps::Settings,
        pair: upglobe_kernels::system::PairCoeff,
    ) -> Result<PhysicalSystem, String> {
        let snapshot = read_frame(path, frame).map_err(|error| error.to_string())?;
        let in_file = |message: String| format!("h5md {}: {message}", path.display());
        if snapshot.velocities.is_none() {
            return Err(in_file(format!("{}/velocity is missing", snapshot.particles)));
        }
        let mut system = to_system(snapshot, MASS_DEFAULT, None).map_err(in_file)?;
        system.params.pair_coeffs = vec![pair; system.params.masses.len().pow(2)];
        system.params.shift = settings.shift;
        system.params.timestep = settings.timestep;
        Ok(system)
    }

    pub(crate) fn atoms(
        reporter: &mut Reporter,
        system: &Section,
        file: &Located<&str>,
        base_dir: &Path,
    ) -> Option<Atoms> {
        reject_for_data(reporter, system, &["cells", "density"], "an H5MD file gives the box and the atoms");
        let velocities = data_velocities(reporter, system);
        let frame = system.non_negative_integer(reporter, "frame").optional();
        let mass = system.positive_number(reporter, "mass").optional();
        let (velocities, frame, mass) = (velocities?, frame?, mass?);
        let path = base_dir.join(file.value);
        let snapshot = match read_frame(&path, frame.map(|frame| frame.value)) {
            Ok(snapshot) => snapshot,
            Err(error) => {
                let hint = format!(
                    "'h5md' names an H5MD file with particles/all/{{position, box}} (velocity, species, id, mass if \
                     present); its path is relative to the workflow file's folder ({})",
                    base_dir.display()
                );
                reporter.error_with_hint(file.at, error.to_string(), hint);
                return None;
            }
        };
        if let (Some(mass), Some(_)) = (&mass, &snapshot.masses) {
            reporter.error_with_hint(
                mass.at,
                format!("'mass' is given twice: {} has {}/mass", path.display(), snapshot.particles),
                "remove 'mass' to take the file's masses",
            );
            return None;
        }
        if snapshot.velocities.is_none() && velocities.is_none() {
            reporter.error_with_hint(
                file.at,
                format!("h5md {}: {}/velocity is missing", path.display(), snapshot.particles),
                "add 'temperature' and 'seed' to the system to create velocities",
            );
            return None;
        }
        match to_system(snapshot, mass.map_or(MASS_DEFAULT, |mass| mass.value), velocities) {
            Ok(system) => Some(Atoms::H5md(Box::new(system))),
            Err(message) => {
                reporter.error(file.at, format!("h5md {}: {message}", path.display()));
                None
            }
        }
    }

    /// The frame as a system, less what the potential and run tables add (pair coefficients, shift,
    /// timestep). Species are LAMMPS atom types (1-based); absent, every atom is type 1.
    fn to_system(snapshot: Snapshot, mass: f64, velocities: Option<(f64, u64)>) -> Result<PhysicalSystem, String> {
        let particles = &snapshot.particles;
        let atoms = snapshot.positions.len();
        let step =
            u64::try_from(snapshot.step).map_err(|_| format!("the frame's step {} is negative", snapshot.step))?;
        let ids = match &snapshot.ids {
            Some(ids) => ids
                .iter()
                .map(|&id| u64::try_from(id).ok().filter(|id| *id > 0))
                .collect::<Option<Vec<u64>>>()
                .ok_or_else(|| format!("{particles}/id has an id below 1; ids must be positive"))?,
            None => (1..=atoms as u64).collect(),
        };
        let types = match &snapshot.species {
            Some(species) => species
                .iter()
                .map(|&s| (1..=TYPES_MAX as i64).contains(&s).then(|| s as u32 - 1))
                .collect::<Option<Vec<u32>>>()
                .ok_or_else(|| format!("{particles}/species must be atom types from 1 to {TYPES_MAX}"))?,
            None => vec![0; atoms],
        };
        let masses = type_masses(particles, &types, snapshot.masses.as_deref(), mass)?;
        let velocities = match (velocities, snapshot.velocities) {
            // As LAMMPS `velocity all create`: one temperature for all atoms, using type 1's mass.
            (Some((temperature, seed)), _) => seeded_velocities(atoms, temperature, masses[0], seed),
            (None, Some(velocities)) => velocities,
            (None, None) => return Err(format!("{particles}/velocity is missing")),
        };
        let params = Params {
            box_origin: snapshot.box_origin,
            box_length: snapshot.box_edges,
            masses,
            pair_coeffs: Vec::new(),
            shift: false,
            timestep: 0.0,
            langevin: None,
        };
        Ok(PhysicalSystem { params, step, ids, types, positions: snapshot.positions, velocities })
    }

    /// One mass per type: the file's per-atom masses must agree within a type; `fallback` otherwise.
    fn type_masses(
        particles: &str,
        types: &[u32],
        atom_masses: Option<&[f64]>,
        fallback: f64,
    ) -> Result<Vec<f64>, String> {
        let type_count = types.iter().max().map_or(1, |max| *max as usize + 1);
        let Some(atom_masses) = atom_masses else {
            return Ok(vec![fallback; type_count]);
        };
        let mut masses: Vec<Option<f64>> = vec![None; type_count];
        for (&atom_type, &mass) in types.iter().zip(atom_masses) {
            match masses[atom_type as usize] {
                None => masses[atom_type as usize] = Some(mass),
                Some(known) if known == mass => {}
                Some(known) => {
                    return Err(format!(
                        "{particles}/mass gives atoms of species {} the masses {known} and {mass}; one mass per species is supported",
                        atom_type + 1
                    ));
                }
            }
        }
        Ok(masses.into_iter().map(|mass| mass.unwrap_or(fallback)).collect())
    }
}
