#!/usr/bin/env bash
# sass_tools.sh - finds cuobjdump (with the nvdisasm it runs) for bench/sass_check.py, installing it
# from PyPI when the CUDA toolkit lacks it (the nvidia-cuda-cuobjdump and nvidia-cuda-nvdisasm wheels).
#
#   bench/sass_tools.sh       prints the directory holding cuobjdump and nvdisasm, exit 0;
#                             or one line saying why there is none, exit 1
#
# Order: $FADAM_CUOBJDUMP_DIR, then $CUDA_HOME/bin, then PATH, then a pip --target install cached per
# machine under ${FADAM_TOOLS_CACHE:-${XDG_CACHE_HOME:-~/.cache}/fusedadam} (fresh clones and CI reuse it).
# FADAM_CUOBJDUMP_VERSION overrides the wheel version (default: the pin below for a CUDA 13 toolkit,
# the newest of the toolkit's major version otherwise). FADAM_NO_PIP=1 never installs.
set -uo pipefail
cd "$(dirname "$0")/.."

usable() { [ -x "$1/cuobjdump" ] && [ -x "$1/nvdisasm" ] && "$1/cuobjdump" --version >/dev/null 2>&1; }

for dir in "${FADAM_CUOBJDUMP_DIR:-}" "${CUDA_HOME:-/usr/local/cuda}/bin"; do
    if [ -n "$dir" ] && usable "$dir"; then echo "$dir"; exit 0; fi
done
if command -v cuobjdump >/dev/null 2>&1; then
    dir=$(dirname "$(command -v cuobjdump)")
    if usable "$dir"; then echo "$dir"; exit 0; fi
fi

nvcc=${NVCC:-${CUDA_HOME:-/usr/local/cuda}/bin/nvcc}
major=$("$nvcc" --version 2>/dev/null | sed -n 's/.*release \([0-9]*\)\..*/\1/p')
if [ -z "$major" ]; then echo "no nvcc at $nvcc to match a cuobjdump version to"; exit 1; fi
# PyPI has no 13.0 wheel; 13.2's disassembler reads the sm_90 code of any 13.x compiler.
if [ "$major" = 13 ]; then default_version=13.2.86; else default_version="$major.*"; fi
version=${FADAM_CUOBJDUMP_VERSION:-$default_version}
cache=${FADAM_TOOLS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/fusedadam}
target=$cache/cuda-binutils-${version//\*/x}
bin=$target/nvidia/cu$major/bin
if usable "$bin"; then echo "$bin"; exit 0; fi
if [ "${FADAM_NO_PIP:-0}" = 1 ]; then echo "cuobjdump not found and FADAM_NO_PIP=1"; exit 1; fi

mkdir -p "$cache" || { echo "cannot create $cache"; exit 1; }
exec 9>"$target.lock"
flock 9
if ! usable "$bin"; then
    rm -rf "$target"
    log=$cache/cuda-binutils-install.log
    if ! timeout 300 "${PYTHON:-python3}" -m pip install --quiet --disable-pip-version-check --no-deps \
            --target "$target" "nvidia-cuda-cuobjdump==$version" "nvidia-cuda-nvdisasm==$version" >"$log" 2>&1; then
        rm -rf "$target"
        echo "pip could not install nvidia-cuda-cuobjdump/nvdisasm==$version: $(grep -m1 -E 'ERROR|error' "$log" || tail -n 1 "$log")"
        exit 1
    fi
    # A wheel for another CUDA major puts its binaries elsewhere.
    found=$(find "$target" -type f -name cuobjdump -path '*/bin/*' | head -n 1)
    if [ -n "$found" ] && [ "$(dirname "$found")" != "$bin" ]; then bin=$(dirname "$found"); fi
fi
if usable "$bin"; then echo "$bin"; exit 0; fi
echo "nvidia-cuda-cuobjdump==$version installed into $target but $bin/cuobjdump does not run"
exit 1
