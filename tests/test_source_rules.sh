#!/usr/bin/env bash
# Source rules checked on every run: the public header compiles alone as C99 and C++ with -pedantic
# -Werror; library code never exits, aborts or prints; every kernel file states its bytes per element.
set -u
cd "$(dirname "$0")/.."
CC=${CC:-gcc}
CXX=${CXX:-g++}

if $CC -std=c99 -pedantic -Wall -Wextra -Werror -fsyntax-only -x c include/fusedadam.h 2>/tmp/fadam_header_c.log; then
    echo "ok header_compiles_alone_as_c99_pedantic"
else
    echo "FAIL header_compiles_alone_as_c99_pedantic: $(head -c 300 /tmp/fadam_header_c.log)"
fi
if $CXX -std=c++11 -pedantic -Wall -Wextra -Werror -fsyntax-only -x c++ include/fusedadam.h 2>/tmp/fadam_header_cxx.log; then
    echo "ok header_compiles_alone_as_cxx11_pedantic"
else
    echo "FAIL header_compiles_alone_as_cxx11_pedantic: $(head -c 300 /tmp/fadam_header_cxx.log)"
fi

# Calls, not mentions in comments: strip /* */ and // comments before looking.
offenders=$(for f in csrc/*.c csrc/*.h kernels/*.cu kernels/*.cuh kernels/*.h; do
    sed -e 's://.*$::' "$f" | perl -0pe 's:/\*.*?\*/::gs' |
        grep -nE '\b(exit|abort|_exit|printf|fprintf|puts|fputs|perror|putchar)[[:space:]]*\(' |
        sed "s|^|$f:|"
done)
if [ -z "$offenders" ]; then
    echo "ok library_never_exits_aborts_or_prints"
else
    echo "FAIL library_never_exits_aborts_or_prints: $(echo "$offenders" | head -3 | tr '\n' ' ')"
fi

missing=""
for f in kernels/*.cu; do
    head -30 "$f" | grep -qi "bytes moved per element" || missing="$missing $f"
done
if [ -z "$missing" ]; then
    echo "ok kernel_files_state_bytes_per_element"
else
    echo "FAIL kernel_files_state_bytes_per_element:$missing"
fi

# The contract lives in docs/ (a clone has no steering repo beside it): no tracked file may point
# outside the repository at it. The pattern is written escaped so this file does not match itself.
if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    outside=$(git grep -lE '\.\./shared' -- . 2>/dev/null)
else
    outside=$(grep -rlE '\.\./shared' --exclude-dir=.git --exclude-dir=build . 2>/dev/null)
fi
if [ -z "$outside" ]; then
    echo "ok no_file_refers_to_shared_outside_repo"
else
    echo "FAIL no_file_refers_to_shared_outside_repo: $(echo "$outside" | head -5 | tr '\n' ' ')"
fi
if [ -f docs/NUMERICS.md ]; then
    echo "ok contract_in_docs"
else
    echo "FAIL contract_in_docs: docs/NUMERICS.md missing"
fi

# The binding learns the failing tensor from fadam_last_error_tensor, never by parsing messages.
if grep -nE 'std::regex|<regex>' python/fusedadam/_C.cpp >/dev/null; then
    echo "FAIL binding_parses_no_messages: python/fusedadam/_C.cpp uses std::regex"
else
    echo "ok binding_parses_no_messages"
fi
