//! The background loop that runs what is due ([`Kms::run_due`]).

use std::panic::{self, AssertUnwindSafe};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use super::Kms;
use super::report::DueReport;
use crate::core::Error;

/// What one run of [`Kms::run_due`] by a [`DueRunner`] did.
#[derive(Debug)]
pub enum DueRun {
    /// It ran: what it did, or why it could not run.
    Ran(Result<DueReport, Error>),
    /// It panicked (a bug of keylife or of a link), with the panic's message if it had one.
    Panicked(String),
}

impl DueRun {
    /// Runs `kms.run_due()`, catching a panic. The `Kms` stays usable after one: its locks
    /// guard no data of their own, and a change is either committed whole or not at all.
    pub fn of(kms: &Kms) -> DueRun {
        match panic::catch_unwind(AssertUnwindSafe(|| kms.run_due())) {
            Ok(result) => DueRun::Ran(result),
            Err(payload) => DueRun::Panicked(
                payload
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| payload.downcast_ref::<String>().cloned())
                    .unwrap_or_default(),
            ),
        }
    }
}

/// Runs [`Kms::run_due`] in the background: every `every`, on a thread of its own holding a
/// handle on the zone (so the store stays open), until the runner is stopped or dropped. This
/// is the loop `keylife serve` runs for each zone.
///
/// ```
/// use std::sync::mpsc;
/// use std::time::Duration;
/// use keylife::{CreateKey, DueRun, DueRunner, Kms, KmsOptions, ManualClock, RootKey};
///
/// # fn main() -> Result<(), keylife::Error> {
/// let clock = ManualClock::new("2026-01-01T00:00:00Z".parse().unwrap());
/// let kms = Kms::open_in_memory(RootKey::generate()?, KmsOptions::new("z").clock(clock.clone()))?;
/// let key = kms.create_key(&CreateKey::new("k"))?;
/// kms.schedule_key_deletion(key.id, Some(7), None)?;
/// clock.advance_days(7);
/// let (reports, received) = mpsc::channel();
/// let runner = DueRunner::start_with(&kms, Duration::from_millis(10), move |run| {
///     let _ = reports.send(run);
/// });
/// let DueRun::Ran(report) = received.recv().unwrap() else { panic!("run_due panicked") };
/// let report = report?;
/// assert_eq!(report.deleted, vec![key.id]);
/// runner.stop();
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct DueRunner {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl DueRunner {
    /// Runs `kms.run_due()` every `every`, dropping its reports, errors and panics; use
    /// [`DueRunner::start_with`] to see them.
    pub fn start(kms: &Kms, every: Duration) -> DueRunner {
        DueRunner::start_with(kms, every, |_| {})
    }

    /// Runs `kms.run_due()` every `every` (the first run `every` after the start), handing
    /// what each run did to `on_run`, on the runner's thread. A run that panics (a bug) is
    /// reported as [`DueRun::Panicked`], and the loop goes on.
    pub fn start_with(
        kms: &Kms,
        every: Duration,
        mut on_run: impl FnMut(DueRun) + Send + 'static,
    ) -> DueRunner {
        let (stop, stopped) = mpsc::channel::<()>();
        let kms = kms.clone();
        let thread = thread::Builder::new()
            .name("keylife-due".to_owned())
            .spawn(move || {
                while let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(every) {
                    on_run(DueRun::of(&kms));
                }
            });
        DueRunner {
            stop: Some(stop),
            thread: thread.ok(),
        }
    }

    /// Whether the background thread is running (false if it could not be started).
    #[must_use]
    pub fn is_running(&self) -> bool {
        self.thread.as_ref().is_some_and(|t| !t.is_finished())
    }

    /// Stops the loop after the run in progress, if any, and waits for the thread.
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
