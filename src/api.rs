//! The response types: what the `Kms` methods return, serializing with serde to exactly the
//! JSON of the Exoscale KMS API (kebab-case names, RFC 3339 UTC timestamps, base64 for the
//! fields the spec marks `format: byte`).

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use jiff::Timestamp;
use serde::{Serialize, Serializer};

use crate::core::{KeyId, KeyRecord, KeySource, KeyUsage, MaterialMeta, RotationConfig, Status};
use crate::crypto::SecretBytes;

fn base64<T: AsRef<[u8]>, S: Serializer>(bytes: &T, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&BASE64.encode(bytes.as_ref()))
}

/// `status` of a key in the API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum KeyStatus {
    /// `enabled`.
    Enabled,
    /// `disabled`.
    Disabled,
    /// `pending-deletion`.
    PendingDeletion,
}

impl From<Status> for KeyStatus {
    fn from(status: Status) -> KeyStatus {
        match status {
            Status::Enabled => KeyStatus::Enabled,
            Status::Disabled => KeyStatus::Disabled,
            Status::PendingDeletion { .. } => KeyStatus::PendingDeletion,
        }
    }
}

/// `revision-stamp`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct RevisionStamp {
    /// Grows by 1 with every change of the key.
    pub seq: u64,
    /// When that change happened.
    pub at: Timestamp,
}

/// `key-material`: the newest material version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct KeyMaterial {
    /// The version.
    pub version: u32,
    /// When it was made.
    pub created_at: Timestamp,
    /// Whether an automatic rotation made it.
    pub automatic: bool,
}

impl From<MaterialMeta> for KeyMaterial {
    fn from(m: MaterialMeta) -> KeyMaterial {
        KeyMaterial {
            version: m.version,
            created_at: m.created_at,
            automatic: m.automatic,
        }
    }
}

/// `key-rotation-config`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct KeyRotationConfig {
    /// Manual rotations so far.
    pub manual_count: u32,
    /// Whether automatic rotation is on.
    pub automatic: bool,
    /// Days between automatic rotations.
    pub rotation_period: u32,
    /// When the next automatic rotation is due.
    pub next_at: Timestamp,
}

impl From<RotationConfig> for KeyRotationConfig {
    fn from(r: RotationConfig) -> KeyRotationConfig {
        KeyRotationConfig {
            manual_count: r.manual_count,
            automatic: r.automatic,
            rotation_period: r.period_days,
            next_at: r.next_at,
        }
    }
}

/// `replica-failure`: the last failed delivery to a replica.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct ReplicaFailure {
    /// The origin revision the delivery tried to bring the replica to.
    pub attempted_watermark: u64,
    /// What went wrong.
    pub error: String,
    /// When.
    pub failed_at: Timestamp,
}

/// `replica-state`: how far a replica has followed its origin.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct ReplicaState {
    /// The replica's zone.
    pub zone: String,
    /// The origin's `revision.seq` the replica has applied.
    pub last_applied_watermark: u64,
    /// The last failed delivery, until one succeeds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_failure: Option<ReplicaFailure>,
}

/// `create-kms-key-response`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct CreatedKey {
    /// The new key's id.
    pub id: KeyId,
    /// Its name.
    pub name: String,
    /// Its description, if given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// `encrypt-decrypt`.
    pub usage: KeyUsage,
    /// `exoscale-kms`.
    pub source: KeySource,
    /// `enabled`.
    pub status: KeyStatus,
    /// When it entered that status.
    pub status_since: Timestamp,
    /// Whether it may be replicated.
    pub multi_zone: bool,
    /// This zone.
    pub origin_zone: String,
    /// When it was created.
    pub created_at: Timestamp,
    /// Its revision (1).
    pub revision: RevisionStamp,
}

impl From<&KeyRecord> for CreatedKey {
    fn from(record: &KeyRecord) -> CreatedKey {
        let summary = KeySummary::from(record);
        CreatedKey {
            id: summary.id,
            name: summary.name,
            description: summary.description,
            usage: summary.usage,
            source: summary.source,
            status: summary.status,
            status_since: summary.status_since,
            multi_zone: summary.multi_zone,
            origin_zone: summary.origin_zone,
            created_at: summary.created_at,
            revision: summary.revision,
        }
    }
}

/// `list-kms-keys-response-entry`: a key as list-kms-keys shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct KeySummary {
    /// The key's id.
    pub id: KeyId,
    /// Its name.
    pub name: String,
    /// Its description, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// `encrypt-decrypt`.
    pub usage: KeyUsage,
    /// `exoscale-kms`.
    pub source: KeySource,
    /// Its status.
    pub status: KeyStatus,
    /// When it entered its status.
    pub status_since: Timestamp,
    /// The newest material version.
    pub material: KeyMaterial,
    /// Rotation settings.
    pub rotation: KeyRotationConfig,
    /// Whether it may be replicated.
    pub multi_zone: bool,
    /// The zone where it was created.
    pub origin_zone: String,
    /// When it was created.
    pub created_at: Timestamp,
    /// Its revision.
    pub revision: RevisionStamp,
    /// When it will be destroyed; only while pending deletion.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delete_at: Option<Timestamp>,
    /// Zones holding a replica of it.
    pub replicas: Vec<String>,
}

