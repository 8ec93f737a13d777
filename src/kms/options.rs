//! How a [`Kms`](crate::Kms) is opened: its zone, clock, limits and link.

use std::fmt;
use std::sync::Arc;

use super::audit::AuditSink;
use super::clock::{Clock, SystemClock};
use super::link::Link;
use crate::core::Error;
use crate::core::limits::{
    DEFAULT_KEY_QUOTA, DEFAULT_MAX_CONTEXT_BYTES, DEFAULT_MAX_PLAINTEXT_BYTES,
    ENCRYPTIONS_PER_VERSION, MAX_ENCRYPTIONS_PER_VERSION,
};
use crate::store::Engine;

/// Encryptions reserved durably at a time under one material version: encrypt writes to the
/// store once per this many encryptions (and once after each open), never otherwise.
pub const RESERVATION_BLOCK: u64 = 1 << 20;

/// Bounds a `Kms` enforces that are options rather than contract constants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Keys the zone may own, replicas not counted. Default 1000.
    pub key_quota: usize,
    /// Largest plaintext of encrypt, in bytes. Default 4 MiB.
    pub max_plaintext_bytes: usize,
    /// Largest encryption context, in bytes. Default 8 KiB.
    pub max_context_bytes: usize,
    /// Encryptions under one material version before keylife rotates the key by itself:
    /// 1 to 2^32. Default 2^32 (see docs/design.md, "Nonce budget"); lower it to test.
    pub max_encryptions_per_version: u64,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            key_quota: DEFAULT_KEY_QUOTA,
            max_plaintext_bytes: DEFAULT_MAX_PLAINTEXT_BYTES,
            max_context_bytes: DEFAULT_MAX_CONTEXT_BYTES,
            max_encryptions_per_version: MAX_ENCRYPTIONS_PER_VERSION,
        }
    }
}

impl Limits {
    /// Checks the limits that have a range (`max-encryptions-per-version`).
    pub fn check(&self) -> Result<(), Error> {
        ENCRYPTIONS_PER_VERSION
            .check(self.max_encryptions_per_version)
            .map(drop)
    }

    /// Encryptions reserved at a time under one version: [`RESERVATION_BLOCK`], or the whole
    /// budget when it is smaller.
    #[must_use]
    pub fn reservation_block(&self) -> u64 {
        RESERVATION_BLOCK.min(self.max_encryptions_per_version)
    }

    /// Checks the length of `value`, the field `field`, against `max` bytes.
    pub(crate) fn check_len(field: &'static str, value: &[u8], max: usize) -> Result<(), Error> {
        if value.len() <= max {
            Ok(())
        } else {
            Err(Error::BadRequest {
                field,
                reason: format!("must be at most {max} bytes, got {}", value.len()),
            })
        }
    }
}

/// How to open a [`Kms`](crate::Kms).
#[derive(Clone)]
pub struct KmsOptions {
    /// The zone this `Kms` serves: the origin zone of the keys it creates. Default `local`.
    pub zone: String,
    /// Where the time comes from. Default [`SystemClock`].
    pub clock: Arc<dyn Clock>,
    /// Quota and size limits.
    pub limits: Limits,
    /// How updates reach the replicas of this zone's keys, and which zones exist. Default
    /// none: keys cannot be replicated.
    pub link: Option<Arc<dyn Link>>,
    /// The engine [`Kms::open`](crate::Kms::open) creates a new store with; `None` (the
    /// default): sled. An existing store opens with the engine it was created with, and one
    /// asked for explicitly that differs is an error.
    pub engine: Option<Engine>,
    /// Receives one [`AuditEvent`](crate::AuditEvent) per call of every handle on the zone.
    /// Default none: no event is made.
    pub audit: Option<AuditSink>,
}

impl KmsOptions {
    /// Options for zone `zone`, every other option at its default.
    #[must_use]
    pub fn new(zone: impl Into<String>) -> KmsOptions {
        KmsOptions {
            zone: zone.into(),
            ..KmsOptions::default()
        }
    }

    /// Uses `clock` (for example a [`ManualClock`](crate::ManualClock)).
    #[must_use]
    pub fn clock(mut self, clock: impl Clock + 'static) -> KmsOptions {
        self.clock = Arc::new(clock);
        self
    }

    /// Uses `limits`.
    #[must_use]
    pub fn limits(mut self, limits: Limits) -> KmsOptions {
        self.limits = limits;
        self
    }

    /// Reaches other zones through `link` (for example a [`LocalLink`](crate::LocalLink)).
    #[must_use]
    pub fn link(mut self, link: Arc<dyn Link>) -> KmsOptions {
        self.link = Some(link);
        self
    }

    /// Creates a new store with `engine` (an existing store must have been created with it).
    #[must_use]
    pub fn engine(mut self, engine: Engine) -> KmsOptions {
        self.engine = Some(engine);
        self
    }

    /// Sends one [`AuditEvent`](crate::AuditEvent) per call of every handle on the zone to
    /// `sink`, on the caller's thread, after the call and before it returns.
    #[must_use]
    pub fn audit(mut self, sink: AuditSink) -> KmsOptions {
        self.audit = Some(sink);
        self
    }

    /// Checks the options: a zone name, limits in range.
    pub(crate) fn check(&self) -> Result<(), Error> {
        if self.zone.is_empty() {
            return Err(Error::BadRequest {
                field: "zone",
                reason: "must not be empty".to_owned(),
            });
        }
        self.limits.check()
    }
}

impl Default for KmsOptions {
    fn default() -> KmsOptions {
        KmsOptions {
            zone: "local".to_owned(),
            clock: Arc::new(SystemClock),
            limits: Limits::default(),
            link: None,
            engine: None,
            audit: None,
        }
    }
}

impl fmt::Debug for KmsOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KmsOptions")
            .field("zone", &self.zone)
            .field("clock", &self.clock)
            .field("limits", &self.limits)
            .field("link", &self.link)
            .field("engine", &self.engine)
            .field("audit", &self.audit)
            .finish()
    }
}
