#!/usr/bin/env bash
# Runs each command given, counts its "ok NAME" / "FAIL NAME: why" / "skip NAME: why" lines, and ends
# with one line "N passed, N failed, N skipped". A command that exits non-zero without printing a
# FAIL line (a crash, a sanitizer report) counts as one failure; exit code 77 means "all skipped".
set -u
passed=0 failed=0 skipped=0
log_dir=${TEST_LOG_DIR:-build/test-logs}
mkdir -p "$log_dir"
for command in "$@"; do
    name=$(basename "${command%% *}")
    log="$log_dir/$name.log"
    started=$SECONDS
    bash -c "$command" >"$log" 2>&1
    code=$?
    echo "== $command ($((SECONDS - started)) s)"
    grep -E '^(ok|FAIL|skip) |^# ' "$log" | sed 's/^/   /'
    ok=$(grep -c '^ok ' "$log")
    fail=$(grep -c '^FAIL ' "$log")
    skip=$(grep -c '^skip ' "$log")
    if [ "$code" -ne 0 ] && [ "$code" -ne 77 ] && [ "$fail" -eq 0 ]; then
        echo "   FAIL $name: exited with code $code; last lines of $log:"
        tail -n 15 "$log" | sed 's/^/      /'
        fail=1
    fi
    if [ "$code" -eq 77 ] && [ "$ok" -eq 0 ] && [ "$skip" -eq 0 ]; then skip=1; fi
    passed=$((passed + ok)) failed=$((failed + fail)) skipped=$((skipped + skip))
done
echo "# $SECONDS s in all"
echo "$passed passed, $failed failed, $skipped skipped"
[ "$failed" -eq 0 ]
