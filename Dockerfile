FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md config.yaml ./
COPY citywatch ./citywatch
RUN pip install --no-cache-dir .
ENV CITYWATCH_DATA_DIR=/data
VOLUME /data
ENTRYPOINT ["citywatch"]
CMD ["run"]
