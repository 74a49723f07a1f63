#!/usr/bin/env bash
# The jail's cost on VMM start: `mvrun run --timings` with and without the jail (MVRUN_UNSAFE_NO_JAIL=1), N runs
# each, printing "VMM setup" (supervisor start to VM built, jail in force) and "VMM launch to first KVM_RUN" (the
# supervisor's clone of the VMM process to the boot vCPU entering the guest).
#
# The guest is a 5-byte ELF "kernel" that resets the VM through the i8042 at once (MVRUN_KERNEL): what is measured
# ends at the first KVM_RUN, before any guest code matters, and each run takes a fraction of a second instead of a
# guest boot. The sandbox fails afterwards ("the guest ended before its agent started"): expected.
#
# Usage: scripts/measure-jail.sh [RUNS] (default 5); needs root, /dev/kvm, a built mvrun (BIN_DIR, default
# target/debug; set it to target/release for release figures), busybox-static for the built-in image, and a
# guest-init binary (MVRUN_GUEST_INIT; its content does not matter here).
set -euo pipefail
runs=${1:-5}
bin=${BIN_DIR:-target/debug}
work=$(mktemp -d /tmp/mvrun-measure-jail.XXXXXX)
trap 'rm -rf "$work"' EXIT
python3 - "$work/reset.elf" <<'PY'
import struct, sys
code = b'\xb0\xfe\xe6\x64\xf4'  # mov al, 0xfe; out 0x64, al (i8042 CPU reset); hlt
paddr, off = 0x1000000, 0x1000
eh = struct.pack('<16sHHIQQQIHHHHHH', b'\x7fELF\x02\x01\x01' + b'\0' * 9, 2, 0x3e, 1, paddr, 64, 0, 0, 64, 56, 1, 0, 0, 0)
ph = struct.pack('<IIQQQQQQ', 1, 5, off, paddr, paddr, len(code), len(code), 0x1000)
data = eh + ph
open(sys.argv[1], 'wb').write(data + b'\0' * (off - len(data)) + code)
PY
export MVRUN_KERNEL=$work/reset.elf MVRUN_RUN_DIR=$work/run MVRUN_GUEST_INIT=${MVRUN_GUEST_INIT:-/bin/busybox}
once() {
    local label=$1
    shift
    env "$@" "$bin/mvrun" run --rm --timings busybox true 2>&1 >/dev/null |
        awk -v l="$label" '/VMM setup|first KVM_RUN|jail in place/ { n = $(NF-1); sub(/^mvrun: /, ""); sub(/ +[0-9.]+ ms$/, ""); printf "%-9s %-30s %8.1f ms\n", l, $0, n }' || true
}
"$bin/mvrun" run --rm busybox true >/dev/null 2>&1 || true # warm the image and initramfs caches
# Alternate the two, so load from elsewhere on the machine hits both alike.
for _ in $(seq "$runs"); do
    once jailed MVRUN_UNSAFE_NO_JAIL=0
    once unjailed MVRUN_UNSAFE_NO_JAIL=1
done >"$work/runs.txt"
sort -s -k1,1 "$work/runs.txt"
echo "medians:"
awk '{ ms = $(NF-1); key = $0; sub(/ +[0-9.]+ ms$/, "", key); v[key] = v[key] " " ms }
     END { for (k in v) { n = split(substr(v[k], 2), a, " "); for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (a[j] + 0 < a[i] + 0) { t = a[i]; a[i] = a[j]; a[j] = t }
           printf "  %-45s %8.1f ms (n=%d)\n", k, (n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2), n } }' "$work/runs.txt" | sort
