//! The pair loop for one atom type, written with AVX-512 intrinsics.
//!
//! Eight neighbours per vector of 64-bit lanes. Per vector: two gathers for the positions (x and y
//! as one 64-bit word, z), three for the table segment (c0c1, c2c3, shift), and integer arithmetic
//! identical to the scalar reference: the same separations, the same table location, the same
//! Horner steps and shifts. The newton reaction on the neighbours is added by a scalar pass over a
//! small buffer, because neighbours of one atom are scattered in memory. At thermo steps the energy
//! and virial tables are evaluated at the same locations.

#![cfg(target_arch = "x86_64")]

use std::arch::x86_64::*;

use super::ListChunk;
use super::pairs::Pairs;
use crate::model::{FRACTION_BITS, SEGMENT_BITS, SEPARATION_BITS, Segment};
use crate::thermo::Sums;

/// Neighbours computed before their reactions are applied.
const BUFFER: usize = 64;

/// Per-run constants, broadcast once.
struct Constants {
    multiplier: [__m512i; 3],
    shift: [__m128i; 3],
    limit: __m512i,
    cutoff: __m512i,
    cutoff_below: __m512i,
    clamp: __m512i,
    /// 63 - first octave, so that `octave - first = top - lzcnt`.
    top: __m512i,
    sign_x: __m512i,
}

/// Where eight pairs are: separations, signs, which lanes interact, and their table location.
struct Located {
    p: [__m512i; 3],
    negative: [__mmask8; 3],
    active: __mmask8,
    /// Segment index times four (segments are four 64-bit words).
    rows: __m512i,
    t: __m512i,
}

