#!/usr/bin/env bash
# setup_venv.sh - the Python environment the PyTorch binding is built and tested in: a virtual
# environment holding the pinned torch from PyPI (with its CUDA 12 wheels: about 3.5 GB to download
# and 7 GB on disk, a few minutes, once per machine), and the pinned transformers and accelerate that
# tests/torch/test_hf.py trains with (about 20 MB more).
#
#   tests/torch/setup_venv.sh [VENV]        VENV defaults to .venv at the repository root
#
# VENV becomes a link to one environment per machine and pin, under
# ${FADAM_VENV_CACHE:-${XDG_CACHE_HOME:-~/.cache}/fusedadam}, so fresh clones (CI) reuse it. A VENV that
# is a real directory (an environment of your own) is used in place. An environment that already
# imports the pinned torch is left as it is, and gets the pinned transformers/accelerate when it lacks
# them (a cached environment made before they were pinned gets them once). FADAM_TORCH_VERSION,
# FADAM_TRANSFORMERS_VERSION and FADAM_ACCELERATE_VERSION override the pins; PYTHON names the
# interpreter the environment is made from (default python3).
set -euo pipefail
cd "$(dirname "$0")/../.."
torch_version=${FADAM_TORCH_VERSION:-2.9.1}
# Newest releases that support torch 2.9.1 and Python 3.11 (transformers 5 needs torch >= 2.6, Python >= 3.11).
transformers_version=${FADAM_TRANSFORMERS_VERSION:-5.24.0}
accelerate_version=${FADAM_ACCELERATE_VERSION:-1.15.0}
python=${PYTHON:-python3}
venv=${1:-.venv}
stamp_name=.fusedadam-torch

has_pinned_torch() {
    "$1/bin/python" -c "import sys, torch; sys.exit(torch.__version__.split('+')[0] != '$torch_version')" \
        >/dev/null 2>&1
}

# By metadata, not import: importing transformers takes seconds.
has_pinned_hf() {
    "$1/bin/python" -c "
import sys
from importlib.metadata import version
sys.exit(version('transformers') != '$transformers_version' or version('accelerate') != '$accelerate_version')" \
        >/dev/null 2>&1
}

if [ -d "$venv" ] && [ ! -L "$venv" ]; then
    target=$venv # the user's own environment
else
    py_version=$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
    cache=${FADAM_VENV_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/fusedadam}
    target=$cache/venv-torch-$torch_version-py$py_version
    mkdir -p "$cache"
fi

# One setup at a time per environment: parallel builds and clones wait for the first one.
exec 9>"$target.lock"
flock 9
if ! has_pinned_torch "$target"; then
    echo "# setting up $target: torch==$torch_version from PyPI (once per machine: ~3.5 GB download, ~7 GB on disk)"
    if [ "$target" != "$venv" ]; then rm -rf "$target"; fi # a half-made environment of ours
    [ -x "$target/bin/python" ] || "$python" -m venv "$target"
    "$target/bin/python" -m pip install --quiet --progress-bar off "torch==$torch_version" "numpy<3" setuptools wheel
    if ! has_pinned_torch "$target"; then
        echo "setup_venv.sh: torch==$torch_version was installed into $target but does not import:" >&2
        "$target/bin/python" -c "import torch" >&2 || true
        exit 1
    fi
fi
if ! has_pinned_hf "$target"; then
    echo "# installing transformers==$transformers_version accelerate==$accelerate_version into $target (once)"
    # Not fatal: without them only test_hf.py's cases skip, and say why. torch named: never moved by them.
    if ! "$target/bin/python" -m pip install --quiet --progress-bar off "torch==$torch_version" "numpy<3" \
        "transformers==$transformers_version" "accelerate==$accelerate_version" ||
        ! has_pinned_hf "$target"; then
        echo "setup_venv.sh: warning: the pinned transformers/accelerate not installed into $target;" \
            "tests/torch/test_hf.py skips where they cannot be imported (run tests/torch/setup_venv.sh again to retry)" >&2
    fi
fi
if [ "$target" != "$venv" ]; then ln -sfn "$target" "$venv"; fi
echo "$torch_version" >"$target/$stamp_name"
