#!/usr/bin/env bash
# Makes a small initramfs for trying a guest kernel: Debian's static busybox, /dev/console, and an /init script.
#
#   kernels/make-test-initramfs.sh OUT [INIT_SCRIPT]
#
# OUT ending in .gz is gzip-compressed, anything else is a plain newc cpio (the cheaper one to unpack on an
# emulated-KVM host: the kernel's gunzip runs in the guest too). INIT_SCRIPT (default: a built-in one) becomes /init;
# start it with `#!/bin/sh`. The built-in /init prints "mvrun-test-init: up <uptime>", writes the boot-timer byte
# (123 at 0xd0000000, through /dev/mem) and leaves with `reboot -f` (reboot=k on the command line ends the VM).
# Needs root (for the /dev/console node), busybox-static and cpio.
set -euo pipefail

die() { echo "make-test-initramfs: error: $*" >&2; exit 1; }
[[ $# -ge 1 && $# -le 2 ]] || die "usage: $0 OUT [INIT_SCRIPT]"
out="$1"
init="${2:-}"
busybox=/bin/busybox
[[ -x "$busybox" ]] && file -L "$busybox" 2>/dev/null | grep -q 'statically linked' \
    || die "$busybox is missing or not static (apt-get install busybox-static)"
command -v cpio >/dev/null || die "cpio is missing (apt-get install cpio)"
[[ $(id -u) -eq 0 ]] || die "run as root: the initramfs needs a /dev/console device node"
[[ -z "$init" || -f "$init" ]] || die "init script $init not found"

stage="$(mktemp -d)"
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage"/{bin,dev,proc,sys,tmp}
cp "$busybox" "$stage/bin/busybox"
ln -s busybox "$stage/bin/sh"
mknod -m 600 "$stage/dev/console" c 5 1
if [[ -n "$init" ]]; then
    install -m 0755 "$init" "$stage/init"
else
    cat >"$stage/init" <<'EOF'
#!/bin/sh
/bin/busybox mount -t proc proc /proc
read up idle </proc/uptime
echo "mvrun-test-init: up $up"
/bin/busybox mount -t devtmpfs dev /dev
/bin/busybox devmem 0xd0000000 8 123
/bin/busybox reboot -f
EOF
    chmod 0755 "$stage/init"
fi

tmp="$out.tmp.$$"
if [[ "$out" == *.gz ]]; then
    (cd "$stage" && find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet) | gzip -9 >"$tmp"
else
    (cd "$stage" && find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet) >"$tmp"
fi
mv "$tmp" "$out"
echo "$out"
