#!/usr/bin/env bash
# Install what `make image` / `make image-test` need from Debian: podman (builds the image),
# buildah (runs commands from it) and mmdebstrap (makes the Debian 12 base without a registry).
#
# Idempotent: does nothing when all three are on PATH. The package lists are refreshed only when
# the install fails without a refresh (once per machine at most, also when another install
# script refreshed them just before).
set -euo pipefail

missing=()
for tool in podman buildah mmdebstrap; do
    command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
if [ ${#missing[@]} -eq 0 ]; then
    echo "podman, buildah and mmdebstrap already installed"
    exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
install() { $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null; }
if ! install 2>/dev/null; then
    $SUDO apt-get update -qq
    install
fi
podman --version
buildah --version
