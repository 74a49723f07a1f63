//! The benchmark harness's quick mode (one iteration, small N), so `mvrun-bench` cannot rot: it must write
//! results.json, results.csv, a PNG per figure and summary.md, all well-formed.

use mvrun::kernel::Variant;
use std::path::Path;
use std::process::Command;

#[test]
fn quick_mode_writes_results_plots_and_summary() {
    if !Path::new("/dev/kvm").exists() {
        println!("SKIP: /dev/kvm is missing; every benchmark needs it");
        return;
    }
    let out = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_mvrun-bench"));
    cmd.arg("--quick").arg("--out").arg(out.path());
    let emulated = Variant::for_this_host() == Variant::Emulated;
    if emulated {
        println!(
            "SKIP (in part): this host's KVM is emulated, where each guest boot takes minutes; quick mode runs the \
             VMM-side benchmark (vmm-overhead) here, and every benchmark on a hardware-KVM host"
        );
        cmd.args(["--only", "vmm-overhead"]);
    }
    let o = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "mvrun-bench failed: {stderr}");

    let results: Vec<serde_json::Value> =
        serde_json::from_slice(&std::fs::read(out.path().join("results.json")).unwrap()).unwrap();
    assert!(!results.is_empty(), "no series measured: {stderr}");
    let mut values = 0;
    for s in &results {
        for key in ["bench", "subject", "metric", "unit"] {
            assert!(
                s[key].as_str().is_some_and(|v| !v.is_empty()),
                "{key} in {s}"
            );
        }
        let v = s["values"].as_array().unwrap();
        assert!(!v.is_empty(), "a series without values: {s}");
        assert!(
            v.iter().all(|x| x.as_f64().is_some_and(f64::is_finite)),
            "{s}"
        );
        values += v.len();
    }
    if !emulated {
        for bench in ["cold-start", "vmm-overhead", "density", "io"] {
            assert!(
                results.iter().any(|s| s["bench"] == bench),
                "{bench} missing: {stderr}"
            );
        }
    } else {
        assert!(
            results.iter().any(|s| s["bench"] == "vmm-overhead"),
            "{stderr}"
        );
    }

    let csv = std::fs::read_to_string(out.path().join("results.csv")).unwrap();
    let mut lines = csv.lines();
    assert_eq!(lines.next(), Some("bench,subject,metric,unit,run,value"));
    assert_eq!(lines.count(), values, "one CSV row per value");

    let md = std::fs::read_to_string(out.path().join("summary.md")).unwrap();
    assert!(md.contains("| benchmark | subject | metric |"), "{md}");
    let plots: Vec<&str> = md
        .lines()
        .filter_map(|l| l.strip_prefix("![")?.split("](").nth(1)?.strip_suffix(')'))
        .collect();
    assert!(!plots.is_empty(), "no plots in the summary: {md}");
    for p in plots {
        let bytes = std::fs::read(out.path().join(p)).unwrap_or_else(|e| panic!("{p}: {e}"));
        assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n"), "{p} is not a PNG");
        assert!(bytes.len() > 1000, "{p} is suspiciously small");
    }
}
