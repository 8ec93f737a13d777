//! What goes into the core and what comes out of it.

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use super::error::Error;
use super::id::KeyId;
use super::limits::{self, DeletionDelay, RotationPeriod};
use super::record::{KeyRecord, KeyUsage};

/// The arguments of create-key, with the API's field names and defaults.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct CreateKey {
    /// The key's name: 1 to 256 characters, unique in the zone.
    pub name: String,
    /// An optional description of at most 1024 characters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// The key's usage; `encrypt-decrypt` is the only one and the default.
    #[serde(default)]
    pub usage: KeyUsage,
    /// Whether the key may be replicated to other zones. Only set at creation.
    #[serde(default)]
    pub multi_zone: bool,
}

impl CreateKey {
    /// A request for a key named `name`, every other field at its default.
    #[must_use]
    pub fn new(name: impl Into<String>) -> CreateKey {
        CreateKey {
            name: name.into(),
            ..CreateKey::default()
        }
    }

    /// Sets the description.
    #[must_use]
    pub fn description(mut self, description: impl Into<String>) -> CreateKey {
        self.description = Some(description.into());
        self
    }

    /// Checks the arguments alone: the name's and the description's lengths.
    pub fn validate(&self) -> Result<(), Error> {
        limits::check_name(&self.name)?;
        if let Some(description) = &self.description {
            limits::check_description(description)?;
        }
        Ok(())
    }

    /// Makes the key multi-zone (replicable).
    #[must_use]
    pub fn multi_zone(mut self, multi_zone: bool) -> CreateKey {
        self.multi_zone = multi_zone;
        self
    }
}

/// What the shell knows about the zone when a key is created: the core needs it to apply the
/// name and quota rules, and does not look it up itself.
#[derive(Debug, Clone, Copy)]
pub struct CreateContext<'a> {
    /// The new key's id (chosen by the shell).
    pub id: KeyId,
    /// This zone's name: the new key's origin zone.
    pub zone: &'a str,
    /// The time of creation.
    pub now: Timestamp,
    /// Keys this zone already owns (replicas not counted).
    pub origin_keys: usize,
    /// The most keys this zone may own.
    pub quota: usize,
    /// Whether a key of this zone (replicas included) already has the requested name.
    pub name_taken: bool,
}

/// A change asked of an existing key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// enable-kms-key.
    Enable,
    /// disable-kms-key.
    Disable,
    /// schedule-kms-key-deletion.
    ScheduleDeletion {
        /// Days until the key is destroyed.
        delay: DeletionDelay,
    },
    /// cancel-kms-key-deletion.
    CancelDeletion,
    /// rotate-kms-key: a manual rotation.
    Rotate,
    /// enable-kms-key-rotation.
    EnableRotation {
        /// Days between automatic rotations.
        period: RotationPeriod,
    },
    /// disable-kms-key-rotation.
    DisableRotation,
    /// replicate-kms-key: add a replica in `zone`.
    Replicate {
        /// The target zone.
        zone: String,
        /// Whether the shell can reach a zone of that name (its link knows it).
        known: bool,
    },
    /// Do what is due at `now`: the automatic rotation or the final deletion.
    RunDue,
    /// The newest material `version` has used its encryption budget: make a new version
    /// (recorded as automatic) unless that already happened.
    RetireExhausted {
        /// The version whose budget is spent.
        version: u32,
    },
}

impl Command {
    /// The operation's name in the API, for messages.
    #[must_use]
    pub const fn name(&self) -> &'static str {
        match self {
            Command::Enable => "enable",
            Command::Disable => "disable",
            Command::ScheduleDeletion { .. } => "schedule-deletion",
            Command::CancelDeletion => "cancel-deletion",
            Command::Rotate => "rotate",
            Command::EnableRotation { .. } => "enable-key-rotation",
            Command::DisableRotation => "disable-key-rotation",
            Command::Replicate { .. } => "replicate",
            Command::RunDue => "run-due",
            Command::RetireExhausted { .. } => "retire-exhausted-version",
        }
    }
}

/// What a command did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transition {
    /// Nothing changed, not even the revision: the key was already in the asked state
    /// (`already-applied`), or nothing was due.
    Unchanged,
    /// The key changed: `record` is the new record, its revision one higher.
    Changed {
        /// The new record.
        record: Box<KeyRecord>,
        /// What changed.
        event: Event,
    },
    /// The key's deletion was due: the key and all its material must be destroyed.
    Deleted,
}

/// What changed in a [`Transition::Changed`]. Replication carries these to replicas.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// The key became enabled.
    Enabled,
    /// The key became disabled.
    Disabled,
    /// The key became pending deletion.
    DeletionScheduled {
        /// When it will be destroyed.
        delete_at: Timestamp,
    },
    /// The deletion was cancelled; the key is disabled.
    DeletionCancelled,
    /// A new material version exists in the record: the shell must generate its material.
    Rotated {
        /// The new version.
        version: u32,
        /// True for automatic rotations (due, or for a spent encryption budget).
        automatic: bool,
    },
    /// Automatic rotation was turned on.
    RotationEnabled,
    /// Automatic rotation was turned off.
    RotationDisabled,
    /// A replica zone was added.
    ReplicaAdded,
}
