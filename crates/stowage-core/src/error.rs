//! The core error type. Each error knows its [`ErrorKind`], and every door
//! maps a kind to its wire form (HTTP status, Docker `Err`, gRPC code) in
//! one place.

use std::path::PathBuf;

use crate::store::StoreError;

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The class of an error, independent of the door it leaves through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The request is malformed or names something invalid.
    InvalidArgument,
    /// The named volume does not exist.
    NotFound,
    /// The request contradicts existing state (same name, other options).
    Conflict,
    /// The volume is in a state that forbids the operation (in use).
    FailedPrecondition,
    /// Not enough space (or another resource) to do what was asked.
    ResourceExhausted,
    /// A size was asked that this volume cannot have here.
    OutOfRange,
    /// Lost a race with a concurrent change: retrying may succeed.
    Aborted,
    /// The cluster store cannot be reached now, or did not say whether a
    /// write committed: retry once it answers.
    Unavailable,
    /// Stowage or the kernel failed.
    Internal,
}

impl ErrorKind {
    /// A short stable code for machine consumers.
    pub fn code(self) -> &'static str {
        match self {
            ErrorKind::InvalidArgument => "invalid_argument",
            ErrorKind::NotFound => "not_found",
            ErrorKind::Conflict => "conflict",
            ErrorKind::FailedPrecondition => "failed_precondition",
            ErrorKind::ResourceExhausted => "resource_exhausted",
            ErrorKind::OutOfRange => "out_of_range",
            ErrorKind::Aborted => "aborted",
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::Internal => "internal",
        }
    }

    /// The HTTP status a REST door answers with.
    pub fn http_status(self) -> u16 {
        match self {
            ErrorKind::InvalidArgument => 400,
            ErrorKind::NotFound => 404,
            ErrorKind::Conflict => 409,
            ErrorKind::FailedPrecondition => 409,
            ErrorKind::ResourceExhausted => 507,
            ErrorKind::OutOfRange => 400,
            ErrorKind::Aborted => 409,
            ErrorKind::Unavailable => 503,
            ErrorKind::Internal => 500,
        }
    }

    /// The canonical gRPC status code the CSI door answers with.
    pub fn grpc_code(self) -> i32 {
        match self {
            ErrorKind::InvalidArgument => 3,
            ErrorKind::NotFound => 5,
            // ALREADY_EXISTS: the name is taken by something incompatible.
            ErrorKind::Conflict => 6,
            ErrorKind::ResourceExhausted => 8,
            ErrorKind::FailedPrecondition => 9,
            ErrorKind::OutOfRange => 11,
            ErrorKind::Aborted => 10,
            ErrorKind::Unavailable => 14,
            ErrorKind::Internal => 13,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid volume name {name:?}: {reason}")]
    InvalidName { name: String, reason: String },
    #[error("invalid consumer id {id:?}: {reason}")]
    InvalidConsumer { id: String, reason: String },
    #[error("unknown driver {driver:?}; known drivers: {}", known.join(", "))]
    UnknownDriver { driver: String, known: Vec<String> },
    #[error("unknown option {option:?} for driver {driver}; valid options: {}", valid.join(", "))]
    UnknownOption {
        driver: String,
        option: String,
        valid: Vec<&'static str>,
    },
    #[error("invalid value {value:?} for option {option}: {reason}")]
    InvalidOption {
        option: String,
        value: String,
        reason: String,
    },
    #[error("missing required option {option} for driver {driver}")]
    MissingOption { driver: String, option: String },
    #[error("invalid {what} {key:?}: {reason}")]
    InvalidEntry {
        /// `option` or `label`.
        what: &'static str,
        key: String,
        reason: String,
    },
    #[error("invalid filter {filter:?}: {reason}")]
    InvalidFilter { filter: String, reason: String },
    #[error("driver {driver} does not support {what}")]
    Unsupported { driver: String, what: String },
    #[error("{driver} volumes cannot have a size here: {reason}")]
    SizeUnsupported { driver: String, reason: String },
    #[error("{0}")]
    InvalidRequest(String),
    #[error("no such snapshot: {name}")]
    SnapshotNotFound { name: String },
    #[error("snapshot {name} already exists of another volume")]
    SnapshotConflict { name: String },
    #[error("not enough space: {0}")]
    NoSpace(String),
    #[error("no such volume: {name}")]
    NotFound { name: String },
    #[error("volume {name} already exists with different {what}")]
    Conflict { name: String, what: &'static str },
    #[error("volume {name} is {state}")]
    Busy { name: String, state: &'static str },
    #[error("volume {name} is in use by {}; unmount it first or remove with force", consumers.join(", "))]
    InUse {
        name: String,
        consumers: Vec<String>,
    },
    #[error("volume {name} {reason}")]
    Precondition { name: String, reason: String },
    #[error("no such node: {node}")]
    UnknownNode { node: String },
    #[error(
        "volume {name} is node-local storage on node {node}, which alone can reach it: \
         use it there, or create the volume on this node"
    )]
    HomedElsewhere { name: String, node: String },
    #[error("volume {name} is attached to {} with exclusive access", nodes.join(", "))]
    AttachedElsewhere { name: String, nodes: Vec<String> },
    #[error("volume {name} has access mode {}, and node {node} holds it{}", mode.explained(),
            consumer.as_ref().map(|c| format!(" for {c}")).unwrap_or_default())]
    HeldElsewhere {
        name: String,
        node: String,
        mode: crate::access::AccessMode,
        consumer: Option<String>,
    },
    #[error("volume {name} is already attached to {node} with other access")]
    AttachmentConflict { name: String, node: String },
    #[error("volume {name} is not staged at {}", path.display())]
    NotStaged { name: String, path: PathBuf },
    #[error("volume {name} is not published at {}", path.display())]
    NotPublished { name: String, path: PathBuf },
    #[error("{} already holds {what}", path.display())]
    PathTaken { path: PathBuf, what: String },
    #[error(
        "the record of {name} cannot be read ({reason}); it is left as stored and refuses \
         every operation until it is repaired"
    )]
    CorruptRecord { name: String, reason: String },
    #[error("{} holds a mount that is not volume {name}'s ({what}); left in place", path.display())]
    ForeignMount {
        name: String,
        path: PathBuf,
        what: String,
    },
    #[error("{op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "the store has never been written to, but {} holds the data of volumes or snapshots \
         ({entries} entries, such as {}); refusing to start, which would forget them and \
         tear down their mounts: restore the database (stowage.db) from a backup, or move \
         that data aside",
        data_root.display(),
        example.display()
    )]
    StoreLost {
        data_root: PathBuf,
        entries: usize,
        example: PathBuf,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl Error {
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::InvalidName { .. }
            | Error::InvalidConsumer { .. }
            | Error::UnknownDriver { .. }
            | Error::UnknownOption { .. }
            | Error::InvalidOption { .. }
            | Error::MissingOption { .. }
            | Error::InvalidEntry { .. }
            | Error::InvalidFilter { .. }
            | Error::Unsupported { .. }
            | Error::InvalidRequest(_) => ErrorKind::InvalidArgument,
            Error::NotFound { .. }
            | Error::SnapshotNotFound { .. }
            | Error::UnknownNode { .. }
            | Error::NotPublished { .. } => ErrorKind::NotFound,
            Error::Conflict { .. }
            | Error::SnapshotConflict { .. }
            | Error::AttachmentConflict { .. }
            | Error::PathTaken { .. } => ErrorKind::Conflict,
            Error::NoSpace(_) | Error::Store(StoreError::Full(_)) => ErrorKind::ResourceExhausted,
            Error::SizeUnsupported { .. } => ErrorKind::OutOfRange,
            Error::Busy { .. }
            | Error::InUse { .. }
            | Error::Precondition { .. }
            | Error::AttachedElsewhere { .. }
            | Error::HeldElsewhere { .. }
            | Error::HomedElsewhere { .. }
            | Error::ForeignMount { .. }
            | Error::CorruptRecord { .. }
            | Error::NotStaged { .. } => ErrorKind::FailedPrecondition,
            Error::Store(StoreError::Conflict { .. }) => ErrorKind::Aborted,
            Error::Store(
                StoreError::Unavailable(_)
                | StoreError::Indeterminate(_)
                | StoreError::LeaseExpired(_),
            ) => ErrorKind::Unavailable,
            Error::Io { source, .. }
                if matches!(
                    source.kind(),
                    std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
                ) =>
            {
                ErrorKind::ResourceExhausted
            }
            Error::Io { .. } | Error::Store(_) | Error::StoreLost { .. } => ErrorKind::Internal,
        }
    }

    /// The errno behind an I/O error, if that is what this is.
    pub fn raw_os_error(&self) -> Option<i32> {
        match self {
            Error::Io { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }

    /// Wraps an I/O error with the operation and path it came from.
    pub fn io(op: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io { op, path, source }
    }

    pub fn invalid_option(option: &str, value: &str, reason: impl Into<String>) -> Error {
        Error::InvalidOption {
            option: option.to_string(),
            value: value.to_string(),
            reason: reason.into(),
        }
    }
}
