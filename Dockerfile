# The code-location image: tercul_sync with the pinned dependencies, the Celery and Kubernetes
# executors included (the `distributed` extra). The same image serves the code-location server,
# the run workers and the step pods (k8s_job_executor), and Celery workers:
#   docker build -t tercul-sync:0.1.0 .
#   docker run tercul-sync:0.1.0                       # gRPC code server on :4000 (the Helm chart's)
#   docker run tercul-sync:0.1.0 dagster-celery worker start -A dagster_celery.app -y /tmp/celery.yaml
# Secrets (TERCUL_DATABASE_URL, WEAVIATE_API_KEY, TERCUL_SYNC_CELERY_BROKER) come from the
# environment at run time, never from the image. See docs/deployment.md.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    TERCUL_SYNC_HOME=/var/lib/tercul_sync DAGSTER_HOME=/opt/dagster/dagster_home
WORKDIR /opt/tercul_sync

COPY pyproject.toml requirements.lock README.md ./
COPY tercul_sync ./tercul_sync
RUN pip install -c requirements.lock ".[distributed]" \
    && useradd --create-home --uid 10001 tercul \
    && mkdir -p "$TERCUL_SYNC_HOME" "$DAGSTER_HOME" \
    && chown tercul "$TERCUL_SYNC_HOME" "$DAGSTER_HOME"
USER tercul

EXPOSE 4000
CMD ["dagster", "code-server", "start", "-h", "0.0.0.0", "-p", "4000", "-m", "tercul_sync.definitions"]
