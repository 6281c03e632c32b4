//! MDAnalysis (and h5py) must open what the H5MD writer writes, with MDAnalysis's defaults, and the
//! unwrapped positions must give the mean squared displacement of the walk that made them.
//!
//! The interpreter is `UPGLOBE_PYTHON` (`.ci/run` points it at a venv with MDAnalysis), else
//! /usr/bin/python3. Without MDAnalysis the test fails under CI (`CI` set) and skips locally.

use std::path::Path;
use std::process::Command;

use upglobe_datasets::h5md::{Frame, Observable, Trajectory, track_images, write};

const ATOMS: usize = 64;
const FRAMES: usize = 150;
const BOX_ORIGIN: [f64; 3] = [-3.0, 0.0, 1.0];
const BOX_EDGES: [f64; 3] = [6.0, 7.0, 8.0];
/// Per frame and axis an atom moves at most this far: less than half the shortest edge (3), so
/// the minimum-image rule recovers every crossing; far enough that atoms cross many times.
const STEP_MAX: f64 = 1.4;
const STEPS_PER_FRAME: i64 = 1000;
const TIMESTEP: f64 = 0.005;

fn python() -> String {
    std::env::var("UPGLOBE_PYTHON").unwrap_or_else(|_| "/usr/bin/python3".into())
}

/// Whether `python` has MDAnalysis; under CI its absence is a failure, not a skip.
fn has_mdanalysis(python: &str) -> bool {
    let found = Command::new(python).args(["-c", "import MDAnalysis, h5py"]).output().is_ok_and(|o| o.status.success());
    if !found && std::env::var_os("CI").is_some() {
        panic!("CI is set but {python} cannot import MDAnalysis and h5py (set UPGLOBE_PYTHON; .ci/run installs them)");
    }
    if !found {
        eprintln!("skipping: {python} cannot import MDAnalysis and h5py (set UPGLOBE_PYTHON to one that can)");
    }
    found
}

/// A seeded random walk: the true (unwrapped) positions of every frame.
fn walk() -> Vec<Vec<[f64; 3]>> {
    let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut uniform = move || {
        seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        (seed >> 11) as f64 / (1u64 << 53) as f64
    };
    let mut positions: Vec<[f64; 3]> =
        (0..ATOMS).map(|_| std::array::from_fn(|d| BOX_ORIGIN[d] + uniform() * BOX_EDGES[d])).collect();
    let mut frames = vec![positions.clone()];
    for _ in 1..FRAMES {
        for position in &mut positions {
            for coordinate in position.iter_mut() {
                *coordinate += (2.0 * uniform() - 1.0) * STEP_MAX;
            }
        }
        frames.push(positions.clone());
    }
    frames
}

fn wrapped(position: [f64; 3]) -> [f64; 3] {
    std::array::from_fn(|d| BOX_ORIGIN[d] + (position[d] - BOX_ORIGIN[d]).rem_euclid(BOX_EDGES[d]))
}

fn mean_squared_displacement(from: &[[f64; 3]], to: &[[f64; 3]]) -> f64 {
    let sum: f64 = from.iter().zip(to).map(|(a, b)| (0..3).map(|d| (b[d] - a[d]).powi(2)).sum::<f64>()).sum();
    sum / from.len() as f64
}

fn trajectory(truth: &[Vec<[f64; 3]>]) -> Trajectory {
    let frames: Vec<Frame> = truth
        .iter()
        .enumerate()
        .map(|(k, positions)| Frame {
            step: k as i64 * STEPS_PER_FRAME,
            time: (k as i64 * STEPS_PER_FRAME) as f64 * TIMESTEP,
            positions: positions.iter().copied().map(wrapped).collect(),
            velocities: vec![[0.5, -0.5, 0.25]; ATOMS],
        })
        .collect();
    // As `upglobe results` writes it: thermo at the first step and at the end of every chunk.
    let observables = frames
        .iter()
        .map(|frame| Observable {
            step: frame.step,
            time: frame.time,
            temperature: 1.0,
            potential_energy: -5.0,
            kinetic_energy: 1.5,
            total_energy: -3.5,
            pressure: 0.2,
        })
        .collect();
    Trajectory {
        box_origin: BOX_ORIGIN,
        box_edges: BOX_EDGES,
        species: vec![1; ATOMS],
        ids: (1..=ATOMS as i64).collect(),
        images: Some(track_images(&frames, BOX_EDGES)),
        frames,
        observables,
        software: "test".into(),
        author: "test".into(),
        workflow_hash: "abc".into(),
        job: "w.walk".into(),
        initial_state_hash: "00".into(),
        chunks: Vec::new(),
    }
}

