#!/usr/bin/env bash
# What a session with a GPU lease runs. From the repository root on the GPU machine:
#   bash bench/gpu_session.sh all        the one command to use: build, then `make test` beside
#                                        compute-sanitizer, the ZeRO-1 example (examples/zero1.c) on
#                                        every GPU, then the benchmarks; ends in ~5 minutes
#                                        (every stage has a hard time limit; 8.5 minutes at worst, inside
#                                        one 10-minute device command)
#   bash bench/gpu_session.sh tests      build, every test on the GPU (make test), register/spill report
#   bash bench/gpu_session.sh sanitize   compute-sanitizer memcheck, racecheck, synccheck, initcheck
#   bash bench/gpu_session.sh bench      make bench-record: the GPU table appended to bench/RESULTS.md
# A lease is short and a machine is handed back after 30 s idle, so `all` does everything in one call.
# Logs go to build/gpu-session; at the end they are packed into $OUT (or $1-named folder via
# GPU_SESSION_OUT) as at most 8 files: summary.txt, logs.tar.gz, RESULTS.md (the whole file with the
# new section) and results-section.md. Commit the RESULTS.md section with the device and commit it names.
# The GPU machine has its own PyTorch and no network: FADAM_TORCH_PYTHON makes the build and the tests
# use that interpreter instead of creating .venv. libxxhash (the checkpoint checksum) may be missing
# there: first run `bash bench/gpu_session.sh prepare` on a machine with Debian's package archive; it
# downloads libxxhash-dev's .deb into .gpu-deps/ (git-ignored), which the device call must carry
# (device tool: carry [".gpu-deps"]); `all` then unpacks it under build/deps and links it statically.
set -uo pipefail
self=$(cd "$(dirname "$0")" && pwd)/$(basename "$0")
cd "$(dirname "$0")/.."
stage=${1:-all}
out=${GPU_SESSION_OUT:-${OUT:-build/gpu-session-out}}
logs=build/gpu-session
mkdir -p "$out" "$logs"
export FADAM_TORCH_PYTHON=${FADAM_TORCH_PYTHON:-$(command -v python3)}
jobs=$(nproc 2>/dev/null || echo 4)
sanitize_tests="build/tests/test_managed build/tests/test_fused_managed build/test_checkpoint build/tests/test_zero_gpu"

# Stage limits (seconds) for `all`; their sum (with 2 x 25 s of zero1) is 8.5 minutes whatever hangs, inside one 10-minute device command.
build_limit=${GPU_BUILD_LIMIT:-150}
check_limit=${GPU_CHECK_LIMIT:-200}
bench_limit=${GPU_BENCH_LIMIT:-110}

describe_device() {
    { nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 || echo "nvidia-smi failed"
      git log -1 --format='commit %h %s' 2>/dev/null
      [ -z "$(git status --porcelain 2>/dev/null)" ] || echo "(with uncommitted changes)"
      echo "nvcc: $(nvcc --version 2>/dev/null | tail -1)"
      echo "python: $FADAM_TORCH_PYTHON ($("$FADAM_TORCH_PYTHON" -c 'import torch; print("torch", torch.__version__)' 2>&1 | tail -1))"
    } | tee "$logs/device.txt"
}

run_sanitizers() {
    # One sanitizer run per tool and test program, four at a time: they share the GPU, not the result.
    local tool test status=0
    for tool in memcheck racecheck synccheck initcheck; do
        for test in $sanitize_tests; do echo "$tool $test"; done
    done | xargs -P 4 -L 1 bash -c '
        log='"$logs"'/sanitize-$0-$(basename $1).log
        timeout 150 compute-sanitizer --tool $0 --error-exitcode 99 $1 >"$log" 2>&1
        code=$?
        summary=$(grep -E "ERROR SUMMARY|LEAK SUMMARY|RACECHECK SUMMARY" "$log" | tail -1)
        fails=$(grep -c "^FAIL " "$log")
        if [ "$code" -eq 0 ]; then echo "ok sanitize_$0_$(basename $1): ${summary:-no summary}"
        else echo "FAIL sanitize_$0_$(basename $1): exit $code, $fails FAIL lines, ${summary:-no summary} (see $log)"; fi
        [ "$code" -eq 0 ]' || status=1
    return $status
}

pack_results() {
    cp "$logs/device.txt" "$out/summary.txt" 2>/dev/null
    cat "$logs/summary.txt" >>"$out/summary.txt" 2>/dev/null
    tar -czf "$out/logs.tar.gz" -C build gpu-session 2>/dev/null
    cp bench/RESULTS.md "$out/RESULTS.md" 2>/dev/null
    [ -f "$logs/results-section.md" ] && cp "$logs/results-section.md" "$out/results-section.md"
    return 0
}

