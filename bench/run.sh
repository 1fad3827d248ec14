#!/usr/bin/env bash
# Build mailcar (Release) and run the benchmark against a baseline measured in the same run.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO=sudo
if ! command -v smtp-sink >/dev/null && [ ! -x /usr/sbin/smtp-sink ] || ! command -v wrk >/dev/null; then
  # postfix brings smtp-source and smtp-sink; its own daemon is not needed.
  echo "postfix postfix/main_mailer_type select No configuration" | $SUDO debconf-set-selections
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y --no-install-recommends postfix wrk
fi
if [[ " $* " == *callgrind* ]] && ! command -v valgrind >/dev/null; then  # --only callgrind
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y --no-install-recommends valgrind
fi
BUILD_DIR=build-bench BUILD_TYPE=Release scripts/build.sh -DMAILCAR_TESTS=OFF
exec /usr/bin/python3 bench/bench.py --mailcar build-bench/mailcar "$@"
