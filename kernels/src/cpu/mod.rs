//! The CPU engine: rayon threads over a spatially sorted half neighbour list.
//!
//! Atoms are kept in cell order (rebuilt with the list) so neighbours are close in memory. Each thread
//! owns a contiguous range of atoms and a private force buffer; buffers are summed afterwards. Because
//! every force is an integer, neither the partition nor the summation order changes a bit.

use std::ops::ControlFlow;

use rayon::prelude::*;

use crate::engine::{Engine, Event, RunOptions, RunOutput, cancelled, effective_skin, prepare};
use crate::model::{FlatTables, Model, drift, half_kick};
use crate::system::State;
use crate::thermo::{Sums, Thermo};
use crate::{KernelError, Result};

#[cfg(target_arch = "x86_64")]
mod avx512;
mod pairs;
mod scan;
use pairs::Pairs;
use scan::{Coordinates, Scanner};

/// Upper bound on CPU threads: each has a force buffer the size of the system.
pub const THREADS_MAX: usize = 1024;

pub struct CpuEngine {
    threads: usize,
    pool: rayon::ThreadPool,
}

impl CpuEngine {
    /// An engine with `threads` threads (0: one per available core).
    pub fn new(threads: usize) -> Result<CpuEngine> {
        let threads = if threads == 0 { std::thread::available_parallelism().map_or(1, |n| n.get()) } else { threads };
        if threads > THREADS_MAX {
            return Err(KernelError::InvalidSystem(format!("{threads} threads; at most {THREADS_MAX} are supported")));
        }
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("md-cpu-{i}"))
            .build()
            .map_err(|e| KernelError::InvalidSystem(format!("cannot start {threads} threads: {e}")))?;
        Ok(CpuEngine { threads, pool })
    }

    pub fn threads(&self) -> usize {
        self.threads
    }
}

impl Engine for CpuEngine {
    fn describe(&self) -> String {
        format!("cpu ({} thread{})", self.threads, if self.threads == 1 { "" } else { "s" })
    }

    fn run(
        &mut self,
        state: &State,
        options: &RunOptions,
        observer: &mut dyn FnMut(Event) -> ControlFlow<()>,
    ) -> Result<RunOutput> {
        let model = prepare(state, options)?;
        let mut simulation = Simulation::new(state, &model, options.skin, self.threads, &self.pool);
        simulation.run(options, observer)?;
        Ok(RunOutput {
            state: simulation.to_state(state),
            thermo: simulation.thermo,
            neighbor_builds: simulation.builds,
        })
    }
}

/// Neighbours of a contiguous range of atoms, in compressed rows.
#[derive(Default)]
struct ListChunk {
    start: usize,
    end: usize,
    /// `offsets[i - start]..offsets[i - start + 1]` indexes `neighbors` for atom `i`.
    offsets: Vec<u32>,
    neighbors: Vec<u32>,
}

/// Upper bound on grid cells, so a dilute system in a large box does not allocate a cell index far
/// larger than its atoms.
const GRID_CELLS_MAX: usize = 1 << 22;

/// Cells of at least half the list radius; a pair within the list radius is at most `reach` cells apart.
struct Grid {
    cells: [usize; 3],
    /// The forward half of the stencil of neighbour cells (each unordered cell pair once).
    stencil: Vec<[isize; 3]>,
}

impl Grid {
    fn new(box_length: [f64; 3], list_radius: f64) -> Option<Grid> {
        // Cells of half the radius look at fewer candidates (62.5 cell volumes instead of 13.5 of
        // eight times the size); fall back to full-radius cells for small boxes.
        for reach in [2usize, 1] {
            let mut cells: [usize; 3] =
                std::array::from_fn(|d| (box_length[d] / (list_radius / reach as f64)).floor() as usize);
            // Coarser cells are still at least `list_radius / reach` wide, so they only cost time.
            while cells.iter().try_fold(1usize, |product, &n| product.checked_mul(n)).is_none_or(|n| n > GRID_CELLS_MAX)
            {
                let widest = (0..3).max_by_key(|&d| cells[d]).expect("three axes");
                cells[widest] /= 2;
            }
            if cells.iter().all(|&n| n > 2 * reach) {
                let r = reach as isize;
                let mut stencil = Vec::new();
                for z in -r..=r {
                    for y in -r..=r {
                        for x in -r..=r {
                            if z > 0 || (z == 0 && y > 0) || (z == 0 && y == 0 && x > 0) {
                                stencil.push([x, y, z]);
                            }
                        }
                    }
                }
                return Some(Grid { cells, stencil });
            }
        }
        None
    }

