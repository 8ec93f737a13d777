//! Who makes a call, and what they may do: the per-call context of a [`Kms`](crate::Kms)
//! handle ([`Kms::as_caller`](crate::Kms::as_caller)).
//!
//! A [`Caller`] names an actor (for an audit log) and may carry a check that sees each call
//! ([`Access`]: the operation, the zone, and the key with its name) before anything is done. A
//! refused call is [`Error::Forbidden`], whether the key exists or not, and changes nothing.

use std::fmt;
use std::sync::Arc;

use crate::core::{Command, Error, KeyId};

/// The operations a caller's check is asked about: the 16 of the API, the two a zone's link
/// calls on the receiving side, and the two that run what waits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Operation {
    /// create-kms-key.
    CreateKey,
    /// list-kms-keys.
    ListKeys,
    /// get-kms-key.
    GetKey,
    /// list-kms-key-rotations.
    ListKeyRotations,
    /// enable-kms-key.
    EnableKey,
    /// disable-kms-key.
    DisableKey,
    /// schedule-kms-key-deletion.
    ScheduleKeyDeletion,
    /// cancel-kms-key-deletion.
    CancelKeyDeletion,
    /// rotate-kms-key.
    RotateKey,
    /// enable-kms-key-rotation.
    EnableKeyRotation,
    /// disable-kms-key-rotation.
    DisableKeyRotation,
    /// replicate-kms-key.
    ReplicateKey,
    /// encrypt.
    Encrypt,
    /// decrypt.
    Decrypt,
    /// re-encrypt: asked once for the source key and once for the destination key.
    ReEncrypt,
    /// generate-data-key.
    GenerateDataKey,
    /// A replication update from the key's origin zone ([`Kms::receive`](crate::Kms::receive)).
    ReceiveUpdate,
    /// A replica's request for a new version ([`Kms::retire_version`](crate::Kms::retire_version)).
    RetireVersion,
    /// [`Kms::run_due`](crate::Kms::run_due): due rotations, deletions and retries.
    RunDue,
    /// [`Kms::sync`](crate::Kms::sync): every waiting delivery, now.
    Sync,
    /// [`Kms::backup`](crate::Kms::backup): an image of the whole zone (sealed material
    /// included).
    Backup,
    /// [`Kms::import_keys`](crate::Kms::import_keys): keys brought in with fixed ids and
    /// their material (keylife's, not an operation of the API; asked once per key, as
    /// [`Target::NewKey`] with its name).
    ImportKey,
}

impl Operation {
    /// The operation's name: the API's `operationId`, or `receive-update`, `retire-version`,
    /// `run-due`, `sync`, `backup`, `import-key`.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Operation::CreateKey => "create-kms-key",
            Operation::ListKeys => "list-kms-keys",
            Operation::GetKey => "get-kms-key",
            Operation::ListKeyRotations => "list-kms-key-rotations",
            Operation::EnableKey => "enable-kms-key",
            Operation::DisableKey => "disable-kms-key",
            Operation::ScheduleKeyDeletion => "schedule-kms-key-deletion",
            Operation::CancelKeyDeletion => "cancel-kms-key-deletion",
            Operation::RotateKey => "rotate-kms-key",
            Operation::EnableKeyRotation => "enable-kms-key-rotation",
            Operation::DisableKeyRotation => "disable-kms-key-rotation",
            Operation::ReplicateKey => "replicate-kms-key",
            Operation::Encrypt => "encrypt",
            Operation::Decrypt => "decrypt",
            Operation::ReEncrypt => "re-encrypt",
            Operation::GenerateDataKey => "generate-data-key",
            Operation::ReceiveUpdate => "receive-update",
            Operation::RetireVersion => "retire-version",
            Operation::RunDue => "run-due",
            Operation::Sync => "sync",
            Operation::Backup => "backup",
            Operation::ImportKey => "import-key",
        }
    }

    /// The operation a caller makes with `command`.
    pub(super) fn of(command: &Command) -> Operation {
        match command {
            Command::Enable => Operation::EnableKey,
            Command::Disable => Operation::DisableKey,
            Command::ScheduleDeletion { .. } => Operation::ScheduleKeyDeletion,
            Command::CancelDeletion => Operation::CancelKeyDeletion,
            Command::Rotate => Operation::RotateKey,
            Command::EnableRotation { .. } => Operation::EnableKeyRotation,
            Command::DisableRotation => Operation::DisableKeyRotation,
            Command::Replicate { .. } => Operation::ReplicateKey,
            Command::RetireExhausted { .. } => Operation::RetireVersion,
            Command::RunDue => Operation::RunDue,
        }
    }
}