impl From<&KeyRecord> for KeySummary {
    fn from(record: &KeyRecord) -> KeySummary {
        let revision = record.revision();
        KeySummary {
            id: record.id(),
            name: record.name().to_owned(),
            description: record.description().map(str::to_owned),
            usage: record.usage(),
            source: record.source(),
            status: record.status().into(),
            status_since: record.status_since(),
            material: record.newest_material().into(),
            rotation: record.rotation().into(),
            multi_zone: record.multi_zone(),
            origin_zone: record.origin_zone().to_owned(),
            created_at: record.created_at(),
            revision: RevisionStamp {
                seq: revision.seq,
                at: revision.at,
            },
            delete_at: record.status().delete_at(),
            replicas: record.replica_zones(),
        }
    }
}

/// `get-kms-key-response`: a key as get-kms-key shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct KeyDetails {
    /// Every field of the list entry.
    #[serde(flatten)]
    pub key: KeySummary,
    /// Delivery state of each replica.
    pub replicas_status: Vec<ReplicaState>,
    /// keylife's own field, not in the API's spec, present only for an imported key: how many
    /// of its first material versions (1 to this) were brought in rather than generated by
    /// keylife (AWS KMS's `Origin: EXTERNAL`). `source` stays `exoscale-kms`, its only value
    /// in the spec.
    #[serde(
        rename = "keylife-imported-versions",
        skip_serializing_if = "Option::is_none"
    )]
    pub imported_versions: Option<u32>,
}

impl From<&KeyRecord> for KeyDetails {
    fn from(record: &KeyRecord) -> KeyDetails {
        KeyDetails {
            key: KeySummary::from(record),
            replicas_status: Vec::new(),
            imported_versions: Some(record.imported_versions()).filter(|&n| n > 0),
        }
    }
}

/// `list-kms-keys-response`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct KeyList {
    /// The zone's keys (replicas included), in id order, which for keylife's version-7 ids is
    /// creation order.
    pub kms_keys: Vec<KeySummary>,
}

/// `success-response.status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SuccessStatus {
    /// The call changed the key.
    Success,
    /// The key was already in the asked state; nothing changed.
    AlreadyApplied,
    /// A replication target was registered.
    TargetRegistered,
}

/// `success-response`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct SuccessResponse {
    /// What happened.
    pub status: SuccessStatus,
}

/// `rotate-kms-key-response`, `enable-kms-key-rotation-response` and
/// `disable-kms-key-rotation-response`, which have the same shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct RotationResponse {
    /// The key's rotation settings after the call.
    pub rotation: KeyRotationConfig,
}

impl From<&KeyRecord> for RotationResponse {
    fn from(record: &KeyRecord) -> RotationResponse {
        RotationResponse {
            rotation: record.rotation().into(),
        }
    }
}

/// `schedule-kms-key-deletion-response`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct DeletionScheduled {
    /// When the key will be destroyed.
    pub delete_at: Timestamp,
}

impl TryFrom<&KeyRecord> for DeletionScheduled {
    type Error = crate::Error;

    /// The answer for a key pending deletion; `not-pending-deletion` for any other.
    fn try_from(record: &KeyRecord) -> Result<DeletionScheduled, crate::Error> {
        match record.status().delete_at() {
            Some(delete_at) => Ok(DeletionScheduled { delete_at }),
            None => Err(crate::Error::NotPendingDeletion { id: record.id() }),
        }
    }
}

/// `list-kms-key-rotations-response-entry`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct RotationEntry {
    /// The version the rotation made.
    pub version: u32,
    /// When.
    pub rotated_at: Timestamp,
    /// Whether it was automatic.
    pub automatic: bool,
}

/// `list-kms-key-rotations-response`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RotationList {
    /// Every rotation (versions 2 and up), oldest first.
    pub rotations: Vec<RotationEntry>,
}

impl From<&KeyRecord> for RotationList {
    fn from(record: &KeyRecord) -> RotationList {
        RotationList {
            rotations: record
                .materials()
                .iter()
                .skip(1)
                .map(|m| RotationEntry {
                    version: m.version,
                    rotated_at: m.created_at,
                    automatic: m.automatic,
                })
                .collect(),
        }
    }
}

/// `encrypt-response` and `re-encrypt-response`, which have the same shape.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Ciphertext {
    /// The ciphertext (format v1, see docs/design.md); base64 in JSON.
    #[serde(serialize_with = "base64")]
    pub ciphertext: Vec<u8>,
}

/// `decrypt-response`.
#[derive(Debug, PartialEq, Eq, Serialize)]
pub struct Plaintext {
    /// The plaintext, wiped when dropped; base64 in JSON.
    pub plaintext: SecretBytes,
}

/// `generate-data-key-response`.
#[derive(Debug, PartialEq, Eq, Serialize)]
pub struct DataKey {
    /// The data key in the clear, wiped when dropped; base64 in JSON.
    pub plaintext: SecretBytes,
    /// The same data key encrypted under the KMS key: decrypt gives `plaintext` back.
    #[serde(serialize_with = "base64")]
    pub ciphertext: Vec<u8>,
}
