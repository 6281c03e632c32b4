//! Md jobs whose atoms come from a frame of an H5MD file: the same atoms as a LAMMPS data file give
//! the same states, hash for hash, and a bad file is an error that names the file and the HDF5 path.

mod common;

use std::ops::ControlFlow;
use std::path::Path;

use common::parse_in;
use upglobe_datasets::h5md::{Frame, Trajectory, write};
use upglobe_kernels::{Checkpoint, Device, RunOptions, State, engine};
use upglobe_workflows::JobKind;

const CHUNK_STEPS: u64 = 20;
const CHUNKS: u64 = 3;

/// Lines: 3 `[jobs.melt.system]`, 4 the source.
fn workflow(source: &str) -> String {
    format!(
        "[jobs.melt]\nkind = \"md\"\n[jobs.melt.system]\n{source}\n[jobs.melt.potential]\ncutoff = 2.5\n\
         [jobs.melt.run]\nsteps = {}\nchunk_steps = {CHUNK_STEPS}\n",
        CHUNK_STEPS * CHUNKS
    )
}

fn lattice() -> State {
    let source = workflow("lattice = \"fcc\"\ncells = 4\ndensity = 0.8442\ntemperature = 1.44\nseed = 7");
    State::from_physical(system(Path::new("."), &source).unwrap()).unwrap()
}

fn system(folder: &Path, source: &str) -> Result<upglobe_kernels::system::PhysicalSystem, Vec<String>> {
    let workflow = parse_in(folder, source)?;
    match &workflow.jobs[0].kind {
        JobKind::Md(md) => Ok(md.system.clone()),
        JobKind::Command(_) => panic!("not an md job"),
    }
}

fn frame(state: &State) -> Frame {
    Frame {
        step: state.step as i64,
        time: state.time(),
        positions: (0..state.atoms()).map(|i| state.position(i)).collect(),
        velocities: (0..state.atoms()).map(|i| state.velocity(i)).collect(),
    }
}

/// An H5MD file of `states`, as `upglobe md run --h5md` writes it.
fn write_h5md(path: &Path, states: &[&State]) {
    let first = states[0];
    let trajectory = Trajectory {
        box_origin: first.params.box_origin,
        box_edges: first.params.box_length,
        species: first.types.iter().map(|t| *t as i32 + 1).collect(),
        ids: first.ids.iter().map(|id| *id as i64).collect(),
        frames: states.iter().map(|state| frame(state)).collect(),
        images: None,
        observables: Vec::new(),
        software: "test".into(),
        author: "test".into(),
        workflow_hash: String::new(),
        job: "test".into(),
        initial_state_hash: String::new(),
        chunks: Vec::new(),
    };
    write(path, &trajectory).unwrap();
}

fn run(state: &State, steps: u64) -> State {
    let mut engine = engine(&Device::Cpu { threads: 1 }).unwrap();
    engine.run(state, &RunOptions::new(steps), &mut |_| ControlFlow::Continue(())).unwrap().state
}

/// Each chunk's state hash, as workers compute them.
fn chunk_hashes(state: State) -> Vec<String> {
    let mut state = state;
    (0..CHUNKS)
        .map(|_| {
            state = run(&state, CHUNK_STEPS);
            hex::encode(Checkpoint::hash(&state).0)
        })
        .collect()
}

#[test]
fn an_h5md_frame_runs_hash_for_hash_like_the_same_data_file() {
    let folder = tempfile::tempdir().unwrap();
    let start = lattice();
    // A later frame than the first, so `frame` and the default (the last) are both exercised.
    let later = run(&start, 50);
    upglobe_kernels::lammps::write(&folder.path().join("melt.data"), &later).unwrap();
    write_h5md(&folder.path().join("melt.h5md"), &[&start, &later]);

    let from_data = State::from_physical(system(folder.path(), &workflow("data = \"melt.data\"")).unwrap()).unwrap();
    let from_h5md = State::from_physical(system(folder.path(), &workflow("h5md = \"melt.h5md\"")).unwrap()).unwrap();
    assert_eq!(from_h5md.step, 50);
    assert!(from_h5md == from_data, "the same atoms, box, masses, coefficients and step");
    let hashes = chunk_hashes(from_data);
    assert_eq!(chunk_hashes(from_h5md), hashes);

    // The states as f64, as both files hold them (fixed point to f64 and back need not round-trip).
    let first = system(folder.path(), &workflow("h5md = \"melt.h5md\"\nframe = 0")).unwrap();
    assert_eq!(first.step, 0);
    assert!(first.positions == frame(&start).positions, "frame 0 is the first state");
}