    fn coordinates(&self, high: &[u32; 4]) -> [usize; 3] {
        std::array::from_fn(|d| ((high[d] as u64 * self.cells[d] as u64) >> 32) as usize)
    }

    fn index(&self, c: [usize; 3]) -> usize {
        (c[2] * self.cells[1] + c[1]) * self.cells[0] + c[0]
    }

    fn count(&self) -> usize {
        self.cells.iter().product()
    }

    fn shifted(&self, c: [usize; 3], offset: [isize; 3]) -> usize {
        self.index(std::array::from_fn(|d| (c[d] as isize + offset[d]).rem_euclid(self.cells[d] as isize) as usize))
    }
}

struct Simulation<'m> {
    model: &'m Model,
    tables: FlatTables,
    /// Parallel sections run in this pool; the step loop itself stays on the caller's thread, which
    /// owns the (not thread-safe) observer.
    pool: &'m rayon::ThreadPool,
    params: crate::system::Params,
    step: u64,
    threads: usize,
    /// Canonical index of the atom in each slot.
    canonical: Vec<u32>,
    types_canonical: Vec<u32>,
    /// High position words and the type: what the pair loop reads.
    high: Vec<[u32; 4]>,
    position: Vec<[u64; 3]>,
    velocity: Vec<[i64; 3]>,
    force: Vec<[i64; 3]>,
    /// High position words at the last list build.
    reference: Vec<[u32; 3]>,
    /// The same, one array per axis, for the list build.
    coordinates: Coordinates,
    lists: Vec<ListChunk>,
    /// Per-thread force buffers (unused with one thread).
    buffers: Vec<Vec<[i64; 3]>>,
    grid: Option<Grid>,
    cell_start: Vec<u32>,
    list_squared: u64,
    drift_limit_squared: u64,
    builds: u64,
    thermo: Vec<Thermo>,
}

fn high_words(position: &[u64; 3], atom_type: u32) -> [u32; 4] {
    [(position[0] >> 32) as u32, (position[1] >> 32) as u32, (position[2] >> 32) as u32, atom_type]
}

