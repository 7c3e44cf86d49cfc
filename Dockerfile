# syntax=docker/dockerfile:1
#
# One image for both services; the command picks which one runs:
#   docker run IMAGE                    -> orderstack serve order   (port 8080)
#   docker run IMAGE serve product      -> orderstack serve product (port 3000)
#   docker run IMAGE migrate up         -> apply the migrations and exit
# Configuration is the environment (see src/orderstack/config.py and docker-compose.yml).

ARG PYTHON_IMAGE=python:3.11-slim

# --- builder: install the project (runtime dependencies only) into a venv ------------------
FROM ${PYTHON_IMAGE} AS builder

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

RUN python -m venv /opt/venv

WORKDIR /build

# Dependencies first, from pyproject.toml alone, so that a source change does not
# reinstall them (layer cache). No test extras.
COPY pyproject.toml ./
RUN python -c "import tomllib; print(*tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies'], sep=chr(10))" \
        > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt

# Then the project itself (non-editable: the venv must not point back at /build).
COPY README.md ./
COPY src ./src
RUN pip install --no-deps . \
    && orderstack --help > /dev/null

# --- runtime -----------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

RUN groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid app --home-dir /app --shell /usr/sbin/nologin app \
    && mkdir -p /app/var \
    && chown -R app:app /app

COPY --from=builder /opt/venv /opt/venv

WORKDIR /app
USER 10001:10001

EXPOSE 8080 3000

# /health answers 200 only when every dependency is up; a 503 or no answer makes python exit 1.
# Port: $PORT if set (docker-compose.yml sets it per service), else PRODUCT_PORT/3000 when PID 1
# is `orderstack serve product`, else ORDER_PORT/8080.
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=5 \
    CMD ["python", "-c", "import os, urllib.request; argv = open('/proc/1/cmdline', 'rb').read().split(bytes(1)); port = os.environ.get('PORT') or (os.environ.get('PRODUCT_PORT', '3000') if b'product' in argv else os.environ.get('ORDER_PORT', '8080')); urllib.request.urlopen('http://127.0.0.1:%s/health' % port, timeout=4)"]

ENTRYPOINT ["orderstack"]
CMD ["serve", "order"]
