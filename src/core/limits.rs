//! Every bound of the contract, as named constants, the [`Bound`]s that check them, and the
//! checked types that carry them.
//!
//! A value of [`DeletionDelay`] or [`RotationPeriod`] is always in range: the range is checked
//! once, where the value enters, and the error names the field and the bound. A
//! [`DataKeySpec::Bytes`] can be built with any count; its count is checked by
//! [`DataKeySpec::checked`], which generate-data-key calls before anything is generated.
//! Every check of a numeric bound goes through [`Bound::check`], the HTTP layer's included, so
//! that a bound and its message are written once.

use std::fmt;

use super::error::Error;

/// Longest key name, in characters (Unicode scalar values). Names are at least 1 character.
pub const NAME_MAX_CHARS: usize = 256;
/// Longest key description, in characters.
pub const DESCRIPTION_MAX_CHARS: usize = 1024;
/// Shortest deletion delay, in days.
pub const DELETION_DELAY_MIN_DAYS: u32 = 7;
/// Longest deletion delay, in days.
pub const DELETION_DELAY_MAX_DAYS: u32 = 30;
/// Deletion delay when none is given, in days.
pub const DELETION_DELAY_DEFAULT_DAYS: u32 = 30;
/// Shortest automatic rotation period, in days.
pub const ROTATION_PERIOD_MIN_DAYS: u32 = 90;
/// Longest automatic rotation period, in days.
pub const ROTATION_PERIOD_MAX_DAYS: u32 = 2560;
/// Automatic rotation period of a new key and of enable-key-rotation without a period, in days.
pub const ROTATION_PERIOD_DEFAULT_DAYS: u32 = 365;
/// Manual rotations allowed per key; the next one is refused.
pub const MAX_MANUAL_ROTATIONS: u32 = 10;
/// Keys a zone may hold by default, replicas not counted (configurable per `Kms`).
pub const DEFAULT_KEY_QUOTA: usize = 1000;
/// Smallest `bytes-count` of generate-data-key.
pub const DATA_KEY_MIN_BYTES: u32 = 1;
/// Largest `bytes-count` of generate-data-key.
pub const DATA_KEY_MAX_BYTES: u32 = 1024;
/// Size of an `AES-256` data key, in bytes.
pub const AES_256_KEY_BYTES: u32 = 32;
/// Largest plaintext accepted by encrypt by default, in bytes (configurable per `Kms`).
pub const DEFAULT_MAX_PLAINTEXT_BYTES: usize = 4 * 1024 * 1024;
/// Largest encryption context accepted by default, in bytes (configurable per `Kms`).
pub const DEFAULT_MAX_CONTEXT_BYTES: usize = 8 * 1024;
/// Encryptions allowed under one material version. With 96-bit random nonces, NIST SP 800-38D
/// (section 8.3) bounds the invocations of one AES-GCM key at 2^32; keylife rotates the key
/// automatically when its newest version reaches this count (see docs/design.md).
pub const MAX_ENCRYPTIONS_PER_VERSION: u64 = 1 << 32;

/// Most material versions one imported key may bring (versions 1 to this).
pub const MAX_IMPORTED_VERSIONS: u32 = 1000;
/// Longest `derive` string of a seed file, in bytes.
pub const SEED_DERIVE_MAX_BYTES: usize = 1024;

/// An inclusive range of whole numbers that a field of the API must fall in, with the unit its
/// messages give (`" days"`): one value per bound of the contract. `Display` shows the range
/// as messages say it: `between 7 and 30 days`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bound {
    /// The field, by its API name.
    pub field: &'static str,
    /// The smallest value allowed.
    pub min: u64,
    /// The largest value allowed.
    pub max: u64,
    /// What the numbers count, with a leading space (`" days"`), or empty.
    pub unit: &'static str,
}

/// `delay-days` of schedule-deletion.
pub const DELETION_DELAY: Bound = Bound {
    field: "delay-days",
    min: DELETION_DELAY_MIN_DAYS as u64,
    max: DELETION_DELAY_MAX_DAYS as u64,
    unit: " days",
};
/// `rotation-period` of enable-key-rotation.
pub const ROTATION_PERIOD: Bound = Bound {
    field: "rotation-period",
    min: ROTATION_PERIOD_MIN_DAYS as u64,
    max: ROTATION_PERIOD_MAX_DAYS as u64,
    unit: " days",
};
/// `bytes-count` of generate-data-key.
pub const DATA_KEY_BYTES: Bound = Bound {
    field: "bytes-count",
    min: DATA_KEY_MIN_BYTES as u64,
    max: DATA_KEY_MAX_BYTES as u64,
    unit: " bytes",
};
/// A key's `name`, in characters.
pub const NAME_CHARS: Bound = Bound {
    field: "name",
    min: 1,
    max: NAME_MAX_CHARS as u64,
    unit: " characters",
};
/// A key's `description`, in characters.
pub const DESCRIPTION_CHARS: Bound = Bound {
    field: "description",
    min: 0,
    max: DESCRIPTION_MAX_CHARS as u64,
    unit: " characters",
};
/// The number of material versions of an imported key.
pub const IMPORTED_VERSIONS: Bound = Bound {
    field: "versions",
    min: 1,
    max: MAX_IMPORTED_VERSIONS as u64,
    unit: " versions",
};
/// The `max-encryptions-per-version` option of a `Kms` (not a field of the API).
pub const ENCRYPTIONS_PER_VERSION: Bound = Bound {
    field: "max-encryptions-per-version",
    min: 1,
    max: MAX_ENCRYPTIONS_PER_VERSION,
    unit: "",
};

