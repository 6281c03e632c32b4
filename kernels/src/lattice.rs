//! Generated systems: face-centred cubic lattices with seeded velocities, in the spirit of LAMMPS
//! `lattice fcc RHO`, `create_atoms` and `velocity all create T SEED`.
//!
//! Velocities are uniform per component from a SplitMix64 stream keyed by the seed, with zero total
//! momentum, scaled to the temperature exactly (3N-3 degrees of freedom). Only correctly rounded
//! arithmetic is used, so the same seed gives the same atoms on every machine.

use crate::numbers::cbrt;
use crate::rng::SplitMix64;
use crate::system::{ATOMS_MAX, Langevin, MASS_RANGE, PairCoeff, Params, PhysicalSystem, Range, TEMPERATURE_RANGE};
use crate::{KernelError, Result};

#[derive(Debug, Clone, PartialEq)]
pub struct FccLattice {
    /// Unit cells along x, y, z (4 atoms each).
    pub cells: [usize; 3],
    /// Reduced number density.
    pub density: f64,
    pub temperature: f64,
    pub seed: u64,
    pub mass: f64,
    pub pair: PairCoeff,
    pub shift: bool,
    pub timestep: f64,
    pub langevin: Option<Langevin>,
}

/// Reduced number densities a lattice may have (liquid argon is about 0.8).
pub const DENSITY_RANGE: Range = Range { min: 1e-6, max: 1e3 };

const BASIS: [[f64; 3]; 4] = [[0.0, 0.0, 0.0], [0.5, 0.5, 0.0], [0.5, 0.0, 0.5], [0.0, 0.5, 0.5]];

impl FccLattice {
    /// The classic LAMMPS `in.lj` melt: 32 000 atoms at density 0.8442, T 1.44, cutoff 2.5.
    pub fn in_lj(cells: usize) -> FccLattice {
        FccLattice {
            cells: [cells; 3],
            density: 0.8442,
            temperature: 1.44,
            seed: 87287,
            mass: 1.0,
            pair: PairCoeff { epsilon: 1.0, sigma: 1.0, cutoff: 2.5 },
            shift: false,
            timestep: 0.005,
            langevin: None,
        }
    }

    pub fn atoms(&self) -> usize {
        4 * self.cells.iter().product::<usize>()
    }

    /// Checks what [`FccLattice::build`] needs before it allocates atoms or takes a cube root; the
    /// parameters of the built system are checked again by [`State::from_physical`](crate::State).
    pub fn validate(&self) -> Result<()> {
        let invalid = |message: String| Err(KernelError::InvalidSystem(message));
        let [x, y, z] = self.cells;
        if self.cells.contains(&0) {
            return invalid(format!("lattice of {x} x {y} x {z} cells has no atoms"));
        }
        let atoms = self.cells.iter().try_fold(BASIS.len() as u128, |product, &n| product.checked_mul(n as u128));
        if atoms.is_none_or(|atoms| atoms > ATOMS_MAX as u128) {
            return invalid(format!(
                "lattice of {x} x {y} x {z} cells has more than {ATOMS_MAX} atoms ({} per cell)",
                BASIS.len()
            ));
        }
        if !DENSITY_RANGE.contains(self.density) {
            return invalid(format!(
                "lattice density is {:?}; it must be between {:?} and {:?}",
                self.density, DENSITY_RANGE.min, DENSITY_RANGE.max
            ));
        }
        if !(self.temperature == 0.0 || TEMPERATURE_RANGE.contains(self.temperature)) {
            return invalid(format!(
                "lattice temperature is {:?}; it must be 0 or between {:?} and {:?}",
                self.temperature, TEMPERATURE_RANGE.min, TEMPERATURE_RANGE.max
            ));
        }
        MASS_RANGE.check(self.mass).or_else(|reason| invalid(format!("lattice mass {reason}")))
    }

    pub fn lattice_constant(&self) -> f64 {
        cbrt(4.0 / self.density)
    }

