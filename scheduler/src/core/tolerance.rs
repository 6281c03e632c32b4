//! The tolerance policy: results of non-deterministic programs agree when their exit codes match
//! and a comparison of their named outputs within the job's tolerances says so.
//!
//! Reading output files is I/O, so the core asks the shell to compare two results
//! ([`Action::Compare`]) and is told the answer ([`Core::handle_compared`]). A chunk's results are
//! sorted into groups of mutually agreeing results, one comparison at a time, against each group's
//! first member; a result that agrees with a group takes that member's digest, so the quorum and
//! the accepted output are the group's.

use upglobe_protocol::ChunkId;
use upglobe_protocol::messages::Output;
use upglobe_protocol::trust::{ToleranceRule, Verification};

use super::{Action, Core};

/// The comparison a tolerance chunk waits for: request id, the candidate result, the group.
pub(super) type Comparing = (u64, usize, usize);

impl Core {
    pub(super) fn tolerance_rules(&self, chunk_id: ChunkId) -> Option<Vec<ToleranceRule>> {
        match &self.jobs[&chunk_id.job].spec.verification {
            Verification::Tolerance(rules) => Some(rules.clone()),
            _ => None,
        }
    }

    /// Groups the chunk's results until a comparison is needed, a group reaches the quorum, or
    /// every result has its group.
    pub(super) fn pump_comparisons(&mut self, now: u64, chunk_id: ChunkId, mut first_group: usize) {
        loop {
            let Some(chunk) = self.chunks.get(&chunk_id) else { return };
            if chunk.comparing.is_some() {
                return;
            }
            let grouped = |k: &usize| chunk.groups.iter().any(|g| g.contains(k));
            let Some(candidate) = (0..chunk.results.len()).find(|k| !grouped(k)) else {
                self.after_grouping(now, chunk_id);
                return;
            };
            let exit_code = |k: usize| match &chunk.results[k].output {
                Output::Command { exit_code, .. } => Some(*exit_code),
                _ => None,
            };
            let group =
                (first_group..chunk.groups.len()).find(|g| exit_code(chunk.groups[*g][0]) == exit_code(candidate));
            first_group = 0;
            match group {
                Some(group) => {
                    let representative = chunk.groups[group][0];
                    let files = |k: usize| match &chunk.results[k].output {
                        Output::Command { files, .. } => files.clone(),
                        _ => Vec::new(),
                    };
                    let (a, b) = (files(representative), files(candidate));
                    let rules = self.tolerance_rules(chunk_id).expect("a tolerance job");
                    let id = self.next_request;
                    self.next_request += 1;
                    self.chunks.get_mut(&chunk_id).expect("open").comparing = Some((id, candidate, group));
                    self.comparisons.insert(id, chunk_id);
                    self.actions.push_back(Action::Compare { id, rules, a, b });
                    return;
                }
                None => self.chunks.get_mut(&chunk_id).expect("open").groups.push(vec![candidate]),
            }
        }
    }

    /// The shell's answer to [`Action::Compare`] `id`: whether the two results agree (an error
    /// reading them counts as disagreement, with the reason in the log).
    pub fn handle_compared(&mut self, now: u64, id: u64, agree: bool) {
        let Some(chunk_id) = self.comparisons.remove(&id) else { return };
        let Some(chunk) = self.chunks.get_mut(&chunk_id) else { return };
        let Some((expected, candidate, group)) = chunk.comparing else { return };
        if expected != id {
            return;
        }
        chunk.comparing = None;
        if agree {
            let representative = chunk.groups[group][0];
            chunk.results[candidate].digest = chunk.results[representative].digest;
            chunk.groups[group].push(candidate);
            self.pump_comparisons(now, chunk_id, 0);
        } else {
            self.pump_comparisons(now, chunk_id, group + 1);
        }
        self.schedule(now);
    }

    /// Every result has its group: accept the largest if it reaches the quorum, otherwise ask for
    /// more results (up to the bound), as exact quorums do.
    fn after_grouping(&mut self, now: u64, chunk_id: ChunkId) {
        let quorum = self.jobs[&chunk_id.job].spec.replicas;
        let bound = quorum + self.config.extra_replicas_max;
        let chunk = self.chunks.get_mut(&chunk_id).expect("open");
        let best = chunk.groups.iter().max_by_key(|g| g.len()).map_or(0, |g| g.len()) as u32;
        if best >= quorum {
            let group = chunk.groups.iter().find(|g| g.len() as u32 == best).expect("the best group");
            let digest = chunk.results[group[0]].digest;
            let how = format!("{best} results agree within the tolerances");
            self.verify(now, chunk_id, digest, None, &how);
            return;
        }
        let results = chunk.results.len() as u32;
        if chunk.groups.len() > 1 {
            chunk.target = (results + quorum - best).min(bound).max(chunk.target);
        }
        if results >= bound {
            let groups = chunk.groups.len();
            let reason = format!("no quorum: {results} results in {groups} groups that disagree beyond the tolerances");
            self.fail_job_for_chunk(now, chunk_id, reason);
            return;
        }
        self.refresh_ready(chunk_id);
    }
}
