# Two images (docker-compose.yml builds both):
#   web      gunicorn, the `default` queue's worker, migrate/bootstrap. The runtime lock and the
#            project's wheel, static files collected at build time. No torch.
#   trainer  web + torch (CUDA build) + transformers/peft/accelerate: the `gpu` queue's worker.
#            CPU-only: docker compose build --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG PYTHON_IMAGE=python:3.11-slim

# --- the wheel -----------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS wheel
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md manage.py ./
COPY config config
COPY accounts accounts
COPY annotation annotation
COPY training training
COPY templates templates
COPY static static
RUN pip wheel --no-deps --wheel-dir /dist .

# --- web -----------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS web
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    RLHF_VAR_DIR=/data MODEL_STORE_DIR=/data/models HF_HOME=/hf \
    DJANGO_STATIC_ROOT=/app/staticfiles PORT=8000
COPY requirements/web.txt /tmp/requirements.txt
RUN pip install --no-deps --require-hashes -r /tmp/requirements.txt && rm /tmp/requirements.txt
COPY --from=wheel /dist/ /tmp/dist/
RUN pip install --no-deps /tmp/dist/*.whl && rm -r /tmp/dist
# Static files belong to the image (never to the data volume, where an upgrade would keep the
# old ones). The key only lets settings load; nothing is signed at build time.
RUN DJANGO_ENV=production DJANGO_SECRET_KEY=collectstatic-at-build-time RLHF_VAR_DIR=/tmp/var \
    rlhf-annotate collectstatic --noinput && rm -r /tmp/var
RUN useradd --create-home --uid 1000 app && mkdir -p /data /hf && chown app /data /hf
USER app
WORKDIR /data
EXPOSE 8000
CMD ["gunicorn", "config.wsgi", "-c", "python:config.gunicorn"]

# --- trainer -------------------------------------------------------------------------------------
FROM web AS trainer
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128
USER root
COPY requirements/train.txt /tmp/requirements.txt
# torch first from its own index (the CUDA build), then the rest of the lock with its hashes.
RUN pip install --index-url "$TORCH_INDEX_URL" torch==2.13.0 \
    && pip install --no-deps --require-hashes -r /tmp/requirements.txt && rm /tmp/requirements.txt
USER app