impl Bound {
    /// `value` if it is in range, else [`Error::BadRequest`] naming the field, the range and
    /// the value.
    pub fn check(&self, value: impl Into<i128>) -> Result<u64, Error> {
        let value = value.into();
        match u64::try_from(value) {
            Ok(inside) if (self.min..=self.max).contains(&inside) => Ok(inside),
            _ => Err(Error::BadRequest {
                field: self.field,
                reason: format!("must be {self}, got {value}"),
            }),
        }
    }

    /// [`Bound::check`] for a bound whose `max` fits in a `u32` (every bound of the API).
    pub fn check_u32(&self, value: impl Into<i128>) -> Result<u32, Error> {
        let value = value.into();
        let inside = self.check(value)?;
        u32::try_from(inside).map_err(|_| Error::BadRequest {
            field: self.field,
            reason: format!("must be {self}, got {value}"),
        })
    }
}

impl fmt::Display for Bound {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "between {} and {}{}", self.min, self.max, self.unit)
    }
}

/// A checked deletion delay: whole days in
/// [`DELETION_DELAY_MIN_DAYS`]`..=`[`DELETION_DELAY_MAX_DAYS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DeletionDelay(u32);

impl DeletionDelay {
    /// Checks `days`; out of range is [`Error::BadRequest`] on `delay-days`.
    pub fn new(days: u32) -> Result<DeletionDelay, Error> {
        DELETION_DELAY.check_u32(days).map(DeletionDelay)
    }

    /// The delay of a request: the default when absent, else checked.
    pub fn from_request(days: Option<u32>) -> Result<DeletionDelay, Error> {
        DeletionDelay::new(days.unwrap_or(DELETION_DELAY_DEFAULT_DAYS))
    }

    /// The delay in days.
    #[must_use]
    pub const fn days(self) -> u32 {
        self.0
    }
}

impl Default for DeletionDelay {
    fn default() -> DeletionDelay {
        DeletionDelay(DELETION_DELAY_DEFAULT_DAYS)
    }
}

/// A checked automatic rotation period: whole days in
/// [`ROTATION_PERIOD_MIN_DAYS`]`..=`[`ROTATION_PERIOD_MAX_DAYS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RotationPeriod(u32);

impl RotationPeriod {
    /// Checks `days`; out of range is [`Error::BadRequest`] on `rotation-period`.
    pub fn new(days: u32) -> Result<RotationPeriod, Error> {
        ROTATION_PERIOD.check_u32(days).map(RotationPeriod)
    }

    /// The period of a request: the default when absent, else checked.
    pub fn from_request(days: Option<u32>) -> Result<RotationPeriod, Error> {
        RotationPeriod::new(days.unwrap_or(ROTATION_PERIOD_DEFAULT_DAYS))
    }

    /// The period in days.
    #[must_use]
    pub const fn days(self) -> u32 {
        self.0
    }
}

impl Default for RotationPeriod {
    fn default() -> RotationPeriod {
        RotationPeriod(ROTATION_PERIOD_DEFAULT_DAYS)
    }
}

/// What generate-data-key makes: an AES-256 key (32 bytes) or a number of bytes in
/// [`DATA_KEY_MIN_BYTES`]`..=`[`DATA_KEY_MAX_BYTES`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum DataKeySpec {
    /// A 32-byte key for AES-256. The default.
    #[default]
    Aes256,
    /// This many bytes: [`DATA_KEY_MIN_BYTES`] to [`DATA_KEY_MAX_BYTES`], checked by
    /// [`DataKeySpec::checked`] when the data key is generated.
    Bytes(u32),
}

impl DataKeySpec {
    /// The spec of a request with the API's two optional fields: `key-spec` (only `AES-256`)
    /// and `bytes-count`. Neither means AES-256; both is a bad request.
    pub fn from_request(
        key_spec: Option<&str>,
        bytes_count: Option<u32>,
    ) -> Result<DataKeySpec, Error> {
        match (key_spec, bytes_count) {
            (Some(_), Some(_)) => Err(Error::BadRequest {
                field: "key-spec",
                reason: "and `bytes-count` cannot both be given".to_owned(),
            }),
            (Some("AES-256"), None) | (None, None) => Ok(DataKeySpec::Aes256),
            (Some(other), None) => Err(Error::BadRequest {
                field: "key-spec",
                reason: format!("must be \"AES-256\", got {}", Error::quote(other)),
            }),
            (None, Some(count)) => DataKeySpec::Bytes(count).checked(),
        }
    }

    /// Checks the byte count; out of range is [`Error::BadRequest`] on `bytes-count`.
    pub fn checked(self) -> Result<DataKeySpec, Error> {
        match self {
            DataKeySpec::Bytes(count) => DATA_KEY_BYTES.check_u32(count).map(DataKeySpec::Bytes),
            DataKeySpec::Aes256 => Ok(self),
        }
    }

    /// The data key's length in bytes.
    #[must_use]
    pub const fn byte_len(self) -> usize {
        match self {
            DataKeySpec::Aes256 => AES_256_KEY_BYTES as usize,
            DataKeySpec::Bytes(count) => count as usize,
        }
    }
}

/// Checks a key name: 1 to [`NAME_MAX_CHARS`] characters.
pub fn check_name(name: &str) -> Result<(), Error> {
    NAME_CHARS.check(char_count(name)).map(drop)
}

/// Checks a key description: at most [`DESCRIPTION_MAX_CHARS`] characters.
pub fn check_description(description: &str) -> Result<(), Error> {
    DESCRIPTION_CHARS.check(char_count(description)).map(drop)
}

fn char_count(text: &str) -> u64 {
    u64::try_from(text.chars().count()).unwrap_or(u64::MAX)
}
