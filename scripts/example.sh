#!/usr/bin/env bash
# The built-in example: the built-in busybox image in a fresh microVM, with each phase's time. On a host whose
# /dev/kvm is emulated (kvm_pvm) the guest runs instruction by instruction: expect minutes, not milliseconds.
set -euo pipefail
exec mvrun run --rm --timings busybox sh -c 'echo "hello from an mvrun microVM: $(uname -sr), uid $(id -u)"'
