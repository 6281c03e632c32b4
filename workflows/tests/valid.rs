//! Valid workflows parse into the values written, with the documented defaults.

mod common;

use std::path::Path;

use common::{MELT, REPORT, SUMMARY, parse_in};
use upglobe_kernels::lattice::FccLattice;
use upglobe_kernels::system::{Langevin, PairCoeff};
use upglobe_protocol::messages::Resources;
use upglobe_protocol::trust::{Compared, ToleranceRule, Verification};
use upglobe_workflows::{CommandJob, InputFile, InputSource, JobKind, Location, MdJob, load};

fn md(kind: &JobKind) -> &MdJob {
    match kind {
        JobKind::Md(md) => md,
        JobKind::Command(_) => panic!("not an md job"),
    }
}

fn command(kind: &JobKind) -> &CommandJob {
    match kind {
        JobKind::Command(command) => command,
        JobKind::Md(_) => panic!("not a command job"),
    }
}

#[test]
fn md_and_command_jobs_parse_into_their_values() {
    let folder = tempfile::tempdir().unwrap();
    std::fs::write(folder.path().join("report.sh"), "echo $1\n").unwrap();
    let source = format!(
        "{MELT}{REPORT}inputs = [\"report.sh\"]\noutputs = [\"*.csv\"]\ntimeout = 600\nreplicas = 3\n\
         resources = {{ cpus = 4, gpus = 1, memory = \"1.5GiB\" }}\n"
    );
    let workflow = parse_in(folder.path(), &source).unwrap();
    assert_eq!(workflow.name, "t");
    assert_eq!(workflow.source, source);
    let names: Vec<&str> = workflow.jobs.iter().map(|job| job.name.as_str()).collect();
    assert_eq!(names, ["melt", "report"]);

    let melt = &workflow.jobs[0];
    assert_eq!((melt.replicas, melt.after.len()), (2, 0), "md jobs default to two replicas");
    assert_eq!(melt.resources, Resources { cpus: 1, memory_bytes: 0, gpus: 0 });
    assert_eq!(melt.location, Location { line: 3, column: 1 });
    let run = md(&melt.kind);
    assert_eq!((run.total_steps, run.chunk_steps, run.thermo_every), (100, 50, 50), "thermo defaults to a chunk");
    let expected = FccLattice {
        cells: [4; 3],
        density: 0.8442,
        temperature: 1.44,
        seed: 1,
        mass: 1.0,
        pair: PairCoeff { epsilon: 1.0, sigma: 1.0, cutoff: 2.5 },
        shift: false,
        timestep: 0.005,
        langevin: None,
    }
    .build();
    assert_eq!(run.system.params, expected.params);
    assert_eq!(run.system.positions, expected.positions);
    assert_eq!(run.system.velocities, expected.velocities);
    assert_eq!(run.system.ids.len(), 256);

    let report = &workflow.jobs[1];
    assert_eq!((report.replicas, report.after.clone()), (3, vec!["melt".to_string()]));
    assert_eq!(report.resources, Resources { cpus: 4, memory_bytes: 3 << 29, gpus: 1 });
    assert_eq!(report.location, Location { line: 19, column: 1 });
    assert_eq!(
        *command(&report.kind),
        CommandJob {
            argv: vec!["sh".into(), "report.sh".into(), "{task}".into()],
            tasks: vec![1, 2],
            inputs: vec![InputFile {
                name: "report.sh".into(),
                source: InputSource::Path(folder.path().join("report.sh"))
            }],
            outputs: vec!["*.csv".into()],
            timeout_s: 600,
            container: None,
            checkpoint: None,
        }
    );
}

