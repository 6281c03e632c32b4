//! Arithmetic that gives the same bits on every platform.
//!
//! IEEE-754 rounds `+ - * /` and `sqrt` correctly everywhere, but transcendental functions (`exp`,
//! `cbrt`, `powf`, `cos`) come from the platform's libm and may differ in the last bit. Everything that
//! feeds the integer state is derived here from the correctly rounded operations only.
//!
//! The integer helpers at the bottom are the reference semantics of the wide operations that the WGSL
//! kernels emulate with 32-bit words.

/// `2^k` as an exact `f64`, for `-1022 <= k <= 1023`.
pub fn exp2i(k: i32) -> f64 {
    assert!((-1022..=1023).contains(&k), "exp2i({k}) out of range");
    f64::from_bits(((k + 1023) as u64) << 52)
}

/// The binary exponent `e` of a positive finite normal `x`, so that `2^e <= x < 2^(e+1)`.
pub fn exponent(x: f64) -> i32 {
    assert!(x.is_finite() && x > 0.0 && x.is_normal(), "exponent({x}) of a non-positive or subnormal number");
    ((x.to_bits() >> 52) & 0x7ff) as i32 - 1023
}

/// `ceil(log2(x))` for positive finite `x`, exactly.
pub fn ceil_log2(x: f64) -> i32 {
    let e = exponent(x);
    if x == exp2i(e) { e } else { e + 1 }
}

/// Cube root by Newton's method from a fixed start: deterministic, accurate to about one ulp.
pub fn cbrt(x: f64) -> f64 {
    assert!(x.is_finite() && x > 0.0, "cbrt({x})");
    // Start from 2^(e/3), which is within a factor 2 of the root, then iterate to convergence.
    let mut y = exp2i(exponent(x).div_euclid(3));
    for _ in 0..200 {
        let next = (2.0 * y + x / (y * y)) / 3.0;
        if next == y {
            break;
        }
        y = next;
    }
    y
}

/// `e^x` for `|x| <= 50`, from range reduction by halving and a Taylor series: deterministic.
pub fn exp(x: f64) -> f64 {
    assert!(x.is_finite() && x.abs() <= 50.0, "exp({x}) out of range");
    let mut halvings = 0;
    let mut reduced = x;
    while reduced.abs() > 1.0 / 64.0 {
        reduced /= 2.0;
        halvings += 1;
    }
    let mut term = 1.0;
    let mut sum = 1.0;
    for n in 1..=20 {
        term = term * reduced / n as f64;
        sum += term;
    }
    for _ in 0..halvings {
        sum *= sum;
    }
    sum
}

/// A positive `f64` as `mantissa * 2^-shift` with the mantissa in `[2^31, 2^32)`.
///
/// Used for constant factors that multiply integers: `(v * mantissa) >> shift`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Factor {
    pub mantissa: u32,
    pub shift: i32,
}

impl Factor {
    pub fn new(x: f64) -> Factor {
        assert!(x.is_finite() && x > 0.0, "factor of {x}");
        let mut shift = 31 - exponent(x);
        let mut mantissa = (x * exp2i(shift)).round();
        if mantissa >= exp2i(32) {
            shift -= 1;
            mantissa = (x * exp2i(shift)).round();
        }
        Factor { mantissa: mantissa as u32, shift }
    }

    /// `floor(v * self)` for a signed 64-bit `v`.
    #[inline]
    pub fn apply(self, v: i64) -> i64 {
        let product = v as i128 * self.mantissa as i128;
        if self.shift >= 0 { (product >> self.shift) as i64 } else { (product << -self.shift) as i64 }
    }
}

/// Arithmetic shift of a signed value: right for positive `shift`, left for negative.
#[inline]
pub fn shift_signed(v: i64, shift: i32) -> i64 {
    if shift >= 0 { v >> shift } else { v << -shift }
}

/// `floor(y * t / 2^31)`: one Horner step of the table polynomials, `y` a 31-bit-bounded coefficient sum
/// and `t` the 31-bit fraction of the position inside a table segment.
#[inline(always)]
pub fn horner_step(coefficient: i32, y: i64, t: i64) -> i64 {
    coefficient as i64 + ((y * t) >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cube_root_is_accurate() {
        for x in [1e-9, 0.5, 2.0, 4.0 / 0.8442, 27.0, 1e12] {
            let y = cbrt(x);
            assert!(((y * y * y - x) / x).abs() < 4e-16, "cbrt({x}) = {y}");
        }
        assert_eq!(cbrt(27.0), 3.0);
    }

    #[test]
    fn exp_is_accurate() {
        for x in [-20.0, -1.0, -0.001, 0.0, 0.3, 1.0, 10.0] {
            let reference = f64::exp(x);
            assert!(((exp(x) - reference) / reference).abs() < 1e-13, "exp({x})");
        }
    }

    #[test]
    fn factor_round_trips() {
        for x in [1.0, 199.7, 3.3e-7, 1e12, 0.999_999_999_9] {
            let f = Factor::new(x);
            assert!(f.mantissa >= 1 << 31);
            let back = f.mantissa as f64 / exp2i(f.shift);
            assert!(((back - x) / x).abs() < 1e-9);
        }
        assert_eq!(Factor::new(2.0).apply(3), 6);
        assert_eq!(Factor::new(0.5).apply(-3), -2, "floor rounds toward minus infinity");
    }

    #[test]
    fn exponent_and_ceil_log2() {
        assert_eq!(exponent(1.0), 0);
        assert_eq!(exponent(33.59), 5);
        assert_eq!(exponent(0.25), -2);
        assert_eq!(ceil_log2(2.5), 2);
        assert_eq!(ceil_log2(4.0), 2);
        assert_eq!(ceil_log2(1.0), 0);
    }
}
