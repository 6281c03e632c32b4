//! The wgpu engine: the same integer model as the CPU engine, in WGSL compute shaders.
//!
//! Per step: `advance` (step counter), `kick_drift`, `check` (has any atom moved half the skin?),
//! `prepare` (turns that flag into indirect workgroup counts), the list build (`clear_cells`, `bin`,
//! `scan`, `scatter`, `build`, dispatched indirectly so that they cost nothing when no rebuild is
//! due), `forces` and `kick_thermostat`. Steps are encoded in batches and submitted together; between
//! batches the host reads the control words. If a neighbour list overflowed, the batch is replayed from
//! a GPU-side snapshot with a larger list, so overflow can cost time but never correctness.

use std::ops::ControlFlow;

use wgpu::util::DeviceExt;

use crate::engine::{Engine, Event, RunOptions, RunOutput, cancelled, effective_skin, prepare};
use crate::model::{FACTOR_SHIFT_RANGE, Model};
use crate::numbers::Factor;
use crate::system::State;
use crate::thermo::Sums;
use crate::{KernelError, Result};

const SHADER: &str = include_str!("md.wgsl");
const GROUP: u32 = 64;
const BATCH_STEPS_MAX: u64 = 200;
const CELLS_MAX: usize = 65_535 * GROUP as usize;
const BINDINGS: u32 = 18;
/// Index of the indirect-arguments buffer in `Run::buffers`; it is bound alone in group 1.
const INDIRECT_BINDING: u32 = 13;
const READ_ONLY_BINDINGS: [u32; 3] = [14, 15, 16];

/// Description of one wgpu adapter.
#[derive(Debug, Clone)]
pub struct AdapterDescription {
    pub index: usize,
    pub name: String,
    pub backend: String,
    pub device_type: String,
    pub driver: String,
    /// The limits that bound the systems it can hold: the largest buffer and storage binding.
    pub max_buffer_bytes: u64,
    pub max_storage_binding_bytes: u64,
}

impl std::fmt::Display for AdapterDescription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mib = |bytes: u64| bytes >> 20;
        write!(
            f,
            "{} ({}, {}, {}; buffers up to {} MiB, storage bindings up to {} MiB)",
            self.name,
            self.backend,
            self.device_type,
            self.driver,
            mib(self.max_buffer_bytes),
            mib(self.max_storage_binding_bytes)
        )
    }
}

fn instance() -> wgpu::Instance {
    wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env())
}

fn describe(index: usize, adapter: &wgpu::Adapter) -> AdapterDescription {
    let (info, limits) = (adapter.get_info(), adapter.limits());
    AdapterDescription {
        index,
        name: info.name.clone(),
        backend: format!("{:?}", info.backend).to_lowercase(),
        device_type: format!("{:?}", info.device_type).to_lowercase(),
        driver: format!("{} {}", info.driver, info.driver_info).trim().to_string(),
        max_buffer_bytes: limits.max_buffer_size,
        max_storage_binding_bytes: limits.max_storage_buffer_binding_size,
    }
}

/// Adapters that can run compute shaders, in the order `--device wgpu:N` counts them.
pub fn adapters() -> Vec<AdapterDescription> {
    compute_adapters(&instance()).iter().enumerate().map(|(i, a)| describe(i, a)).collect()
}

fn compute_adapters(instance: &wgpu::Instance) -> Vec<wgpu::Adapter> {
    let mut adapters: Vec<wgpu::Adapter> = pollster::block_on(instance.enumerate_adapters(wgpu::Backends::all()))
        .into_iter()
        .filter(|a| a.get_downlevel_capabilities().flags.contains(wgpu::DownlevelFlags::COMPUTE_SHADERS))
        .collect();
    // Real GPUs first, software rasterisers last.
    adapters.sort_by_key(|a| match a.get_info().device_type {
        wgpu::DeviceType::DiscreteGpu => 0,
        wgpu::DeviceType::IntegratedGpu => 1,
        wgpu::DeviceType::VirtualGpu => 2,
        wgpu::DeviceType::Other => 3,
        wgpu::DeviceType::Cpu => 4,
    });
    adapters
}

