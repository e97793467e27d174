#!/usr/bin/env bash
# setup_venv.sh - the Python environment the PyTorch binding is built and tested in: a virtual
# environment holding the pinned torch from PyPI (with its CUDA 12 wheels: about 3.5 GB to download
# and 7 GB on disk, a few minutes, once per machine).
#
#   tests/torch/setup_venv.sh [VENV]        VENV defaults to .venv at the repository root
#
# VENV becomes a link to one environment per machine and pin, under
# ${FADAM_VENV_CACHE:-${XDG_CACHE_HOME:-~/.cache}/fusedadam}, so fresh clones (CI) reuse it. A VENV that
# is a real directory (an environment of your own) is used in place. An environment that already
# imports the pinned torch is left as it is. FADAM_TORCH_VERSION overrides the pin; PYTHON names the
# interpreter the environment is made from (default python3).
set -euo pipefail
cd "$(dirname "$0")/../.."
torch_version=${FADAM_TORCH_VERSION:-2.9.1}
python=${PYTHON:-python3}
venv=${1:-.venv}
stamp_name=.fusedadam-torch

has_pinned_torch() {
    "$1/bin/python" -c "import sys, torch; sys.exit(torch.__version__.split('+')[0] != '$torch_version')" \
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
if [ "$target" != "$venv" ]; then ln -sfn "$target" "$venv"; fi
echo "$torch_version" >"$target/$stamp_name"
