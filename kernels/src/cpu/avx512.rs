//! The pair loop for one atom type, written with AVX-512 intrinsics.
//!
//! Eight neighbours per vector of 64-bit lanes. Per vector: two gathers for the positions (x and y
//! as one 64-bit word, z), three for the table segment (c0c1, c2c3, shift), and integer arithmetic
//! identical to the scalar reference: the same separations, the same table location, the same
//! Horner steps and shifts. The newton reaction on the neighbours is added by a scalar pass over a
//! small buffer, because neighbours of one atom are scattered in memory.

#![cfg(target_arch = "x86_64")]

use std::arch::x86_64::*;

use super::ListChunk;
use super::pairs::Pairs;
use crate::model::{FRACTION_BITS, SEGMENT_BITS, SEPARATION_BITS};

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

impl Pairs<'_> {
    /// Single-type forces of one chunk; the caller checks the CPU features.
    #[target_feature(enable = "avx512f,avx512dq,avx512cd,avx512vl,avx512bw")]
    pub(super) unsafe fn forces_avx512_single(&self, high: &[[u32; 4]], chunk: &ListChunk, force: &mut [[i64; 3]]) {
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
            for start in (first..last).step_by(BUFFER) {
                let end = (start + BUFFER).min(last);
                for block in (start..end).step_by(8) {
                    let count = (end - block).min(8);
                    // SAFETY: lists are padded by one vector, indices are in range, the buffer holds
                    // BUFFER lanes.
                    let f = unsafe { self.vector(&constants, high, i, &chunk.neighbors[block..block + 8], count) };
                    for d in 0..3 {
                        totals[d] = _mm512_add_epi64(totals[d], f[d]);
                        unsafe { _mm512_storeu_si512(buffer[d].as_mut_ptr().add(block - start) as *mut __m512i, f[d]) };
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
        }
    }

    /// Forces on atom `i` from eight neighbours (lanes past `count` are zero).
    #[inline]
    #[target_feature(enable = "avx512f,avx512dq,avx512cd,avx512vl,avx512bw")]
    unsafe fn vector(&self, c: &Constants, high: &[[u32; 4]], i: usize, js: &[u32], count: usize) -> [__m512i; 3] {
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
        let negative = [
            _mm512_test_epi64_mask(dxy, c.sign_x),
            _mm512_movepi64_mask(dxy),
            _mm256_movepi32_mask(dz),
        ];
        let magnitudes = _mm512_abs_epi32(dxy);
        let absolute =
            [magnitudes, _mm512_srli_epi64::<32>(magnitudes), _mm512_cvtepu32_epi64(_mm256_abs_epi32(dz))];
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
        let segment =
            _mm512_or_si512(_mm512_slli_epi64::<{ SEGMENT_BITS }>(octave), _mm512_srli_epi64::<{ 64 - SEGMENT_BITS }>(aligned));
        let t = _mm512_srli_epi64::<{ 64 - FRACTION_BITS }>(_mm512_slli_epi64::<{ SEGMENT_BITS }>(aligned));
        // Segments are 32 bytes: c0c1, c2c3, shift.
        let rows = _mm512_slli_epi64::<2>(segment);
        let segments = self.tables.force.as_ptr() as *const u8;
        // SAFETY: `u` is clamped into the table, so every segment index is in range.
        let (c01, c23, shift) = unsafe {
            (
                _mm512_i64gather_epi64::<8>(rows, segments as *const i64),
                _mm512_i64gather_epi64::<8>(rows, segments.add(8) as *const i64),
                _mm512_i64gather_epi32::<4>(_mm512_slli_epi64::<1>(rows), segments.add(16) as *const i32),
            )
        };
        let shift = _mm512_cvtepi32_epi64(shift);
        let low = |w: __m512i| _mm512_srai_epi64::<32>(_mm512_slli_epi64::<32>(w));
        let step = |coefficient: __m512i, y: __m512i| {
            _mm512_add_epi64(coefficient, _mm512_srai_epi64::<{ FRACTION_BITS }>(_mm512_mul_epi32(y, t)))
        };
        let mut y = _mm512_srai_epi64::<32>(c23);
        y = step(low(c23), y);
        y = step(_mm512_srai_epi64::<32>(c01), y);
        y = step(low(c01), y);
        std::array::from_fn(|d| {
            let magnitude = _mm512_srav_epi64(_mm512_mul_epi32(y, p[d]), shift);
            let kept = _mm512_maskz_mov_epi64(active, magnitude);
            _mm512_mask_sub_epi64(kept, negative[d], _mm512_setzero_si512(), kept)
        })
    }
}
