//! Md jobs whose atoms come from a LAMMPS data file.

mod common;

use std::path::Path;

use common::parse_in;
use upglobe_kernels::lattice::seeded_velocities;
use upglobe_kernels::system::PairCoeff;
use upglobe_workflows::JobKind;

/// Four atoms as LAMMPS `write_data` writes them (the kernels' own test file).
const SMALL: &str = "LAMMPS data file via write_data, version 29 Sep 2021, timestep = 0

4 atoms
1 atom types

0 10 xlo xhi
0 10 ylo yhi
0 10 zlo zhi

Masses

1 1

Pair Coeffs # lj/cut/opt

1 1 1

Atoms # atomic

1 1 0 0 0 0 0 0
2 1 1.1 0 0 0 0 0
3 1 0 1.1 0 0 0 0
4 1 0 0 1.1 0 0 -1

Velocities

1 0.1 0 0
2 0 0.2 0
3 0 0 0.3
4 -0.1 -0.2 -0.3
";

/// Lines: 3 `[jobs.small.system]`, 4 `data`, 7 `[jobs.small.potential]`, 8 `cutoff`.
const WORKFLOW: &str = "[jobs.small]
kind = \"md\"
[jobs.small.system]
data = \"small.data\"
temperature = 1.0
seed = 5
[jobs.small.potential]
cutoff = 2.5
[jobs.small.run]
steps = 10
chunk_steps = 5
";

fn folder_with(data: &str) -> tempfile::TempDir {
    let folder = tempfile::tempdir().unwrap();
    std::fs::write(folder.path().join("small.data"), data).unwrap();
    folder
}

fn system_of(folder: &Path, source: &str) -> upglobe_kernels::system::PhysicalSystem {
    let workflow = parse_in(folder, source).unwrap();
    match &workflow.jobs[0].kind {
        JobKind::Md(md) => md.system.clone(),
        JobKind::Command(_) => panic!("not an md job"),
    }
}

#[test]
fn a_data_file_gives_the_atoms_and_seeded_velocities_replace_its_own() {
    let folder = folder_with(SMALL);
    let system = system_of(folder.path(), WORKFLOW);
    assert_eq!(system.ids, [1, 2, 3, 4]);
    assert_eq!(system.positions[1], [1.1, 0.0, 0.0]);
    assert_eq!(system.params.box_length, [10.0; 3]);
    assert_eq!(system.params.pair_coeffs, [PairCoeff { epsilon: 1.0, sigma: 1.0, cutoff: 2.5 }]);
    assert_eq!(system.velocities, seeded_velocities(4, 1.0, 1.0, 5));
}

#[test]
fn without_temperature_and_seed_the_file_velocities_stay() {
    let folder = folder_with(SMALL);
    let system = system_of(folder.path(), &WORKFLOW.replace("temperature = 1.0\nseed = 5\n", ""));
    assert_eq!(system.velocities[3], [-0.1, -0.2, -0.3]);
}

#[test]
fn a_missing_data_file_is_reported_at_its_name() {
    let folder = tempfile::tempdir().unwrap();
    let errors = parse_in(folder.path(), WORKFLOW).unwrap_err();
    let path = folder.path().join("small.data");
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(errors[0].starts_with(&format!("w.toml:4:8: cannot read {}: ", path.display())), "{}", errors[0]);
    assert!(
        errors[0].ends_with(&format!("relative to the workflow file's folder ({})", folder.path().display())),
        "{}",
        errors[0]
    );
}

#[test]
fn a_broken_data_file_is_reported_with_its_own_line() {
    let folder = folder_with(&SMALL.replace("2 1 1.1 0 0", "2 1 1.x 0 0"));
    let errors = parse_in(folder.path(), WORKFLOW).unwrap_err();
    let path = folder.path().join("small.data");
    assert_eq!(
        errors,
        [format!(
            "w.toml:4:8: {}:21: coordinate: '1.x' is not a finite number\n  hint: 'data' names a LAMMPS data file written by write_data (atom_style atomic, pair_style lj/cut); its path is relative to the workflow file's folder ({})",
            path.display(),
            folder.path().display()
        )]
    );
}

#[test]
fn lattice_settings_are_errors_for_data_systems() {
    let folder = folder_with(SMALL);
    let source =
        WORKFLOW.replace("seed = 5", "seed = 5\ncells = 4").replace("cutoff = 2.5", "cutoff = 2.5\nepsilon = 2.0");
    assert_eq!(
        parse_in(folder.path(), &source).unwrap_err(),
        [
            "w.toml:7:1: 'cells' applies only to lattice systems\n  hint: a data file gives the box, the atoms and their masses; remove 'cells'",
            "w.toml:10:1: 'epsilon' applies only to lattice systems\n  hint: data files take coefficients from their Pair Coeffs or PairIJ Coeffs section; remove 'epsilon'",
        ]
    );
}

#[test]
fn temperature_and_seed_go_together() {
    let folder = folder_with(SMALL);
    assert_eq!(
        parse_in(folder.path(), &WORKFLOW.replace("seed = 5\n", "")).unwrap_err(),
        [
            "w.toml:5:15: 'temperature' without 'seed' cannot create velocities\n  hint: add 'seed = 12345' to create velocities, or remove 'temperature' to keep the data file's"
        ]
    );
}

#[test]
fn a_cutoff_from_the_data_file_is_blamed_on_the_data_file() {
    let folder = folder_with(&SMALL.replace("\n1 1 1\n", "\n1 1 1 6.0\n"));
    let errors = parse_in(folder.path(), WORKFLOW).unwrap_err();
    assert_eq!(
        errors,
        [
            "w.toml:4:8: cutoff 6 is not smaller than half the shortest box edge (5)\n  hint: make the box larger (more cells) or the cutoff smaller, so each atom sees one image of every other"
        ]
    );
}
