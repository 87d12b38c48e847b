#!/usr/bin/env bash
# Install Prometheus and promtool from Debian's `prometheus` package, for tests/deploy.
#
# Idempotent: does nothing when promtool and prometheus are already on PATH (or in /usr/bin).
# The package's service is not started here: on machines with /usr/sbin/policy-rc.d (containers)
# apt leaves it stopped, and the tests start their own server on a free loopback port anyway.
set -euo pipefail

have() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/bin/$1" ]; }

if have promtool && have prometheus; then
    echo "prometheus and promtool already installed: $(command -v promtool || echo /usr/bin/promtool)"
    exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
fi

export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends prometheus
/usr/bin/promtool --version | head -n 1
