//! The OCI image store.
//!
//! Pulls images from registries (`oci-client`), imports OCI layouts and `docker save` archives, verifies every
//! blob's digest, unpacks layers safely (whiteouts, hostile paths refused) and builds the read-only rootfs block
//! image each sandbox mounts, cached by digest under `MVRUN_ROOT`.
