//! The pair loop, the hot spot of the CPU engine.
//!
//! Each atom's neighbours are processed in blocks: a branch-free pass computes the force of every
//! neighbour in the block (zero beyond the cutoff) into small arrays, then a scalar pass adds them to
//! atom i and subtracts them from the neighbours. The first pass is written so that LLVM vectorises it
//! with gathers; it is compiled three times (AVX-512, AVX2, baseline) and chosen at run time. All
//! versions compute exactly the same integers as the scalar reference in `model.rs`.

use crate::model::{FRACTION_BITS, FlatTables, Model, SEGMENT_BITS, SEPARATION_BITS, Segment, locate};
use crate::numbers::shift_signed;
use crate::thermo::Sums;

use super::ListChunk;

/// Neighbours per block of the vectorised pass. A block's length is rounded up to whole vectors
/// (lists are padded at their end and the extra lanes masked), so no scalar remainder loop runs.
pub(super) const BLOCK: usize = 64;
/// Lanes of one vector; blocks are rounded up to a multiple of it.
pub(super) const LANES: usize = 8;

pub(super) struct Pairs<'a> {
    pub tables: &'a FlatTables,
    pub model: &'a Model,
    pub types: u32,
    pub multiplier: [u32; 3],
    pub shift: [u32; 3],
    pub(super) avx512: bool,
}

fn avx512_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512dq")
            && std::arch::is_x86_feature_detected!("avx512cd")
            && std::arch::is_x86_feature_detected!("avx512vl")
            && std::arch::is_x86_feature_detected!("avx512bw")
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

