//! The background loop that runs what is due ([`Kms::run_due`]).

use std::sync::Arc;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use super::Kms;
use super::report::DueReport;
use crate::core::Error;

/// Runs [`Kms::run_due`] in the background: every `every`, on a thread of its own, until the
/// runner is stopped or dropped. This is the loop `keylife serve` runs for each zone.
///
/// ```
/// use std::sync::{Arc, mpsc};
/// use std::time::Duration;
/// use keylife::{CreateKey, DueRunner, Kms, KmsOptions, ManualClock, RootKey};
///
/// # fn main() -> Result<(), keylife::Error> {
/// let clock = ManualClock::new("2026-01-01T00:00:00Z".parse().unwrap());
/// let kms = Arc::new(Kms::open_in_memory(RootKey::generate()?, KmsOptions::new("z").clock(clock.clone()))?);
/// let key = kms.create_key(&CreateKey::new("k"))?;
/// kms.schedule_key_deletion(key.id, Some(7), None)?;
/// clock.advance_days(7);
/// let (reports, received) = mpsc::channel();
/// let runner = DueRunner::start_with(&kms, Duration::from_millis(10), move |run| {
///     let _ = reports.send(run);
/// });
/// let report = received.recv().unwrap()?;
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
    /// Runs `kms.run_due()` every `every`, dropping its reports and errors; use
    /// [`DueRunner::start_with`] to see them.
    pub fn start(kms: &Arc<Kms>, every: Duration) -> DueRunner {
        DueRunner::start_with(kms, every, |_| {})
    }

    /// Runs `kms.run_due()` every `every` (the first run `every` after the start), handing
    /// each run's result to `on_run`, on the runner's thread.
    pub fn start_with(
        kms: &Arc<Kms>,
        every: Duration,
        mut on_run: impl FnMut(Result<DueReport, Error>) + Send + 'static,
    ) -> DueRunner {
        let (stop, stopped) = mpsc::channel::<()>();
        let kms = Arc::clone(kms);
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
