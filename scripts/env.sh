# Creates .venv beside the repository (once) and installs incept into it with the given extras.
# Sourced by demo.sh and test.sh; needs only python3 (3.10+) and the package registries.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
extras="${1:-}"
python="${PYTHON:-python3}"
if [ ! -x "$root/.venv/bin/python" ]; then
    "$python" -m venv "$root/.venv"
fi
venv="$root/.venv"
# torch first, by itself: it is the large download, and pip resolves it once.
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check "torch>=2.4,<3" "torchvision>=0.19,<1"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check -e "$root${extras:+[$extras]}"
export PATH="$venv/bin:$PATH"
