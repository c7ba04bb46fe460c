#!/usr/bin/env bash
# The main job on a fresh machine: environment, install, then `incept demo` (a few minutes on
# two CPU cores; results in ./incept-demo unless --out DIR is given).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
incept demo "$@"
