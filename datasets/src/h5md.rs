//! Trajectories as H5MD 1.1 files (<https://www.nongnu.org/h5md/>), readable by h5py, h5dump, VMD's
//! H5MD plugin and MDAnalysis; and one frame of such a file read back as the start of a run.
//!
//! Layout written:
//! ```text
//! /h5md                      version = [1, 1]; author/name, creator/{name, version}
//! /particles/trajectory     a soft link to /particles/all, where MDAnalysis looks for the atoms
//! /particles/all/box         dimension = 3, boundary = periodic; origin [3];
//!                            edges/{value [frames, 3], step [frames], time [frames]}
//! /particles/all/position    value [frames, atoms, 3], step [frames], time [frames]
//! /particles/all/box_crossings value [frames, atoms, 3] (integer), step, time (when images are given)
//! /particles/all/velocity    value, step, time
//! /particles/all/species     [atoms] (LAMMPS atom types, 1-based)
//! /particles/all/id          [atoms] (LAMMPS atom ids)
//! /observables/{temperature, potential_energy, kinetic_energy, total_energy, pressure}
//!                            value [lines], step [lines], time [lines]   (energies per atom)
//! /parameters/upglobe        provenance: workflow hash, job, the initial state's BLAKE3 hash, per
//!                            chunk its state hash and the workers that agreed on it; units = "lj"
//! ```
//!
//! Units. All numbers are LJ reduced units: lengths in sigma, times in tau, velocities in sigma/tau,
//! energies per atom in epsilon, temperature in epsilon/k_B, pressure in epsilon/sigma^3.
//! MDAnalysis refuses a unit string it does not know, and by default (`convert_units=True`) it
//! refuses a file whose positions or times have no unit. So position, velocity, time and box edges
//! carry MDAnalysis's own units (`Angstrom`, `ps`, `Angstrom ps-1`), which it converts by a factor
//! of 1: `MDAnalysis.Universe(path)` opens the file and its numbers are the reduced ones, unchanged.
//! Those strings stand for sigma and tau; `/parameters/upglobe` says `units = "lj"`, and each of those
//! elements also carries `lj_unit` with its true unit. Observables (which MDAnalysis does not convert)
//! carry their reduced unit in `unit`.
//!
//! Unwrapped positions. The kernels keep positions wrapped into the box and no image counts. When a
//! trajectory comes with images ([`track_images`]), `position` holds unwrapped positions (wrapped +
//! image * edges), so a mean squared displacement is read straight off it, and `box_crossings` holds the
//! counts (wrapped = position - box_crossings * edges). The counts are not written as H5MD's `image`
//! element: H5MD reads `image` as what to add to a *wrapped* `position`, and a tool following that
//! would shift these unwrapped positions twice. `/parameters/upglobe` says `position = "unwrapped"`.

use std::path::Path;
use std::str::FromStr;

use hdf5::types::VarLenUnicode;

use crate::{DatasetError, Result};

/// One frame; `positions` are wrapped into the box, as the kernels keep them.
pub struct Frame {
    pub step: i64,
    pub time: f64,
    pub positions: Vec<[f64; 3]>,
    pub velocities: Vec<[f64; 3]>,
}

pub struct Observable {
    pub step: i64,
    pub time: f64,
    pub temperature: f64,
    pub potential_energy: f64,
    pub kinetic_energy: f64,
    pub total_energy: f64,
    pub pressure: f64,
}

pub struct ChunkProvenance {
    pub index: u32,
    pub state_hash: String,
    pub workers: Vec<String>,
}

pub struct Trajectory {
    pub box_origin: [f64; 3],
    pub box_edges: [f64; 3],
    pub species: Vec<i32>,
    pub ids: Vec<i64>,
    pub frames: Vec<Frame>,
    /// Per frame, per atom, how many box edges to add to the wrapped position ([`track_images`]);
    /// `None` writes the wrapped positions and no `image` element (frames too far apart to track).
    pub images: Option<Vec<Vec<[i32; 3]>>>,
    pub observables: Vec<Observable>,
    pub software: String,
    pub author: String,
    pub workflow_hash: String,
    pub job: String,
    /// BLAKE3 hash (hex) of the job's input: the checkpoint of its initial state, which names the
    /// system whatever file it was built from. Empty when there is none.
    pub initial_state_hash: String,
    pub chunks: Vec<ChunkProvenance>,
}

