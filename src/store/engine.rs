//! The on-disk engines a store can be created with, and how an existing store's engine is
//! found.

use std::fmt;
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;

use super::{Backend, REDB_FILE, RedbBackend, SledBackend};
use crate::core::Error;

/// An on-disk engine. Chosen when a store is created and recorded in it; an existing store
/// always opens with its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Engine {
    /// sled 0.34, the default.
    #[default]
    Sled,
    /// redb 5: one file, checksummed pages, a sync at each commit.
    Redb,
}

impl Engine {
    /// Every engine, the default first.
    pub const ALL: [Engine; 2] = [Engine::Sled, Engine::Redb];

    /// The engine's name, as `--engine` takes it and the store records it.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Engine::Sled => "sled",
            Engine::Redb => "redb",
        }
    }

    /// The engine whose files are in store directory `dir`, if any: redb's one file, or
    /// sled's `conf` and `db`.
    #[must_use]
    pub fn detect(dir: &Path) -> Option<Engine> {
        if dir.join(REDB_FILE).exists() {
            Some(Engine::Redb)
        } else if dir.join("conf").exists() || dir.join("db").exists() {
            Some(Engine::Sled)
        } else {
            None
        }
    }

    /// Opens the store in `dir` with the engine it was created with, or creates one with
    /// `wanted` (the default engine if `None`). An explicit `wanted` that differs from the
    /// existing store's engine is [`Error::BadRequest`] on field `engine`.
    pub fn open(dir: &Path, wanted: Option<Engine>) -> Result<Arc<dyn Backend>, Error> {
        let engine = match (Engine::detect(dir), wanted) {
            (Some(found), Some(wanted)) if found != wanted => {
                return Err(Error::BadRequest {
                    field: "engine",
                    reason: format!(
                        "the store in {} was created with {found}, not {wanted}; an existing \
                         store always opens with its own engine",
                        dir.display()
                    ),
                });
            }
            (Some(found), _) => found,
            (None, wanted) => wanted.unwrap_or_default(),
        };
        Ok(match engine {
            Engine::Sled => Arc::new(SledBackend::open(dir)?),
            Engine::Redb => Arc::new(RedbBackend::open(dir)?),
        })
    }
}

impl fmt::Display for Engine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Engine {
    type Err = Error;

    fn from_str(name: &str) -> Result<Engine, Error> {
        Engine::ALL
            .into_iter()
            .find(|engine| engine.name() == name)
            .ok_or_else(|| Error::BadRequest {
                field: "engine",
                reason: format!("must be sled or redb, got {}", Error::quote(name)),
            })
    }
}
