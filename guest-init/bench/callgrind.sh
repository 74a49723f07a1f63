#!/usr/bin/env bash
# Counts the instructions guest-init executes from its start to the workload's exec, on the host, with callgrind:
#   guest-init/bench/callgrind.sh [GUEST_INIT]        (as root; default: the static build of build-static.sh)
#
# Under this project's emulated KVM every guest instruction costs about a microsecond, so this count is the
# container's share of a sandbox's start there. Why the set-up below:
# - Debian 12's valgrind (3.19) and 13's (3.24) lack open_tree/fsopen, which libcontainer's mounts need: the
#   script takes valgrind 3.27 from Debian unstable's archive and runs it from a scratch directory.
# - The container's init process runs after pivot_root and its profile dies with its exec, so the workload is a
#   file that cannot be executed (/etc/passwd): init does all of its work, its exec fails (exit 126), and callgrind
#   writes the profile into the rootfs. Valgrind's own launcher and tools are copied into the rootfs for that.
# - Counts are cumulative across fork (a child starts with its parent's count), so the container init's total is
#   the chain guest-init -> intermediate -> init, everything on the path to the workload.
# - The guest kernel has no IA32 emulation, which changes the seccomp filter (x86-64 only); a tmpfs over
#   /proc/sys/abi makes the host look the same. Set COMPAT_32=1 to keep the host's view.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
gi="${1:-$("$root/guest-init/build-static.sh" | tail -n1)}"
work="${TMPDIR:-/tmp}/mvrun-gi-callgrind"
vg_deb="valgrind_3.27.1-0.2_amd64.deb"
mkdir -p "$work"
if [[ ! -x "$work/vg/usr/bin/valgrind.bin" ]]; then
    echo "==> fetching valgrind 3.27 from Debian unstable" >&2
    curl -fsS --max-time 300 -o "$work/$vg_deb" "http://deb.debian.org/debian/pool/main/v/valgrind/$vg_deb"
    dpkg-deb -x "$work/$vg_deb" "$work/vg"
fi
rootfs="$work/rootfs"
rm -rf "$rootfs"
mkdir -p "$rootfs"/{bin,etc,proc,sys,dev,tmp}
cp /bin/busybox "$rootfs/bin/"
echo 'root:x:0:0:root:/root:/bin/sh' >"$rootfs/etc/passwd"
echo 'root:x:0:' >"$rootfs/etc/group"
# Valgrind inside the container, at the same absolute paths, with its launcher's shared libraries.
mkdir -p "$rootfs$work/vg/usr/bin" "$rootfs$work/vg/usr/libexec"
cp "$work/vg/usr/bin/valgrind.bin" "$rootfs$work/vg/usr/bin/"
cp -a "$work/vg/usr/libexec/valgrind" "$rootfs$work/vg/usr/libexec/"
for lib in $(ldd "$work/vg/usr/bin/valgrind.bin" | grep -o '/[^ ]*'); do
    mkdir -p "$rootfs$(dirname "$lib")"
    cp -L "$lib" "$rootfs$lib"
done
out="$work/out"
rm -rf "$out"
mkdir -p "$out" "$rootfs$out"
hide_abi='mount -t tmpfs none /proc/sys/abi &&'
[[ "${COMPAT_32:-0}" == 1 ]] && hide_abi=''
VALGRIND_LIB="$work/vg/usr/libexec/valgrind" unshare -m sh -c "mount --make-rprivate / && $hide_abi \
    exec '$work/vg/usr/bin/valgrind.bin' --tool=callgrind --trace-children=yes \
    --callgrind-out-file='$out/cg.%p' '$gi' run --rootfs '$rootfs' -- /etc/passwd" >"$work/log" 2>&1 || true
# The container's init wrote its profile inside the rootfs (its own root), at the same path.
init_profile="$rootfs$out/cg.1"
if [[ ! -f "$init_profile" ]]; then
    echo "no profile from the container's init; see $work/log" >&2
    exit 1
fi
for f in "$out"/cg.* "$init_profile"; do
    printf '%-60s %12s instructions\n' "$f" "$(awk '/^totals:/{print $2}' "$f")"
done
echo "start -> workload exec (the container init's cumulative count): $(awk '/^totals:/{print $2}' "$init_profile")"
