//! Audit events: one [`AuditEvent`] per call of a [`Kms`](crate::Kms) handle, sent to the
//! [`AuditSink`]s of the zone ([`KmsOptions::audit`](crate::KmsOptions::audit)) and of the
//! handle ([`Kms::with_audit`](crate::Kms::with_audit)); and the head of an audit chain
//! recorded in the store ([`AuditHead`]).
//!
//! An event holds what a call was, never what it carried: no plaintext, ciphertext, context,
//! data key or material can be put in one, since no field has a type that could hold them.

use std::fmt;
use std::sync::Arc;

use jiff::Timestamp;

use super::caller::Operation;
use crate::core::KeyId;

/// The outcome of a call that succeeded; a refused call has its error's
/// [`Error::code`](crate::Error::code).
pub const OUTCOME_OK: &str = "ok";

/// What one call of a [`Kms`](crate::Kms) handle did, as an audit log records it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct AuditEvent {
    /// When the call ended, by the zone's clock.
    pub time: Timestamp,
    /// The zone of the handle.
    pub zone: String,
    /// The operation.
    pub operation: Operation,
    /// The key the call named (for create-kms-key: the key made, if it was); `None` for the
    /// calls on the zone as a whole (list-kms-keys, run-due, sync).
    pub key: Option<KeyId>,
    /// re-encrypt's destination key; `None` for every other operation.
    pub destination: Option<KeyId>,
    /// [`OUTCOME_OK`], or the code of the error the call returned.
    pub outcome: &'static str,
    /// The key's `revision.seq` after the call, when the call knew it without an extra read:
    /// the changes, create, get and list-rotations (for receive-update, the origin revision
    /// the replica holds). `None` for refused calls, the cryptographic operations and the
    /// calls on the zone.
    pub revision: Option<u64>,
    /// The actor of the handle's [`Caller`](crate::Caller), if named.
    pub actor: Option<String>,
}

impl AuditEvent {
    /// Whether the call succeeded.
    #[must_use]
    pub fn is_ok(&self) -> bool {
        self.outcome == OUTCOME_OK
    }
}

type SinkFn = dyn Fn(&AuditEvent) + Send + Sync;

/// Where audit events go: a function called on the caller's thread once per call, after the
/// call is done and before it returns. It should be quick (copy what it needs and return);
/// a panic in it is the caller's.
#[derive(Clone)]
pub struct AuditSink(Arc<SinkFn>);

impl AuditSink {
    /// A sink that calls `send` with each event.
    pub fn new(send: impl Fn(&AuditEvent) + Send + Sync + 'static) -> AuditSink {
        AuditSink(Arc::new(send))
    }

    /// Sends `event` to the sink.
    pub fn send(&self, event: &AuditEvent) {
        (self.0)(event);
    }

    /// A sink that sends each event to `self`, then to `then`.
    #[must_use]
    pub(super) fn and(&self, then: AuditSink) -> AuditSink {
        let first = Arc::clone(&self.0);
        AuditSink::new(move |event| {
            first(event);
            then.send(event);
        })
    }
}

impl fmt::Debug for AuditSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AuditSink(..)")
    }
}

/// The head of an audit chain as recorded in a zone's store: the number of its last line and
/// that line's MAC. An audit log that ends before it was cut off.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct AuditHead {
    /// The line number (from 1).
    pub seq: u64,
    /// The line's MAC (HMAC-SHA256).
    pub mac: [u8; 32],
}

impl fmt::Debug for AuditHead {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AuditHead {{ seq: {}, mac: ", self.seq)?;
        for byte in &self.mac[..4] {
            write!(f, "{byte:02x}")?;
        }
        f.write_str("… }")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_debug_shows_a_prefix_of_the_mac() {
        let head = AuditHead {
            seq: 7,
            mac: [9; 32],
        };
        assert_eq!(format!("{head:?}"), "AuditHead { seq: 7, mac: 09090909… }");
    }

    #[test]
    fn sinks_chain_in_order() {
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (a, b) = (Arc::clone(&seen), Arc::clone(&seen));
        let sink = AuditSink::new(move |_| a.lock().unwrap().push(1))
            .and(AuditSink::new(move |_| b.lock().unwrap().push(2)));
        sink.send(&AuditEvent {
            time: Timestamp::UNIX_EPOCH,
            zone: "z".to_owned(),
            operation: Operation::Sync,
            key: None,
            destination: None,
            outcome: OUTCOME_OK,
            revision: None,
            actor: None,
        });
        assert_eq!(*seen.lock().unwrap(), vec![1, 2]);
        assert_eq!(format!("{sink:?}"), "AuditSink(..)");
    }
}
