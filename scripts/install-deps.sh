#!/usr/bin/env bash
# Installs what mailcar needs to build and test on Debian 12 (as root, or via sudo).
set -euo pipefail
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
# scripts/install-deps.sh --run: only what building and running it needs (scripts/run.sh), plus
# curl and swaks for the README's examples. Without it: also everything the tests use.
# --with-fuzz: also clang for the fuzz targets.
mode=${1:-}
packages=(
  build-essential cmake pkg-config
  libuv1-dev libmbedtls-dev libyaml-cpp-dev node-llhttp libsimdjson-dev
  # shared state (issue 11): hiredis with its libuv adapter
  libhiredis-dev
  curl swaks
)
if [ "$mode" != "--run" ]; then
  packages+=(
    libgtest-dev libgmock-dev
    # a real redis-server for the shared-state integration tests
    redis-server
    # integration tests: real upstream servers and real clients
    python3 python3-aiosmtpd python3-pytest python3-prometheus-client openssl
    # DKIM (issue 10): an independent verifier for the signed messages
    python3-dkim
    # swaks --tls / --tls-on-connect (listen.smtps tests, issue 13)
    libnet-ssleay-perl libio-socket-ssl-perl
    # issue 13: programs that pipe into sendmail; the container image built and run for real
    php-cli bsd-mailx podman runc mmdebstrap uidmap
  )
  # npm installs kubernetes-models at test time to validate the Kubernetes manifests; any npm
  # will do (a nodejs from elsewhere may already bring one).
  if ! command -v npm >/dev/null 2>&1; then packages+=(npm); fi
fi
if [ "$mode" = "--with-fuzz" ]; then
  packages+=(clang libclang-rt-14-dev)
fi
missing=()
for p in "${packages[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update
  $SUDO apt-get install -y --no-install-recommends "${missing[@]}"
fi
