#!/usr/bin/env bash
# What a session with a GPU lease runs, in few long calls (each well under the 10-minute limit of one
# device command). From the repository root on the GPU machine:
#   bash bench/gpu_session.sh tests      build, every test on the GPU (make test), register/spill report
#   bash bench/gpu_session.sh sanitize   compute-sanitizer memcheck, racecheck, synccheck on the GPU tests
#   bash bench/gpu_session.sh bench      make bench-record: the GPU table appended to bench/RESULTS.md
# Logs (and RESULTS.md after `bench`) are copied to $OUT when it is set, so they come back; commit the
# RESULTS.md section it appended, with the device and commit it names.
# The GPU machine has its own PyTorch and no network: FADAM_TORCH_PYTHON makes the build and the tests
# use that interpreter instead of creating .venv.
set -uo pipefail
cd "$(dirname "$0")/.."
stage=${1:-tests}
out=${OUT:-build/gpu-session}
mkdir -p "$out"
export FADAM_TORCH_PYTHON=${FADAM_TORCH_PYTHON:-$(command -v python3)}
jobs=$(nproc 2>/dev/null || echo 4)

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$out/device.txt"
git log -1 --format='commit %h %s' 2>/dev/null | tee -a "$out/device.txt"

case "$stage" in
tests)
    make -j"$jobs" all >"$out/build.log" 2>&1 || { tail -30 "$out/build.log"; exit 1; }
    make regs 2>&1 | tee "$out/regs.log"
    make test 2>&1 | tee "$out/test.log"
    ;;
sanitize)
    make -j"$jobs" build/tests/test_managed build/tests/test_fused_managed build/test_checkpoint \
        >"$out/build.log" 2>&1 || { tail -30 "$out/build.log"; exit 1; }
    status=0
    for tool in memcheck racecheck synccheck; do
        for test in build/tests/test_managed build/tests/test_fused_managed build/test_checkpoint; do
            echo "== compute-sanitizer --tool $tool $test"
            compute-sanitizer --tool "$tool" --error-exitcode 99 "$test" >"$out/sanitize-$tool-$(basename "$test").log" 2>&1
            code=$?
            grep -E "^(ok|FAIL|skip) |ERROR SUMMARY" "$out/sanitize-$tool-$(basename "$test").log" | tail -8
            [ "$code" -eq 0 ] || { echo "   exit $code"; status=1; }
        done
    done
    exit $status
    ;;
bench)
    device=$(head -1 "$out/device.txt" | cut -d, -f1)
    make bench-record BENCH_MACHINE="$device (GPU lease)" 2>&1 | tee "$out/bench.log"
    cp bench/RESULTS.md "$out/RESULTS.md"
    ;;
*)
    echo "usage: $0 tests|sanitize|bench" >&2
    exit 2
    ;;
esac
