//! Trajectories as H5MD 1.1 files (<https://www.nongnu.org/h5md/>), readable by h5py, h5dump, VMD's
//! H5MD plugin and MDAnalysis.
//!
//! Layout written:
//! ```text
//! /h5md                      version = [1, 1]; author/name, creator/{name, version}
//! /particles/all/box         dimension = 3, boundary = periodic; edges [3]
//! /particles/all/position    value [frames, atoms, 3], step [frames], time [frames]
//! /particles/all/velocity    value, step, time
//! /particles/all/species     [atoms] (LAMMPS atom types, 1-based)
//! /particles/all/id          [atoms] (LAMMPS atom ids)
//! /observables/{temperature, potential_energy, kinetic_energy, total_energy, pressure}
//!                            value [lines], step [lines], time [lines]   (energies per atom)
//! /parameters/upglobe        provenance: workflow hash, job, per chunk its state hash and the workers
//!                            that agreed on it
//! ```

use std::path::Path;
use std::str::FromStr;

use hdf5::types::VarLenUnicode;

use crate::{DatasetError, Result};

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
    pub observables: Vec<Observable>,
    pub software: String,
    pub author: String,
    pub workflow_hash: String,
    pub job: String,
    pub chunks: Vec<ChunkProvenance>,
}

fn h5(path: &Path) -> impl Fn(hdf5::Error) -> DatasetError + '_ {
    move |e| DatasetError::H5md { path: path.display().to_string(), message: e.to_string() }
}

fn text(value: &str) -> VarLenUnicode {
    VarLenUnicode::from_str(value).unwrap_or_else(|_| VarLenUnicode::from_str("?").expect("plain text"))
}

fn text_attr(location: &hdf5::Group, name: &str, value: &str) -> hdf5::Result<()> {
    location.new_attr::<VarLenUnicode>().create(name)?.write_scalar(&text(value))
}

fn time_series(
    group: &hdf5::Group,
    name: &str,
    steps: &[i64],
    times: &[f64],
    values: &[f64],
    inner: &[usize],
) -> hdf5::Result<()> {
    let element = group.create_group(name)?;
    let mut shape = vec![steps.len()];
    shape.extend_from_slice(inner);
    element.new_dataset::<f64>().shape(shape).create("value")?.write_raw(values)?;
    element.new_dataset::<i64>().shape(steps.len()).create("step")?.write_raw(steps)?;
    element.new_dataset::<f64>().shape(times.len()).create("time")?.write_raw(times)?;
    Ok(())
}

pub fn write(path: &Path, trajectory: &Trajectory) -> Result<()> {
    write_h5(path, trajectory).map_err(h5(path))
}

