//! Counter-based random numbers: a value is a pure function of (seed, step, atom, dimension), so any
//! device, thread count or restart point draws the same numbers. Only 32-bit multiplies, xors and
//! shifts are used, which WGSL has; `md.wgsl` implements the same `mix32` and `langevin_draw`.

/// A 32-bit integer hash with good avalanche ("lowbias32", Chris Wellons' hash-prospector).
#[inline]
pub fn mix32(mut x: u32) -> u32 {
    x ^= x >> 16;
    x = x.wrapping_mul(0x7feb_352d);
    x ^= x >> 15;
    x = x.wrapping_mul(0x846c_a68b);
    x ^= x >> 16;
    x
}

/// The random word for atom `atom` (canonical index), dimension `dimension`, at `step`.
#[inline]
pub fn draw(seed: u64, step: u64, atom: u32, dimension: u32) -> u32 {
    let mut h = mix32(seed as u32 ^ 0x9e37_79b9);
    h = mix32(h ^ (seed >> 32) as u32);
    h = mix32(h ^ step as u32);
    h = mix32(h ^ (step >> 32) as u32);
    h = mix32(h ^ atom);
    mix32(h ^ dimension.wrapping_mul(0x632b_e5ab))
}

/// SplitMix64, for host-side set-up streams (lattice velocities), never inside a step.
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)` with 53 random bits.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_are_spread_and_distinct() {
        let mut seen = std::collections::HashSet::new();
        let mut sum = 0f64;
        for atom in 0..1000 {
            for dimension in 0..3 {
                let value = draw(87287, 12, atom, dimension);
                seen.insert(value);
                sum += value as f64 / u32::MAX as f64;
            }
        }
        assert_eq!(seen.len(), 3000);
        assert!((sum / 3000.0 - 0.5).abs() < 0.02);
        assert_ne!(draw(1, 0, 0, 0), draw(2, 0, 0, 0));
        assert_ne!(draw(1, 0, 0, 0), draw(1, 1 << 32, 0, 0));
    }

    #[test]
    fn splitmix_is_uniform() {
        let mut rng = SplitMix64::new(7);
        let mean = (0..10_000).map(|_| rng.next_f64()).sum::<f64>() / 10_000.0;
        assert!((mean - 0.5).abs() < 0.01);
    }
}
