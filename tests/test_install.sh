#!/usr/bin/env bash
# make install into a scratch prefix, then build a C program against it with pkg-config alone (shared
# library, and static with --static), as a user's trainer would, and run it.
set -u
cd "$(dirname "$0")/.."
prefix=$(mktemp -d /tmp/fadam-install.XXXXXX)
trap 'rm -rf "$prefix"' EXIT
if ! make -s install PREFIX="$prefix" >"$prefix.log" 2>&1; then
    echo "FAIL install_into_prefix: $(tail -c 400 "$prefix.log")"; rm -f "$prefix.log"; exit 1
fi
rm -f "$prefix.log"
missing=""
for f in include/fusedadam.h lib/libfusedadam.a lib/libfusedadam.so lib/pkgconfig/fusedadam.pc; do
    [ -e "$prefix/$f" ] || missing="$missing $f"
done
so=$(readlink "$prefix/lib/libfusedadam.so")
[ -n "$missing" ] && echo "FAIL install_into_prefix: missing$missing" || echo "ok install_into_prefix (libfusedadam.so -> $so)"

export PKG_CONFIG_PATH="$prefix/lib/pkgconfig${PKG_CONFIG_PATH:+:$PKG_CONFIG_PATH}" # keeps a libxxhash.pc found there
if ! command -v pkg-config >/dev/null; then
    echo "skip build_with_pkg_config: pkg-config is not installed (apt-get install pkg-config)"; exit 0
fi
# The demo calls the CUDA runtime itself (cudaMalloc for its own buffers), so it links cudart too.
cuda_home=${CUDA_HOME:-$(dirname "$(dirname "$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)")")}
cuda_flags="-I$cuda_home/include -L$cuda_home/lib64 -Wl,-rpath,$cuda_home/lib64 -lcudart"
for link in shared static; do
    flags=$(pkg-config --cflags --libs fusedadam)
    [ "$link" = static ] && flags="-I$prefix/include $prefix/lib/libfusedadam.a $(pkg-config --libs-only-other --libs-only-L --static fusedadam | sed 's/-lfusedadam//') $(pkg-config --libs-only-l --static fusedadam | sed 's/-lfusedadam//')"
    if cc examples/demo.c -o "$prefix/demo_$link" $flags $cuda_flags -lm 2>"$prefix/cc.log" && "$prefix/demo_$link" >"$prefix/run.log" 2>&1 &&
        grep -q "Adam+L2" "$prefix/run.log"; then
        echo "ok build_with_pkg_config_$link"
    else
        echo "FAIL build_with_pkg_config_$link: $(tail -c 400 "$prefix/cc.log") $(tail -c 300 "$prefix/run.log" 2>/dev/null)"
    fi
done
