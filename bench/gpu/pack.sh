#!/usr/bin/env bash
# Packs everything the GPU run needs that a lent GPU machine lacks, in pieces that each travel
# with one device call, and prints the calls. Run it on the workstation, from anywhere:
#
#   bench/gpu/pack.sh          # ~300 MiB: 6 pieces of 59 MiB (.gpu1 ... .gpu6, git-ignored)
#
# What goes in:
#   wheels   onnxruntime-gpu (its CUDA provider uses the CUDA 13 and cuDNN 9 libraries the
#            machine's PyTorch already has) and the serving stack, for CPython 3.12 on x86-64
#            Linux; not what the machine has in a version that fits (numpy, matplotlib, tqdm, httpx)
#   models   models/default (fp32) and models/default-fp16, exported here when missing: the
#            machine then needs neither PyTorch's exporter nor time to export
#   images   real photos as 500x375 JPEGs (bench.gpu.step.write_photos)
#
# Environment: CHUNK_MIB (default: what a call carries, 64 MiB, less the working tree that
# travels with it and 2 MiB to spare), ORT_GPU (onnxruntime-gpu, at the version requirements.lock
# pins, as every other package), PYTHON (.venv/bin/python).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"
# the working tree that travels with every call: tracked and untracked files git does not ignore
tree_mib=$(( ($(git ls-files -co --exclude-standard -z | du -cb --files0-from=- | tail -1 | cut -f1) >> 20) + 1 ))
CHUNK_MIB=${CHUNK_MIB:-$((64 - tree_mib - 2))}
ORT_GPU=${ORT_GPU:-onnxruntime-gpu}
PYTHON=${PYTHON:-$ROOT/.venv/bin/python}
export PYTHONPATH=$ROOT${PYTHONPATH:+:$PYTHONPATH}
START=$SECONDS
kit=$(mktemp -d)
trap 'rm -rf "$kit"' EXIT

echo "== wheels for CPython 3.12, x86-64 Linux"
mapfile -t serving < <("$PYTHON" docker/requirements-from-pyproject.py pyproject.toml)
platforms=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 \
    manylinux_2_5_x86_64 manylinux1_x86_64; do platforms+=(--platform "$p"); done
constraints=()
[[ -f requirements.lock ]] && constraints=(-c requirements.lock)  # the versions CI tested
"$PYTHON" -m pip download -q --only-binary=:all: --python-version 3.12 --implementation cp "${platforms[@]}" \
    "${constraints[@]}" -d "$kit/wheels" "$ORT_GPU" "${serving[@]}"
# On the machine already, in versions that fit (device KINDS.md: numpy 2.5, matplotlib, tqdm, httpx)
rm -f "$kit"/wheels/numpy-*.whl
ls "$kit/wheels" | sed 's/^/  /'

echo "== models"
for variant in default default-fp16; do
    if [[ ! -s models/$variant/model.onnx ]]; then
        flags=()
        [[ $variant == default-fp16 ]] && flags=(--fp16)
        "$PYTHON" -m model_export default "${flags[@]}" --output-dir "models/$variant"
    fi
    mkdir -p "$kit/models/$variant"
    cp "models/$variant/model.onnx" "models/$variant/model.json" "$kit/models/$variant/"
done

echo "== photos"
"$PYTHON" -c 'import sys; from pathlib import Path; from bench.gpu.step import write_photos; write_photos(Path(sys.argv[1]))' \
    "$kit/images/jpeg_500x375"
ls "$kit/images/jpeg_500x375" | sed 's/^/  /'

echo "== pieces"
rm -rf "$ROOT"/.gpu[0-9]*
tar -C "$kit" -cf "$kit/kit.tar" wheels models images
split -b "${CHUNK_MIB}m" -d -a 2 "$kit/kit.tar" "$kit/part_"
n=0
for part in "$kit"/part_*; do
    n=$((n + 1))
    mkdir -p "$ROOT/.gpu$n"
    mv "$part" "$ROOT/.gpu$n/"
done
git -C "$ROOT" check-ignore -q .gpu1 || echo "warning: .gpu1 is not git-ignored: it would travel with every call"
echo "$(du -sh "$kit/kit.tar" | cut -f1) in $n pieces of at most $CHUNK_MIB MiB (the working tree: $tree_mib MiB)," \
    "$((SECONDS - START)) s"
echo
echo "The device calls, back to back (a machine is given back after 30 s idle), each ~10-20 s"
echo "but the first (which starts the machine: a minute or more) and the last (the run, <= 6 min):"
for i in $(seq 1 "$n"); do
    if ((i < n)); then
        echo "  run  carry=[\".gpu$i\"]  timeout_s=120  command: mkdir -p /root/kit && cp .gpu$i/part_* /root/kit/ && ls /root/kit"
    else
        echo "  run  carry=[\".gpu$i\"]  timeout_s=540  command: mkdir -p /root/kit && cp .gpu$i/part_* /root/kit/ && bench/gpu/run.sh"
    fi
done
echo "A rerun on the same warm machine: run  timeout_s=540  command: bench/gpu/run.sh"
