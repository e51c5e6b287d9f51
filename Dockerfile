# Keel: one process, SQLite under /data by default.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    KEEL_HOST=0.0.0.0 \
    KEEL_PORT=8080 \
    KEEL_DATA_DIR=/data \
    KEEL_LOG_FORMAT=json

WORKDIR /app
COPY pyproject.toml README.md alembic.ini ./
COPY app ./app
COPY migrations ./migrations
RUN pip install . \
 && useradd --system --uid 10001 --home-dir /app --shell /usr/sbin/nologin keel \
 && mkdir -p /data && chown keel:keel /data

USER keel
VOLUME ["/data"]
EXPOSE 8080

# Binding 0.0.0.0 requires KEEL_API_TOKEN (Keel refuses to start without it).
HEALTHCHECK --interval=15s --timeout=3s --start-period=20s --retries=3 \
  CMD ["python", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=2).status == 200 else 1)"]

CMD ["keel", "serve"]