impl<'m> Simulation<'m> {
    fn new(state: &State, model: &'m Model, skin: f64, threads: usize, pool: &'m rayon::ThreadPool) -> Simulation<'m> {
        let atoms = state.atoms();
        let skin = effective_skin(&state.params, skin);
        let list_radius = state.params.cutoff_max() + skin;
        let mut simulation = Simulation {
            model,
            tables: model.flat_tables(),
            pool,
            params: state.params.clone(),
            step: state.step,
            threads,
            canonical: (0..atoms as u32).collect(),
            types_canonical: state.types.clone(),
            high: state.positions.iter().zip(&state.types).map(|(p, &t)| high_words(p, t)).collect(),
            position: state.positions.clone(),
            velocity: state.velocities.clone(),
            force: vec![[0; 3]; atoms],
            reference: vec![[0; 3]; atoms],
            coordinates: Coordinates::default(),
            lists: Vec::new(),
            buffers: if threads > 1 { vec![vec![[0; 3]; atoms]; threads] } else { Vec::new() },
            grid: Grid::new(state.params.box_length, list_radius),
            cell_start: Vec::new(),
            list_squared: model.squared(list_radius),
            drift_limit_squared: model.squared(skin / 2.0 - 1e-6),
            builds: 0,
            thermo: Vec::new(),
        };
        simulation.rebuild();
        simulation
    }

    fn run(&mut self, options: &RunOptions, observer: &mut dyn FnMut(Event) -> ControlFlow<()>) -> Result<()> {
        let start = self.step;
        let energy = options.wants_thermo(start, start);
        let sums = self.compute_forces(energy);
        if energy {
            self.record_thermo(sums, observer)?;
        }
        if observer(Event::Ready).is_break() {
            return Err(cancelled(self.step));
        }
        for _ in 0..options.steps {
            if self.kick_and_drift() {
                self.rebuild();
            }
            let energy = options.wants_thermo(start, self.step + 1);
            let sums = self.compute_forces(energy);
            self.kick_and_thermostat(self.step + 1);
            self.step += 1;
            if energy {
                self.record_thermo(sums, observer)?;
            }
            if observer(Event::Step(self.step)).is_break() {
                return Err(cancelled(self.step));
            }
        }
        Ok(())
    }

    fn record_thermo(&mut self, sums: Sums, observer: &mut dyn FnMut(Event) -> ControlFlow<()>) -> Result<()> {
        let mut sums = sums;
        for (v, h) in self.velocity.iter().zip(&self.high) {
            sums.add_velocity(h[3], *v);
        }
        let thermo = sums.thermo(&self.params, self.position.len(), self.step);
        if !(thermo.etotal.is_finite() && thermo.press.is_finite()) {
            return Err(KernelError::Unstable { step: self.step, message: "energy is not finite".into() });
        }
        self.thermo.push(thermo);
        if observer(Event::Thermo(&thermo)).is_break() {
            return Err(cancelled(self.step));
        }
        Ok(())
    }

    /// The first half kick and the drift; returns whether any atom has now moved more than half the
    /// skin since the list was built (checked in the same pass over memory).
    fn kick_and_drift(&mut self) -> bool {
        let model = self.model;
        let limit = self.drift_limit_squared;
        self.pool.install(|| {
            (&mut self.velocity, &mut self.position, &mut self.high, &self.force, &self.reference)
                .into_par_iter()
                .map(|(v, x, h, f, r)| {
                    half_kick(v, f, &model.kick[h[3] as usize]);
                    drift(x, v);
                    *h = high_words(x, h[3]);
                    match model.separation([h[0], h[1], h[2]], *r) {
                        Some((_, _, r2)) => r2 > limit,
                        None => true,
                    }
                })
                .reduce(|| false, |a, b| a | b)
        })
    }

    fn kick_and_thermostat(&mut self, step: u64) {
        let model = self.model;
        self.pool.install(|| {
            (&mut self.velocity, &self.high, &self.force, &self.canonical).into_par_iter().for_each(|(v, h, f, &c)| {
                half_kick(v, f, &model.kick[h[3] as usize]);
                if let Some(langevin) = &model.langevin {
                    langevin.apply(v, h[3], c, step);
                }
            })
        });
    }

    fn rebuild(&mut self) {
        if self.grid.is_some() {
            self.sort_by_cell();
        }
        let atoms = self.position.len();
        self.coordinates = Coordinates {
            x: self.high.iter().map(|h| h[0]).collect(),
            y: self.high.iter().map(|h| h[1]).collect(),
            z: self.high.iter().map(|h| h[2]).collect(),
        };
        let ranges = split(atoms, self.threads * 4);
        let this = &*self;
        let lists: Vec<ListChunk> =
            self.pool.install(|| ranges.into_par_iter().map(|(start, end)| this.build_chunk(start, end)).collect());
        self.lists = lists;
        for (r, h) in self.reference.iter_mut().zip(&self.high) {
            *r = [h[0], h[1], h[2]];
        }
        self.builds += 1;
    }

    /// Reorders atoms by cell (a counting sort, stable), so the pair loop walks memory in order.
    fn sort_by_cell(&mut self) {
        let grid = self.grid.as_ref().expect("sorting needs a grid");
        let cells: Vec<u32> = self.high.iter().map(|h| grid.index(grid.coordinates(h)) as u32).collect();
        let mut start = vec![0u32; grid.count() + 1];
        for &c in &cells {
            start[c as usize + 1] += 1;
        }
        for c in 0..grid.count() {
            start[c + 1] += start[c];
        }
        let mut next = start.clone();
        let mut order = vec![0u32; cells.len()];
        for (slot, &c) in cells.iter().enumerate() {
            order[next[c as usize] as usize] = slot as u32;
            next[c as usize] += 1;
        }
        permute_into(&mut self.position, &order);
        permute_into(&mut self.velocity, &order);
        permute_into(&mut self.canonical, &order);
        self.high = self
            .position
            .iter()
            .zip(&self.canonical)
            .map(|(p, &c)| high_words(p, self.types_canonical[c as usize]))
            .collect();
        self.cell_start = start;
    }

    fn build_chunk(&self, start: usize, end: usize) -> ListChunk {
        let mut chunk = ListChunk { start, end, offsets: Vec::with_capacity(end - start + 1), neighbors: Vec::new() };
        chunk.offsets.push(0);
        let scanner = Scanner::new(self.model, &self.coordinates, self.list_squared);
        let mut home_cell = usize::MAX;
        let mut ranges: Vec<std::ops::Range<usize>> = Vec::new();
        for i in start..end {
            match &self.grid {
                Some(grid) => {
                    let home = grid.coordinates(&self.high[i]);
                    let own = grid.index(home);
                    if own != home_cell {
                        home_cell = own;
                        ranges = self.stencil_ranges(grid, home);
                    }
                    // The atom's own cell, after it; then the forward stencil.
                    ranges[0] = i + 1..self.cell_start[own + 1] as usize;
                    scanner.scan(i, &ranges, &mut chunk.neighbors);
                }
                None => scanner.scan(i, std::slice::from_ref(&(i + 1..self.high.len())), &mut chunk.neighbors),
            }
            chunk.offsets.push(chunk.neighbors.len() as u32);
        }
        // Padding, so that the pair loop can always read a whole block of indices.
        chunk.neighbors.extend([start as u32; pairs::LANES]);
        chunk
    }

    /// Atom ranges of the forward stencil cells around `home`, adjacent cells merged into one range.
    /// The first range is a placeholder for the atom's own cell.
    fn stencil_ranges(&self, grid: &Grid, home: [usize; 3]) -> Vec<std::ops::Range<usize>> {
        let mut ranges: Vec<std::ops::Range<usize>> = vec![std::ops::Range::default()];
        for offset in &grid.stencil {
            let cell = grid.shifted(home, *offset);
            let range = self.cell_start[cell] as usize..self.cell_start[cell + 1] as usize;
            let mergeable = ranges.len() > 1 && ranges.last().is_some_and(|last| last.end == range.start);
            if mergeable {
                ranges.last_mut().expect("checked").end = range.end;
            } else if !range.is_empty() {
                ranges.push(range);
            }
        }
        ranges
    }

    /// Computes forces (and, if asked, the pair energy and virial sums) from the current positions.
    fn compute_forces(&mut self, energy: bool) -> Sums {
        let model = self.model;
        let pairs = Pairs::new(model, &self.tables);
        let high = &self.high;
        let run = |chunk: &ListChunk, buffer: &mut [[i64; 3]], sums: &mut Sums| {
            pairs.forces(high, chunk, buffer, energy.then_some(sums))
        };
        if self.threads == 1 {
            let mut sums = Sums::new(model.types);
            self.force.fill([0; 3]);
            for chunk in &self.lists {
                run(chunk, &mut self.force, &mut sums);
            }
            return sums;
        }
        let lists = &self.lists;
        let groups = self.threads;
        let pool = self.pool;
        let buffers = &mut self.buffers;
        let partial: Vec<Sums> = pool.install(|| {
            buffers
                .par_iter_mut()
                .enumerate()
                .map(|(group, buffer)| {
                    buffer.fill([0; 3]);
                    let mut sums = Sums::new(model.types);
                    for chunk in lists.iter().skip(group).step_by(groups) {
                        run(chunk, buffer, &mut sums);
                    }
                    sums
                })
                .collect()
        });
        let buffers = &self.buffers;
        let force = &mut self.force;
        pool.install(|| {
            force.par_chunks_mut(4096).enumerate().for_each(|(block, out)| {
                let base = block * 4096;
                for (k, f) in out.iter_mut().enumerate() {
                    let mut total = [0i64; 3];
                    for buffer in buffers {
                        let b = buffer[base + k];
                        total = [total[0] + b[0], total[1] + b[1], total[2] + b[2]];
                    }
                    *f = total;
                }
            })
        });
        let mut sums = Sums::new(model.types);
        for p in &partial {
            sums.merge(p);
        }
        sums
    }

    fn to_state(&self, input: &State) -> State {
        let mut state = input.clone();
        state.step = self.step;
        for (slot, &c) in self.canonical.iter().enumerate() {
            state.positions[c as usize] = self.position[slot];
            state.velocities[c as usize] = self.velocity[slot];
        }
        state
    }
}

