# The image `launch --k8s` manifests run: psflow installed, this directory at /app (scripts are
# run from there), a non-root user.
#
#   docker build -t registry.example/psflow:1 .
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app
COPY . /app
RUN pip install --no-cache-dir ".[examples]" \
    && useradd --uid 10001 --create-home --shell /usr/sbin/nologin psflow \
    && chown -R psflow /app
USER 10001
EXPOSE 2222
CMD ["python", "-P", "-m", "psflow.ps", "--help"]
