#!/usr/bin/env bash
# Runs every cargo-fuzz target of the repo (vmm/fuzz: the devices, the virtio-mmio transport, whole-queue
# sequences; fuzz/: the agent protocol, the layer unpacker) for a set time each and prints executions and crashes.
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]     (default 60 s, every target)
#
# Seeds come from the checked-in corpus (vmm/fuzz/seeds/<target>, fuzz/corpus/<target>); what a run finds goes to
# a scratch corpus under the target dir, and crashes to <fuzz dir>/artifacts/<target>/ (exit status 1 if any).
# Environment:
#   FUZZ_SANITIZER   cargo-fuzz's -s (default none: no nightly-only sanitizer, more executions per second;
#                    `address` needs the nightly toolchain, which the script then uses)
#   FUZZ_JOBS        build jobs (default 2)
#   CARGO_TARGET_DIR where to build (default <repo>/target); the fuzz builds go to $CARGO_TARGET_DIR/fuzz
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
secs="${1:-60}"
shift || true
only=("$@")
sanitizer="${FUZZ_SANITIZER:-none}"
jobs="${FUZZ_JOBS:-2}"
target_dir="${CARGO_TARGET_DIR:-$root/target}/fuzz"

if ! command -v cargo-fuzz >/dev/null; then
    echo "cargo-fuzz is missing: cargo install cargo-fuzz" >&2
    exit 2
fi
toolchain=()
if [[ "$sanitizer" != none ]]; then
    toolchain=(+nightly)
fi

# <fuzz dir> <seed dir name>
suites=("vmm/fuzz seeds" "fuzz corpus")
total_crashes=0
summary=()
for suite in "${suites[@]}"; do
    read -r dir seeds <<<"$suite"
    cd "$root/$dir"
    echo "==> building $dir (sanitizer: $sanitizer)" >&2
    build_dir="$target_dir/${dir//\//-}"
    CARGO_BUILD_JOBS="$jobs" cargo "${toolchain[@]}" fuzz build -s "$sanitizer" --target-dir "$build_dir" >&2
    for target in $(cargo fuzz list); do
        if ((${#only[@]})) && [[ ! " ${only[*]} " =~ " $target " ]]; then
            continue
        fi
        scratch="$target_dir/corpus/$dir/$target"
        mkdir -p "$scratch" "artifacts/$target"
        seed_args=()
        if [[ -d "$seeds/$target" ]]; then
            seed_args=("$seeds/$target")
        fi
        log="$target_dir/logs/${dir//\//_}-$target.log"
        mkdir -p "$(dirname "$log")"
        before=$(find "artifacts/$target" -type f | wc -l)
        echo "==> $dir $target for ${secs}s" >&2
        set +e
        CARGO_BUILD_JOBS="$jobs" cargo "${toolchain[@]}" fuzz run -s "$sanitizer" \
            --target-dir "$build_dir" "$target" \
            "$scratch" "${seed_args[@]}" -- -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 \
            -print_final_stats=1 >"$log" 2>&1
        rc=$?
        set -e
        execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1)
        after=$(find "artifacts/$target" -type f | wc -l)
        crashes=$((after - before))
        if ((rc != 0 && crashes == 0)); then
            crashes=1 # libFuzzer stopped on something it did not save (an OOM, a timeout)
        fi
        total_crashes=$((total_crashes + crashes))
        summary+=("$(printf '%-28s %12s execs %4d crashes  (log: %s)' "$target" "${execs:-?}" "$crashes" "$log")")
    done
done
echo
echo "fuzz summary (${secs}s per target, sanitizer $sanitizer):"
printf '  %s\n' "${summary[@]}"
if ((total_crashes > 0)); then
    echo "crashes found: see the artifacts/ directories and the logs above" >&2
    exit 1
fi
