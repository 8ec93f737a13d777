//! Time, as the `Kms` sees it.

use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};

use jiff::{SignedDuration, Timestamp};

/// Where a `Kms` reads the time. The default is [`SystemClock`]; tests (keylife's and yours)
/// use [`ManualClock`] to make rotations and deletions due without waiting.
pub trait Clock: Send + Sync + fmt::Debug {
    /// The current time.
    fn now(&self) -> Timestamp;
}

/// The operating system's clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        Timestamp::now()
    }
}

/// A clock that moves only when told. Clones share the same time, so a test keeps one clone
/// and gives another to the `Kms`.
///
/// ```
/// use keylife::ManualClock;
/// use jiff::Timestamp;
///
/// let clock = ManualClock::new("2026-01-01T00:00:00Z".parse::<Timestamp>().unwrap());
/// let kms_view = clock.clone();
/// clock.advance_days(31);
/// assert_eq!(keylife::Clock::now(&kms_view).to_string(), "2026-02-01T00:00:00Z");
/// ```
#[derive(Clone)]
pub struct ManualClock(Arc<Mutex<Timestamp>>);

impl ManualClock {
    /// A clock showing `start`.
    #[must_use]
    pub fn new(start: Timestamp) -> ManualClock {
        ManualClock(Arc::new(Mutex::new(start)))
    }

    /// Sets the time (it may go backwards).
    pub fn set(&self, now: Timestamp) {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = now;
    }

    /// Moves the time by `by` (negative moves it back). Saturates at the ends of the
    /// representable range.
    pub fn advance(&self, by: SignedDuration) {
        let mut now = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        *now = now.saturating_add(by).unwrap_or(*now);
    }

    /// Moves the time forward by whole days.
    pub fn advance_days(&self, days: u32) {
        self.advance(SignedDuration::from_hours(i64::from(days) * 24));
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl fmt::Debug for ManualClock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ManualClock({})", self.now())
    }
}
