#!/usr/bin/env bash
# record.sh - runs the three benchmark parts one after another (GPU harness, CPU implementation, PyTorch
# comparison); with --append, also appends their tables to bench/RESULTS.md under a heading that names
# the date, the machine, the commit and the command. `make bench` and `make bench-record` call it.
# Every part runs even when one fails; the exit status is 1 if any did.
# Environment (set by mk/bench.mk): BENCH_BUILD, BENCH_PYTHON, BENCH_LIB, BENCH_ARGS, BENCH_GPU_ARGS,
# BENCH_CPU_ARGS, BENCH_TORCH_ARGS; BENCH_MACHINE names the machine in RESULTS.md (default: what the
# GPU harness or, without a GPU, the CPU bench reports).
set -u
cd "$(dirname "$0")/.." || exit 2
build=${BENCH_BUILD:-build/bench}
python=${BENCH_PYTHON:-python3}
lib=${BENCH_LIB:-build/libfusedadam.so}
append=0
[ "${1:-}" = "--append" ] && append=1

output=$(mktemp)
status_file=$(mktemp)
trap 'rm -f "$output" "$status_file"' EXIT
# The group runs in a subshell of the pipeline: its status comes back through a file.
# shellcheck disable=SC2086 # the argument lists are meant to split
{
    status=0
    "./$build/adam_step_bench" ${BENCH_ARGS:-} ${BENCH_GPU_ARGS:-} || status=1
    "./$build/cpu_bench" ${BENCH_ARGS:-} ${BENCH_CPU_ARGS:-} || status=1
    "$python" bench/torch_bench.py --lib "$lib" --shapes-from "./$build/cpu_bench" \
        ${BENCH_ARGS:-} ${BENCH_TORCH_ARGS:-} || status=1
    echo "$status" > "$status_file"
} 2>&1 | tee "$output"
status=$(cat "$status_file")

[ "$append" = 1 ] || exit "$status"

machine=${BENCH_MACHINE:-}
if [ -z "$machine" ]; then
    machine=$(sed -n 's/^device: //p' "$output" | head -n 1)
    [ -n "$machine" ] || machine="CPU only: $(sed -n 's/^cpu: //p' "$output" | head -n 1)"
fi
commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
[ -z "$(git status --porcelain 2>/dev/null)" ] || commit="$commit (with uncommitted changes)"
command="make bench-record"
for name in BENCH_ARGS BENCH_GPU_ARGS BENCH_CPU_ARGS BENCH_TORCH_ARGS; do
    [ -n "${!name:-}" ] && command="$command $name=\"${!name}\""
done
{
    echo
    echo "## $(date -u +%Y-%m-%d): $machine"
    echo
    echo "- date: $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo "- machine: $machine"
    echo "- commit: $commit"
    echo "- command: \`$command\`"
    [ "$status" = 0 ] || echo "- status: a part failed (a check or a crash); see its output below"
    echo
    # The parts' own headings one level down, under this run's heading.
    sed 's/^## /### /' "$output"
} >> bench/RESULTS.md
echo "appended to bench/RESULTS.md"
exit "$status"
