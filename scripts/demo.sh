#!/usr/bin/env bash
# The main job on a fresh machine: environment, install, then the tour of incept.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$root"
incept summary --model inception_v3 "$@"
