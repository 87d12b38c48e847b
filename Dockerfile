# One image for every dropwatch component; the command picks the component:
#   docker build -t dropwatch:dev .
#   docker run dropwatch:dev services.feed                (the default)
#   docker run dropwatch:dev services.poller
#   docker run dropwatch:dev services.maintenance run
#   docker run dropwatch:dev shared.db.migrate
# Kubernetes sets the full command (deploy/k8s/base). Configuration is DROPWATCH_* environment
# variables only (README.md); the image holds no settings and no secrets.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# --- builder: install the project and its dependencies into a virtual environment ---------
FROM ${PYTHON_IMAGE} AS builder

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore

RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /src
COPY pyproject.toml README.md ./
COPY shared ./shared
COPY services ./services
# A regular (not editable) install: the final stage needs only /opt/venv, not /src.
RUN pip install --no-cache-dir . \
    && python -m compileall -q /opt/venv/lib

# --- runtime: the interpreter, the virtual environment and nothing else --------------------
FROM ${PYTHON_IMAGE} AS runtime

LABEL org.opencontainers.image.title="dropwatch" \
      org.opencontainers.image.description="dropwatch poller, gRPC feed and maintenance job"

# Bytecode was compiled in the builder; the root filesystem is read-only at run time.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

RUN groupadd --system --gid 10001 dropwatch \
    && useradd --system --uid 10001 --gid 10001 --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin dropwatch

COPY --from=builder /opt/venv /opt/venv

# Not /tmp: `python -m` puts the working directory first on sys.path, so keep it read-only.
WORKDIR /app
USER 10001:10001

# feed gRPC, poller health gRPC, poller metrics, feed metrics
EXPOSE 50051 50052 9101 9102

ENTRYPOINT ["python", "-m"]
CMD ["services.feed"]
