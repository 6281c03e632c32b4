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

/// A closed range of accepted values for one parameter. The bounds below are far outside what any
/// simulation uses; they exist so that the model's number formats (`model.rs`) stay inside `f64`'s
/// normal range and its assertions stay true for every system that passes [`Params::validate`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Range {
    pub min: f64,
    pub max: f64,
}

impl Range {
    /// Whether `value` is inside; NaN never is.
    pub fn contains(&self, value: f64) -> bool {
        self.min <= value && value <= self.max
    }

    /// `Err("is NaN; it must be between 0.001 and 10000.0")` for a value outside, to follow a name.
    pub fn check(&self, value: f64) -> Result<(), String> {
        if self.contains(value) {
            Ok(())
        } else {
            Err(format!("is {value:?}; it must be between {:?} and {:?}", self.min, self.max))
        }
    }
}

/// Pair cutoffs: the length resolution is `2^-F` with `F = 29 - ceil(log2(cutoff))`, so the largest
/// cutoff sets it; these bounds keep `F` between 15 and 39.
pub const CUTOFF_RANGE: Range = Range { min: 1e-3, max: 1e4 };
/// Sigma relative to its pair's cutoff, so table values neither overflow at the clamp distance nor
/// underflow at the cutoff.
pub const SIGMA_OVER_CUTOFF_RANGE: Range = Range { min: 1e-3, max: 16.0 };
/// Sigma on its own, as the cutoff and ratio bounds allow (the ratio is checked where the cutoff is known).
pub const SIGMA_RANGE: Range =
    Range { min: CUTOFF_RANGE.min * SIGMA_OVER_CUTOFF_RANGE.min, max: CUTOFF_RANGE.max * SIGMA_OVER_CUTOFF_RANGE.max };
/// Epsilon of an interacting pair (0 turns a pair off).
pub const EPSILON_RANGE: Range = Range { min: 1e-6, max: 1e6 };
/// Atom masses.
pub const MASS_RANGE: Range = Range { min: 1e-6, max: 1e6 };
/// The timestep.
pub const TIMESTEP_RANGE: Range = Range { min: 1e-9, max: 1e3 };
/// Box edges, absolutely; each edge is also more than twice the largest cutoff.
pub const BOX_LENGTH_RANGE: Range = Range { min: 2e-3, max: 1e9 };
/// A box edge is at most this many largest cutoffs, so separations keep their 30-bit format and the
/// engines' cell grids stay small.
pub const BOX_OVER_CUTOFF_MAX: f64 = 1e6;
/// The lower box corner, per axis.
pub const BOX_ORIGIN_RANGE: Range = Range { min: -1e9, max: 1e9 };
/// Langevin temperature when it is not zero.
pub const TEMPERATURE_RANGE: Range = Range { min: 1e-9, max: 1e9 };
/// Langevin damping time; it is also at least the timestep divided by [`DAMPING_STEPS_MIN`].
pub const DAMPING_RANGE: Range = Range { min: 1e-9, max: 1e9 };
/// The damping time is at least this fraction of a timestep (beyond it, friction would be `exp(-40)`).
pub const DAMPING_STEPS_MIN: f64 = 1.0 / 40.0;

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

    /// Checks the parameters once, so the engines can assert instead of re-checking. Every bound is a
    /// named constant above; errors name the parameter and its value.
    pub fn validate(&self) -> Result<()> {
        self.validate_counts()?;
        for (t, &mass) in self.masses.iter().enumerate() {
            MASS_RANGE.check(mass).map_err(|reason| invalid(format!("mass of type {} {reason}", t + 1)))?;
        }
        self.validate_pairs()?;
        self.validate_box()?;
        TIMESTEP_RANGE.check(self.timestep).map_err(|reason| invalid(format!("timestep {reason}")))?;
        if let Some(langevin) = self.langevin {
            validate_langevin(&langevin, self.timestep)?;
        }
        Ok(())
    }

    fn validate_counts(&self) -> Result<()> {
        let types = self.types();
        if types == 0 || types > TYPES_MAX {
            return Err(invalid(format!("{types} atom types; between 1 and {TYPES_MAX} are supported")));
        }
        if self.pair_coeffs.len() != types * types {
            return Err(invalid(format!("{} pair coefficients for {types} types", self.pair_coeffs.len())));
        }
        Ok(())
    }

    fn validate_pairs(&self) -> Result<()> {
        let types = self.types();
        for a in 0..types {
            for b in 0..types {
                let p = self.pair(a, b);
                check_pair(p).map_err(|reason| invalid(format!("pair {} {}: {reason}", a + 1, b + 1)))?;
                if p != self.pair(b, a) {
                    return Err(invalid(format!(
                        "pair coefficients of types {} and {} are not symmetric",
                        a + 1,
                        b + 1
                    )));
                }
            }
        }
        if let Some(p) = self.pair_coeffs.iter().find(|p| p.cutoff < self.cutoff_max() / CUTOFF_RANGE_MAX) {
            return Err(invalid(format!(
                "pair cutoff {} is more than {CUTOFF_RANGE_MAX} times smaller than the largest, {}; \
                 for pairs that should not interact, set epsilon to 0",
                p.cutoff,
                self.cutoff_max()
            )));
        }
        Ok(())
    }

    fn validate_box(&self) -> Result<()> {
        let cutoff = self.cutoff_max();
        for d in 0..3 {
            let length = self.box_length[d];
            BOX_LENGTH_RANGE
                .check(length)
                .map_err(|reason| invalid(format!("box length along {} {reason}", axis(d))))?;
            if length > BOX_OVER_CUTOFF_MAX * cutoff {
                return Err(invalid(format!(
                    "box length along {} is {length:?}, more than {BOX_OVER_CUTOFF_MAX:?} times the largest cutoff {cutoff:?}",
                    axis(d)
                )));
            }
            BOX_ORIGIN_RANGE
                .check(self.box_origin[d])
                .map_err(|reason| invalid(format!("box origin along {} {reason}", axis(d))))?;
        }
        let half_box = self.box_length.iter().copied().fold(f64::INFINITY, f64::min) / 2.0;
        if cutoff >= half_box {
            return Err(invalid(format!(
                "cutoff {cutoff} is not smaller than half the shortest box edge ({half_box}); the minimum image would be ambiguous"
            )));
        }
        Ok(())
    }
}

