"""k8s/kserve/ is valid for KServe and agrees with the app.

The manifests are validated against the schemas of KServe's published CRDs (v0.20.0, vendored
under tests/deploy/kserve/ by vendor_schemas.py, which names the source), made strict the way
`kubectl apply --validate=strict` is: a field the schema does not declare is an error. They
were not applied to a cluster here.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import pytest

from app.config import Settings
from tests.deploy.conftest import REPO_ROOT

yaml = pytest.importorskip("yaml")
jsonschema = pytest.importorskip("jsonschema")

KSERVE_DIR = REPO_ROOT / "k8s" / "kserve"
SCHEMA_DIR = Path(__file__).resolve().parent / "kserve"
SCHEMAS = {
    ("serving.kserve.io/v1beta1", "InferenceService"): "inferenceservice-v1beta1.schema.json.gz",
    ("serving.kserve.io/v1alpha1", "ServingRuntime"): "servingruntime-v1alpha1.schema.json.gz",
}


def strict(schema: Any) -> Any:
    """The CRD schema with undeclared fields refused, except where Kubernetes keeps them."""
    if isinstance(schema, list):
        return [strict(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    schema = {key: strict(value) for key, value in schema.items()}
    if (
        "properties" in schema
        and "additionalProperties" not in schema
        and not schema.get("x-kubernetes-preserve-unknown-fields")
    ):
        schema["additionalProperties"] = False
    return schema


def validator_for(manifest: dict[str, Any]) -> Any:
    name = SCHEMAS[(manifest["apiVersion"], manifest["kind"])]
    schema = json.loads(gzip.decompress((SCHEMA_DIR / name).read_bytes()))
    # metadata is checked by the API server's own schema, not the CRD's
    schema["properties"]["metadata"] = {"type": "object"}
    return jsonschema.Draft7Validator(strict(schema))


def errors(manifest: dict[str, Any]) -> list[str]:
    found = validator_for(manifest).iter_errors(manifest)
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in found]


def manifests() -> dict[str, dict[str, Any]]:
    docs = [yaml.safe_load(p.read_text()) for p in sorted(KSERVE_DIR.glob("*.yaml"))]
    return {doc["kind"]: doc for doc in docs if doc["kind"] != "Kustomization"}


@pytest.mark.parametrize("kind", ["InferenceService", "ServingRuntime"])
def test_the_manifest_validates_against_kserves_crd_schema(kind: str) -> None:
    assert errors(manifests()[kind]) == []


def test_the_validation_refuses_a_misspelt_field_and_a_bad_value() -> None:
    service = manifests()["InferenceService"]
    service["spec"]["predictor"]["model"]["protocolVerison"] = "v2"
    service["spec"]["predictor"]["scaleMetric"] = "latency"
    found = errors(service)
    assert any("protocolVerison" in e for e in found), found
    assert any("scaleMetric" in e and "latency" in e for e in found), found
    runtime = manifests()["ServingRuntime"]
    runtime["spec"]["containers"][0]["readinessProbe"]["httpGet"]["pathh"] = "/x"
    assert any("pathh" in e for e in errors(runtime))


def test_the_kustomization_lists_both() -> None:
    kustomization = yaml.safe_load((KSERVE_DIR / "kustomization.yaml").read_text())
    assert sorted(kustomization["resources"]) == ["inferenceservice.yaml", "servingruntime.yaml"]


def test_the_service_uses_the_runtime_over_protocol_v2() -> None:
    docs = manifests()
    runtime, model = docs["ServingRuntime"], docs["InferenceService"]["spec"]["predictor"]["model"]
    assert model["runtime"] == runtime["metadata"]["name"]
    assert model["modelFormat"] in [
        {"name": f["name"], "version": f["version"]} for f in runtime["spec"]["supportedModelFormats"]
    ]
    assert model["protocolVersion"] == "v2"
    assert {"v2", "grpc-v2"} <= set(runtime["spec"]["protocolVersions"])


def test_the_model_repository_volume_is_the_one_k8s_repository_claims() -> None:
    model = manifests()["InferenceService"]["spec"]["predictor"]["model"]
    claim = yaml.safe_load((REPO_ROOT / "k8s" / "repository" / "pvc.yaml").read_text())
    assert model["storageUri"] == f"pvc://{claim['metadata']['name']}"
    (container,) = manifests()["ServingRuntime"]["spec"]["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["IMGSERVE_MODEL_REPOSITORY"] == "/mnt/models"  # where KServe mounts storageUri


def test_the_runtime_container_matches_the_app() -> None:
    (container,) = manifests()["ServingRuntime"]["spec"]["containers"]
    assert container["name"] == "kserve-container"
    env = {e["name"]: e.get("value") for e in container["env"]}
    # every variable is a setting the app reads
    assert {name.removeprefix("IMGSERVE_").lower() for name in env} <= set(Settings.model_fields)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http1": int(env["IMGSERVE_PORT"]), "grpc": int(env["IMGSERVE_GRPC_PORT"])}
    assert container["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": ports["http1"]}
    assert container["startupProbe"]["httpGet"]["port"] == ports["http1"]
    assert container["livenessProbe"]["grpc"] == {"port": ports["grpc"]}
    assert float(env["IMGSERVE_SHUTDOWN_DELAY_S"]) < float(env["IMGSERVE_DRAIN_TIMEOUT_S"])
    pre_stop_s = float(container["lifecycle"]["preStop"]["exec"]["command"][1])
    grace_s = manifests()["InferenceService"]["spec"]["predictor"]["terminationGracePeriodSeconds"]
    assert pre_stop_s + float(env["IMGSERVE_DRAIN_TIMEOUT_S"]) < grace_s


def test_the_probe_paths_are_routes_of_the_app() -> None:
    from app.main import create_app

    paths = create_app(Settings()).openapi()["paths"]
    (container,) = manifests()["ServingRuntime"]["spec"]["containers"]
    for probe in ("readinessProbe", "startupProbe"):
        assert container[probe]["httpGet"]["path"] in paths
