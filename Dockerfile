# radlens image: the same `radlens` commands the README runs, in a container.
#
#   docker build -t radlens .                                  # CPU (default)
#   docker build -t radlens:gpu --build-arg RADLENS_EXTRAS=gpu .
#
# The GPU build installs TensorFlow's documented Linux GPU wheels (`tensorflow[and-cuda]`,
# CUDA and cuDNN as pip packages); the host needs only the NVIDIA driver and the NVIDIA
# container toolkit (see docker-compose.gpu.yml). PYTHON_IMAGE chooses the base image.
ARG PYTHON_IMAGE=python:3.11.7-slim-bookworm

# ---- requirements: the image's pins, read from pyproject.toml -------------------------
# Its own stage so that the install below is cached on the list itself: editing
# pyproject.toml elsewhere (tools, dev dependencies) does not reinstall TensorFlow.
FROM ${PYTHON_IMAGE} AS requirements
ARG RADLENS_EXTRAS=cpu
WORKDIR /src
COPY pyproject.toml ./
COPY scripts/image_requirements.py ./scripts/
RUN python scripts/image_requirements.py "${RADLENS_EXTRAS}" > /requirements.txt

# ---- build: resolve and install every dependency into a virtual environment ----------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
# Dependencies first, in their own layer (a code change does not reinstall TensorFlow):
# the pins of pyproject.toml, with TensorFlow's CPU-only wheel for the CPU image.
COPY --from=requirements /requirements.txt /tmp/requirements.txt
RUN pip install --requirement /tmp/requirements.txt \
    && rm -rf /opt/venv/lib/python3.11/site-packages/tensorflow/include
COPY pyproject.toml ./
COPY README.md ./
COPY app ./app
COPY cli ./cli
COPY models ./models
COPY training ./training
COPY migrations ./migrations
# the one installed top-level package: links to the folders above (pyproject.toml)
COPY radlens ./radlens
RUN pip install --no-deps .

# ---- runtime: the venv and a non-root user, nothing else ------------------------------
FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="radlens" \
      org.opencontainers.image.description="Medical imaging diagnosis service. Not for clinical use unless the model manifest says it was validated." \
      org.opencontainers.image.licenses="Apache-2.0"
RUN useradd --create-home --uid 10001 --shell /usr/sbin/nologin radlens \
    && mkdir -p /data/store /data/runs /data/var /data/input \
    && chown -R radlens:radlens /data
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    TF_CPP_MIN_LOG_LEVEL=2 \
    RADLENS_MODEL_STORE=/data/store \
    RADLENS_DATABASE_URL=sqlite:////data/var/radlens.db \
    RADLENS_HOST=0.0.0.0 \
    RADLENS_PORT=8000
WORKDIR /data
VOLUME ["/data/store", "/data/runs"]
USER 10001:10001
EXPOSE 8000
# probes the port the settings give (RADLENS_PORT), so `-e RADLENS_PORT=9000` stays healthy
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('RADLENS_PORT', '8000'), timeout=4)"]
CMD ["radlens", "serve"]
