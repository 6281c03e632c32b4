//! Tolerance comparison of real files: text from memory, HDF5 written with libhdf5, and both through a
//! real blob store.

use upglobe_datasets::BlobStore;
use upglobe_datasets::compare::{Agreement, compare_outputs, compare_text};
use upglobe_protocol::messages::FileRef;
use upglobe_protocol::trust::{Compared, ToleranceRule};

fn differ(agreement: Agreement) -> String {
    match agreement {
        Agreement::Differ(why) => why,
        Agreement::Agree => panic!("expected a difference"),
    }
}

#[test]
fn text_agrees_within_the_tolerance_whatever_the_comments() {
    let a = b"# step energy pressure\n1 -6.7733 0.5\n2 -6.7001 0.25\n";
    let b = b"  # another header\n\n1 -6.77330001 0.5\r\n2 -6.7001 0.2500000001\n# the end\n";
    assert_eq!(compare_text("e.txt", a, b, &[2, 3], 0.0, 1e-6), Agreement::Agree);
    assert_eq!(compare_text("e.txt", a, b, &[], 1e-6, 0.0), Agreement::Agree, "every column, absolutely");
}

#[test]
fn text_differs_just_beyond_the_tolerance_and_says_where() {
    let same: String = (1..=11).map(|line| format!("{line} 0.5 1.0\n")).collect();
    let (a, b) = (format!("{same}12 0.5 1.0\n"), format!("{same}12 0.5 1.0002\n"));
    assert_eq!(
        differ(compare_text("energies.txt", a.as_bytes(), b.as_bytes(), &[2, 3], 0.0, 1e-4)),
        "energies.txt line 12 column 3: 1.0 and 1.0002 differ by 2.0e-4, more than the tolerance 1.0e-4 (absolute 0, relative 1e-4)"
    );
    assert_eq!(compare_text("energies.txt", a.as_bytes(), b.as_bytes(), &[2, 3], 0.0, 2.1e-4), Agreement::Agree);
    assert_eq!(compare_text("energies.txt", a.as_bytes(), b.as_bytes(), &[2, 3], 2.1e-4, 0.0), Agreement::Agree);
    let shifted = format!("# a comment more\n{b}");
    assert!(
        differ(compare_text("energies.txt", a.as_bytes(), shifted.as_bytes(), &[3], 0.0, 1e-4))
            .starts_with("energies.txt line 12 (line 13 of the second) column 3: "),
    );
}

#[test]
fn tokens_outside_the_compared_columns_must_be_identical() {
    let compare =
        |a: &str, b: &str, columns: &[u32]| compare_text("t.txt", a.as_bytes(), b.as_bytes(), columns, 0.1, 0.1);
    assert_eq!(
        differ(compare("step 1 ok\n", "step 1 bad\n", &[])),
        "t.txt line 1 column 3: ok and bad differ, and are not both numbers"
    );
    assert_eq!(
        differ(compare("1 2.0\n", "2 2.0\n", &[2])),
        "t.txt line 1 column 1: 1 and 2 differ, and the column is not compared within a tolerance"
    );
    assert_eq!(
        compare("1 converged\n", "1 converged\n", &[2]),
        Agreement::Agree,
        "identical text in a compared column"
    );
    assert_eq!(
        differ(compare("1 2.0 3\n", "1 2.0\n", &[])),
        "t.txt line 1: 3 columns in the first result and 2 in the second"
    );
    let long = "x".repeat(100);
    assert!(differ(compare(&long, "y", &[])).contains(&format!(": {}… and y differ", &long[..40])));
}

#[test]
fn nan_and_infinities_agree_only_with_themselves() {
    let compare = |a: &str, b: &str| compare_text("t.txt", a.as_bytes(), b.as_bytes(), &[], 1.0, 1.0);
    assert_eq!(compare("nan inf -inf\n", "NaN Infinity -INF\n"), Agreement::Agree);
    assert_eq!(
        differ(compare("inf\n", "1e308\n")),
        "t.txt line 1 column 1: inf and 1e308 differ: NaN and infinities agree only with themselves"
    );
    assert!(differ(compare("nan\n", "1\n")).starts_with("t.txt line 1 column 1: nan and 1 differ"));
    assert!(differ(compare("inf\n", "-inf\n")).starts_with("t.txt line 1 column 1: inf and -inf differ"));
}

#[test]
fn a_tolerance_that_is_not_a_number_is_the_strictest() {
    assert!(matches!(compare_text("t.txt", b"1.0\n", b"1.5\n", &[], f64::NAN, -1.0), Agreement::Differ(_)));
}

#[test]
fn different_line_counts_differ() {
    assert_eq!(
        differ(compare_text("t.txt", b"1\n2\n# 3\n", b"1\n2\n3\n", &[], 0.0, 0.0)),
        "t.txt has 2 data lines in the first result and 3 in the second (blank lines and '#' comments aside)"
    );
    assert_eq!(
        differ(compare_text("t.txt", b"1\n2\n3\n4\n", b"1\n", &[], 0.0, 0.0)),
        "t.txt has 4 data lines in the first result and 1 in the second (blank lines and '#' comments aside)"
    );
    assert_eq!(compare_text("t.txt", b"", b"\n# nothing\n", &[], 0.0, 0.0), Agreement::Agree);
}

