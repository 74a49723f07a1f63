//! The guest kernels mvrun builds: every option the fragments require is in the built `.config`, and the
//! emulated-KVM workarounds are compiled into the `emulated` variant only.
//!
//! These run against the cached kernels under $MVRUN_ROOT/kernels (scripts/test.sh builds both first); a kernel
//! that is missing is built here, which takes minutes.

use mvrun::kernel::{self, config, KernelArtifacts, Variant};
use std::path::Path;
use std::process::Command;

const MVRUN: &str = env!("CARGO_BIN_EXE_mvrun");

fn built(variant: Variant) -> Option<KernelArtifacts> {
    let tarball = kernel::source_tarball();
    if kernel::path_if_built(variant).is_none() && !tarball.exists() {
        eprintln!(
            "SKIP: the {variant} kernel is not built and {} is missing (linux-source-6.12)",
            tarball.display()
        );
        return None;
    }
    Some(
        kernel::ensure_built(variant, true)
            .unwrap_or_else(|e| panic!("building the {variant} kernel: {e}")),
    )
}

fn symbols(a: &KernelArtifacts) -> Vec<String> {
    std::fs::read_to_string(&a.system_map)
        .unwrap()
        .lines()
        .filter_map(|l| l.split_whitespace().nth(2).map(str::to_string))
        .collect()
}

/// fpu__drop's disassembly, or None (with a note) when objdump is not there.
fn disassemble(vmlinux: &Path, function: &str) -> Option<String> {
    let out = Command::new("objdump")
        .arg("-d")
        .arg(format!("--disassemble={function}"))
        .arg(vmlinux)
        .output();
    match out {
        Ok(o) if o.status.success() => Some(String::from_utf8_lossy(&o.stdout).into_owned()),
        _ => {
            eprintln!(
                "note: objdump (binutils) is not usable; not checking {function}'s instructions"
            );
            None
        }
    }
}

#[test]
fn built_config_holds_every_required_option() {
    for variant in Variant::ALL {
        let Some(a) = built(variant) else { return };
        let text = std::fs::read_to_string(&a.config).unwrap();
        let unmet: Vec<String> = config::unmet(variant, &text)
            .iter()
            .map(|r| r.to_string())
            .collect();
        assert!(
            unmet.is_empty(),
            "{}: the {variant} kernel's .config lacks: {}",
            a.config.display(),
            unmet.join(", ")
        );
        // What the rest of mvrun relies on, named once more so that a fragment edit cannot drop it silently.
        for must in [
            "CONFIG_PVH=y",
            "CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES=y",
            "CONFIG_VIRTIO_BLK=y",
            "CONFIG_VIRTIO_VSOCKETS=y",
            "CONFIG_EROFS_FS=y",
            "CONFIG_OVERLAY_FS=y",
            "CONFIG_SECCOMP_FILTER=y",
            "CONFIG_CGROUP_BPF=y",
            "CONFIG_USER_NS=y",
            "CONFIG_SERIAL_8250_CONSOLE=y",
            "CONFIG_DEVMEM=y",
        ] {
            assert!(
                text.lines().any(|l| l == must),
                "the {variant} kernel lacks {must}"
            );
        }
        let emulated_on = text.lines().any(|l| l == "CONFIG_MVRUN_EMULATED_KVM=y");
        assert_eq!(
            emulated_on,
            variant == Variant::Emulated,
            "CONFIG_MVRUN_EMULATED_KVM in the {variant} kernel"
        );
    }
}

#[test]
fn emulated_workarounds_compile_out_of_the_normal_kernel() {
    let Some(normal) = built(Variant::Normal) else {
        return;
    };
    let Some(emulated) = built(Variant::Emulated) else {
        return;
    };
    let (n, e) = (symbols(&normal), symbols(&emulated));

    let ours = |syms: &[String]| {
        syms.iter()
            .filter(|s| s.contains("mvrun"))
            .cloned()
            .collect::<Vec<_>>()
    };
    assert_eq!(
        ours(&n),
        Vec::<String>::new(),
        "the normal kernel has symbols of our patches"
    );
    assert!(
        ours(&e).iter().any(|s| s == "mvrun_emulated_kvm_syscall"),
        "the emulated kernel lacks the SYSCALL fixup"
    );
    let has = |syms: &[String], name: &str| syms.iter().any(|s| s == name);
    assert!(
        has(&n, "int3_selftest") && !has(&e, "int3_selftest"),
        "int3_selftest: upstream in normal, gone in emulated"
    );
    let config = std::fs::read_to_string(&normal.config).unwrap();
    assert!(
        !config
            .lines()
            .any(|l| l.starts_with("CONFIG_MVRUN_") && l.ends_with("=y")),
        "normal .config turns on an option of ours"
    );

    if let (Some(dn), Some(de)) = (
        disassemble(&normal.vmlinux, "fpu__drop"),
        disassemble(&emulated.vmlinux, "fpu__drop"),
    ) {
        assert!(
            dn.contains("fwait"),
            "the normal kernel's fpu__drop lost its FWAIT:\n{dn}"
        );
        assert!(
            !de.contains("fwait"),
            "the emulated kernel's fpu__drop still executes FWAIT:\n{de}"
        );
    }
}

#[test]
fn cli_prints_the_cached_kernels() {
    for variant in Variant::ALL {
        let Some(a) = built(variant) else { return };
        let out = Command::new(MVRUN)
            .args(["kernel", "path", "--variant", variant.name()])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            a.vmlinux.to_str().unwrap()
        );
        let out = Command::new(MVRUN)
            .args(["kernel", "path", "--bzimage", "--variant", variant.name()])
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            a.bzimage.to_str().unwrap()
        );
    }
    let out = Command::new(MVRUN)
        .args(["kernel", "build", "--variant", "all"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.lines().filter(|l| l.ends_with("(cached)")).count() == 2,
        "{stdout}"
    );

    let host = Command::new(MVRUN)
        .args(["kernel", "path"])
        .output()
        .unwrap();
    let expect = kernel::path_if_built(Variant::for_this_host()).unwrap();
    assert_eq!(
        String::from_utf8_lossy(&host.stdout).trim(),
        expect.vmlinux.to_str().unwrap()
    );
}

#[test]
fn cli_rejects_an_unknown_variant_in_one_line() {
    let out = Command::new(MVRUN)
        .args(["kernel", "path", "--variant", "fast"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("invalid value 'fast'") && stderr.contains("normal"),
        "{stderr}"
    );
}
