//! [`Kms::health`]: whether a zone can serve, for a health check that must cost nothing.

use super::Kms;
use crate::Result;
use crate::core::Error;

impl Kms {
    /// Whether this zone can serve: no change has failed to become durable (after one, every
    /// call is refused with `not-durable` until the store is reopened) and the store answers
    /// a read of its header. It writes nothing (a write would cost a sync) and is not asked of
    /// the caller's check: it tells nothing about any key. A disk that became read-only since
    /// the last change is seen at the next change, not here.
    pub fn health(&self) -> Result<()> {
        self.zone.shared.live()?;
        match self.zone.shared.store().header()? {
            Some(_) => Ok(()),
            None => Err(Error::Corrupt {
                record: "store header".to_owned(),
                detail: "the store has no header".to_owned(),
            }),
        }
    }
}
