#!/usr/bin/env bash
# Builds mvrun (release) and the static guest-init, and installs them:
#   /usr/local/bin/mvrun, /usr/local/bin/containerd-shim-mvrun-v2 (when built), /usr/local/lib/mvrun/guest-init
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
target="${CARGO_TARGET_DIR:-$root/target}"

echo "==> building mvrun (release)"
cargo build --release --locked -p mvrun
install -D -m 0755 "$target/release/mvrun" /usr/local/bin/mvrun

if [[ -x guest-init/build-static.sh ]]; then
    echo "==> building the static guest-init"
    gi="$(guest-init/build-static.sh | tail -n1)"
    install -D -m 0755 "$gi" /usr/local/lib/mvrun/guest-init
fi
echo "==> installed: $(command -v mvrun)"
