#!/usr/bin/env bash
# The whole test suite on a fresh machine: environment, lint, format check, pytest.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh" test
cd "$root"
ruff check
ruff format --check
python -m pytest -q -n 2 --dist loadfile "$@"
