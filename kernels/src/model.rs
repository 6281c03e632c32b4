//! The fixed-point model: number formats and pair tables, derived from [`Params`] deterministically.
//!
//! Number formats (F = `length_bits`, FF = `force_bits`, EF = [`ENERGY_BITS`]):
//! - position: `u64` fraction of the box edge; forces use the high 32 bits, so a pair separation
//!   `dx = (xi_hi - xj_hi) as i32` is the minimum image by two's-complement wrap-around;
//! - separation: `p = (|dx| * multiplier) >> shift`, an unsigned length in units of `2^-F` sigma-units,
//!   `r2 = px^2 + py^2 + pz^2` in units of `2^-2F`; a pair with any `p >= 2^30` is beyond every cutoff;
//! - pair functions of `r2` (force over distance, energy, virial) from piecewise cubic tables: segment
//!   index from the octave of `r2` and its next [`SEGMENT_BITS`] bits, a 31-bit fraction `t` from the bits
//!   below, integer Horner steps `y = c + (y * t) >> 31`;
//! - force component: `sign(dx) * ((y * p) >> segment.shift)`, an `i64` in units of `2^-FF`, exactly
//!   antisymmetric, so a half neighbour list (newton) and a full list give the same sums;
//! - energy and virial per pair: `y` shifted to units of `2^-EF`;
//! - velocity: `i64` box fraction per step; a half kick adds `floor(F * kick)` with a per-type,
//!   per-axis factor; a drift adds the velocity to the position (exact, wrapping).
//!
//! Changing anything here changes results: bump [`MODEL_VERSION`], which is part of every checkpoint.

use crate::numbers::{Factor, ceil_log2, exp2i, exponent};
use crate::system::Params;

/// Version of the number formats and tables; checkpoints record it and refuse another.
pub const MODEL_VERSION: u32 = 1;
/// Table segments per octave of r², as a power of two.
pub const SEGMENT_BITS: u32 = 7;
/// Fraction bits of the position inside a segment.
pub const FRACTION_BITS: u32 = 31;
/// Coefficients of a segment are scaled so that the sum of their magnitudes stays below `2^30`.
pub const COEFFICIENT_BITS: i32 = 30;
/// Pair distances below this fraction of sigma are evaluated at it (a finite force for overlapping
/// atoms; Lennard-Jones atoms at liquid temperatures never come near it).
pub const CLAMP_OVER_SIGMA: f64 = 0.5;
/// Separations are bounded by `2^SEPARATION_BITS` so that r² fits in 62 bits.
pub const SEPARATION_BITS: u32 = 30;
/// Fraction bits of pair energies and virials.
pub const ENERGY_BITS: i32 = 32;

/// Shifts of the per-type factors (kick, friction, noise) that the integer kernels support: the GPU
/// shifts 64-bit words right by 0 to 63 bits, and the CPU accepts the same, so both engines refuse the
/// same systems.
pub const FACTOR_SHIFT_RANGE: std::ops::Range<i32> = 0..64;

/// One table segment: cubic coefficients in `t` (c0 + c1 t + c2 t² + c3 t³) and the shift that scales
/// the result. 32 bytes, so a table segment never straddles two cache lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, bytemuck::Pod, bytemuck::Zeroable)]
#[repr(C, align(32))]
pub struct Segment {
    pub coefficients: [i32; 4],
    pub shift: i32,
    pub padding: [i32; 3],
}

impl Segment {
    #[inline(always)]
    pub fn evaluate(&self, t: i64) -> i64 {
        let c = &self.coefficients;
        let mut y = c[3] as i64;
        y = c[2] as i64 + ((y * t) >> FRACTION_BITS);
        y = c[1] as i64 + ((y * t) >> FRACTION_BITS);
        c[0] as i64 + ((y * t) >> FRACTION_BITS)
    }
}

