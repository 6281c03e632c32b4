//! One test per kind of error: each asserts the exact `file:line:column: message` and hint.

mod common;

use common::{MELT, REPORT, error, errors, melt_with, parse_in};

#[test]
fn syntax_errors_point_where_the_parser_stopped() {
    assert_eq!(
        error(&melt_with("[jobs.melt.run]", "[jobs.melt.run")),
        "w.toml:16:15: syntax error: unclosed table, expected `]`"
    );
    assert_eq!(
        error(&melt_with("seed = 1", "seed = 1\nseed = 2")),
        "w.toml:12:1: syntax error: duplicate key\n  hint: each key and table may appear once; remove or rename the repeated one"
    );
}

#[test]
fn unknown_keys_at_every_level_suggest_the_closest() {
    let cases = [
        (melt_with("name = \"t\"", "nmae = \"t\""), "w.toml:1:1: unknown key 'nmae'\n  hint: did you mean 'name'?"),
        (
            melt_with("kind = \"md\"", "kind = \"md\"\nreplica = 3"),
            "w.toml:5:1: unknown key 'replica'\n  hint: did you mean 'replicas'?",
        ),
        (melt_with("seed = 1", "seed = 1\nmas = 2.0"), "w.toml:12:1: unknown key 'mas'\n  hint: did you mean 'mass'?"),
        (
            melt_with("cutoff = 2.5", "cutoff = 2.5\nepsilom = 1.0"),
            "w.toml:15:1: unknown key 'epsilom'\n  hint: did you mean 'epsilon'?",
        ),
        (
            melt_with("chunk_steps = 50", "chunk_steps = 50\nthermo_every = 10"),
            "w.toml:19:1: unknown key 'thermo_every'\n  hint: did you mean 'thermo'?",
        ),
        (
            format!("{MELT}[jobs.melt.resources]\ncpu = 2\n"),
            "w.toml:20:1: unknown key 'cpu'\n  hint: did you mean 'cpus'?",
        ),
    ];
    for (source, expected) in cases {
        assert_eq!(error(&source), expected);
    }
    // A misspelt required key is also missing: both are reported.
    assert_eq!(
        errors(&format!("{MELT}[jobs.melt.thermostat]\ntemperature = 1.0\ndamping = 1.0\nsed = 3\n")),
        [
            "w.toml:19:1: job 'melt' is missing 'thermostat.seed'\n  hint: add 'seed = 12345' to [jobs.melt.thermostat]",
            "w.toml:22:1: unknown key 'sed'\n  hint: did you mean 'seed'?",
        ]
    );
}

#[test]
fn unknown_keys_without_a_close_match_list_the_valid_ones() {
    assert_eq!(
        error(&melt_with("chunk_steps = 50", "chunk_steps = 50\ncolour = 1")),
        "w.toml:19:1: unknown key 'colour'\n  hint: valid keys in [jobs.melt.run]: timestep, steps, chunk_steps, thermo"
    );
    assert_eq!(
        error(&format!("{MELT}[report]\nkind = \"command\"\n")),
        "w.toml:19:2: unknown key 'report'\n  hint: jobs are tables named [jobs.NAME]: did you mean [jobs.report]?"
    );
}

#[test]
fn keys_of_the_other_kind_say_which_kind_they_belong_to() {
    assert_eq!(
        error(&format!("{MELT}{REPORT}system.lattice = \"fcc\"\n")),
        "w.toml:24:1: 'system' applies only to md jobs\n  hint: job 'report' has kind = \"command\"; remove 'system' or change the kind"
    );
    assert_eq!(
        error(&melt_with("kind = \"md\"", "kind = \"md\"\ntimeout = 10")),
        "w.toml:5:1: 'timeout' applies only to command jobs\n  hint: job 'melt' has kind = \"md\"; remove 'timeout' or change the kind"
    );
}

#[test]
fn wrong_types_name_the_key_and_both_types() {
    assert_eq!(
        error(&melt_with("steps = 100", "steps = \"100\"")),
        "w.toml:17:9: expected an integer for 'steps', found a string\n  hint: remove the quotes: 100"
    );
    assert_eq!(
        error(&melt_with("steps = 100", "steps = 100.0")),
        "w.toml:17:9: expected an integer for 'steps', found a float\n  hint: write a whole number without a decimal point: 100"
    );
    assert_eq!(
        error(&melt_with("density = 0.8442", "density = \"high\"")),
        "w.toml:9:11: expected a number for 'density', found a string"
    );
    assert_eq!(
        error(
            &melt_with("kind = \"md\"", "kind = \"md\"\nrun = 5")
                .replace("[jobs.melt.run]\nsteps = 100\nchunk_steps = 50\n", "")
        ),
        "w.toml:5:7: expected a table for 'run', found an integer"
    );
}

