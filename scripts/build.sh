#!/usr/bin/env bash
# Builds mvrun (release) and the static guest-init, and installs them:
#   /usr/local/bin/mvrun, /usr/local/bin/mvrun-vmm (one per sandbox, started by mvrun), /usr/local/lib/mvrun/guest-init
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
target="${CARGO_TARGET_DIR:-$root/target}"

echo "==> building mvrun and its per-sandbox VMM (release)"
cargo build --release --locked -p mvrun --bin mvrun --bin mvrun-vmm
install -D -m 0755 "$target/release/mvrun" /usr/local/bin/mvrun
install -D -m 0755 "$target/release/mvrun-vmm" /usr/local/bin/mvrun-vmm

if [[ -x guest-init/build-static.sh ]]; then
    echo "==> building the static guest-init"
    gi="$(guest-init/build-static.sh | tail -n1)"
    install -D -m 0755 "$gi" /usr/local/lib/mvrun/guest-init
fi
echo "==> installed: $(command -v mvrun)"
