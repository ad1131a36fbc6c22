//! Stowage's state stores. [`SqliteStore`] is the embedded default; an
//! etcd store for clusters will live beside it and pass the same
//! [`stowage_core::store::conformance`] suite.

mod sqlite;

pub use sqlite::SqliteStore;