/// MDAnalysis's native units, standing for the reduced ones (see the module docs).
const LENGTH_UNIT: &str = "Angstrom";
const TIME_UNIT: &str = "ps";
const VELOCITY_UNIT: &str = "Angstrom ps-1";

/// Per frame, per atom, the image counts that unwrap `frames`, by the minimum-image rule: a wrapped
/// coordinate that jumps by more than half a box edge between consecutive frames crossed a boundary.
///
/// Exact when every atom moves less than half a box edge along each axis between consecutive frames.
/// The kernels require the cutoff to be below half the shortest edge, so half an edge is at least
/// 2.5 sigma at the usual cutoff; an LJ liquid diffuses about sqrt(2 D t) ~ 1 sigma per axis in a
/// 1000-step chunk (D ~ 0.1 sigma^2/tau, t = 5 tau), well inside it. A dilute gas over long chunks
/// (ballistic, v ~ sqrt(T) sigma/tau) can exceed it, and then the counts are wrong.
pub fn track_images(frames: &[Frame], box_edges: [f64; 3]) -> Vec<Vec<[i32; 3]>> {
    assert!(box_edges.iter().all(|edge| *edge > 0.0), "box edges must be positive");
    let atoms = frames.first().map_or(0, |frame| frame.positions.len());
    let mut current = vec![[0i32; 3]; atoms];
    let mut images = Vec::with_capacity(frames.len());
    for (index, frame) in frames.iter().enumerate() {
        assert_eq!(frame.positions.len(), atoms, "every frame has every atom");
        if let Some(previous) = index.checked_sub(1).map(|previous| &frames[previous]) {
            for (atom, image) in current.iter_mut().enumerate() {
                for d in 0..3 {
                    let jump = frame.positions[atom][d] - previous.positions[atom][d];
                    // Crossing the upper face wraps the coordinate down by an edge, and back.
                    image[d] -= (jump / box_edges[d]).round() as i32;
                }
            }
        }
        images.push(current.clone());
    }
    images
}

fn h5(path: &Path) -> impl Fn(hdf5::Error) -> DatasetError + '_ {
    move |e| DatasetError::H5md { path: path.display().to_string(), message: e.to_string() }
}

fn text(value: &str) -> VarLenUnicode {
    VarLenUnicode::from_str(value).unwrap_or_else(|_| VarLenUnicode::from_str("?").expect("plain text"))
}

fn text_attr(location: &hdf5::Location, name: &str, value: &str) -> hdf5::Result<()> {
    location.new_attr::<VarLenUnicode>().create(name)?.write_scalar(&text(value))
}

/// The steps and times shared by the elements sampled at the same moments.
struct Samples<'a> {
    steps: &'a [i64],
    times: &'a [f64],
}

/// What one time-dependent element holds besides its samples.
struct Values<'a, T> {
    values: &'a [T],
    /// Shape of one sample.
    inner: &'a [usize],
    /// The `unit` attribute of `value`, and the true (`lj_unit`) one where `unit` stands for it.
    unit: Option<&'a str>,
    lj_unit: Option<&'a str>,
}

fn time_series<T: hdf5::H5Type>(
    group: &hdf5::Group,
    name: &str,
    samples: &Samples,
    values: Values<T>,
) -> hdf5::Result<()> {
    let element = group.create_group(name)?;
    let mut shape = vec![samples.steps.len()];
    shape.extend_from_slice(values.inner);
    let value = element.new_dataset::<T>().shape(shape).create("value")?;
    value.write_raw(values.values)?;
    if let Some(unit) = values.unit {
        text_attr(&value, "unit", unit)?;
    }
    if let Some(lj_unit) = values.lj_unit {
        text_attr(&value, "lj_unit", lj_unit)?;
    }
    element.new_dataset::<i64>().shape(samples.steps.len()).create("step")?.write_raw(samples.steps)?;
    let time = element.new_dataset::<f64>().shape(samples.times.len()).create("time")?;
    time.write_raw(samples.times)?;
    text_attr(&time, "unit", if values.lj_unit.is_some() { TIME_UNIT } else { "tau" })?;
    if values.lj_unit.is_some() {
        text_attr(&time, "lj_unit", "tau")?;
    }
    Ok(())
}

pub fn write(path: &Path, trajectory: &Trajectory) -> Result<()> {
    write_h5(path, trajectory).map_err(h5(path))
}