#[test]
fn missing_fields_are_reported_at_their_table() {
    assert_eq!(
        error(&melt_with("steps = 100\n", "")),
        "w.toml:16:1: job 'melt' is missing 'run.steps'\n  hint: add 'steps = 1000' to [jobs.melt.run]"
    );
    assert_eq!(
        error(&melt_with("kind = \"md\"\n", "")),
        "w.toml:3:1: job 'melt' is missing 'kind'\n  hint: add 'kind = \"md\"' to [jobs.melt]"
    );
    assert_eq!(
        error(&melt_with("[jobs.melt.potential]\ncutoff = 2.5\n", "")),
        "w.toml:3:1: job 'melt' is missing 'potential'\n  hint: add a [jobs.melt.potential] table with cutoff = 2.5"
    );
}

#[test]
fn unknown_kinds_and_lattices_are_rejected_at_the_value() {
    assert_eq!(
        error(&melt_with("kind = \"md\"", "kind = \"mdd\"")),
        "w.toml:4:8: unknown kind 'mdd'\n  hint: did you mean 'md'?"
    );
    assert_eq!(
        error(&melt_with("kind = \"md\"", "kind = \"shell\"")),
        "w.toml:4:8: unknown kind 'shell'\n  hint: kind is \"md\" (a molecular dynamics run) or \"command\" (a program)"
    );
    assert_eq!(
        error(&melt_with("lattice = \"fcc\"", "lattice = \"bcc\"")),
        "w.toml:7:11: unknown lattice 'bcc'\n  hint: only \"fcc\" is supported; other structures can be read with data = \"file.data\""
    );
}

#[test]
fn a_system_needs_exactly_one_of_lattice_and_data() {
    assert_eq!(
        error(&melt_with("lattice = \"fcc\"", "lattice = \"fcc\"\ndata = \"melt.data\"")),
        "w.toml:8:1: a system has either 'lattice' or 'data', not both\n  hint: 'lattice' generates atoms, 'data' reads them from a LAMMPS data file; remove one"
    );
    assert_eq!(
        error(&melt_with("lattice = \"fcc\"\n", "")),
        "w.toml:6:1: job 'melt' is missing 'system.lattice' or 'system.data'\n  hint: add 'lattice = \"fcc\"' to generate atoms, or 'data = \"file.data\"' to read a LAMMPS data file"
    );
}

#[test]
fn after_must_name_another_job_of_the_file() {
    let source = format!("{MELT}{REPORT}");
    assert_eq!(
        error(&source.replace("after = [\"melt\"]", "after = [\"mlet\"]")),
        "w.toml:21:10: 'after' names unknown job 'mlet'\n  hint: did you mean 'melt'?"
    );
    assert_eq!(
        error(&source.replace("after = [\"melt\"]", "after = [\"report\"]")),
        "w.toml:21:10: job 'report' cannot run after itself\n  hint: remove 'report' from its 'after' list"
    );
    assert_eq!(
        error(&source.replace("after = [\"melt\"]", "after = [\"melt\", \"melt\"]")),
        "w.toml:21:18: 'melt' appears twice in 'after'"
    );
}

#[test]
fn cycles_in_after_are_named() {
    let source = format!("{}{REPORT}", melt_with("kind = \"md\"", "kind = \"md\"\nafter = [\"report\"]"));
    assert_eq!(
        error(&source),
        "w.toml:22:10: cycle in 'after': melt -> report -> melt\n  hint: a job starts only when every job in its 'after' list has completed, so jobs in a cycle never start; remove one of these dependencies"
    );
    let three = "[jobs.a]\nkind = \"command\"\nargv = [\"true\"]\nafter = [\"c\"]\n\
                 [jobs.b]\nkind = \"command\"\nargv = [\"true\"]\nafter = [\"a\"]\n\
                 [jobs.c]\nkind = \"command\"\nargv = [\"true\"]\nafter = [\"b\"]\n\
                 [jobs.d]\nkind = \"command\"\nargv = [\"true\"]\nafter = [\"a\", \"c\"]\n";
    let three_errors = errors(three);
    assert_eq!(three_errors.len(), 1, "{three_errors:?}");
    assert!(three_errors[0].starts_with("w.toml:8:10: cycle in 'after': a -> c -> b -> a\n"), "{three_errors:?}");
}

