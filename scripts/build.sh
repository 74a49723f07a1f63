#!/usr/bin/env bash
# Builds mvrun (release) and the static guest-init, and installs them:
#   /usr/local/bin/mvrun, /usr/local/bin/mvrun-vmm (one per sandbox, started by mvrun), /usr/local/lib/mvrun/guest-init,
#   /usr/local/bin/containerd-shim-mvrun-v2 (containerd's runtime io.containerd.mvrun.v2)
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
target="${CARGO_TARGET_DIR:-$root/target}"

echo "==> building mvrun and its per-sandbox VMM (release)"
cargo build --release --locked -p mvrun --bin mvrun --bin mvrun-vmm --bin containerd-shim-mvrun-v2
install -D -m 0755 "$target/release/mvrun" /usr/local/bin/mvrun
install -D -m 0755 "$target/release/mvrun-vmm" /usr/local/bin/mvrun-vmm
install -D -m 0755 "$target/release/containerd-shim-mvrun-v2" /usr/local/bin/containerd-shim-mvrun-v2

if [[ -x guest-init/build-static.sh ]]; then
    echo "==> building the static guest-init"
    gi="$(guest-init/build-static.sh | tail -n1)"
    install -D -m 0755 "$gi" /usr/local/lib/mvrun/guest-init
fi
echo "==> installed: $(command -v mvrun)"
