//! Tests of the replication rules (replicate-key in `apply`, `snapshot`, `follow`).