    /// The atoms; the lattice must have passed [`FccLattice::validate`].
    pub fn build(&self) -> PhysicalSystem {
        let a = self.lattice_constant();
        let mut positions = Vec::with_capacity(self.atoms());
        for k in 0..self.cells[2] {
            for j in 0..self.cells[1] {
                for i in 0..self.cells[0] {
                    for b in BASIS {
                        positions.push([(i as f64 + b[0]) * a, (j as f64 + b[1]) * a, (k as f64 + b[2]) * a]);
                    }
                }
            }
        }
        let atoms = positions.len();
        PhysicalSystem {
            params: Params {
                box_origin: [0.0; 3],
                box_length: std::array::from_fn(|d| self.cells[d] as f64 * a),
                masses: vec![self.mass],
                pair_coeffs: vec![self.pair],
                shift: self.shift,
                timestep: self.timestep,
                langevin: self.langevin,
            },
            step: 0,
            ids: (1..=atoms as u64).collect(),
            types: vec![0; atoms],
            velocities: seeded_velocities(atoms, self.temperature, self.mass, self.seed),
            positions,
        }
    }
}

/// Uniform random velocities with zero momentum and exactly the requested temperature.
pub fn seeded_velocities(atoms: usize, temperature: f64, mass: f64, seed: u64) -> Vec<[f64; 3]> {
    let mut rng = SplitMix64::new(seed);
    let mut velocities: Vec<[f64; 3]> = (0..atoms).map(|_| std::array::from_fn(|_| rng.next_f64() - 0.5)).collect();
    for d in 0..3 {
        let mean = velocities.iter().map(|v| v[d]).sum::<f64>() / atoms as f64;
        velocities.iter_mut().for_each(|v| v[d] -= mean);
    }
    let kinetic: f64 = velocities.iter().map(|v| 0.5 * mass * (v[0] * v[0] + v[1] * v[1] + v[2] * v[2])).sum();
    let current = 2.0 * kinetic / (3.0 * atoms as f64 - 3.0);
    let factor = if current > 0.0 { (temperature / current).sqrt() } else { 0.0 };
    velocities.iter_mut().for_each(|v| v.iter_mut().for_each(|c| *c *= factor));
    velocities
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_lj_matches_lammps_geometry() {
        let system = FccLattice::in_lj(20).build();
        assert_eq!(system.ids.len(), 32_000);
        assert!((system.params.box_length[0] - 33.591_923_827_650_15).abs() < 1e-12);
        assert!((system.positions[1][0] - 0.839_798_095_691_253_6).abs() < 1e-15);
    }

    #[test]
    fn validate_refuses_what_build_cannot_make() {
        FccLattice::in_lj(20).validate().unwrap();
        let error = |lattice: FccLattice| lattice.validate().unwrap_err().to_string();
        let huge = FccLattice { cells: [usize::MAX, usize::MAX, 2], ..FccLattice::in_lj(1) };
        assert!(error(huge).contains("cells has more than 1073741824 atoms (4 per cell)"));
        let just_over = FccLattice { cells: [646, 645, 645], ..FccLattice::in_lj(1) };
        assert!(error(just_over).contains("646 x 645 x 645 cells has more than"));
        assert!(
            error(FccLattice { cells: [4, 0, 4], ..FccLattice::in_lj(1) }).contains("4 x 0 x 4 cells has no atoms")
        );
        for density in [0.0, -1.0, f64::NAN, f64::INFINITY, 5e-324, 1e300] {
            let lattice = FccLattice { density, ..FccLattice::in_lj(5) };
            assert!(error(lattice).starts_with(&format!("invalid system: lattice density is {density:?}")));
        }
        for temperature in [-1.0, f64::NAN, f64::INFINITY, 1e-320] {
            let lattice = FccLattice { temperature, ..FccLattice::in_lj(5) };
            assert!(error(lattice).starts_with(&format!("invalid system: lattice temperature is {temperature:?}")));
        }
        let lattice = FccLattice { mass: 0.0, ..FccLattice::in_lj(5) };
        assert_eq!(error(lattice), "invalid system: lattice mass is 0.0; it must be between 1e-6 and 1000000.0");
    }

    #[test]
    fn velocities_have_the_temperature_and_no_momentum() {
        let v = seeded_velocities(4000, 1.44, 1.0, 5);
        let momentum: [f64; 3] = std::array::from_fn(|d| v.iter().map(|x| x[d]).sum());
        assert!(momentum.iter().all(|p| p.abs() < 1e-10));
        let kinetic: f64 = v.iter().map(|x| 0.5 * (x[0] * x[0] + x[1] * x[1] + x[2] * x[2])).sum();
        assert!((2.0 * kinetic / (3.0 * 4000.0 - 3.0) - 1.44).abs() < 1e-12);
        assert_eq!(v, seeded_velocities(4000, 1.44, 1.0, 5));
        assert_ne!(v, seeded_velocities(4000, 1.44, 1.0, 6));
    }
}