#[test]
fn chunks_must_tile_the_run_and_thermo_the_chunk() {
    assert_eq!(
        error(&melt_with("chunk_steps = 50", "chunk_steps = 30")),
        "w.toml:18:15: chunk_steps 30 does not divide steps 100\n  hint: use chunk_steps = 25 or 50 (dividing 100), or steps = 90 or 120"
    );
    assert_eq!(
        error(&melt_with("chunk_steps = 50", "chunk_steps = 50\nthermo = 20")),
        "w.toml:19:10: thermo 20 does not divide chunk_steps 50\n  hint: use thermo = 10 or 25 (dividing chunk_steps 50)"
    );
}

#[test]
fn counts_and_sizes_must_be_positive() {
    assert_eq!(error(&melt_with("steps = 100", "steps = 0")), "w.toml:17:9: 'steps' must be positive, found 0");
    assert_eq!(
        error(&melt_with("density = 0.8442", "density = -1")),
        "w.toml:9:11: 'density' must be positive, found -1"
    );
    assert_eq!(error(&melt_with("cells = 4", "cells = [4, 0, 4]")), "w.toml:8:13: 'cells' must be positive, found 0");
    assert_eq!(error(&melt_with("seed = 1", "seed = -1")), "w.toml:11:8: 'seed' must not be negative, found -1");
}

#[test]
fn replicas_must_be_in_range() {
    assert_eq!(
        error(&melt_with("kind = \"md\"", "kind = \"md\"\nreplicas = 8")),
        "w.toml:5:12: replicas must be between 1 and 7, found 8\n  hint: each replica runs the job on another worker and their results must agree; md jobs default to 2"
    );
    assert!(
        error(&melt_with("kind = \"md\"", "kind = \"md\"\nreplicas = 0"))
            .starts_with("w.toml:5:12: replicas must be between 1 and 7, found 0\n")
    );
}

#[test]
fn memory_must_parse() {
    assert_eq!(
        error(&format!("{MELT}[jobs.melt.resources]\nmemory = \"lots\"\n")),
        "w.toml:20:10: cannot read memory 'lots'\n  hint: write an integer number of bytes, or a string with a unit: B, KiB, MiB, GiB, TiB, KB, MB, GB, TB (e.g. \"512MiB\")"
    );
}

#[test]
fn task_ranges_must_parse() {
    let source = format!("{MELT}{REPORT}");
    assert_eq!(
        error(&source.replace("tasks = [1, 2]", "tasks = \"1..10\"")),
        "w.toml:23:9: cannot read tasks range '1..10'\n  hint: write a range as \"first-last\" with whole numbers, e.g. \"1-10\" (both included), or list ids as [1, 2, 3]"
    );
    assert_eq!(
        error(&source.replace("tasks = [1, 2]", "tasks = \"10-1\"")),
        "w.toml:23:9: tasks range '10-1' is empty: 10 is more than 1\n  hint: write the smaller id first: \"1-10\""
    );
    assert_eq!(error(&source.replace("tasks = [1, 2]", "tasks = [1, 2, 1]")), "w.toml:23:16: task id 1 appears twice");
}

#[test]
fn input_files_must_exist() {
    let folder = tempfile::tempdir().unwrap();
    std::fs::create_dir(folder.path().join("scripts")).unwrap();
    let source = format!("{MELT}{REPORT}inputs = [\"report.sh\", \"scripts\", \"../up.sh\"]\n");
    let errors = parse_in(folder.path(), &source).unwrap_err();
    let looked = |name: &str| folder.path().join(name).display().to_string();
    assert_eq!(
        errors,
        [
            format!("w.toml:24:11: input file 'report.sh' does not exist\n  hint: looked for {}; inputs are files, named relative to the workflow file's folder", looked("report.sh")),
            format!("w.toml:24:24: input 'scripts' is not a regular file\n  hint: looked for {}; inputs are files, named relative to the workflow file's folder", looked("scripts")),
            "w.toml:24:35: '../up.sh' in 'inputs' goes up with '..'\n  hint: inputs are copied into the task's working directory under the name written; copy or link the file next to the workflow file and name it relative to there".to_string(),
        ]
    );
}