fn columns_rule(file: &str, columns: &[u32], relative: f64) -> ToleranceRule {
    ToleranceRule { file: file.into(), values: Compared::Columns(columns.to_vec()), absolute: 0.0, relative }
}

fn stored(store: &BlobStore, name: &str, bytes: &[u8]) -> FileRef {
    FileRef { name: name.into(), blob: store.put(bytes).unwrap(), size: bytes.len() as u64 }
}

#[test]
fn outputs_are_compared_by_the_rules_that_name_them() {
    let folder = tempfile::tempdir().unwrap();
    let store = BlobStore::open(folder.path()).unwrap();
    let a = [
        stored(&store, "energies-1.txt", b"1 1.0\n"),
        stored(&store, "energies-2.txt", b"2 2.0\n"),
        stored(&store, "log.txt", b"started at 10:00\n"),
    ];
    let b = [
        stored(&store, "energies-1.txt", b"1 1.0000001\n"),
        stored(&store, "energies-2.txt", b"2 2.0\n"),
        stored(&store, "log.txt", b"started at 10:07\n"),
    ];
    let rules = [columns_rule("energies-*.txt", &[2], 1e-6)];
    assert_eq!(compare_outputs(&store, &rules, &a, &b).unwrap(), Agreement::Agree, "log.txt is named by no rule");

    let tight = [columns_rule("energies-*.txt", &[2], 1e-9)];
    assert!(differ(compare_outputs(&store, &tight, &a, &b).unwrap()).starts_with("energies-1.txt line 1 column 2: "));
    let exact_name = [columns_rule("energies-2.txt", &[2], 0.0)];
    assert_eq!(compare_outputs(&store, &exact_name, &a, &b).unwrap(), Agreement::Agree);

    assert_eq!(
        differ(compare_outputs(&store, &rules, &a, &b[..1]).unwrap()),
        "energies-2.txt is in the first result only"
    );
    assert_eq!(
        differ(compare_outputs(&store, &rules, &a[..1], &b).unwrap()),
        "energies-2.txt is in the second result only"
    );
    let absent = [columns_rule("summary.txt", &[], 0.0)];
    assert_eq!(compare_outputs(&store, &absent, &a, &b).unwrap(), Agreement::Agree, "neither has it");
}

#[test]
fn a_missing_blob_is_an_error_not_a_difference() {
    let folder = tempfile::tempdir().unwrap();
    let store = BlobStore::open(folder.path()).unwrap();
    let a = [stored(&store, "e.txt", b"1\n")];
    let b = [stored(&store, "e.txt", b"2\n")];
    store.remove(&b[0].blob).unwrap();
    let error = compare_outputs(&store, &[columns_rule("e.txt", &[], 1.0)], &a, &b).unwrap_err();
    assert!(matches!(error, upglobe_datasets::DatasetError::Missing(_)), "{error}");
}

#[cfg(feature = "h5md")]
mod hdf5_files {
    use std::path::{Path, PathBuf};

    use upglobe_datasets::compare::compare_hdf5;

    use super::*;

    /// A file with a 4 x 3 float dataset `/particles/position` and 5 integers `/counts`.
    fn write(folder: &Path, name: &str, positions: &[f64], shape: &[usize], counts: &[i32]) -> PathBuf {
        let path = folder.join(name);
        let file = hdf5::File::create(&path).unwrap();
        let particles = file.create_group("particles").unwrap();
        particles.new_dataset::<f64>().shape(shape).create("position").unwrap().write_raw(positions).unwrap();
        file.new_dataset::<i32>().shape(counts.len()).create("counts").unwrap().write_raw(counts).unwrap();
        path
    }

    fn positions() -> Vec<f64> {
        (0..12).map(|index| index as f64 * 0.5).collect()
    }

    const COUNTS: [i32; 5] = [3, 1, 4, 1, 5];

    fn datasets() -> Vec<String> {
        vec!["/particles/position".into(), "/counts".into()]
    }

    #[test]
    fn hdf5_datasets_agree_within_the_tolerance() {
        let folder = tempfile::tempdir().unwrap();
        let a = write(folder.path(), "a.h5", &positions(), &[4, 3], &COUNTS);
        let nudged: Vec<f64> = positions().iter().map(|value| value + 1e-9).collect();
        let b = write(folder.path(), "b.h5", &nudged, &[4, 3], &COUNTS);
        assert_eq!(compare_hdf5("traj.h5", &a, &b, &datasets(), 1e-8, 0.0).unwrap(), Agreement::Agree);
        assert!(matches!(compare_hdf5("traj.h5", &a, &b, &datasets(), 0.0, 0.0).unwrap(), Agreement::Differ(_)));
    }

