//! The stores of a data directory, opened for one command, and the key it names.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use keylife::{KeyId, Kms};

use super::Failure;
use super::args::{DEFAULT_ZONE, StoreArgs};
use crate::config::{self, RootKeyBytes};
use crate::log;

/// Which zone store a command may create. Only the commands that put a key in a zone create
/// its store, so that a mistyped `--zone` makes no empty store (which would also stop the
/// default zone from being found).
#[derive(Debug, Clone, Copy)]
pub(super) enum NewStore<'a> {
    /// None: the chosen zone must have a store.
    Never,
    /// The chosen zone's (`key create`).
    Chosen,
    /// This zone's, besides the chosen one, which must exist (`key replicate --to`).
    Target(&'a str),
}

/// The zones of a data directory, opened and linked, and the one the command acts in.
pub(super) struct Zones {
    zones: Vec<Arc<Kms>>,
    chosen: usize,
    /// The store directory this command created for a replication target, if any.
    created_target: Option<PathBuf>,
}

impl Zones {
    /// Opens every zone whose store is in `--data`, plus the chosen zone, and runs what is due
    /// in each. `new` says which store may be created.
    pub(super) fn open(store: &StoreArgs, new: NewStore<'_>) -> Result<Zones, Failure> {
        let root_key = RootKeyBytes::load(store.root_key_file.as_deref())?;
        let data = &store.data;
        let existing = zone_stores(data)?;
        let chosen = match &store.zone {
            Some(zone) => zone.clone(),
            None => match existing.as_slice() {
                [] => DEFAULT_ZONE.to_owned(),
                [only] => only.clone(),
                several => {
                    return Err(Failure::Other(format!(
                        "{} holds the stores of several zones ({}): choose one with --zone or \
                         KEYLIFE_ZONE",
                        data.display(),
                        several.join(", ")
                    )));
                }
            },
        };
        config::check_zone_name(&chosen)?;
        let mut names = existing;
        let mut created_target = None;
        if !names.contains(&chosen) {
            if !matches!(new, NewStore::Chosen) {
                return Err(Failure::Other(if names.is_empty() {
                    format!(
                        "{} holds no key store yet: `keylife key create` makes one (in zone \
                         {chosen})",
                        data.display()
                    )
                } else {
                    format!(
                        "{} holds no store of zone {chosen} (its zones: {})",
                        data.display(),
                        names.join(", ")
                    )
                }));
            }
            names.push(chosen.clone());
        }
        if let NewStore::Target(target) = new {
            config::check_zone_name(target)?;
            if !names.iter().any(|name| name == target) {
                let dir = config::zone_dir(data, target);
                if !dir.exists() {
                    created_target = Some(dir);
                }
                names.push(target.to_owned());
            }
        }
        names.sort();
        let zones = config::open_zones(data, &names, &root_key, store.engine)?;
        drop(root_key);
        for kms in &zones {
            log::due(kms.zone(), &kms.run_due());
        }
        let chosen = zones
            .iter()
            .position(|kms| kms.zone() == chosen)
            .ok_or_else(|| Failure::Other(format!("zone {chosen} was not opened")))?;
        Ok(Zones {
            zones,
            chosen,
            created_target,
        })
    }

    /// Every zone opened, as handles.
    pub(super) fn all(&self) -> Vec<Kms> {
        self.zones.iter().map(|kms| Kms::clone(kms)).collect()
    }

    /// The zone the command acts in.
    pub(super) fn kms(&self) -> &Kms {
        &self.zones[self.chosen]
    }

    /// The key `given` names in the zone: the key with that id, else the one with that name
    /// (names are unique in a zone), else, for a well-formed id, that id (the operation then
    /// answers `key-not-found` naming it).
    pub(super) fn key(&self, given: &str) -> Result<KeyId, Failure> {
        let kms = self.kms();
        let id = KeyId::parse(given).ok();
        if let Some(id) = id
            && kms.get_key(id).is_ok()
        {
            return Ok(id);
        }
        let keys = kms.list_keys()?.kms_keys;
        match keys.iter().find(|key| key.name == given) {
            Some(key) => Ok(key.id),
            None => id.ok_or_else(|| Failure::NoSuchKey {
                key: given.to_owned(),
                zone: kms.zone().to_owned(),
            }),
        }
    }

    /// Closes every zone and removes the replication target's store if this command created
    /// it: after a refused replication it holds nothing.
    pub(super) fn close_and_forget_target(mut self) {
        let created_target = self.created_target.take();
        self.zones.clear();
        if let Some(dir) = created_target
            && let Err(error) = std::fs::remove_dir_all(&dir)
        {
            eprintln!(
                "keylife: warning: cannot remove the empty store {}: {error}",
                dir.display()
            );
        }
    }
}

impl Drop for Zones {
    /// A command's changes reach the replicas in the data directory before it exits, as the
    /// server delivers them at once: the zones wait for their background deliveries first.
    fn drop(&mut self) {
        for kms in &self.zones {
            kms.wait_for_deliveries();
        }
    }
}

/// The zones under `data` that hold a store (a subdirectory with a valid zone name and sled's
/// or keylife's files in it), sorted. None if `data` does not exist yet.
fn zone_stores(data: &Path) -> Result<Vec<String>, Failure> {
    if !data.exists() {
        return Ok(Vec::new());
    }
    if !data.is_dir() {
        return Err(Failure::Other(format!(
            "the data directory {} is not a directory",
            data.display()
        )));
    }
    Ok(config::existing_zones(data)?)
}
