# Stand-in for minio/minio and minio/mc (no container registry is reachable where the compose test
# runs): moto's S3 server, and an `mc` that does what compose.yaml's setup asks of MinIO's client.
FROM python:3.11-slim-bookworm
COPY --from=ghcr.io/astral-sh/uv:0.13.9 /uv /usr/local/bin/uv
RUN uv venv --python /usr/local/bin/python3.11 /opt/s3 \
    && VIRTUAL_ENV=/opt/s3 uv pip install --no-cache "moto[s3]==5.2.5" "flask<4" "flask-cors<7" \
    && mkdir /data
COPY minio mc /usr/local/bin/
ENV PATH=/opt/s3/bin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
ENTRYPOINT ["minio"]
