#!/usr/bin/env bash
# The built-in example: boot this host's guest kernel in mvrun's VMM with a marker on its command line; the kernel
# prints its banner and the command line on the serial console (stdout).
set -euo pipefail
kernel="$(mvrun kernel path)"
exec mvrun vm boot --kernel "$kernel" --append "mvrun.example=hello" --timings --timeout 180
