//! `mvrun check`: audits a host, an image and a run configuration against the container-hardening checklist that
//! Docker's security guidance gives (see docs/checks.md for the item each check comes from).

pub mod host;
pub mod image;
pub mod run_config;

use serde::Serialize;

/// The outcome of one check.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Status {
    /// Informational only.
    Info,
    /// Meets the checklist.
    Pass,
    /// Weaker than the checklist asks; fails under `--strict`.
    Warn,
    /// Against the checklist.
    Fail,
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Status::Info => "INFO",
            Status::Pass => "PASS",
            Status::Warn => "WARN",
            Status::Fail => "FAIL",
        })
    }
}

/// One line of the report.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// Stable identifier, e.g. `run.seccomp`.
    pub id: &'static str,
    /// The outcome.
    pub status: Status,
    /// Why, in one line.
    pub reason: String,
    /// What to do about it (empty when nothing needs doing).
    pub remedy: String,
}

impl Finding {
    /// A finding.
    pub fn new(
        id: &'static str,
        status: Status,
        reason: impl Into<String>,
        remedy: impl Into<String>,
    ) -> Self {
        Finding {
            id,
            status,
            reason: reason.into(),
            remedy: remedy.into(),
        }
    }
    /// A PASS with no remedy.
    pub fn pass(id: &'static str, reason: impl Into<String>) -> Self {
        Finding::new(id, Status::Pass, reason, "")
    }
}

/// The whole report, as `--format json` prints it (schema version 1).
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// Bumped when a field changes meaning or goes away.
    pub schema_version: u32,
    /// Every finding, in check order.
    pub checks: Vec<Finding>,
    /// Count per status.
    pub summary: Summary,
}

/// Counts per status.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Summary {
    /// PASS count.
    pub pass: usize,
    /// WARN count.
    pub warn: usize,
    /// FAIL count.
    pub fail: usize,
    /// INFO count.
    pub info: usize,
}

impl Report {
    /// Wraps findings.
    pub fn new(checks: Vec<Finding>) -> Self {
        let mut summary = Summary::default();
        for c in &checks {
            match c.status {
                Status::Pass => summary.pass += 1,
                Status::Warn => summary.warn += 1,
                Status::Fail => summary.fail += 1,
                Status::Info => summary.info += 1,
            }
        }
        Report {
            schema_version: 1,
            checks,
            summary,
        }
    }

    /// Whether the report should fail the command.
    pub fn failed(&self, strict: bool) -> bool {
        self.summary.fail > 0 || (strict && self.summary.warn > 0)
    }

    /// The text form: one line per check.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        for c in &self.checks {
            out.push_str(&format!("{:<4} {:<28} {}", c.status, c.id, c.reason));
            if !c.remedy.is_empty() {
                out.push_str(&format!(" -> {}", c.remedy));
            }
            out.push('\n');
        }
        let s = &self.summary;
        out.push_str(&format!(
            "{} passed, {} warnings, {} failed, {} info\n",
            s.pass, s.warn, s.fail, s.info
        ));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_schema_is_stable() {
        let r = Report::new(vec![
            Finding::pass("host.kvm", "ok"),
            Finding::new("run.seccomp", Status::Fail, "unconfined", "drop it"),
        ]);
        let v: serde_json::Value = serde_json::to_value(&r).unwrap();
        assert_eq!(v["schema_version"], 1);
        assert_eq!(v["checks"][1]["id"], "run.seccomp");
        assert_eq!(v["checks"][1]["status"], "FAIL");
        assert_eq!(v["checks"][1]["reason"], "unconfined");
        assert_eq!(v["checks"][1]["remedy"], "drop it");
        assert_eq!(
            v["summary"],
            serde_json::json!({"pass": 1, "warn": 0, "fail": 1, "info": 0})
        );
        let keys: Vec<_> = v["checks"][0]
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect();
        assert_eq!(keys, ["id", "reason", "remedy", "status"]);
    }

    #[test]
    fn strict_turns_warnings_into_failure() {
        let r = Report::new(vec![Finding::new("x", Status::Warn, "w", "")]);
        assert!(!r.failed(false));
        assert!(r.failed(true));
    }
}

/// Errors gathering what the checks need.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The image store cannot provide the image.
    #[error("cannot audit image {0}: {1}")]
    Image(String, String),
}

/// Gathers the facts the image checks need: resolves (or pulls) the image, unpacks it into a temporary
/// directory with the store's verified unpacker, and reads its config.
pub fn image_facts(name: &str, scratch: &std::path::Path) -> Result<image::ImageFacts, Error> {
    let err = |e: images::Error| Error::Image(name.to_string(), format!("{e:#}"));
    let store = images::ImageStore::open(crate::paths::data_root()).map_err(err)?;
    let img = store
        .resolve_or_pull(name, &images::PullOptions::new())
        .map_err(err)?;
    let rootfs = scratch.join("rootfs");
    std::fs::create_dir_all(&rootfs).map_err(|e| Error::Image(name.to_string(), e.to_string()))?;
    // The unpacker checks every layer against the config's diff_ids; the store checked every blob's digest
    // and size when it entered the store.
    store.unpack_to(&img, &rootfs).map_err(err)?;
    let user = img
        .config()
        .config()
        .as_ref()
        .and_then(|c| c.user().clone())
        .filter(|u| !u.is_empty());
    let source = match img.origin() {
        Some(images::Origin::BuiltIn) => image::Source::BuiltIn,
        Some(images::Origin::Import { path }) => image::Source::LocalImport(path.clone()),
        Some(images::Origin::Registry {
            registry,
            tls: true,
        }) => image::Source::RegistryTls(registry.clone()),
        Some(images::Origin::Registry {
            registry,
            tls: false,
        }) => image::Source::RegistryPlainHttp(registry.clone()),
        None => image::Source::Unrecorded,
    };
    Ok(image::ImageFacts {
        name: name.to_string(),
        rootfs,
        user,
        digests_verified: true,
        source,
    })
}
