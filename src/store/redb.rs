//! The redb backend (being written).

/// A backend on a redb 5 database (being written).
#[derive(Debug)]
pub struct RedbBackend;