fn write_h5(path: &Path, t: &Trajectory) -> hdf5::Result<()> {
    let file = hdf5::File::create(path)?;
    let h5md = file.create_group("h5md")?;
    h5md.new_attr::<i32>().shape(2).create("version")?.write_raw(&[1, 1])?;
    let author = h5md.create_group("author")?;
    text_attr(&author, "name", &t.author)?;
    let creator = h5md.create_group("creator")?;
    text_attr(&creator, "name", "upglobe")?;
    text_attr(&creator, "version", &t.software)?;

    let particles = file.create_group("particles")?;
    let all = particles.create_group("all")?;
    write_particles(&all, t)?;
    // MDAnalysis infers the atoms of a file opened alone from `/particles/trajectory` (the name its
    // own writer uses); LAMMPS and H5MD's examples say `all`. One group, two names.
    particles.link_soft("/particles/all", "trajectory")?;
    write_observables(&file.create_group("observables")?, t)?;
    write_provenance(&file.create_group("parameters")?.create_group("upglobe")?, t)?;
    file.flush()?;
    Ok(())
}

fn write_particles(all: &hdf5::Group, t: &Trajectory) -> hdf5::Result<()> {
    let atoms = t.species.len();
    let steps: Vec<i64> = t.frames.iter().map(|f| f.step).collect();
    let times: Vec<f64> = t.frames.iter().map(|f| f.time).collect();
    let samples = Samples { steps: &steps, times: &times };
    let simulation_box = all.create_group("box")?;
    simulation_box.new_attr::<i32>().create("dimension")?.write_scalar(&3)?;
    let periodic = [text("periodic"), text("periodic"), text("periodic")];
    simulation_box.new_attr::<VarLenUnicode>().shape(3).create("boundary")?.write_raw(&periodic)?;
    // Time-dependent, as MDAnalysis reads it (`edges/value`); the box itself never changes.
    let edges: Vec<f64> = t.frames.iter().flat_map(|_| t.box_edges).collect();
    let length = Some(LENGTH_UNIT);
    let sigma = Some("sigma");
    let edge_values = Values { values: &edges, inner: &[3], unit: length, lj_unit: sigma };
    time_series(&simulation_box, "edges", &samples, edge_values)?;
    simulation_box.new_dataset::<f64>().shape(3).create("origin")?.write_raw(&t.box_origin)?;

    let mut positions: Vec<f64> = t.frames.iter().flat_map(|f| f.positions.iter().flatten().copied()).collect();
    if let Some(images) = &t.images {
        assert_eq!(images.len(), t.frames.len(), "one set of images per frame");
        let counts = images.iter().flatten().flatten();
        for (k, (position, count)) in positions.iter_mut().zip(counts).enumerate() {
            *position += f64::from(*count) * t.box_edges[k % 3];
        }
        let counts: Vec<i32> = images.iter().flatten().flatten().copied().collect();
        let image_values = Values { values: &counts, inner: &[atoms, 3], unit: None, lj_unit: None };
        time_series(all, "box_crossings", &samples, image_values)?;
    }
    let velocities: Vec<f64> = t.frames.iter().flat_map(|f| f.velocities.iter().flatten().copied()).collect();
    let position_values = Values { values: &positions, inner: &[atoms, 3], unit: length, lj_unit: sigma };
    time_series(all, "position", &samples, position_values)?;
    let velocity_values =
        Values { values: &velocities, inner: &[atoms, 3], unit: Some(VELOCITY_UNIT), lj_unit: Some("sigma tau-1") };
    time_series(all, "velocity", &samples, velocity_values)?;
    all.new_dataset::<i32>().shape(atoms).create("species")?.write_raw(&t.species)?;
    all.new_dataset::<i64>().shape(atoms).create("id")?.write_raw(&t.ids)?;
    Ok(())
}

fn write_observables(observables: &hdf5::Group, t: &Trajectory) -> hdf5::Result<()> {
    let steps: Vec<i64> = t.observables.iter().map(|o| o.step).collect();
    let times: Vec<f64> = t.observables.iter().map(|o| o.time).collect();
    let samples = Samples { steps: &steps, times: &times };
    type Series = (&'static str, &'static str, fn(&Observable) -> f64);
    let series: [Series; 5] = [
        ("temperature", "epsilon k_B-1", |o| o.temperature),
        ("potential_energy", "epsilon", |o| o.potential_energy),
        ("kinetic_energy", "epsilon", |o| o.kinetic_energy),
        ("total_energy", "epsilon", |o| o.total_energy),
        ("pressure", "epsilon sigma-3", |o| o.pressure),
    ];
    for (name, unit, get) in series {
        let values: Vec<f64> = t.observables.iter().map(get).collect();
        time_series(
            observables,
            name,
            &samples,
            Values { values: &values, inner: &[], unit: Some(unit), lj_unit: None },
        )?;
    }
    Ok(())
}

