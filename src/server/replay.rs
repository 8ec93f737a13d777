//! Refusing replays (`keylife serve --refuse-replays`): the signatures already used for a
//! state-changing request, each kept until it expires, shared by every zone of the process.
//!
//! Exoscale's signature has no nonce: it covers the method, the path, the body, the signed
//! query values and `expires`, a UNIX time in seconds. Two identical calls signed in the same
//! second carry the same signature, so a refused replay may be an honest retry: the answer
//! says to sign again after the next second.

use std::collections::HashMap;
use std::sync::Mutex;

/// The signatures used for state-changing requests that are still valid.
#[derive(Debug, Default)]
pub(crate) struct ReplayCache {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// Signature → its `expires`.
    used: HashMap<Vec<u8>, i64>,
    /// When the expired entries were last dropped (UNIX seconds).
    pruned_at: i64,
}

impl ReplayCache {
    /// Records `signature` (valid until `expires`) as used at `now`; `false` if it was
    /// already used and has not expired. Entries are dropped once they expire, so the cache
    /// holds at most the signatures of the last validity window.
    pub(crate) fn first_use(&self, signature: &[u8], expires: i64, now: i64) -> bool {
        let mut inner = self
            .inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if now > inner.pruned_at {
            inner.used.retain(|_, until| *until >= now);
            inner.pruned_at = now;
        }
        match inner.used.get(signature) {
            Some(until) if *until >= now => false,
            _ => {
                inner.used.insert(signature.to_vec(), expires);
                true
            }
        }
    }

    /// How many signatures are held.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .used
            .len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_is_used_once_while_valid() {
        let cache = ReplayCache::default();
        assert!(cache.first_use(b"sig-a", 1010, 1000));
        assert!(!cache.first_use(b"sig-a", 1010, 1000));
        assert!(
            !cache.first_use(b"sig-a", 1010, 1010),
            "valid through its expiry second"
        );
        assert!(cache.first_use(b"sig-b", 1010, 1000));
        // Expired entries go: the cache is bounded by the validity window.
        assert!(cache.first_use(b"sig-c", 1030, 1011));
        assert_eq!(cache.len(), 1, "sig-a and sig-b expired at 1010");
    }
}
