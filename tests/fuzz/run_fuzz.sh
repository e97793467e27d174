#!/usr/bin/env bash
# Bounded fuzz run of one target (make test): tests/fuzz/run_fuzz.sh BINARY SECONDS CORPUS
# BINARY built with clang's libFuzzer fuzzes for SECONDS from the seed corpus CORPUS (new inputs go to
# build/fuzz-corpus/NAME, crashes to build/fuzz-artifacts/NAME); built with standalone_driver.c
# (libFuzzer absent) it only replays CORPUS, and the line says so: a skip of the fuzzing, not a pass.
set -u
binary=${1:?usage: run_fuzz.sh BINARY SECONDS CORPUS}
seconds=${2:-20}
corpus=${3:?usage: run_fuzz.sh BINARY SECONDS CORPUS}
name=$(basename "$binary")
seed=${FADAM_TEST_SEED:-$(( (RANDOM << 15 | RANDOM) + 1 ))}
work=build/fuzz-corpus/$name
artifacts=build/fuzz-artifacts/$name
mkdir -p "$work" "$artifacts"
log=$(mktemp)
echo "# $name seed=$seed for ${seconds}s (replay with FADAM_TEST_SEED=$seed)"
ASAN_OPTIONS=${ASAN_OPTIONS:-abort_on_error=1:detect_leaks=1} \
UBSAN_OPTIONS=${UBSAN_OPTIONS:-halt_on_error=1:print_stacktrace=1} \
    "$binary" -max_total_time="$seconds" -seed="$seed" -max_len=65536 -timeout=20 -rss_limit_mb=2048 \
    -artifact_prefix="$artifacts/" -print_final_stats=1 "$work" "$corpus" >"$log" 2>&1
code=$?
replayed=$(grep -Eo 'replayed [0-9]+ inputs \(standalone driver' "$log" | grep -Eo '[0-9]+')
runs=$(grep -Eo 'Done [0-9]+ runs' "$log" | tail -n 1 | grep -Eo '[0-9]+')
if [ "$code" -ne 0 ]; then
    echo "FAIL $name: exit code $code (seed $seed); crash inputs in $artifacts/; last lines:"
    tail -n 30 "$log" | sed 's/^/    /'
elif [ -n "$replayed" ]; then
    echo "ok ${name}_corpus_replay: $replayed corpus inputs, no crash"
    echo "skip $name: libFuzzer absent (no clang -fsanitize=fuzzer), replayed $replayed corpus files instead of fuzzing"
else
    echo "ok $name: libFuzzer ran ${runs:-?} inputs in ${seconds}s, no crash"
fi
rm -f "$log"
[ "$code" -eq 0 ]