/// The tables of one pair of atom types.
#[derive(Debug, Clone, PartialEq)]
pub struct PairTable {
    /// Pairs with `r2 >= cutoff_squared` do not interact.
    pub cutoff_squared: u64,
    /// `r2` is raised to at least this before the table lookup.
    pub clamp_squared: u64,
    /// Octave of `clamp_squared`; segment 0 starts at `2^first_octave`.
    pub first_octave: u32,
    /// Force over distance, `F(r) / r`.
    pub force: Vec<Segment>,
    /// Pair energy (shifted if requested).
    pub energy: Vec<Segment>,
    /// Virial `r F(r)`.
    pub virial: Vec<Segment>,
}

/// Where `r2` falls in a table: the segment index and the 31-bit fraction inside it.
#[inline(always)]
pub fn locate(r2: u64, first_octave: u32) -> (usize, i64) {
    let octave = 63 - r2.leading_zeros();
    let below = octave - SEGMENT_BITS;
    let segment =
        (((octave - first_octave) << SEGMENT_BITS) | ((r2 >> below) as u32 & ((1 << SEGMENT_BITS) - 1))) as usize;
    let remainder = r2 & ((1u64 << below) - 1);
    let t = if below >= FRACTION_BITS {
        remainder >> (below - FRACTION_BITS)
    } else {
        remainder << (FRACTION_BITS - below)
    };
    (segment, t as i64)
}

/// Separation scale of one axis: `p = (|dx| * multiplier) >> shift`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scale {
    pub multiplier: u64,
    pub shift: u32,
}

impl Scale {
    #[inline(always)]
    pub fn apply(self, dx: i32) -> u64 {
        (dx.unsigned_abs() as u64 * self.multiplier) >> self.shift
    }
}

/// The Langevin step in integers: `v <- friction(v) + noise(2u - 2^32 + 1)` for a random word `u`.
#[derive(Debug, Clone, PartialEq)]
pub struct LangevinModel {
    pub seed: u64,
    pub friction: Factor,
    /// Per type and axis; `None` at zero temperature.
    pub noise: Vec<[Option<Factor>; 3]>,
}

/// Everything the integer engines need.
#[derive(Debug, Clone, PartialEq)]
pub struct Model {
    pub types: usize,
    /// F: separations are in units of `2^-F`.
    pub length_bits: u32,
    /// FF: forces are in units of `2^-FF`.
    pub force_bits: i32,
    pub separation: [Scale; 3],
    /// Half-kick factor per type and axis.
    pub kick: Vec<[Factor; 3]>,
    /// `types x types` tables, row-major.
    pub tables: Vec<PairTable>,
    pub langevin: Option<LangevinModel>,
}

/// The pair functions of one Lennard-Jones pair in terms of `u = r²`, with derivatives by `u`.
struct LennardJones {
    epsilon: f64,
    sigma_squared: f64,
    energy_shift: f64,
}

impl LennardJones {
    fn powers(&self, u: f64) -> (f64, f64) {
        let s = self.sigma_squared / u;
        let s3 = s * s * s;
        (s3, s3 * s3)
    }

    /// `F(r)/r` and its derivative.
    fn force(&self, u: f64) -> (f64, f64) {
        let (s3, s6) = self.powers(u);
        let e24 = 24.0 * self.epsilon;
        (e24 * (2.0 * s6 - s3) / u, e24 * (-14.0 * s6 + 4.0 * s3) / (u * u))
    }

    fn energy(&self, u: f64) -> (f64, f64) {
        let (s3, s6) = self.powers(u);
        let e4 = 4.0 * self.epsilon;
        (e4 * (s6 - s3) - self.energy_shift, e4 * (-6.0 * s6 + 3.0 * s3) / u)
    }

    /// `r F(r)`, whose sum over pairs is the virial.
    fn virial(&self, u: f64) -> (f64, f64) {
        let (s3, s6) = self.powers(u);
        let e24 = 24.0 * self.epsilon;
        (e24 * (2.0 * s6 - s3), e24 * (-12.0 * s6 + 3.0 * s3) / u)
    }
}

/// A segment fitted in floating point, before it is scaled to integers.
struct Fitted {
    coefficients: [f64; 4],
    /// The power of two that brings the coefficients to [`COEFFICIENT_BITS`]; `None` if all are zero.
    scale_bits: Option<i32>,
}

