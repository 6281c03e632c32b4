//! What every engine offers: advance a state by a number of steps, reporting thermo lines.

use std::ops::ControlFlow;

use crate::model::Model;
use crate::system::{STEP_MAX, State};
use crate::thermo::Thermo;
use crate::{KernelError, Result};

/// Where a run executes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Device {
    /// CPU threads (0 = all cores).
    Cpu { threads: usize },
    /// A wgpu adapter (None = the first compute-capable one).
    Wgpu { adapter: Option<usize> },
}

impl std::fmt::Display for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Device::Cpu { threads: 0 } => write!(f, "cpu"),
            Device::Cpu { threads } => write!(f, "cpu:{threads}"),
            Device::Wgpu { adapter: None } => write!(f, "wgpu"),
            Device::Wgpu { adapter: Some(a) } => write!(f, "wgpu:{a}"),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct RunOptions {
    pub steps: u64,
    /// Report thermo at global steps that are multiples of this (0: never).
    pub thermo_every: u64,
    /// Also report the starting step (the first chunk of a job, or an interactive run).
    pub thermo_at_start: bool,
    /// Also report the last step even if it is not a multiple (LAMMPS does this for `run`).
    pub thermo_at_end: bool,
    /// Neighbour-list skin. It changes speed only, never results: lists are rebuilt before any atom
    /// has moved half the skin, so every pair inside the cutoff is always in the list.
    pub skin: f64,
}

impl RunOptions {
    pub fn new(steps: u64) -> RunOptions {
        RunOptions { steps, thermo_every: 0, thermo_at_start: false, thermo_at_end: false, skin: DEFAULT_SKIN }
    }

    pub fn wants_thermo(&self, start: u64, step: u64) -> bool {
        (self.thermo_every > 0 && step.is_multiple_of(self.thermo_every) && step != start)
            || (step == start && self.thermo_at_start)
            || (step == start + self.steps && self.thermo_at_end && step != start)
    }
}

pub const DEFAULT_SKIN: f64 = 0.3;

/// What an engine reports while it runs.
#[derive(Debug, Clone, Copy)]
pub enum Event<'a> {
    /// Set-up is done (tables, first neighbour list, first forces): the step loop starts. Benchmarks
    /// time from here, as LAMMPS' "Loop time" does.
    Ready,
    Thermo(&'a Thermo),
    /// The global step just completed.
    Step(u64),
}

#[derive(Debug, Clone)]
pub struct RunOutput {
    pub state: State,
    pub thermo: Vec<Thermo>,
    pub neighbor_builds: u64,
}

pub trait Engine: Send {
    /// A short description, such as "cpu (2 threads)" or "wgpu: llvmpipe".
    fn describe(&self) -> String;

    /// Advances `state` by `options.steps` steps. The observer may stop the run early by returning
    /// `Break`, which gives [`KernelError::Cancelled`].
    fn run(
        &mut self,
        state: &State,
        options: &RunOptions,
        observer: &mut dyn FnMut(Event) -> ControlFlow<()>,
    ) -> Result<RunOutput>;
}

/// Makes the engine for a device.
pub fn engine(device: &Device) -> Result<Box<dyn Engine>> {
    match device {
        Device::Cpu { threads } => Ok(Box::new(crate::cpu::CpuEngine::new(*threads)?)),
        Device::Wgpu { adapter } => Ok(Box::new(crate::gpu::GpuEngine::new(*adapter)?)),
    }
}

/// What every engine does before it starts: checks the state (a caller may have built or decoded it
/// by hand) and that the run ends by [`STEP_MAX`], then derives the model and checks that its factors
/// fit the integer kernels.
pub(crate) fn prepare(state: &State, options: &RunOptions) -> Result<Model> {
    state.validate()?;
    if options.steps > STEP_MAX - state.step {
        return Err(KernelError::InvalidSystem(format!(
            "{} steps from step {} would pass the last supported step {STEP_MAX}",
            options.steps, state.step
        )));
    }
    let model = Model::new(&state.params);
    model.check_factors()?;
    Ok(model)
}

pub(crate) fn cancelled(step: u64) -> KernelError {
    KernelError::Cancelled { step }
}

/// The skin actually used: no larger than the cutoff (separations must stay below 2^30 units) and
/// small enough that the list radius stays inside half the box.
pub fn effective_skin(params: &crate::system::Params, skin: f64) -> f64 {
    let half_box = params.box_length.iter().copied().fold(f64::INFINITY, f64::min) / 2.0;
    let cutoff = params.cutoff_max();
    skin.min(cutoff).min((half_box - cutoff) * 0.999).max(1e-3)
}
