#!/usr/bin/env bash
# `make image`: build the Dockerfile's image as dropwatch:dev with podman, no Docker engine and no
# registry needed (docs/deploy.md, "Building and testing the image here").
#
#   1. base: a Debian 12 root filesystem with Python 3.11 made by mmdebstrap, imported as
#      localhost/dropwatch-base:bookworm-KEY (skipped when PYTHON_IMAGE is set: any Python
#      3.11+ image the engine can reach, e.g. python:3.11-slim-bookworm).
#   2. wheelhouse: the dependencies of pyproject.toml at the versions of .venv (the ones the tests
#      ran with), downloaded on the host; the build installs them with --no-index, as an
#      air-gapped build does.
#   3. the image, with vfs storage and chroot isolation (what works in an unprivileged sandbox).
#
# The base tarball and the wheelhouse are cached in DROPWATCH_IMAGE_CACHE (default
# ~/.cache/dropwatch/image, outside the work tree so fresh clones share it; .dropwatch/image-cache
# without a home), keyed by what makes them. The image is rebuilt only when one of its inputs changed (label dev.dropwatch.inputs).
set -euo pipefail
cd "$(dirname "$0")/.."

IMAGE="${IMAGE:-dropwatch:dev}"
if [ -n "${XDG_CACHE_HOME:-}" ] || [ -n "${HOME:-}" ]; then
    CACHE="${DROPWATCH_IMAGE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/dropwatch/image}"
else  # no home (some CI runners): the git-ignored state folder of the work tree
    CACHE="${DROPWATCH_IMAGE_CACHE:-$PWD/.dropwatch/image-cache}"
fi
DRIVER="${DROPWATCH_STORAGE_DRIVER:-vfs}"
VENV_PYTHON="${VENV_PYTHON:-.venv/bin/python}"
SUITE=bookworm
# python3-venv: the builder's `python -m venv`; passwd: the runtime's useradd.
PACKAGES=python3,python3-venv,python-is-python3,passwd

podman() { command podman --storage-driver "$DRIVER" "$@"; }
say() { echo "== image: $*"; }
sha() { sha256sum | cut -c1-16; }

for tool in podman "$VENV_PYTHON"; do
    command -v "$tool" >/dev/null || { echo "build_image.sh: $tool not found (docs/deploy.md)" >&2; exit 2; }
done
mkdir -p "$CACHE"
exec 9>"$CACHE/lock"
flock 9  # one build at a time on this machine: they share the cache and the image tag

scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT

# --- 1. base -----------------------------------------------------------------------------
if [ -n "${PYTHON_IMAGE:-}" ]; then
    base="$PYTHON_IMAGE"
    base_key="$PYTHON_IMAGE"
else
    command -v mmdebstrap >/dev/null || { echo "build_image.sh: mmdebstrap not found (apt-get install mmdebstrap)" >&2; exit 2; }
    mmdebstrap_args=(--variant=apt "--include=$PACKAGES"
        --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/man/*'
        --dpkgopt='path-exclude=/usr/share/locale/*' "$SUITE")
    base_key="$(printf '%s\n' "${mmdebstrap_args[@]}" | sha)"
    base="localhost/dropwatch-base:$SUITE-$base_key"
    if podman image exists "$base"; then
        say "base $base (present)"
    else
        tarball="$CACHE/base-$base_key.tar"
        if [ ! -s "$tarball" ]; then
            say "making the Debian $SUITE base with mmdebstrap (about 1-2 minutes)"
            mmdebstrap --quiet "${mmdebstrap_args[@]}" "$scratch/base.tar"
            mv "$scratch/base.tar" "$tarball"
        fi
        podman import --quiet "$tarball" "$base" >/dev/null
        say "base $base (imported from $tarball)"
    fi
fi

# --- 2. wheelhouse -----------------------------------------------------------------------
"$VENV_PYTHON" -c 'import tomllib; print(*tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"], sep="\n")' >"$scratch/requirements.txt"
"$VENV_PYTHON" -m pip freeze --exclude-editable --disable-pip-version-check >"$scratch/constraints.txt"
wheels_key="$(cat "$scratch/requirements.txt" "$scratch/constraints.txt" | sha)"
wheels="$CACHE/wheels-$wheels_key"
if [ -d "$wheels" ]; then
    say "wheelhouse $wheels (present)"
else
    say "downloading the wheelhouse into $wheels"
    "$VENV_PYTHON" -m pip download --quiet --disable-pip-version-check --only-binary=:all: \
        -d "$scratch/wheels" -c "$scratch/constraints.txt" -r "$scratch/requirements.txt" \
        2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
    mv "$scratch/wheels" "$wheels"
fi

# --- 3. the image ------------------------------------------------------------------------
inputs="$( {
    echo "$base $base_key $wheels_key"
    find Dockerfile .dockerignore pyproject.toml shared services -type f \
        ! -path '*/__pycache__/*' ! -name '*.py[cod]' -print0 | sort -z | xargs -0 sha256sum
} | sha)"
current="$(podman image inspect --format '{{index .Labels "dev.dropwatch.inputs"}}' "$IMAGE" 2>/dev/null || true)"
if [ "$current" = "$inputs" ]; then
    say "$IMAGE is up to date (inputs $inputs)"
    exit 0
fi
say "building $IMAGE from $base"
start=$SECONDS
previous="$(podman image inspect --format '{{.Id}}' "$IMAGE" 2>/dev/null || true)"
# --layers=false: with vfs storage every cached layer is a full copy of the file system, which
# costs more than it saves; the inputs label above is the cache instead.
podman build --layers=false --isolation chroot --network host \
    --build-arg "PYTHON_IMAGE=$base" --build-context "wheelhouse=$wheels" \
    --label "dev.dropwatch.inputs=$inputs" -t "$IMAGE" . >"$scratch/build.log" 2>&1 \
    || { cat "$scratch/build.log" >&2; exit 1; }
if [ -n "$previous" ]; then
    podman rmi "$previous" >/dev/null 2>&1 || true  # untagged now; kept only if a container uses it
fi
say "built $IMAGE in $((SECONDS - start)) s: $(podman image inspect --format '{{.Size}}' "$IMAGE") bytes"