fn write_h5(path: &Path, t: &Trajectory) -> hdf5::Result<()> {
    let file = hdf5::File::create(path)?;
    let h5md = file.create_group("h5md")?;
    h5md.new_attr::<i32>().shape(2).create("version")?.write_raw(&[1, 1])?;
    text_attr(&h5md.create_group("author")?, "name", &t.author)?;
    let creator = h5md.create_group("creator")?;
    text_attr(&creator, "name", "upglobe")?;
    text_attr(&creator, "version", &t.software)?;

    let all = file.create_group("particles")?.create_group("all")?;
    let simulation_box = all.create_group("box")?;
    simulation_box.new_attr::<i32>().create("dimension")?.write_scalar(&3)?;
    let periodic = [text("periodic"), text("periodic"), text("periodic")];
    simulation_box.new_attr::<VarLenUnicode>().shape(3).create("boundary")?.write_raw(&periodic)?;
    simulation_box.new_dataset::<f64>().shape(3).create("edges")?.write_raw(&t.box_edges)?;
    simulation_box.new_dataset::<f64>().shape(3).create("origin")?.write_raw(&t.box_origin)?;

    let atoms = t.species.len();
    let steps: Vec<i64> = t.frames.iter().map(|f| f.step).collect();
    let times: Vec<f64> = t.frames.iter().map(|f| f.time).collect();
    let positions: Vec<f64> = t.frames.iter().flat_map(|f| f.positions.iter().flatten().copied()).collect();
    let velocities: Vec<f64> = t.frames.iter().flat_map(|f| f.velocities.iter().flatten().copied()).collect();
    time_series(&all, "position", &steps, &times, &positions, &[atoms, 3])?;
    time_series(&all, "velocity", &steps, &times, &velocities, &[atoms, 3])?;
    all.new_dataset::<i32>().shape(atoms).create("species")?.write_raw(&t.species)?;
    all.new_dataset::<i64>().shape(atoms).create("id")?.write_raw(&t.ids)?;

    let observables = file.create_group("observables")?;
    let steps: Vec<i64> = t.observables.iter().map(|o| o.step).collect();
    let times: Vec<f64> = t.observables.iter().map(|o| o.time).collect();
    type Series = (&'static str, fn(&Observable) -> f64);
    let series: [Series; 5] = [
        ("temperature", |o| o.temperature),
        ("potential_energy", |o| o.potential_energy),
        ("kinetic_energy", |o| o.kinetic_energy),
        ("total_energy", |o| o.total_energy),
        ("pressure", |o| o.pressure),
    ];
    for (name, get) in series {
        let values: Vec<f64> = t.observables.iter().map(get).collect();
        time_series(&observables, name, &steps, &times, &values, &[])?;
    }

    let provenance = file.create_group("parameters")?.create_group("upglobe")?;
    text_attr(&provenance, "workflow_hash", &t.workflow_hash)?;
    text_attr(&provenance, "job", &t.job)?;
    text_attr(&provenance, "software", &t.software)?;
    let chunks = t.chunks.len();
    let indexes: Vec<i64> = t.chunks.iter().map(|c| c.index as i64).collect();
    let hashes: Vec<VarLenUnicode> = t.chunks.iter().map(|c| text(&c.state_hash)).collect();
    let workers: Vec<VarLenUnicode> = t.chunks.iter().map(|c| text(&c.workers.join(","))).collect();
    provenance.new_dataset::<i64>().shape(chunks).create("chunk")?.write_raw(&indexes)?;
    provenance.new_dataset::<VarLenUnicode>().shape(chunks).create("state_hash")?.write_raw(&hashes)?;
    provenance.new_dataset::<VarLenUnicode>().shape(chunks).create("agreeing_workers")?.write_raw(&workers)?;
    file.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_a_readable_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.h5");
        let frame = |step| Frame {
            step,
            time: step as f64 * 0.005,
            positions: vec![[1.0, 2.0, 3.0]; 2],
            velocities: vec![[0.1; 3]; 2],
        };
        let observable = |step| Observable {
            step,
            time: 0.0,
            temperature: 1.0,
            potential_energy: -5.0,
            kinetic_energy: 1.5,
            total_energy: -3.5,
            pressure: 0.2,
        };
        let trajectory = Trajectory {
            box_origin: [0.0; 3],
            box_edges: [10.0; 3],
            species: vec![1, 1],
            ids: vec![1, 2],
            frames: vec![frame(0), frame(100)],
            observables: vec![observable(0), observable(50), observable(100)],
            software: "test".into(),
            author: "someone".into(),
            workflow_hash: "abc".into(),
            job: "w.melt".into(),
            chunks: vec![ChunkProvenance { index: 0, state_hash: "ff".into(), workers: vec!["a".into(), "b".into()] }],
        };
        write(&path, &trajectory).unwrap();
        let file = hdf5::File::open(&path).unwrap();
        let value = file.dataset("particles/all/position/value").unwrap();
        assert_eq!(value.shape(), vec![2, 2, 3]);
        let temperature: Vec<f64> = file.dataset("observables/temperature/value").unwrap().read_raw().unwrap();
        assert_eq!(temperature, vec![1.0; 3]);
        let version: Vec<i32> = file.group("h5md").unwrap().attr("version").unwrap().read_raw().unwrap();
        assert_eq!(version, vec![1, 1]);
    }
}