/// Checks one pair's coefficients on their own (the LAMMPS reader calls it per line).
pub fn check_pair(p: PairCoeff) -> Result<(), String> {
    if !(p.epsilon == 0.0 || EPSILON_RANGE.contains(p.epsilon)) {
        return Err(format!(
            "epsilon is {:?}; it must be 0 or between {:?} and {:?}",
            p.epsilon, EPSILON_RANGE.min, EPSILON_RANGE.max
        ));
    }
    SIGMA_RANGE.check(p.sigma).map_err(|reason| format!("sigma {reason}"))?;
    CUTOFF_RANGE.check(p.cutoff).map_err(|reason| format!("cutoff {reason}"))?;
    if !SIGMA_OVER_CUTOFF_RANGE.contains(p.sigma / p.cutoff) {
        return Err(format!(
            "sigma is {:?}; with cutoff {:?} it must be between {:?} and {:?}",
            p.sigma,
            p.cutoff,
            SIGMA_OVER_CUTOFF_RANGE.min * p.cutoff,
            SIGMA_OVER_CUTOFF_RANGE.max * p.cutoff
        ));
    }
    Ok(())
}

fn validate_langevin(langevin: &Langevin, timestep: f64) -> Result<()> {
    let temperature = langevin.temperature;
    if !(temperature == 0.0 || TEMPERATURE_RANGE.contains(temperature)) {
        return Err(invalid(format!(
            "langevin temperature is {temperature:?}; it must be 0 or between {:?} and {:?}",
            TEMPERATURE_RANGE.min, TEMPERATURE_RANGE.max
        )));
    }
    DAMPING_RANGE.check(langevin.damping).map_err(|reason| invalid(format!("langevin damping {reason}")))?;
    if langevin.damping < timestep * DAMPING_STEPS_MIN {
        return Err(invalid(format!(
            "langevin damping {:?} is far shorter than the timestep {timestep:?} (at least {:?} is needed)",
            langevin.damping,
            timestep * DAMPING_STEPS_MIN
        )));
    }
    Ok(())
}

