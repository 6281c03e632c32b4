//! Generated systems: face-centred cubic lattices with seeded velocities, in the spirit of LAMMPS
//! `lattice fcc RHO`, `create_atoms` and `velocity all create T SEED`.
//!
//! Velocities are uniform per component from a SplitMix64 stream keyed by the seed, with zero total
//! momentum, scaled to the temperature exactly (3N-3 degrees of freedom). Only correctly rounded
//! arithmetic is used, so the same seed gives the same atoms on every machine.

use crate::numbers::cbrt;
use crate::rng::SplitMix64;
use crate::system::{Langevin, PairCoeff, Params, PhysicalSystem};

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

    pub fn lattice_constant(&self) -> f64 {
        cbrt(4.0 / self.density)
    }

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
