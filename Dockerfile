# One image for every role: controller, worker, agent and the admin seeder.
# The command picks the role: `run_controller` (the default), `run_worker`, `run_agent`,
# `migrate`, `seed_admin` (see docker-compose.yml).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

RUN groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid app --home-dir /app --shell /usr/sbin/nologin app

# Dependencies in their own layer: it is rebuilt only when the pins change.
COPY requirements.txt ./
RUN pip install -r requirements.txt

COPY . .

# Static files (the admin, Swagger UI, Redoc) are collected at build and served by whitenoise.
# The key below exists only for this build step; it signs nothing.
ENV STATICFILES_MANIFEST=1
RUN SECRET_KEY=collectstatic-only-not-a-secret VAR_DIR=/tmp/build-var \
        python manage.py collectstatic --noinput \
    && mkdir -p /app/var/agent \
    && chown -R app:app /app/var

USER app

# Inside a container, listen on every interface; compose publishes the ports.
ENV VAR_DIR=/app/var \
    CONTROLLER_BIND=0.0.0.0:8080 \
    WORKER_BIND=0.0.0.0:8082 \
    HEALTHCHECK_URL=http://127.0.0.1:8080/healthz

EXPOSE 8080 8082

# Each role sets HEALTHCHECK_URL to its own health endpoint (the worker's /health, the agent's
# metrics endpoint); the default is the controller's.
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen(os.environ['HEALTHCHECK_URL'], timeout=2)"]

ENTRYPOINT ["python", "manage.py"]
CMD ["run_controller"]
