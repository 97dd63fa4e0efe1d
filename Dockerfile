# syntax=docker/dockerfile:1
# One image for every process of the relay; the command picks the role:
#   gms-relay ingress (default) | gms-relay worker | rq-dashboard ... | gms-relay simulate ...
# No HEALTHCHECK here: the right probe depends on the role, so docker-compose.yml sets one per service.

ARG PYTHON_IMAGE=python:3.11-slim

# --- build: turn the source tree into a wheel, install it with the dashboard extra into a venv ---
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY . .
# Every dependency ships manylinux wheels for CPython 3.11 (uvloop, httptools, hiredis, msgspec),
# so no compiler is needed. The wheel is installed by path, never by name, so a same-named
# distribution on an index can never replace it.
RUN pip wheel --no-deps --wheel-dir /wheels . \
 && python -m venv /opt/venv \
 && /opt/venv/bin/pip install "$(ls /wheels/gms_push_relay-*.whl)[dashboard]" \
 && /opt/venv/bin/python -c "import gms_relay, ingress, workers, shared, simulator, rq_dashboard, six"

# --- runtime: the venv only, run as an unprivileged user ---
FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="gms-push-relay" \
      org.opencontainers.image.description="Genesys Mobile Services chat push relay: ingress, RQ workers, rq-dashboard"
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/venv/bin:$PATH
RUN groupadd --system --gid 10001 relay \
 && useradd --system --uid 10001 --gid relay --home-dir /home/relay --create-home \
      --shell /usr/sbin/nologin relay
# Same path as in the build stage: the venv's scripts carry /opt/venv/bin/python in their shebangs.
COPY --from=build /opt/venv /opt/venv
WORKDIR /home/relay
# Numeric, so orchestrators enforcing runAsNonRoot can verify it without reading /etc/passwd.
USER 10001:10001
EXPOSE 8080
# The ingress drains in-flight requests on SIGTERM (uvicorn, 10 s); a worker finishes its current job.
STOPSIGNAL SIGTERM
CMD ["gms-relay", "ingress"]