struct Pipelines {
    advance: wgpu::ComputePipeline,
    kick_drift: wgpu::ComputePipeline,
    check: wgpu::ComputePipeline,
    prepare: wgpu::ComputePipeline,
    clear_cells: wgpu::ComputePipeline,
    bin: wgpu::ComputePipeline,
    scan: wgpu::ComputePipeline,
    scatter: wgpu::ComputePipeline,
    build: wgpu::ComputePipeline,
    forces: wgpu::ComputePipeline,
    forces_energy: wgpu::ComputePipeline,
    kick_thermostat: wgpu::ComputePipeline,
}

pub struct GpuEngine {
    device: wgpu::Device,
    queue: wgpu::Queue,
    adapter: AdapterDescription,
    layout: wgpu::BindGroupLayout,
    indirect_layout: wgpu::BindGroupLayout,
    pipelines: Pipelines,
}

impl GpuEngine {
    /// Opens adapter `index` (None: the first, preferring real GPUs).
    pub fn new(index: Option<usize>) -> Result<GpuEngine> {
        let instance = instance();
        let mut adapters = compute_adapters(&instance);
        if adapters.is_empty() {
            return Err(KernelError::Gpu(
                "no wgpu adapter with compute shaders (install a Vulkan driver, e.g. Debian's mesa-vulkan-drivers)"
                    .into(),
            ));
        }
        let chosen = index.unwrap_or(0);
        if chosen >= adapters.len() {
            return Err(KernelError::Gpu(format!("adapter {chosen} does not exist; there are {}", adapters.len())));
        }
        let adapter = adapters.swap_remove(chosen);
        let description = describe(chosen, &adapter);
        let limits = adapter.limits();
        if limits.max_storage_buffers_per_shader_stage < BINDINGS - 1 {
            return Err(KernelError::Gpu(format!(
                "{description} allows {} storage buffers per stage; the MD kernels need {}",
                limits.max_storage_buffers_per_shader_stage,
                BINDINGS - 1
            )));
        }
        let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
            label: Some("upglobe-md"),
            required_features: wgpu::Features::empty(),
            required_limits: limits,
            ..Default::default()
        }))
        .map_err(|e| KernelError::Gpu(format!("cannot open {description}: {e}")))?;
        let scope = device.push_error_scope(wgpu::ErrorFilter::Validation);
        let layout = bind_group_layout(&device, (0..BINDINGS).filter(|&b| b != INDIRECT_BINDING), Some(0));
        let indirect_layout = bind_group_layout(&device, [0].into_iter(), None);
        let pipelines = create_pipelines(&device, &layout, &indirect_layout);
        if let Some(error) = pollster::block_on(scope.pop()) {
            return Err(KernelError::Gpu(format!("the MD shaders do not compile on {description}: {error}")));
        }
        Ok(GpuEngine { device, queue, adapter: description, layout, indirect_layout, pipelines })
    }

    pub fn adapter(&self) -> &AdapterDescription {
        &self.adapter
    }
}

fn bind_group_layout(
    device: &wgpu::Device,
    bindings: impl Iterator<Item = u32>,
    uniform: Option<u32>,
) -> wgpu::BindGroupLayout {
    let entries: Vec<wgpu::BindGroupLayoutEntry> = bindings
        .map(|binding| wgpu::BindGroupLayoutEntry {
            binding,
            visibility: wgpu::ShaderStages::COMPUTE,
            ty: wgpu::BindingType::Buffer {
                ty: if Some(binding) == uniform {
                    wgpu::BufferBindingType::Uniform
                } else {
                    wgpu::BufferBindingType::Storage { read_only: READ_ONLY_BINDINGS.contains(&binding) }
                },
                has_dynamic_offset: false,
                min_binding_size: None,
            },
            count: None,
        })
        .collect();
    device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor { label: Some("md"), entries: &entries })
}

