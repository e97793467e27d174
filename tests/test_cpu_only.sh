#!/usr/bin/env bash
# The CPU-only build (mk/cpu_only.mk): its library references no CUDA symbol, its test program loads no
# CUDA library, and that program passes (tests/test_cpu_only.c).
set -u
cd "$(dirname "$0")/.."
lib=build/cpu-only/libfusedadam.a
program=build/cpu-only/test_cpu_only
cuda_refs=$(nm -u "$lib" 2>/dev/null | awk '$1 == "U" {print $2}' | grep -iE '^(cuda|cu[A-Z]|nvtx|__cuda)' | sort -u | tr '\n' ' ')
if [ -z "$cuda_refs" ]; then
    echo "ok cpu_only_library_references_no_cuda_symbol"
else
    echo "FAIL cpu_only_library_references_no_cuda_symbol: $cuda_refs"
fi
cuda_libs=$(ldd "$program" 2>/dev/null | grep -iE 'cuda|nvrtc|c10' | awk '{print $1}' | tr '\n' ' ')
if [ -z "$cuda_libs" ]; then
    echo "ok cpu_only_program_loads_no_cuda_library"
else
    echo "FAIL cpu_only_program_loads_no_cuda_library: $cuda_libs"
fi
"$program"