#[test]
fn argv_must_not_be_empty() {
    let source = format!("{MELT}{REPORT}").replace("argv = [\"sh\", \"report.sh\", \"{task}\"]", "argv = []");
    assert_eq!(
        error(&source),
        "w.toml:22:8: 'argv' is empty\n  hint: give the program and its arguments, e.g. argv = [\"sh\", \"run.sh\", \"{task}\"]"
    );
}

#[test]
fn a_workflow_needs_jobs() {
    assert_eq!(
        error("name = \"t\"\n"),
        "w.toml:1:1: the workflow has no jobs\n  hint: add a job: a [jobs.NAME] table with kind = \"md\" or kind = \"command\""
    );
    assert!(error("name = \"t\"\n[jobs]\n").starts_with("w.toml:2:1: the workflow has no jobs\n"));
}

#[test]
fn names_must_be_plain() {
    assert_eq!(
        error(&MELT.replace("[jobs.melt", "[jobs.\"melt.1\"")),
        "w.toml:3:7: job name 'melt.1' contains '.'; only letters, digits, '-' and '_' are allowed\n  hint: jobs are addressed as 'workflow.job', so names are plain, like 'melt' or 'report-1'"
    );
    assert_eq!(
        error(&melt_with("name = \"t\"", "name = \"my workflow\"")),
        "w.toml:1:8: workflow name 'my workflow' contains ' '; only letters, digits, '-' and '_' are allowed\n  hint: names look like 'lj-melt' or 'run_2'"
    );
}

#[test]
fn the_kernels_check_the_built_system() {
    let lattice_constant = upglobe_kernels::lattice::FccLattice::in_lj(2).lattice_constant();
    assert_eq!(
        error(&melt_with("cells = 4", "cells = 2")),
        format!(
            "w.toml:14:10: cutoff 2.5 is not smaller than half the shortest box edge ({lattice_constant})\n  hint: make the box larger (more cells) or the cutoff smaller, so each atom sees one image of every other"
        )
    );
    let too_hot = error(&melt_with("temperature = 1.44", "temperature = 1e8"));
    assert!(too_hot.starts_with("w.toml:6:1: job 'melt': invalid system: atom "), "{too_hot}");
    assert!(too_hot.ends_with("that moves it more than half the box in one step"), "{too_hot}");
}

#[test]
fn the_thermostat_damping_must_not_be_far_below_the_timestep() {
    let source = format!("{MELT}[jobs.melt.thermostat]\ntemperature = 1.0\ndamping = 0.0001\nseed = 3\n");
    assert_eq!(
        error(&source),
        "w.toml:21:11: damping 0.0001 is far shorter than the timestep 0.005\n  hint: damping is a time in the units of timestep; about 100 timesteps is typical: damping = 0.5"
    );
}

#[test]
fn every_error_is_reported_in_file_order() {
    let source = melt_with("kind = \"md\"", "kind = \"md\"\nreplicas = 9")
        .replace("density = 0.8442", "density = \"x\"")
        .replace("chunk_steps = 50", "chunk_steps = 30\nthermo = 7\nwhat = 1");
    let errors = errors(&source);
    let locations: Vec<&str> = errors.iter().map(|error| error.split(": ").next().unwrap()).collect();
    assert_eq!(
        locations,
        ["w.toml:5:12", "w.toml:10:11", "w.toml:19:15", "w.toml:20:10", "w.toml:21:1"],
        "{errors:#?}"
    );
}

#[test]
fn task_placeholder_without_tasks() {
    let source = "[jobs.report]\nkind = \"command\"\nargv = [\"echo\", \"{task}\"]\n";
    let diagnostics = upglobe_workflows::parse("w.toml", std::path::Path::new("."), source).unwrap_err();
    assert_eq!(diagnostics.len(), 1, "{diagnostics:?}");
    assert_eq!((diagnostics[0].line, diagnostics[0].column), (3, 8));
    assert_eq!(diagnostics[0].message, "'argv' uses {task}, but the job has no 'tasks'");
}

#[test]
fn a_lattice_outside_the_kernels_bounds_is_an_error_not_a_panic() {
    for density in ["1e-320", "1e300"] {
        let message = error(&melt_with("density = 0.8442", &format!("density = {density}")));
        assert!(message.starts_with("w.toml:6:1: invalid system: lattice density"), "{message}");
        assert!(message.contains("density"), "{message}");
    }
}