fn create_pipelines(
    device: &wgpu::Device,
    layout: &wgpu::BindGroupLayout,
    indirect: &wgpu::BindGroupLayout,
) -> Pipelines {
    let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
        label: Some("md.wgsl"),
        source: wgpu::ShaderSource::Wgsl(SHADER.into()),
    });
    let pipeline_layout = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
        label: Some("md"),
        bind_group_layouts: &[Some(layout)],
        immediate_size: 0,
    });
    let prepare_layout = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
        label: Some("md prepare"),
        bind_group_layouts: &[Some(layout), Some(indirect)],
        immediate_size: 0,
    });
    let make = |entry: &str, constants: &[(&str, f64)]| {
        device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some(entry),
            layout: Some(if entry == "prepare" { &prepare_layout } else { &pipeline_layout }),
            module: &module,
            entry_point: Some(entry),
            compilation_options: wgpu::PipelineCompilationOptions { constants, ..Default::default() },
            cache: None,
        })
    };
    Pipelines {
        advance: make("advance", &[]),
        kick_drift: make("kick_drift", &[]),
        check: make("check", &[]),
        prepare: make("prepare", &[]),
        clear_cells: make("clear_cells", &[]),
        bin: make("bin", &[]),
        scan: make("scan", &[]),
        scatter: make("scatter", &[]),
        build: make("build", &[]),
        forces: make("forces", &[]),
        forces_energy: make("forces", &[("WITH_ENERGY", 1.0)]),
        kick_thermostat: make("kick_thermostat", &[]),
    }
}

/// The uniform block, laid out as `Params` in md.wgsl.
#[repr(C)]
#[derive(Debug, Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct GpuParams {
    atoms: u32,
    types: u32,
    max_neighbors: u32,
    atom_groups: u32,
    cells: [u32; 4],
    multiplier: [u32; 4],
    shift: [u32; 4],
    list_squared: [u32; 2],
    drift_limit_squared: [u32; 2],
    langevin: u32,
    seed_low: u32,
    seed_high: u32,
    friction_mantissa: u32,
    friction_shift: u32,
    energy_offset: u32,
    virial_offset: u32,
    cell_groups: u32,
}

fn split64(v: u64) -> [u32; 2] {
    [v as u32, (v >> 32) as u32]
}

fn factor_words(factor: Factor, what: &str) -> Result<[u32; 2]> {
    if !FACTOR_SHIFT_RANGE.contains(&factor.shift) {
        return Err(KernelError::Gpu(format!(
            "the {what} factor needs a shift of {}, outside the GPU kernel's range 0..63 (extreme timestep or mass)",
            factor.shift
        )));
    }
    Ok([factor.mantissa, factor.shift as u32])
}

/// Buffers of one run.
struct Run<'e> {
    engine: &'e GpuEngine,
    params: GpuParams,
    atoms: usize,
    types_of_atoms: Vec<u32>,
    buffers: Vec<wgpu::Buffer>,
    snapshot: Vec<wgpu::Buffer>,
    bind_group: Option<wgpu::BindGroup>,
    indirect_group: Option<wgpu::BindGroup>,
    dispatch_atoms: [u32; 2],
}

const PARAMS: usize = 0;
const POSITION: usize = 1;
const VELOCITY: usize = 2;
const FORCE: usize = 3;
const NEIGHBORS: usize = 6;
const CONTROL: usize = 12;
const INDIRECT: usize = 13;
const ENERGY: usize = 17;

