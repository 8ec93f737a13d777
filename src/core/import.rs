//! Keys brought in from outside with a fixed id and their material versions given (bring your
//! own key, and seed files): the record of such a key, and what a key already present must
//! have for the same import to leave it alone.
//!
//! The material itself never reaches the core: the shell seals it, and compares it with what a
//! key already present holds. The core decides from times and metadata only.

use jiff::Timestamp;

use super::error::{ConflictReason, Error};
use super::id::KeyId;
use super::limits::{self, MAX_IMPORTED_VERSIONS, RotationPeriod};
use super::record::{
    KeyRecord, KeySource, KeyUsage, MaterialMeta, Revision, Role, RotationConfig, Status,
};
use super::transition::add_days;

/// The status an imported key starts in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum ImportStatus {
    /// Usable at once (the default).
    #[default]
    Enabled,
    /// Refuses cryptographic operations until enabled.
    Disabled,
}

/// The rotation settings an imported key starts with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ImportRotation {
    /// Whether the key rotates itself every `period`.
    pub automatic: bool,
    /// Days between automatic rotations.
    pub period: RotationPeriod,
}

impl Default for ImportRotation {
    /// As a created key: automatic, every 365 days.
    fn default() -> ImportRotation {
        ImportRotation {
            automatic: true,
            period: RotationPeriod::default(),
        }
    }
}

/// One imported material version, without its material: when it was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct ImportVersion {
    /// For version 1, when the key was created; for a later version, when the (automatic)
    /// rotation that made it happened. `None`: see [`ImportKey::times`].
    pub at: Option<Timestamp>,
}

/// A key to import, without its material: a fixed id, its metadata, and one entry per
/// material version (version 1 first).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportKey {
    /// The key's id: any UUID but the nil one, chosen by the importer.
    pub id: KeyId,
    /// The key's name: 1 to 256 characters, unique in the zone.
    pub name: String,
    /// An optional description of at most 1024 characters.
    pub description: Option<String>,
    /// Whether the key may be replicated to other zones.
    pub multi_zone: bool,
    /// The status it starts in.
    pub status: ImportStatus,
    /// The rotation settings it starts with.
    pub rotation: ImportRotation,
    /// Its material versions, version 1 first: 1 to [`MAX_IMPORTED_VERSIONS`].
    pub versions: Vec<ImportVersion>,
}

impl ImportKey {
    /// An import of key `id` named `name` with `versions` material versions, every other field
    /// at its default (enabled, automatic rotation every 365 days, no times given).
    #[must_use]
    pub fn new(id: KeyId, name: impl Into<String>, versions: usize) -> ImportKey {
        ImportKey {
            id,
            name: name.into(),
            description: None,
            multi_zone: false,
            status: ImportStatus::Enabled,
            rotation: ImportRotation::default(),
            versions: vec![ImportVersion::default(); versions],
        }
    }

    /// Checks the arguments alone: the id, the name's and the description's lengths, the
    /// number of versions, and their times ([`ImportKey::times`]).
    pub fn validate(&self, now: Timestamp) -> Result<(), Error> {
        if self.id.as_uuid().is_nil() {
            return Err(Error::BadRequest {
                field: "id",
                reason: "must not be the nil UUID".to_owned(),
            });
        }
        limits::check_name(&self.name)?;
        if let Some(description) = &self.description {
            limits::check_description(description)?;
        }
        limits::IMPORTED_VERSIONS.check(u64::try_from(self.versions.len()).unwrap_or(u64::MAX))?;
        self.times(now).map(drop)
    }

    /// When each version was made, version 1 first. A version without a time was made `now`,
    /// except version 1, which defaults to the first time given (else `now`): a key seeded
    /// with a past rotation was created no later than it. Times must not be after `now` and
    /// must not go back from one version to the next (bad request on `versions`, naming the
    /// version).
    pub fn times(&self, now: Timestamp) -> Result<Vec<Timestamp>, Error> {
        let first = self
            .versions
            .iter()
            .find_map(|version| version.at)
            .map_or(now, |at| at.min(now));
        let mut times = Vec::with_capacity(self.versions.len());
        for (index, version) in self.versions.iter().enumerate() {
            let number = index + 1;
            let field_name = if number == 1 {
                "created-at"
            } else {
                "rotated-at"
            };
            let at = match (index, version.at) {
                (_, Some(at)) => at,
                (0, None) => first,
                (_, None) => now,
            };
            if at > now {
                return Err(Error::BadRequest {
                    field: "versions",
                    reason: format!("version {number}'s {field_name} {at} is after now ({now})"),
                });
            }
            if let Some(&previous) = times.last()
                && at < previous
            {
                return Err(Error::BadRequest {
                    field: "versions",
                    reason: format!(
                        "version {number}'s {field_name} {at} is before version {index}'s time \
                         {previous}: versions go in the order they were made"
                    ),
                });
            }
            times.push(at);
        }
        Ok(times)
    }
}

