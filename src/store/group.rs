//! Group commit: concurrent commits queue, and one of them (the leader) commits every queued
//! batch at once, so that N threads pay about one sync per group instead of one each.

use std::collections::HashMap;
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};

use super::backend::Write;
use crate::core::Error;

/// A batch waiting for a leader, with its ticket.
pub(crate) type Queued = (u64, Vec<Write>);

/// The outcome of each ticket of a group.
pub(crate) type Outcomes = Vec<(u64, Result<(), Error>)>;

/// The queue of a group commit.
#[derive(Debug, Default)]
pub(crate) struct CommitGroup {
    state: Mutex<GroupState>,
    done: Condvar,
}

#[derive(Debug, Default)]
struct GroupState {
    next_ticket: u64,
    /// Batches waiting for a leader, by ticket.
    queued: Vec<Queued>,
    /// Outcomes not yet picked up by their committer, by ticket.
    outcomes: HashMap<u64, Result<(), Error>>,
    /// Whether a leader is committing a group.
    leading: bool,
}

impl CommitGroup {
    fn lock(&self) -> MutexGuard<'_, GroupState> {
        // Every update of the state is completed before the lock is released.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues `batch` and returns its outcome: either another committer's group took it, or
    /// this one leads a group (every batch queued so far, this one included) through
    /// `commit_group`, which returns one outcome per ticket. Groups are committed one at a
    /// time, in ticket order.
    pub(crate) fn commit(
        &self,
        batch: &[Write],
        commit_group: &mut dyn FnMut(Vec<Queued>) -> Outcomes,
    ) -> Result<(), Error> {
        let mut state = self.lock();
        let ticket = state.next_ticket;
        state.next_ticket += 1;
        state.queued.push((ticket, batch.to_vec()));
        loop {
            if let Some(outcome) = state.outcomes.remove(&ticket) {
                return outcome;
            }
            if state.leading {
                state = self
                    .done
                    .wait(state)
                    .unwrap_or_else(PoisonError::into_inner);
                continue;
            }
            state.leading = true;
            let group = std::mem::take(&mut state.queued);
            let mut leader = Leader {
                group: self,
                tickets: group.iter().map(|(ticket, _)| *ticket).collect(),
            };
            drop(state);
            let outcomes = commit_group(group);
            state = self.lock();
            state.outcomes.extend(outcomes);
            leader.tickets.clear();
            drop(state);
            drop(leader);
            state = self.lock();
        }
    }
}

/// The leader's duty, done on drop even if it panicked: hand over the lead, wake the
/// waiters, and give an error to every commit of the group left without an outcome.
struct Leader<'a> {
    group: &'a CommitGroup,
    tickets: Vec<u64>,
}

impl Drop for Leader<'_> {
    fn drop(&mut self) {
        let mut state = self.group.lock();
        for ticket in self.tickets.drain(..) {
            state.outcomes.insert(
                ticket,
                Err(Error::Storage {
                    detail: "the commit that applied this batch's group failed".to_owned(),
                }),
            );
        }
        state.leading = false;
        self.group.done.notify_all();
    }
}
