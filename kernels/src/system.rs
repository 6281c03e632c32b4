//! Physical parameters and the integer state.

use crate::numbers::exp2i;
use crate::{KernelError, Result};

/// Lennard-Jones coefficients of one pair of atom types (LAMMPS `lj/cut`, units `lj`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PairCoeff {
    pub epsilon: f64,
    pub sigma: f64,
    pub cutoff: f64,
}

/// A Langevin thermostat applied after each velocity-Verlet step: `v <- c1 v + c2 xi` with
/// `c1 = exp(-dt / damping)`, `c2 = sqrt((1 - c1^2) T / m)` and `xi` uniform with unit variance, drawn
/// from the counter-based generator keyed by (seed, step, atom, dimension).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Langevin {
    pub temperature: f64,
    pub damping: f64,
    pub seed: u64,
}

/// Everything that defines the dynamics besides the atoms themselves.
#[derive(Debug, Clone, PartialEq)]
pub struct Params {
    /// Lower corner of the orthorhombic periodic box.
    pub box_origin: [f64; 3],
    /// Edge lengths of the box.
    pub box_length: [f64; 3],
    /// Mass of each atom type (types are 0-based here, 1-based in LAMMPS files).
    pub masses: Vec<f64>,
    /// Pair coefficients, a symmetric `types x types` matrix in row-major order.
    pub pair_coeffs: Vec<PairCoeff>,
    /// Shift pair energies to zero at the cutoff (LAMMPS `pair_modify shift yes`); forces are unchanged.
    pub shift: bool,
    pub timestep: f64,
    pub langevin: Option<Langevin>,
}

/// Upper bound on atom types, so tables and per-type factors stay small.
pub const TYPES_MAX: usize = 64;
/// The smallest pair cutoff is at least the largest divided by this, so every table has segments at
/// the length resolution the largest cutoff allows.
pub const CUTOFF_RANGE_MAX: f64 = 1024.0;

impl Params {
    pub fn types(&self) -> usize {
        self.masses.len()
    }

    pub fn pair(&self, a: usize, b: usize) -> PairCoeff {
        self.pair_coeffs[a * self.types() + b]
    }

    pub fn cutoff_max(&self) -> f64 {
        self.pair_coeffs.iter().map(|p| p.cutoff).fold(0.0, f64::max)
    }

    pub fn volume(&self) -> f64 {
        self.box_length[0] * self.box_length[1] * self.box_length[2]
    }

    /// Checks the parameters once, so the engines can assert instead of re-checking.
    pub fn validate(&self) -> Result<()> {
        let invalid = |m: String| Err(KernelError::InvalidSystem(m));
        let types = self.types();
        if types == 0 || types > TYPES_MAX {
            return invalid(format!("{types} atom types; between 1 and {TYPES_MAX} are supported"));
        }
        if self.pair_coeffs.len() != types * types {
            return invalid(format!("{} pair coefficients for {types} types", self.pair_coeffs.len()));
        }
        for (d, &length) in self.box_length.iter().enumerate() {
            if !(length.is_finite() && length > 0.0 && length < 1e9) {
                return invalid(format!("box length {length} along {} is not a positive finite number", axis(d)));
            }
            if !self.box_origin[d].is_finite() {
                return invalid(format!("box origin along {} is not finite", axis(d)));
            }
        }
        for (t, &mass) in self.masses.iter().enumerate() {
            if !(mass.is_finite() && mass > 0.0) {
                return invalid(format!("mass of type {} is {mass}; it must be positive", t + 1));
            }
        }
        for a in 0..types {
            for b in 0..types {
                let p = self.pair(a, b);
                if p != self.pair(b, a) {
                    return invalid(format!("pair coefficients of types {} and {} are not symmetric", a + 1, b + 1));
                }
                let ok = p.epsilon.is_finite()
                    && p.epsilon >= 0.0
                    && p.sigma.is_finite()
                    && p.sigma > 0.0
                    && p.cutoff.is_finite()
                    && p.cutoff > 0.0;
                if !ok {
                    return invalid(format!(
                        "pair {} {}: epsilon {} sigma {} cutoff {} (need epsilon >= 0, sigma > 0, cutoff > 0)",
                        a + 1,
                        b + 1,
                        p.epsilon,
                        p.sigma,
                        p.cutoff
                    ));
                }
            }
        }
        if let Some(p) = self.pair_coeffs.iter().find(|p| p.cutoff < self.cutoff_max() / CUTOFF_RANGE_MAX) {
            return invalid(format!(
                "pair cutoff {} is more than {CUTOFF_RANGE_MAX} times smaller than the largest, {}; \
                 for pairs that should not interact, set epsilon to 0",
                p.cutoff,
                self.cutoff_max()
            ));
        }
        let half_box = self.box_length.iter().copied().fold(f64::INFINITY, f64::min) / 2.0;
        if self.cutoff_max() >= half_box {
            return invalid(format!(
                "cutoff {} is not smaller than half the shortest box edge ({half_box}); the minimum image would be ambiguous",
                self.cutoff_max()
            ));
        }
        if !(self.timestep.is_finite() && self.timestep > 0.0) {
            return invalid(format!("timestep {} must be positive", self.timestep));
        }
        if let Some(l) = self.langevin {
            if !(l.temperature.is_finite() && l.temperature >= 0.0 && l.damping.is_finite() && l.damping > 0.0) {
                return invalid(format!(
                    "langevin temperature {} and damping {} must be non-negative and positive",
                    l.temperature, l.damping
                ));
            }
            if self.timestep / l.damping > 40.0 {
                return invalid("langevin damping is far shorter than the timestep".into());
            }
        }
        Ok(())
    }
}

