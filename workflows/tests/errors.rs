//! One test per kind of error: each asserts the exact `file:line:column: message` and hint.

mod common;

use common::{MELT, REPORT, SUMMARY, error, errors, melt_with, parse_in, summary_with};

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
        "w.toml:5:1: 'timeout' applies only to command and container jobs\n  hint: job 'melt' has kind = \"md\"; remove 'timeout' or change the kind"
    );
    assert_eq!(
        error(&format!("{MELT}{REPORT}image = \"busybox\"\n")),
        "w.toml:24:1: 'image' applies only to container jobs\n  hint: job 'report' has kind = \"command\"; remove 'image' or change the kind"
    );
}

#[test]
fn container_jobs_need_an_image_and_checkpoints_need_their_keys() {
    let container = "[jobs.c]\nkind = \"container\"\nargv = [\"true\"]\n";
    assert_eq!(
        error(container),
        "w.toml:1:1: job 'c' is missing 'image'\n  hint: add 'image = \"busybox:1.36\"' to [jobs.c]"
    );
    assert_eq!(
        error(&format!("{container}image = \"a b\"\n")),
        "w.toml:4:9: 'image' must be an image name of at most 256 bytes without spaces\n  hint: name an image as docker does, e.g. image = \"busybox:1.36\"; send it with `upglobe image push NAME`"
    );
    let checkpointed = format!("{container}image = \"lmp\"\n[jobs.c.checkpoint]\nchunks = 5\nfiles = [\"../r\"]\n");
    assert_eq!(
        errors(&checkpointed),
        [
            "w.toml:5:1: job 'c' is missing 'checkpoint.resume'\n  hint: add 'resume = [\"lmp\", \"-in\", \"resume.in\"]' to [jobs.c.checkpoint]",
            "w.toml:7:10: '../r' in 'files' goes up with '..'\n  hint: checkpoint files are written by the program inside the task's working directory; name them relative to it",
        ]
    );
    let with_tasks = format!(
        "{container}image = \"lmp\"\ntasks = [1]\n[jobs.c.checkpoint]\nchunks = 5\nresume = [\"x\"]\nfiles = [\"r\"]\n"
    );
    assert_eq!(
        error(&with_tasks),
        "w.toml:6:1: a job with 'tasks' cannot also have a checkpoint\n  hint: array tasks are independent; a checkpointed job is one run cut into chained chunks"
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
        "w.toml:4:8: unknown kind 'shell'\n  hint: kind is \"md\" (a molecular dynamics run), \"command\" (a program) or \"container\" (a program in an image)"
    );
    assert_eq!(
        error(&melt_with("lattice = \"fcc\"", "lattice = \"bcc\"")),
        "w.toml:7:11: unknown lattice 'bcc'\n  hint: only \"fcc\" is supported; other structures can be read with data = \"file.data\""
    );
}

