#!/usr/bin/env bash
# Bounded fuzz run of the checkpoint loader (make test): tests/fuzz/fuzz_checkpoint_load.sh BINARY [SECONDS]
# BINARY is libFuzzer-built or the standalone driver (mk/checkpoint.mk picks); both take the same
# flags. New inputs go to build/fuzz-corpus, crashes to build/fuzz-artifacts. Prints one test line.
set -u
binary=${1:?usage: fuzz_checkpoint_load.sh BINARY [SECONDS]}
seconds=${2:-20}
seed=${FADAM_TEST_SEED:-$(( (RANDOM << 15 | RANDOM) + 1 ))}
here=$(dirname "$0")
work=build/fuzz-corpus
artifacts=build/fuzz-artifacts
mkdir -p "$work" "$artifacts"
log=$(mktemp)
echo "# fuzz_checkpoint_load seed=$seed for ${seconds}s (replay with FADAM_TEST_SEED=$seed)"
ASAN_OPTIONS=${ASAN_OPTIONS:-abort_on_error=1:detect_leaks=1} \
UBSAN_OPTIONS=${UBSAN_OPTIONS:-halt_on_error=1:print_stacktrace=1} \
    "$binary" -max_total_time="$seconds" -seed="$seed" -max_len=65536 -timeout=20 -rss_limit_mb=2048 \
    -artifact_prefix="$artifacts/" -print_final_stats=1 "$work" "$here/corpus" >"$log" 2>&1
code=$?
runs=$(grep -Eo 'Done [0-9]+ runs' "$log" | tail -n 1 | grep -Eo '[0-9]+')
if [ "$code" -eq 0 ]; then
    echo "ok fuzz_checkpoint_load: ${runs:-?} inputs in ${seconds}s, no crash, refused inputs left the state untouched"
else
    echo "FAIL fuzz_checkpoint_load: exit code $code (seed $seed); crash inputs in $artifacts/; last lines:"
    tail -n 30 "$log" | sed 's/^/    /'
fi
rm -f "$log"
[ "$code" -eq 0 ]