pub fn axis(d: usize) -> char {
    ['x', 'y', 'z'][d]
}

/// A system in physical units, as read from a file or generated, before it is made exact.
#[derive(Debug, Clone)]
pub struct PhysicalSystem {
    pub params: Params,
    pub step: u64,
    pub ids: Vec<u64>,
    pub types: Vec<u32>,
    pub positions: Vec<[f64; 3]>,
    pub velocities: Vec<[f64; 3]>,
}

/// The exact state: atoms in ascending id order (the canonical order, so the serialised state does not
/// depend on how an engine arranged atoms in memory).
#[derive(Debug, Clone, PartialEq)]
pub struct State {
    pub params: Params,
    pub step: u64,
    pub ids: Vec<u64>,
    pub types: Vec<u32>,
    /// Fractions of the box edge, `x = origin + position / 2^64 * length`.
    pub positions: Vec<[u64; 3]>,
    /// Box fractions per timestep, `v = velocity / 2^64 * length / timestep`.
    pub velocities: Vec<[i64; 3]>,
}

/// Upper bound on atoms in one system (indices are 32-bit on the GPU).
pub const ATOMS_MAX: usize = 1 << 30;

impl State {
    pub fn atoms(&self) -> usize {
        self.ids.len()
    }

    /// Makes a physical system exact: validates it, sorts atoms by id, converts to fixed point.
    pub fn from_physical(system: PhysicalSystem) -> Result<State> {
        let PhysicalSystem { params, step, ids, types, positions, velocities } = system;
        params.validate()?;
        let atoms = ids.len();
        if !(2..=ATOMS_MAX).contains(&atoms) {
            return Err(KernelError::InvalidSystem(format!("{atoms} atoms; between 2 and {ATOMS_MAX} are supported")));
        }
        assert!(types.len() == atoms && positions.len() == atoms && velocities.len() == atoms);
        let mut order: Vec<usize> = (0..atoms).collect();
        order.sort_unstable_by_key(|&i| ids[i]);
        if let Some(pair) = order.windows(2).find(|w| ids[w[0]] == ids[w[1]]) {
            return Err(KernelError::InvalidSystem(format!("atom id {} appears twice", ids[pair[0]])));
        }
        let mut state = State {
            step,
            ids: Vec::with_capacity(atoms),
            types: Vec::with_capacity(atoms),
            positions: Vec::with_capacity(atoms),
            velocities: Vec::with_capacity(atoms),
            params,
        };
        for &i in &order {
            if types[i] as usize >= state.params.types() {
                return Err(KernelError::InvalidSystem(format!(
                    "atom {} has type {}, but there are {} types",
                    ids[i],
                    types[i] + 1,
                    state.params.types()
                )));
            }
            let mut position = [0u64; 3];
            let mut velocity = [0i64; 3];
            for d in 0..3 {
                position[d] = state.position_to_fraction(d, positions[i][d]).ok_or_else(|| {
                    KernelError::InvalidSystem(format!("atom {} has a non-finite {} coordinate", ids[i], axis(d)))
                })?;
                velocity[d] = state.velocity_to_fixed(d, velocities[i][d]).ok_or_else(|| {
                    KernelError::InvalidSystem(format!(
                        "atom {} has {} velocity {} that moves it more than half the box in one step",
                        ids[i],
                        axis(d),
                        velocities[i][d]
                    ))
                })?;
            }
            state.ids.push(ids[i]);
            state.types.push(types[i]);
            state.positions.push(position);
            state.velocities.push(velocity);
        }
        Ok(state)
    }

