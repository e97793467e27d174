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
