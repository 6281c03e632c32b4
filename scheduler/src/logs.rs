//! Live output of running container tasks, kept in memory for `upglobe run` and `upglobe logs`:
//! not a decision and not durable (the whole output comes with each result), so it lives in the
//! shell, bounded per job and in the number of jobs.

use std::collections::{BTreeMap, VecDeque};

use upglobe_protocol::messages::limits::{JOB_LOG_BYTES_MAX, LOG_MESSAGE_BYTES_MAX, LOGGED_JOBS_MAX};
use upglobe_protocol::messages::{LogPage, LogPiece};
use upglobe_protocol::{AssignmentId, JobId};

#[derive(Default)]
pub struct LiveLogs {
    jobs: BTreeMap<JobId, JobLog>,
}

struct JobLog {
    /// The assignment whose output is kept: the first to send any, until it ends (the next chunk,
    /// or a retry, takes over). Replicas print the same lines, and interleaving them would help
    /// nobody.
    source: AssignmentId,
    /// Byte offset of the first piece kept, and of the end.
    start: u64,
    end: u64,
    pieces: VecDeque<(u64, LogPiece)>,
}

impl LiveLogs {
    /// Appends a piece of a running assignment's output (the shell has checked that the worker
    /// holds the assignment); truncated to the message bound, older output dropped past the job's.
    /// `running` says whether an assignment still runs: a source that ended gives way.
    pub fn append(
        &mut self,
        job: JobId,
        assignment: AssignmentId,
        stderr: bool,
        mut bytes: Vec<u8>,
        running: impl Fn(AssignmentId) -> bool,
    ) {
        bytes.truncate(LOG_MESSAGE_BYTES_MAX);
        if bytes.is_empty() {
            return;
        }
        if !self.jobs.contains_key(&job) && self.jobs.len() >= LOGGED_JOBS_MAX {
            let oldest = *self.jobs.keys().next().expect("at the bound, not empty");
            self.jobs.remove(&oldest);
        }
        let log =
            self.jobs.entry(job).or_insert(JobLog { source: assignment, start: 0, end: 0, pieces: VecDeque::new() });
        if log.source != assignment {
            if running(log.source) {
                return;
            }
            log.source = assignment;
        }
        let offset = log.end;
        log.end += bytes.len() as u64;
        log.pieces.push_back((offset, LogPiece { stderr, bytes }));
        while log.end - log.start > JOB_LOG_BYTES_MAX as u64 {
            let (_, dropped) = log.pieces.pop_front().expect("over the bound, not empty");
            log.start += dropped.bytes.len() as u64;
        }
    }

    /// The output from byte `from` on; `done` is filled in by the caller.
    pub fn read(&self, job: JobId, from: u64) -> LogPage {
        let Some(log) = self.jobs.get(&job) else {
            return LogPage { from, pieces: Vec::new(), next: from, done: false };
        };
        let from = from.clamp(log.start, log.end);
        let mut pieces = Vec::new();
        for (offset, piece) in &log.pieces {
            let end = offset + piece.bytes.len() as u64;
            if end <= from {
                continue;
            }
            let skip = from.saturating_sub(*offset) as usize;
            pieces.push(LogPiece { stderr: piece.stderr, bytes: piece.bytes[skip..].to_vec() });
        }
        LogPage { from, pieces, next: log.end, done: false }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_one_assignments_output_from_any_offset() {
        let mut logs = LiveLogs::default();
        let (job, first, replica) = (JobId(1), AssignmentId(1), AssignmentId(2));
        let running = |_| true;
        logs.append(job, first, false, b"hello ".to_vec(), running);
        logs.append(job, replica, false, b"hello ".to_vec(), running);
        logs.append(job, first, true, b"world".to_vec(), running);
        let page = logs.read(job, 3);
        assert_eq!((page.from, page.next), (3, 11));
        let text: Vec<(bool, &[u8])> = page.pieces.iter().map(|p| (p.stderr, p.bytes.as_slice())).collect();
        assert_eq!(text, [(false, &b"lo "[..]), (true, &b"world"[..])]);
        assert!(logs.read(job, 11).pieces.is_empty());
        assert_eq!(logs.read(JobId(9), 0).next, 0);
        // Once the first assignment has ended, the next chunk's output follows.
        logs.append(job, AssignmentId(3), false, b"!".to_vec(), |a| a != first);
        assert_eq!(logs.read(job, 11).pieces[0].bytes, b"!");
    }

    #[test]
    fn drops_the_oldest_output_and_jobs_past_their_bounds() {
        let mut logs = LiveLogs::default();
        let job = JobId(1);
        for _ in 0..40 {
            logs.append(job, AssignmentId(1), false, vec![b'x'; LOG_MESSAGE_BYTES_MAX * 2], |_| true);
        }
        let page = logs.read(job, 0);
        assert_eq!(page.next, 40 * LOG_MESSAGE_BYTES_MAX as u64);
        assert!(page.next - page.from <= JOB_LOG_BYTES_MAX as u64);
        for id in 2..(LOGGED_JOBS_MAX as u64 + 2) {
            logs.append(JobId(id), AssignmentId(id), false, b"x".to_vec(), |_| true);
        }
        assert!(logs.read(job, 0).pieces.is_empty(), "the oldest job's output went first");
        assert_eq!(logs.jobs.len(), LOGGED_JOBS_MAX);
    }
}
