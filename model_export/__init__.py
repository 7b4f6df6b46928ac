"""The export stage: train, fine-tune, evaluate and export image classifiers to ONNX with a model card."""

import os

# ONNX Runtime's usage telemetry off unless the operator opts in: see app/__init__.py for why.
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
