# One image for every dropwatch component; the command picks the component:
#   docker build -t dropwatch:dev .
#   docker run dropwatch:dev services.feed                (the default)
#   docker run dropwatch:dev services.poller
#   docker run dropwatch:dev services.maintenance run
#   docker run dropwatch:dev shared.db.migrate
# Kubernetes sets the full command (deploy/k8s/base). Configuration is DROPWATCH_* environment
# variables only (README.md); the image holds no settings and no secrets.
#
# Build arguments and contexts (docs/deploy.md, "Building the image"):
#   --build-arg PYTHON_IMAGE=...        another Python 3.11+ base (e.g. one made with mmdebstrap)
#   --build-context wheelhouse=DIR      install the dependencies from DIR's wheels only, with no
#                                       package index (air-gapped builds; scripts/build_image.sh)

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# --- wheelhouse: no wheels by default, so pip uses its index ------------------------------
# `--build-context wheelhouse=DIR` replaces this stage with the directory DIR.
FROM scratch AS wheelhouse
COPY pyproject.toml /no-wheels-here

# --- builder: the dependencies into a virtual environment, the sources beside it ----------
FROM ${PYTHON_IMAGE} AS builder

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore

RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /src
COPY pyproject.toml ./
COPY --from=wheelhouse / /wheels/
# Only [project].dependencies, never the extras. The project itself is not pip-installed: its
# distribution would bring the `dropwatch` console script, whose cli/ package is not shipped.
RUN python -c 'import tomllib; print(*tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"], sep="\n")' > requirements.txt \
    && if ls /wheels/*.whl > /dev/null 2>&1; then set -- --no-index --find-links /wheels; fi \
    && pip install --no-cache-dir "$@" -r requirements.txt

COPY shared /opt/dropwatch/shared
COPY services /opt/dropwatch/services
# Bytecode now, valid whatever the files' times become (COPY --from may round them), since the
# files never change; the installer itself is not needed at run time.
RUN python -m compileall -q -f --invalidation-mode unchecked-hash /opt/venv/lib /opt/dropwatch \
    && pip uninstall --yes --quiet pip setuptools

# --- runtime: the interpreter, the virtual environment, the sources and nothing else ------
FROM ${PYTHON_IMAGE} AS runtime

LABEL org.opencontainers.image.title="dropwatch" \
      org.opencontainers.image.description="dropwatch poller, gRPC feed and maintenance job"

# Bytecode is compiled at build time (the root filesystem is read-only at run time).
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONPATH=/opt/dropwatch \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

# Python base images ship the standard library without bytecode: compile it here, or every
# start compiles each module it imports again, in memory.
RUN groupadd --system --gid 10001 dropwatch \
    && useradd --system --uid 10001 --gid 10001 --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin dropwatch \
    && python -m compileall -q -x '/(test|tests|idle_test)/' \
       "$(python -c 'import sysconfig; print(sysconfig.get_path("stdlib"))')"

COPY --from=builder /opt/venv /opt/venv
COPY --from=builder /opt/dropwatch /opt/dropwatch

# Not /tmp: `python -m` puts the working directory first on sys.path, so keep it read-only.
WORKDIR /app
USER 10001:10001

# feed gRPC, poller health gRPC, poller metrics, feed metrics
EXPOSE 50051 50052 9101 9102

ENTRYPOINT ["python", "-m"]
CMD ["services.feed"]
