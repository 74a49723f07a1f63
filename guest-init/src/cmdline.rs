//! The `mvrun.<key>=<value>` words guest-init reads from the kernel command line (/proc/cmdline).
//!
//! | word | default | meaning |
//! |---|---|---|
//! | `mvrun.rootfs=DEV` | `/dev/vda` | the image's read-only root filesystem |
//! | `mvrun.rootfstype=erofs\|ext4` | `erofs` | its filesystem type |
//! | `mvrun.scratch=DEV` | none | writable disk for the overlay's upper layer (else a tmpfs) |
//! | `mvrun.scratchtype=TYPE` | `ext4` | the scratch disk's filesystem type |
//! | `mvrun.tmpfs_size=SIZE` | `50%` | size of the tmpfs upper layer (tmpfs `size=` syntax) |
//! | `mvrun.log=FILTER` | `warn` | guest-init's log filter (tracing env-filter syntax) |
//!
//! Unknown `mvrun.` words are ignored with a warning, other words are the kernel's.

/// Parsed guest parameters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// Root filesystem block device.
    pub rootfs: String,
    /// Its filesystem type.
    pub rootfstype: String,
    /// Scratch block device for the upper layer.
    pub scratch: Option<String>,
    /// The scratch device's filesystem type.
    pub scratchtype: String,
    /// tmpfs upper layer size.
    pub tmpfs_size: String,
    /// Log filter.
    pub log: Option<String>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            rootfs: "/dev/vda".into(),
            rootfstype: "erofs".into(),
            scratch: None,
            scratchtype: "ext4".into(),
            tmpfs_size: "50%".into(),
            log: None,
        }
    }
}

/// Filesystem types we mount images and scratch disks as.
const FSTYPES: [&str; 3] = ["erofs", "ext4", "squashfs"];

fn valid_dev(v: &str) -> bool {
    v.starts_with("/dev/") && !v.contains("..") && v.len() < 64
}

fn valid_size(v: &str) -> bool {
    !v.is_empty() && v.len() < 16 && v.chars().all(|c| c.is_ascii_alphanumeric() || c == '%')
}

impl Config {
    /// Parses a kernel command line; invalid values keep the default and are logged.
    pub fn parse(cmdline: &str) -> Config {
        let mut c = Config::default();
        for word in cmdline.split_ascii_whitespace() {
            let Some(rest) = word.strip_prefix("mvrun.") else {
                continue;
            };
            let (key, value) = rest.split_once('=').unwrap_or((rest, ""));
            let ok = match key {
                "rootfs" if valid_dev(value) => {
                    c.rootfs = value.into();
                    true
                }
                "rootfstype" if FSTYPES.contains(&value) => {
                    c.rootfstype = value.into();
                    true
                }
                "scratch" if valid_dev(value) => {
                    c.scratch = Some(value.into());
                    true
                }
                "scratchtype" if FSTYPES.contains(&value) => {
                    c.scratchtype = value.into();
                    true
                }
                "tmpfs_size" if valid_size(value) => {
                    c.tmpfs_size = value.into();
                    true
                }
                "log" => {
                    c.log = Some(value.into());
                    true
                }
                _ => false,
            };
            if !ok {
                tracing::warn!("ignoring kernel command-line word {word:?}");
            }
        }
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_mvrun_words_and_keeps_defaults() {
        let c = Config::parse(
            "console=ttyS0 reboot=k panic=-1 mvrun.rootfs=/dev/vdc mvrun.rootfstype=ext4 mvrun.scratch=/dev/vdb mvrun.tmpfs_size=64m mvrun.log=debug",
        );
        assert_eq!(c.rootfs, "/dev/vdc");
        assert_eq!(c.rootfstype, "ext4");
        assert_eq!(c.scratch.as_deref(), Some("/dev/vdb"));
        assert_eq!(c.tmpfs_size, "64m");
        assert_eq!(c.log.as_deref(), Some("debug"));
        assert_eq!(Config::parse("quiet"), Config::default());
    }

    #[test]
    fn rejects_bad_values() {
        let c = Config::parse("mvrun.rootfs=/etc/passwd mvrun.rootfstype=nfs mvrun.tmpfs_size=1m,exec mvrun.scratch=/dev/../x mvrun.what=1");
        assert_eq!(c, Config::default());
    }
}
