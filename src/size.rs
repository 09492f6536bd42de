//! Sizes in configuration, written back as exact byte counts.
//!
//! `ByteSize` reads "1800MiB" or a plain number of bytes, but writes a
//! rounded text such as "1.8 GiB", which reads back as a different size.
//! Settings that print themselves (`memgate config`) use these instead.

use bytesize::ByteSize;
use serde::Serializer;

/// Writes a size as its exact number of bytes.
pub(crate) fn serialize<S: Serializer>(size: &ByteSize, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(size.as_u64())
}

/// Writes an optional size as its exact number of bytes.
pub(crate) fn serialize_option<S: Serializer>(
    size: &Option<ByteSize>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match size {
        Some(size) => serialize(size, s),
        None => s.serialize_none(),
    }
}
