#!/usr/bin/env bash
# The GPU machine's one command (see docs/BENCHMARKS.md, "GPU machine"). Run from the repo root
# on the lent machine after the onnxruntime-gpu wheels are installed into /root/site:
#   bench/gpu/run.sh "$OUT/gpu"     # results.json, report.md and the plots end up there
# It checks that ONNX Runtime's CUDA provider really loads (and stops if not), exports the
# model if it was not carried, then runs the whole suite with the GPU plan.
set -euo pipefail
dest=${1:-bench/results/gpu}
out=bench/results/gpu-run
export PYTHONPATH="$PWD/bench/gpu:/root/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
export BENCH_ORT_PRELOAD_DLLS=1
python3 - <<'PY'
import onnxruntime as ort
providers = ort.get_available_providers()
print("onnxruntime", ort.__version__, "available providers:", providers)
if "CUDAExecutionProvider" not in providers:
    raise SystemExit("CUDAExecutionProvider is not available: install onnxruntime-gpu (../shared/GPU.md)")
PY
# Exported here rather than carried (a call carries 64 MiB at most, one wheel folder is 48 MiB).
if [ ! -f models/default/model.onnx ]; then
  python3 -m model_export default --output-dir models/default
fi
naive=bench/results/models/default-float
if [ ! -f "$naive/model.onnx" ]; then
  python3 -m model_export default --float-input --output-dir "$naive"
fi
python3 -m bench run --out "$out" --require-cuda --model models/default/model.onnx --naive-model "$naive/model.onnx"
# only what the report needs comes back (a device call returns a few files)
mkdir -p "$dest"
cp "$out"/results.json "$out"/report.md "$out"/*.png "$dest"/
