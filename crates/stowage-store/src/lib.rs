//! Stowage's state stores. [`SqliteStore`] is the embedded default;
//! [`EtcdStore`] is for clusters. Both pass the same
//! [`stowage_core::store::conformance`] suite.

mod etcd;
mod sqlite;

pub use etcd::{EtcdConfig, EtcdStore, EtcdTls};
pub use sqlite::SqliteStore;
