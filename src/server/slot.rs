//! What one request's handlers learn for its audit line ([`Slot`]): filled by the extractor
//! and by the request's `Kms` handle, read by the audit middleware (`audited.rs`).

use std::sync::{Arc, Mutex, PoisonError};

use crate::{AuditEvent, AuditSink};

/// What the request's handlers learn for its audit line.
#[derive(Clone, Default)]
pub(crate) struct Slot(Arc<Mutex<Learned>>);

/// What a [`Slot`] holds.
#[derive(Default)]
pub(crate) struct Learned {
    /// The API key that signed, or for a refused authentication the one the header named.
    pub(crate) actor: Option<String>,
    /// A refused authentication's reason class.
    pub(crate) auth: Option<&'static str>,
    /// The event of the request's call, if it made one.
    pub(crate) event: Option<AuditEvent>,
}

impl Slot {
    fn with<R>(&self, f: impl FnOnce(&mut Learned) -> R) -> R {
        f(&mut self.0.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// What was learned, leaving the slot empty.
    pub(crate) fn take(&self) -> Learned {
        self.with(std::mem::take)
    }

    /// The request was signed by `actor`.
    pub(crate) fn signed_by(&self, actor: &str) {
        self.with(|learned| learned.actor = Some(actor.to_owned()));
    }

    /// The request's authentication was refused: the key its header named (if it named one)
    /// and the reason class.
    pub(crate) fn refused(&self, claimed: Option<String>, reason: &'static str) {
        self.with(|learned| {
            learned.actor = claimed;
            learned.auth = Some(reason);
        });
    }

    /// A sink that keeps the event of the request's call (the last, if it made several).
    pub(crate) fn sink(&self) -> AuditSink {
        let slot = self.clone();
        AuditSink::new(move |event| slot.with(|learned| learned.event = Some(event.clone())))
    }
}
