"""The serving stage: a FastAPI service that batches image predictions through ONNX Runtime."""

import os

# ONNX Runtime 1.29 and later upload usage telemetry from Linux (Microsoft's 1DS SDK) unless
# ORT_DISABLE_TELEMETRY is set when it is imported. A self-hosted server should not call out of
# its network, and the uploader is known to deadlock at process exit (onnxruntime-genai#2363;
# a replica once hung after its drain until SIGKILL). Every ``app`` import runs this before
# ``onnxruntime`` is imported (``model_export/__init__.py`` does the same for the export stage);
# set ORT_DISABLE_TELEMETRY=0 to opt back in.
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