fn write_provenance(provenance: &hdf5::Group, t: &Trajectory) -> hdf5::Result<()> {
    text_attr(provenance, "workflow_hash", &t.workflow_hash)?;
    text_attr(provenance, "job", &t.job)?;
    text_attr(provenance, "software", &t.software)?;
    text_attr(provenance, "initial_state_hash", &t.initial_state_hash)?;
    text_attr(provenance, "units", "lj")?;
    text_attr(provenance, "position", if t.images.is_some() { "unwrapped" } else { "wrapped" })?;
    let chunks = t.chunks.len();
    let indexes: Vec<i64> = t.chunks.iter().map(|c| c.index as i64).collect();
    let hashes: Vec<VarLenUnicode> = t.chunks.iter().map(|c| text(&c.state_hash)).collect();
    let workers: Vec<VarLenUnicode> = t.chunks.iter().map(|c| text(&c.workers.join(","))).collect();
    provenance.new_dataset::<i64>().shape(chunks).create("chunk")?.write_raw(&indexes)?;
    provenance.new_dataset::<VarLenUnicode>().shape(chunks).create("state_hash")?.write_raw(&hashes)?;
    provenance.new_dataset::<VarLenUnicode>().shape(chunks).create("agreeing_workers")?.write_raw(&workers)?;
    Ok(())
}

/// One frame of an H5MD file: what a run needs to start from it. Per-atom vectors are in file order.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    /// The particle group read, such as `/particles/all`.
    pub particles: String,
    pub step: i64,
    pub box_origin: [f64; 3],
    pub box_edges: [f64; 3],
    pub positions: Vec<[f64; 3]>,
    pub velocities: Option<Vec<[f64; 3]>>,
    pub species: Option<Vec<i64>>,
    pub ids: Option<Vec<i64>>,
    pub masses: Option<Vec<f64>>,
}

/// An H5MD path and what is wrong there, before it is joined to the file's name.
type Found<T> = std::result::Result<T, String>;

/// Reads frame `frame` (default: the last) of the particle group `all` (or the file's only one).
/// Only that frame is read from each time-dependent dataset (a hyperslab), never the trajectory.
pub fn read_frame(path: &Path, frame: Option<u64>) -> Result<Snapshot> {
    let name = path.display().to_string();
    std::fs::metadata(path).map_err(|cause| DatasetError::Io { context: format!("cannot read {name}"), cause })?;
    let file = hdf5::File::open(path)
        .map_err(|e| DatasetError::H5md { path: name.clone(), message: format!("not an HDF5 file ({e})") })?;
    read_snapshot(&file, frame).map_err(|message| DatasetError::H5md { path: name, message })
}

fn read_snapshot(file: &hdf5::File, frame: Option<u64>) -> Found<Snapshot> {
    let (group, at) = particle_group(file)?;
    let position = element(&group, &at, "position")?.ok_or_else(|| format!("{at}/position is missing"))?;
    let Element::TimeDependent(position) = position else {
        return Err(format!("{at}/position is a dataset; H5MD stores it as a group with value, step and time"));
    };
    let value = dataset(&position, &format!("{at}/position"), "value")?;
    let shape = value.shape();
    let (frames, atoms) = match shape[..] {
        [frames, atoms, 3] if frames > 0 && atoms > 0 => (frames, atoms),
        _ => return Err(format!("{at}/position/value has shape {shape:?}; it must be [frames > 0, atoms > 0, 3]")),
    };
    let index = match frame {
        None => frames - 1,
        Some(frame) if frame < frames as u64 => frame as usize,
        Some(frame) => {
            return Err(format!(
                "{at}/position/value has {frames} frames (0 to {}); there is no frame {frame}",
                frames - 1
            ));
        }
    };
    let step = step_at(&position, &format!("{at}/position"), index)?;
    let positions = vectors(&value, &format!("{at}/position/value"), index)?;
    let (box_origin, box_edges) = read_box(&group, &at, step)?;
    let velocities = match element(&group, &at, "velocity")? {
        None => None,
        Some(velocity) => Some(per_atom_vectors(velocity, &format!("{at}/velocity"), step, atoms)?),
    };
    let species = per_atom(&group, &at, "species", step, atoms)?;
    let ids = per_atom(&group, &at, "id", step, atoms)?;
    let masses = per_atom(&group, &at, "mass", step, atoms)?;
    Ok(Snapshot { particles: at, step, box_origin, box_edges, positions, velocities, species, ids, masses })
}

