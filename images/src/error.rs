//! The image store's error type.

use std::io;
use std::path::PathBuf;

/// Everything the image store can fail with. Messages read "failed to ..." and name the image, blob or entry.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A reference that does not parse.
    #[error("failed to parse image reference {reference:?}")]
    Reference {
        /// What was given.
        reference: String,
        /// Why it does not parse.
        #[source]
        source: oci_client::ParseError,
    },
    /// A malformed digest.
    #[error(transparent)]
    Digest(#[from] crate::digest::ParseError),
    /// A file-system operation on the store failed.
    #[error("failed to {what} {path}")]
    Io {
        /// The operation.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A blob's bytes hash to something else than the digest that named it.
    #[error("failed to verify {what}: expected digest {expected}, got {actual}")]
    DigestMismatch {
        /// Which blob.
        what: String,
        /// The digest it should have.
        expected: String,
        /// The digest of the bytes received.
        actual: String,
    },
    /// A blob's length differs from its descriptor's size.
    #[error("failed to verify {what}: expected {expected} bytes, got {actual}")]
    SizeMismatch {
        /// Which blob.
        what: String,
        /// The size in the descriptor.
        expected: u64,
        /// The bytes received.
        actual: u64,
    },
    /// A blob, manifest or archive over a configured limit.
    #[error("failed to accept {what}: {size} bytes is over the limit of {limit}")]
    TooLarge {
        /// What it was.
        what: String,
        /// Its size (or the size reached before giving up).
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// A manifest, index or config that is not what the OCI spec says.
    #[error("failed to accept {what}: {reason}")]
    Invalid {
        /// What it was.
        what: String,
        /// Why not.
        reason: String,
    },
    /// JSON that does not parse as the type it should be.
    #[error("failed to parse {what}")]
    Json {
        /// What it was.
        what: String,
        /// The parser's complaint.
        #[source]
        source: serde_json::Error,
    },
    /// The name is not in the store.
    #[error("failed to find image {0}: not in the local store")]
    NotFound(String),
    /// A registry operation failed.
    #[error(transparent)]
    Registry(#[from] crate::registry::Error),
    /// A layer failed to unpack (hostile or broken).
    #[error("failed to unpack layer {layer}")]
    Unpack {
        /// The layer's digest.
        layer: String,
        /// The entry and cause.
        #[source]
        source: crate::unpack::Error,
    },
    /// Building the rootfs block image failed.
    #[error(transparent)]
    Rootfs(#[from] crate::rootfs::Error),
    /// The built-in image could not be made.
    #[error("failed to build the built-in image: {0}")]
    Builtin(String),
}

/// The image store's result type.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub(crate) fn io(
        what: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io { what, path, source }
    }
    pub(crate) fn invalid(what: impl Into<String>, reason: impl Into<String>) -> Error {
        Error::Invalid {
            what: what.into(),
            reason: reason.into(),
        }
    }
}
