#!/usr/bin/env bash
# The main job on a fresh machine: install, export the default ImageNet model (offline,
# once), then run the server in the foreground on IMGSERVE_PORT (8000).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh export,cpu
model_dir=$(dirname "${IMGSERVE_MODEL_PATH:-models/default/model.onnx}")
if [ ! -f "$model_dir/model.onnx" ] || [ ! -f "$model_dir/model.json" ]; then
  .venv/bin/python -m model_export default --output-dir "$model_dir"
fi
exec .venv/bin/python -m app
