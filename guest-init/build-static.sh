#!/usr/bin/env bash
# Builds the static guest-init (release, glibc static-pie, libseccomp linked statically) and prints its path as the
# last line. Needs libseccomp-dev, libelf-dev, zlib1g-dev and pkg-config (scripts/packages.txt).
#   CARGO_TARGET_DIR  where to build (default: <repo>/target/guest-init-static; kept apart from the normal build
#                     because RUSTFLAGS differ and would otherwise rebuild everything each time)
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
target_dir="${GUEST_INIT_TARGET_DIR:-${CARGO_TARGET_DIR:-$root/target}/guest-init-static}"
# Without LIBSECCOMP_LINK_TYPE=static, libseccomp-sys links the shared library and the "static" binary comes out
# dynamic and crashes at start. An explicit --target keeps RUSTFLAGS off the build scripts and proc macros.
LIBSECCOMP_LINK_TYPE=static \
LIBSECCOMP_LIB_PATH=/usr/lib/x86_64-linux-gnu \
RUSTFLAGS='-C target-feature=+crt-static' \
CARGO_TARGET_DIR="$target_dir" \
    cargo build --profile guest-init --locked -p guest-init --target x86_64-unknown-linux-gnu -j "${GUEST_INIT_JOBS:-2}" >&2
out="$target_dir/x86_64-unknown-linux-gnu/guest-init/guest-init"
# A dynamic binary has an ELF interpreter (PT_INTERP); static-pie has none.
if readelf -l "$out" | grep -q 'INTERP'; then
    echo "guest-init at $out is not statically linked" >&2
    exit 1
fi
# The profile strips already; the copy keeps the path stable for callers and tests.
stripped="$target_dir/guest-init-static"
strip -o "$stripped.tmp" "$out"
mv "$stripped.tmp" "$stripped"
echo "$stripped"