#[test]
fn without_velocities_temperature_and_seed_create_them() {
    let folder = tempfile::tempdir().unwrap();
    let path = folder.path().join("melt.h5md");
    write_h5md(&path, &[&lattice()]);
    let file = hdf5::File::open_rw(&path).unwrap();
    file.unlink("particles/all/velocity").unwrap();
    drop(file);
    assert_eq!(
        system(folder.path(), &workflow("h5md = \"melt.h5md\"")).unwrap_err(),
        [format!(
            "w.toml:4:8: h5md {}: /particles/all/velocity is missing\n  hint: add 'temperature' and 'seed' to the system to create velocities",
            path.display()
        )]
    );
    let seeded = system(folder.path(), &workflow("h5md = \"melt.h5md\"\ntemperature = 1.0\nseed = 3")).unwrap();
    assert!(seeded.velocities.iter().any(|v| v[0] != 0.0));
}

/// The first line of the single error a system gives.
fn first_error(folder: &Path, source: &str) -> String {
    let errors = system(folder, &workflow(source)).unwrap_err();
    assert_eq!(errors.len(), 1, "{errors:?}");
    errors[0].lines().next().unwrap().to_string()
}

#[test]
fn bad_h5md_files_name_the_file_and_the_hdf5_path() {
    let folder = tempfile::tempdir().unwrap();
    let path = folder.path().join("melt.h5md");
    let name = path.display();
    let missing = first_error(folder.path(), "h5md = \"absent.h5md\"");
    assert!(missing.starts_with("w.toml:4:8: cannot read ") && missing.contains("absent.h5md"), "{missing}");

    write_h5md(&path, &[&lattice()]);
    assert_eq!(
        first_error(folder.path(), "h5md = \"melt.h5md\"\nframe = 1"),
        format!("w.toml:4:8: h5md {name}: /particles/all/position/value has 1 frames (0 to 0); there is no frame 1")
    );
    let file = hdf5::File::open_rw(&path).unwrap();
    file.unlink("particles/all/box").unwrap();
    drop(file);
    assert_eq!(
        first_error(folder.path(), "h5md = \"melt.h5md\""),
        format!("w.toml:4:8: h5md {name}: /particles/all/box is missing")
    );

    write_h5md(&path, &[&lattice()]);
    let file = hdf5::File::open_rw(&path).unwrap();
    file.unlink("particles/all/species").unwrap();
    file.group("particles/all").unwrap().new_dataset::<i32>().shape(5).create("species").unwrap();
    drop(file);
    assert_eq!(
        first_error(folder.path(), "h5md = \"melt.h5md\""),
        format!("w.toml:4:8: h5md {name}: /particles/all/species has shape [5]; it must be [256]")
    );

    std::fs::write(&path, "not hdf5").unwrap();
    let garbage = first_error(folder.path(), "h5md = \"melt.h5md\"");
    assert!(garbage.starts_with(&format!("w.toml:4:8: h5md {name}: not an HDF5 file")), "{garbage}");
}

#[test]
fn h5md_keys_are_checked_against_the_source() {
    let folder = tempfile::tempdir().unwrap();
    assert_eq!(
        first_error(folder.path(), "lattice = \"fcc\"\nh5md = \"melt.h5md\""),
        "w.toml:5:1: a system has either 'lattice' or 'h5md', not both"
    );
    let errors = system(
        folder.path(),
        &workflow("lattice = \"fcc\"\ncells = 4\ndensity = 0.8442\ntemperature = 1.44\nseed = 7\nframe = 2"),
    )
    .unwrap_err();
    assert_eq!(
        errors,
        [
            "w.toml:9:1: 'frame' applies only to h5md systems\n  hint: 'frame' picks which frame of an h5md file to start from; remove it"
        ]
    );
}