    fn position_to_fraction(&self, d: usize, x: f64) -> Option<u64> {
        if !x.is_finite() {
            return None;
        }
        let scaled = (x - self.params.box_origin[d]) / self.params.box_length[d];
        let fraction = scaled - scaled.floor();
        // A fraction that rounds up to 1.0 is the periodic image of 0.
        Some(if fraction >= 1.0 { 0 } else { (fraction * exp2i(64)) as u64 })
    }

    fn velocity_to_fixed(&self, d: usize, v: f64) -> Option<i64> {
        let per_step = v * self.params.timestep / self.params.box_length[d];
        (per_step.is_finite() && per_step.abs() < 0.5).then(|| (per_step * exp2i(64)).round() as i64)
    }

    pub fn position(&self, atom: usize) -> [f64; 3] {
        std::array::from_fn(|d| {
            self.params.box_origin[d] + self.positions[atom][d] as f64 / exp2i(64) * self.params.box_length[d]
        })
    }

    pub fn velocity(&self, atom: usize) -> [f64; 3] {
        std::array::from_fn(|d| {
            self.velocities[atom][d] as f64 / exp2i(64) * self.params.box_length[d] / self.params.timestep
        })
    }

    /// The simulated time of this state.
    pub fn time(&self) -> f64 {
        self.step as f64 * self.params.timestep
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub fn two_atoms(distance: f64) -> PhysicalSystem {
        PhysicalSystem {
            params: Params {
                box_origin: [0.0; 3],
                box_length: [10.0; 3],
                masses: vec![1.0],
                pair_coeffs: vec![PairCoeff { epsilon: 1.0, sigma: 1.0, cutoff: 2.5 }],
                shift: false,
                timestep: 0.005,
                langevin: None,
            },
            step: 0,
            ids: vec![2, 1],
            types: vec![0, 0],
            positions: vec![[1.0 + distance, 1.0, 1.0], [1.0, 1.0, 1.0]],
            velocities: vec![[0.5, 0.0, 0.0], [-0.5, 0.0, 0.0]],
        }
    }

    #[test]
    fn conversion_sorts_by_id_and_round_trips() {
        let state = State::from_physical(two_atoms(1.1)).unwrap();
        assert_eq!(state.ids, vec![1, 2]);
        let p = state.position(1);
        assert!((p[0] - 2.1).abs() < 1e-15 && (p[1] - 1.0).abs() < 1e-15);
        assert!((state.velocity(1)[0] - 0.5).abs() < 1e-15);
    }

    #[test]
    fn wraps_positions_into_the_box() {
        let mut system = two_atoms(1.1);
        system.positions[0][0] = -1.0;
        system.positions[1][2] = 21.5;
        let state = State::from_physical(system).unwrap();
        assert!((state.position(1)[0] - 9.0).abs() < 1e-14);
        assert!((state.position(0)[2] - 1.5).abs() < 1e-14);
    }

    #[test]
    fn rejects_bad_systems() {
        let mut system = two_atoms(1.1);
        system.ids[1] = 2;
        let error = State::from_physical(system).unwrap_err().to_string();
        assert!(error.contains("atom id 2 appears twice"), "{error}");

        let mut system = two_atoms(1.1);
        system.params.pair_coeffs[0].cutoff = 6.0;
        let error = State::from_physical(system).unwrap_err().to_string();
        assert!(error.contains("half the shortest box edge"), "{error}");

        let mut system = two_atoms(1.1);
        system.positions[0][1] = f64::NAN;
        let error = State::from_physical(system).unwrap_err().to_string();
        assert!(error.contains("atom 2 has a non-finite y"), "{error}");
    }
}