#[test]
fn optional_md_settings_reach_the_system() {
    let source = MELT
        .replace("seed = 1", "seed = 1\nmass = 2.0\ncells = [4, 5, 6]")
        .replace("cells = 4\n", "")
        .replace("cutoff = 2.5", "cutoff = 2.0\nepsilon = 0.5\nsigma = 0.9\nshift = true")
        .replace("steps = 100", "steps = 100\ntimestep = 0.002\nthermo = 10")
        + "[jobs.melt.thermostat]\ntemperature = 1.0\ndamping = 0.5\nseed = 9\n";
    let workflow = parse_in(Path::new("."), &source).unwrap();
    let run = md(&workflow.jobs[0].kind);
    let params = &run.system.params;
    assert_eq!(run.system.ids.len(), 4 * 4 * 5 * 6);
    assert_eq!(params.masses, [2.0]);
    assert_eq!(params.pair_coeffs, [PairCoeff { epsilon: 0.5, sigma: 0.9, cutoff: 2.0 }]);
    assert!(params.shift);
    assert_eq!(params.timestep, 0.002);
    assert_eq!(params.langevin, Some(Langevin { temperature: 1.0, damping: 0.5, seed: 9 }));
    assert_eq!(run.thermo_every, 10);
}

#[test]
fn command_jobs_have_their_defaults_and_ranges() {
    let source = "name = \"c\"\n[jobs.sweep]\nkind = \"command\"\nargv = [\"echo\", \"{task}\"]\ntasks = \"3-7\"\n\
                  [jobs.once]\nkind = \"command\"\nargv = [\"true\"]\nafter = [\"sweep\"]\n";
    let workflow = parse_in(Path::new("."), source).unwrap();
    let sweep = &workflow.jobs[0];
    assert_eq!(sweep.replicas, 1);
    assert_eq!(command(&sweep.kind).tasks, [3, 4, 5, 6, 7]);
    let once = command(&workflow.jobs[1].kind);
    assert_eq!((once.tasks.len(), once.timeout_s, once.inputs.len()), (0, 3600, 0));
}

#[test]
fn the_name_defaults_to_the_file_stem() {
    let folder = tempfile::tempdir().unwrap();
    let path = folder.path().join("my-melt.toml");
    std::fs::write(&path, MELT.replace("name = \"t\"\n", "")).unwrap();
    let workflow = load(&path).unwrap();
    assert_eq!(workflow.name, "my-melt");
    assert_eq!(workflow.path, path);

    let dotted = folder.path().join("my.melt.toml");
    std::fs::write(&dotted, MELT.replace("name = \"t\"\n", "")).unwrap();
    let errors = load(&dotted).unwrap_err();
    assert_eq!(
        errors[0].to_string(),
        format!(
            "{}:1:1: workflow name 'my.melt' (from the file name) contains '.'; only letters, digits, '-' and '_' are allowed\n  hint: set one at the top of the file, e.g. name = \"lj-melt\"",
            dotted.display()
        )
    );
}

#[test]
fn an_unreadable_file_is_one_diagnostic_at_the_start() {
    let folder = tempfile::tempdir().unwrap();
    let path = folder.path().join("missing.toml");
    let errors = load(&path).unwrap_err();
    assert_eq!(errors.len(), 1);
    assert_eq!((errors[0].path.as_str(), errors[0].line, errors[0].column), (path.to_str().unwrap(), 1, 1));
    assert!(errors[0].message.starts_with("cannot read the workflow file: "), "{}", errors[0]);
}

#[test]
fn load_resolves_inputs_next_to_the_workflow_file() {
    let folder = tempfile::tempdir().unwrap();
    std::fs::write(folder.path().join("report.sh"), "echo $1\n").unwrap();
    let path = folder.path().join("w.toml");
    std::fs::write(&path, format!("{MELT}{REPORT}inputs = [\"report.sh\"]\n")).unwrap();
    let workflow = load(&path).unwrap();
    assert_eq!(command(&workflow.jobs[1].kind).inputs[0].source, InputSource::Path(folder.path().join("report.sh")));
}

#[test]
fn a_tolerance_job_keeps_its_rules() {
    let source = format!(
        "{SUMMARY}absolute = 1e-9\n\n[[jobs.summary.verify.compare]]\nfile = \"traj.h5\"\n\
         datasets = [\"/particles/all/position/value\"]\nabsolute = 1e-5\n\n\
         [[jobs.summary.verify.compare]]\nfile = \"summary-3.txt\"\n"
    );
    let workflow = parse_in(Path::new("."), &source).unwrap();
    let expected = vec![
        ToleranceRule {
            file: "energies.txt".into(),
            values: Compared::Columns(vec![2, 3]),
            absolute: 1e-9,
            relative: 1e-6,
        },
        ToleranceRule {
            file: "traj.h5".into(),
            values: Compared::Datasets(vec!["/particles/all/position/value".into()]),
            absolute: 1e-5,
            relative: 0.0,
        },
        ToleranceRule {
            file: "summary-3.txt".into(),
            values: Compared::Columns(Vec::new()),
            absolute: 0.0,
            relative: 0.0,
        },
    ];
    assert_eq!(workflow.jobs[0].verification, Verification::Tolerance(expected));
}

