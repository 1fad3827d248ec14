#!/usr/bin/env bash
# Quick start: install dependencies, build, and run mailcar on conf/mailcar.yaml.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh --run
MAILCAR_TESTS=OFF scripts/build.sh -DMAILCAR_TESTS=OFF
exec build/mailcar -c conf/mailcar.yaml "$@"