fn permute_into<T: Copy>(values: &mut Vec<T>, order: &[u32]) {
    *values = order.iter().map(|&k| values[k as usize]).collect();
}

/// `parts` contiguous ranges covering `0..n`.
fn split(n: usize, parts: usize) -> Vec<(usize, usize)> {
    let parts = parts.clamp(1, n.max(1));
    (0..parts).map(|k| (n * k / parts, n * (k + 1) / parts)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lattice::FccLattice;
    use crate::rng::SplitMix64;

    /// Every compiled version of the pair loop (scalar reference, baseline, AVX2, AVX-512 generic and
    /// hand-written) gives the same forces, whichever of them this CPU would pick by itself.
    #[test]
    fn every_pair_loop_gives_the_same_forces() {
        let mut system = FccLattice { cells: [6, 6, 6], ..FccLattice::in_lj(6) }.build();
        // Jitter the lattice so that pairs fall into many table segments.
        let mut rng = SplitMix64::new(3);
        for p in &mut system.positions {
            p.iter_mut().for_each(|x| *x += 0.3 * (rng.next_f64() - 0.5));
        }
        let state = State::from_physical(system).unwrap();
        let model = Model::new(&state.params);
        let pool = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
        let simulation = Simulation::new(&state, &model, 0.3, 1, &pool);
        let pairs = Pairs::new(&model, &simulation.tables);
        let run = |path: &dyn Fn(&ListChunk, &mut [[i64; 3]])| {
            let mut force = vec![[0i64; 3]; state.atoms()];
            for chunk in &simulation.lists {
                path(chunk, &mut force);
            }
            force
        };
        let high = &simulation.high;
        // Names the first atom that differs rather than printing thousands of forces.
        let same = |forces: Vec<[i64; 3]>, reference: &[[i64; 3]], what: &str| {
            if let Some(atom) = (0..reference.len()).find(|&k| forces[k] != reference[k]) {
                panic!("{what}: atom slot {atom} gets {:?}, the reference {:?}", forces[atom], reference[atom]);
            }
        };
        let reference = run(&|chunk, force| pairs.forces_with_energy(high, chunk, force, &mut Sums::new(1)));
        assert!(reference.iter().any(|f| f[0] != 0), "forces are not all zero");
        same(run(&|chunk, force| pairs.forces_body(high, chunk, force)), &reference, "baseline");
        same(run(&|chunk, force| pairs.forces(high, chunk, force, None)), &reference, "dispatched");
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("lzcnt")
                && std::arch::is_x86_feature_detected!("bmi2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                // SAFETY: the features are present.
                same(run(&|chunk, force| unsafe { pairs.forces_avx2(high, chunk, force) }), &reference, "avx2");
            }
            if pairs.avx512 {
                // SAFETY: as above.
                assert_eq!(
                    run(&|chunk, force| unsafe { pairs.forces_avx512(high, chunk, force) }),
                    reference,
                    "avx512"
                );
                let single = run(&|chunk, force| unsafe {
                    pairs.forces_avx512_single::<false>(high, chunk, force, &mut Sums::new(1))
                });
                same(single, &reference, "hand-written avx512");
                let mut sums = Sums::new(1);
                let mut reference_sums = Sums::new(1);
                for chunk in &simulation.lists {
                    let mut scratch = vec![[0i64; 3]; state.atoms()];
                    unsafe { pairs.forces_avx512_single::<true>(high, chunk, &mut scratch, &mut sums) };
                    pairs.forces_with_energy(high, chunk, &mut scratch, &mut reference_sums);
                }
                assert_eq!(sums, reference_sums, "energy and virial of the hand-written loop");
            }
        }
    }
}
