#!/usr/bin/env bash
# One command from a fresh Debian 12 machine (as root) to a working mvrun: installs the Debian packages, builds
# and installs mvrun and guest-init, builds the guest kernel this host needs (cached by the hash of its inputs
# under $MVRUN_ROOT, default /var/lib/mvrun), then runs the built-in example.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
"$root/scripts/install-packages.sh"
"$root/scripts/build.sh"

echo "==> building the guest kernel for this host (minutes the first time, cached afterwards)"
mvrun kernel build

echo "==> example: mvrun run of the built-in busybox image in a fresh microVM"
"$root/scripts/example.sh"
