#!/usr/bin/env bash
# The whole test suite on a fresh machine: environment, lint, format check, pytest.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh" test
cd "$root"
ruff check src tests benchmarks scripts
ruff format --check src tests benchmarks scripts
python -m pytest -q -n 2 --dist loadfile "$@"
