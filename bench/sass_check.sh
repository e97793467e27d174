#!/usr/bin/env bash
# sass_check.sh - `make sass-check`: the sm_90 machine code of the kernels against bench/sass_budget.txt
# (bench/SASS_CHECK.md). Prints "skip sass-check: why" and exits 77 when cuobjdump cannot be had.
#   bench/sass_check.sh OBJECT...     the kernels' objects (build/obj/*.cu.o)
set -uo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
if ! command -v "$python" >/dev/null 2>&1; then echo "skip sass-check: no $python"; exit 77; fi
if ! tools=$(bash bench/sass_tools.sh); then echo "skip sass-check: $tools"; exit 77; fi
exec "$python" bench/sass_check.py --tools "$tools" "$@"
