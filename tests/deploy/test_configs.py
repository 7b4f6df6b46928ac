"""The deployment files agree with the app and with each other, and pass their linters.

What runs for real (images, the compose stack, nginx in front of real servers) is in
scripts/container-test.sh and tests/e2e/test_nginx_lb.py; these checks are the cheap half.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from app.config import Settings
from tests.deploy.conftest import REPO_ROOT

yaml = pytest.importorskip("yaml", reason="pyyaml not installed (pip install kubernetes-validate brings it)")

NGINX_CONF = REPO_ROOT / "docker" / "nginx" / "default.conf"
K8S_DIR = REPO_ROOT / "k8s"
K8S_BASE = K8S_DIR / "base"
K8S_MANIFESTS = sorted(p for p in K8S_BASE.glob("*.yaml") if p.name != "kustomization.yaml")


def run(*args: str | Path, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=120, **kwargs)


def nginx_directive(name: str) -> list[str]:
    """Values of every `name ...;` line in the shipped nginx config (comments stripped)."""
    text = re.sub(r"#[^\n]*", "", NGINX_CONF.read_text())
    return [m.group(1).strip() for m in re.finditer(rf"^\s*{name}\s+([^;]*);", text, re.MULTILINE)]


def nginx_size_bytes(value: str) -> int:
    units = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}
    match = re.fullmatch(r"(\d+)([kmg]?)", value.lower())
    assert match, f"not an nginx size: {value!r}"
    return int(match.group(1)) * units[match.group(2)]


def seconds(value: str | int | float) -> float:
    """'4s', '1m30s', '30s', 6, '6' -> seconds (nginx and compose duration syntax)."""
    if isinstance(value, int | float):
        return float(value)
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h)?", value)
    factor = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "": 1}
    return sum(float(n) * factor[u] for n, u in parts)


# ---- Dockerfile --------------------------------------------------------------------------


def test_hadolint_passes_the_dockerfile(hadolint: str) -> None:
    result = run(hadolint, "--failure-threshold", "warning", REPO_ROOT / "Dockerfile")
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_catches_a_bad_dockerfile(hadolint: str, tmp_path: Path) -> None:
    # The linter is wired up for real: a shell-form CMD and an untagged base image fail it.
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python\nRUN cd /tmp && echo hi\nCMD python -m app\n")
    result = run(hadolint, "--failure-threshold", "warning", bad)
    assert result.returncode != 0
    assert "DL3025" in result.stdout  # use JSON (exec form) for CMD


def dockerfile_stage(name: str) -> str:
    text = (REPO_ROOT / "Dockerfile").read_text()
    match = re.search(rf"^FROM \S+ AS {name}\n(.*?)(?=^FROM |\Z)", text, re.MULTILINE | re.DOTALL)
    assert match, f"no stage {name!r} in the Dockerfile"
    return match.group(1)


def test_runtime_stage_runs_one_server_as_a_non_root_user_with_a_readiness_healthcheck() -> None:
    runtime = dockerfile_stage("server")
    assert re.search(r"^USER 10001:10001$", runtime, re.MULTILINE)
    assert re.search(r'^CMD \["python", "-m", "app"\]$', runtime, re.MULTILINE)
    assert re.search(r'HEALTHCHECK .*\n\s+CMD \["python", "/usr/local/bin/imgserve-healthcheck"\]', runtime)
    assert "/readyz" in (REPO_ROOT / "docker" / "healthcheck.py").read_text()
    assert "torch" not in runtime.lower()
    # HTTP and the v2 protocol's gRPC port, the app's defaults.
    assert re.search(rf"^EXPOSE {Settings().port} {Settings().grpc_port}$", runtime, re.MULTILINE)
    # The default target (the last stage) is the server with a model from the build context.
    text = (REPO_ROOT / "Dockerfile").read_text()
    assert re.findall(r"^FROM .*$", text, re.MULTILINE)[-1] == "FROM server AS runtime"
    assert "FROM server AS runtime-exported" in text


@pytest.mark.parametrize("variant", ["cpu", "gpu"])
def test_the_serving_requirements_have_no_pytorch(variant: str) -> None:
    result = run(
        sys.executable,
        REPO_ROOT / "docker" / "requirements-from-pyproject.py",
        REPO_ROOT / "pyproject.toml",
        variant,
    )
    assert result.returncode == 0, result.stderr
    requirements = result.stdout.split()
    assert not [r for r in requirements if re.match(r"torch", r)]
    assert any(r.startswith("fastapi") for r in requirements)
    runtime = "onnxruntime-gpu>=" if variant == "gpu" else "onnxruntime>="
    assert any(r.startswith(runtime) for r in requirements), requirements
    if variant == "gpu":  # the libraries the CUDA provider loads, and not cuFFT's 356 MB
        assert {r.split("~")[0] for r in requirements} >= {
            "nvidia-cuda-runtime", "nvidia-cublas", "nvidia-curand", "nvidia-cudnn-cu13"
        }  # fmt: skip
        assert not [r for r in requirements if "cufft" in r or "[cuda" in r]


def test_the_export_requirements_have_pytorch() -> None:
    result = run(
        sys.executable,
        REPO_ROOT / "docker" / "requirements-from-pyproject.py",
        REPO_ROOT / "pyproject.toml",
        "export",
    )
    assert result.returncode == 0, result.stderr
    requirements = result.stdout.split()
    assert any(r.startswith("torch==") for r in requirements)
    # model_export writes the card with model_card, which needs pydantic.
    assert any(r.startswith("pydantic>=") for r in requirements)


def test_requirements_from_pyproject_names_an_unknown_extra() -> None:
    result = run(
        sys.executable,
        REPO_ROOT / "docker" / "requirements-from-pyproject.py",
        REPO_ROOT / "pyproject.toml",
        "cuda",
    )
    assert result.returncode == 2
    assert "unknown extra(s) ['cuda']" in result.stderr


def test_dockerignore_keeps_the_context_to_what_the_images_use() -> None:
    lines = (REPO_ROOT / ".dockerignore").read_text().splitlines()
    assert lines[lines.index("*")] == "*"  # deny by default
    for needed in [
        "!pyproject.toml",
        "!app/",
        "!model_card/",
        "!model_export/",
        "!models/",
        "!docker/healthcheck.py",
    ]:
        assert needed in lines


# ---- compose -----------------------------------------------------------------------------


def compose_config(compose_binary: str, *files: str) -> dict[str, Any]:
    args = [arg for f in files for arg in ("-f", str(REPO_ROOT / f))]
    result = run(
        compose_binary, "--project-directory", REPO_ROOT, *args, "config", "--format", "json", cwd=REPO_ROOT
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_compose_config_validates(compose_binary: str) -> None:
    for files in (["docker-compose.yml"], ["docker-compose.yml", "docker/compose.cpu.yml"]):
        args = [arg for f in files for arg in ("-f", str(REPO_ROOT / f))]
        result = run(compose_binary, "--project-directory", REPO_ROOT, *args, "config", "-q")
        assert result.returncode == 0, result.stderr


def test_compose_config_rejects_a_broken_file(compose_binary: str, tmp_path: Path) -> None:
    broken = tmp_path / "compose.yml"
    broken.write_text("services:\n  app:\n    image: x\n    read_only: maybe\n")
    result = run(compose_binary, "-f", broken, "config", "-q")
    assert result.returncode != 0


def test_compose_gpu_stack(compose_binary: str) -> None:
    config = compose_config(compose_binary, "docker-compose.yml")
    app, nginx = config["services"]["app"], config["services"]["nginx"]
    assert app["build"]["target"] == "runtime"
    assert app["build"]["args"]["ORT_VARIANT"] == "gpu"
    assert app["deploy"]["replicas"] == 2
    assert app["deploy"]["resources"]["reservations"]["devices"] == [
        {"capabilities": ["gpu"], "driver": "nvidia", "count": 1}
    ]
    assert app["environment"]["IMGSERVE_REQUIRE_CUDA"] == "true"
    assert app["read_only"] is True and app["tmpfs"] == ["/tmp"]
    assert app["healthcheck"]["test"] == ["CMD", "python", "/usr/local/bin/imgserve-healthcheck"]
    assert nginx["depends_on"]["app"]["condition"] == "service_healthy"
    assert [v["target"] for v in nginx["volumes"]] == [
        "/etc/nginx/conf.d/default.conf",
        "/etc/nginx/conf.d/grpc.conf",
    ]
    # nginx's gRPC server block forwards to the replicas' gRPC port, which compose exposes.
    grpc_conf = (REPO_ROOT / "docker" / "nginx" / "grpc.conf").read_text()
    assert f"server app:{Settings().grpc_port} " in grpc_conf
    assert [int(p["target"]) for p in nginx["ports"]] == [80, 8001]
    assert str(Settings().grpc_port) in [str(port) for port in app["expose"]]
    export = config["services"].get("export")
    assert export is None  # behind its profile


def test_compose_cpu_override_drops_the_gpu(compose_binary: str) -> None:
    app = compose_config(compose_binary, "docker-compose.yml", "docker/compose.cpu.yml")["services"]["app"]
    assert app["build"]["args"]["ORT_VARIANT"] == "cpu"
    assert app["deploy"]["resources"]["reservations"] == {}
    assert app["environment"]["IMGSERVE_REQUIRE_CUDA"] == "false"


def test_compose_export_profile_reads_a_dataset_folder(compose_binary: str) -> None:
    result = run(
        compose_binary,
        "--project-directory",
        REPO_ROOT,
        "-f",
        REPO_ROOT / "docker-compose.yml",
        "--profile",
        "export",
        "config",
        "--format",
        "json",
    )
    assert result.returncode == 0, result.stderr
    export = json.loads(result.stdout)["services"]["export"]
    assert export["build"]["target"] == "export"
    targets = {v["target"]: v for v in export["volumes"]}
    assert targets["/data"]["read_only"] is True
    assert "/models/local" in targets


def test_compose_grace_period_covers_the_drain(compose_binary: str) -> None:
    app = compose_config(compose_binary, "docker-compose.yml")["services"]["app"]
    env = app["environment"]
    drain_s = seconds(env["IMGSERVE_DRAIN_TIMEOUT_S"])
    delay_s = seconds(env["IMGSERVE_SHUTDOWN_DELAY_S"])
    # The app bounds its whole shutdown (delay included) by the drain timeout.
    assert delay_s < drain_s < seconds(app["stop_grace_period"])
    # nginx must have dropped its idle connections to the replica before it stops listening.
    (upstream_keepalive,) = nginx_directive("keepalive_timeout")
    assert seconds(upstream_keepalive) < delay_s


# ---- nginx -------------------------------------------------------------------------------


def test_nginx_body_limit_is_the_apps_upload_limit() -> None:
    (limit,) = nginx_directive("client_max_body_size")
    assert nginx_size_bytes(limit) == Settings.model_fields["max_upload_bytes"].default


def test_nginx_closes_idle_upstream_connections_before_the_app_does() -> None:
    (keepalive_timeout,) = nginx_directive("keepalive_timeout")
    assert seconds(keepalive_timeout) < Settings.model_fields["keep_alive_timeout_s"].default


def test_nginx_retries_only_what_is_safe() -> None:
    (next_upstream,) = nginx_directive("proxy_next_upstream")
    assert set(next_upstream.split()) == {"error", "timeout"}  # never non_idempotent, never http_5xx
    assert nginx_directive("proxy_set_header").count("X-Request-ID $imgserve_request_id") == 1
    assert nginx_directive("proxy_set_header").count('Connection ""') == 1  # upstream keep-alive


# ---- Kubernetes --------------------------------------------------------------------------


def k8s_docs() -> dict[str, dict[str, Any]]:
    docs = [yaml.safe_load(p.read_text()) for p in K8S_MANIFESTS]
    return {doc["kind"]: doc for doc in docs}


def test_k8s_manifests_validate_against_the_schemas(kubernetes_validate: str) -> None:
    for version in ("1.29.0", "1.37.0"):
        result = run(kubernetes_validate, "--strict", "-k", version, *K8S_MANIFESTS)
        assert result.returncode == 0, result.stdout + result.stderr
        assert result.stdout.count("passed") == len(K8S_MANIFESTS), result.stdout


def test_k8s_validation_rejects_a_broken_manifest(kubernetes_validate: str, tmp_path: Path) -> None:
    deployment = k8s_docs()["Deployment"]
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["pathh"] = "/x"
    broken = tmp_path / "deployment.yaml"
    broken.write_text(yaml.safe_dump(deployment))
    result = run(kubernetes_validate, "--strict", broken)
    assert result.returncode != 0
    assert "pathh" in result.stdout + result.stderr


def test_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((K8S_BASE / "kustomization.yaml").read_text())
    assert sorted(kustomization["resources"]) == [p.name for p in K8S_MANIFESTS]


KUSTOMIZATIONS = sorted(p.parent for p in K8S_DIR.rglob("kustomization.yaml"))


def test_no_kustomization_includes_a_folder_that_contains_it() -> None:
    """kustomize refuses a resource folder that contains the including folder (a cycle): an
    overlay under k8s/ must build on k8s/base/, never on k8s/ itself."""
    assert {p.relative_to(K8S_DIR).as_posix() for p in KUSTOMIZATIONS} >= {
        ".",
        "base",
        "repository",
        "kserve",
    }
    for folder in KUSTOMIZATIONS:
        for resource in yaml.safe_load((folder / "kustomization.yaml").read_text())["resources"]:
            target = (folder / resource).resolve()
            assert target.exists(), (folder, resource)
            if target.is_dir():
                assert not folder.resolve().is_relative_to(target), f"{folder}: {resource} contains it"


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="needs kubectl")
@pytest.mark.parametrize("folder", KUSTOMIZATIONS, ids=lambda p: p.relative_to(K8S_DIR).as_posix())
def test_kubectl_kustomize_builds(folder: Path) -> None:
    result = run("kubectl", "kustomize", folder)
    assert result.returncode == 0, result.stderr
    images = re.findall(r"^\s+image: (\S+)$", result.stdout, flags=re.MULTILINE)
    if folder != K8S_DIR / "kserve":
        # The base's image transform reaches every overlay's Deployment.
        assert images and set(images) == {"imgserve:gpu"}, images


def test_k8s_deployment_probes_drain_and_gpu() -> None:
    docs = k8s_docs()
    pod = docs["Deployment"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    # Liveness over gRPC (grpc.health.v1) on the port the app serves it on by default.
    assert container["livenessProbe"]["grpc"] == {"port": Settings().grpc_port}
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": Settings().port, "grpc": Settings().grpc_port}
    assert container["startupProbe"]["httpGet"]["path"] == "/healthz"
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["IMGSERVE_REQUIRE_CUDA"] == "true"
    pre_stop_s = float(container["lifecycle"]["preStop"]["exec"]["command"][1])
    drain_s = float(env["IMGSERVE_DRAIN_TIMEOUT_S"])
    assert float(env["IMGSERVE_SHUTDOWN_DELAY_S"]) < drain_s
    assert pre_stop_s + drain_s < pod["terminationGracePeriodSeconds"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod["securityContext"]["runAsUser"] == 10001


def test_k8s_service_and_hpa_point_at_the_deployment() -> None:
    docs = k8s_docs()
    deployment, service, hpa = docs["Deployment"], docs["Service"], docs["HorizontalPodAutoscaler"]
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert [p["targetPort"] for p in service["spec"]["ports"]] == ["http", "grpc"]
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "imgserve",
    }
    assert hpa["spec"]["minReplicas"] >= 2
    assert docs["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