fn invalid(message: String) -> KernelError {
    KernelError::InvalidSystem(message)
}

fn check_counts(atoms: usize, step: u64) -> Result<()> {
    if !(ATOMS_MIN..=ATOMS_MAX).contains(&atoms) {
        return Err(invalid(format!("{atoms} atoms; between {ATOMS_MIN} and {ATOMS_MAX} are supported")));
    }
    if step > STEP_MAX {
        return Err(invalid(format!("step {step} is beyond the last supported step {STEP_MAX}")));
    }
    Ok(())
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
/// Atoms may lie outside the box (LAMMPS image flags put them there) but no further than this many box
/// lengths, where a coordinate would have lost most of its bits of the position inside the box.
pub const IMAGES_MAX: f64 = 1e6;
/// Lower bound on atoms: temperature has `3N - 3` degrees of freedom.
pub const ATOMS_MIN: usize = 2;
/// Upper bound on the step counter, far beyond any run, so `step + steps` never wraps around.
pub const STEP_MAX: u64 = 1 << 62;

impl State {
    pub fn atoms(&self) -> usize {
        self.ids.len()
    }

    /// Makes a physical system exact: validates it, sorts atoms by id, converts to fixed point.
    pub fn from_physical(system: PhysicalSystem) -> Result<State> {
        let PhysicalSystem { params, step, ids, types, positions, velocities } = system;
        params.validate()?;
        let atoms = ids.len();
        check_counts(atoms, step)?;
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
                    types[i] as u64 + 1,
                    state.params.types()
                )));
            }
            let mut position = [0u64; 3];
            let mut velocity = [0i64; 3];
            for d in 0..3 {
                position[d] = state.position_to_fraction(d, positions[i][d]).map_err(|reason| {
                    KernelError::InvalidSystem(format!("atom {} has {} coordinate {reason}", ids[i], axis(d)))
                })?;
                velocity[d] = state.velocity_to_fixed(d, velocities[i][d]).ok_or_else(|| {
                    KernelError::InvalidSystem(format!(
                        "atom {} has {} velocity {:?} that moves it more than half the box in one step",
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

    /// Checks what the parameters do not cover: the atom and step counts, the parallel arrays, the
    /// canonical id order and the atom types. A decoded checkpoint passes through here.
    pub fn validate(&self) -> Result<()> {
        self.params.validate()?;
        let atoms = self.atoms();
        check_counts(atoms, self.step)?;
        if self.types.len() != atoms || self.positions.len() != atoms || self.velocities.len() != atoms {
            return Err(invalid(format!(
                "{atoms} ids but {} types, {} positions and {} velocities",
                self.types.len(),
                self.positions.len(),
                self.velocities.len()
            )));
        }
        if let Some(pair) = self.ids.windows(2).find(|pair| pair[0] >= pair[1]) {
            return Err(invalid(format!("atom ids are not strictly ascending: {} then {}", pair[0], pair[1])));
        }
        if let Some(index) = self.types.iter().position(|&t| t as usize >= self.params.types()) {
            return Err(invalid(format!(
                "atom {} has type {}, but there are {} types",
                self.ids[index],
                self.types[index] as u64 + 1,
                self.params.types()
            )));
        }
        Ok(())
    }

    fn position_to_fraction(&self, d: usize, x: f64) -> Result<u64, String> {
        if !x.is_finite() {
            return Err(format!("{x:?}, which is not finite"));
        }
        let scaled = (x - self.params.box_origin[d]) / self.params.box_length[d];
        if scaled.abs() > IMAGES_MAX {
            return Err(format!("{x:?}, more than {IMAGES_MAX:?} box lengths from the box"));
        }
        let fraction = scaled - scaled.floor();
        // A fraction that rounds up to 1.0 is the periodic image of 0.
        Ok(if fraction >= 1.0 { 0 } else { (fraction * exp2i(64)) as u64 })
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
        assert!(error.contains("atom 2 has y coordinate NaN, which is not finite"), "{error}");
    }
}
