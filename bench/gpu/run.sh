#!/usr/bin/env bash
# The lent GPU machine's last call (see bench/gpu/pack.sh and docs/GPU.md), from the repo root:
#
#   bench/gpu/run.sh [OUT]     # OUT defaults to $OUT (the device call's folder that comes back)
#
# Joins the pieces carried into /root/kit (once), installs the wheels into /root/kit/site, then
# runs `python -m bench.gpu` with the carried models and photos under a hard time limit. Its
# results (results.json, report.md, two plots, run.log) are written into OUT as they are measured.
# Environment: GPU_KIT (/root/kit), BUDGET (330 s for the plan: with the unpacking, six minutes), GPU_WORK (/root/gpu-work).
set -euo pipefail
kit=${GPU_KIT:-/root/kit}
out=${1:-${OUT:?give the results folder, or set OUT}}
budget=${BUDGET:-330}
start=$SECONDS
if [[ ! -d $kit/site ]]; then
    [[ -n $(ls "$kit"/part_* 2>/dev/null) ]] || { echo "no pieces in $kit: carry .gpu1 ... first" >&2; exit 2; }
    cat "$kit"/part_* | tar -x -C "$kit"
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$kit/site.tmp" "$kit"/wheels/*.whl
    mv "$kit/site.tmp" "$kit/site"
    echo "kit unpacked and installed in $((SECONDS - start)) s"
fi
export PYTHONPATH=$kit/site:$PWD PYTHONUNBUFFERED=1
# The machine's CUDA 13 and cuDNN 9 libraries (PyTorch's nvidia-* packages) for every process
# the run starts: onnxruntime.preload_dlls() looks beside onnxruntime, which is in $kit/site.
nvidia=$(python3 -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/nvidia
if [[ -d $nvidia ]]; then
    libs=$(find "$nvidia" -maxdepth 3 -type d -name lib | sort | paste -sd:)
    export LD_LIBRARY_PATH=$libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
fi
mkdir -p "$out"
# the plan keeps its own budget; this limit only catches a hang past it
timeout --kill-after=10 $((${budget%.*} + 60)) python3 -m bench.gpu --out "$out" --work "${GPU_WORK:-/root/gpu-work}" \
    --budget "$budget" --model "$kit/models/default/model.onnx" \
    --fp16-model "$kit/models/default-fp16/model.onnx" --images "$kit/images" 2>&1 | tee "$out/run.log"