/// Cubic Hermite interpolation on one segment from values and derivatives at both ends: continuous
/// value and slope across segments, built from `+ - * /` only.
fn fit(function: &dyn Fn(f64) -> (f64, f64), start: f64, width: f64) -> Fitted {
    let (f0, d0) = function(start);
    let (f1, d1) = function(start + width);
    let coefficients = [f0, width * d0, 3.0 * (f1 - f0) - width * (2.0 * d0 + d1), 2.0 * (f0 - f1) + width * (d0 + d1)];
    let magnitude: f64 = coefficients.iter().map(|c| c.abs()).sum();
    let scale_bits = (magnitude > 0.0).then(|| COEFFICIENT_BITS - 1 - exponent(magnitude));
    Fitted { coefficients, scale_bits }
}

fn quantise(fitted: &Fitted, shift: i32) -> Segment {
    let scale = fitted.scale_bits.unwrap_or(0);
    let coefficients = std::array::from_fn(|k| (fitted.coefficients[k] * exp2i(scale)).round() as i32);
    Segment { coefficients, shift, padding: [0; 3] }
}

/// Segments of one pair function over the octaves `first..=last` of integer r² (units `2^-2F`).
fn fit_function(function: &dyn Fn(f64) -> (f64, f64), first: u32, last: u32, length_bits: u32) -> Vec<Fitted> {
    let mut segments = Vec::new();
    for octave in first..=last {
        let width_bits = octave as i32 - SEGMENT_BITS as i32 - 2 * length_bits as i32;
        for index in 0..(1u64 << SEGMENT_BITS) {
            let start = ((1u64 << SEGMENT_BITS) + index) as f64 * exp2i(width_bits);
            segments.push(fit(function, start, exp2i(width_bits)));
        }
    }
    segments
}

struct FittedPair {
    cutoff_squared: u64,
    clamp_squared: u64,
    first_octave: u32,
    force: Vec<Fitted>,
    energy: Vec<Fitted>,
    virial: Vec<Fitted>,
    /// Largest pair force magnitude, at the clamp distance.
    force_max: f64,
}

fn fit_pair(params: &Params, a: usize, b: usize, length_bits: u32) -> FittedPair {
    let coeff = params.pair(a, b);
    let to_fixed = |r: f64| (r * r * exp2i(2 * length_bits as i32)).round() as u64;
    let cutoff_squared = to_fixed(coeff.cutoff);
    let clamp = (CLAMP_OVER_SIGMA * coeff.sigma).min(coeff.cutoff / 2.0);
    let clamp_squared = to_fixed(clamp).max(1 << (SEGMENT_BITS + 1));
    let first_octave = 63 - clamp_squared.leading_zeros();
    let last_octave = 63 - (cutoff_squared - 1).leading_zeros();
    assert!(clamp_squared < cutoff_squared, "validated parameters give every table a range");
    let sigma_squared = coeff.sigma * coeff.sigma;
    let energy_shift = if params.shift {
        let s = sigma_squared / (coeff.cutoff * coeff.cutoff);
        let s3 = s * s * s;
        4.0 * coeff.epsilon * (s3 * s3 - s3)
    } else {
        0.0
    };
    let lj = LennardJones { epsilon: coeff.epsilon, sigma_squared, energy_shift };
    let force_at_clamp = lj.force(clamp * clamp).0 * clamp;
    FittedPair {
        cutoff_squared,
        clamp_squared,
        first_octave,
        force: fit_function(&|u| lj.force(u), first_octave, last_octave, length_bits),
        energy: fit_function(&|u| lj.energy(u), first_octave, last_octave, length_bits),
        virial: fit_function(&|u| lj.virial(u), first_octave, last_octave, length_bits),
        force_max: force_at_clamp.abs(),
    }
}

fn clamp_shift(shift: i32, low: i32) -> i32 {
    shift.clamp(low, 62)
}

