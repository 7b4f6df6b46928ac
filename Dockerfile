# Image-classification inference service: an export stage (PyTorch) and a serving stage
# (ONNX Runtime, no PyTorch). See docs/deployment.md.
#
#   docker build -t imgserve:gpu .                                # GPU runtime, model from ./models/default
#   docker build --build-arg ORT_VARIANT=cpu -t imgserve:cpu .    # CPU-only runtime
#   docker build --target runtime-exported -t imgserve:gpu .      # model exported during the build
#   docker build --target export -t imgserve-export .             # the export/fine-tune tool alone
#
# Base images are build arguments so that a mirror (or a locally built stand-in) can replace
# them. The serving stage never installs PyTorch: its dependencies come from pyproject.toml's
# [project.dependencies] plus the `cpu` or `gpu` extra, at requirements.lock's versions.

ARG PYTHON_IMAGE=docker.io/library/python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS base
# ORT_DISABLE_TELEMETRY: ONNX Runtime's usage telemetry stays off (see app/__init__.py).
ENV PYTHONDONTWRITEBYTECODE=1 \
    ORT_DISABLE_TELEMETRY=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH
WORKDIR /srv/imgserve


# ---- export: PyTorch, torchvision, timm; writes model.onnx + model.json -------------------
FROM base AS export
# The CPU wheels of PyTorch are a few hundred MB; PyPI's default build brings GBs of CUDA
# libraries that exporting does not need. Set it empty to use only the default index.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
COPY docker/requirements-from-pyproject.py /usr/local/bin/requirements-from-pyproject
COPY pyproject.toml requirements.lock ./
# The lock's versions without its hashes, and without torch and torchvision: the lock holds
# the hashes of PyPI's (CUDA) files, and the CPU build is another file of the same version.
# The serving stages below install with every hash checked.
RUN python3 -m venv "$VIRTUAL_ENV" \
    && requirements-from-pyproject pyproject.toml export > /tmp/requirements.txt \
    && sed -e '/^ *#/d' -e '/--hash=/d' -e 's/ \\$//' -e '/^torch==/d' -e '/^torchvision==/d' \
       requirements.lock > /tmp/constraints.txt \
    && pip install -c /tmp/constraints.txt ${TORCH_INDEX_URL:+--extra-index-url "$TORCH_INDEX_URL"} \
       -r /tmp/requirements.txt
COPY model_card model_card
COPY model_export model_export
# Arguments of `python -m model_export` for the model baked into the runtime image.
ARG EXPORT_ARGS="default"
RUN python -m model_export ${EXPORT_ARGS} --output-dir /models/default
# `docker compose --profile export run --rm export train --data /data ...` and the like.
ENTRYPOINT ["python", "-m", "model_export"]
CMD ["--help"]


# ---- venv: the serving dependencies, with one ONNX Runtime build ---------------------------
FROM base AS venv
# gpu: onnxruntime-gpu with CUDA and cuDNN from their PyPI packages; cpu: onnxruntime.
ARG ORT_VARIANT=gpu
COPY docker/requirements-from-pyproject.py /usr/local/bin/requirements-from-pyproject
COPY pyproject.toml requirements.lock ./
# Every version and file hash from requirements.lock (pip's hash-checking mode); pip itself
# first, from its own lines of the lock, as scripts/bootstrap.sh does.
RUN python3 -m venv "$VIRTUAL_ENV" \
    && awk '/^pip==/{on=1; print; next} on && /^ /{print; next} {on=0}' requirements.lock > /tmp/pip.lock \
    && pip install --require-hashes -r /tmp/pip.lock \
    && requirements-from-pyproject pyproject.toml "${ORT_VARIANT}" > /tmp/requirements.txt \
    && pip install -c requirements.lock -r /tmp/requirements.txt \
    && pip uninstall -y pip setuptools


# ---- server: the runtime image but for the model -----------------------------------------
FROM base AS server
ARG ORT_VARIANT=gpu
RUN groupadd --system --gid 10001 imgserve \
    && useradd --system --uid 10001 --gid imgserve --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin imgserve
COPY --from=venv /opt/venv /opt/venv
# onnxruntime-gpu dlopens CUDA and cuDNN, which the pip packages put under
# site-packages/nvidia/*/lib where the dynamic loader does not look by itself. The engine also
# calls onnxruntime.preload_dlls() when the CUDA provider is offered; the loader path makes the
# libraries findable for anything else that dlopens them. (For the cpu variant the list is empty.)
RUN find /opt/venv -type d -path '*/site-packages/nvidia/*/lib' > /etc/ld.so.conf.d/imgserve-nvidia.conf \
    && ldconfig
COPY docker/healthcheck.py /usr/local/bin/imgserve-healthcheck
COPY model_card model_card
COPY app app
LABEL org.opencontainers.image.title="imgserve" \
      org.opencontainers.image.description="Image classification over REST: FastAPI + ONNX Runtime (${ORT_VARIANT})" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV IMGSERVE_MODEL_PATH=/models/default/model.onnx \
    IMGSERVE_PORT=8000 \
    IMGSERVE_GRPC_PORT=8001
# Numeric, so that Kubernetes' runAsNonRoot can check it.
USER 10001:10001
# 8000: HTTP (REST, the v2 protocol, TF Serving's API); 8001: the v2 protocol over gRPC.
EXPOSE 8000 8001
# /readyz is 503 until the model is warmed up and again while draining, so an orchestrator
# stops routing to a replica that is shutting down. Exec form, no shell in the loop.
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
    CMD ["python", "/usr/local/bin/imgserve-healthcheck"]
# Exec form: python is PID 1 and receives SIGTERM itself; the server then drains
# (IMGSERVE_SHUTDOWN_DELAY_S, then IMGSERVE_DRAIN_TIMEOUT_S) and exits 0.
# One server process per container: batching works per process, scale with replicas.
STOPSIGNAL SIGTERM
CMD ["python", "-m", "app"]


# ---- runtime-exported: the server with the model the export stage made --------------------
FROM server AS runtime-exported
COPY --from=export /models/default /models/default/


# ---- runtime (the default target): the server with a model from the build context ----------
# Export it first: python -m model_export default --output-dir models/default
FROM server AS runtime
ARG MODEL_DIR=models/default
COPY ${MODEL_DIR}/ /models/default/
