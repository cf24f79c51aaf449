#!/usr/bin/env bash
# Download, here (with network), the packages benchmarks/gpu.sh installs on a device image that lacks them:
# binary wheels (with their dependencies) for mlflow, optuna, pystoi, soundfile, espeakng-loader and the
# project's other pure-runtime dependencies, Cython and numpy (pesq builds against them), and pesq as an sdist
# (gpu.sh builds it with --no-build-isolation). Wheels are chosen for the device's Python and platform, which
# default to this interpreter's; torch is not downloaded (the device image has its CUDA build).
#
# usage: benchmarks/gpu_wheels.sh --out DIR [--python-version 3.11] [--platform TAG]... [--dry-run]
# The folder then travels with the working tree (e.g. the device tool's `carry`; keep it under its size limit:
# mlflow's dependencies, pyarrow and pandas among them, are the bulk).
set -euo pipefail

die() { echo "gpu_wheels.sh: error: $*" >&2; sed -n 's/^# usage: //p' "$0" >&2; exit 2; }

OUT="" PYV="" PLATFORMS=() DRY=0 PY="${PYTHON:-python3}"
while [ $# -gt 0 ]; do
    case "$1" in
        --out) [ $# -ge 2 ] || die "--out needs a folder"; OUT="$2"; shift 2 ;;
        --python-version) [ $# -ge 2 ] || die "--python-version needs X.Y"; PYV="$2"; shift 2 ;;
        --platform) [ $# -ge 2 ] || die "--platform needs a tag"; PLATFORMS+=(--platform "$2"); shift 2 ;;
        --dry-run) DRY=1; shift ;;
        -h|--help) sed -n 's/^# usage: //p' "$0"; exit 0 ;;
        *) die "unknown argument '$1'" ;;
    esac
done
[ -n "$OUT" ] || die "--out DIR is required (the folder the wheels go to)"
# default: glibc 2.28 and 2.17 (manylinux2014) x86-64 wheels, which a current CUDA image runs
[ ${#PLATFORMS[@]} -gt 0 ] || PLATFORMS=(--platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64)
[ -n "$PYV" ] || PYV="$("$PY" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')"

BINARY=(mlflow optuna pystoi soundfile espeakng-loader praatio praat-parselmouth tqdm matplotlib psutil
        threadpoolctl Cython numpy setuptools wheel)
run() {
    if [ "$DRY" = 1 ]; then echo "$*"; else "$@"; fi
}
[ "$DRY" = 1 ] || mkdir -p "$OUT"
run "$PY" -m pip download --dest "$OUT" --only-binary=:all: --python-version "$PYV" "${PLATFORMS[@]}" \
    --implementation cp "${BINARY[@]}"
run "$PY" -m pip download --dest "$OUT" --no-binary pesq --no-deps pesq
if [ "$DRY" = 0 ]; then
    echo "$(ls "$OUT" | wc -l) files, $(du -sh "$OUT" | cut -f1) in $OUT (Python $PYV, ${PLATFORMS[*]})"
fi
