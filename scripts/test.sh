#!/usr/bin/env bash
# Runs mvrun's whole test suite: unit tests, VMM tests on /dev/kvm, guest boots, images, guest-init, and the
# full path. Builds what the tests need first (guest kernels are cached by the hash of their inputs).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
"$root/scripts/install-packages.sh"

echo "==> building the workspace and the test artifacts"
cargo build --locked --workspace --all-targets
target="${CARGO_TARGET_DIR:-$root/target}"
if [[ -x guest-init/build-static.sh ]]; then
    MVRUN_GUEST_INIT="$(guest-init/build-static.sh | tail -n1)"
    export MVRUN_GUEST_INIT
fi
"$target/debug/mvrun" kernel build --variant all

echo "==> running the tests"
cargo nextest run --locked --workspace --profile "${NEXTEST_PROFILE:-ci}" --no-tests=warn "$@"
cargo test --locked --workspace --doc -q
