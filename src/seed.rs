//! Seed files: keys with fixed ids and material, applied to one or several zones, all or
//! nothing (LocalStack's `_custom_id_`/`_custom_key_material_`, local-kms's `seed.yaml`).
//!
//! ```json
//! {"keys": [{"id": "019b5a2e-0000-7000-8000-000000000001", "name": "payments",
//!            "zone": "ch-gva-2", "description": "…", "multi-zone": false,
//!            "status": "enabled", "rotation": {"automatic": true, "rotation-period": 365},
//!            "versions": [{"derive": "fixture one"},
//!                         {"material": "<base64 of 32 bytes>",
//!                          "rotated-at": "2026-01-01T00:00:00Z"}]}]}
//! ```
//!
//! `id`, `name` and `versions` are required; `zone` is required when the seed is applied to
//! several zones. Each version is either `material` (32 bytes in base64: bring your own key)
//! or `derive` (**for tests only**: material derived from the string by
//! [`MaterialKey::insecure_derive`], fixed forever, so a committed ciphertext fixture decrypts
//! on every machine). Version 1 may have `created-at`; each later version is recorded as an
//! automatic rotation at its `rotated-at` (default: when the seed is applied). Unknown fields
//! are refused. See [`Kms::import_keys`] for what applying a key does, and docs/design.md
//! ("Seeded and imported keys").

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use jiff::Timestamp;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;
use zeroize::Zeroizing;

use crate::core::limits::SEED_DERIVE_MAX_BYTES;
use crate::core::{
    Error, ImportKey, ImportRotation, ImportStatus, ImportVersion, KeyId, RotationPeriod, limits,
};
use crate::crypto::MaterialKey;
use crate::kms::{ImportOutcome, KeyImport, Kms};

/// A parsed and checked seed file: its keys, each with the zone it names (if any) and its
/// material in wiping containers. `Debug` shows no material.
#[derive(Debug)]
pub struct Seed {
    keys: Vec<SeedKey>,
}

#[derive(Debug)]
struct SeedKey {
    zone: Option<String>,
    import: KeyImport,
}

/// What applying a seed did, key by key in the file's order. Serializes to
/// `{"keys": [{"zone", "id", "name", "outcome": "created" | "already-present"}]}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SeedReport {
    /// One entry per key of the file.
    pub keys: Vec<SeedApplied>,
}

/// One key of a seed file, applied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SeedApplied {
    /// The zone it was applied to.
    pub zone: String,
    /// The key.
    pub id: KeyId,
    /// Its name.
    pub name: String,
    /// Created, or already present (and left as it is).
    #[serde(serialize_with = "outcome_name")]
    pub outcome: ImportOutcome,
}

fn outcome_name<S: Serializer>(outcome: &ImportOutcome, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(outcome.as_str())
}

