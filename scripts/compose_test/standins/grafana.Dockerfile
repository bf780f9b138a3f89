# Stand-in for grafana/grafana: a health stub. It answers /api/health once the provisioned
# datasource and dashboard files compose.yaml mounts parse; it does not render dashboards.
FROM python:3.11-slim-bookworm
RUN apt-get update \
    && apt-get install -y --no-install-recommends wget \
    && rm -rf /var/lib/apt/lists/*
COPY grafana_stub.py /usr/local/bin/grafana_stub.py
USER 472
ENTRYPOINT ["python3", "/usr/local/bin/grafana_stub.py"]
