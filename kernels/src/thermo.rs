//! Thermodynamic output in LAMMPS `units lj` conventions (`thermo_style one`, `thermo_modify norm yes`):
//! temperature with 3N-3 degrees of freedom, energies per atom, pressure from the virial.
//!
//! Every quantity comes from exact integer sums, so the same state prints the same numbers on every
//! device; only the final conversion to `f64` rounds.

use crate::model::ENERGY_BITS;
use crate::numbers::exp2i;
use crate::system::Params;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Thermo {
    pub step: u64,
    pub temp: f64,
    /// Potential energy per atom.
    pub pe: f64,
    /// Kinetic energy per atom.
    pub ke: f64,
    /// Total energy per atom.
    pub etotal: f64,
    pub press: f64,
}

/// Velocities lose this many low bits before squaring, so sums of squares fit in 128 bits.
const KINETIC_DROP_BITS: u32 = 16;

/// Exact sums for one thermo line.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sums {
    /// Sum over pairs (each once) of pair energy, units `2^-ENERGY_BITS`.
    pub energy: i128,
    /// Sum over pairs (each once) of r F(r), units `2^-ENERGY_BITS`.
    pub virial: i128,
    /// Per type and axis, the sum of `(v >> 16)^2`.
    pub kinetic: Vec<[u128; 3]>,
}

impl Sums {
    pub fn new(types: usize) -> Sums {
        Sums { energy: 0, virial: 0, kinetic: vec![[0; 3]; types] }
    }

    #[inline]
    pub fn add_velocity(&mut self, atom_type: u32, velocity: [i64; 3]) {
        let sums = &mut self.kinetic[atom_type as usize];
        for d in 0..3 {
            let reduced = (velocity[d] >> KINETIC_DROP_BITS) as i128;
            sums[d] += (reduced * reduced) as u128;
        }
    }

    /// Adds another partial sum (from another thread or work group).
    pub fn merge(&mut self, other: &Sums) {
        self.energy += other.energy;
        self.virial += other.virial;
        for (mine, theirs) in self.kinetic.iter_mut().zip(&other.kinetic) {
            for d in 0..3 {
                mine[d] += theirs[d];
            }
        }
    }

    pub fn thermo(&self, params: &Params, atoms: usize, step: u64) -> Thermo {
        let mut kinetic = 0.0;
        for (t, sums) in self.kinetic.iter().enumerate() {
            for d in 0..3 {
                let unit = params.box_length[d] / params.timestep / exp2i(64 - KINETIC_DROP_BITS as i32);
                kinetic += 0.5 * params.masses[t] * unit * unit * sums[d] as f64;
            }
        }
        let energy = self.energy as f64 / exp2i(ENERGY_BITS);
        let virial = self.virial as f64 / exp2i(ENERGY_BITS);
        let n = atoms as f64;
        let degrees_of_freedom = 3.0 * n - 3.0;
        Thermo {
            step,
            temp: 2.0 * kinetic / degrees_of_freedom,
            pe: energy / n,
            ke: kinetic / n,
            etotal: (energy + kinetic) / n,
            press: (2.0 * kinetic + virial) / (3.0 * params.volume()),
        }
    }
}