/// `/particles/all`, or the only group under `/particles`.
fn particle_group(file: &hdf5::File) -> Found<(hdf5::Group, String)> {
    let particles = file.group("particles").map_err(|_| "/particles is missing".to_string())?;
    if particles.link_exists("all") {
        let all = particles.group("all").map_err(|_| "/particles/all is not a group".to_string())?;
        return Ok((all, "/particles/all".into()));
    }
    let names = particles.member_names().map_err(|e| format!("/particles: {e}"))?;
    match names.as_slice() {
        [only] => {
            let at = format!("/particles/{only}");
            Ok((particles.group(only).map_err(|_| format!("{at} is not a group"))?, at))
        }
        [] => Err("/particles is empty; it needs a particle group such as /particles/all".into()),
        _ => Err(format!(
            "/particles has groups {} and none named 'all'; which one to read is unclear",
            names.join(", ")
        )),
    }
}

/// An H5MD element: a time-independent dataset or a time-dependent group (value, step, time).
enum Element {
    Fixed(hdf5::Dataset),
    TimeDependent(hdf5::Group),
}

fn element(group: &hdf5::Group, at: &str, name: &str) -> Found<Option<Element>> {
    if !group.link_exists(name) {
        return Ok(None);
    }
    match group.loc_type_by_name(name) {
        Ok(hdf5::LocationType::Dataset) => group.dataset(name).map(|d| Some(Element::Fixed(d))),
        Ok(hdf5::LocationType::Group) => group.group(name).map(|g| Some(Element::TimeDependent(g))),
        _ => return Err(format!("{at}/{name} is neither a dataset nor a group")),
    }
    .map_err(|e| format!("{at}/{name}: {e}"))
}

fn dataset(group: &hdf5::Group, at: &str, name: &str) -> Found<hdf5::Dataset> {
    if !group.link_exists(name) {
        return Err(format!("{at}/{name} is missing"));
    }
    group.dataset(name).map_err(|_| format!("{at}/{name} is not a dataset"))
}

/// The step of sample `index` of a time-dependent element; `step` may be an array or, as H5MD 1.1
/// allows, a scalar interval with an optional `offset` attribute.
fn step_at(element: &hdf5::Group, at: &str, index: usize) -> Found<i64> {
    let steps = dataset(element, at, "step")?;
    let read = |e: hdf5::Error| format!("{at}/step: {e}");
    match steps.ndim() {
        0 => {
            let interval: i64 = steps.read_scalar().map_err(read)?;
            i64::try_from(index)
                .ok()
                .and_then(|index| interval.checked_mul(index))
                .and_then(|step| step.checked_add(offset(&steps).ok()?))
                .ok_or_else(|| format!("{at}/step: the step of sample {index} does not fit in 64 bits"))
        }
        1 => Ok(steps.read_slice_1d::<i64, _>(index..index + 1).map_err(read)?[0]),
        _ => Err(format!("{at}/step has shape {:?}; it must be [samples] or a scalar", steps.shape())),
    }
}

fn offset(steps: &hdf5::Dataset) -> hdf5::Result<i64> {
    match steps.attr("offset") {
        Ok(offset) => offset.read_scalar(),
        Err(_) => Ok(0),
    }
}

/// Which sample of a time-dependent element was taken at `step` (the position frame's step).
fn sample_at(element: &hdf5::Group, at: &str, step: i64) -> Found<usize> {
    let steps = dataset(element, at, "step")?;
    let read = |e: hdf5::Error| format!("{at}/step: {e}");
    let samples = dataset(element, at, "value")?.shape().first().copied().unwrap_or(0);
    let found = match steps.ndim() {
        0 => {
            let interval: i64 = steps.read_scalar().map_err(read)?;
            let since = step.checked_sub(offset(&steps).map_err(read)?);
            since
                .filter(|since| interval > 0 && *since >= 0 && since % interval == 0)
                .map(|since| (since / interval) as usize)
        }
        // Steps are a few bytes per sample; reading them all is cheap even for a long trajectory.
        _ => steps.read_raw::<i64>().map_err(read)?.iter().position(|s| *s == step),
    };
    found
        .filter(|index| *index < samples)
        .ok_or_else(|| format!("{at} has no sample at step {step} (the position frame's)"))
}