#[test]
fn compare_rules_may_be_inline_tables() {
    let rules = SUMMARY.find("\n[[").unwrap();
    let source = format!("{}compare = [{{ file = \"energies.txt\", columns = [1] }}]\n", &SUMMARY[..rules]);
    let workflow = parse_in(Path::new("."), &source).unwrap();
    let Verification::Tolerance(rules) = &workflow.jobs[0].verification else { panic!("a tolerance policy") };
    assert_eq!(rules[0].values, Compared::Columns(vec![1]));
}

#[test]
fn verification_defaults_by_kind_and_is_chosen_per_job() {
    let workflow = parse_in(Path::new("."), &format!("{MELT}{REPORT}")).unwrap();
    assert_eq!(workflow.jobs[0].verification, Verification::Adaptive, "md jobs default to adaptive");
    assert_eq!(workflow.jobs[1].verification, Verification::Quorum, "command jobs default to quorum");

    let source =
        format!("{MELT}[jobs.melt.verify]\npolicy = \"quorum\"\n{REPORT}[jobs.report.verify]\npolicy = \"metered\"\n");
    let workflow = parse_in(Path::new("."), &source).unwrap();
    assert_eq!(workflow.jobs[0].verification, Verification::Quorum);
    assert_eq!((workflow.jobs[1].verification.clone(), workflow.jobs[1].replicas), (Verification::Metered, 1));
    let quorum = source.replace("\"metered\"", "\"quorum\"").replace("tasks = [1, 2]", "tasks = [1, 2]\nreplicas = 3");
    let workflow = parse_in(Path::new("."), &quorum).unwrap();
    assert_eq!((workflow.jobs[1].verification.clone(), workflow.jobs[1].replicas), (Verification::Quorum, 3));
}

#[test]
fn inputs_may_name_datasets_by_hash() {
    let folder = tempfile::tempdir().unwrap();
    std::fs::write(folder.path().join("report.sh"), "echo\n").unwrap();
    let hash = "cd".repeat(32);
    let source =
        format!("{MELT}{REPORT}inputs = [\"report.sh\", {{ name = \"data/traj.h5md\", dataset = \"{hash}\" }}]\n");
    let workflow = common::parse_in(folder.path(), &source).unwrap();
    let JobKind::Command(command) = &workflow.jobs[1].kind else { panic!("a command job") };
    assert_eq!(command.inputs[1].name, "data/traj.h5md");
    assert_eq!(command.inputs[1].source, InputSource::Dataset(upglobe_protocol::BlobHash([0xcd; 32])));
}

#[test]
fn gpu_requests_are_read() {
    let source = format!("{}[jobs.melt.resources]\ngpus = 2\nvram = \"16GiB\"\nbackend = \"vulkan\"\n", common::MELT);
    let workflow = upglobe_workflows::parse("w.toml", std::path::Path::new("."), &source).unwrap();
    let job = &workflow.jobs[0];
    assert_eq!(job.resources.gpus, 2);
    assert_eq!(job.gpu.vram_bytes, 16 << 30);
    assert_eq!(job.gpu.backend.as_deref(), Some("vulkan"));
}

#[test]
fn container_jobs_reserve_two_gib_unless_they_say_otherwise() {
    let job = |resources: &str| {
        let source =
            format!("[jobs.c]\nkind = \"container\"\nimage = \"busybox:1.36\"\nargv = [\"true\"]\n{resources}");
        let workflow = upglobe_workflows::parse("w.toml", std::path::Path::new("."), &source).unwrap();
        workflow.jobs[0].resources.memory_bytes
    };
    assert_eq!(job(""), upglobe_workflows::CONTAINER_MEMORY_DEFAULT);
    assert_eq!(job("[jobs.c.resources]\nmemory = \"64MiB\"\n"), 64 << 20);
}