    #[test]
    fn hdf5_differences_name_the_dataset_and_element() {
        let folder = tempfile::tempdir().unwrap();
        let a = write(folder.path(), "a.h5", &positions(), &[4, 3], &COUNTS);
        let mut moved = positions();
        moved[2 * 3 + 1] += 1e-3;
        let b = write(folder.path(), "b.h5", &moved, &[4, 3], &COUNTS);
        assert_eq!(
            differ(compare_hdf5("traj.h5", &a, &b, &datasets(), 1e-4, 0.0).unwrap()),
            "traj.h5 /particles/position [2, 1]: 3.5 and 3.501 differ by 1.0e-3, more than the tolerance 1.0e-4 (absolute 1e-4, relative 0)"
        );
        let c = write(folder.path(), "c.h5", &positions(), &[4, 3], &[3, 1, 4, 2, 5]);
        assert_eq!(
            differ(compare_hdf5("traj.h5", &a, &c, &datasets(), 0.5, 0.0).unwrap()),
            "traj.h5 /counts [3]: 1 and 2 differ by 1.0e0, more than the tolerance 5.0e-1 (absolute 5e-1, relative 0)",
            "integers are read as numbers"
        );
        assert_eq!(compare_hdf5("traj.h5", &a, &c, &datasets(), 1.0, 0.0).unwrap(), Agreement::Agree);
    }

    #[test]
    fn hdf5_shapes_and_datasets_must_match() {
        let folder = tempfile::tempdir().unwrap();
        let a = write(folder.path(), "a.h5", &positions(), &[4, 3], &COUNTS);
        let b = write(folder.path(), "b.h5", &positions(), &[3, 4], &COUNTS);
        assert_eq!(
            differ(compare_hdf5("traj.h5", &a, &b, &datasets(), 1.0, 1.0).unwrap()),
            "traj.h5 /particles/position: shapes [4, 3] and [3, 4] differ"
        );
        let wanted = vec!["/counts".to_string(), "/particles/velocity".to_string()];
        assert_eq!(
            differ(compare_hdf5("traj.h5", &a, &a, &wanted, 0.0, 0.0).unwrap()),
            "traj.h5: dataset /particles/velocity is missing from the first result"
        );
    }

    #[test]
    fn a_file_that_is_not_hdf5_is_an_error_naming_it() {
        let folder = tempfile::tempdir().unwrap();
        let a = write(folder.path(), "a.h5", &positions(), &[4, 3], &COUNTS);
        let text = folder.path().join("b.h5");
        std::fs::write(&text, "not hdf5\n").unwrap();
        let error = compare_hdf5("traj.h5", &a, &text, &datasets(), 0.0, 0.0).unwrap_err().to_string();
        assert!(error.starts_with("comparing traj.h5: the second result's file ("), "{error}");
        assert!(error.contains("is not a readable HDF5 file"), "{error}");
    }

    #[test]
    fn hdf5_outputs_are_compared_through_the_store() {
        let folder = tempfile::tempdir().unwrap();
        let store = BlobStore::open(folder.path().join("blobs")).unwrap();
        let a = write(folder.path(), "a.h5", &positions(), &[4, 3], &COUNTS);
        let nudged: Vec<f64> = positions().iter().map(|value| value * (1.0 + 1e-7)).collect();
        let b = write(folder.path(), "b.h5", &nudged, &[4, 3], &COUNTS);
        let file = |path: &Path| {
            let (blob, size) = store.put_file(path).unwrap();
            FileRef { name: "traj.h5".into(), blob, size }
        };
        let (a, b) = ([file(&a)], [file(&b)]);
        let rule = |relative| ToleranceRule {
            file: "traj.h5".into(),
            values: Compared::Datasets(datasets()),
            absolute: 0.0,
            relative,
        };
        assert_eq!(compare_outputs(&store, &[rule(1e-6)], &a, &b).unwrap(), Agreement::Agree);
        assert!(
            differ(compare_outputs(&store, &[rule(1e-8)], &a, &b).unwrap())
                .starts_with("traj.h5 /particles/position [0, 1]: ")
        );
    }
}

#[cfg(not(feature = "h5md"))]
#[test]
fn without_libhdf5_a_dataset_rule_is_an_error_that_says_so() {
    let folder = tempfile::tempdir().unwrap();
    let store = BlobStore::open(folder.path()).unwrap();
    let (a, b) = ([stored(&store, "traj.h5", b"a")], [stored(&store, "traj.h5", b"b")]);
    let rule = ToleranceRule {
        file: "traj.h5".into(),
        values: Compared::Datasets(vec!["/x".into()]),
        absolute: 0.0,
        relative: 0.0,
    };
    let error = compare_outputs(&store, &[rule], &a, &b).unwrap_err().to_string();
    assert!(
        error.starts_with("comparing traj.h5: HDF5 datasets are compared only by a build with the h5md feature"),
        "{error}"
    );
}
