# citywatch image: the hot path compiled with mypyc (setup.py), run as a non-root user.
#
#   docker build -t citywatch:local .        (docker compose build does the same)
#
# Stage 1 builds wheels: citywatch's own, with the per-message modules compiled to C extensions (mypyc
# needs a C compiler), and every dependency's, so the runtime stage needs no compiler.
FROM python:3.11-slim AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc libc6-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY citywatch ./citywatch
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

# Stage 2: what runs. No compiler, no sources beyond the installed package, no tests.
FROM python:3.11-slim
ARG UID=10001
RUN groupadd --system --gid ${UID} citywatch \
 && useradd --system --uid ${UID} --gid ${UID} --home-dir /data --no-create-home --shell /usr/sbin/nologin citywatch \
 && mkdir -p /data \
 && chown ${UID}:${UID} /data \
 && chmod 0700 /data
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index --find-links=/wheels citywatch \
 && rm -rf /wheels \
 && python -c "import citywatch.native as n; assert n.is_compiled(), n.describe(); print('citywatch:', n.describe())"
WORKDIR /app
COPY config.yaml ./
ENV CITYWATCH_DATA_DIR=/data PYTHONUNBUFFERED=1
# A named volume mounted here takes the directory's owner (the uid above) when first created.
VOLUME /data
USER ${UID}:${UID}
EXPOSE 8087 9187
# For `citywatch run` (the API's liveness probe); compose gives the bridge and the workers their own checks.
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8087/health', timeout=4)"]
ENTRYPOINT ["citywatch"]
CMD ["run"]
