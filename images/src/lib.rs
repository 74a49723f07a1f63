//! The OCI image store.
//!
//! Pulls images from registries (`oci-client`), imports OCI layouts and `docker save` archives, verifies every
//! blob's digest and size before it enters the store, unpacks layers safely (whiteouts kept, hostile entries
//! refused) and builds the read-only rootfs block image each sandbox mounts, cached by digest under `MVRUN_ROOT`.
//!
//! ```no_run
//! use images::{ImageStore, PullOptions};
//! let store = ImageStore::open("/var/lib/mvrun")?;
//! let image = store.resolve_or_pull("busybox", &PullOptions::new())?;
//! let disk = store.rootfs_image(&image)?; // erofs file, built once, shared read-only
//! let cmd = image.config().config().as_ref().and_then(|c| c.cmd().clone());
//! # let _ = (disk, cmd);
//! # Ok::<(), images::Error>(())
//! ```

pub mod builtin;
pub mod digest;
mod error;
mod import;
pub mod progress;
mod reference;
mod registry;
pub mod rootfs;
mod store;
pub mod unpack;

pub use digest::Digest;
pub use error::{Error, Result};
pub use progress::{ConsoleProgress, NoProgress, Progress};
pub use reference::normalize_reference;
pub use registry::PullOptions;
pub use rootfs::RootfsFormat;
pub use store::{Image, ImageStore, ImageSummary, Origin, PruneReport};
pub use unpack::UnpackLimits;
