//! wgpu engine (being written).
use crate::engine::{Engine, Event, RunOptions, RunOutput};
use crate::system::State;
use crate::{KernelError, Result};
use std::ops::ControlFlow;
pub struct GpuEngine;
impl GpuEngine {
    pub fn new(_adapter: Option<usize>) -> Result<GpuEngine> {
        Err(KernelError::Gpu("not built yet".into()))
    }
}
impl Engine for GpuEngine {
    fn describe(&self) -> String { String::new() }
    fn run(&mut self, _: &State, _: &RunOptions, _: &mut dyn FnMut(Event) -> ControlFlow<()>) -> Result<RunOutput> {
        Err(KernelError::Gpu("not built yet".into()))
    }
}
