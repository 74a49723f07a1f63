#!/usr/bin/env bash
# Builds mvrun's guest kernel from Debian's linux-source-6.12 package.
#
#   kernels/build.sh VARIANT OUTDIR [VARIANT OUTDIR]...
#
# VARIANT is `normal` or `emulated`. For each pair, OUTDIR receives vmlinux (ELF, booted through PVH), bzImage,
# config (the final .config) and System.map. The source is unpacked once into $MVRUN_KERNEL_WORKDIR (default: a
# fresh temporary directory, removed at the end) and our patches are applied for every variant: their options
# default to off, so the normal variant compiles them out. Each variant is `make ARCH=x86_64 tinyconfig` plus
# mvrun.config (plus emulated.config for `emulated`); a second variant reuses the first one's objects, and Kbuild
# rebuilds exactly what the changed options touch. Every option a fragment names must survive into .config, or the
# build fails naming the ones that did not.
#
# Environment: MVRUN_KERNEL_SOURCE (default /usr/src/linux-source-6.12.tar.xz), MVRUN_KERNEL_WORKDIR,
# MVRUN_KERNEL_JOBS (default: nproc), MVRUN_KERNEL_CCACHE_DIR (compile through ccache, when installed, with this
# cache; a rebuild after a patch or fragment change then recompiles only what changed). `mvrun kernel build` runs this script from a copy embedded in the binary and
# caches the results by the hash of its inputs; run it by hand only to work on the kernel itself.
#
# Progress lines for mvrun start with "==> "; a missing option is reported as "mvrun-kernel: missing option: ...".
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source_tar="${MVRUN_KERNEL_SOURCE:-/usr/src/linux-source-6.12.tar.xz}"
jobs="${MVRUN_KERNEL_JOBS:-$(nproc)}"

die() { echo "mvrun-kernel: error: $*" >&2; exit 1; }

[[ $# -ge 2 && $(($# % 2)) -eq 0 ]] || die "usage: $0 VARIANT OUTDIR [VARIANT OUTDIR]..."
[[ -f "$source_tar" ]] || die "kernel source $source_tar not found (apt-get install linux-source-6.12)"
for tool in make gcc flex bison bc xz tar patch; do
    command -v "$tool" >/dev/null || die "$tool is missing (see scripts/packages.txt)"
done
args=("$@")
cc=gcc
if [[ -n "${MVRUN_KERNEL_CCACHE_DIR:-}" ]] && command -v ccache >/dev/null; then
    cc="ccache gcc"
    export CCACHE_DIR="$MVRUN_KERNEL_CCACHE_DIR" CCACHE_MAXSIZE="${CCACHE_MAXSIZE:-2G}"
fi
for ((i = 0; i < ${#args[@]}; i += 2)); do
    case "${args[i]}" in
        normal | emulated) ;;
        *) die "unknown variant '${args[i]}' (normal or emulated)" ;;
    esac
done

if [[ -n "${MVRUN_KERNEL_WORKDIR:-}" ]]; then
    work="$MVRUN_KERNEL_WORKDIR"
    mkdir -p "$work"
else
    work="$(mktemp -d "${TMPDIR:-/tmp}/mvrun-kernel.XXXXXX")"
    trap 'rm -rf "$work"' EXIT
fi

echo "==> unpacking $(basename "$source_tar")"
tar -xJf "$source_tar" -C "$work"
src="$(find "$work" -mindepth 1 -maxdepth 1 -type d -name 'linux-source-*' | head -n1)"
[[ -n "$src" ]] || die "no linux-source-* directory in $source_tar"
# ccache keys on paths relative to the tree, so a build in another directory hits the same entries.
export CCACHE_BASEDIR="$src"
kmake() { make -C "$src" ARCH=x86_64 CC="$cc" "$@"; }

shopt -s nullglob
patches=("$here"/patches/*.patch)
echo "==> applying ${#patches[@]} patches"
for p in "${patches[@]}"; do
    echo "    $(basename "$p")"
    patch -d "$src" -p1 --forward --batch --quiet <"$p" || die "patch $(basename "$p") does not apply"
done

# Prints every fragment line (CONFIG_X=v, or "# CONFIG_X is not set") that .config does not honour.
check_fragment() {
    local fragment="$1" config="$2" line opt missing=0
    while IFS= read -r line; do
        if [[ "$line" =~ ^(CONFIG_[A-Za-z0-9_]+)= ]]; then
            grep -qxF -- "$line" "$config" || { echo "mvrun-kernel: missing option: $line (from $(basename "$fragment"))"; missing=1; }
        elif [[ "$line" =~ ^#\ (CONFIG_[A-Za-z0-9_]+)\ is\ not\ set$ ]]; then
            opt="${BASH_REMATCH[1]}"
            if grep -q "^$opt=" "$config"; then
                echo "mvrun-kernel: missing option: $line (from $(basename "$fragment"); .config has $(grep "^$opt=" "$config"))"
                missing=1
            fi
        fi
    done <"$fragment"
    return $missing
}

for ((i = 0; i < ${#args[@]}; i += 2)); do
    variant="${args[i]}"
    out="${args[i + 1]}"
    fragments=("$here/mvrun.config")
    [[ "$variant" == emulated ]] && fragments+=("$here/emulated.config")

    echo "==> configuring the $variant kernel (tinyconfig + $(cd "$here" && basename -a "${fragments[@]}" | tr '\n' ' '))"
    kmake -s tinyconfig
    # -m: merge only; olddefconfig then resolves dependencies with the fragment values in place.
    (cd "$src" && scripts/kconfig/merge_config.sh -m .config "${fragments[@]}" >/dev/null)
    kmake -s olddefconfig
    bad=0
    for f in "${fragments[@]}"; do
        check_fragment "$f" "$src/.config" || bad=1
    done
    [[ $bad -eq 0 ]] || die "options of the $variant fragment did not survive into .config (listed above)"

    echo "==> building the $variant kernel: vmlinux and bzImage (make -j$jobs, CC=$cc)"
    kmake -j"$jobs" vmlinux bzImage

    mkdir -p "$out"
    cp "$src/vmlinux" "$out/vmlinux"
    cp "$src/arch/x86/boot/bzImage" "$out/bzImage"
    cp "$src/.config" "$out/config"
    cp "$src/System.map" "$out/System.map"
    echo "==> the $variant kernel is in $out"
done
