//! Running what is due: automatic rotations and final deletions.

use std::sync::Arc;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use super::{Kms, SyncReport};
use crate::core::{Command, Error, Event, KeyId, Transition};

/// What one [`Kms::run_due`] did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct DueReport {
    /// Keys rotated automatically.
    pub rotated: Vec<KeyId>,
    /// Keys destroyed because their deletion was due.
    pub deleted: Vec<KeyId>,
    /// Keys whose due work failed (for example a storage error); they stay due and are
    /// retried by the next run. The other keys were not affected.
    pub failed: Vec<(KeyId, Error)>,
    /// Entries of the due index that name no key (only a damaged store has them); skipped.
    pub unreadable: Vec<Error>,
    /// The deliveries to replicas that were waiting (retries in backoff left for later).
    pub replication: SyncReport,
}

impl Kms {
    /// Performs every automatic rotation and final deletion due at the clock's `now`, then
    /// the deliveries to replicas that wait and whose retry is due.
    ///
    /// Reads only the due part of the due-time index: with nothing due it costs one index
    /// probe, whatever the number of keys. One key's failure does not stop the others; it is
    /// in the report. An error is returned only when the index itself cannot be read.
    pub fn run_due(&self) -> Result<DueReport, Error> {
        self.live()?;
        let now = self.clock.now();
        let due = self.store.due(now, usize::MAX)?;
        let mut report = DueReport {
            unreadable: due.unreadable,
            ..DueReport::default()
        };
        for id in due.ids {
            match self.mutate(id, Command::RunDue, None) {
                Ok(applied) => match applied.transition {
                    Transition::Changed {
                        event: Event::Rotated { .. },
                        ..
                    } => report.rotated.push(id),
                    Transition::Deleted => report.deleted.push(id),
                    _ => {}
                },
                // Deleted between the index read and now: nothing left to do.
                Err(Error::KeyNotFound { .. }) => {}
                Err(error) => report.failed.push((id, error)),
            }
        }
        report.replication = self
            .deliver_outbox(false)
            .unwrap_or_else(|error| SyncReport {
                unreadable: vec![error],
                ..SyncReport::default()
            });
        Ok(report)
    }

    /// Runs [`Kms::run_due`] every `every` on a background thread until the returned handle
    /// is stopped or dropped. Reports and errors are dropped; use
    /// [`Kms::spawn_due_runner_with`] to see them.
    pub fn spawn_due_runner(self: &Arc<Self>, every: Duration) -> DueRunner {
        self.spawn_due_runner_with(every, |_| {})
    }

    /// Like [`Kms::spawn_due_runner`], handing each run's result to `on_run` (on the
    /// background thread).
    pub fn spawn_due_runner_with(
        self: &Arc<Self>,
        every: Duration,
        mut on_run: impl FnMut(Result<DueReport, Error>) + Send + 'static,
    ) -> DueRunner {
        let (stop, stopped) = mpsc::channel::<()>();
        let kms = Arc::clone(self);
        let thread = thread::Builder::new()
            .name("keylife-due".to_owned())
            .spawn(move || {
                while let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(every) {
                    on_run(kms.run_due());
                }
            });
        DueRunner {
            stop: Some(stop),
            thread: thread.ok(),
        }
    }
}

/// The handle of a background [`Kms::run_due`] loop. Stopping it (or dropping it) ends the
/// loop after the run in progress, if any, and waits for the thread.
#[derive(Debug)]
pub struct DueRunner {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl DueRunner {
    /// Whether the background thread is running (false if it could not be started).
    #[must_use]
    pub fn is_running(&self) -> bool {
        self.thread.as_ref().is_some_and(|t| !t.is_finished())
    }

    /// Stops the loop and waits for it to end.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            // A panic in the loop already ended it; nothing more to do.
            let _ = thread.join();
        }
    }
}

impl Drop for DueRunner {
    fn drop(&mut self) {
        self.shutdown();
    }
}
