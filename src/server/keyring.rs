//! The credentials a running server accepts, replaceable while it serves (`keylife serve`
//! reloads its credentials file on SIGHUP).

use std::fmt;
use std::sync::{Arc, PoisonError, RwLock};

use super::auth::Credentials;

/// The current [`Credentials`] of a server. A request takes the set current when it arrives
/// ([`Keyring::current`]) and is checked against it to the end, even if the set is replaced
/// meanwhile ([`Keyring::replace`]).
pub struct Keyring {
    current: RwLock<Arc<Credentials>>,
}

impl Keyring {
    /// A keyring holding `credentials`.
    #[must_use]
    pub fn new(credentials: Credentials) -> Keyring {
        Keyring {
            current: RwLock::new(Arc::new(credentials)),
        }
    }

    /// The credentials in force now.
    #[must_use]
    pub fn current(&self) -> Arc<Credentials> {
        // A panic while the lock was held cannot leave a half-written `Arc`: the value is
        // whole either way.
        Arc::clone(&self.current.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Puts `credentials` in force for the requests that arrive from now on. The old set is
    /// dropped (its secrets wiped) when the last request that took it ends.
    pub fn replace(&self, credentials: Credentials) {
        let new = Arc::new(credentials);
        let old = std::mem::replace(
            &mut *self.current.write().unwrap_or_else(PoisonError::into_inner),
            new,
        );
        // Dropped after the lock is released.
        drop(old);
    }
}

impl From<Credentials> for Keyring {
    fn from(credentials: Credentials) -> Keyring {
        Keyring::new(credentials)
    }
}

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Keyring").field(&self.current()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replaced_set_is_current_and_a_taken_one_stays_whole() {
        let keyring = Keyring::new(Credentials::new().with("EXOold", "a"));
        let taken = keyring.current();
        keyring.replace(Credentials::new().with("EXOnew", "b").with("EXOother", "c"));
        assert_eq!(keyring.current().len(), 2);
        assert!(format!("{keyring:?}").contains("EXOnew"));
        // The request that took the old set still checks against it.
        assert_eq!(taken.len(), 1);
        assert!(format!("{taken:?}").contains("EXOold"));
    }
}
