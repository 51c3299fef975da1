# Coffee Payments Server: Gunicorn master + Uvicorn workers serving the Django ASGI application.
#
#   make image                     # on this project's machines: local base image, podman
#   docker build -t coffee-payment-server .
#
# BASE_IMAGE is any Debian-based image with python3 (3.11) and its venv module on PATH; the
# official slim image by default. Python's location in the base does not matter: the
# application lives in the virtualenv /opt/venv, which is first on PATH.
ARG BASE_IMAGE=python:3.11-slim-bookworm

# ---- build: dependencies into /opt/venv, static files collected -----------------------------
FROM ${BASE_IMAGE} AS build

# pip's index settings of the build machine (deploy/container/pip-build-args.sh). Empty means
# pip's default. Build arguments of this stage never reach the runtime image.
ARG PIP_INDEX_URL=
ARG PIP_EXTRA_INDEX_URL=
ARG PIP_TRUSTED_HOST=
ARG PIP_DEFAULT_TIMEOUT=60
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1

WORKDIR /app

# Dependencies first, so a source change reuses this layer: exactly the lock's versions (`make lock`
# writes it from setup.cfg's ranges), each file checked against its hash, wheels only (nothing is
# built here); `pip check` fails a lock that misses a dependency. Only the venv moves on.
COPY requirements/app.lock ./requirements/
RUN python3 -m venv /opt/venv \
 && /opt/venv/bin/pip install --quiet --require-hashes --no-deps --only-binary :all: -r requirements/app.lock \
 && /opt/venv/bin/pip check

COPY manage.py ./
COPY config/ config/
COPY coffee_payment/ coffee_payment/
COPY payments/ payments/
COPY deploy/container/entrypoint.sh deploy/container/

# collectstatic loads the production settings, which require these variables: the values are set
# for this one command only and are not secrets (nothing is signed or stored with them; no
# database is opened, so SQLite is allowed here).
RUN DJANGO_ENV=production \
    DJANGO_SECRET_KEY=collectstatic-at-build-time-signs-nothing-0123456789abcdefghijklmnopqrstuvwxyz \
    DJANGO_ALLOWED_HOSTS=localhost \
    DJANGO_PUBLIC_BASE_URL=http://localhost \
    DATABASE_URL=sqlite:////tmp/collectstatic.sqlite3 \
    DATABASE_ALLOW_SQLITE=true \
    /opt/venv/bin/python manage.py collectstatic --noinput --verbosity 0 \
 && /opt/venv/bin/python -m compileall -q config coffee_payment payments

# ---- runtime: the venv, the project, a non-root user ----------------------------------------
FROM ${BASE_IMAGE} AS runtime

RUN groupadd --system --gid 10001 app \
 && useradd --uid 10001 --gid app --home-dir /app --no-create-home --shell /usr/sbin/nologin app

# Root-owned and read-only to the server: it writes nothing but logs (to stdout and stderr).
COPY --from=build /opt/venv /opt/venv
COPY --from=build /app /app

WORKDIR /app
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

USER 10001:10001
# The application's port and the metrics port (GUNICORN_PORT, GUNICORN_METRICS_PORT).
EXPOSE 8000 9464
STOPSIGNAL SIGTERM
# /health answers while a worker's event loop does; it needs no database and no curl.
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % (os.environ.get('GUNICORN_PORT') or 8000), timeout=4)"]
ENTRYPOINT ["/app/deploy/container/entrypoint.sh"]

ARG BASE_IMAGE
ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="coffee-payment-server" \
      org.opencontainers.image.description="Pay for a coffee machine's drink by QR code: Django ASGI under Gunicorn with Uvicorn workers" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="Proprietary" \
      org.opencontainers.image.base.name="${BASE_IMAGE}"
