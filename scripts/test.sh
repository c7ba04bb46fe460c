#!/usr/bin/env bash
# The whole test suite on a fresh machine: environment, lint, format check, pytest.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh" test
# The web page's browser test drives Debian's Chromium; without root it skips, saying so.
if ! command -v chromium >/dev/null && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    (apt-get update -qq && apt-get install -y -qq chromium) >/dev/null 2>&1 ||
        echo "note: could not install chromium; the browser test will be skipped"
fi
cd "$root"
ruff check
ruff format --check
python -m pytest -q -n 2 --dist loadfile --durations=40 "$@"
