#!/bin/bash
# Instructions the VMM spends per virtio request, counted by callgrind (perf has no hardware counters on these
# machines). Runs the ignored bench tests of the virtio devices (1000 requests each, driven through their queues
# in guest memory) and divides the inclusive cost of the device's queue function by the request count. Kernel
# work (the pread/write system calls themselves) is not counted: callgrind sees user space only.
# Usage: vmm/benches/virtio_callgrind.sh   (needs valgrind; CARGO_TARGET_DIR is honoured)
set -euo pipefail
cd "$(dirname "$0")/.."
command -v valgrind >/dev/null || { echo "SKIP: valgrind is not installed"; exit 0; }
bin=$(cargo test --release --lib --no-run --message-format=json 2>/dev/null \
  | sed -n 's/.*"executable":"\([^"]*\)".*/\1/p' | tail -1)
[[ -x "$bin" ]] || { echo "failed to build the vmm test binary" >&2; exit 1; }
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
count() { # count FUNCTION_SUBSTRING CALLGRIND_FILE -> inclusive instructions
  callgrind_annotate --inclusive=yes "$2" 2>/dev/null | grep -F "$1 [" | head -1 | awk '{gsub(",","",$1); print $1}'
}
valgrind --tool=callgrind --callgrind-out-file="$out/blk" "$bin" --ignored --exact \
  devices::virtio::block::device::tests::bench_4k_reads --test-threads=1 >/dev/null 2>&1
valgrind --tool=callgrind --callgrind-out-file="$out/vsock" "$bin" --ignored --exact \
  devices::virtio::vsock::device::tests::bench_packets --test-threads=1 >/dev/null 2>&1
blk=$(count "Block::process_queue" "$out/blk")
tx=$(count "Vsock::process_tx" "$out/vsock")
rx=$(count "Vsock::process_rx" "$out/vsock")
notify=$(count "VsockBackend>::notify" "$out/vsock")
# 1000 reads; 1001 packets each way (the bench's connection setup adds one).
echo "virtio-blk 4 KiB read:            $((blk / 1000)) instructions/request"
echo "virtio-vsock guest->host packet:  $((tx / 1001)) instructions/packet (64-byte payload)"
echo "virtio-vsock host->guest packet:  $(((rx + notify) / 1001)) instructions/packet (64-byte payload, incl. epoll)"