impl Pairs<'_> {
    /// Single-type forces of one chunk, and with `ENERGY` the pair energy and virial sums; the caller
    /// checks the CPU features.
    #[target_feature(enable = "avx512f,avx512dq,avx512cd,avx512vl,avx512bw")]
    pub(super) unsafe fn forces_avx512_single<const ENERGY: bool>(
        &self,
        high: &[[u32; 4]],
        chunk: &ListChunk,
        force: &mut [[i64; 3]],
        sums: &mut Sums,
    ) {
        let tables = self.tables;
        let constants = Constants {
            multiplier: std::array::from_fn(|d| _mm512_set1_epi64(self.multiplier[d] as i64)),
            shift: std::array::from_fn(|d| _mm_set_epi64x(0, self.shift[d] as i64)),
            limit: _mm512_set1_epi64(1 << SEPARATION_BITS),
            cutoff: _mm512_set1_epi64(tables.cutoff_squared[0] as i64),
            cutoff_below: _mm512_set1_epi64(tables.cutoff_squared[0] as i64 - 1),
            clamp: _mm512_set1_epi64(tables.clamp_squared[0] as i64),
            top: _mm512_set1_epi64(63 - tables.first_octave[0] as i64),
            sign_x: _mm512_set1_epi64(0x8000_0000),
        };
        let mut buffer = [[0i64; BUFFER]; 3];
        for i in chunk.start..chunk.end {
            let first = chunk.offsets[i - chunk.start] as usize;
            let last = chunk.offsets[i - chunk.start + 1] as usize;
            let mut totals = [_mm512_setzero_si512(); 3];
            let mut energy = [_mm512_setzero_si512(); 2];
            for start in (first..last).step_by(BUFFER) {
                let end = (start + BUFFER).min(last);
                for block in (start..end).step_by(8) {
                    let count = (end - block).min(8);
                    // SAFETY: lists are padded by one vector and hold indices into `high`.
                    let at = unsafe { self.locate(&constants, high, i, &chunk.neighbors[block..block + 8], count) };
                    let (y, shift) = unsafe { evaluate(&tables.force, &at) };
                    for d in 0..3 {
                        let magnitude = _mm512_srav_epi64(_mm512_mul_epi32(y, at.p[d]), shift);
                        let kept = _mm512_maskz_mov_epi64(at.active, magnitude);
                        let f = _mm512_mask_sub_epi64(kept, at.negative[d], _mm512_setzero_si512(), kept);
                        totals[d] = _mm512_add_epi64(totals[d], f);
                        // SAFETY: `block - start` + 8 <= BUFFER.
                        unsafe { _mm512_storeu_si512(buffer[d].as_mut_ptr().add(block - start) as *mut __m512i, f) };
                    }
                    if ENERGY {
                        for (sum, table) in energy.iter_mut().zip([&tables.energy, &tables.virial]) {
                            // SAFETY: energy and virial tables have the force table's layout.
                            let (y, shift) = unsafe { evaluate(table, &at) };
                            let right = _mm512_srav_epi64(y, _mm512_max_epi64(shift, _mm512_setzero_si512()));
                            let left = _mm512_sllv_epi64(y, _mm512_sub_epi64(_mm512_setzero_si512(), shift));
                            let scaled = _mm512_mask_mov_epi64(right, _mm512_movepi64_mask(shift), left);
                            *sum = _mm512_add_epi64(*sum, _mm512_maskz_mov_epi64(at.active, scaled));
                        }
                    }
                }
                for (k, &j) in chunk.neighbors[start..end].iter().enumerate() {
                    let fj = &mut force[j as usize];
                    for d in 0..3 {
                        fj[d] -= buffer[d][k];
                    }
                }
            }
            let fi = &mut force[i];
            for d in 0..3 {
                fi[d] += _mm512_reduce_add_epi64(totals[d]);
            }
            if ENERGY {
                sums.energy += _mm512_reduce_add_epi64(energy[0]) as i128;
                sums.virial += _mm512_reduce_add_epi64(energy[1]) as i128;
            }
        }
    }

    /// Separations of atom `i` from eight neighbours and where they fall in the tables (lanes past
    /// `count` are inactive).
    #[inline]
    #[target_feature(enable = "avx512f,avx512dq,avx512cd,avx512vl,avx512bw")]
    unsafe fn locate(&self, c: &Constants, high: &[[u32; 4]], i: usize, js: &[u32], count: usize) -> Located {
        let valid: __mmask8 = ((1u32 << count) - 1) as __mmask8;
        let base = high.as_ptr() as *const u8;
        // SAFETY: `js` has eight readable indices into `high`.
        let (xy, z) = unsafe {
            let indexes = _mm256_loadu_si256(js.as_ptr() as *const __m256i);
            (
                _mm512_i32gather_epi64::<8>(_mm256_slli_epi32::<1>(indexes), base as *const i64),
                _mm256_i32gather_epi32::<4>(base.add(8) as *const i32, _mm256_slli_epi32::<2>(indexes)),
            )
        };
        let a = high[i];
        let dxy = _mm512_sub_epi32(_mm512_set1_epi64((a[0] as u64 | (a[1] as u64) << 32) as i64), xy);
        let dz = _mm256_sub_epi32(_mm256_set1_epi32(a[2] as i32), z);
        let negative = [_mm512_test_epi64_mask(dxy, c.sign_x), _mm512_movepi64_mask(dxy), _mm256_movepi32_mask(dz)];
        let magnitudes = _mm512_abs_epi32(dxy);
        let absolute = [magnitudes, _mm512_srli_epi64::<32>(magnitudes), _mm512_cvtepu32_epi64(_mm256_abs_epi32(dz))];
        let p: [__m512i; 3] =
            std::array::from_fn(|d| _mm512_srl_epi64(_mm512_mul_epu32(absolute[d], c.multiplier[d]), c.shift[d]));
        let near = _mm512_cmplt_epu64_mask(_mm512_or_si512(_mm512_or_si512(p[0], p[1]), p[2]), c.limit);
        let r2 = _mm512_add_epi64(
            _mm512_add_epi64(_mm512_mul_epu32(p[0], p[0]), _mm512_mul_epu32(p[1], p[1])),
            _mm512_mul_epu32(p[2], p[2]),
        );
        let active = valid & near & _mm512_cmplt_epu64_mask(r2, c.cutoff);
        let u = _mm512_min_epu64(_mm512_max_epu64(r2, c.clamp), c.cutoff_below);
        // The segment: octave above the table's first, then the next SEGMENT_BITS bits; the fraction:
        // the FRACTION_BITS bits after those. Shifting by the leading zeros aligns both.
        let zeros = _mm512_lzcnt_epi64(u);
        let aligned = _mm512_sllv_epi64(u, _mm512_add_epi64(zeros, _mm512_set1_epi64(1)));
        let octave = _mm512_sub_epi64(c.top, zeros);
        let segment = _mm512_or_si512(
            _mm512_slli_epi64::<{ SEGMENT_BITS }>(octave),
            _mm512_srli_epi64::<{ 64 - SEGMENT_BITS }>(aligned),
        );
        let t = _mm512_srli_epi64::<{ 64 - FRACTION_BITS }>(_mm512_slli_epi64::<{ SEGMENT_BITS }>(aligned));
        Located { p, negative, active, rows: _mm512_slli_epi64::<2>(segment), t }
    }
}

/// The table's polynomial at the located segments and its shift, per lane.
#[inline]
#[target_feature(enable = "avx512f,avx512dq,avx512cd,avx512vl,avx512bw")]
unsafe fn evaluate(table: &[Segment], at: &Located) -> (__m512i, __m512i) {
    // Segments are 32 bytes: c0c1, c2c3, shift.
    let segments = table.as_ptr() as *const u8;
    // SAFETY: the location is clamped into the table, so every segment index is in range.
    let (c01, c23, shift) = unsafe {
        (
            _mm512_i64gather_epi64::<8>(at.rows, segments as *const i64),
            _mm512_i64gather_epi64::<8>(at.rows, segments.add(8) as *const i64),
            _mm512_i64gather_epi32::<4>(_mm512_slli_epi64::<1>(at.rows), segments.add(16) as *const i32),
        )
    };
    let low = |w: __m512i| _mm512_srai_epi64::<32>(_mm512_slli_epi64::<32>(w));
    let step = |coefficient: __m512i, y: __m512i| {
        _mm512_add_epi64(coefficient, _mm512_srai_epi64::<{ FRACTION_BITS }>(_mm512_mul_epi32(y, at.t)))
    };
    let mut y = _mm512_srai_epi64::<32>(c23);
    y = step(low(c23), y);
    y = step(_mm512_srai_epi64::<32>(c01), y);
    y = step(low(c01), y);
    (y, _mm512_cvtepi32_epi64(shift))
}