/// A string that is wiped when dropped: material and `derive` strings.
struct Secret(Zeroizing<String>);

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Secret, D::Error> {
        String::deserialize(deserializer).map(|text| Secret(Zeroizing::new(text)))
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    keys: Vec<Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawKey {
    id: String,
    name: String,
    #[serde(default)]
    zone: Option<String>,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    multi_zone: bool,
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    rotation: Option<RawRotation>,
    versions: Vec<Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawRotation {
    #[serde(default)]
    automatic: Option<bool>,
    #[serde(default)]
    rotation_period: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawVersion {
    #[serde(default)]
    derive: Option<Secret>,
    #[serde(default)]
    material: Option<Secret>,
    #[serde(default)]
    created_at: Option<String>,
    #[serde(default)]
    rotated_at: Option<String>,
}

fn invalid(at: impl Into<String>, reason: impl Into<String>) -> Error {
    Error::InvalidSeed {
        at: at.into(),
        reason: reason.into(),
    }
}

/// serde_json's message with every quoted string value left out: a value given in the wrong
/// place could be material.
fn serde_reason(error: &serde_json::Error) -> String {
    let mut out = String::new();
    let mut quoted = false;
    for c in error.to_string().chars() {
        if c == '"' {
            if quoted {
                out.push_str("\"…\"");
            }
            quoted = !quoted;
        } else if !quoted {
            out.push(c);
        }
    }
    out
}

/// A bad request of the core, said at `at` in the file (`keys[2]` + `.name`).
fn at_field(at: &str, error: Error) -> Error {
    match error {
        Error::BadRequest { field, reason } => invalid(format!("{at}.{field}"), reason),
        other => other,
    }
}

impl Seed {
    /// Parses and checks a seed file (JSON). Every error is [`Error::InvalidSeed`] naming where
    /// (`keys[3].versions[1].material`) and the rule, never the material.
    pub fn from_json(text: &[u8]) -> Result<Seed, Error> {
        let file: RawFile = serde_json::from_slice(text).map_err(|error| {
            invalid("$", format!("is not a seed file: {}", serde_reason(&error)))
        })?;
        let keys = file
            .keys
            .into_iter()
            .enumerate()
            .map(|(index, value)| parse_key(&format!("keys[{index}]"), value))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Seed { keys })
    }

    /// How many keys the file holds.
    #[must_use]
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether the file holds no key.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Applies the seed to `zones` (the zones a process serves): a key goes to the zone it
    /// names, or to the only zone; a key without a zone when there are several, or naming a
    /// zone not among `zones`, is an error. Every key of every zone is checked first
    /// ([`Kms::check_import`]: arguments, times, conflicts with the store, the quota); only
    /// then is each zone's share written, in one commit per zone ([`Kms::import_keys`]).
    /// A key already present with the same material is left as it is, so applying a seed
    /// again changes nothing.
    ///
    /// All or nothing within a zone. Across zones, nothing is written when any check fails;
    /// a failure while writing (the store failing, or a change made between the check and
    /// the write) leaves the zones written before it applied, and applying again completes.
    pub fn apply(&self, zones: &[Kms]) -> Result<SeedReport, Error> {
        self.place_and_apply(zones, None)
    }

    /// [`Seed::apply`], with the keys that name no zone going to zone `default` (one of
    /// `zones`) however many zones there are: the command line's chosen zone.
    pub fn apply_with_default(&self, zones: &[Kms], default: &str) -> Result<SeedReport, Error> {
        let default = zones
            .iter()
            .find(|kms| kms.zone() == default)
            .ok_or_else(|| Error::InvalidArgument {
                field: "zone",
                reason: format!("{} is not among the zones given", Error::quote(default)),
            })?;
        self.place_and_apply(zones, Some(default))
    }

    fn place_and_apply(&self, zones: &[Kms], default: Option<&Kms>) -> Result<SeedReport, Error> {
        let served: Vec<&str> = zones.iter().map(Kms::zone).collect();
        let mut targets = Vec::with_capacity(self.keys.len());
        for (index, key) in self.keys.iter().enumerate() {
            let at = format!("keys[{index}]");
            let zone = match (&key.zone, default, zones) {
                (None, Some(default), _) => default,
                (None, None, [only]) => only,
                (None, None, _) => {
                    return Err(invalid(
                        format!("{at}.zone"),
                        format!(
                            "is required: the seed is applied to several zones ({})",
                            served.join(", ")
                        ),
                    ));
                }
                (Some(name), _, _) => {
                    zones.iter().find(|kms| kms.zone() == name).ok_or_else(|| {
                        invalid(
                            format!("{at}.zone"),
                            format!(
                                "names zone {}, which is not served here ({})",
                                Error::quote(name),
                                served.join(", ")
                            ),
                        )
                    })?
                }
            };
            key.import
                .key
                .validate(zone.now())
                .map_err(|error| at_field(&at, error))?;
            targets.push(zone);
        }
        let share = |kms: &Kms| -> Vec<&KeyImport> {
            self.keys
                .iter()
                .zip(&targets)
                .filter(|(_, target)| target.zone() == kms.zone())
                .map(|(key, _)| &key.import)
                .collect()
        };
        for kms in zones {
            let keys = share(kms);
            if !keys.is_empty() {
                kms.check_import(&keys)?;
            }
        }
        let mut applied = Vec::with_capacity(self.keys.len());
        for kms in zones {
            let keys = share(kms);
            if keys.is_empty() {
                continue;
            }
            for imported in kms.import_keys(&keys)? {
                applied.push(SeedApplied {
                    zone: kms.zone().to_owned(),
                    id: imported.id,
                    name: imported.name,
                    outcome: imported.outcome,
                });
            }
        }
        // In the file's order.
        let mut keys = Vec::with_capacity(applied.len());
        for key in &self.keys {
            if let Some(position) = applied.iter().position(|a| a.id == key.import.key.id) {
                keys.push(applied.swap_remove(position));
            }
        }
        Ok(SeedReport { keys })
    }
}

fn parse_key(at: &str, value: Value) -> Result<SeedKey, Error> {
    let raw: RawKey =
        serde_json::from_value(value).map_err(|error| invalid(at, serde_reason(&error)))?;
    let id = KeyId::parse(&raw.id).map_err(|error| at_field(at, error))?;
    limits::check_name(&raw.name).map_err(|error| at_field(at, error))?;
    if let Some(description) = &raw.description {
        limits::check_description(description).map_err(|error| at_field(at, error))?;
    }
    if let Some(zone) = &raw.zone
        && zone.is_empty()
    {
        return Err(invalid(format!("{at}.zone"), "must not be empty"));
    }
    let status = match raw.status.as_deref() {
        None | Some("enabled") => ImportStatus::Enabled,
        Some("disabled") => ImportStatus::Disabled,
        Some(other) => {
            return Err(invalid(
                format!("{at}.status"),
                format!(
                    "must be \"enabled\" or \"disabled\", got {}",
                    Error::quote(other)
                ),
            ));
        }
    };
    let rotation = match raw.rotation {
        None => ImportRotation::default(),
        Some(rotation) => ImportRotation {
            automatic: rotation.automatic.unwrap_or(true),
            period: RotationPeriod::from_request(rotation.rotation_period)
                .map_err(|error| at_field(&format!("{at}.rotation"), error))?,
        },
    };
    limits::IMPORTED_VERSIONS
        .check(u64::try_from(raw.versions.len()).unwrap_or(u64::MAX))
        .map_err(|error| at_field(at, error))?;
    let mut versions = Vec::with_capacity(raw.versions.len());
    let mut materials = Vec::with_capacity(raw.versions.len());
    for (index, value) in raw.versions.into_iter().enumerate() {
        let at = format!("{at}.versions[{index}]");
        let version = u32::try_from(index + 1).unwrap_or(u32::MAX);
        let (time, material) = parse_version(&at, value, id, version)?;
        versions.push(ImportVersion { at: time });
        materials.push(material);
    }
    Ok(SeedKey {
        zone: raw.zone,
        import: KeyImport {
            key: ImportKey {
                id,
                name: raw.name,
                description: raw.description,
                multi_zone: raw.multi_zone,
                status,
                rotation,
                versions,
            },
            materials,
        },
    })
}

fn parse_version(
    at: &str,
    value: Value,
    id: KeyId,
    version: u32,
) -> Result<(Option<Timestamp>, MaterialKey), Error> {
    let raw: RawVersion =
        serde_json::from_value(value).map_err(|error| invalid(at, serde_reason(&error)))?;
    let time = match (version, raw.created_at, raw.rotated_at) {
        (_, Some(_), Some(_)) => {
            return Err(invalid(at, "has both `created-at` and `rotated-at`"));
        }
        (1, None, Some(_)) => {
            return Err(invalid(
                format!("{at}.rotated-at"),
                "is not for version 1, the key's creation: give `created-at`",
            ));
        }
        (1, Some(text), None) => Some(parse_time(&format!("{at}.created-at"), &text)?),
        (_, Some(_), None) => {
            return Err(invalid(
                format!("{at}.created-at"),
                "is only for version 1: a later version has `rotated-at`",
            ));
        }
        (_, None, Some(text)) => Some(parse_time(&format!("{at}.rotated-at"), &text)?),
        (_, None, None) => None,
    };
    let material = match (raw.derive, raw.material) {
        (Some(_), Some(_)) => {
            return Err(invalid(at, "has both `derive` and `material`: give one"));
        }
        (None, None) => {
            return Err(invalid(at, "needs `derive` or `material`"));
        }
        (Some(phrase), None) => {
            let length = phrase.0.len();
            if length == 0 || length > SEED_DERIVE_MAX_BYTES {
                return Err(invalid(
                    format!("{at}.derive"),
                    format!("must be between 1 and {SEED_DERIVE_MAX_BYTES} bytes, got {length}"),
                ));
            }
            MaterialKey::insecure_derive(&phrase.0, id, version)
        }
        (None, Some(encoded)) => {
            let bytes = Zeroizing::new(BASE64.decode(encoded.0.trim()).map_err(|_| {
                invalid(format!("{at}.material"), "is not base64 (standard, padded)")
            })?);
            MaterialKey::from_slice(&bytes).map_err(|error| at_field(at, error))?
        }
    };
    Ok((time, material))
}

fn parse_time(at: &str, text: &str) -> Result<Timestamp, Error> {
    text.parse::<Timestamp>().map_err(|_| {
        invalid(
            at,
            format!("must be an RFC 3339 time, got {}", Error::quote(text)),
        )
    })
}
