#!/usr/bin/env bash
# Install dependencies, build, and run every test (unit + integration) through CTest.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
scripts/build.sh -DMAILCAR_TESTS=ON
cd "${BUILD_DIR:-build}"
ctest --output-on-failure -j2 "$@"
