# Keel: one process, SQLite under /data by default.

# llama-cpp-python (the local model runtime) builds from source. GGML_NATIVE=OFF keeps the
# build portable: without it the compiler targets the build machine's CPU and the image can
# crash with "illegal instruction" on another host.
FROM python:3.11-slim AS llama
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential cmake \
 && rm -rf /var/lib/apt/lists/*
ENV CMAKE_ARGS=-DGGML_NATIVE=OFF
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels "llama-cpp-python==0.3.36"

FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    KEEL_HOST=0.0.0.0 \
    KEEL_PORT=8080 \
    KEEL_DATA_DIR=/data \
    KEEL_LOG_FORMAT=json

# A plain (non-editable) install: the migrations ship inside the package, so nothing of the
# source tree is needed at run time and it is removed (tests/integration/test_installed.py
# builds this same layout without a Docker engine).
COPY pyproject.toml README.md /src/
COPY app /src/app
COPY --from=llama /wheels /wheels
RUN apt-get update \
 && apt-get install -y --no-install-recommends libgomp1 \
 && rm -rf /var/lib/apt/lists/* \
 && pip install /wheels/*.whl "/src[local]" \
 && rm -rf /src /wheels \
 && useradd --system --uid 10001 --home-dir /srv/keel --shell /usr/sbin/nologin keel \
 && mkdir -p /data /srv/keel && chown keel:keel /data

# The working directory holds no code. Mount a keel.toml here (read-only) and it is found as
# ./keel.toml; provider keys come from the environment variables it names (README, Docker).
WORKDIR /srv/keel
USER keel
VOLUME ["/data"]
EXPOSE 8080

# Binding 0.0.0.0 requires KEEL_API_TOKEN (Keel refuses to start without it). /readyz: the
# store is reachable and migrated (the container migrates at start, KEEL_AUTO_MIGRATE=true).
HEALTHCHECK --interval=15s --timeout=3s --start-period=20s --retries=3 \
  CMD ["python", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8080/readyz', timeout=2).status == 200 else 1)"]

CMD ["keel", "serve"]