impl Model {
    /// Derives the model; `params` must have passed [`Params::validate`].
    pub fn new(params: &Params) -> Model {
        let types = params.types();
        // Separations up to twice the cutoff stay below 2^30 units.
        let length_bits = (SEPARATION_BITS as i32 - 1 - ceil_log2(params.cutoff_max())) as u32;
        let separation = std::array::from_fn(|d| separation_scale(params.box_length[d], length_bits));
        let fitted: Vec<FittedPair> =
            (0..types * types).map(|ab| fit_pair(params, ab / types, ab % types, length_bits)).collect();
        let force_bits = choose_force_bits(&fitted, length_bits);
        let tables = fitted.iter().map(|pair| quantise_pair(pair, length_bits, force_bits)).collect();
        let kick = params
            .masses
            .iter()
            .map(|&mass| {
                std::array::from_fn(|d| {
                    let dt = params.timestep;
                    Factor::new(dt * dt * exp2i(64 - force_bits) / (2.0 * mass * params.box_length[d]))
                })
            })
            .collect();
        let langevin = params.langevin.map(|l| {
            let dt = params.timestep;
            let c1 = crate::numbers::exp(-dt / l.damping);
            let noise = params
                .masses
                .iter()
                .map(|&mass| {
                    let c2 = ((1.0 - c1 * c1) * l.temperature / mass).sqrt();
                    // xi = (2u - 2^32 + 1) / 2^32 * sqrt(3) has unit variance.
                    std::array::from_fn(|d| {
                        let factor = c2 * 3f64.sqrt() * dt / params.box_length[d] * exp2i(32);
                        (factor > 0.0).then(|| Factor::new(factor))
                    })
                })
                .collect();
            LangevinModel { seed: l.seed, friction: Factor::new(c1), noise }
        });
        Model { types, length_bits, force_bits, separation, kick, tables, langevin }
    }

    /// Checks that every factor's shift is in [`FACTOR_SHIFT_RANGE`]. Validated parameters keep the
    /// factors finite and normal, but a combination of extreme timestep, mass, box and forces can still
    /// ask for a kick or a noise the integers cannot carry.
    pub fn check_factors(&self) -> crate::Result<()> {
        let out_of_range = |what: String, factor: Factor| {
            Err(crate::KernelError::InvalidSystem(format!(
                "the {what} factor needs a shift of {}, outside the supported {}..{}; \
                 the timestep, masses, box or pair coefficients are too extreme for the fixed-point model",
                factor.shift, FACTOR_SHIFT_RANGE.start, FACTOR_SHIFT_RANGE.end
            )))
        };
        for (t, kicks) in self.kick.iter().enumerate() {
            for d in 0..3 {
                if !FACTOR_SHIFT_RANGE.contains(&kicks[d].shift) {
                    return out_of_range(format!("kick of type {} along {}", t + 1, crate::system::axis(d)), kicks[d]);
                }
            }
        }
        let Some(langevin) = &self.langevin else {
            return Ok(());
        };
        if !FACTOR_SHIFT_RANGE.contains(&langevin.friction.shift) {
            return out_of_range("langevin friction".into(), langevin.friction);
        }
        for (t, noises) in langevin.noise.iter().enumerate() {
            for d in 0..3 {
                if let Some(noise) = noises[d].filter(|noise| !FACTOR_SHIFT_RANGE.contains(&noise.shift)) {
                    return out_of_range(
                        format!("langevin noise of type {} along {}", t + 1, crate::system::axis(d)),
                        noise,
                    );
                }
            }
        }
        Ok(())
    }

    #[inline(always)]
    pub fn table(&self, a: u32, b: u32) -> &PairTable {
        &self.tables[a as usize * self.types + b as usize]
    }

    /// r² in model units of a physical distance.
    pub fn squared(&self, r: f64) -> u64 {
        (r * r * exp2i(2 * self.length_bits as i32)).round() as u64
    }

    /// Separation components of two high position words, and r²; `None` beyond any cutoff.
    #[inline(always)]
    pub fn separation(&self, a: [u32; 3], b: [u32; 3]) -> Option<([i32; 3], [u64; 3], u64)> {
        let dx: [i32; 3] = std::array::from_fn(|d| a[d].wrapping_sub(b[d]) as i32);
        let p: [u64; 3] = std::array::from_fn(|d| self.separation[d].apply(dx[d]));
        if (p[0] | p[1] | p[2]) >> SEPARATION_BITS != 0 {
            return None;
        }
        Some((dx, p, p[0] * p[0] + p[1] * p[1] + p[2] * p[2]))
    }
}

