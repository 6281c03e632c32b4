//! The shipped examples load, and hold what their comments say.

use std::path::{Path, PathBuf};

use upglobe_protocol::trust::{Compared, ToleranceRule, Verification};
use upglobe_workflows::{JobKind, Workflow, load};

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples")
}

fn load_example(name: &str) -> Workflow {
    load(&examples().join(name)).unwrap_or_else(|errors| panic!("{}", upglobe_workflows::render(&errors)))
}

#[test]
fn every_example_loads() {
    let mut loaded = 0;
    for entry in std::fs::read_dir(examples()).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|extension| extension == "toml") {
            load(&path).unwrap_or_else(|errors| panic!("{}", upglobe_workflows::render(&errors)));
            loaded += 1;
        }
    }
    assert_eq!(loaded, 6);
}

#[test]
fn lammps_lj_is_a_checkpointed_program_in_five_chunks() {
    let command = lammps_lj_melt("lammps-lj.toml");
    assert!(command.container.is_none());
    let contract = command.checkpoint.as_ref().unwrap();
    assert_eq!(command.argv[5..], ["-var", "chunks", "{chunks}", "-in", "in.lj"]);
    assert_eq!(contract.resume[contract.resume.len() - 2..], ["-in", "resume.lj"]);
    // The classic in.lj, with the two changes its comment explains.
    let script = std::fs::read_to_string(examples().join("in.lj")).unwrap();
    for line in [
        "lattice         fcc 0.8442",
        "region          box block 0 20 0 20 0 20",
        "velocity        all create 3.0 87287 loop geom",
        "pair_style      lj/cut 2.5",
        "neighbor        0.3 bin",
        "neigh_modify    delay 0 every 10 check no",
        "atom_modify     sort 0 0.0",
        "fix             1 all nve",
        "run             ${steps}",
        "write_restart   lj.restart",
    ] {
        assert!(script.lines().any(|l| l == line), "in.lj lacks {line:?}");
    }
}

/// The one job of a LAMMPS melt example, checked for what both variants share: 5 chunks through
/// lj.restart, the thermo and the restart as outputs, 2 replicas under quorum, the same scripts.
fn lammps_lj_melt(name: &str) -> upglobe_workflows::CommandJob {
    let workflow = load_example(name);
    let [job] = workflow.jobs.as_slice() else { panic!("{name}: one job expected") };
    let JobKind::Command(command) = &job.kind else { panic!("{name}: a command job expected") };
    let contract = command.checkpoint.as_ref().expect("a checkpoint contract");
    assert_eq!((contract.chunks, contract.files.as_slice()), (5, ["lj.restart".to_string()].as_slice()));
    // The checkpoint is collected beside the thermo, and nothing LAMMPS writes with timings is.
    assert_eq!(command.outputs, ["thermo.dat", "lj.restart"]);
    assert_eq!((job.replicas, &job.verification), (2, &Verification::Quorum));
    for argv in [&command.argv, &contract.resume] {
        assert_eq!(argv[..5], ["lmp", "-screen", "none", "-log", "log.lammps"]);
        assert!(argv.iter().any(|a| a == "{chunks}"), "{argv:?}");
    }
    assert!(contract.resume.iter().any(|a| a == "{chunk}"));
    for (input, name) in command.inputs.iter().zip(["in.lj", "resume.lj", "thermo.lj"]) {
        assert_eq!(input.source, upglobe_workflows::InputSource::Path(examples().join(name)));
    }
    command.clone()
}

#[test]
fn lammps_lj_container_runs_the_same_scripts_in_an_image_from_in() {
    let command = lammps_lj_melt("lammps-lj-container.toml");
    let image = command.container.as_ref().expect("a container job");
    assert_eq!((image.image.as_str(), image.network), ("lammps", false));
    let contract = command.checkpoint.as_ref().unwrap();
    // The inputs, the previous restart among them, are read from /in; LAMMPS writes in /out.
    assert_eq!(command.argv[5..], ["-var", "inputs", "/in", "-var", "chunks", "{chunks}", "-in", "/in/in.lj"]);
    assert_eq!(contract.resume[5..8], ["-var", "inputs", "/in"]);
    assert_eq!(contract.resume[contract.resume.len() - 2..], ["-in", "/in/resume.lj"]);
    let resume = std::fs::read_to_string(examples().join("resume.lj")).unwrap();
    assert!(resume.lines().any(|l| l == "read_restart    ${inputs}/lj.restart"), "{resume}");
    assert!(resume.lines().any(|l| l == "write_restart   lj.restart"), "{resume}");
}

#[test]
fn lj_melt_is_the_4000_atom_demo() {
    let workflow = load_example("lj-melt.toml");
    assert_eq!(workflow.name, "lj-melt");
    let [job] = workflow.jobs.as_slice() else { panic!("one job expected") };
    let JobKind::Md(md) = &job.kind else { panic!("an md job expected") };
    assert_eq!(job.replicas, 2);
    assert_eq!(md.system.ids.len(), 4000);
    assert_eq!((md.total_steps, md.chunk_steps, md.thermo_every), (3000, 500, 100));
    let mut lattice = upglobe_kernels::lattice::FccLattice::in_lj(10);
    lattice.seed = 87287;
    assert_eq!(md.system.velocities, lattice.build().velocities);
}

#[test]
fn lj_pipeline_runs_the_shipped_script_after_the_melt() {
    let workflow = load_example("lj-pipeline.toml");
    let JobKind::Command(command) = &workflow.jobs[1].kind else { panic!("a command job expected") };
    assert_eq!(workflow.jobs[1].after, ["melt"]);
    assert_eq!(command.tasks, [1, 2]);
    assert_eq!(command.inputs[0].source, upglobe_workflows::InputSource::Path(examples().join("summarise.sh")));
}

#[test]
fn lj_thermostat_has_a_langevin_thermostat() {
    let workflow = load_example("lj-thermostat.toml");
    let JobKind::Md(md) = &workflow.jobs[0].kind else { panic!("an md job expected") };
    let langevin = md.system.params.langevin.expect("a thermostat");
    assert_eq!((langevin.temperature, langevin.damping, langevin.seed), (1.0, 1.0, 7));
    assert_eq!(md.system.ids.len(), 864);
}

#[test]
fn tolerance_compares_two_workers_energies_within_a_tolerance() {
    let workflow = load_example("tolerance.toml");
    let [job] = workflow.jobs.as_slice() else { panic!("one job expected") };
    let JobKind::Command(command) = &job.kind else { panic!("a command job expected") };
    assert_eq!((job.replicas, command.outputs.as_slice()), (2, ["energies.txt".to_string()].as_slice()));
    let rule = ToleranceRule {
        file: "energies.txt".into(),
        values: Compared::Columns(vec![2, 3]),
        absolute: 1e-12,
        relative: 1e-9,
    };
    assert_eq!(job.verification, Verification::Tolerance(vec![rule]));
}

#[test]
fn the_diagnostic_shown_in_the_readme_is_what_a_user_gets() {
    let source = std::fs::read_to_string(examples().join("lj-melt.toml")).unwrap();
    let broken = source.replace("chunk_steps = 500", "chunk_steps = 700");
    let errors = upglobe_workflows::parse("lj-melt.toml", &examples(), &broken).unwrap_err();
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    assert!(readme.contains(&upglobe_workflows::render(&errors)), "{}", upglobe_workflows::render(&errors));
}
