//! `-i -t` without a terminal on stdin is refused before anything starts, with Docker's message; no guest needed.

use std::process::{Command, Stdio};

const MVRUN: &str = env!("CARGO_BIN_EXE_mvrun");

#[test]
fn interactive_terminal_without_a_terminal_is_refused() {
    let root = tempfile::tempdir().unwrap();
    for args in [
        &["run", "--rm", "-it", "busybox", "true"][..],
        &["exec", "-it", "no-such-sandbox", "true"],
    ] {
        let o = Command::new(MVRUN)
            .args(args)
            .env("MVRUN_ROOT", root.path())
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(125), "{args:?}: {err}");
        assert!(
            err.contains("the input device is not a TTY"),
            "{args:?}: {err}"
        );
        assert!(o.stdout.is_empty());
    }
}