/// All pair tables in one array with per-pair-type parameters, the layout the vectorised CPU loop and
/// the GPU read: pair type `a * types + b` has its force segments at `offset[pt]..`.
#[derive(Debug, Clone, PartialEq)]
pub struct FlatTables {
    pub cutoff_squared: Vec<u64>,
    pub clamp_squared: Vec<u64>,
    pub first_octave: Vec<u32>,
    pub offset: Vec<u32>,
    pub force: Vec<Segment>,
    pub energy: Vec<Segment>,
    pub virial: Vec<Segment>,
}

impl Model {
    pub fn flat_tables(&self) -> FlatTables {
        let mut flat = FlatTables {
            cutoff_squared: Vec::new(),
            clamp_squared: Vec::new(),
            first_octave: Vec::new(),
            offset: Vec::new(),
            force: Vec::new(),
            energy: Vec::new(),
            virial: Vec::new(),
        };
        for table in &self.tables {
            flat.cutoff_squared.push(table.cutoff_squared);
            flat.clamp_squared.push(table.clamp_squared);
            flat.first_octave.push(table.first_octave);
            flat.offset.push(flat.force.len() as u32);
            flat.force.extend(&table.force);
            flat.energy.extend(&table.energy);
            flat.virial.extend(&table.virial);
        }
        flat
    }
}

/// A half kick, `v += floor(F * kick)`, per axis.
#[inline(always)]
pub fn half_kick(velocity: &mut [i64; 3], force: &[i64; 3], kick: &[Factor; 3]) {
    for d in 0..3 {
        velocity[d] = velocity[d].wrapping_add(kick[d].apply(force[d]));
    }
}

/// A drift, `x += v`, exact and periodic.
#[inline(always)]
pub fn drift(position: &mut [u64; 3], velocity: &[i64; 3]) {
    for d in 0..3 {
        position[d] = position[d].wrapping_add(velocity[d] as u64);
    }
}

impl LangevinModel {
    /// The Ornstein-Uhlenbeck velocity update of one atom after step `step`.
    #[inline]
    pub fn apply(&self, velocity: &mut [i64; 3], atom_type: u32, canonical: u32, step: u64) {
        for d in 0..3 {
            let mut v = self.friction.apply(velocity[d]);
            if let Some(noise) = self.noise[atom_type as usize][d] {
                let word = crate::rng::draw(self.seed, step, canonical, d as u32);
                v = v.wrapping_add(noise.apply(2 * word as i64 - (1i64 << 32) + 1));
            }
            velocity[d] = v;
        }
    }
}

fn separation_scale(length: f64, length_bits: u32) -> Scale {
    let e = exponent(length);
    let mut shift = 63 - e - length_bits as i32;
    let mut multiplier = (length * exp2i(31 - e)).round();
    if multiplier >= exp2i(32) {
        shift -= 1;
        multiplier = (length * exp2i(30 - e)).round();
    }
    assert!((0..64).contains(&shift), "box length {length} out of the supported range");
    Scale { multiplier: multiplier as u64, shift: shift as u32 }
}

/// The largest FF for which every force segment shifts right (no precision is invented) and the sum
/// of 1024 pair forces at the clamp distance still fits in 62 bits.
fn choose_force_bits(fitted: &[FittedPair], length_bits: u32) -> i32 {
    let force_max = fitted.iter().map(|p| p.force_max).fold(1e-300, f64::max);
    let headroom = 52 - ceil_log2(force_max.max(1e-12));
    let finest = fitted
        .iter()
        .flat_map(|p| p.force.iter().filter_map(|s| s.scale_bits))
        .min()
        .map_or(headroom, |k| k + length_bits as i32);
    headroom.min(finest)
}