# libxxhash from the carried .deb when the machine lacks it: headers and the static library only.
use_carried_xxhash() {
    local deps=$PWD/build/deps deb
    pkg-config --exists libxxhash 2>/dev/null && return 0
    deb=$(ls .gpu-deps/libxxhash-dev_*.deb 2>/dev/null | head -1)
    if [ -z "$deb" ]; then
        echo "libxxhash is not installed here and no .gpu-deps/libxxhash-dev_*.deb was carried" \
             "(run 'bash bench/gpu_session.sh prepare' where apt works, and carry .gpu-deps)" >&2
        return 1
    fi
    rm -rf "$deps" && mkdir -p "$deps/pkgconfig" && dpkg -x "$deb" "$deps" || return 1
    rm -f "$deps"/usr/lib/*/libxxhash.so # the shared object is in another package: link the .a
    local libdir
    libdir=$(dirname "$(ls "$deps"/usr/lib/*/libxxhash.a | head -1)")
    printf 'Name: libxxhash\nDescription: xxHash (carried .deb)\nVersion: 0.8\nLibs: -L%s -lxxhash\nCflags: -I%s\n' \
        "$libdir" "$deps/usr/include" >"$deps/pkgconfig/libxxhash.pc"
    export PKG_CONFIG_PATH=$deps/pkgconfig${PKG_CONFIG_PATH:+:$PKG_CONFIG_PATH}
    export XXHASH_CFLAGS="-I$deps/usr/include" XXHASH_LIBS="-L$libdir -lxxhash"
    export LIBRARY_PATH=$libdir${LIBRARY_PATH:+:$LIBRARY_PATH} # setup.py's -lxxhash
    echo "libxxhash: carried $(basename "$deb"), unpacked under $deps"
}

case "$stage" in
prepare) # on the development machine, before the device call
    mkdir -p .gpu-deps && cd .gpu-deps || exit 1
    rm -f libxxhash-dev_*.deb
    apt-get download libxxhash-dev >/dev/null 2>&1 || { apt-get update -qq >/dev/null 2>&1 && apt-get download libxxhash-dev; } || exit 1
    ls -l "$PWD"/libxxhash-dev_*.deb
    echo "now call the device tool with carry [\".gpu-deps\"] and: bash bench/gpu_session.sh all"
    ;;
all)
    started=$(date +%s)
    describe_device
    use_carried_xxhash || { pack_results; exit 1; }
    : >"$logs/summary.txt"
    note() { echo "$*" | tee -a "$logs/summary.txt"; }
    # The library, every test program, the torch extension and the bench programs, in parallel.
    timeout "$build_limit" make -j"$jobs" all test-programs bench-programs >"$logs/build.log" 2>&1
    code=$?
    note "build: exit $code after $(($(date +%s) - started)) s (log: build.log)"
    if [ "$code" -ne 0 ]; then tail -30 "$logs/build.log"; pack_results; exit 1; fi
    make regs >"$logs/regs.log" 2>&1

    # make test and the sanitizers at once: both check correctness, neither is timed.
    (timeout "$check_limit" make test >"$logs/test.log" 2>&1; echo $? >"$logs/test.code") &
    test_pid=$!
    (timeout "$check_limit" bash "$self" sanitize-built >"$logs/sanitize.log" 2>&1; echo $? >"$logs/sanitize.code") &
    wait "$test_pid"; wait
    note "make test: exit $(cat "$logs/test.code") -> $(tail -1 "$logs/test.log")"
    grep -E '^ *(FAIL|skip) ' "$logs/test.log" | tee -a "$logs/summary.txt"
    note "compute-sanitizer: exit $(cat "$logs/sanitize.code")"
    tee -a "$logs/summary.txt" <"$logs/sanitize.log"

    # The ZeRO-1 example over NCCL on every GPU there (one at least), eager and captured in a graph.
    for mode in "" --graph; do
        timeout 25 ./build/zero1 --steps 200 $mode >"$logs/zero1$mode.log" 2>&1
        note "zero1 $mode: exit $? -> $(tail -1 "$logs/zero1$mode.log")"
    done

    # The benchmarks alone on the machine (timing). RESULTS.md gets a new section; it is copied out.
    lines_before=$(wc -l <bench/RESULTS.md)
    device=$(head -1 "$logs/device.txt" | cut -d, -f1)
    timeout "$bench_limit" make bench-record BENCH_MACHINE="$device (GPU lease)" BENCH_ARGS="--seconds=0.5" \
        BENCH_CPU_ARGS="--sets=gpt2-124M" >"$logs/bench.log" 2>&1
    note "bench: exit $? (log: bench.log)"
    tail -n +"$((lines_before + 1))" bench/RESULTS.md >"$logs/results-section.md"
    note "total: $(($(date +%s) - started)) s"
    pack_results
    [ "$(cat "$logs/test.code")" = 0 ] && [ "$(cat "$logs/sanitize.code")" = 0 ]
    ;;
tests)
    describe_device
    use_carried_xxhash || exit 1
    make -j"$jobs" all >"$logs/build.log" 2>&1 || { tail -30 "$logs/build.log"; exit 1; }
    make regs 2>&1 | tee "$logs/regs.log"
    make test 2>&1 | tee "$logs/test.log"
    code=$?
    pack_results
    exit $code
    ;;
sanitize | sanitize-built) # sanitize-built: the programs are already built (the `all` stage)
    if [ "$stage" = sanitize ]; then
        describe_device
        use_carried_xxhash || exit 1
        make -j"$jobs" $sanitize_tests >"$logs/build.log" 2>&1 || { tail -30 "$logs/build.log"; exit 1; }
    fi
    run_sanitizers
    code=$?
    [ "$stage" = sanitize ] && pack_results
    exit $code
    ;;
bench)
    describe_device
    use_carried_xxhash || exit 1
    device=$(head -1 "$logs/device.txt" | cut -d, -f1)
    make bench-record BENCH_MACHINE="$device (GPU lease)" 2>&1 | tee "$logs/bench.log"
    pack_results
    ;;
*)
    echo "usage: $0 prepare|all|tests|sanitize|bench" >&2
    exit 2
    ;;
esac
