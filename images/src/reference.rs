//! Image names: `busybox` -> `docker.io/library/busybox:latest`, as docker spells them.

use crate::{Error, Result};
use oci_client::Reference;

/// Parses a reference the way docker does (default registry docker.io, `library/` for official images, tag
/// `latest`).
pub fn parse(reference: &str) -> Result<Reference> {
    reference
        .parse::<Reference>()
        .map_err(|source| Error::Reference {
            reference: reference.chars().take(200).collect(),
            source,
        })
}

/// The canonical name the index stores for `reference` (`registry/repository[:tag][@digest]`).
pub fn normalize_reference(reference: &str) -> Result<String> {
    Ok(parse(reference)?.whole())
}

/// True for registries reached over plain HTTP without asking (a registry on this machine).
pub fn is_local_registry(registry: &str) -> bool {
    let host = registry.rsplit_once(':').map_or(registry, |(h, port)| {
        if port.bytes().all(|b| b.is_ascii_digit()) {
            h
        } else {
            registry
        }
    });
    matches!(host, "localhost" | "127.0.0.1" | "[::1]" | "::1")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_defaults() {
        assert_eq!(
            normalize_reference("busybox").unwrap(),
            "docker.io/library/busybox:latest"
        );
        assert_eq!(
            normalize_reference("127.0.0.1:5000/a/b:1").unwrap(),
            "127.0.0.1:5000/a/b:1"
        );
        assert!(normalize_reference("UPPER/Case").is_err());
        assert!(is_local_registry("127.0.0.1:5000"));
        assert!(is_local_registry("localhost"));
        assert!(!is_local_registry("registry.example:5000"));
    }
}
