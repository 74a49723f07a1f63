//! `mvrun check` through the real binary: exit status, JSON schema, and the image audit of the built-in image.

use std::process::Command;

const MVRUN: &str = env!("CARGO_BIN_EXE_mvrun");

fn check(root: &std::path::Path, args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(MVRUN)
        .arg("check")
        .args(args)
        .env("MVRUN_ROOT", root)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn sys_admin_fails_the_audit_and_defaults_do_not() {
    let t = tempfile::tempdir().unwrap();
    let (code, text) = check(t.path(), &["--cap-add", "SYS_ADMIN"]);
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.lines()
            .any(|l| l.starts_with("FAIL") && l.contains("run.capabilities")),
        "{text}"
    );
    let (code, text) = check(t.path(), &["--memory", "128m"]);
    assert!(!text.contains("FAIL"), "{text}");
    assert_eq!(code, Some(0));
    let (code, _) = check(t.path(), &["--strict"]);
    assert_eq!(
        code,
        Some(1),
        "--strict fails on the warnings this host always has"
    );
}

#[test]
fn json_output_has_the_documented_schema() {
    let t = tempfile::tempdir().unwrap();
    let (_, text) = check(
        t.path(),
        &["--format", "json", "--security-opt", "seccomp=unconfined"],
    );
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["schema_version"], 1);
    let checks = v["checks"].as_array().unwrap();
    for c in checks {
        for key in ["id", "status", "reason", "remedy"] {
            assert!(c.get(key).is_some(), "{c}");
        }
        assert!(["PASS", "WARN", "FAIL", "INFO"].contains(&c["status"].as_str().unwrap()));
    }
    let seccomp = checks.iter().find(|c| c["id"] == "run.seccomp").unwrap();
    assert_eq!(seccomp["status"], "FAIL");
    assert!(v["summary"]["fail"].as_u64().unwrap() >= 1);
}

#[test]
fn built_in_image_is_audited() {
    if !std::path::Path::new("/bin/busybox").exists() {
        eprintln!("SKIP: /bin/busybox (busybox-static) is not installed");
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let (_, text) = check(t.path(), &["--image", "busybox", "--user", "65534"]);
    assert!(text.contains("PASS image.setuid"), "{text}");
    assert!(
        text.contains("WARN image.user"),
        "busybox's config has no USER: {text}"
    );
    assert!(text.contains("PASS run.user"), "{text}");
    assert!(text.contains("INFO image.source"), "{text}");
    assert!(
        text.contains("built-in image"),
        "provenance recorded by the store: {text}"
    );
}

#[test]
fn world_writable_store_fails() {
    let t = tempfile::tempdir().unwrap();
    let store = t.path().join("store");
    std::fs::create_dir(&store).unwrap();
    std::fs::set_permissions(&store, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    let (code, text) = check(&store, &[]);
    assert_eq!(code, Some(1));
    assert!(
        text.lines()
            .any(|l| l.starts_with("FAIL") && l.contains("host.store-permissions")),
        "{text}"
    );
}