/// Row `index` of a [samples, atoms, 3] dataset.
fn vectors(value: &hdf5::Dataset, at: &str, index: usize) -> Found<Vec<[f64; 3]>> {
    let rows = value.read_slice_2d::<f64, _>((index, .., ..)).map_err(|e| format!("{at}: {e}"))?;
    Ok(rows.rows().into_iter().map(|row| [row[0], row[1], row[2]]).collect())
}

fn per_atom_vectors(velocity: Element, at: &str, step: i64, atoms: usize) -> Found<Vec<[f64; 3]>> {
    let Element::TimeDependent(velocity) = velocity else {
        return Err(format!("{at} is a dataset; H5MD stores it as a group with value, step and time"));
    };
    let value = dataset(&velocity, at, "value")?;
    match value.shape()[..] {
        [_, count, 3] if count == atoms => {}
        _ => return Err(format!("{at}/value has shape {:?}; it must be [samples, {atoms}, 3]", value.shape())),
    }
    vectors(&value, &format!("{at}/value"), sample_at(&velocity, at, step)?)
}

/// A per-atom scalar (`species`, `id`, `mass`): a dataset [atoms], or time-dependent [samples, atoms].
fn per_atom<T: hdf5::H5Type + Copy>(
    group: &hdf5::Group,
    parent: &str,
    name: &str,
    step: i64,
    atoms: usize,
) -> Found<Option<Vec<T>>> {
    let at = format!("{parent}/{name}");
    let values = match element(group, parent, name)? {
        None => return Ok(None),
        Some(Element::Fixed(value)) => match value.shape()[..] {
            [count] if count == atoms => value.read_raw::<T>(),
            _ => return Err(format!("{at} has shape {:?}; it must be [{atoms}]", value.shape())),
        },
        Some(Element::TimeDependent(element)) => {
            let value = dataset(&element, &at, "value")?;
            match value.shape()[..] {
                [_, count] if count == atoms => {}
                _ => return Err(format!("{at}/value has shape {:?}; it must be [samples, {atoms}]", value.shape())),
            }
            let index = sample_at(&element, &at, step)?;
            value.read_slice_1d::<T, _>((index, ..)).map(|row| row.to_vec())
        }
    };
    values.map(Some).map_err(|e| format!("{at}: {e}"))
}

/// The box at `step`: periodic, cuboid; `edges` fixed ([3]) or time-dependent (`edges/value`).
fn read_box(group: &hdf5::Group, at: &str, step: i64) -> Found<([f64; 3], [f64; 3])> {
    let at = format!("{at}/box");
    let simulation_box = group.group("box").map_err(|_| format!("{at} is missing"))?;
    check_periodic(&simulation_box, &at)?;
    let edges = match element(&simulation_box, &at, "edges")? {
        None => return Err(format!("{at}/edges is missing")),
        Some(Element::Fixed(edges)) => match edges.shape()[..] {
            [3] => edges.read_raw::<f64>().map_err(|e| format!("{at}/edges: {e}"))?,
            _ => return Err(format!("{at}/edges has shape {:?}; only a cuboid box, [3], is supported", edges.shape())),
        },
        Some(Element::TimeDependent(element)) => {
            let value = dataset(&element, &format!("{at}/edges"), "value")?;
            if !matches!(value.shape()[..], [_, 3]) {
                return Err(format!(
                    "{at}/edges/value has shape {:?}; only a cuboid box, [samples, 3], is supported",
                    value.shape()
                ));
            }
            let index = sample_at(&element, &format!("{at}/edges"), step)?;
            let row = value.read_slice_1d::<f64, _>((index, ..)).map_err(|e| format!("{at}/edges/value: {e}"))?;
            row.to_vec()
        }
    };
    // Our files say where the box starts; H5MD's box starts at the origin otherwise.
    let origin = match simulation_box.dataset("origin") {
        Ok(origin) if origin.shape() == [3] => origin.read_raw::<f64>().map_err(|e| format!("{at}/origin: {e}"))?,
        Ok(origin) => return Err(format!("{at}/origin has shape {:?}; it must be [3]", origin.shape())),
        Err(_) => vec![0.0; 3],
    };
    Ok(([origin[0], origin[1], origin[2]], [edges[0], edges[1], edges[2]]))
}