fn quantise_pair(pair: &FittedPair, length_bits: u32, force_bits: i32) -> PairTable {
    let force = pair
        .force
        .iter()
        .map(|s| quantise(s, clamp_shift(s.scale_bits.unwrap_or(0) + length_bits as i32 - force_bits, 0)))
        .collect();
    let scaled = |segments: &[Fitted]| {
        segments.iter().map(|s| quantise(s, clamp_shift(s.scale_bits.unwrap_or(0) - ENERGY_BITS, -30))).collect()
    };
    PairTable {
        cutoff_squared: pair.cutoff_squared,
        clamp_squared: pair.clamp_squared,
        first_octave: pair.first_octave,
        force,
        energy: scaled(&pair.energy),
        virial: scaled(&pair.virial),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::system::PairCoeff;

    fn lj_params(cutoff: f64, shift: bool) -> Params {
        Params {
            box_origin: [0.0; 3],
            box_length: [33.591_923_827_650_15; 3],
            masses: vec![1.0],
            pair_coeffs: vec![PairCoeff { epsilon: 1.0, sigma: 1.0, cutoff }],
            shift,
            timestep: 0.005,
            langevin: None,
        }
    }

    /// Evaluates one table at a physical distance the way the engines do.
    fn table_value(model: &Model, r: f64, pick: fn(&PairTable) -> &Vec<Segment>, unit_bits: i32) -> f64 {
        let table = model.table(0, 0);
        let r2 = model.squared(r).max(table.clamp_squared);
        let (segment, t) = locate(r2, table.first_octave);
        let s = &pick(table)[segment];
        let scale = s.shift as f64;
        s.evaluate(t) as f64 / exp2i(unit_bits) / exp2i(scale as i32)
    }

    #[test]
    fn tables_match_lennard_jones() {
        let model = Model::new(&lj_params(2.5, false));
        assert_eq!(model.length_bits, 27);
        let mut worst = [0f64; 3];
        for k in 0..20_000 {
            let r = 0.8 + 1.7 * k as f64 / 20_000.0;
            let (s6, s12) = (r.powi(-6), r.powi(-12));
            let force_over_r = 24.0 * (2.0 * s12 - s6) / (r * r);
            let energy = 4.0 * (s12 - s6);
            let virial = 24.0 * (2.0 * s12 - s6);
            let got_force = table_value(&model, r, |t| &t.force, model.force_bits - model.length_bits as i32);
            let got_energy = table_value(&model, r, |t| &t.energy, ENERGY_BITS);
            let got_virial = table_value(&model, r, |t| &t.virial, ENERGY_BITS);
            // Relative to the repulsive magnitude, which is what the table resolves.
            let norm = 24.0 * (2.0 * s12 + s6);
            worst[0] = worst[0].max((got_force - force_over_r).abs() / norm * (r * r));
            worst[1] = worst[1].max((got_energy - energy).abs() / (4.0 * (s12 + s6)));
            worst[2] = worst[2].max((got_virial - virial).abs() / norm);
        }
        assert!(worst.iter().all(|&w| w < 1e-7), "worst relative errors {worst:?}");
    }

    #[test]
    fn shifted_energy_is_zero_at_the_cutoff() {
        let model = Model::new(&lj_params(2.5, true));
        let near_cutoff = table_value(&model, 2.499_999, |t| &t.energy, ENERGY_BITS);
        assert!(near_cutoff.abs() < 1e-7, "{near_cutoff}");
    }

    #[test]
    fn model_is_reproducible() {
        assert_eq!(Model::new(&lj_params(2.5, false)), Model::new(&lj_params(2.5, false)));
    }

    #[test]
    fn separation_scale_converts_to_length_units() {
        let model = Model::new(&lj_params(2.5, false));
        let one_sigma = (1.0 / 33.591_923_827_650_15 * exp2i(32)) as i32;
        let p = model.separation[0].apply(one_sigma) as f64 / exp2i(model.length_bits as i32);
        assert!((p - 1.0).abs() < 1e-8, "{p}");
        let (_, _, r2) = model.separation([one_sigma as u32, 0, 0], [0, 0, 0]).unwrap();
        assert!((r2 as f64 / exp2i(54) - 1.0).abs() < 3e-8);
    }
}
