//! The CPU engine: rayon threads over a spatially sorted half neighbour list.
//!
//! Atoms are kept in cell order (rebuilt with the list) so neighbours are close in memory. Each thread
//! owns a contiguous range of atoms and a private force buffer; buffers are summed afterwards. Because
//! every force is an integer, neither the partition nor the summation order changes a bit.

use std::ops::ControlFlow;

use rayon::prelude::*;

use crate::engine::{Engine, Event, RunOptions, RunOutput, cancelled};
use crate::model::{Model, drift, half_kick, locate};
use crate::numbers::shift_signed;
use crate::system::State;
use crate::thermo::{Sums, Thermo};
use crate::{KernelError, Result};

pub struct CpuEngine {
    threads: usize,
    pool: rayon::ThreadPool,
}

impl CpuEngine {
    /// An engine with `threads` threads (0: one per available core).
    pub fn new(threads: usize) -> Result<CpuEngine> {
        let threads = if threads == 0 { std::thread::available_parallelism().map_or(1, |n| n.get()) } else { threads };
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
        state.params.validate()?;
        let model = Model::new(&state.params);
        let mut simulation = Simulation::new(state, &model, options.skin, self.threads, &self.pool);
        simulation.run(options, observer)?;
        Ok(RunOutput { state: simulation.to_state(state), thermo: simulation.thermo, neighbor_builds: simulation.builds })
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

struct Grid {
    cells: [usize; 3],
    /// The 13 forward neighbour cells of the half stencil.
    stencil: Vec<[isize; 3]>,
}

impl Grid {
    fn new(box_length: [f64; 3], list_radius: f64) -> Option<Grid> {
        let cells: [usize; 3] = std::array::from_fn(|d| (box_length[d] / list_radius).floor() as usize);
        if cells.iter().any(|&n| n < 3) {
            return None;
        }
        let mut stencil = Vec::new();
        for z in -1isize..=1 {
            for y in -1isize..=1 {
                for x in -1isize..=1 {
                    if z > 0 || (z == 0 && y > 0) || (z == 0 && y == 0 && x > 0) {
                        stencil.push([x, y, z]);
                    }
                }
            }
        }
        Some(Grid { cells, stencil })
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

/// The skin actually used: no larger than the cutoff (separations must stay below 2^30 units) and
/// small enough that the list radius stays inside half the box.
pub(crate) fn effective_skin(params: &crate::system::Params, skin: f64) -> f64 {
    let half_box = params.box_length.iter().copied().fold(f64::INFINITY, f64::min) / 2.0;
    let cutoff = params.cutoff_max();
    skin.min(cutoff).min((half_box - cutoff) * 0.999).max(1e-3)
}

impl<'m> Simulation<'m> {
    fn new(state: &State, model: &'m Model, skin: f64, threads: usize, pool: &'m rayon::ThreadPool) -> Simulation<'m> {
        let atoms = state.atoms();
        let skin = effective_skin(&state.params, skin);
        let list_radius = state.params.cutoff_max() + skin;
        let mut simulation = Simulation {
            model,
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
        for _ in 0..options.steps {
            self.kick_and_drift();
            if self.moved_too_far() {
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

    fn kick_and_drift(&mut self) {
        let model = self.model;
        self.pool.install(|| {
            (&mut self.velocity, &mut self.position, &mut self.high, &self.force).into_par_iter().for_each(
                |(v, x, h, f)| {
                    half_kick(v, f, &model.kick[h[3] as usize]);
                    drift(x, v);
                    *h = high_words(x, h[3]);
                },
            )
        });
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

    /// Has any atom moved more than half the skin since the list was built?
    fn moved_too_far(&self) -> bool {
        let model = self.model;
        let limit = self.drift_limit_squared;
        self.pool.install(|| {
            self.high.par_iter().zip(&self.reference).any(|(h, r)| match model.separation([h[0], h[1], h[2]], *r) {
                Some((_, _, r2)) => r2 > limit,
                None => true,
            })
        })
    }

    fn rebuild(&mut self) {
        if self.grid.is_some() {
            self.sort_by_cell();
        }
        let atoms = self.position.len();
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
        self.high = self.position.iter().zip(&self.canonical).map(|(p, &c)| high_words(p, self.types_canonical[c as usize])).collect();
        self.cell_start = start;
    }

    fn build_chunk(&self, start: usize, end: usize) -> ListChunk {
        let mut chunk = ListChunk { start, end, offsets: Vec::with_capacity(end - start + 1), neighbors: Vec::new() };
        chunk.offsets.push(0);
        let model = self.model;
        let consider = |chunk: &mut ListChunk, i: usize, j: usize| {
            let (a, b) = (&self.high[i], &self.high[j]);
            if let Some((_, _, r2)) = model.separation([a[0], a[1], a[2]], [b[0], b[1], b[2]]) {
                if r2 < self.list_squared {
                    chunk.neighbors.push(j as u32);
                }
            }
        };
        for i in start..end {
            match &self.grid {
                Some(grid) => {
                    let home = grid.coordinates(&self.high[i]);
                    let own = grid.index(home);
                    for j in i + 1..self.cell_start[own + 1] as usize {
                        consider(&mut chunk, i, j);
                    }
                    for offset in &grid.stencil {
                        let cell = grid.shifted(home, *offset);
                        for j in self.cell_start[cell] as usize..self.cell_start[cell + 1] as usize {
                            consider(&mut chunk, i, j);
                        }
                    }
                }
                None => {
                    for j in i + 1..self.high.len() {
                        consider(&mut chunk, i, j);
                    }
                }
            }
            chunk.offsets.push(chunk.neighbors.len() as u32);
        }
        chunk
    }

    /// Computes forces (and, if asked, the pair energy and virial sums) from the current positions.
    fn compute_forces(&mut self, energy: bool) -> Sums {
        let model = self.model;
        let high = &self.high;
        if self.threads == 1 {
            let mut sums = Sums::new(model.types);
            self.force.fill([0; 3]);
            for chunk in &self.lists {
                pair_forces(model, high, chunk, &mut self.force, energy, &mut sums);
            }
            return sums;
        }
        let lists = &self.lists;
        let groups = self.threads;
        let pool = self.pool;
        let buffers = &mut self.buffers;
        let partial: Vec<Sums> = pool.install(|| buffers
            .par_iter_mut()
            .enumerate()
            .map(|(group, buffer)| {
                buffer.fill([0; 3]);
                let mut sums = Sums::new(model.types);
                for chunk in lists.iter().skip(group).step_by(groups) {
                    pair_forces(model, high, chunk, buffer, energy, &mut sums);
                }
                sums
            })
            .collect());
        let buffers = &self.buffers;
        let force = &mut self.force;
        pool.install(|| force.par_chunks_mut(4096).enumerate().for_each(|(block, out)| {
            let base = block * 4096;
            for (k, f) in out.iter_mut().enumerate() {
                let mut total = [0i64; 3];
                for buffer in buffers {
                    let b = buffer[base + k];
                    total = [total[0] + b[0], total[1] + b[1], total[2] + b[2]];
                }
                *f = total;
            }
        }));
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

/// The pair loop over one chunk of the half list: adds `f` to atom i and subtracts it from atom j.
fn pair_forces(model: &Model, high: &[[u32; 4]], chunk: &ListChunk, force: &mut [[i64; 3]], energy: bool, sums: &mut Sums) {
    for i in chunk.start..chunk.end {
        let a = high[i];
        let first = chunk.offsets[i - chunk.start] as usize;
        let last = chunk.offsets[i - chunk.start + 1] as usize;
        let mut total = [0i64; 3];
        for &j in &chunk.neighbors[first..last] {
            let j = j as usize;
            let b = high[j];
            let table = model.table(a[3], b[3]);
            let Some((dx, p, r2)) = model.separation([a[0], a[1], a[2]], [b[0], b[1], b[2]]) else { continue };
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
            if energy {
                let e = &table.energy[segment];
                sums.energy += shift_signed(e.evaluate(t), e.shift) as i128;
                let w = &table.virial[segment];
                sums.virial += shift_signed(w.evaluate(t), w.shift) as i128;
            }
        }
        let fi = &mut force[i];
        for d in 0..3 {
            fi[d] += total[d];
        }
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
