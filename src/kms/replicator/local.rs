//! [`LocalLink`]: the [`Link`] between the `Kms` instances of one process.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, PoisonError, RwLock};

use crate::Kms;
use crate::core::replication::delivery::Ack;
use crate::core::{Error, KeyId};
use crate::kms::handle::WeakKms;
use crate::kms::link::{Link, ReplicaUpdate};

/// The in-process [`Link`]: connects `Kms` instances of one program by zone name.
///
/// A zone is known once [`LocalLink::attach`]ed, and stays known when its `Kms` is closed (it
/// is then unreachable until a new `Kms` of that zone is attached). The link holds the zone
/// weakly: it is reachable while any handle on it lives, and the calls the link makes there
/// are made by the attached handle's caller.
///
/// ```
/// use std::sync::Arc;
/// use keylife::{CreateKey, Kms, KmsOptions, LocalLink, RootKey};
///
/// # fn main() -> Result<(), keylife::Error> {
/// let link = LocalLink::new();
/// let zone = |name: &str| -> Result<Arc<Kms>, keylife::Error> {
///     let kms = Arc::new(Kms::open_in_memory(
///         RootKey::generate()?,
///         KmsOptions::new(name).link(link.clone()),
///     )?);
///     link.attach(&kms);
///     Ok(kms)
/// };
/// let (gva, fra) = (zone("ch-gva-2")?, zone("de-fra-1")?);
/// let key = gva.create_key(&CreateKey::new("orders").multi_zone(true))?;
/// gva.replicate_key(key.id, "de-fra-1", None)?;
/// // Delivery is asynchronous; `sync` delivers what waits, now.
/// gva.sync()?;
/// let sealed = gva.encrypt(key.id, b"data", None)?;
/// assert_eq!(fra.decrypt(key.id, &sealed.ciphertext, None)?.plaintext.as_bytes(), b"data");
/// assert_eq!(fra.get_key(key.id)?.key.origin_zone, "ch-gva-2");
/// # Ok(())
/// # }
/// ```
#[derive(Default)]
pub struct LocalLink {
    zones: RwLock<HashMap<String, WeakKms>>,
}

impl LocalLink {
    /// A link with no zone.
    #[must_use]
    pub fn new() -> Arc<LocalLink> {
        Arc::new(LocalLink::default())
    }

    /// Connects `kms` under its zone name, replacing an earlier `Kms` of that zone.
    pub fn attach(&self, kms: &Kms) {
        self.zones
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(kms.zone().to_owned(), kms.downgrade());
    }

    fn zone(&self, zone: &str) -> Option<Option<Kms>> {
        self.zones
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(zone)
            .map(WeakKms::upgrade)
    }
}

impl fmt::Debug for LocalLink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let zones = self.zones.read().unwrap_or_else(PoisonError::into_inner);
        let mut names: Vec<_> = zones.keys().collect();
        names.sort();
        f.debug_struct("LocalLink").field("zones", &names).finish()
    }
}

impl Link for LocalLink {
    fn knows(&self, zone: &str) -> bool {
        self.zone(zone).is_some()
    }

    fn deliver(&self, zone: &str, update: &ReplicaUpdate) -> Result<Ack, Error> {
        self.reach(zone)?.receive(update)
    }

    fn request_rotation(&self, zone: &str, id: KeyId, version: u32) -> Result<(), Error> {
        self.reach(zone)?.retire_version(id, version)
    }
}

impl LocalLink {
    fn reach(&self, zone: &str) -> Result<Kms, Error> {
        let unreachable = |detail: &str| Error::ZoneUnreachable {
            zone: zone.to_owned(),
            detail: detail.to_owned(),
        };
        match self.zone(zone) {
            Some(Some(kms)) => Ok(kms),
            Some(None) => Err(unreachable("its Kms is closed")),
            None => Err(unreachable("no such zone on this link")),
        }
    }
}
