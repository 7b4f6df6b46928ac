"""The repository overlays (docker/compose.repository.yml, k8s/repository/) mount a repository
read-only where the app is told to find it, and stay valid against compose and Kubernetes."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from app.config import Settings
from tests.deploy.test_configs import K8S_DIR, compose_config, k8s_docs, run

yaml = pytest.importorskip("yaml", reason="pyyaml not installed (pip install kubernetes-validate brings it)")

OVERLAY = K8S_DIR / "repository"


def test_compose_repository_override_mounts_it_read_only_where_the_app_looks(compose_binary: str) -> None:
    app = compose_config(compose_binary, "docker-compose.yml", "docker/compose.repository.yml")["services"][
        "app"
    ]
    env = app["environment"]
    (mount,) = [v for v in app["volumes"] if v["target"] == env["IMGSERVE_MODEL_REPOSITORY"]]
    assert mount["read_only"] is True and mount["source"].endswith("models/repository")
    settings = Settings(
        model_repository=env["IMGSERVE_MODEL_REPOSITORY"],
        model_control=env["IMGSERVE_MODEL_CONTROL"],
        default_model=env["IMGSERVE_DEFAULT_MODEL"],
    )
    assert (settings.model_control, settings.default_model) == ("none", None)
    assert app["read_only"] is True  # the base file's hardening survives the override


def merge_patch(base: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """Strategic merge as kustomize does it for this patch: maps merge, named lists merge by name."""
    merged = copy.deepcopy(base)
    for key, value in patch.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge_patch(merged[key], value)
        elif isinstance(value, list) and isinstance(merged.get(key), list):
            by_name = {item.get("name"): item for item in merged[key] if isinstance(item, dict)}
            for item in value:
                if item.get("name") in by_name:
                    by_name[item["name"]].update(merge_patch(by_name[item["name"]], item))
                else:
                    merged[key].append(item)
        else:
            merged[key] = value
    return merged


def patched_deployment() -> dict[str, Any]:
    patch = yaml.safe_load((OVERLAY / "deployment-patch.yaml").read_text())
    return merge_patch(k8s_docs()["Deployment"], patch)


def test_k8s_overlay_lists_its_files_and_the_base() -> None:
    kustomization = yaml.safe_load((OVERLAY / "kustomization.yaml").read_text())
    assert kustomization["resources"] == ["../base", "pvc.yaml"]
    assert [p["path"] for p in kustomization["patches"]] == ["deployment-patch.yaml"]


def test_k8s_overlay_mounts_the_claim_read_only_where_the_app_looks() -> None:
    pod = patched_deployment()["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == env["IMGSERVE_MODEL_REPOSITORY"]]
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    pvc = yaml.safe_load((OVERLAY / "pvc.yaml").read_text())
    assert mount["readOnly"] is True and volume["persistentVolumeClaim"]["readOnly"] is True
    assert volume["persistentVolumeClaim"]["claimName"] == pvc["metadata"]["name"]
    assert pvc["spec"]["accessModes"] == ["ReadOnlyMany"]
    settings = Settings(
        model_repository=env["IMGSERVE_MODEL_REPOSITORY"],
        max_loaded_versions=env["IMGSERVE_MAX_LOADED_VERSIONS"],
    )
    assert (settings.model_repository, settings.max_loaded_versions) == (Path("/models/repository"), 4)
    assert {"/tmp", env["IMGSERVE_MODEL_REPOSITORY"]} <= {m["mountPath"] for m in container["volumeMounts"]}


def test_k8s_overlay_validates_against_the_schemas(kubernetes_validate: str, tmp_path: Path) -> None:
    deployment = tmp_path / "deployment.yaml"
    deployment.write_text(yaml.safe_dump(patched_deployment()))
    for version in ("1.29.0", "1.37.0"):
        result = run(kubernetes_validate, "--strict", "-k", version, deployment, OVERLAY / "pvc.yaml")
        assert result.returncode == 0, result.stdout + result.stderr
        assert result.stdout.count("passed") == 2, result.stdout
