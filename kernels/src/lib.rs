//! Bit-deterministic molecular dynamics.
//!
//! The state that is hashed and checkpointed is made of integers only: positions are 64-bit fractions of
//! the periodic box (wrap-around and minimum image come from integer overflow), velocities are 64-bit
//! box fractions per timestep, and forces are summed in 64-bit fixed point. Every operation that feeds the
//! state is an exact integer operation, so the sum of pair forces does not depend on the order in which
//! pairs are visited: one thread, many threads and any GPU produce the same bytes, and replicas can be
//! compared by the BLAKE3 hash of their state.
//!
//! The Lennard-Jones pair functions are evaluated from piecewise cubic (Hermite) tables in r², indexed
//! by the octave and top mantissa bits of the integer r², and evaluated with integer Horner steps. The
//! tables are built from the physical parameters with IEEE-754 `+ - * /` only, which every platform rounds
//! the same way, so they are identical wherever they are built. See `model.rs` for the number formats.
//!
//! Modules, in the order data flows:
//! - [`system`]: physical parameters and the integer [`State`].
//! - [`lammps`], [`lattice`]: ways to build a system.
//! - [`model`]: the fixed-point model derived from the parameters (tables, scales).
//! - [`cpu`], [`gpu`]: engines that advance a state by N steps.
//! - [`thermo`]: observables computed from exact integer sums.
//! - [`checkpoint`]: the versioned binary format and its hash.

// Axis loops index parallel per-axis arrays (positions, scales, kicks); an index reads best there.
#![allow(clippy::needless_range_loop)]

pub mod checkpoint;
pub mod cpu;
pub mod engine;
pub mod gpu;
pub mod lammps;
pub mod lattice;
pub mod model;
pub mod numbers;
pub mod rng;
pub mod system;
pub mod thermo;

pub use checkpoint::{Checkpoint, StateHash};
pub use engine::{Device, Engine, Event, RunOptions, RunOutput, engine};
pub use system::{Langevin, PairCoeff, Params, State};
pub use thermo::Thermo;

/// Errors of the kernels crate. Messages are lowercase and name what went wrong and where.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error("{path}:{line}: {message}")]
    DataFile { path: String, line: usize, message: String },
    /// The cause is part of the message, not a `source`, so a printed chain does not repeat it.
    #[error("cannot read {path}: {cause}")]
    Io { path: String, cause: std::io::Error },
    #[error("invalid system: {0}")]
    InvalidSystem(String),
    #[error("invalid checkpoint: {0}")]
    InvalidCheckpoint(String),
    #[error("gpu: {0}")]
    Gpu(String),
    #[error("run stopped at step {step}: {message}")]
    Unstable { step: u64, message: String },
    #[error("run cancelled at step {step}")]
    Cancelled { step: u64 },
}

pub type Result<T, E = KernelError> = std::result::Result<T, E>;
