# Stand-in for prom/prometheus: Debian bookworm's prometheus package, laid out like the official
# image (/bin/prometheus as the entry point: bookworm merges /bin into /usr/bin, /prometheus owned by nobody, wget for the health check).
FROM python:3.11-slim-bookworm
RUN apt-get update \
    && apt-get install -y --no-install-recommends prometheus wget \
    && rm -rf /var/lib/apt/lists/* \
    && mkdir -p /prometheus /etc/prometheus \
    && chown nobody:nogroup /prometheus
USER nobody
WORKDIR /prometheus
ENTRYPOINT ["/bin/prometheus"]
CMD ["--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus"]
