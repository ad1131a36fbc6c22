//! What the `stowage` binary shares with the fuzz targets: its parsers of
//! what other programs send it.

pub mod archive;