#[test]
fn a_system_needs_exactly_one_of_lattice_data_and_h5md() {
    assert_eq!(
        error(&melt_with("lattice = \"fcc\"", "lattice = \"fcc\"\ndata = \"melt.data\"")),
        "w.toml:8:1: a system has either 'lattice' or 'data', not both\n  hint: 'lattice' generates atoms, 'data' reads them from a LAMMPS data file, 'h5md' from an H5MD file; keep one"
    );
    assert_eq!(
        error(&melt_with("lattice = \"fcc\"\n", "")),
        "w.toml:6:1: job 'melt' is missing 'system.lattice', 'system.data' or 'system.h5md'\n  hint: add 'lattice = \"fcc\"' to generate atoms, 'data = \"file.data\"' to read a LAMMPS data file, or 'h5md = \"file.h5md\"' to start from a frame of an H5MD trajectory"
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

#[test]
fn md_jobs_are_verified_exactly() {
    for policy in ["tolerance", "metered"] {
        assert_eq!(
            error(&format!("{MELT}[jobs.melt.verify]\npolicy = \"{policy}\"\n")),
            format!(
                "w.toml:20:10: policy \"{policy}\" does not apply to md jobs\n  hint: md chunks are bit-deterministic, so their results compare exactly: use policy = \"adaptive\" (the default) or \"quorum\""
            )
        );
    }
}

#[test]
fn command_jobs_have_no_hash_chains_to_audit() {
    assert_eq!(
        error(&summary_with(
            "policy = \"tolerance\"\n\n[[jobs.summary.verify.compare]]\nfile = \"energies.txt\"\ncolumns = [2, 3]\nrelative = 1e-6\n",
            "policy = \"adaptive\"\n"
        )),
        "w.toml:8:10: policy \"adaptive\" applies only to md jobs\n  hint: adaptive verification audits the hash chains that only md chunks record; command jobs use \"quorum\" (the default), \"tolerance\" or \"metered\""
    );
}

#[test]
fn tolerance_needs_replicas_to_compare_and_rules() {
    assert_eq!(
        error(&summary_with("replicas = 2\n", "")),
        "w.toml:7:10: policy \"tolerance\" compares replicas, but job 'summary' has 1\n  hint: set replicas = 2 (or more) in [jobs.summary], so that two workers' results can be compared"
    );
    let rules = SUMMARY.find("\n[[").unwrap();
    assert_eq!(
        error(&SUMMARY[..rules]),
        "w.toml:7:1: job 'summary' has policy \"tolerance\" but no 'compare' rules\n  hint: add a [[jobs.summary.verify.compare]] table with file = \"energies.txt\" naming an output, and the tolerances"
    );
    assert_eq!(
        error(&format!("{}compare = []\n", &SUMMARY[..rules])),
        "w.toml:9:11: 'compare' is empty\n  hint: add at least one compare rule"
    );
}

#[test]
fn metered_runs_once() {
    let rules = SUMMARY.find("\n[[").unwrap();
    let metered = SUMMARY[..rules].replace("\"tolerance\"", "\"metered\"");
    assert_eq!(
        error(&metered),
        "w.toml:8:10: policy \"metered\" runs each chunk once, but job 'summary' has replicas = 2\n  hint: remove 'replicas' from [jobs.summary], or use policy = \"quorum\" to compare replicas"
    );
}

#[test]
fn compare_rules_belong_to_the_tolerance_policy() {
    assert_eq!(
        error(&summary_with("policy = \"tolerance\"", "policy = \"quorum\"")),
        "w.toml:10:23: 'compare' applies only to policy = \"tolerance\", and job 'summary' has \"quorum\"\n  hint: set policy = \"tolerance\", or remove the compare rules"
    );
    assert_eq!(
        error(&summary_with("policy = \"tolerance\"\n", "")),
        "w.toml:9:23: 'compare' applies only to policy = \"tolerance\", and job 'summary' has \"quorum\"\n  hint: set policy = \"tolerance\", or remove the compare rules",
        "command jobs default to quorum"
    );
}

#[test]
fn unknown_policies_and_keys_suggest_the_closest() {
    assert_eq!(
        error(&summary_with("\"tolerance\"", "\"tolerence\"")),
        "w.toml:8:10: unknown verification policy 'tolerence'\n  hint: did you mean 'tolerance'?"
    );
    assert_eq!(
        error(&summary_with("\"tolerance\"", "\"paranoid\"")),
        "w.toml:8:10: unknown verification policy 'paranoid'\n  hint: policy is \"adaptive\", \"quorum\", \"tolerance\" or \"metered\""
    );
    assert_eq!(
        errors(&summary_with("policy", "policy = \"tolerance\"\npolcy")),
        ["w.toml:9:1: unknown key 'polcy'\n  hint: did you mean 'policy'?"]
    );
    assert_eq!(
        errors(&summary_with("columns", "colums")),
        ["w.toml:12:1: unknown key 'colums'\n  hint: did you mean 'columns'?"]
    );
    assert_eq!(
        error(&summary_with("relative = 1e-6", "relative = 1e-6\ntolerance = 1")),
        "w.toml:14:1: unknown key 'tolerance'\n  hint: valid keys in [jobs.summary.verify.compare]: file, columns, datasets, absolute, relative"
    );
    let misspelt = errors(&summary_with("[jobs.summary.verify]\n", "[jobs.summary.verfy]\n"));
    assert_eq!(misspelt[0], "w.toml:7:15: unknown key 'verfy'\n  hint: did you mean 'verify'?");
    assert!(misspelt[1].starts_with("w.toml:10:23: 'compare' applies only to"), "the policy is the default then");
}

#[test]
fn a_compared_file_is_one_of_the_outputs() {
    assert_eq!(
        error(&summary_with("file = \"energies.txt\"", "file = \"energy.txt\"")),
        "w.toml:11:8: 'energy.txt' is not one of the outputs of job 'summary'\n  hint: add it to 'outputs' of [jobs.summary] or compare one of 'energies.txt', 'summary-*.txt', 'traj.h5'"
    );
    assert_eq!(
        error(&summary_with("file = \"energies.txt\"", "file = \"out/summary-1.txt\"")),
        "w.toml:11:8: 'out/summary-1.txt' is not one of the outputs of job 'summary'\n  hint: add it to 'outputs' of [jobs.summary] or compare one of 'energies.txt', 'summary-*.txt', 'traj.h5'",
        "'*' does not match across directories, as the worker's collection does not"
    );
    assert_eq!(
        error(&summary_with("outputs = [\"energies.txt\", \"summary-*.txt\", \"traj.h5\"]\n", "")),
        "w.toml:10:8: 'energies.txt' is not one of the outputs of job 'summary'\n  hint: job 'summary' collects no outputs: add outputs = [\"energies.txt\"] to [jobs.summary]"
    );
    assert_eq!(
        error(&summary_with("file = \"energies.txt\"", "file = \"../energies.txt\"")),
        "w.toml:11:8: cannot compare file name \"../energies.txt\" must not contain '..', '.' or empty components\n  hint: name an output file relative to the task's working directory, as in 'outputs'"
    );
    assert_eq!(
        error(&summary_with("file = \"energies.txt\"\n", "")),
        "w.toml:10:1: job 'summary' is missing 'verify.compare.file'\n  hint: add 'file = \"energies.txt\"' to [jobs.summary.verify.compare]"
    );
}

#[test]
fn columns_and_datasets_are_bounded_and_exclusive() {
    assert_eq!(
        error(&summary_with("columns = [2, 3]", "columns = [2, 3]\ndatasets = [\"/e\"]")),
        "w.toml:13:1: a compare rule has either 'columns' or 'datasets', not both\n  hint: 'columns' compares a text file's columns, 'datasets' an HDF5 file's datasets; remove one"
    );
    assert_eq!(
        errors(&summary_with("columns = [2, 3]", "columns = [0, 2, 1000001, 2]")),
        [
            "w.toml:12:12: column 0 is out of range; columns are numbered from 1 to 1000000\n  hint: the first whitespace-separated column of a line is 1",
            "w.toml:12:18: column 1000001 is out of range; columns are numbered from 1 to 1000000\n  hint: the first whitespace-separated column of a line is 1",
            "w.toml:12:27: column 2 appears twice",
        ]
    );
    assert_eq!(
        error(&summary_with("columns = [2, 3]", "columns = []")),
        "w.toml:12:11: 'columns' is empty\n  hint: omit 'columns' to compare every column"
    );
    let many: Vec<String> = (1..=65).map(|column| column.to_string()).collect();
    assert_eq!(
        error(&summary_with("columns = [2, 3]", &format!("columns = [{}]", many.join(", ")))),
        "w.toml:12:11: 'columns' has 65 entries; at most 64 are allowed"
    );
    let long = format!("/{}", "d".repeat(1024));
    assert_eq!(
        errors(&summary_with("columns = [2, 3]", &format!("datasets = [\"\", \"{long}\", 3]"))),
        [
            "w.toml:12:13: a dataset path is empty\n  hint: name a dataset inside the HDF5 file, e.g. \"/particles/all/position/value\"",
            "w.toml:12:17: a dataset path is 1025 bytes; at most 1024 are allowed\n  hint: name a dataset inside the HDF5 file, e.g. \"/particles/all/position/value\"",
            "w.toml:12:1046: expected a string for 'datasets', found an integer\n  hint: put the value in double quotes",
        ]
    );
}

#[test]
fn at_most_so_many_compare_rules() {
    let rule = "\n[[jobs.summary.verify.compare]]\nfile = \"energies.txt\"\n";
    let source = format!("{SUMMARY}{}", rule.repeat(64));
    assert_eq!(error(&source), "w.toml:10:23: 'compare' has 65 rules; at most 64 are allowed");
}

#[test]
fn tolerances_are_finite_and_not_negative() {
    assert_eq!(
        errors(&summary_with("relative = 1e-6", "relative = -1e-6\nabsolute = nan")),
        [
            "w.toml:13:12: 'relative' must not be negative, found -0.000001",
            "w.toml:14:12: 'absolute' must be a finite number, found NaN",
        ]
    );
}

#[test]
fn every_verify_error_is_reported_at_once() {
    let source = summary_with("replicas = 2\n", "")
        .replace("file = \"energies.txt\"", "file = \"nothing.txt\"")
        .replace("columns = [2, 3]", "columns = [0]")
        + "\n[[jobs.summary.verify.compare]]\nfile = \"traj.h5\"\ndatasets = [\"\"]\nabsolute = -1\n";
    let locations: Vec<String> =
        errors(&source).iter().map(|error| error.split(": ").next().unwrap().to_string()).collect();
    assert_eq!(locations, ["w.toml:7:10", "w.toml:10:8", "w.toml:11:12", "w.toml:16:13", "w.toml:17:12"]);
}

#[test]
fn dataset_inputs_need_a_name_and_a_hash() {
    let folder = tempfile::tempdir().unwrap();
    let source = format!(
        "{MELT}{REPORT}inputs = [{{ name = \"a.h5md\", dataset = \"abc\" }}, {{ name = \"b\" }}, 7, {{ name = \"/abs\", dataset = \"{}\" }}, {{ name = \"../x\", dataset = \"zz\" }}]\n",
        "ab".repeat(32)
    );
    let errors = parse_in(folder.path(), &source).unwrap_err();
    assert_eq!(
        errors,
        [
            "w.toml:24:40: 'abc' is not a dataset hash\n  hint: a dataset is named by the 64 hex digits `upglobe dataset put` and `upglobe dataset ls` print",
            "w.toml:24:49: an input table needs 'name' and 'dataset'\n  hint: write { name = \"traj.h5md\", dataset = \"HASH\" } with the hash `upglobe dataset put` printed",
            "w.toml:24:65: expected a file name or a table { name, dataset } for 'inputs', found an integer",
            "w.toml:24:77: '/abs' in 'inputs' is an absolute path\n  hint: inputs are copied into the task's working directory under the name written; copy or link the file next to the workflow file and name it relative to there",
            "w.toml:24:174: '../x' in 'inputs' goes up with '..'\n  hint: inputs are copied into the task's working directory under the name written; copy or link the file next to the workflow file and name it relative to there",
            "w.toml:24:192: 'zz' is not a dataset hash\n  hint: a dataset is named by the 64 hex digits `upglobe dataset put` and `upglobe dataset ls` print",
        ]
    );
}

#[test]
fn gpu_requests_need_gpus_and_a_known_backend() {
    // MELT has 18 lines; the resources table starts at line 19.
    assert_eq!(
        error(&format!("{MELT}[jobs.melt.resources]\nvram = \"16GiB\"\n")),
        "w.toml:20:1: 'vram' asks something of the job's GPUs, but it asks for none\n  hint: add gpus = 1 (or more) to the table"
    );
    assert_eq!(
        error(&format!("{MELT}[jobs.melt.resources]\ngpus = 1\nbackend = \"vulkn\"\n")),
        "w.toml:21:11: unknown GPU backend 'vulkn'\n  hint: did you mean 'vulkan'?"
    );
    assert_eq!(
        error(&format!("{MELT}[jobs.melt.resources]\ngpus = 1\nvram = \"lots\"\n")),
        "w.toml:21:8: cannot read memory 'lots'\n  hint: write an integer number of bytes, or a string with a unit: B, KiB, MiB, GiB, TiB, KB, MB, GB, TB (e.g. \"512MiB\")"
    );
}

#[test]
fn a_resume_command_has_no_task_placeholder() {
    let source = "[jobs.c]\nkind = \"command\"\nargv = [\"run\"]\n[jobs.c.checkpoint]\nchunks = 2\nresume = [\"run\", \"{task}\"]\nfiles = [\"state\"]\n";
    assert_eq!(
        error(source),
        "w.toml:6:10: 'resume' uses {task}, but a checkpointed job has no tasks\n  hint: use {chunk} (the chunk's index, from 0) or {chunks} (their number)"
    );
}
