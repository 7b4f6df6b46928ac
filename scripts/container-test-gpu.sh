#!/usr/bin/env bash
# The GPU image (the Dockerfile's default target: onnxruntime-gpu with CUDA and cuDNN from
# their PyPI packages), built with podman and started on a machine WITHOUT a GPU:
#
#   1. setup      podman and the stand-in base images (scripts/container-test.sh setup)
#   2. model      python -m model_export default --output-dir models/default (if missing)
#   3. build      podman build of the default target (ORT_VARIANT=gpu); prints the time and size
#   4. wheels     what each CUDA/cuDNN package adds to the image, and what the CUDA provider
#                 links against
#   5. start      the image as it ships (read-only root filesystem, non-root user): it must
#                 become ready on the CPU provider, log exactly one line naming what is missing
#                 for CUDA, and answer /predict with a real JPEG
#   6. require    the same image with IMGSERVE_REQUIRE_CUDA=true: it must exit non-zero with a
#                 one-line reason and no traceback
#
# On a machine WITH an NVIDIA GPU and the NVIDIA container toolkit, GPU=1 passes the GPU to the
# container (podman --device nvidia.com/gpu=all) and step 5 then expects CUDAExecutionProvider.
#
#   scripts/container-test-gpu.sh            # everything (the first build downloads ~1.5 GB)
#   KEEP=1 scripts/container-test-gpu.sh     # leave the started container running
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE=${IMGSERVE_CONTAINER_CACHE:-$HOME/.cache/imgserve-containers}
IMAGE=${IMGSERVE_GPU_IMAGE:-localhost/imgserve:gpu}
NAME=imgserve-gpu-test-$$
PYTHON=${PYTHON:-$ROOT/.venv/bin/python}
[[ -x $PYTHON ]] || PYTHON=python3
START=$SECONDS
declare -a TIMINGS=()

log() { printf '\n== %s (%ss)\n' "$*" "$((SECONDS - START))"; }
die() { printf 'container-test-gpu: %s\n' "$*" >&2; exit 1; }
timed() {
    local name=$1 t0=$SECONDS
    shift
    "$@"
    TIMINGS+=("$(printf '%-10s %4ss' "$name" "$((SECONDS - t0))")")
}

cleanup() {
    local rc=$?
    [[ -z ${KEEP:-} ]] && podman rm -f "$NAME" >/dev/null 2>&1
    exit $rc
}

gpu_flags() {  # what passes the GPU to the container, where there is one to pass
    [[ -n ${GPU:-} ]] && echo "--device nvidia.com/gpu=all"
    return 0
}

export_model() {
    [[ -s $ROOT/models/default/model.onnx && -s $ROOT/models/default/model.json ]] && return
    (cd "$ROOT" && "$PYTHON" -m model_export default --output-dir models/default)
}

build() {
    podman build -q --format docker -t "$IMAGE" "$ROOT" >/dev/null
    podman image inspect --format '{{.Size}}' "$IMAGE" | awk '{printf "image %s: %.2f GB\n", "'"$IMAGE"'", $1 / 1e9}'
}

# The size each installed distribution adds (its RECORD), the CUDA provider's own library
# dependencies (ldd), and the ONNX Runtime build.
wheels() {
    podman run --rm -i --no-healthcheck --entrypoint python "$IMAGE" - <<'PY'
import importlib.metadata as md, os, subprocess, onnxruntime as ort
rows = []
for dist in md.distributions():
    name = dist.metadata["Name"]
    size = sum(os.path.getsize(dist.locate_file(f)) for f in dist.files or [] if os.path.isfile(dist.locate_file(f)))
    rows.append((size, name, dist.version))
rows.sort(reverse=True)
total = sum(r[0] for r in rows)
print(f"site-packages: {total / 1e6:.0f} MB in {len(rows)} distributions; the largest:")
for size, name, version in rows[:12]:
    print(f"  {size / 1e6:7.0f} MB  {name} {version}")
import glob, sys
capi = os.path.join(os.path.dirname(ort.__file__), "capi")
lib = os.path.join(capi, "libonnxruntime_providers_cuda.so")
needed = subprocess.run(["ldd", lib], capture_output=True, text=True).stdout.split("\n")
cuda = [l.split()[0] for l in needed if any(k in l for k in ("cuda", "cublas", "curand", "cufft", "cudnn", "nvrtc"))]
print(f"onnxruntime {ort.__version__}: {ort.get_available_providers()}")
print(f"the CUDA provider links against: {' '.join(cuda)} (and dlopens cuDNN)")
# Everything the CUDA provider and cuDNN link against must resolve in the image, but the
# driver's libcuda.so.1 (mounted into the container with the GPU).
site = os.path.dirname(os.path.dirname(ort.__file__))
missing = set()
for path in [lib, *glob.glob(os.path.join(site, "nvidia", "*", "lib", "*.so*"))]:
    for line in subprocess.run(["ldd", path], capture_output=True, text=True).stdout.split("\n"):
        if "not found" in line and not line.split()[0].startswith("libcuda.so"):
            missing.add(f"{os.path.basename(path)}: {line.split()[0]}")
if missing:
    sys.exit("libraries missing from the image: " + ", ".join(sorted(missing)))
print("every library they link against resolves in the image, but the driver's libcuda.so.1")
PY
}