/// Prints n_atoms, n_frames, the box, the last frame's time and MSD as MDAnalysis reads them, and
/// the largest distance of `position - image * edges` outside the box and the largest |image| (h5py).
const SCRIPT: &str = r#"
import sys
import h5py
import numpy as np
import MDAnalysis as mda

path = sys.argv[1]
u = mda.Universe(path)
first = None
# The timestep object is reused (and rewound after the loop): copy what is kept.
for ts in u.trajectory:
    positions = ts.positions.astype(np.float64)
    time = float(ts.time)
    if first is None:
        first = positions
msd = float(np.mean(np.sum((positions - first) ** 2, axis=1)))
print(u.atoms.n_atoms, u.trajectory.n_frames, *[float(x) for x in u.dimensions], time, msd)

with h5py.File(path, "r") as f:
    particles = f["particles/all"]
    position = particles["position/value"][...]
    image = particles["box_crossings/value"][...]
    edges = particles["box/edges/value"][...]
    origin = particles["box/origin"][...]
    assert image.dtype.kind == "i", image.dtype
    assert list(particles["box_crossings/step"][...]) == list(particles["position/step"][...])
    assert list(particles["box/edges/step"][...]) == list(particles["position/step"][...])
    wrapped = position - image * edges[:, None, :]
    outside = np.maximum(origin - wrapped, wrapped - (origin + edges[:, None, :])).max()
    print(float(max(outside, 0.0)), int(np.abs(image).max()))
"#;

#[test]
fn mdanalysis_reads_unwrapped_positions_and_images() {
    let python = python();
    if !has_mdanalysis(&python) {
        return;
    }
    let truth = walk();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("walk.h5md");
    write(&path, &trajectory(&truth)).unwrap();

    let fields = run(&python, &path);
    assert_eq!(fields.len(), 12, "{fields:?}");
    assert_eq!((fields[0] as usize, fields[1] as usize), (ATOMS, FRAMES), "atoms and frames");
    assert_eq!(fields[2..8], [6.0, 7.0, 8.0, 90.0, 90.0, 90.0], "box dimensions (reduced units, unconverted)");
    let last_time = ((FRAMES - 1) as i64 * STEPS_PER_FRAME) as f64 * TIMESTEP;
    assert!((fields[8] - last_time).abs() < 1e-9, "time of the last frame: {}", fields[8]);
    let expected = mean_squared_displacement(&truth[0], &truth[FRAMES - 1]);
    // A wrapped trajectory's MSD cannot exceed the box's squared diagonal (149); the walk's is far above.
    assert!(expected > 200.0, "the walk should leave the box far behind: {expected}");
    assert!(
        (fields[9] - expected).abs() < 1e-4 * expected,
        "MSD {} from MDAnalysis, {expected} from the walk",
        fields[9]
    );
    assert!(fields[10] < 1e-9, "position - image * edges lies outside the box by {}", fields[10]);
    assert!(fields[11] >= 2.0, "atoms crossed the box more than once: largest |image| {}", fields[11]);
}

fn run(python: &str, path: &Path) -> Vec<f64> {
    let output = Command::new(python).args(["-c", SCRIPT]).arg(path).output().expect("run python");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "MDAnalysis/h5py failed: {}\n{stdout}", String::from_utf8_lossy(&output.stderr));
    stdout.split_whitespace().map(|field| field.parse().unwrap_or_else(|_| panic!("not a number: {field}"))).collect()
}
