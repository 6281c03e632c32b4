//! The `after` graph: every name known, no job after itself, and no cycles.

use std::collections::HashMap;

use crate::diagnostic::Reporter;
use crate::fields::{Located, closest};
use crate::job::Dependencies;

const CYCLE_HINT: &str = "a job starts only when every job in its 'after' list has completed, so jobs in a cycle never start; remove one of these dependencies";

/// Reports unknown names, self-dependencies, repeated names and cycles.
pub(crate) fn check(reporter: &mut Reporter, jobs: &[Dependencies]) {
    let index: HashMap<&str, usize> = jobs.iter().enumerate().map(|(position, job)| (job.name, position)).collect();
    let mut edges: Vec<Vec<(usize, usize)>> = Vec::with_capacity(jobs.len());
    for job in jobs {
        edges.push(check_names(reporter, job, jobs, &index));
    }
    find_cycles(reporter, jobs, &edges);
}

/// The valid edges of one job as (target job, offset of the name in `after`).
fn check_names(
    reporter: &mut Reporter,
    job: &Dependencies,
    jobs: &[Dependencies],
    index: &HashMap<&str, usize>,
) -> Vec<(usize, usize)> {
    let mut edges = Vec::with_capacity(job.after.len());
    for (position, Located { value: name, at }) in job.after.iter().enumerate() {
        if *name == job.name {
            reporter.error_with_hint(
                *at,
                format!("job '{name}' cannot run after itself"),
                format!("remove '{name}' from its 'after' list"),
            );
        } else if job.after[..position].iter().any(|earlier| earlier.value == *name) {
            reporter.error(*at, format!("'{name}' appears twice in 'after'"));
        } else if let Some(&target) = index.get(name) {
            edges.push((target, *at));
        } else {
            let names = jobs.iter().map(|other| other.name).filter(|other| *other != job.name);
            let hint = match closest(name, names.clone()) {
                Some(suggestion) => format!("did you mean '{suggestion}'?"),
                None => format!("jobs in this file: {}", names.collect::<Vec<_>>().join(", ")),
            };
            reporter.error_with_hint(*at, format!("'after' names unknown job '{name}'"), hint);
        }
    }
    edges
}

#[derive(Clone, Copy, PartialEq)]
enum Visit {
    New,
    OnPath,
    Done,
}

/// Depth-first search in file order, without recursion (a workflow may chain thousands of jobs).
/// Each edge that closes a cycle is reported at the name that closes it.
fn find_cycles(reporter: &mut Reporter, jobs: &[Dependencies], edges: &[Vec<(usize, usize)>]) {
    let mut visits = vec![Visit::New; jobs.len()];
    for start in 0..jobs.len() {
        if visits[start] != Visit::New {
            continue;
        }
        // The current path: each job and the index of its next edge to follow.
        let mut path: Vec<(usize, usize)> = vec![(start, 0)];
        visits[start] = Visit::OnPath;
        while let Some((job, next)) = path.last_mut() {
            let job = *job;
            let Some(&(target, at)) = edges[job].get(*next) else {
                visits[job] = Visit::Done;
                path.pop();
                continue;
            };
            *next += 1;
            match visits[target] {
                Visit::New => {
                    visits[target] = Visit::OnPath;
                    path.push((target, 0));
                }
                Visit::OnPath => report_cycle(reporter, jobs, &path, target, at),
                Visit::Done => {}
            }
        }
    }
}

fn report_cycle(reporter: &mut Reporter, jobs: &[Dependencies], path: &[(usize, usize)], target: usize, at: usize) {
    let start = path.iter().position(|&(job, _)| job == target).expect("a job on the path is in the path");
    let mut names: Vec<&str> = path[start..].iter().map(|&(job, _)| jobs[job].name).collect();
    names.push(jobs[target].name);
    reporter.error_with_hint(at, format!("cycle in 'after': {}", names.join(" -> ")), CYCLE_HINT);
}