/// The kernels simulate a periodic box only; `boundary` must say so where it is readable.
fn check_periodic(simulation_box: &hdf5::Group, at: &str) -> Found<()> {
    let Ok(boundary) = simulation_box.attr("boundary") else {
        return Err(format!("{at} has no 'boundary' attribute; it must be periodic in x, y and z"));
    };
    let values: Vec<String> = match boundary.read_raw::<VarLenUnicode>() {
        Ok(values) => values.iter().map(|v| v.as_str().to_string()).collect(),
        Err(_) => match boundary.read_raw::<hdf5::types::VarLenAscii>() {
            Ok(values) => values.iter().map(|v| v.as_str().to_string()).collect(),
            Err(_) => match boundary.read_raw::<hdf5::types::FixedAscii<32>>() {
                Ok(values) => values.iter().map(|v| v.as_str().to_string()).collect(),
                Err(e) => return Err(format!("{at}: the 'boundary' attribute is unreadable ({e})")),
            },
        },
    };
    if values.len() != 3 || values.iter().any(|v| v.trim_end_matches('\0') != "periodic") {
        return Err(format!(
            "{at}: boundary is {values:?}; only [\"periodic\", \"periodic\", \"periodic\"] is supported"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(step: i64, positions: Vec<[f64; 3]>) -> Frame {
        let atoms = positions.len();
        Frame { step, time: step as f64 * 0.005, positions, velocities: vec![[0.1, 0.2, 0.3]; atoms] }
    }

    fn observable(step: i64) -> Observable {
        Observable {
            step,
            time: 0.0,
            temperature: 1.0,
            potential_energy: -5.0,
            kinetic_energy: 1.5,
            total_energy: -3.5,
            pressure: 0.2,
        }
    }

    /// Two atoms in a box of 10 from -5: atom 0 walks up across the upper face and on, atom 1 down.
    fn trajectory() -> Trajectory {
        let frames = vec![
            frame(0, vec![[4.0, 0.0, 0.0], [0.0, -4.0, 0.0]]),
            frame(100, vec![[-4.0, 0.0, 0.0], [0.0, 4.5, 0.0]]),
            frame(200, vec![[-1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]),
        ];
        let images = Some(track_images(&frames, [10.0; 3]));
        Trajectory {
            box_origin: [-5.0; 3],
            box_edges: [10.0; 3],
            species: vec![1, 2],
            ids: vec![7, 9],
            frames,
            images,
            observables: vec![observable(0), observable(50), observable(100)],
            software: "test".into(),
            author: "someone".into(),
            workflow_hash: "abc".into(),
            job: "w.melt".into(),
            initial_state_hash: "00ff".into(),
            chunks: vec![ChunkProvenance { index: 0, state_hash: "ff".into(), workers: vec!["a".into(), "b".into()] }],
        }
    }

    #[test]
    fn images_count_boundary_crossings_between_frames() {
        let images = track_images(&trajectory().frames, [10.0; 3]);
        assert_eq!(images, vec![vec![[0, 0, 0]; 2], vec![[1, 0, 0], [0, -1, 0]], vec![[1, 0, 0], [0, -1, 0]]]);
    }

    #[test]
    fn writes_a_readable_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.h5");
        write(&path, &trajectory()).unwrap();
        let file = hdf5::File::open(&path).unwrap();
        let value = file.dataset("particles/all/position/value").unwrap();
        assert_eq!(value.shape(), vec![3, 2, 3]);
        let positions: Vec<f64> = value.read_raw().unwrap();
        assert_eq!(positions[6..12], [6.0, 0.0, 0.0, 0.0, -5.5, 0.0], "frame 1 is unwrapped");
        let image: Vec<i32> = file.dataset("particles/all/box_crossings/value").unwrap().read_raw().unwrap();
        assert_eq!(image[6..12], [1, 0, 0, 0, -1, 0]);
        let edges = file.dataset("particles/all/box/edges/value").unwrap();
        assert_eq!(edges.shape(), vec![3, 3]);
        let edge_steps: Vec<i64> = file.dataset("particles/all/box/edges/step").unwrap().read_raw().unwrap();
        assert_eq!(edge_steps, vec![0, 100, 200]);
        let unit: VarLenUnicode = value.attr("unit").unwrap().read_scalar().unwrap();
        assert_eq!(unit.as_str(), "Angstrom");
        let temperature: Vec<f64> = file.dataset("observables/temperature/value").unwrap().read_raw().unwrap();
        assert_eq!(temperature, vec![1.0; 3]);
        let version: Vec<i32> = file.group("h5md").unwrap().attr("version").unwrap().read_raw().unwrap();
        assert_eq!(version, vec![1, 1]);
        let provenance = file.group("parameters/upglobe").unwrap();
        let initial: VarLenUnicode = provenance.attr("initial_state_hash").unwrap().read_scalar().unwrap();
        assert_eq!(initial.as_str(), "00ff");
    }

    #[test]
    fn a_frame_reads_back_as_written() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.h5");
        write(&path, &trajectory()).unwrap();
        let last = read_frame(&path, None).unwrap();
        assert_eq!(last.step, 200);
        assert_eq!(last.box_origin, [-5.0; 3]);
        assert_eq!(last.box_edges, [10.0; 3]);
        assert_eq!(last.positions, vec![[9.0, 0.0, 0.0], [0.0, -9.0, 0.0]], "unwrapped, as written");
        assert_eq!(last.velocities, Some(vec![[0.1, 0.2, 0.3]; 2]));
        assert_eq!(last.species, Some(vec![1, 2]));
        assert_eq!(last.ids, Some(vec![7, 9]));
        assert_eq!(last.masses, None);
        let first = read_frame(&path, Some(0)).unwrap();
        assert_eq!((first.step, first.positions[0]), (0, [4.0, 0.0, 0.0]));
    }

    /// Other tools write `box/edges` as one fixed dataset, and may leave velocities out.
    #[test]
    fn fixed_box_edges_are_read_too() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fixed.h5");
        let file = hdf5::File::create(&path).unwrap();
        let all = file.create_group("particles").unwrap().create_group("all").unwrap();
        let simulation_box = all.create_group("box").unwrap();
        let periodic = [text("periodic"), text("periodic"), text("periodic")];
        simulation_box.new_attr::<VarLenUnicode>().shape(3).create("boundary").unwrap().write_raw(&periodic).unwrap();
        simulation_box.new_dataset::<f32>().shape(3).create("edges").unwrap().write_raw(&[3.0f32, 4.0, 5.0]).unwrap();
        let position = all.create_group("position").unwrap();
        let values = [0.5f32, 1.0, 1.5, 2.0, 2.5, 3.0];
        position.new_dataset::<f32>().shape([1, 2, 3]).create("value").unwrap().write_raw(&values).unwrap();
        position.new_dataset::<i32>().create("step").unwrap().write_scalar(&10).unwrap();
        drop(file);
        let snapshot = read_frame(&path, None).unwrap();
        assert_eq!((snapshot.step, snapshot.box_edges, snapshot.box_origin), (0, [3.0, 4.0, 5.0], [0.0; 3]));
        assert_eq!(snapshot.positions, vec![[0.5, 1.0, 1.5], [2.0, 2.5, 3.0]]);
        assert_eq!(snapshot.velocities, None);
    }

    #[test]
    fn bad_files_name_the_file_and_the_hdf5_path() {
        let dir = tempfile::tempdir().unwrap();
        let error = read_frame(&dir.path().join("absent.h5"), None).unwrap_err().to_string();
        assert!(error.contains("absent.h5"), "{error}");

        let path = dir.path().join("t.h5");
        write(&path, &trajectory()).unwrap();
        let error = read_frame(&path, Some(3)).unwrap_err().to_string();
        assert!(error.contains("t.h5") && error.contains("/particles/all/position/value has 3 frames"), "{error}");

        let file = hdf5::File::open_rw(&path).unwrap();
        file.unlink("particles/all/box/edges").unwrap();
        file.group("particles/all").unwrap().new_dataset::<i32>().shape(3).create("mass").unwrap();
        drop(file);
        let error = read_frame(&path, None).unwrap_err().to_string();
        assert!(error.contains("/particles/all/box/edges is missing"), "{error}");

        let file = hdf5::File::open_rw(&path).unwrap();
        let simulation_box = file.group("particles/all/box").unwrap();
        simulation_box.new_dataset::<f64>().shape(3).create("edges").unwrap().write_raw(&[10.0; 3]).unwrap();
        drop(file);
        let error = read_frame(&path, None).unwrap_err().to_string();
        assert!(error.contains("/particles/all/mass has shape [3]; it must be [2]"), "{error}");

        let file = hdf5::File::open_rw(&path).unwrap();
        file.unlink("particles").unwrap();
        drop(file);
        let error = read_frame(&path, None).unwrap_err().to_string();
        assert!(error.ends_with("/particles is missing"), "{error}");
    }
}
