//! Intermediate states of finished MD chunks, kept until the scheduler settles them: an audit or a
//! dispute asks for the state at the start of one link, and not serving it fails the check.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use upglobe_protocol::{AssignmentId, BlobHash};

/// Assignments whose states are kept at most; the oldest go first.
pub const RETAINED_ASSIGNMENTS_MAX: usize = 10_000;
/// A chunk the scheduler never settles (it was lost, or restarted without it) is forgotten after this.
pub const RETAINED_FOR_MAX: Duration = Duration::from_secs(24 * 3600);

#[derive(Default)]
struct States {
    /// Link start states by assignment: `[input, after link 0, …]`, and when they were kept.
    by_assignment: HashMap<AssignmentId, (Vec<BlobHash>, Instant)>,
    order: VecDeque<AssignmentId>,
}

#[derive(Clone, Default)]
pub struct Retained(Arc<Mutex<States>>);

impl Retained {
    pub fn keep(&self, assignment: AssignmentId, link_starts: Vec<BlobHash>) {
        if link_starts.is_empty() {
            return;
        }
        let mut states = self.0.lock().expect("retained states");
        states.expire(Instant::now());
        while states.order.len() >= RETAINED_ASSIGNMENTS_MAX {
            let oldest = states.order.pop_front().expect("not empty");
            states.by_assignment.remove(&oldest);
        }
        states.by_assignment.insert(assignment, (link_starts, Instant::now()));
        states.order.push_back(assignment);
    }

    /// The state at the start of `link`, or why it cannot be served.
    pub fn link_start(&self, assignment: AssignmentId, link: u32) -> Result<BlobHash, String> {
        let states = self.0.lock().expect("retained states");
        let (starts, _) = states.by_assignment.get(&assignment).ok_or_else(|| {
            format!("no states kept for assignment {assignment} (settled, expired or never run here)")
        })?;
        starts
            .get(link as usize)
            .copied()
            .ok_or_else(|| format!("assignment {assignment} has {} links, not {}", starts.len(), link + 1))
    }

    pub fn settle(&self, assignments: &[AssignmentId]) {
        let mut states = self.0.lock().expect("retained states");
        for assignment in assignments {
            states.by_assignment.remove(assignment);
        }
        let kept: HashSet<AssignmentId> = states.by_assignment.keys().copied().collect();
        states.order.retain(|a| kept.contains(a));
    }

    /// Blobs the cache must not evict.
    pub fn pinned(&self) -> Vec<BlobHash> {
        let mut states = self.0.lock().expect("retained states");
        states.expire(Instant::now());
        states.by_assignment.values().flat_map(|(starts, _)| starts.iter().copied()).collect()
    }
}

impl States {
    fn expire(&mut self, now: Instant) {
        while let Some(oldest) = self.order.front().copied() {
            match self.by_assignment.get(&oldest) {
                Some((_, kept)) if now.duration_since(*kept) < RETAINED_FOR_MAX => return,
                _ => {
                    self.order.pop_front();
                    self.by_assignment.remove(&oldest);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_are_served_until_settled_and_bounded() {
        let retained = Retained::default();
        let blobs: Vec<BlobHash> = (0..3).map(|k| BlobHash([k; 32])).collect();
        retained.keep(AssignmentId(1), blobs.clone());
        assert_eq!(retained.link_start(AssignmentId(1), 2), Ok(blobs[2]));
        assert!(retained.link_start(AssignmentId(1), 3).unwrap_err().contains("3 links"));
        assert!(retained.link_start(AssignmentId(2), 0).is_err());
        assert_eq!(retained.pinned().len(), 3);
        retained.settle(&[AssignmentId(1)]);
        assert!(retained.link_start(AssignmentId(1), 0).is_err());
        assert!(retained.pinned().is_empty());
        for k in 0..RETAINED_ASSIGNMENTS_MAX as u64 + 5 {
            retained.keep(AssignmentId(k), vec![BlobHash([1; 32])]);
        }
        assert!(retained.link_start(AssignmentId(0), 0).is_err(), "the oldest went first");
        assert!(retained.link_start(AssignmentId(RETAINED_ASSIGNMENTS_MAX as u64 + 4), 0).is_ok());
    }
}
