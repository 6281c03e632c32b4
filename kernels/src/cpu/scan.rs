//! Neighbour-list candidates: which atoms of a contiguous range lie within the list radius of atom i.
//!
//! Candidates of one cell are contiguous in the sorted arrays, so the AVX-512 version needs no gathers:
//! it loads eight positions per coordinate, computes eight r² and compresses the indices that pass.
//! Both versions keep exactly the same atoms in the same order.

use crate::model::{Model, SEPARATION_BITS};

/// Positions as separate coordinate arrays (high words), rebuilt with every list.
#[derive(Default)]
pub(super) struct Coordinates {
    pub x: Vec<u32>,
    pub y: Vec<u32>,
    pub z: Vec<u32>,
}

pub(super) struct Scanner<'a> {
    pub coordinates: &'a Coordinates,
    pub multiplier: [u32; 3],
    pub shift: [u32; 3],
    pub list_squared: u64,
    avx512: bool,
}

impl<'a> Scanner<'a> {
    pub fn new(model: &Model, coordinates: &'a Coordinates, list_squared: u64) -> Scanner<'a> {
        #[cfg(target_arch = "x86_64")]
        let avx512 = std::arch::is_x86_feature_detected!("avx512f") && std::arch::is_x86_feature_detected!("avx512vl");
        #[cfg(not(target_arch = "x86_64"))]
        let avx512 = false;
        Scanner {
            coordinates,
            multiplier: std::array::from_fn(|d| model.separation[d].multiplier as u32),
            shift: std::array::from_fn(|d| model.separation[d].shift),
            list_squared,
            avx512,
        }
    }

    /// Appends to `out` the atoms of each candidate range within the list radius of atom `i`.
    #[inline]
    pub fn scan(&self, i: usize, ranges: &[std::ops::Range<usize>], out: &mut Vec<u32>) {
        #[cfg(target_arch = "x86_64")]
        if self.avx512 {
            // SAFETY: the CPU has AVX-512F and VL (checked in `new`).
            unsafe { self.scan_avx512(i, ranges, out) };
            return;
        }
        for range in ranges {
            self.scan_scalar(i, range.clone(), out);
        }
    }

    fn scan_scalar(&self, i: usize, candidates: std::ops::Range<usize>, out: &mut Vec<u32>) {
        let c = self.coordinates;
        let a = [c.x[i], c.y[i], c.z[i]];
        for j in candidates {
            let b = [c.x[j], c.y[j], c.z[j]];
            let mut r2 = 0u64;
            let mut far = 0u64;
            for d in 0..3 {
                let dx = a[d].wrapping_sub(b[d]) as i32;
                let p = (dx.unsigned_abs() as u64 * self.multiplier[d] as u64) >> self.shift[d];
                far |= p;
                r2 = r2.wrapping_add((p as u32 as u64) * (p as u32 as u64));
            }
            if far >> SEPARATION_BITS == 0 && r2 < self.list_squared {
                out.push(j as u32);
            }
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx512vl,popcnt")]
    unsafe fn scan_avx512(&self, i: usize, ranges: &[std::ops::Range<usize>], out: &mut Vec<u32>) {
        use std::arch::x86_64::*;
        let c = self.coordinates;
        let count: usize = ranges.iter().map(|r| r.len()).sum();
        out.reserve(count + 8);
        let mut length = out.len();
        let target = out.as_mut_ptr();
        let axes = [&c.x, &c.y, &c.z];
        let limit = _mm512_set1_epi64(1 << SEPARATION_BITS);
        let list = _mm512_set1_epi64(self.list_squared as i64);
        let multiplier: [__m512i; 3] = std::array::from_fn(|d| _mm512_set1_epi64(self.multiplier[d] as i64));
        let shift: [__m512i; 3] = std::array::from_fn(|d| _mm512_set1_epi64(self.shift[d] as i64));
        let home: [__m256i; 3] = std::array::from_fn(|d| _mm256_set1_epi32(axes[d][i] as i32));
        let lanes_up = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
        for candidates in ranges {
            let mut start = candidates.start;
            while start < candidates.end {
                let lanes = (candidates.end - start).min(8);
                let valid: __mmask8 = if lanes == 8 { 0xff } else { (1u8 << lanes) - 1 };
                let mut r2 = _mm512_setzero_si512();
                let mut far = _mm512_setzero_si512();
                for d in 0..3 {
                    // SAFETY: lanes past the end are masked off and not read.
                    let b = unsafe { _mm256_maskz_loadu_epi32(valid, axes[d].as_ptr().add(start) as *const i32) };
                    let dx = _mm256_abs_epi32(_mm256_sub_epi32(home[d], b));
                    let wide = _mm512_cvtepu32_epi64(dx);
                    let product = _mm512_mul_epu32(wide, multiplier[d]);
                    let p = _mm512_srlv_epi64(product, shift[d]);
                    far = _mm512_or_si512(far, p);
                    r2 = _mm512_add_epi64(r2, _mm512_mul_epu32(p, p));
                }
                let near = _mm512_cmplt_epu64_mask(far, limit);
                let keep = near & _mm512_cmplt_epu64_mask(r2, list) & valid;
                let indexes = _mm256_add_epi32(_mm256_set1_epi32(start as i32), lanes_up);
                // Compress in a register and store all eight lanes: a compressing store to memory is
                // microcoded and slow on some CPUs (AMD Zen 4). Lanes past the kept ones are overwritten
                // by the next store or cut off by `set_len`.
                let packed = _mm256_maskz_compress_epi32(keep, indexes);
                // SAFETY: `reserve` made room for every candidate plus one vector.
                unsafe { _mm256_storeu_si256(target.add(length) as *mut __m256i, packed) };
                length += keep.count_ones() as usize;
                start += 8;
            }
        }
        // SAFETY: the compressed stores initialised the first `length` elements.
        unsafe { out.set_len(length) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lattice::FccLattice;
    use crate::system::State;

    #[test]
    fn vector_and_scalar_scans_agree() {
        let state = State::from_physical(FccLattice::in_lj(5).build()).unwrap();
        let model = Model::new(&state.params);
        let coordinates = Coordinates {
            x: state.positions.iter().map(|p| (p[0] >> 32) as u32).collect(),
            y: state.positions.iter().map(|p| (p[1] >> 32) as u32).collect(),
            z: state.positions.iter().map(|p| (p[2] >> 32) as u32).collect(),
        };
        let scanner = Scanner::new(&model, &coordinates, model.squared(2.8));
        for i in [0, 17, 250, 499] {
            let whole: Vec<std::ops::Range<usize>> = std::iter::once(0..500).collect();
            for ranges in [whole, vec![3..11, 100..101, 499..500], vec![7..7, 20..37]] {
                let mut fast = Vec::new();
                let mut slow = Vec::new();
                scanner.scan(i, &ranges, &mut fast);
                for range in ranges {
                    scanner.scan_scalar(i, range, &mut slow);
                }
                assert_eq!(fast, slow);
            }
        }
        let mut all = Vec::new();
        scanner.scan_scalar(0, 0..500, &mut all);
        assert!(all.len() > 40, "an fcc atom has neighbours within 2.8: {}", all.len());
    }
}