free_port() { "$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

start() {
    local port t0 deadline
    port=$(free_port)
    t0=$EPOCHREALTIME
    # shellcheck disable=SC2046
    # (podman warns that it cannot schedule the HEALTHCHECK without systemd: run by hand below)
    podman run -d --name "$NAME" --read-only --tmpfs /tmp -p "127.0.0.1:$port:8000" $(gpu_flags) "$IMAGE" \
        >/dev/null 2>"$CACHE/gpu-run.err" || { cat "$CACHE/gpu-run.err"; die "podman run failed"; }
    deadline=$((SECONDS + 120))
    until "$PYTHON" -c "import httpx, sys; sys.exit(httpx.get(sys.argv[1]).status_code != 200)" \
        "http://127.0.0.1:$port/readyz" 2>/dev/null; do
        ((SECONDS < deadline)) || { podman logs "$NAME" | tail -30; die "not ready after 120 s"; }
        [[ $(podman inspect --format '{{.State.Running}}' "$NAME") == true ]] \
            || { podman logs "$NAME" | tail -30; die "the container exited before it was ready"; }
        sleep 0.2
    done
    awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN { printf "ready %.1f s after podman run (container start, model load, warm-up)\n", b - a }'
    local provider expected=CPUExecutionProvider
    [[ -n ${GPU:-} ]] && expected=CUDAExecutionProvider
    provider=$("$PYTHON" "$ROOT/scripts/probe_predict.py" --url "http://127.0.0.1:$port")
    [[ $provider == "$expected" ]] || die "serving on $provider, expected $expected"
    echo "POST /predict with a real JPEG: 200, model on $provider"
    podman healthcheck run "$NAME" >/dev/null || die "the image's HEALTHCHECK fails on a ready server"
    echo "the image's HEALTHCHECK: healthy"
    local lines
    lines=$(podman logs "$NAME" 2>&1 | grep -c 'CUDA provider unavailable' || true)
    if [[ -z ${GPU:-} ]]; then
        [[ $lines == 1 ]] || { podman logs "$NAME" 2>&1 | tail -30; die "expected one 'CUDA provider unavailable' line, got $lines"; }
        echo "the log line:"
        podman logs "$NAME" 2>&1 | grep 'CUDA provider unavailable'
    fi
    podman logs "$NAME" 2>&1 | grep -q Traceback && die "a traceback in the log"
    return 0
}

require_cuda() {
    local rc=0 out
    # shellcheck disable=SC2046
    out=$(timeout 120 podman run --rm --no-healthcheck --read-only --tmpfs /tmp -e IMGSERVE_REQUIRE_CUDA=true \
        $(gpu_flags) "$IMAGE" 2>&1) || rc=$?
    if [[ -n ${GPU:-} ]]; then
        echo "with a GPU, IMGSERVE_REQUIRE_CUDA=true is satisfied (not checked further here)"
        return 0
    fi
    ((rc != 0 && rc != 124)) || { echo "$out" | tail -20; die "IMGSERVE_REQUIRE_CUDA=true: exit $rc, expected a failure"; }
    grep -q Traceback <<<"$out" && { echo "$out"; die "IMGSERVE_REQUIRE_CUDA=true: a traceback"; }
    grep -q 'cannot start: .*IMGSERVE_REQUIRE_CUDA is set but' <<<"$out" || { echo "$out"; die "no one-line reason"; }
    echo "IMGSERVE_REQUIRE_CUDA=true: exit $rc, the reason:"
    grep 'cannot start:' <<<"$out"
}

main() {
    ((EUID == 0)) || die "run as root (podman with runc and netavark)"
    trap cleanup EXIT
    timed setup "$ROOT/scripts/container-test.sh" setup
    export CONTAINERS_CONF=$CACHE/containers.conf
    log model;   timed model export_model
    log build;   timed build build
    log wheels;  wheels
    log start;   timed start start
    log require; timed require require_cuda
    echo
    printf '%s\n' "${TIMINGS[@]}" "total      $((SECONDS - START))s"
}

main "$@"