/// What a call acts on, as the caller's check sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target<'a> {
    /// The zone as a whole (list-kms-keys, run-due, sync, backup).
    Zone,
    /// A key to be created with this name (create-kms-key).
    NewKey {
        /// The name asked for.
        name: &'a str,
    },
    /// An existing key, by the id the call gave.
    Key {
        /// The id.
        id: KeyId,
        /// The key's name; `None` when this zone holds no key with that id (the check
        /// decides as it would for a key it may not use, so that a refusal does not tell).
        name: Option<&'a str>,
    },
}

/// A call about to be made: what the caller's check sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Access<'a> {
    /// The operation.
    pub operation: Operation,
    /// The zone of the `Kms`.
    pub zone: &'a str,
    /// What it acts on.
    pub target: Target<'a>,
}

type Check = dyn Fn(&Access<'_>) -> bool + Send + Sync;

/// Who makes the calls of a [`Kms`](crate::Kms) handle and what they may do. The default is
/// anonymous and may do everything.
///
/// ```
/// use keylife::{Caller, CreateKey, Kms, KmsOptions, RootKey, Target};
///
/// # fn main() -> Result<(), keylife::Error> {
/// let kms = Kms::open_in_memory(RootKey::generate()?, KmsOptions::new("ch-gva-2"))?;
/// let app = kms.create_key(&CreateKey::new("app-orders"))?;
/// let other = kms.create_key(&CreateKey::new("billing"))?;
/// // A caller that may use only the keys whose names start with `app-`.
/// let restricted = kms.as_caller(Caller::new("svc-orders").permit(|access| {
///     matches!(access.target, Target::Key { name: Some(name), .. } if name.starts_with("app-"))
/// }));
/// assert!(restricted.encrypt(app.id, b"x", None).is_ok());
/// assert_eq!(restricted.encrypt(other.id, b"x", None).unwrap_err().code(), "permission-denied");
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Default)]
pub struct Caller {
    actor: Option<Arc<str>>,
    check: Option<Arc<Check>>,
}

impl Caller {
    /// A caller named `actor` (an API key, a user, a service), who may do everything.
    #[must_use]
    pub fn new(actor: impl Into<Arc<str>>) -> Caller {
        Caller {
            actor: Some(actor.into()),
            check: None,
        }
    }

    /// Calls are made only when `check` allows them; the others are [`Error::Forbidden`].
    /// `check` runs before anything else is looked at or changed, on the caller's thread.
    #[must_use]
    pub fn permit(mut self, check: impl Fn(&Access<'_>) -> bool + Send + Sync + 'static) -> Caller {
        self.check = Some(Arc::new(check));
        self
    }

    /// This caller, within what `outer` may do: calls pass both checks. A handle made from a
    /// restricted handle stays within its restriction.
    pub(super) fn within(self, outer: &Caller) -> Caller {
        let check = match (&outer.check, self.check) {
            (None, inner) => inner,
            (Some(outer), None) => Some(Arc::clone(outer)),
            (Some(outer), Some(inner)) => {
                let outer = Arc::clone(outer);
                let both: Arc<Check> =
                    Arc::new(move |access: &Access<'_>| outer(access) && inner(access));
                Some(both)
            }
        };
        Caller {
            actor: self.actor,
            check,
        }
    }

    /// The actor, if named.
    #[must_use]
    pub fn actor(&self) -> Option<&str> {
        self.actor.as_deref()
    }

    /// Whether the caller has a check: without one, no key needs to be looked up for it.
    #[inline]
    pub(super) fn is_restricted(&self) -> bool {
        self.check.is_some()
    }

    /// Runs the check on `access`: [`Error::Forbidden`] if it refuses.
    pub(super) fn admit(&self, access: &Access<'_>) -> Result<(), Error> {
        match &self.check {
            Some(check) if !check(access) => Err(Error::Forbidden {
                operation: access.operation.name(),
                id: match access.target {
                    Target::Key { id, .. } => Some(id),
                    Target::Zone | Target::NewKey { .. } => None,
                },
            }),
            _ => Ok(()),
        }
    }
}

impl fmt::Debug for Caller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Caller")
            .field("actor", &self.actor)
            .field("restricted", &self.check.is_some())
            .finish()
    }
}