/// What the shell knows about the zone when a key is imported.
#[derive(Debug, Clone, Copy)]
pub struct ImportContext<'a> {
    /// This zone's name: the key's origin zone.
    pub zone: &'a str,
    /// The time of the import.
    pub now: Timestamp,
    /// Keys this zone already owns (replicas not counted).
    pub origin_keys: usize,
    /// The most keys this zone may own.
    pub quota: usize,
    /// Whether a key of this zone (replicas included) already has the requested name.
    pub name_taken: bool,
}

/// Makes the record of an imported key that this zone does not hold.
///
/// Version 1 is the key's creation (`created-at`, not automatic); each later version is
/// recorded as an automatic rotation at its time, so `manual-count` is 0; `next-at` is one
/// period after the last version; the key is at revision 1 (at `now`), in its zone, with no
/// replicas, its status since `now`. Checks, in order: the arguments
/// ([`ImportKey::validate`]), the name's uniqueness and the zone's quota.
pub fn import_key(request: &ImportKey, ctx: &ImportContext<'_>) -> Result<KeyRecord, Error> {
    request.validate(ctx.now)?;
    super::transition::check_room(
        &request.name,
        ctx.zone,
        ctx.name_taken,
        (ctx.origin_keys, ctx.quota),
    )?;
    let times = request.times(ctx.now)?;
    let mut materials = Vec::with_capacity(times.len());
    for (index, &at) in times.iter().enumerate() {
        materials.push(MaterialMeta {
            version: u32::try_from(index + 1).map_err(|_| Error::BadRequest {
                field: "versions",
                reason: "too many versions".to_owned(),
            })?,
            created_at: at,
            automatic: index > 0,
        });
    }
    let created_at = times[0];
    let last = *times.last().unwrap_or(&created_at);
    let imported_versions = u32::try_from(materials.len()).unwrap_or(MAX_IMPORTED_VERSIONS);
    Ok(KeyRecord {
        id: request.id,
        name: request.name.clone(),
        description: request.description.clone(),
        usage: KeyUsage::EncryptDecrypt,
        source: KeySource::ExoscaleKms,
        multi_zone: request.multi_zone,
        origin_zone: ctx.zone.to_owned(),
        role: Role::Origin,
        status: match request.status {
            ImportStatus::Enabled => Status::Enabled,
            ImportStatus::Disabled => Status::Disabled,
        },
        status_since: ctx.now,
        created_at,
        revision: Revision {
            seq: 1,
            at: ctx.now,
        },
        materials,
        rotation: RotationConfig {
            automatic: request.rotation.automatic,
            period_days: request.rotation.period.days(),
            next_at: add_days(last, request.rotation.period.days())?,
            manual_count: 0,
        },
        replicas: Vec::new(),
        applied_watermark: 0,
        last_cancel_seq: 0,
        imported_versions,
    })
}

/// Whether importing `request` again may leave key `record` (the key this zone holds under the
/// same id) alone: it must be an origin key of this zone with the same name, whose first
/// versions were imported, at least as many as `request` gives. Whatever happened to it since
/// (rotated further, disabled, its description or rotation settings changed) does not matter.
/// `Ok(n)`: the shell must then check that versions 1 to `n` hold the same material; a
/// conflict naming the key otherwise.
pub fn check_reimport(record: &KeyRecord, request: &ImportKey) -> Result<u32, Error> {
    let conflict = |reason| Error::Conflict {
        id: record.id,
        reason,
    };
    if record.role == Role::Replica {
        return Err(conflict(ConflictReason::ImportOverReplica));
    }
    if record.name != request.name {
        return Err(conflict(ConflictReason::ImportedNameDiffers));
    }
    let wanted = u32::try_from(request.versions.len()).unwrap_or(u32::MAX);
    if record.imported_versions < wanted {
        return Err(conflict(ConflictReason::ImportedMaterialDiffers));
    }
    Ok(wanted)
}