impl<'e> Run<'e> {
    fn new(engine: &'e GpuEngine, state: &State, model: &Model, skin: f64) -> Result<Run<'e>> {
        let atoms = state.atoms();
        let p = &state.params;
        let skin = effective_skin(p, skin);
        let list_radius = p.cutoff_max() + skin;
        let mut cells: [usize; 3] = std::array::from_fn(|d| ((p.box_length[d] / list_radius).floor() as usize).max(1));
        while cells.iter().product::<usize>() > CELLS_MAX {
            cells.iter_mut().for_each(|c| *c = (*c / 2).max(1));
        }
        let total_cells = cells.iter().product::<usize>();
        let density = atoms as f64 / p.volume();
        let expected = 4.0 / 3.0 * std::f64::consts::PI * list_radius.powi(3) * density;
        let max_neighbors = (((expected * 1.4) as usize + 16).div_ceil(8) * 8).min(atoms);
        let groups = (atoms as u32).div_ceil(GROUP);
        let atom_groups = groups.min(65_535);
        let rows = groups.div_ceil(atom_groups);
        let flat = model.flat_tables();
        let segment_count = flat.force.len() as u32;
        let langevin = model.langevin.as_ref();
        let (friction_mantissa, friction_shift) = match langevin {
            Some(l) => {
                let [m, s] = factor_words(l.friction, "friction")?;
                (m, s)
            }
            None => (0, 0),
        };
        let params = GpuParams {
            atoms: atoms as u32,
            types: model.types as u32,
            max_neighbors: max_neighbors as u32,
            atom_groups,
            cells: [cells[0] as u32, cells[1] as u32, cells[2] as u32, total_cells as u32],
            multiplier: [
                model.separation[0].multiplier as u32,
                model.separation[1].multiplier as u32,
                model.separation[2].multiplier as u32,
                0,
            ],
            shift: [model.separation[0].shift, model.separation[1].shift, model.separation[2].shift, 0],
            list_squared: split64(model.squared(list_radius)),
            drift_limit_squared: split64(model.squared(skin / 2.0 - 1e-6)),
            langevin: langevin.is_some() as u32,
            seed_low: langevin.map_or(0, |l| l.seed as u32),
            seed_high: langevin.map_or(0, |l| (l.seed >> 32) as u32),
            friction_mantissa,
            friction_shift,
            energy_offset: segment_count,
            virial_offset: 2 * segment_count,
            cell_groups: (total_cells as u32).div_ceil(GROUP),
        };
        let mut pair_params: Vec<[u32; 4]> = Vec::new();
        for pt in 0..flat.offset.len() {
            let [cl, ch] = split64(flat.cutoff_squared[pt]);
            let [ml, mh] = split64(flat.clamp_squared[pt]);
            pair_params.push([cl, ch, ml, mh]);
            pair_params.push([flat.first_octave[pt], flat.offset[pt], 0, 0]);
        }
        let mut segments = flat.force.clone();
        segments.extend(&flat.energy);
        segments.extend(&flat.virial);
        let mut type_factors: Vec<[u32; 4]> = Vec::new();
        for t in 0..model.types {
            for d in 0..3 {
                let [km, ks] = factor_words(model.kick[t][d], "kick")?;
                let noise = match langevin.and_then(|l| l.noise[t][d]) {
                    Some(noise) => {
                        let [nm, ns] = factor_words(noise, "noise")?;
                        [nm, ns + 1]
                    }
                    None => [0, 0],
                };
                type_factors.push([km, ks, noise[0], noise[1]]);
            }
        }
        let mut run = Run {
            engine,
            params,
            atoms,
            types_of_atoms: state.types.clone(),
            buffers: Vec::new(),
            snapshot: Vec::new(),
            bind_group: None,
            indirect_group: None,
            dispatch_atoms: [atom_groups, rows],
        };
        run.allocate(state, &pair_params, &segments, &type_factors, total_cells)?;
        Ok(run)
    }

    fn allocate(
        &mut self,
        state: &State,
        pair_params: &[[u32; 4]],
        segments: &[crate::model::Segment],
        type_factors: &[[u32; 4]],
        total_cells: usize,
    ) -> Result<()> {
        let device = &self.engine.device;
        let atoms = self.atoms;
        let storage = wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST;
        let init = |label: &str, contents: &[u8], usage: wgpu::BufferUsages| {
            device.create_buffer_init(&wgpu::util::BufferInitDescriptor { label: Some(label), contents, usage })
        };
        let zeroed = |label: &str, bytes: usize| device.create_buffer(&plain(label, bytes.max(16) as u64, storage));
        let high: Vec<[u32; 4]> = state
            .positions
            .iter()
            .zip(&state.types)
            .map(|(x, &t)| [(x[0] >> 32) as u32, (x[1] >> 32) as u32, (x[2] >> 32) as u32, t])
            .collect();
        let control = [1u32, 0, state.step as u32, (state.step >> 32) as u32, 0, 0, 0, 0];
        let scope = device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        self.buffers = vec![
            init(
                "params",
                bytemuck::bytes_of(&self.params),
                wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
            ),
            init("position", bytemuck::cast_slice(&state.positions), storage),
            init("velocity", bytemuck::cast_slice(&state.velocities), storage),
            zeroed("force", atoms * 24),
            init("high", bytemuck::cast_slice(&high), storage),
            zeroed("reference", atoms * 16),
            zeroed("neighbors", atoms * self.params.max_neighbors as usize * 4),
            zeroed("neighbor_count", atoms * 4),
            zeroed("cell_count", total_cells * 4),
            zeroed("cell_start", (total_cells + 1) * 4),
            zeroed("cell_atoms", atoms * 4),
            zeroed("atom_cell", atoms * 8),
            init("control", bytemuck::cast_slice(&control), storage),
            init("indirect", &[0u8; 36], storage | wgpu::BufferUsages::INDIRECT),
            init("pair_params", bytemuck::cast_slice(pair_params), storage),
            init("segments", bytemuck::cast_slice(segments), storage),
            init("type_factors", bytemuck::cast_slice(type_factors), storage),
            zeroed("energy", atoms * 16),
        ];
        let copy = wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST;
        self.snapshot = vec![
            device.create_buffer(&plain("snapshot position", atoms as u64 * 24, copy)),
            device.create_buffer(&plain("snapshot velocity", atoms as u64 * 24, copy)),
            device.create_buffer(&plain("snapshot force", atoms as u64 * 24, copy)),
            device.create_buffer(&plain("snapshot control", 32, copy)),
        ];
        if let Some(error) = pollster::block_on(scope.pop()) {
            return Err(KernelError::Gpu(format!(
                "cannot allocate {} atoms on {}: {error}",
                atoms, self.engine.adapter
            )));
        }
        self.bind();
        Ok(())
    }

    fn bind(&mut self) {
        let entries: Vec<wgpu::BindGroupEntry> = self
            .buffers
            .iter()
            .enumerate()
            .filter(|(binding, _)| *binding as u32 != INDIRECT_BINDING)
            .map(|(binding, buffer)| wgpu::BindGroupEntry {
                binding: binding as u32,
                resource: buffer.as_entire_binding(),
            })
            .collect();
        self.bind_group = Some(self.engine.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some("md"),
            layout: &self.engine.layout,
            entries: &entries,
        }));
        self.indirect_group = Some(self.engine.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some("md indirect"),
            layout: &self.engine.indirect_layout,
            entries: &[wgpu::BindGroupEntry { binding: 0, resource: self.buffers[INDIRECT].as_entire_binding() }],
        }));
    }

    /// Records the list build (indirect: it does nothing unless `prepare` saw a rebuild request).
    fn encode_build(&self, pass: &mut wgpu::ComputePass) {
        let p = &self.engine.pipelines;
        let indirect = &self.buffers[INDIRECT];
        pass.set_pipeline(&p.prepare);
        pass.set_bind_group(1, self.indirect_group.as_ref(), &[]);
        pass.dispatch_workgroups(1, 1, 1);
        pass.set_pipeline(&p.clear_cells);
        pass.dispatch_workgroups_indirect(indirect, 12);
        pass.set_pipeline(&p.bin);
        pass.dispatch_workgroups_indirect(indirect, 0);
        pass.set_pipeline(&p.scan);
        pass.dispatch_workgroups_indirect(indirect, 24);
        pass.set_pipeline(&p.scatter);
        pass.dispatch_workgroups_indirect(indirect, 0);
        pass.set_pipeline(&p.build);
        pass.dispatch_workgroups_indirect(indirect, 0);
    }

    fn encode_atoms(&self, pass: &mut wgpu::ComputePass, pipeline: &wgpu::ComputePipeline) {
        pass.set_pipeline(pipeline);
        pass.dispatch_workgroups(self.dispatch_atoms[0], self.dispatch_atoms[1], 1);
    }

    /// Forces at the starting positions (and energies if asked).
    fn start(&self, energy: bool) {
        let mut encoder = self.engine.device.create_command_encoder(&Default::default());
        {
            let mut pass = encoder.begin_compute_pass(&Default::default());
            pass.set_bind_group(0, self.bind_group.as_ref(), &[]);
            self.encode_build(&mut pass);
            let p = &self.engine.pipelines;
            self.encode_atoms(&mut pass, if energy { &p.forces_energy } else { &p.forces });
        }
        self.engine.queue.submit([encoder.finish()]);
    }

    /// Records steps `first..=last` (global numbers); energies at `last` if asked.
    fn encode_steps(&self, first: u64, last: u64, energy_at_last: bool) {
        let p = &self.engine.pipelines;
        let mut encoder = self.engine.device.create_command_encoder(&Default::default());
        for (k, source) in [POSITION, VELOCITY, FORCE, CONTROL].iter().enumerate() {
            encoder.copy_buffer_to_buffer(&self.buffers[*source], 0, &self.snapshot[k], 0, None);
        }
        {
            let mut pass = encoder.begin_compute_pass(&Default::default());
            pass.set_bind_group(0, self.bind_group.as_ref(), &[]);
            for step in first..=last {
                pass.set_pipeline(&p.advance);
                pass.dispatch_workgroups(1, 1, 1);
                self.encode_atoms(&mut pass, &p.kick_drift);
                self.encode_atoms(&mut pass, &p.check);
                self.encode_build(&mut pass);
                let energy = energy_at_last && step == last;
                self.encode_atoms(&mut pass, if energy { &p.forces_energy } else { &p.forces });
                self.encode_atoms(&mut pass, &p.kick_thermostat);
            }
        }
        self.engine.queue.submit([encoder.finish()]);
    }

    fn read(&self, index: usize) -> Result<Vec<u8>> {
        let device = &self.engine.device;
        let source = &self.buffers[index];
        let size = source.size();
        let staging =
            device.create_buffer(&plain("readback", size, wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST));
        let mut encoder = device.create_command_encoder(&Default::default());
        encoder.copy_buffer_to_buffer(source, 0, &staging, 0, size);
        self.engine.queue.submit([encoder.finish()]);
        let (sender, receiver) = std::sync::mpsc::channel();
        staging.slice(..).map_async(wgpu::MapMode::Read, move |result| {
            let _ = sender.send(result);
        });
        device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| KernelError::Gpu(format!("waiting for {}: {e}", self.engine.adapter)))?;
        receiver
            .recv()
            .map_err(|_| KernelError::Gpu("readback was dropped".into()))?
            .map_err(|e| KernelError::Gpu(format!("cannot read results back: {e}")))?;
        let bytes = staging
            .slice(..)
            .get_mapped_range()
            .map_err(|e| KernelError::Gpu(format!("cannot map results: {e:?}")))?
            .to_vec();
        staging.unmap();
        Ok(bytes)
    }

    /// Reads and clears the overflow word; returns the largest neighbour count seen if it overflowed.
    fn take_overflow(&self) -> Result<Option<u32>> {
        let control: Vec<u32> = bytemuck::pod_collect_to_vec(&self.read(CONTROL)?);
        if control[1] == 0 {
            return Ok(None);
        }
        Ok(Some(control[1]))
    }

    /// After an overflow: restores the snapshot, grows the list and asks for a rebuild.
    fn grow(&mut self, needed: u32, from_snapshot: bool) -> Result<()> {
        let device = &self.engine.device;
        if from_snapshot {
            let mut encoder = device.create_command_encoder(&Default::default());
            for (k, target) in [POSITION, VELOCITY, FORCE, CONTROL].iter().enumerate() {
                encoder.copy_buffer_to_buffer(&self.snapshot[k], 0, &self.buffers[*target], 0, None);
            }
            self.engine.queue.submit([encoder.finish()]);
        }
        let control: Vec<u32> = bytemuck::pod_collect_to_vec(&self.read(CONTROL)?);
        self.engine.queue.write_buffer(
            &self.buffers[CONTROL],
            0,
            bytemuck::cast_slice(&[1u32, 0, control[2], control[3], control[4]]),
        );
        let max_neighbors = ((needed as usize * 5 / 4).div_ceil(8) * 8).min(self.atoms) as u32;
        tracing::debug!(from = self.params.max_neighbors, to = max_neighbors, "growing the GPU neighbour list");
        self.params.max_neighbors = max_neighbors;
        self.engine.queue.write_buffer(&self.buffers[PARAMS], 0, bytemuck::bytes_of(&self.params));
        let bytes = self.atoms as u64 * max_neighbors as u64 * 4;
        let scope = device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        self.buffers[NEIGHBORS] = device.create_buffer(&plain("neighbors", bytes, wgpu::BufferUsages::STORAGE));
        if let Some(error) = pollster::block_on(scope.pop()) {
            return Err(KernelError::Gpu(format!(
                "cannot grow the neighbour list to {max_neighbors} per atom: {error}"
            )));
        }
        self.bind();
        Ok(())
    }

    fn sums(&self, with_energy: bool) -> Result<Sums> {
        let mut sums = Sums::new(self.params.types as usize);
        let velocities: Vec<[i64; 3]> = bytemuck::pod_collect_to_vec(&self.read(VELOCITY)?);
        for (v, &t) in velocities.iter().zip(&self.types_of_atoms) {
            sums.add_velocity(t, *v);
        }
        if with_energy {
            let energies: Vec<[i64; 2]> = bytemuck::pod_collect_to_vec(&self.read(ENERGY)?);
            let (energy, virial) =
                energies.iter().fold((0i128, 0i128), |(e, w), x| (e + x[0] as i128, w + x[1] as i128));
            // Full lists see every pair twice; the CPU's half list once. Both totals are exact.
            debug_assert!(energy % 2 == 0 && virial % 2 == 0);
            sums.energy = energy / 2;
            sums.virial = virial / 2;
        }
        Ok(sums)
    }

    fn state(&self, input: &State, step: u64) -> Result<State> {
        let mut state = input.clone();
        state.step = step;
        state.positions = bytemuck::pod_collect_to_vec(&self.read(POSITION)?);
        state.velocities = bytemuck::pod_collect_to_vec(&self.read(VELOCITY)?);
        Ok(state)
    }
}