impl<'a> Pairs<'a> {
    pub fn new(model: &'a Model, tables: &'a FlatTables) -> Pairs<'a> {
        Pairs {
            tables,
            model,
            types: model.types as u32,
            multiplier: std::array::from_fn(|d| model.separation[d].multiplier as u32),
            shift: std::array::from_fn(|d| model.separation[d].shift),
            avx512: avx512_available(),
        }
    }

    /// Forces of one chunk of the half list, added into `force`; with `sums`, also the pair energy and
    /// virial.
    pub fn forces(&self, high: &[[u32; 4]], chunk: &ListChunk, force: &mut [[i64; 3]], sums: Option<&mut Sums>) {
        #[cfg(target_arch = "x86_64")]
        {
            if self.avx512 && self.types == 1 {
                // SAFETY: the CPU has the features the functions were compiled for (checked in `new`).
                return unsafe {
                    match sums {
                        Some(sums) => self.forces_avx512_single::<true>(high, chunk, force, sums),
                        None => self.forces_avx512_single::<false>(high, chunk, force, &mut Sums::new(1)),
                    }
                };
            }
        }
        if let Some(sums) = sums {
            return self.forces_with_energy(high, chunk, force, sums);
        }
        #[cfg(target_arch = "x86_64")]
        {
            if self.avx512 {
                // SAFETY: as above.
                return unsafe { self.forces_avx512(high, chunk, force) };
            }
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("lzcnt")
                && std::arch::is_x86_feature_detected!("bmi2")
                && std::arch::is_x86_feature_detected!("popcnt")
                && std::arch::is_x86_feature_detected!("fma")
            {
                // SAFETY: the CPU has the features the function was compiled for.
                return unsafe { self.forces_avx2(high, chunk, force) };
            }
        }
        self.forces_body(high, chunk, force)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx512dq,avx512cd,avx512vl,avx512bw,bmi2,lzcnt,popcnt")]
    pub(super) unsafe fn forces_avx512(&self, high: &[[u32; 4]], chunk: &ListChunk, force: &mut [[i64; 3]]) {
        self.forces_body(high, chunk, force)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,bmi2,lzcnt,popcnt,fma")]
    pub(super) unsafe fn forces_avx2(&self, high: &[[u32; 4]], chunk: &ListChunk, force: &mut [[i64; 3]]) {
        self.forces_body(high, chunk, force)
    }

    #[inline(always)]
    pub(super) fn forces_body(&self, high: &[[u32; 4]], chunk: &ListChunk, force: &mut [[i64; 3]]) {
        if self.types == 1 {
            self.forces_typed::<false>(high, chunk, force)
        } else {
            self.forces_typed::<true>(high, chunk, force)
        }
    }

    #[inline(always)]
    fn forces_typed<const MULTI: bool>(&self, high: &[[u32; 4]], chunk: &ListChunk, force: &mut [[i64; 3]]) {
        let mut block = [[0i64; BLOCK]; 3];
        for i in chunk.start..chunk.end {
            let a = high[i];
            let first = chunk.offsets[i - chunk.start] as usize;
            let last = chunk.offsets[i - chunk.start + 1] as usize;
            let mut total = [0i64; 3];
            for start in (first..last).step_by(BLOCK) {
                // The list is padded at its end, so a block may read past this atom's neighbours;
                // lanes beyond `count` are masked off.
                let count = (last - start).min(BLOCK);
                let lanes = count.div_ceil(LANES) * LANES;
                self.block::<MULTI>(a, &chunk.neighbors[start..start + lanes], count, high, &mut block);
                let js = &chunk.neighbors[start..start + count];
                for (k, &j) in js.iter().enumerate() {
                    let fj = &mut force[j as usize];
                    for d in 0..3 {
                        total[d] += block[d][k];
                        fj[d] -= block[d][k];
                    }
                }
            }
            let fi = &mut force[i];
            for d in 0..3 {
                fi[d] += total[d];
            }
        }
    }

    /// The force on atom `a` from each neighbour in `js`, branch-free so that it vectorises.
    #[inline(always)]
    fn block<const MULTI: bool>(
        &self,
        a: [u32; 4],
        js: &[u32],
        count: usize,
        high: &[[u32; 4]],
        out: &mut [[i64; BLOCK]; 3],
    ) {
        let tables = self.tables;
        let segments: &[Segment] = &tables.force;
        let row = (a[3] * self.types) as usize;
        for k in 0..js.len().min(BLOCK) {
            let j = js[k] as usize;
            // SAFETY: neighbour indices are built from `high`'s range.
            // Read x and y as one 64-bit word (one gather instead of two once vectorised).
            let (xy, bz, bt) = unsafe {
                let atom = high.as_ptr().add(j);
                ((atom as *const u64).read_unaligned(), (*atom)[2], (*atom)[3])
            };
            let b = [xy as u32, (xy >> 32) as u32, bz];
            let pair_type = if MULTI { row + bt as usize } else { 0 };
            let cutoff = tables.cutoff_squared[pair_type];
            let clamp = tables.clamp_squared[pair_type];
            let first_octave = tables.first_octave[pair_type];
            let offset = tables.offset[pair_type];
            let dx: [i32; 3] = std::array::from_fn(|d| a[d].wrapping_sub(b[d]) as i32);
            let p: [u64; 3] =
                std::array::from_fn(|d| (dx[d].unsigned_abs() as u64 * self.multiplier[d] as u64) >> self.shift[d]);
            let far = (p[0] | p[1] | p[2]) >> SEPARATION_BITS != 0;
            let q: [u64; 3] = std::array::from_fn(|d| p[d] as u32 as u64);
            let r2 = (q[0] * q[0]).wrapping_add(q[1] * q[1]).wrapping_add(q[2] * q[2]);
            let active = !far & (r2 < cutoff) & (k < count);
            let u = r2.max(clamp).min(cutoff - 1);
            let octave = 63 - u.leading_zeros();
            let below = octave - SEGMENT_BITS;
            let index = ((octave - first_octave) << SEGMENT_BITS) | ((u >> below) as u32 & ((1 << SEGMENT_BITS) - 1));
            let remainder = u & ((1u64 << below) - 1);
            let t = if below >= FRACTION_BITS {
                remainder.wrapping_shr(below.wrapping_sub(FRACTION_BITS))
            } else {
                remainder.wrapping_shl(FRACTION_BITS.wrapping_sub(below))
            };
            // SAFETY: `u` is clamped into the table's range, so the segment exists.
            // Coefficients as two 64-bit words: two gathers instead of four.
            let (c01, c23, shift) = unsafe {
                let segment = segments.as_ptr().add((offset + index) as usize);
                let words = segment as *const i64;
                (words.read(), words.add(1).read(), (*segment).shift)
            };
            let c = [c01 as i32, (c01 >> 32) as i32, c23 as i32, (c23 >> 32) as i32];
            let t = t as i32 as i64;
            let mut y = c[3] as i64;
            y = c[2] as i64 + ((y as i32 as i64 * t) >> FRACTION_BITS);
            y = c[1] as i64 + ((y as i32 as i64 * t) >> FRACTION_BITS);
            y = c[0] as i64 + ((y as i32 as i64 * t) >> FRACTION_BITS);
            for d in 0..3 {
                let magnitude = (y as i32 as i64 * q[d] as i32 as i64) >> shift;
                let sign = (dx[d] >> 31) as i64;
                out[d][k] = if active { (magnitude ^ sign) - sign } else { 0 };
            }
        }
    }

    /// Forces plus the pair energy and virial sums: the scalar reference, used at thermo steps.
    pub(super) fn forces_with_energy(
        &self,
        high: &[[u32; 4]],
        chunk: &ListChunk,
        force: &mut [[i64; 3]],
        sums: &mut Sums,
    ) {
        let model = self.model;
        for i in chunk.start..chunk.end {
            let a = high[i];
            let first = chunk.offsets[i - chunk.start] as usize;
            let last = chunk.offsets[i - chunk.start + 1] as usize;
            let mut total = [0i64; 3];
            for &j in &chunk.neighbors[first..last] {
                let j = j as usize;
                let b = high[j];
                let table = model.table(a[3], b[3]);
                let Some((dx, p, r2)) = model.separation([a[0], a[1], a[2]], [b[0], b[1], b[2]]) else {
                    continue;
                };
                if r2 >= table.cutoff_squared {
                    continue;
                }
                let (segment, t) = locate(r2.max(table.clamp_squared), table.first_octave);
                let s = &table.force[segment];
                let y = s.evaluate(t);
                let fj = &mut force[j];
                for d in 0..3 {
                    let magnitude = (y * p[d] as i64) >> s.shift;
                    let sign = (dx[d] >> 31) as i64;
                    let f = (magnitude ^ sign) - sign;
                    total[d] += f;
                    fj[d] -= f;
                }
                let e = &table.energy[segment];
                sums.energy += shift_signed(e.evaluate(t), e.shift) as i128;
                let w = &table.virial[segment];
                sums.virial += shift_signed(w.evaluate(t), w.shift) as i128;
            }
            let fi = &mut force[i];
            for d in 0..3 {
                fi[d] += total[d];
            }
        }
    }
}
