#!/usr/bin/env bash
# The PyTorch binding's tests, tests/torch/test_*.py, with the interpreter mk/torch.mk prepared
# (FADAM_TORCH_PYTHON, else .venv/bin/python). Each prints "ok/FAIL/skip NAME" lines; a test file
# that dies without printing a FAIL line (an import error, a crash) is reported here as one.
# FADAM_TEST_SEED=N repeats a run's data.
set -u
cd "$(dirname "$0")/../.."
python=${FADAM_TORCH_PYTHON:-.venv/bin/python}
if ! "$python" -c "import torch" >/dev/null 2>&1; then
    echo "FAIL torch_environment: $python cannot import torch (make torch-venv sets up .venv)"
    exit 1
fi
status=0
output=$(mktemp)
trap 'rm -f "$output"' EXIT
for test in tests/torch/test_*.py; do
    PYTHONPATH=python${PYTHONPATH:+:$PYTHONPATH} "$python" "$test" 2>&1 | tee "$output"
    code=${PIPESTATUS[0]}
    if [ "$code" -ne 0 ] && [ "$code" -ne 77 ]; then
        status=1
        grep -q '^FAIL ' "$output" || echo "FAIL $(basename "$test" .py): exited with code $code"
    fi
done
exit $status