fn plain(label: &str, size: u64, usage: wgpu::BufferUsages) -> wgpu::BufferDescriptor<'_> {
    wgpu::BufferDescriptor { label: Some(label), size: size.div_ceil(4) * 4, usage, mapped_at_creation: false }
}

impl Engine for GpuEngine {
    fn describe(&self) -> String {
        format!("wgpu: {}", self.adapter)
    }

    fn run(
        &mut self,
        state: &State,
        options: &RunOptions,
        observer: &mut dyn FnMut(Event) -> ControlFlow<()>,
    ) -> Result<RunOutput> {
        let model = prepare(state, options)?;
        let mut run = Run::new(self, state, &model, options.skin)?;
        let start = state.step;
        let mut thermo = Vec::new();
        let energy = options.wants_thermo(start, start);
        loop {
            run.start(energy);
            match run.take_overflow()? {
                Some(needed) => run.grow(needed, false)?,
                None => break,
            }
        }
        if energy {
            let t = run.sums(true)?.thermo(&state.params, state.atoms(), start);
            thermo.push(t);
            if observer(Event::Thermo(&t)).is_break() {
                return Err(cancelled(start));
            }
        }
        if observer(Event::Ready).is_break() {
            return Err(cancelled(start));
        }
        let end = start + options.steps;
        let mut step = start;
        while step < end {
            let last = next_stop(options, start, step, end);
            let energy = options.wants_thermo(start, last);
            loop {
                run.encode_steps(step + 1, last, energy);
                match run.take_overflow()? {
                    Some(needed) => run.grow(needed, true)?,
                    None => break,
                }
            }
            step = last;
            if energy {
                let t = run.sums(true)?.thermo(&state.params, state.atoms(), step);
                if !(t.etotal.is_finite() && t.press.is_finite()) {
                    return Err(KernelError::Unstable { step, message: "energy is not finite".into() });
                }
                thermo.push(t);
                if observer(Event::Thermo(&t)).is_break() {
                    return Err(cancelled(step));
                }
            }
            if observer(Event::Step(step)).is_break() {
                return Err(cancelled(step));
            }
        }
        let control: Vec<u32> = bytemuck::pod_collect_to_vec(&run.read(CONTROL)?);
        Ok(RunOutput { state: run.state(state, end)?, thermo, neighbor_builds: control[4] as u64 })
    }
}

/// The end of the next batch: the next thermo step, the end, or a bounded number of steps.
fn next_stop(options: &RunOptions, start: u64, step: u64, end: u64) -> u64 {
    let mut last = (step + BATCH_STEPS_MAX).min(end);
    if let Some(done) = step.checked_div(options.thermo_every) {
        last = last.min((done + 1) * options.thermo_every);
    }
    debug_assert!(last > step && last <= end && (last == end || last > start));
    last
}
